// The forward pass, top to bottom, the way llama2.c's forward() reads: one for every family
// (llama, qwen2, qwen3, phi3). A family's description (config.family, src/model/config.ts) only
// switches on what its blocks add — Q/K/V biases, per-head Q/K norms, the RoPE pair layout — the
// way llama.cpp's graph builders share their blocks; fused tensors are already split into their
// parts by the loader (weights.ts).
//
// It runs over a shard view (which layers, heads, FFN columns and vocabulary rows this device
// holds) and records its work into a program; the collective steps (`allReduceSum`,
// `sendHidden`, ...) are the only places where shards meet. On one device they vanish.

import type { GpuContext } from '../gpu/device.ts';
import { align16, storageBuffer } from '../gpu/kernel.ts';
import { ropePositionScale, type LlamaConfig } from '../model/config.ts';
import { attentionOps, SPLIT_MAX_TOKENS, splitScratchBytes } from '../shaders/attention.ts';
import { embeddingOps } from '../shaders/embedding.ts';
import { gatherRowsOp } from '../shaders/elementwise.ts';
import { matmulOps, type MatmulOptions, type MatmulOutput, type MatmulVariant } from '../shaders/matmul.ts';
import { rmsnormInPlaceOp, rmsnormOp } from '../shaders/rmsnorm.ts';
import { ropeAndCacheWriteOps } from '../shaders/rope.ts';
import { argmaxOp, MAX_TOP_K, topKOp } from '../shaders/sampling.ts';
import { maxSampledRows, type KvCache, type KvGeometry } from './kv-cache.ts';
import { ProgramRecorder, type ProgramStep } from './program.ts';
import { rangeLength, type Range, type ShardView } from './shard-view.ts';
import type { GpuMatrix, LayerWeights, LlamaWeights } from './weights.ts';

/** Kernel variants to use instead of the automatic choice (benchmarks compare them end to end). */
export interface KernelChoice {
  matmul?: MatmulVariant;
}

/** Scratch buffers for one step of up to `maxTokens` tokens sampling up to `maxSamples` of them, sized for this shard. */
export interface Activations {
  maxTokens: number;
  maxSamples: number;
  tokenIds: GPUBuffer; // u32 [T]
  positions: GPUBuffer; // u32 [T]: each token's position in its own sequence
  tokenSlots: GPUBuffer; // u32 [T]: each token's sequence slot
  blockTable: GPUBuffer; // u32 [maxSequences][blocksPerSequence]
  sampleRows: GPUBuffer; // u32 [S]: the tokens whose next-token logits are wanted
  x: GPUBuffer; // residual stream [T][dim]
  xNorm: GPUBuffer; // [T][dim]
  q: GPUBuffer; // [T][localHeads*headDim]
  k: GPUBuffer; // [T][localKvHeads*headDim]
  v: GPUBuffer; // [T][localKvHeads*headDim]
  attention: GPUBuffer; // [T][localHeads*headDim]
  attentionPartials: GPUBuffer; // split-K attention's per-chunk partials (decode steps), shared by every layer
  gate: GPUBuffer; // [T][localFfn]: Wgate·n
  ffnHidden: GPUBuffer; // [T][localFfn]: silu(Wgate·n) ⊙ (Wup·n)
  sampledHidden: GPUBuffer; // [S][dim]: the hidden states of the sampled tokens
  sampledNorm: GPUBuffer; // [S][dim]
  logits: GPUBuffer; // [S][localVocab]
  best: GPUBuffer; // u32 [S] best token ids (whole vocabulary), or [S][2] (id in the slice, logit bits)
  candidates: GPUBuffer; // u32 [S][k][2]: each sampled row's k best (id, logit bits), for top-k sampling
  orderedInput: GPUBuffer; // [max(T, S)][widest act-order input]: a GPTQ act-order weight's input, gathered into its column order
}

type BufferName = Exclude<keyof Activations, 'maxTokens' | 'maxSamples'>;

/**
 * Bytes of every activation buffer; the memory planner counts the same list. `orderedInputWidth`:
 * the widest input of a GPTQ act-order weight (0: none; see weights.ts orderedInputWidth).
 */
export function activationSizes(
  config: LlamaConfig,
  view: ShardView,
  maxTokens: number,
  geometry: KvGeometry,
  orderedInputWidth = 0,
): Record<BufferName, number> {
  const { dim, headDim } = config;
  const [T, S] = [maxTokens, maxSampledRows(geometry)];
  const headsWidth = rangeLength(view.heads) * headDim;
  const kvWidth = rangeLength(view.kvHeads) * headDim;
  const ffn = rangeLength(view.ffn);
  const words = {
    tokenIds: T,
    positions: T,
    tokenSlots: T,
    blockTable: geometry.maxSequences * geometry.blocksPerSequence,
    sampleRows: S,
    x: T * dim,
    xNorm: T * dim,
    q: T * headsWidth,
    k: T * kvWidth,
    v: T * kvWidth,
    attention: T * headsWidth,
    attentionPartials: splitScratchBytes({ nTokens: Math.min(T, SPLIT_MAX_TOKENS), nHeads: rangeLength(view.heads), nKvHeads: rangeLength(view.kvHeads), headDim }, geometry) / 4,
    gate: T * ffn,
    ffnHidden: T * ffn,
    sampledHidden: S * dim,
    sampledNorm: S * dim,
    logits: S * Math.max(1, rangeLength(view.vocab)),
    best: S * 2,
    candidates: S * MAX_TOP_K * 2,
    orderedInput: Math.max(T, S) * orderedInputWidth,
  };
  return Object.fromEntries(Object.entries(words).map(([name, n]) => [name, Math.max(16, align16(n * 4))])) as Record<BufferName, number>;
}

export function createActivations(gpu: GpuContext, config: LlamaConfig, view: ShardView, maxTokens: number, geometry: KvGeometry, orderedInputWidth = 0): Activations {
  const sizes = activationSizes(config, view, maxTokens, geometry, orderedInputWidth);
  const buffers = Object.fromEntries(
    Object.entries(sizes).map(([name, bytes]) => [name, storageBuffer(gpu.device, name, bytes)]),
  ) as Record<BufferName, GPUBuffer>;
  return { maxTokens, maxSamples: maxSampledRows(geometry), ...buffers };
}

export function destroyActivations(a: Activations): void {
  for (const value of Object.values(a)) if (typeof value === 'object') (value as GPUBuffer).destroy();
}

/**
 * The residual add rides in the projections that feed it (x += W·h). Under tensor parallelism
 * each shard's W·h is only a share of the sum: the shard holding the first of the split range
 * (heads, or FFN columns) adds its share onto x, the others write theirs over their copy of x,
 * and the all-reduce that follows sums the copies, leaving x + Σ shares on every shard.
 */
const addsResidual = (split: Range): boolean => split.start === 0;

/**
 * Records one forward step over `nTokens` tokens of any number of sequences (ids, positions,
 * slots, block table and sample rows already in `a`). Leaves the logits of the `nSamples`
 * sampled tokens in `a.logits` and the best of each in `a.best`.
 */
export function recordLlamaForward(
  gpu: GpuContext,
  config: LlamaConfig,
  view: ShardView,
  weights: LlamaWeights,
  cache: KvCache,
  a: Activations,
  nTokens: number,
  nSamples: number,
  kernels: KernelChoice = {},
  /** Also find each sampled row's `topK` best candidates (whole vocabulary only), 0 for none. */
  topK = 0,
): ProgramStep[] {
  const f = new ProgramRecorder();
  const [T, S] = [nTokens, nSamples];
  // y = W·x for every row part of W, with the chosen matmul variant ('auto' picks by token count);
  // `accumulate` makes it y += W·x, `gate` makes it y = silu(gate) ⊙ W·x. For W stacked from
  // several weights, y is one output per weight (the rows of each). A GPTQ act-order W gathers x
  // into its column order first, in a.orderedInput.
  const matmul = (w: GpuMatrix, x: GPUBuffer, y: GPUBuffer | MatmulOutput[], tokens: number, epilogue: Pick<MatmulOptions, 'accumulate' | 'gate' | 'bias'> = {}) =>
    matmulOps(gpu, w, x, y, tokens, { variant: kernels.matmul, orderedInput: a.orderedInput, ...epilogue });
  const { dim, headDim, rmsEps: eps } = config;
  const heads = rangeLength(view.heads);
  const kvHeads = rangeLength(view.kvHeads);
  const rope = {
    nTokens: T,
    headDim,
    ropeDims: config.ropeDims,
    base: config.ropeBase,
    positionScale: ropePositionScale(config),
    freqFactors: weights.ropeFrequencyFactors,
    style: config.family.ropeStyle,
  };
  const attentionShape = { nTokens: T, nHeads: heads, nKvHeads: kvHeads, headDim };
  // Where a layer's stacked Q, K and V weight (weights.ts) puts its rows, and their biases (if any).
  const qkv = (bias: LayerWeights['qkvBias']): MatmulOutput[] => [
    { buffer: a.q, rows: heads * headDim, bias: bias?.query },
    { buffer: a.k, rows: kvHeads * headDim, bias: bias?.key },
    { buffer: a.v, rows: kvHeads * headDim, bias: bias?.value },
  ];
  const paging = {
    tokenSlots: a.tokenSlots,
    blockTable: a.blockTable,
    blockSize: cache.geometry.blockSize,
    blocksPerSequence: cache.geometry.blocksPerSequence,
  };

  // x = embedding[token]   (or the previous stage's hidden state)
  if (view.embeds) f.run(...embeddingOps(gpu, weights.tokenEmbedding!, a.tokenIds, a.x, T));
  else f.receiveHidden(a.x, T * dim);

  for (let layer = view.layers.start; layer < view.layers.end; layer++) {
    const w = weights.layers[layer - view.layers.start]!;
    const { keys, values } = cache.layers[layer - view.layers.start]!;

    // Attention: x += Wo · softmax(rope(q) · rope(k)ᵀ / √d) · v,  with n = rmsnorm(x) and
    // q = Wq·n (+ bq), k = Wk·n (+ bk), v = Wv·n (+ bv); Qwen3 normalizes each head of q and k.
    f.run(rmsnormOp(gpu, a.x, w.attentionNorm, a.xNorm, T, dim, eps));
    if (w.qkv) {
      f.run(...matmul(w.qkv, a.xNorm, qkv(w.qkvBias), T)); // [q; k; v] = [Wq; Wk; Wv]·n, one dispatch
    } else {
      f.run(...matmul(w.query, a.xNorm, a.q, T, { bias: w.qkvBias?.query }));
      f.run(...matmul(w.key, a.xNorm, a.k, T, { bias: w.qkvBias?.key }));
      f.run(...matmul(w.value, a.xNorm, a.v, T, { bias: w.qkvBias?.value }));
    }
    if (w.qkNorm) {
      f.run(rmsnormInPlaceOp(gpu, a.q, w.qkNorm.query, T * heads, headDim, eps));
      f.run(rmsnormInPlaceOp(gpu, a.k, w.qkNorm.key, T * kvHeads, headDim, eps));
    }
    f.run(...ropeAndCacheWriteOps(gpu, a.q, a.k, a.v, a.positions, paging, keys, values, { ...rope, nHeads: heads, nKvHeads: kvHeads }));
    f.run(...attentionOps(gpu, a.q, keys, values, a.positions, paging, a.attention, attentionShape, { scratch: a.attentionPartials }));
    f.run(...matmul(w.output, a.attention, a.x, T, { accumulate: addsResidual(view.heads) }));
    f.allReduceSum(a.x, T * dim, `layer ${layer} attention`);

    // Feed-forward: x += Wdown · (silu(Wgate·n) ⊙ (Wup·n)),  n = rmsnorm(x)
    f.run(rmsnormOp(gpu, a.x, w.ffnNorm, a.xNorm, T, dim, eps));
    f.run(...matmul(w.gate, a.xNorm, a.gate, T));
    f.run(...matmul(w.up, a.xNorm, a.ffnHidden, T, { gate: a.gate }));
    f.run(...matmul(w.down, a.ffnHidden, a.x, T, { accumulate: addsResidual(view.ffn) }));
    f.allReduceSum(a.x, T * dim, `layer ${layer} ffn`);
  }

  if (!view.samples) {
    f.sendHidden(a.x, T * dim);
    return f.steps;
  }
  if (S === 0) return f.steps; // a prompt chunk that is not its prompt's end: nothing to sample yet

  // logits = Wout · rmsnorm(x) for the sampled tokens only (each sequence's last), which is all
  // that sampling needs.
  f.run(gatherRowsOp(gpu, a.x, a.sampleRows, a.sampledHidden, S, dim));
  f.run(rmsnormOp(gpu, a.sampledHidden, weights.outputNorm!, a.sampledNorm, S, dim, eps));
  f.run(...matmul(weights.output!, a.sampledNorm, a.logits, S));
  // The best token: over the whole vocabulary the argmax id is enough; over a slice the shards
  // also need its logit, to agree on the global winner without gathering all logits.
  const localVocab = rangeLength(view.vocab);
  if (localVocab === config.vocabSize) f.run(argmaxOp(gpu, a.logits, a.best, S, localVocab));
  else f.run(topKOp(gpu, a.logits, a.best, S, localVocab, 1));
  // Temperature sampling with top-k only looks at the k best: they are all it reads back.
  if (topK > 0 && localVocab === config.vocabSize) f.run(topKOp(gpu, a.logits, a.candidates, S, localVocab, topK));
  return f.steps;
}
