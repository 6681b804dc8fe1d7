// The Llama forward pass, top to bottom, the way llama2.c's forward() reads.
//
// It runs over a shard view (which layers, heads, FFN columns and vocabulary rows this device
// holds) and records its work into a program; the collective steps (`allReduceSum`,
// `sendHidden`, ...) are the only places where shards meet. On one device they vanish.

import type { GpuContext } from '../gpu/device.ts';
import { storageBuffer } from '../gpu/kernel.ts';
import { ropePositionScale, type LlamaConfig } from '../model/config.ts';
import { attentionOp, kvCacheWriteOp } from '../shaders/attention.ts';
import { embeddingOps } from '../shaders/embedding.ts';
import { addOp, swigluOp } from '../shaders/elementwise.ts';
import { matmulOps } from '../shaders/matmul.ts';
import { rmsnormOp } from '../shaders/rmsnorm.ts';
import { ropeOp } from '../shaders/rope.ts';
import { argmaxOp, topKOp } from '../shaders/sampling.ts';
import type { KvCache } from './kv-cache.ts';
import { ProgramRecorder, type ProgramStep } from './program.ts';
import { rangeLength, type ShardView } from './shard-view.ts';
import type { LlamaWeights } from './weights.ts';

/** Scratch activations for up to `maxTokens` tokens per step, sized for this shard. */
export interface Activations {
  maxTokens: number;
  tokenIds: GPUBuffer; // u32 [T]
  positions: GPUBuffer; // u32 [T]
  x: GPUBuffer; // residual stream [T][dim]
  xNorm: GPUBuffer; // [T][dim]
  q: GPUBuffer; // [T][localHeads*headDim]
  k: GPUBuffer; // [T][localKvHeads*headDim]
  v: GPUBuffer; // [T][localKvHeads*headDim]
  attention: GPUBuffer; // [T][localHeads*headDim]
  blockOut: GPUBuffer; // [T][dim]: a block's (partial) output before the residual add
  gate: GPUBuffer; // [T][localFfn]
  up: GPUBuffer; // [T][localFfn]
  lastHidden: GPUBuffer; // [1][dim]: the last token's hidden state
  lastNorm: GPUBuffer; // [1][dim]
  logits: GPUBuffer; // [localVocab]
  best: GPUBuffer; // u32 [2]: the best token id (local to the vocab slice) and its logit's bits
}

export function createActivations(gpu: GpuContext, config: LlamaConfig, view: ShardView, maxTokens: number): Activations {
  const f32 = (label: string, count: number) => storageBuffer(gpu.device, label, count * 4);
  const { dim, headDim } = config;
  const headsWidth = rangeLength(view.heads) * headDim;
  const kvWidth = rangeLength(view.kvHeads) * headDim;
  const ffn = rangeLength(view.ffn);
  return {
    maxTokens,
    tokenIds: f32('token ids', maxTokens),
    positions: f32('positions', maxTokens),
    x: f32('x', maxTokens * dim),
    xNorm: f32('x normed', maxTokens * dim),
    q: f32('q', maxTokens * headsWidth),
    k: f32('k', maxTokens * kvWidth),
    v: f32('v', maxTokens * kvWidth),
    attention: f32('attention', maxTokens * headsWidth),
    blockOut: f32('block out', maxTokens * dim),
    gate: f32('ffn gate', maxTokens * ffn),
    up: f32('ffn up', maxTokens * ffn),
    lastHidden: f32('last hidden', dim),
    lastNorm: f32('last normed', dim),
    logits: f32('logits', rangeLength(view.vocab)),
    best: f32('best token', 2),
  };
}

export function destroyActivations(a: Activations): void {
  for (const value of Object.values(a)) if (typeof value === 'object') (value as GPUBuffer).destroy();
}

/**
 * Records one forward step over `nTokens` tokens (ids and positions already in `a`).
 * Leaves the last token's logits in `a.logits` and the best of them in `a.best`.
 */
export function recordLlamaForward(
  gpu: GpuContext,
  config: LlamaConfig,
  view: ShardView,
  weights: LlamaWeights,
  cache: KvCache,
  a: Activations,
  nTokens: number,
): ProgramStep[] {
  const f = new ProgramRecorder();
  const T = nTokens;
  const { dim, headDim, rmsEps: eps } = config;
  const heads = rangeLength(view.heads);
  const kvHeads = rangeLength(view.kvHeads);
  const ffn = rangeLength(view.ffn);
  const rope = {
    nTokens: T,
    headDim,
    ropeDims: config.ropeDims,
    base: config.ropeBase,
    positionScale: ropePositionScale(config),
    style: 'normal' as const,
  };
  const attentionShape = { nTokens: T, nHeads: heads, nKvHeads: kvHeads, headDim, contextLength: cache.contextLength };

  // x = embedding[token]   (or the previous stage's hidden state)
  if (view.embeds) f.run(...embeddingOps(gpu, weights.tokenEmbedding!, a.tokenIds, a.x, T));
  else f.receiveHidden(a.x, T * dim);

  for (let layer = view.layers.start; layer < view.layers.end; layer++) {
    const w = weights.layers[layer - view.layers.start]!;
    const { keys, values } = cache.layers[layer - view.layers.start]!;

    // Attention: x += Wo · softmax(rope(Wq·n) · rope(Wk·n)ᵀ / √d) · (Wv·n),  n = rmsnorm(x)
    f.run(rmsnormOp(gpu, a.x, w.attentionNorm, a.xNorm, T, dim, eps));
    f.run(...matmulOps(gpu, w.query, a.xNorm, a.q, T));
    f.run(...matmulOps(gpu, w.key, a.xNorm, a.k, T));
    f.run(...matmulOps(gpu, w.value, a.xNorm, a.v, T));
    f.run(ropeOp(gpu, a.q, a.positions, { ...rope, nHeads: heads }));
    f.run(ropeOp(gpu, a.k, a.positions, { ...rope, nHeads: kvHeads }));
    f.run(kvCacheWriteOp(gpu, a.k, a.v, a.positions, keys, values, attentionShape));
    f.run(attentionOp(gpu, a.q, keys, values, a.positions, a.attention, attentionShape));
    f.run(...matmulOps(gpu, w.output, a.attention, a.blockOut, T));
    f.allReduceSum(a.blockOut, T * dim, `layer ${layer} attention`); // each shard summed only its heads
    f.run(addOp(gpu, a.x, a.blockOut, a.x, T * dim));

    // Feed-forward: x += Wdown · (silu(Wgate·n) ⊙ (Wup·n)),  n = rmsnorm(x)
    f.run(rmsnormOp(gpu, a.x, w.ffnNorm, a.xNorm, T, dim, eps));
    f.run(...matmulOps(gpu, w.gate, a.xNorm, a.gate, T));
    f.run(...matmulOps(gpu, w.up, a.xNorm, a.up, T));
    f.run(swigluOp(gpu, a.gate, a.up, a.gate, T * ffn));
    f.run(...matmulOps(gpu, w.down, a.gate, a.blockOut, T));
    f.allReduceSum(a.blockOut, T * dim, `layer ${layer} ffn`); // each shard summed only its columns
    f.run(addOp(gpu, a.x, a.blockOut, a.x, T * dim));
  }

  if (!view.samples) {
    f.sendHidden(a.x, T * dim);
    return f.steps;
  }

  // logits = Wout · rmsnorm(x_last): only the last token's, which is all that sampling needs.
  f.copy(a.x, (T - 1) * dim * 4, a.lastHidden, 0, dim * 4);
  f.run(rmsnormOp(gpu, a.lastHidden, weights.outputNorm!, a.lastNorm, 1, dim, eps));
  f.run(...matmulOps(gpu, weights.output!, a.lastNorm, a.logits, 1));
  // The best token: over the whole vocabulary the argmax id is enough; over a slice the shards
  // also need its logit, to agree on the global winner without gathering all logits.
  const localVocab = rangeLength(view.vocab);
  if (localVocab === config.vocabSize) f.run(argmaxOp(gpu, a.logits, a.best, 1, localVocab));
  else f.run(topKOp(gpu, a.logits, a.best, 1, localVocab, 1));
  return f.steps;
}
