// The attention kernels (single, split-K, tiled flash attention) and the fused rope + KV-cache
// write on a real WebGPU adapter, against the plain-TypeScript references in test/reference/ops.ts.
import { describe, expect, it } from 'vitest';
import { FULL_SWEEP, maxRelativeError, randomF32, rng, testGpu } from './helpers/gpu.ts';
import { readF32, runOps, storageBuffer, writeBuffer } from '../src/gpu/kernel.ts';
import type { GpuContext } from '../src/gpu/device.ts';
import {
  attentionOps,
  attentionScratchBytes,
  attentionVariant,
  kvCacheWriteOp,
  splitAttentionPlan,
  SPLIT_MAX_TOKENS,
  tiledAttentionPlan,
  type AttentionOptions,
  type KvPaging,
} from '../src/shaders/attention.ts';
import { ropeAndCacheWriteOp, ropeOp, type RopeStyle } from '../src/shaders/rope.ts';
import { cacheRowRef, pagedAttentionRef, ropeRef, type PagingRef } from './reference/ops.ts';

const upload = (gpu: GpuContext, label: string, data: Float32Array | Uint32Array): GPUBuffer =>
  storageBuffer(gpu.device, label, data);

interface PagedCache {
  /** Physical caches `[totalBlocks * blockSize][kvWidth]`, random everywhere. */
  kCache: Float32Array;
  vCache: Float32Array;
  /** Each slot's blocks, scattered through the pool (a shuffled permutation, with spare blocks). */
  paging: PagingRef;
}

/** A paged cache for `slots` sequences of `blocksPerSequence` blocks, blocks shuffled over a pool with two spare blocks. */
function pagedCache(tokenSlots: Uint32Array, slots: number, blockSize: number, blocksPerSequence: number, kvWidth: number, seed: number): PagedCache {
  const totalBlocks = slots * blocksPerSequence + 2;
  const next = rng(seed);
  const order = Array.from({ length: totalBlocks }, (_, i) => i);
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  return {
    kCache: randomF32(totalBlocks * blockSize * kvWidth, seed + 1, 2),
    vCache: randomF32(totalBlocks * blockSize * kvWidth, seed + 2),
    paging: { tokenSlots, blockTable: Uint32Array.from(order.slice(0, slots * blocksPerSequence)), blockSize, blocksPerSequence },
  };
}

function gpuPaging(gpu: GpuContext, paging: PagingRef): KvPaging {
  return {
    tokenSlots: upload(gpu, 'slots', paging.tokenSlots),
    blockTable: upload(gpu, 'blocks', paging.blockTable),
    blockSize: paging.blockSize,
    blocksPerSequence: paging.blocksPerSequence,
  };
}

interface AttentionCase {
  name: string;
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  blockSize: number;
  blocksPerSequence: number;
  /** Sequences in the cache; token t belongs to slot `slots[t]` (default: all slot 0). */
  slots?: number[];
  positions: number[];
  options: AttentionOptions;
}

async function runAttention(gpu: GpuContext, c: AttentionCase, seed: number): Promise<{ got: Float32Array; want: Float32Array }> {
  const nTokens = c.positions.length;
  const kvWidth = c.nKvHeads * c.headDim;
  const tokenSlots = Uint32Array.from(c.slots ?? c.positions.map(() => 0));
  const cache = pagedCache(tokenSlots, Math.max(...tokenSlots) + 1, c.blockSize, c.blocksPerSequence, kvWidth, seed);
  const positions = Uint32Array.from(c.positions);
  const q = randomF32(nTokens * c.nHeads * c.headDim, seed + 3, 2);
  const out = storageBuffer(gpu.device, 'out', q.length * 4);
  const shape = { nTokens, nHeads: c.nHeads, nKvHeads: c.nKvHeads, headDim: c.headDim };
  const ops = attentionOps(
    gpu,
    upload(gpu, 'q', q),
    upload(gpu, 'kc', cache.kCache),
    upload(gpu, 'vc', cache.vCache),
    upload(gpu, 'pos', positions),
    gpuPaging(gpu, cache.paging),
    out,
    shape,
    c.options,
  );
  runOps(gpu.device, ops);
  return { got: await readF32(gpu.device, out, q.length), want: pagedAttentionRef(q, cache.kCache, cache.vCache, positions, cache.paging, shape) };
}

describe('attention variants against the reference', () => {
  const cases: AttentionCase[] = [
    // 6 chunks of 16: chunks 0-1 full, chunk 2 holds 9 keys, chunks 3-5 are empty.
    { name: 'GQA 8/1, headDim 64, chunk 16, empty chunks', nHeads: 8, nKvHeads: 1, headDim: 64, blockSize: 16, blocksPerSequence: 6, positions: [40], options: {} },
    // 4 chunks of 64 (one tile each); the last holds 9 keys.
    { name: 'GQA 8/2, headDim 128, chunk 64, last chunk partial', nHeads: 8, nKvHeads: 2, headDim: 128, blockSize: 16, blocksPerSequence: 16, positions: [200], options: { chunk: 64 } },
    // Llama-3-8B's group (32/8 → 4) in small: 4 heads per kv head, full workgroup of query heads.
    { name: 'GQA 8/2 → group 4, headDim 128, two tokens', nHeads: 8, nKvHeads: 2, headDim: 128, blockSize: 16, blocksPerSequence: 8, positions: [127, 64], slots: [0, 1], options: { chunk: 32 } },
    // Chunks of 4 (tile 4) with 4 key lanes of 2 vec4 columns each.
    { name: 'GQA 4/2, headDim 8, chunk 4', nHeads: 4, nKvHeads: 2, headDim: 8, blockSize: 4, blocksPerSequence: 16, positions: [0, 3, 4, 37, 63], slots: [0, 1, 0, 2, 1], options: { chunk: 4 } },
    // Group 1, scalar path (headDim % 4 != 0), chunk 7 (capacity 48 is not a multiple of it).
    { name: 'no GQA 4/4, headDim 30 scalar, chunk 7', nHeads: 4, nKvHeads: 4, headDim: 30, blockSize: 16, blocksPerSequence: 3, positions: [47, 6, 7, 41], options: { chunk: 7 } },
    // 43 vec4 columns: one key lane, threads 43..63 idle in the value pass.
    { name: 'MQA 4/1, headDim 172, chunk 32', nHeads: 4, nKvHeads: 1, headDim: 172, blockSize: 16, blocksPerSequence: 8, positions: [99], options: { chunk: 32 } },
    // 75 vec4 columns: two columns per thread; chunk 100 = a full tile of 64 and a tile of 36.
    { name: 'GQA 4/2, headDim 300, chunk 100', nHeads: 4, nKvHeads: 2, headDim: 300, blockSize: 16, blocksPerSequence: 16, positions: [255, 150], slots: [1, 0], options: { chunk: 100 } },
    // 66 scalar columns: two per thread.
    { name: 'GQA 2/1, headDim 66 scalar, chunk 16', nHeads: 2, nKvHeads: 1, headDim: 66, blockSize: 8, blocksPerSequence: 8, positions: [50], options: { chunk: 16 } },
    // Group 8 split over 4 workgroups of 2 query heads.
    { name: 'GQA 16/2, 2 heads per workgroup, headDim 64', nHeads: 16, nKvHeads: 2, headDim: 64, blockSize: 16, blocksPerSequence: 4, positions: [33], options: { chunk: 16, maxHeadsPerWorkgroup: 2 } },
    // Position 0 (one key) and the last position, default chunk (64 → 10 chunks of a 640 context).
    { name: 'GQA 8/4, headDim 64, default chunk, first and last position', nHeads: 8, nKvHeads: 4, headDim: 64, blockSize: 16, blocksPerSequence: 40, positions: [0, 639, 64], slots: [0, 1, 2], options: {} },
    // Chunks of one position: one key per workgroup.
    { name: 'GQA 2/1, headDim 16, chunk 1', nHeads: 2, nKvHeads: 1, headDim: 16, blockSize: 4, blocksPerSequence: 3, positions: [11, 5], slots: [0, 0], options: { chunk: 1 } },
  ];
  // Every case runs the split kernel; the single kernel (each shape compiles its own) takes every
  // other case (all of them under `npm run test:full`).
  cases.forEach((c, index) => {
    for (const variant of FULL_SWEEP || index % 2 === 1 ? (['split', 'single'] as const) : (['split'] as const)) {
      it(`${variant}: ${c.name}, positions ${c.positions.join(',')}`, async () => {
        const gpu = await testGpu();
        const { got, want } = await runAttention(gpu, { ...c, options: { ...c.options, variant } }, 100 + 10 * index);
        expect(maxRelativeError(got, want, 1e-2)).toBeLessThan(1e-4);
      });
    }
  });

  it('splits a long decode into many chunks (GQA 32/8 like Llama-3-8B, headDim 128, position 2047)', async () => {
    const gpu = await testGpu();
    const c = { name: 'llama-3', nHeads: 32, nKvHeads: 8, headDim: 128, blockSize: 16, blocksPerSequence: 128, positions: [2047], options: { variant: 'split' as const, chunk: 256 } };
    const { got, want } = await runAttention(gpu, c, 7);
    expect(maxRelativeError(got, want, 1e-2)).toBeLessThan(1e-4);
  });

  it("'auto' splits decode-sized steps and tiles prefill (single on request)", async () => {
    const gpu = await testGpu();
    const paging = gpuPaging(gpu, { tokenSlots: new Uint32Array(16), blockTable: Uint32Array.of(0, 1, 2, 3), blockSize: 16, blocksPerSequence: 4 });
    const b = storageBuffer(gpu.device, 'any', 1 << 16);
    const shape = (nTokens: number) => ({ nTokens, nHeads: 4, nKvHeads: 2, headDim: 16 });
    const decode = attentionOps(gpu, b, b, b, b, paging, b, shape(1));
    expect(decode.map((op) => op.label)).toEqual(['attention split', 'attention combine']);
    // The split op owns its scratch (destroyed with the program) unless one is passed in.
    expect(decode[0]!.owned.some((buffer) => buffer.size >= attentionScratchBytes(gpu, shape(1), paging))).toBe(true);
    expect(attentionOps(gpu, b, b, b, b, paging, b, shape(SPLIT_MAX_TOKENS)).length).toBe(2);
    expect(attentionOps(gpu, b, b, b, b, paging, b, shape(SPLIT_MAX_TOKENS + 1)).map((op) => op.label)).toEqual(['attention tiled']);
    expect(attentionOps(gpu, b, b, b, b, paging, b, shape(SPLIT_MAX_TOKENS + 1), { variant: 'single' }).map((op) => op.label)).toEqual(['attention']);
    expect(attentionScratchBytes(gpu, shape(SPLIT_MAX_TOKENS + 1), paging)).toBe(0);
    const shared = attentionOps(gpu, b, b, b, b, paging, b, shape(2), { scratch: b });
    expect(shared[0]!.owned).not.toContain(b);
  });

  it('rejects a bad chunk and a scratch buffer that is too small', async () => {
    const gpu = await testGpu();
    const paging = gpuPaging(gpu, { tokenSlots: new Uint32Array(1), blockTable: Uint32Array.of(0, 1), blockSize: 16, blocksPerSequence: 2 });
    const b = storageBuffer(gpu.device, 'small', 64);
    const shape = { nTokens: 1, nHeads: 4, nKvHeads: 2, headDim: 16 };
    expect(() => attentionOps(gpu, b, b, b, b, paging, b, shape, { variant: 'split', chunk: 0 })).toThrow(/chunk/);
    expect(() => attentionOps(gpu, b, b, b, b, paging, b, shape, { variant: 'split', chunk: 2.5 })).toThrow(/chunk/);
    expect(() => attentionOps(gpu, b, b, b, b, paging, b, shape, { variant: 'split', scratch: b })).toThrow(/scratch/);
    expect(() => attentionOps(gpu, b, b, b, b, paging, b, { ...shape, nKvHeads: 3 }, { variant: 'split' })).toThrow(/multiple/);
  });

  it('plans chunks from the sequence capacity and groups the query heads of a kv head', async () => {
    const gpu = await testGpu();
    const plan = splitAttentionPlan(gpu, { nTokens: 1, nHeads: 32, nKvHeads: 8, headDim: 128 }, { blockSize: 16, blocksPerSequence: 512 });
    expect(plan).toMatchObject({ chunk: 64, nChunks: 128, vec: 4, headsPerWorkgroup: 4, headGroups: 1, keyLanes: 2 });
    expect(plan.workgroupBytes).toBeLessThanOrEqual(16384);
    const huge = splitAttentionPlan(gpu, { nTokens: 1, nHeads: 32, nKvHeads: 8, headDim: 128 }, { blockSize: 16, blocksPerSequence: 8192 });
    expect(huge).toMatchObject({ chunk: 512, nChunks: 256 });
    expect(splitAttentionPlan(gpu, { nTokens: 1, nHeads: 64, nKvHeads: 1, headDim: 30 }, { blockSize: 16, blocksPerSequence: 4 })).toMatchObject({ vec: 1, headsPerWorkgroup: 8, headGroups: 8 });
  });
});

/** Positions `start, start + 1, ...`: a prompt chunk of `length` tokens. */
const chunk = (start: number, length: number): number[] => Array.from({ length }, (_, i) => start + i);

describe('tiled (flash) attention against the reference', () => {
  const cases: AttentionCase[] = [
    // Prefill from position 0: one token, a block's worth, blocks plus a 1-token block, many blocks.
    { name: 'prefill T=1, GQA 4/4, headDim 64', nHeads: 4, nKvHeads: 4, headDim: 64, blockSize: 16, blocksPerSequence: 2, positions: chunk(0, 1), options: {} },
    { name: 'prefill T=7, GQA 4/2, headDim 8', nHeads: 4, nKvHeads: 2, headDim: 8, blockSize: 4, blocksPerSequence: 4, positions: chunk(0, 7), options: {} },
    { name: 'prefill T=33, GQA 2/2, headDim 64 (32-token blocks: one full, one of a token)', nHeads: 2, nKvHeads: 2, headDim: 64, blockSize: 16, blocksPerSequence: 3, positions: chunk(0, 33), options: {} },
    { name: 'prefill T=100, GQA 8/2, headDim 128 (16 rows = 4 tokens × 4 heads, 8-key tiles)', nHeads: 8, nKvHeads: 2, headDim: 128, blockSize: 16, blocksPerSequence: 8, positions: chunk(0, 100), options: {} },
    // A later chunk of a prompt: the first query at 37 sees keys 0..37 written by earlier steps.
    { name: 'chunk at 37..76, GQA 8/4, headDim 64', nHeads: 8, nKvHeads: 4, headDim: 64, blockSize: 16, blocksPerSequence: 6, positions: chunk(37, 40), options: {} },
    { name: 'chunk at 100..119, MQA 8/1 (group 8), headDim 32', nHeads: 8, nKvHeads: 1, headDim: 32, blockSize: 8, blocksPerSequence: 16, positions: chunk(100, 20), options: {} },
    // GQA groups 1 / 8 (and 2 / 4 under `npm run test:full`) at headDim 64 on a chunk that starts mid-block.
    ...(FULL_SWEEP ? [1, 2, 4, 8] : [1, 8]).map((group) => ({ name: `GQA group ${group}, headDim 64, chunk at 5..28`, nHeads: 2 * group, nKvHeads: 2, headDim: 64, blockSize: 16, blocksPerSequence: 2, positions: chunk(5, 24), options: {} })),
    // Scalar paths (headDim % 4 != 0).
    { name: 'headDim 30 scalar, GQA 6/2 (group 3: rows of 3 heads)', nHeads: 6, nKvHeads: 2, headDim: 30, blockSize: 16, blocksPerSequence: 4, positions: chunk(10, 45), options: {} },
    { name: 'headDim 66 scalar, GQA 2/1', nHeads: 2, nKvHeads: 1, headDim: 66, blockSize: 8, blocksPerSequence: 8, positions: chunk(0, 50), options: {} },
    // A mixed batch: decode tokens of three sequences, then two prompt chunks (one mid-prompt),
    // in different slots; one block of 32 rows holds several runs.
    {
      name: 'mixed batch: decode tokens of slots 3, 0, 4 + chunks of slots 1 (at 20) and 2 (at 0), GQA 4/1, headDim 16',
      nHeads: 4, nKvHeads: 1, headDim: 16, blockSize: 8, blocksPerSequence: 8,
      positions: [61, 0, 9, ...chunk(20, 25), ...chunk(0, 12)],
      slots: [3, 0, 4, ...Array<number>(25).fill(1), ...Array<number>(12).fill(2)],
      options: {},
    },
    // The same batch with blocks of 6 rows (3 tokens × 2 heads) and 5-key tiles: run edges and
    // block edges fall in different places, tiles straddle cache blocks.
    {
      name: 'mixed batch, 3-token blocks, 5-key tiles, GQA 4/2, headDim 128',
      nHeads: 4, nKvHeads: 2, headDim: 128, blockSize: 8, blocksPerSequence: 8,
      positions: [61, 0, 9, ...chunk(20, 25), ...chunk(0, 12)],
      slots: [3, 0, 4, ...Array<number>(25).fill(1), ...Array<number>(12).fill(2)],
      options: { queryRows: 6, keysPerTile: 5 },
    },
    // One slot's tokens split by another slot (two runs of slot 0 in one block), out-of-order positions.
    { name: 'a slot interrupted by another, unsorted positions, GQA 2/1, headDim 12', nHeads: 2, nKvHeads: 1, headDim: 12, blockSize: 4, blocksPerSequence: 8, positions: [30, 3, 31, 7, 2, 29, 0, 17, 16, 15], slots: [0, 0, 1, 1, 0, 0, 2, 1, 1, 1], options: {} },
    // The last position of the capacity, 8-row blocks over a long chunk.
    { name: 'chunk ending at the last position (127), 8 rows, 32-key tiles, headDim 64', nHeads: 4, nKvHeads: 4, headDim: 64, blockSize: 16, blocksPerSequence: 8, positions: chunk(90, 38), options: { queryRows: 8, keysPerTile: 32 } },
  ];
  cases.forEach((c, index) => {
    it(`${c.name} (${c.positions.length} tokens)`, async () => {
      const gpu = await testGpu();
      const { got, want } = await runAttention(gpu, { ...c, options: { ...c.options, variant: 'tiled' } }, 500 + 10 * index);
      expect(maxRelativeError(got, want, 1e-2)).toBeLessThan(1e-4);
    });
  });

  it('one recorded prefill program serves consecutive chunks (cache write + tiled attention)', async () => {
    const gpu = await testGpu();
    const [nHeads, nKvHeads, headDim, blockSize, blocksPerSequence, T] = [8, 2, 64, 16, 8, 24];
    const kvWidth = nKvHeads * headDim;
    // Step 1: slot 1's prompt 0..23. Step 2: its next chunk 24..43 after decode tokens of slots 0 and 2.
    // Step 3: slot 0's chunk 5..20 between decode tokens of slots 1 and 2.
    const steps = [
      { positions: chunk(0, 24), slots: Array<number>(24).fill(1) },
      { positions: [4, 30, 12, 77, ...chunk(24, 20)], slots: [0, 2, 0, 2, ...Array<number>(20).fill(1)] },
      { positions: [44, ...chunk(5, 16), 78, 79, 80, 81, 82, 83, 84], slots: [1, ...Array<number>(16).fill(0), 2, 2, 2, 2, 2, 2, 2] },
    ];
    const cache = pagedCache(new Uint32Array(T), 3, blockSize, blocksPerSequence, kvWidth, 90);
    const kCache = Float32Array.from(cache.kCache);
    const vCache = Float32Array.from(cache.vCache);
    const shape = { nTokens: T, nHeads, nKvHeads, headDim };
    const [qBuffer, kBuffer, vBuffer] = [nHeads, nKvHeads, nKvHeads].map((heads) => storageBuffer(gpu.device, 'x', T * heads * headDim * 4));
    const positionBuffer = storageBuffer(gpu.device, 'pos', T * 4);
    const slotBuffer = storageBuffer(gpu.device, 'slots', T * 4);
    const kcBuffer = upload(gpu, 'kc', kCache);
    const vcBuffer = upload(gpu, 'vc', vCache);
    const out = storageBuffer(gpu.device, 'out', T * nHeads * headDim * 4);
    const paging = { ...gpuPaging(gpu, cache.paging), tokenSlots: slotBuffer };
    const ops = attentionOps(gpu, qBuffer!, kcBuffer, vcBuffer, positionBuffer, paging, out, shape);
    expect(ops.map((op) => op.label)).toEqual(['attention tiled']);
    const program = [kvCacheWriteOp(gpu, kBuffer!, vBuffer!, positionBuffer, paging, kcBuffer, vcBuffer, shape), ...ops];
    for (const [step, { positions: p, slots: s }] of steps.entries()) {
      expect(p.length).toBe(T);
      const positions = Uint32Array.from(p);
      const tokenSlots = Uint32Array.from(s);
      const q = randomF32(T * nHeads * headDim, 600 + step, 2);
      const k = randomF32(T * kvWidth, 700 + step, 2);
      const v = randomF32(T * kvWidth, 800 + step);
      writeBuffer(gpu.device, qBuffer!, 0, q);
      writeBuffer(gpu.device, kBuffer!, 0, k);
      writeBuffer(gpu.device, vBuffer!, 0, v);
      writeBuffer(gpu.device, positionBuffer, 0, positions);
      writeBuffer(gpu.device, slotBuffer, 0, tokenSlots);
      runOps(gpu.device, program);
      const refPaging = { ...cache.paging, tokenSlots };
      for (let t = 0; t < T; t++) {
        const row = cacheRowRef(refPaging, tokenSlots[t]!, positions[t]!) * kvWidth;
        kCache.set(k.subarray(t * kvWidth, (t + 1) * kvWidth), row);
        vCache.set(v.subarray(t * kvWidth, (t + 1) * kvWidth), row);
      }
      const got = await readF32(gpu.device, out, q.length);
      const want = pagedAttentionRef(q, kCache, vCache, positions, refPaging, shape);
      expect(maxRelativeError(got, want, 1e-2), `step ${step}`).toBeLessThan(1e-4);
    }
  });

  it("plans tiles within 16 KiB and 128 invocations; 'auto' picks tiled for prefill where it fits", async () => {
    const gpu = await testGpu();
    const plan = (nHeads: number, nKvHeads: number, headDim: number) => tiledAttentionPlan(gpu, { nHeads, nKvHeads, headDim });
    expect(plan(32, 8, 128)).toMatchObject({ vec: 4, tokensPerBlock: 4, headsPerWorkgroup: 4, headGroups: 1, rows: 16, keysPerTile: 8 });
    expect(plan(32, 32, 64)).toMatchObject({ vec: 4, tokensPerBlock: 32, headsPerWorkgroup: 1, rows: 32, keysPerTile: 16 });
    expect(plan(6, 2, 30)).toMatchObject({ vec: 1, headsPerWorkgroup: 3, rows: 30 });
    for (const headDim of [8, 12, 30, 64, 66, 128, 172, 256]) {
      for (const [nHeads, nKvHeads] of [[8, 8], [8, 2], [8, 1]]) {
        const p = plan(nHeads!, nKvHeads!, headDim);
        expect(p, `headDim ${headDim}`).toBeDefined();
        expect(p!.workgroupBytes).toBeLessThanOrEqual(16384);
        expect(p!.workgroupSize).toBeLessThanOrEqual(256);
        expect(p!.rows).toBe(p!.tokensPerBlock * p!.headsPerWorkgroup);
      }
    }
    const shape = (nTokens: number, headDim = 64) => ({ nTokens, nHeads: 8, nKvHeads: 2, headDim });
    expect(attentionVariant(gpu, shape(SPLIT_MAX_TOKENS))).toBe('split');
    expect(attentionVariant(gpu, shape(SPLIT_MAX_TOKENS + 1))).toBe('tiled');
    expect(attentionVariant(gpu, shape(512, 128))).toBe('tiled');
    // Too big a head for 16 KiB, or too few invocations: 'single'.
    expect(plan(8, 8, 512)).toBeUndefined();
    expect(attentionVariant(gpu, shape(64, 512))).toBe('single');
    const small = { limits: { ...limitsOf(gpu), maxComputeInvocationsPerWorkgroup: 64 } };
    expect(attentionVariant(small, shape(64))).toBe('single');
    const tight = { limits: { ...limitsOf(gpu), maxComputeWorkgroupStorageSize: 8192 } };
    expect(tiledAttentionPlan(tight, shape(64, 128))!.workgroupBytes).toBeLessThanOrEqual(8192);
    expect(attentionScratchBytes(gpu, shape(64), { blockSize: 16, blocksPerSequence: 4 })).toBe(0);
  });

  it('rejects tiles that do not fit and bad tile sizes', async () => {
    const gpu = await testGpu();
    const paging = gpuPaging(gpu, { tokenSlots: new Uint32Array(16), blockTable: Uint32Array.of(0, 1), blockSize: 16, blocksPerSequence: 2 });
    const b = storageBuffer(gpu.device, 'any', 1 << 16);
    const shape = { nTokens: 16, nHeads: 4, nKvHeads: 2, headDim: 512 };
    expect(() => attentionOps(gpu, b, b, b, b, paging, b, shape, { variant: 'tiled' })).toThrow(/tiled.*headDim 512/);
    expect(attentionOps(gpu, b, b, b, b, paging, b, shape).map((op) => op.label)).toEqual(['attention']);
    expect(() => attentionOps(gpu, b, b, b, b, paging, b, { ...shape, headDim: 16 }, { variant: 'tiled', keysPerTile: 0 })).toThrow(/keysPerTile/);
    expect(() => attentionOps(gpu, b, b, b, b, paging, b, { ...shape, headDim: 16 }, { variant: 'tiled', queryRows: 1.5 })).toThrow(/queryRows/);
  });
});

/** A plain copy of a device's limits (GPUSupportedLimits' fields are getters). */
function limitsOf(gpu: GpuContext): GPUSupportedLimits {
  const limits: Record<string, number> = {};
  for (const key of ['maxComputeInvocationsPerWorkgroup', 'maxComputeWorkgroupSizeX', 'maxComputeWorkgroupStorageSize', 'maxComputeWorkgroupsPerDimension'] as const) limits[key] = gpu.limits[key];
  return limits as unknown as GPUSupportedLimits;
}

describe('split attention: partials and replay', () => {
  it('ignores stale partials: a scratch full of NaN from an earlier step changes nothing', async () => {
    const gpu = await testGpu();
    const [nHeads, nKvHeads, headDim, blockSize, blocksPerSequence] = [4, 2, 16, 8, 8];
    const tokenSlots = Uint32Array.of(0, 1);
    const cache = pagedCache(tokenSlots, 2, blockSize, blocksPerSequence, nKvHeads * headDim, 40);
    const positions = Uint32Array.of(19, 2);
    const q = randomF32(2 * nHeads * headDim, 43);
    const shape = { nTokens: 2, nHeads, nKvHeads, headDim };
    const options = { variant: 'split' as const, chunk: 8 };
    const bytes = attentionScratchBytes(gpu, shape, cache.paging, options);
    expect(bytes).toBe(2 * nHeads * 8 * (headDim + 4) * 4);
    const scratch = upload(gpu, 'scratch', new Float32Array(bytes / 4).fill(Number.NaN));
    const out = storageBuffer(gpu.device, 'out', q.length * 4);
    runOps(
      gpu.device,
      attentionOps(gpu, upload(gpu, 'q', q), upload(gpu, 'kc', cache.kCache), upload(gpu, 'vc', cache.vCache), upload(gpu, 'pos', positions), gpuPaging(gpu, cache.paging), out, shape, { ...options, scratch }),
    );
    const got = await readF32(gpu.device, out, q.length);
    expect(maxRelativeError(got, pagedAttentionRef(q, cache.kCache, cache.vCache, positions, cache.paging, shape), 1e-2)).toBeLessThan(1e-4);
    // Chunks past each position hold neutral partials (max -3e38, sum 0).
    const partials = await readF32(gpu.device, scratch, bytes / 4);
    const stride = headDim + 4;
    for (const [token, firstEmpty] of [[0, 3], [1, 1]] as const) {
      for (let head = 0; head < nHeads; head++) {
        for (let chunk = firstEmpty; chunk < 8; chunk++) {
          const at = ((token * nHeads + head) * 8 + chunk) * stride;
          expect([partials[at], partials[at + 1]]).toEqual([Math.fround(-3e38), 0]);
        }
      }
    }
  });

  for (const [variant, options] of [['split', { variant: 'split', chunk: 16 }], ['tiled', { variant: 'tiled', queryRows: 12, keysPerTile: 8 }]] as const) {
  it(`${variant}: attends to nothing past its own position (future rows do not matter)`, async () => {
    const gpu = await testGpu();
    const [nHeads, nKvHeads, headDim, blockSize, blocksPerSequence] = [4, 1, 16, 4, 20];
    const kvWidth = nKvHeads * headDim;
    const tokenSlots = Uint32Array.of(0, 0, 0);
    const cache = pagedCache(tokenSlots, 1, blockSize, blocksPerSequence, kvWidth, 50);
    const positions = Uint32Array.of(2, 70, 0);
    const q = randomF32(3 * nHeads * headDim, 53);
    const shape = { nTokens: 3, nHeads, nKvHeads, headDim };
    const poisoned = (data: Float32Array): Float32Array => {
      const copy = Float32Array.from(data);
      for (let position = 71; position < blockSize * blocksPerSequence; position++) {
        copy.fill(1e6, cacheRowRef(cache.paging, 0, position) * kvWidth, (cacheRowRef(cache.paging, 0, position) + 1) * kvWidth);
      }
      return copy;
    };
    const outputs: Float32Array[] = [];
    for (const [kc, vc] of [[cache.kCache, cache.vCache], [poisoned(cache.kCache), poisoned(cache.vCache)]] as const) {
      const out = storageBuffer(gpu.device, 'out', q.length * 4);
      runOps(gpu.device, attentionOps(gpu, upload(gpu, 'q', q), upload(gpu, 'kc', kc), upload(gpu, 'vc', vc), upload(gpu, 'pos', positions), gpuPaging(gpu, cache.paging), out, shape, options));
      outputs.push(await readF32(gpu.device, out, q.length));
    }
    expect(outputs[1]).toEqual(outputs[0]);
    expect(maxRelativeError(outputs[0]!, pagedAttentionRef(q, cache.kCache, cache.vCache, positions, cache.paging, shape), 1e-2)).toBeLessThan(1e-4);
  });
  }

  for (const variant of ['split', 'single', 'tiled'] as const) {
    it(`${variant}: one recorded program replays at every position (cache write + attention, positions updated in place)`, async () => {
      const gpu = await testGpu();
      const [nHeads, nKvHeads, headDim, blockSize, blocksPerSequence] = [8, 2, 32, 4, 16];
      const kvWidth = nKvHeads * headDim;
      // Two sequences decoding side by side in slots 1 and 0; the cache starts random (stale).
      const tokenSlots = Uint32Array.of(1, 0);
      const cache = pagedCache(tokenSlots, 2, blockSize, blocksPerSequence, kvWidth, 60);
      const kCache = Float32Array.from(cache.kCache);
      const vCache = Float32Array.from(cache.vCache);
      const shape = { nTokens: 2, nHeads, nKvHeads, headDim };
      const [qBuffer, kBuffer, vBuffer] = [nHeads, nKvHeads, nKvHeads].map((heads) => storageBuffer(gpu.device, 'x', 2 * heads * headDim * 4));
      const positionBuffer = storageBuffer(gpu.device, 'pos', 8);
      const kcBuffer = upload(gpu, 'kc', kCache);
      const vcBuffer = upload(gpu, 'vc', vCache);
      const out = storageBuffer(gpu.device, 'out', 2 * nHeads * headDim * 4);
      const paging = gpuPaging(gpu, cache.paging);
      const program = [
        kvCacheWriteOp(gpu, kBuffer!, vBuffer!, positionBuffer, paging, kcBuffer, vcBuffer, shape),
        ...attentionOps(gpu, qBuffer!, kcBuffer, vcBuffer, positionBuffer, paging, out, shape, { variant, chunk: 8 }),
      ];
      // Sequence 0 (token 0) runs ahead of sequence 1; both cross chunk (8) and block (4) edges.
      const steps = [[0, 0], [1, 0], [7, 3], [8, 4], [9, 5], [16, 7], [17, 8], [40, 20], [63, 33]];
      for (const [step, [p0, p1]] of steps.entries()) {
        const positions = Uint32Array.of(p0!, p1!);
        const q = randomF32(2 * nHeads * headDim, 200 + step, 2);
        const k = randomF32(2 * kvWidth, 300 + step, 2);
        const v = randomF32(2 * kvWidth, 400 + step);
        writeBuffer(gpu.device, qBuffer!, 0, q);
        writeBuffer(gpu.device, kBuffer!, 0, k);
        writeBuffer(gpu.device, vBuffer!, 0, v);
        writeBuffer(gpu.device, positionBuffer, 0, positions);
        runOps(gpu.device, program);
        for (let t = 0; t < 2; t++) {
          const row = cacheRowRef(cache.paging, tokenSlots[t]!, positions[t]!) * kvWidth;
          kCache.set(k.subarray(t * kvWidth, (t + 1) * kvWidth), row);
          vCache.set(v.subarray(t * kvWidth, (t + 1) * kvWidth), row);
        }
        const got = await readF32(gpu.device, out, q.length);
        const want = pagedAttentionRef(q, kCache, vCache, positions, cache.paging, shape);
        expect(maxRelativeError(got, want, 1e-2), `step ${step} at positions ${p0}, ${p1}`).toBeLessThan(1e-4);
      }
    });
  }
});

describe('fused rope + kv cache write', () => {
  interface FusedCase {
    style: RopeStyle;
    nHeads: number;
    nKvHeads: number;
    headDim: number;
    ropeDims: number;
    base: number;
    positionScale?: number;
    factors?: boolean;
    positions: number[];
    slots: number[];
  }
  const cases: FusedCase[] = [
    // A batch of three sequences; the last token sits past the capacity (64): rotated, not written.
    { style: 'normal', nHeads: 8, nKvHeads: 2, headDim: 64, ropeDims: 64, base: 10000, positions: [5, 0, 63, 17, 64], slots: [0, 1, 2, 1, 0] },
    { style: 'neox', nHeads: 4, nKvHeads: 4, headDim: 172, ropeDims: 100, base: 10000, positionScale: 4, positions: [30, 31, 32], slots: [2, 2, 2] },
    { style: 'normal', nHeads: 4, nKvHeads: 1, headDim: 16, ropeDims: 12, base: 500000, factors: true, positions: [3, 60, 7], slots: [0, 1, 2] },
    { style: 'neox', nHeads: 6, nKvHeads: 2, headDim: 30, ropeDims: 30, base: 500000, factors: true, positions: [9, 48], slots: [1, 0] },
  ];
  for (const c of cases) {
    it(`equals ropeOp(q) + ropeOp(k) + kvCacheWriteOp bit for bit: ${c.style} ${c.nHeads}/${c.nKvHeads}×${c.headDim} (ropeDims ${c.ropeDims}${c.factors ? ', rope_freqs' : ''})`, async () => {
      const gpu = await testGpu();
      const nTokens = c.positions.length;
      const kvWidth = c.nKvHeads * c.headDim;
      const [blockSize, blocksPerSequence] = [16, 4];
      const cache = pagedCache(Uint32Array.from(c.slots), 3, blockSize, blocksPerSequence, kvWidth, 80);
      const positions = Uint32Array.from(c.positions);
      const q = randomF32(nTokens * c.nHeads * c.headDim, 81, 2);
      const k = randomF32(nTokens * kvWidth, 82, 2);
      const v = randomF32(nTokens * kvWidth, 83);
      const factors = c.factors ? Float32Array.from({ length: c.ropeDims / 2 }, (_, i) => 1 + i * 0.75) : undefined;
      const rope = { nTokens, headDim: c.headDim, ropeDims: c.ropeDims, base: c.base, positionScale: c.positionScale, style: c.style };
      const results: Uint32Array[][] = [];
      for (const fused of [false, true]) {
        const buffers = [q, k, cache.kCache, cache.vCache].map((data) => upload(gpu, 'x', data));
        const [qb, kb, kcb, vcb] = buffers as [GPUBuffer, GPUBuffer, GPUBuffer, GPUBuffer];
        const [vb, pb] = [upload(gpu, 'v', v), upload(gpu, 'pos', positions)];
        const paging = gpuPaging(gpu, cache.paging);
        const freqFactors = factors && upload(gpu, 'ff', factors);
        const shape = { ...rope, nHeads: c.nHeads, nKvHeads: c.nKvHeads, freqFactors };
        runOps(
          gpu.device,
          fused
            ? [ropeAndCacheWriteOp(gpu, qb, kb, vb, pb, paging, kcb, vcb, shape)]
            : [
                ropeOp(gpu, qb, pb, { ...shape, nHeads: c.nHeads }),
                ropeOp(gpu, kb, pb, { ...shape, nHeads: c.nKvHeads }),
                kvCacheWriteOp(gpu, kb, vb, pb, paging, kcb, vcb, shape),
              ],
        );
        const read = await Promise.all(buffers.map(async (b, i) => new Uint32Array((await readF32(gpu.device, b, [q, k, cache.kCache, cache.vCache][i]!.length)).buffer)));
        results.push(read);
      }
      const [separate, fused] = results as [Uint32Array[], Uint32Array[]];
      ['q', 'k', 'kCache', 'vCache'].forEach((name, i) => expect(fused[i], name).toEqual(separate[i]));
      // And both did the work: q and k rotated (against the reference), the rows written.
      const refShape = { ...rope, freqFactors: factors };
      expect(maxRelativeError(new Float32Array(fused[0]!.buffer), ropeRef(q, positions, { ...refShape, nHeads: c.nHeads }), 1e-2)).toBeLessThan(1e-4);
      const rotatedK = ropeRef(k, positions, { ...refShape, nHeads: c.nKvHeads });
      expect(maxRelativeError(new Float32Array(fused[1]!.buffer), rotatedK, 1e-2)).toBeLessThan(1e-4);
      const kCacheOut = new Float32Array(fused[2]!.buffer);
      const vCacheOut = new Float32Array(fused[3]!.buffer);
      c.positions.forEach((position, t) => {
        if (position >= blockSize * blocksPerSequence) return;
        const row = cacheRowRef(cache.paging, c.slots[t]!, position) * kvWidth;
        expect(maxRelativeError(kCacheOut.subarray(row, row + kvWidth), rotatedK.subarray(t * kvWidth, (t + 1) * kvWidth), 1e-2)).toBeLessThan(1e-4);
        expect(vCacheOut.subarray(row, row + kvWidth)).toEqual(v.subarray(t * kvWidth, (t + 1) * kvWidth));
      });
    });
  }
});
