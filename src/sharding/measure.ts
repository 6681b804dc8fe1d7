// Measuring the devices a split would run on, for `--shard auto` (auto.ts) and bench/allreduce.
//
// Two numbers decide a split (choose.ts): what one collective costs, and what one decode step's
// kernels cost. Both are measured through the production code, not a model of it:
//
// * Collectives: workers started by spawnCollectiveBenchWorker, each with its own device, run
//   SharedMemoryCommunicator.collective on a GPU buffer (GPU read-back → shared memory → barrier →
//   sum → write-back), as the forward pass does after every attention and FFN block. One worker
//   alone has nothing to add (a shard without tensor-parallel peers takes no part in all-reduces),
//   so it times a pipeline hand-off instead: sendHidden then receiveHidden, the same read-back and
//   write-back.
// * Kernels: a shard worker loads the model (or, for a large model, its embedding, head and first
//   layers) on one device and runs real decode steps through LlamaRunner. The step of the whole
//   model is the probe's step scaled by the weight bytes each reads: decode reads every weight once.
//
// Workers are always shut down by message (never terminate(): ARCHITECTURE.md, Runtime hazards), also on errors.

import type { GpuOptions } from '../gpu/device.ts';
import { kvGeometry } from '../engine/kv-cache.ts';
import { wholeModelView, type ShardView } from '../engine/shard-view.ts';
import { shardReadBytes } from '../engine/weights.ts';
import type { LlamaConfig } from '../model/config.ts';
import type { GGUFFile } from '../model/gguf.ts';
import { createSharedMemory, ShardCounter, SharedViews } from './shared-memory.ts';
import type { CollectiveBenchReport } from './collective-bench-worker.ts';
import { shutdownWorker, spawnCollectiveBenchWorker, spawnShardWorker, type CollectiveBenchWorkerHandle, type WorkerApi, type WorkerHandle } from './spawn.ts';
import type { ShardableSource } from '../model/open-model.ts';

/** Latency percentiles of a set of samples, in ms. */
export interface LatencyMs {
  p50: number;
  p90: number;
  mean: number;
  min: number;
  max: number;
}

/** Percentiles by the nearest-rank method (p50 of 4 samples is the 2nd smallest). */
export function latencyStats(samples: readonly number[]): LatencyMs {
  if (samples.length === 0) throw new RangeError('latencyStats needs at least one sample');
  const sorted = [...samples].sort((a, b) => a - b);
  const rank = (p: number) => sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)]!;
  return {
    p50: rank(50),
    p90: rank(90),
    mean: sorted.reduce((a, b) => a + b, 0) / sorted.length,
    min: sorted[0]!,
    max: sorted.at(-1)!,
  };
}

const DEFAULT_DEADLINE_MS = 30_000;

// ---------------------------------------------------------------------------------------------
// Workers

/** Runs `body` with `count` fresh workers and shuts every one down afterwards, also on errors. */
async function withWorkers<H extends WorkerHandle<WorkerApi>, T>(
  spawn: () => Promise<H>,
  count: number,
  deadlineMs: number,
  body: (workers: H[]) => Promise<T>,
): Promise<{ result: T; stoppedCleanly: boolean }> {
  const spawned = await Promise.allSettled(Array.from({ length: count }, spawn));
  const workers = spawned.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
  try {
    const failed = spawned.find((s): s is PromiseRejectedResult => s.status === 'rejected');
    if (failed) throw failed.reason;
    const result = await body(workers);
    return { result, stoppedCleanly: (await stopWorkers(workers, deadlineMs)).every(Boolean) };
  } catch (error) {
    await stopWorkers(workers, deadlineMs);
    throw error;
  }
}

/** Shuts every worker down by message (see shutdownWorker); true for each that ended cleanly. */
function stopWorkers(workers: WorkerHandle<WorkerApi>[], deadlineMs: number): Promise<boolean[]> {
  return Promise.all(workers.map((worker) => shutdownWorker(worker, deadlineMs)));
}

// ---------------------------------------------------------------------------------------------
// Collectives

export interface InterconnectOptions {
  /** One worker (one device) per entry; equal entries open devices on the same adapter. */
  devices: GpuOptions[];
  /** Payload of one collective in bytes (rounded up to whole f32 values); several sizes share the workers. */
  bytes: number | readonly number[];
  /** Timed collectives per measurement, after the warm-up. */
  iterations: number;
  /** Untimed collectives first (opening devices, first barrier). Default 3. */
  warmup?: number;
  /** Group sizes to measure, each at most devices.length; default [devices.length]. 1 = a hand-off. */
  groupSizes?: readonly number[];
  /** Longest one collective may wait for the others. Default 30 s. */
  deadlineMs?: number;
}

export interface CollectiveMeasurement {
  /** Workers taking part: 2 or more run an all-reduce among themselves, 1 a pipeline hand-off. */
  workers: number;
  kind: 'allReduceSum' | 'handOff';
  bytes: number;
  /** One collective as the group sees it: per iteration, the slowest worker's time. */
  roundTripMs: LatencyMs;
  /** Mean time per collective a worker spent waiting at the barrier for the others. */
  waitMs: number;
  /** A last collective of known values gave the right sum (or handed the data over unchanged) on every worker. */
  verified: boolean;
}

export interface InterconnectMeasurement {
  /** Each worker's adapter, by worker index. */
  adapters: string[];
  /** The first payload size at the largest group: the headline number. */
  roundTripMs: LatencyMs;
  measurements: CollectiveMeasurement[];
  /** Spawning the workers (devices open during the warm-up of the first measurement). */
  spawnMs: number;
  /** Every worker answered shutdown and ended within the deadline (none had to be abandoned). */
  workersStoppedCleanly: boolean;
}

function checkInterconnectOptions(options: InterconnectOptions): { sizes: number[]; groups: number[]; warmup: number } {
  const sizes = typeof options.bytes === 'number' ? [options.bytes] : [...options.bytes];
  const groups = [...(options.groupSizes ?? [options.devices.length])];
  const warmup = options.warmup ?? 3;
  const positiveInteger = (x: number) => Number.isInteger(x) && x >= 1;
  if (options.devices.length < 1) throw new RangeError('measureInterconnect needs at least one device');
  if (sizes.length === 0 || !sizes.every(positiveInteger)) throw new RangeError(`bytes must be positive integers; got ${sizes.join(', ')}`);
  if (!positiveInteger(options.iterations)) throw new RangeError(`iterations must be a positive integer; got ${options.iterations}`);
  if (!(Number.isInteger(warmup) && warmup >= 1)) throw new RangeError(`warmup must be at least 1 (it absorbs opening the devices); got ${warmup}`);
  for (const g of groups) {
    if (!positiveInteger(g) || g > options.devices.length) {
      throw new RangeError(`group size ${g} must be between 1 and the ${options.devices.length} devices given`);
    }
  }
  return { sizes, groups, warmup };
}

/**
 * Times collectives between shard workers through the production communicator: for every payload
 * size and group size, `iterations` all-reduces among the first `group` workers (a hand-off when
 * the group is one worker). The workers and their devices are started once for all measurements.
 */
export async function measureInterconnect(options: InterconnectOptions): Promise<InterconnectMeasurement> {
  const { sizes, groups, warmup } = checkInterconnectOptions(options);
  const deadlineMs = options.deadlineMs ?? DEFAULT_DEADLINE_MS;
  const workerCount = Math.max(...groups);
  const spawnStart = performance.now();
  let spawnMs = 0;
  const adapters: string[] = [];
  const { result: measurements, stoppedCleanly } = await withWorkers(spawnCollectiveBenchWorker, workerCount, deadlineMs, async (workers) => {
    spawnMs = performance.now() - spawnStart;
    const out: CollectiveMeasurement[] = [];
    for (const bytes of sizes) {
      for (const group of groups) {
        const reports = await benchGroup(workers.slice(0, group), options, bytes, warmup, deadlineMs);
        reports.forEach((r, i) => (adapters[i] ??= r.adapter));
        out.push(summarizeGroup(reports, group, bytes, options.iterations));
      }
    }
    return out;
  });
  const headline = measurements.find((m) => m.bytes === sizes[0] && m.workers === Math.max(...groups))!;
  return { adapters, roundTripMs: headline.roundTripMs, measurements, spawnMs, workersStoppedCleanly: stoppedCleanly };
}

async function benchGroup(workers: CollectiveBenchWorkerHandle[], options: InterconnectOptions, bytes: number, warmup: number, deadlineMs: number): Promise<CollectiveBenchReport[]> {
  const tp = workers.length;
  const handOff = tp === 1;
  const count = Math.ceil(bytes / 4);
  // A hand-off needs two stages (tp=1 × pp=2), played by one worker; an all-reduce one stage of tp.
  const memory = createSharedMemory({ tp, pp: handOff ? 2 : 1, slotFloats: count, vocabSize: 1, maxSequences: 1 });
  // Settle every worker before reporting a failure: a failing worker wakes the others (it aborts
  // the shared memory), and none may be asked to shut down while its GPU work is still pending.
  const settled = await Promise.allSettled(
    workers.map((worker, tpRank) =>
      worker.api.benchCollective({
        kind: handOff ? 'handOff' : 'allReduceSum',
        memory,
        position: { rank: tpRank, stage: 0, tpRank, tp, pp: handOff ? 2 : 1 },
        count,
        warmup,
        iterations: options.iterations,
        gpu: options.devices[tpRank] ?? {},
        deadlineMs,
      }),
    ),
  );
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed) throw failed.reason;
  return settled.map((s) => (s as PromiseFulfilledResult<CollectiveBenchReport>).value);
}

function summarizeGroup(reports: CollectiveBenchReport[], workers: number, bytes: number, iterations: number): CollectiveMeasurement {
  // Barriers keep the workers in step, so iteration i ends together everywhere; its cost for the
  // group is the slowest worker's time.
  const perIteration = Array.from({ length: iterations }, (_, i) => Math.max(...reports.map((r) => r.iterationMs[i]!)));
  return {
    workers,
    kind: workers === 1 ? 'handOff' : 'allReduceSum',
    bytes,
    roundTripMs: latencyStats(perIteration),
    waitMs: reports.reduce((sum, r) => sum + r.waitMs, 0) / reports.length / iterations,
    verified: reports.every((r) => r.verified),
  };
}

// ---------------------------------------------------------------------------------------------
// Kernels

export interface DecodeStepOptions {
  /** What the worker opens, as for loadModel: a path, URL, Blob/File or bytes. */
  source: ShardableSource;
  /** The same model's header (already read by the caller) and its config. */
  file: GGUFFile;
  config: LlamaConfig;
  gpu?: GpuOptions;
  /** Timed decode steps (one token each, at successive positions). Default 12. */
  steps?: number;
  /** Untimed steps first (pipeline compilation). Default 2. */
  warmup?: number;
  /**
   * Most bytes of the file the probe loads. A larger model is timed on its embedding, output head
   * and as many first layers as fit this, then scaled up by bytes. Default 512 MiB.
   */
  maxProbeBytes?: number;
  deadlineMs?: number;
}

export interface DecodeStepMeasurement {
  adapter: string;
  /** Layers the probe ran (all of them when the model is within maxProbeBytes). */
  layersTimed: number;
  /** The probe's measured decode step (the worker's own time per step). */
  probeStepMs: LatencyMs;
  /** The whole model's decode step on this device: probe p50 × wholeBytes / probeBytes. */
  stepMs: number;
  probeBytes: number;
  wholeBytes: number;
  workersStoppedCleanly: boolean;
}

/** The probe: the embedding, the output head and as many first layers as fit `maxBytes` (at least one). */
export function decodeProbeView(file: GGUFFile, config: LlamaConfig, maxBytes: number): ShardView {
  const whole = wholeModelView(config);
  let layers = config.nLayers;
  while (layers > 1 && shardReadBytes(file, config, { ...whole, layers: { start: 0, end: layers } }) > maxBytes) layers--;
  return { ...whole, layers: { start: 0, end: layers } };
}

/**
 * Times decode steps of the model on one device, in a shard worker through the production runner:
 * each step pays its kernels, their submit and the read-back of the sampled token, as every
 * sampling shard's step does. Collectives are left to measureInterconnect.
 */
export async function measureDecodeStep(options: DecodeStepOptions): Promise<DecodeStepMeasurement> {
  const { file, config } = options;
  const steps = options.steps ?? 12;
  const warmup = options.warmup ?? 2;
  if (!(Number.isInteger(steps) && steps >= 1 && Number.isInteger(warmup) && warmup >= 0)) {
    throw new RangeError(`steps (${steps}) must be ≥ 1 and warmup (${warmup}) ≥ 0, whole numbers`);
  }
  const deadlineMs = options.deadlineMs ?? DEFAULT_DEADLINE_MS;
  const view = decodeProbeView(file, config, options.maxProbeBytes ?? 512 * 2 ** 20);
  const probeBytes = shardReadBytes(file, config, view);
  const wholeBytes = shardReadBytes(file, config, wholeModelView(config));
  // One shard of a one-shard group: its collectives have nobody to meet, so nothing waits.
  const memory = createSharedMemory({ tp: 1, pp: 1, slotFloats: config.dim, vocabSize: config.vocabSize, maxSequences: 1 });
  const counters = new SharedViews(memory).shardCounters(0);
  // The probe's own KV cache: one sequence, one position per step, its blocks in order.
  const geometry = kvGeometry(warmup + steps, 1);
  const blockTable = Uint32Array.from({ length: geometry.blocksPerSequence }, (_, block) => block);
  const token = Math.min(1, config.vocabSize - 1);
  const { result, stoppedCleanly } = await withWorkers(spawnShardWorker, 1, deadlineMs, async ([worker]) => {
    const report = await worker!.api.load({
      source: options.source,
      position: { rank: 0, stage: 0, tpRank: 0, tp: 1, pp: 1 },
      view,
      memory,
      geometry,
      maxBatchTokens: 1,
      gpu: options.gpu ?? {},
      deadlineMs,
    });
    const stepMs: number[] = [];
    for (let pos = 0; pos < warmup + steps; pos++) {
      await worker!.api.forward({ tokens: [token], positions: [pos], slots: [0], sampleRows: [0], blockTable, wantLogits: false });
      if (pos >= warmup) stepMs.push(counters[ShardCounter.lastStepMs]!); // the worker's time, not the message's
    }
    return { adapter: report.adapter, stepMs };
  });
  const probeStepMs = latencyStats(result.stepMs);
  return {
    adapter: result.adapter,
    layersTimed: view.layers.end,
    probeStepMs,
    stepMs: probeStepMs.p50 * (wholeBytes / probeBytes),
    probeBytes,
    wholeBytes,
    workersStoppedCleanly: stoppedCleanly,
  };
}
