// safetensors headers and Hugging Face configs: corrupt and hostile files fail with a
// ModelFormatError naming the file, the tensor and the fix; the real checkpoints in
// ../shared/models parse, and their float tensors equal the GGUF conversions of the same models.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, readFileSync } from 'node:fs';
import { modelPath } from './helpers/models.ts';
import { permuteRopeRows } from './reference/hf-rope.ts';
import { ModelFormatError, UnsupportedModelError } from '../src/model/errors.ts';
import { GGMLType } from '../src/model/ggml-type.ts';
import { readGGUF, readTensorBytes, type GGUFFile } from '../src/model/gguf.ts';
import { llamaConfig } from '../src/model/config.ts';
import { hfToGgufName, readHfConfig } from '../src/model/hf-config.ts';
import { dequantize } from '../src/model/quant.ts';
import {
  ggufView,
  MAX_SAFETENSORS_HEADER_BYTES,
  readSafetensors,
  readSafetensorsBytes,
  readSafetensorsIndex,
  readSafetensorsModel,
  type SafetensorsModel,
} from '../src/model/safetensors.ts';
import { bytesSource, fileSource, type ByteSource } from '../src/model/source.ts';

// ---------------------------------------------------------------------------------------------
// Files made in memory

/** A safetensors file: the 8-byte length, the JSON header (as given), the data. */
function safetensorsBytes(header: unknown, data: Uint8Array = new Uint8Array(0), headerText = JSON.stringify(header)): Uint8Array {
  const json = new TextEncoder().encode(headerText);
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

const goodHeader = {
  __metadata__: { format: 'pt' },
  'model.norm.weight': { dtype: 'F32', shape: [4], data_offsets: [0, 16] },
  'lm_head.weight': { dtype: 'BF16', shape: [2, 4], data_offsets: [16, 32] },
};

async function readError(bytes: Uint8Array, name = 'bad.safetensors'): Promise<ModelFormatError> {
  const error = await readSafetensors(bytesSource(bytes, name)).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ModelFormatError);
  const e = error as ModelFormatError;
  expect(e.file).toBe(name);
  expect(e.fix.length).toBeGreaterThan(10);
  return e;
}

describe('malformed safetensors', () => {
  it('reads a good file, header only', async () => {
    const source = bytesSource(safetensorsBytes(goodHeader, new Uint8Array(32)), 'good.safetensors');
    const file = await readSafetensors(source);
    expect(file.metadata).toEqual({ format: 'pt' });
    expect(file.tensors.map((t) => [t.name, t.dtype, t.shape, t.offset - file.dataOffset, t.byteLength])).toEqual([
      ['model.norm.weight', 'F32', [4], 0, 16],
      ['lm_head.weight', 'BF16', [2, 4], 16, 16],
    ]);
    expect(source.bytesRead).toBe(file.dataOffset); // nothing past the header
    expect(ggufView(file.tensor('lm_head.weight'), 'output.weight')).toMatchObject({ name: 'output.weight', type: GGMLType.BF16, shape: [4, 2], byteLength: 16 });
  });

  it('truncated below the header length', async () => {
    const e = await readError(new Uint8Array(5));
    expect(e.message).toMatch(/5 bytes, shorter than the 8-byte header length/);
  });

  it('an absurd header length', async () => {
    const bytes = safetensorsBytes(goodHeader, new Uint8Array(32));
    new DataView(bytes.buffer).setBigUint64(0, 1n << 62n, true);
    const e = await readError(bytes);
    expect(e.message).toMatch(new RegExp(`header length is ${1n << 62n} bytes, over the ${MAX_SAFETENSORS_HEADER_BYTES}-byte maximum`));
  });

  it('a header length past the end of the file', async () => {
    const bytes = safetensorsBytes(goodHeader, new Uint8Array(32));
    new DataView(bytes.buffer).setBigUint64(0, BigInt(bytes.length), true);
    expect((await readError(bytes)).message).toMatch(/past the end of the \d+-byte file/);
  });

  it('a header that is not JSON, or not an object', async () => {
    expect((await readError(safetensorsBytes(null, undefined, '{"a": [1, 2'))).message).toMatch(/not valid UTF-8 JSON/);
    expect((await readError(safetensorsBytes([1, 2]))).message).toMatch(/not a JSON object/);
    const invalidUtf8 = safetensorsBytes(null, undefined, '{}  ');
    invalidUtf8[10] = 0xff;
    expect((await readError(invalidUtf8)).message).toMatch(/not valid UTF-8 JSON/);
  });

  it('a truncated data section', async () => {
    const e = await readError(safetensorsBytes(goodHeader, new Uint8Array(20)));
    expect(e.tensor).toBe('lm_head.weight');
    expect(e.message).toMatch(/data_offsets \[16, 32\], past the end of the 20-byte data section/);
  });

  it('out-of-file and inverted ranges', async () => {
    const far = { ...goodHeader, 'lm_head.weight': { dtype: 'BF16', shape: [2, 4], data_offsets: [1000, 1016] } };
    expect((await readError(safetensorsBytes(far, new Uint8Array(32)))).message).toMatch(/\[1000, 1016\], past the end/);
    const inverted = { ...goodHeader, 'lm_head.weight': { dtype: 'BF16', shape: [2, 4], data_offsets: [32, 16] } };
    expect((await readError(safetensorsBytes(inverted, new Uint8Array(32)))).message).toMatch(/data_offsets \[32,16\], not \[begin, end\]/);
  });

  it('overlapping ranges', async () => {
    const overlapping = { ...goodHeader, 'lm_head.weight': { dtype: 'BF16', shape: [2, 4], data_offsets: [8, 24] } };
    const e = await readError(safetensorsBytes(overlapping, new Uint8Array(32)));
    expect(e.tensor).toBe('lm_head.weight');
    expect(e.message).toMatch(/lm_head.weight \(data bytes \d+..\d+\) overlaps tensor model.norm.weight/);
  });

  it('an unknown dtype', async () => {
    const e = await readError(safetensorsBytes({ ...goodHeader, 'model.norm.weight': { dtype: 'Q4', shape: [4], data_offsets: [0, 16] } }, new Uint8Array(32)));
    expect(e.tensor).toBe('model.norm.weight');
    expect(e.message).toMatch(/unknown dtype "Q4" \(known: F64, F32, F16, BF16, I64, I32/);
  });

  it('shape × dtype that is not the byte range', async () => {
    const e = await readError(safetensorsBytes({ ...goodHeader, 'lm_head.weight': { dtype: 'F32', shape: [2, 4], data_offsets: [16, 32] } }, new Uint8Array(32)));
    expect(e.message).toMatch(/lm_head.weight \(F32 \[2, 4\]\) needs 32 bytes, but its data_offsets \[16, 32\] hold 16/);
    expect((await readError(safetensorsBytes({ x: { dtype: 'F32', shape: [-1], data_offsets: [0, 0] } }))).message).toMatch(/shape \[-1\], not a list/);
    expect((await readError(safetensorsBytes({ x: 'F32' }))).message).toMatch(/tensor x is not a \{dtype, shape, data_offsets\} object/);
  });

  it('__metadata__ that is not a map of strings', async () => {
    const e = await readError(safetensorsBytes({ ...goodHeader, __metadata__: { format: 1 } }, new Uint8Array(32)));
    expect(e.field).toBe('__metadata__');
  });

  it('asking for a tensor it does not hold', async () => {
    const file = await readSafetensors(bytesSource(safetensorsBytes(goodHeader, new Uint8Array(32)), 'good.safetensors'));
    expect(() => file.tensor('model.layers.0.mlp.up_proj.weight')).toThrow(/good.safetensors: there is no tensor model.layers.0.mlp.up_proj.weight/);
  });

  describe('an index', () => {
    const shard = safetensorsBytes(goodHeader, new Uint8Array(32));
    const open = (files: Record<string, Uint8Array>) => async (name: string): Promise<ByteSource> => {
      const bytes = files[name];
      if (!bytes) throw new Error(`no such file ${name}`);
      return bytesSource(bytes, name);
    };
    const index = (weightMap: unknown) => bytesSource(new TextEncoder().encode(JSON.stringify({ metadata: { total_size: 32 }, weight_map: weightMap })), 'model.safetensors.index.json');

    it('joins its shards', async () => {
      const model = await readSafetensorsIndex(index({ 'model.norm.weight': 'a.safetensors', 'lm_head.weight': 'a.safetensors' }), open({ 'a.safetensors': shard, 'stray.safetensors': new Uint8Array(3) }));
      expect(model.files.length).toBe(1); // the stray file is never opened
      expect(model.tensor('lm_head.weight').source.name).toBe('a.safetensors');
      expect(model.metadata).toEqual({ total_size: 32 });
    });

    it('naming a missing shard', async () => {
      const error = await readSafetensorsIndex(index({ 'model.norm.weight': 'a.safetensors', 'lm_head.weight': 'b.safetensors' }), open({ 'a.safetensors': shard })).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ModelFormatError);
      expect((error as ModelFormatError).tensor).toBe('lm_head.weight');
      expect((error as Error).message).toMatch(/model.safetensors.index.json: weight_map puts lm_head.weight \(and others\) in shard b.safetensors, which cannot be opened: no such file b.safetensors. Download b.safetensors into the same folder/);
    });

    it('naming a tensor its shard does not hold', async () => {
      const error = await readSafetensorsIndex(index({ 'model.norm.weight': 'a.safetensors', 'model.embed_tokens.weight': 'a.safetensors' }), open({ 'a.safetensors': shard })).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ModelFormatError);
      expect((error as ModelFormatError).tensor).toBe('model.embed_tokens.weight');
      expect((error as Error).message).toMatch(/puts tensor model.embed_tokens.weight in a.safetensors, which does not hold it/);
    });

    it('that is not an index', async () => {
      await expect(readSafetensorsIndex(bytesSource(new TextEncoder().encode('{"weight_map": 3}'), 'i.json'), open({}))).rejects.toThrow(/i.json: the index has no weight_map/);
      await expect(readSafetensorsIndex(bytesSource(new TextEncoder().encode('{'), 'i.json'), open({}))).rejects.toThrow(/i.json: the index is not valid UTF-8 JSON/);
      await expect(readSafetensorsIndex(index({ x: '../etc/passwd' }), open({}))).rejects.toThrow(/names the shard "..\/etc\/passwd", which is not a file name beside the index/);
    });
  });
});

// ---------------------------------------------------------------------------------------------
// The real checkpoints

const json = (file: string) => JSON.parse(readFileSync(modelPath(file), 'utf8')) as unknown;

const open: Array<{ close(): Promise<void> }> = [];
afterAll(async () => {
  for (const o of open) await o.close();
});

async function gguf(file: string): Promise<GGUFFile> {
  const g = await readGGUF(await fileSource(modelPath(file)));
  open.push(g.source);
  return g;
}

async function folder(dir: string): Promise<SafetensorsModel> {
  const index = modelPath(`${dir}/model.safetensors.index.json`);
  let model: SafetensorsModel;
  if (existsSync(index)) {
    const indexSource = await fileSource(index);
    model = await readSafetensorsIndex(indexSource, (name) => fileSource(modelPath(`${dir}/${name}`))).finally(() => indexSource.close());
  } else {
    model = await readSafetensorsModel(await fileSource(modelPath(`${dir}/model.safetensors`)));
  }
  open.push(...model.files.map((f) => f.source));
  return model;
}

/** Every tensor of an HF folder against the GGUF conversion: same names after the map, same values bit for bit. */
async function expectSameWeights(dir: string, ggufFile: string, permuteQK: boolean): Promise<number> {
  const config = readHfConfig({ file: dir, config: json(`${dir}/config.json`) });
  const model = await folder(dir);
  const g = await gguf(ggufFile);
  let compared = 0;
  for (const t of model.tensors) {
    const name = hfToGgufName(t.name)!;
    expect(name, t.name).toBeDefined();
    const view = ggufView(t, name);
    const target = g.tensor(name);
    expect(view.shape, name).toEqual(target.shape);
    const count = t.shape.reduce((a, b) => a * b, 1);
    let values = dequantize(view.type, await readSafetensorsBytes(t), count);
    if (permuteQK && /attn_[qk]\.weight$/.test(name)) values = permuteRopeRows(values, t.shape[1]!, config.headDim);
    const expected = dequantize(target.type, await readTensorBytes(g, target), count);
    let differ = 0;
    for (let i = 0; i < count; i++) if (!Object.is(values[i], expected[i])) differ++;
    expect(differ, `${t.name} → ${name}: values that differ`).toBe(0);
    compared++;
  }
  // Nothing in the GGUF is missing from the folder but what the converter adds (llama3's
  // rope_freqs) and, for a tied folder, an output.weight that is the embedding.
  const mapped = new Set(model.tensors.map((t) => hfToGgufName(t.name)));
  const missing = g.tensors.map((t) => t.name).filter((n) => !mapped.has(n) && n !== 'rope_freqs.weight');
  if (config.tiedEmbeddings && missing.includes('output.weight')) {
    const [output, embedding] = [g.tensor('output.weight'), g.tensor('token_embd.weight')];
    expect(await readTensorBytes(g, output)).toEqual(await readTensorBytes(g, embedding));
    missing.splice(missing.indexOf('output.weight'), 1);
  }
  expect(missing).toEqual([]);
  return compared;
}

describe('real checkpoints', () => {
  it('hf/stories260K (F32, tied): every tensor equals stories260K.gguf (Q/K after the RoPE row permutation)', async () => {
    expect(await expectSameWeights('hf/stories260K', 'stories260K.gguf', true)).toBe(47);
  });

  it('llama3-tiny/hf (BF16, two shards and an index): every tensor equals the F32 GGUF', async () => {
    const model = await folder('llama3-tiny/hf');
    expect(model.files.map((f) => f.source.name.split('/').pop())).toEqual(['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']);
    expect(model.tensors.every((t) => t.dtype === 'BF16')).toBe(true);
    expect(model.metadata.total_size).toBe(model.tensors.reduce((sum, t) => sum + t.byteLength, 0));
    expect(await expectSameWeights('llama3-tiny/hf', 'llama3-tiny/llama3-tiny-F32.gguf', true)).toBe(model.tensors.length);
  });

  it('qwen3-tiny/hf (BF16, Q/K norms): every tensor equals the F32 GGUF (qwen is not permuted)', async () => {
    expect(await expectSameWeights('qwen3-tiny/hf', 'qwen3-tiny/qwen3-tiny-F32.gguf', false)).toBeGreaterThan(30);
  });

  it.each(['awq-tiny/base', 'awq-tiny/awq-g32', 'gptq-tiny/gptq-g32', 'gptq-tiny/gptq-g32-actorder'])('%s parses', async (dir) => {
    const model = await folder(dir);
    const dtypes = new Set(model.tensors.map((t) => t.dtype));
    expect(model.tensors.length).toBe(dir.endsWith('base') ? 39 : dir.startsWith('awq') ? 28 * 3 + 11 : 28 * 4 + 11);
    expect([...dtypes].sort()).toEqual(dir.endsWith('base') ? ['F32'] : ['F16', 'I32']);
    for (const t of model.tensors) expect(hfToGgufName(t.name), t.name).toBeDefined();
  });
});

describe('config.json', () => {
  it('maps stories260K to the numbers its GGUF gives', async () => {
    const c = readHfConfig({ file: 'hf/stories260K', config: json('hf/stories260K/config.json'), generationConfig: json('hf/stories260K/generation_config.json') });
    const fromGguf = llamaConfig(await gguf('stories260K.gguf'));
    const shared = ['vocabSize', 'dim', 'nLayers', 'nHeads', 'nKvHeads', 'headDim', 'ffnDim', 'rmsEps', 'ropeBase', 'ropeScaling', 'ropeDims', 'bosTokenId'] as const;
    for (const key of shared) expect(c[key], key).toEqual(fromGguf[key]);
    // The folder's own: the GGUF (from llama2.c) says 2048 positions and has an untied output.weight.
    expect(c).toMatchObject({ architecture: 'LlamaForCausalLM', family: 'llama', ropeStyle: 'neox', contextLength: 512, tiedEmbeddings: true, eosTokenIds: [fromGguf.eosTokenId] });
    expect(c.quantization).toBeUndefined();
  });

  describe('with a GGUF of the same model', () => {
    let llama3: GGUFFile;
    beforeAll(async () => {
      llama3 = await gguf('llama3-tiny/llama3-tiny-F32.gguf');
    });

    it('llama3 rope scaling gives the converter\'s rope_freqs, and the eos ids come from generation_config', async () => {
      const c = readHfConfig({ file: 'llama3-tiny/hf', config: json('llama3-tiny/hf/config.json'), generationConfig: json('llama3-tiny/hf/generation_config.json') });
      expect(c.ropeScaling.type).toBe('llama3');
      const t = llama3.tensor('rope_freqs.weight');
      const expected = dequantize(GGMLType.F32, await readTensorBytes(llama3, t), t.shape[0]!);
      if (c.ropeScaling.type !== 'llama3') throw new Error('unreachable');
      expect([...c.ropeScaling.divisors]).toEqual([...expected]);
      expect(expected.some((v) => v !== 1 && v !== 32)).toBe(true); // the smooth band is exercised
      expect(c.eosTokenIds).toEqual([128001, 128008, 128009]);
      expect(c).toMatchObject({ ropeBase: 500000, tiedEmbeddings: true, headDim: 8, dtype: 'bfloat16' });
    });
  });

  it('qwen3: q/k norms, no biases', () => {
    const c = readHfConfig({ file: 'qwen3-tiny/hf', config: json('qwen3-tiny/hf/config.json') });
    expect(c).toMatchObject({ family: 'qwen3', qkNorm: true, attentionBias: false, headDim: 16, rmsEps: Math.fround(1e-6), eosTokenIds: [151645] });
    expect(readHfConfig({ file: 'x', config: { architectures: ['Qwen2ForCausalLM'], hidden_size: 64, num_attention_heads: 4, num_hidden_layers: 1, vocab_size: 8, intermediate_size: 8 } })).toMatchObject({
      family: 'qwen2',
      attentionBias: true,
      nKvHeads: 4,
      headDim: 16,
    });
  });

  const base = { architectures: ['LlamaForCausalLM'], hidden_size: 64, num_attention_heads: 4, num_hidden_layers: 1, vocab_size: 8, intermediate_size: 8 };
  const refused = (config: unknown, quantizeConfig?: unknown) => {
    try {
      readHfConfig({ file: 'cfg', config, ...(quantizeConfig ? { quantizeConfig } : {}) });
    } catch (e) {
      return e as ModelFormatError;
    }
    throw new Error('accepted');
  };

  it('refuses unsupported architectures naming the supported ones', () => {
    const e = refused({ ...base, architectures: ['MambaForCausalLM'], model_type: 'mamba' });
    expect(e).toBeInstanceOf(UnsupportedModelError);
    expect(e.field).toBe('architectures');
    expect(e.message).toMatch(/architecture MambaForCausalLM is not supported \(supported: LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Phi3ForCausalLM, MistralForCausalLM\)/);
    expect(refused({ ...base, architectures: undefined, model_type: 'gpt2' }).message).toMatch(/model_type "gpt2" is not supported/);
    expect(readHfConfig({ file: 'cfg', config: { ...base, architectures: undefined, model_type: 'phi3' } }).architecture).toBe('Phi3ForCausalLM');
  });

  it('refuses what it cannot run, naming the field', () => {
    expect(refused({ ...base, rope_scaling: { rope_type: 'yarn', factor: 4 } }).message).toMatch(/rope scaling type "yarn" is not supported yet/);
    expect(refused({ ...base, hidden_size: undefined }).field).toBe('hidden_size');
    expect(refused({ ...base, num_key_value_heads: 3 }).message).toMatch(/num_key_value_heads \(3\) does not divide num_attention_heads \(4\)/);
    expect(refused({ ...base, hidden_act: 'gelu' })).toBeInstanceOf(UnsupportedModelError);
    expect(refused({ ...base, quantization_config: { quant_method: 'awq', bits: 8, group_size: 128 } }).message).toMatch(/8-bit AWQ is not supported/);
    expect(refused({ ...base, quantization_config: { quant_method: 'gptq', bits: 4, group_size: 48 } }).message).toMatch(/group size 48 is not supported \(a multiple of 32.*or -1/);
    // -1: one group per row (per-channel scales); a layer's group is then all its input features.
    expect(readHfConfig({ file: 'cfg', config: { ...base, quantization_config: { quant_method: 'gptq', bits: 4, group_size: -1 } } }).quantization!.groupSize).toBe(-1);
    expect(refused({ ...base, quantization_config: { quant_method: 'awq', bits: 4, group_size: 128, version: 'gemv' } }).message).toMatch(/AWQ version "gemv"/);
    expect(refused({ ...base, quantization_config: { quant_method: 'fp8' } }).field).toBe('quantization_config.quant_method');
  });

  it('reads the quantization from quantize_config.json when config.json has none', () => {
    const c = readHfConfig({ file: 'cfg', config: base, quantizeConfig: { bits: 4, group_size: 64, desc_act: true, sym: false } });
    expect(c.quantization).toMatchObject({ method: 'gptq', groupSize: 64, descAct: true, zeroPoint: true, checkpointFormat: 'gptq' });
    expect(readHfConfig({ file: 'cfg', config: { ...base, rope_scaling: { type: 'linear', factor: 2 } } }).ropeScaling).toEqual({ type: 'linear', factor: 2 });
  });

  it('maps tensor names to GGUF', () => {
    expect(hfToGgufName('model.layers.3.self_attn.q_proj.weight')).toBe('blk.3.attn_q.weight');
    expect(hfToGgufName('model.layers.0.self_attn.o_proj.qweight')).toBe('blk.0.attn_output.qweight');
    expect(hfToGgufName('model.layers.0.self_attn.k_proj.bias')).toBe('blk.0.attn_k.bias');
    expect(hfToGgufName('model.layers.12.mlp.down_proj.g_idx')).toBe('blk.12.ffn_down.g_idx');
    expect(hfToGgufName('model.layers.1.self_attn.qkv_proj.weight')).toBe('blk.1.attn_qkv.weight');
    expect(hfToGgufName('model.layers.1.self_attn.k_norm.weight')).toBe('blk.1.attn_k_norm.weight');
    expect(hfToGgufName('lm_head.weight')).toBe('output.weight');
    expect(hfToGgufName('model.layers.0.self_attn.rotary_emb.inv_freq')).toBeUndefined();
    expect(hfToGgufName('model.vision_tower.weight')).toBeUndefined();
  });
});
