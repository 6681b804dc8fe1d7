// Which runtime this module runs in, and whether from the TypeScript sources or the built package.
// Shared by the side that spawns workers (spawn.ts) and the side inside them (worker-endpoint.ts).

export const isDeno = typeof (globalThis as { Deno?: unknown }).Deno !== 'undefined';

export const isNode = !isDeno && typeof (globalThis as { process?: { versions?: { node?: string } } }).process?.versions?.node === 'string';

/** Running from TypeScript sources (tests, Deno) or from the built package (dist/*.js). */
export const fromSource = import.meta.url.endsWith('.ts');

// Specifiers in variables keep browser bundlers away from Node-only modules.
export const nodeWorkerThreads = 'node:worker_threads';
export const comlinkNodeAdapter = 'comlink/dist/esm/node-adapter.mjs';
