// CPU dequantization must match ggml's to_float bit for bit, and the reference quantizers must
// write ggml's bytes exactly. The oracle is quant-test-vectors.gguf (made with ggml itself).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { modelPath } from './helpers/models.ts';
import { fileSource, type ByteSource } from '../src/model/source.ts';
import { readGGUF, readTensorBytes, type GGUFFile } from '../src/model/gguf.ts';
import { GGMLType, ggmlTypeName } from '../src/model/ggml-type.ts';
import { bf16ToF32, dequantize, f16ToF32, f32ToF16, quantize } from '../src/model/quant.ts';

const typeNames: Array<[string, GGMLType]> = [
  ['q4_0', GGMLType.Q4_0],
  ['q4_1', GGMLType.Q4_1],
  ['q5_0', GGMLType.Q5_0],
  ['q5_1', GGMLType.Q5_1],
  ['q8_0', GGMLType.Q8_0],
  ['q2_K', GGMLType.Q2_K],
  ['q3_K', GGMLType.Q3_K],
  ['q4_K', GGMLType.Q4_K],
  ['q5_K', GGMLType.Q5_K],
  ['q6_K', GGMLType.Q6_K],
  ['iq4_nl', GGMLType.IQ4_NL],
  ['f16', GGMLType.F16],
  ['bf16', GGMLType.BF16],
];

const count = (shape: number[]): number => shape.reduce((a, b) => a * b, 1);

/** Index of the first differing 32-bit pattern, or -1. */
function firstBitDifference(a: Float32Array, b: Float32Array): number {
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  if (ua.length !== ub.length) return Math.min(ua.length, ub.length);
  for (let i = 0; i < ua.length; i++) if (ua[i] !== ub[i]) return i;
  return -1;
}

describe('quant-test-vectors.gguf', () => {
  let source: ByteSource;
  let file: GGUFFile;
  beforeAll(async () => {
    source = await fileSource(modelPath('quant-test-vectors.gguf'));
    file = await readGGUF(source);
  });
  afterAll(async () => {
    await source?.close();
  });

  async function f32Tensor(name: string): Promise<Float32Array> {
    const info = file.tensor(name);
    expect(info.type).toBe(GGMLType.F32);
    return dequantize(GGMLType.F32, await readTensorBytes(file, info), count(info.shape));
  }

  it.each(typeNames)('dequantize(%s) equals ggml to_float bit for bit', async (name, type) => {
    const info = file.tensor(name);
    expect(ggmlTypeName(info.type)).toBe(ggmlTypeName(type));
    const got = dequantize(type, await readTensorBytes(file, info), count(info.shape));
    const want = await f32Tensor(`${name}.dequant`);
    const at = firstBitDifference(got, want);
    expect(at, at < 0 ? '' : `value ${at}: got ${got[at]}, want ${want[at]}`).toBe(-1);
  });

  it.each([
    ['q8_0', GGMLType.Q8_0],
    ['q4_0', GGMLType.Q4_0],
    ['f16', GGMLType.F16],
  ] as Array<[string, GGMLType]>)('quantize(%s) of source writes the same bytes as ggml', async (name, type) => {
    const values = await f32Tensor('source');
    const got = quantize(type, values);
    const want = await readTensorBytes(file, file.tensor(name));
    expect(got.length).toBe(want.length);
    const at = got.findIndex((byte, i) => byte !== want[i]);
    expect(at, `byte ${at}`).toBe(-1);
  });
});

describe('half conversions', () => {
  it('round-trips every finite f16 and rounds to nearest even', () => {
    for (let h = 0; h < 0x10000; h++) {
      if ((h & 0x7c00) === 0x7c00) continue;
      expect(f32ToF16(f16ToF32(h))).toBe(h);
    }
    // 1 + 2^-11 is halfway between 1 and the next half: ties go to even (1).
    expect(f32ToF16(1 + 2 ** -11)).toBe(0x3c00);
    expect(f32ToF16(1 + 3 * 2 ** -11)).toBe(0x3c02);
    expect(f32ToF16(65520)).toBe(0x7c00); // rounds up to infinity
    expect(f32ToF16(2 ** -25)).toBe(0); // halfway to the smallest subnormal: even is 0
    expect(f32ToF16(1.5 * 2 ** -25)).toBe(1);
    expect(bf16ToF32(0x3f80)).toBe(1);
    expect(bf16ToF32(0xc040)).toBe(-3);
  });

  it('rejects partial blocks', () => {
    expect(() => dequantize(GGMLType.Q4_0, new Uint8Array(18), 31)).toThrow(/whole/);
    expect(() => dequantize(GGMLType.Q8_0, new Uint8Array(33), 32)).toThrow(/bytes/);
  });
});
