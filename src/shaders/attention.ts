// Attention over the paged KV cache, with grouped-query heads: the family's entry. It picks one
// of three kernels, each in its own file under attention/ ('auto': split for at most
// SPLIT_MAX_TOKENS tokens, else tiled where the device's limits allow it, else single):
//
//   attention/paging.ts    the cache layout (block tables, vLLM's PagedAttention) and its WGSL
//   attention/kv-write.ts  the cache write (`ropeAndCacheWriteOp` in rope.ts fuses it with RoPE)
//   attention/single.ts    one workgroup per (token, head)
//   attention/split.ts     split-K over positions for decode (flash-decoding) + the combine
//   attention/tiled.ts     flash-attention tiles for prefill
//   attention/common.ts    the bindings, options and WGSL helpers the kernels share
import type { GpuContext } from '../gpu/device.ts';
import type { KernelOp } from '../gpu/kernel.ts';
import type { AttentionOptions, AttentionVariant } from './attention/common.ts';
import type { AttentionShape, KvPaging } from './attention/paging.ts';
import { singleAttentionOp } from './attention/single.ts';
import { splitAttentionOps, splitAttentionPlan } from './attention/split.ts';
import { tiledAttentionOp, tiledAttentionPlan } from './attention/tiled.ts';

export type { AttentionOptions, AttentionVariant } from './attention/common.ts';
export { pagingWgsl, type AttentionShape, type KvCacheShape, type KvPaging } from './attention/paging.ts';
export { kvCacheWriteOp, kvCacheWriteWgsl } from './attention/kv-write.ts';
export { attentionWgsl } from './attention/single.ts';
export { attentionCombineWgsl, defaultSplitChunk, splitAttentionPlan, splitAttentionWgsl, splitScratchBytes, type SplitAttentionPlan } from './attention/split.ts';
export { tiledAttentionPlan, tiledAttentionWgsl, type TiledAttentionPlan } from './attention/tiled.ts';

/** 'auto' splits over positions when a step has at most this many tokens (decode batches). */
export const SPLIT_MAX_TOKENS = 8;

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

/** Bytes of the split kernel's scratch buffer for this shape (0 when the op would pick 'single' or 'tiled'). */
export function attentionScratchBytes(
  gpu: Pick<GpuContext, 'limits'>,
  shape: AttentionShape,
  paging: Pick<KvPaging, 'blockSize' | 'blocksPerSequence'>,
  options: Pick<AttentionOptions, 'variant' | 'chunk' | 'maxHeadsPerWorkgroup' | 'queryRows' | 'keysPerTile'> = {},
): number {
  return attentionVariant(gpu, shape, options) === 'split' ? splitAttentionPlan(gpu, shape, paging, options).scratchBytes : 0;
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
  const io = { q, kCache, vCache, positions, paging };
  const variant = attentionVariant(gpu, shape, options);
  if (variant === 'single') return [singleAttentionOp(gpu, io, out, shape)];
  if (variant === 'tiled') return [tiledAttentionOp(gpu, io, out, shape, options)];
  return splitAttentionOps(gpu, io, out, shape, options);
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
  return singleAttentionOp(gpu, { q, kCache, vCache, positions, paging }, out, shape);
}
