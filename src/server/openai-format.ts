// Response bodies and stream chunks in OpenAI's shapes, for the two endpoints. The request
// pipeline is the same for both; only these shapes differ, so each endpoint is one ChoiceFormat.

import type { ServedTokenizer } from './served-model.ts';
import type { FinishReason, SequenceResult, TokenAlternative, TokenLogprob } from './sequence.ts';

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export function usageOf(promptTokens: number, completionTokens: number): Usage {
  return { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens };
}

/** What every body and chunk of one response repeats. */
export interface ResponseMeta {
  id: string;
  created: number;
  model: string;
  /** stream_options.include_usage: chunks then carry `"usage": null`, and a last chunk the usage. */
  includeUsage: boolean;
}

export interface ChoiceFormat {
  readonly idPrefix: string;
  /** The whole non-streaming response. */
  response(meta: ResponseMeta, results: readonly SequenceResult[], usage: Usage): unknown;
  /** A chunk to open choice `index` with, if the format has one. */
  opening(meta: ResponseMeta, index: number): unknown;
  /** A chunk with the text of one token (and its logprobs; `textOffset` = where the text starts). */
  delta(meta: ResponseMeta, index: number, text: string, logprob?: TokenLogprob, textOffset?: number): unknown;
  /** The chunk that ends choice `index`. */
  finish(meta: ResponseMeta, index: number, reason: FinishReason): unknown;
  /** The last chunk, when usage was asked for. */
  usage(meta: ResponseMeta, usage: Usage): unknown;
}

const utf8 = new TextDecoder();

/** A token as text for logprobs (control tokens by their name, e.g. "</s>"), and its bytes. */
function tokenString(tokenizer: ServedTokenizer, id: number): { token: string; bytes: number[] } {
  const bytes = tokenizer.tokenToPiece(id, { special: true });
  return { token: utf8.decode(bytes), bytes: Array.from(bytes) };
}

function chunkEnvelope(meta: ResponseMeta, object: string, choices: unknown[]): Record<string, unknown> {
  const chunk: Record<string, unknown> = { id: meta.id, object, created: meta.created, model: meta.model, choices };
  if (meta.includeUsage) chunk.usage = null;
  return chunk;
}

/** /v1/completions: `text` and the legacy logprobs object. */
export class CompletionFormat implements ChoiceFormat {
  readonly idPrefix = 'cmpl-';

  constructor(private readonly tokenizer: ServedTokenizer) {}

  response(meta: ResponseMeta, results: readonly SequenceResult[], usage: Usage): unknown {
    return {
      id: meta.id,
      object: 'text_completion',
      created: meta.created,
      model: meta.model,
      choices: results.map((r, index) => ({
        index,
        text: r.text,
        logprobs: r.logprobs ? this.logprobs(r.logprobs, offsets(r.pieces)) : null,
        finish_reason: r.finishReason,
      })),
      usage,
    };
  }

  opening(): unknown {
    return undefined;
  }

  delta(meta: ResponseMeta, index: number, text: string, logprob?: TokenLogprob, textOffset = 0): unknown {
    const logprobs = logprob ? this.logprobs([logprob], [textOffset]) : null;
    return chunkEnvelope(meta, 'text_completion', [{ index, text, logprobs, finish_reason: null }]);
  }

  finish(meta: ResponseMeta, index: number, reason: FinishReason): unknown {
    return chunkEnvelope(meta, 'text_completion', [{ index, text: '', logprobs: null, finish_reason: reason }]);
  }

  usage(meta: ResponseMeta, usage: Usage): unknown {
    return { ...chunkEnvelope(meta, 'text_completion', []), usage };
  }

  private logprobs(scored: readonly TokenLogprob[], textOffsets: readonly number[]): unknown {
    const top = (alternatives: readonly TokenAlternative[]) =>
      Object.fromEntries(alternatives.map((a) => [tokenString(this.tokenizer, a.id).token, a.logprob]));
    return {
      tokens: scored.map((s) => tokenString(this.tokenizer, s.id).token),
      token_logprobs: scored.map((s) => s.logprob),
      top_logprobs: scored.map((s) => top(s.top)),
      text_offset: textOffsets,
    };
  }
}

/** Where each token's text starts in the completion. */
function offsets(pieces: readonly string[]): number[] {
  let at = 0;
  return pieces.map((piece) => {
    const start = at;
    at += piece.length;
    return start;
  });
}

/** /v1/chat/completions: an assistant `message`, or `delta`s opened by the role. */
export class ChatFormat implements ChoiceFormat {
  readonly idPrefix = 'chatcmpl-';

  constructor(private readonly tokenizer: ServedTokenizer) {}

  response(meta: ResponseMeta, results: readonly SequenceResult[], usage: Usage): unknown {
    return {
      id: meta.id,
      object: 'chat.completion',
      created: meta.created,
      model: meta.model,
      choices: results.map((r, index) => ({
        index,
        message: { role: 'assistant', content: r.text },
        logprobs: r.logprobs ? { content: r.logprobs.map((s) => this.entry(s)) } : null,
        finish_reason: r.finishReason,
      })),
      usage,
    };
  }

  opening(meta: ResponseMeta, index: number): unknown {
    return chunkEnvelope(meta, 'chat.completion.chunk', [{ index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }]);
  }

  delta(meta: ResponseMeta, index: number, text: string, logprob?: TokenLogprob): unknown {
    const logprobs = logprob ? { content: [this.entry(logprob)] } : null;
    return chunkEnvelope(meta, 'chat.completion.chunk', [{ index, delta: { content: text }, logprobs, finish_reason: null }]);
  }

  finish(meta: ResponseMeta, index: number, reason: FinishReason): unknown {
    return chunkEnvelope(meta, 'chat.completion.chunk', [{ index, delta: {}, logprobs: null, finish_reason: reason }]);
  }

  usage(meta: ResponseMeta, usage: Usage): unknown {
    return { ...chunkEnvelope(meta, 'chat.completion.chunk', []), usage };
  }

  private entry(scored: TokenLogprob): unknown {
    return {
      ...tokenString(this.tokenizer, scored.id),
      logprob: scored.logprob,
      top_logprobs: scored.top.map((a) => ({ ...tokenString(this.tokenizer, a.id), logprob: a.logprob })),
    };
  }
}
