// A GGUF vocabulary as plain data (`VocabData`: tokens, scores, types, special ids, flags) and the
// adapter that reads it from GGUF metadata with llama.cpp's defaults for absent keys.
import { ModelFormatError, UnsupportedModelError } from '../errors.ts';
import { preTokenizerFor } from './pre-tokenizer.ts';

/** `tokenizer.ggml.token_type` values (SentencePiece piece types). */
export const TokenType = {
  Undefined: 0,
  Normal: 1,
  Unknown: 2,
  Control: 3,
  UserDefined: 4,
  Unused: 5,
  Byte: 6,
} as const;
export type TokenType = (typeof TokenType)[keyof typeof TokenType];

/** Ids that llama.cpp reads besides BOS/EOS/UNK; they decide which tokens end generation. */
export type SpecialTokenRole = 'eot' | 'eom' | 'fimPre' | 'fimSuf' | 'fimMid' | 'fimPad' | 'fimRep' | 'fimSep';

/** Which of GGUF's tokenizer models: "llama" (SentencePiece) or "gpt2" (byte-level BPE). */
export type TokenizerModel = 'llama' | 'gpt2';

export interface VocabData {
  /** Default "llama" (SentencePiece). */
  model?: TokenizerModel;
  /** Byte-level BPE only: the merge rules "left right", best (rank 0) first. */
  merges?: readonly string[];
  /** Byte-level BPE only: `tokenizer.ggml.pre`, which picks the pre-tokenizer regex. Default "default". */
  pre?: string;
  /** Token texts, with "▁" (U+2581) for spaces and `<0xXX>` for byte tokens. */
  tokens: string[];
  /** Merge priority of each token (higher merges first). */
  scores: ArrayLike<number>;
  /** `TokenType` of each token. */
  tokenTypes: ArrayLike<number>;
  /** -1 when the vocabulary has none. */
  bosId: number;
  eosId: number;
  unkId: number;
  addBos: boolean;
  addEos: boolean;
  /** Prefix the text with a space ("▁") when it starts the sequence or follows a special token. */
  addSpacePrefix: boolean;
  /** Optional further special ids (GGUF `tokenizer.ggml.eot_token_id` etc.); absent = detect by text. */
  specialIds?: Partial<Record<SpecialTokenRole, number>>;
  /** Further end-of-generation ids: a Hugging Face folder's generation_config.json `eos_token_id` list. */
  endOfGenerationIds?: readonly number[];
  /**
   * `general.name`. llama.cpp gives special tokens of models named like Phi-3 an "rstrip" attribute
   * (whitespace after them is dropped when they are split out of the text); nothing else uses it.
   */
  modelName?: string;
}

/** The GGUF tokenizer model (`tokenizer.ggml.model`) is neither "llama" (SentencePiece) nor "gpt2" (byte-level BPE). */
export class UnsupportedTokenizerError extends UnsupportedModelError {
  override name = 'UnsupportedTokenizerError';
  /** The `tokenizer.ggml.model` value, e.g. "gpt2". */
  readonly tokenizerModel: string;

  constructor(file: string, tokenizerModel: string) {
    super({
      file,
      field: 'tokenizer.ggml.model',
      problem: `tokenizer model "${tokenizerModel}" is not supported (supported: "llama" = SentencePiece, "gpt2" = byte-level BPE)`,
      fix: 'use a model with a SentencePiece (Llama 1/2, Mistral, Phi-3) or byte-level BPE (Llama 3.x, Qwen2.5, Qwen3) vocabulary',
    });
    this.tokenizerModel = tokenizerModel;
  }
}

// ---------------------------------------------------------------------------------------------
// GGUF metadata → VocabData

const SPECIAL_ID_KEYS: ReadonlyArray<readonly [string, 'bos' | 'eos' | 'unk' | SpecialTokenRole]> = [
  ['tokenizer.ggml.bos_token_id', 'bos'],
  ['tokenizer.ggml.eos_token_id', 'eos'],
  ['tokenizer.ggml.eot_token_id', 'eot'],
  ['tokenizer.ggml.eom_token_id', 'eom'],
  ['tokenizer.ggml.unknown_token_id', 'unk'],
  ['tokenizer.ggml.fim_pre_token_id', 'fimPre'],
  ['tokenizer.ggml.fim_suf_token_id', 'fimSuf'],
  ['tokenizer.ggml.fim_mid_token_id', 'fimMid'],
  ['tokenizer.ggml.fim_pad_token_id', 'fimPad'],
  ['tokenizer.ggml.fim_rep_token_id', 'fimRep'],
  ['tokenizer.ggml.fim_sep_token_id', 'fimSep'],
  // Deprecated names, read after the new ones (so they win), as llama.cpp does.
  ['tokenizer.ggml.prefix_token_id', 'fimPre'],
  ['tokenizer.ggml.suffix_token_id', 'fimSuf'],
  ['tokenizer.ggml.middle_token_id', 'fimMid'],
];

export function vocabFromGGUFMetadata(metadata: Map<string, unknown>, file: string): VocabData {
  const wrongType = (field: string, expected: string): ModelFormatError =>
    new ModelFormatError({
      file,
      field,
      problem: `metadata key ${field} is not ${expected}`,
      fix: 'the file is damaged or was written by a broken converter; re-convert the model with a current llama.cpp',
    });
  const optional = <T>(key: string, expected: string, check: (value: unknown) => value is T): T | undefined => {
    const value = metadata.get(key);
    if (value === undefined) return undefined;
    if (!check(value)) throw wrongType(key, expected);
    return value;
  };
  const isString = (value: unknown): value is string => typeof value === 'string';
  const isBool = (value: unknown): value is boolean => typeof value === 'boolean';
  const isInteger = (value: unknown): value is number | bigint =>
    typeof value === 'bigint' || (typeof value === 'number' && Number.isInteger(value));
  const isNumberArray = (value: unknown): value is ArrayLike<number> =>
    (ArrayBuffer.isView(value) && !(value instanceof DataView) && !(value instanceof BigInt64Array) && !(value instanceof BigUint64Array)) ||
    (Array.isArray(value) && value.every((item) => typeof item === 'number'));

  const model = optional('tokenizer.ggml.model', 'a string', isString);
  if (model === undefined) {
    throw new ModelFormatError({
      file,
      field: 'tokenizer.ggml.model',
      problem: 'the file has no tokenizer (metadata key tokenizer.ggml.model is missing)',
      fix: 'use a GGUF converted with its vocabulary (llama.cpp convert_hf_to_gguf.py includes it)',
    });
  }
  if (model !== 'llama' && model !== 'gpt2') throw new UnsupportedTokenizerError(file, model);
  const byteLevel = model === 'gpt2';
  // Refuse an unknown pre-tokenizer now, naming the file; the tokenizer resolves it again.
  const pre = byteLevel ? optional('tokenizer.ggml.pre', 'a string', isString) : undefined;
  const preTokenizer = byteLevel ? preTokenizerFor(pre, file) : undefined;
  /** A string array the vocabulary cannot do without; `what` says what it is when it is missing. */
  const requiredStrings = (key: string, what: string): string[] => {
    const value = metadata.get(key);
    if (value === undefined) {
      throw new ModelFormatError({ file, field: key, problem: `${what} (metadata key ${key}) is missing`, fix: 're-convert the model with a current llama.cpp' });
    }
    if (!Array.isArray(value) || !value.every((item) => typeof item === 'string')) throw wrongType(key, 'an array of strings');
    return value as string[];
  };
  const merges = byteLevel ? requiredStrings('tokenizer.ggml.merges', 'the merge rules of the byte-level BPE vocabulary') : undefined;
  const tokens = requiredStrings('tokenizer.ggml.tokens', 'the vocabulary');
  const n = tokens.length;

  const checkLength = (key: string, values: ArrayLike<number>): ArrayLike<number> => {
    if (values.length !== n) {
      throw new ModelFormatError({
        file,
        field: key,
        problem: `${key} has ${values.length} entries but the vocabulary has ${n} tokens`,
        fix: 're-convert the model with a current llama.cpp',
      });
    }
    return values;
  };
  // Absent scores are 0 and absent types are "normal" in llama.cpp.
  const scoresValue = optional('tokenizer.ggml.scores', 'a numeric array', isNumberArray);
  const typesValue = optional('tokenizer.ggml.token_type', 'an integer array', isNumberArray);
  const scores = scoresValue ? checkLength('tokenizer.ggml.scores', scoresValue) : new Float32Array(n);
  const tokenTypes = typesValue ? checkLength('tokenizer.ggml.token_type', typesValue) : new Int32Array(n).fill(TokenType.Normal);

  // llama.cpp's defaults (SentencePiece: 1, 2, 0; GPT-2: 11, 11, none); an id outside the
  // vocabulary (e.g. 0xFFFFFFFF for "none") keeps the default.
  const ids: Partial<Record<'bos' | 'eos' | 'unk' | SpecialTokenRole, number>> = byteLevel ? { bos: 11, eos: 11 } : { bos: 1, eos: 2, unk: 0 };
  for (const [key, role] of SPECIAL_ID_KEYS) {
    const value = optional(key, 'an integer', isInteger);
    if (value === undefined) continue;
    const id = Number(value);
    if (id >= 0 && id < n) ids[role] = id;
  }
  const { bos, eos, unk, ...specialIds } = ids;

  return {
    model,
    merges,
    pre,
    tokens,
    scores,
    tokenTypes,
    bosId: bos ?? -1,
    eosId: eos ?? -1,
    unkId: unk ?? -1,
    addBos: optional('tokenizer.ggml.add_bos_token', 'a bool', isBool) ?? preTokenizer?.addBos ?? true,
    addEos: optional('tokenizer.ggml.add_eos_token', 'a bool', isBool) ?? false,
    addSpacePrefix: optional('tokenizer.ggml.add_space_prefix', 'a bool', isBool) ?? !byteLevel,
    specialIds,
    modelName: optional('general.name', 'a string', isString),
  };
}
