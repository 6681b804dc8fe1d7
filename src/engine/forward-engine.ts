// What the model runs its steps on: one runner on one device, or a group of shard workers.
// Both take the same batches and give the same results, so everything above is unaware of how
// the model is split.

import type { KvGeometry } from './kv-cache.ts';
import type { TopK } from '../shaders/sampling.ts';

/** One forward step: tokens of one or more sequences, and which of them to sample. */
export interface StepBatch {
  tokens: number[];
  /** Each token's position in its own sequence. */
  positions: number[];
  /** Each token's sequence slot (its row of the block table). */
  slots: number[];
  /** Indices into `tokens` whose next-token logits are wanted (a sequence's last token). */
  sampleRows: number[];
  /** [maxSequences][blocksPerSequence]: physical KV block of each logical block of each slot. */
  blockTable: Uint32Array;
  /** Read the sampled rows' logits back (non-greedy sampling) rather than only their best ids. */
  wantLogits: boolean;
  /**
   * Without wantLogits: read back each sampled row's `topK` most likely (id, logit) candidates
   * (temperature sampling with top-k needs no more), 0 or absent for none. A runner that holds
   * only a slice of the vocabulary may answer with logits instead.
   */
  topK?: number;
}

/** What a step hands back for one sampled row. */
export interface StepResult {
  /** The best token (in the whole vocabulary's numbering once a shard group has combined its slices). */
  argmaxId: number;
  /** The best token's logit; known when a shard holds a vocabulary slice. */
  argmaxLogit?: number;
  logits?: Float32Array;
  /** The `topK` best candidates, most likely first (lower id on ties), when the batch asked for them. */
  candidates?: TopK;
}

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
