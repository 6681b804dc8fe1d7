// The safetensors writer and the random Hugging Face checkpoint writer, read back by the readers:
// the Python library's layout (a real AWQ fixture rewritten byte for byte), sharded index round
// trips, a random F32 checkpoint equal to the random GGUF of the same shape and seed, BF16 its
// rounding, AWQ/GPTQ layers that decode (readInt4Linear → int4ToQ4Zp) to the codes the writer
// generated, and a tokenizer.json that tokenizes as the GGUF's vocabulary does (no GPU); and
// loadModel (lavapipe) running a random F32 folder as the random GGUF it equals, and AWQ/GPTQ
// folders of group sizes the shared fixtures lack (128, 64 act-order, -1) as F32 GGUFs of their
// exactly dequantized weights.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { modelPath } from './helpers/models.ts';
import { testGpu } from './helpers/gpu.ts';
import { loadModel } from '../src/api/model.ts';
import { int4ToQ4Zp, quantizeInt4Codes, readInt4Linear } from '../src/model/awq-gptq.ts';
import { openHfCheckpoint, localFolder, type HfCheckpoint } from '../src/model/folder.ts';
import { GGMLType } from '../src/model/ggml-type.ts';
import { readGGUF, readTensorBytes, type GGUFFile } from '../src/model/gguf.ts';
import { hfToGgufName, readHfConfig } from '../src/model/hf-config.ts';
import { bf16ToF32, dequantize, f16ToF32, f32ToBf16, quantize } from '../src/model/quant.ts';
import { randomLlamaGGUF, randomLlamaSpec, randomLlamaVocab, randomWeightValues, TINY_LLAMA_SHAPE } from '../src/model/random-llama.ts';
import { writeGGUF } from '../src/model/gguf-writer.ts';
import { dequantizeInt4Reference } from './reference/awq-gptq.ts';
import { randomTokenizerJson, writeRandomHfCheckpoint, type RandomHfOptions } from '../src/model/random-hf-checkpoint.ts';
import { permuteRopeRows } from '../src/model/rope-order.ts';
import { readSafetensorsBytes, readSafetensorsIndex, readSafetensorsModel } from '../src/model/safetensors.ts';
import { INDEX_FILE, memoryTarget, shardSafetensors, writeSafetensors, writeShardedSafetensors } from '../src/model/safetensors-writer.ts';
import { bytesSource } from '../src/model/source.ts';
import { LlamaTokenizer } from '../src/model/tokenizer.ts';

const SHAPE = { ...TINY_LLAMA_SHAPE, vocabSize: 512 };
const SEED = 7;

describe('safetensors writer', () => {
  it('rewrites a real AutoAWQ file byte for byte (dtype then name order, header padded to 8 with spaces)', async () => {
    const original = readFileSync(modelPath('awq-tiny/awq-g32/model.safetensors'));
    const read = await readSafetensorsModel(bytesSource(original, 'awq-g32'));
    const tensors = await Promise.all(read.tensors.map(async (t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, data: await readSafetensorsBytes(t) })));
    tensors.reverse(); // the writer orders them itself
    const written = await writeSafetensors({ metadata: read.metadata as Record<string, string>, tensors });
    expect(written.length).toBe(original.length);
    expect(Buffer.from(written).equals(original)).toBe(true);
    expect(Number(new DataView(written.buffer).getBigUint64(0, true)) % 8).toBe(0);
  });

  it('refuses data of the wrong size and names used twice', async () => {
    const t = { name: 'a', dtype: 'F32' as const, shape: [2, 3], data: new Uint8Array(20) };
    await expect(writeSafetensors({ tensors: [t] })).rejects.toThrow(/tensor a: .* 24 bytes, but its data has 20/);
    await expect(writeSafetensors({ tensors: [{ ...t, data: new Uint8Array(24) }, { ...t, data: new Uint8Array(24) }] })).rejects.toThrow(/a is used twice/);
  });

  it('shards into N files and an index that the reader opens', async () => {
    const tensors = Array.from({ length: 7 }, (_, i) => ({
      name: `t${i}`,
      dtype: (['F32', 'BF16', 'I32'] as const)[i % 3]!,
      shape: [i + 1, 4],
      data: new Uint8Array((i + 1) * 4 * (i % 3 === 1 ? 2 : 4)).map((_, j) => i * 31 + j),
    }));
    const sharded = shardSafetensors(tensors, 3);
    expect(sharded.shards.map((s) => s.fileName)).toEqual(['model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors', 'model-00003-of-00003.safetensors']);
    expect(sharded.shards.every((s) => s.spec.tensors.length > 0)).toBe(true);
    const target = memoryTarget();
    expect(await writeShardedSafetensors(target, sharded)).toContain(INDEX_FILE);
    const index = JSON.parse(new TextDecoder().decode(target.files.get(INDEX_FILE)));
    expect(index.metadata.total_size).toBe(tensors.reduce((n, t) => n + t.data.length, 0));
    expect(Object.keys(index.weight_map)).toEqual(tensors.map((t) => t.name).sort());
    const model = await readSafetensorsIndex(bytesSource(target.files.get(INDEX_FILE)!, INDEX_FILE), async (name) => bytesSource(target.files.get(name)!, name));
    expect(model.files.length).toBe(3);
    for (const t of tensors) expect(await readSafetensorsBytes(model.tensor(t.name))).toEqual(t.data);
    expect(() => shardSafetensors(tensors, 8)).toThrow(/8 shards for 7 tensors/);
  });
});

describe('random Hugging Face checkpoints', () => {
  const root = mkdtempSync(join(tmpdir(), 'webshard-hf-writer-'));
  const opened: HfCheckpoint[] = [];
  let gguf: GGUFFile;

  async function write(name: string, options: RandomHfOptions): Promise<HfCheckpoint> {
    const dir = join(root, name);
    await writeRandomHfCheckpoint(dir, SHAPE, { seed: SEED, ...options });
    const checkpoint = await openHfCheckpoint(localFolder(dir));
    opened.push(checkpoint);
    return checkpoint;
  }

  /** The GGUF's f32 values of a tensor, in HF row order (llama's Q/K rows permuted; Qwen's GGUF Q/K are neox already). */
  async function ggufValues(hfName: string, family = 'llama'): Promise<Float32Array> {
    const info = gguf.tensor(hfToGgufName(hfName)!);
    const values = new Float32Array((await readTensorBytes(gguf, info)).slice().buffer);
    const headDim = SHAPE.dim / SHAPE.nHeads;
    return family === 'llama' && /\.(q|k)_proj\./.test(hfName) ? permuteRopeRows(values, info.shape[0]!, headDim, false) : values;
  }

  beforeAll(async () => {
    gguf = await readGGUF(bytesSource(randomLlamaGGUF(SHAPE, SEED), 'random.gguf'));
  });
  afterAll(async () => {
    for (const c of opened) await c.close();
    rmSync(root, { recursive: true, force: true });
  });

  it('F32, one file: config.json reads back, and every tensor is the random GGUF of the same shape and seed (Q/K in HF order)', async () => {
    const c = await write('f32', { dtype: 'F32' });
    expect(c.files.weights).toEqual(['model.safetensors']);
    expect(c.config).toMatchObject({ architecture: 'LlamaForCausalLM', dim: 64, nLayers: 2, nHeads: 4, nKvHeads: 2, ffnDim: 128, vocabSize: 512, eosTokenIds: [2], dtype: 'float32' });
    expect(c.tensors.tensors.length).toBe(gguf.tensors.length);
    for (const t of c.tensors.tensors) {
      expect(t.dtype).toBe('F32');
      expect(new Float32Array((await readSafetensorsBytes(t)).slice().buffer), t.name).toEqual(await ggufValues(t.name));
    }
  });

  it('BF16 in 3 shards (Qwen2, with biases): the index round trips, values are the F32 ones rounded', async () => {
    const c = await write('bf16', { dtype: 'BF16', shards: 3, architecture: 'qwen2' });
    expect([...c.files.weights].sort()).toEqual(['model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors', 'model-00003-of-00003.safetensors', 'model.safetensors.index.json']);
    expect(c.config).toMatchObject({ architecture: 'Qwen2ForCausalLM', attentionBias: true, dtype: 'bfloat16' });
    expect(c.tensors.files.length).toBe(3);
    const bias = c.tensors.tensor('model.layers.1.self_attn.k_proj.bias');
    expect(bias.shape).toEqual([32]);
    for (const name of ['model.embed_tokens.weight', 'model.layers.1.mlp.down_proj.weight', 'model.norm.weight', 'lm_head.weight']) {
      const t = c.tensors.tensor(name);
      expect(t.dtype).toBe('BF16');
      expect(await readSafetensorsBytes(t), name).toEqual(quantize(GGMLType.BF16, await ggufValues(name)));
    }
  });

  // Pairwise: method × group size × zero points × act-order × dtype × shards × family.
  const quantized: Array<[string, RandomHfOptions]> = [
    ['AWQ g32, one file', { quantization: { method: 'awq', groupSize: 32 } }],
    ['GPTQ g32 act-order sym, 2 shards, Qwen3', { quantization: { method: 'gptq', groupSize: 32, descAct: true }, shards: 2, architecture: 'qwen3' }],
    ['GPTQ g64 asym, BF16', { quantization: { method: 'gptq', groupSize: 64, sym: false }, dtype: 'BF16' }],
  ];
  it.each(quantized)('%s: each layer decodes to the codes quantized from the generated values', async (name, options) => {
    const c = await write(name.replace(/\W+/g, '-'), options);
    const q = c.config.quantization!;
    expect(q).toMatchObject({ method: options.quantization!.method, groupSize: options.quantization!.groupSize, descAct: options.quantization!.descAct ?? false });
    expect(c.tensors.tensor('model.embed_tokens.weight').dtype).toBe(options.dtype ?? 'F16');
    if (options.architecture === 'qwen3') expect(c.config.qkNorm).toBe(true);
    for (const module of ['model.layers.0.self_attn.q_proj', 'model.layers.1.mlp.down_proj']) {
      const layer = await readInt4Linear(c.tensors, module, q);
      const weight = int4ToQ4Zp(layer);
      expect(Boolean(weight.inputOrder)).toBe(options.quantization!.descAct === true);
      const decoded = dequantize(GGMLType.Q4_ZP, weight.bytes, weight.rows * weight.cols);
      // The generated values, quantized again here from the GGUF's copy of them.
      const values = await ggufValues(`${module}.weight`, c.config.family);
      const codes = quantizeInt4Codes(values, { method: q.method, inFeatures: weight.cols, outFeatures: weight.rows, groupSize: q.groupSize, zeroPoint: q.zeroPoint, ...(layer.gIdx ? { gIdx: layer.gIdx } : {}) });
      const groups = weight.cols / q.groupSize;
      let worst = 0;
      for (let o = 0; o < weight.rows; o++) {
        for (let t = 0; t < weight.cols; t++) {
          const c0 = weight.inputOrder ? weight.inputOrder[t]! : t; // the input column of Q4_ZP column t
          const group = layer.gIdx ? layer.gIdx[c0]! : Math.floor(c0 / q.groupSize);
          const scale = f16ToF32(codes.scales[group * weight.rows + o]!);
          const expected = Math.fround((codes.quants[o * weight.cols + c0]! - codes.zeros[o * groups + group]!) * scale);
          expect(decoded[o * weight.cols + t]).toBe(expected);
          worst = Math.max(worst, Math.abs(decoded[o * weight.cols + t]! - values[o * weight.cols + c0]!) / scale);
        }
      }
      // Round to nearest: within half a step of the value, plus what the scale's f16 rounding moves
      // the extreme value past the last code (a clamped asymmetric zero may add a step).
      expect(worst, module).toBeLessThanOrEqual(q.zeroPoint ? 1.5 : 0.51);
    }
  });

  it('writes a tokenizer.json that tokenizes as the GGUF vocabulary, or a given one', async () => {
    const vocab = randomLlamaVocab(SHAPE.vocabSize);
    const files = randomTokenizerJson(vocab);
    const fromJson = LlamaTokenizer.fromTokenizerJson(JSON.parse(files.json), JSON.parse(files.config), { vocabSize: SHAPE.vocabSize });
    const fromGguf = LlamaTokenizer.fromGGUFMetadata(gguf.metadata);
    for (const text of ['Once upon a time there was a little girl named Lily.', 'The dog, happy: "fun!" 42 ü€', '']) {
      expect(fromJson.encode(text), text).toEqual(fromGguf.encode(text));
    }
    const target = memoryTarget();
    await writeRandomHfCheckpoint(target, SHAPE, { tokenizer: { json: '{"given":1}' } });
    expect(new TextDecoder().decode(target.files.get('tokenizer.json'))).toBe('{"given":1}');
    expect(target.files.has('tokenizer_config.json')).toBe(false);
    expect(readHfConfig({ file: 'memory', config: JSON.parse(new TextDecoder().decode(target.files.get('config.json'))) }).vocabSize).toBe(512);
  });

  it('loadModel runs the F32 folder as the GGUF it equals: the same prompt ids and greedy tokens', async () => {
    const ggufPath = join(root, 'random.gguf');
    writeFileSync(ggufPath, randomLlamaGGUF(SHAPE, SEED));
    await write('f32-load', { dtype: 'F32' });
    const device = await testGpu();
    const run = async (path: string) => {
      const model = await loadModel(path, { device, contextLength: 64 });
      try {
        return await model.complete('Once upon a time', { temperature: 0, maxTokens: 12, ignoreEos: true });
      } finally {
        await model.dispose();
      }
    };
    const [fromGguf, fromFolder] = [await run(ggufPath), await run(join(root, 'f32-load'))];
    expect(fromFolder.promptIds).toEqual(fromGguf.promptIds);
    expect(fromFolder.ids).toEqual(fromGguf.ids);
    expect(fromGguf.ids.length).toBe(12);
  });

  // Group 128 end to end (the shared fixtures are all group 32): the loaded 4-bit folder against
  // a GGUF of its exactly dequantized weights (the test reference's dequantizer), in F32.
  it.each([
    ['AWQ g128', { quantization: { method: 'awq', groupSize: 128 } }],
    ['GPTQ g128 asym', { quantization: { method: 'gptq', groupSize: 128, sym: false } }],
    ['GPTQ g64 act-order sym, 2 shards', { quantization: { method: 'gptq', groupSize: 64, descAct: true }, shards: 2 }],
    ['GPTQ per-channel (group_size -1) asym', { quantization: { method: 'gptq', groupSize: -1, sym: false } }],
  ] as Array<[string, RandomHfOptions]>)('loadModel runs a %s folder as the F32 GGUF of its dequantized weights', async (name, options) => {
    const shape = { dim: 256, nLayers: 2, nHeads: 4, nKvHeads: 2, ffnDim: 512, vocabSize: 512 };
    const dir = join(root, name.replace(/\W+/g, '-'));
    await writeRandomHfCheckpoint(dir, shape, { seed: SEED, ...options });
    const c = await openHfCheckpoint(localFolder(dir));
    opened.push(c);
    const tensors = [];
    for (const t of c.tensors.tensors) {
      const module = t.name.slice(0, t.name.lastIndexOf('.'));
      const part = t.name.slice(module.length + 1);
      if (part !== 'weight' && part !== 'qweight') continue;
      const layer = part === 'qweight' ? await readInt4Linear(c.tensors, module, c.config.quantization!) : undefined;
      const values = layer ? dequantizeInt4Reference(layer) : dequantize(GGMLType.F16, await readSafetensorsBytes(t), t.shape.reduce((a, b) => a * b, 1));
      const inFeatures = layer ? layer.inFeatures : t.shape[t.shape.length - 1]!; // W is [out, in] row-major: a ggml [in, out]
      const ggufOrder = /\.(q|k)_proj$/.test(module) ? permuteRopeRows(values, inFeatures, c.config.headDim) : values;
      const ggufShape = t.shape.length === 1 ? [inFeatures] : [inFeatures, values.length / inFeatures];
      tensors.push({ name: hfToGgufName(`${module}.weight`)!, shape: ggufShape, type: GGMLType.F32, data: new Uint8Array(ggufOrder.buffer, ggufOrder.byteOffset, ggufOrder.byteLength) });
    }
    const ggufPath = `${dir}.gguf`;
    writeFileSync(ggufPath, writeGGUF({ metadata: randomLlamaSpec(shape, SEED).metadata, tensors }));
    const device = await testGpu();
    const run = async (path: string) => {
      const model = await loadModel(path, { device, contextLength: 64 });
      try {
        const tokens = [];
        for await (const t of model.generate('Once upon a time', { temperature: 0, maxTokens: 8, ignoreEos: true, logprobs: 3 })) tokens.push(t);
        return tokens;
      } finally {
        await model.dispose();
      }
    };
    const [folder, gguf] = [await run(dir), await run(ggufPath)];
    // The same weights summed in other orders by other kernels: the same tokens up to a near tie,
    // the top log-probabilities within 1e-4 (lavapipe: within 4e-7; the smallest margin 4.7e-4).
    let compared = 0;
    for (const [i, t] of gguf.entries()) {
      expect(folder[i]!.id, `token ${i}`).toBe(t.id);
      for (const [j, alt] of t.logprobs!.top.entries()) expect(Math.abs(folder[i]!.logprobs!.top[j]!.logprob - alt.logprob), `token ${i} top ${j}`).toBeLessThan(1e-4);
      compared++;
      // Past a tie closer than the tolerance allows (twice it), the texts may part.
      if (t.logprobs!.top[0]!.logprob - t.logprobs!.top[1]!.logprob < 2e-4) break;
    }
    expect(compared).toBeGreaterThanOrEqual(4);
  });

  it('tp = 2 on a BF16 folder: each shard reads about half of the weight files, as the planner counts', async () => {
    const shape = { dim: 256, nLayers: 2, nHeads: 4, nKvHeads: 2, ffnDim: 1024, vocabSize: 512 };
    const dir = join(root, 'bf16-tp2');
    const written = await writeRandomHfCheckpoint(dir, shape, { seed: SEED, dtype: 'BF16', shards: 2 });
    const model = await loadModel(dir, { tp: 2, contextLength: 64 });
    try {
      const reports = model.shards!.reports;
      reports.forEach((report, i) => {
        // Its planned byte ranges, plus the two files' headers (read when the folder is opened).
        expect(report.fileBytesRead - model.plan!.shards[i]!.fileBytesRead).toBeGreaterThanOrEqual(0);
        expect(report.fileBytesRead - model.plan!.shards[i]!.fileBytesRead).toBeLessThan(16 * 1024);
        // Norms and the embedding are whole on each; the layers and the output head are halves.
        expect(report.fileBytesRead / written.tensorBytes).toBeGreaterThan(0.45);
        expect(report.fileBytesRead / written.tensorBytes).toBeLessThan(0.65);
      });
    } finally {
      await model.dispose();
    }
  });

  it('refuses a group size that does not divide the layers', async () => {
    await expect(writeRandomHfCheckpoint(memoryTarget(), SHAPE, { quantization: { method: 'awq', groupSize: 96 } })).rejects.toThrow(/group size 96/);
  });
});

describe('the values written', () => {
  it('BF16 rounds to nearest, ties to even, as torch does', () => {
    expect(f32ToBf16(1)).toBe(0x3f80);
    expect(f32ToBf16(1 + 2 ** -8)).toBe(0x3f80); // halfway: to the even 0x3f80
    expect(f32ToBf16(1 + 3 * 2 ** -8)).toBe(0x3f82); // halfway: to the even 0x3f82
    expect(f32ToBf16(1 + 2 ** -8 + 2 ** -20)).toBe(0x3f81);
    expect(f32ToBf16(-2.5)).toBe(0xc020);
    expect(Number.isNaN(bf16ToF32(f32ToBf16(NaN)))).toBe(true);
    expect(f32ToBf16(Infinity)).toBe(0x7f80);
  });

  // randomWeightValues is the one generator (GGUF and HF writers): the same values whatever the chunking.
  it('do not depend on the chunk size', () => {
    const weight = { name: 'blk.0.ffn_up.weight', shape: [64, 10], isNorm: false };
    const whole = [...randomWeightValues(weight, 3, Infinity)];
    const rows = [...randomWeightValues(weight, 3, 64)];
    expect(whole.length).toBe(1);
    expect(rows.length).toBe(10);
    expect(Float32Array.from(rows.flatMap((r) => [...r]))).toEqual(whole[0]);
  });
});
