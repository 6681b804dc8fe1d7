// Speculative decoding: a cheap drafter proposes the next few tokens, the target model checks
// them all in one batched step (decode is bound by reading the weights, so k + 1 tokens cost
// about what one does), and every drafted token the target agrees with saves a target step.
//
// The output is the target's own. Greedy: a drafted token is kept while it equals the target's
// argmax at its position, so the tokens are exactly plain decoding's. Sampling: a drafted token
// x drawn from the draft's distribution q is kept with probability min(1, p(x)/q(x)), and the
// first one rejected is replaced by a draw from max(0, p − q) renormalized (Leviathan et al.
// 2023, Chen et al. 2023); every emitted token is then distributed exactly as p, the target's
// own sampling distribution. A drafter that picks deterministically has q = 1 on its pick.
//
// Rejected tokens need no undo in the paged KV cache: their keys and values sit at positions
// past the sequence's length, where attention (causal, by position) never looks, and the next
// step writes over them.

import type { StepResult } from './runner.ts';
import { argmax, pointMass, probabilityOf, tokenLogprobs, type Sampler, type TokenDistribution } from './sampler.ts';

/** A proposed token, and the distribution it was drawn from (absent: picked deterministically). */
export interface DraftToken {
  id: number;
  q?: TokenDistribution;
}

/** Proposes tokens likely to follow a sequence. One drafter serves one sequence. */
export interface Drafter {
  /** Up to `max` tokens likely to follow `history` (which ends with a token the target has not run yet). */
  propose(history: readonly number[], max: number): Promise<DraftToken[]>;
  /** Gives back what the drafter holds (a draft model's sequence). Safe to call twice. */
  release(): void;
}

/** What speculation did for one generation (and, summed, for a model). */
export interface SpeculationCounts {
  /** Tokens proposed by the drafter and sent to the target for checking. */
  drafted: number;
  /** Of those, tokens the target kept. */
  accepted: number;
  /** Forward steps of the target model, the prompt's included (plain decoding: one per token). */
  targetSteps: number;
}

/**
 * Prompt lookup (n-gram drafting, no second model): proposes the tokens that followed the latest
 * earlier occurrence of the last `n` tokens in prompt + output. It pays off where the output
 * repeats its input: code edits, retrieval-augmented answers, summaries.
 */
export class PromptLookupDrafter implements Drafter {
  constructor(private readonly n: number) {}

  async propose(history: readonly number[], max: number): Promise<DraftToken[]> {
    const n = this.n;
    const end = history.length;
    if (end <= n || max <= 0) return [];
    for (let start = end - n - 1; start >= 0; start--) {
      let matches = true;
      for (let i = 0; i < n && matches; i++) matches = history[start + i] === history[end - n + i];
      if (matches) return history.slice(start + n, Math.min(start + n + max, end)).map((id) => ({ id }));
    }
    return [];
  }

  release(): void {}
}

/** What a draft model's sequence offers the drafter: forward steps over its own KV cache. */
export interface DraftSequence {
  forward(tokens: readonly number[], startPos: number, wantLogits: boolean): Promise<StepResult>;
  release(): void;
}

export interface DraftModelOptions {
  /** Stop drafting when the draft's best token is less likely than this (llama.cpp's --draft-p-min). 0 = never. */
  pMin: number;
  /** Fewer drafted tokens than this are not worth a verification step: propose none (--draft-min). */
  minTokens: number;
  /**
   * Draws drafted tokens from the draft's own sampling distribution (the target samples); absent:
   * the draft's argmax (the target is greedy).
   */
  sampler?: Sampler;
}

/**
 * Drafts with a smaller model of the same vocabulary. It keeps its own sequence and KV cache in
 * step with the target's history: each proposal first runs whatever the history has that the
 * draft's cache does not (the tokens the target just decided), then one draft step per token.
 */
export class DraftModelDrafter implements Drafter {
  /** The tokens whose keys and values the draft's cache holds, position by position. */
  private cached: number[] = [];

  constructor(
    private readonly sequence: DraftSequence,
    private readonly options: DraftModelOptions,
  ) {}

  async propose(history: readonly number[], max: number): Promise<DraftToken[]> {
    if (max <= 0) return [];
    const { pMin, minTokens, sampler } = this.options;
    const wantLogits = pMin > 0 || sampler !== undefined;
    // Re-run from the first position where the cache and the history part (at least the last token).
    let common = 0;
    while (common < this.cached.length && common < history.length && this.cached[common] === history[common]) common++;
    common = Math.min(common, history.length - 1);
    let step = await this.sequence.forward(history.slice(common), common, wantLogits);
    const context = [...history];
    this.cached = [...history];
    const drafts: DraftToken[] = [];
    for (;;) {
      const drafted = this.pick(step, context);
      if (drafted.probability < pMin) break;
      drafts.push(drafted.token);
      context.push(drafted.token.id);
      if (drafts.length >= max) break;
      step = await this.sequence.forward([drafted.token.id], context.length - 1, wantLogits);
      this.cached.push(drafted.token.id);
    }
    return drafts.length >= minTokens ? drafts : [];
  }

  /** The draft's next token after `context`, and how likely the draft thinks its best token is. */
  private pick(step: StepResult, context: readonly number[]): { token: DraftToken; probability: number } {
    const { sampler } = this.options;
    if (!step.logits) return { token: { id: step.argmaxId }, probability: 1 };
    const logits = step.logits.slice();
    if (!sampler) {
      const id = argmax(logits);
      return { token: { id }, probability: Math.exp(tokenLogprobs(logits, id, 0).logprob) };
    }
    const q = sampler.distribution(logits, context);
    return { token: { id: sampler.drawFrom(q), q }, probability: Math.max(...q.weights) / q.total };
  }

  release(): void {
    this.sequence.release();
  }
}

/** How the target's result at one position becomes its choice there. */
export interface TargetChoice {
  /** The target's sampling distribution at `row` given `history` (greedy: all on the argmax). */
  distribution(row: StepResult, history: readonly number[]): TokenDistribution;
  sampler: Sampler;
}

/**
 * Checks `drafts` against the verification step's `rows` (rows[i] predicts the token after the
 * i-th token the step ran: the pending token, then each draft) and returns the tokens to emit:
 * the drafts the target keeps, then one token of the target's own (the replacement of the first
 * rejected draft, or a bonus token when every draft was kept).
 */
export function acceptDrafts(rows: readonly StepResult[], drafts: readonly DraftToken[], history: readonly number[], target: TargetChoice): number[] {
  const context = [...history];
  const emitted: number[] = [];
  for (let i = 0; i < drafts.length; i++) {
    const p = target.distribution(rows[i]!, context);
    const { id, q } = drafts[i]!;
    const pOfDraft = probabilityOf(p, id);
    const qOfDraft = q ? probabilityOf(q, id) : 1;
    // Greedy targets put p = 1 on one token: the draft is kept exactly when it is the argmax.
    const keep = pOfDraft >= qOfDraft || target.sampler.uniform() < pOfDraft / qOfDraft;
    if (keep) {
      emitted.push(id);
      context.push(id);
      continue;
    }
    emitted.push(target.sampler.drawFrom(residual(p, q ?? pointMass(id))));
    return emitted;
  }
  emitted.push(target.sampler.drawFrom(target.distribution(rows[drafts.length]!, context)));
  return emitted;
}

/** max(0, p − q), renormalized by the caller's draw (weights need not sum to 1). */
function residual(p: TokenDistribution, q: TokenDistribution): TokenDistribution {
  const weights = p.ids.map((id, i) => Math.max(0, p.weights[i]! / p.total - probabilityOf(q, id)));
  const total = weights.reduce((a, b) => a + b, 0);
  // p ≤ q everywhere only when p = q, and then a rejection has probability 0; guard rounding.
  return total > 0 ? { ids: p.ids, weights, total } : p;
}
