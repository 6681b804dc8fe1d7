// The tokenizer against llama.cpp's own outputs (reference/public.json): every tokenizer case and
// every generation case, for both vocabularies (stories260K, 512 tokens; Llama 2, 32000 tokens).
import { beforeAll, describe, expect, it } from 'vitest';
import { modelPath, reference, referenceModelPath } from './helpers/models.ts';
import { readGGUF } from '../src/model/gguf.ts';
import { fileSource } from '../src/model/source.ts';
import { LlamaTokenizer, TokenType, UnsupportedTokenizerError, type VocabData } from '../src/model/tokenizer.ts';

const ref = reference();

const STORIES_FILE = 'stories260K.gguf';
const LLAMA2_FILE = 'llama-2-tiny-random.gguf';

// Every file the cases name, read once.
const tokenizers = new Map<string, LlamaTokenizer>();
const metadataByFile = new Map<string, Map<string, unknown>>();

async function loadMetadata(path: string): Promise<Map<string, unknown>> {
  const source = await fileSource(path);
  try {
    return (await readGGUF(source)).metadata;
  } finally {
    await source.close();
  }
}

function tokenizerFor(path: string): LlamaTokenizer {
  const tokenizer = tokenizers.get(path);
  if (!tokenizer) throw new Error(`tokenizer for ${path} was not loaded`);
  return tokenizer;
}

const stories = (): LlamaTokenizer => tokenizerFor(modelPath(STORIES_FILE));
const llama2 = (): LlamaTokenizer => tokenizerFor(modelPath(LLAMA2_FILE));

/** The raw bytes of concatenated pieces, as text (llama.cpp's `generated_text`). */
function piecesText(tokenizer: LlamaTokenizer, ids: number[]): string {
  const chunks = ids.map((id) => tokenizer.tokenToPiece(id));
  const bytes = new Uint8Array(chunks.reduce((sum, chunk) => sum + chunk.length, 0));
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.length;
  }
  return new TextDecoder('utf-8', { ignoreBOM: true }).decode(bytes);
}

beforeAll(async () => {
  const paths = new Set<string>([
    modelPath(STORIES_FILE),
    modelPath(LLAMA2_FILE),
    ...ref.tokenizer_cases.map((c) => modelPath(c.model)),
    ...ref.generation_cases.map((c) => referenceModelPath(c.model)),
  ]);
  for (const path of paths) {
    const metadata = await loadMetadata(path);
    metadataByFile.set(path, metadata);
    tokenizers.set(path, LlamaTokenizer.fromGGUFMetadata(metadata, { file: path }));
  }
});

describe('tokenizer_cases (llama-tokenize, parse_special = false)', () => {
  it('covers both vocabularies', () => {
    const vocabularies = new Set(ref.tokenizer_cases.map((c) => c.vocab));
    expect(vocabularies).toEqual(new Set(['stories260K', 'llama-2-tiny-random']));
  });

  for (const c of ref.tokenizer_cases) {
    describe(c.id, () => {
      it('encodes to the reference ids and vocabulary strings', () => {
        expect(c.parse_special).toBe(false);
        const tokenizer = tokenizerFor(modelPath(c.model));
        const ids = tokenizer.encode(c.text, { addBos: c.add_bos });
        expect(ids).toEqual(c.ids);
        expect(ids.map((id) => tokenizer.tokenText(id))).toEqual(c.tokens);
      });

      it('detokenizes like llama_detokenize(remove_special = true)', () => {
        expect(tokenizerFor(modelPath(c.model)).decode(c.ids)).toBe(c.detokenized);
      });
    });
  }
});

describe('generation_cases', () => {
  for (const c of ref.generation_cases) {
    describe(c.id, () => {
      it('prompt → prompt_ids', () => {
        expect(tokenizerFor(referenceModelPath(c.model)).encode(c.prompt)).toEqual(c.prompt_ids);
      });

      it('decode(prompt_ids ++ generated_ids) → detokenized', () => {
        expect(tokenizerFor(referenceModelPath(c.model)).decode([...c.prompt_ids, ...c.generated_ids])).toBe(c.detokenized);
      });

      it('raw pieces of generated_ids → generated_text, also when streamed', () => {
        const tokenizer = tokenizerFor(referenceModelPath(c.model));
        expect(piecesText(tokenizer, c.generated_ids)).toBe(c.generated_text);
        const stream = tokenizer.createStreamDecoder();
        const streamed = c.generated_ids.map((id) => stream.push(id)).join('') + stream.flush();
        expect(streamed).toBe(c.generated_text);
      });
    });
  }
});

describe('vocabulary loading', () => {
  it('reads the special ids and flags of both GGUF files', () => {
    for (const tokenizer of [stories(), llama2()]) {
      expect([tokenizer.bosId, tokenizer.eosId, tokenizer.unkId]).toEqual([1, 2, 0]);
      expect([tokenizer.addBos, tokenizer.addEos, tokenizer.addSpacePrefix]).toEqual([true, false, true]);
      expect(tokenizer.isEog(2)).toBe(true);
      expect(tokenizer.isEog(1)).toBe(false);
      expect([...tokenizer.eogIds]).toEqual([2]);
    }
    expect(stories().vocabSize).toBe(512);
    expect(llama2().vocabSize).toBe(32000);
  });

  it('keeps vocabulary strings exactly, including Llama 2 token 30143 "\\uFEFF" (not a byte-order mark to strip)', () => {
    expect(llama2().tokenText(30143)).toBe('\uFEFF');
    expect(llama2().tokenId('\uFEFF')).toBe(30143);
    expect(llama2().decode([30143], { removeSpecial: false })).toBe('\uFEFF');
    // Ids from SentencePiece with llama2c/tokenizer.model (which agrees with llama.cpp on every reference case).
    expect(llama2().encode('\uFEFFHello')).toEqual([1, 29871, 30143, 10994]);
    expect(llama2().encode('a\uFEFFb')).toEqual([1, 263, 30143, 29890]);
  });

  it('refuses a tokenizer model other than "llama" and "gpt2", naming it and the supported ones', () => {
    const metadata = new Map(metadataByFile.get(modelPath(STORIES_FILE))!);
    metadata.set('tokenizer.ggml.model', 'rwkv');
    expect(() => LlamaTokenizer.fromGGUFMetadata(metadata, { file: 'x.gguf' })).toThrow(UnsupportedTokenizerError);
    expect(() => LlamaTokenizer.fromGGUFMetadata(metadata, { file: 'x.gguf' })).toThrow(/"rwkv".*"llama".*"gpt2"/);
  });

  it('reads add_bos_token / add_eos_token / add_space_prefix when present', () => {
    const metadata = new Map(metadataByFile.get(modelPath(STORIES_FILE))!);
    metadata.set('tokenizer.ggml.add_bos_token', false);
    metadata.set('tokenizer.ggml.add_eos_token', true);
    metadata.set('tokenizer.ggml.add_space_prefix', false);
    const tokenizer = LlamaTokenizer.fromGGUFMetadata(metadata);
    const ids = tokenizer.encode('Hello');
    // No BOS, no space prefix (so no "▁" on the first token), EOS appended.
    expect(ids[0]).not.toBe(1);
    expect(tokenizer.tokenText(ids[0]!)).not.toMatch(/^▁/);
    expect(ids.at(-1)).toBe(2);
    // With add_eos the trailing EOS is removed again by detokenize.
    expect(tokenizer.decode(ids)).toBe('Hello');
  });
});

describe('encoding rules', () => {
  it('treats "<s>" in text as plain text unless parseSpecial is asked for', () => {
    const plain = llama2().encode('<s>');
    expect(plain[0]).toBe(1);
    expect(plain.slice(1)).not.toContain(1);
    expect(llama2().decode(plain)).toBe(' <s>');
    // parse_special = true: the text is exactly the BOS token (no space prefix fragment is left).
    expect(llama2().encode('<s>', { parseSpecial: true })).toEqual([1, 1]);
    expect(llama2().encode('<s>', { parseSpecial: true, addBos: false })).toEqual([1]);
  });

  it('adds the space prefix again after a special token (llama.cpp: is_prev_special)', () => {
    const ids = llama2().encode('Hi</s>Hi', { parseSpecial: true, addBos: false });
    const hi = llama2().encode('Hi', { addBos: false });
    expect(ids).toEqual([...hi, 2, ...hi]);
  });

  it('always splits user-defined tokens out of the text, even without parseSpecial', () => {
    // stories260K with "ing" turned into a user-defined token.
    const base = metadataByFile.get(modelPath(STORIES_FILE))!;
    const tokens = base.get('tokenizer.ggml.tokens') as string[];
    const types = Int32Array.from(base.get('tokenizer.ggml.token_type') as Int32Array);
    const ing = tokens.indexOf('ing');
    expect(ing).toBeGreaterThan(0);
    types[ing] = TokenType.UserDefined;
    const vocab: VocabData = {
      tokens,
      scores: base.get('tokenizer.ggml.scores') as Float32Array,
      tokenTypes: types,
      bosId: 1,
      eosId: 2,
      unkId: 0,
      addBos: false,
      addEos: false,
      addSpacePrefix: true,
    };
    const tokenizer = new LlamaTokenizer(vocab);
    // "sing it" → "s" | [ing] | " it", and the text after the user-defined token gets the space
    // prefix again, so it is encoded as "▁▁it".
    expect(tokenizer.encode('sing it')).toEqual([...tokenizer.encode('s'), ing, ...tokenizer.encode(' it')]);
    // A user-defined token renders as its text as is.
    expect(tokenizer.decode([ing])).toBe('ing');
  });

  it('round-trips arbitrary text, byte-fallback characters included', () => {
    const texts = ['', ' ', 'a  b\t\tc\n', '¿Qué tal? Ça va. 𝄞 ♫ 😀', 'ünïcödé  \u00a0 nbsp', '\uFEFFbom', 'x'.repeat(50)];
    for (const tokenizer of [stories(), llama2()]) {
      for (const text of texts) {
        expect(tokenizer.decode(tokenizer.encode(text, { addBos: false }))).toBe(text);
        // With BOS removed llama.cpp keeps the space prefix.
        expect(tokenizer.decode(tokenizer.encode(text))).toBe(text === '' ? '' : ' ' + text);
      }
    }
  });

  it('turns a lone surrogate into U+FFFD, as TextEncoder would before handing text to llama.cpp', () => {
    expect(llama2().encode('a\uD800b')).toEqual(llama2().encode('a\uFFFDb'));
  });
});

describe('decoding', () => {
  it('renders control tokens as nothing, or as their text with unparseSpecial', () => {
    expect(llama2().decode([1, 15043, 2])).toBe(' Hello');
    expect(llama2().decode([15043, 2, 1])).toBe('Hello');
    expect(llama2().decode([1, 15043, 2], { unparseSpecial: true })).toBe(' Hello</s>');
    expect(llama2().decode([1, 15043], { removeSpecial: false, unparseSpecial: true })).toBe('<s> Hello');
    expect(llama2().tokenToPiece(1).length).toBe(0);
    expect(new TextDecoder().decode(llama2().tokenToPiece(1, { special: true }))).toBe('<s>');
  });

  it('gives raw bytes for byte tokens and spaces for "▁"', () => {
    expect([...llama2().tokenToPiece(13)]).toEqual([0x0a]); // <0x0A>
    expect([...llama2().tokenToPiece(243)]).toEqual([0xf0]); // <0xF0>, half of nothing on its own
    expect(new TextDecoder().decode(llama2().tokenToPiece(15043))).toBe(' Hello');
    expect(new TextDecoder().decode(llama2().tokenToPiece(15043, { lstrip: 1 }))).toBe('Hello');
  });

  it('rejects ids outside the vocabulary', () => {
    expect(() => stories().decode([512])).toThrow(RangeError);
    expect(() => stories().tokenToPiece(-1)).toThrow(RangeError);
  });
});

describe('stream decoder', () => {
  it('holds back a character split over byte tokens until it is complete', () => {
    for (const tokenizer of [stories(), llama2()]) {
      const text = 'emoji 😀🎉 test';
      const ids = tokenizer.encode(text, { addBos: false });
      // 😀 is 4 byte tokens: F0 9F 98 80.
      const firstByte = ids.indexOf(tokenizer.tokenId('<0xF0>')!);
      expect(firstByte).toBeGreaterThan(0);
      const stream = tokenizer.createStreamDecoder();
      const outputs = ids.map((id) => stream.push(id));
      expect(outputs.slice(firstByte, firstByte + 3)).toEqual(['', '', '']);
      expect(outputs[firstByte + 3]).toBe('😀');
      expect(outputs.join('') + stream.flush()).toBe(' ' + text);
      expect(outputs.join('')).toBe(tokenizer.decode([tokenizer.bosId, ...ids]));
    }
  });

  it('emits U+FFFD on flush for a cut-off character, then starts afresh', () => {
    const tokenizer = llama2();
    const stream = tokenizer.createStreamDecoder();
    expect(stream.push(tokenizer.tokenId('<0xF0>')!)).toBe('');
    expect(stream.push(tokenizer.tokenId('<0x9F>')!)).toBe('');
    expect(stream.flush()).toBe('\uFFFD');
    expect(stream.push(15043)).toBe(' Hello');
    expect(stream.flush()).toBe('');
  });
});

describe('merge order', () => {
  /**
   * A deliberately naive SentencePiece BPE (rescan every pair after each merge), to check the
   * priority-queue version: best score first, leftmost on ties, byte fallback for the rest.
   */
  function naiveEncode(tokenizer: LlamaTokenizer, scores: ArrayLike<number>, text: string): number[] {
    const symbols = Array.from((' ' + text).replaceAll(' ', '▁'));
    for (;;) {
      let best = -1;
      let bestScore = -Infinity;
      for (let i = 0; i + 1 < symbols.length; i++) {
        const id = tokenizer.tokenId(symbols[i]! + symbols[i + 1]!);
        if (id !== undefined && scores[id]! > bestScore) {
          best = i;
          bestScore = scores[id]!;
        }
      }
      if (best < 0) break;
      symbols.splice(best, 2, symbols[best]! + symbols[best + 1]!);
    }
    return symbols.flatMap((symbol) => {
      const id = tokenizer.tokenId(symbol);
      if (id !== undefined) return [id];
      return [...new TextEncoder().encode(symbol)].map((byte) => tokenizer.tokenId(`<0x${byte.toString(16).toUpperCase().padStart(2, '0')}>`)!);
    });
  }

  it('matches a naive rescanning BPE on pseudo-random text', () => {
    const alphabet = 'the a an and was to of in it he she said little big happy day time Lily Tom ,.!?\'"\n  éü日😀';
    let seed = 12345;
    const random = (): number => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return seed / 2 ** 32;
    };
    const chars = Array.from(alphabet);
    for (const file of [STORIES_FILE, LLAMA2_FILE]) {
      const tokenizer = tokenizerFor(modelPath(file));
      const scores = metadataByFile.get(modelPath(file))!.get('tokenizer.ggml.scores') as Float32Array;
      for (let round = 0; round < 40; round++) {
        const length = 1 + Math.floor(random() * 120);
        let text = '';
        for (let i = 0; i < length; i++) text += chars[Math.floor(random() * chars.length)];
        expect(tokenizer.encode(text, { addBos: false })).toEqual(naiveEncode(tokenizer, scores, text));
      }
    }
  });
});

describe('merges across a word start', () => {
  it('merges the whole fragment at once when a token has "▁" after another character ("a▁b")', () => {
    const tokens = ['<unk>', '<s>', '</s>', '▁', 'a', 'b', '▁a', 'a▁', 'a▁b'];
    const tokenizer = new LlamaTokenizer({
      tokens,
      scores: [0, 0, 0, -5, -5, -5, -2, -1, -1],
      tokenTypes: [TokenType.Unknown, TokenType.Control, TokenType.Control, ...tokens.slice(3).map(() => TokenType.Normal)],
      bosId: 1,
      eosId: 2,
      unkId: 0,
      addBos: false,
      addEos: false,
      addSpacePrefix: true,
    });
    // "▁a▁b": "a▁" (-1) beats "▁a" (-2), then "a▁" + "b" is a token: a merge no word-by-word split could make.
    expect(tokenizer.encode('a b')).toEqual([3, 8]);
  });
});

describe('long text', () => {
  it('tokenizes ~100 KB in one piece and round-trips it', () => {
    const paragraph =
      'Once upon a time, there was a little girl named Lily. She loved to play outside in the sunshine. ' +
      'One day, she saw a big, red ball in the park!\n"Can I play?" she asked. Tom said, "Yes, let\'s go."\n\n';
    const text = paragraph.repeat(Math.ceil(100_000 / paragraph.length)).slice(0, 100_000);
    for (const tokenizer of [stories(), llama2()]) {
      const started = performance.now();
      const ids = tokenizer.encode(text);
      const elapsedMs = performance.now() - started;
      // Informational only: timing depends on the machine.
      console.info(`tokenized ${text.length} characters into ${ids.length} tokens (vocab ${tokenizer.vocabSize}) in ${elapsedMs.toFixed(0)} ms`);
      expect(ids.length).toBeGreaterThan(10_000);
      expect(tokenizer.decode(ids)).toBe(' ' + text);
    }
  });
});
