// Inside a worker: exposing its API to the thread that spawned it, and ending it.

import * as Comlink from 'comlink';
import { comlinkNodeAdapter, isNode, nodeWorkerThreads } from './runtime.ts';

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
