// Repacking GGUF weight bytes into the u32 layout the GPU kernels read.
//
// WGSL reads storage as 4-byte words, so every block must start on a word boundary. ggml's blocks
// fall into two kinds:
//
// * Word-sized blocks (F32, Q4_1 20 B, Q5_1 24 B, Q2_K 84 B, Q4_K 144 B, Q5_K 176 B, Q4_ZP 20 B) are kept
//   verbatim, byte for byte, in the file's order.
// * Blocks whose size is 2 mod 4 carry exactly one f16 scale `d` that breaks the alignment
//   (Q8_0 34 B, Q4_0 18 B, Q5_0 22 B, IQ4_NL 18 B: `d` first; Q6_K 210 B, Q3_K 110 B: `d` last).
//   They are split: the rest of each block (a whole number of words) goes to a *quants* region,
//   and the `d`s go to a *scales* region of f16 pairs (block i's scale is half i&1 of word i>>1),
//   which starts at word `scalesOffset` (a multiple of 4, so both regions allow vec4 loads).
//   Both regions live in one buffer: Chromium allows only 10 storage buffers per shader stage.
//
// Float types are grouped in "blocks" of 8 values so every type decodes in groups of 8:
// * F32: one word per value; rows padded with zeros to a multiple of 8 values.
// * F16 / BF16: two values per word (value 2i in the low half); rows padded to a multiple of 8.
//
// Blocks are row-major: row r's blocks are `r * blocksPerRow ... (r + 1) * blocksPerRow - 1`.
// Per type, the words of one (GPU) block, with byte offsets into the original ggml block:
//
// | type   | values | words | quants region block                      | scales region |
// |--------|-------:|------:|------------------------------------------|---------------|
// | F32    |      8 |     8 | 8 × f32                                  | —             |
// | F16    |      8 |     4 | 8 × f16                                  | —             |
// | BF16   |      8 |     4 | 8 × bf16                                 | —             |
// | Q4_0   |     32 |     4 | qs[16] (bytes 2..17)                     | d             |
// | IQ4_NL |     32 |     4 | qs[16] (bytes 2..17)                     | d             |
// | Q8_0   |     32 |     8 | qs[32] (bytes 2..33)                     | d             |
// | Q5_0   |     32 |     5 | qh[4], qs[16] (bytes 2..21)              | d             |
// | Q4_1   |     32 |     5 | d, m, qs[16] (verbatim)                  | —             |
// | Q5_1   |     32 |     6 | d, m, qh[4], qs[16] (verbatim)           | —             |
// | Q4_ZP  |     32 |     5 | d, zero (u16), qs[16] (verbatim)         | —             |
// | Q2_K   |    256 |    21 | scales[16], qs[64], d, dmin (verbatim)   | —             |
// | Q3_K   |    256 |    27 | hmask[32], qs[64], scales[12] (0..107)   | d             |
// | Q4_K   |    256 |    36 | d, dmin, scales[12], qs[128] (verbatim)  | —             |
// | Q5_K   |    256 |    44 | d, dmin, scales[12], qh[32], qs[128]     | —             |
// | Q6_K   |    256 |    52 | ql[128], qh[64], scales[16] (0..207)     | d             |
//
// The WGSL that decodes each layout is in src/shaders/quant-wgsl.ts; keep the two in step.

import { blockGeometry, ggmlTypeName, GGMLType } from './ggml-type.ts';

interface LayoutRule {
  /** Values per GPU block (the decode unit; groups of 8 values within it). */
  blockValues: number;
  /** Words per block in the quants region. */
  blockWords: number;
  /** For split types: byte offset of the f16 scale inside the ggml block. */
  scaleAt?: number;
}

const rules: Partial<Record<GGMLType, LayoutRule>> = {
  [GGMLType.F32]: { blockValues: 8, blockWords: 8 },
  [GGMLType.F16]: { blockValues: 8, blockWords: 4 },
  [GGMLType.BF16]: { blockValues: 8, blockWords: 4 },
  [GGMLType.Q4_0]: { blockValues: 32, blockWords: 4, scaleAt: 0 },
  [GGMLType.IQ4_NL]: { blockValues: 32, blockWords: 4, scaleAt: 0 },
  [GGMLType.Q8_0]: { blockValues: 32, blockWords: 8, scaleAt: 0 },
  [GGMLType.Q5_0]: { blockValues: 32, blockWords: 5, scaleAt: 0 },
  [GGMLType.Q4_1]: { blockValues: 32, blockWords: 5 },
  [GGMLType.Q5_1]: { blockValues: 32, blockWords: 6 },
  [GGMLType.Q4_ZP]: { blockValues: 32, blockWords: 5 },
  [GGMLType.Q2_K]: { blockValues: 256, blockWords: 21 },
  [GGMLType.Q3_K]: { blockValues: 256, blockWords: 27, scaleAt: 108 },
  [GGMLType.Q4_K]: { blockValues: 256, blockWords: 36 },
  [GGMLType.Q5_K]: { blockValues: 256, blockWords: 44 },
  [GGMLType.Q6_K]: { blockValues: 256, blockWords: 52, scaleAt: 208 },
};

/** Where things are in a repacked weight. All offsets and sizes in 32-bit words. */
export interface GpuLayout {
  type: GGMLType;
  rows: number;
  cols: number;
  /** Values per GPU block (8 for float types, else ggml's block size). */
  blockValues: number;
  /** Words per block in the quants region. */
  blockWords: number;
  /** Blocks per row; `blocksPerRow * blockValues` ≥ cols (greater only for padded float rows). */
  blocksPerRow: number;
  /** Word offset of the f16 scales region; 0 for types that have none. */
  scalesOffset: number;
  /** Words in the whole buffer: a multiple of 4, since kernels read it as 16-byte vec4s. */
  totalWords: number;
}

/** Types that have a GPU layout (and so a GPU decoder). */
export function repackableTypes(): GGMLType[] {
  return Object.keys(rules).map(Number) as GGMLType[];
}

/** The layout of a `rows × cols` weight of `type`, without touching any data. */
export function gpuLayout(type: GGMLType, rows: number, cols: number): GpuLayout {
  const rule = rules[type];
  if (!rule) throw new Error(`no GPU layout for ${ggmlTypeName(type)} weights`);
  const geometry = blockGeometry[type]!;
  if (!Number.isInteger(rows) || !Number.isInteger(cols) || rows < 1 || cols < 1) {
    throw new Error(`bad weight shape ${rows} × ${cols}`);
  }
  if (cols % geometry.blockSize !== 0) {
    throw new Error(`${ggmlTypeName(type)} rows must be whole blocks of ${geometry.blockSize}; got ${cols} columns`);
  }
  const blocksPerRow = Math.ceil(cols / rule.blockValues);
  const nBlocks = rows * blocksPerRow;
  const quantWords = nBlocks * rule.blockWords;
  const scalesOffset = rule.scaleAt === undefined ? 0 : Math.ceil(quantWords / 4) * 4;
  const usedWords = rule.scaleAt === undefined ? quantWords : scalesOffset + Math.ceil(nBlocks / 2);
  const totalWords = Math.ceil(usedWords / 4) * 4;
  return { type, rows, cols, blockValues: rule.blockValues, blockWords: rule.blockWords, blocksPerRow, scalesOffset, totalWords };
}

/** Whether a weight's GPU bytes are its file bytes (then followed by zeros up to `totalWords`): upload them as they are. */
export function isVerbatimLayout(layout: GpuLayout): boolean {
  const rule = rules[layout.type]!;
  if (rule.scaleAt !== undefined) return false;
  // Float rows are padded to whole groups of 8 values unless they already are.
  return layout.blocksPerRow * layout.blockValues === layout.cols;
}

/** Where rows `first ..< first + count` of a weight land in its GPU buffer (byte offsets and lengths). */
export interface RowsPlacement {
  /** The rows' quants (or values, or verbatim blocks). */
  quantsAt: number;
  quantsBytes: number;
  /** Their f16 scales (split types; else 0 bytes). */
  scalesAt: number;
  scalesBytes: number;
}

export function rowsPlacement(layout: GpuLayout, first: number, count: number): RowsPlacement {
  const rowQuantBytes = layout.blocksPerRow * layout.blockWords * 4;
  const split = rules[layout.type]!.scaleAt !== undefined;
  return {
    quantsAt: first * rowQuantBytes,
    quantsBytes: count * rowQuantBytes,
    scalesAt: split ? layout.scalesOffset * 4 + first * layout.blocksPerRow * 2 : 0,
    scalesBytes: split ? count * layout.blocksPerRow * 2 : 0,
  };
}

/** Typed-array views share the platform's byte order; the GPU layout is little-endian. */
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/**
 * Repacks `count` whole rows of GGUF bytes (`bytes` starts at the first of them) into their GPU
 * layout: `quants` receives `rowsPlacement(...).quantsBytes` bytes and, for split types, `scales`
 * receives `scalesBytes` bytes. Every byte of both is written, so reused buffers need no clearing.
 * Rows can be repacked in pieces this way (the streamed upload in src/engine/weights.ts does).
 */
export function repackRows(layout: GpuLayout, bytes: Uint8Array, count: number, quants: Uint8Array, scales?: Uint8Array): void {
  const rule = rules[layout.type]!;
  const geometry = blockGeometry[layout.type]!;
  const fileRowBytes = (layout.cols / geometry.blockSize) * geometry.typeSize;
  const fileBytes = count * fileRowBytes;
  const placement = rowsPlacement(layout, 0, count);
  if (bytes.byteLength < fileBytes) throw new Error(`${ggmlTypeName(layout.type)}: ${count} rows need ${fileBytes} bytes, got ${bytes.byteLength}`);
  if (quants.byteLength < placement.quantsBytes || (scales?.byteLength ?? 0) < placement.scalesBytes) {
    throw new Error(`${ggmlTypeName(layout.type)}: output too small for ${count} rows`);
  }

  if (rule.scaleAt === undefined) {
    const paddedRowBytes = layout.blocksPerRow * layout.blockWords * 4;
    if (paddedRowBytes === fileRowBytes) {
      quants.set(bytes.subarray(0, fileBytes)); // verbatim (and float rows of whole groups of 8)
      return;
    }
    // Float rows padded to whole groups of 8 values with zeros.
    for (let r = 0; r < count; r++) {
      quants.set(bytes.subarray(r * fileRowBytes, (r + 1) * fileRowBytes), r * paddedRowBytes);
      quants.fill(0, r * paddedRowBytes + fileRowBytes, (r + 1) * paddedRowBytes);
    }
    return;
  }

  const nBlocks = count * layout.blocksPerRow;
  if (!scales) throw new Error(`${ggmlTypeName(layout.type)}: repackRows needs a scales output`);
  let done = 0;
  if (LITTLE_ENDIAN && quants.byteOffset % 4 === 0 && scales.byteOffset % 4 === 0) {
    // Word at a time, two blocks per step: a pair of blocks is a whole number of words
    // (2 × (4·blockWords + 2) bytes), and its two scales make exactly one scales word.
    const source = bytes.byteOffset % 4 === 0 ? bytes : bytes.slice(0, fileBytes); // a copy is far cheaper than the byte loop
    const pairs = nBlocks >> 1;
    const q = rule.blockWords;
    const src = new Uint32Array(source.buffer, source.byteOffset, pairs * (2 * q + 1));
    const dst = new Uint32Array(quants.buffer, quants.byteOffset, pairs * 2 * q);
    const sc = new Uint32Array(scales.buffer, scales.byteOffset, pairs);
    if (rule.scaleAt === 0) {
      if (q === 4) scaleFirstPairs4(src, dst, sc, pairs);
      else if (q === 8) scaleFirstPairs8(src, dst, sc, pairs);
      else scaleFirstPairs(src, dst, sc, pairs, q);
    } else {
      scaleLastPairs(src, dst, sc, pairs, q);
    }
    done = pairs * 2;
  }
  // A last odd block (or everything, for unaligned outputs): byte by byte.
  const quantBytes = rule.blockWords * 4;
  for (let i = done; i < nBlocks; i++) {
    const src = i * geometry.typeSize;
    const at = src + rule.scaleAt;
    const quantStart = rule.scaleAt === 0 ? src + 2 : src;
    quants.set(bytes.subarray(quantStart, quantStart + quantBytes), i * quantBytes);
    scales[2 * i] = bytes[at]!;
    scales[2 * i + 1] = bytes[at + 1]!;
  }
  // The half word after an odd last scale is padding: keep it zero in reused buffers.
  if (nBlocks % 2 === 1 && scales.byteLength > 2 * nBlocks + 1) scales.fill(0, 2 * nBlocks, 2 * nBlocks + 2);
}

// Pairs of blocks whose scale comes first (Q4_0, IQ4_NL, Q8_0, Q5_0), as words w[0 .. 2q]:
// block A (even) is d_A in the low half of w[0], then its quants straddle word boundaries, so
// quant word k = high half of w[k] | low half of w[k + 1]; block B's d_B is the high half of
// w[q] and its quants are the aligned words w[q + 1 .. 2q]. The scales word is d_A | d_B << 16.
function scaleFirstPairs(src: Uint32Array, dst: Uint32Array, sc: Uint32Array, pairs: number, q: number): void {
  const stride = 2 * q + 1;
  for (let p = 0, s = 0, d = 0; p < pairs; p++, s += stride, d += 2 * q) {
    for (let k = 0; k < q; k++) dst[d + k] = (src[s + k]! >>> 16) | (src[s + k + 1]! << 16);
    for (let k = 0; k < q; k++) dst[d + q + k] = src[s + q + 1 + k]!;
    sc[p] = (src[s]! & 0xffff) | (src[s + q]! & 0xffff0000);
  }
}

/** scaleFirstPairs for 4 quant words per block (Q4_0, IQ4_NL), unrolled. */
function scaleFirstPairs4(src: Uint32Array, dst: Uint32Array, sc: Uint32Array, pairs: number): void {
  for (let p = 0, s = 0, d = 0; p < pairs; p++, s += 9, d += 8) {
    const w0 = src[s]!, w1 = src[s + 1]!, w2 = src[s + 2]!, w3 = src[s + 3]!, w4 = src[s + 4]!;
    dst[d] = (w0 >>> 16) | (w1 << 16);
    dst[d + 1] = (w1 >>> 16) | (w2 << 16);
    dst[d + 2] = (w2 >>> 16) | (w3 << 16);
    dst[d + 3] = (w3 >>> 16) | (w4 << 16);
    dst[d + 4] = src[s + 5]!;
    dst[d + 5] = src[s + 6]!;
    dst[d + 6] = src[s + 7]!;
    dst[d + 7] = src[s + 8]!;
    sc[p] = (w0 & 0xffff) | (w4 & 0xffff0000);
  }
}

/** scaleFirstPairs for 8 quant words per block (Q8_0), unrolled. */
function scaleFirstPairs8(src: Uint32Array, dst: Uint32Array, sc: Uint32Array, pairs: number): void {
  for (let p = 0, s = 0, d = 0; p < pairs; p++, s += 17, d += 16) {
    const w0 = src[s]!, w1 = src[s + 1]!, w2 = src[s + 2]!, w3 = src[s + 3]!, w4 = src[s + 4]!;
    const w5 = src[s + 5]!, w6 = src[s + 6]!, w7 = src[s + 7]!, w8 = src[s + 8]!;
    dst[d] = (w0 >>> 16) | (w1 << 16);
    dst[d + 1] = (w1 >>> 16) | (w2 << 16);
    dst[d + 2] = (w2 >>> 16) | (w3 << 16);
    dst[d + 3] = (w3 >>> 16) | (w4 << 16);
    dst[d + 4] = (w4 >>> 16) | (w5 << 16);
    dst[d + 5] = (w5 >>> 16) | (w6 << 16);
    dst[d + 6] = (w6 >>> 16) | (w7 << 16);
    dst[d + 7] = (w7 >>> 16) | (w8 << 16);
    dst[d + 8] = src[s + 9]!;
    dst[d + 9] = src[s + 10]!;
    dst[d + 10] = src[s + 11]!;
    dst[d + 11] = src[s + 12]!;
    dst[d + 12] = src[s + 13]!;
    dst[d + 13] = src[s + 14]!;
    dst[d + 14] = src[s + 15]!;
    dst[d + 15] = src[s + 16]!;
    sc[p] = (w0 & 0xffff) | (w8 & 0xffff0000);
  }
}

// Pairs of blocks whose scale comes last (Q3_K, Q6_K): block A's quants are the aligned words
// w[0 .. q - 1] and d_A the low half of w[q]; block B starts in the high half of w[q], so its
// quant word k = high half of w[q + k] | low half of w[q + k + 1], and d_B is the high half of w[2q].
function scaleLastPairs(src: Uint32Array, dst: Uint32Array, sc: Uint32Array, pairs: number, q: number): void {
  const stride = 2 * q + 1;
  for (let p = 0, s = 0, d = 0; p < pairs; p++, s += stride, d += 2 * q) {
    for (let k = 0; k < q; k++) dst[d + k] = src[s + k]!;
    for (let k = 0; k < q; k++) dst[d + q + k] = (src[s + q + k]! >>> 16) | (src[s + q + k + 1]! << 16);
    sc[p] = (src[s + q]! & 0xffff) | (src[s + 2 * q]! & 0xffff0000);
  }
}

/**
 * Repacks whole rows of GGUF bytes (row-major, `rows × cols` values of `type`) into the GPU
 * layout described at the top of this file.
 */
export function repackForGpu(type: GGMLType, rows: number, cols: number, bytes: Uint8Array): { layout: GpuLayout; words: Uint32Array } {
  const layout = gpuLayout(type, rows, cols);
  const geometry = blockGeometry[type]!;
  const fileBytes = (rows * cols / geometry.blockSize) * geometry.typeSize;
  if (bytes.byteLength < fileBytes) {
    throw new Error(`${ggmlTypeName(type)} ${rows} × ${cols} needs ${fileBytes} bytes, got ${bytes.byteLength}`);
  }
  const words = new Uint32Array(layout.totalWords);
  const out = new Uint8Array(words.buffer);
  const at = rowsPlacement(layout, 0, rows);
  const scales = at.scalesBytes > 0 ? out.subarray(at.scalesAt) : undefined;
  repackRows(layout, bytes, rows, out.subarray(0, at.quantsBytes), scales);
  return { layout, words };
}

/**
 * The most rows of `cols` values of `type` whose GPU layout fits `maxBindingBytes` (0 if not even
 * one row does): how the loader (engine/weights.ts) cuts a big weight, and how the planner counts its bytes.
 */
export function rowsPerBinding(type: GGMLType, cols: number, maxBindingBytes: number): number {
  let rows = Math.floor(maxBindingBytes / gpuRowBytes(type, cols));
  while (rows > 0 && gpuLayout(type, rows, cols).totalWords * 4 > maxBindingBytes) rows--;
  return rows;
}

/**
 * The row ranges (`first`, `rows`) a `rows × cols` weight is uploaded as, each fitting one
 * storage binding of `maxBindingBytes`; throws if not even one row fits.
 */
export function bindingParts(type: GGMLType, rows: number, cols: number, maxBindingBytes: number): Array<{ first: number; rows: number }> {
  const rowsPerPart = rowsPerBinding(type, cols, maxBindingBytes);
  if (rowsPerPart < 1) throw new Error(`one row of ${cols} ${ggmlTypeName(type)} values exceeds ${maxBindingBytes} bytes`);
  const parts: Array<{ first: number; rows: number }> = [];
  for (let first = 0; first < rows; first += rowsPerPart) parts.push({ first, rows: Math.min(rowsPerPart, rows - first) });
  return parts;
}

/** GPU bytes of one row (its share of the scales region included), for splitting big weights. */
export function gpuRowBytes(type: GGMLType, cols: number): number {
  const layout = gpuLayout(type, 1, cols);
  const scaleBytes = rules[type]!.scaleAt === undefined ? 0 : 2;
  return layout.blocksPerRow * (layout.blockWords * 4 + scaleBytes);
}
