// Builds the demo page with vite's JS API into a temporary folder (never into the source tree).
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'vite';

export const projectRoot = resolve(fileURLToPath(new URL('.', import.meta.url)), '../..');

/** Runs `vite build` with the project's vite.config.ts; returns the folder holding index.html. */
export async function buildDemo(): Promise<string> {
  const outDir = mkdtempSync(join(tmpdir(), 'webshard-demo-'));
  await build({
    configFile: resolve(projectRoot, 'vite.config.ts'),
    logLevel: 'warn',
    build: { outDir, emptyOutDir: true },
  });
  return outDir;
}
