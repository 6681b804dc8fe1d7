// Token sampling on the host, in llama.cpp's order: penalties → top-k → top-p → min-p →
// temperature → draw. Greedy (temperature 0) never gets here: the GPU's argmax answers it and
// a decode step reads back one token id.

import { seededRandom } from '../random.ts';
import { MAX_TOP_K, type TopK } from '../shaders/sampling.ts';

export interface SamplingOptions {
  /** 0 means greedy. Default 0.8 (llama.cpp's default). */
  temperature?: number;
  /** Keep the k most likely tokens; 0 keeps all. Default 40. */
  topK?: number;
  /** Keep the smallest set of tokens whose probabilities add up to p. Default 0.95. */
  topP?: number;
  /** Drop tokens less likely than minP × the most likely one. Default 0.05. */
  minP?: number;
  /** Divide positive logits (multiply negative ones) of recent tokens by this. Default 1 (off). */
  repeatPenalty?: number;
  /** How many recent tokens the penalties look at. Default 64. */
  repeatLastN?: number;
  /** OpenAI-style penalties: logit −= count·frequency + (count > 0)·presence. Default 0. */
  frequencyPenalty?: number;
  presencePenalty?: number;
  /** Same seed, same prompt, same options → same tokens. Default: random. */
  seed?: number;
}

export type ResolvedSampling = Required<SamplingOptions>;

export class InvalidOptionError extends Error {
  override name = 'InvalidOptionError';
}

function check(name: string, value: number, ok: boolean, expected: string): number {
  if (!Number.isFinite(value) || !ok) throw new InvalidOptionError(`${name} must be ${expected}; got ${value}.`);
  return value;
}

export function resolveSampling(o: SamplingOptions): ResolvedSampling {
  const t = o.temperature ?? 0.8;
  const topK = o.topK ?? 40;
  const topP = o.topP ?? 0.95;
  const minP = o.minP ?? 0.05;
  const repeatPenalty = o.repeatPenalty ?? 1;
  const repeatLastN = o.repeatLastN ?? 64;
  const seed = o.seed ?? Math.floor(Math.random() * 2 ** 32);
  return {
    temperature: check('temperature', t, t >= 0, 'a number ≥ 0 (0 = greedy)'),
    topK: check('topK', topK, Number.isInteger(topK) && topK >= 0, 'an integer ≥ 0 (0 = off)'),
    topP: check('topP', topP, topP > 0 && topP <= 1, 'in (0, 1] (1 = off)'),
    minP: check('minP', minP, minP >= 0 && minP <= 1, 'in [0, 1] (0 = off)'),
    repeatPenalty: check('repeatPenalty', repeatPenalty, repeatPenalty > 0, '> 0 (1 = off)'),
    repeatLastN: check('repeatLastN', repeatLastN, Number.isInteger(repeatLastN) && repeatLastN >= 0, 'an integer ≥ 0 (0 = off)'),
    frequencyPenalty: check('frequencyPenalty', o.frequencyPenalty ?? 0, true, 'a finite number (0 = off)'),
    presencePenalty: check('presencePenalty', o.presencePenalty ?? 0, true, 'a finite number (0 = off)'),
    // A fractional seed would silently collide with its integer part, so it is refused.
    seed: check('seed', seed, Number.isSafeInteger(seed), 'an integer'),
  };
}

/** Whether the GPU's argmax alone decides the next token (no logits need to come back). */
export function isGreedy(s: ResolvedSampling): boolean {
  return s.temperature === 0 && s.repeatPenalty === 1 && s.frequencyPenalty === 0 && s.presencePenalty === 0;
}

/**
 * How many best candidates sampling needs to see: `topK` when it is on (≤ MAX_TOP_K) and no
 * penalty can lift a token from below the top k; else 0, meaning the whole row of logits.
 */
export function candidatesSuffice(s: ResolvedSampling, vocabSize = Infinity): number {
  const penalties = s.repeatPenalty !== 1 || s.frequencyPenalty !== 0 || s.presencePenalty !== 0;
  return !penalties && s.temperature > 0 && s.topK > 0 && s.topK <= MAX_TOP_K && s.topK < vocabSize ? s.topK : 0;
}

/** Applies repetition, frequency and presence penalties to `logits` in place. */
export function applyPenalties(logits: Float32Array, history: readonly number[], s: ResolvedSampling): void {
  if (s.repeatPenalty === 1 && s.frequencyPenalty === 0 && s.presencePenalty === 0) return;
  const counts = new Map<number, number>();
  for (const id of history.slice(Math.max(0, history.length - s.repeatLastN))) counts.set(id, (counts.get(id) ?? 0) + 1);
  for (const [id, count] of counts) {
    let logit = logits[id]!;
    logit = logit > 0 ? logit / s.repeatPenalty : logit * s.repeatPenalty;
    logits[id] = logit - count * s.frequencyPenalty - s.presencePenalty;
  }
}

export function argmax(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i]! > values[best]!) best = i;
  return best;
}

/** Top-k with a small k: one pass keeping the k best ids sorted (most likely first, lower id on ties). */
function topKSorted(logits: Float32Array, k: number): number[] {
  const kept: number[] = [];
  for (let id = 0; id < logits.length; id++) {
    const logit = logits[id]!;
    // Ids arrive in increasing order, so on a tie the one already kept wins.
    if (kept.length === k && !(logit > logits[kept[k - 1]!]!)) continue;
    let lo = 0;
    let hi = kept.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (logits[kept[mid]!]! >= logit) lo = mid + 1;
      else hi = mid;
    }
    kept.splice(lo, 0, id);
    if (kept.length > k) kept.pop();
  }
  return kept;
}

/**
 * The tokens that may be drawn after top-k → top-p → min-p, most likely first (lower id on ties).
 *
 * Equal to llama.cpp's chain, but cheap on large vocabularies: top-p and min-p both keep a prefix
 * of the sorted candidates (min-p's floor only depends on the maximum), so min-p filters first and
 * only its survivors are sorted; top-p still measures its mass against all top-k candidates.
 */
export function candidateIds(logits: Float32Array, s: Pick<ResolvedSampling, 'topK' | 'topP' | 'minP'>): number[] {
  const n = logits.length;
  const byLikelihood = (a: number, b: number): number => logits[b]! - logits[a]! || a - b;
  let ids: number[];
  let sorted = false;
  if (s.topK > 0 && s.topK < n) {
    ids = s.topK <= 256 ? topKSorted(logits, s.topK) : Array.from(logits.keys()).sort(byLikelihood).slice(0, s.topK);
    sorted = true;
  } else {
    ids = Array.from(logits.keys());
  }
  if (ids.length === 0) return ids;

  let max = -Infinity;
  for (const id of ids) if (logits[id]! > max) max = logits[id]!;

  // The softmax mass of all top-k candidates, which top-p measures against.
  let total = 0;
  if (s.topP < 1) for (const id of ids) total += Math.exp(logits[id]! - max);

  // min-p: keep tokens with p ≥ minP · p_max, i.e. logit ≥ max + ln(minP) (never empty: max passes).
  if (s.minP > 0) {
    const floor = max + Math.log(s.minP);
    ids = ids.filter((id) => logits[id]! >= floor);
  }
  if (!sorted) ids.sort(byLikelihood);

  // top-p: the smallest prefix whose probability reaches p.
  if (s.topP < 1) {
    let cumulative = 0;
    for (let i = 0; i < ids.length; i++) {
      cumulative += Math.exp(logits[ids[i]!]! - max) / total;
      if (cumulative >= s.topP) return ids.slice(0, i + 1);
    }
  }
  return ids;
}

/** A sampler for one sequence: owns its random stream so a seed replays exactly. */
export class Sampler {
  private readonly random: () => number;

  constructor(readonly options: ResolvedSampling) {
    this.random = seededRandom(options.seed);
  }

  /**
   * Picks the next token from raw logits (modified in place by the penalties), or from the
   * `topK` best candidates when `candidatesSuffice` (the same draw: top-k keeps exactly them).
   */
  sample(input: Float32Array | TopK, history: readonly number[]): number {
    const s = this.options;
    if (!(input instanceof Float32Array)) {
      if (candidatesSuffice(s) !== input.ids.length) throw new RangeError(`sampling needs ${candidatesSuffice(s) || 'all'} candidates; got ${input.ids.length}`);
      // Best first with the lower id on ties, as top-k orders them: indices stand in for ids.
      return input.ids[this.draw(input.logits)]!;
    }
    applyPenalties(input, history, s);
    if (s.temperature === 0) return argmax(input);
    return this.draw(input);
  }

  /**
   * The distribution the next token is drawn from: penalties (applied to `logits` in place),
   * then top-k → top-p → min-p → temperature; greedy puts all of it on the argmax.
   * Speculative decoding compares the target's and the draft's with it.
   */
  distribution(logits: Float32Array, history: readonly number[]): TokenDistribution {
    applyPenalties(logits, history, this.options);
    if (this.options.temperature === 0) return pointMass(argmax(logits));
    return this.shape(logits);
  }

  /** Draws a token from `d` with this sampler's random stream. */
  drawFrom(d: TokenDistribution): number {
    let r = this.random() * d.total;
    let last = 0;
    for (let i = 0; i < d.ids.length; i++) {
      if (d.weights[i]! > 0) last = i;
      r -= d.weights[i]!;
      if (r < 0) return d.ids[i]!;
    }
    // Rounding left a sliver of r: the last token that had any probability.
    return d.ids[last]!;
  }

  /** A uniform number in [0, 1) from this sampler's random stream (speculative acceptance). */
  uniform(): number {
    return this.random();
  }

  /** top-k → top-p → min-p → temperature → draw, over one row of logits; returns an index. */
  private draw(logits: Float32Array): number {
    return this.drawFrom(this.shape(logits));
  }

  /** top-k → top-p → min-p → temperature over one row of logits (indices as ids). */
  private shape(logits: Float32Array): TokenDistribution {
    const s = this.options;
    const ids = candidateIds(logits, s);
    if (ids.length === 0) throw new RangeError('cannot sample from empty logits');
    const max = logits[ids[0]!]!;
    const weights = ids.map((id) => Math.exp((logits[id]! - max) / s.temperature));
    return { ids, weights, total: weights.reduce((a, b) => a + b, 0) };
  }
}

/** A sparse distribution over token ids: P(ids[i]) = weights[i] / total; absent ids have 0. */
export interface TokenDistribution {
  ids: number[];
  weights: number[];
  total: number;
}

/** All of the probability on one token (a greedy choice, or a deterministic draft). */
export function pointMass(id: number): TokenDistribution {
  return { ids: [id], weights: [1], total: 1 };
}

/** P(id) under `d`. */
export function probabilityOf(d: TokenDistribution, id: number): number {
  const at = d.ids.indexOf(id);
  return at < 0 ? 0 : d.weights[at]! / d.total;
}

/** One alternative token and its log-probability. */
export interface TokenAlternative {
  id: number;
  logprob: number;
}

/** The log-probability of the chosen token and of the `top` most likely ones at one step. */
export interface TokenLogprob extends TokenAlternative {
  /** Most likely first. */
  top: TokenAlternative[];
}

/** log-softmax of raw `logits` at `chosen`, and the `top` best alternatives (as vLLM reports them: before penalties and temperature). */
export function tokenLogprobs(logits: Float32Array, chosen: number, top: number): TokenLogprob {
  let max = -Infinity;
  for (const x of logits) if (x > max) max = x;
  let sum = 0;
  for (const x of logits) sum += Math.exp(x - max);
  const logZ = max + Math.log(sum);
  const best: TokenAlternative[] = [];
  if (top > 0) {
    // A partial selection: keep the `top` largest seen so far, sorted.
    for (let id = 0; id < logits.length; id++) {
      const logit = logits[id]!;
      if (best.length === top && logit <= best[top - 1]!.logprob) continue;
      let at = best.length === top ? top - 1 : best.length;
      while (at > 0 && best[at - 1]!.logprob < logit) at--;
      best.splice(at, 0, { id, logprob: logit });
      if (best.length > top) best.pop();
    }
  }
  return { id: chosen, logprob: logits[chosen]! - logZ, top: best.map(({ id, logprob }) => ({ id, logprob: logprob - logZ })) };
}
