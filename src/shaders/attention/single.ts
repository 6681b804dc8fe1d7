// Attention, one workgroup per (token, head): the kernel for devices and shapes the others do not fit.
//
// One workgroup per (token, head) walks all keys of its sequence in tiles of 64
//   positions: each thread scores one key of the tile, the tile's scores update a running max
//   and sum (online softmax, so any context length streams through fixed workgroup memory), and
//   each thread accumulates its own slice of the head's output dimensions from the tile's value
//   rows. Many tokens (prefill) give the GPU plenty of workgroups this way.
import type { GpuContext } from '../../gpu/device.ts';
import { kernelOp, params, uniformBuffer, workgroupGrid, type KernelOp } from '../../gpu/kernel.ts';
import { attentionBindingsWgsl, attentionBuffers, attentionScale, checkHeadGroups, NO_SCORE_WGSL, type AttentionIo } from './common.ts';
import type { AttentionShape, KvPaging } from './paging.ts';

const ATTENTION_WORKGROUP_SIZE = 64;

/** The 'single' kernel for a shape (the token count is a uniform). */
export function attentionWgsl(shape: Omit<AttentionShape, 'nTokens'>, paging: KvPaging): string {
  const { nHeads, nKvHeads, headDim } = shape;
  return /* wgsl */ `
struct Params { nTokens: u32, scale: f32 }

${attentionBindingsWgsl('f32', 'out', paging)}
const WG = ${ATTENTION_WORKGROUP_SIZE}u;
const N_HEADS = ${nHeads}u;
const HEADS_PER_KV_HEAD = ${nHeads / nKvHeads}u;
const HEAD_DIM = ${headDim}u;
const Q_WIDTH = ${nHeads * headDim}u;
const KV_WIDTH = ${nKvHeads * headDim}u;
const DIMS_PER_THREAD = ${Math.ceil(headDim / ATTENTION_WORKGROUP_SIZE)}u;
${NO_SCORE_WGSL}

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

/** The 'single' kernel's op: one workgroup per (token, head). */
export function singleAttentionOp(gpu: GpuContext, io: AttentionIo, out: GPUBuffer, shape: AttentionShape): KernelOp {
  const { nTokens, nHeads, headDim } = shape;
  checkHeadGroups(shape, 'attentionOp');
  const workgroupBytes = (headDim + 2 * ATTENTION_WORKGROUP_SIZE) * 4;
  if (workgroupBytes > gpu.limits.maxComputeWorkgroupStorageSize) {
    throw new Error(`attentionOp: headDim ${headDim} needs ${workgroupBytes} bytes of workgroup storage`);
  }
  const uniforms = uniformBuffer(gpu.device, 'attention params', params([nTokens, { f32: attentionScale(headDim) }]));
  return kernelOp(gpu.device, 'attention', attentionWgsl(shape, io.paging), attentionBuffers(io, out, uniforms), workgroupGrid(nTokens * nHeads));
}
