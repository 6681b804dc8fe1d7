// The bias epilogue (Qwen2's Q/K/V biases): every matmul variant adds bias[j] to each sum before
// storing it, for one y and for split outputs (each with its own bias), whole and split into
// binding parts, with the store, accumulate and SwiGLU epilogues. Each product is checked against
// the same kernel without a bias: (W·x + b) must be exactly f32(W·x) + b, since only the epilogue
// differs (the products themselves are checked against the reference in matmul.test.ts).
import { describe, expect, it } from 'vitest';
import { randomF32, testGpu, uploadTestWeight } from './helpers/gpu.ts';
import { randomWeightBytes } from './reference/matmul.ts';
import { readF32, runOps, storageBuffer } from '../src/gpu/kernel.ts';
import { GGMLType } from '../src/model/ggml-type.ts';
import { matmulOps, type MatmulOptions, type MatmulOutput } from '../src/shaders/matmul.ts';

describe('matmul bias epilogue', async () => {
  const gpu = await testGpu();
  const [type, cols] = [GGMLType.Q8_0, 64];
  const outputRows = [13, 7, 9];
  const rows = outputRows.reduce((a, b) => a + b, 0);
  const bytes = randomWeightBytes(type, rows, cols, 91);
  const whole = await uploadTestWeight(gpu, 'qkv', type, rows, cols, bytes);
  const parts = await uploadTestWeight(gpu, 'qkv', type, rows, cols, bytes, 800); // rows 0..11, 11..22, 22..29
  const bias = randomF32(rows, 92, 3);
  const f = Math.fround;
  const silu = (g: number) => f(g / (1 + Math.exp(-g)));

  /** Runs W·x into fresh buffers (split over the outputs, or one y) and reads each output back. */
  async function run(weight: typeof whole, x: GPUBuffer, nTokens: number, options: MatmulOptions, biased: boolean, split: boolean, initial: Float32Array): Promise<Float32Array> {
    const y = new Float32Array(nTokens * rows);
    if (!split) {
      const buffer = storageBuffer(gpu.device, 'y', initial);
      const biasBuffer = storageBuffer(gpu.device, 'bias', bias);
      runOps(gpu.device, matmulOps(gpu, weight, x, buffer, nTokens, { ...options, bias: biased ? biasBuffer : undefined }));
      y.set(await readF32(gpu.device, buffer, nTokens * rows));
      buffer.destroy();
      biasBuffer.destroy();
      return y;
    }
    let first = 0;
    const outputs: MatmulOutput[] = outputRows.map((n) => {
      const start = first;
      first += n;
      const own = new Float32Array(nTokens * n);
      for (let t = 0; t < nTokens; t++) own.set(initial.subarray(t * rows + start, t * rows + start + n), t * n);
      return { buffer: storageBuffer(gpu.device, 'y', own), rows: n, bias: biased ? storageBuffer(gpu.device, 'bias', bias.subarray(start, start + n)) : undefined };
    });
    runOps(gpu.device, matmulOps(gpu, weight, x, outputs, nTokens, options));
    first = 0;
    for (const o of outputs) {
      const got = await readF32(gpu.device, o.buffer, nTokens * o.rows);
      for (let t = 0; t < nTokens; t++) y.set(got.subarray(t * o.rows, (t + 1) * o.rows), t * rows + first);
      first += o.rows;
      o.buffer.destroy();
      o.bias?.destroy();
    }
    return y;
  }

  const variants = ['matvec', 'matvec-int8', 'tiled', 'tiled-large', 'tiled-int8', ...(gpu.features.subgroups ? ['matvec-subgroup' as const] : [])] as const;
  it.each(variants)('%s', async (variant) => {
    const nTokens = variant.startsWith('matvec') ? 3 : 19;
    const x = storageBuffer(gpu.device, 'x', randomF32(nTokens * cols, 93));
    const start = randomF32(nTokens * rows, 94);
    const gate = storageBuffer(gpu.device, 'gate', randomF32(nTokens * rows, 95, 4));
    const gateValues = await readF32(gpu.device, gate, nTokens * rows);
    // The plain product (store, no bias) of the same kernel: every row's sum is computed the same
    // way whether the weight is whole or in parts, and whichever output the row goes to.
    const plain = await run(whole, x, nTokens, { variant }, false, false, new Float32Array(nTokens * rows).fill(NaN));
    // Pairwise: each epilogue, one y and split outputs, whole weight and binding parts.
    const cases = [
      { epilogue: 'store', split: true, weight: parts },
      { epilogue: 'accumulate', split: false, weight: whole },
      { epilogue: 'accumulate', split: true, weight: whole },
      { epilogue: 'gate', split: false, weight: parts },
    ] as const;
    for (const c of cases) {
      const options: MatmulOptions = { variant, accumulate: c.epilogue === 'accumulate', gate: c.epilogue === 'gate' ? gate : undefined };
      const initial = c.epilogue === 'accumulate' ? start : new Float32Array(nTokens * rows).fill(NaN);
      const got = await run(c.weight, x, nTokens, options, true, c.split, initial);
      for (let i = 0; i < got.length; i++) {
        const withBias = f(plain[i]! + bias[i % rows]!);
        const expected = c.epilogue === 'accumulate' ? f(start[i]! + withBias) : c.epilogue === 'gate' ? f(silu(gateValues[i]!) * withBias) : withBias;
        const where = `${variant} ${c.epilogue}${c.split ? ' split' : ''}: token ${Math.floor(i / rows)} row ${i % rows}`;
        if (c.epilogue === 'gate') expect(Math.abs(got[i]! - expected), where).toBeLessThan(1e-5 * (Math.abs(expected) + 1));
        else expect(got[i], where).toBe(expected);
      }
    }
    for (const b of [x, gate]) b.destroy();
  }, 600_000); // pipelines compile slowly on a loaded software adapter

  it('refuses a bias on some split outputs only, or a bias option with split outputs', () => {
    const [x, a, b, c, bq] = [64 * 4, 13 * 4, 7 * 4, 9 * 4, 13 * 4].map((n) => storageBuffer(gpu.device, 'buffer', n));
    const outputs = [{ buffer: a!, rows: 13, bias: bq }, { buffer: b!, rows: 7 }, { buffer: c!, rows: 9 }];
    expect(() => matmulOps(gpu, whole, x!, outputs, 1)).toThrow(/every output has a bias, or none does/);
    expect(() => matmulOps(gpu, whole, x!, outputs.map((o) => ({ ...o, bias: undefined })), 1, { bias: bq })).toThrow(/split outputs take their own biases/);
    const short = storageBuffer(gpu.device, 'short bias', 16);
    expect(() => matmulOps(gpu, whole, x!, storageBuffer(gpu.device, 'y', rows * 4), 1, { bias: short })).toThrow(/bias \(16 bytes\) is shorter than its 29 rows/);
    for (const buffer of [x!, a!, b!, c!, bq!, short]) buffer.destroy();
  });
});
