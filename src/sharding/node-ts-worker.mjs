// Node 20 cannot run TypeScript in a worker_thread. When webshard runs from its sources (tests),
// this bootstrap loads the shard worker through tsx; the built package starts dist/.../worker.js directly.
import { workerData } from 'node:worker_threads';
import { tsImport } from 'tsx/esm/api';

await tsImport(workerData.entry, import.meta.url);
