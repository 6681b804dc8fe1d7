// `--shard auto`: which tp × pp split to run, from what was measured on these devices.
//
// Fit comes first: a candidate whose plan does not fit (planShards threw) is discarded with its
// reason. Among the rest, the predicted decode step decides. For one sequence decoding one token:
//
//   step ≈ kernel / speedup(tp)                 the step's kernels, spread over a stage's shards
//        + (2 · nLayers + 1) · roundTrip(tp)     two all-reduces per layer and the pick of the best
//                                                token across vocabulary slices (only when tp > 1)
//        + (pp − 1) · handoff                    hidden state passed from stage to stage
//
// Pipeline stages run one after another for one sequence, so pp does not shorten the kernels;
// it only adds hand-offs. Tensor parallel shortens them, but only as far as there are GPUs: shards
// on one physical GPU share its bandwidth (ARCHITECTURE.md, Measured facts: 2,880 vs 2,613 GB/s aggregate for 1
// vs 4 workers), so speedup(tp) = min(tp, physical GPUs). Every layer's all-reduce is paid even
// though a stage holds only some of the layers, because the stages run in sequence.
//
// Pure: the measuring (round trips, kernel time or bandwidth) is done elsewhere and passed in.

import type { GGUFFile } from '../model/gguf.ts';
import type { LlamaConfig } from '../model/config.ts';
import { planShards, ShardPlanError, type ShardPlan, type ShardPlanOptions } from './plan.ts';

/**
 * One host-staged all-reduce (or hand-off) on these devices, in ms: one number for any group
 * size, or measured per group size (participants → ms), e.g. { 1: 0.125, 2: 0.513, 4: 0.972 }.
 */
export type RoundTripMs = number | Readonly<Record<number, number>>;

export interface SplitMeasurements {
  roundTripMs: RoundTripMs;
  /** One stage-to-stage hand-off of the hidden state; default roundTrip(2). */
  handoffMs?: number;
  /** Kernel time of one decode step on one device (the whole model), ms. */
  stepKernelMs?: number;
  /** Instead of stepKernelMs: weight bytes read per step and the measured read bandwidth. */
  weightBytes?: number;
  bandwidthBytesPerSecond?: number;
  /** Physical GPUs behind the devices (default: one per device); shards on one GPU share its bandwidth. */
  physicalGpus?: number;
}

/** A (tp, pp) candidate with its memory-fit result: a plan, or why it does not fit. */
export interface CandidateFit {
  tp: number;
  pp: number;
  plan?: ShardPlan;
  /** Why it does not fit (e.g. a ShardPlanError message); absent when it fits. */
  error?: string;
}

export interface ChooseSplitInput {
  deviceCount: number;
  config: LlamaConfig;
  measurements: SplitMeasurements;
  candidates: CandidateFit[];
}

export interface CandidateScore {
  tp: number;
  pp: number;
  fits: boolean;
  /** Why it was discarded (does not fit), or how its step time adds up. */
  reason: string;
  kernelMs?: number;
  collectives?: number;
  collectiveMs?: number;
  handoffs?: number;
  handoffMs?: number;
  stepMs?: number;
  tokensPerSecond?: number;
}

export interface SplitChoice {
  tp: number;
  pp: number;
  predictedTokensPerSecond: number;
  predictedStepMs: number;
  /** Printed to the user: why this split, with the numbers. */
  reason: string;
  /** Every candidate, fitting ones best first, then the discarded ones. */
  candidates: CandidateScore[];
}

/** Every (tp, pp) with tp · pp = deviceCount, tp descending. */
export function splitCandidates(deviceCount: number): Array<{ tp: number; pp: number }> {
  const out: Array<{ tp: number; pp: number }> = [];
  for (let tp = deviceCount; tp >= 1; tp--) if (deviceCount % tp === 0) out.push({ tp, pp: deviceCount / tp });
  return out;
}

/** Plans every split of `options.devices` and records which fit (and why the others do not). */
export function planCandidates(file: GGUFFile, config: LlamaConfig, options: Omit<ShardPlanOptions, 'tp' | 'pp'>): CandidateFit[] {
  return splitCandidates(options.devices.length).map(({ tp, pp }) => {
    try {
      return { tp, pp, plan: planShards(file, config, { ...options, tp, pp }) };
    } catch (e) {
      if (e instanceof ShardPlanError) return { tp, pp, error: e.message };
      throw e;
    }
  });
}

/** roundTrip(n) from the measurements: exact, else interpolated, else scaled from the largest group. */
export function roundTripFor(roundTripMs: RoundTripMs, participants: number): number {
  if (typeof roundTripMs === 'number') return roundTripMs;
  const sizes = Object.keys(roundTripMs).map(Number).filter((n) => n >= 1 && Number.isFinite(roundTripMs[n])).sort((a, b) => a - b);
  if (sizes.length === 0) throw new RangeError('roundTripMs has no measurements');
  const at = (n: number) => roundTripMs[n]!;
  if (participants <= sizes[0]!) return at(sizes[0]!);
  const largest = sizes.at(-1)!;
  if (participants >= largest) return (at(largest) * participants) / largest; // a sync grows with its members
  const above = sizes.findIndex((n) => n >= participants);
  const lo = sizes[above - 1]!;
  const hi = sizes[above]!;
  return at(lo) + ((at(hi) - at(lo)) * (participants - lo)) / (hi - lo);
}

function oneDeviceKernelMs(m: SplitMeasurements): number {
  if (m.stepKernelMs !== undefined) return m.stepKernelMs;
  if (m.weightBytes !== undefined && m.bandwidthBytesPerSecond) return (m.weightBytes / m.bandwidthBytesPerSecond) * 1000;
  throw new RangeError('chooseSplit needs stepKernelMs, or weightBytes and bandwidthBytesPerSecond');
}

const ms = (x: number) => `${x.toFixed(x < 1 ? 3 : 2)} ms`;
const perSecond = (x: number) => `${x.toFixed(1)} tokens/s`;
const name = (c: { tp: number; pp: number }) => `tp=${c.tp} × pp=${c.pp}`;

/** Predicted decode step of one fitting candidate (see the cost model at the top). */
function score(c: { tp: number; pp: number }, input: ChooseSplitInput, kernelMs: number): CandidateScore {
  const m = input.measurements;
  const speedup = Math.min(c.tp, m.physicalGpus ?? input.deviceCount);
  const kernel = kernelMs / speedup;
  const collectives = c.tp > 1 ? 2 * input.config.nLayers + 1 : 0;
  const roundTrip = c.tp > 1 ? roundTripFor(m.roundTripMs, c.tp) : 0;
  const handoffs = c.pp - 1;
  const handoff = m.handoffMs ?? roundTripFor(m.roundTripMs, 2);
  const collectiveMs = collectives * roundTrip;
  const handoffMs = handoffs * handoff;
  const stepMs = kernel + collectiveMs + handoffMs;
  const parts = [`kernels ${ms(kernel)}${speedup > 1 ? ` (${ms(kernelMs)} / ${speedup})` : ''}`];
  if (collectives) parts.push(`${collectives} all-reduces × ${ms(roundTrip)}`);
  if (handoffs) parts.push(`${handoffs} hand-off${handoffs > 1 ? 's' : ''} × ${ms(handoff)}`);
  return {
    tp: c.tp,
    pp: c.pp,
    fits: true,
    reason: `${name(c)}: step ${ms(stepMs)} = ${parts.join(' + ')} → ${perSecond(1000 / stepMs)}`,
    kernelMs: kernel,
    collectives,
    collectiveMs,
    handoffs,
    handoffMs,
    stepMs,
    tokensPerSecond: 1000 / stepMs,
  };
}

/**
 * Picks the split with the best predicted decode speed among the candidates that fit. Throws
 * ShardPlanError, listing every candidate's reason, when none fits.
 */
export function chooseSplit(input: ChooseSplitInput): SplitChoice {
  const kernelMs = oneDeviceKernelMs(input.measurements);
  const discarded: CandidateScore[] = [];
  const fitting: CandidateScore[] = [];
  for (const c of input.candidates) {
    if (c.tp * c.pp !== input.deviceCount) {
      discarded.push({ tp: c.tp, pp: c.pp, fits: false, reason: `${name(c)} uses ${c.tp * c.pp} devices, not the ${input.deviceCount} given` });
    } else if (c.error !== undefined || !c.plan) {
      discarded.push({ tp: c.tp, pp: c.pp, fits: false, reason: `${name(c)} does not fit: ${c.error ?? 'no plan'}` });
    } else {
      fitting.push(score(c, input, kernelMs));
    }
  }
  if (fitting.length === 0) {
    throw new ShardPlanError({
      problem: `no split of ${input.deviceCount} device${input.deviceCount > 1 ? 's' : ''} fits: ${discarded.map((d) => d.reason).join('; ')}`,
      suggestion: 'Use more devices, a smaller --ctx, or a smaller quant type',
    });
  }
  // Fastest first; on a tie the one with fewer syncs (they vary more than kernels do), then smaller tp.
  fitting.sort((a, b) => a.stepMs! - b.stepMs! || a.collectives! + a.handoffs! - (b.collectives! + b.handoffs!) || a.tp - b.tp);
  const best = fitting[0]!;
  const lines = [`chose ${best.reason}`];
  if (fitting.length > 1) lines.push(`other splits that fit: ${fitting.slice(1).map((f) => f.reason).join('; ')}`);
  if (discarded.length > 0) lines.push(`discarded: ${discarded.map((d) => d.reason).join('; ')}`);
  return {
    tp: best.tp,
    pp: best.pp,
    predictedTokensPerSecond: best.tokensPerSecond!,
    predictedStepMs: best.stepMs!,
    reason: lines.join('\n'),
    candidates: [...fitting, ...discarded],
  };
}
