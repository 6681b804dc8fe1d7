// Request validation for /v1/completions and /v1/chat/completions: JSON in, typed requests out.
// Every field is checked for type and range, and a bad one is named in the error (`param`), as
// OpenAI does. Unknown fields are ignored (clients send many); known fields this server cannot
// honour (echo, suffix, logit_bias, tools, ...) are refused rather than silently dropped.

import { InvalidRequestError } from './errors.ts';

/** Sampling after OpenAI's defaults: temperature 1, top_p 1, and no top-k / min-p filtering. */
export interface SamplingParams {
  temperature: number;
  topP: number;
  /** 0 = off (the request's -1 and 0 both mean off). */
  topK: number;
  minP: number;
  presencePenalty: number;
  frequencyPenalty: number;
  /** llama.cpp/vLLM-style multiplicative penalty; 1 = off. */
  repetitionPenalty: number;
  seed?: number;
}

/** What both endpoints share. */
export interface GenerationParams {
  model: string;
  /** Most tokens per choice; undefined = as many as the context leaves. */
  maxTokens?: number;
  stop: string[];
  /** Choices per prompt. */
  n: number;
  stream: boolean;
  includeUsage: boolean;
  /** Alternatives to report per token (0 = only the chosen one); undefined = no logprobs. */
  logprobs?: number;
  ignoreEos: boolean;
  /** Use the server's speculative decoding, if it has one (a webshard extension; default true). */
  speculative: boolean;
  sampling: SamplingParams;
}

/** A prompt as text, or as token ids used exactly as given. */
export type Prompt = string | number[];

export interface CompletionRequest extends GenerationParams {
  prompts: Prompt[];
}

export type ChatRole = 'system' | 'developer' | 'user' | 'assistant' | 'tool';

export interface ChatMessage {
  role: ChatRole;
  content: string;
  name?: string;
}

export interface ChatRequest extends GenerationParams {
  messages: ChatMessage[];
}

export const SCHEMA_LIMITS = {
  /** prompts × n */
  maxChoices: 16,
  maxStops: 16,
  maxStopLength: 256,
  maxMessages: 4096,
  maxCompletionLogprobs: 5,
  maxChatTopLogprobs: 20,
  maxTokens: 2 ** 31 - 1,
} as const;

const CHAT_ROLES: readonly ChatRole[] = ['system', 'developer', 'user', 'assistant', 'tool'];
/** Completion-token defaults when the request names none: OpenAI's legacy 16 for completions. */
const COMPLETIONS_DEFAULT_MAX_TOKENS = 16;

type JsonObject = Record<string, unknown>;

const isObject = (value: unknown): value is JsonObject => typeof value === 'object' && value !== null && !Array.isArray(value);

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'string') return `"${value.length > 40 ? value.slice(0, 37) + '...' : value}" (a string)`;
  if (typeof value === 'object') return 'an object';
  return `${String(value)} (a ${typeof value})`;
}

function invalid(param: string, message: string, code = 'invalid_value'): InvalidRequestError {
  return new InvalidRequestError(`'${param}': ${message}`, { param, code });
}

function wrongType(param: string, expected: string, value: unknown): InvalidRequestError {
  return invalid(param, `expected ${expected}, got ${describe(value)}.`, 'invalid_type');
}

interface NumberRange {
  min?: number;
  max?: number;
  /** The minimum itself is not allowed. */
  aboveMin?: boolean;
  integer?: boolean;
}

/** Typed reads of one JSON object's fields; `null` counts as absent, as in OpenAI's API. */
class Fields {
  constructor(private readonly object: JsonObject, private readonly prefix = '') {}

  param(name: string): string {
    return this.prefix + name;
  }

  raw(name: string): unknown {
    return this.object[name] ?? undefined;
  }

  has(name: string): boolean {
    return this.raw(name) !== undefined;
  }

  string(name: string, options: { required?: boolean; maxLength?: number } = {}): string | undefined {
    const value = this.raw(name);
    if (value === undefined) {
      if (options.required) throw invalid(this.param(name), 'this field is required.', 'missing_required_parameter');
      return undefined;
    }
    if (typeof value !== 'string') throw wrongType(this.param(name), 'a string', value);
    if (options.maxLength !== undefined && value.length > options.maxLength) {
      throw invalid(this.param(name), `at most ${options.maxLength} characters; got ${value.length}.`);
    }
    return value;
  }

  boolean(name: string): boolean | undefined {
    const value = this.raw(name);
    if (value === undefined) return undefined;
    if (typeof value !== 'boolean') throw wrongType(this.param(name), 'a boolean', value);
    return value;
  }

  number(name: string, range: NumberRange): number | undefined {
    const value = this.raw(name);
    if (value === undefined) return undefined;
    const kind = range.integer ? 'an integer' : 'a number';
    if (typeof value !== 'number' || !Number.isFinite(value)) throw wrongType(this.param(name), kind, value);
    if (range.integer && !Number.isSafeInteger(value)) throw wrongType(this.param(name), kind, value);
    const { min, max } = range;
    const belowMin = min !== undefined && (range.aboveMin ? value <= min : value < min);
    if (belowMin || (max !== undefined && value > max)) {
      const low = min === undefined ? '' : `${range.aboveMin ? '>' : '≥'} ${min}`;
      const high = max === undefined ? '' : `≤ ${max}`;
      throw invalid(this.param(name), `must be ${[low, high].filter(Boolean).join(' and ')}; got ${value}.`);
    }
    return value;
  }

  /** Refuses a field this server does not implement, unless it holds the value that means "off". */
  unsupported(name: string, isOff: (value: unknown) => boolean, what: string): void {
    const value = this.raw(name);
    if (value !== undefined && !isOff(value)) throw invalid(this.param(name), `${what} is not supported by this server.`, 'unsupported_parameter');
  }
}

function readStop(fields: Fields): string[] {
  const value = fields.raw('stop');
  if (value === undefined) return [];
  const stops = typeof value === 'string' ? [value] : value;
  if (!Array.isArray(stops)) throw wrongType('stop', 'a string or an array of strings', value);
  if (stops.length > SCHEMA_LIMITS.maxStops) throw invalid('stop', `at most ${SCHEMA_LIMITS.maxStops} stop strings; got ${stops.length}.`);
  return stops.map((stop: unknown, i) => {
    if (typeof stop !== 'string') throw wrongType(`stop[${i}]`, 'a string', stop);
    if (stop.length > SCHEMA_LIMITS.maxStopLength) throw invalid(`stop[${i}]`, `at most ${SCHEMA_LIMITS.maxStopLength} characters; got ${stop.length}.`);
    return stop;
  });
}

function readSampling(fields: Fields): SamplingParams {
  const topK = fields.number('top_k', { min: -1, integer: true }) ?? 0;
  return {
    temperature: fields.number('temperature', { min: 0, max: 2 }) ?? 1,
    topP: fields.number('top_p', { min: 0, max: 1, aboveMin: true }) ?? 1,
    topK: topK < 0 ? 0 : topK,
    minP: fields.number('min_p', { min: 0, max: 1 }) ?? 0,
    presencePenalty: fields.number('presence_penalty', { min: -2, max: 2 }) ?? 0,
    frequencyPenalty: fields.number('frequency_penalty', { min: -2, max: 2 }) ?? 0,
    repetitionPenalty: fields.number('repetition_penalty', { min: 0, max: 10, aboveMin: true }) ?? 1,
    seed: fields.number('seed', { integer: true }),
  };
}

/** The fields both endpoints share; `logprobs` differs between them and is read by each. */
function readCommon(body: unknown, defaultMaxTokens: number | undefined): { fields: Fields; params: Omit<GenerationParams, 'logprobs'> } {
  if (!isObject(body)) throw new InvalidRequestError(`The request body must be a JSON object; got ${describe(body)}.`, { code: 'invalid_type' });
  const fields = new Fields(body);
  const model = fields.string('model', { required: true, maxLength: 256 })!;
  if (model === '') throw invalid('model', 'must not be empty.');
  const stream = fields.boolean('stream') ?? false;
  let includeUsage = false;
  const streamOptions = fields.raw('stream_options');
  if (streamOptions !== undefined) {
    if (!isObject(streamOptions)) throw wrongType('stream_options', 'an object', streamOptions);
    if (!stream) throw invalid('stream_options', 'only allowed when stream is true.');
    includeUsage = new Fields(streamOptions, 'stream_options.').boolean('include_usage') ?? false;
  }
  fields.unsupported('logit_bias', (v) => isObject(v) && Object.keys(v).length === 0, 'logit_bias');
  const n = fields.number('n', { min: 1, max: SCHEMA_LIMITS.maxChoices, integer: true }) ?? 1;
  fields.unsupported('best_of', (v) => v === n || v === 1, 'best_of other than n');
  return {
    fields,
    params: {
      model,
      maxTokens: fields.number('max_tokens', { min: 1, max: SCHEMA_LIMITS.maxTokens, integer: true }) ?? defaultMaxTokens,
      stop: readStop(fields),
      n,
      stream,
      includeUsage,
      ignoreEos: fields.boolean('ignore_eos') ?? false,
      speculative: fields.boolean('speculative') ?? true,
      sampling: readSampling(fields),
    },
  };
}

function readPrompts(fields: Fields): Prompt[] {
  const value = fields.raw('prompt');
  if (value === undefined) throw invalid('prompt', 'this field is required.', 'missing_required_parameter');
  const expected = 'a string, an array of token ids, or an array of either';
  if (typeof value === 'string') return [value];
  if (!Array.isArray(value)) throw wrongType('prompt', expected, value);
  if (value.length === 0) throw invalid('prompt', 'must not be empty.');
  if (value.every((item) => typeof item === 'number')) return [readTokenIds('prompt', value)];
  return value.map((item: unknown, i): Prompt => {
    if (typeof item === 'string') return item;
    if (Array.isArray(item)) {
      if (item.length === 0) throw invalid(`prompt[${i}]`, 'must not be empty.');
      return readTokenIds(`prompt[${i}]`, item);
    }
    throw wrongType(`prompt[${i}]`, 'a string or an array of token ids', item);
  });
}

function readTokenIds(param: string, values: unknown[]): number[] {
  return values.map((id, i) => {
    if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0) throw wrongType(`${param}[${i}]`, 'a token id (an integer ≥ 0)', id);
    return id;
  });
}

/** Validates a /v1/completions body. */
export function parseCompletionRequest(body: unknown): CompletionRequest {
  const { fields, params } = readCommon(body, COMPLETIONS_DEFAULT_MAX_TOKENS);
  fields.unsupported('echo', (v) => v === false, 'echo');
  fields.unsupported('suffix', (v) => v === '', 'suffix');
  const prompts = readPrompts(fields);
  if (prompts.length * params.n > SCHEMA_LIMITS.maxChoices) {
    throw invalid('n', `prompts × n must be at most ${SCHEMA_LIMITS.maxChoices}; got ${prompts.length} × ${params.n}.`);
  }
  const logprobs = fields.number('logprobs', { min: 0, max: SCHEMA_LIMITS.maxCompletionLogprobs, integer: true });
  return { ...params, logprobs, prompts };
}

function readContent(value: unknown, param: string, role: ChatRole): string {
  if (typeof value === 'string') return value;
  if (value === undefined && role === 'assistant') return ''; // an assistant turn that only called tools
  if (!Array.isArray(value)) throw wrongType(param, 'a string or an array of content parts', value);
  return value
    .map((part: unknown, i) => {
      if (!isObject(part)) throw wrongType(`${param}[${i}]`, 'a content part object', part);
      const fields = new Fields(part, `${param}[${i}].`);
      const type = fields.string('type', { required: true });
      if (type !== 'text') throw invalid(`${param}[${i}].type`, `only "text" content parts are supported; got "${type}".`, 'unsupported_parameter');
      return fields.string('text', { required: true })!;
    })
    .join('\n');
}

function readMessages(fields: Fields): ChatMessage[] {
  const value = fields.raw('messages');
  if (value === undefined) throw invalid('messages', 'this field is required.', 'missing_required_parameter');
  if (!Array.isArray(value)) throw wrongType('messages', 'an array of messages', value);
  if (value.length === 0) throw invalid('messages', 'must hold at least one message.');
  if (value.length > SCHEMA_LIMITS.maxMessages) throw invalid('messages', `at most ${SCHEMA_LIMITS.maxMessages} messages; got ${value.length}.`);
  return value.map((item: unknown, i): ChatMessage => {
    const param = `messages[${i}]`;
    if (!isObject(item)) throw wrongType(param, 'a message object', item);
    const message = new Fields(item, `${param}.`);
    const role = message.string('role', { required: true })!;
    if (!CHAT_ROLES.includes(role as ChatRole)) throw invalid(`${param}.role`, `must be one of ${CHAT_ROLES.join(', ')}; got "${role}".`);
    const content = readContent(message.raw('content'), `${param}.content`, role as ChatRole);
    const name = message.string('name', { maxLength: 256 });
    return name === undefined ? { role: role as ChatRole, content } : { role: role as ChatRole, content, name };
  });
}

/** Validates a /v1/chat/completions body. */
export function parseChatRequest(body: unknown): ChatRequest {
  const { fields, params } = readCommon(body, undefined);
  const maxCompletionTokens = fields.number('max_completion_tokens', { min: 1, max: SCHEMA_LIMITS.maxTokens, integer: true });
  fields.unsupported('tools', (v) => Array.isArray(v) && v.length === 0, 'tools');
  fields.unsupported('functions', (v) => Array.isArray(v) && v.length === 0, 'functions');
  fields.unsupported('response_format', (v) => isObject(v) && v.type === 'text', 'response_format other than {"type": "text"}');
  const messages = readMessages(fields);
  const logprobs = fields.boolean('logprobs') ?? false;
  const topLogprobs = fields.number('top_logprobs', { min: 0, max: SCHEMA_LIMITS.maxChatTopLogprobs, integer: true });
  if (topLogprobs !== undefined && !logprobs) throw invalid('top_logprobs', 'needs logprobs to be true.');
  return {
    ...params,
    maxTokens: maxCompletionTokens ?? params.maxTokens,
    logprobs: logprobs ? (topLogprobs ?? 0) : undefined,
    messages,
  };
}
