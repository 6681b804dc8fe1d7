// ggml tensor types as GGUF stores them: the numeric ids and the block geometry.
// A "block" is the unit of quantization: `blockSize` values stored in `typeSize` bytes.

export const GGMLType = {
  F32: 0,
  F16: 1,
  Q4_0: 2,
  Q4_1: 3,
  Q5_0: 6,
  Q5_1: 7,
  Q8_0: 8,
  Q8_1: 9,
  Q2_K: 10,
  Q3_K: 11,
  Q4_K: 12,
  Q5_K: 13,
  Q6_K: 14,
  Q8_K: 15,
  IQ2_XXS: 16,
  IQ2_XS: 17,
  IQ3_XXS: 18,
  IQ1_S: 19,
  IQ4_NL: 20,
  IQ3_S: 21,
  IQ2_S: 22,
  IQ4_XS: 23,
  I8: 24,
  I16: 25,
  I32: 26,
  I64: 27,
  F64: 28,
  IQ1_M: 29,
  BF16: 30,
  /**
   * Not a GGUF type: 4-bit quants with an f16 scale and an integer zero point per 32 values,
   * w = (q - zero) · scale. The form AWQ and GPTQ checkpoints take on the GPU (made at load by
   * src/model/awq-gptq.ts, which moves their bits and never makes floats of them). Ids from 1000
   * on are webshard's own, far from ggml's: llama.cpp cannot read a GGUF that holds them, webshard
   * can (its tests write such files to run AWQ/GPTQ weights through the GGUF loader).
   */
  Q4_ZP: 1000,
} as const;

export type GGMLType = (typeof GGMLType)[keyof typeof GGMLType];

export interface BlockGeometry {
  /** Values per block. */
  blockSize: number;
  /** Bytes per block in the file. */
  typeSize: number;
}

const QK_K = 256;

/** Geometry of every type the file reader understands (sizes as in ggml's type traits). */
export const blockGeometry: Partial<Record<GGMLType, BlockGeometry>> = {
  [GGMLType.F32]: { blockSize: 1, typeSize: 4 },
  [GGMLType.F16]: { blockSize: 1, typeSize: 2 },
  [GGMLType.BF16]: { blockSize: 1, typeSize: 2 },
  [GGMLType.Q4_0]: { blockSize: 32, typeSize: 2 + 16 },
  [GGMLType.Q4_1]: { blockSize: 32, typeSize: 4 + 16 },
  [GGMLType.Q5_0]: { blockSize: 32, typeSize: 2 + 4 + 16 },
  [GGMLType.Q5_1]: { blockSize: 32, typeSize: 4 + 4 + 16 },
  [GGMLType.Q8_0]: { blockSize: 32, typeSize: 2 + 32 },
  [GGMLType.Q8_1]: { blockSize: 32, typeSize: 4 + 32 },
  [GGMLType.Q2_K]: { blockSize: QK_K, typeSize: 2 + 2 + QK_K / 16 + QK_K / 4 },
  [GGMLType.Q3_K]: { blockSize: QK_K, typeSize: 2 + QK_K / 4 + QK_K / 8 + 12 },
  [GGMLType.Q4_K]: { blockSize: QK_K, typeSize: 2 + 2 + 12 + QK_K / 2 },
  [GGMLType.Q5_K]: { blockSize: QK_K, typeSize: 2 + 2 + 12 + QK_K / 8 + QK_K / 2 },
  [GGMLType.Q6_K]: { blockSize: QK_K, typeSize: 2 + QK_K / 16 + 3 * QK_K / 4 },
  [GGMLType.Q8_K]: { blockSize: QK_K, typeSize: 4 + QK_K + QK_K / 8 },
  [GGMLType.IQ4_NL]: { blockSize: 32, typeSize: 2 + 16 },
  [GGMLType.I8]: { blockSize: 1, typeSize: 1 },
  [GGMLType.I16]: { blockSize: 1, typeSize: 2 },
  [GGMLType.I32]: { blockSize: 1, typeSize: 4 },
  [GGMLType.I64]: { blockSize: 1, typeSize: 8 },
  [GGMLType.F64]: { blockSize: 1, typeSize: 8 },
  // f16 scale, u16 zero point, then 16 bytes of nibbles as Q4_0's (value j low nibble of byte j, value 16 + j high).
  [GGMLType.Q4_ZP]: { blockSize: 32, typeSize: 2 + 2 + 16 },
};

const typeNames = new Map<number, string>(Object.entries(GGMLType).map(([name, id]) => [id, name]));

export function ggmlTypeName(type: number): string {
  return typeNames.get(type) ?? `unknown(${type})`;
}

/** Bytes that `count` values of `type` occupy, or undefined if the type is unknown or count is not whole blocks. */
export function tensorByteLength(type: GGMLType, count: number): number | undefined {
  const geometry = blockGeometry[type];
  if (!geometry || count % geometry.blockSize !== 0) return undefined;
  return (count / geometry.blockSize) * geometry.typeSize;
}
