// The KV cache and causal attention with grouped-query heads.
//
// KV cache layout (one K and one V buffer per layer, f32), paged:
//   cache[row][kvHead * headDim + d]     i.e. [totalBlocks * blockSize][nKvHeads * headDim]
// Positions are grouped into blocks of `blockSize` rows. Each sequence has a block table that maps
// its logical block (position / blockSize) to a physical block, so the row of position p of the
// sequence in slot s is  blockTable[s][p / blockSize] * blockSize + p % blockSize.  Sequences take
// and return blocks as they start and end (vLLM's PagedAttention), and a batch can mix tokens of
// many sequences: each token names its sequence slot.
//
// Three attention kernels, picked by `attentionOps` ('auto': split for at most SPLIT_MAX_TOKENS
// tokens, else tiled where the device's limits allow it, else single):
//
// * single: one workgroup per (token, head) walks all keys of its sequence in tiles of 64
//   positions: each thread scores one key of the tile, the tile's scores update a running max
//   and sum (online softmax, so any context length streams through fixed workgroup memory), and
//   each thread accumulates its own slice of the head's output dimensions from the tile's value
//   rows. Many tokens (prefill) give the GPU plenty of workgroups this way.
//
// * split (flash-decoding): for decode, one workgroup per (token, head) would leave the GPU idle
//   and walk a long context serially. Positions are cut into chunks of CHUNK positions and one
//   workgroup per (token, kv head, query-head group, chunk) walks only its chunk, for all the
//   query heads that share the kv head (GQA: each K/V row is loaded once for up to 8 heads),
//   reading K and V as vec4 when headDim % 4 == 0. It leaves a partial (max, sum,
//   unnormalized acc[headDim]) per (token, head, chunk) in a scratch buffer; a second small
//   kernel merges each (token, head)'s partials with log-sum-exp rescaling into `out`.
//   The number of chunks comes from the sequence capacity (blockSize × blocksPerSequence), not
//   from the positions, so one recorded program serves every step: workgroups whose chunk starts
//   past their token's position write a neutral partial (max NO_SCORE, sum 0) and stop, and the
//   combine skips neutral partials.
//
// * tiled (flash attention, for prefill): one workgroup of 128 threads per (block of BQ
//   consecutive tokens, kv head, group of QH query heads of that kv head): ROWS = BQ × QH query
//   rows share every K/V tile. It walks keys in tiles of BK positions: the tile's keys go to
//   workgroup memory once, every (row, key) score is computed, one thread per row updates its
//   online softmax (max, sum, the factor that rescales the accumulators, the tile's weights in
//   place of the scores), the tile's values replace its keys, and each thread accumulates its
//   (row, column) outputs; 4 barriers per tile. A batch may mix sequences, so the block's tokens
//   are walked in runs: consecutive tokens of one slot share a key range 0..(largest position of
//   the run) through that slot's block table, each row masks keys past its own position and rows
//   outside the run mask everything; a run's rows are written after its last tile, then the next
//   run starts from key 0 (one flat loop over (run, tile), so lavapipe compiles it quickly).
//   Tiles are picked by `tiledAttentionPlan` to fit 16 KiB of workgroup memory: e.g. 32 rows ×
//   16 keys for headDim 64, 16 × 8 for headDim 128; headDims whose smallest tiles do not fit
//   fall back to single under 'auto'.
//
// `ropeAndCacheWriteOp` (rope.ts) fuses the two RoPE dispatches and the cache write below.

import type { GpuContext } from '../gpu/device.ts';
import { kernelOp, params, storageBuffer, uniformBuffer, workgroupGrid, type KernelOp } from '../gpu/kernel.ts';

export interface KvCacheShape {
  nTokens: number;
  nKvHeads: number;
  headDim: number;
}

/** How tokens find their cache rows: sequence slot per token and a block table per slot. */
export interface KvPaging {
  /** u32 per token: the sequence slot the token belongs to. */
  tokenSlots: GPUBuffer;
  /** u32 [slots][blocksPerSequence]: the physical block of each logical block of each slot. */
  blockTable: GPUBuffer;
  /** Positions per block. */
  blockSize: number;
  /** Logical blocks per sequence (a sequence holds at most blocksPerSequence × blockSize positions). */
  blocksPerSequence: number;
}

/** The WGSL that maps (slot, position) to a cache row through the block table (needs a `blockTable` binding). */
export function pagingWgsl(paging: KvPaging): string {
  return /* wgsl */ `
const BLOCK_SIZE = ${paging.blockSize}u;
const BLOCKS_PER_SEQUENCE = ${paging.blocksPerSequence}u;
const SEQUENCE_CAPACITY = ${paging.blockSize * paging.blocksPerSequence}u;
fn cacheRow(slot: u32, position: u32) -> u32 {
  return blockTable[slot * BLOCKS_PER_SEQUENCE + position / BLOCK_SIZE] * BLOCK_SIZE + position % BLOCK_SIZE;
}
`;
}

export interface AttentionShape extends KvCacheShape {
  nHeads: number;
}

const WRITE_WORKGROUP_SIZE = 256;
const ATTENTION_WORKGROUP_SIZE = 64;

export function kvCacheWriteWgsl(shape: Omit<KvCacheShape, 'nTokens'>, paging: KvPaging): string {
  return /* wgsl */ `
struct Params { nTokens: u32 }

@group(0) @binding(0) var<storage, read> k: array<f32>;
@group(0) @binding(1) var<storage, read> v: array<f32>;
@group(0) @binding(2) var<storage, read> positions: array<u32>;
@group(0) @binding(3) var<storage, read> tokenSlots: array<u32>;
@group(0) @binding(4) var<storage, read> blockTable: array<u32>;
@group(0) @binding(5) var<storage, read_write> kCache: array<f32>;
@group(0) @binding(6) var<storage, read_write> vCache: array<f32>;
@group(0) @binding(7) var<uniform> p: Params;

const WG = ${WRITE_WORKGROUP_SIZE}u;
const KV_WIDTH = ${shape.nKvHeads * shape.headDim}u;
${pagingWgsl(paging)}
@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let index = gid.x + gid.y * nwg.x * WG;
  let token = index / KV_WIDTH;
  if (token >= p.nTokens) { return; }
  let position = positions[token];
  if (position >= SEQUENCE_CAPACITY) { return; } // a full sequence drops the write rather than corrupt memory
  let column = index % KV_WIDTH;
  let row = cacheRow(tokenSlots[token], position);
  kCache[row * KV_WIDTH + column] = k[index];
  vCache[row * KV_WIDTH + column] = v[index];
}
`;
}

/** Writes each token's K and V rows (`[nTokens][nKvHeads*headDim]`) into its sequence's cache row for its position. */
export function kvCacheWriteOp(
  gpu: GpuContext,
  k: GPUBuffer,
  v: GPUBuffer,
  positions: GPUBuffer,
  paging: KvPaging,
  kCache: GPUBuffer,
  vCache: GPUBuffer,
  shape: KvCacheShape,
): KernelOp {
  const uniforms = uniformBuffer(gpu.device, 'kv write params', params([shape.nTokens]));
  const elements = shape.nTokens * shape.nKvHeads * shape.headDim;
  return kernelOp(
    gpu.device,
    'kv cache write',
    kvCacheWriteWgsl(shape, paging),
    [k, v, positions, paging.tokenSlots, paging.blockTable, kCache, vCache, uniforms],
    workgroupGrid(Math.ceil(elements / WRITE_WORKGROUP_SIZE)),
  );
}

export function attentionWgsl(shape: Omit<AttentionShape, 'nTokens'>, paging: KvPaging): string {
  const { nHeads, nKvHeads, headDim } = shape;
  return /* wgsl */ `
struct Params { nTokens: u32, scale: f32 }

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> kCache: array<f32>;
@group(0) @binding(2) var<storage, read> vCache: array<f32>;
@group(0) @binding(3) var<storage, read> positions: array<u32>;
@group(0) @binding(4) var<storage, read> tokenSlots: array<u32>;
@group(0) @binding(5) var<storage, read> blockTable: array<u32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
@group(0) @binding(7) var<uniform> p: Params;
${pagingWgsl(paging)}
const WG = ${ATTENTION_WORKGROUP_SIZE}u;
const N_HEADS = ${nHeads}u;
const HEADS_PER_KV_HEAD = ${nHeads / nKvHeads}u;
const HEAD_DIM = ${headDim}u;
const Q_WIDTH = ${nHeads * headDim}u;
const KV_WIDTH = ${nKvHeads * headDim}u;
const DIMS_PER_THREAD = ${Math.ceil(headDim / ATTENTION_WORKGROUP_SIZE)}u;
const NO_SCORE = -3.0e38; // below any real score; exp(NO_SCORE - max) is 0

var<workgroup> query: array<f32, HEAD_DIM>;
var<workgroup> scores: array<f32, WG>;
var<workgroup> weights: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let item = wid.x + wid.y * nwg.x;
  if (item >= p.nTokens * N_HEADS) { return; }
  let token = item / N_HEADS;
  let head = item % N_HEADS;
  let kvColumn = (head / HEADS_PER_KV_HEAD) * HEAD_DIM;
  let keyCount = min(positions[token], SEQUENCE_CAPACITY - 1u) + 1u; // causal: positions 0..p
  let slot = tokenSlots[token];

  let queryStart = token * Q_WIDTH + head * HEAD_DIM;
  for (var d = lid; d < HEAD_DIM; d += WG) { query[d] = q[queryStart + d]; }
  workgroupBarrier();

  var runningMax = NO_SCORE;
  var runningSum = 0.0;
  var acc: array<f32, DIMS_PER_THREAD>;
  for (var tile = 0u; tile < keyCount; tile += WG) {
    // 1. Each thread scores one key of the tile.
    let key = tile + lid;
    var score = NO_SCORE;
    if (key < keyCount) {
      let keyStart = cacheRow(slot, key) * KV_WIDTH + kvColumn;
      var dot = 0.0;
      for (var d = 0u; d < HEAD_DIM; d++) { dot += query[d] * kCache[keyStart + d]; }
      score = dot * p.scale;
    }
    scores[lid] = score;
    workgroupBarrier();

    // 2. Rescale the running state to the new max (every thread computes the same values).
    var tileMax = scores[0];
    for (var j = 1u; j < WG; j++) { tileMax = max(tileMax, scores[j]); }
    let newMax = max(runningMax, tileMax);
    let correction = exp(runningMax - newMax);
    weights[lid] = select(0.0, exp(score - newMax), key < keyCount);
    workgroupBarrier();

    // 3. Each thread accumulates its output dimensions over the tile's values.
    let tileLength = min(WG, keyCount - tile);
    var tileSum = 0.0;
    for (var j = 0u; j < tileLength; j++) { tileSum += weights[j]; }
    runningSum = runningSum * correction + tileSum;
    for (var c = 0u; c < DIMS_PER_THREAD; c++) {
      let d = lid + c * WG;
      if (d < HEAD_DIM) {
        var value = acc[c] * correction;
        for (var j = 0u; j < tileLength; j++) {
          value += weights[j] * vCache[cacheRow(slot, tile + j) * KV_WIDTH + kvColumn + d];
        }
        acc[c] = value;
      }
    }
    runningMax = newMax;
    // No third barrier: the next tile writes scores (last read before the barrier above) and
    // writes weights only after its own first barrier, which every thread reaches after step 3.
  }

  let inverseSum = 1.0 / runningSum;
  for (var c = 0u; c < DIMS_PER_THREAD; c++) {
    let d = lid + c * WG;
    if (d < HEAD_DIM) { out[queryStart + d] = acc[c] * inverseSum; }
  }
}
`;
}

export type AttentionVariant = 'auto' | 'single' | 'split' | 'tiled';

export interface AttentionOptions {
  /**
   * 'auto' (default): 'split' for at most SPLIT_MAX_TOKENS tokens (decode), else 'tiled' where
   * the device can run it for this shape (`tiledAttentionPlan`), else 'single'.
   */
  variant?: AttentionVariant;
  /** Split: positions per chunk (default `defaultSplitChunk(capacity)`); any positive integer. */
  chunk?: number;
  /**
   * Split: where the partials go, at least `attentionScratchBytes(shape, paging, options)` bytes.
   * Default: a buffer made for (and owned by) the op. Ops run in order, so the attention ops of
   * every layer (and of every program of one device) can share one scratch buffer sized for the
   * largest shape.
   */
  scratch?: GPUBuffer;
  /** Split: at most this many query heads of one kv head per workgroup (default 8). */
  maxHeadsPerWorkgroup?: number;
  /** Tiled: query rows (tokens × heads of one kv head) per workgroup, instead of the planned ones. */
  queryRows?: number;
  /** Tiled: key positions per K/V tile, instead of the planned ones. */
  keysPerTile?: number;
}

/** 'auto' splits over positions when a step has at most this many tokens (decode batches). */
export const SPLIT_MAX_TOKENS = 8;
const SPLIT_WORKGROUP_SIZE = 64;
const COMBINE_WORKGROUP_SIZE = 64;
const MAX_HEADS_PER_WORKGROUP = 8;
/** Floats before each partial's acc: max, sum and two pad floats (keeps acc vec4-aligned). */
const PARTIAL_STATS = 4;

/** Positions per split chunk for a sequence capacity: at least 64, and at most 256 chunks per sequence. */
export function defaultSplitChunk(capacity: number): number {
  let chunk = 64;
  while (Math.ceil(capacity / chunk) > 256) chunk *= 2;
  return chunk;
}

/** How the split kernel cuts its work for one shape (exported for tests and benchmarks). */
export interface SplitAttentionPlan {
  chunk: number;
  /** Chunks per (token, head): ceil(SEQUENCE_CAPACITY / chunk), whatever the positions. */
  nChunks: number;
  /** Keys scored per step of the walk (≤ chunk). */
  tile: number;
  /** 4: K, V, q and the partials are read as vec4f; 1: scalar (headDim % 4 != 0). */
  vec: 1 | 4;
  /** Query heads (of one kv head) per workgroup; they share every K/V load. */
  headsPerWorkgroup: number;
  /** Workgroups per (token, kv head, chunk): (nHeads / nKvHeads) / headsPerWorkgroup. */
  headGroups: number;
  /** Threads that walk different keys of a tile in the value pass (each owns a column slice). */
  keyLanes: number;
  colsPerThread: number;
  workgroupBytes: number;
  scratchBytes: number;
}

export function splitAttentionPlan(
  gpu: Pick<GpuContext, 'limits'>,
  shape: AttentionShape,
  paging: Pick<KvPaging, 'blockSize' | 'blocksPerSequence'>,
  options: Pick<AttentionOptions, 'chunk' | 'maxHeadsPerWorkgroup'> = {},
): SplitAttentionPlan {
  const { nHeads, nKvHeads, headDim } = shape;
  if (nHeads % nKvHeads !== 0) throw new Error(`attention: nHeads ${nHeads} is not a multiple of nKvHeads ${nKvHeads}`);
  const capacity = paging.blockSize * paging.blocksPerSequence;
  const chunk = options.chunk ?? defaultSplitChunk(capacity);
  if (!Number.isInteger(chunk) || chunk < 1) throw new Error(`attention: split chunk ${chunk} must be a positive integer`);
  const WG = SPLIT_WORKGROUP_SIZE;
  const nChunks = Math.ceil(capacity / chunk);
  const tile = Math.min(WG, chunk);
  const vec = headDim % 4 === 0 ? 4 : 1;
  const headCols = headDim / vec;
  const keyLanes = headCols <= WG ? Math.min(Math.floor(WG / headCols), tile) : 1;
  const colsPerThread = Math.ceil(headCols / WG);
  const group = nHeads / nKvHeads;
  const maxHeads = options.maxHeadsPerWorkgroup ?? MAX_HEADS_PER_WORKGROUP;
  const bytesFor = (heads: number): number =>
    4 * (heads * headDim + 2 * heads * tile + 2 * heads + 2 * tile + (keyLanes > 1 ? heads * keyLanes * (headCols * vec + 1) : 0));
  let headsPerWorkgroup = 0;
  for (let heads = Math.min(group, Math.max(1, maxHeads)); heads >= 1; heads--) {
    if (group % heads === 0 && bytesFor(heads) <= gpu.limits.maxComputeWorkgroupStorageSize) {
      headsPerWorkgroup = heads;
      break;
    }
  }
  if (headsPerWorkgroup === 0) {
    throw new Error(`attention: headDim ${headDim} needs ${bytesFor(1)} bytes of workgroup storage (limit ${gpu.limits.maxComputeWorkgroupStorageSize})`);
  }
  return {
    chunk,
    nChunks,
    tile,
    vec,
    headsPerWorkgroup,
    headGroups: group / headsPerWorkgroup,
    keyLanes,
    colsPerThread,
    workgroupBytes: bytesFor(headsPerWorkgroup),
    scratchBytes: splitScratchBytes(shape, paging, chunk),
  };
}

/** Bytes of the split kernel's partials for this shape: (max, sum, acc[headDim]) per token, head and chunk. */
export function splitScratchBytes(
  shape: AttentionShape,
  paging: Pick<KvPaging, 'blockSize' | 'blocksPerSequence'>,
  chunk: number = defaultSplitChunk(paging.blockSize * paging.blocksPerSequence),
): number {
  const nChunks = Math.ceil((paging.blockSize * paging.blocksPerSequence) / chunk);
  return shape.nTokens * shape.nHeads * nChunks * (shape.headDim + PARTIAL_STATS) * 4;
}

/** Bytes of the split kernel's scratch buffer for this shape (0 when the op would pick 'single' or 'tiled'). */
export function attentionScratchBytes(
  gpu: Pick<GpuContext, 'limits'>,
  shape: AttentionShape,
  paging: Pick<KvPaging, 'blockSize' | 'blocksPerSequence'>,
  options: Pick<AttentionOptions, 'variant' | 'chunk' | 'maxHeadsPerWorkgroup' | 'queryRows' | 'keysPerTile'> = {},
): number {
  return attentionVariant(gpu, shape, options) === 'split' ? splitAttentionPlan(gpu, shape, paging, options).scratchBytes : 0;
}

/** The kernel `attentionOps` runs for this shape and options ('auto' resolved). */
export function attentionVariant(
  gpu: Pick<GpuContext, 'limits'>,
  shape: AttentionShape,
  options: Pick<AttentionOptions, 'variant' | 'queryRows' | 'keysPerTile'> = {},
): Exclude<AttentionVariant, 'auto'> {
  const variant = options.variant ?? 'auto';
  if (variant !== 'auto') return variant;
  if (shape.nTokens <= SPLIT_MAX_TOKENS) return 'split';
  return tiledAttentionPlan(gpu, shape, options) ? 'tiled' : 'single';
}

export function splitAttentionWgsl(shape: Omit<AttentionShape, 'nTokens'>, paging: KvPaging, plan: SplitAttentionPlan): string {
  const { nHeads, nKvHeads, headDim } = shape;
  const { vec, tile, headsPerWorkgroup: QH, keyLanes, colsPerThread } = plan;
  const T = vec === 4 ? 'vec4f' : 'f32';
  const headCols = headDim / vec;
  const dot = vec === 4 ? (a: string, b: string) => `dot(${a}, ${b})` : (a: string, b: string) => `${a} * ${b}`;
  const writeStats = (at: string, max: string, sum: string): string =>
    vec === 4 ? `partials[${at}] = vec4f(${max}, ${sum}, 0.0, 0.0);` : `partials[${at}] = ${max}; partials[${at} + 1u] = ${sum};`;
  // The value pass leaves each thread a slice of the acc of its key lane; lanes are summed here.
  const writePartials =
    keyLanes === 1
      ? /* wgsl */ `
  if (lane == 0u) {
    for (var h = 0u; h < QH; h++) {
      let at = partialSlot(token, firstHead + h, chunk);
      if (lid == 0u) { ${writeStats('at', 'runningMax[h]', 'sums[h]')} }
      for (var c = 0u; c < COLS_PER_THREAD; c++) {
        let col = column + c * WG;
        if (col < HEAD_COLS) { partials[at + STATS_WIDTH + col] = acc[h * COLS_PER_THREAD + c]; }
      }
    }
  }`
      : /* wgsl */ `
  // Sum the key lanes' accumulators and sums through workgroup memory, all heads at once: one
  // barrier (a loop over heads with two barriers each took lavapipe ~30 s to compile).
  if (lane < KEY_LANES) {
    for (var h = 0u; h < QH; h++) {
      laneAcc[h * LANE_COLS + lid] = acc[h];
      if (column == 0u) { laneSums[h * KEY_LANES + lane] = sums[h]; }
    }
  }
  workgroupBarrier();
  for (var i = lid; i < QH * HEAD_COLS; i += WG) {
    let h = i / HEAD_COLS;
    let col = i % HEAD_COLS;
    var total = laneAcc[h * LANE_COLS + col];
    for (var l = 1u; l < KEY_LANES; l++) { total += laneAcc[h * LANE_COLS + l * HEAD_COLS + col]; }
    let at = partialSlot(token, firstHead + h, chunk);
    partials[at + STATS_WIDTH + col] = total;
    if (col == 0u) {
      var sum = 0.0;
      for (var l = 0u; l < KEY_LANES; l++) { sum += laneSums[h * KEY_LANES + l]; }
      ${writeStats('at', 'runningMax[h]', 'sum')}
    }
  }`;
  return /* wgsl */ `
struct Params { nTokens: u32, scale: f32 }

@group(0) @binding(0) var<storage, read> q: array<${T}>;
@group(0) @binding(1) var<storage, read> kCache: array<${T}>;
@group(0) @binding(2) var<storage, read> vCache: array<${T}>;
@group(0) @binding(3) var<storage, read> positions: array<u32>;
@group(0) @binding(4) var<storage, read> tokenSlots: array<u32>;
@group(0) @binding(5) var<storage, read> blockTable: array<u32>;
@group(0) @binding(6) var<storage, read_write> partials: array<${T}>;
@group(0) @binding(7) var<uniform> p: Params;
${pagingWgsl(paging)}
const WG = ${SPLIT_WORKGROUP_SIZE}u;
const CHUNK = ${plan.chunk}u;
const N_CHUNKS = ${plan.nChunks}u;
const TILE = ${tile}u;
const N_HEADS = ${nHeads}u;
const N_KV_HEADS = ${nKvHeads}u;
const HEADS_PER_KV_HEAD = ${nHeads / nKvHeads}u;
const QH = ${QH}u; // query heads per workgroup, all of one kv head
const HEAD_GROUPS = ${plan.headGroups}u;
const HEAD_COLS = ${headCols}u; // ${T} columns per head
const Q_COLS = ${nHeads * headCols}u;
const KV_COLS = ${nKvHeads * headCols}u;
const KEY_LANES = ${keyLanes}u;
const COLS_PER_THREAD = ${colsPerThread}u;
const STATS_WIDTH = ${PARTIAL_STATS / vec}u; // ${T}s of (max, sum, pad, pad) before each partial's acc
const PARTIAL_STRIDE = STATS_WIDTH + HEAD_COLS;
const NO_SCORE = -3.0e38; // below any real score; exp(NO_SCORE - max) is 0

var<workgroup> query: array<${T}, ${QH * headCols}>;
var<workgroup> scores: array<f32, ${QH * tile}>;
var<workgroup> weights: array<f32, ${QH * tile}>;
var<workgroup> runningMax: array<f32, QH>;
var<workgroup> correction: array<f32, QH>;
var<workgroup> rows: array<u32, ${2 * tile}>; // cache rows of the tile's keys, double-buffered by tile parity
${keyLanes > 1 ? `const LANE_COLS = KEY_LANES * HEAD_COLS; // one head's lane accumulators
var<workgroup> laneAcc: array<${T}, ${QH * keyLanes * headCols}>;
var<workgroup> laneSums: array<f32, ${QH * keyLanes}>;` : ''}

fn partialSlot(token: u32, head: u32, chunk: u32) -> u32 {
  return ((token * N_HEADS + head) * N_CHUNKS + chunk) * PARTIAL_STRIDE;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let item = wid.x + wid.y * nwg.x;
  let chunk = item % N_CHUNKS;
  let group = item / N_CHUNKS;
  let token = group / (N_KV_HEADS * HEAD_GROUPS);
  if (token >= p.nTokens) { return; }
  let kvHead = (group / HEAD_GROUPS) % N_KV_HEADS;
  let firstHead = kvHead * HEADS_PER_KV_HEAD + (group % HEAD_GROUPS) * QH;
  let keyCount = min(positions[token], SEQUENCE_CAPACITY - 1u) + 1u; // causal: positions 0..p
  let chunkStart = chunk * CHUNK;
  if (chunkStart >= keyCount) {
    // Past this token's position: a neutral partial, which the combine skips.
    if (lid < QH) { let at = partialSlot(token, firstHead + lid, chunk); ${writeStats('at', 'NO_SCORE', '0.0')} }
    return;
  }
  let chunkEnd = min(chunkStart + CHUNK, keyCount);
  let slot = tokenSlots[token];
  let kvColumn = kvHead * HEAD_COLS;

  let queryStart = token * Q_COLS + firstHead * HEAD_COLS; // the group's heads are adjacent
  for (var i = lid; i < QH * HEAD_COLS; i += WG) { query[i] = q[queryStart + i]; }
  if (lid < QH) { runningMax[lid] = NO_SCORE; }
  workgroupBarrier();

  // The value pass: thread = (key lane, column); lane l takes keys l, l + KEY_LANES, ... of a tile.
  let lane = lid / HEAD_COLS;
  let column = lid % HEAD_COLS;
  var acc: array<${T}, ${QH * colsPerThread}>;
  var sums: array<f32, QH>;
  var parity = 0u;
  for (var tile = chunkStart; tile < chunkEnd; tile += TILE) {
    let tileLength = min(TILE, chunkEnd - tile);
    let rowBase = parity * TILE;
    // 1. Each thread scores one key of the tile against all QH queries (one K load for all).
    if (lid < tileLength) {
      let row = cacheRow(slot, tile + lid);
      rows[rowBase + lid] = row;
      let keyStart = row * KV_COLS + kvColumn;
      var dots: array<f32, QH>;
      // Zeroed explicitly: on Dawn + lavapipe this loop-body \`var\` kept the previous tile's sums.
      for (var h = 0u; h < QH; h++) { dots[h] = 0.0; }
      for (var c = 0u; c < HEAD_COLS; c++) {
        let k = kCache[keyStart + c];
        for (var h = 0u; h < QH; h++) { dots[h] += ${dot('query[h * HEAD_COLS + c]', 'k')}; }
      }
      for (var h = 0u; h < QH; h++) { scores[h * TILE + lid] = dots[h] * p.scale; }
    }
    workgroupBarrier();

    // 2. Per head, the new running max and the factor that rescales what came before.
    if (lid < QH) {
      var tileMax = NO_SCORE;
      for (var j = 0u; j < tileLength; j++) { tileMax = max(tileMax, scores[lid * TILE + j]); }
      let newMax = max(runningMax[lid], tileMax);
      correction[lid] = exp(runningMax[lid] - newMax);
      runningMax[lid] = newMax;
    }
    workgroupBarrier();

    // 3. The tile's softmax weights.
    if (lid < tileLength) {
      for (var h = 0u; h < QH; h++) { weights[h * TILE + lid] = exp(scores[h * TILE + lid] - runningMax[h]); }
    }
    workgroupBarrier();

    // 4. Rescale and accumulate this thread's columns over its lane's keys (one V load for all heads).
    if (lane < KEY_LANES) {
      for (var h = 0u; h < QH; h++) {
        let f = correction[h];
        sums[h] *= f;
        for (var c = 0u; c < COLS_PER_THREAD; c++) { acc[h * COLS_PER_THREAD + c] *= f; }
      }
      for (var j = lane; j < tileLength; j += KEY_LANES) {
        let valueStart = rows[rowBase + j] * KV_COLS + kvColumn;
        for (var c = 0u; c < COLS_PER_THREAD; c++) {
          let col = column + c * WG;
          if (col < HEAD_COLS) {
            let value = vCache[valueStart + col];
            for (var h = 0u; h < QH; h++) { acc[h * COLS_PER_THREAD + c] += weights[h * TILE + j] * value; }
          }
        }
        for (var h = 0u; h < QH; h++) { sums[h] += weights[h * TILE + j]; }
      }
    }
    parity ^= 1u;
    // No barrier here: the next tile writes scores and rows[other parity] (not read in step 4),
    // and writes correction and weights only after its first barrier.
  }
${writePartials}
}
`;
}

/** Threads of a tiled workgroup. */
const TILED_WORKGROUP_SIZE = 128;
/** The tiled kernel's workgroup-memory budget: the WebGPU default, also where a device offers more (more would cut occupancy). */
const TILED_MAX_WORKGROUP_BYTES = 16384;
/** Planned tiles: smaller ones would barely share K/V loads or would spend most of their time in barriers ('single' then). */
const TILED_ROW_CHOICES = [32, 16, 8, 4];
const TILED_KEY_CHOICES = [32, 16, 8];

/** How the tiled (flash-attention) kernel cuts its work for one shape (exported for tests and benchmarks). */
export interface TiledAttentionPlan {
  /** 4: q, K, V and out are read and written as vec4f; 1: scalar (headDim % 4 != 0). */
  vec: 1 | 4;
  /** Consecutive query tokens per workgroup (BQ). */
  tokensPerBlock: number;
  /** Query heads of one kv head per workgroup; with the block's tokens they make the query rows. */
  headsPerWorkgroup: number;
  /** Workgroups per (token block, kv head): (nHeads / nKvHeads) / headsPerWorkgroup. */
  headGroups: number;
  /** Query rows per workgroup: tokensPerBlock × headsPerWorkgroup; each K/V tile is read once for all of them. */
  rows: number;
  /** Key positions per K/V tile (BK). */
  keysPerTile: number;
  workgroupSize: number;
  workgroupBytes: number;
}

/** Workgroup bytes of the tiled kernel: queries, one K/V tile (rows padded by one column), scores, row state, tile rows. */
function tiledWorkgroupBytes(rows: number, keys: number, headDim: number, vec: number): number {
  return 4 * (rows * headDim + keys * (headDim + vec) + rows * keys + 4 * rows + keys);
}

/**
 * The tiled plan for a shape, or undefined when this device cannot run it (too few invocations
 * per workgroup, or a headDim whose smallest tiles overflow the workgroup-memory budget).
 * `queryRows` / `keysPerTile` force the tile sizes (tests); otherwise the fitting pair with the
 * least K/V traffic plus synchronisation per (row, key), 1/rows + 1/keys, wins (ties: more rows).
 */
export function tiledAttentionPlan(
  gpu: Pick<GpuContext, 'limits'>,
  shape: Omit<AttentionShape, 'nTokens'>,
  options: Pick<AttentionOptions, 'queryRows' | 'keysPerTile'> = {},
): TiledAttentionPlan | undefined {
  const { nHeads, nKvHeads, headDim } = shape;
  if (nHeads % nKvHeads !== 0) throw new Error(`attention: nHeads ${nHeads} is not a multiple of nKvHeads ${nKvHeads}`);
  for (const [name, value] of [['queryRows', options.queryRows], ['keysPerTile', options.keysPerTile]] as const) {
    if (value !== undefined && (!Number.isInteger(value) || value < 1)) throw new Error(`attention: tiled ${name} ${value} must be a positive integer`);
  }
  const WG = TILED_WORKGROUP_SIZE;
  if (gpu.limits.maxComputeInvocationsPerWorkgroup < WG || gpu.limits.maxComputeWorkgroupSizeX < WG) return undefined;
  const budget = Math.min(gpu.limits.maxComputeWorkgroupStorageSize, TILED_MAX_WORKGROUP_BYTES);
  const vec = headDim % 4 === 0 ? 4 : 1;
  const group = nHeads / nKvHeads;
  // Rows = tokens × heads: as many of the group's heads as fit (a divisor of the group), then tokens.
  const split = (target: number): { tokens: number; heads: number } => {
    let heads = Math.min(group, target);
    while (group % heads !== 0) heads--;
    return { tokens: Math.max(1, Math.floor(target / heads)), heads };
  };
  let best: { tokens: number; heads: number; keys: number; bytes: number; cost: number } | undefined;
  for (const target of options.queryRows !== undefined ? [options.queryRows] : TILED_ROW_CHOICES) {
    const { tokens, heads } = split(target);
    const rows = tokens * heads;
    for (const keys of options.keysPerTile !== undefined ? [options.keysPerTile] : TILED_KEY_CHOICES) {
      const bytes = tiledWorkgroupBytes(rows, keys, headDim, vec);
      if (bytes > budget) continue;
      const cost = 1 / rows + 1 / keys;
      if (!best || cost < best.cost - 1e-12) best = { tokens, heads, keys, bytes, cost };
    }
  }
  if (!best) return undefined;
  return {
    vec,
    tokensPerBlock: best.tokens,
    headsPerWorkgroup: best.heads,
    headGroups: group / best.heads,
    rows: best.tokens * best.heads,
    keysPerTile: best.keys,
    workgroupSize: WG,
    workgroupBytes: best.bytes,
  };
}

export function tiledAttentionWgsl(shape: Omit<AttentionShape, 'nTokens'>, paging: KvPaging, plan: TiledAttentionPlan): string {
  const { nHeads, nKvHeads, headDim } = shape;
  const { vec, tokensPerBlock: BQ, headsPerWorkgroup: QH, rows: ROWS, keysPerTile: BK, workgroupSize: WG } = plan;
  const T = vec === 4 ? 'vec4f' : 'f32';
  const headCols = headDim / vec;
  const dot = vec === 4 ? (a: string, b: string) => `dot(${a}, ${b})` : (a: string, b: string) => `${a} * ${b}`;
  return /* wgsl */ `
// headCols: HEAD_COLS at run time, the dot loop's bound: with the constant, lavapipe unrolled the
// loop and took ~10 s to compile the kernel (its per-lane workgroup loads made the barrier
// coroutines huge). The output loops stride by WG for the same reason (~1 s less).
struct Params { nTokens: u32, scale: f32, headCols: u32 }

@group(0) @binding(0) var<storage, read> q: array<${T}>;
@group(0) @binding(1) var<storage, read> kCache: array<${T}>;
@group(0) @binding(2) var<storage, read> vCache: array<${T}>;
@group(0) @binding(3) var<storage, read> positions: array<u32>;
@group(0) @binding(4) var<storage, read> tokenSlots: array<u32>;
@group(0) @binding(5) var<storage, read> blockTable: array<u32>;
@group(0) @binding(6) var<storage, read_write> out: array<${T}>;
@group(0) @binding(7) var<uniform> p: Params;
${pagingWgsl(paging)}
const WG = ${WG}u;
const BQ = ${BQ}u; // query tokens per block
const QH = ${QH}u; // query heads per workgroup, all of one kv head
const ROWS = ${ROWS}u; // query rows: row r = (token r / QH, head r % QH) of the block
const BK = ${BK}u; // key positions per K/V tile
const N_KV_HEADS = ${nKvHeads}u;
const HEADS_PER_KV_HEAD = ${nHeads / nKvHeads}u;
const HEAD_GROUPS = ${plan.headGroups}u;
const HEAD_COLS = ${headCols}u; // ${T} columns per head
const TILE_STRIDE = HEAD_COLS + 1u; // a tile row padded by one column (spreads the score pass over memory banks)
const Q_COLS = ${nHeads * headCols}u;
const KV_COLS = ${nKvHeads * headCols}u;
const OUTS_PER_THREAD = ${Math.ceil((ROWS * headCols) / WG)}u;
const NO_SCORE = -3.0e38; // below any real score: marks masked keys

var<workgroup> query: array<${T}, ${ROWS * headCols}>;
var<workgroup> tileKv: array<${T}, ${BK * (headCols + 1)}>; // the tile's keys, then (same memory) its values
var<workgroup> scores: array<f32, ${ROWS * BK}>; // scores, then softmax weights
var<workgroup> rowEnd: array<u32, ROWS>; // keys row r sees in the current run; 0: not in the run
var<workgroup> rowMax: array<f32, ROWS>;
var<workgroup> rowSum: array<f32, ROWS>;
var<workgroup> rowScale: array<f32, ROWS>; // rescales what came before to the new max
var<workgroup> tileRows: array<u32, BK>; // cache rows of the tile's keys

// Causal: positions 0..p (a position past the capacity sees the whole sequence, as the other kernels).
fn keyCount(token: u32) -> u32 { return min(positions[token], SEQUENCE_CAPACITY - 1u) + 1u; }

// A run: the block's consecutive tokens from \`start\` that share a slot; they walk one key range.
struct Run { end: u32, slot: u32, keys: u32 }
fn runFrom(first: u32, start: u32, count: u32) -> Run {
  let slot = tokenSlots[first + start];
  var end = start;
  var keys = 0u;
  loop {
    if (end >= count) { break; }
    if (tokenSlots[first + end] != slot) { break; }
    keys = max(keys, keyCount(first + end));
    end++;
  }
  return Run(end, slot, keys);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let item = wid.x + wid.y * nwg.x;
  let headGroup = item % HEAD_GROUPS;
  let kvHead = (item / HEAD_GROUPS) % N_KV_HEADS;
  let first = (item / (HEAD_GROUPS * N_KV_HEADS)) * BQ;
  if (first >= p.nTokens) { return; }
  let count = min(BQ, p.nTokens - first);
  let queryStart = firstHeadColumn(kvHead, headGroup);
  let kvColumn = kvHead * HEAD_COLS;

  // The block's queries (rows of tokens past nTokens are zero and never written).
  for (var i = lid; i < ROWS * HEAD_COLS; i += WG) {
    let t = i / (QH * HEAD_COLS);
    var value = ${T}(0.0);
    if (t < count) { value = q[(first + t) * Q_COLS + queryStart + i % (QH * HEAD_COLS)]; }
    query[i] = value;
  }

  // This thread's outputs: acc[o] holds (row, column) = (i / HEAD_COLS, i % HEAD_COLS) for i = lid + o * WG.
  var acc: array<${T}, OUTS_PER_THREAD>;
  for (var o = 0u; o < OUTS_PER_THREAD; o++) { acc[o] = ${T}(0.0); }

  // One loop over (run, tile): a run's rows start fresh at tile 0 and are written after its last
  // tile. Every value that steers it comes from storage at uniform indices (uniform control flow).
  var runStart = 0u;
  var run = runFrom(first, 0u, count);
  var tile = 0u;
  loop {
    // 1. A new run resets its rows; all: load the tile's keys.
    if (tile == 0u && lid < ROWS) {
      let t = lid / QH;
      var end = 0u;
      if (t >= runStart && t < run.end) { end = keyCount(first + t); }
      rowEnd[lid] = end;
      rowMax[lid] = NO_SCORE;
      rowSum[lid] = 0.0;
    }
    let tileLength = min(BK, run.keys - tile);
    if (lid < tileLength) { tileRows[lid] = cacheRow(run.slot, tile + lid); }
    for (var i = lid; i < tileLength * HEAD_COLS; i += WG) {
      let k = i / HEAD_COLS;
      let c = i % HEAD_COLS;
      tileKv[k * TILE_STRIDE + c] = kCache[cacheRow(run.slot, tile + k) * KV_COLS + kvColumn + c];
    }
    workgroupBarrier();

    // 2. Scores of every (row, key) of the tile; keys past a row's position (or rows outside the run) are masked.
    for (var i = lid; i < ROWS * BK; i += WG) {
      let r = i / BK;
      let k = i % BK;
      var score = NO_SCORE;
      if (tile + k < rowEnd[r]) { // rowEnd <= run.keys, so k < tileLength
        var total = 0.0;
        for (var c = 0u; c < p.headCols; c++) { total += ${dot('query[r * HEAD_COLS + c]', 'tileKv[k * TILE_STRIDE + c]')}; }
        score = total * p.scale;
      }
      scores[i] = score;
    }
    workgroupBarrier();

    // 3. The tile's values replace its keys; one thread per row: online softmax (new max, rescale, weights).
    for (var i = lid; i < tileLength * HEAD_COLS; i += WG) {
      let k = i / HEAD_COLS;
      let c = i % HEAD_COLS;
      tileKv[k * TILE_STRIDE + c] = vCache[tileRows[k] * KV_COLS + kvColumn + c];
    }
    if (lid < ROWS) {
      var tileMax = NO_SCORE;
      for (var k = 0u; k < BK; k++) { tileMax = max(tileMax, scores[lid * BK + k]); }
      let oldMax = rowMax[lid];
      let newMax = max(oldMax, tileMax);
      let scale = exp(oldMax - newMax);
      var sum = 0.0;
      for (var k = 0u; k < BK; k++) {
        let s = scores[lid * BK + k];
        let w = select(0.0, exp(s - newMax), s > NO_SCORE);
        scores[lid * BK + k] = w;
        sum += w;
      }
      rowMax[lid] = newMax;
      rowScale[lid] = scale;
      rowSum[lid] = rowSum[lid] * scale + sum;
    }
    workgroupBarrier();

    // 4. Rescale and accumulate this thread's outputs over the tile's values.
    var o = 0u;
    for (var i = lid; i < ROWS * HEAD_COLS; i += WG) {
      let r = i / HEAD_COLS;
      let c = i % HEAD_COLS;
      var value = acc[o] * rowScale[r];
      for (var k = 0u; k < tileLength; k++) { value += scores[r * BK + k] * tileKv[k * TILE_STRIDE + c]; }
      acc[o] = value;
      o++;
    }

    // 5. The run's last tile: write its rows, move to the next run.
    tile += BK;
    if (tile >= run.keys) {
      o = 0u;
      for (var i = lid; i < ROWS * HEAD_COLS; i += WG) {
        let t = i / (QH * HEAD_COLS);
        if (t >= runStart && t < run.end) {
          out[(first + t) * Q_COLS + queryStart + i % (QH * HEAD_COLS)] = acc[o] * (1.0 / rowSum[i / HEAD_COLS]);
        }
        acc[o] = ${T}(0.0);
        o++;
      }
      runStart = run.end;
      if (runStart < count) { run = runFrom(first, runStart, count); }
      tile = 0u;
    }
    // The next tile overwrites tileKv, scores, tileRows and (new run) the row state read above.
    workgroupBarrier();
    if (runStart >= count) { break; }
  }
}

// Column (in ${T}s) of the first query head of this workgroup within a token's q / out row.
fn firstHeadColumn(kvHead: u32, headGroup: u32) -> u32 {
  return (kvHead * HEADS_PER_KV_HEAD + headGroup * QH) * HEAD_COLS;
}
`;
}

export function attentionCombineWgsl(shape: Omit<AttentionShape, 'nTokens'>, paging: Pick<KvPaging, 'blockSize' | 'blocksPerSequence'>, plan: Pick<SplitAttentionPlan, 'chunk' | 'nChunks'>): string {
  const { nHeads, headDim } = shape;
  return /* wgsl */ `
struct Params { nTokens: u32 }

@group(0) @binding(0) var<storage, read> partials: array<f32>;
@group(0) @binding(1) var<storage, read> positions: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

const WG = ${COMBINE_WORKGROUP_SIZE}u;
const SEQUENCE_CAPACITY = ${paging.blockSize * paging.blocksPerSequence}u;
const CHUNK = ${plan.chunk}u;
const N_CHUNKS = ${plan.nChunks}u;
const N_HEADS = ${nHeads}u;
const HEAD_DIM = ${headDim}u;
const PARTIAL_STRIDE = ${headDim + PARTIAL_STATS}u;
const DIMS_PER_THREAD = ${Math.ceil(headDim / COMBINE_WORKGROUP_SIZE)}u;
const NO_SCORE = -3.0e38;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let item = wid.x + wid.y * nwg.x; // token * N_HEADS + head
  if (item >= p.nTokens * N_HEADS) { return; }
  let keyCount = min(positions[item / N_HEADS], SEQUENCE_CAPACITY - 1u) + 1u;
  let chunks = min((keyCount + CHUNK - 1u) / CHUNK, N_CHUNKS);
  let first = item * N_CHUNKS * PARTIAL_STRIDE;
  var maxScore = NO_SCORE;
  var sum = 0.0;
  var acc: array<f32, DIMS_PER_THREAD>;
  for (var c = 0u; c < chunks; c++) {
    let at = first + c * PARTIAL_STRIDE;
    let partSum = partials[at + 1u];
    if (!(partSum > 0.0)) { continue; } // a neutral partial (a chunk past the position)
    let partMax = partials[at];
    let newMax = max(maxScore, partMax);
    let oldScale = exp(maxScore - newMax);
    let partScale = exp(partMax - newMax);
    sum = sum * oldScale + partSum * partScale;
    for (var i = 0u; i < DIMS_PER_THREAD; i++) {
      let d = lid + i * WG;
      if (d < HEAD_DIM) { acc[i] = acc[i] * oldScale + partials[at + ${PARTIAL_STATS}u + d] * partScale; }
    }
    maxScore = newMax;
  }
  let inverseSum = 1.0 / sum;
  for (var i = 0u; i < DIMS_PER_THREAD; i++) {
    let d = lid + i * WG;
    if (d < HEAD_DIM) { out[item * HEAD_DIM + d] = acc[i] * inverseSum; }
  }
}
`;
}

/**
 * Causal attention for `nTokens` queries (`q`: `[nTokens][nHeads*headDim]`) against the cache:
 * token t at position p attends to positions 0..p of its own sequence with kv head
 * `h / (nHeads/nKvHeads)`, scale 1/sqrt(headDim). Writes `out`: `[nTokens][nHeads*headDim]`.
 * The cache must already hold this step's keys and values (encode kvCacheWriteOp first).
 * Positions are read on the GPU at run time, so the ops can be replayed at any positions.
 * Returns one op ('single', 'tiled') or two ('split': the chunk walk, then the combine; the first
 * owns the scratch buffer unless `options.scratch` is given).
 */
export function attentionOps(
  gpu: GpuContext,
  q: GPUBuffer,
  kCache: GPUBuffer,
  vCache: GPUBuffer,
  positions: GPUBuffer,
  paging: KvPaging,
  out: GPUBuffer,
  shape: AttentionShape,
  options: AttentionOptions = {},
): KernelOp[] {
  const variant = attentionVariant(gpu, shape, options);
  if (variant === 'single') return [singleAttentionOp(gpu, q, kCache, vCache, positions, paging, out, shape)];
  if (variant === 'tiled') return [tiledAttentionOp(gpu, q, kCache, vCache, positions, paging, out, shape, options)];
  const { nTokens, nHeads, nKvHeads, headDim } = shape;
  const plan = splitAttentionPlan(gpu, shape, paging, options);
  const maxBinding = Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize);
  if (plan.scratchBytes > maxBinding) {
    throw new Error(`attention: split scratch of ${plan.scratchBytes} bytes exceeds the binding limit ${maxBinding}; use a larger chunk or the 'single' variant`);
  }
  let scratch = options.scratch;
  if (scratch && scratch.size < plan.scratchBytes) {
    throw new Error(`attention: scratch buffer of ${scratch.size} bytes is smaller than the ${plan.scratchBytes} bytes this shape needs`);
  }
  const ownScratch = !scratch;
  scratch ??= storageBuffer(gpu.device, 'attention partials', plan.scratchBytes);
  const scale = Math.fround(1 / Math.sqrt(headDim));
  const walkUniforms = uniformBuffer(gpu.device, 'attention split params', params([nTokens, { f32: scale }]));
  const walk = kernelOp(
    gpu.device,
    'attention split',
    splitAttentionWgsl(shape, paging, plan),
    [q, kCache, vCache, positions, paging.tokenSlots, paging.blockTable, scratch, walkUniforms],
    workgroupGrid(nTokens * nKvHeads * plan.headGroups * plan.nChunks, gpu.limits.maxComputeWorkgroupsPerDimension),
  );
  if (ownScratch) walk.owned.push(scratch);
  const combineUniforms = uniformBuffer(gpu.device, 'attention combine params', params([nTokens]));
  const combine = kernelOp(
    gpu.device,
    'attention combine',
    attentionCombineWgsl(shape, paging, plan),
    [scratch, positions, out, combineUniforms],
    workgroupGrid(nTokens * nHeads, gpu.limits.maxComputeWorkgroupsPerDimension),
  );
  return [walk, combine];
}

/** One-op attention for existing callers: the 'single' kernel (use attentionOps for the choice). */
export function attentionOp(
  gpu: GpuContext,
  q: GPUBuffer,
  kCache: GPUBuffer,
  vCache: GPUBuffer,
  positions: GPUBuffer,
  paging: KvPaging,
  out: GPUBuffer,
  shape: AttentionShape,
): KernelOp {
  return singleAttentionOp(gpu, q, kCache, vCache, positions, paging, out, shape);
}

function singleAttentionOp(
  gpu: GpuContext,
  q: GPUBuffer,
  kCache: GPUBuffer,
  vCache: GPUBuffer,
  positions: GPUBuffer,
  paging: KvPaging,
  out: GPUBuffer,
  shape: AttentionShape,
): KernelOp {
  const { nTokens, nHeads, nKvHeads, headDim } = shape;
  if (nHeads % nKvHeads !== 0) throw new Error(`attentionOp: nHeads ${nHeads} is not a multiple of nKvHeads ${nKvHeads}`);
  const workgroupBytes = (headDim + 2 * ATTENTION_WORKGROUP_SIZE) * 4;
  if (workgroupBytes > gpu.limits.maxComputeWorkgroupStorageSize) {
    throw new Error(`attentionOp: headDim ${headDim} needs ${workgroupBytes} bytes of workgroup storage`);
  }
  const scale = Math.fround(1 / Math.sqrt(headDim));
  const uniforms = uniformBuffer(gpu.device, 'attention params', params([nTokens, { f32: scale }]));
  return kernelOp(
    gpu.device,
    'attention',
    attentionWgsl(shape, paging),
    [q, kCache, vCache, positions, paging.tokenSlots, paging.blockTable, out, uniforms],
    workgroupGrid(nTokens * nHeads),
  );
}

function tiledAttentionOp(
  gpu: GpuContext,
  q: GPUBuffer,
  kCache: GPUBuffer,
  vCache: GPUBuffer,
  positions: GPUBuffer,
  paging: KvPaging,
  out: GPUBuffer,
  shape: AttentionShape,
  options: Pick<AttentionOptions, 'queryRows' | 'keysPerTile'>,
): KernelOp {
  const { nTokens, nKvHeads, headDim } = shape;
  const plan = tiledAttentionPlan(gpu, shape, options);
  if (!plan) {
    const smallest = tiledWorkgroupBytes(options.queryRows ?? 4, options.keysPerTile ?? 8, headDim, headDim % 4 === 0 ? 4 : 1);
    throw new Error(
      `attention: the tiled variant does not fit this device for headDim ${headDim} (${smallest} bytes of workgroup storage, budget ` +
        `${Math.min(gpu.limits.maxComputeWorkgroupStorageSize, TILED_MAX_WORKGROUP_BYTES)}; ${TILED_WORKGROUP_SIZE} invocations, limit ` +
        `${gpu.limits.maxComputeInvocationsPerWorkgroup}); use 'single'`,
    );
  }
  const scale = Math.fround(1 / Math.sqrt(headDim));
  const uniforms = uniformBuffer(gpu.device, 'attention tiled params', params([nTokens, { f32: scale }, headDim / plan.vec]));
  return kernelOp(
    gpu.device,
    'attention tiled',
    tiledAttentionWgsl(shape, paging, plan),
    [q, kCache, vCache, positions, paging.tokenSlots, paging.blockTable, out, uniforms],
    workgroupGrid(Math.ceil(nTokens / plan.tokensPerBlock) * nKvHeads * plan.headGroups, gpu.limits.maxComputeWorkgroupsPerDimension),
  );
}
