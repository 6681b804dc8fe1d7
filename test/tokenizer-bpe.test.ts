// The modern vocabularies against llama.cpp (reference/modern-public.json and llama.cpp's own
// tokenizer test files): byte-level BPE for Llama 3 (pre "llama-bpe") and Qwen2.5/Qwen3 (pre
// "qwen2"), SentencePiece with added tokens for Phi-3. Each GGUF header is read once.
import { readFileSync } from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import { modelPath } from './helpers/models.ts';
import { modernReference } from './helpers/modern-models.ts';
import { readGGUF } from '../src/model/gguf.ts';
import { fileSource } from '../src/model/source.ts';
import {
  LlamaTokenizer,
  SUPPORTED_PRE_TOKENIZERS,
  UnsupportedPreTokenizerError,
  type VocabData,
} from '../src/model/tokenizer.ts';
import { ModelFormatError } from '../src/model/errors.ts';
import { preTokenize, preTokenizerFor } from '../src/model/tokenizer/pre-tokenizer.ts';
import { generateTokens, type FinishReason, type GenerationBackend } from '../src/engine/generate.ts';

const ref = modernReference();
const fileOfModel = (key: string): string => ref.models[key]!.file;

const LLAMA3 = 'llama3-tiny/llama3-tiny-F32.gguf';
const QWEN2 = 'qwen2-tiny/qwen2-tiny-F32.gguf';
const QWEN3 = 'qwen3-tiny/qwen3-tiny-F32.gguf';
const PHI3 = 'phi3-tiny/phi3-tiny-F32.gguf';

const metadataByFile = new Map<string, Map<string, unknown>>();
const tokenizers = new Map<string, LlamaTokenizer>();
const tokenizer = (file: string): LlamaTokenizer => {
  const found = tokenizers.get(file);
  if (!found) throw new Error(`tokenizer for ${file} was not loaded`);
  return found;
};

beforeAll(async () => {
  const files = new Set([
    ...ref.tokenizer_cases.map((c) => c.model),
    ...ref.generation_cases.map((c) => fileOfModel(c.model)),
  ]);
  for (const file of files) {
    const source = await fileSource(modelPath(file));
    try {
      const { metadata } = await readGGUF(source);
      metadataByFile.set(file, metadata);
      tokenizers.set(file, LlamaTokenizer.fromGGUFMetadata(metadata, { file }));
    } finally {
      await source.close();
    }
  }
}, 120_000);

/** Concatenated raw pieces (special = false), as llama.cpp's `generated_text`. */
function piecesText(t: LlamaTokenizer, ids: readonly number[]): string {
  const bytes = ids.flatMap((id) => [...t.tokenToPiece(id)]);
  return new TextDecoder('utf-8', { ignoreBOM: true }).decode(Uint8Array.from(bytes));
}

describe('tokenizer_cases of modern-public.json', () => {
  it('cover the four vocabularies', () => {
    expect(new Set(ref.tokenizer_cases.map((c) => c.vocab))).toEqual(new Set(['llama3', 'qwen2.5', 'qwen3', 'phi3']));
  });

  for (const c of ref.tokenizer_cases) {
    it(`${c.id}: ids, vocabulary strings, detokenized text`, () => {
      const t = tokenizer(c.model);
      const ids = t.encode(c.text, { addBos: c.add_bos, parseSpecial: c.parse_special });
      expect(ids).toEqual(c.ids);
      expect(ids.map((id) => t.tokenText(id))).toEqual(c.tokens);
      expect(t.decode(c.ids, { removeSpecial: false })).toBe(c.detokenized);
    });
  }
});

describe("llama.cpp's own tokenizer test files (all strings, add_special = false)", () => {
  const cases: Array<[string, string[]]> = [
    ['ggml-vocab-llama-bpe.gguf', [LLAMA3]],
    ['ggml-vocab-qwen2.gguf', [QWEN2, QWEN3]],
    ['ggml-vocab-phi-3.gguf', [PHI3]],
  ];
  for (const [name, files] of cases) {
    for (const file of files) {
      it(`${name} with ${file}`, () => {
        const dir = modelPath('sources/llama.cpp-vocab-tests');
        const inputs = readFileSync(`${dir}/${name}.inp`, 'utf8').split('\n__ggml_vocab_test__\n');
        inputs.pop(); // the separator also ends the file
        const outputs = readFileSync(`${dir}/${name}.out`, 'utf8').split('\n');
        expect(inputs.length).toBeGreaterThan(40);
        const t = tokenizer(file);
        inputs.forEach((text, i) => {
          const expected = outputs[i]!.trim() === '' ? [] : outputs[i]!.trim().split(/\s+/).map(Number);
          expect(t.encode(text, { addBos: false, addEos: false }), JSON.stringify(text)).toEqual(expected);
        });
      });
    }
  }
});

describe('generation_cases of modern-public.json (tokenizer side)', () => {
  for (const c of ref.generation_cases) {
    it(`${c.id}: prompt → prompt_ids, detokenized, generated_text (also streamed)`, () => {
      const t = tokenizer(fileOfModel(c.model));
      expect(t.encode(c.prompt, { parseSpecial: c.parse_special })).toEqual(c.prompt_ids);
      expect(t.decode([...c.prompt_ids, ...c.generated_ids], { removeSpecial: false })).toBe(c.detokenized);
      expect(piecesText(t, c.generated_ids)).toBe(c.generated_text);
      const stream = t.createStreamDecoder();
      expect(c.generated_ids.map((id) => stream.push(id)).join('') + stream.flush()).toBe(c.generated_text);
    });
  }
});

describe('byte-level BPE vocabulary rules', () => {
  it('reads each family: model, BOS added only where the GGUF says (Qwen adds none)', () => {
    expect(tokenizer(LLAMA3).model).toBe('gpt2');
    expect(tokenizer(LLAMA3).addBos).toBe(true);
    expect(tokenizer(LLAMA3).encode('Hi')).toEqual([128000, 13347]);
    expect(tokenizer(QWEN2).addBos).toBe(false);
    expect(tokenizer(QWEN2).encode('Hi')).toEqual([13048]);
    expect(tokenizer(PHI3).model).toBe('llama');
    expect(tokenizer(PHI3).addBos).toBe(false);
  });

  it('splits control tokens out of text only with parseSpecial, user-defined ones always (Qwen3 <think>)', () => {
    const llama3 = tokenizer(LLAMA3);
    const eot = llama3.tokenId('<|eot_id|>')!;
    expect(llama3.encode('a<|eot_id|>', { addBos: false })).not.toContain(eot);
    expect(llama3.encode('a<|eot_id|>', { addBos: false, parseSpecial: true })).toContain(eot);
    const qwen3 = tokenizer(QWEN3);
    const think = qwen3.tokenId('<think>')!;
    expect(qwen3.encode('<think>x</think>')[0]).toBe(think);
    expect(tokenizer(QWEN2).tokenId('<think>')).toBeUndefined();
  });

  it('ends generation on each family’s end tokens, found from metadata and token texts', () => {
    const ids = (file: string, texts: string[]): number[] => texts.map((text) => tokenizer(file).tokenId(text)!);
    for (const id of ids(LLAMA3, ['<|eot_id|>', '<|end_of_text|>'])) expect(tokenizer(LLAMA3).isEog(id)).toBe(true);
    for (const file of [QWEN2, QWEN3]) {
      for (const id of ids(file, ['<|im_end|>', '<|endoftext|>'])) expect(tokenizer(file).isEog(id)).toBe(true);
      expect(tokenizer(file).isEog(tokenizer(file).tokenId('<|im_start|>')!)).toBe(false);
    }
    for (const id of ids(PHI3, ['<|end|>', '<|endoftext|>', '</s>'])) expect(tokenizer(PHI3).isEog(id)).toBe(true);
    expect(tokenizer(PHI3).isEog(tokenizer(PHI3).tokenId('<|assistant|>')!)).toBe(false);
  });

  it('makes the generate loop stop on every end-of-generation token of each family, or go on with ignoreEos', async () => {
    /** A forward pass that "predicts" `script` in turn, with this vocabulary's EOG set and decoder. */
    const scripted = (t: LlamaTokenizer, script: number[]): GenerationBackend => {
      let call = 0;
      return {
        contextLength: 64,
        vocabSize: t.vocabSize,
        forward: async () => ({ argmaxId: script[call++]! }),
        isEndOfGeneration: (id) => t.isEog(id),
        createStreamDecoder: () => t.createStreamDecoder(),
      };
    };
    const run = async (t: LlamaTokenizer, script: number[], ignoreEos = false) => {
      const result: { finish?: FinishReason } = {};
      const ids: number[] = [];
      let text = '';
      for await (const token of generateTokens(scripted(t, script), t.encode('Hi'), { temperature: 0, maxTokens: script.length, ignoreEos }, result)) {
        ids.push(token.id);
        text += token.text;
      }
      return { ids, text, finish: result.finish };
    };
    const ends: Array<[string, string[]]> = [
      [LLAMA3, ['<|eot_id|>', '<|end_of_text|>']],
      [QWEN2, ['<|im_end|>', '<|endoftext|>']],
      [QWEN3, ['<|im_end|>', '<|endoftext|>']],
      [PHI3, ['<|end|>', '<|endoftext|>']],
    ];
    for (const [file, texts] of ends) {
      const t = tokenizer(file);
      const [hello] = t.encode('Hello', { addBos: false });
      for (const end of texts) {
        const stop = t.tokenId(end)!;
        expect(await run(t, [hello!, stop, hello!]), `${file} ${end}`).toEqual({ ids: [hello, stop], text: piecesText(t, [hello!]), finish: 'eos' });
        expect((await run(t, [hello!, stop, hello!], true)).finish).toBe('length');
      }
    }
  });

  it('round-trips text byte for byte (Qwen: no clean-up, no NFC), streaming never splits a character', () => {
    const text = 'Wait , what ? e\u0301 naïve 日本語 🦙👩‍👩‍👧 \t\n  x  ';
    const qwen = tokenizer(QWEN2);
    const ids = qwen.encode(text);
    expect(qwen.decode(ids)).toBe(text);
    const stream = qwen.createStreamDecoder();
    const chunks = ids.map((id) => stream.push(id));
    for (const chunk of chunks) expect(chunk).not.toContain('\uFFFD');
    expect(chunks.join('') + stream.flush()).toBe(text);
    // Llama 3 cleans up spaces before punctuation when detokenizing, as llama.cpp does.
    const llama3 = tokenizer(LLAMA3);
    expect(llama3.decode(llama3.encode('Wait , what ?'))).toBe('Wait, what?');
  });

  it('refuses an unknown pre-tokenizer naming it and the supported values; missing merges too', () => {
    const metadata = new Map(metadataByFile.get(QWEN2)!);
    metadata.set('tokenizer.ggml.pre', 'tekken-9000');
    const load = (): LlamaTokenizer => LlamaTokenizer.fromGGUFMetadata(metadata, { file: 'x.gguf' });
    expect(load).toThrow(UnsupportedPreTokenizerError);
    expect(load).toThrow(/"tekken-9000".*llama-bpe.*qwen2/);
    expect(SUPPORTED_PRE_TOKENIZERS).toEqual(expect.arrayContaining(['default', 'llama3', 'llama-bpe', 'qwen2', 'deepseek-r1-qwen']));
    metadata.set('tokenizer.ggml.pre', 'qwen2');
    metadata.delete('tokenizer.ggml.merges');
    expect(load).toThrow(ModelFormatError);
    expect(load).toThrow(/tokenizer\.ggml\.merges/);
  });

  it("takes whitespace to be Unicode's White_Space, as llama.cpp (U+0085 is, U+FEFF is not; JavaScript's \\s says the opposite)", () => {
    for (const pre of ['llama-bpe', 'qwen2', 'default']) {
      const preTokenizer = preTokenizerFor(pre, 'test');
      expect(preTokenize('a \uFEFFb', preTokenizer), pre).toEqual(['a', ' \uFEFF', 'b']);
    }
    const qwen = preTokenizerFor('qwen2', 'test');
    expect(preTokenize('a \u0085b', qwen)).toEqual(['a', ' ', '\u0085b']);
    expect(preTokenize('x \u0085\u0085', qwen)).toEqual(['x', ' \u0085\u0085']);
  });

  it('uses the default pre-tokenizer (GPT-2 regexes) when the GGUF names none', () => {
    const vocab: VocabData = {
      model: 'gpt2',
      tokens: ['a', 'b', 'ab', '1', '2', '3', '12', '123', 'Ġ', 'Ġab'],
      scores: new Float32Array(10),
      tokenTypes: new Int32Array(10).fill(1),
      merges: ['a b', '1 2', '12 3', 'Ġ ab'],
      bosId: -1,
      eosId: -1,
      unkId: -1,
      addBos: false,
      addEos: false,
      addSpacePrefix: false,
    };
    const t = new LlamaTokenizer(vocab);
    // GPT-2's regexes cut "ab", " ab" (" ?\p{L}+") and "123" (" ?\p{N}+"); each merges by rank.
    expect(t.encode('ab ab123')).toEqual([2, 9, 7]);
  });
});
