// Byte-level BPE never merges across the words a pre-tokenizer regex cuts the text into. Which
// regex is named by the GGUF's `tokenizer.ggml.pre` (the converter picks it by hashing the Hugging
// Face tokenizer's output); llama.cpp maps each known value onto one of its compiled-in regex
// sets together with a few vocabulary flags. These are the sets for the Llama 3, Qwen2 and
// default families, with every `pre` value llama.cpp maps onto them (llama-vocab.cpp, 2025–26).
import { UnsupportedModelError } from '../errors.ts';

export interface PreTokenizer {
  /** The family (llama.cpp's `LLAMA_VOCAB_PRE_TYPE_*`): "llama3", "qwen2" or "default". */
  readonly family: string;
  /** Applied in turn: each regex cuts every piece the previous ones left (matches and the gaps between them). */
  readonly regexes: readonly RegExp[];
  /** A whole word that is a token is taken as is, without merging (llama.cpp: Llama 3 only). */
  readonly ignoreMerges: boolean;
  /** `add_bos_token` when the GGUF does not say. */
  readonly addBos: boolean;
  /** Whether detokenizing applies llama.cpp's space clean-up ("Wait , what" → "Wait, what"). */
  readonly cleanSpaces: boolean;
}

// The Hugging Face originals start with the case-insensitive group (?i:'s|'t|'re|'ve|'m|'ll|'d);
// llama.cpp (and this) spell the case out, because its regex engine has no inline flags.
// Whitespace is Unicode's White_Space, as in llama.cpp's tables and Rust's `\s`: JavaScript's
// `\s` differs on two characters (it has U+FEFF and lacks U+0085), so it is written out as
// WS / NOT_WS.
const WS = String.raw`\p{White_Space}`;
const NOT_WS = String.raw`\P{White_Space}`;
const CONTRACTIONS = String.raw`(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])`;
const wordsAndDigits = (digits: string): RegExp =>
  new RegExp(
    String.raw`${CONTRACTIONS}|[^\r\n\p{L}\p{N}]?\p{L}+|${digits}| ?[^${WS}\p{L}\p{N}]+[\r\n]*|${WS}*[\r\n]+|${WS}+(?!${NOT_WS})|${WS}+`,
    'gu',
  );

const LLAMA3: PreTokenizer = {
  family: 'llama3',
  regexes: [wordsAndDigits(String.raw`\p{N}{1,3}`)], // digits in groups of up to three
  ignoreMerges: true,
  addBos: true,
  cleanSpaces: true,
};

const QWEN2: PreTokenizer = {
  family: 'qwen2',
  regexes: [wordsAndDigits(String.raw`\p{N}`)], // every digit alone
  ignoreMerges: false,
  addBos: false,
  cleanSpaces: false,
};

const DEFAULT: PreTokenizer = {
  family: 'default',
  regexes: [
    /[\p{P}\$\+<=>\^~\|]+/gu,
    new RegExp(String.raw`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^${WS}\p{L}\p{N}]+|${WS}+(?!${NOT_WS})|${WS}+`, 'gu'),
    /\p{N}+/gu,
    /[0-9][0-9][0-9]/gu,
  ],
  ignoreMerges: false,
  addBos: false,
  cleanSpaces: true,
};

const BY_PRE: Readonly<Record<string, PreTokenizer>> = {
  default: DEFAULT,
  llama3: LLAMA3,
  'llama-v3': LLAMA3,
  'llama-bpe': LLAMA3,
  falcon3: LLAMA3,
  'falcon-h1': LLAMA3,
  pixtral: LLAMA3,
  'midm-2.0': LLAMA3,
  lfm2: LLAMA3,
  'jina-v5-nano': LLAMA3,
  qwen2: QWEN2,
  'deepseek-r1-qwen': QWEN2,
  kormo: QWEN2,
  f2llmv2: QWEN2,
  // llama.cpp gives Megrez the Qwen2 regex but keeps the space clean-up on.
  megrez: { ...QWEN2, cleanSpaces: true },
};

/** The `tokenizer.ggml.pre` values this tokenizer knows. */
export const SUPPORTED_PRE_TOKENIZERS: readonly string[] = Object.keys(BY_PRE);

/** The GGUF names a pre-tokenizer (`tokenizer.ggml.pre`) that this tokenizer does not have. */
export class UnsupportedPreTokenizerError extends UnsupportedModelError {
  override name = 'UnsupportedPreTokenizerError';
  /** The `tokenizer.ggml.pre` value. */
  readonly preTokenizer: string;

  constructor(file: string, preTokenizer: string) {
    super({
      file,
      field: 'tokenizer.ggml.pre',
      problem: `pre-tokenizer "${preTokenizer}" is not supported (supported: ${SUPPORTED_PRE_TOKENIZERS.join(', ')})`,
      fix: 'use a GGUF of a supported family (Llama 3.x, Qwen2.5, Qwen3, ...); guessing another regex would silently give different tokens',
    });
    this.preTokenizer = preTokenizer;
  }
}

/**
 * The pre-tokenizer for a `tokenizer.ggml.pre` value. An absent or empty value is llama.cpp's
 * "default" (it warns that quality degrades); an unknown one is refused, never guessed.
 */
export function preTokenizerFor(pre: string | undefined, file: string): PreTokenizer {
  const name = pre || 'default';
  const found = Object.hasOwn(BY_PRE, name) ? BY_PRE[name] : undefined;
  if (!found) throw new UnsupportedPreTokenizerError(file, pre!);
  return found;
}

/** Cuts text into words: each regex in turn splits every piece into its matches and the gaps between them. */
export function preTokenize(text: string, preTokenizer: PreTokenizer): string[] {
  let pieces = [text];
  for (const regex of preTokenizer.regexes) {
    const next: string[] = [];
    for (const piece of pieces) {
      let end = 0;
      for (const match of piece.matchAll(regex)) {
        if (match.index > end) next.push(piece.slice(end, match.index));
        if (match[0].length > 0) next.push(match[0]);
        end = match.index + match[0].length;
      }
      if (end < piece.length) next.push(piece.slice(end));
    }
    pieces = next;
  }
  return pieces;
}
