// Split-K attention (flash-decoding), the decode kernel, and the combine that merges its partials.
//
// For decode, one workgroup per (token, head) would leave the GPU idle
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
import type { GpuContext } from '../../gpu/device.ts';
import { kernelOp, params, storageBuffer, uniformBuffer, workgroupGrid, type KernelOp } from '../../gpu/kernel.ts';
import { attentionBindingsWgsl, attentionBuffers, attentionScale, checkHeadGroups, dotWgsl, NO_SCORE_WGSL, vectorWidth, type AttentionIo, type AttentionOptions } from './common.ts';
import type { AttentionShape, KvPaging } from './paging.ts';

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
  checkHeadGroups(shape, 'attention');
  const capacity = paging.blockSize * paging.blocksPerSequence;
  const chunk = options.chunk ?? defaultSplitChunk(capacity);
  if (!Number.isInteger(chunk) || chunk < 1) throw new Error(`attention: split chunk ${chunk} must be a positive integer`);
  const WG = SPLIT_WORKGROUP_SIZE;
  const nChunks = Math.ceil(capacity / chunk);
  const tile = Math.min(WG, chunk);
  const vec = vectorWidth(headDim);
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

export function splitAttentionWgsl(shape: Omit<AttentionShape, 'nTokens'>, paging: KvPaging, plan: SplitAttentionPlan): string {
  const { nHeads, nKvHeads, headDim } = shape;
  const { vec, tile, headsPerWorkgroup: QH, keyLanes, colsPerThread } = plan;
  const T = vec === 4 ? 'vec4f' : 'f32';
  const headCols = headDim / vec;
  const dot = dotWgsl(vec);
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

${attentionBindingsWgsl(T, 'partials', paging)}
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
${NO_SCORE_WGSL}

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
${NO_SCORE_WGSL}

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

/** The split kernel's two ops: the chunk walk, then the combine (the walk owns the scratch buffer unless `options.scratch` is given). */
export function splitAttentionOps(gpu: GpuContext, io: AttentionIo, out: GPUBuffer, shape: AttentionShape, options: AttentionOptions): KernelOp[] {
  const { nTokens, nHeads, nKvHeads, headDim } = shape;
  const plan = splitAttentionPlan(gpu, shape, io.paging, options);
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
  const walkUniforms = uniformBuffer(gpu.device, 'attention split params', params([nTokens, { f32: attentionScale(headDim) }]));
  const walk = kernelOp(
    gpu.device,
    'attention split',
    splitAttentionWgsl(shape, io.paging, plan),
    attentionBuffers(io, scratch, walkUniforms),
    workgroupGrid(nTokens * nKvHeads * plan.headGroups * plan.nChunks, gpu.limits.maxComputeWorkgroupsPerDimension),
  );
  if (ownScratch) walk.owned.push(scratch);
  const combineUniforms = uniformBuffer(gpu.device, 'attention combine params', params([nTokens]));
  const combine = kernelOp(
    gpu.device,
    'attention combine',
    attentionCombineWgsl(shape, io.paging, plan),
    [scratch, io.positions, out, combineUniforms],
    workgroupGrid(nTokens * nHeads, gpu.limits.maxComputeWorkgroupsPerDimension),
  );
  return [walk, combine];
}
