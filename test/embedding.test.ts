// Embedding gather for every GPU weight type: the GPU must return the CPU-dequantized rows.
import { describe, expect, it } from 'vitest';
import { rng, testGpu, uploadTestWeight, uploadWholeWeight } from './helpers/gpu.ts';
import { embeddingReference, randomWeightBytes } from './reference/matmul.ts';
import { readF32, runOps, storageBuffer } from '../src/gpu/kernel.ts';
import { blockGeometry, GGMLType, ggmlTypeName } from '../src/model/ggml-type.ts';
import { dequantize } from '../src/model/quant.ts';
import { supportedWeightTypes } from '../src/shaders/matmul.ts';
import { embeddingOp, embeddingOps } from '../src/shaders/embedding.ts';

/**
 * The GPU decodes in the same f32 operations as the CPU; only a fused multiply-add (d·q − m)
 * may round differently, so allow a few ulps of the table's largest value.
 */
function maxError(got: Float32Array, want: Float32Array): { error: number; allowed: number } {
  let error = 0;
  let largest = 0;
  for (let i = 0; i < want.length; i++) {
    const e = Math.abs(got[i]! - want[i]!);
    error = Number.isNaN(e) ? Infinity : Math.max(error, e);
    largest = Math.max(largest, Math.abs(want[i]!));
  }
  return { error, allowed: largest * 2 ** -21 };
}

function randomIds(n: number, rows: number, seed: number): Uint32Array {
  const next = rng(seed);
  const ids = Uint32Array.from({ length: n }, () => Math.floor(next() * rows));
  ids[0] = rows - 1; // the last row, always
  return ids;
}

describe('embedding', async () => {
  const gpu = await testGpu();

  it.each(supportedWeightTypes().map((t) => [ggmlTypeName(t), t] as const))('%s', async (_name, type) => {
    const block = blockGeometry[type]!.blockSize;
    const colsList = block === 1 ? [13, 172] : block === 32 ? [96] : [512];
    for (const cols of colsList) {
      for (const [rows, nTokens] of [[1, 1], [65, 17]] as const) {
        const bytes = randomWeightBytes(type, rows, cols, type * 31 + rows);
        const table = dequantize(type, bytes, rows * cols);
        const ids = randomIds(nTokens, rows, rows + cols);
        const weight = await uploadWholeWeight(gpu, 'table', type, rows, cols, bytes);
        const idBuf = storageBuffer(gpu.device, 'ids', ids);
        const out = storageBuffer(gpu.device, 'out', new Float32Array(nTokens * cols).fill(NaN));
        runOps(gpu.device, [embeddingOp(gpu, weight, idBuf, out, nTokens)]);
        const got = await readF32(gpu.device, out, nTokens * cols);
        for (const b of [weight.buffer, idBuf, out]) b.destroy();
        const { error, allowed } = maxError(got, embeddingReference(table, cols, ids));
        expect(error, `${rows}×${cols}, ${nTokens} tokens`).toBeLessThanOrEqual(allowed);
      }
    }
  });

  it('gathers from a table split by rows, with a folded grid', async () => {
    const type = GGMLType.Q8_0;
    const [rows, cols, nTokens] = [50, 64, 40];
    const bytes = randomWeightBytes(type, rows, cols, 3);
    const table = dequantize(type, bytes, rows * cols);
    const ids = randomIds(nTokens, rows, 4);
    // 64 Q8_0 columns take 68 GPU bytes per row: 700 bytes hold 10 rows, so 5 parts.
    const parts = await uploadTestWeight(gpu, 'split table', type, rows, cols, bytes, 700);
    expect(parts.length).toBe(5);
    const idBuf = storageBuffer(gpu.device, 'ids', ids);
    const out = storageBuffer(gpu.device, 'out', new Float32Array(nTokens * cols).fill(NaN));
    // 40 tokens × 8 groups = 5 workgroups of 64: a limit of 2 per dimension folds them.
    const ops = embeddingOps(gpu, parts, idBuf, out, nTokens, { maxWorkgroupsPerDimension: 2 });
    expect(ops[0]!.workgroups[1]).toBeGreaterThan(1);
    runOps(gpu.device, ops);
    const got = await readF32(gpu.device, out, nTokens * cols);
    expect([...got]).toEqual([...embeddingReference(table, cols, ids)]);
  });
});
