// GGUF reader, writer and byte sources: the shared model files parse with the facts their README
// states, every metadata value type round-trips, and reads touch only the bytes they need.
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GGMLType, ggmlTypeName } from '../src/model/ggml-type.ts';
import {
  GGUFValueType,
  getBool,
  getF32,
  getF32Array,
  getI32Array,
  getString,
  getStringArray,
  getU32,
  readGGUF,
  readTensorBytes,
  readTensorChunks,
  tensorRowBytes,
  tensorRowCount,
  type GGUFFile,
} from '../src/model/gguf.ts';
import { ggufFileSize, ggufValue, writeGGUF, writeGGUFStream, type GGUFTypedValue, type TensorData } from '../src/model/gguf-writer.ts';
import { ModelFormatError, ModelSourceError } from '../src/model/errors.ts';
import { blobSource, bytesSource, fileSource, openSource, urlSource, type ByteSource } from '../src/model/source.ts';
import { modelPath, reference } from './helpers/models.ts';

async function openModel(file: string): Promise<GGUFFile> {
  return readGGUF(await fileSource(modelPath(file)));
}

/** Groups tensor types the way reference/public.json does: by block index, or by name for the rest. */
function tensorTypesByGroup(file: GGUFFile): Record<string, string[]> {
  const groups: Record<string, Set<string>> = {};
  for (const tensor of file.tensors) {
    const block = /^blk\.(\d+)\./.exec(tensor.name);
    const group = block ? block[1]! : tensor.name.replace(/\.weight$/, '');
    (groups[group] ??= new Set()).add(ggmlTypeName(tensor.type));
  }
  return Object.fromEntries(Object.entries(groups).map(([group, types]) => [group, [...types].sort()]));
}

describe('shared model files', () => {
  const models = Object.entries(reference().models) as unknown as Array<[string, { file: string; size: number; tensor_types: Record<string, string[]> }]>;

  it.each(models)('%s parses with the tensor types reference/public.json lists', async (_key, model) => {
    const file = await openModel(model.file);
    expect(file.version).toBe(3);
    expect(file.source.size).toBe(model.size);
    expect(getString(file, 'general.architecture')).toBe('llama');
    const expected = Object.fromEntries(Object.entries(model.tensor_types).map(([group, types]) => [group, [...types].sort()]));
    expect(tensorTypesByGroup(file)).toEqual(expected);
    // Tensors tile the data section in order, each aligned.
    for (const tensor of file.tensors) {
      expect((tensor.offset - file.dataOffset) % file.alignment).toBe(0);
      expect(tensor.offset + tensor.byteLength).toBeLessThanOrEqual(file.source.size);
    }
    await file.source.close();
  });

  it('stories260K has the hyper-parameters and vocabulary the README states', async () => {
    const file = await openModel('stories260K.gguf');
    expect(getU32(file, 'llama.embedding_length')).toBe(64);
    expect(getU32(file, 'llama.block_count')).toBe(5);
    expect(getU32(file, 'llama.attention.head_count')).toBe(8);
    expect(getU32(file, 'llama.attention.head_count_kv')).toBe(4);
    expect(getU32(file, 'llama.feed_forward_length')).toBe(172);
    expect(getU32(file, 'llama.context_length')).toBe(2048);
    expect(getF32(file, 'llama.attention.layer_norm_rms_epsilon')).toBeCloseTo(1e-5, 10);
    expect(getU32(file, 'tokenizer.ggml.bos_token_id')).toBe(1);
    expect(getU32(file, 'tokenizer.ggml.eos_token_id')).toBe(2);
    expect(getU32(file, 'tokenizer.ggml.unknown_token_id')).toBe(0);
    expect(file.metadataTypes.get('llama.block_count')).toBe(GGUFValueType.UINT32);

    const tokens = getStringArray(file, 'tokenizer.ggml.tokens');
    expect(tokens).toHaveLength(512);
    expect(tokens.slice(0, 4)).toEqual(['<unk>', '<s>', '</s>', '<0x00>']);
    expect(getF32Array(file, 'tokenizer.ggml.scores')).toBeInstanceOf(Float32Array);
    expect(getF32Array(file, 'tokenizer.ggml.scores')).toHaveLength(512);
    expect(Array.from(getI32Array(file, 'tokenizer.ggml.token_type').slice(0, 4))).toEqual([2, 3, 3, 6]);

    expect(file.tensors).toHaveLength(48);
    expect(file.tensor('token_embd.weight')).toMatchObject({ shape: [64, 512], type: GGMLType.F32, byteLength: 64 * 512 * 4 });
    expect(file.tensor('blk.4.ffn_down.weight').shape).toEqual([172, 64]);
    expect(file.tensor('output_norm.weight').shape).toEqual([64]);
    expect(() => file.tensor('blk.5.attn_q.weight')).toThrow(/blk\.5\.attn_q\.weight is missing/);
    await file.source.close();
  });

  it('llama-2-tiny-random has the Llama 2 vocabulary and its small shape', async () => {
    const file = await openModel('llama-2-tiny-random.gguf');
    expect(getU32(file, 'llama.embedding_length')).toBe(8);
    expect(getU32(file, 'llama.block_count')).toBe(1);
    expect(getU32(file, 'llama.feed_forward_length')).toBe(32);
    expect(getStringArray(file, 'tokenizer.ggml.tokens')).toHaveLength(32000);
    expect(file.tensor('token_embd.weight')).toMatchObject({ shape: [8, 32000], type: GGMLType.F16 });
    await file.source.close();
  });

  it('quantized files have the block geometry of their types', async () => {
    const file = await openModel('stories260K-Q4_0.gguf');
    const q = file.tensor('blk.0.attn_q.weight');
    expect(q.type).toBe(GGMLType.Q4_0);
    expect(q.byteLength).toBe((64 * 64 / 32) * 18);
    expect(tensorRowBytes(q)).toBe((64 / 32) * 18);
    expect(file.tensor('output.weight').type).toBe(GGMLType.Q8_0);
    expect(file.tensor('blk.0.ffn_down.weight').type).toBe(GGMLType.F16);
    await file.source.close();
  });
});

describe('reads only what is asked for', () => {
  const path = modelPath('stories260K.gguf');
  const whole = readFileSync(path);

  it('reading the header of a 1 MB file reads a small prefix', async () => {
    const source = await fileSource(path);
    const file = await readGGUF(source);
    expect(source.size).toBeGreaterThan(1_000_000);
    expect(source.bytesRead).toBeGreaterThanOrEqual(file.dataOffset - file.alignment);
    expect(source.bytesRead).toBeLessThanOrEqual(128 * 1024);
    await source.close();
  });

  it('reading rows k..k+n reads exactly that byte range', async () => {
    const source = await fileSource(path);
    const file = await readGGUF(source);
    const embedding = file.tensor('token_embd.weight');
    const rowBytes = 64 * 4;
    expect(tensorRowCount(embedding)).toBe(512);
    const before = source.bytesRead;
    const rows = await readTensorBytes(file, embedding, { rowStart: 100, rowCount: 7 });
    expect(source.bytesRead - before).toBe(7 * rowBytes);
    const start = embedding.offset + 100 * rowBytes;
    expect(Buffer.from(rows).equals(whole.subarray(start, start + 7 * rowBytes))).toBe(true);
    await expect(readTensorBytes(file, embedding, { rowStart: 510, rowCount: 3 })).rejects.toThrow(/outside tensor token_embd\.weight/);
    await source.close();
  });

  it('streams a tensor in bounded chunks of whole rows with progress', async () => {
    const source = await fileSource(path);
    const file = await readGGUF(source);
    const down = file.tensor('blk.1.ffn_down.weight'); // 64 rows of 172 f32
    const rowBytes = tensorRowBytes(down);
    const progress: Array<[number, number]> = [];
    const chunks = [];
    for await (const chunk of readTensorChunks(file, down, { maxChunkBytes: 5 * rowBytes + 3, onProgress: (done, total) => progress.push([done, total]) })) {
      expect(chunk.bytes.length).toBeLessThanOrEqual(5 * rowBytes + 3);
      expect(chunk.bytes.length).toBe(chunk.rowCount * rowBytes);
      chunks.push(chunk);
    }
    expect(chunks.map((c) => c.rowCount)).toEqual([...Array(12).fill(5), 4]);
    expect(chunks[1]!.rowStart).toBe(5);
    const joined = Buffer.concat(chunks.map((c) => c.bytes));
    expect(joined.equals(whole.subarray(down.offset, down.offset + down.byteLength))).toBe(true);
    expect(progress.at(-1)).toEqual([down.byteLength, down.byteLength]);
    expect(progress.every(([done], i) => i === 0 || done > progress[i - 1]![0])).toBe(true);
    await source.close();
  });
});

describe('byte sources', () => {
  const path = modelPath('stories260K-Q8_0.gguf');
  const whole = new Uint8Array(readFileSync(path));
  let server: Server;
  let baseUrl: string;

  beforeAll(async () => {
    // A tiny static server: /model honours Range, /no-range always sends the whole file.
    server = createServer((request, response) => {
      if (request.url === '/no-range') {
        response.writeHead(200, { 'content-length': whole.length });
        response.end(whole);
        return;
      }
      if (request.url !== '/model') {
        response.writeHead(404).end();
        return;
      }
      const range = /^bytes=(\d+)-(\d+)$/.exec(request.headers.range ?? '');
      if (!range) {
        response.writeHead(200, { 'content-length': whole.length });
        response.end(whole);
        return;
      }
      const first = Number(range[1]);
      const last = Math.min(Number(range[2]), whole.length - 1);
      response.writeHead(206, { 'content-range': `bytes ${first}-${last}/${whole.length}`, 'content-length': last - first + 1 });
      response.end(whole.subarray(first, last + 1));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

  async function sameAsFile(source: ByteSource): Promise<void> {
    expect(source.size).toBe(whole.length);
    const file = await readGGUF(source);
    const tensor = file.tensor('blk.2.attn_v.weight');
    const rows = await readTensorBytes(file, tensor, { rowStart: 3, rowCount: 4 });
    const start = tensor.offset + 3 * tensorRowBytes(tensor);
    expect(rows).toEqual(whole.subarray(start, start + rows.length));
    // readInto (what the weight loader uses): fills exactly the target, counts the bytes, checks the range.
    const into = new Uint8Array(rows.length + 8).fill(0xee);
    const before = source.bytesRead;
    await source.readInto!(start, into.subarray(4, 4 + rows.length));
    expect(into.subarray(4, 4 + rows.length)).toEqual(rows);
    expect([...into.subarray(0, 4), ...into.subarray(4 + rows.length)]).toEqual(new Array(8).fill(0xee));
    expect(source.bytesRead - before).toBe(rows.length);
    await expect(source.readInto!(whole.length - 2, new Uint8Array(4))).rejects.toThrow(ModelSourceError);
    expect(file.tensors).toHaveLength(48);
    expect(source.bytesRead).toBeLessThan(whole.length / 4);
    await source.close();
  }

  it('file, blob, url and memory sources give the same bytes', async () => {
    await sameAsFile(await fileSource(path));
    await sameAsFile(blobSource(new Blob([whole])));
    await sameAsFile(await urlSource(`${baseUrl}/model`));
    await sameAsFile(bytesSource(whole, 'memory'));
  });

  it('openSource picks the source from what it is given', async () => {
    await sameAsFile(await openSource(path));
    await sameAsFile(await openSource(`${baseUrl}/model`));
    await sameAsFile(await openSource(new URL(`${baseUrl}/model`)));
    await sameAsFile(await openSource(new Blob([whole])));
    await sameAsFile(await openSource(whole));
    const open = bytesSource(whole);
    expect(await openSource(open)).toBe(open);
  });

  it('blobSource reads slices, not the whole blob', async () => {
    const source = blobSource(new File([whole], 'model.gguf'));
    expect(source.name).toBe('model.gguf');
    expect(await source.read(10, 4)).toEqual(whole.subarray(10, 14));
    expect(source.bytesRead).toBe(4);
  });

  it('a server that ignores Range is refused with a clear error', async () => {
    await expect(urlSource(`${baseUrl}/no-range`)).rejects.toThrow(ModelSourceError);
    await expect(urlSource(`${baseUrl}/no-range`)).rejects.toThrow(/ignores HTTP Range/);
    await expect(urlSource(`${baseUrl}/missing`)).rejects.toThrow(/HTTP 404/);
  });

  it('reads past the end reject, and a missing file names its path', async () => {
    const source = bytesSource(new Uint8Array(10), 'ten');
    await expect(source.read(8, 4)).rejects.toThrow(/runs past the end of the 10-byte file/);
    await expect(fileSource('/nonexistent/model.gguf')).rejects.toThrow(/\/nonexistent\/model\.gguf: cannot open file/);
  });
});

describe('writer → reader round trip', () => {
  const allTypes: Array<[string, GGUFTypedValue, unknown]> = [
    ['t.u8', ggufValue.u8(255), 255],
    ['t.i8', ggufValue.i8(-128), -128],
    ['t.u16', ggufValue.u16(65535), 65535],
    ['t.i16', ggufValue.i16(-32768), -32768],
    ['t.u32', ggufValue.u32(4294967295), 4294967295],
    ['t.i32', ggufValue.i32(-2147483648), -2147483648],
    ['t.f32', ggufValue.f32(0.1), Math.fround(0.1)],
    ['t.f64', ggufValue.f64(0.1), 0.1],
    ['t.bool.true', ggufValue.bool(true), true],
    ['t.bool.false', ggufValue.bool(false), false],
    ['t.string', ggufValue.string('héllo ▁wörld 🙂'), 'héllo ▁wörld 🙂'],
    ['t.string.empty', ggufValue.string(''), ''],
    ['t.u64.small', ggufValue.u64(12345), 12345],
    ['t.u64.big', ggufValue.u64(2n ** 64n - 1n), 2n ** 64n - 1n],
    ['t.i64.small', ggufValue.i64(-5), -5],
    ['t.i64.big', ggufValue.i64(-(2n ** 63n)), -(2n ** 63n)],
    ['a.u8', ggufValue.array('u8', [0, 1, 255]), new Uint8Array([0, 1, 255])],
    ['a.i8', ggufValue.array('i8', [-1, 2]), new Int8Array([-1, 2])],
    ['a.u16', ggufValue.array('u16', [65535]), new Uint16Array([65535])],
    ['a.i16', ggufValue.array('i16', [-2, 3]), new Int16Array([-2, 3])],
    ['a.u32', ggufValue.array('u32', [1, 2, 3]), new Uint32Array([1, 2, 3])],
    ['a.i32', ggufValue.array('i32', [-1, 6]), new Int32Array([-1, 6])],
    ['a.f32', ggufValue.array('f32', [0.5, -1.25]), new Float32Array([0.5, -1.25])],
    ['a.f64', ggufValue.array('f64', [0.1]), new Float64Array([0.1])],
    ['a.u64', ggufValue.array('u64', [1n, 2n ** 64n - 1n]), new BigUint64Array([1n, 2n ** 64n - 1n])],
    ['a.i64', ggufValue.array('i64', [-1n, 7]), new BigInt64Array([-1n, 7n])],
    ['a.bool', ggufValue.array('bool', [true, false, true]), [true, false, true]],
    ['a.string', ggufValue.array('string', ['a', '', '▁the']), ['a', '', '▁the']],
    ['a.empty', ggufValue.array('f32', []), new Float32Array([])],
    [
      'a.nested',
      ggufValue.array('array', [ggufValue.array('i32', [1, 2]), ggufValue.array('string', ['x']), ggufValue.array('array', [ggufValue.array('u8', [9])])]),
      [new Int32Array([1, 2]), ['x'], [new Uint8Array([9])]],
    ],
  ];

  it.each([2, 3] as const)('every value type survives GGUF v%i', async (version) => {
    const bytes = writeGGUF({ version, metadata: allTypes.map(([key, value]) => [key, value]), tensors: [] });
    const file = await readGGUF(bytesSource(bytes, `v${version}`));
    expect(file.version).toBe(version);
    expect(file.tensors).toEqual([]);
    for (const [key, typed, expected] of allTypes) {
      expect(file.metadata.get(key), key).toEqual(expected);
      expect(file.metadataTypes.get(key), key).toBe(typed.type === 'array' ? GGUFValueType.ARRAY : typeId(typed.type));
    }
    expect(getBool(file, 't.bool.true')).toBe(true);
  });

  function typeId(name: string): number {
    return ({ u8: 0, i8: 1, u16: 2, i16: 3, u32: 4, i32: 5, f32: 6, bool: 7, string: 8, array: 9, u64: 10, i64: 11, f64: 12 } as Record<string, number>)[name]!;
  }

  const tensors = [
    { name: 'a', shape: [3], type: GGMLType.F32, data: new Uint8Array(new Float32Array([1, 2, 3]).buffer) },
    { name: 'b', shape: [32, 2], type: GGMLType.Q8_0, data: Uint8Array.from({ length: 68 }, (_, i) => i) },
    { name: 'c', shape: [2, 2, 2, 2], type: GGMLType.F16, data: Uint8Array.from({ length: 32 }, (_, i) => 255 - i) },
  ];

  it.each([32, 64])('tensors round trip with alignment %i', async (alignment) => {
    const bytes = writeGGUF({ metadata: [['general.architecture', ggufValue.string('llama')]], tensors, alignment });
    const file = await readGGUF(bytesSource(bytes));
    expect(file.alignment).toBe(alignment);
    expect(file.dataOffset % alignment).toBe(0);
    for (const spec of tensors) {
      const tensor = file.tensor(spec.name);
      expect(tensor).toMatchObject({ shape: spec.shape, type: spec.type, byteLength: spec.data.length });
      expect((tensor.offset - file.dataOffset) % alignment).toBe(0);
      expect(await readTensorBytes(file, tensor)).toEqual(spec.data);
    }
    expect(await readTensorBytes(file, file.tensor('b'), { rowStart: 1, rowCount: 1 })).toEqual(tensors[1]!.data.subarray(34));
  });

  it('the streaming writer produces the same bytes from chunk callbacks', async () => {
    const spec = { metadata: [['k', ggufValue.u32(1)]] as Array<[string, GGUFTypedValue]>, tensors, alignment: 64 };
    const expected = writeGGUF(spec);
    const streamed: Uint8Array[] = [];
    const chunked = tensors.map((tensor) => ({
      ...tensor,
      data: (function* () {
        for (let i = 0; i < tensor.data.length; i += 5) yield tensor.data.subarray(i, i + 5);
      }) satisfies TensorData,
    }));
    await writeGGUFStream({ ...spec, tensors: chunked }, (chunk) => {
      streamed.push(chunk.slice());
    });
    expect(Buffer.concat(streamed).equals(expected)).toBe(true);
    expect(ggufFileSize(spec)).toBe(expected.length);
  });

  it('the writer refuses data that does not match the shape', async () => {
    expect(() => writeGGUF({ metadata: [], tensors: [{ name: 'x', shape: [4], type: GGMLType.F32, data: new Uint8Array(15) }] })).toThrow(/tensor x/);
    expect(() => writeGGUF({ metadata: [], tensors: [{ name: 'q', shape: [31], type: GGMLType.Q8_0, data: new Uint8Array(34) }] })).toThrow(/tensor q/);
    const tooShort = { name: 'y', shape: [4], type: GGMLType.F32, data: () => [new Uint8Array(8)] };
    await expect(writeGGUFStream({ metadata: [], tensors: [tooShort] }, () => {})).rejects.toThrow(/tensor y/);
  });

  it('metadata getters name the key that is missing or mistyped', async () => {
    const file = await readGGUF(bytesSource(writeGGUF({ metadata: [['s', ggufValue.string('x')], ['n', ggufValue.i32(-1)]], tensors: [] })));
    expect(() => getU32(file, 'absent')).toThrow(ModelFormatError);
    expect(() => getU32(file, 'absent')).toThrow(/metadata key absent is missing/);
    expect(getU32(file, 'absent', 7)).toBe(7);
    expect(() => getU32(file, 's')).toThrow(/metadata key s should be/);
    expect(() => getU32(file, 'n')).toThrow(/metadata key n should be an unsigned 32-bit integer/);
    expect(() => getString(file, 'n')).toThrow(expect.objectContaining({ name: 'ModelFormatError', field: 'n' }));
  });
});
