// Starting shard workers, per runtime. The only runtime-specific code of the sharding layer:
// Node uses worker_threads (with comlink's node adapter), Deno and browsers use module Workers.

import * as Comlink from 'comlink';
import type { ShardWorkerApi } from './worker.ts';

export interface ShardWorkerHandle {
  api: Comlink.Remote<ShardWorkerApi>;
  /** Rejects if the worker dies (an uncaught error, or its thread ends unasked): calls on it would never settle. */
  died: Promise<never>;
  /** Resolves when the worker thread has ended (Node), or when it replied to shutdown (elsewhere). */
  exited: Promise<void>;
  /** Lets the process exit even if this worker never ends (last resort after a failed shutdown). */
  abandon(): void;
}

const isNode = typeof (globalThis as { process?: { versions?: { node?: string } } }).process?.versions?.node === 'string' &&
  typeof (globalThis as { Deno?: unknown }).Deno === 'undefined';

/** Running from TypeScript sources (tests, Deno) or from the built package (dist/*.js). */
const fromSource = import.meta.url.endsWith('.ts');

// Specifiers in variables keep browser bundlers away from Node-only modules, and away from worker
// files that exist only in the sources or only in the build: bundlers bundle every
// `new Worker(new URL('<literal>', import.meta.url))` they see.
const nodeWorkerThreads = 'node:worker_threads';
const comlinkNodeAdapter = 'comlink/dist/esm/node-adapter.mjs';
const nodeBootstrapFile = './node-ts-worker.mjs';
const sourceWorkerFile = './worker.ts';
const builtWorkerFile = './worker.js';
const isDeno = typeof (globalThis as { Deno?: unknown }).Deno !== 'undefined';

export async function spawnShardWorker(): Promise<ShardWorkerHandle> {
  if (isNode) {
    const { Worker } = (await import(/* @vite-ignore */ nodeWorkerThreads)) as typeof import('node:worker_threads');
    const nodeEndpoint = ((await import(/* @vite-ignore */ comlinkNodeAdapter)) as { default: (x: unknown) => Comlink.Endpoint }).default;
    // Node 20 cannot run TypeScript in a worker: from sources, a small bootstrap loads it through tsx.
    const worker = fromSource
      ? new Worker(new URL(nodeBootstrapFile, import.meta.url), { workerData: { entry: new URL(sourceWorkerFile, import.meta.url).href } })
      : new Worker(new URL(builtWorkerFile, import.meta.url));
    let stopping = false;
    const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
    const died = new Promise<never>((_, reject) => {
      worker.once('error', (error: Error) => reject(new Error(`the shard worker died: ${error.message}`, { cause: error })));
      void exited.then(() => stopping || reject(new Error('the shard worker thread ended unexpectedly')));
    });
    died.catch(() => {}); // observed by the group's calls
    const api = Comlink.wrap<ShardWorkerApi>(nodeEndpoint(worker));
    return { api: withShutdownFlag(api, () => (stopping = true)), died, exited, abandon: () => worker.unref() };
  }
  // Deno runs the TypeScript source itself. Browsers get the literal './worker.js' that bundlers
  // bundle (vite resolves it to worker.ts when building from the sources).
  const worker = isDeno && fromSource
    ? new Worker(new URL(sourceWorkerFile, import.meta.url), { type: 'module', name: 'webshard shard' })
    : new Worker(new URL('./worker.js', import.meta.url), { type: 'module', name: 'webshard shard' });
  const died = new Promise<never>((_, reject) => {
    worker.addEventListener('error', (event: ErrorEvent) => {
      event.preventDefault();
      reject(new Error(`the shard worker died: ${event.message}`));
    });
  });
  died.catch(() => {});
  // Deno and browsers have no exit event: a worker has ended once it answered shutdown. Never
  // terminate() a Deno worker that may hold a Dawn device (DESIGN.md: it segfaults at exit).
  const abandon = isDeno ? () => {} : () => worker.terminate();
  return { api: Comlink.wrap<ShardWorkerApi>(worker), died, exited: Promise.resolve(), abandon };
}

/** Marks the worker as being shut down (so its thread ending is expected) before asking it to. */
function withShutdownFlag(api: Comlink.Remote<ShardWorkerApi>, stopping: () => void): Comlink.Remote<ShardWorkerApi> {
  return new Proxy(api, {
    get(target, property, receiver) {
      if (property === 'shutdown') {
        return () => {
          stopping();
          return target.shutdown();
        };
      }
      return Reflect.get(target, property, receiver);
    },
  });
}

/**
 * Ends a worker the safe way: never terminate() one with a Dawn promise pending (that aborts
 * Node); ask it to shut down (it drains and destroys its device) and wait until it ended.
 * Returns false when it did not answer in time and was abandoned instead.
 */
export async function shutdownShardWorker(worker: ShardWorkerHandle, deadlineMs: number): Promise<boolean> {
  let clean = true;
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('shutdown timed out')), deadlineMs);
      worker.api.shutdown().then(() => worker.exited).then(
        () => (clearTimeout(timer), resolve()),
        (error: unknown) => (clearTimeout(timer), reject(error)),
      );
    });
  } catch {
    clean = false;
    worker.abandon();
  }
  try {
    worker.api[Comlink.releaseProxy]();
  } catch {
    // The worker's port is already closed: nothing left to release.
  }
  return clean;
}

// ---------------------------------------------------------------------------------------------
// Inside the worker

let closeSelf: () => void = () => {};

/** Exposes `api` to the thread that spawned this worker. */
export async function exposeToParent(api: object): Promise<void> {
  if (isNode) {
    const { parentPort } = (await import(/* @vite-ignore */ nodeWorkerThreads)) as typeof import('node:worker_threads');
    const nodeEndpoint = ((await import(/* @vite-ignore */ comlinkNodeAdapter)) as { default: (x: unknown) => Comlink.Endpoint }).default;
    Comlink.expose(api, nodeEndpoint(parentPort));
    closeSelf = () => parentPort!.close();
  } else {
    Comlink.expose(api, globalThis as unknown as Comlink.Endpoint);
    closeSelf = () => (globalThis as unknown as { close(): void }).close();
  }
}

/** Ends this worker once the current reply has been posted. */
export function closeWorker(): void {
  setTimeout(() => closeSelf(), 0);
}
