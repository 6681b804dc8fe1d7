// Every GPU weight type × every matmul variant against an f64 reference over the CPU-dequantized
// weights, on shapes that are not multiples of the block, tile or workgroup sizes.
import { describe, expect, it } from 'vitest';
import { randomF32, testGpu } from './helpers/gpu.ts';
import { matmulReference, randomWeightBytes } from './reference/matmul.ts';
import { readF32, runOps, storageBuffer } from '../src/gpu/kernel.ts';
import { blockGeometry, GGMLType, ggmlTypeName } from '../src/model/ggml-type.ts';
import { dequantize } from '../src/model/quant.ts';
import { gpuLayout, repackForGpu } from '../src/model/repack.ts';
import {
  matmulOp,
  matmulOps,
  supportedWeightTypes,
  uploadWeight,
  uploadWeightSplit,
  type MatmulVariant,
} from '../src/shaders/matmul.ts';
import type { GpuContext } from '../src/gpu/device.ts';

const TOLERANCE = 1e-4;

/** Worst |gpu - reference| relative to the sum's magnitude Σ|w·x| (robust to cancellation). */
async function runAndCompare(
  gpu: GpuContext,
  type: GGMLType,
  rows: number,
  cols: number,
  nTokens: number,
  variant: Exclude<MatmulVariant, 'auto'> | 'auto',
  seed: number,
): Promise<number> {
  const bytes = randomWeightBytes(type, rows, cols, seed);
  const x = randomF32(nTokens * cols, seed + 1);
  const ref = matmulReference(dequantize(type, bytes, rows * cols), rows, cols, x, nTokens);
  const weight = uploadWeight(gpu, `w ${ggmlTypeName(type)}`, type, rows, cols, bytes);
  const xBuf = storageBuffer(gpu.device, 'x', x);
  // Prefill y with NaN so a row the kernel forgets to write cannot pass.
  const yBuf = storageBuffer(gpu.device, 'y', new Float32Array(nTokens * rows).fill(NaN));
  runOps(gpu.device, [matmulOp(gpu, weight, xBuf, yBuf, nTokens, { variant })]);
  const y = await readF32(gpu.device, yBuf, nTokens * rows);
  for (const b of [weight.buffer, xBuf, yBuf]) b.destroy();
  let worst = 0;
  for (let i = 0; i < y.length; i++) {
    const err = Math.abs(y[i]! - ref.y[i]!) / (ref.magnitude[i]! + 1e-30);
    worst = Number.isNaN(err) ? Infinity : Math.max(worst, err);
  }
  return worst;
}

/** Column counts per type: whole blocks, and for float types lengths that are not multiples of 8. */
function columnsFor(type: GGMLType): [number, number] {
  const block = blockGeometry[type]!.blockSize;
  if (block === 1) return [172, 13];
  if (block === 32) return [96, 64];
  return [256, 512];
}

// (rows, nTokens) pairs; each type runs them with both of its column counts. Matvec is for
// decode, so it gets few tokens (5 still spans two token chunks); tiled gets prefill sizes.
const shapes: Record<Exclude<MatmulVariant, 'auto'>, Array<[number, number]>> = {
  matvec: [[1, 1], [7, 3], [65, 5], [300, 2]],
  'matvec-subgroup': [[1, 1], [7, 3], [65, 5], [300, 2]],
  tiled: [[1, 1], [7, 3], [65, 17], [300, 64]],
};

describe('matmul', async () => {
  const gpu = await testGpu();
  const variants: Array<Exclude<MatmulVariant, 'auto'>> = ['matvec', 'tiled'];
  if (gpu.features.subgroups) variants.push('matvec-subgroup');

  it('covers the required weight types', () => {
    const names = supportedWeightTypes().map(ggmlTypeName);
    for (const t of ['F32', 'F16', 'BF16', 'Q8_0', 'Q4_0', 'Q4_1', 'Q5_0', 'Q5_1', 'Q4_K', 'Q6_K']) expect(names).toContain(t);
  });

  describe.each(supportedWeightTypes().map((t) => [ggmlTypeName(t), t] as const))('%s', (_name, type) => {
    it.each(variants)('%s', async (variant) => {
      const [colsA, colsB] = columnsFor(type);
      let seed = type * 1000;
      for (const [rows, nTokens] of shapes[variant]) {
        for (const cols of [colsA, colsB]) {
          const err = await runAndCompare(gpu, type, rows, cols, nTokens, variant, seed++);
          expect(err, `${rows}×${cols}, ${nTokens} tokens`).toBeLessThan(TOLERANCE);
        }
      }
    });
  });

  it('auto picks a working variant for decode and prefill', async () => {
    expect(await runAndCompare(gpu, GGMLType.Q4_0, 33, 64, 2, 'auto', 7)).toBeLessThan(TOLERANCE);
    expect(await runAndCompare(gpu, GGMLType.Q4_0, 33, 64, 9, 'auto', 8)).toBeLessThan(TOLERANCE);
  });

  it('folds row workgroups past the per-dimension limit into y', async () => {
    const type = GGMLType.Q8_0;
    const [rows, cols, nTokens] = [301, 64, 5];
    const bytes = randomWeightBytes(type, rows, cols, 99);
    const x = randomF32(nTokens * cols, 100);
    const ref = matmulReference(dequantize(type, bytes, rows * cols), rows, cols, x, nTokens);
    const weight = uploadWeight(gpu, 'fold', type, rows, cols, bytes);
    const xBuf = storageBuffer(gpu.device, 'x', x);
    for (const variant of variants) {
      const yBuf = storageBuffer(gpu.device, 'y', new Float32Array(nTokens * rows).fill(NaN));
      // 301 rows need 76 matvec (or 10 tiled) row workgroups: a limit of 3 folds them into a grid.
      const op = matmulOp(gpu, weight, xBuf, yBuf, nTokens, { variant, maxWorkgroupsPerDimension: 3 });
      expect(op.workgroups[1], variant).toBeGreaterThan(1);
      runOps(gpu.device, [op]);
      const y = await readF32(gpu.device, yBuf, nTokens * rows);
      for (let i = 0; i < y.length; i++) expect(Math.abs(y[i]! - ref.y[i]!), `${variant} ${i}`).toBeLessThan(TOLERANCE * ref.magnitude[i]!);
    }
  });

  it('splits a weight over several bindings and writes each part at its row offset', async () => {
    const type = GGMLType.Q4_0;
    const [rows, cols, nTokens] = [70, 64, 3];
    const bytes = randomWeightBytes(type, rows, cols, 5);
    const x = randomF32(nTokens * cols, 6);
    const ref = matmulReference(dequantize(type, bytes, rows * cols), rows, cols, x, nTokens);
    // 64 Q4_0 columns take 36 bytes per row on the GPU: 1000 bytes hold 27 rows, so 3 parts.
    const parts = uploadWeightSplit(gpu, 'split', type, rows, cols, bytes, 1000);
    expect(parts.map((p) => [p.rowOffset, p.rows])).toEqual([[0, 27], [27, 27], [54, 16]]);
    for (const p of parts) expect(p.bytes).toBeLessThanOrEqual(1000);
    const xBuf = storageBuffer(gpu.device, 'x', x);
    for (const variant of variants) {
      const yBuf = storageBuffer(gpu.device, 'y', new Float32Array(nTokens * rows).fill(NaN));
      runOps(gpu.device, matmulOps(gpu, parts, xBuf, yBuf, nTokens, { variant }));
      const y = await readF32(gpu.device, yBuf, nTokens * rows);
      for (let i = 0; i < y.length; i++) expect(Math.abs(y[i]! - ref.y[i]!), `${variant} ${i}`).toBeLessThan(TOLERANCE * ref.magnitude[i]!);
    }
  });

  it('refuses a weight larger than one binding', () => {
    const bytes = randomWeightBytes(GGMLType.F32, 2, 8, 1);
    const small = { ...gpu, limits: { ...gpu.limits, maxStorageBufferBindingSize: 32, maxBufferSize: 32 } as GPUSupportedLimits };
    expect(() => uploadWeight(small, 'big', GGMLType.F32, 2, 8, bytes)).toThrow(/uploadWeightSplit/);
  });
});

describe('repack layout', () => {
  it('splits Q8_0 scales into an aligned region after the quants', () => {
    const bytes = randomWeightBytes(GGMLType.Q8_0, 3, 64, 1); // 6 blocks
    const { layout, words } = repackForGpu(GGMLType.Q8_0, 3, 64, bytes);
    expect(layout.scalesOffset).toBe(48);
    expect(layout.totalWords).toBe(48 + 3);
    const out = new Uint8Array(words.buffer);
    for (let blk = 0; blk < 6; blk++) {
      expect([...out.subarray(blk * 32, blk * 32 + 32)]).toEqual([...bytes.subarray(blk * 34 + 2, blk * 34 + 34)]);
      expect([out[192 + 2 * blk], out[193 + 2 * blk]]).toEqual([bytes[blk * 34], bytes[blk * 34 + 1]]);
    }
  });

  it('pads float rows to whole groups of 8 with zeros', () => {
    const layout = gpuLayout(GGMLType.F16, 2, 13);
    expect(layout.blocksPerRow).toBe(2);
    const values = new Uint16Array(26).fill(0x3c00);
    const { words } = repackForGpu(GGMLType.F16, 2, 13, new Uint8Array(values.buffer));
    const halves = new Uint16Array(words.buffer);
    expect(halves.length).toBe(32);
    expect([...halves.subarray(13, 16)]).toEqual([0, 0, 0]);
    expect(halves[16]).toBe(0x3c00);
  });
});
