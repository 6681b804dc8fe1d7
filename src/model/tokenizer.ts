// The tokenizer of a GGUF model, both of the models llama.cpp calls SPM and BPE:
// - "llama": SentencePiece-style BPE with byte fallback, llama.cpp's `llm_tokenizer_spm`
//   (Llama 1/2, Mistral, Phi-3);
// - "gpt2": byte-level BPE with merge rules and a pre-tokenizer regex, llama.cpp's
//   `llm_tokenizer_bpe` (Llama 3.x, Qwen2.5, Qwen3). Its parts are in ./tokenizer/.
// Both share the vocabulary, the special-token handling and the end-of-generation set here.
//
// The goal is token-for-token equality with `llama_tokenize(add_special, parse_special)` and
// byte-for-byte equality with `llama_token_to_piece` / `llama_detokenize`. Where llama.cpp does
// something surprising, the code copies it and says so.
//
// The tokenizer is built from plain data (`VocabData`), so it does not depend on the file format;
// `LlamaTokenizer.fromGGUFMetadata` is the adapter for GGUF metadata, `fromTokenizerJson` the one
// for a Hugging Face tokenizer.json (tokenizer/hf-json.ts). Web APIs only.
import { mergeSymbols } from './tokenizer/bigram-merge.ts';
import { cleanSpaces, fromByteLevel, toByteLevel } from './tokenizer/byte-level.ts';
import { preTokenize, preTokenizerFor, type PreTokenizer } from './tokenizer/pre-tokenizer.ts';
import { vocabFromTokenizerJson, type HuggingFaceDepartures, type TokenizerJsonOptions, type TokenizerJsonVocab } from './tokenizer/hf-json.ts';
import { TokenType, vocabFromGGUFMetadata, type SpecialTokenRole, type TokenizerModel, type VocabData } from './tokenizer/vocab.ts';

export { SUPPORTED_PRE_TOKENIZERS, UnsupportedPreTokenizerError } from './tokenizer/pre-tokenizer.ts';
export { TOKENIZER_SEMANTICS, vocabFromTokenizerJson, type TokenizerJsonOptions, type TokenizerJsonVocab, type TokenizerSemantics } from './tokenizer/hf-json.ts';
export { TokenType, UnsupportedTokenizerError, type SpecialTokenRole, type TokenizerModel, type VocabData } from './tokenizer/vocab.ts';

export interface EncodeOptions {
  /** Prepend BOS (default: the vocabulary's `add_bos_token`, true for Llama). */
  addBos?: boolean;
  /** Append EOS (default: the vocabulary's `add_eos_token`, false for Llama). */
  addEos?: boolean;
  /**
   * Turn the texts of control tokens (`<s>`, `</s>`, ...) into those tokens (llama.cpp's
   * `parse_special`). Default false: `<s>` in user text is plain text. User-defined tokens are
   * always split out, as in llama.cpp.
   */
  parseSpecial?: boolean;
}

export interface DecodeOptions {
  /** Drop a leading BOS and trailing EOS (when the vocabulary adds them). Default true. */
  removeSpecial?: boolean;
  /** Render control and unknown tokens as their text (`<s>`) instead of nothing. Default false. */
  unparseSpecial?: boolean;
}

export interface PieceOptions {
  /** Render control and unknown tokens as their text instead of nothing. Default false. */
  special?: boolean;
  /** Drop up to this many leading spaces. Default 0. */
  lstrip?: number;
}

/** Turns a stream of token ids into text, holding back bytes of a UTF-8 character not yet complete. */
export interface StreamDecoder {
  /** The text that became complete with this token (often "", e.g. mid-way through an emoji). */
  push(id: number): string;
  /** Whatever is still held back (an incomplete character becomes U+FFFD); the decoder can then be reused. */
  flush(): string;
}

// ---------------------------------------------------------------------------------------------
// Token attributes: llama.cpp's `llama_token_attr` bit flags. Kept as flags (not the GGUF type)
// because llama.cpp changes them after loading: control-looking tokens become CONTROL, Phi-3's
// special tokens get RSTRIP.

const Attr = {
  Undefined: 0,
  Unknown: 1 << 0,
  Unused: 1 << 1,
  Normal: 1 << 2,
  Control: 1 << 3,
  UserDefined: 1 << 4,
  Byte: 1 << 5,
  Lstrip: 1 << 7,
  Rstrip: 1 << 8,
} as const;

function attrOfType(type: number): number {
  switch (type) {
    case TokenType.Unknown:
      return Attr.Unknown;
    case TokenType.Unused:
      return Attr.Unused;
    case TokenType.Normal:
      return Attr.Normal;
    case TokenType.Control:
      return Attr.Control;
    case TokenType.UserDefined:
      return Attr.UserDefined;
    case TokenType.Byte:
      return Attr.Byte;
    default:
      return Attr.Undefined;
  }
}

// Texts llama.cpp (llama_vocab::impl::load) uses to find special tokens that the GGUF does not
// name. A token found this way is forced to CONTROL, which matters: control tokens decode to
// nothing and are not split out of plain text.
const ROLE_TEXTS: ReadonlyArray<readonly [SpecialTokenRole, readonly string[]]> = [
  ['eot', ['<|eot_id|>', '<|im_end|>', '<|end|>', '<end_of_turn>', '<|endoftext|>', '<|end_of_text|>', '<EOT>', '_<EOT>', '[EOT]', '<end_of_utterance>']],
  ['eom', ['<|eom_id|>']],
  ['fimPre', ['<|fim_prefix|>', '<fim-prefix>', '<fim_prefix>', '<PRE>', '<|code_prefix|>', '<|prefix|>']],
  ['fimSuf', ['<|fim_suffix|>', '<fim-suffix>', '<fim_suffix>', '<SUF>', '<|code_suffix|>', '<|suffix|>']],
  ['fimMid', ['<|fim_middle|>', '<fim-middle>', '<fim_middle>', '<MID>', '<|code_middle|>', '<|middle|>']],
  ['fimPad', ['<|fim_pad|>', '<fim-pad>', '<fim_pad>', '<PAD>', '[PAD]']],
  ['fimRep', ['<|fim_repo|>', '<|repo_name|>', '<fim-repo>', '<REPO>', '<reponame>']],
  ['fimSep', ['<|file_sep|>']],
];
// Tokens that end generation by their text alone (llama.cpp's list, 2026). Each also becomes
// CONTROL, so it is no longer split out of plain text: that is why Phi-3's "</s>", USER_DEFINED in
// its GGUF, stays text in a prompt without parse_special (and Qwen's normal "</s>" decodes to nothing).
const EOG_TEXTS = new Set([
  '<|eot_id|>', '<|eom_id|>', '<|end_of_text|>', // Llama 3
  '<|im_end|>', '<|endoftext|>', // Qwen (ChatML), Phi-3
  '<|end|>', // Phi-3
  '</s>',
  '<|return|>', '<|call|>', '<|flush|>', '<|calls|>', '<end_of_turn>', '<EOT>', '_<EOT>', '[EOT]', '[EOS]',
  '<end_of_utterance>', '<eos>', '<turn|>', '<|tool_response>',
]);

const SPACE = ' ';
const ESCAPED_SPACE = '\u2581'; // "▁", SentencePiece's visible space
const HEX_DIGITS = '0123456789ABCDEF';
const EMPTY_BYTES = new Uint8Array(0);

// C `isspace` in the "C" locale, which llama.cpp uses to strip around LSTRIP/RSTRIP tokens.
function isCSpace(codeUnit: number): boolean {
  return codeUnit === 0x20 || (codeUnit >= 0x09 && codeUnit <= 0x0d);
}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

/**
 * llama.cpp tokenizes UTF-8 bytes. A JS string with a lone surrogate has no UTF-8 form; TextEncoder
 * (what any caller would use to hand it to llama.cpp) writes U+FFFD for it, so do the same here.
 */
function wellFormed(text: string): string {
  LONE_SURROGATE.lastIndex = 0;
  return LONE_SURROGATE.test(text) ? text.replace(LONE_SURROGATE, '\uFFFD') : text;
}

/** Appends the UTF-8 bytes of one code point. */
function pushUtf8(codePoint: number, out: number[]): void {
  if (codePoint < 0x80) {
    out.push(codePoint);
  } else if (codePoint < 0x800) {
    out.push(0xc0 | (codePoint >> 6), 0x80 | (codePoint & 0x3f));
  } else if (codePoint < 0x10000) {
    out.push(0xe0 | (codePoint >> 12), 0x80 | ((codePoint >> 6) & 0x3f), 0x80 | (codePoint & 0x3f));
  } else {
    out.push(0xf0 | (codePoint >> 18), 0x80 | ((codePoint >> 12) & 0x3f), 0x80 | ((codePoint >> 6) & 0x3f), 0x80 | (codePoint & 0x3f));
  }
}

/** A piece of the input after special tokens are split out: raw text, or a token id. */
type Fragment = string | number;

/** Byte-level BPE state: merge ranks, the pre-tokenizer, and the ids of words seen before. */
interface BpeState {
  readonly mergeRanks: Map<string, number>;
  readonly preTokenizer: PreTokenizer;
  readonly wordCache: Map<string, number[]>;
}
// Words repeat (Zipf), so a modest cache catches most of them; it is dropped whole when full.
const WORD_CACHE_LIMIT = 1 << 16;

/** The ids of `word` from `cache`, or from `encode` (then cached). */
function cachedWord(cache: Map<string, number[]>, word: string, encode: (word: string) => number[]): number[] {
  let ids = cache.get(word);
  if (ids === undefined) {
    ids = encode(word);
    if (cache.size >= WORD_CACHE_LIMIT) cache.clear();
    cache.set(word, ids);
  }
  return ids;
}

/** A SentencePiece token text with a word start ("▁") after another character. */
const WORD_START_INSIDE = /[^\u2581]\u2581/;

// ---------------------------------------------------------------------------------------------

export class LlamaTokenizer {
  readonly vocabSize: number;
  readonly bosId: number;
  readonly eosId: number;
  readonly unkId: number;
  readonly addBos: boolean;
  readonly addEos: boolean;
  readonly addSpacePrefix: boolean;
  readonly model: TokenizerModel;
  /** Every token that ends generation (EOS, EOT, EOM, FIM pad/repo/sep, and `<|im_end|>`-like texts). */
  readonly eogIds: ReadonlySet<number>;

  private readonly texts: string[];
  private readonly scores: Float32Array;
  private readonly attrs: Uint16Array;
  private readonly textToId = new Map<string, number>();
  /** Longest token text in UTF-16 code units: longer candidate merges need no lookup. */
  private readonly maxTextLength: number;
  /** Control, user-defined and unknown tokens, longest first: the order llama.cpp splits them out of text. */
  private readonly specialTokens: number[];
  /** `<0xXX>` token of each byte (-1: the vocabulary has none). */
  private readonly byteTokens = new Int32Array(256).fill(-1);
  /** Lazily built piece bytes (llama.cpp's `cache_token_to_piece`, special = true). */
  private readonly pieceCache: Array<Uint8Array | undefined>;
  private readonly encoder = new TextEncoder();
  /** Set for byte-level BPE ("gpt2") vocabularies. */
  private readonly bpe?: BpeState;
  /** Detokenizing applies llama.cpp's space clean-up (byte-level BPE except Qwen's). */
  private readonly cleanSpaces: boolean;
  /**
   * SentencePiece: ids of the words seen before. Only where no token has a "▁" right after another
   * character: then no merge can cross a word start, and each word can be merged on its own
   * (Llama 2 and Phi-3 vocabularies). Undefined otherwise: the whole fragment is merged at once.
   */
  private readonly spmWordCache?: Map<string, number[]>;

  constructor(vocab: VocabData) {
    const n = vocab.tokens.length;
    if (n === 0) throw new RangeError('tokenizer vocabulary is empty');
    if (vocab.scores.length !== n || vocab.tokenTypes.length !== n) {
      throw new RangeError(`tokenizer vocabulary has ${n} tokens but ${vocab.scores.length} scores and ${vocab.tokenTypes.length} token types`);
    }
    this.vocabSize = n;
    this.bosId = vocab.bosId;
    this.eosId = vocab.eosId;
    this.unkId = vocab.unkId;
    this.addBos = vocab.addBos;
    this.addEos = vocab.addEos;
    this.addSpacePrefix = vocab.addSpacePrefix;
    this.model = vocab.model ?? 'llama';
    if (this.model === 'gpt2') {
      const preTokenizer = preTokenizerFor(vocab.pre, 'vocabulary');
      const mergeRanks = new Map<string, number>();
      // A rule listed twice keeps its first (best) rank, as llama.cpp's map insert does.
      (vocab.merges ?? []).forEach((merge, rank) => mergeRanks.has(merge) || mergeRanks.set(merge, rank));
      this.bpe = { mergeRanks, preTokenizer, wordCache: new Map() };
    }
    this.cleanSpaces = this.bpe?.preTokenizer.cleanSpaces ?? false;

    this.texts = new Array<string>(n);
    this.scores = Float32Array.from(vocab.scores);
    this.attrs = new Uint16Array(n);
    let maxTextLength = 0;
    for (let id = 0; id < n; id++) {
      // llama.cpp renames empty tokens so that every text maps back to one id.
      const text = vocab.tokens[id] || `[EMPTY_${id}]`;
      this.texts[id] = text;
      this.textToId.set(text, id); // a duplicated text maps to its last id, as in llama.cpp
      this.attrs[id] = attrOfType(vocab.tokenTypes[id]!);
      maxTextLength = Math.max(maxTextLength, text.length);
    }
    this.maxTextLength = maxTextLength;
    if (!this.bpe && !this.texts.some((text) => WORD_START_INSIDE.test(text))) this.spmWordCache = new Map();
    this.pieceCache = new Array<Uint8Array | undefined>(n);

    for (let byte = 0; byte < 256; byte++) {
      const id = this.textToId.get(`<0x${HEX_DIGITS[byte >> 4]}${HEX_DIGITS[byte & 15]}>`) ??
        // llama.cpp falls back to a token that is the byte itself (only possible for ASCII here).
        (byte < 0x80 ? this.textToId.get(String.fromCharCode(byte)) : undefined);
      if (id !== undefined) this.byteTokens[byte] = id;
    }

    this.eogIds = this.findSpecialRoles(vocab.specialIds ?? {}, vocab.endOfGenerationIds ?? []);

    this.specialTokens = [];
    for (let id = 0; id < n; id++) {
      if (this.attrs[id]! & (Attr.Control | Attr.UserDefined | Attr.Unknown)) this.specialTokens.push(id);
    }
    // llama.cpp sorts by UTF-8 length with std::sort (unstable); ties keep id order here.
    const utf8Length = (id: number): number => this.encoder.encode(this.texts[id]).length;
    const lengths = new Map(this.specialTokens.map((id) => [id, utf8Length(id)]));
    this.specialTokens.sort((a, b) => lengths.get(b)! - lengths.get(a)! || a - b);

    const modelName = (vocab.modelName ?? '').toLowerCase();
    if (modelName.includes('phi-3') || modelName.includes('phi3')) {
      // llama.cpp: Phi-3's special tokens swallow the whitespace after them, except <unk>, <s>, <|endoftext|>.
      for (const id of this.specialTokens) this.attrs[id] = this.attrs[id]! | Attr.Rstrip;
      this.setAttr('</s>', Attr.Rstrip, true);
      for (const text of ['<unk>', '<s>', '<|endoftext|>']) this.setAttr(text, Attr.Rstrip, false);
    }
  }

  /**
   * Reads a tokenizer from GGUF metadata (`tokenizer.ggml.*`), with llama.cpp's defaults for keys
   * that are absent. `file` only names the model in error messages.
   */
  static fromGGUFMetadata(metadata: Map<string, unknown>, options: { file?: string } = {}): LlamaTokenizer {
    return new LlamaTokenizer(vocabFromGGUFMetadata(metadata, options.file ?? 'GGUF metadata'));
  }

  /**
   * Reads a Hugging Face `tokenizer.json` (parsed), with `tokenizer_config.json` for the special
   * tokens. By default the ids are llama.cpp's for the GGUF converted from it; with
   * `semantics: 'huggingface'` Hugging Face's where they differ (NFC, added tokens in raw text).
   */
  static fromTokenizerJson(json: unknown, tokenizerConfig?: unknown, options: TokenizerJsonOptions = {}): LlamaTokenizer {
    return LlamaTokenizer.fromTokenizerJsonVocab(vocabFromTokenizerJson(json, tokenizerConfig, options));
  }

  /** The tokenizer of a tokenizer.json already read by `vocabFromTokenizerJson`. */
  static fromTokenizerJsonVocab({ vocab, huggingFace }: TokenizerJsonVocab): LlamaTokenizer {
    return huggingFace ? new HuggingFaceTokenizer(vocab, huggingFace) : new LlamaTokenizer(vocab);
  }

  // -------------------------------------------------------------------------------------------
  // Encoding

  /** Text to token ids, as `llama_tokenize(text, add_special, parse_special = false)`. */
  encode(text: string, options: EncodeOptions = {}): number[] {
    const addBos = options.addBos ?? this.addBos;
    const addEos = options.addEos ?? this.addEos;
    const output: number[] = [];
    if (addBos) output.push(this.requireId(this.bosId, 'BOS'));

    // An empty text gives no fragment at all, so not even the space prefix ([BOS] only).
    const fragments = text === '' ? [] : this.splitSpecialTokens(wellFormed(text), options.parseSpecial ?? false);
    // The space prefix goes on the first text and on every text right after a special token.
    let afterSpecial = true;
    for (const fragment of fragments) {
      if (typeof fragment === 'number') {
        output.push(fragment);
        afterSpecial = true;
        continue;
      }
      if (this.bpe) {
        this.encodeBpeFragment(fragment, output);
      } else {
        const prefixed = this.addSpacePrefix && afterSpecial ? SPACE + fragment : fragment;
        this.encodeSpmFragment(prefixed.replaceAll(SPACE, ESCAPED_SPACE), output);
      }
      afterSpecial = false;
    }

    if (addEos) output.push(this.requireId(this.eosId, 'EOS'));
    return output;
  }

  /**
   * Splits special tokens out of the text before BPE (llama.cpp's `tokenizer_st_partition`):
   * each special token in turn, longest first, cuts every remaining text fragment at each of its
   * occurrences. Without `parseSpecial` only user-defined tokens are cut out.
   */
  private splitSpecialTokens(text: string, parseSpecial: boolean): Fragment[] {
    let fragments: Fragment[] = [text];
    for (const id of this.specialTokens) {
      const attr = this.attrs[id]!;
      if (!parseSpecial && attr & (Attr.Control | Attr.Unknown)) continue;
      const special = this.texts[id]!;
      if (!fragments.some((fragment) => typeof fragment === 'string' && fragment.includes(special))) continue;

      const next: Fragment[] = [];
      for (const fragment of fragments) {
        if (typeof fragment === 'number') {
          next.push(fragment);
          continue;
        }
        let start = 0;
        for (;;) {
          const match = fragment.indexOf(special, start);
          if (match < 0) {
            if (start < fragment.length) next.push(fragment.slice(start));
            break;
          }
          let leftEnd = match;
          if (attr & Attr.Lstrip) while (leftEnd > start && isCSpace(fragment.charCodeAt(leftEnd - 1))) leftEnd--;
          if (leftEnd > start) next.push(fragment.slice(start, leftEnd));
          next.push(id);
          start = match + special.length;
          if (attr & Attr.Rstrip) while (start < fragment.length && isCSpace(fragment.charCodeAt(start))) start++;
        }
      }
      fragments = next;
    }
    return fragments;
  }

  /**
   * SentencePiece BPE over one fragment (whitespace already escaped), llama.cpp's
   * `llm_tokenizer_spm_session::tokenize`: start from single characters, repeatedly merge the
   * adjacent pair whose merged text is the best-scoring token (ties: leftmost), then emit each
   * symbol as its token or, if it is not in the vocabulary, as byte tokens.
   */
  private encodeSpmFragment(text: string, output: number[]): void {
    const cache = this.spmWordCache;
    if (!cache) {
      for (const id of this.mergeSpm(text)) output.push(id);
      return;
    }
    // Word by word: each "▁" after another character starts a word (see spmWordCache).
    for (let start = 0, end = 1; end <= text.length; end++) {
      if (end < text.length && !(text[end] === ESCAPED_SPACE && text[end - 1] !== ESCAPED_SPACE)) continue;
      for (const id of cachedWord(cache, text.slice(start, end), (word) => this.mergeSpm(word))) output.push(id);
      start = end;
    }
  }

  private mergeSpm(text: string): number[] {
    const output: number[] = [];
    const symbols = mergeSymbols(text, (start, leftLength, rightLength) => {
      const size = leftLength + rightLength;
      if (size > this.maxTextLength) return undefined;
      const id = this.textToId.get(text.slice(start, start + size));
      return id === undefined ? undefined : this.scores[id]!;
    });
    // Every merged symbol is a token by construction. A single character may not be: llama.cpp's
    // `resegment` then emits its UTF-8 bytes as byte tokens (its `rev_merge` lookup can only hit
    // texts of two or more characters, so it never applies to a single character).
    const bytes: number[] = [];
    for (const symbol of symbols) {
      const id = this.textToId.get(symbol);
      if (id !== undefined) {
        output.push(id);
        continue;
      }
      bytes.length = 0;
      pushUtf8(symbol.codePointAt(0)!, bytes);
      for (const byte of bytes) output.push(this.byteToToken(byte));
    }
    return output;
  }

  /**
   * Byte-level BPE over one text fragment, llama.cpp's `llm_tokenizer_bpe_session::tokenize`: the
   * pre-tokenizer cuts it into words; each word, as byte-level characters, is merged pair by pair
   * by merge rank (lowest first, ties leftmost). Words seen before come from a cache.
   */
  private encodeBpeFragment(text: string, output: number[]): void {
    const bpe = this.bpe!;
    for (const word of preTokenize(text, bpe.preTokenizer)) {
      for (const id of cachedWord(bpe.wordCache, word, (w) => this.encodeBpeWord(toByteLevel(w)))) output.push(id);
    }
  }

  private encodeBpeWord(word: string): number[] {
    const bpe = this.bpe!;
    if (bpe.preTokenizer.ignoreMerges) {
      // Llama 3: a word that is a token is that token, even where the merges would split it.
      const id = this.textToId.get(word);
      if (id !== undefined) return [id];
    }
    const symbols = mergeSymbols(word, (start, leftLength, rightLength) => {
      const leftEnd = start + leftLength;
      const rank = bpe.mergeRanks.get(`${word.slice(start, leftEnd)} ${word.slice(leftEnd, leftEnd + rightLength)}`);
      return rank === undefined ? undefined : -rank; // the lowest rank merges first
    });
    const ids: number[] = [];
    for (const symbol of symbols) {
      const id = this.textToId.get(symbol);
      if (id !== undefined) {
        ids.push(id);
        continue;
      }
      // Not reachable with a converter-made vocabulary (every byte character is a token). llama.cpp
      // then looks up each byte of the symbol's UTF-8 as a one-byte text, which only ASCII can be.
      for (const char of symbol) {
        const byteId = char.charCodeAt(0) < 0x80 ? this.textToId.get(char) : undefined;
        if (byteId !== undefined) ids.push(byteId);
      }
    }
    return ids;
  }

  private byteToToken(byte: number): number {
    const id = this.byteTokens[byte]!;
    if (id >= 0) return id;
    // llama.cpp throws here (std::out_of_range); a vocabulary without byte tokens is not usable
    // for arbitrary text there. Falling back to <unk> keeps encoding total.
    return this.requireId(this.unkId, `byte token <0x${HEX_DIGITS[byte >> 4]}${HEX_DIGITS[byte & 15]}> or UNK`);
  }

  // -------------------------------------------------------------------------------------------
  // Decoding

  /**
   * Raw bytes of one token, as `llama_token_to_piece(token, lstrip, special)`: "▁" becomes a space,
   * a byte token its byte, control/unknown tokens nothing (their text when `special`), unused and
   * undefined tokens nothing, user-defined tokens their text as is.
   */
  tokenToPiece(id: number, options: PieceOptions = {}): Uint8Array {
    // A copy: the shared cached bytes must not be changed by a caller.
    return this.pieceView(id, options.special ?? false, options.lstrip ?? 0).slice();
  }

  /** `tokenToPiece` without the copy, for internal use. */
  private pieceView(id: number, special: boolean, lstrip: number): Uint8Array {
    this.checkId(id);
    if (!special && this.attrs[id]! & (Attr.Unknown | Attr.Control)) return EMPTY_BYTES;
    const piece = this.cachedPiece(id);
    let skip = 0;
    while (skip < lstrip && skip < piece.length && piece[skip] === 0x20) skip++;
    return skip > 0 ? piece.subarray(skip) : piece;
  }

  private cachedPiece(id: number): Uint8Array {
    let piece = this.pieceCache[id];
    if (piece === undefined) {
      const attr = this.attrs[id]!;
      const text = this.texts[id]!;
      if (attr & (Attr.Unknown | Attr.Control | Attr.UserDefined)) {
        piece = this.encoder.encode(text);
      } else if (this.bpe) {
        // Byte-level BPE: normal tokens spell bytes; other types (byte, unused) render as nothing.
        piece = attr & Attr.Normal ? fromByteLevel(text) : EMPTY_BYTES;
      } else if (attr & Attr.Normal) {
        piece = this.encoder.encode(text.replaceAll(ESCAPED_SPACE, SPACE));
      } else if (attr & Attr.Byte) {
        // llama.cpp parses the two hex digits after "<0x".
        piece = Uint8Array.of(parseInt(text.slice(3, 5), 16) & 0xff);
      } else {
        piece = EMPTY_BYTES; // unused / undefined tokens render as nothing
      }
      this.pieceCache[id] = piece;
    }
    return piece;
  }

  /** Raw bytes of `llama_detokenize(ids, remove_special, unparse_special)`. */
  decodeBytes(ids: readonly number[], options: DecodeOptions = {}): Uint8Array {
    const removeSpecial = options.removeSpecial ?? true;
    let first = 0;
    let end = ids.length;
    // The space prefix that encode added is dropped again, but only when no BOS was removed:
    // llama.cpp keeps " Hello" for [BOS, ▁Hello] and gives "Hello" for [▁Hello].
    let removeSpace = this.addSpacePrefix;
    if (removeSpecial && this.addBos && end > 0 && ids[0] === this.bosId) {
      removeSpace = false;
      first = 1;
    }
    if (removeSpecial && this.addEos && end > first && ids[end - 1] === this.eosId) end--;

    const pieces: Uint8Array[] = [];
    let total = 0;
    for (let i = first; i < end; i++) {
      // Only the very first token is stripped, even when it renders as nothing.
      const piece = this.pieceView(ids[i]!, options.unparseSpecial ?? false, removeSpace ? 1 : 0);
      removeSpace = false;
      pieces.push(piece);
      total += piece.length;
    }
    const bytes = new Uint8Array(total);
    let offset = 0;
    for (const piece of pieces) {
      bytes.set(piece, offset);
      offset += piece.length;
    }
    return this.cleanSpaces ? cleanSpaces(bytes) : bytes;
  }

  /** Token ids to text, as `llama_detokenize`; invalid UTF-8 (a cut-off character) becomes U+FFFD. */
  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    return utf8Decode(this.decodeBytes(ids, options));
  }

  /**
   * For streaming generated tokens: each `push` returns the text completed by that token's piece
   * (pieces as `tokenToPiece`, so control tokens add nothing). A character split over several byte
   * tokens comes out whole, once its last byte arrives.
   */
  createStreamDecoder(options: { special?: boolean } = {}): StreamDecoder {
    const decoder = new TextDecoder('utf-8', { ignoreBOM: true });
    return {
      push: (id: number): string => decoder.decode(this.pieceView(id, options.special ?? false, 0), { stream: true }),
      flush: (): string => decoder.decode(),
    };
  }

  // -------------------------------------------------------------------------------------------
  // Vocabulary queries

  /** Does this token end generation? */
  isEog(id: number): boolean {
    return this.eogIds.has(id);
  }

  /** The vocabulary text of a token (e.g. "▁Hello", "<0x0A>", "<s>"). */
  tokenText(id: number): string {
    this.checkId(id);
    return this.texts[id]!;
  }

  /** The id of a vocabulary text, if it is one. */
  tokenId(text: string): number | undefined {
    return this.textToId.get(text);
  }

  /** Is this a control token (BOS, EOS, or a token llama.cpp forces to control)? */
  isControl(id: number): boolean {
    this.checkId(id);
    return (this.attrs[id]! & Attr.Control) !== 0;
  }

  // -------------------------------------------------------------------------------------------

  /**
   * llama.cpp's special-token setup after loading: roles the GGUF does not name are found by
   * text, tokens found that way (and all end-of-generation texts) become CONTROL, and the
   * end-of-generation set is collected. Returns that set.
   */
  private findSpecialRoles(given: Partial<Record<SpecialTokenRole, number>>, endOfGeneration: readonly number[]): Set<number> {
    const roles = new Map<SpecialTokenRole, number>();
    for (const [role, id] of Object.entries(given) as Array<[SpecialTokenRole, number | undefined]>) {
      if (id !== undefined && id >= 0 && id < this.vocabSize) roles.set(role, id);
    }
    // llama.cpp walks an unordered_map here; with one candidate per role the order does not matter.
    // It adds CONTROL to the token's attributes (a user-defined token stays user-defined too).
    const forceControl = (id: number): void => {
      this.attrs[id] = this.attrs[id]! | Attr.Control;
    };
    for (const [text, id] of this.textToId) {
      for (const [role, texts] of ROLE_TEXTS) {
        if (!roles.has(role) && texts.includes(text)) {
          roles.set(role, id);
          if (!(this.attrs[id]! & Attr.Control)) forceControl(id);
        }
      }
    }

    const eog = new Set<number>();
    for (const role of ['fimPad', 'fimRep', 'fimSep'] as const) {
      const id = roles.get(role);
      if (id !== undefined) eog.add(id);
    }
    for (const [text, id] of this.textToId) {
      if (EOG_TEXTS.has(text)) {
        eog.add(id);
        if (!(this.attrs[id]! & Attr.Control)) forceControl(id);
      }
    }
    for (const id of [this.eosId, roles.get('eot'), roles.get('eom'), ...endOfGeneration]) {
      if (id !== undefined && id >= 0 && id < this.vocabSize) eog.add(id);
    }

    // llama.cpp's two exceptions: "<|end|>" does not end a turn where "<|return|>"/"<|call|>"
    // (gpt-oss) or "<|calls|>"/"<|flush|>" (Solar) do; "</s>" is a plain token next to "<|tool_response>" (Gemma 4).
    const eogText = (text: string): number | undefined => {
      const id = this.textToId.get(text);
      return id !== undefined && eog.has(id) ? id : undefined;
    };
    const demote = (id: number | undefined, attr: number): void => {
      if (id === undefined) return;
      eog.delete(id);
      this.attrs[id] = attr;
    };
    const hasCall = eogText('<|call|>') !== undefined || eogText('<|calls|>') !== undefined;
    if (hasCall && (eogText('<|return|>') !== undefined || eogText('<|flush|>') !== undefined)) demote(eogText('<|end|>'), Attr.UserDefined);
    if (eogText('<|tool_response>') !== undefined) demote(eogText('</s>'), Attr.Normal);
    return eog;
  }

  private setAttr(text: string, flag: number, value: boolean): void {
    const id = this.textToId.get(text);
    if (id === undefined) return;
    this.attrs[id] = value ? this.attrs[id]! | flag : this.attrs[id]! & ~flag;
  }

  private checkId(id: number): void {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
      throw new RangeError(`token id ${id} is outside the vocabulary (0..${this.vocabSize - 1})`);
    }
  }

  protected requireId(id: number, what: string): number {
    if (id < 0 || id >= this.vocabSize) throw new Error(`the vocabulary has no ${what} token`);
    return id;
  }
}

/**
 * Hugging Face's encoding on the same vocabulary: every added token is split out of the raw text
 * first (leftmost, longest; special ones unless `parseSpecial: false`, Hugging Face's
 * `split_special_tokens`), then each text between them is normalized (NFC) and encoded as
 * llama.cpp does with special-token parsing off. Decoding is llama.cpp's.
 */
class HuggingFaceTokenizer extends LlamaTokenizer {
  /** Added tokens by first character, longest first. */
  private readonly addedByFirstChar = new Map<string, HuggingFaceDepartures['addedTokens'][number][]>();

  constructor(
    vocab: VocabData,
    private readonly departures: HuggingFaceDepartures,
  ) {
    super(vocab);
    for (const token of [...departures.addedTokens].sort((a, b) => b.text.length - a.text.length)) {
      if (token.text === '') continue;
      const list = this.addedByFirstChar.get(token.text[0]!) ?? [];
      list.push(token);
      this.addedByFirstChar.set(token.text[0]!, list);
    }
  }

  override encode(text: string, options: EncodeOptions = {}): number[] {
    const splitSpecial = options.parseSpecial ?? true;
    const output: number[] = [];
    if (options.addBos ?? this.addBos) output.push(this.requireId(this.bosId, 'BOS'));
    const encodeText = (segment: string): void => {
      if (segment === '') return;
      const normalized = this.departures.normalizeNfc ? segment.normalize('NFC') : segment;
      for (const id of super.encode(normalized, { addBos: false, addEos: false, parseSpecial: false })) output.push(id);
    };
    let start = 0;
    for (let i = 0; i < text.length; ) {
      const match = this.addedByFirstChar.get(text[i]!)?.find((token) => (splitSpecial || !token.special) && text.startsWith(token.text, i));
      if (!match) {
        i++;
        continue;
      }
      let textEnd = i;
      if (match.lstrip) while (textEnd > start && /\s/u.test(text[textEnd - 1]!)) textEnd--;
      encodeText(text.slice(start, textEnd));
      output.push(match.id);
      i += match.text.length;
      if (match.rstrip) while (i < text.length && /\s/u.test(text[i]!)) i++;
      start = i;
    }
    encodeText(text.slice(start));
    if (options.addEos ?? this.addEos) output.push(this.requireId(this.eosId, 'EOS'));
    return output;
  }
}

// Keeps a leading U+FEFF: it is a character of the text (Llama 2 even has a token for it), not a byte-order mark.
const utf8Decoder = new TextDecoder('utf-8', { ignoreBOM: true });
function utf8Decode(bytes: Uint8Array): string {
  return utf8Decoder.decode(bytes);
}
