// Llama hyper-parameters from GGUF metadata, and the tensor-shape check against them.
import { describe, expect, it } from 'vitest';
import { GGMLType } from '../src/model/ggml-type.ts';
import { readGGUF } from '../src/model/gguf.ts';
import { ggufValue, writeGGUF, type GGUFTensorSpec, type GGUFTypedValue } from '../src/model/gguf-writer.ts';
import { llamaConfig, ropePositionScale, validateLlamaTensors, type LlamaConfig } from '../src/model/config.ts';
import { ModelFormatError, UnsupportedModelError } from '../src/model/errors.ts';
import { bytesSource, fileSource } from '../src/model/source.ts';
import { modelPath, reference } from './helpers/models.ts';

describe('shared models', () => {
  it('stories260K: the README facts', async () => {
    const file = await readGGUF(await fileSource(modelPath('stories260K.gguf')));
    const config = llamaConfig(file);
    expect(config).toMatchObject({
      architecture: 'llama',
      vocabSize: 512,
      dim: 64,
      nLayers: 5,
      nHeads: 8,
      nKvHeads: 4,
      headDim: 8,
      ffnDim: 172,
      ropeBase: 10000,
      ropeScaling: { type: 'none' },
      ropeDims: 8,
      contextLength: 2048,
      tiedEmbeddings: false,
      bosTokenId: 1,
      eosTokenId: 2,
      unkTokenId: 0,
    } satisfies Partial<LlamaConfig>);
    expect(config.rmsEps).toBeCloseTo(1e-5, 10);
    expect(config.ropeFreqsTensor).toBeUndefined();
    validateLlamaTensors(file, config);
    await file.source.close();
  });

  it.each(Object.values(reference().models).map((model) => model.file))('%s: tensors match its config', async (name) => {
    const file = await readGGUF(await fileSource(modelPath(name)));
    expect(() => validateLlamaTensors(file, llamaConfig(file))).not.toThrow();
    await file.source.close();
  });

  it('llama-2-tiny-random: n_embd 8, 1 layer, 2 heads, n_ff 32, 32000 tokens', async () => {
    const file = await readGGUF(await fileSource(modelPath('llama-2-tiny-random.gguf')));
    expect(llamaConfig(file)).toMatchObject({ dim: 8, nLayers: 1, nHeads: 2, nKvHeads: 2, headDim: 4, ffnDim: 32, vocabSize: 32000, contextLength: 4096 });
    await file.source.close();
  });
});

/** A minimal llama file with zero-filled weights; `edit` changes metadata or tensors before writing. */
function tinyLlama(
  edit: { architecture?: string; metadata?: Record<string, GGUFTypedValue | null>; tensors?: (tensors: GGUFTensorSpec[]) => GGUFTensorSpec[] } = {},
): Uint8Array {
  const arch = edit.architecture ?? 'llama';
  const dim = 8;
  const heads = 2;
  const kvHeads = 1;
  const ffn = 16;
  const vocab = 10;
  const headDim = dim / heads;
  const base: Record<string, GGUFTypedValue> = {
    'general.architecture': ggufValue.string(arch),
    [`${arch}.embedding_length`]: ggufValue.u32(dim),
    [`${arch}.block_count`]: ggufValue.u32(1),
    [`${arch}.attention.head_count`]: ggufValue.u32(heads),
    [`${arch}.attention.head_count_kv`]: ggufValue.u32(kvHeads),
    [`${arch}.feed_forward_length`]: ggufValue.u32(ffn),
    [`${arch}.context_length`]: ggufValue.u32(64),
    [`${arch}.attention.layer_norm_rms_epsilon`]: ggufValue.f32(1e-6),
    [`${arch}.rope.freq_base`]: ggufValue.f32(500000),
    'tokenizer.ggml.tokens': ggufValue.array('string', Array.from({ length: vocab }, (_, i) => `t${i}`)),
  };
  const metadata = Object.entries({ ...base, ...edit.metadata }).filter((entry): entry is [string, GGUFTypedValue] => entry[1] !== null);
  const f32 = (name: string, shape: number[]): GGUFTensorSpec => ({
    name,
    shape,
    type: GGMLType.F32,
    data: new Uint8Array(shape.reduce((a, b) => a * b, 4)),
  });
  let tensors = [
    f32('token_embd.weight', [dim, vocab]),
    f32('output_norm.weight', [dim]),
    f32('blk.0.attn_norm.weight', [dim]),
    f32('blk.0.attn_q.weight', [dim, heads * headDim]),
    f32('blk.0.attn_k.weight', [dim, kvHeads * headDim]),
    f32('blk.0.attn_v.weight', [dim, kvHeads * headDim]),
    f32('blk.0.attn_output.weight', [heads * headDim, dim]),
    f32('blk.0.ffn_norm.weight', [dim]),
    f32('blk.0.ffn_gate.weight', [dim, ffn]),
    f32('blk.0.ffn_up.weight', [dim, ffn]),
    f32('blk.0.ffn_down.weight', [ffn, dim]),
  ];
  if (edit.tensors) tensors = edit.tensors(tensors);
  return writeGGUF({ metadata, tensors });
}

async function configOf(bytes: Uint8Array): Promise<{ config: LlamaConfig; validate: () => void }> {
  const file = await readGGUF(bytesSource(bytes, 'tiny.gguf'));
  const config = llamaConfig(file);
  return { config, validate: () => validateLlamaTensors(file, config) };
}

async function configError(bytes: Uint8Array): Promise<ModelFormatError> {
  const file = await readGGUF(bytesSource(bytes, 'tiny.gguf'));
  try {
    validateLlamaTensors(file, llamaConfig(file));
  } catch (error) {
    expect(error).toBeInstanceOf(ModelFormatError);
    return error as ModelFormatError;
  }
  throw new Error('expected a ModelFormatError');
}

describe('llamaConfig', () => {
  it('reads a GQA model with tied embeddings and defaults', async () => {
    const { config, validate } = await configOf(tinyLlama());
    expect(config).toMatchObject({ dim: 8, nHeads: 2, nKvHeads: 1, headDim: 4, ropeDims: 4, vocabSize: 10, ropeBase: 500000, tiedEmbeddings: true });
    expect(config.bosTokenId).toBeUndefined();
    validate();
  });

  it('nKvHeads defaults to nHeads, ropeBase to 10000', async () => {
    const { config } = await configOf(
      tinyLlama({
        metadata: { 'llama.attention.head_count_kv': null, 'llama.rope.freq_base': null },
        tensors: (ts) => ts.map((t) => (/attn_[kv]/.test(t.name) ? { ...t, shape: [8, 8], data: new Uint8Array(256) } : t)),
      }),
    );
    expect(config.nKvHeads).toBe(2);
    expect(config.ropeBase).toBe(10000);
  });

  it('linear rope scaling divides positions by its factor; yarn is refused as unsupported', async () => {
    const linear = await configOf(tinyLlama({ metadata: { 'llama.rope.scaling.type': ggufValue.string('linear'), 'llama.rope.scaling.factor': ggufValue.f32(4) } }));
    expect(linear.config.ropeScaling).toEqual({ type: 'linear', factor: 4 });
    expect(ropePositionScale(linear.config)).toBe(4);
    expect(ropePositionScale((await configOf(tinyLlama())).config)).toBe(1);
    const yarn = await readGGUF(bytesSource(tinyLlama({ metadata: { 'llama.rope.scaling.type': ggufValue.string('yarn') } })));
    expect(() => llamaConfig(yarn)).toThrow(UnsupportedModelError);
    expect(() => llamaConfig(yarn)).toThrow(/llama\.rope\.scaling\.type|rope scaling type "yarn"/);
  });

  it('a missing hyper-parameter names its key', async () => {
    const file = await readGGUF(bytesSource(tinyLlama({ metadata: { 'llama.block_count': null } }), 'tiny.gguf'));
    expect(() => llamaConfig(file)).toThrow(/tiny\.gguf: metadata key llama\.block_count is missing/);
  });

  it('a block_count beyond the tensor table is refused before any layer is looked at', async () => {
    const file = await readGGUF(bytesSource(tinyLlama({ metadata: { 'llama.block_count': ggufValue.u32(8_388_609) } }), 'tiny.gguf'));
    expect(() => llamaConfig(file)).toThrow(ModelFormatError);
    expect(() => llamaConfig(file)).toThrow(/8388609 layers, but the file has \d+ tensors/);
  });

  it('another architecture is refused by name', async () => {
    const file = await readGGUF(bytesSource(tinyLlama({ metadata: { 'general.architecture': ggufValue.string('mamba') } })));
    expect(() => llamaConfig(file)).toThrow(UnsupportedModelError);
    expect(() => llamaConfig(file)).toThrow(/architecture "mamba" is not supported \(supported: llama, qwen2, qwen3, phi3\)/);
  });

  it('key_length overrides dim / heads', async () => {
    const file = await readGGUF(bytesSource(tinyLlama({ metadata: { 'llama.attention.key_length': ggufValue.u32(16) } })));
    const config = llamaConfig(file);
    expect(config.headDim).toBe(16);
    expect(() => validateLlamaTensors(file, config)).toThrow(/blk\.0\.attn_q\.weight has shape \[8, 8\], expected \[8, 32\]/);
  });
});

describe('validateLlamaTensors', () => {
  it('names a missing tensor', async () => {
    const error = await configError(tinyLlama({ tensors: (ts) => ts.filter((t) => t.name !== 'blk.0.ffn_up.weight') }));
    expect(error.tensor).toBe('blk.0.ffn_up.weight');
    expect(error.message).toMatch(/tensor blk\.0\.ffn_up\.weight is missing \(expected shape \[8, 16\]\)/);
  });

  it('names a tensor with the wrong shape, with expected and found shapes', async () => {
    const error = await configError(
      tinyLlama({ tensors: (ts) => ts.map((t) => (t.name === 'blk.0.ffn_down.weight' ? { ...t, shape: [8, 16] } : t)) }),
    );
    expect(error.tensor).toBe('blk.0.ffn_down.weight');
    expect(error.message).toMatch(/has shape \[8, 16\], expected \[16, 8\]/);
  });

  it('checks output.weight when present, and the vocabulary size of the embedding', async () => {
    const wrongOutput = await configError(
      tinyLlama({ tensors: (ts) => [...ts, { name: 'output.weight', shape: [8, 9], type: GGMLType.F32, data: new Uint8Array(288) }] }),
    );
    expect(wrongOutput.tensor).toBe('output.weight');
    const wrongVocab = await configError(tinyLlama({ metadata: { 'llama.vocab_size': ggufValue.u32(11) } }));
    expect(wrongVocab.tensor).toBe('token_embd.weight');
  });

  it('accepts trailing dimensions of 1', async () => {
    const { validate } = await configOf(
      tinyLlama({ tensors: (ts) => ts.map((t) => (t.name === 'output_norm.weight' ? { ...t, shape: [8, 1] } : t)) }),
    );
    expect(validate).not.toThrow();
  });
});

describe('model families', () => {
  it.each([
    ['llama3-tiny/llama3-tiny-F32.gguf', 'llama', { ropeStyle: 'normal', qkvBias: false, qkNorm: false, fusedQkv: false, fusedGateUp: false }, { tiedEmbeddings: true, ropeFreqsTensor: 'rope_freqs.weight', vocabSize: 128256 }],
    ['qwen2-tiny/qwen2-tiny-F32.gguf', 'qwen2', { ropeStyle: 'neox', qkvBias: true, qkNorm: false, fusedQkv: false, fusedGateUp: false }, { tiedEmbeddings: true, vocabSize: 151936 }],
    ['qwen3-tiny/qwen3-tiny-F32.gguf', 'qwen3', { ropeStyle: 'neox', qkvBias: false, qkNorm: true, fusedQkv: false, fusedGateUp: false }, { tiedEmbeddings: true, headDim: 16, dim: 32 }],
    ['phi3-tiny/phi3-tiny-F32.gguf', 'phi3', { ropeStyle: 'neox', qkvBias: false, qkNorm: false, fusedQkv: true, fusedGateUp: true }, { tiedEmbeddings: false, vocabSize: 32064, contextLength: 4096 }],
  ] as const)('%s: the %s family description, and every tensor in its shape', async (name, architecture, family, facts) => {
    const file = await readGGUF(await fileSource(modelPath(name)));
    const config = llamaConfig(file);
    expect(config).toMatchObject({ architecture, family, ...facts });
    expect(() => validateLlamaTensors(file, config)).not.toThrow();
    await file.source.close();
  });

  const f32 = (name: string, shape: number[]): GGUFTensorSpec => ({ name, shape, type: GGMLType.F32, data: new Uint8Array(shape.reduce((a, b) => a * b, 4)) });
  const withBiases = (kBias: number[]) => (ts: GGUFTensorSpec[]) => [...ts, f32('blk.0.attn_q.bias', [8]), f32('blk.0.attn_k.bias', kBias), f32('blk.0.attn_v.bias', [4])];

  it('qwen2: Q/K/V biases are required, in the projections\' shapes', async () => {
    expect((await configOf(tinyLlama({ architecture: 'qwen2', tensors: withBiases([4]) }))).validate).not.toThrow();
    const missing = await configError(tinyLlama({ architecture: 'qwen2' }));
    expect(missing.tensor).toBe('blk.0.attn_q.bias');
    const wrong = await configError(tinyLlama({ architecture: 'qwen2', tensors: withBiases([8]) }));
    expect(wrong.tensor).toBe('blk.0.attn_k.bias');
    expect(wrong.message).toMatch(/blk\.0\.attn_k\.bias has shape \[8\], expected \[4\]/);
  });

  it('a llama file with Q/K/V biases uses them, as llama.cpp does', async () => {
    expect((await configOf(tinyLlama({ tensors: withBiases([4]) }))).config.family.qkvBias).toBe(true);
  });

  it('qwen3: per-head Q/K norms of head_dim values', async () => {
    const wrong = await configError(tinyLlama({ architecture: 'qwen3', tensors: (ts) => [...ts, f32('blk.0.attn_q_norm.weight', [8]), f32('blk.0.attn_k_norm.weight', [4])] }));
    expect(wrong.tensor).toBe('blk.0.attn_q_norm.weight');
    expect(wrong.message).toMatch(/expected \[4\]/);
  });

  it('phi3: fused attn_qkv (q, k, v rows) and ffn_up (gate, up rows)', async () => {
    const fused = (qkvRows: number) => (ts: GGUFTensorSpec[]) => [
      ...ts.filter((t) => !/attn_[qkv]\.|ffn_(gate|up)/.test(t.name)),
      f32('blk.0.attn_qkv.weight', [8, qkvRows]),
      f32('blk.0.ffn_up.weight', [8, 32]),
    ];
    expect((await configOf(tinyLlama({ architecture: 'phi3', tensors: fused(16) }))).validate).not.toThrow();
    const wrong = await configError(tinyLlama({ architecture: 'phi3', tensors: fused(24) }));
    expect(wrong.tensor).toBe('blk.0.attn_qkv.weight');
    expect(wrong.message).toMatch(/has shape \[8, 24\], expected \[8, 16\]/);
  });

  it('phi3 LongRoPE factors (128k-context files) are refused, naming the tensor', async () => {
    const file = await readGGUF(bytesSource(tinyLlama({ architecture: 'phi3', tensors: (ts) => [...ts, f32('rope_factors_long.weight', [2])] })));
    expect(() => llamaConfig(file)).toThrow(UnsupportedModelError);
    expect(() => llamaConfig(file)).toThrow(/rope_factors_long\.weight: LongRoPE scaling .* is not supported/);
  });
});
