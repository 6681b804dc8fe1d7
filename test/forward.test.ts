// The GPU forward pass against the plain-TypeScript reference forward pass, for every weight
// type in the test models: same weights (dequantized on the CPU), same math, f64 on the CPU.
import { describe, expect, it } from 'vitest';
import { loadModel } from '../src/api/model.ts';
import { destroyOps, type KernelOp } from '../src/gpu/kernel.ts';
import { createKvCache, destroyKvCache, kvGeometry } from '../src/engine/kv-cache.ts';
import { createActivations, destroyActivations, recordLlamaForward } from '../src/engine/llama.ts';
import { wholeModelView } from '../src/engine/shard-view.ts';
import { destroyWeights, loadLlamaWeights } from '../src/engine/weights.ts';
import { llamaConfig } from '../src/model/config.ts';
import { readGGUF } from '../src/model/gguf.ts';
import { bytesSource, fileSource } from '../src/model/source.ts';
import { GGMLType } from '../src/model/ggml-type.ts';
import { writeGGUFStream } from '../src/model/gguf-writer.ts';
import { randomLlamaSpec } from '../src/model/random-llama.ts';
import { testGpu, maxRelativeError } from './helpers/gpu.ts';
import { modelPath, reference, referenceModelPath } from './helpers/models.ts';
import { ReferenceLlama } from './reference/llama-forward.ts';

const files = [
  'stories260K.gguf',
  'stories260K-F16.gguf',
  'stories260K-Q8_0.gguf',
  'stories260K-Q4_0.gguf',
  'stories260K-Q4_K_M.gguf',
  'llama-2-tiny-random.gguf',
];

// Prompts of several lengths, so prefill runs with token counts that are not workgroup multiples.
const prompts = [[1], [1, 403, 407, 261, 378], [1, 291, 348, 411, 295, 410, 479, 477, 479, 484, 381, 410, 300, 315, 311, 261, 322, 280]];

describe('forward pass vs the TypeScript reference', () => {
  for (const name of files) {
    it(name, async () => {
      const source = await fileSource(modelPath(name));
      const file = await readGGUF(source);
      const reference = await ReferenceLlama.load(file, llamaConfig(file));
      await source.close();
      const model = await loadModel(modelPath(name), { device: await testGpu(), contextLength: 64, maxBatchTokens: 8 });
      try {
        for (const ids of prompts) {
          const expected = reference.promptLogits(ids);
          const actual = await model.nextTokenLogits(ids);
          expect(maxRelativeError(actual, expected, 1)).toBeLessThan(1e-4);
        }
      } finally {
        await model.dispose();
      }
    });
  }
});

// Each family's switches (Q/K/V biases, per-head Q/K norms, neox RoPE, fused QKV and gate‖up)
// against the reference's, covered pairwise with weight types and matmul variants (the int8
// variants, which round activations as llama.cpp does, are checked against llama.cpp itself in
// families.test.ts).
describe('families vs the TypeScript reference', () => {
  const cases = [
    { name: 'llama3-tiny/llama3-tiny-F32.gguf', matmul: 'matvec' },
    { name: 'qwen2-tiny/qwen2-tiny-F32.gguf', matmul: 'tiled' },
    { name: 'qwen3-tiny/qwen3-tiny-Q4_0.gguf', matmul: 'tiled-large' },
    { name: 'phi3-tiny/phi3-tiny-Q8_0.gguf', matmul: 'auto' },
    { name: 'phi3-tiny/phi3-tiny-F32.gguf', matmul: 'matvec' },
  ] as const;
  for (const { name, matmul } of cases) {
    it(`${name} (${matmul} matmuls)`, async () => {
      const source = await fileSource(modelPath(name));
      const file = await readGGUF(source);
      const reference = await ReferenceLlama.load(file, llamaConfig(file));
      await source.close();
      const model = await loadModel(modelPath(name), { device: await testGpu(), contextLength: 64, maxBatchTokens: 8, kernels: { matmul } });
      try {
        for (const ids of [[9707], [9707, 11, 1879, 0, 358, 1079, 264, 1296, 13, 576, 374]]) {
          // These logits are ~100 (stories260K's ~10): f32 sums leave ~1e-4 of them against f64.
          expect(maxRelativeError(await model.nextTokenLogits(ids), reference.promptLogits(ids), 1)).toBeLessThan(3e-4);
        }
      } finally {
        await model.dispose();
      }
    }, 300_000);
  }
});

describe('Llama 3.1 rope frequency factors', () => {
  it('divides each rotary frequency by rope_freqs.weight, as the reference does', async () => {
    const spec = randomLlamaSpec({ dim: 64, nLayers: 2, nHeads: 4, nKvHeads: 2, ffnDim: 128 }, 3);
    const headDim = 16;
    const factors = Float32Array.from({ length: headDim / 2 }, (_, i) => 1 + i * 0.75);
    spec.tensors.push({ name: 'rope_freqs.weight', shape: [headDim / 2], type: GGMLType.F32, data: new Uint8Array(factors.buffer) });
    const chunks: Uint8Array[] = [];
    await writeGGUFStream(spec, (chunk) => void chunks.push(chunk.slice()));
    const bytes = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
    chunks.reduce((at, c) => (bytes.set(c, at), at + c.length), 0);

    const file = await readGGUF(bytesSource(bytes));
    const config = llamaConfig(file);
    expect(config.ropeFreqsTensor).toBe('rope_freqs.weight');
    const reference = await ReferenceLlama.load(file, config);
    const model = await loadModel(bytes, { device: await testGpu(), contextLength: 64 });
    try {
      const ids = [1, 300, 301, 302, 303, 304, 305, 306, 307, 308, 309, 310];
      const expected = reference.promptLogits(ids);
      expect(maxRelativeError(await model.nextTokenLogits(ids), expected, 1)).toBeLessThan(1e-4);
      // And the factors matter: without them the logits differ.
      const plain = await ReferenceLlama.load(file, { ...config, ropeFreqsTensor: undefined });
      expect(maxRelativeError(plain.promptLogits(ids), expected, 1)).toBeGreaterThan(1e-3);
    } finally {
      await model.dispose();
    }
  });
});

describe('matmul variants end to end', () => {
  for (const variant of ['matvec', 'matvec-subgroup', 'tiled', 'tiled-large'] as const) {
    it(`the whole model with every matmul forced to ${variant} gives llama.cpp's tokens`, async () => {
      const model = await loadModel(modelPath('stories260K.gguf'), { device: await testGpu(), contextLength: 64, kernels: { matmul: variant } });
      try {
        const c = reference().generation_cases.find((x) => x.id === 'stories260K-f32/once-upon-a-time')!;
        const result = await model.complete(c.prompt_ids, { temperature: 0, maxTokens: 16, ignoreEos: true });
        expect(result.ids).toEqual(c.generated_ids.slice(0, 16));
      } finally {
        await model.dispose();
      }
    });
  }
});

// Int8 activations change the arithmetic (as in llama.cpp's own CPU path for these types): the
// quantized models must still give llama.cpp's tokens for each case's stable prefix, with the
// int8 kernels everywhere (prompts of more than 4 tokens through tiled-int8, decode through
// matvec-int8).
describe('int8 kernels end to end', () => {
  for (const key of ['stories260K-q8_0', 'stories260K-q4_0']) {
    it(`${key}: every generation case with the int8 matmuls`, async () => {
      const model = await loadModel(referenceModelPath(key), { device: await testGpu(), contextLength: 128, kernels: { matmul: 'int8' } });
      try {
        for (const c of reference().generation_cases.filter((x) => x.model === key)) {
          const tokens = c.stable_prefix_len['0.1'];
          const result = await model.complete(c.prompt_ids, { temperature: 0, maxTokens: tokens, ignoreEos: true });
          expect(result.ids, c.id).toEqual(c.generated_ids.slice(0, tokens));
        }
      } finally {
        await model.dispose();
      }
    });
  }
});

// Decode at batch 1 pays a fixed cost per dispatch: a layer's Q, K and V run as one matmul over
// their stacked weight when the three share a type (two dispatches fewer per layer), and as
// three where they do not (the Q4_K_M file keeps attn_v of layers 2 and 4 in Q8_0, the rest Q5_0).
describe('dispatches per decode step', () => {
  async function decodeProgram(name: string): Promise<{ ops: KernelOp[]; stacked: boolean[] }> {
    const gpu = await testGpu();
    const source = await fileSource(modelPath(name));
    try {
      const file = await readGGUF(source);
      const config = llamaConfig(file);
      const view = wholeModelView(config);
      const geometry = kvGeometry(64);
      const weights = await loadLlamaWeights(gpu, file, config, view);
      const cache = createKvCache(gpu, config, view, geometry);
      const activations = createActivations(gpu, config, view, 8, geometry);
      const steps = recordLlamaForward(gpu, config, view, weights, cache, activations, 1, 1);
      const ops = steps.flatMap((step) => (step.kind === 'kernels' ? step.ops : []));
      const stacked = weights.layers.map((layer) => layer.qkv !== undefined);
      destroyOps(ops);
      destroyActivations(activations);
      destroyKvCache(cache);
      destroyWeights(weights);
      return { ops, stacked };
    } finally {
      await source.close();
    }
  }
  const matmuls = (ops: KernelOp[], weight: string) => ops.filter((op) => op.label.startsWith('matmul ') && op.label.includes(weight)).length;

  it('one Q/K/V matmul per layer where their types match, three where they differ', async () => {
    const f32 = await decodeProgram('stories260K.gguf');
    expect(f32.stacked).toEqual([true, true, true, true, true]);
    expect(matmuls(f32.ops, 'attn_qkv')).toBe(5);
    expect(matmuls(f32.ops, 'attn_q.')).toBe(0);
    // Per layer: Q/K/V, O, gate, up, down; and the output head.
    expect(matmuls(f32.ops, '')).toBe(5 * 5 + 1);

    const mixed = await decodeProgram('stories260K-Q4_K_M.gguf');
    expect(mixed.stacked).toEqual([true, true, false, true, false]);
    expect(matmuls(mixed.ops, 'attn_qkv')).toBe(3);
    for (const weight of ['attn_q.', 'attn_k.', 'attn_v.']) expect(matmuls(mixed.ops, weight)).toBe(2);
    expect(matmuls(mixed.ops, '')).toBe(3 * 5 + 2 * 7 + 1);
    // Everything else is the same program: two dispatches fewer for each stacked layer.
    expect(mixed.ops.length - f32.ops.length).toBe(2 * 2);
  });
});
