import { defineConfig } from 'vitest/config';

// SharedArrayBuffer needs cross-origin isolation in the browser (COOP + COEP).
const crossOriginIsolation = {
  'Cross-Origin-Opener-Policy': 'same-origin',
  'Cross-Origin-Embedder-Policy': 'require-corp',
};

export default defineConfig({
  root: '.',
  server: { headers: crossOriginIsolation },
  preview: { headers: crossOriginIsolation },
  test: {
    include: ['test/**/*.test.ts'],
    // A native crash in Dawn must fail one file, not the whole run.
    pool: 'forks',
    testTimeout: 120_000,
    hookTimeout: 120_000,
    env: { XDG_RUNTIME_DIR: '/tmp' },
  },
});
