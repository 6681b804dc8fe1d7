// The shared memory a shard group talks through: one SharedArrayBuffer of Int32 control cells
// (barriers, hand-off counters, the abort flag) and one of f32 data (all-reduce slots, hidden
// states between pipeline stages, the gathered logits). Every shard maps the same layout.
//
// Synchronisation uses plain Atomics.wait/notify on the control cells, always with a deadline,
// so no shard can wait forever on one that died.

export interface SharedLayoutShape {
  tp: number;
  pp: number;
  /** f32 values in one all-reduce slot or one hidden-state hand-off (maxBatchTokens × dim). */
  slotFloats: number;
  vocabSize: number;
  /** Sequences sampled in one step: the logits region holds this many rows of the vocabulary. */
  maxSequences: number;
}

export interface SharedMemory {
  shape: SharedLayoutShape;
  control: SharedArrayBuffer;
  data: SharedArrayBuffer;
  /** Per shard counters (see ShardCounter), written by the shard after each step, read by anyone. */
  stats: SharedArrayBuffer;
}

/** The per-shard counters in `SharedMemory.stats`. */
export const ShardCounter = {
  steps: 0,
  stepMs: 1,
  lastStepMs: 2,
  submits: 3,
  collectives: 4,
  collectiveMs: 5,
  collectiveWaitMs: 6,
  gpuBytes: 7,
} as const;
const COUNTERS = 8;

/** Why the group stopped: written once into the abort cell, read by every waiter. */
export const AbortReason = { none: 0, failed: 1, shutdown: 2 } as const;

// Control cells.
const ABORT = 0;
const stageBarrier = (stage: number) => 1 + stage * 2; // [arrived, generation]
const handOff = (shape: SharedLayoutShape, boundary: number, tpRank: number) =>
  1 + shape.pp * 2 + (boundary * shape.tp + tpRank) * 2; // [sent, acknowledged]
const controlCells = (shape: SharedLayoutShape) => 1 + shape.pp * 2 + Math.max(0, shape.pp - 1) * shape.tp * 2;

// Data regions, in f32 values. All-reduce slots are double-buffered (see allReduceSlot).
const reduceRegion = (shape: SharedLayoutShape, stage: number) => stage * 2 * shape.tp * shape.slotFloats;
const handOffRegion = (shape: SharedLayoutShape, boundary: number, tpRank: number) =>
  shape.pp * 2 * shape.tp * shape.slotFloats + (boundary * shape.tp + tpRank) * shape.slotFloats;
const logitsRegion = (shape: SharedLayoutShape) =>
  shape.pp * 2 * shape.tp * shape.slotFloats + Math.max(0, shape.pp - 1) * shape.tp * shape.slotFloats;

export function createSharedMemory(shape: SharedLayoutShape): SharedMemory {
  if (typeof SharedArrayBuffer === 'undefined') {
    throw new Error(
      'SharedArrayBuffer is unavailable: in a browser the page must be cross-origin isolated ' +
        '(Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: require-corp).',
    );
  }
  const floats = logitsRegion(shape) + shape.maxSequences * shape.vocabSize;
  return {
    shape,
    control: new SharedArrayBuffer(controlCells(shape) * 4),
    data: new SharedArrayBuffer(floats * 4),
    stats: new SharedArrayBuffer(shape.tp * shape.pp * COUNTERS * 8),
  };
}

/** A typed view of the shared memory for one participant. */
export class SharedViews {
  readonly control: Int32Array;
  readonly data: Float32Array;

  constructor(readonly memory: SharedMemory) {
    this.control = new Int32Array(memory.control);
    this.data = new Float32Array(memory.data);
  }

  get shape(): SharedLayoutShape {
    return this.memory.shape;
  }

  abortCell(): number {
    return ABORT;
  }

  stageBarrierCell(stage: number): number {
    return stageBarrier(stage);
  }

  handOffCell(boundary: number, tpRank: number): number {
    return handOff(this.shape, boundary, tpRank);
  }

  /** The slot where `tpRank` of `stage` puts its partial sum for all-reduce number `round`. */
  allReduceSlot(stage: number, round: number, tpRank: number, count: number): Float32Array {
    const set = round % 2; // double-buffered: a fast shard may write round r+1 while others read round r
    const start = reduceRegion(this.shape, stage) + (set * this.shape.tp + tpRank) * this.shape.slotFloats;
    return this.data.subarray(start, start + count);
  }

  handOffData(boundary: number, tpRank: number, count: number): Float32Array {
    const start = handOffRegion(this.shape, boundary, tpRank);
    return this.data.subarray(start, start + count);
  }

  /** The whole vocabulary's logits of sampled row `row`; each last-stage shard writes its own slice. */
  logits(row: number): Float32Array {
    const start = logitsRegion(this.shape) + row * this.shape.vocabSize;
    return this.data.subarray(start, start + this.shape.vocabSize);
  }

  /** The counters of shard `rank`. */
  shardCounters(rank: number): Float64Array {
    return new Float64Array(this.memory.stats, rank * COUNTERS * 8, COUNTERS);
  }

  /** Marks the group as stopped and wakes every waiter so nobody waits for a deadline. */
  abort(reason: number): void {
    Atomics.compareExchange(this.control, ABORT, AbortReason.none, reason);
    for (let cell = 0; cell < this.control.length; cell++) Atomics.notify(this.control, cell);
  }

  aborted(): number {
    return Atomics.load(this.control, ABORT);
  }
}
