// Kernel benchmarks: the adapter's own peaks first (streaming-read bandwidth, f32 FMA rate), then
// each kernel the forward pass spends its time in — matvec and matmul per weight type, attention
// for decode and prefill, RMSNorm — with achieved GB/s or TFLOP/s as a share of those peaks.
//
// Timing: GPU timestamps (`timestamp-query`, with Dawn's timestamp quantization turned off by
// the device this suite opens) around one compute pass of many dispatches; without timestamps,
// wall time of the same pass between one submit and its completion. Per sample the pass runs
// enough dispatches to last a few milliseconds; the median of the samples counts.
//
// Bytes are counted honestly: the weight in its GPU layout (src/model/repack.ts: quants plus
// the separate f16 scales region), activations read and written once. Every dispatch of a sample
// reads a *different copy* of its inputs, with enough copies to exceed the GPU's last-level cache
// (H100: 50 MB), so no kernel is credited with bandwidth it got from cache.
//
// Runtime-neutral (node: modules only): used by bench/run.ts in Deno and by the vitest smoke test.

import type { GpuContext } from '../src/gpu/device.ts';
import { kernelOp, params, storageBuffer, uniformBuffer, workgroupGrid, writeBuffer, type KernelOp } from '../src/gpu/kernel.ts';
import { GGMLType, ggmlTypeName } from '../src/model/ggml-type.ts';
import { quantize } from '../src/model/quant.ts';
import { attentionOps, attentionVariant, type AttentionVariant, type KvPaging } from '../src/shaders/attention.ts';
import { int8DecodableTypes } from '../src/shaders/quant-wgsl.ts';
import { largeTileFits, matmulOp, type GpuWeight, type MatmulVariant } from '../src/shaders/matmul.ts';
import { uploadWeightBytes } from '../src/engine/weights.ts';
import { rmsnormOp } from '../src/shaders/rmsnorm.ts';

// ---------------------------------------------------------------------------------------------
// Timing

export type TimingSource = 'gpu-timestamps' | 'wall-clock';

export interface Timing {
  /** Median time of one dispatch (ms). */
  ms: number;
  /** Per-dispatch time of each sample (ms). */
  samples: number[];
  source: TimingSource;
  /** Dispatches per sample. */
  dispatches: number;
}

export interface TimerOptions {
  samples?: number;
  /** Aim for this much GPU time per sample (ms); the dispatch count is calibrated to it. */
  targetSampleMs?: number;
  maxDispatches?: number;
}

const QUERY_RESOLVE = 0x0200; // GPUBufferUsage.QUERY_RESOLVE (numbers, so this file needs no globals)
const COPY_SRC = 0x0004;
const COPY_DST = 0x0008;
const MAP_READ = 0x0001;

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/** Times compute passes on one device, with GPU timestamps when the device has them. */
export class KernelTimer {
  /** Set when timestamps were tried and returned nonsense (then wall time is used). */
  timestampProblem: string | undefined;

  constructor(readonly gpu: GpuContext) {}

  get source(): TimingSource {
    return this.gpu.features.timestampQuery && !this.timestampProblem ? 'gpu-timestamps' : 'wall-clock';
  }

  /**
   * Times `ops` (cycled: dispatch i runs ops[i % ops.length]); returns the median time of one
   * dispatch. The first pass warms up (pipelines, caches) and calibrates the dispatch count.
   */
  async time(ops: readonly KernelOp[], options: TimerOptions = {}): Promise<Timing> {
    const samples = options.samples ?? 5;
    const target = options.targetSampleMs ?? 5;
    const maxDispatches = options.maxDispatches ?? 4096;
    await this.wallPass(ops, ops.length); // warm-up: compiles, first touches
    const probe = (await this.measure(ops, ops.length, 1))[0]!;
    const dispatches = Math.max(ops.length, Math.min(maxDispatches, Math.ceil(target / Math.max(probe, 1e-6))));
    const times = await this.measure(ops, dispatches, samples);
    return { ms: median(times), samples: times, source: this.source, dispatches };
  }

  private async measure(ops: readonly KernelOp[], dispatches: number, samples: number): Promise<number[]> {
    if (this.source === 'gpu-timestamps') {
      const times = await this.timestampPasses(ops, dispatches, samples);
      if (times.every((t) => t > 0 && Number.isFinite(t))) return times;
      this.timestampProblem = `timestamps gave ${times.map((t) => t.toFixed(6)).join(', ')} ms; using wall time`;
    }
    const times: number[] = [];
    for (let s = 0; s < samples; s++) times.push((await this.wallPass(ops, dispatches)) / dispatches);
    return times;
  }

  private encodePass(encoder: GPUCommandEncoder, ops: readonly KernelOp[], dispatches: number, timestampWrites?: GPUComputePassTimestampWrites): void {
    const pass = encoder.beginComputePass({ label: 'bench', timestampWrites });
    for (let i = 0; i < dispatches; i++) {
      const op = ops[i % ops.length]!;
      pass.setPipeline(op.pipeline);
      pass.setBindGroup(0, op.bindGroup);
      pass.dispatchWorkgroups(...op.workgroups);
    }
    pass.end();
  }

  /** Wall time (ms) of one pass of `dispatches`, from submit to completion. */
  private async wallPass(ops: readonly KernelOp[], dispatches: number): Promise<number> {
    const device = this.gpu.device;
    const encoder = device.createCommandEncoder({ label: 'bench' });
    this.encodePass(encoder, ops, dispatches);
    const commands = encoder.finish();
    const start = performance.now();
    device.queue.submit([commands]);
    await device.queue.onSubmittedWorkDone();
    return performance.now() - start;
  }

  /** Per-dispatch ms of `samples` passes, each between two timestamps, all in one submit. */
  private async timestampPasses(ops: readonly KernelOp[], dispatches: number, samples: number): Promise<number[]> {
    const device = this.gpu.device;
    const querySet = device.createQuerySet({ type: 'timestamp', count: 2 * samples });
    const resolve = device.createBuffer({ size: 16 * samples, usage: QUERY_RESOLVE | COPY_SRC });
    const read = device.createBuffer({ size: 16 * samples, usage: MAP_READ | COPY_DST });
    try {
      const encoder = device.createCommandEncoder({ label: 'bench' });
      for (let s = 0; s < samples; s++) {
        this.encodePass(encoder, ops, dispatches, { querySet, beginningOfPassWriteIndex: 2 * s, endOfPassWriteIndex: 2 * s + 1 });
      }
      encoder.resolveQuerySet(querySet, 0, 2 * samples, resolve, 0);
      encoder.copyBufferToBuffer(resolve, 0, read, 0, 16 * samples);
      device.queue.submit([encoder.finish()]);
      await read.mapAsync(MAP_READ);
      const ticks = new BigUint64Array(read.getMappedRange().slice(0));
      read.unmap();
      return Array.from({ length: samples }, (_, s) => Number(ticks[2 * s + 1]! - ticks[2 * s]!) / 1e6 / dispatches);
    } finally {
      querySet.destroy();
      resolve.destroy();
      read.destroy();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Filling buffers on the GPU (gigabytes of test data without a host round trip)

const fillWgsl = /* wgsl */ `
struct P { words: u32, seed: u32, as_f32: u32, grid_x: u32 }
@group(0) @binding(0) var<storage, read_write> dst: array<u32>;
@group(0) @binding(1) var<uniform> p: P;
fn hash(x: u32) -> u32 {
  var h = x * 0x9e3779b1u + p.seed;
  h ^= h >> 16u; h *= 0x85ebca6bu; h ^= h >> 13u; h *= 0xc2b2ae35u; h ^= h >> 16u;
  return h;
}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let base = ((wid.x + wid.y * p.grid_x) * 256u + lid) * 4u;
  for (var k = 0u; k < 4u; k++) {
    let i = base + k;
    if (i < p.words) {
      let h = hash(i);
      // f32 mode: uniform in [-1, 1), so attention and norms see ordinary numbers.
      dst[i] = select(h, bitcast<u32>(f32(h >> 8u) / 8388608.0 - 1.0), p.as_f32 != 0u);
    }
  }
}
`;

/** Fills `buffer` with pseudo-random u32 words, or f32 values in [-1, 1). */
export async function fillBuffer(gpu: GpuContext, buffer: GPUBuffer, kind: 'u32' | 'f32', seed = 1): Promise<void> {
  const words = Math.floor(buffer.size / 4);
  const [gridX, gridY] = workgroupGrid(Math.ceil(words / 1024), gpu.limits.maxComputeWorkgroupsPerDimension);
  const uniforms = uniformBuffer(gpu.device, 'fill params', params([words, seed, kind === 'f32' ? 1 : 0, gridX]));
  const op = kernelOp(gpu.device, 'fill', fillWgsl, [buffer, uniforms], [gridX, gridY]);
  const encoder = gpu.device.createCommandEncoder({ label: 'fill' });
  const pass = encoder.beginComputePass();
  pass.setPipeline(op.pipeline);
  pass.setBindGroup(0, op.bindGroup);
  pass.dispatchWorkgroups(...op.workgroups);
  pass.end();
  gpu.device.queue.submit([encoder.finish()]);
  await gpu.device.queue.onSubmittedWorkDone();
  uniforms.destroy();
}

function f32Buffer(gpu: GpuContext, label: string, count: number, owned: GPUBuffer[]): GPUBuffer {
  const buffer = storageBuffer(gpu.device, label, count * 4);
  owned.push(buffer);
  return buffer;
}

/** How many copies of `bytes` exceed `flushBytes` (at least 1, at most `max`). */
export function copiesToFlush(bytes: number, flushBytes: number, max = 16): number {
  return Math.max(1, Math.min(max, Math.ceil(flushBytes / Math.max(1, bytes))));
}

// ---------------------------------------------------------------------------------------------
// Peaks

export interface PeakVariant {
  name: string;
  ms: number;
  value: number;
}

export interface PeakBandwidth {
  /** Best of the variants, GB/s (10^9 bytes per second). */
  gbps: number;
  bytes: number;
  variants: PeakVariant[];
  timing: TimingSource;
}

const streamReadWgsl = /* wgsl */ `
struct P { n: u32, threads: u32, per_thread: u32, grid_x: u32 }
@group(0) @binding(0) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> sink: array<u32>;
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let tid = (wid.x + wid.y * p.grid_x) * 256u + lid;
  var acc = vec4<u32>(0u);
  // Consecutive threads read consecutive 16-byte words; each thread takes per_thread of them.
  for (var k = 0u; k < p.per_thread; k++) {
    let i = tid + k * p.threads;
    if (i < p.n) { acc ^= src[i]; }
  }
  // Never true for the fill pattern in practice, but the compiler cannot know: the loads stay.
  if (acc.x == 0x9e3779b9u && acc.y == 0x7f4a7c15u) { sink[0] = acc.z ^ acc.w; }
}
`;

/**
 * The adapter's streaming-read bandwidth: a plain kernel reading `bytes` once (16 B per load,
 * coalesced), at a few grid shapes; the best counts as the peak every kernel is measured against.
 */
export async function measurePeakBandwidth(gpu: GpuContext, timer: KernelTimer, bytes: number, timerOptions: TimerOptions = {}): Promise<PeakBandwidth> {
  const limit = Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize);
  const size = Math.floor(Math.min(bytes, limit) / 16) * 16;
  const owned: GPUBuffer[] = [];
  try {
    const src = storageBuffer(gpu.device, 'stream source', size);
    const sink = storageBuffer(gpu.device, 'stream sink', 16);
    owned.push(src, sink);
    await fillBuffer(gpu, src, 'u32', 7);
    const n = size / 16;
    const variants: PeakVariant[] = [];
    for (const perThread of [1, 4, 16, 64]) {
      const workgroups = Math.ceil(n / (256 * perThread));
      if (perThread > 1 && workgroups < 64) continue; // too few workgroups to fill a GPU
      const [gridX, gridY] = workgroupGrid(workgroups, gpu.limits.maxComputeWorkgroupsPerDimension);
      const uniforms = uniformBuffer(gpu.device, 'stream params', params([n, gridX * gridY * 256, perThread, gridX]));
      owned.push(uniforms);
      const op = kernelOp(gpu.device, 'stream read', streamReadWgsl, [src, sink, uniforms], [gridX, gridY]);
      const t = await timer.time([op], timerOptions);
      variants.push({ name: `${perThread} × 16 B per thread`, ms: t.ms, value: size / t.ms / 1e6 });
    }
    return { gbps: Math.max(...variants.map((v) => v.value)), bytes: size, variants, timing: timer.source };
  } finally {
    for (const b of owned) b.destroy();
  }
}

export interface PeakFlops {
  /** Best of the variants, TFLOP/s (an FMA counts as 2 FLOPs). */
  tflops: number;
  variants: PeakVariant[];
  timing: TimingSource;
}

/** Register-only FMA chains: `chains` independent vec4 accumulators, 4 × chains FMAs per iteration. */
function fmaWgsl(chains: number): string {
  const ids = Array.from({ length: chains }, (_, i) => i);
  return /* wgsl */ `
struct P { iterations: u32, grid_x: u32 }
@group(0) @binding(0) var<storage, read_write> sink: array<u32>;
@group(0) @binding(1) var<uniform> p: P;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let tid = (wid.x + wid.y * p.grid_x) * 256u + lid;
  let s = f32(tid) * 1e-9;
  ${ids.map((i) => `var a${i} = vec4f(s + ${i}.0);`).join(' ')}
  let b = vec4f(0.9999999);
  let c = vec4f(1e-7);
  for (var i = 0u; i < p.iterations; i++) {
    ${ids.map((i) => `a${i} = fma(a${i}, b, c);`).join(' ')}
  }
  let r = ${ids.map((i) => `a${i}`).join(' + ')};
  if (r.x == 1234.5678) { sink[0] = bitcast<u32>(r.y); }
}
`;
}

/** The adapter's f32 FMA rate from register-only FMA chains. */
export async function measurePeakFlops(gpu: GpuContext, timer: KernelTimer, size: { workgroups: number; iterations: number }, timerOptions: TimerOptions = {}): Promise<PeakFlops> {
  const owned: GPUBuffer[] = [];
  try {
    const sink = storageBuffer(gpu.device, 'fma sink', 16);
    owned.push(sink);
    const variants: PeakVariant[] = [];
    // Enough chains hide FMA latency on a GPU; fewer avoid register spills on a CPU adapter.
    for (const chains of [4, 8]) {
      for (const workgroups of [size.workgroups, size.workgroups * 4]) {
        const [gridX, gridY] = workgroupGrid(workgroups, gpu.limits.maxComputeWorkgroupsPerDimension);
        const uniforms = uniformBuffer(gpu.device, 'fma params', params([size.iterations, gridX]));
        owned.push(uniforms);
        const op = kernelOp(gpu.device, 'fma', fmaWgsl(chains), [sink, uniforms], [gridX, gridY]);
        const t = await timer.time([op], timerOptions);
        const flops = gridX * gridY * 256 * size.iterations * chains * 4 * 2;
        variants.push({ name: `${chains} vec4 chains, ${gridX * gridY} workgroups × ${size.iterations} iterations`, ms: t.ms, value: flops / t.ms / 1e9 });
      }
    }
    return { tflops: Math.max(...variants.map((v) => v.value)), variants, timing: timer.source };
  } finally {
    for (const b of owned) b.destroy();
  }
}

// ---------------------------------------------------------------------------------------------
// Kernels

export type KernelName = 'matvec' | 'matmul' | 'attention decode' | 'attention prefill' | 'rmsnorm';

export interface KernelResult {
  kernel: KernelName;
  /** The kernel variant as the shader builders name it (e.g. matvec-subgroup, tiled). */
  variant: string;
  /** Weight type (matvec/matmul), else f32. */
  type: string;
  /** Human-readable shape, e.g. "14336 × 4096, 1 token". */
  shape: string;
  /** Median time of one dispatch. */
  ms: number;
  /** Bytes one dispatch reads and writes (unique bytes: weights in GPU layout + activations). */
  bytes: number;
  flops: number;
  gbps: number;
  tflops: number;
  /** What limits this kernel: memory (judged against peak bandwidth) or FMA rate. */
  bound: 'bandwidth' | 'compute';
  /** Achieved share of the bound's measured peak (0..1+). */
  fractionOfPeak: number;
  timing: TimingSource;
  dispatches: number;
  /** Input copies cycled through, so repeated dispatches cannot be served from cache. */
  copies: number;
}

export interface Peaks {
  bandwidth: PeakBandwidth;
  flops: PeakFlops;
}

export interface KernelShapes {
  /** matvec/matmul weight rows × cols (e.g. Llama-3-8B's FFN gate: 14336 × 4096). */
  rows: number;
  cols: number;
  /** Tokens of the prefill matmul. */
  prefillTokens: number;
  /** Attention heads (query / KV) and head size. */
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  /** Positions a decode token attends to. */
  decodeContext: number;
  /** RMSNorm rows × dim. */
  normTokens: number;
  normDim: number;
  /** Bytes to cycle through per measurement (≥ a few × the GPU's last-level cache). */
  flushBytes: number;
  /** Weight types to measure. */
  types: GGMLType[];
}

function result(
  base: Omit<KernelResult, 'gbps' | 'tflops' | 'fractionOfPeak' | 'timing' | 'dispatches' | 'ms'>,
  t: Timing,
  peaks: Peaks,
): KernelResult {
  const gbps = base.bytes / t.ms / 1e6;
  const tflops = base.flops / t.ms / 1e9;
  const fractionOfPeak = base.bound === 'bandwidth' ? gbps / peaks.bandwidth.gbps : tflops / peaks.flops.tflops;
  return { ...base, ms: t.ms, gbps, tflops, fractionOfPeak, timing: t.source, dispatches: t.dispatches };
}

/** Random weights of `type` (quantized on the CPU, the way the random-model writer does). */
function randomWeightBytes(type: GGMLType, rows: number, cols: number, seed: number): Uint8Array {
  const values = new Float32Array(rows * cols);
  let state = seed >>> 0;
  for (let i = 0; i < values.length; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    values[i] = (state / 4294967296 - 0.5) * 0.07;
  }
  return quantize(type, values);
}

/** Copies of one uploaded weight (GPU-side copies of the same bytes). */
function weightCopies(gpu: GpuContext, weight: GpuWeight, count: number, owned: GPUBuffer[]): GpuWeight[] {
  const copies = [weight];
  const encoder = gpu.device.createCommandEncoder({ label: 'weight copies' });
  for (let i = 1; i < count; i++) {
    const buffer = storageBuffer(gpu.device, `${weight.label} copy ${i}`, weight.bytes);
    owned.push(buffer);
    encoder.copyBufferToBuffer(weight.buffer, 0, buffer, 0, weight.bytes);
    copies.push({ ...weight, buffer, label: `${weight.label} copy ${i}` });
  }
  gpu.device.queue.submit([encoder.finish()]);
  return copies;
}

export interface MatmulBenchOptions {
  type: GGMLType;
  rows: number;
  cols: number;
  tokens: number;
  variant: Exclude<MatmulVariant, 'auto'>;
  flushBytes: number;
  /** Precomputed GGUF bytes (rows × cols of `type`), so several variants share one quantization. */
  weightBytes?: Uint8Array;
}

/** One matmul variant on one weight type: GB/s for matvec (memory-bound), TFLOP/s for tiled. */
export async function benchMatmul(gpu: GpuContext, timer: KernelTimer, peaks: Peaks, o: MatmulBenchOptions, timerOptions: TimerOptions = {}): Promise<KernelResult> {
  const owned: GPUBuffer[] = [];
  try {
    const bytes = o.weightBytes ?? randomWeightBytes(o.type, o.rows, o.cols, 11);
    const parts = await uploadWeightBytes(gpu, `bench ${ggmlTypeName(o.type)}`, o.type, o.rows, o.cols, bytes);
    owned.push(...parts.map((part) => part.buffer));
    if (parts.length !== 1) throw new Error(`bench: a ${o.rows} × ${o.cols} weight does not fit one storage binding of this device`);
    const weight = parts[0]!;
    const copies = weightCopies(gpu, weight, copiesToFlush(weight.bytes, o.flushBytes), owned);
    const x = f32Buffer(gpu, 'x', o.tokens * o.cols, owned);
    const y = f32Buffer(gpu, 'y', o.tokens * o.rows, owned);
    await fillBuffer(gpu, x, 'f32', 3);
    const ops = copies.map((w) => matmulOp(gpu, w, x, y, o.tokens, { variant: o.variant }));
    const t = await timer.time(ops, timerOptions);
    const isMatvec = o.variant.startsWith('matvec');
    return result(
      {
        kernel: isMatvec ? 'matvec' : 'matmul',
        variant: o.variant,
        type: ggmlTypeName(o.type),
        shape: `${o.rows} × ${o.cols}, ${o.tokens} token${o.tokens === 1 ? '' : 's'}`,
        bytes: weight.bytes + o.tokens * (o.cols + o.rows) * 4,
        flops: 2 * o.rows * o.cols * o.tokens,
        bound: isMatvec ? 'bandwidth' : 'compute',
        copies: copies.length,
      },
      t,
      peaks,
    );
  } finally {
    for (const b of owned) b.destroy();
  }
}

export interface AttentionBenchOptions {
  mode: 'decode' | 'prefill';
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  /** decode: positions attended (one query at the last); prefill: tokens (causal, positions 0..T-1). */
  length: number;
  flushBytes: number;
  /** The kernel (default: what the forward pass picks for this shape). */
  variant?: AttentionVariant;
}

/** Paged attention over one sequence: decode is memory-bound (KV reads), prefill compute-bound. */
export async function benchAttention(gpu: GpuContext, timer: KernelTimer, peaks: Peaks, o: AttentionBenchOptions, timerOptions: TimerOptions = {}): Promise<KernelResult> {
  const owned: GPUBuffer[] = [];
  try {
    const blockSize = 16;
    const blocks = Math.ceil(o.length / blockSize);
    const qWidth = o.nHeads * o.headDim;
    const kvWidth = o.nKvHeads * o.headDim;
    const nTokens = o.mode === 'decode' ? 1 : o.length;
    const positions = o.mode === 'decode' ? [o.length - 1] : Array.from({ length: o.length }, (_, i) => i);
    const u32 = (label: string, values: number[]) => {
      const b = storageBuffer(gpu.device, label, Uint32Array.from(values));
      owned.push(b);
      return b;
    };
    const paging: KvPaging = {
      tokenSlots: u32('token slots', new Array(nTokens).fill(0)),
      blockTable: u32('block table', Array.from({ length: blocks }, (_, i) => i)),
      blockSize,
      blocksPerSequence: blocks,
    };
    const positionsBuffer = u32('positions', positions);
    const q = f32Buffer(gpu, 'q', nTokens * qWidth, owned);
    const out = f32Buffer(gpu, 'attention out', nTokens * qWidth, owned);
    await fillBuffer(gpu, q, 'f32', 5);
    const cacheBytes = blocks * blockSize * kvWidth * 4;
    const shape = { nTokens, nHeads: o.nHeads, nKvHeads: o.nKvHeads, headDim: o.headDim };
    const ops: KernelOp[] = [];
    const copies = copiesToFlush(2 * cacheBytes, o.flushBytes);
    for (let c = 0; c < copies; c++) {
      const keys = f32Buffer(gpu, `keys ${c}`, cacheBytes / 4, owned);
      const values = f32Buffer(gpu, `values ${c}`, cacheBytes / 4, owned);
      await fillBuffer(gpu, keys, 'f32', 100 + c);
      await fillBuffer(gpu, values, 'f32', 200 + c);
      ops.push(...attentionOps(gpu, q, keys, values, positionsBuffer, paging, out, shape, { variant: o.variant }));
    }
    // Split-K attention is two dispatches (partials, then their combination): time them as one.
    const dispatchesPerAttention = ops.length / copies;
    const timing = await timer.time(ops, timerOptions);
    const t = { ...timing, ms: timing.ms * dispatchesPerAttention };
    // Scores and the weighted sum: 2 FLOPs per multiply-add, over every (query, key) pair kept by the causal mask.
    const pairs = o.mode === 'decode' ? o.length : (o.length * (o.length + 1)) / 2;
    const kvBytes = 2 * o.length * kvWidth * 4;
    return result(
      {
        kernel: o.mode === 'decode' ? 'attention decode' : 'attention prefill',
        variant: attentionVariant(gpu, shape, { variant: o.variant }),
        type: 'f32',
        shape:
          o.mode === 'decode'
            ? `${o.nHeads}/${o.nKvHeads} heads × ${o.headDim}, context ${o.length}`
            : `${o.nHeads}/${o.nKvHeads} heads × ${o.headDim}, ${o.length} tokens causal`,
        bytes: kvBytes + 2 * nTokens * qWidth * 4,
        flops: 4 * o.nHeads * o.headDim * pairs,
        bound: o.mode === 'decode' ? 'bandwidth' : 'compute',
        copies,
      },
      t,
      peaks,
    );
  } finally {
    for (const b of owned) b.destroy();
  }
}

/** RMSNorm of `tokens` rows of `dim`: read x and the weight, write the output. */
export async function benchRmsnorm(gpu: GpuContext, timer: KernelTimer, peaks: Peaks, o: { tokens: number; dim: number; flushBytes: number }, timerOptions: TimerOptions = {}): Promise<KernelResult> {
  const owned: GPUBuffer[] = [];
  try {
    const weight = f32Buffer(gpu, 'norm weight', o.dim, owned);
    writeBuffer(gpu.device, weight, 0, new Float32Array(o.dim).fill(1));
    const rowBytes = o.tokens * o.dim * 4;
    const copies = copiesToFlush(2 * rowBytes, o.flushBytes);
    const ops: KernelOp[] = [];
    for (let c = 0; c < copies; c++) {
      const x = f32Buffer(gpu, `x ${c}`, o.tokens * o.dim, owned);
      const out = f32Buffer(gpu, `out ${c}`, o.tokens * o.dim, owned);
      await fillBuffer(gpu, x, 'f32', 300 + c);
      ops.push(rmsnormOp(gpu, x, weight, out, o.tokens, o.dim, 1e-5));
    }
    const t = await timer.time(ops, timerOptions);
    return result(
      {
        kernel: 'rmsnorm',
        variant: 'one workgroup per row',
        type: 'f32',
        shape: `${o.tokens} × ${o.dim}`,
        bytes: 2 * rowBytes + o.dim * 4,
        flops: 4 * o.tokens * o.dim,
        bound: 'bandwidth',
        copies,
      },
      t,
      peaks,
    );
  } finally {
    for (const b of owned) b.destroy();
  }
}

export interface KernelSuiteOptions {
  shapes: KernelShapes;
  /** Bytes the peak-bandwidth kernel streams. */
  peakBytes: number;
  peakFlops: { workgroups: number; iterations: number };
  timer?: TimerOptions;
  log?: (line: string) => void;
}

export interface KernelSuiteResult {
  peaks: Peaks;
  kernels: KernelResult[];
  timing: TimingSource;
  timestampProblem?: string;
}

/** Peaks first, then every kernel at the given shapes. */
export async function runKernelSuite(gpu: GpuContext, options: KernelSuiteOptions): Promise<KernelSuiteResult> {
  const log = options.log ?? (() => {});
  const timer = new KernelTimer(gpu);
  const t = options.timer ?? {};
  const s = options.shapes;
  log(`peak read bandwidth (${(options.peakBytes / 2 ** 20).toFixed(0)} MiB)...`);
  const bandwidth = await measurePeakBandwidth(gpu, timer, options.peakBytes, t);
  log(`  ${bandwidth.gbps.toFixed(1)} GB/s; peak f32 FMA...`);
  const flops = await measurePeakFlops(gpu, timer, options.peakFlops, t);
  log(`  ${flops.tflops.toFixed(3)} TFLOP/s`);
  const peaks: Peaks = { bandwidth, flops };
  const kernels: KernelResult[] = [];
  const add = (r: KernelResult) => {
    kernels.push(r);
    log(`  ${r.kernel} ${r.type} ${r.variant} ${r.shape}: ${(r.ms * 1000).toFixed(1)} µs, ${r.gbps.toFixed(1)} GB/s, ${r.tflops.toFixed(3)} TFLOP/s`);
  };
  const matvecVariants: Array<Exclude<MatmulVariant, 'auto'>> = gpu.features.subgroups ? ['matvec', 'matvec-subgroup'] : ['matvec'];
  // The large tile where the device allows it (the portable one always, for comparison).
  const tiledVariants: Array<Exclude<MatmulVariant, 'auto'>> = largeTileFits(gpu) ? ['tiled', 'tiled-large'] : ['tiled'];
  for (const type of s.types) {
    log(`${ggmlTypeName(type)} ${s.rows} × ${s.cols}...`);
    const weightBytes = randomWeightBytes(type, s.rows, s.cols, 11);
    for (const variant of [...matvecVariants, ...(int8DecodableTypes().includes(type) ? ['matvec-int8' as const] : [])]) {
      add(await benchMatmul(gpu, timer, peaks, { type, rows: s.rows, cols: s.cols, tokens: 1, variant, flushBytes: s.flushBytes, weightBytes }, t));
    }
    for (const variant of [...tiledVariants, ...(int8DecodableTypes().includes(type) ? ['tiled-int8' as const] : [])]) {
      add(await benchMatmul(gpu, timer, peaks, { type, rows: s.rows, cols: s.cols, tokens: s.prefillTokens, variant, flushBytes: s.flushBytes, weightBytes }, t));
    }
  }
  const heads = { nHeads: s.nHeads, nKvHeads: s.nKvHeads, headDim: s.headDim, flushBytes: s.flushBytes };
  // Each mode with the kernel the forward pass picks, and with the one-workgroup-per-head kernel for comparison.
  for (const mode of ['decode', 'prefill'] as const) {
    const length = mode === 'decode' ? s.decodeContext : s.prefillTokens;
    for (const variant of ['auto', 'single'] as const) {
      const picked = attentionVariant(gpu, { nTokens: mode === 'decode' ? 1 : length, nHeads: s.nHeads, nKvHeads: s.nKvHeads, headDim: s.headDim });
      if (variant === 'single' && picked === 'single') continue;
      add(await benchAttention(gpu, timer, peaks, { mode, length, ...heads, variant }, t));
    }
  }
  add(await benchRmsnorm(gpu, timer, peaks, { tokens: s.normTokens, dim: s.normDim, flushBytes: s.flushBytes }, t));
  return { peaks, kernels, timing: timer.source, timestampProblem: timer.timestampProblem };
}

/** Kernel shapes: Llama-3-8B's (full) or tiny ones a CPU adapter gets through in seconds (quick). */
export function kernelShapes(quick: boolean): KernelShapes {
  const types = [GGMLType.Q4_0, GGMLType.Q8_0, GGMLType.F16];
  if (quick) {
    return {
      rows: 1024,
      cols: 512,
      prefillTokens: 64,
      nHeads: 4,
      nKvHeads: 2,
      headDim: 64,
      decodeContext: 512,
      normTokens: 64,
      normDim: 256,
      flushBytes: 8 * 2 ** 20,
      types,
    };
  }
  return {
    rows: 14336,
    cols: 4096,
    prefillTokens: 512,
    nHeads: 32,
    nKvHeads: 8,
    headDim: 128,
    decodeContext: 4096,
    normTokens: 512,
    normDim: 4096,
    flushBytes: 256 * 2 ** 20,
    types,
  };
}
