import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

const projectRoot = fileURLToPath(new URL('.', import.meta.url));

// SharedArrayBuffer needs cross-origin isolation in the browser (COOP + COEP).
const crossOriginIsolation = {
  'Cross-Origin-Opener-Policy': 'same-origin',
  'Cross-Origin-Embedder-Policy': 'require-corp',
};

export default defineConfig({
  // `vite` / `vite build` / `vite preview` serve and build the demo page (demo/ → demo/dist/);
  // it imports the library straight from src/.
  root: fileURLToPath(new URL('./demo', import.meta.url)),
  base: './',
  server: { headers: crossOriginIsolation, fs: { allow: [projectRoot] } },
  preview: { headers: crossOriginIsolation },
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    // Shard workers are ES modules (they import the engine).
  },
  worker: { format: 'es' },
  test: {
    root: projectRoot,
    include: ['test/**/*.test.ts'],
    // A native crash in Dawn must fail one file, not the whole run.
    pool: 'forks',
    // Two files at a time, also on a 2-core machine (vitest's default there is one): most of a
    // GPU test's time is lavapipe compiling kernels, one core each, and compiled kernels are
    // shared between the files through Mesa's shader cache.
    maxWorkers: 2,
    testTimeout: 120_000,
    hookTimeout: 120_000,
    env: { XDG_RUNTIME_DIR: '/tmp' },
  },
});
