// Hugging Face's Q/K row order (rotate_half RoPE: dimension i pairs with i + d/2) against GGUF's
// (llama.cpp's converter permutes llama's Q/K rows so dimension 2i pairs with 2i + 1): within
// each head, GGUF row 2i + j is HF row j·d/2 + i. The engine runs HF checkpoints with neox RoPE
// instead (src/model/hf-config.ts); the random checkpoint writer uses this to write a GGUF llama's
// Q/K in HF order, and tests to compare HF tensors with GGUF files.

/** The HF row (within the whole tensor) that GGUF row `ggufRow` holds. */
export function hfRowOfGgufRow(ggufRow: number, headDim: number): number {
  const [head, within] = [Math.floor(ggufRow / headDim), ggufRow % headDim];
  return head * headDim + (within % 2) * (headDim / 2) + Math.floor(within / 2);
}

/** Rows (`rowLength` elements each) moved from HF order to GGUF's, or back with `toGguf` false. */
export function permuteRopeRows<T extends Uint8Array | Float32Array>(data: T, rowLength: number, headDim: number, toGguf = true): T {
  const out = data.slice() as T;
  for (let row = 0; row < data.length / rowLength; row++) {
    const hf = hfRowOfGgufRow(row, headDim);
    const [to, from] = toGguf ? [row, hf] : [hf, row];
    out.set(data.subarray(from * rowLength, (from + 1) * rowLength), to * rowLength);
  }
  return out;
}
