// One choice of one request, from prompt ids to finished text: runs the engine's generate loop
// under the request's abort signal, reports each token as it comes, works out why it finished,
// and (when asked) the log-probabilities of the tokens it chose.

import type { SamplingParams } from './openai-schema.ts';
import type { EngineFinishReason, GeneratedToken, GenerateOptions, ServedModel } from './served-model.ts';
import type { Reservation } from './reservations.ts';

export type FinishReason = 'stop' | 'length';

export interface SequenceSpec {
  promptIds: number[];
  /** Already clamped to what the context leaves after the prompt. */
  maxTokens: number;
  stop: string[];
  ignoreEos: boolean;
  /** false: plain decoding even where the model speculates. */
  speculative: boolean;
  sampling: SamplingParams;
  /** Alternatives to report per token; undefined = no logprobs. */
  logprobs?: number;
}

export type { TokenAlternative, TokenLogprob } from '../index.ts';
import type { TokenLogprob } from '../index.ts';

export interface SequenceResult {
  ids: number[];
  text: string;
  /** Text of each token as streamed (a stop string's held-back text is never in it). */
  pieces: string[];
  finishReason: FinishReason;
  logprobs?: TokenLogprob[];
  /** performance.now() of the first and the last token (undefined when none was generated). */
  firstTokenAt?: number;
  lastTokenAt?: number;
}

export function generateOptions(spec: SequenceSpec, signal: AbortSignal): GenerateOptions {
  const s = spec.sampling;
  return {
    maxTokens: spec.maxTokens,
    stop: spec.stop,
    ignoreEos: spec.ignoreEos,
    speculative: spec.speculative,
    temperature: s.temperature,
    topK: s.topK,
    topP: s.topP,
    minP: s.minP,
    repeatPenalty: s.repetitionPenalty,
    presencePenalty: s.presencePenalty,
    frequencyPenalty: s.frequencyPenalty,
    seed: s.seed,
    signal,
    logprobs: spec.logprobs,
  };
}

/** Rejects with `signal.reason` as soon as the signal aborts (`promise` is still awaited quietly). */
function unlessAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
    void promise.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}

/**
 * OpenAI's name for why the engine stopped: an end-of-generation token or a stop string is
 * "stop"; running out of tokens is "length" (max_tokens is clamped to the context beforehand, so
 * the context running out is "length" too).
 */
export function finishReasonOf(finish: EngineFinishReason | undefined): FinishReason {
  return finish === 'eos' || finish === 'stop' ? 'stop' : 'length';
}

/**
 * Runs one sequence in its reserved place (`slot`), calling `onToken` for each token. Resolves with the finished
 * sequence; rejects with `signal.reason` as soon as the signal aborts. The slot is released when
 * the engine has let go of the sequence, which after an abort is at the end of its current step.
 */
export async function runSequence(
  model: ServedModel,
  spec: SequenceSpec,
  slot: Reservation,
  signal: AbortSignal,
  onToken: (token: GeneratedToken) => void = () => undefined,
): Promise<SequenceResult> {
  const engineResult: { finish?: EngineFinishReason } = {};
  const iterator = model.generate(spec.promptIds, generateOptions(spec, signal), engineResult)[Symbol.asyncIterator]();
  let finished = false;
  try {
    const ids: number[] = [];
    const scored: TokenLogprob[] = [];
    const pieces: string[] = [];
    let firstTokenAt: number | undefined;
    let lastTokenAt: number | undefined;
    for (;;) {
      // Checked before next(): the first next() is what hands the sequence to the engine.
      if (signal.aborted) throw signal.reason;
      const next = await unlessAborted(iterator.next(), signal);
      if (next.done) break;
      lastTokenAt = performance.now();
      firstTokenAt ??= lastTokenAt;
      ids.push(next.value.id);
      pieces.push(next.value.text);
      if (next.value.logprobs) scored.push(next.value.logprobs);
      if (signal.aborted) throw signal.reason;
      onToken(next.value);
    }
    finished = true;
    const result: SequenceResult = {
      ids,
      text: pieces.join(''),
      pieces,
      finishReason: finishReasonOf(engineResult.finish),
      firstTokenAt,
      lastTokenAt,
    };
    if (spec.logprobs !== undefined) result.logprobs = scored;
    return result;
  } finally {
    if (finished) slot.release();
    // An async generator queues return() behind a pending next(): it runs once the engine's
    // current step ends, and its `finally` hands the model back. Only then is the slot free.
    else void Promise.resolve(iterator.return?.()).catch(() => undefined).finally(() => slot.release());
  }
}

export { tokenLogprobs as logprobsOf } from '../index.ts';
