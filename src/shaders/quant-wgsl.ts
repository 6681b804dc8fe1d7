// How the GPU decodes each weight type: one WGSL snippet per type, over the layouts that
// src/model/repack.ts writes (see the table there). Every kernel that reads weights (matmul,
// embedding) includes the snippet of its weight's type, so each type's decoding lives here only.
//
// Contract. `weightDecodeWgsl(type, binding)` declares the weight binding
//     @group(0) @binding(binding) var<storage, read> w: array<vec4u>;
// (16-byte elements, so wide decoders load a whole block's quants in one or two loads; the
// buffer is padded to 16 bytes) and defines
//     fn w_word(i: u32) -> u32                     // word i of the weight
//     const W_GROUPS_PER_BLOCK: u32;               // groups of 8 values per GPU block
//     struct W8 { a: vec4f, b: vec4f }             // 8 consecutive values of a row
//     fn w_group(blk: u32, sub: u32, scales: u32) -> W8
//     const W_CHUNK: u32;                          // groups decoded together by w_chunk
//     fn w_chunk(blk: u32, sub0: u32, scales: u32) -> array<W8, W_CHUNK>
// where `blk` is the block index (row * blocksPerRow + block in row), `sub` the group of 8 within
// the block (`sub0` a multiple of W_CHUNK), and `scales` the word offset of the scales region
// (ignored by types without one). `w_group` decodes one group (any kernel can use it); `w_chunk`
// decodes W_CHUNK consecutive groups at once, with 16-byte loads for the types decode is
// usually run in (F32, F16, Q8_0, Q4_0), a whole block at once for Q4_ZP, and by calling w_group for
// the others.
// Values are computed in the same order as ggml's CPU dequantization (e.g. Q4_K: d*sc, then
// d1*q - m1), so the GPU sees the same weights as src/model/quant.ts up to fused multiply-adds.

import { blockGeometry, ggmlTypeName, GGMLType } from '../model/ggml-type.ts';
import { gpuLayout } from '../model/repack.ts';
import { IQ4_NL_VALUES } from '../model/quant.ts';

const common = /* wgsl */ `
struct W8 { a: vec4f, b: vec4f }

fn w_word(i: u32) -> u32 {
  return w[i >> 2u][i & 3u];
}

// Four unsigned bytes of a word, one per lane.
fn bytes4(x: u32) -> vec4u {
  return (vec4u(x) >> vec4u(0u, 8u, 16u, 24u)) & vec4u(0xffu);
}
fn u8x4(x: u32) -> vec4f {
  return vec4f(bytes4(x));
}
// Four signed bytes of a word, as floats (arithmetic shift sign-extends).
fn i8x4(x: u32) -> vec4f {
  return vec4f(bitcast<vec4i>(vec4u(x) << vec4u(24u, 16u, 8u, 0u)) >> vec4u(24u));
}
// Byte k of the words starting at w_word(base).
fn w_byte(base: u32, k: u32) -> u32 {
  return (w_word(base + (k >> 2u)) >> (8u * (k & 3u))) & 0xffu;
}
// The f16 at half index i of the words starting at w_word(base).
fn w_half(base: u32, i: u32) -> f32 {
  return unpack2x16float(w_word(base + (i >> 1u)))[i & 1u];
}
// Bits 0..3 of h, one per lane (the fifth bits of Q5 values).
fn bits4(h: u32) -> vec4u {
  return (vec4u(h) >> vec4u(0u, 1u, 2u, 3u)) & vec4u(1u);
}
`;

/** Q4_0-style nibbles: group `sub` of a 4-word block of 32 (low nibbles: values 0..15, high: 16..31). */
const nibbleWords = /* wgsl */ `
fn nibbles8(q: u32, sub: u32) -> array<u32, 2> {
  let shift = (sub >> 1u) * 4u;
  let i = q + (sub & 1u) * 2u;
  return array<u32, 2>((w_word(i) >> shift) & 0x0f0f0f0fu, (w_word(i + 1u) >> shift) & 0x0f0f0f0fu);
}
`;

/** The 6-bit (scale, min) of sub-block j of a Q4_K/Q5_K block whose scales start at word s. */
const scaleMinK4 = /* wgsl */ `
fn scale_min_k4(s: u32, j: u32) -> vec2f {
  if (j < 4u) {
    return vec2f(f32(w_byte(s, j) & 63u), f32(w_byte(s, j + 4u) & 63u));
  }
  let hi = w_byte(s, j + 4u);
  return vec2f(f32((hi & 0xfu) | ((w_byte(s, j - 4u) >> 6u) << 4u)), f32((hi >> 4u) | ((w_byte(s, j) >> 6u) << 4u)));
}
`;

const snippets: Partial<Record<GGMLType, string>> = {
  [GGMLType.F32]: `
const W_GROUPS_PER_BLOCK: u32 = 1u;
fn w_group(blk: u32, sub: u32, scales: u32) -> W8 {
  let i = blk * 8u;
  return W8(bitcast<vec4f>(vec4u(w_word(i), w_word(i + 1u), w_word(i + 2u), w_word(i + 3u))),
            bitcast<vec4f>(vec4u(w_word(i + 4u), w_word(i + 5u), w_word(i + 6u), w_word(i + 7u))));
}`,

  [GGMLType.F16]: `
const W_GROUPS_PER_BLOCK: u32 = 1u;
fn w_group(blk: u32, sub: u32, scales: u32) -> W8 {
  let i = blk * 4u;
  return W8(vec4f(unpack2x16float(w_word(i)), unpack2x16float(w_word(i + 1u))),
            vec4f(unpack2x16float(w_word(i + 2u)), unpack2x16float(w_word(i + 3u))));
}`,

  [GGMLType.BF16]: `
const W_GROUPS_PER_BLOCK: u32 = 1u;
fn bf16x2(x: u32) -> vec2f { return bitcast<vec2f>(vec2u(x << 16u, x & 0xffff0000u)); }
fn w_group(blk: u32, sub: u32, scales: u32) -> W8 {
  let i = blk * 4u;
  return W8(vec4f(bf16x2(w_word(i)), bf16x2(w_word(i + 1u))), vec4f(bf16x2(w_word(i + 2u)), bf16x2(w_word(i + 3u))));
}`,

  [GGMLType.Q8_0]: `
const W_GROUPS_PER_BLOCK: u32 = 4u;
fn w_group(blk: u32, sub: u32, scales: u32) -> W8 {
  let i = blk * 8u + sub * 2u;
  let d = w_half(scales, blk);
  return W8(i8x4(w_word(i)) * d, i8x4(w_word(i + 1u)) * d);
}`,

  [GGMLType.Q4_0]: `${nibbleWords}
const W_GROUPS_PER_BLOCK: u32 = 4u;
fn w_group(blk: u32, sub: u32, scales: u32) -> W8 {
  let q = nibbles8(blk * 4u, sub);
  let d = w_half(scales, blk);
  return W8((u8x4(q[0]) - 8.0) * d, (u8x4(q[1]) - 8.0) * d);
}`,

  [GGMLType.IQ4_NL]: `${nibbleWords}
const W_GROUPS_PER_BLOCK: u32 = 4u;
const IQ4_NL = array<f32, 16>(${IQ4_NL_VALUES.map((v) => `${v}.0`).join(', ')});
fn iq4x4(n: u32) -> vec4f {
  return vec4f(IQ4_NL[n & 0xfu], IQ4_NL[(n >> 8u) & 0xfu], IQ4_NL[(n >> 16u) & 0xfu], IQ4_NL[n >> 24u]);
}
fn w_group(blk: u32, sub: u32, scales: u32) -> W8 {
  let q = nibbles8(blk * 4u, sub);
  let d = w_half(scales, blk);
  return W8(d * iq4x4(q[0]), d * iq4x4(q[1]));
}`,

  // AWQ / GPTQ (webshard's Q4_ZP): word 0 = f16 scale | zero point << 16, then Q4_0's nibbles.
  [GGMLType.Q4_ZP]: `${nibbleWords}
// A whole block: scale, zero point, and the 32 nibbles as bytes (values 4i..4i+3 in word i).
// 5-word blocks are not 16-byte aligned, so five word loads instead of Q4_0's one vec4 load.
struct Q4ZP { d: f32, zero: u32, q: array<u32, 8> }
fn q4zp_block(blk: u32) -> Q4ZP {
  let base = blk * 5u;
  let head = w_word(base);
  let q = vec4u(w_word(base + 1u), w_word(base + 2u), w_word(base + 3u), w_word(base + 4u));
  let lo = q & vec4u(0x0f0f0f0fu);
  let hi = (q >> vec4u(4u)) & vec4u(0x0f0f0f0fu);
  return Q4ZP(unpack2x16float(head).x, head >> 16u, array<u32, 8>(lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w));
}
const W_GROUPS_PER_BLOCK: u32 = 4u;
fn w_group(blk: u32, sub: u32, scales: u32) -> W8 {
  let base = blk * 5u;
  let head = w_word(base);
  let d = unpack2x16float(head).x;
  let zero = f32(head >> 16u);
  let q = nibbles8(base + 1u, sub);
  return W8((u8x4(q[0]) - zero) * d, (u8x4(q[1]) - zero) * d);
}`,

  // Q5: bit v of qh is the fifth bit of value v.
  [GGMLType.Q5_0]: `${nibbleWords}
const W_GROUPS_PER_BLOCK: u32 = 4u;
fn w_group(blk: u32, sub: u32, scales: u32) -> W8 {
  let base = blk * 5u;
  let h = w_word(base) >> (8u * sub);
  let q = nibbles8(base + 1u, sub);
  let d = w_half(scales, blk);
  let lo = vec4f(bytes4(q[0]) | (bits4(h) << vec4u(4u)));
  let hi = vec4f(bytes4(q[1]) | (bits4(h >> 4u) << vec4u(4u)));
  return W8((lo - 16.0) * d, (hi - 16.0) * d);
}`,

  [GGMLType.Q4_1]: `${nibbleWords}
const W_GROUPS_PER_BLOCK: u32 = 4u;
fn w_group(blk: u32, sub: u32, scales: u32) -> W8 {
  let base = blk * 5u;
  let dm = unpack2x16float(w_word(base));
  let q = nibbles8(base + 1u, sub);
  return W8(u8x4(q[0]) * dm.x + dm.y, u8x4(q[1]) * dm.x + dm.y);
}`,

  [GGMLType.Q5_1]: `${nibbleWords}
const W_GROUPS_PER_BLOCK: u32 = 4u;
fn w_group(blk: u32, sub: u32, scales: u32) -> W8 {
  let base = blk * 6u;
  let dm = unpack2x16float(w_word(base));
  let h = w_word(base + 1u) >> (8u * sub);
  let q = nibbles8(base + 2u, sub);
  let lo = vec4f(bytes4(q[0]) | (bits4(h) << vec4u(4u)));
  let hi = vec4f(bytes4(q[1]) | (bits4(h >> 4u) << vec4u(4u)));
  return W8(lo * dm.x + dm.y, hi * dm.x + dm.y);
}`,

  // Value v = 128h + 32j + 16k + l sits in qs byte 32h + 16k + l at bits 2j; scale v / 16.
  [GGMLType.Q2_K]: `
const W_GROUPS_PER_BLOCK: u32 = 32u;
fn w_group(blk: u32, sub: u32, scales: u32) -> W8 {
  let base = blk * 21u;
  let dm = unpack2x16float(w_word(base + 20u));
  let sc = w_byte(base, sub >> 1u);
  let dl = dm.x * f32(sc & 0xfu);
  let ml = dm.y * f32(sc >> 4u);
  let i = base + 4u + 8u * (sub >> 4u) + 4u * ((sub >> 1u) & 1u) + 2u * (sub & 1u);
  let shift = 2u * ((sub >> 2u) & 3u);
  return W8(dl * u8x4((w_word(i) >> shift) & 0x03030303u) - ml, dl * u8x4((w_word(i + 1u) >> shift) & 0x03030303u) - ml);
}`,

  // As Q2_K, plus a third bit in hmask byte 16k + l at bit 4h + j (clear means minus 4).
  [GGMLType.Q3_K]: `
const W_GROUPS_PER_BLOCK: u32 = 32u;
fn w_group(blk: u32, sub: u32, scales: u32) -> W8 {
  let base = blk * 27u;
  let s = sub >> 1u; // 16-value sub-block
  let low = (w_byte(base + 24u, s & 7u) >> (4u * (s >> 3u))) & 0xfu;
  let high = (w_byte(base + 24u, 8u + (s & 3u)) >> (2u * (s >> 2u))) & 3u;
  let dl = w_half(scales, blk) * f32(i32(low | (high << 4u)) - 32);
  let k2 = 4u * ((sub >> 1u) & 1u) + 2u * (sub & 1u);
  let i = base + 8u + 8u * (sub >> 4u) + k2;
  let shift = 2u * ((sub >> 2u) & 3u);
  let m = 4u * (sub >> 4u) + ((sub >> 2u) & 3u);
  let qa = u8x4((w_word(i) >> shift) & 0x03030303u) + 4.0 * u8x4((w_word(base + k2) >> m) & 0x01010101u) - 4.0;
  let qb = u8x4((w_word(i + 1u) >> shift) & 0x03030303u) + 4.0 * u8x4((w_word(base + k2 + 1u) >> m) & 0x01010101u) - 4.0;
  return W8(dl * qa, dl * qb);
}`,

  // Sub-block j (32 values) = nibble half (j & 1) of qs bytes 32 (j >> 1) ...
  [GGMLType.Q4_K]: `${scaleMinK4}
const W_GROUPS_PER_BLOCK: u32 = 32u;
fn w_group(blk: u32, sub: u32, scales: u32) -> W8 {
  let base = blk * 36u;
  let j = sub >> 2u;
  let dm = unpack2x16float(w_word(base));
  let sm = scale_min_k4(base + 1u, j);
  let d1 = dm.x * sm.x;
  let m1 = dm.y * sm.y;
  let i = base + 4u + 8u * (j >> 1u) + 2u * (sub & 3u);
  let shift = 4u * (j & 1u);
  return W8(d1 * u8x4((w_word(i) >> shift) & 0x0f0f0f0fu) - m1, d1 * u8x4((w_word(i + 1u) >> shift) & 0x0f0f0f0fu) - m1);
}`,

  // Q4_K plus a fifth bit: bit j of qh byte l.
  [GGMLType.Q5_K]: `${scaleMinK4}
const W_GROUPS_PER_BLOCK: u32 = 32u;
fn w_group(blk: u32, sub: u32, scales: u32) -> W8 {
  let base = blk * 44u;
  let j = sub >> 2u;
  let dm = unpack2x16float(w_word(base));
  let sm = scale_min_k4(base + 1u, j);
  let d1 = dm.x * sm.x;
  let m1 = dm.y * sm.y;
  let i = base + 12u + 8u * (j >> 1u) + 2u * (sub & 3u);
  let h = base + 4u + 2u * (sub & 3u);
  let shift = 4u * (j & 1u);
  let qa = u8x4((w_word(i) >> shift) & 0x0f0f0f0fu) + 16.0 * u8x4((w_word(h) >> j) & 0x01010101u);
  let qb = u8x4((w_word(i + 1u) >> shift) & 0x0f0f0f0fu) + 16.0 * u8x4((w_word(h + 1u) >> j) & 0x01010101u);
  return W8(d1 * qa - m1, d1 * qb - m1);
}`,

  // Value v = 128h + 32q + l: low 4 bits in ql byte 64h + 32 (q & 1) + l (nibble q >> 1),
  // high 2 bits in qh byte 32h + l at bits 2q, signed scale 8h + l / 16 + 2q.
  [GGMLType.Q6_K]: `
const W_GROUPS_PER_BLOCK: u32 = 32u;
fn w_group(blk: u32, sub: u32, scales: u32) -> W8 {
  let base = blk * 52u;
  let h = sub >> 4u;
  let q = (sub >> 2u) & 3u;
  let part = sub & 3u;
  let sc = f32((i32(w_byte(base + 48u, 8u * h + (part >> 1u) + 2u * q)) << 24u) >> 24u);
  let d = w_half(scales, blk) * sc;
  let i = base + 16u * h + 8u * (q & 1u) + 2u * part;
  let hi = base + 32u + 8u * h + 2u * part;
  let shift = 4u * (q >> 1u);
  let qa = vec4f(bytes4((w_word(i) >> shift) & 0x0f0f0f0fu) | (bytes4((w_word(hi) >> (2u * q)) & 0x03030303u) << vec4u(4u)));
  let qb = vec4f(bytes4((w_word(i + 1u) >> shift) & 0x0f0f0f0fu) | (bytes4((w_word(hi + 1u) >> (2u * q)) & 0x03030303u) << vec4u(4u)));
  return W8(d * (qa - 32.0), d * (qb - 32.0));
}`,
};

// Wide decoders: W_CHUNK groups from 16-byte loads (layouts in src/model/repack.ts).
const chunkSnippets: Partial<Record<GGMLType, string>> = {
  // One group: 8 f32 in two loads.
  [GGMLType.F32]: `
const W_CHUNK: u32 = 1u;
fn w_chunk(blk: u32, sub0: u32, scales: u32) -> array<W8, 1> {
  return array<W8, 1>(W8(bitcast<vec4f>(w[2u * blk]), bitcast<vec4f>(w[2u * blk + 1u])));
}`,

  // One group: 8 f16 in one load.
  [GGMLType.F16]: `
const W_CHUNK: u32 = 1u;
fn w_chunk(blk: u32, sub0: u32, scales: u32) -> array<W8, 1> {
  let q = w[blk];
  return array<W8, 1>(W8(vec4f(unpack2x16float(q.x), unpack2x16float(q.y)), vec4f(unpack2x16float(q.z), unpack2x16float(q.w))));
}`,

  // A whole block: 32 signed bytes in two loads, one scale.
  [GGMLType.Q8_0]: `
const W_CHUNK: u32 = 4u;
fn w_chunk(blk: u32, sub0: u32, scales: u32) -> array<W8, 4> {
  let lo = w[2u * blk];
  let hi = w[2u * blk + 1u];
  let d = w_half(scales, blk);
  return array<W8, 4>(W8(i8x4(lo.x) * d, i8x4(lo.y) * d), W8(i8x4(lo.z) * d, i8x4(lo.w) * d),
                      W8(i8x4(hi.x) * d, i8x4(hi.y) * d), W8(i8x4(hi.z) * d, i8x4(hi.w) * d));
}`,

  // A whole block, decoded once for its four groups.
  [GGMLType.Q4_ZP]: `
const W_CHUNK: u32 = 4u;
fn w_chunk(blk: u32, sub0: u32, scales: u32) -> array<W8, 4> {
  let b = q4zp_block(blk);
  let zero = f32(b.zero);
  var out: array<W8, 4>;
  for (var g = 0u; g < 4u; g++) { out[g] = W8((u8x4(b.q[2u * g]) - zero) * b.d, (u8x4(b.q[2u * g + 1u]) - zero) * b.d); }
  return out;
}`,

  // A whole block: 32 nibbles in one load (low nibbles are values 0..15, high ones 16..31).
  [GGMLType.Q4_0]: `
const W_CHUNK: u32 = 4u;
fn w_chunk(blk: u32, sub0: u32, scales: u32) -> array<W8, 4> {
  let q = w[blk];
  let d = w_half(scales, blk);
  let lo = q & vec4u(0x0f0f0f0fu);
  let hi = (q >> vec4u(4u)) & vec4u(0x0f0f0f0fu);
  return array<W8, 4>(W8((u8x4(lo.x) - 8.0) * d, (u8x4(lo.y) - 8.0) * d), W8((u8x4(lo.z) - 8.0) * d, (u8x4(lo.w) - 8.0) * d),
                      W8((u8x4(hi.x) - 8.0) * d, (u8x4(hi.y) - 8.0) * d), W8((u8x4(hi.z) - 8.0) * d, (u8x4(hi.w) - 8.0) * d));
}`,
};

// Integer decoders, for the int8 matvec (activations quantized to int8 per block of 32, as
// llama.cpp's quantized matmuls do): a block as 8 words of packed signed bytes (values 4i..4i+3
// in word i) for dot4I8Packed, its scale `d`, and its offset `o`, what every stored byte is above
// its value (Q4_0's nibbles 0..15 stand for -8..7, so 8; AWQ/GPTQ's zero point, per block): the
// offset is applied once per block, as -o·Σx, which keeps the bytes valid signed operands.
const int8Snippets: Partial<Record<GGMLType, string>> = {
  [GGMLType.Q8_0]: `
fn w_block_i8(blk: u32, scales: u32) -> WI8 {
  let lo = w[2u * blk];
  let hi = w[2u * blk + 1u];
  return WI8(array<u32, 8>(lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w), w_half(scales, blk), 0i);
}`,
  [GGMLType.Q4_0]: `
fn w_block_i8(blk: u32, scales: u32) -> WI8 {
  let q = w[blk];
  let lo = q & vec4u(0x0f0f0f0fu);
  let hi = (q >> vec4u(4u)) & vec4u(0x0f0f0f0fu);
  return WI8(array<u32, 8>(lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w), w_half(scales, blk), 8i);
}`,
  [GGMLType.Q4_ZP]: `
fn w_block_i8(blk: u32, scales: u32) -> WI8 {
  let b = q4zp_block(blk);
  return WI8(b.q, b.d, i32(b.zero));
}`,
};

/** Weight types the int8 matvec can read. */
export function int8DecodableTypes(): GGMLType[] {
  return Object.keys(int8Snippets).map(Number) as GGMLType[];
}

/**
 * The offset `o` every block of a type has (Q8_0: 0, Q4_0: 8), or undefined when it varies per
 * block (Q4_ZP's zero points): the tiled int8 kernel then stages it per row, in workgroup memory
 * that the constant-offset types do without.
 */
export function int8ConstantOffset(type: GGMLType): number | undefined {
  return ({ [GGMLType.Q8_0]: 0, [GGMLType.Q4_0]: 8 } as Partial<Record<GGMLType, number>>)[type];
}

/** weightDecodeWgsl plus `w_block_i8` (see int8Snippets) for a type int8DecodableTypes lists. */
export function weightDecodeInt8Wgsl(type: GGMLType, binding: number): string {
  const snippet = int8Snippets[type];
  if (!snippet) throw new Error(`no int8 GPU decoder for ${ggmlTypeName(type)} weights (only ${int8DecodableTypes().map(ggmlTypeName).join(', ')})`);
  return `${weightDecodeWgsl(type, binding)}
struct WI8 { q: array<u32, 8>, d: f32, o: i32 }
${snippet}`;
}

// The other types decode W_CHUNK groups through w_group: four for block types, one for floats
// (whose rows are padded to 8 values only).
function chunkThroughGroups(groupsPerBlock: number): string {
  const chunk = Math.min(4, groupsPerBlock);
  return `
const W_CHUNK: u32 = ${chunk}u;
fn w_chunk(blk: u32, sub0: u32, scales: u32) -> array<W8, ${chunk}> {
  var out: array<W8, ${chunk}>;
  for (var i = 0u; i < ${chunk}u; i++) { out[i] = w_group(blk, sub0 + i, scales); }
  return out;
}`;
}

function groupsPerBlock(type: GGMLType): number {
  return gpuLayout(type, 1, blockGeometry[type]!.blockSize).blockValues / 8;
}

/** Weight types the GPU kernels can read. */
export function gpuDecodableTypes(): GGMLType[] {
  return Object.keys(snippets).map(Number) as GGMLType[];
}

/** The WGSL that declares the weight `w` at `binding` and decodes `type` (see the contract above). */
export function weightDecodeWgsl(type: GGMLType, binding: number): string {
  const snippet = snippets[type];
  if (!snippet) throw new Error(`no GPU decoder for ${ggmlTypeName(type)} weights`);
  const declaration = `@group(0) @binding(${binding}) var<storage, read> w: array<vec4u>;\n`;
  return declaration + common + snippet + (chunkSnippets[type] ?? chunkThroughGroups(groupsPerBlock(type)));
}
