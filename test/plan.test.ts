// The sharding plan on the real stories260K files: who holds which layers / heads / KV heads / FFN
// columns / vocabulary rows, the memory each shard needs, and the splits that are refused.
import { beforeAll, describe, expect, it } from 'vitest';
import { wholeModelView, rangeLength, type Range } from '../src/engine/shard-view.ts';
import { destroyWeights, loadLlamaWeights } from '../src/engine/weights.ts';
import { llamaConfig, type LlamaConfig } from '../src/model/config.ts';
import { GGMLType } from '../src/model/ggml-type.ts';
import { gpuLayout } from '../src/model/repack.ts';
import { readGGUF, type GGUFFile } from '../src/model/gguf.ts';
import { randomLlamaGGUF } from '../src/model/random-llama.ts';
import { bytesSource } from '../src/model/source.ts';
import { planShards, ShardPlanError, splitHeads, splitProportionally, type DeviceDescription, type ShardPlan, type ShardPlanOptions } from '../src/sharding/plan.ts';
import { testGpu } from './helpers/gpu.ts';
import { openModelFile } from './helpers/models.ts';

const MiB = 1024 * 1024;

/** A roomy device (H100-like limits, no budget) unless overridden. */
function devices(n: number, overrides: Partial<DeviceDescription> = {}): DeviceDescription[] {
  return Array.from({ length: n }, (_, i) => ({
    name: `gpu${i}`,
    maxBufferSize: 4 * 1024 * MiB,
    maxStorageBufferBindingSize: 2 * 1024 * MiB,
    ...overrides,
  }));
}

function options(tp: number, pp: number, more: Partial<ShardPlanOptions> = {}): ShardPlanOptions {
  return { tp, pp, contextLength: 512, maxBatchTokens: 64, devices: devices(tp * pp), ...more };
}

const open = openModelFile;

/** Ranges that, in order, tile [0, total) with no gap and no overlap, each non-empty. */
function expectPartition(ranges: Range[], total: number): void {
  let next = 0;
  for (const r of ranges) {
    expect(r.start).toBe(next);
    expect(r.end).toBeGreaterThan(r.start);
    next = r.end;
  }
  expect(next).toBe(total);
}

/**
 * The invariants every plan must keep: stage-major ranks, contiguous layer ranges, per stage a
 * partition of heads / FFN columns, the last stage a partition of the vocabulary, and for every
 * shard the attention kernel's mapping (local head h → local KV head h / (localHeads/localKvHeads))
 * landing on the KV head that query head really uses.
 */
function expectValidPlan(plan: ShardPlan, config: LlamaConfig): void {
  const { tp, pp } = plan;
  expect(plan.shards).toHaveLength(tp * pp);
  const group = config.nHeads / config.nKvHeads;
  const stageLayers: Range[] = [];
  for (let stage = 0; stage < pp; stage++) {
    const shards = plan.shards.slice(stage * tp, (stage + 1) * tp);
    shards.forEach((s, tpRank) => expect(s).toMatchObject({ rank: stage * tp + tpRank, stage, tpRank }));
    for (const s of shards) expect(s.view.layers).toEqual(shards[0]!.view.layers);
    stageLayers.push(shards[0]!.view.layers);
    expectPartition(shards.map((s) => s.view.heads), config.nHeads);
    expectPartition(shards.map((s) => s.view.ffn), config.ffnDim);
    for (const s of shards) {
      expect(s.view.embeds).toBe(stage === 0);
      expect(s.view.samples).toBe(stage === pp - 1);
      const localHeads = rangeLength(s.view.heads);
      const localKv = rangeLength(s.view.kvHeads);
      expect(localHeads % localKv).toBe(0);
      for (let h = 0; h < localHeads; h++) {
        expect(s.view.kvHeads.start + Math.floor(h / (localHeads / localKv))).toBe(Math.floor((s.view.heads.start + h) / group));
      }
      expect(s.bytes.total).toBe(s.bytes.weights + s.bytes.kvCache + s.bytes.activations);
    }
    // Every KV head is held by some shard of the stage.
    const held = new Set(shards.flatMap((s) => Array.from({ length: rangeLength(s.view.kvHeads) }, (_, i) => s.view.kvHeads.start + i)));
    expect(held.size).toBe(config.nKvHeads);
  }
  expectPartition(stageLayers, config.nLayers);
  expectPartition(plan.shards.slice((pp - 1) * tp).map((s) => s.view.vocab), config.vocabSize);
}

const views = (plan: ShardPlan) => plan.shards.map((s) => s.view);
const lengths = (ranges: Range[]) => ranges.map(rangeLength);

describe('stories260K F32 (8 heads, 4 KV heads, 5 layers, FFN 172, vocab 512)', () => {
  let file: GGUFFile;
  let config: LlamaConfig;
  beforeAll(async () => ({ file, config } = await open('stories260K.gguf')));

  it('TP=1 is the whole model, and its GPU bytes are the padded F32 rows of every tensor', () => {
    const plan = planShards(file, config, options(1, 1));
    expectValidPlan(plan, config);
    const [shard] = plan.shards;
    expect(shard!.view).toEqual(wholeModelView(config));
    // Independent count: F32 rows pad to whole 8-value blocks on the GPU (ffn_down: 172 → 176); norms are f32.
    let expected = 0;
    let fileBytes = 0;
    for (const t of file.tensors) {
      fileBytes += t.byteLength;
      const rows = t.shape.slice(1).reduce((a, b) => a * b, 1);
      expected += t.shape.length === 1 ? t.shape[0]! * 4 : rows * Math.ceil(t.shape[0]! / 8) * 8 * 4;
    }
    expect(shard!.bytes.weights).toBe(expected);
    expect(shard!.fileBytesRead).toBe(fileBytes);
    expect(shard!.bytes.kvCache).toBe(2 * 5 * 512 * 4 * 8 * 4);
    // createActivations for 64 tokens of one sequence: ids, positions, slots, block table (512 / 16 blocks),
    // sample rows, x, xNorm, q, attention, k, v, gate, ffn hidden, sampled hidden ×2, logits, best (id, logit),
    // top-k candidates (1 row × 64 × (id, logit)), split attention's partials (8 decode tokens ×
    // 8 heads × 8 chunks of 64 positions × (8 dims + 4 stats)), the act-order gather's scratch (no
    // act-order weights: empty); each buffer rounded up to whole 16-byte vec4s (sample rows and
    // best: 1 and 2 words → 4; the empty scratch → 4).
    const T = 64;
    const partials = 8 * 8 * 8 * (8 + 4);
    expect(shard!.bytes.activations).toBe(4 * (3 * T + 32 + 4 + 4 * T * 64 + 2 * T * 32 + 2 * T * 172 + 64 + 64 + 512 + 4 + 64 * 2 + partials + 4));
  });

  it('TP=2 splits heads, KV heads, FFN columns and vocabulary in halves', () => {
    const plan = planShards(file, config, options(2, 1));
    expectValidPlan(plan, config);
    expect(views(plan).map((v) => [v.heads, v.kvHeads, v.ffn, v.vocab])).toEqual([
      [{ start: 0, end: 4 }, { start: 0, end: 2 }, { start: 0, end: 86 }, { start: 0, end: 256 }],
      [{ start: 4, end: 8 }, { start: 2, end: 4 }, { start: 86, end: 172 }, { start: 256, end: 512 }],
    ]);
    for (const v of views(plan)) expect(v).toMatchObject({ layers: { start: 0, end: 5 }, embeds: true, samples: true });
  });

  it('TP=4: two heads and one KV head each, FFN 43 columns, vocab 128 rows', () => {
    const plan = planShards(file, config, options(4, 1));
    expectValidPlan(plan, config);
    expect(views(plan).map((v) => v.kvHeads)).toEqual([0, 1, 2, 3].map((k) => ({ start: k, end: k + 1 })));
    expect(lengths(views(plan).map((v) => v.heads))).toEqual([2, 2, 2, 2]);
    expect(lengths(views(plan).map((v) => v.ffn))).toEqual([43, 43, 43, 43]);
    expect(lengths(views(plan).map((v) => v.vocab))).toEqual([128, 128, 128, 128]);
  });

  it('TP=4 shards each read a quarter of the split tensors plus every replicated one', () => {
    const plan = planShards(file, config, options(4, 1));
    const replicatedNames = (name: string) => name === 'token_embd.weight' || name.endsWith('norm.weight');
    const replicated = file.tensors.filter((t) => replicatedNames(t.name)).reduce((s, t) => s + t.byteLength, 0);
    const split = file.tensors.filter((t) => !replicatedNames(t.name)).reduce((s, t) => s + t.byteLength, 0);
    for (const s of plan.shards) expect(s.fileBytesRead).toBe(replicated + split / 4);
    const whole = planShards(file, config, options(1, 1)).shards[0]!.fileBytesRead;
    // Each shard reads well under half the file: the quarter plus the embedding table and the norms.
    expect(plan.shards[0]!.fileBytesRead / whole).toBeCloseTo((replicated + split / 4) / (replicated + split), 10);
    expect(plan.shards[0]!.fileBytesRead).toBeLessThan(whole / 2);
  });

  it('PP=2: layers 0-2 on stage 0 (embeds), 3-4 on stage 1 (samples, whole vocab)', () => {
    const plan = planShards(file, config, options(1, 2));
    expectValidPlan(plan, config);
    const [first, last] = views(plan);
    expect(first).toMatchObject({ layers: { start: 0, end: 3 }, embeds: true, samples: false, vocab: { start: 0, end: 0 } });
    expect(last).toMatchObject({ layers: { start: 3, end: 5 }, embeds: false, samples: true, vocab: { start: 0, end: 512 } });
    expect(first!.heads).toEqual({ start: 0, end: 8 });
    // The KV cache follows the layers; the two stages together hold exactly the one-device cache.
    const whole = planShards(file, config, options(1, 1)).shards[0]!;
    expect(plan.shards[0]!.bytes.kvCache).toBe((whole.bytes.kvCache * 3) / 5);
    expect(plan.shards[0]!.bytes.kvCache + plan.shards[1]!.bytes.kvCache).toBe(whole.bytes.kvCache);
    // Stage 0 holds token_embd, stage 1 output.weight (same shape here): together all file bytes once.
    expect(plan.shards[0]!.fileBytesRead + plan.shards[1]!.fileBytesRead).toBe(whole.fileBytesRead);
  });

  it('TP=2 × PP=2: ranks are stage-major', () => {
    const plan = planShards(file, config, options(2, 2));
    expectValidPlan(plan, config);
    expect(plan.shards.map((s) => [s.rank, s.stage, s.tpRank, s.view.layers.start, s.view.heads.start])).toEqual([
      [0, 0, 0, 0, 0],
      [1, 0, 1, 0, 4],
      [2, 1, 0, 3, 0],
      [3, 1, 1, 3, 4],
    ]);
    expect(plan.shards.map((s) => s.view.vocab)).toEqual([
      { start: 0, end: 0 },
      { start: 0, end: 0 },
      { start: 0, end: 256 },
      { start: 256, end: 512 },
    ]);
  });

  it('TP=3 splits unevenly by whole KV groups: KV 2/1/1, heads 4/2/2, FFN 58/57/57', () => {
    const plan = planShards(file, config, options(3, 1));
    expectValidPlan(plan, config);
    expect(lengths(views(plan).map((v) => v.kvHeads))).toEqual([2, 1, 1]);
    expect(lengths(views(plan).map((v) => v.heads))).toEqual([4, 2, 2]);
    expect(lengths(views(plan).map((v) => v.ffn))).toEqual([58, 57, 57]);
    expect(lengths(views(plan).map((v) => v.vocab))).toEqual([171, 171, 170]);
  });

  it('TP=8 replicates KV heads: one query head per shard, each KV head on two shards', () => {
    const plan = planShards(file, config, options(8, 1));
    expectValidPlan(plan, config);
    for (const [i, v] of views(plan).entries()) {
      expect(v.heads).toEqual({ start: i, end: i + 1 });
      expect(v.kvHeads).toEqual({ start: i >> 1, end: (i >> 1) + 1 });
    }
    // Each shard caches its one KV head: together twice the one-device cache.
    const oneDevice = planShards(file, config, options(1, 1)).shards[0]!.bytes.kvCache;
    expect(plan.shards.reduce((s, x) => s + x.bytes.kvCache, 0)).toBe(2 * oneDevice);
    expect(plan.summary.some((line) => line.includes('shard 0 ') && line.includes('replicated with shard 1'))).toBe(true);
  });

  it('TP=5 (not a multiple of the 4 KV heads): 2/2/2/1/1, the last KV head replicated on two shards', () => {
    const plan = planShards(file, config, options(5, 1));
    expectValidPlan(plan, config);
    expect(lengths(views(plan).map((v) => v.heads))).toEqual([2, 2, 2, 1, 1]);
    expect(views(plan).map((v) => v.kvHeads.start)).toEqual([0, 1, 2, 3, 3]);
  });

  it('refuses more shards than query heads, listing the valid tp', () => {
    const attempt = () => planShards(file, config, options(16, 1));
    expect(attempt).toThrow(ShardPlanError);
    expect(attempt).toThrow(/only 8 query heads.*Valid tp for these heads: 1, 2, 3, 4, 5, 6, 7, 8/);
  });

  it('weights [3, 1] give the first shard three quarters of heads, FFN columns and vocabulary', () => {
    const plan = planShards(file, config, options(2, 1, { weights: [3, 1] }));
    expectValidPlan(plan, config);
    expect(lengths(views(plan).map((v) => v.heads))).toEqual([6, 2]);
    expect(lengths(views(plan).map((v) => v.kvHeads))).toEqual([3, 1]);
    expect(lengths(views(plan).map((v) => v.ffn))).toEqual([129, 43]);
    expect(lengths(views(plan).map((v) => v.vocab))).toEqual([384, 128]);
    expect(plan.shards[0]!.bytes.weights).toBeGreaterThan(plan.shards[1]!.bytes.weights);
    // The devices' relativeSpeed does the same when no weights are given.
    const bySpeed = planShards(file, config, options(2, 1, { devices: [devices(1, { relativeSpeed: 3 })[0]!, devices(1)[0]!] }));
    expect(views(bySpeed)).toEqual(views(plan));
  });

  it('weighted pipeline stages: a 3× faster first stage gets 4 of the 5 layers', () => {
    const plan = planShards(file, config, options(1, 2, { weights: [3, 1] }));
    expect(views(plan).map((v) => v.layers)).toEqual([
      { start: 0, end: 4 },
      { start: 4, end: 5 },
    ]);
  });

  it('a memory budget too small is refused with the numbers, the shard and the --ctx that would fit', () => {
    const roomy = planShards(file, config, options(2, 1)).shards[1]!.bytes;
    const kvPerPosition = roomy.kvCache / 512;
    // Room for exactly 112 positions: 7 KV blocks of 16 (a context of 100 takes 7 blocks).
    const budget = roomy.weights + roomy.activations + 112 * kvPerPosition + 3;
    const tight = (contextLength: number) => options(2, 1, { contextLength, devices: devices(2, { memoryBudgetBytes: budget }) });
    expect(() => planShards(file, config, tight(100))).not.toThrow();
    expect(() => planShards(file, config, tight(113))).toThrow(ShardPlanError);
    let error: unknown;
    try {
      planShards(file, config, tight(512));
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ShardPlanError);
    const e = error as ShardPlanError;
    expect(e.rank).toBe(0);
    expect(e.message).toContain('shard 0 (stage 0, tp rank 0, gpu0)');
    expect(e.message).toMatch(/needs [\d.]+ (KiB|MiB) \(weights [\d.]+ (KiB|MiB) \+ KV cache [\d.]+ KiB for context 512 \+ activations [\d.]+ KiB\), over its memory budget of [\d.]+ KiB/);
    // The context it suggests really fits.
    const suggested = Number(/up to (\d+) fits/.exec(e.message)?.[1]);
    expect(suggested).toBeGreaterThanOrEqual(96);
    expect(() => planShards(file, config, tight(suggested))).not.toThrow();
    expect(e.message).toMatch(/more shards \(now 2\)/);
    expect(e.message).toMatch(/smaller quant type/);
  });

  it('a per-layer KV buffer over the storage binding limit is refused before anything is allocated', () => {
    const browser = devices(1, { maxStorageBufferBindingSize: 128 * MiB, maxBufferSize: 256 * MiB });
    // 2^24 positions × 4 KV heads × 8 × 4 bytes = 2 GiB per layer.
    const attempt = () => planShards(file, config, options(1, 1, { contextLength: 1 << 24, devices: browser }));
    expect(attempt).toThrow(ShardPlanError);
    expect(attempt).toThrow(/one layer's KV buffer needs 2\.00 GiB .*maxStorageBufferBindingSize of 128\.00 MiB/);
    expect(attempt).toThrow(/up to 1048576 cache positions fit/);
    expect(() => planShards(file, config, options(1, 1, { contextLength: 1 << 20, devices: browser }))).not.toThrow();
  });

  it('a weight row wider than a storage binding is refused naming the tensor', () => {
    const tiny = devices(1, { maxStorageBufferBindingSize: 200, maxBufferSize: 1 << 30 });
    expect(() => planShards(file, config, options(1, 1, { contextLength: 1, maxBatchTokens: 1, devices: tiny }))).toThrow(/one row of token_embd\.weight \(64 F32 values/);
  });

  it('big weights are planned as several binding-sized parts, like uploadWeightSplit', () => {
    // 2 KiB bindings: token_embd (512 rows × 256 B) needs many parts; F32 parts add no padding.
    const small = devices(1, { maxStorageBufferBindingSize: 2048 });
    const split = planShards(file, config, options(1, 1, { contextLength: 4, maxBatchTokens: 1, devices: small }));
    const roomy = planShards(file, config, options(1, 1, { contextLength: 4, maxBatchTokens: 1 }));
    expect(split.shards[0]!.bytes.weights).toBe(roomy.shards[0]!.bytes.weights);
  });

  it('checks its options', () => {
    expect(() => planShards(file, config, { ...options(2, 1), devices: devices(3) })).toThrow(/needs 2 devices, but 3 are given/);
    expect(() => planShards(file, config, options(1, 6))).toThrow(/only 5 layers/);
    expect(() => planShards(file, config, options(2, 1, { weights: [1, 0] }))).toThrow(/positive numbers/);
  });

  it('the summary says who holds what and how many bytes', () => {
    const plan = planShards(file, config, options(2, 2));
    expect(plan.summary[0]).toContain('tp=2 × pp=2');
    expect(plan.summary).toHaveLength(5);
    expect(plan.summary[1]).toMatch(/^shard 0 \(stage 0, tp rank 0, gpu0\): layers 0-2, heads 0-3, KV heads 0-1, FFN 0-85 of 172, embeds; GPU .* = weights .* \+ KV .* \+ activations .*; reads .* of the file$/);
    expect(plan.summary[4]).toContain('samples vocab 256-511');
  });
});

describe('quantized files: column splits on quantization blocks', () => {
  it('Q4_0 with TP=4 is refused: attn_output columns would be 16, not whole 32-value blocks', async () => {
    const { file, config } = await open('stories260K-Q4_0.gguf');
    expect(file.tensor('blk.0.attn_output.weight').type).toBe(GGMLType.Q4_0);
    const attempt = () => planShards(file, config, options(4, 1));
    expect(attempt).toThrow(ShardPlanError);
    expect(attempt).toThrow(/attn_output\.weight is Q4_0, stored in blocks of 32 values.*every 4 heads/);
    expect(attempt).toThrow(/Valid tp for these heads: 1, 2;/);
    expect(() => planShards(file, config, options(3, 1))).toThrow(/Valid tp for these heads: 1, 2;/);
  });

  it('Q4_0 with TP=2 splits attn_output at 32 columns; ffn_down is F16, so the FFN splits anywhere', async () => {
    const { file, config } = await open('stories260K-Q4_0.gguf');
    const plan = planShards(file, config, options(2, 1));
    expectValidPlan(plan, config);
    expect(views(plan).map((v) => v.heads.end * config.headDim)).toEqual([32, 64]);
    expect(lengths(views(plan).map((v) => v.ffn))).toEqual([86, 86]);
    // Its file reads: attn_output is read as column slices of whole blocks, half the tensor each.
    const whole = planShards(file, config, options(1, 1)).shards[0]!.fileBytesRead;
    expect(plan.shards[0]!.fileBytesRead).toBeLessThan(whole);
  });

  it('pipeline stages may still split a quantized file that tensor parallel cannot', async () => {
    const { file, config } = await open('stories260K-Q4_0.gguf');
    const plan = planShards(file, config, options(2, 2));
    expectValidPlan(plan, config);
    expect(() => planShards(file, config, options(4, 1))).toThrow(ShardPlanError);
    expect(planShards(file, config, options(1, 4)).shards).toHaveLength(4);
  });

  it('Q4_0 GPU bytes follow the repacked layout: quants, then a scales region of f16 pairs', async () => {
    const { file, config } = await open('stories260K-Q4_0.gguf');
    const [shard] = planShards(file, config, options(1, 1)).shards;
    // Independent count from the layouts in src/model/repack.ts; a layer's Q, K and V (all Q4_0
    // here) are one weight of their stacked rows.
    const splitScales = (nBlocks: number, quantWordsPerBlock: number) => (Math.ceil((nBlocks * quantWordsPerBlock) / 4) * 4 + Math.ceil(nBlocks / 2)) * 4;
    const rowsOf = (name: string) => file.tensor(name).shape.slice(1).reduce((a, b) => a * b, 1);
    let expected = 0;
    for (const t of file.tensors) {
      if (/attn_[kv]\.weight$/.test(t.name)) continue;
      const cols = t.shape[0]!;
      const rows = t.name.endsWith('attn_q.weight')
        ? rowsOf(t.name) + rowsOf(t.name.replace('attn_q', 'attn_k')) + rowsOf(t.name.replace('attn_q', 'attn_v'))
        : rowsOf(t.name);
      if (t.shape.length === 1) expected += cols * 4;
      else if (t.type === GGMLType.F16) expected += rows * Math.ceil(cols / 8) * 16;
      else if (t.type === GGMLType.Q4_0) expected += splitScales((rows * cols) / 32, 4);
      else if (t.type === GGMLType.Q8_0) expected += splitScales((rows * cols) / 32, 8);
      else throw new Error(`unexpected ${t.name} type ${t.type}`);
    }
    expect(shard!.bytes.weights).toBe(expected);
  });
});

describe('tied embeddings', () => {
  let file: GGUFFile;
  let config: LlamaConfig;
  beforeAll(async () => {
    file = await readGGUF(bytesSource(randomLlamaGGUF({ dim: 64, nLayers: 2, nHeads: 4, nKvHeads: 2, ffnDim: 128, tiedEmbeddings: true })));
    config = llamaConfig(file);
  });

  it('one shard holding the whole vocabulary reuses the embedding as the output head', () => {
    expect(config.tiedEmbeddings).toBe(true);
    const [one] = planShards(file, config, options(1, 1)).shards;
    const embedding = file.tensor('token_embd.weight');
    const total = file.tensors.reduce((s, t) => s + t.byteLength, 0);
    expect(one!.fileBytesRead).toBe(total); // the table is read once
    // Two stages: stage 0 embeds, stage 1's output head is its own copy of the table.
    const two = planShards(file, config, options(1, 2)).shards;
    expect(two[0]!.fileBytesRead + two[1]!.fileBytesRead).toBe(total + embedding.byteLength);
  });

  it('with TP=2 every shard holds the whole embedding plus its half of the vocabulary rows', () => {
    const [one] = planShards(file, config, options(1, 1)).shards;
    const plan = planShards(file, config, options(2, 1));
    const embedding = file.tensor('token_embd.weight');
    const isReplicated = (name: string) => name === 'token_embd.weight' || name.endsWith('norm.weight');
    const replicated = file.tensors.filter((t) => isReplicated(t.name)).reduce((sum, t) => sum + t.byteLength, 0);
    const split = file.tensors.filter((t) => !isReplicated(t.name)).reduce((sum, t) => sum + t.byteLength, 0);
    for (const s of plan.shards) {
      expect(s.view.vocab).toEqual(s.tpRank === 0 ? { start: 0, end: config.vocabSize / 2 } : { start: config.vocabSize / 2, end: config.vocabSize });
      expect(s.fileBytesRead).toBe(replicated + split / 2 + embedding.byteLength / 2);
      // F32 rows of 64 values have no GPU padding: half the table more than the one-device weights' share.
      expect(s.bytes.weights).toBeGreaterThan(one!.bytes.weights / 2 + embedding.byteLength / 2);
    }
  });
});

describe('split helpers', () => {
  it('splitProportionally gives every share at least one unit and sums exactly', () => {
    expect(splitProportionally(172, [1, 1, 1])).toEqual([58, 57, 57]);
    expect(splitProportionally(5, [3, 1])).toEqual([4, 1]);
    expect(splitProportionally(3, [100, 1, 1])).toEqual([1, 1, 1]);
    expect(splitProportionally(10, [1000, 1])).toEqual([9, 1]);
  });

  it('splitHeads keeps every range inside one KV group or on whole groups', () => {
    // 8 heads, 2 KV heads (groups of 4): tp=3 → 4/2/2 (second group split), tp=2 weighted 3:1 → still 4/4,
    // since 6/2 would straddle a group.
    expect(splitHeads(8, 2, 1, [1, 1, 1])!.map(rangeLength)).toEqual([4, 2, 2]);
    expect(splitHeads(8, 2, 1, [3, 1])!.map(rangeLength)).toEqual([4, 4]);
    // Block alignment of 2 heads with groups of 1 (MHA): only even split points.
    expect(splitHeads(8, 8, 2, [1, 1, 1])!.map(rangeLength)).toEqual([4, 2, 2]);
    expect(splitHeads(8, 8, 4, [1, 1, 1])).toBeUndefined();
  });
});

describe('the plan against the real loader', () => {
  /** Loads every shard's weights as the plan's devices allow and checks the planned bytes and reads. */
  async function expectPlanMatchesLoads(name: string, file: GGUFFile, config: LlamaConfig, tp: number, pp: number): Promise<void> {
    const gpu = await testGpu();
    // The device's real limits, with 4 KiB bindings so big weights are uploaded in several parts.
    const limits = { maxBufferSize: gpu.limits.maxBufferSize, maxStorageBufferBindingSize: 4096 };
    // The loader reads only these two limits (in uploadWeightSplit).
    const gpuWithSmallBindings = { ...gpu, limits: limits as GPUSupportedLimits };
    const plan = planShards(file, config, options(tp, pp, { contextLength: 16, maxBatchTokens: 4, devices: devices(tp * pp, limits) }));
    for (const shard of plan.shards) {
      const before = file.source.bytesRead;
      const weights = await loadLlamaWeights(gpuWithSmallBindings, file, config, shard.view);
      destroyWeights(weights);
      expect({ name, rank: shard.rank, gpuBytes: weights.gpuBytes, read: file.source.bytesRead - before }).toEqual({
        name,
        rank: shard.rank,
        gpuBytes: shard.bytes.weights,
        read: shard.fileBytesRead,
      });
    }
  }

  it('planned weight bytes are exactly what loadLlamaWeights uploads, for every shard', async () => {
    for (const [name, tp, pp] of [
      ['stories260K.gguf', 2, 2],
      ['stories260K-Q4_0.gguf', 2, 1],
      ['stories260K-Q4_K_M.gguf', 1, 2],
      ['stories260K-Q8_0.gguf', 2, 1],
      ['stories260K-F16.gguf', 4, 1],
      ['stories260K.gguf', 8, 1],
    ] as const) {
      const { file, config } = await open(name);
      await expectPlanMatchesLoads(name, file, config, tp, pp);
    }
  });

  it('counts Q, K and V as the one stacked weight the loader uploads, where that changes the padding', async () => {
    // Q8_0 rows of 3 blocks and one KV head of 6 rows: k and v alone have 18 blocks, 9 words of
    // scales, padded to 12; stacked under q's 96 rows the padding differs.
    const file = await readGGUF(bytesSource(randomLlamaGGUF({ dim: 96, nLayers: 2, nHeads: 16, nKvHeads: 1, ffnDim: 64, weightType: GGMLType.Q8_0 })));
    const config = llamaConfig(file);
    expect(file.tensor('blk.0.attn_v.weight').type).toBe(GGMLType.Q8_0);
    const bytes = (rows: number) => gpuLayout(GGMLType.Q8_0, rows, 96).totalWords * 4;
    expect(bytes(96 + 6 + 6)).toBeLessThan(bytes(96) + 2 * bytes(6));
    const gpu = await testGpu();
    const weights = await loadLlamaWeights(gpu, file, config, wholeModelView(config));
    destroyWeights(weights);
    expect(weights.layers.map((layer) => layer.qkv?.reduce((rows, part) => rows + part.rows, 0))).toEqual([108, 108]);
    await expectPlanMatchesLoads('random Q8_0', file, config, 1, 1);
    await expectPlanMatchesLoads('random Q8_0', file, config, 1, 2);
  });
});

describe('families', () => {
  it('qwen2 at tp=2: the 151936-row tied output head is split by vocabulary, and counted in GPU bytes and file reads', async () => {
    const { file, config } = await open('qwen2-tiny/qwen2-tiny-F32.gguf');
    const plan = planShards(file, config, options(2, 1));
    expectPartition(plan.shards.map((s) => s.view.vocab), 151936);
    for (const shard of plan.shards) {
      const vocabRows = rangeLength(shard.view.vocab);
      // The embedding (whole, f32) and this shard's rows of the output head are both on the GPU.
      expect(shard.bytes.weights).toBeGreaterThan((151936 + vocabRows) * 32 * 4);
      expect(shard.fileBytesRead).toBeGreaterThan((151936 + vocabRows) * 32 * 4);
    }
  });
});
