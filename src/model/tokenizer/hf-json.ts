// A Hugging Face `tokenizer.json` (+ `tokenizer_config.json`) read into the same `VocabData` as a
// GGUF vocabulary, so one tokenizer serves GGUF files and Hugging Face folders.
//
// Why not `@huggingface/tokenizers`: one implementation, exact to llama.cpp token for token (the
// GGUF references test it), and no extra dependency. The GGUF files of these models were converted
// from these very tokenizer.json files, so this reader follows llama.cpp's converter
// (convert_hf_to_gguf.py `get_vocab_base`/`_set_vocab_gpt2`, gguf-py `SpecialVocab`) and gives the
// vocabulary the converter writes. Where Hugging Face's own tokenizer departs from llama.cpp, its
// behaviour is available behind `semantics: 'huggingface'` (see `HuggingFaceDepartures`):
// - its NFC normalizer (Qwen): llama.cpp never normalizes, so decomposed "é" tokenizes differently;
// - added tokens in plain text: Hugging Face always splits every added token (special or not) out
//   of raw text, llama.cpp only USER_DEFINED ones unless special-token parsing is asked for.
//
// Two forms are read: byte-level BPE with a `Split` regex + `ByteLevel` pre-tokenizer (Llama 3,
// Qwen2/2.5/3: GGUF model "gpt2"), and the SentencePiece-converted BPE (`byte_fallback`, a
// `Metaspace` pre-tokenizer or a `Prepend`+`Replace` normalizer: GGUF model "llama"). Anything else
// is refused with a typed error naming what the file has and what is supported.
import { ModelFormatError, UnsupportedModelError } from '../errors.ts';
import { preTokenizerFor } from './pre-tokenizer.ts';
import { TokenType, type VocabData } from './vocab.ts';

/** Which tokenizer's behaviour to reproduce where llama.cpp and Hugging Face differ. */
export const TOKENIZER_SEMANTICS = ['llama.cpp', 'huggingface'] as const;
export type TokenizerSemantics = (typeof TOKENIZER_SEMANTICS)[number];

export interface TokenizerJsonOptions {
  /** Default "llama.cpp": the ids of the GGUF converted from this file. */
  semantics?: TokenizerSemantics;
  /**
   * config.json `vocab_size`: the converter pads the vocabulary to it with `[PADn]` (UNUSED)
   * tokens, so ids line up with the embedding rows.
   */
  vocabSize?: number;
  /**
   * config.json `bos_token_id` / `eos_token_id`, used where the tokenizer files name no such token
   * (as gguf-py's SpecialVocab does: Qwen's BOS id comes only from there). A list is not an id.
   */
  bosTokenId?: unknown;
  eosTokenId?: unknown;
  /** Names the files in error messages. Default "tokenizer.json". */
  file?: string;
}

/** An added token as Hugging Face splits it out of raw text. */
export interface AddedToken {
  readonly id: number;
  readonly text: string;
  /** `special: true` in tokenizer.json (split out only when special tokens are parsed). */
  readonly special: boolean;
  /** Whitespace on that side is swallowed by the token. */
  readonly lstrip: boolean;
  readonly rstrip: boolean;
}

/** What Hugging Face does differently from llama.cpp (the entry class applies it). */
export interface HuggingFaceDepartures {
  /** The normalizer is NFC (Qwen). */
  readonly normalizeNfc: boolean;
  /** Every added token, split out of raw text before the model sees it. */
  readonly addedTokens: readonly AddedToken[];
}

export interface TokenizerJsonVocab {
  vocab: VocabData;
  /** tokenizer_config.json `chat_template` (the default one when it lists several). */
  chatTemplate?: string;
  /** Set with `semantics: 'huggingface'`. */
  huggingFace?: HuggingFaceDepartures;
}

type Json = Record<string, unknown>;
const isObject = (value: unknown): value is Json => typeof value === 'object' && value !== null && !Array.isArray(value);

// The Hugging Face originals of the regexes in ./pre-tokenizer.ts, and the llama.cpp `pre` name
// of each (the converter recognizes them by hashing the tokenizer's output; the pattern string is
// the same thing, read directly).
const SPLIT_PATTERNS: Readonly<Record<string, string>> = {
  [String.raw`(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`]: 'llama-bpe',
  [String.raw`(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`]: 'qwen2',
};
const SUPPORTED_FORMS =
  'byte-level BPE with a Split regex of Llama 3 or Qwen2 and a ByteLevel pre-tokenizer, ' +
  'or SentencePiece-converted BPE (byte_fallback, Metaspace or Prepend+Replace)';
const ESCAPED_SPACE = '\u2581';
const BYTE_TOKEN = /^<0x[0-9A-F]{2}>$/;

/** The converter's `does_token_look_special`: such added tokens are CONTROL even when not `special`. */
function looksSpecial(text: string): boolean {
  return (
    ['<pad>', '<mask>', '<2mass>', '[@BOS@]'].includes(text) ||
    (text.startsWith('<|') && text.endsWith('|>')) ||
    (text.startsWith('<\uff5c') && text.endsWith('\uff5c>'))
  );
}

/**
 * Reads a parsed tokenizer.json (and optionally tokenizer_config.json) into `VocabData`: the
 * vocabulary, token types, merges, pre-tokenizer and special ids that llama.cpp's converter would
 * write into a GGUF. With `semantics: 'huggingface'` also Hugging Face's departures.
 */
export function vocabFromTokenizerJson(json: unknown, tokenizerConfig?: unknown, options: TokenizerJsonOptions = {}): TokenizerJsonVocab {
  const file = options.file ?? 'tokenizer.json';
  const malformed = (field: string, problem: string): ModelFormatError =>
    new ModelFormatError({ file, field, problem: `${field}: ${problem}`, fix: 'the file is damaged or not a Hugging Face tokenizer.json; download it again' });
  const unsupported = (field: string, what: string): UnsupportedModelError =>
    new UnsupportedModelError({
      file,
      field,
      problem: `${field}: ${what} is not supported (supported: ${SUPPORTED_FORMS})`,
      fix: 'use a model with a Llama 3, Qwen2/2.5/3 or SentencePiece (Llama 2) style tokenizer, or its GGUF conversion',
    });
  const describe = (value: unknown): string => JSON.stringify(value)?.slice(0, 300) ?? String(value);

  if (!isObject(json)) throw malformed('(root)', 'the tokenizer is not a JSON object');
  const config = isObject(tokenizerConfig) ? tokenizerConfig : {};
  const model = json.model;
  if (!isObject(model)) throw malformed('model', 'the tokenizer has no "model" object');
  if (model.type !== 'BPE') throw unsupported('model.type', `model type ${describe(model.type)}`);
  if (model.dropout != null && model.dropout !== 0) throw unsupported('model.dropout', `BPE dropout ${describe(model.dropout)}`);
  for (const key of ['continuing_subword_prefix', 'end_of_word_suffix'] as const) {
    if (model[key] != null && model[key] !== '') throw unsupported(`model.${key}`, `${key} ${describe(model[key])}`);
  }

  // --- Form: byte-level (pre-tokenizer regex) or SentencePiece-converted (▁ for spaces).
  const pre = readPreTokenizer(json.pre_tokenizer);
  const normalizer = readNormalizer(json.normalizer);
  const byteLevel = pre.kind === 'byte-level';
  if (byteLevel && (normalizer.spacePrefix || normalizer.escapesSpaces)) {
    throw unsupported('normalizer', `normalizer ${describe(json.normalizer)} with a ByteLevel pre-tokenizer`);
  }
  if (!byteLevel) {
    const escapesSpaces = normalizer.escapesSpaces || pre.kind === 'metaspace';
    if (!escapesSpaces) {
      const found = `pre_tokenizer ${describe(json.pre_tokenizer)}, normalizer ${describe(json.normalizer)}`;
      throw unsupported('pre_tokenizer', `a BPE tokenizer without ByteLevel or Metaspace (${found})`);
    }
    if (normalizer.nfc) throw unsupported('normalizer', 'an NFC normalizer on a SentencePiece-style tokenizer');
  }
  const preName = pre.kind === 'byte-level' ? pre.name : undefined;
  const preTokenizer = preName ? preTokenizerFor(preName, file) : undefined;
  // llama.cpp takes ignore_merges from the pre-tokenizer family, not from the file (the converter
  // does not write it); Hugging Face from the file. Where they differ only llama.cpp's is encoded.
  const ignoreMerges = model.ignore_merges === true;
  if (options.semantics === 'huggingface' && preTokenizer && preTokenizer.ignoreMerges !== ignoreMerges) {
    throw unsupported(
      'model.ignore_merges',
      `ignore_merges ${ignoreMerges} with the ${preTokenizer.family} pre-tokenizer under semantics "huggingface" ` +
        `(the ${preTokenizer.family} family has it ${preTokenizer.ignoreMerges}; use semantics "llama.cpp")`,
    );
  }

  // --- Vocabulary: model.vocab, then the added tokens; ids missing in between are padding.
  if (!isObject(model.vocab)) throw malformed('model.vocab', 'the BPE vocabulary is not an object of token → id');
  const textById = new Map<number, string>();
  const checkId = (field: () => string, id: unknown): number => {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= 1 << 24) throw malformed(field(), `token id ${describe(id)} is not an id`);
    return id;
  };
  for (const text in model.vocab) textById.set(checkId(() => `model.vocab[${describe(text)}]`, model.vocab[text]), text);
  const rawAdded = json.added_tokens ?? [];
  if (!Array.isArray(rawAdded)) throw malformed('added_tokens', 'added_tokens is not an array');
  const added = new Map<number, AddedToken>();
  for (const [index, entry] of rawAdded.entries()) {
    if (!isObject(entry) || typeof entry.content !== 'string') throw malformed(`added_tokens[${index}]`, 'an added token has no "content" string');
    if (entry.single_word === true) throw unsupported(`added_tokens[${index}]`, `single_word added token ${describe(entry.content)}`);
    const id = checkId(() => `added_tokens[${index}].id`, entry.id);
    added.set(id, { id, text: entry.content, special: entry.special === true, lstrip: entry.lstrip === true, rstrip: entry.rstrip === true });
    textById.set(id, entry.content);
  }
  const unkText = typeof model.unk_token === 'string' ? model.unk_token : undefined;
  let count = options.vocabSize ?? 0;
  for (const id of textById.keys()) count = Math.max(count, id + 1);
  const tokens = new Array<string>(count);
  const tokenTypes = new Int32Array(count);
  for (let id = 0; id < count; id++) {
    const text = textById.get(id);
    const addedToken = added.get(id);
    if (text === undefined) {
      tokens[id] = `[PAD${id}]`; // the converter's padding
      tokenTypes[id] = TokenType.Unused;
    } else if (!byteLevel && text === unkText) {
      tokens[id] = text;
      tokenTypes[id] = TokenType.Unknown;
    } else if (addedToken && (addedToken.special || looksSpecial(text))) {
      tokens[id] = text;
      tokenTypes[id] = TokenType.Control;
    } else if (addedToken) {
      tokens[id] = text.replaceAll(ESCAPED_SPACE, ' '); // the converter's "pre-normalize user-defined spaces"
      tokenTypes[id] = TokenType.UserDefined;
    } else {
      tokens[id] = text;
      tokenTypes[id] = !byteLevel && model.byte_fallback === true && BYTE_TOKEN.test(text) ? TokenType.Byte : TokenType.Normal;
    }
  }

  // --- Merges: "a b" strings or [a, b] pairs (newer files), best first.
  if (!Array.isArray(model.merges)) throw malformed('model.merges', 'the BPE merges are not an array');
  const merges = model.merges.map((merge: unknown, rank): string => {
    if (typeof merge === 'string') {
      const space = merge.indexOf(' ');
      if (space > 0 && space < merge.length - 1 && merge.indexOf(' ', space + 1) < 0) return merge;
    }
    if (Array.isArray(merge) && merge.length === 2 && merge.every((part) => typeof part === 'string' && !part.includes(' '))) return `${merge[0]} ${merge[1]}`;
    throw malformed(`model.merges[${rank}]`, `merge ${describe(merge)} is neither "left right" nor a [left, right] pair of space-free texts`);
  });
  const idOf = new Map(tokens.map((text, id) => [text, id]));
  // SentencePiece merges by token score, which tokenizer.json does not keep; its merges are the
  // converter's splits ordered by that score, so a token's first merge rank orders it the same way.
  // Tokens no merge makes rank below all (a byte-fallback vocabulary has no other way to them).
  const scores = new Float32Array(count).fill(byteLevel ? 0 : -merges.length);
  if (!byteLevel) {
    for (let rank = merges.length - 1; rank >= 0; rank--) {
      const id = idOf.get(merges[rank]!.replace(' ', ''));
      if (id !== undefined) scores[id] = -rank;
    }
  }

  // --- Special tokens: post_processor TemplateProcessing, then tokenizer_config.json (which wins).
  const template = templateSpecialTokens(json.post_processor);
  const configToken = (key: string): number | undefined => {
    const entry = config[key];
    const text = typeof entry === 'string' ? entry : isObject(entry) && typeof entry.content === 'string' ? entry.content : undefined;
    return text === undefined ? undefined : idOf.get(text);
  };
  const configFlag = (key: string): boolean | undefined => (typeof config[key] === 'boolean' ? (config[key] as boolean) : undefined);
  const modelConfigId = (id: unknown): number | undefined => (typeof id === 'number' && Number.isInteger(id) && id >= 0 && id < count ? id : undefined);
  const bosId = configToken('bos_token') ?? (template.first !== undefined ? idOf.get(template.first) : undefined) ?? modelConfigId(options.bosTokenId) ?? -1;
  const eosId = configToken('eos_token') ?? (template.last !== undefined ? idOf.get(template.last) : undefined) ?? modelConfigId(options.eosTokenId) ?? -1;
  const unkId = (unkText !== undefined ? idOf.get(unkText) : undefined) ?? configToken('unk_token') ?? -1;
  const huggingFace = options.semantics === 'huggingface';
  // Unsaid: llama.cpp's defaults for the GGUF; Hugging Face adds only what its template says.
  const addBos = configFlag('add_bos_token') ?? (template.first !== undefined ? true : huggingFace ? false : (preTokenizer?.addBos ?? true));
  const addEos = configFlag('add_eos_token') ?? template.last !== undefined;

  const vocab: VocabData = {
    model: byteLevel ? 'gpt2' : 'llama',
    merges: byteLevel ? merges : undefined,
    pre: preName,
    tokens,
    scores,
    tokenTypes,
    bosId,
    eosId,
    unkId,
    addBos,
    addEos,
    addSpacePrefix: !byteLevel && (normalizer.spacePrefix || (pre.kind === 'metaspace' && pre.spacePrefix)),
  };
  return {
    vocab,
    chatTemplate: readChatTemplate(config.chat_template),
    huggingFace: huggingFace ? { normalizeNfc: normalizer.nfc, addedTokens: [...added.values()] } : undefined,
  };

  // -------------------------------------------------------------------------------------------

  function readPreTokenizer(value: unknown): { kind: 'none' } | { kind: 'byte-level'; name: string } | { kind: 'metaspace'; spacePrefix: boolean } {
    if (value == null) return { kind: 'none' };
    const steps = isObject(value) && value.type === 'Sequence' && Array.isArray(value.pretokenizers) ? value.pretokenizers : [value];
    if (steps.length === 1 && isObject(steps[0]) && steps[0].type === 'Metaspace') {
      const step = steps[0];
      if ((step.replacement ?? ESCAPED_SPACE) !== ESCAPED_SPACE) throw unsupported('pre_tokenizer', `Metaspace replacement ${describe(step.replacement)}`);
      if (step.split === true) throw unsupported('pre_tokenizer', 'a Metaspace pre-tokenizer that splits words');
      const scheme = step.prepend_scheme ?? (step.add_prefix_space === false ? 'never' : 'always');
      // "first": Hugging Face adds no "▁" to a text after an added token, where llama.cpp (and this
      // tokenizer) does; that is refused under Hugging Face semantics rather than encoded differently.
      if (scheme === 'first' && options.semantics === 'huggingface') {
        throw unsupported(
          'pre_tokenizer',
          'Metaspace prepend_scheme "first" with semantics "huggingface" ' +
            '(llama.cpp\'s prefix after every added token is what is implemented; use semantics "llama.cpp")',
        );
      }
      return { kind: 'metaspace', spacePrefix: scheme !== 'never' };
    }
    // Split(regex, Isolated) then ByteLevel(no regex, no prefix space): the only byte-level shape read.
    const [split, byteLevelStep] = steps;
    if (
      steps.length === 2 && isObject(split) && split.type === 'Split' && split.behavior === 'Isolated' && split.invert !== true &&
      isObject(split.pattern) && typeof split.pattern.Regex === 'string' &&
      isObject(byteLevelStep) && byteLevelStep.type === 'ByteLevel' && byteLevelStep.use_regex === false && byteLevelStep.add_prefix_space !== true
    ) {
      const name = Object.hasOwn(SPLIT_PATTERNS, split.pattern.Regex) ? SPLIT_PATTERNS[split.pattern.Regex] : undefined;
      if (!name) throw unsupported('pre_tokenizer', `Split pattern ${describe(split.pattern.Regex)} (known: the Llama 3 and Qwen2 patterns)`);
      return { kind: 'byte-level', name };
    }
    throw unsupported('pre_tokenizer', `pre-tokenizer ${describe(value)}`);
  }

  function readNormalizer(value: unknown): { nfc: boolean; spacePrefix: boolean; escapesSpaces: boolean } {
    const result = { nfc: false, spacePrefix: false, escapesSpaces: false };
    if (value == null) return result;
    const steps = isObject(value) && value.type === 'Sequence' && Array.isArray(value.normalizers) ? value.normalizers : [value];
    for (const step of steps) {
      const type = isObject(step) ? step.type : undefined;
      if (type === 'NFC') {
        result.nfc = true;
      } else if (type === 'Prepend' && step.prepend === ESCAPED_SPACE && !result.escapesSpaces) {
        result.spacePrefix = true;
      } else if (type === 'Replace' && isObject(step.pattern) && step.pattern.String === ' ' && step.content === ESCAPED_SPACE) {
        result.escapesSpaces = true;
      } else {
        throw unsupported('normalizer', `normalizer ${describe(step)} (supported: NFC, Prepend "▁", Replace " " → "▁")`);
      }
    }
    return result;
  }

  /** The special tokens a TemplateProcessing post-processor puts before and after a single sequence. */
  function templateSpecialTokens(value: unknown): { first?: string; last?: string } {
    const processors = isObject(value) && value.type === 'Sequence' && Array.isArray(value.processors) ? value.processors : [value];
    const templateProcessing = processors.find((processor) => isObject(processor) && processor.type === 'TemplateProcessing');
    if (!isObject(templateProcessing) || !Array.isArray(templateProcessing.single)) return {};
    const single = templateProcessing.single as unknown[];
    const specialAt = (index: number): string | undefined => {
      const item = single[index];
      return isObject(item) && isObject(item.SpecialToken) && typeof item.SpecialToken.id === 'string' ? item.SpecialToken.id : undefined;
    };
    return { first: specialAt(0), last: single.length > 1 ? specialAt(single.length - 1) : undefined };
  }
}

/** tokenizer_config.json `chat_template`: a string, or a list of named templates ("default" first). */
function readChatTemplate(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  if (!Array.isArray(value)) return undefined;
  const named = value.filter((entry): entry is { name: string; template: string } => isObject(entry) && typeof entry.template === 'string');
  return (named.find((entry) => entry.name === 'default') ?? named[0])?.template;
}
