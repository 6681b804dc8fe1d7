// The non-matmul transformer kernels on a real WebGPU adapter, against test/reference/ops.ts.
import { describe, expect, it } from 'vitest';
import { maxRelativeError, randomF32, rng, testGpu } from './helpers/gpu.ts';
import { readBuffer, readF32, readU32, runOps, storageBuffer } from '../src/gpu/kernel.ts';
import type { GpuContext } from '../src/gpu/device.ts';
import { rmsnormOp } from '../src/shaders/rmsnorm.ts';
import { ropeAndCacheWriteOps, ropeOp, type RopeStyle } from '../src/shaders/rope.ts';
import { attentionOp, attentionOps, kvCacheWriteOp, type KvPaging } from '../src/shaders/attention.ts';
import { addOp, copyOp, gatherColumnsOp, gatherRowsOp, scaleOp, swigluOp } from '../src/shaders/elementwise.ts';
import { argmaxOp, packPenalties, repetitionPenaltyOp, topKOp, unpackTopK } from '../src/shaders/sampling.ts';
import {
  addRef,
  argmaxRef,
  attentionRef,
  gatherColumnsRef,
  kvCacheWriteRef,
  penaltiesRef,
  rmsnormRef,
  ropeRef,
  swigluRef,
  topKRef,
} from './reference/ops.ts';

const upload = (gpu: GpuContext, label: string, data: Float32Array | Uint32Array): GPUBuffer =>
  storageBuffer(gpu.device, label, data);

/** Positions that are neither contiguous nor sorted, as in a batch of sequences. */
function scatteredPositions(count: number, limit: number, seed: number): Uint32Array {
  const next = rng(seed);
  return Uint32Array.from({ length: count }, () => Math.floor(next() * limit));
}

describe('rmsnorm', () => {
  for (const [nTokens, dim] of [[1, 8], [5, 64], [33, 172], [3, 300], [2, 4096]] as const) {
    it(`normalizes ${nTokens} rows of ${dim}`, async () => {
      const gpu = await testGpu();
      const x = randomF32(nTokens * dim, 1 + dim, 3);
      const weight = randomF32(dim, 2 + dim);
      const out = storageBuffer(gpu.device, 'out', nTokens * dim * 4);
      runOps(gpu.device, [rmsnormOp(gpu, upload(gpu, 'x', x), upload(gpu, 'w', weight), out, nTokens, dim, 1e-5)]);
      const got = await readF32(gpu.device, out, nTokens * dim);
      expect(maxRelativeError(got, rmsnormRef(x, weight, nTokens, dim, 1e-5), 1e-3)).toBeLessThan(1e-5);
    });
  }
});

describe('rope', () => {
  const cases: Array<{ nTokens: number; nHeads: number; headDim: number; ropeDims: number; style: RopeStyle; base: number; positions: Uint32Array; positionScale?: number }> = [
    { nTokens: 5, nHeads: 8, headDim: 8, ropeDims: 8, style: 'normal', base: 10000, positions: Uint32Array.of(0, 1, 2, 3, 4) },
    { nTokens: 33, nHeads: 2, headDim: 64, ropeDims: 64, style: 'normal', base: 10000, positions: scatteredPositions(33, 600, 7) },
    { nTokens: 33, nHeads: 3, headDim: 64, ropeDims: 64, style: 'neox', base: 500000, positions: scatteredPositions(33, 600, 8) },
    { nTokens: 1, nHeads: 4, headDim: 172, ropeDims: 100, style: 'neox', base: 10000, positions: Uint32Array.of(599), positionScale: 4 },
    { nTokens: 2, nHeads: 1, headDim: 300, ropeDims: 128, style: 'normal', base: 10000, positions: Uint32Array.of(20000, 7) },
  ];
  for (const c of cases) {
    it(`rotates ${c.style} ${c.nTokens}×${c.nHeads}×${c.headDim} (ropeDims ${c.ropeDims}) at positions up to ${Math.max(...c.positions)}`, async () => {
      const gpu = await testGpu();
      const width = c.nHeads * c.headDim;
      const x = randomF32(c.nTokens * width, 11 + width);
      const buffer = upload(gpu, 'x', x);
      runOps(gpu.device, [ropeOp(gpu, buffer, upload(gpu, 'pos', c.positions), c)]);
      const got = await readF32(gpu.device, buffer, x.length);
      const want = ropeRef(x, c.positions, c);
      expect(maxRelativeError(got, want, 1e-2)).toBeLessThan(1e-5);
      // Dimensions past ropeDims are untouched, bit for bit.
      for (let h = 0; h < c.nTokens * c.nHeads; h++) {
        for (let d = c.ropeDims; d < c.headDim; d++) expect(got[h * c.headDim + d]).toBe(x[h * c.headDim + d]);
      }
    });
  }

  it('divides each frequency by its rope_freqs factor', async () => {
    const gpu = await testGpu();
    const shape = { nTokens: 3, nHeads: 2, headDim: 16, ropeDims: 16, style: 'normal' as const, base: 500000 };
    const positions = Uint32Array.of(3, 100, 511);
    const factors = Float32Array.from({ length: 8 }, (_, i) => 1 + i * 0.75);
    const x = randomF32(3 * 2 * 16, 5);
    const buffer = upload(gpu, 'x', x);
    runOps(gpu.device, [ropeOp(gpu, buffer, upload(gpu, 'pos', positions), { ...shape, freqFactors: upload(gpu, 'ff', factors) })]);
    const got = await readF32(gpu.device, buffer, x.length);
    expect(maxRelativeError(got, ropeRef(x, positions, { ...shape, freqFactors: factors }), 1e-2)).toBeLessThan(1e-5);
    expect(maxRelativeError(got, ropeRef(x, positions, shape), 1e-2)).toBeGreaterThan(1e-2);
  });

  it('fuses RoPE with the cache write where the device has 9 storage buffers, else runs the three ops: the same bits', async () => {
    const gpu = await testGpu();
    const eight = { ...gpu, limits: { ...gpu.limits, maxStorageBuffersPerShaderStage: 8 } as GPUSupportedLimits };
    const shape = { nTokens: 3, nHeads: 4, nKvHeads: 2, headDim: 16, ropeDims: 16, style: 'normal' as const, base: 500000 };
    const positions = Uint32Array.of(0, 1, 2);
    const factors = upload(gpu, 'ff', Float32Array.from({ length: 8 }, (_, i) => 1 + i * 0.5));
    const paging = contiguousPaging(gpu, 3, 16);
    const outputs: Uint32Array[][] = [];
    for (const [device, withFactors, opCount] of [[gpu, true, 1], [eight, false, 1], [eight, true, 3]] as const) {
      const [q, k, v] = [randomF32(3 * 64, 1), randomF32(3 * 32, 2), randomF32(3 * 32, 3)].map((data) => upload(gpu, 'x', data)) as [GPUBuffer, GPUBuffer, GPUBuffer];
      const [kCache, vCache] = [upload(gpu, 'kc', new Float32Array(16 * 32)), upload(gpu, 'vc', new Float32Array(16 * 32))];
      const ops = ropeAndCacheWriteOps(device, q, k, v, upload(gpu, 'pos', positions), paging, kCache, vCache, { ...shape, freqFactors: withFactors ? factors : undefined });
      expect(ops).toHaveLength(opCount);
      runOps(gpu.device, ops);
      if (withFactors) outputs.push(await Promise.all([q, kCache].map(async (b) => new Uint32Array((await readF32(gpu.device, b, b === q ? 3 * 64 : 16 * 32)).buffer))));
    }
    expect(outputs[1]).toEqual(outputs[0]);
  });
});

/** One sequence whose blocks are laid out in order: cache row = position, as the reference assumes. */
function contiguousPaging(gpu: GpuContext, nTokens: number, contextLength: number, blockSize = 16): KvPaging {
  const blocksPerSequence = Math.ceil(contextLength / blockSize);
  return {
    tokenSlots: upload(gpu, 'slots', new Uint32Array(nTokens)),
    blockTable: upload(gpu, 'blocks', Uint32Array.from({ length: blocksPerSequence }, (_, i) => i)),
    blockSize,
    blocksPerSequence,
  };
}

describe('kv cache and attention', () => {
  it('writes each token row at its own position', async () => {
    const gpu = await testGpu();
    const shape = { nTokens: 5, nKvHeads: 2, headDim: 12, contextLength: 40 };
    const paging = contiguousPaging(gpu, shape.nTokens, shape.contextLength, 8);
    const width = shape.nKvHeads * shape.headDim;
    const positions = Uint32Array.of(9, 0, 31, 4, 39);
    const k = randomF32(shape.nTokens * width, 1);
    const v = randomF32(shape.nTokens * width, 2);
    const kCache = randomF32(shape.contextLength * width, 3);
    const vCache = randomF32(shape.contextLength * width, 4);
    const kBuffer = upload(gpu, 'kc', kCache);
    const vBuffer = upload(gpu, 'vc', vCache);
    runOps(gpu.device, [kvCacheWriteOp(gpu, upload(gpu, 'k', k), upload(gpu, 'v', v), upload(gpu, 'pos', positions), paging, kBuffer, vBuffer, shape)]);
    kvCacheWriteRef(k, v, positions, kCache, vCache, width);
    expect(await readF32(gpu.device, kBuffer, kCache.length)).toEqual(kCache);
    expect(await readF32(gpu.device, vBuffer, vCache.length)).toEqual(vCache);
  });

  const cases = [
    { name: 'prefill, GQA 8/4', nTokens: 33, nHeads: 8, nKvHeads: 4, headDim: 64, firstPosition: 0 },
    { name: 'prefill after a prompt, MQA 4/1', nTokens: 5, nHeads: 4, nKvHeads: 1, headDim: 172, firstPosition: 70 },
    { name: 'decode at position 0, 2/2', nTokens: 1, nHeads: 2, nKvHeads: 2, headDim: 8, firstPosition: 0 },
    { name: 'decode with a long context, GQA 8/2', nTokens: 1, nHeads: 8, nKvHeads: 2, headDim: 100, firstPosition: 599 },
  ];
  for (const c of cases) for (const variant of ['single', 'split'] as const) {
    it(`attends causally (${variant}): ${c.name}, ${c.nTokens} tokens from position ${c.firstPosition}, headDim ${c.headDim}`, async () => {
      const gpu = await testGpu();
      const contextLength = 640;
      const kvWidth = c.nKvHeads * c.headDim;
      const positions = Uint32Array.from({ length: c.nTokens }, (_, t) => c.firstPosition + t);
      // The cache holds earlier positions already; this step's K/V go in through kvCacheWriteOp.
      const kCache = randomF32(contextLength * kvWidth, 21, 2);
      const vCache = randomF32(contextLength * kvWidth, 22);
      const q = randomF32(c.nTokens * c.nHeads * c.headDim, 23, 2);
      const k = randomF32(c.nTokens * kvWidth, 24, 2);
      const v = randomF32(c.nTokens * kvWidth, 25);
      const kBuffer = upload(gpu, 'kc', kCache);
      const vBuffer = upload(gpu, 'vc', vCache);
      const positionBuffer = upload(gpu, 'pos', positions);
      const out = storageBuffer(gpu.device, 'out', q.length * 4);
      const shape = { ...c, contextLength };
      const paging = contiguousPaging(gpu, c.nTokens, contextLength);
      runOps(gpu.device, [
        kvCacheWriteOp(gpu, upload(gpu, 'k', k), upload(gpu, 'v', v), positionBuffer, paging, kBuffer, vBuffer, shape),
        ...attentionOps(gpu, upload(gpu, 'q', q), kBuffer, vBuffer, positionBuffer, paging, out, shape, { variant }),
      ]);
      kvCacheWriteRef(k, v, positions, kCache, vCache, kvWidth);
      const got = await readF32(gpu.device, out, q.length);
      expect(maxRelativeError(got, attentionRef(q, kCache, vCache, positions, c), 1e-2)).toBeLessThan(1e-4);
    });
  }

  it('attends to nothing past its own position (future rows do not matter)', async () => {
    const gpu = await testGpu();
    const shape = { nTokens: 3, nHeads: 2, nKvHeads: 1, headDim: 16, contextLength: 80 };
    const positions = Uint32Array.of(2, 70, 0);
    const q = randomF32(3 * 2 * 16, 31);
    const kCache = randomF32(80 * 16, 32);
    const vCache = randomF32(80 * 16, 33);
    const poisoned = (cache: Float32Array): Float32Array => cache.map((x, i) => (Math.floor(i / 16) > 70 ? 1e6 : x));
    const outputs: Float32Array[] = [];
    for (const [kc, vc] of [[kCache, vCache], [poisoned(kCache), poisoned(vCache)]] as const) {
      const out = storageBuffer(gpu.device, 'out', q.length * 4);
      const paging = contiguousPaging(gpu, shape.nTokens, shape.contextLength);
      runOps(gpu.device, [attentionOp(gpu, upload(gpu, 'q', q), upload(gpu, 'kc', kc), upload(gpu, 'vc', vc), upload(gpu, 'pos', positions), paging, out, shape)]);
      outputs.push(await readF32(gpu.device, out, q.length));
    }
    expect(outputs[1]).toEqual(outputs[0]);
    expect(maxRelativeError(outputs[0]!, attentionRef(q, kCache, vCache, positions, shape), 1e-2)).toBeLessThan(1e-4);
  });
});

describe('paged kv cache', () => {
  for (const variant of ['single', 'split'] as const) it(`serves a batch of two sequences whose blocks are scattered through the cache (${variant})`, async () => {
    const gpu = await testGpu();
    const [nHeads, nKvHeads, headDim, blockSize, blocksPerSequence] = [4, 2, 16, 4, 6];
    const kvWidth = nKvHeads * headDim;
    const totalBlocks = 2 * blocksPerSequence;
    // Slot 0 owns physical blocks 11, 3, 7, ...; slot 1 owns the rest, also shuffled.
    const order = [11, 3, 7, 0, 9, 5, 2, 10, 4, 8, 1, 6];
    const blockTable = Uint32Array.from(order);
    const physicalRow = (slot: number, position: number) =>
      order[slot * blocksPerSequence + Math.floor(position / blockSize)]! * blockSize + (position % blockSize);
    // Each sequence's logical cache (row = position), as the reference sees it.
    const logical = [0, 1].map((slot) => ({
      k: randomF32(blocksPerSequence * blockSize * kvWidth, 70 + slot),
      v: randomF32(blocksPerSequence * blockSize * kvWidth, 72 + slot),
    }));
    const kCache = new Float32Array(totalBlocks * blockSize * kvWidth);
    const vCache = new Float32Array(totalBlocks * blockSize * kvWidth);
    logical.forEach(({ k, v }, slot) => {
      for (let position = 0; position < blocksPerSequence * blockSize; position++) {
        const from = position * kvWidth;
        kCache.set(k.subarray(from, from + kvWidth), physicalRow(slot, position) * kvWidth);
        vCache.set(v.subarray(from, from + kvWidth), physicalRow(slot, position) * kvWidth);
      }
    });
    // Token 0: slot 1 decoding at position 17; tokens 1-3: slot 0 prefilling positions 5-7.
    const slots = Uint32Array.of(1, 0, 0, 0);
    const positions = Uint32Array.of(17, 5, 6, 7);
    const q = randomF32(4 * nHeads * headDim, 74);
    const out = storageBuffer(gpu.device, 'out', q.length * 4);
    const paging = { tokenSlots: upload(gpu, 'slots', slots), blockTable: upload(gpu, 'blocks', blockTable), blockSize, blocksPerSequence };
    const shape = { nTokens: 4, nHeads, nKvHeads, headDim };
    runOps(gpu.device, attentionOps(gpu, upload(gpu, 'q', q), upload(gpu, 'kc', kCache), upload(gpu, 'vc', vCache), upload(gpu, 'pos', positions), paging, out, shape, { variant, chunk: 4 }));
    const got = await readF32(gpu.device, out, q.length);
    const width = nHeads * headDim;
    for (let t = 0; t < 4; t++) {
      const { k, v } = logical[slots[t]!]!;
      const want = attentionRef(q.subarray(t * width, (t + 1) * width), k, v, positions.subarray(t, t + 1), { ...shape, nTokens: 1 });
      expect(maxRelativeError(got.subarray(t * width, (t + 1) * width), want, 1e-2), `token ${t}`).toBeLessThan(1e-4);
    }
  });
});

describe('elementwise', () => {
  for (const count of [1, 172, 300, 4099]) {
    it(`swiglu and add over ${count} elements`, async () => {
      const gpu = await testGpu();
      const a = randomF32(count, 40 + count, 12); // wide enough for exp(-g) to be large and tiny
      const b = randomF32(count, 41 + count, 3);
      const swiglu = storageBuffer(gpu.device, 'swiglu', count * 4);
      const sum = storageBuffer(gpu.device, 'sum', count * 4);
      const aBuffer = upload(gpu, 'a', a);
      const bBuffer = upload(gpu, 'b', b);
      runOps(gpu.device, [swigluOp(gpu, aBuffer, bBuffer, swiglu, count), addOp(gpu, aBuffer, bBuffer, sum, count)]);
      expect(maxRelativeError(await readF32(gpu.device, swiglu, count), swigluRef(a, b), 1e-3)).toBeLessThan(1e-5);
      expect(await readF32(gpu.device, sum, count)).toEqual(addRef(a, b));
    });
  }

  it('adds into the residual in place (out === a, and out === b)', async () => {
    const gpu = await testGpu();
    const a = randomF32(300, 50);
    const b = randomF32(300, 51);
    const residual = upload(gpu, 'residual', a);
    const other = upload(gpu, 'other', b);
    runOps(gpu.device, [addOp(gpu, residual, other, residual, 300), addOp(gpu, other, residual, residual, 300)]);
    expect(await readF32(gpu.device, residual, 300)).toEqual(addRef(addRef(a, b), b));
  });

  it('writes swiglu over its gate or its up buffer', async () => {
    const gpu = await testGpu();
    const gate = randomF32(300, 52, 6);
    const up = randomF32(300, 53);
    const gateBuffer = upload(gpu, 'gate', gate);
    const upBuffer = upload(gpu, 'up', up);
    const intoGate = upload(gpu, 'gate2', gate);
    const intoUp = upload(gpu, 'up2', up);
    runOps(gpu.device, [swigluOp(gpu, intoGate, upBuffer, intoGate, 300), swigluOp(gpu, gateBuffer, intoUp, intoUp, 300)]);
    const want = swigluRef(gate, up);
    expect(maxRelativeError(await readF32(gpu.device, intoGate, 300), want, 1e-3)).toBeLessThan(1e-5);
    expect(maxRelativeError(await readF32(gpu.device, intoUp, 300), want, 1e-3)).toBeLessThan(1e-5);
  });

  it('gathers rows (the sampled tokens of a batch)', async () => {
    const gpu = await testGpu();
    const [width, nRows] = [70, 9];
    const x = randomF32(nRows * width, 61);
    const rows = Uint32Array.of(8, 0, 3, 3);
    const out = storageBuffer(gpu.device, 'gathered', rows.length * width * 4);
    runOps(gpu.device, [gatherRowsOp(gpu, upload(gpu, 'x', x), upload(gpu, 'rows', rows), out, rows.length, width)]);
    const want = new Float32Array(rows.length * width);
    rows.forEach((row, r) => want.set(x.subarray(row * width, (row + 1) * width), r * width));
    expect(await readF32(gpu.device, out, want.length)).toEqual(want);
  });

  it('gathers columns (an act-order weight\'s input), from rows of the same or a wider stride', async () => {
    const gpu = await testGpu();
    const [width, nRows] = [96, 5];
    const next = rng(62);
    // A random permutation of the columns (Fisher-Yates), as a GPTQ g_idx sort makes.
    const order = Uint32Array.from({ length: width }, (_, c) => c);
    for (let c = width - 1; c > 0; c--) {
      const j = Math.floor(next() * (c + 1));
      [order[c], order[j]] = [order[j]!, order[c]!];
    }
    const orderBuffer = upload(gpu, 'order', order);
    for (const stride of [width, width + 36]) {
      const x = randomF32(nRows * stride, 63 + stride);
      const out = storageBuffer(gpu.device, 'gathered', nRows * width * 4);
      runOps(gpu.device, [gatherColumnsOp(gpu, upload(gpu, 'x', x), orderBuffer, out, nRows, width, stride)]);
      expect(await readF32(gpu.device, out, nRows * width), `stride ${stride}`).toEqual(gatherColumnsRef(x, nRows, width, order, stride));
    }
  });

  it('copies and scales', async () => {
    const gpu = await testGpu();
    const x = randomF32(172, 60);
    const copy = storageBuffer(gpu.device, 'copy', 172 * 4);
    const scaled = storageBuffer(gpu.device, 'scaled', 172 * 4);
    const xBuffer = upload(gpu, 'x', x);
    runOps(gpu.device, [copyOp(gpu, xBuffer, copy, 172), scaleOp(gpu, xBuffer, scaled, 172, 0.5), scaleOp(gpu, copy, copy, 172, 4)]);
    expect(await readF32(gpu.device, scaled, 172)).toEqual(x.map((v) => v * 0.5));
    expect(await readF32(gpu.device, copy, 172)).toEqual(x.map((v) => v * 4));
  });
});

describe('sampling', () => {
  it('argmax picks the largest logit of each row, the lowest id on ties', async () => {
    const gpu = await testGpu();
    const vocab = 3001;
    const nTokens = 5;
    const logits = randomF32(nTokens * vocab, 70, 10);
    logits[0 * vocab + 2999] = 50; // near the end of the row
    logits[1 * vocab + 17] = 40; // a tie: 17 wins over 2000
    logits[1 * vocab + 2000] = 40;
    logits.fill(-7, 2 * vocab, 3 * vocab); // all equal: id 0
    logits[3 * vocab + 0] = 30; // the very first id
    for (let i = 0; i < vocab; i++) logits[4 * vocab + i] = i % 256 === 255 ? 99 : logits[4 * vocab + i]!; // ties across threads
    const ids = storageBuffer(gpu.device, 'ids', nTokens * 4);
    runOps(gpu.device, [argmaxOp(gpu, upload(gpu, 'logits', logits), ids, nTokens, vocab)]);
    const got = await readU32(gpu.device, ids, nTokens);
    expect([...got]).toEqual([2999, 17, 0, 0, 255]);
    expect(got).toEqual(argmaxRef(logits, nTokens, vocab));
  });

  it('argmax of a 128k vocabulary', async () => {
    const gpu = await testGpu();
    const vocab = 128_256;
    const logits = randomF32(vocab, 71, 10);
    logits[100_003] = 11;
    const ids = storageBuffer(gpu.device, 'ids', 4);
    runOps(gpu.device, [argmaxOp(gpu, upload(gpu, 'logits', logits), ids, 1, vocab)]);
    expect((await readU32(gpu.device, ids, 1))[0]).toBe(100_003);
  });

  for (const [nTokens, vocab, k] of [[1, 50, 1], [3, 1000, 40], [2, 32000, 64], [1, 64, 64]] as const) {
    it(`top-${k} of ${nTokens} rows of ${vocab}, best first`, async () => {
      const gpu = await testGpu();
      const logits = randomF32(nTokens * vocab, 80 + k, 8);
      const out = storageBuffer(gpu.device, 'topk', nTokens * k * 8);
      runOps(gpu.device, [topKOp(gpu, upload(gpu, 'logits', logits), out, nTokens, vocab, k)]);
      const got = unpackTopK(await readBuffer(gpu.device, out, nTokens * k * 8), nTokens, k);
      const want = topKRef(logits, nTokens, vocab, k);
      got.forEach((row, t) => {
        expect([...row.ids]).toEqual(want[t]!.ids);
        expect([...row.logits]).toEqual(want[t]!.logits);
      });
    });
  }

  it('top-k breaks ties (also at the threshold) by lowest id, and orders negatives and -inf', async () => {
    const gpu = await testGpu();
    const vocab = 700;
    const k = 10;
    const logits = new Float32Array(vocab).fill(-Infinity);
    for (const i of [5, 300, 600, 699]) logits[i] = 2.5; // four-way tie at the top
    for (const i of [650, 7, 400, 9, 1, 520]) logits[i] = -1; // threshold tie: take 1, 7, 9, 400 (lowest ids)
    logits[100] = -0.5;
    const out = storageBuffer(gpu.device, 'topk', k * 8);
    runOps(gpu.device, [topKOp(gpu, upload(gpu, 'logits', logits), out, 1, vocab, k)]);
    const [row] = unpackTopK(await readBuffer(gpu.device, out, k * 8), 1, k);
    expect([...row!.ids]).toEqual([5, 300, 600, 699, 100, 1, 7, 9, 400, 520]);
    expect([...row!.ids]).toEqual(topKRef(logits, 1, vocab, k)[0]!.ids);

    // Only -inf beyond the first three: the rest of the top-10 is the lowest-id -inf logits.
    const sparse = new Float32Array(vocab).fill(-Infinity);
    sparse[3] = 1;
    sparse[50] = 3;
    sparse[2] = 2;
    const sparseOut = storageBuffer(gpu.device, 'topk', k * 8);
    runOps(gpu.device, [topKOp(gpu, upload(gpu, 'sparse', sparse), sparseOut, 1, vocab, k)]);
    const [sparseRow] = unpackTopK(await readBuffer(gpu.device, sparseOut, k * 8), 1, k);
    expect([...sparseRow!.ids]).toEqual([50, 2, 3, 0, 1, 4, 5, 6, 7, 8]);
    expect(sparseRow!.logits[3]).toBe(-Infinity);
  });

  it('applies repetition, frequency and presence penalties per row', async () => {
    const gpu = await testGpu();
    const vocab = 500;
    const maxIds = 8;
    const logits = randomF32(2 * vocab, 90, 5);
    logits[3] = 0; // zero is multiplied, like llama.cpp
    const rows = [new Map([[3, 1], [10, 2], [499, 1], [250, 5]]), new Map([[0, 3], [77, 1]])];
    const options = { nRows: 2, vocab, maxIds, repeat: 1.3, frequency: 0.25, presence: 0.5 };
    const logitBuffer = upload(gpu, 'logits', logits);
    const op = repetitionPenaltyOp(gpu, logitBuffer, upload(gpu, 'penalized', packPenalties(rows, maxIds)), options);
    runOps(gpu.device, [op]);
    const got = await readF32(gpu.device, logitBuffer, 2 * vocab);
    rows.forEach((counts, r) => {
      const want = penaltiesRef(logits.subarray(r * vocab, (r + 1) * vocab), counts, 1.3, 0.25, 0.5);
      expect(maxRelativeError(got.subarray(r * vocab, (r + 1) * vocab), want, 1e-3)).toBeLessThan(1e-6);
    });
    expect(got[77]).toBe(logits[77]); // row 1's ids do not touch row 0
  });
});
