// Hugging Face tokenizer.json read into the GGUF tokenizer (src/model/tokenizer/hf-json.ts): the
// vocabulary equals that of the GGUF converted from it, every reference tokenizer case gives
// llama.cpp's ids, and with `semantics: 'huggingface'` the two documented departures (NFC for
// Qwen, added tokens split out of raw text) give Hugging Face's ids. No GPU; each file read once.
import { readFileSync } from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import { modelPath, reference } from './helpers/models.ts';
import { modernReference, type ModernTokenizerCase } from './helpers/modern-models.ts';
import { readGGUF } from '../src/model/gguf.ts';
import { fileSource } from '../src/model/source.ts';
import { LlamaTokenizer, vocabFromTokenizerJson, type TokenizerJsonVocab, type TokenizerSemantics } from '../src/model/tokenizer.ts';
import { ModelFormatError, UnsupportedModelError } from '../src/model/errors.ts';

/** A generation case's prompt: its ids include BOS when the vocabulary adds it. */
interface PromptCase {
  id: string;
  model: string;
  prompt: string;
  prompt_ids: number[];
  parse_special?: boolean;
}
interface ReferenceFile {
  models: Record<string, { file: string }>;
  tokenizer_cases: ModernTokenizerCase[];
  generation_cases: PromptCase[];
}
const readJson = (file: string): unknown => JSON.parse(readFileSync(modelPath(file), 'utf8'));
const modern: ReferenceFile = modernReference();
const classic: ReferenceFile = reference();
const modernCases = modern.tokenizer_cases;
const storiesCases = classic.tokenizer_cases.filter((c) => c.vocab === 'stories260K');
/** The generation prompts of the reference models stored in `gguf`. */
const promptsOf = (reference: ReferenceFile, gguf: string): PromptCase[] =>
  reference.generation_cases.filter((c) => reference.models[c.model]!.file === gguf);

interface Folder {
  name: string;
  folder: string;
  gguf: string;
  cases: ModernTokenizerCase[];
  prompts: PromptCase[];
}
const FOLDERS: Folder[] = [
  ...(['llama3', 'qwen3'] as const).map((name) => {
    const gguf = `${name}-tiny/${name}-tiny-F32.gguf`;
    return { name, folder: `${name}-tiny/hf`, gguf, cases: modernCases.filter((c) => c.vocab === name), prompts: promptsOf(modern, gguf) };
  }),
  { name: 'stories260K', folder: 'hf/stories260K', gguf: 'stories260K.gguf', cases: storiesCases, prompts: promptsOf(classic, 'stories260K.gguf') },
  { name: 'awq-tiny base', folder: 'awq-tiny/base', gguf: 'awq-tiny/base-F32.gguf', cases: storiesCases, prompts: promptsOf(classic, 'stories260K.gguf') },
];

interface Loaded {
  read: TokenizerJsonVocab;
  ggufMetadata: Map<string, unknown>;
  gguf: LlamaTokenizer;
  llamaCpp: LlamaTokenizer;
  huggingFace: LlamaTokenizer;
}
const loaded = new Map<string, Loaded>();
const get = (name: string): Loaded => loaded.get(name) ?? expect.unreachable(`${name} was not loaded`);

beforeAll(async () => {
  for (const { name, folder, gguf } of FOLDERS) {
    const json = readJson(`${folder}/tokenizer.json`);
    const config = readJson(`${folder}/tokenizer_config.json`);
    const modelConfig = readJson(`${folder}/config.json`) as { vocab_size: number; bos_token_id?: unknown; eos_token_id?: unknown };
    const fromModelConfig = { vocabSize: modelConfig.vocab_size, bosTokenId: modelConfig.bos_token_id, eosTokenId: modelConfig.eos_token_id };
    const source = await fileSource(modelPath(gguf));
    try {
      const { metadata } = await readGGUF(source);
      loaded.set(name, {
        read: vocabFromTokenizerJson(json, config, fromModelConfig),
        ggufMetadata: metadata,
        gguf: LlamaTokenizer.fromGGUFMetadata(metadata, { file: gguf }),
        llamaCpp: LlamaTokenizer.fromTokenizerJson(json, config, fromModelConfig),
        huggingFace: LlamaTokenizer.fromTokenizerJson(json, config, { ...fromModelConfig, semantics: 'huggingface' }),
      });
    } finally {
      await source.close();
    }
  }
}, 120_000);

describe.each(FOLDERS)('$name: $folder/tokenizer.json', ({ name, cases, prompts }) => {
  it('has the vocabulary of the GGUF converted from it: texts, types, special ids, flags', () => {
    const { read, ggufMetadata, gguf: fromGguf } = get(name);
    expect(read.vocab.tokens).toEqual(ggufMetadata.get('tokenizer.ggml.tokens'));
    expect(Array.from(read.vocab.tokenTypes)).toEqual(Array.from(ggufMetadata.get('tokenizer.ggml.token_type') as ArrayLike<number>));
    if (read.vocab.model === 'gpt2') expect(read.vocab.merges).toEqual(ggufMetadata.get('tokenizer.ggml.merges'));
    const t = get(name).llamaCpp;
    const flags = (x: LlamaTokenizer): unknown[] => [x.model, x.bosId, x.eosId, x.unkId, x.addBos, x.addEos, x.addSpacePrefix, [...x.eogIds]];
    expect(flags(t)).toEqual(flags(fromGguf));
    expect(read.chatTemplate).toBe(ggufMetadata.get('tokenizer.chat_template'));
  });

  it.each(cases)('$id: llama.cpp ids with either semantics (where Hugging Face agrees), decode round-trip', (c) => {
    const { llamaCpp, huggingFace, gguf: fromGguf } = get(name);
    const options = { addBos: c.add_bos, parseSpecial: c.parse_special };
    const ids = llamaCpp.encode(c.text, options);
    expect(ids).toEqual(c.ids);
    expect(ids).toEqual(fromGguf.encode(c.text, options));
    if (c.crosscheck_ids_equal !== false) expect(huggingFace.encode(c.text, options)).toEqual(c.ids);
    expect(llamaCpp.decode(ids, { removeSpecial: false })).toBe(fromGguf.decode(ids, { removeSpecial: false }));
    expect(llamaCpp.decode(ids)).toBe(fromGguf.decode(ids));
  });

  it('every reference generation prompt gives its prompt_ids under both semantics', () => {
    expect(prompts.length).toBeGreaterThan(0);
    const { llamaCpp, huggingFace } = get(name);
    for (const c of prompts) {
      const parseSpecial = c.parse_special ?? false;
      expect(llamaCpp.encode(c.prompt, { parseSpecial }), c.id).toEqual(c.prompt_ids);
      // Hugging Face always splits added tokens; these prompts hold them only where parse_special is on.
      expect(huggingFace.encode(c.prompt, { parseSpecial }), c.id).toEqual(c.prompt_ids);
    }
  });
});

describe('where Hugging Face departs from llama.cpp (shared/models README)', () => {
  it('Qwen: the NFC normalizer applies only with Hugging Face semantics (decomposed "é")', () => {
    const { llamaCpp, huggingFace, gguf } = get('qwen3');
    const decomposed = 'fe\u0301';
    expect(llamaCpp.encode(decomposed)).toEqual([1859, 53839]);
    expect(gguf.encode(decomposed)).toEqual([1859, 53839]);
    expect(huggingFace.encode(decomposed)).toEqual([58858]);
    expect(huggingFace.encode(decomposed)).toEqual(llamaCpp.encode(decomposed.normalize('NFC')));
    expect(huggingFace.decode(huggingFace.encode(decomposed))).toBe('f\u00e9');
  });

  const chatTexts = [
    { name: 'llama3', text: '<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>', control: 128006 },
    { name: 'qwen3', text: '<|im_start|>user\n<think>Hi</think> there<|im_end|>\n', control: 151644 },
    { name: 'stories260K', text: 'Hello <s> world</s>', control: 1 },
  ];
  it.each(chatTexts)('$name: control tokens in plain text are text for llama.cpp, tokens for Hugging Face', ({ name, text, control }) => {
    const { llamaCpp, huggingFace, gguf } = get(name);
    const asText = llamaCpp.encode(text);
    expect(asText).toEqual(gguf.encode(text));
    expect(asText.slice(1)).not.toContain(control);
    // Hugging Face splits every added token out of raw text: llama.cpp's ids with special-token parsing.
    const split = huggingFace.encode(text);
    expect(split).toContain(control);
    expect(split).toEqual(gguf.encode(text, { parseSpecial: true }));
    // Its split_special_tokens (parseSpecial: false) keeps special ones as text, still splitting the others.
    expect(huggingFace.encode(text, { parseSpecial: false })).toEqual(asText);
  });

  it('the reference chat prompt with special tokens parsed gives the reference ids under both semantics', () => {
    const c = modernCases.find((item) => item.id === 'llama3/special-parsed')!;
    expect(get('llama3').huggingFace.encode(c.text)).toEqual(c.ids);
    expect(get('llama3').llamaCpp.encode(c.text, { parseSpecial: true })).toEqual(c.ids);
  });
});

describe('special ids from config.json', () => {
  it("Qwen's BOS id comes only from config.json (bos_token_id); without it there is none", () => {
    const json = readJson('qwen3-tiny/hf/tokenizer.json');
    expect(vocabFromTokenizerJson(json, readJson('qwen3-tiny/hf/tokenizer_config.json')).vocab.bosId).toBe(-1);
    expect(get('qwen3').llamaCpp.bosId).toBe(151643);
  });
});

describe('unsupported or broken tokenizer.json → typed errors naming the problem', () => {
  const stories = (): Record<string, unknown> => readJson('hf/stories260K/tokenizer.json') as Record<string, unknown>;
  const llama3 = readJson('llama3-tiny/hf/tokenizer.json') as Record<string, unknown>;
  const withPattern = (pattern: string): Record<string, unknown> => ({
    ...llama3,
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: pattern }, behavior: 'Isolated', invert: false },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
  });
  const cases: Array<{ what: string; json: () => unknown; semantics?: TokenizerSemantics; error: typeof ModelFormatError; message: RegExp }> = [
    {
      what: 'a WordPiece model',
      json: () => ({ ...stories(), model: { type: 'WordPiece', vocab: {} } }),
      error: UnsupportedModelError,
      message: /model type "WordPiece" is not supported \(supported: byte-level BPE/,
    },
    {
      what: 'an unknown Split regex',
      json: () => withPattern('\\w+'),
      error: UnsupportedModelError,
      message: /Split pattern "\\\\w\+" \(known: the Llama 3 and Qwen2 patterns\)/,
    },
    {
      what: "GPT-2's ByteLevel regex",
      json: () => ({ ...llama3, pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, use_regex: true } }),
      error: UnsupportedModelError,
      message: /pre-tokenizer \{"type":"ByteLevel"/,
    },
    {
      what: 'an NFKC normalizer',
      json: () => ({ ...stories(), normalizer: { type: 'NFKC' } }),
      error: UnsupportedModelError,
      message: /normalizer \{"type":"NFKC"\} \(supported: NFC/,
    },
    {
      what: 'a malformed merge',
      json: () => ({ ...stories(), model: { ...(stories().model as object), merges: ['a b c'] } }),
      error: ModelFormatError,
      message: /model\.merges\[0\].*neither "left right" nor/,
    },
    {
      what: 'Metaspace "first" under Hugging Face semantics',
      json: () => ({ ...stories(), normalizer: null, pre_tokenizer: { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'first' } }),
      semantics: 'huggingface' as const,
      error: UnsupportedModelError,
      message: /prepend_scheme "first" with semantics "huggingface"/,
    },
    {
      what: "ignore_merges other than the Llama 3 family's, under Hugging Face semantics",
      json: () => ({ ...llama3, model: { ...(llama3.model as object), ignore_merges: false } }),
      semantics: 'huggingface' as const,
      error: UnsupportedModelError,
      message: /model\.ignore_merges: ignore_merges false with the llama3 pre-tokenizer under semantics "huggingface"/,
    },
    { what: 'a non-object', json: () => [], error: ModelFormatError, message: /not a JSON object/ },
  ];
  it.each(cases)('$what', ({ json, semantics, error, message }) => {
    const attempt = (): unknown => LlamaTokenizer.fromTokenizerJson(json(), undefined, { file: 'my/tokenizer.json', semantics });
    expect(attempt).toThrow(error);
    expect(attempt).toThrow(message);
    expect(attempt).toThrow(/^my\/tokenizer\.json: /);
  });

  // The other spellings of the same SentencePiece-converted tokenizer give the same ids.
  const variants = [
    {
      what: 'merges as [left, right] pairs (newer files)',
      json: (json: Record<string, unknown>) => {
        const model = json.model as { merges: string[] };
        return { ...json, model: { ...model, merges: model.merges.map((merge) => merge.split(' ')) } };
      },
    },
    {
      what: 'a Metaspace pre-tokenizer instead of the Prepend+Replace normalizer',
      json: (json: Record<string, unknown>) => ({
        ...json,
        normalizer: null,
        pre_tokenizer: { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'always', split: false },
      }),
    },
  ];
  it.each(variants)('$what', ({ json }) => {
    const variant = LlamaTokenizer.fromTokenizerJson(json(stories()), readJson('hf/stories260K/tokenizer_config.json'));
    for (const c of storiesCases) expect(variant.encode(c.text), c.id).toEqual(c.ids);
    expect(variant.addSpacePrefix).toBe(true);
  });
});
