// The GPU weight layout built the plain way, one ggml block at a time (what src/model/repack.ts
// did before it was made fast): the oracle that the fast repacking and the streamed upload in
// src/engine/weights.ts must match word for word.
import { blockGeometry, GGMLType } from '../../src/model/ggml-type.ts';
import { gpuLayout } from '../../src/model/repack.ts';

/** Byte offset of the f16 scale `d` inside the ggml block, for the types whose scale is split off. */
const scaleAt: Partial<Record<GGMLType, number>> = {
  [GGMLType.Q4_0]: 0,
  [GGMLType.IQ4_NL]: 0,
  [GGMLType.Q8_0]: 0,
  [GGMLType.Q5_0]: 0,
  [GGMLType.Q3_K]: 108,
  [GGMLType.Q6_K]: 208,
};

export function repackReference(type: GGMLType, rows: number, cols: number, bytes: Uint8Array): Uint32Array {
  const layout = gpuLayout(type, rows, cols);
  const geometry = blockGeometry[type]!;
  const fileBytes = (rows * cols / geometry.blockSize) * geometry.typeSize;
  const words = new Uint32Array(layout.totalWords);
  const out = new Uint8Array(words.buffer);
  if (type === GGMLType.F32 || type === GGMLType.F16 || type === GGMLType.BF16) {
    const rowBytes = cols * geometry.typeSize;
    const paddedRowBytes = layout.blocksPerRow * layout.blockWords * 4;
    for (let r = 0; r < rows; r++) {
      for (let b = 0; b < rowBytes; b++) out[r * paddedRowBytes + b] = bytes[r * rowBytes + b]!;
    }
    return words;
  }
  const at = scaleAt[type];
  if (at === undefined) {
    for (let b = 0; b < fileBytes; b++) out[b] = bytes[b]!;
    return words;
  }
  const nBlocks = rows * layout.blocksPerRow;
  const quantBytes = layout.blockWords * 4;
  const scales = layout.scalesOffset * 4;
  for (let i = 0; i < nBlocks; i++) {
    const src = i * geometry.typeSize;
    const quantStart = at === 0 ? src + 2 : src;
    for (let b = 0; b < quantBytes; b++) out[i * quantBytes + b] = bytes[quantStart + b]!;
    out[scales + 2 * i] = bytes[src + at]!;
    out[scales + 2 * i + 1] = bytes[src + at + 1]!;
  }
  return words;
}
