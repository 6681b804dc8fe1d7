// End-to-end benchmarks through the public API (`loadModel` on one device): cold start (load
// throughput from disk to the GPU, repacking included, and time to first token), prefill of a
// long prompt, and decode at batch 1 and with many concurrent generations (continuous batching),
// each with its share of the roofline the measured peaks allow.
//
// What the host does per decode token is measured, not guessed: the device this suite opens is
// instrumented (queue submits, read-back maps, and GPU timestamps at the start and end of every
// compute pass the engine records), so host time per token = wall time per token − GPU time per
// token. The instrumentation adds one small query resolve + copy per command buffer and one extra
// `mapAsync` that the engine never waits for.
//
// Runtime-neutral (node: modules only): used by bench/run.ts in Deno and by the vitest smoke test.

import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { requestGpu, type GpuContext } from '../src/gpu/device.ts';
import { loadModel, type Model } from '../src/api/model.ts';
import type { LlamaConfig } from '../src/model/config.ts';
import type { GGUFFile } from '../src/model/gguf.ts';
import { weightLayout } from '../src/shaders/matmul.ts';
import type { Peaks } from './kernels.ts';
import type { KernelChoice } from '../src/engine/llama.ts';

/** Dawn quantizes timestamps (to ~100 µs) unless told not to; benchmarks want them exact. */
export const BENCH_DAWN_FLAGS = ['disable-dawn-features=timestamp_quantization'];

/** Opens the device every benchmark part uses: the adapter's limits and features, exact timestamps. */
export function requestBenchGpu(): Promise<GpuContext> {
  return requestGpu({ dawnFlags: BENCH_DAWN_FLAGS });
}

// ---------------------------------------------------------------------------------------------
// Instrumenting a device

const MAP_READ = 0x0001;
const COPY_SRC = 0x0004;
const COPY_DST = 0x0008;
const QUERY_RESOLVE = 0x0200;
/** Passes per command buffer that get timestamps (the forward pass records ~2 per layer). */
const MAX_TIMED_PASSES = 256;

interface TimestampSlot {
  querySet: GPUQuerySet;
  resolve: GPUBuffer;
  read: GPUBuffer;
}

export interface DeviceCounters {
  /** queue.submit calls (the engine's steps and its read-back copies). */
  submits: number;
  /** Maps of MAP_READ buffers: one per read-back to the host. */
  readbacks: number;
  /** GPU time inside timed compute passes so far (ms), for command buffers whose times are back. */
  gpuMs: number;
  /** Passes that could not be timed (more than MAX_TIMED_PASSES in one command buffer). */
  untimedPasses: number;
}

/**
 * Wraps a device's `queue.submit`, `createBuffer` and `createCommandEncoder` (instance
 * properties; the engine sees an ordinary device) to count submits and read-backs and to put
 * timestamps around every compute pass. `gpuMsBetween` sums the GPU time of command buffers
 * finished in a host-time window.
 */
export class DeviceInstrument {
  readonly counters: DeviceCounters = { submits: 0, readbacks: 0, gpuMs: 0, untimedPasses: 0 };
  private readonly records: Array<{ finishedAt: number; gpuMs: number }> = [];
  private readonly free: TimestampSlot[] = [];
  private readonly all: TimestampSlot[] = [];
  private readonly finishedUnsubmitted: Array<{ slot: TimestampSlot; passes: number; finishedAt: number }> = [];
  private readonly pending = new Set<Promise<void>>();
  readonly timestamps: boolean;

  constructor(readonly gpu: GpuContext) {
    const device = gpu.device;
    this.timestamps = gpu.features.timestampQuery;
    const createBuffer = device.createBuffer.bind(device);
    const submit = device.queue.submit.bind(device.queue);
    const createCommandEncoder = device.createCommandEncoder.bind(device);
    this.createBuffer = createBuffer;

    // A read-back is a map of a MAP_READ buffer (the engine reuses its staging buffer).
    device.createBuffer = (descriptor: GPUBufferDescriptor) => {
      const buffer = createBuffer(descriptor);
      if (descriptor.usage & MAP_READ) {
        const mapAsync = buffer.mapAsync.bind(buffer);
        buffer.mapAsync = (mode: GPUMapModeFlags, offset?: GPUSize64, size?: GPUSize64) => {
          this.counters.readbacks++;
          return mapAsync(mode, offset, size);
        };
      }
      return buffer;
    };
    device.queue.submit = (buffers: Iterable<GPUCommandBuffer>) => {
      this.counters.submits++;
      submit(buffers);
      // Timestamps of command buffers finished before this submit can be mapped once it is queued.
      for (const done of this.finishedUnsubmitted.splice(0)) this.collect(done.slot, done.passes, done.finishedAt);
    };
    if (this.timestamps) {
      device.createCommandEncoder = (descriptor?: GPUCommandEncoderDescriptor) => this.wrapEncoder(createCommandEncoder(descriptor));
    }
  }

  private readonly createBuffer: (descriptor: GPUBufferDescriptor) => GPUBuffer;

  private slot(): TimestampSlot {
    const reused = this.free.pop();
    if (reused) return reused;
    const device = this.gpu.device;
    const slot = {
      querySet: device.createQuerySet({ type: 'timestamp', count: 2 * MAX_TIMED_PASSES }),
      resolve: this.createBuffer({ size: 16 * MAX_TIMED_PASSES, usage: QUERY_RESOLVE | COPY_SRC }),
      read: this.createBuffer({ size: 16 * MAX_TIMED_PASSES, usage: MAP_READ | COPY_DST }),
    };
    this.all.push(slot);
    return slot;
  }

  private wrapEncoder(encoder: GPUCommandEncoder): GPUCommandEncoder {
    let slot: TimestampSlot | undefined;
    let passes = 0;
    const beginComputePass = (descriptor: GPUComputePassDescriptor = {}) => {
      if (descriptor.timestampWrites || passes >= MAX_TIMED_PASSES) {
        if (!descriptor.timestampWrites) this.counters.untimedPasses++;
        return encoder.beginComputePass(descriptor);
      }
      slot ??= this.slot();
      const index = passes++;
      return encoder.beginComputePass({
        ...descriptor,
        timestampWrites: { querySet: slot.querySet, beginningOfPassWriteIndex: 2 * index, endOfPassWriteIndex: 2 * index + 1 },
      });
    };
    const finish = (descriptor?: GPUCommandBufferDescriptor) => {
      if (slot && passes > 0) {
        encoder.resolveQuerySet(slot.querySet, 0, 2 * passes, slot.resolve, 0);
        encoder.copyBufferToBuffer(slot.resolve, 0, slot.read, 0, 16 * passes);
        this.finishedUnsubmitted.push({ slot, passes, finishedAt: performance.now() });
      }
      return encoder.finish(descriptor);
    };
    return new Proxy(encoder, {
      get(target, property) {
        if (property === 'beginComputePass') return beginComputePass;
        if (property === 'finish') return finish;
        const value = Reflect.get(target, property, target) as unknown;
        return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
      },
    });
  }

  private collect(slot: TimestampSlot, passes: number, finishedAt: number): void {
    const done = slot.read
      .mapAsync(MAP_READ, 0, 16 * passes)
      .then(() => {
        const ticks = new BigUint64Array(slot.read.getMappedRange(0, 16 * passes).slice(0));
        slot.read.unmap();
        let ns = 0;
        for (let p = 0; p < passes; p++) ns += Number(ticks[2 * p + 1]! - ticks[2 * p]!);
        const gpuMs = ns / 1e6;
        this.counters.gpuMs += gpuMs;
        this.records.push({ finishedAt, gpuMs });
        this.free.push(slot);
      })
      .catch(() => {}) // a destroyed device ends pending maps; those steps are simply not counted
      .finally(() => this.pending.delete(done));
    this.pending.add(done);
  }

  /** Waits for every outstanding timestamp read-back. */
  async settle(): Promise<void> {
    while (this.pending.size > 0) await Promise.all([...this.pending]);
  }

  /** GPU time (ms) of the command buffers finished in [from, to] (host performance.now()). */
  gpuMsBetween(from: number, to: number): number {
    return this.records.filter((r) => r.finishedAt >= from && r.finishedAt <= to).reduce((sum, r) => sum + r.gpuMs, 0);
  }

  snapshot(): DeviceCounters {
    return { ...this.counters };
  }

  destroy(): void {
    for (const slot of this.all) {
      slot.querySet.destroy();
      slot.resolve.destroy();
      slot.read.destroy();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// What a token costs, by the model's shape

export interface ModelCost {
  /** Matrix weights read once per forward step, in their GPU layout (all layers + output head). */
  weightBytesPerStep: number;
  /** Bytes of the tensors the loader reads from the file. */
  fileTensorBytes: number;
  /** Parameters in matrix products per token (layers only; the output head counts per sampled token). */
  layerMatmulParams: number;
  outputHeadParams: number;
  /** KV cache bytes one token reads per position attended (all layers, K and V, f32). */
  kvBytesPerPosition: number;
  /** Attention FLOPs per (query, key) pair over all layers and heads. */
  attentionFlopsPerPair: number;
}

/** Bytes and FLOPs of the Llama forward pass for `config`, weights counted in the GPU layout of `file`. */
export function modelCost(file: GGUFFile, config: LlamaConfig): ModelCost {
  const gpuBytes = (name: string) => {
    const t = file.tensor(name);
    const rows = t.shape.slice(1).reduce((a, b) => a * b, 1);
    const layout = weightLayout(t.type, rows, t.shape[0]!);
    return layout.totalWords * 4;
  };
  const params = (name: string) => file.tensor(name).shape.reduce((a, b) => a * b, 1);
  const headName = config.tiedEmbeddings ? 'token_embd.weight' : 'output.weight';
  let weightBytesPerStep = gpuBytes(headName);
  let layerMatmulParams = 0;
  const matrices = ['attn_q', 'attn_k', 'attn_v', 'attn_output', 'ffn_gate', 'ffn_up', 'ffn_down'];
  for (let l = 0; l < config.nLayers; l++) {
    for (const m of matrices) {
      weightBytesPerStep += gpuBytes(`blk.${l}.${m}.weight`);
      layerMatmulParams += params(`blk.${l}.${m}.weight`);
    }
    weightBytesPerStep += 2 * config.dim * 4; // the two norm weights (f32)
  }
  const fileTensorBytes = file.tensors.reduce((sum, t) => sum + t.byteLength, 0);
  const kvDim = config.nKvHeads * config.headDim;
  return {
    weightBytesPerStep,
    fileTensorBytes,
    layerMatmulParams,
    outputHeadParams: params(headName),
    kvBytesPerPosition: config.nLayers * 2 * kvDim * 4,
    attentionFlopsPerPair: config.nLayers * config.nHeads * config.headDim * 4,
  };
}

// ---------------------------------------------------------------------------------------------
// Measurements

export interface DecodeMeasurement {
  /** Concurrent generations. */
  batch: number;
  /** Tokens generated in the measured window (all sequences). */
  tokens: number;
  /** Forward steps in the window. */
  steps: number;
  windowMs: number;
  tokensPerSecond: number;
  /** Wall time per step (= per token at batch 1). */
  wallMsPerStep: number;
  /** GPU time per step (timestamps), when the device has them. */
  gpuMsPerStep?: number;
  /** Wall − GPU per step: what the host (JS, submits, read-back wait) adds. */
  hostMsPerStep?: number;
  /** Medians over the window's steps (robust to a shared machine taking the CPU away now and then). */
  wallMsPerStepP50: number;
  gpuMsPerStepP50?: number;
  hostMsPerStepP50?: number;
  /** Per generated token (a step makes `batch` tokens). */
  submitsPerToken: number;
  readbacksPerToken: number;
  /** The engine's own count (model.stats().devices[0].submits). */
  engineSubmitsPerToken: number;
  /** Bytes one token costs: weights / batch + its KV reads at the mean position. */
  bytesPerToken: number;
  meanPosition: number;
  /** tokens/s × bytes per token ÷ peak bandwidth. */
  fractionOfRoofline: number;
}

export interface PrefillMeasurement {
  tokens: number;
  /** Median time to the first generated token over the repeats (prompt → one token). */
  ms: number;
  samplesMs: number[];
  tokensPerSecond: number;
  gpuMs?: number;
  flops: number;
  tflops: number;
  /** Achieved TFLOP/s ÷ the measured FMA peak. */
  fractionOfFmaPeak: number;
  /** max(FLOPs ÷ FMA peak, bytes ÷ bandwidth peak) ÷ measured time. */
  fractionOfRoofline: number;
}

export interface ColdStart {
  /** Opening the adapter and device (requestGpu). */
  openMs: number;
  /** loadModel (header, tokenizer, read + repack + upload of every weight, KV cache) until the GPU has it all. */
  loadMs: number;
  fileTensorBytes: number;
  /** File tensor bytes ÷ load time (10^9 B/s): repacking, tokenizer and KV cache included. */
  loadGBps: number;
  /** The weights' share of the load (loadLlamaWeights): waiting for file reads that were not hidden behind work. */
  weightsReadMs: number;
  /** The weights' share of the load: repacking and handing the bytes to the GPU queue (the next chunk is read meanwhile). */
  weightsUploadMs: number;
  /** File tensor bytes ÷ (weightsReadMs + weightsUploadMs): the file → GPU rate of the weights alone. */
  weightsGBps: number;
  /** GPU bytes of weights + KV cache (model.stats()). */
  gpuBytes: number;
  /** First generate after load (compiles the pipelines it needs) until its first token. */
  firstTokenMs: number;
  /** Device + load + first token: from nothing to the first token. */
  timeToFirstTokenMs: number;
  promptTokens: number;
  /** Whether the page cache was dropped before loading (else the file may be in RAM: just written). */
  pageCache: 'dropped' | 'warm';
}

export interface E2EResult {
  model: string;
  path: string;
  /** The ids both engines prefill and start decoding from (peers get the same). */
  prefillIds: number[];
  shortPromptIds: number[];
  config: LlamaConfig;
  cost: ModelCost;
  adapter: string;
  coldStart: ColdStart;
  prefill: PrefillMeasurement;
  decode: DecodeMeasurement[];
  timing: 'gpu-timestamps' | 'wall-clock only';
  untimedPasses: number;
}

export interface E2EOptions {
  /** Prompt tokens of the prefill measurement (issue: 512). */
  prefillTokens: number;
  prefillRepeats: number;
  /** Tokens each generation makes in the decode measurements. */
  decodeTokens: number;
  /** Concurrent generations, e.g. [1, 8, 32]. */
  batches: number[];
  /** Try to drop the page cache before loading (root on Linux only); reported either way. */
  dropPageCache?: boolean;
  /** Kernel variants instead of the automatic choice (reported with the model). */
  kernels?: KernelChoice;
  log?: (line: string) => void;
}

/** Token ids of a synthetic prompt (BOS, then ordinary vocabulary entries), the same for every engine. */
export function syntheticPromptIds(vocabSize: number, bosId: number, count: number): number[] {
  const low = 3 + 256; // past the specials and byte tokens of the random-model vocabulary
  const span = Math.max(1, vocabSize - low);
  return [bosId, ...Array.from({ length: count - 1 }, (_, i) => low + ((i * 7919 + 13) % span))];
}

const SHORT_PROMPT = 'Once upon a time';

/** Linux: write dirty pages back (a model file just written is all dirty), then drop the page cache (needs root). */
export function tryDropPageCache(): boolean {
  try {
    execFileSync('sync', { stdio: 'ignore', timeout: 120_000 });
    writeFileSync('/proc/sys/vm/drop_caches', '1');
    return true;
  } catch {
    return false;
  }
}

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

interface TokenEvent {
  at: number;
  sequence: number;
  index: number;
  counters: DeviceCounters;
  engineSubmits: number;
  steps: number;
}

/** Loads `path` on a fresh instrumented device and runs cold start, prefill and decode measurements. */
export async function benchEndToEnd(path: string, label: string, peaks: Peaks, options: E2EOptions): Promise<E2EResult> {
  const log = options.log ?? (() => {});
  const maxBatch = Math.max(...options.batches);
  const openStart = performance.now();
  const gpu = await requestBenchGpu();
  const openMs = performance.now() - openStart;
  const instrument = new DeviceInstrument(gpu);
  let model: Model | undefined;
  try {
    const pageCache = options.dropPageCache && tryDropPageCache() ? 'dropped' : 'warm';
    // Room for the long prompt, and for every concurrent generation's short prompt + tokens.
    const contextLength = Math.max(options.prefillTokens + 16, 64 + options.decodeTokens);
    const perSequence = Math.ceil((16 + options.decodeTokens + 8) / 16) * 16;
    const loadStart = performance.now();
    model = await loadModel(path, {
      device: gpu,
      contextLength,
      maxBatchTokens: Math.max(options.prefillTokens, maxBatch * 16),
      maxSequences: maxBatch,
      kvCacheTokens: Math.max(contextLength, maxBatch * perSequence),
      kernels: options.kernels,
    });
    await gpu.device.queue.onSubmittedWorkDone();
    const loadMs = performance.now() - loadStart;
    const cost = modelCost(model.file, model.config);
    log(`  loaded in ${loadMs.toFixed(0)} ms`);

    // Cold: the first generation compiles its programs. Three tokens also compile the decode step.
    const firstStart = performance.now();
    let firstTokenMs = NaN;
    const shortIds = model.tokenize(SHORT_PROMPT);
    for await (const _ of model.generate(shortIds, { maxTokens: 3, temperature: 0, ignoreEos: true })) {
      if (Number.isNaN(firstTokenMs)) firstTokenMs = performance.now() - firstStart;
    }
    const loadStats = model.stats().devices[0];
    const weightsReadMs = loadStats?.loadReadMs ?? NaN;
    const weightsUploadMs = loadStats?.loadUploadMs ?? NaN;
    const coldStart: ColdStart = {
      openMs,
      loadMs,
      fileTensorBytes: cost.fileTensorBytes,
      loadGBps: cost.fileTensorBytes / loadMs / 1e6,
      weightsReadMs,
      weightsUploadMs,
      weightsGBps: cost.fileTensorBytes / (weightsReadMs + weightsUploadMs) / 1e6,
      gpuBytes: model.stats().devices[0]?.gpuBytes ?? 0,
      firstTokenMs,
      timeToFirstTokenMs: openMs + loadMs + firstTokenMs,
      promptTokens: shortIds.length,
      pageCache,
    };

    const prefill = await measurePrefill(model, instrument, cost, peaks, options);
    log(`  prefill ${prefill.tokens}: ${prefill.ms.toFixed(1)} ms`);
    const decode: DecodeMeasurement[] = [];
    for (const batch of options.batches) {
      const d = await measureDecode(model, instrument, cost, peaks, batch, shortIds, options.decodeTokens);
      log(`  decode batch ${batch}: ${d.tokensPerSecond.toFixed(1)} tok/s`);
      decode.push(d);
    }
    await instrument.settle();
    return {
      model: options.kernels?.matmul ? `${label} (matmul ${options.kernels.matmul})` : label,
      path,
      prefillIds: syntheticPromptIds(model.config.vocabSize, model.tokenizer.bosId, options.prefillTokens),
      shortPromptIds: shortIds,
      config: model.config,
      cost,
      adapter: gpu.adapterDescription,
      coldStart,
      prefill,
      decode,
      timing: instrument.timestamps ? 'gpu-timestamps' : 'wall-clock only',
      untimedPasses: instrument.counters.untimedPasses,
    };
  } finally {
    await model?.dispose();
    await instrument.settle();
    instrument.destroy();
    gpu.device.destroy();
  }
}

async function measurePrefill(model: Model, instrument: DeviceInstrument, cost: ModelCost, peaks: Peaks, options: E2EOptions): Promise<PrefillMeasurement> {
  const ids = syntheticPromptIds(model.config.vocabSize, model.tokenizer.bosId, options.prefillTokens);
  const once = async () => {
    const start = performance.now();
    let end = start;
    for await (const _ of model.generate(ids, { maxTokens: 1, temperature: 0, ignoreEos: true })) end = performance.now();
    await instrument.settle();
    return { ms: end - start, gpuMs: instrument.gpuMsBetween(start, end) };
  };
  await once(); // compiles the program for this prompt length
  const runs = [];
  for (let r = 0; r < options.prefillRepeats; r++) runs.push(await once());
  const ms = median(runs.map((r) => r.ms));
  const T = ids.length;
  const flops = 2 * cost.layerMatmulParams * T + 2 * cost.outputHeadParams + cost.attentionFlopsPerPair * ((T * (T + 1)) / 2);
  const bytes = cost.weightBytesPerStep + cost.kvBytesPerPosition * T;
  const tflops = flops / ms / 1e9;
  const boundMs = Math.max(flops / (peaks.flops.tflops * 1e9), bytes / (peaks.bandwidth.gbps * 1e6));
  return {
    tokens: T,
    ms,
    samplesMs: runs.map((r) => r.ms),
    tokensPerSecond: (T / ms) * 1000,
    gpuMs: instrument.timestamps ? median(runs.map((r) => r.gpuMs)) : undefined,
    flops,
    tflops,
    fractionOfFmaPeak: tflops / peaks.flops.tflops,
    fractionOfRoofline: boundMs / ms,
  };
}

/** `batch` concurrent greedy generations of `tokens` tokens; measured while all of them decode. */
async function measureDecode(
  model: Model,
  instrument: DeviceInstrument,
  cost: ModelCost,
  peaks: Peaks,
  batch: number,
  prompt: number[],
  tokens: number,
): Promise<DecodeMeasurement> {
  const run = async (maxTokens: number) => {
    const events: TokenEvent[] = [];
    const one = async (sequence: number) => {
      let index = 0;
      for await (const _ of model.generate(prompt, { maxTokens, temperature: 0, ignoreEos: true })) {
        const stats = model.stats();
        events.push({
          at: performance.now(),
          sequence,
          index: index++,
          counters: instrument.snapshot(),
          engineSubmits: stats.devices[0]?.submits ?? 0,
          steps: stats.steps,
        });
      }
    };
    await Promise.all(Array.from({ length: batch }, (_, s) => one(s)));
    await instrument.settle();
    return events;
  };
  await run(3); // compiles this batch's prompt and decode programs
  const events = await run(tokens + 1);
  // The window, in scheduler steps (every token event records the step that made it): from the
  // step that gave the last sequence its first token (all prompts done) to the step that gave the
  // first sequence its last token (all still decoding), so every step in it is a full batch.
  const startStep = Math.max(...events.filter((e) => e.index === 0).map((e) => e.steps));
  const endStep = Math.max(startStep + 1, Math.min(...events.filter((e) => e.index === tokens).map((e) => e.steps)));
  // The last event of a step: all of its tokens delivered, the next step not yet begun.
  const lastOf = (step: number) => events.filter((e) => e.steps === step).reduce((a, e) => (e.at > a.at ? e : a));
  const start = lastOf(startStep);
  const end = lastOf(endStep);
  const inWindow = events.filter((e) => e.steps > startStep && e.steps <= endStep);
  const windowMs = end.at - start.at;
  const steps = endStep - startStep;
  const generated = Math.max(1, inWindow.length);
  const gpuMs = instrument.timestamps ? instrument.gpuMsBetween(start.at, end.at) : undefined;
  const stepWall: number[] = [];
  const stepHost: number[] = [];
  const stepGpu: number[] = [];
  const marks = [...new Set(events.map((e) => e.steps))].filter((k) => k >= startStep && k <= endStep).sort((x, y) => x - y);
  for (let i = 1; i < marks.length; i++) {
    const [from, to] = [lastOf(marks[i - 1]!).at, lastOf(marks[i]!).at];
    stepWall.push(to - from);
    if (instrument.timestamps) {
      const g = instrument.gpuMsBetween(from, to);
      stepGpu.push(g);
      stepHost.push(to - from - g);
    }
  }
  const meanPosition = prompt.length + tokens / 2;
  const bytesPerToken = cost.weightBytesPerStep / batch + cost.kvBytesPerPosition * meanPosition;
  const tokensPerSecond = (generated / windowMs) * 1000;
  return {
    batch,
    tokens: generated,
    steps,
    windowMs,
    tokensPerSecond,
    wallMsPerStep: windowMs / steps,
    gpuMsPerStep: gpuMs === undefined ? undefined : gpuMs / steps,
    hostMsPerStep: gpuMs === undefined ? undefined : (windowMs - gpuMs) / steps,
    wallMsPerStepP50: stepWall.length > 0 ? median(stepWall) : windowMs / steps,
    gpuMsPerStepP50: stepGpu.length > 0 ? median(stepGpu) : undefined,
    hostMsPerStepP50: stepHost.length > 0 ? median(stepHost) : undefined,
    submitsPerToken: (end.counters.submits - start.counters.submits) / generated,
    readbacksPerToken: (end.counters.readbacks - start.counters.readbacks) / generated,
    engineSubmitsPerToken: (end.engineSubmits - start.engineSubmits) / generated,
    bytesPerToken,
    meanPosition,
    fractionOfRoofline: (tokensPerSecond * bytesPerToken) / (peaks.bandwidth.gbps * 1e9),
  };
}
