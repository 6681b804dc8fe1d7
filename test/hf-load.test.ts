// Hugging Face folders loaded as users load them: loadModel(folder) on one device and split over
// two, against llama.cpp's references for the same weights (GGUF conversions of these very folders,
// and the exactly dequantized AWQ/GPTQ checkpoints).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel, type Model } from '../src/api/model.ts';
import { readModelInfo } from '../src/api/model-info.ts';
import { ModelFormatError, ModelSourceError } from '../src/model/errors.ts';
import { readSafetensorsBytes, readSafetensorsModel } from '../src/model/safetensors.ts';
import { writeSafetensors } from '../src/model/safetensors-writer.ts';
import { fileSource } from '../src/model/source.ts';
import { FULL_SWEEP } from './helpers/gpu.ts';
import { modernReference } from './helpers/modern-models.ts';
import { modelPath, quantizedReference, reference, type GenerationCase } from './helpers/models.ts';

/** Greedy ids for the case's prompt ids. */
async function generate(model: Model, c: GenerationCase, maxTokens = c.n_predict): Promise<number[]> {
  return (await model.complete(c.prompt_ids, { maxTokens, temperature: 0 })).ids;
}

/** Loads `folder` once for a describe block; disposes it after. */
function loaded(folder: string, options: Parameters<typeof loadModel>[1] = {}): () => Model {
  let model: Model | undefined;
  beforeAll(async () => {
    model = await loadModel(modelPath(folder), { contextLength: 128, ...options });
  });
  afterAll(() => model?.dispose());
  return () => model!;
}

describe('hf/stories260K (F32 safetensors, SentencePiece tokenizer.json) = stories260K.gguf', () => {
  const model = loaded('hf/stories260K', { contextLength: 256 });
  const cases = reference().generation_cases.filter((c) => c.model === 'stories260K-f32');

  it('reads config.json as the GGUF conversion does', () => {
    expect(model().config).toMatchObject({ architecture: 'llama', dim: 64, nLayers: 5, nHeads: 8, nKvHeads: 4, vocabSize: 512 });
    expect(model().config.family.ropeStyle).toBe('neox'); // HF Q/K order: see src/model/hf-checkpoint.ts
  });

  it.each(cases.map((c) => [c.name, c] as const))('%s: prompt ids and all generated tokens', async (_, c) => {
    expect(model().tokenize(c.prompt)).toEqual(c.prompt_ids);
    expect(await generate(model(), c)).toEqual(c.generated_ids);
  });
});

// The BF16 folders hold the weights of the F32 GGUFs (BF16-representable), so llama.cpp's tokens
// apply exactly. npm test runs one prompt per folder (the 128k/152k-row heads are slow on
// lavapipe); test:full runs them all.
describe.each([
  ['llama3-tiny/hf', 'llama3-tiny-f32', 'BF16 in two shards + index, llama3 rope scaling'],
  ['qwen3-tiny/hf', 'qwen3-tiny-f32', 'BF16, per-head Q/K norms'],
] as const)('%s (%s = GGUF F32)', (folder, key, what) => {
  const model = loaded(folder);
  const all = modernReference().generation_cases.filter((c) => c.model === key);
  // One prompt each in npm test (llama3 plain text, qwen3 the chat prompt with its special tokens).
  const cases = FULL_SWEEP ? all : [folder.startsWith('llama3') ? all[0]! : (all.find((c) => c.name === 'chat') ?? all[0]!)];

  it(`reads ${what}`, () => {
    expect(model().file.tensors.some((t) => t.type === 30 /* BF16 */)).toBe(true);
    if (folder.startsWith('llama3')) expect(model().config.ropeFreqsTensor).toBe('rope_freqs.weight');
  });

  it("renders the chat case's messages with tokenizer_config.json's template to llama.cpp's prompt ids", () => {
    const chat = all.find((c) => c.chat_messages)!;
    const variables = { date_string: '26 Jul 2024' }; // llama.cpp's reference renders Llama 3.2's date with this
    expect(model().chatPromptIds(chat.chat_messages!, { variables })).toEqual(chat.prompt_ids);
  });

  it.each(cases.map((c) => [c.name, c] as const))('%s: prompt ids and all 64 tokens', async (_, c) => {
    expect(model().tokenize(c.prompt, { parseSpecial: c.parse_special })).toEqual(c.prompt_ids);
    expect(await generate(model(), c)).toEqual(c.generated_ids);
  });
});

// AWQ and GPTQ layers run as Q4_ZP (packed bits moved, never floats; act-order layers gather their
// inputs, see src/model/awq-gptq.ts). llama.cpp ran the exactly
// dequantized weights in F32; our sums differ in rounding, so tokens are compared up to the
// case's stable prefix at margin 0.01 (the unquantized base: all 64).
const quantized = quantizedReference();
const quantizedModels = [...new Set(quantized.generation_cases.map((c) => c.model))];

describe.each(quantizedModels)('%s', (folder) => {
  const model = loaded(folder);
  // npm test: the three prompts with the longest stable prefixes (the most tokens compared); test:full: all.
  const all = quantized.generation_cases.filter((c) => c.model === folder);
  const cases = FULL_SWEEP ? all : [...all].sort((a, b) => b.stable_prefix_len['0.01'] - a.stable_prefix_len['0.01']).slice(0, 3);

  it('reads the quantized layers as Q4_ZP and the rest as stored', () => {
    const q4zp = model().file.tensors.filter((t) => t.type === 1000 /* Q4_ZP */);
    expect(q4zp.length).toBe(quantized.models[folder]!.format === 'unquantized' ? 0 : 7 * model().config.nLayers);
  });

  it('keeps no made Q4_ZP layer in host memory after the load (a later read makes it again)', async () => {
    const last = model().file.tensor(`blk.${model().config.nLayers - 1}.ffn_down.weight`); // the last layer the loader made
    if (last.type !== 1000) return expect(quantized.models[folder]!.format).toBe('unquantized');
    const source = model().file.source;
    const before = source.bytesRead;
    await source.read(last.offset, 20);
    expect(source.bytesRead - before).toBeGreaterThan(last.byteLength / 2); // its packed tensors, read again
  });

  it.each(cases.map((c) => [c.name, c] as const))('%s: tokens up to the stable prefix', async (_, c) => {
    const prefix = quantized.models[folder]!.format === 'unquantized' ? c.n_predict : c.stable_prefix_len['0.01'];
    expect(model().tokenize(c.prompt)).toEqual(c.prompt_ids);
    expect((await generate(model(), c, prefix)).slice(0, prefix)).toEqual(c.generated_ids.slice(0, prefix));
  });
});

describe.each(['awq-tiny/awq-g32', 'gptq-tiny/gptq-g32'])('%s split over two shard workers (tp = 2)', (folder) => {
  const model = loaded(folder, { tp: 2 });
  const cases = quantized.generation_cases.filter((c) => c.model === folder).slice(0, 2);

  it.each(cases.map((c) => [c.name, c] as const))('%s: tokens up to the stable prefix', async (_, c) => {
    const prefix = c.stable_prefix_len['0.01'];
    expect((await generate(model(), c, prefix)).slice(0, prefix)).toEqual(c.generated_ids.slice(0, prefix));
  });
});

describe('llama3-tiny/hf (BF16, two files) split over two shard workers', () => {
  const model = loaded('llama3-tiny/hf', { tp: 2 });

  // The planner's count of a shard's byte ranges is tested to be 1/N of the split tensors
  // (plan.test.ts); here the reads through the joined safetensors files are that count.
  it('each shard reads its own rows and columns of the safetensors files, as the planner counts them', () => {
    const plan = model().plan!;
    model().shards!.reports.forEach((report, i) => {
      // The shard's planned byte ranges, plus the two files' headers (read when the folder is opened).
      expect(report.fileBytesRead).toBeGreaterThanOrEqual(plan.shards[i]!.fileBytesRead);
      expect(report.fileBytesRead).toBeLessThan(plan.shards[i]!.fileBytesRead + 64 * 1024);
    });
  });
});

describe('folder errors and info', () => {
  it('a folder without tokenizer.json names the file and how to get it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'webshard-hf-'));
    try {
      for (const name of ['config.json', 'model.safetensors']) symlinkSync(modelPath(`hf/stories260K/${name}`), join(dir, name));
      const error = await loadModel(dir).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ModelSourceError);
      expect((error as Error).message).toMatch(/no tokenizer\.json in .*save_pretrained/);
    } finally {
      rmSync(dir, { recursive: true });
    }
  });

  it.each([
    ['hidden_size', 96, /model\.embed_tokens\.weight has shape \[512, 64\], but config\.json \(LlamaForCausalLM: hidden_size 96, .*\) implies \[512, 96\]\. The weights and config\.json are from different/],
    ['num_hidden_layers', 6, /tensor model\.layers\.5\.input_layernorm\.weight is missing: config\.json \(LlamaForCausalLM: .* 6 layers/],
  ])('a config.json whose %s (%d) does not match the weights is refused naming the HF tensor', async (field, value, message) => {
    const dir = mkdtempSync(join(tmpdir(), 'webshard-hf-'));
    try {
      for (const name of ['model.safetensors', 'tokenizer.json', 'tokenizer_config.json']) symlinkSync(modelPath(`hf/stories260K/${name}`), join(dir, name));
      const config = JSON.parse(readFileSync(modelPath('hf/stories260K/config.json'), 'utf8')) as Record<string, unknown>;
      writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...config, [field]: value }));
      const error = await loadModel(dir).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ModelFormatError);
      expect((error as Error).message).toMatch(message);
    } finally {
      rmSync(dir, { recursive: true });
    }
  });

  it("names the model as config.json's _name_or_path does, which the tokenizer reads as llama.cpp does (Phi-3's special tokens eat the space after them)", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'webshard-hf-'));
    try {
      for (const name of ['model.safetensors', 'tokenizer.json', 'tokenizer_config.json']) symlinkSync(modelPath(`hf/stories260K/${name}`), join(dir, name));
      const config = JSON.parse(readFileSync(modelPath('hf/stories260K/config.json'), 'utf8')) as Record<string, unknown>;
      const tokenize = async (nameOrPath: string) => {
        writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...config, _name_or_path: nameOrPath }));
        const info = await readModelInfo(dir);
        return { name: info.metadata.get('general.name'), ids: info.tokenize('a</s> b', { parseSpecial: true }) };
      };
      const plain = await tokenize('stories/stories260K');
      const phi = await tokenize('microsoft/Phi-3-mini-4k-instruct');
      expect(plain.name).toBe('stories260K');
      expect(phi.name).toBe('Phi-3-mini-4k-instruct');
      expect(phi.ids).not.toEqual(plain.ids);
      expect(phi.ids.length).toBeLessThan(plain.ids.length);
    } finally {
      rmSync(dir, { recursive: true });
    }
  });

  it("generation_config.json's eos_token_id list ends generations (as in transformers and vLLM)", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'webshard-hf-'));
    try {
      for (const name of ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']) symlinkSync(modelPath(`hf/stories260K/${name}`), join(dir, name));
      writeFileSync(join(dir, 'generation_config.json'), JSON.stringify({ bos_token_id: 1, eos_token_id: [2, 286] }));
      const model = await loadModel(dir, { contextLength: 64 });
      try {
        expect([1, 2, 286, 287].map((id) => model.tokenizer.isEog(id))).toEqual([false, true, true, false]);
        const c = reference().generation_cases.find((x) => x.id === 'stories260K-f32/once-upon-a-time')!;
        const stop = c.generated_ids.indexOf(286); // the reference continues past it; this model stops there
        expect(stop).toBeGreaterThan(0);
        const result = await model.complete(c.prompt_ids, { maxTokens: 64, temperature: 0 });
        expect(result.finishReason).toBe('eos');
        expect(result.ids).toEqual(c.generated_ids.slice(0, stop + 1));
      } finally {
        await model.dispose();
      }
    } finally {
      rmSync(dir, { recursive: true });
    }
  });

  it('a quantized layer whose scales do not fit its qweight fails the load with a typed error naming the tensor', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'webshard-hf-'));
    try {
      const folder = 'awq-tiny/awq-g32';
      for (const name of ['config.json', 'tokenizer.json', 'tokenizer_config.json']) symlinkSync(modelPath(`${folder}/${name}`), join(dir, name));
      const original = await readSafetensorsModel(await fileSource(modelPath(`${folder}/model.safetensors`)));
      const tensors = await Promise.all(
        original.tensors.map(async (t) => {
          const data = await readSafetensorsBytes(t);
          // One group row short: [in/G − 1, out] instead of [in/G, out].
          if (t.name !== 'model.layers.1.mlp.up_proj.scales') return { name: t.name, dtype: t.dtype, shape: t.shape, data };
          return { name: t.name, dtype: t.dtype, shape: [t.shape[0]! - 1, t.shape[1]!], data: data.subarray(0, data.length - 2 * t.shape[1]!) };
        }),
      );
      await original.files[0]!.source.close();
      writeFileSync(join(dir, 'model.safetensors'), await writeSafetensors({ tensors }));
      const error = await loadModel(dir).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ModelFormatError);
      expect((error as ModelFormatError).tensor).toBe('model.layers.1.mlp.up_proj.scales');
      expect((error as Error).message).toMatch(/up_proj\.scales: holds \d+ values, but \[\d+, 256\] needs \d+\. Re-export the checkpoint/);
    } finally {
      rmSync(dir, { recursive: true });
    }
  });

  it('a path to one file of a folder asks for the folder', async () => {
    await expect(loadModel(modelPath('hf/stories260K/model.safetensors'))).rejects.toThrow(/pass the folder that holds it/);
  });

  it('readModelInfo reads a folder (webshard info -m folder)', async () => {
    const info = await readModelInfo(modelPath('gptq-tiny/gptq-g32'));
    expect(info.format).toBe('hf-folder');
    expect(info.tensorTypes.get('Q4_ZP')).toBe(7 * info.config.nLayers);
    expect(info.tokenize('Once upon a time')).toEqual([1, 403, 407, 261, 378]);
  });
});
