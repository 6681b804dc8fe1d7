// AWQ and GPTQ read as they are: the real checkpoints in ../shared/models decode exactly to the
// weights llama.cpp ran (their *-dequant-F32.gguf), through the plain reference and through the
// loader's Q4_ZP blocks; every matmul variant multiplies Q4_ZP weights (group sizes 32/64/128,
// symmetric and not, act-order through the engine's gather) like the f64 reference; tensor-parallel
// cuts respect groups, and act-order layers refuse input-feature cuts; whole models (in-memory
// Q4_ZP files, and the act-order checkpoint folder through loadModel) give llama.cpp's tokens.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { randomF32, testGpu, uploadTestWeight } from './helpers/gpu.ts';
import { greedyTokens } from './helpers/runner.ts';
import { modelPath, quantizedReference } from './helpers/models.ts';
import { dequantizeInt4Reference, permuteColumns, randomInt4Linear, type RandomInt4Options } from './reference/awq-gptq.ts';
import { matmulReference, quantizeActivationsInt8 } from './reference/matmul.ts';
import { permuteRopeRows } from './reference/hf-rope.ts';
import { checkInt4Split, groupSizeOf, int4ToQ4Zp, QuantizedSplitError, readInt4Linear, type Int4Linear } from '../src/model/awq-gptq.ts';
import { ModelFormatError, UnsupportedModelError } from '../src/model/errors.ts';
import { GGMLType } from '../src/model/ggml-type.ts';
import { readGGUF, readTensorBytes, type GGUFFile } from '../src/model/gguf.ts';
import { hfToGgufName, readHfConfig, type HfModelConfig } from '../src/model/hf-config.ts';
import { dequantize } from '../src/model/quant.ts';
import { readSafetensorsBytes, readSafetensorsModel, type SafetensorsModel } from '../src/model/safetensors.ts';
import { bytesSource, fileSource } from '../src/model/source.ts';
import { llamaConfig, type LlamaConfig } from '../src/model/config.ts';
import { LlamaRunner } from '../src/engine/runner.ts';
import { kvGeometry } from '../src/engine/kv-cache.ts';
import { wholeModelView } from '../src/engine/shard-view.ts';
import { viewFootprint, ShardPlanError } from '../src/engine/footprint.ts';
import { planShards } from '../src/sharding/plan.ts';
import { planCandidates } from '../src/sharding/choose.ts';
import { readF32, runOps, storageBuffer } from '../src/gpu/kernel.ts';
import { matmulOps, type MatmulVariant } from '../src/shaders/matmul.ts';
import { attachInputOrder, plannedUploads } from '../src/engine/weights.ts';
import { int8DecodableTypes } from '../src/shaders/quant-wgsl.ts';
import { loadModel } from '../src/api/model.ts';
import { GGUFValueType, type GGUFValue } from '../src/model/gguf.ts';
import { writeGGUF, type GGUFTypedValue } from '../src/model/gguf-writer.ts';


const VARIANTS = ['awq-tiny/awq-g32', 'gptq-tiny/gptq-g32', 'gptq-tiny/gptq-g32-actorder'] as const;
const LINEAR = ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj', 'mlp.gate_proj', 'mlp.up_proj', 'mlp.down_proj'];

interface Checkpoint {
  folder: string;
  st: SafetensorsModel;
  config: HfModelConfig;
  gguf: GGUFFile;
}

/** A linear layer's packed tensors, as the loader will read them. */
function linear(c: Checkpoint, layer: number, module: string): Promise<Int4Linear> {
  return readInt4Linear(c.st, `model.layers.${layer}.${module}`, c.config.quantization!);
}

/** The GGUF's F32 weight in HF row order (llama.cpp's converter permutes Q/K rows for interleaved RoPE). */
async function ggufWeight(c: Checkpoint, hfName: string): Promise<Float32Array> {
  const t = c.gguf.tensor(hfToGgufName(hfName)!);
  const w = dequantize(GGMLType.F32, await readTensorBytes(c.gguf, t), t.shape.reduce((a, b) => a * b, 1));
  const rope = hfName.includes('q_proj') || hfName.includes('k_proj');
  return rope ? permuteRopeRows(w, t.shape[0]!, c.config.headDim, false) : w;
}

/** Q4_ZP rows dequantized, columns put back in input order. */
function q4zpToInputOrder(l: Int4Linear): Float32Array {
  const zp = int4ToQ4Zp(l);
  const w = dequantize(GGMLType.Q4_ZP, zp.bytes, zp.rows * zp.cols);
  if (!zp.inputOrder) return w;
  const out = new Float32Array(w.length);
  for (let r = 0; r < zp.rows; r++) for (let t = 0; t < zp.cols; t++) out[r * zp.cols + zp.inputOrder[t]!] = w[r * zp.cols + t]!;
  return out;
}

function expectSameBits(a: Float32Array, b: Float32Array, what: string): void {
  expect(a.length, what).toBe(b.length);
  const [x, y] = [new Uint32Array(a.buffer, a.byteOffset, a.length), new Uint32Array(b.buffer, b.byteOffset, b.length)];
  let differ = 0;
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i] && !(a[i] === 0 && b[i] === 0)) differ++;
  expect(differ, `${what}: values that differ`).toBe(0);
}

const checkpoints = new Map<string, Checkpoint>();
// One device for the whole file (opened here, at file level, so it outlives each describe).
const device = testGpu();

beforeAll(async () => {
  for (const folder of VARIANTS) {
    const json = (file: string) => JSON.parse(readFileSync(modelPath(`${folder}/${file}`), 'utf8')) as unknown;
    const config = readHfConfig({
      file: folder,
      config: json('config.json'),
      generationConfig: json('generation_config.json'),
      ...(folder.startsWith('gptq') ? { quantizeConfig: json('quantize_config.json') } : {}),
    });
    const st = await readSafetensorsModel(await fileSource(modelPath(`${folder}/model.safetensors`)));
    const gguf = await readGGUF(await fileSource(modelPath(`${folder}-dequant-F32.gguf`)));
    checkpoints.set(folder, { folder, st, config, gguf });
  }
});

afterAll(async () => {
  for (const c of checkpoints.values()) {
    await c.st.files[0]!.source.close();
    await c.gguf.source.close();
  }
});

describe('the real AWQ and GPTQ checkpoints', () => {
  it('read their quantization from config.json', () => {
    expect(checkpoints.get('awq-tiny/awq-g32')!.config.quantization).toMatchObject({ method: 'awq', bits: 4, groupSize: 32, zeroPoint: true, descAct: false });
    expect(checkpoints.get('gptq-tiny/gptq-g32')!.config.quantization).toMatchObject({ method: 'gptq', groupSize: 32, zeroPoint: false, descAct: false, checkpointFormat: 'gptq' });
    expect(checkpoints.get('gptq-tiny/gptq-g32-actorder')!.config.quantization).toMatchObject({ method: 'gptq', descAct: true, lmHead: false });
  });

  it.each(VARIANTS)('%s: every layer decodes exactly to the dequantized GGUF, by the reference and through Q4_ZP', async (folder) => {
    const c = checkpoints.get(folder)!;
    let permuted = 0;
    for (let layer = 0; layer < c.config.nLayers; layer++) {
      for (const module of LINEAR) {
        const l = await linear(c, layer, module);
        const expected = await ggufWeight(c, `model.layers.${layer}.${module}.weight`);
        expectSameBits(dequantizeInt4Reference(l), expected, `${l.name} (reference)`);
        expectSameBits(q4zpToInputOrder(l), expected, `${l.name} (Q4_ZP)`);
        if (int4ToQ4Zp(l).inputOrder) permuted++;
      }
    }
    // Act-order is really exercised: every layer of that checkpoint has a permuted g_idx.
    expect(permuted).toBe(folder.endsWith('actorder') ? 7 * c.config.nLayers : 0);
  });

  it.each(VARIANTS)('%s: the F16 tensors (embeddings, norms, lm_head) equal the GGUF', async (folder) => {
    const c = checkpoints.get(folder)!;
    const f16 = c.st.tensors.filter((t) => t.dtype === 'F16' && !t.name.endsWith('.scales'));
    expect(f16.length).toBe(11);
    for (const t of f16) {
      const count = t.shape.reduce((a, b) => a * b, 1);
      expectSameBits(dequantize(GGMLType.F16, await readSafetensorsBytes(t), count), await ggufWeight(c, t.name), t.name);
    }
  });
});

describe('random AWQ / GPTQ layers of every supported kind', () => {
  // Pairwise over method × group size × zero points × act-order × zero format.
  const kinds: RandomInt4Options[] = [
    { method: 'awq', inFeatures: 96, outFeatures: 24, groupSize: 32, asymmetric: true, seed: 1 },
    { method: 'awq', inFeatures: 256, outFeatures: 40, groupSize: 128, asymmetric: false, seed: 2 },
    { method: 'gptq', inFeatures: 128, outFeatures: 16, groupSize: 64, asymmetric: true, seed: 3 },
    { method: 'gptq', inFeatures: 256, outFeatures: 24, groupSize: 128, asymmetric: true, actOrder: true, checkpointFormat: 'gptq_v2', seed: 4 },
    { method: 'gptq', inFeatures: 192, outFeatures: 8, groupSize: 64, asymmetric: false, actOrder: true, seed: 5 },
    { method: 'gptq', inFeatures: 96, outFeatures: 40, groupSize: 32, asymmetric: true, checkpointFormat: 'gptq_v2', seed: 6 },
    // group_size -1 (one group over all inputs), as groupSizeOf reads it
    { method: 'gptq', inFeatures: 96, outFeatures: 16, groupSize: groupSizeOf({ groupSize: -1 }, 96), asymmetric: true, seed: 7 },
  ];
  const name = (k: RandomInt4Options) =>
    `${k.method} g${k.groupSize} ${k.asymmetric ? 'asym' : 'sym'}${k.actOrder ? ' act-order' : ''}${k.checkpointFormat === 'gptq_v2' ? ' v2' : ''} ${k.outFeatures}×${k.inFeatures}`;

  it.each(kinds.map((k) => [name(k), k] as const))('%s: Q4_ZP decodes as the reference', (_name, kind) => {
    const l = randomInt4Linear(kind);
    expectSameBits(q4zpToInputOrder(l), dequantizeInt4Reference(l), name(kind));
    expect(Boolean(int4ToQ4Zp(l).inputOrder)).toBe(Boolean(kind.actOrder));
  });

  it.each(kinds.map((k) => [name(k), k] as const))('%s: a region (a shard\'s rows, or its blocks of columns) is that part of the whole', (_name, kind) => {
    const l = randomInt4Linear(kind);
    const whole = int4ToQ4Zp(l);
    const [n, blocks] = [l.outFeatures, l.inFeatures / 32];
    const rowBytes = blocks * 20;
    // Rows cut off word boundaries (AWQ packs 8 outputs a word), and blocks cut off group boundaries.
    const regions: Array<{ rows: [number, number]; blocks: [number, number] }> = [
      { rows: [3, n - 2], blocks: [0, blocks] },
      { rows: [0, n], blocks: [1, blocks] },
      { rows: [1, Math.max(2, n >> 1)], blocks: [0, 1] },
    ];
    for (const region of regions) {
      const part = int4ToQ4Zp(l, region);
      const expected = new Uint8Array(part.bytes.length);
      const width = (region.blocks[1] - region.blocks[0]) * 20;
      for (let o = region.rows[0]; o < region.rows[1]; o++) {
        const from = o * rowBytes + region.blocks[0] * 20;
        expected.set(whole.bytes.subarray(from, from + width), (o - region.rows[0]) * width);
      }
      expect([part.rows, part.cols]).toEqual([region.rows[1] - region.rows[0], width / 20 * 32]);
      expect(part.bytes, JSON.stringify(region)).toEqual(expected);
    }
    expect(() => int4ToQ4Zp(l, { rows: [0, n + 1], blocks: [0, blocks] })).toThrow(RangeError);
  });

  it('refuses bad layers with the tensor and the numbers', () => {
    const good = randomInt4Linear(kinds[2]!);
    const bad = (patch: Partial<Int4Linear>) => () => int4ToQ4Zp({ ...good, ...patch });
    expect(bad({ scales: good.scales.subarray(1) })).toThrow(/scales: holds 31 values, but \[2, 16\] needs 32/);
    expect(bad({ groupSize: 16 })).toThrow(/group size 16/);
    expect(bad({ gIdx: new Int32Array(128) })).toThrow(/g_idx: group 0 has 128 columns, not the group size 64/);
    expect(bad({ gIdx: new Int32Array(128).fill(5) })).toThrow(/g_idx: column 0 is in group 5, outside 0..1/);
    expect(bad({ checkpointFormat: 'marlin' })).toThrow(/checkpoint_format "marlin" is not supported/);
    expect(bad({ outFeatures: 12 })).toThrow(ModelFormatError);
  });

  it('refuses packed tensors of the wrong dtype, naming the tensor', async () => {
    const c = checkpoints.get('gptq-tiny/gptq-g32')!;
    const asAwq = { ...c.config.quantization!, method: 'awq' as const };
    // A GPTQ checkpoint read as AWQ has the right dtypes but other shapes.
    await expect(readInt4Linear(c.st, 'model.layers.0.mlp.up_proj', asAwq)).rejects.toThrow(
      /up_proj.scales has 256 output features, but model.layers.0.mlp.up_proj.qweight \[16, 256\] read as AWQ has 2048/,
    );
    const f16Weight = { tensor: (name: string) => ({ ...c.st.tensor(name), dtype: 'F16' as const }), hasTensor: c.st.hasTensor };
    await expect(readInt4Linear(f16Weight, 'model.layers.0.mlp.up_proj', c.config.quantization!)).rejects.toThrow(
      /model.layers.0.mlp.up_proj.qweight is F16 \[\d+, \d+\], but GPTQ stores qweight as 2-D I32/,
    );
  });
});

describe('Q4_ZP on the GPU', async () => {
  const gpu = await device;
  const variants: Array<Exclude<MatmulVariant, 'auto'>> = ['matvec', 'tiled', 'tiled-large', 'matvec-int8', 'tiled-int8', 'int8'];
  if (gpu.features.subgroups) variants.push('matvec-subgroup');

  it('is a type the int8 kernels read', () => {
    expect(int8DecodableTypes()).toContain(GGMLType.Q4_ZP);
  });

  // Each variant meets a different layer kind and token count (pairwise, not the full product);
  // act-order layers (a real one, a random one) take x in input order and gather it themselves
  // (matmulOps with the weight's input order, as the engine runs them).
  const cases: Array<{ variant: Exclude<MatmulVariant, 'auto'>; layer: () => Promise<Int4Linear>; nTokens: number }> = [];
  const randomKinds: RandomInt4Options[] = [
    { method: 'awq', inFeatures: 256, outFeatures: 40, groupSize: 128, asymmetric: true, seed: 11 },
    { method: 'gptq', inFeatures: 192, outFeatures: 24, groupSize: 64, asymmetric: true, actOrder: true, seed: 12 },
    { method: 'gptq', inFeatures: 96, outFeatures: 72, groupSize: 32, asymmetric: false, seed: 13 },
  ];
  const real = (folder: (typeof VARIANTS)[number], module: string) => () => linear(checkpoints.get(folder)!, 1, module);
  const layers = [
    real('awq-tiny/awq-g32', 'mlp.down_proj'),
    real('gptq-tiny/gptq-g32-actorder', 'self_attn.k_proj'),
    ...randomKinds.map((k) => async () => randomInt4Linear(k)),
  ];
  // Two cases per variant (lavapipe compiles each kernel slowly), together every layer kind thrice.
  for (const [i, variant] of variants.entries()) {
    for (const j of [0, 1]) {
      const nTokens = variant.startsWith('matvec') ? [1, 3][j]! : [37, 70][j]!;
      cases.push({ variant, layer: layers[(2 * i + j) % layers.length]!, nTokens });
    }
  }

  it.each(variants)('%s matches the f64 reference', async (variant) => {
    for (const c of cases.filter((c) => c.variant === variant)) {
      const l = await c.layer();
      const zp = int4ToQ4Zp(l);
      const x = randomF32(c.nTokens * zp.cols, zp.rows + zp.cols + c.nTokens);
      // The int8 kernels quantize x per block of 32 of the weight's columns, i.e. in group order.
      const int8 = variant.endsWith('int8');
      const xInt8 = () => permuteBack(quantizeActivationsInt8(permuteColumns(x, zp.cols, zp.inputOrder)), zp.cols, zp.inputOrder);
      const ref = matmulReference(dequantizeInt4Reference(l), zp.rows, zp.cols, int8 ? xInt8() : x, c.nTokens);
      const weight = await uploadTestWeight(gpu, l.name, GGMLType.Q4_ZP, zp.rows, zp.cols, zp.bytes);
      const order = zp.inputOrder ? attachInputOrder(gpu, weight, zp.inputOrder) : undefined;
      const xBuf = storageBuffer(gpu.device, 'x', x);
      const yBuf = storageBuffer(gpu.device, 'y', new Float32Array(c.nTokens * zp.rows).fill(NaN));
      const orderedInput = storageBuffer(gpu.device, 'ordered x', c.nTokens * zp.cols * 4);
      const ops = matmulOps(gpu, weight, xBuf, yBuf, c.nTokens, { variant, orderedInput });
      expect(ops.length, 'a gather, then the product').toBe(order ? 2 : 1);
      if (order) expect(() => matmulOps(gpu, weight, xBuf, yBuf, c.nTokens, { variant })).toThrow(/act-order input needs an orderedInput buffer of \d+ × \d+ f32/);
      runOps(gpu.device, ops);
      const y = await readF32(gpu.device, yBuf, c.nTokens * zp.rows);
      for (const b of [weight[0]!.buffer, xBuf, yBuf, orderedInput, ...(order ? [order] : [])]) b.destroy();
      for (let i = 0; i < y.length; i++) {
        expect(Math.abs(y[i]! - ref.y[i]!), `${l.name} ${zp.rows}×${zp.cols}, ${c.nTokens} tokens, output ${i}`).toBeLessThan(1e-4 * ref.magnitude[i]! + 1e-30);
      }
    }
  });

  /** Inverse of permuteColumns: back to input order (the reference multiplies in input order). */
  function permuteBack(x: Float32Array, cols: number, order: Int32Array | undefined): Float32Array {
    if (!order) return x;
    const out = new Float32Array(x.length);
    for (let r = 0; r < x.length / cols; r++) for (let t = 0; t < cols; t++) out[r * cols + order[t]!] = x[r * cols + t]!;
    return out;
  }
});

describe('tensor-parallel cuts', () => {
  const layer = { method: 'gptq', name: 'model.layers.0.mlp.down_proj', inFeatures: 256, outFeatures: 128, groupSize: 64 } as const;

  it('allow cuts on packing words (rows) and whole groups (columns)', () => {
    expect(() => checkInt4Split(layer, 'rows', [0, 64, 128])).not.toThrow();
    expect(() => checkInt4Split(layer, 'rows', [8, 40])).not.toThrow();
    expect(() => checkInt4Split(layer, 'columns', [0, 128, 256])).not.toThrow();
  });

  it('refuse other cuts with the numbers', () => {
    expect(() => checkInt4Split(layer, 'rows', [0, 60, 128])).toThrow(QuantizedSplitError);
    expect(() => checkInt4Split(layer, 'rows', [60])).toThrow(/down_proj: cannot cut the rows at 60: rows cuts must be multiples of 8 \(GPTQ packs 8 output features/);
    expect(() => checkInt4Split(layer, 'columns', [96])).toThrow(/cannot cut the columns at 96: columns cuts must be multiples of 64 \(each group of 64 input features/);
    expect(() => checkInt4Split(layer, 'columns', [320])).toThrow(/at 320.*inside 0..256/);
  });
});

// ---------------------------------------------------------------------------------------------
// The whole forward pass on Q4_ZP weights, against llama.cpp

/**
 * The engine on Q4_ZP weights apart from the Hugging Face loader (src/model/hf-checkpoint.ts):
 * the dequantized GGUF's metadata, norms and embeddings, with every linear weight replaced by the
 * checkpoint's Q4_ZP rows (Q/K rows moved into GGUF's interleaved-RoPE order, since this path
 * runs GGUF's RoPE: a row permutation, which leaves an act-order layer's column order as it is).
 * A GGUF file has no place for act-order's input orders: they come back by tensor name, for
 * `withInputOrders`.
 */
async function q4zpGguf(c: Checkpoint): Promise<{ bytes: Uint8Array; inputOrders: Map<string, Int32Array> }> {
  const metadata: Array<[string, GGUFTypedValue]> = [];
  for (const [key, value] of c.gguf.metadata) metadata.push([key, typedValue(value, c.gguf.metadataTypes.get(key)!)]);
  const replaced = new Map<string, { bytes: Uint8Array; rows: number; cols: number }>();
  const inputOrders = new Map<string, Int32Array>();
  for (let layer = 0; layer < c.config.nLayers; layer++) {
    for (const module of LINEAR) {
      const zp = int4ToQ4Zp(await linear(c, layer, module));
      const rope = module.endsWith('q_proj') || module.endsWith('k_proj');
      const bytes = rope ? permuteRopeRows(zp.bytes, zp.bytes.length / zp.rows, c.config.headDim) : zp.bytes;
      const name = hfToGgufName(`model.layers.${layer}.${module}.weight`)!;
      replaced.set(name, { bytes, rows: zp.rows, cols: zp.cols });
      if (zp.inputOrder) inputOrders.set(name, zp.inputOrder);
    }
  }
  const tensors = [];
  for (const t of c.gguf.tensors) {
    const q = replaced.get(t.name);
    tensors.push(q ? { name: t.name, shape: [q.cols, q.rows], type: GGMLType.Q4_ZP, data: q.bytes } : { name: t.name, shape: t.shape, type: t.type, data: await readTensorBytes(c.gguf, t) });
  }
  expect(tensors.filter((t) => t.type === GGMLType.Q4_ZP)).toHaveLength(replaced.size);
  return { bytes: writeGGUF({ metadata, tensors }), inputOrders };
}

/** The written file parsed, with the act-order input orders on its tensor table (as the Hugging Face loader gives them). */
async function withInputOrders({ bytes, inputOrders }: Awaited<ReturnType<typeof q4zpGguf>>): Promise<GGUFFile> {
  const file = await readGGUF(bytesSource(bytes, 'act-order Q4_ZP'));
  for (const t of file.tensors) {
    const order = inputOrders.get(t.name);
    if (order) t.inputOrder = order;
  }
  return file;
}

/** A metadata value as the writer takes it (the dequantized GGUFs hold scalars and flat arrays). */
function typedValue(value: GGUFValue, type: number): GGUFTypedValue {
  const names: Record<number, string> = { 0: 'u8', 1: 'i8', 2: 'u16', 3: 'i16', 4: 'u32', 5: 'i32', 6: 'f32', 7: 'bool', 8: 'string', 10: 'u64', 11: 'i64', 12: 'f64' };
  if (type !== GGUFValueType.ARRAY) return { type: names[type], value } as GGUFTypedValue;
  const element = value instanceof Float32Array ? 'f32' : value instanceof Int32Array ? 'i32' : value instanceof Uint32Array ? 'u32' : Array.isArray(value) && typeof value[0] === 'string' ? 'string' : undefined;
  if (!element) throw new Error(`no writer type for ${Object.prototype.toString.call(value)}`);
  return { type: 'array', elementType: element, value } as GGUFTypedValue;
}

const quantizedCases = quantizedReference().generation_cases;

/** The three prompts of a model with the longest stable prefixes (its cases differ only in their prompt). */
const longestCases = (folder: string) =>
  quantizedCases
    .filter((c) => c.model === folder)
    .sort((a, b) => b.stable_prefix_len['0.01'] - a.stable_prefix_len['0.01'])
    .slice(0, 3);

// Every act-order case through loadModel on one device is in test/hf-load.test.ts, with the other checkpoints.
describe('loadModel on the act-order checkpoint folder (gptq-tiny/gptq-g32-actorder)', () => {
  const folder = 'gptq-tiny/gptq-g32-actorder';

  it('runs under pipeline parallelism (pp=2: each stage gathers its own layers\' inputs)', async () => {
    const c = longestCases(folder)[0]!;
    const stable = c.stable_prefix_len['0.01'];
    const piped = await loadModel(modelPath(folder), { pp: 2, contextLength: 128 });
    try {
      expect(piped.plan!.shards.map((s) => s.view.layers)).toEqual([{ start: 0, end: 2 }, { start: 2, end: 4 }]);
      const result = await piped.complete(c.prompt_ids, { temperature: 0, maxTokens: stable, ignoreEos: true });
      expect(result.ids).toEqual(c.generated_ids.slice(0, stable));
    } finally {
      await piped.dispose();
    }
  });

  it('is refused under tensor parallelism before any worker starts, naming the layer and the fix', async () => {
    await expect(loadModel(modelPath(folder), { tp: 2, contextLength: 128 })).rejects.toThrow(/tp=2 cannot split stage 0.*attn_output.weight is a GPTQ act-order \(desc_act\) layer/);
  });
});

describe('generation on act-order Q4_ZP weights (gptq-tiny/gptq-g32-actorder): each layer gathers its input', () => {
  const folder = 'gptq-tiny/gptq-g32-actorder';
  let file: GGUFFile;
  let config: LlamaConfig;
  let runner: LlamaRunner;
  beforeAll(async () => {
    const written = await q4zpGguf(checkpoints.get(folder)!);
    expect(written.inputOrders.size).toBe(LINEAR.length * checkpoints.get(folder)!.config.nLayers);
    file = await withInputOrders(written);
    config = llamaConfig(file);
    // A parsed file with input orders goes in below loadModel (which reads its file itself): the runner.
    runner = await LlamaRunner.load(await device, file, config, wholeModelView(config), { geometry: kvGeometry(128), maxBatchTokens: 128 });
  });
  afterAll(() => runner?.dispose());

  it('uploads every layer weight with its order, Q, K and V stacked only where their orders are equal', () => {
    for (const [l, layer] of runner.weights.layers.entries()) {
      const matrices = layer.qkv ? [layer.qkv] : [layer.query, layer.key, layer.value];
      for (const m of [...matrices, layer.output, layer.gate, layer.up, layer.down]) expect(m[0]!.inputOrder, `layer ${l} ${m[0]!.label}`).toBeDefined();
      const order = (m: string) => file.tensor(`blk.${l}.attn_${m}.weight`).inputOrder!.join();
      expect(Boolean(layer.qkv), `layer ${l}`).toBe(order('q') === order('k') && order('k') === order('v'));
    }
  });

  // The third longest case (loadModel on the folder runs the first two).
  it.each(longestCases(folder).slice(2).map((c) => [c.name, c] as const))('%s: llama.cpp\'s tokens up to the stable prefix', async (_name, c) => {
    const stable = c.stable_prefix_len['0.01'];
    expect(stable).toBeGreaterThanOrEqual(32);
    expect(await greedyTokens(runner, c.prompt_ids, stable)).toEqual(c.generated_ids.slice(0, stable));
  });

  it('counts the order buffers and the gather scratch in the footprint', () => {
    const geometry = kvGeometry(128);
    const device = { name: 'test', maxBufferSize: 2 ** 30, maxStorageBufferBindingSize: 2 ** 30 };
    const owner = { who: 'test', rank: 0, shards: 1 };
    const withOrders = viewFootprint(file, config, wholeModelView(config), device, { geometry, maxBatchTokens: 128, contextLength: 128 }, owner);
    const plain = { ...file, tensors: file.tensors.map(({ inputOrder: _, ...t }) => t), tensor: (name: string) => ({ ...file.tensor(name), inputOrder: undefined }) };
    const without = viewFootprint(plain, config, wholeModelView(config), device, { geometry, maxBatchTokens: 128, contextLength: 128 }, owner);
    // One u32 per input column of every weight (q, k, v, o, gate, up: dim; down: ffnDim) ...
    const layerOrders = (6 * config.dim + config.ffnDim) * 4;
    expect(withOrders.bytes.weights - without.bytes.weights).toBe(config.nLayers * layerOrders);
    expect(runner.weights.gpuBytes - without.bytes.weights).toBe(config.nLayers * layerOrders);
    // ... and a scratch as wide as the widest input (ffn_down's) for a whole step.
    expect(withOrders.bytes.activations - without.bytes.activations).toBe(128 * config.ffnDim * 4 - 16);
  });

  it('refuses a tensor-parallel cut of act-order input features, naming the tensor and the fix', () => {
    const devices = [0, 1].map((i) => ({ name: `gpu${i}`, maxBufferSize: 2 ** 30, maxStorageBufferBindingSize: 2 ** 30 }));
    const options = { contextLength: 128, maxBatchTokens: 64, devices };
    // The planner (and so split: 'auto', which sets such splits aside) ...
    expect(() => planShards(file, config, { ...options, tp: 2, pp: 1 })).toThrow(ShardPlanError);
    expect(() => planShards(file, config, { ...options, tp: 2, pp: 1 })).toThrow(
      /tp=2 cannot split stage 0 \(layers 0-\d+\): blk.0.attn_output.weight is a GPTQ act-order \(desc_act\) layer.*Use tp=1 \(pipeline parallelism.*without desc_act/,
    );
    expect(planShards(file, config, { ...options, tp: 1, pp: 2 }).shards).toHaveLength(2);
    // split: 'auto' over two devices keeps only pipeline parallelism.
    expect(planCandidates(file, config, options).map((c) => [c.tp, c.pp, c.error === undefined])).toEqual([
      [2, 1, false],
      [1, 2, true],
    ]);
    // ... and the loader, for a view cut by hand.
    const half = { ...wholeModelView(config), ffn: { start: 0, end: config.ffnDim / 2 }, heads: { start: 0, end: config.nHeads }, kvHeads: { start: 0, end: config.nKvHeads } };
    expect(() => plannedUploads(file, config, half)).toThrow(UnsupportedModelError);
    expect(() => plannedUploads(file, config, half)).toThrow(/blk.0.ffn_down.weight is a GPTQ act-order/);
  });

  it('stacks Q, K and V with one order where their orders are equal (as a real checkpoint\'s may be)', () => {
    const [q, k, v] = ['q', 'k', 'v'].map((m) => file.tensor(`blk.0.attn_${m}.weight`));
    const orders = [k!.inputOrder, v!.inputOrder];
    try {
      [k!.inputOrder, v!.inputOrder] = [q!.inputOrder!.slice(), q!.inputOrder!.slice()];
      const qkv = plannedUploads(file, config, wholeModelView(config)).filter((u) => u.kind === 'matrix' && u.name.startsWith('blk.0.attn_'));
      expect(qkv.map((u) => u.name)).toEqual(['blk.0.attn_qkv', 'blk.0.attn_output.weight']);
      expect(qkv[0]!.kind === 'matrix' && qkv[0]!.inputOrder).toEqual(q!.inputOrder);
    } finally {
      [k!.inputOrder, v!.inputOrder] = orders;
    }
  });

  it('refuses an input order that is not a permutation of the columns', () => {
    const t = file.tensor('blk.1.ffn_up.weight');
    const good = t.inputOrder!;
    try {
      t.inputOrder = good.slice(1);
      expect(() => plannedUploads(file, config, wholeModelView(config))).toThrow(/blk.1.ffn_up.weight: its input order is not a permutation of its \d+ columns \(\d+ entries\)/);
      t.inputOrder = good.map((c, i) => (i === 5 ? good[4]! : c));
      expect(() => plannedUploads(file, config, wholeModelView(config))).toThrow(ModelFormatError);
      expect(() => plannedUploads(file, config, wholeModelView(config))).toThrow(/entry 5 is \d+/);
    } finally {
      t.inputOrder = good;
    }
  });
});
