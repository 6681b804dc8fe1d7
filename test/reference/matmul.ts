// Plain-TypeScript references for the matmul and embedding kernels, over weights that
// src/model/quant.ts has dequantized (the CPU oracle, itself checked bit for bit against ggml).

import { blockGeometry, GGMLType } from '../../src/model/ggml-type.ts';
import { f16ToF32, f32ToF16 } from '../../src/model/quant.ts';
import { rng } from '../helpers/gpu.ts';

export interface MatmulReference {
  /** y[t * rows + r] = Σ_c W[r][c] · x[t][c], accumulated in f64. */
  y: Float64Array;
  /** Σ_c |W[r][c] · x[t][c]|: the scale of each sum, for tolerances that survive cancellation. */
  magnitude: Float64Array;
}

export function matmulReference(w: Float32Array, rows: number, cols: number, x: Float32Array, nTokens: number): MatmulReference {
  const y = new Float64Array(nTokens * rows);
  const magnitude = new Float64Array(nTokens * rows);
  for (let t = 0; t < nTokens; t++) {
    for (let r = 0; r < rows; r++) {
      let sum = 0;
      let abs = 0;
      for (let c = 0; c < cols; c++) {
        const product = w[r * cols + c]! * x[t * cols + c]!;
        sum += product;
        abs += Math.abs(product);
      }
      y[t * rows + r] = sum;
      magnitude[t * rows + r] = abs;
    }
  }
  return { y, magnitude };
}

/**
 * x with each block of 32 quantized to int8 (scale max|x|/127, rounded half to even like WGSL's
 * round) and dequantized, in f32 as the int8 kernels compute it (the scale rounded to f16, as ggml
 * stores it): what they multiply the weights by.
 */
export function quantizeActivationsInt8(x: Float32Array): Float32Array {
  const out = new Float32Array(x.length);
  const f = Math.fround;
  for (let b = 0; b < x.length; b += 32) {
    let amax = 0;
    for (let i = b; i < b + 32; i++) amax = Math.max(amax, Math.abs(x[i]!));
    const d = f(amax / 127);
    const inverse = d > 0 ? f(1 / d) : 0;
    for (let i = b; i < b + 32; i++) {
      const v = f(x[i]! * inverse);
      const q = Math.abs(v % 1) === 0.5 ? 2 * Math.round(v / 2) : Math.round(v);
      out[i] = f(q * f16ToF32(f32ToF16(d)));
    }
  }
  return out;
}

/** out[t][c] = table[ids[t]][c]. */
export function embeddingReference(table: Float32Array, cols: number, ids: ArrayLike<number>): Float32Array {
  const out = new Float32Array(ids.length * cols);
  for (let t = 0; t < ids.length; t++) out.set(table.subarray(ids[t]! * cols, (ids[t]! + 1) * cols), t * cols);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Random weights of any type

/** Byte offsets of the f16 scale fields (d, and m or dmin) inside one ggml block. */
const scaleFields: Partial<Record<GGMLType, number[]>> = {
  [GGMLType.Q4_0]: [0],
  [GGMLType.Q8_0]: [0],
  [GGMLType.Q5_0]: [0],
  [GGMLType.IQ4_NL]: [0],
  [GGMLType.Q4_1]: [0, 2],
  [GGMLType.Q5_1]: [0, 2],
  [GGMLType.Q2_K]: [80, 82],
  [GGMLType.Q3_K]: [108],
  [GGMLType.Q4_K]: [0, 2],
  [GGMLType.Q5_K]: [0, 2],
  [GGMLType.Q6_K]: [208],
  [GGMLType.Q4_ZP]: [0],
};

/** Byte offsets of u16 zero points inside one block (random in 0..16, the range AWQ and GPTQ v1 give). */
const zeroFields: Partial<Record<GGMLType, number[]>> = {
  [GGMLType.Q4_ZP]: [2],
};

/**
 * GGUF bytes of a random `rows × cols` weight: quantized blocks are random bytes (every bit
 * pattern of quants and sub-block scales is valid) with random, sane f16 scales; float types
 * hold random values in [-1, 1).
 */
export function randomWeightBytes(type: GGMLType, rows: number, cols: number, seed: number): Uint8Array {
  const next = rng(seed);
  const count = rows * cols;
  if (type === GGMLType.F32) {
    const values = new Float32Array(count);
    for (let i = 0; i < count; i++) values[i] = next() * 2 - 1;
    return new Uint8Array(values.buffer);
  }
  if (type === GGMLType.F16 || type === GGMLType.BF16) {
    const halves = new Uint16Array(count);
    const f = new Float32Array(1);
    const bits = new Uint32Array(f.buffer);
    for (let i = 0; i < count; i++) {
      f[0] = next() * 2 - 1;
      halves[i] = type === GGMLType.F16 ? f32ToF16(f[0]) : bits[0]! >>> 16;
    }
    return new Uint8Array(halves.buffer);
  }
  const geometry = blockGeometry[type]!;
  const fields = scaleFields[type];
  if (!fields) throw new Error(`randomWeightBytes: no recipe for type ${type}`);
  const bytes = new Uint8Array((count / geometry.blockSize) * geometry.typeSize);
  for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(next() * 256);
  for (let o = 0; o < bytes.length; o += geometry.typeSize) {
    for (const at of fields) {
      const h = f32ToF16((next() * 2 - 1) * 0.05);
      bytes[o + at] = h & 0xff;
      bytes[o + at + 1] = h >> 8;
    }
    for (const at of zeroFields[type] ?? []) {
      bytes[o + at] = Math.floor(next() * 17);
      bytes[o + at + 1] = 0;
    }
  }
  return bytes;
}
