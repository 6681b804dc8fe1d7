// Every GPU weight type × every matmul variant against an f64 reference over the CPU-dequantized
// weights, on shapes that are not multiples of the block, tile or workgroup sizes.
import { describe, expect, it } from 'vitest';
import { randomF32, testGpu } from './helpers/gpu.ts';
import { matmulReference, randomWeightBytes } from './reference/matmul.ts';
import { readF32, runOps, storageBuffer } from '../src/gpu/kernel.ts';
import { blockGeometry, GGMLType, ggmlTypeName } from '../src/model/ggml-type.ts';
import { dequantize, f16ToF32, f32ToF16 } from '../src/model/quant.ts';
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

/** x with each block of 32 replaced by its int8 quantization, dequantized (in f32, as the kernel: the scale rounded to f16, as ggml stores it). */
function quantizeActivationsInt8(x: Float32Array): Float32Array {
  const out = new Float32Array(x.length);
  const f = Math.fround;
  for (let b = 0; b < x.length; b += 32) {
    let amax = 0;
    for (let i = b; i < b + 32; i++) amax = Math.max(amax, Math.abs(x[i]!));
    const d = f(amax / 127);
    const inverse = d > 0 ? f(1 / d) : 0;
    for (let i = b; i < b + 32; i++) {
      const v = f(x[i]! * inverse);
      const q = Math.abs(v % 1) === 0.5 ? 2 * Math.round(v / 2) : Math.round(v); // round half to even
      out[i] = f(q * f16ToF32(f32ToF16(d)));
    }
  }
  return out;
}

/**
 * Runs a weight with both epilogues (y += W·x over random y, and y = silu(gate) ⊙ W·x) on x rows
 * `xStride` apart, and checks them against the reference (over int8-quantized activations for
 * the int8 variants, which is what they compute).
 */
async function checkEpilogues(
  gpu: GpuContext,
  c: { type: GGMLType; rows: number; cols: number; nTokens: number; xStride: number; variant: Exclude<MatmulVariant, 'auto'>; seed: number },
): Promise<void> {
  const { type, rows, cols, nTokens, xStride, variant, seed } = c;
  const bytes = randomWeightBytes(type, rows, cols, seed);
  const xRows = randomF32(nTokens * xStride, seed + 1);
  const x = new Float32Array(nTokens * cols);
  for (let t = 0; t < nTokens; t++) x.set(xRows.subarray(t * xStride, t * xStride + cols), t * cols);
  const int8 = variant === 'int8' || variant.endsWith('-int8');
  const ref = matmulReference(dequantize(type, bytes, rows * cols), rows, cols, int8 ? quantizeActivationsInt8(x) : x, nTokens);
  const start = randomF32(nTokens * rows, seed + 2);
  const gate = randomF32(nTokens * rows, seed + 3, 4);
  const weight = uploadWeight(gpu, 'w', type, rows, cols, bytes);
  const xBuf = storageBuffer(gpu.device, 'x', xRows);
  const accumulated = storageBuffer(gpu.device, 'y accumulate', start);
  const gated = storageBuffer(gpu.device, 'y gate', new Float32Array(nTokens * rows).fill(NaN));
  const gateBuf = storageBuffer(gpu.device, 'gate', gate);
  const options = { variant, xRowStride: xStride };
  runOps(gpu.device, [
    matmulOp(gpu, weight, xBuf, accumulated, nTokens, { ...options, accumulate: true }),
    matmulOp(gpu, weight, xBuf, gated, nTokens, { ...options, gate: gateBuf }),
  ]);
  const gotAccumulated = await readF32(gpu.device, accumulated, nTokens * rows);
  const gotGated = await readF32(gpu.device, gated, nTokens * rows);
  for (let i = 0; i < nTokens * rows; i++) {
    const where = `${variant}, ${nTokens} tokens, output ${i}`;
    const tolerance = TOLERANCE * ref.magnitude[i]! + 1e-6;
    expect(Math.abs(gotAccumulated[i]! - (start[i]! + ref.y[i]!)), where).toBeLessThan(tolerance + 1e-6 * Math.abs(start[i]!));
    const silu = gate[i]! / (1 + Math.exp(-gate[i]!));
    expect(Math.abs(gotGated[i]! - silu * ref.y[i]!), where).toBeLessThan(tolerance * (Math.abs(silu) + 1) + 1e-6);
  }
  for (const b of [weight.buffer, xBuf, accumulated, gated, gateBuf]) b.destroy();
}

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
  'matvec-int8': [[1, 1], [7, 3], [65, 5], [300, 2]],
  tiled: [[1, 1], [7, 3], [65, 17], [300, 64]],
  'tiled-large': [[1, 1], [7, 3], [130, 65], [300, 17]],
  'tiled-int8': [[1, 1], [7, 3], [130, 65], [300, 17]],
  int8: [[7, 3], [130, 65]],
};

describe('matmul', async () => {
  const gpu = await testGpu();
  const variants: Array<Exclude<MatmulVariant, 'auto'>> = ['matvec', 'tiled', 'tiled-large'];
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

  // The int8 matvec quantizes each block of 32 activations to int8 (scale max|x|/127, rounded
  // half to even like WGSL's round) and multiplies exactly in integers: the same as the f32
  // product of the dequantized weights with the dequantized activations.
  describe.each([
    ['Q4_0', GGMLType.Q4_0],
    ['Q8_0', GGMLType.Q8_0],
  ] as const)('int8 kernels, %s', (_name, type) => {
    it.each(['matvec-int8', 'tiled-int8', 'int8'] as const)('%s equals the product with int8-quantized activations, and is close to the f32 one', async (variant) => {
      let seed = 500 + type;
      for (const [rows, nTokens] of shapes[variant]) {
        for (const cols of [96, 64, 256]) {
          const bytes = randomWeightBytes(type, rows, cols, seed++);
          const x = randomF32(nTokens * cols, seed++);
          const w = dequantize(type, bytes, rows * cols);
          const int8 = matmulReference(w, rows, cols, quantizeActivationsInt8(x), nTokens);
          const exact = matmulReference(w, rows, cols, x, nTokens);
          const weight = uploadWeight(gpu, 'w', type, rows, cols, bytes);
          const xBuf = storageBuffer(gpu.device, 'x', x);
          const yBuf = storageBuffer(gpu.device, 'y', new Float32Array(nTokens * rows).fill(NaN));
          runOps(gpu.device, [matmulOp(gpu, weight, xBuf, yBuf, nTokens, { variant })]);
          const y = await readF32(gpu.device, yBuf, nTokens * rows);
          for (const b of [weight.buffer, xBuf, yBuf]) b.destroy();
          for (let i = 0; i < y.length; i++) {
            const where = `${rows}×${cols}, ${nTokens} tokens, output ${i}`;
            expect(Math.abs(y[i]! - int8.y[i]!), where).toBeLessThan(TOLERANCE * int8.magnitude[i]!);
            expect(Math.abs(y[i]! - exact.y[i]!), where).toBeLessThan(0.02 * exact.magnitude[i]!);
          }
        }
      }
    });
  });

  it('the int8 variants fall back to the float kernels for other weight types', async () => {
    expect(await runAndCompare(gpu, GGMLType.F16, 33, 64, 2, 'matvec-int8', 9)).toBeLessThan(TOLERANCE);
    expect(await runAndCompare(gpu, GGMLType.Q4_K, 5, 256, 1, 'matvec-int8', 10)).toBeLessThan(TOLERANCE);
    expect(await runAndCompare(gpu, GGMLType.F16, 33, 64, 9, 'tiled-int8', 11)).toBeLessThan(TOLERANCE);
    expect(await runAndCompare(gpu, GGMLType.Q6_K, 5, 256, 40, 'int8', 12)).toBeLessThan(TOLERANCE);
  });

  it('the int8 tiled kernel takes the residual and SwiGLU epilogues and unaligned x rows', async () => {
    await checkEpilogues(gpu, { type: GGMLType.Q8_0, rows: 40, cols: 64, nTokens: 19, xStride: 66, variant: 'tiled-int8', seed: 3 });
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
      // 301 rows need 76 matvec (10 tiled, 3 tiled-large) row workgroups: a limit of 2 folds them into a grid.
      const op = matmulOp(gpu, weight, xBuf, yBuf, nTokens, { variant, maxWorkgroupsPerDimension: 2 });
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

  // Q, K and V stacked into one weight write their rows to three buffers in one dispatch: every
  // variant, whole and split into binding parts (the middle part spans all three outputs), with
  // the store and accumulate epilogues. Outputs are padded with a sentinel that must survive.
  describe('split outputs', () => {
    const [type, cols] = [GGMLType.Q8_0, 64];
    const outputRows = [13, 7, 9];
    const rows = outputRows.reduce((a, b) => a + b, 0);
    const bytes = randomWeightBytes(type, rows, cols, 77);
    const w = dequantize(type, bytes, rows * cols);
    const SENTINEL = 1234.5;
    const PAD = 5;
    const all = ['matvec', 'matvec-int8', 'tiled', 'tiled-large', 'tiled-int8', ...(gpu.features.subgroups ? ['matvec-subgroup' as const] : [])] as const;
    it.each(all)('%s', async (variant) => {
      const whole = [uploadWeight(gpu, 'qkv', type, rows, cols, bytes)];
      // Q8_0 × 64 takes 68 bytes a row on the GPU: 800-byte bindings hold 11 rows, so parts 0..11, 11..22, 22..29.
      const parts = uploadWeightSplit(gpu, 'qkv', type, rows, cols, bytes, 800);
      expect(parts.map((p) => [p.rowOffset, p.rows])).toEqual([[0, 11], [11, 11], [22, 7]]);
      for (const nTokens of variant.startsWith('matvec') ? [1, 3] : [5, 19]) {
        const x = randomF32(nTokens * cols, nTokens);
        const int8 = variant.endsWith('int8');
        const ref = matmulReference(w, rows, cols, int8 ? quantizeActivationsInt8(x) : x, nTokens);
        const xBuf = storageBuffer(gpu.device, 'x', x);
        for (const [weight, name] of [[whole, 'whole'], [parts, 'parts']] as const) {
          for (const accumulate of [false, true]) {
            const starts = outputRows.map((n, o) => randomF32(nTokens * n, 10 * o + nTokens));
            const buffers = outputRows.map((n, o) => {
              const initial = new Float32Array(nTokens * n + PAD).fill(SENTINEL);
              if (accumulate) initial.set(starts[o]!);
              else initial.fill(NaN, 0, nTokens * n);
              return storageBuffer(gpu.device, `y${o}`, initial);
            });
            const outputs = outputRows.map((n, o) => ({ buffer: buffers[o]!, rows: n }));
            const ops = matmulOps(gpu, weight, xBuf, outputs, nTokens, { variant, accumulate });
            expect(ops.map((op) => op.label.includes('3 outputs'))).toEqual(name === 'whole' ? [true] : [false, true, false]);
            runOps(gpu.device, ops);
            let first = 0;
            for (const [o, n] of outputRows.entries()) {
              const y = await readF32(gpu.device, buffers[o]!, nTokens * n + PAD);
              for (let t = 0; t < nTokens; t++) {
                for (let r = 0; r < n; r++) {
                  const i = t * rows + first + r;
                  const expected = ref.y[i]! + (accumulate ? starts[o]![t * n + r]! : 0);
                  const where = `${variant} ${name}${accumulate ? ' accumulate' : ''}: ${nTokens} tokens, output ${o} token ${t} row ${r}`;
                  expect(Math.abs(y[t * n + r]! - expected), where).toBeLessThan(TOLERANCE * ref.magnitude[i]! + 1e-6);
                }
              }
              expect([...y.subarray(nTokens * n)], `${variant} ${name}: output ${o}'s padding`).toEqual(new Array(PAD).fill(SENTINEL));
              first += n;
              buffers[o]!.destroy();
            }
          }
        }
        xBuf.destroy();
      }
      for (const p of [...whole, ...parts]) p.buffer.destroy();
    });

    it('checks the outputs', () => {
      const weight = uploadWeight(gpu, 'qkv', type, rows, cols, bytes);
      const [x, a, b, gate] = [64 * 4, 13 * 4, 16 * 4, 64 * 4].map((n) => storageBuffer(gpu.device, 'buffer', n));
      expect(() => matmulOp(gpu, weight, x!, [{ buffer: a!, rows: 13 }, { buffer: b!, rows: 15 }], 1)).toThrow(/13 \+ 15 rows do not split the weight's 29/);
      expect(() => matmulOp(gpu, weight, x!, [{ buffer: a!, rows: 13 }, { buffer: b!, rows: 16 }], 1, { gate })).toThrow(/gate epilogue writes one output/);
      expect(() => matmulOp(gpu, weight, x!, [{ buffer: b!, rows: 9 }, { buffer: a!, rows: 20 }], 1)).toThrow(/output 1 \(64 bytes\) is too small/);
      for (const buffer of [weight.buffer, x!, a!, b!, gate!]) buffer.destroy();
    });
  });

  // The epilogues and x rows that do not start on a vec4 (a TP shard's column slice, say), for
  // each variant: Q4_0 (wide decoder) and F32 with 13 columns (padded rows, scalar x tail).
  describe.each([
    ['Q4_0', GGMLType.Q4_0, 64],
    ['F32', GGMLType.F32, 13],
  ] as const)('%s epilogues and strides', (_name, type, cols) => {
    const rows = 37;
    const xStride = cols + 2; // never a multiple of 4 here
    it.each(variants)('%s', async (variant) => {
      for (const nTokens of [1, 3, 19]) {
        if (variant.startsWith('matvec') && nTokens > 4) continue;
        await checkEpilogues(gpu, { type, rows, cols, nTokens, xStride, variant, seed: nTokens });
      }
    });
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
    expect(layout.totalWords).toBe(48 + 4); // 3 words of scales, padded to a whole vec4
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
