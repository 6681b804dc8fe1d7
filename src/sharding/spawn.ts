// Starting workers, per runtime: the parent side. The only runtime-specific code of the sharding
// layer: Node uses worker_threads (with comlink's node adapter), Deno and browsers use module
// Workers. The worker side is worker-endpoint.ts; runtime detection is runtime.ts.

import * as Comlink from 'comlink';
import type { CollectiveBenchWorkerApi } from './collective-bench-worker.ts';
import { comlinkNodeAdapter, fromSource, isDeno, isNode, nodeWorkerThreads } from './runtime.ts';
import type { ShardWorkerApi } from './worker.ts';

/** What every worker answers: ending it by message is the only safe way (see shutdownWorker). */
export interface WorkerApi {
  shutdown(): void | Promise<void>;
}

export interface WorkerHandle<Api extends WorkerApi> {
  api: Comlink.Remote<Api>;
  /** Rejects if the worker dies (an uncaught error, or its thread ends unasked): calls on it would never settle. */
  died: Promise<never>;
  /** Resolves when the worker thread has ended (Node), or when it replied to shutdown (elsewhere). */
  exited: Promise<void>;
  /** Lets the process exit even if this worker never ends (last resort after a failed shutdown). */
  abandon(): void;
}

export type ShardWorkerHandle = WorkerHandle<ShardWorkerApi>;
export type CollectiveBenchWorkerHandle = WorkerHandle<CollectiveBenchWorkerApi>;

/** A worker entry: its TypeScript source (tests, Deno) and its built file (the package). */
interface WorkerEntry {
  source: string;
  built: string;
  /** The browser's worker, as the literal `new Worker(new URL('./x.js', import.meta.url))` bundlers look for. */
  browser(): Worker;
}

// Bundlers bundle every `new Worker(new URL('<literal>', import.meta.url))` they see, so each
// entry spells its browser worker out (vite resolves './x.js' to x.ts when building from sources).
const shardEntry: WorkerEntry = {
  source: './worker.ts',
  built: './worker.js',
  browser: () => new Worker(new URL('./worker.js', import.meta.url), { type: 'module', name: 'webshard shard' }),
};
const collectiveBenchEntry: WorkerEntry = {
  source: './collective-bench-worker.ts',
  built: './collective-bench-worker.js',
  browser: () => new Worker(new URL('./collective-bench-worker.js', import.meta.url), { type: 'module', name: 'webshard collective bench' }),
};
const nodeBootstrapFile = './node-ts-worker.mjs';

/** A worker that owns one shard of a model (worker.ts). */
export function spawnShardWorker(): Promise<ShardWorkerHandle> {
  return spawnWorker<ShardWorkerApi>(shardEntry);
}

/** A worker that times collectives on its own device (collective-bench-worker.ts; measure.ts uses it). */
export function spawnCollectiveBenchWorker(): Promise<CollectiveBenchWorkerHandle> {
  return spawnWorker<CollectiveBenchWorkerApi>(collectiveBenchEntry);
}

async function spawnWorker<Api extends WorkerApi>(entry: WorkerEntry): Promise<WorkerHandle<Api>> {
  if (isNode) {
    const { Worker } = (await import(/* @vite-ignore */ nodeWorkerThreads)) as typeof import('node:worker_threads');
    const nodeEndpoint = ((await import(/* @vite-ignore */ comlinkNodeAdapter)) as { default: (x: unknown) => Comlink.Endpoint }).default;
    // Node 20 cannot run TypeScript in a worker: from sources, a small bootstrap loads it through tsx.
    const worker = fromSource
      ? new Worker(new URL(nodeBootstrapFile, import.meta.url), { workerData: { entry: new URL(entry.source, import.meta.url).href } })
      : new Worker(new URL(entry.built, import.meta.url));
    let stopping = false;
    const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
    const died = new Promise<never>((_, reject) => {
      worker.once('error', (error: Error) => reject(new Error(`the worker died: ${error.message}`, { cause: error })));
      void exited.then(() => stopping || reject(new Error('the worker thread ended unexpectedly')));
    });
    died.catch(() => {}); // observed by the callers
    const api = Comlink.wrap<Api>(nodeEndpoint(worker));
    return { api: withShutdownFlag(api, () => (stopping = true)), died, exited, abandon: () => worker.unref() };
  }
  // Deno runs the TypeScript source itself; browsers get the file bundlers bundle.
  const worker = isDeno && fromSource
    ? new Worker(new URL(entry.source, import.meta.url), { type: 'module', name: 'webshard worker' })
    : entry.browser();
  const died = new Promise<never>((_, reject) => {
    worker.addEventListener('error', (event: ErrorEvent) => {
      event.preventDefault();
      reject(new Error(`the worker died: ${event.message}`));
    });
  });
  died.catch(() => {});
  // Deno and browsers have no exit event: a worker has ended once it answered shutdown. Never
  // terminate() a Deno worker that may hold a Dawn device (it segfaults at exit).
  const abandon = isDeno ? () => {} : () => worker.terminate();
  return { api: Comlink.wrap<Api>(worker), died, exited: Promise.resolve(), abandon };
}

/** Marks the worker as being shut down (so its thread ending is expected) before asking it to. */
function withShutdownFlag<Api extends WorkerApi>(api: Comlink.Remote<Api>, stopping: () => void): Comlink.Remote<Api> {
  return new Proxy(api, {
    get(target, property, receiver) {
      if (property === 'shutdown') {
        return () => {
          stopping();
          return (target as unknown as Comlink.Remote<WorkerApi>).shutdown();
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
export async function shutdownWorker(worker: WorkerHandle<WorkerApi>, deadlineMs: number): Promise<boolean> {
  let clean = true;
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('shutdown timed out')), deadlineMs);
      Promise.race([(worker.api as Comlink.Remote<WorkerApi>).shutdown(), worker.died]).then(() => worker.exited).then(
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
