// What the model runs its steps on: one runner on one device, or a group of shard workers.
// Both take the same tokens and give the same StepResult, so everything above is unaware of
// how the model is split.

import type { StepResult } from './runner.ts';

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
}

export interface ForwardEngine {
  readonly contextLength: number;
  /** Runs `tokens` at positions `startPos...`; returns the last token's best id (and logits if asked). */
  forward(tokens: readonly number[], startPos: number, wantLogits: boolean): Promise<StepResult>;
  deviceStats(): DeviceStats[];
  dispose(): Promise<void>;
}
