// The part of the engine's `Model` the server uses, and nothing more. Writing the server against
// this interface keeps it honest about what it needs, lets tests drive the HTTP layer with a
// stand-in model, and leaves the engine free to change behind it (batching, sharding).

import type { FinishReason as EngineFinishReason, GeneratedToken, GenerateOptions, HealthReport, LlamaTokenizer } from '../index.ts';

export type { EngineFinishReason, GeneratedToken, GenerateOptions, HealthReport };

export type ServedTokenizer = Pick<
  LlamaTokenizer,
  'encode' | 'tokenToPiece' | 'tokenText' | 'isEog' | 'bosId' | 'eosId' | 'vocabSize'
>;

export interface ServedModel {
  readonly contextLength: number;
  readonly tokenizer: ServedTokenizer;
  readonly file: { readonly metadata: ReadonlyMap<string, unknown> };
  /**
   * Streams the tokens after `promptIds`; honours `options.signal` between steps, and says in
   * `result.finish` why it ended.
   */
  generate(promptIds: readonly number[], options: GenerateOptions, result: { finish?: EngineFinishReason }): AsyncIterable<GeneratedToken>;
  /** Raw logits of the token after `ids` (used to report logprobs). */
  nextTokenLogits(ids: readonly number[]): Promise<Float32Array>;
  health(deadlineMs: number): Promise<HealthReport>;
  /** Whether requests can be served now (no forward step): false while a shard group reloads. */
  readiness(): HealthReport;
  /** Numbers to export as metrics; whatever fields it has are rendered. */
  stats(): object;
}

