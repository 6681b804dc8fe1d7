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
// Attention runs one workgroup per (token, head). The workgroup walks the cache in tiles of
// WORKGROUP_SIZE positions: each thread scores one key of the tile, the tile's scores update a
// running max and sum (online softmax, so any context length streams through fixed workgroup
// memory), and then each thread accumulates its own slice of the head's output dimensions from
// the tile's value rows. The same kernel serves prefill (many tokens, each at its own position)
// and decode (one token, long context); split-K over positions for long decodes comes later.

import type { GpuContext } from '../gpu/device.ts';
import { kernelOp, params, uniformBuffer, workgroupGrid, type KernelOp } from '../gpu/kernel.ts';

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

/** The WGSL that maps (slot, position) to a cache row through the block table. */
function pagingWgsl(paging: KvPaging): string {
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

/**
 * Causal attention for `nTokens` queries (`q`: `[nTokens][nHeads*headDim]`) against the cache:
 * token t at position p attends to positions 0..p of its own sequence with kv head
 * `h / (nHeads/nKvHeads)`, scale 1/sqrt(headDim). Writes `out`: `[nTokens][nHeads*headDim]`.
 * The cache must already hold this step's keys and values (encode kvCacheWriteOp first).
 */
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
