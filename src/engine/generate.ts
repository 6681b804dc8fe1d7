// One sequence's generate loop: the prompt first (the scheduler may split it over several
// batched steps), then one token per step until a limit, an end-of-generation token or a stop
// string. Text streams out as soon as its UTF-8 is whole.

import { candidatesSuffice, InvalidOptionError, isGreedy, pointMass, resolveSampling, Sampler, tokenLogprobs, type ResolvedSampling, type SamplingOptions, type TokenDistribution, type TokenLogprob } from './sampler.ts';
import { ContextOverflowError, type StepResult } from './runner.ts';
import { acceptDrafts, type Drafter, type SpeculationCounts } from './speculative.ts';

export const DEFAULT_MAX_TOKENS = 256;

export interface GenerateOptions extends SamplingOptions {
  /** Most tokens to generate. Default 256; never past the context. */
  maxTokens?: number;
  /** Stop before any of these strings; the stop string itself is not returned. */
  stop?: string[];
  /** Keep going past end-of-generation tokens. Default false. */
  ignoreEos?: boolean;
  /** Abort generation between steps. */
  signal?: AbortSignal;
  /** Report each token's log-probability and this many most likely alternatives (0 = just the token's). */
  logprobs?: number;
  /** Use the model's speculative decoding (draft model or prompt lookup) when it has one. Default true. */
  speculative?: boolean;
}

export interface GeneratedToken {
  id: number;
  /** Text this token completed (may be empty while a multi-byte character is still partial). */
  text: string;
  /** With `logprobs`: the token's log-probability and the top alternatives, from the raw logits. */
  logprobs?: TokenLogprob;
}

export type FinishReason = 'length' | 'stop' | 'eos' | 'context' | 'abort';

/** What a generation reports once its iterator is done. */
export interface GenerationResult {
  finish?: FinishReason;
  /** With speculative decoding: tokens drafted, accepted, and target steps taken. */
  speculative?: SpeculationCounts;
}

/** How a backend verifies drafted tokens: several tokens of the sequence in one step, each sampled. */
export interface Speculation {
  /** A drafter for this sequence (its owner releases it when the generation ends). */
  drafter: Drafter;
  /** Most tokens to draft per step. */
  maxDraft: number;
  /** Runs `tokens` in one step and returns each one's result (the prediction after it). */
  forwardAll(tokens: readonly number[], startPos: number, wantLogits: boolean): Promise<StepResult[]>;
}

/** What generation needs from a model: a forward step and a tokenizer's streaming decoder. */
export interface GenerationBackend {
  readonly contextLength: number;
  /** When known, prompt token ids are checked against it. */
  readonly vocabSize?: number;
  /** `topK` > 0 (without wantLogits): the step may answer with only that many best candidates. */
  forward(tokens: readonly number[], startPos: number, wantLogits: boolean, topK?: number): Promise<StepResult>;
  isEndOfGeneration(id: number): boolean;
  createStreamDecoder(): { push(id: number): string; flush(): string };
  /** Present when the model drafts and verifies (see speculative.ts). */
  speculation?: Speculation;
}

/** Holds back text that could be the start of a stop string, and cuts at the first full one. */
export class StopStringFilter {
  private pending = '';
  constructor(private readonly stops: readonly string[]) {}

  /** Returns text safe to emit, and whether a stop string was reached. */
  push(text: string): { text: string; stopped: boolean } {
    this.pending += text;
    let cut = -1;
    for (const stop of this.stops) {
      const at = this.pending.indexOf(stop);
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) {
      const out = this.pending.slice(0, cut);
      this.pending = '';
      return { text: out, stopped: true };
    }
    let hold = 0;
    for (const stop of this.stops) {
      for (let n = Math.min(stop.length - 1, this.pending.length); n > hold; n--) {
        if (this.pending.endsWith(stop.slice(0, n))) {
          hold = n;
          break;
        }
      }
    }
    const out = this.pending.slice(0, this.pending.length - hold);
    this.pending = this.pending.slice(this.pending.length - hold);
    return { text: out, stopped: false };
  }

  flush(): string {
    const out = this.pending;
    this.pending = '';
    return out;
  }
}

function resolveStops(stop: unknown): string[] {
  if (stop === undefined) return [];
  const stops = typeof stop === 'string' ? [stop] : stop;
  if (!Array.isArray(stops) || !stops.every((s) => typeof s === 'string')) {
    throw new InvalidOptionError(`stop must be a string or an array of strings; got ${JSON.stringify(stop)}.`);
  }
  return stops.filter((s) => s.length > 0);
}

/** What a generation request resolves to once every option is checked. */
export interface CheckedGeneration {
  sampling: ResolvedSampling;
  maxTokens: number;
  stops: string[];
  logprobs?: number;
}

/**
 * Checks a generation request before it costs anything (a model checks it before it waits for
 * a sequence slot): options, token ids, and that the prompt leaves room in the context.
 */
export function checkGeneration(promptIds: readonly number[], options: GenerateOptions, contextLength: number, vocabSize?: number): CheckedGeneration {
  const sampling = resolveSampling(options);
  const maxTokens = options.maxTokens ?? DEFAULT_MAX_TOKENS;
  if (!Number.isInteger(maxTokens) || maxTokens < 0) throw new InvalidOptionError(`maxTokens must be an integer ≥ 0; got ${maxTokens}.`);
  const stops = resolveStops(options.stop);
  const logprobs = options.logprobs;
  if (logprobs !== undefined && (!Number.isInteger(logprobs) || logprobs < 0 || logprobs > 20)) {
    throw new InvalidOptionError(`logprobs must be an integer from 0 to 20; got ${logprobs}.`);
  }
  if (promptIds.length === 0) {
    throw new InvalidOptionError('the prompt must have at least one token (a string prompt gets BOS; a token-id prompt must not be empty).');
  }
  if (vocabSize !== undefined) {
    const bad = promptIds.findIndex((id) => !Number.isInteger(id) || id < 0 || id >= vocabSize);
    if (bad >= 0) throw new InvalidOptionError(`prompt token ${bad} is ${promptIds[bad]}, not a token id of this model (0 to ${vocabSize - 1}).`);
  }
  if (maxTokens > 0 && promptIds.length >= contextLength) {
    throw new ContextOverflowError(
      `the prompt has ${promptIds.length} tokens but the context holds ${contextLength}, leaving no room to generate; ` +
        'load the model with a larger contextLength (--ctx) or shorten the prompt.',
    );
  }
  return { sampling, maxTokens, stops, logprobs };
}

/**
 * Generates after `promptIds`. Yields each token with the text it completes; `result.finish`
 * tells why it ended once the iterator is done.
 *
 * The prompt and the generated tokens together never exceed the backend's context: a prompt that
 * leaves no room for one more token is refused with `ContextOverflowError`, and generation that
 * fills the context ends with finish reason 'context'.
 *
 * Each target step decides one token, or with speculative decoding the drafted tokens the
 * target keeps plus one of its own; either way they pass the same checks one by one below.
 */
export async function* generateTokens(
  backend: GenerationBackend,
  promptIds: readonly number[],
  options: GenerateOptions,
  result: GenerationResult = {},
): AsyncGenerator<GeneratedToken> {
  const { sampling, maxTokens, stops, logprobs } = checkGeneration(promptIds, options, backend.contextLength, backend.vocabSize);
  if (maxTokens === 0) {
    result.finish = 'length';
    return;
  }
  const greedy = isGreedy(sampling);
  const speculation = options.speculative === false ? undefined : backend.speculation;
  // Greedy decoding reads back only the argmax id, and top-k sampling only the k best
  // candidates, unless log-probabilities (or penalties, which may lift any token) need the
  // logits — and so does checking drafted tokens against a sampling distribution.
  const topK = !greedy && logprobs === undefined && !speculation ? candidatesSuffice(sampling, backend.vocabSize) : 0;
  const wantLogits = (!greedy || logprobs !== undefined) && topK === 0;
  const sampler = new Sampler(sampling);
  const decoder = backend.createStreamDecoder();
  const filter = new StopStringFilter(stops);
  const history = [...promptIds];
  const counts: SpeculationCounts = { drafted: 0, accepted: 0, targetSteps: 0 };
  if (speculation) result.speculative = counts;

  /** The target's sampling distribution after `context` at one row (greedy: its argmax). */
  const distribution = (row: StepResult, context: readonly number[]): TokenDistribution =>
    greedy ? pointMass(row.argmaxId) : sampler.distribution(requireLogits(row).slice(), context);
  const decide = (row: StepResult): DecidedToken => {
    // Log-probabilities come from the raw logits: take them before the sampler's penalties.
    const raw = logprobs !== undefined ? requireLogits(row).slice() : undefined;
    const id = greedy ? row.argmaxId : sampler.sample(row.candidates ?? requireLogits(row), history);
    return { id, logprobs: raw && tokenLogprobs(raw, id, logprobs!) };
  };
  const targetStep = (tokens: readonly number[], startPos: number) => {
    counts.targetSteps++;
    return backend.forward(tokens, startPos, wantLogits, topK);
  };
  /** The tokens after history's last (which the target has not run yet): one, or with speculation the kept drafts and one more. */
  const nextTokens = async (generated: number): Promise<DecidedToken[]> => {
    const last = history.at(-1)!;
    const room = maxTokens - generated - 1; // drafts beyond this could never be emitted
    const drafts = speculation ? await speculation.drafter.propose(history, Math.min(speculation.maxDraft, room)) : [];
    if (drafts.length === 0) return [decide(await targetStep([last], history.length - 1))];
    counts.targetSteps++;
    counts.drafted += drafts.length;
    const rows = await speculation!.forwardAll([last, ...drafts.map((d) => d.id)], history.length - 1, wantLogits);
    const ids = acceptDrafts(rows, drafts, history, { distribution, sampler });
    counts.accepted += ids.length - 1;
    return ids.map((id, i) => ({ id, logprobs: logprobs !== undefined ? tokenLogprobs(requireLogits(rows[i]!), id, logprobs) : undefined }));
  };

  /** The text still held back by the decoder and the stop filter, at the end. */
  const drain = (): { text: string; stopped: boolean } => {
    const last = filter.push(decoder.flush());
    return last.stopped ? last : { text: last.text + filter.flush(), stopped: false };
  };

  if (options.signal?.aborted) {
    result.finish = 'abort';
    return;
  }
  let decided = [decide(await targetStep(promptIds, 0))];
  for (let generated = 1; ; ) {
    for (const { id, logprobs: scores } of decided) {
      const scored = scores ? { logprobs: scores } : {};
      history.push(id);
      // The end-of-generation token is yielded too (its text is only what was still held back).
      if (!options.ignoreEos && backend.isEndOfGeneration(id)) {
        const tail = drain();
        result.finish = tail.stopped ? 'stop' : 'eos';
        yield { id, text: tail.text, ...scored };
        return;
      }
      const { text, stopped } = filter.push(decoder.push(id));
      let finish: FinishReason | undefined =
        stopped ? 'stop'
        : generated >= maxTokens ? 'length'
        : history.length >= backend.contextLength ? 'context'
        : options.signal?.aborted ? 'abort'
        : undefined;
      if (finish) {
        // The last token carries whatever text was still held back (unless a stop string cut it).
        let tail = '';
        if (!stopped) {
          const drained = drain();
          tail = drained.text;
          if (drained.stopped) finish = 'stop';
        }
        // Known as soon as the last token is, even to a caller that stops iterating there.
        result.finish = finish;
        yield { id, text: text + tail, ...scored };
        return;
      }
      yield { id, text, ...scored };
      generated++;
    }
    // Aborted while the caller held the token: stop before spending another step on the device.
    if (options.signal?.aborted) {
      result.finish = 'abort';
      return;
    }
    decided = await nextTokens(generated - 1);
  }
}

interface DecidedToken {
  id: number;
  logprobs?: TokenLogprob;
}

function requireLogits(step: StepResult): Float32Array {
  if (!step.logits) throw new Error('the backend returned no logits although sampling asked for them');
  return step.logits;
}
