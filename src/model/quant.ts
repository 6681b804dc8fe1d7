// CPU dequantization (and two reference quantizers) for ggml's weight types.
//
// Every dequantizer is bit-exact with ggml's `to_float`: the same f16 → f32 conversion (exact),
// and the same f32 operations in the same order. JavaScript computes in f64, so each f32
// operation of the C code is one `fround` here; a product or sum of two f32 values is exact in
// f64, so rounding it once gives the correctly rounded f32 result, as the C code gets.
// These are the oracle for the GPU kernels and the fallback for types the GPU does not decode.

import { blockGeometry, ggmlTypeName, GGMLType } from './ggml-type.ts';

const fround = Math.fround;

// ---------------------------------------------------------------------------------------------
// Half and bfloat16 conversions

/** f16 bits → f32, for all 65536 patterns (exact, subnormals and NaN payloads included). */
const halfTable: Float32Array = (() => {
  const bits = new Uint32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = (h & 0x8000) << 16;
    const exponent = (h >> 10) & 0x1f;
    let mantissa = h & 0x3ff;
    if (exponent === 0x1f) {
      bits[h] = sign | 0x7f800000 | (mantissa << 13);
    } else if (exponent !== 0) {
      bits[h] = sign | ((exponent + 112) << 23) | (mantissa << 13);
    } else if (mantissa === 0) {
      bits[h] = sign;
    } else {
      // Subnormal half: normalize it (every f16 subnormal is a normal f32).
      let e = 113;
      while ((mantissa & 0x400) === 0) {
        mantissa <<= 1;
        e--;
      }
      bits[h] = sign | (e << 23) | ((mantissa & 0x3ff) << 13);
    }
  }
  return new Float32Array(bits.buffer);
})();

export function f16ToF32(half: number): number {
  return halfTable[half & 0xffff]!;
}

const scratch = new DataView(new ArrayBuffer(4));

/** f32 → f16 bits, rounding to nearest even (what ggml's GGML_FP32_TO_FP16 does). */
export function f32ToF16(value: number): number {
  scratch.setFloat32(0, value);
  const x = scratch.getUint32(0);
  const sign = (x >>> 16) & 0x8000;
  const exponent = (x >>> 23) & 0xff;
  let mantissa = x & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa ? 0x200 : 0);
  const e = exponent - 112; // re-biased for f16
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mantissa |= 0x800000;
    const shift = 14 - e;
    let half = mantissa >>> shift;
    const rest = mantissa & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rest > halfway || (rest === halfway && (half & 1))) half++;
    return sign | half;
  }
  let half = (e << 10) | (mantissa >>> 13);
  const rest = mantissa & 0x1fff;
  // A carry out of the mantissa correctly bumps the exponent (up to infinity).
  if (rest > 0x1000 || (rest === 0x1000 && (half & 1))) half++;
  return sign | half;
}

/** f32 → bf16 bits: the top half, rounded to nearest even (as torch's `.to(torch.bfloat16)` does; NaN stays NaN). */
export function f32ToBf16(value: number): number {
  scratch.setFloat32(0, value);
  const x = scratch.getUint32(0);
  if ((x & 0x7fffffff) > 0x7f800000) return (x >>> 16) | 0x40;
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

/** bf16 bits → f32: the top half of an f32 (exact). */
export function bf16ToF32(bits: number): number {
  scratch.setUint32(0, (bits & 0xffff) << 16);
  return scratch.getFloat32(0);
}

// ---------------------------------------------------------------------------------------------
// Dequantization

const u16 = (b: Uint8Array, o: number): number => b[o]! | (b[o + 1]! << 8);
const half = (b: Uint8Array, o: number): number => halfTable[u16(b, o)]!;
const i8 = (v: number): number => (v << 24) >> 24;

/** ggml's non-linear 4-bit codebook for IQ4_NL (and IQ4_XS). */
export const IQ4_NL_VALUES: readonly number[] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

type BlockDecoder = (b: Uint8Array, o: number, y: Float32Array, yo: number) => void;

/** The 6-bit scale and min of sub-block j in a Q4_K/Q5_K block (ggml's get_scale_min_k4). */
function scaleMinK4(j: number, b: Uint8Array, o: number): [number, number] {
  if (j < 4) return [b[o + j]! & 63, b[o + j + 4]! & 63];
  return [(b[o + j + 4]! & 0xf) | ((b[o + j - 4]! >> 6) << 4), (b[o + j + 4]! >> 4) | ((b[o + j]! >> 6) << 4)];
}

/** The 16 signed 6-bit scales of a Q3_K block, already minus 32. */
function q3kScales(b: Uint8Array, o: number): Int8Array {
  const s = new Int8Array(16);
  for (let i = 0; i < 16; i++) {
    const low = i < 8 ? b[o + i]! & 0xf : b[o + i - 8]! >> 4;
    const high = (b[o + 8 + (i % 4)]! >> (2 * (i >> 2))) & 3;
    s[i] = (low | (high << 4)) - 32;
  }
  return s;
}

// Each decoder writes one block at y[yo...]. Block layouts are ggml's structs (little endian).
const decoders: Partial<Record<GGMLType, BlockDecoder>> = {
  // { f16 d; u8 qs[16] }: value j is the low nibble of qs[j], value j+16 the high one.
  [GGMLType.Q4_0]: (b, o, y, yo) => {
    const d = half(b, o);
    for (let j = 0; j < 16; j++) {
      const q = b[o + 2 + j]!;
      y[yo + j] = fround(((q & 0xf) - 8) * d);
      y[yo + j + 16] = fround(((q >> 4) - 8) * d);
    }
  },
  // { f16 d; u16 zero; u8 qs[16] } (webshard's AWQ/GPTQ form): (q - zero) · d, exact in f32
  // (at most 5 + 11 significant bits), so it equals the checkpoints' exact dequantization.
  [GGMLType.Q4_ZP]: (b, o, y, yo) => {
    const d = half(b, o);
    const zero = u16(b, o + 2);
    for (let j = 0; j < 16; j++) {
      const q = b[o + 4 + j]!;
      y[yo + j] = fround(((q & 0xf) - zero) * d);
      y[yo + j + 16] = fround(((q >> 4) - zero) * d);
    }
  },
  // { f16 d, m; u8 qs[16] }
  [GGMLType.Q4_1]: (b, o, y, yo) => {
    const d = half(b, o);
    const m = half(b, o + 2);
    for (let j = 0; j < 16; j++) {
      const q = b[o + 4 + j]!;
      y[yo + j] = fround(fround((q & 0xf) * d) + m);
      y[yo + j + 16] = fround(fround((q >> 4) * d) + m);
    }
  },
  // { f16 d; u8 qh[4]; u8 qs[16] }: bit v of qh is the fifth bit of value v.
  [GGMLType.Q5_0]: (b, o, y, yo) => {
    const d = half(b, o);
    const qh = (b[o + 2]! | (b[o + 3]! << 8) | (b[o + 4]! << 16) | (b[o + 5]! << 24)) >>> 0;
    for (let j = 0; j < 16; j++) {
      const q = b[o + 6 + j]!;
      const h0 = ((qh >>> j) << 4) & 0x10;
      const h1 = (qh >>> (j + 12)) & 0x10;
      y[yo + j] = fround((((q & 0xf) | h0) - 16) * d);
      y[yo + j + 16] = fround((((q >> 4) | h1) - 16) * d);
    }
  },
  // { f16 d, m; u8 qh[4]; u8 qs[16] }
  [GGMLType.Q5_1]: (b, o, y, yo) => {
    const d = half(b, o);
    const m = half(b, o + 2);
    const qh = (b[o + 4]! | (b[o + 5]! << 8) | (b[o + 6]! << 16) | (b[o + 7]! << 24)) >>> 0;
    for (let j = 0; j < 16; j++) {
      const q = b[o + 8 + j]!;
      const h0 = ((qh >>> j) << 4) & 0x10;
      const h1 = (qh >>> (j + 12)) & 0x10;
      y[yo + j] = fround(fround(((q & 0xf) | h0) * d) + m);
      y[yo + j + 16] = fround(fround(((q >> 4) | h1) * d) + m);
    }
  },
  // { f16 d; i8 qs[32] }
  [GGMLType.Q8_0]: (b, o, y, yo) => {
    const d = half(b, o);
    for (let j = 0; j < 32; j++) y[yo + j] = fround(i8(b[o + 2 + j]!) * d);
  },
  // { f16 d; u8 qs[16] }: nibbles index a fixed codebook.
  [GGMLType.IQ4_NL]: (b, o, y, yo) => {
    const d = half(b, o);
    for (let j = 0; j < 16; j++) {
      const q = b[o + 2 + j]!;
      y[yo + j] = fround(d * IQ4_NL_VALUES[q & 0xf]!);
      y[yo + j + 16] = fround(d * IQ4_NL_VALUES[q >> 4]!);
    }
  },
  // { u8 scales[16]; u8 qs[64]; f16 d, dmin }: 16 sub-blocks of 16 with 4-bit scale and min.
  [GGMLType.Q2_K]: (b, o, y, yo) => {
    const d = half(b, o + 80);
    const min = half(b, o + 82);
    let is = 0;
    for (let n = 0; n < 2; n++) {
      const q = o + 16 + 32 * n;
      for (let j = 0; j < 4; j++) {
        const shift = 2 * j;
        for (let k = 0; k < 2; k++) {
          const sc = b[o + is++]!;
          const dl = fround(d * (sc & 0xf));
          const ml = fround(min * (sc >> 4));
          for (let l = 0; l < 16; l++) y[yo++] = fround(fround(dl * ((b[q + 16 * k + l]! >> shift) & 3)) - ml);
        }
      }
    }
  },
  // { u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d }: 2 low bits in qs, the third in hmask.
  [GGMLType.Q3_K]: (b, o, y, yo) => {
    const dAll = half(b, o + 108);
    const scales = q3kScales(b, o + 96);
    let is = 0;
    let m = 1;
    for (let n = 0; n < 2; n++) {
      const q = o + 32 + 32 * n;
      for (let j = 0; j < 4; j++) {
        const shift = 2 * j;
        for (let k = 0; k < 2; k++) {
          const dl = fround(dAll * scales[is++]!);
          for (let l = 0; l < 16; l++) {
            const low = (b[q + 16 * k + l]! >> shift) & 3;
            y[yo++] = fround(dl * (low - (b[o + 16 * k + l]! & m ? 0 : 4)));
          }
        }
        m <<= 1;
      }
    }
  },
  // { f16 d, dmin; u8 scales[12]; u8 qs[128] }: 8 sub-blocks of 32 with 6-bit scale and min.
  [GGMLType.Q4_K]: (b, o, y, yo) => {
    const d = half(b, o);
    const min = half(b, o + 2);
    for (let c = 0; c < 4; c++) {
      const q = o + 16 + 32 * c;
      for (let hi = 0; hi < 2; hi++) {
        const [sc, mn] = scaleMinK4(2 * c + hi, b, o + 4);
        const d1 = fround(d * sc);
        const m1 = fround(min * mn);
        const shift = 4 * hi;
        for (let l = 0; l < 32; l++) y[yo++] = fround(fround(d1 * ((b[q + l]! >> shift) & 0xf)) - m1);
      }
    }
  },
  // { f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128] }: Q4_K plus a fifth bit per value.
  [GGMLType.Q5_K]: (b, o, y, yo) => {
    const d = half(b, o);
    const min = half(b, o + 2);
    for (let c = 0; c < 4; c++) {
      const q = o + 48 + 32 * c;
      for (let hi = 0; hi < 2; hi++) {
        const j = 2 * c + hi;
        const [sc, mn] = scaleMinK4(j, b, o + 4);
        const d1 = fround(d * sc);
        const m1 = fround(min * mn);
        const shift = 4 * hi;
        for (let l = 0; l < 32; l++) {
          const value = ((b[q + l]! >> shift) & 0xf) + ((b[o + 16 + l]! >> j) & 1 ? 16 : 0);
          y[yo++] = fround(fround(d1 * value) - m1);
        }
      }
    }
  },
  // { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d }: 6-bit values, 16 sub-blocks of 16.
  [GGMLType.Q6_K]: (b, o, y, yo) => {
    const d = half(b, o + 208);
    for (let n = 0; n < 2; n++) {
      const ql = o + 64 * n;
      const qh = o + 128 + 32 * n;
      const sc = o + 192 + 8 * n;
      const out = yo + 128 * n;
      for (let l = 0; l < 32; l++) {
        const is = l >> 4;
        const h = b[qh + l]!;
        const q1 = ((b[ql + l]! & 0xf) | ((h & 3) << 4)) - 32;
        const q2 = ((b[ql + l + 32]! & 0xf) | (((h >> 2) & 3) << 4)) - 32;
        const q3 = ((b[ql + l]! >> 4) | (((h >> 4) & 3) << 4)) - 32;
        const q4 = ((b[ql + l + 32]! >> 4) | (((h >> 6) & 3) << 4)) - 32;
        y[out + l] = fround(fround(d * i8(b[sc + is]!)) * q1);
        y[out + l + 32] = fround(fround(d * i8(b[sc + is + 2]!)) * q2);
        y[out + l + 64] = fround(fround(d * i8(b[sc + is + 4]!)) * q3);
        y[out + l + 96] = fround(fround(d * i8(b[sc + is + 6]!)) * q4);
      }
    }
  },
};

/** Types `dequantize` understands. */
export function dequantizableTypes(): GGMLType[] {
  return [GGMLType.F32, GGMLType.F16, GGMLType.BF16, ...(Object.keys(decoders).map(Number) as GGMLType[])];
}

/**
 * Dequantizes `count` values (whole blocks) of `type` stored in `bytes` (GGUF/ggml layout)
 * into f32, bit for bit as ggml's `to_float` does.
 */
export function dequantize(type: GGMLType, bytes: Uint8Array, count: number): Float32Array {
  const geometry = blockGeometry[type];
  if (!geometry) throw new Error(`dequantize: unknown type ${ggmlTypeName(type)}`);
  if (count % geometry.blockSize !== 0) {
    throw new Error(`dequantize: ${count} values is not whole ${ggmlTypeName(type)} blocks of ${geometry.blockSize}`);
  }
  const nBlocks = count / geometry.blockSize;
  const need = nBlocks * geometry.typeSize;
  if (bytes.byteLength < need) {
    throw new Error(`dequantize: ${count} ${ggmlTypeName(type)} values need ${need} bytes, got ${bytes.byteLength}`);
  }
  const y = new Float32Array(count);
  switch (type) {
    case GGMLType.F32:
      // Copy bytes, not numbers: keeps NaN payloads and needs no 4-byte alignment of `bytes`.
      new Uint8Array(y.buffer).set(bytes.subarray(0, count * 4));
      return y;
    case GGMLType.F16:
      for (let i = 0; i < count; i++) y[i] = half(bytes, 2 * i);
      return y;
    case GGMLType.BF16: {
      const bits = new Uint32Array(y.buffer);
      for (let i = 0; i < count; i++) bits[i] = u16(bytes, 2 * i) << 16;
      return y;
    }
  }
  const decode = decoders[type];
  if (!decode) throw new Error(`dequantize: ${ggmlTypeName(type)} is not supported`);
  for (let i = 0; i < nBlocks; i++) decode(bytes, i * geometry.typeSize, y, i * geometry.blockSize);
  return y;
}

/** Dequantizes rows [firstRow, firstRow + nRows) of a row-major `rows × cols` tensor. */
export function dequantizeRows(type: GGMLType, bytes: Uint8Array, cols: number, firstRow: number, nRows: number): Float32Array {
  const geometry = blockGeometry[type];
  if (!geometry) throw new Error(`dequantizeRows: unknown type ${ggmlTypeName(type)}`);
  const rowBytes = (cols / geometry.blockSize) * geometry.typeSize;
  return dequantize(type, bytes.subarray(firstRow * rowBytes, (firstRow + nRows) * rowBytes), nRows * cols);
}

// ---------------------------------------------------------------------------------------------
// Reference quantizers (ggml's quantize_row_*_ref): for tests and for making small models.

/** C's roundf: halves round away from zero. */
const roundAway = (x: number): number => (x < 0 ? -Math.floor(-x + 0.5) : Math.floor(x + 0.5));

function quantizeQ8_0(x: Float32Array, out: Uint8Array): void {
  for (let i = 0; i < x.length / 32; i++) {
    const o = i * 34;
    let amax = 0;
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[i * 32 + j]!));
    const d = fround(amax / 127);
    const id = d ? fround(1 / d) : 0;
    const h = f32ToF16(d);
    out[o] = h & 0xff;
    out[o + 1] = h >> 8;
    for (let j = 0; j < 32; j++) out[o + 2 + j] = roundAway(fround(x[i * 32 + j]! * id)) & 0xff;
  }
}

function quantizeQ4_0(x: Float32Array, out: Uint8Array): void {
  for (let i = 0; i < x.length / 32; i++) {
    const o = i * 18;
    // The signed value of largest magnitude maps to -8, so the scale keeps its sign.
    let amax = 0;
    let max = 0;
    for (let j = 0; j < 32; j++) {
      const v = x[i * 32 + j]!;
      if (amax < Math.abs(v)) {
        amax = Math.abs(v);
        max = v;
      }
    }
    const d = fround(max / -8);
    const id = d ? fround(1 / d) : 0;
    const h = f32ToF16(d);
    out[o] = h & 0xff;
    out[o + 1] = h >> 8;
    for (let j = 0; j < 16; j++) {
      // (int8_t)(x + 8.5f) truncates toward zero.
      const q0 = Math.min(15, Math.trunc(fround(fround(x[i * 32 + j]! * id) + 8.5)));
      const q1 = Math.min(15, Math.trunc(fround(fround(x[i * 32 + 16 + j]! * id) + 8.5)));
      out[o + 2 + j] = q0 | (q1 << 4);
    }
  }
}

const quantizers: Partial<Record<GGMLType, (x: Float32Array, out: Uint8Array) => void>> = {
  [GGMLType.Q8_0]: quantizeQ8_0,
  [GGMLType.Q4_0]: quantizeQ4_0,
};

/** Types `quantize` can produce. */
export function quantizableTypes(): GGMLType[] {
  return [GGMLType.F32, GGMLType.F16, GGMLType.BF16, ...(Object.keys(quantizers).map(Number) as GGMLType[])];
}

/** Quantizes values (whole blocks) to `type`'s GGUF bytes, as ggml's reference quantizer does. */
export function quantize(type: GGMLType, values: Float32Array): Uint8Array {
  const geometry = blockGeometry[type];
  if (!geometry) throw new Error(`quantize: unknown type ${ggmlTypeName(type)}`);
  if (values.length % geometry.blockSize !== 0) {
    throw new Error(`quantize: ${values.length} values is not whole ${ggmlTypeName(type)} blocks of ${geometry.blockSize}`);
  }
  const out = new Uint8Array((values.length / geometry.blockSize) * geometry.typeSize);
  if (type === GGMLType.F32) {
    out.set(new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
    return out;
  }
  if (type === GGMLType.F16 || type === GGMLType.BF16) {
    const toHalf = type === GGMLType.F16 ? f32ToF16 : f32ToBf16;
    for (let i = 0; i < values.length; i++) {
      const h = toHalf(values[i]!);
      out[2 * i] = h & 0xff;
      out[2 * i + 1] = h >> 8;
    }
    return out;
  }
  const run = quantizers[type];
  if (!run) throw new Error(`quantize: no reference quantizer for ${ggmlTypeName(type)}`);
  run(values, out);
  return out;
}
