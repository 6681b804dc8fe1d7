// Repacking GGUF weight bytes into the u32 layout the GPU kernels read.
//
// WGSL reads storage as 4-byte words, so every block must start on a word boundary. ggml's blocks
// fall into two kinds:
//
// * Word-sized blocks (F32, Q4_1 20 B, Q5_1 24 B, Q2_K 84 B, Q4_K 144 B, Q5_K 176 B) are kept
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
  const rule = rules[type]!;

  if (type === GGMLType.F32 || type === GGMLType.F16 || type === GGMLType.BF16) {
    // Copy row by row into rows padded to whole 8-value blocks (the padding stays zero).
    const rowBytes = cols * geometry.typeSize;
    const paddedRowBytes = layout.blocksPerRow * layout.blockWords * 4;
    if (rowBytes === paddedRowBytes) out.set(bytes.subarray(0, fileBytes));
    else for (let r = 0; r < rows; r++) out.set(bytes.subarray(r * rowBytes, (r + 1) * rowBytes), r * paddedRowBytes);
    return { layout, words };
  }

  if (rule.scaleAt === undefined) {
    out.set(bytes.subarray(0, fileBytes)); // word-sized blocks: verbatim
    return { layout, words };
  }

  const nBlocks = rows * layout.blocksPerRow;
  const quantBytes = rule.blockWords * 4;
  const scales = layout.scalesOffset * 4;
  for (let i = 0; i < nBlocks; i++) {
    const src = i * geometry.typeSize;
    const at = src + rule.scaleAt;
    // The quants are the block minus its two scale bytes (which sit at its start or its end).
    const quantStart = rule.scaleAt === 0 ? src + 2 : src;
    out.set(bytes.subarray(quantStart, quantStart + quantBytes), i * quantBytes);
    out[scales + 2 * i] = bytes[at]!;
    out[scales + 2 * i + 1] = bytes[at + 1]!;
  }
  return { layout, words };
}

/**
 * The most rows of `cols` values of `type` whose GPU layout fits `maxBindingBytes` (0 if not even
 * one row does): how uploadWeightSplit cuts a big weight, and how the planner counts its bytes.
 */
export function rowsPerBinding(type: GGMLType, cols: number, maxBindingBytes: number): number {
  let rows = Math.floor(maxBindingBytes / gpuRowBytes(type, cols));
  while (rows > 0 && gpuLayout(type, rows, cols).totalWords * 4 > maxBindingBytes) rows--;
  return rows;
}

/** GPU bytes of one row (its share of the scales region included), for splitting big weights. */
export function gpuRowBytes(type: GGMLType, cols: number): number {
  const layout = gpuLayout(type, 1, cols);
  const scaleBytes = rules[type]!.scaleAt === undefined ? 0 : 2;
  return layout.blocksPerRow * (layout.blockWords * 4 + scaleBytes);
}
