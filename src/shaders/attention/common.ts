// What the attention kernels share: the variant and its options, the bindings every kernel takes
// (q, the paged cache, positions, slots, block table, its output and uniforms, in that order),
// and the WGSL helpers the split and tiled kernels both use.
import { pagingWgsl, type AttentionShape, type KvPaging } from './paging.ts';

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

/** The buffers an attention kernel reads and writes (its `q`, `out` / partials are `[token][head * headDim]`). */
export interface AttentionIo {
  q: GPUBuffer;
  kCache: GPUBuffer;
  vCache: GPUBuffer;
  positions: GPUBuffer;
  paging: KvPaging;
}

/** The score a masked or absent key gets: below any real score, so exp(NO_SCORE - max) is 0. */
export const NO_SCORE_WGSL = 'const NO_SCORE = -3.0e38; // below any real score; exp(NO_SCORE - max) is 0';

/** 4 where K, V, q and the output can be read as vec4f (headDim % 4 == 0), else 1. */
export function vectorWidth(headDim: number): 1 | 4 {
  return headDim % 4 === 0 ? 4 : 1;
}

/** The WGSL product of two elements: `dot` for vec4f, `*` for f32. */
export function dotWgsl(vec: 1 | 4): (a: string, b: string) => string {
  return vec === 4 ? (a, b) => `dot(${a}, ${b})` : (a, b) => `${a} * ${b}`;
}

/** The bindings of every attention kernel (it declares its own `Params`), and the paging functions. */
export function attentionBindingsWgsl(element: 'f32' | 'vec4f', output: 'out' | 'partials', paging: KvPaging): string {
  return /* wgsl */ `@group(0) @binding(0) var<storage, read> q: array<${element}>;
@group(0) @binding(1) var<storage, read> kCache: array<${element}>;
@group(0) @binding(2) var<storage, read> vCache: array<${element}>;
@group(0) @binding(3) var<storage, read> positions: array<u32>;
@group(0) @binding(4) var<storage, read> tokenSlots: array<u32>;
@group(0) @binding(5) var<storage, read> blockTable: array<u32>;
@group(0) @binding(6) var<storage, read_write> ${output}: array<${element}>;
@group(0) @binding(7) var<uniform> p: Params;
${pagingWgsl(paging)}`;
}

/** The buffers for `attentionBindingsWgsl`, in binding order. */
export function attentionBuffers(io: AttentionIo, output: GPUBuffer, uniforms: GPUBuffer): GPUBuffer[] {
  return [io.q, io.kCache, io.vCache, io.positions, io.paging.tokenSlots, io.paging.blockTable, output, uniforms];
}

/** The softmax scale 1/sqrt(headDim), as the f32 the kernels get. */
export function attentionScale(headDim: number): number {
  return Math.fround(1 / Math.sqrt(headDim));
}

/** Grouped-query heads: every kv head serves the same number of query heads. */
export function checkHeadGroups(shape: Pick<AttentionShape, 'nHeads' | 'nKvHeads'>, who: string): void {
  if (shape.nHeads % shape.nKvHeads !== 0) throw new Error(`${who}: nHeads ${shape.nHeads} is not a multiple of nKvHeads ${shape.nKvHeads}`);
}

