// What the model runs its steps on: one runner on one device, or a group of shard workers.
// Both take the same batches and give the same results, so everything above is unaware of how
// the model is split.

import type { KvGeometry } from './kv-cache.ts';
import type { StepBatch, StepResult } from './runner.ts';

/** What one device (one shard) has done so far. Times in milliseconds. */
export interface DeviceStats {
  rank: number;
  steps: number;
  stepMs: number;
  lastStepMs: number;
  /** Host submits, and collective round trips (all-reduces, hand-offs) with their time. */
  submits: number;
  collectives: number;
  collectiveMs: number;
  /** Of collectiveMs, time spent waiting for other shards. */
  collectiveWaitMs: number;
  /** Weights + KV cache on this device. */
  gpuBytes: number;
  /** Load time spent waiting on file reads (those not hidden behind other work), and the rest: repacking + uploading (host side). */
  loadReadMs: number;
  loadUploadMs: number;
}

export interface ForwardEngine {
  /** The KV cache pool every shard holds its part of. */
  readonly geometry: KvGeometry;
  readonly maxBatchTokens: number;
  /** Runs one batch; returns the best token (and logits if asked) of each sampled row. */
  forward(batch: StepBatch): Promise<StepResult[]>;
  deviceStats(): DeviceStats[];
  dispose(): Promise<void>;
}
