// The sharding plan: for tp × pp devices, which layers, heads, KV heads, FFN columns and vocabulary
// rows every shard holds, and whether its weights, KV cache and activations fit its device, all
// decided from the file's header before any byte of weights is read or any buffer allocated.
//
// Ranks are stage-major: rank = stage * tp + tpRank. Pipeline stages hold contiguous layer ranges;
// within a stage, tensor parallelism follows Megatron-LM (see src/engine/weights.ts for how a view's
// byte ranges are read). The rules, and why:
//
// * Layers: contiguous per stage, in proportion to each stage's weight (the sum of its shards'
//   weights), at least one layer per stage. Stage 0 embeds, the last stage samples.
// * Query heads: contiguous ranges, each either
//     (a) whole KV groups: the shard holds those KV heads and every query head that uses them
//         (local heads / local KV heads = the global group size), or
//     (b) part of one KV group: the shard holds one KV head (a 1-wide `kvHeads` range) that other
//         shards hold too ("replicated"), and whole query heads that all use it.
//   Either way local head h uses local KV head h / (localHeads / localKvHeads), which is what the
//   attention kernel computes, and every query head is computed by exactly one shard, so the sum
//   after the output projection is right. A range that straddles a group boundary without covering
//   whole groups would break that mapping and is never made. Among the valid splits the planner takes
//   the one closest (least squares) to the shards' weights; ties go to earlier shards holding more.
//   So 8 heads / 4 KV heads give tp=2 → 4/4, tp=3 → 4/2/2 (KV 2/1/1), tp=5 → 2/2/2/1/1 (the last
//   KV head is replicated on two shards), tp=8 → one head each (each KV head on two shards), and
//   tp > 8 is refused.
// * The attention output projection is split by input columns (heads × headDim) and the FFN down
//   projection by FFN columns; a column slice must be whole quantization blocks of that tensor's
//   type (32 for Q4_0/Q8_0, 256 for K-quants, 1 for float types). Split points are rounded to the
//   blocks of every layer the stage holds; a split that cannot give every shard at least one block
//   is refused, naming the tensor, its type and block size.
// * Vocabulary rows of the output head: split across the last stage's shards (rows need no
//   alignment). Norms are replicated. The embedding table is whole on every stage-0 shard.
//
// What each view costs on its device (weights, KV cache, activations, file bytes read) and
// whether it fits is the engine's knowledge (src/engine/footprint.ts): the planner cuts the views
// and refuses, so a plan that would not fit fails with the numbers instead of an out-of-memory in
// the middle of a load.

import { formatBytes, viewFootprint, ShardPlanError, type DeviceLimits } from '../engine/footprint.ts';
import { kvGeometry, type KvGeometry } from '../engine/kv-cache.ts';
import { rangeLength, type Range, type ShardView } from '../engine/shard-view.ts';
import { actOrderColumnSplitRefusal } from '../model/awq-gptq.ts';
import type { LlamaConfig } from '../model/config.ts';
import { blockGeometry, ggmlTypeName } from '../model/ggml-type.ts';
import type { GGUFFile, GGUFTensorInfo } from '../model/gguf.ts';

export { formatBytes, ShardPlanError, type ShardPlanErrorDetails } from '../engine/footprint.ts';

export interface DeviceDescription extends DeviceLimits {
  /** Weight for uneven splits (a faster device gets more work); default 1. */
  relativeSpeed?: number;
}

export interface ShardPlanOptions {
  /** Tensor-parallel shards per stage. */
  tp: number;
  /** Pipeline stages. */
  pp: number;
  /** KV cache positions per sequence. */
  contextLength: number;
  /** Sequences generating at once (default 1), and the KV positions they share (default maxSequences × contextLength). */
  maxSequences?: number;
  kvCacheTokens?: number;
  /** Rows each sequence may sample per step (1 + draft length with speculative decoding; default 1). */
  samplesPerSequence?: number;
  /** Most tokens in one forward step (sizes the activations). */
  maxBatchTokens: number;
  /** One per shard, tp * pp of them; index = shard rank. */
  devices: DeviceDescription[];
  /** Optional per-shard split weights (index = rank); default each device's relativeSpeed. */
  weights?: number[];
}

export interface ShardSpec {
  rank: number;
  stage: number;
  tpRank: number;
  view: ShardView;
  /** GPU bytes this shard allocates. */
  bytes: { weights: number; kvCache: number; activations: number; total: number };
  /** Bytes of the model file this shard reads. */
  fileBytesRead: number;
}

export interface ShardPlan {
  tp: number;
  pp: number;
  shards: ShardSpec[];
  /** Human lines: who holds what, bytes per shard. */
  summary: string[];
}

// ---------------------------------------------------------------------------------------------
// Splitting numbers

const gcd = (a: number, b: number): number => (b === 0 ? a : gcd(b, a % b));
const lcm = (a: number, b: number): number => (a / gcd(a, b)) * b;

/**
 * Splits `total` units into `weights.length` positive integer counts in proportion to the weights
 * (largest remainder; ties to earlier shares). Needs total ≥ weights.length.
 */
export function splitProportionally(total: number, weights: readonly number[]): number[] {
  const sum = weights.reduce((a, b) => a + b, 0);
  const ideal = weights.map((w) => (total * w) / sum);
  const counts = ideal.map((x) => Math.max(1, Math.floor(x)));
  const shortfall = (i: number) => ideal[i]! - counts[i]!;
  let assigned = counts.reduce((a, b) => a + b, 0);
  while (assigned < total) {
    let best = 0;
    for (let i = 1; i < counts.length; i++) if (shortfall(i) > shortfall(best)) best = i;
    counts[best]!++;
    assigned++;
  }
  while (assigned > total) {
    // Only reachable when the minimum of one unit pushed the sum over: take from the most over-served.
    let best = -1;
    for (let i = 0; i < counts.length; i++) if (counts[i]! > 1 && (best < 0 || shortfall(i) < shortfall(best))) best = i;
    counts[best]!--;
    assigned--;
  }
  return counts;
}

/** Consecutive ranges with the given lengths, each scaled by `unit`. */
function rangesFromCounts(counts: readonly number[], unit = 1): Range[] {
  const ranges: Range[] = [];
  let start = 0;
  for (const count of counts) {
    ranges.push({ start, end: start + count * unit });
    start += count * unit;
  }
  return ranges;
}

/** The block size a column split of these tensors must respect, and the tensor that needs the largest. */
function columnAlignment(file: GGUFFile, names: readonly string[]): { values: number; tensor: GGUFTensorInfo } {
  let values = 1;
  let widest = file.tensor(names[0]!);
  for (const name of names) {
    const t = file.tensor(name);
    const block = blockGeometry[t.type]?.blockSize ?? 1;
    values = lcm(values, block);
    if (block > (blockGeometry[widest.type]?.blockSize ?? 1)) widest = t;
  }
  return { values, tensor: widest };
}

const describeBlock = (t: GGUFTensorInfo) => `${t.name} is ${ggmlTypeName(t.type)}, stored in blocks of ${blockGeometry[t.type]?.blockSize ?? 1} values`;

/**
 * Query-head ranges for one stage's `weights.length` shards (see the rules at the top), or
 * undefined when no valid split exists. `headStep`: split points must be multiples of it (from
 * the attention output's quantization blocks).
 */
export function splitHeads(nHeads: number, nKvHeads: number, headStep: number, weights: readonly number[]): Range[] | undefined {
  const tp = weights.length;
  const group = nHeads / nKvHeads;
  const sum = weights.reduce((a, b) => a + b, 0);
  const target = weights.map((w) => (nHeads * w) / sum);
  const isBoundary = (b: number) => b === 0 || b === nHeads || b % headStep === 0;
  const wholeGroups = (a: number, b: number) => a % group === 0 && b % group === 0;
  const insideOneGroup = (a: number, b: number) => Math.floor(a / group) === Math.floor((b - 1) / group);
  // Replicating a KV head costs its K/V projection and cache twice: break exact ties against it.
  const REPLICATION_PENALTY = 1e-6;

  // cost[i][b]: best cost of heads [0, b) over the first i shards; from[i][b]: where shard i-1 starts.
  const cost = Array.from({ length: tp + 1 }, () => new Array<number>(nHeads + 1).fill(Infinity));
  const from = Array.from({ length: tp + 1 }, () => new Array<number>(nHeads + 1).fill(-1));
  cost[0]![0] = 0;
  for (let i = 1; i <= tp; i++) {
    for (let b = 1; b <= nHeads; b++) {
      if (!isBoundary(b)) continue;
      // Later starts first, with a strict improvement: ties leave the earlier shards the larger ranges.
      for (let a = b - 1; a >= 0; a--) {
        if (!isBoundary(a) || cost[i - 1]![a] === Infinity) continue;
        const whole = wholeGroups(a, b);
        if (!whole && !insideOneGroup(a, b)) continue;
        const c = cost[i - 1]![a]! + (b - a - target[i - 1]!) ** 2 + (whole ? 0 : REPLICATION_PENALTY);
        if (c < cost[i]![b]! - 1e-12) {
          cost[i]![b] = c;
          from[i]![b] = a;
        }
      }
    }
  }
  if (cost[tp]![nHeads] === Infinity) return undefined;
  const ranges: Range[] = [];
  for (let i = tp, end = nHeads; i > 0; i--) {
    const start = from[i]![end]!;
    ranges.unshift({ start, end });
    end = start;
  }
  return ranges;
}

/** The KV heads the query heads `heads` use. */
function kvHeadsFor(heads: Range, nHeads: number, nKvHeads: number): Range {
  const group = nHeads / nKvHeads;
  return { start: Math.floor(heads.start / group), end: Math.floor((heads.end - 1) / group) + 1 };
}

// ---------------------------------------------------------------------------------------------
// The plan

function describeShard(spec: { rank: number; stage: number; tpRank: number }, device: DeviceDescription): string {
  return `shard ${spec.rank} (stage ${spec.stage}, tp rank ${spec.tpRank}, ${device.name})`;
}

function checkOptions(config: LlamaConfig, options: ShardPlanOptions): void {
  const { tp, pp, devices, weights } = options;
  const positiveInteger = (x: number) => Number.isInteger(x) && x >= 1;
  if (!positiveInteger(tp) || !positiveInteger(pp)) {
    throw new ShardPlanError({ problem: `tp=${tp} and pp=${pp} must be positive integers`, suggestion: 'Use e.g. --tp 2 --pp 1' });
  }
  if (devices.length !== tp * pp) {
    throw new ShardPlanError({
      problem: `tp=${tp} × pp=${pp} needs ${tp * pp} devices, but ${devices.length} ${devices.length === 1 ? 'is' : 'are'} given`,
      suggestion: `Choose tp and pp with tp × pp = ${devices.length}`,
    });
  }
  if (weights && (weights.length !== tp * pp || !weights.every((w) => Number.isFinite(w) && w > 0))) {
    throw new ShardPlanError({
      problem: `split weights [${weights.join(', ')}] must be ${tp * pp} positive numbers, one per shard`,
      suggestion: 'Give one weight per shard, e.g. 3,1 to give the first of two shards three quarters',
    });
  }
  for (const d of devices) {
    if (d.relativeSpeed !== undefined && !(Number.isFinite(d.relativeSpeed) && d.relativeSpeed > 0)) {
      throw new ShardPlanError({ problem: `device ${d.name} has relativeSpeed ${d.relativeSpeed}`, suggestion: 'Relative speeds must be positive numbers' });
    }
  }
  if (!positiveInteger(options.contextLength) || !positiveInteger(options.maxBatchTokens)) {
    throw new ShardPlanError({
      problem: `context length ${options.contextLength} and batch ${options.maxBatchTokens} tokens must be positive integers`,
      suggestion: 'Use e.g. --ctx 2048',
    });
  }
  if (pp > config.nLayers) {
    throw new ShardPlanError({
      problem: `pp=${pp} pipeline stages, but the model has only ${config.nLayers} layers (each stage needs at least one)`,
      suggestion: `Use pp ≤ ${config.nLayers}, and tensor parallelism for the remaining devices`,
    });
  }
  if (tp > config.vocabSize) {
    throw new ShardPlanError({ problem: `tp=${tp} exceeds the ${config.vocabSize}-row vocabulary`, suggestion: 'Use fewer tensor-parallel shards' });
  }
}

/** tp values (1..nHeads, at most 64: for the error message) for which `splitHeads` finds a valid split. */
function validTpValues(config: LlamaConfig, headStep: number): number[] {
  const valid: number[] = [];
  for (let tp = 1; tp <= Math.min(config.nHeads, 64); tp++) {
    if (splitHeads(config.nHeads, config.nKvHeads, headStep, new Array<number>(tp).fill(1))) valid.push(tp);
  }
  return valid;
}

/** The tensor-parallel split of one stage: heads, KV heads and FFN columns per shard. */
function splitStage(file: GGUFFile, config: LlamaConfig, layers: Range, stage: number, weights: readonly number[]): Array<Pick<ShardView, 'heads' | 'kvHeads' | 'ffn'>> {
  const tp = weights.length;
  const layerNames = (suffix: string) => Array.from({ length: rangeLength(layers) }, (_, i) => `blk.${layers.start + i}.${suffix}`);
  const stageLayers = `layers ${layers.start}-${layers.end - 1}`;

  // Tensor parallelism cuts attn_output and ffn_down by input features: a GPTQ act-order one cannot be.
  const actOrder = tp > 1 ? [...layerNames('attn_output.weight'), ...layerNames('ffn_down.weight')].find((name) => file.tensor(name).inputOrder) : undefined;
  if (actOrder) {
    const { problem, fix } = actOrderColumnSplitRefusal(actOrder);
    throw new ShardPlanError({ problem: `tp=${tp} cannot split stage ${stage} (${stageLayers}): ${problem}`, suggestion: fix });
  }

  // Heads: a split point b puts b·headDim columns of attn_output before it: whole blocks only.
  const attnOutput = columnAlignment(file, layerNames('attn_output.weight'));
  const headStep = attnOutput.values / gcd(attnOutput.values, config.headDim);
  const heads = tp > config.nHeads ? undefined : splitHeads(config.nHeads, config.nKvHeads, headStep, weights);
  if (!heads) {
    const valid = validTpValues(config, headStep);
    const why =
      tp > config.nHeads
        ? `the model has only ${config.nHeads} query heads and each shard needs at least one whole head`
        : headStep > 1
          ? `${describeBlock(attnOutput.tensor)}, so its columns (heads × headDim ${config.headDim}) can only be split every ${headStep} heads`
          : `${config.nHeads} query heads in ${config.nKvHeads} KV groups cannot be split into ${tp} valid ranges`;
    throw new ShardPlanError({
      problem: `tp=${tp} cannot split the attention of stage ${stage} (${stageLayers}): ${why}`,
      suggestion: `Valid tp for these heads: ${valid.join(', ')}; use one of them (with pipeline parallelism for the other devices)${headStep > 1 ? ', or a file whose attention output is F16/F32 or has smaller blocks' : ''}`,
    });
  }

  // FFN: split points on whole blocks of every ffn_down the stage holds.
  const ffnDown = columnAlignment(file, layerNames('ffn_down.weight'));
  const ffnUnits = config.ffnDim / ffnDown.values;
  if (!Number.isInteger(ffnUnits) || ffnUnits < tp) {
    throw new ShardPlanError({
      problem: `tp=${tp} cannot split the FFN of stage ${stage} (${stageLayers}): ${describeBlock(ffnDown.tensor)}, so its ${config.ffnDim} columns make only ${Math.floor(ffnUnits)} whole blocks`,
      suggestion: `Use tp ≤ ${Math.max(1, Math.floor(ffnUnits))}, pipeline parallelism, or a file with a smaller block size for ffn_down`,
    });
  }
  const ffn = rangesFromCounts(splitProportionally(ffnUnits, weights), ffnDown.values);

  return heads.map((h, i) => ({ heads: h, kvHeads: kvHeadsFor(h, config.nHeads, config.nKvHeads), ffn: ffn[i]! }));
}

const geometryOf = (options: ShardPlanOptions): KvGeometry => kvGeometry(options.contextLength, options.maxSequences ?? 1, options.kvCacheTokens, options.samplesPerSequence);

const showRange = (r: Range) => (rangeLength(r) === 0 ? 'none' : rangeLength(r) === 1 ? `${r.start}` : `${r.start}-${r.end - 1}`);

function summarize(config: LlamaConfig, options: ShardPlanOptions, shards: ShardSpec[]): string[] {
  const lines = [
    `${options.tp * options.pp} shard${shards.length > 1 ? 's' : ''}: tp=${options.tp} × pp=${options.pp}; context ${options.contextLength}, up to ${options.maxBatchTokens} tokens per step`,
  ];
  for (const s of shards) {
    const v = s.view;
    const sharing = shards.filter((o) => o.stage === s.stage && o.rank !== s.rank && o.view.kvHeads.start < v.kvHeads.end && v.kvHeads.start < o.view.kvHeads.end);
    const replicated = sharing.length > 0 ? ` (replicated with shard ${sharing.map((o) => o.rank).join(', ')})` : '';
    const roles = [v.embeds ? 'embeds' : '', v.samples ? `samples vocab ${showRange(v.vocab)}` : ''].filter(Boolean).join(', ');
    const budget = options.devices[s.rank]!.memoryBudgetBytes;
    lines.push(
      `${describeShard(s, options.devices[s.rank]!)}: layers ${showRange(v.layers)}, heads ${showRange(v.heads)}, ` +
        `KV heads ${showRange(v.kvHeads)}${replicated}, FFN ${showRange(v.ffn)} of ${config.ffnDim}${roles ? `, ${roles}` : ''}; ` +
        `GPU ${formatBytes(s.bytes.total)} = weights ${formatBytes(s.bytes.weights)} + KV ${formatBytes(s.bytes.kvCache)} + activations ${formatBytes(s.bytes.activations)}` +
        `${budget !== undefined ? ` of ${formatBytes(budget)}` : ''}; reads ${formatBytes(s.fileBytesRead)} of the file`,
    );
  }
  return lines;
}

/**
 * Decides which part of the model every shard holds and checks that each fits its device.
 * Throws ShardPlanError (with the numbers and what to change) when no valid split exists or a
 * shard does not fit.
 */
export function planShards(file: GGUFFile, config: LlamaConfig, options: ShardPlanOptions): ShardPlan {
  checkOptions(config, options);
  const { tp, pp, devices } = options;
  const shardWeight = (rank: number) => options.weights?.[rank] ?? devices[rank]!.relativeSpeed ?? 1;
  const stageShardWeights = (stage: number) => Array.from({ length: tp }, (_, t) => shardWeight(stage * tp + t));

  const stageWeights = Array.from({ length: pp }, (_, s) => stageShardWeights(s).reduce((a, b) => a + b, 0));
  const layerRanges = rangesFromCounts(splitProportionally(config.nLayers, stageWeights));
  const vocabRanges = rangesFromCounts(splitProportionally(config.vocabSize, stageShardWeights(pp - 1)));

  const shards: ShardSpec[] = [];
  for (let stage = 0; stage < pp; stage++) {
    const layers = layerRanges[stage]!;
    const tensorSplit = splitStage(file, config, layers, stage, stageShardWeights(stage));
    for (let tpRank = 0; tpRank < tp; tpRank++) {
      const rank = stage * tp + tpRank;
      const samples = stage === pp - 1;
      const view: ShardView = {
        layers,
        ...tensorSplit[tpRank]!,
        vocab: samples ? vocabRanges[tpRank]! : { start: 0, end: 0 },
        embeds: stage === 0,
        samples,
      };
      const device = devices[rank]!;
      const owner = { who: describeShard({ rank, stage, tpRank }, device), rank, shards: tp * pp };
      const run = { geometry: geometryOf(options), maxBatchTokens: options.maxBatchTokens, contextLength: options.contextLength };
      shards.push({ rank, stage, tpRank, view, ...viewFootprint(file, config, view, device, run, owner) });
    }
  }
  return { tp, pp, shards, summary: summarize(config, options, shards) };
}
