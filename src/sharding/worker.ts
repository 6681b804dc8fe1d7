// A shard worker: owns one GPUDevice and one shard of the model. The same code runs as a Deno
// Web Worker, a Node worker_thread and a browser dedicated Worker; comlink carries control
// (load, forward, stats, shutdown), the SharedArrayBuffer carries the data.

import { requestGpu, type GpuContext, type GpuOptions } from '../gpu/device.ts';
import type { KvGeometry } from '../engine/kv-cache.ts';
import type { KernelChoice } from '../engine/llama.ts';
import { LlamaRunner, type StepBatch } from '../engine/runner.ts';
import type { ShardView } from '../engine/shard-view.ts';
import { readBuffer, writeBuffer } from '../gpu/kernel.ts';
import { llamaConfig } from '../model/config.ts';
import { readGGUF } from '../model/gguf.ts';
import { openSource, type ByteSource } from '../model/source.ts';
import { SharedMemoryCommunicator, type ShardPosition } from './communicator.ts';
import { ShardError } from './errors.ts';
import { AbortReason, ShardCounter, SharedViews, type SharedMemory } from './shared-memory.ts';
import { exposeToParent, closeWorker } from './spawn.ts';

/** What a worker needs to load its shard. Everything here is structured-cloneable. */
export interface ShardLoadSpec {
  /** A path, URL, Blob/File or bytes: each worker reads its own byte ranges. */
  source: string | Blob | Uint8Array;
  position: ShardPosition;
  view: ShardView;
  memory: SharedMemory;
  geometry: KvGeometry;
  maxBatchTokens: number;
  gpu: GpuOptions;
  kernels?: KernelChoice;
  /** Longest a shard waits for the others at one collective. */
  deadlineMs: number;
}

export interface ShardLoadReport {
  rank: number;
  adapter: string;
  gpuBytes: number;
  kvCacheBytes: number;
  /** Bytes of the model file this shard read (its own share, plus the header). */
  fileBytesRead: number;
  loadMs: number;
  /** Of that: reading the file, and repacking + uploading. */
  loadReadMs: number;
  loadUploadMs: number;
}

export interface ShardStepReport {
  /** The best token in the whole vocabulary's numbering (only from shards that sample). */
  argmaxId: number;
  argmaxLogit: number;
}

export type ShardProgress = (bytesDone: number, bytesTotal: number) => void;

/** A collective benchmark (src/sharding/measure.ts). Everything here is structured-cloneable. */
export interface CollectiveBenchRequest {
  /**
   * `allReduceSum`: this worker is `position` in a tp-wide all-reduce (memory shaped tp × pp=1).
   * `handOff`: this worker alone passes a hidden state from stage 0 to stage 1 and takes it in
   * again (memory shaped tp=1 × pp=2): both halves of a pipeline hand-off on one device.
   */
  kind: 'allReduceSum' | 'handOff';
  memory: SharedMemory;
  position: ShardPosition;
  /** f32 values per collective. */
  count: number;
  warmup: number;
  iterations: number;
  /** Opens a device with these options if this worker has none yet. */
  gpu: GpuOptions;
  deadlineMs: number;
}

export interface CollectiveBenchReport {
  adapter: string;
  /** Wall time of each timed collective, in ms. */
  iterationMs: number[];
  /** Of all timed collectives together, time spent waiting for the other shards. */
  waitMs: number;
  /** A last, untimed collective of known values came out right (the sum, or the data handed off). */
  verified: boolean;
}

class ShardWorker {
  private gpu?: GpuContext;
  private source?: ByteSource;
  private runner?: LlamaRunner;
  private communicator?: SharedMemoryCommunicator;
  private spec?: ShardLoadSpec;
  private views?: SharedViews;
  private lost?: string;
  /** Rejects when the device is lost: a step racing it fails at once instead of hanging on the GPU. */
  private deviceLost: Promise<never> = new Promise(() => {});
  private stepDelayMs = 0;

  async load(spec: ShardLoadSpec, onProgress?: ShardProgress): Promise<ShardLoadReport> {
    const start = performance.now();
    this.spec = spec;
    this.views = new SharedViews(spec.memory);
    this.gpu = await requestGpu(spec.gpu);
    this.deviceLost = this.gpu.device.lost.then((info) => {
      this.lost = `device lost (${info.reason}): ${info.message}`;
      this.views?.abort(AbortReason.failed); // wake the other shards now
      throw new ShardError(spec.position.rank, `shard ${spec.position.rank}: ${this.lost}`);
    });
    this.deviceLost.catch(() => {}); // observed by forward(); never an unhandled rejection
    this.source = await openSource(spec.source);
    const file = await readGGUF(this.source);
    const config = llamaConfig(file);
    this.communicator = new SharedMemoryCommunicator(spec.memory, spec.position, spec.deadlineMs);
    this.runner = await LlamaRunner.load(this.gpu, file, config, spec.view, {
      geometry: spec.geometry,
      maxBatchTokens: spec.maxBatchTokens,
      communicator: this.communicator,
      kernels: spec.kernels,
      onProgress,
    });
    this.views.shardCounters(spec.position.rank)[ShardCounter.gpuBytes] = this.runner.weights.gpuBytes + this.runner.cache.bytes;
    return {
      rank: spec.position.rank,
      adapter: this.gpu.adapterDescription,
      gpuBytes: this.runner.weights.gpuBytes,
      kvCacheBytes: this.runner.cache.bytes,
      fileBytesRead: this.source.bytesRead,
      loadMs: performance.now() - start,
      loadReadMs: this.runner.weights.loadMs.read,
      loadUploadMs: this.runner.weights.loadMs.upload,
    };
  }

  /** Runs a batch; a sampling shard returns its best token per sampled row (and writes its logits slice to shared memory). */
  async forward(batch: StepBatch): Promise<ShardStepReport[]> {
    const runner = this.loaded();
    const spec = this.spec!;
    const start = performance.now();
    try {
      if (this.stepDelayMs > 0) await new Promise((resolve) => setTimeout(resolve, this.stepDelayMs));
      const results = await Promise.race([runner.forward(batch), this.deviceLost]);
      this.publishCounters(performance.now() - start);
      if (!spec.view.samples) return [];
      const { vocab } = spec.view;
      return results.map((result, row) => {
        if (batch.wantLogits) this.views!.logits(row).set(result.logits!, vocab.start);
        return { argmaxId: vocab.start + result.argmaxId, argmaxLogit: result.argmaxLogit ?? Infinity };
      });
    } catch (error) {
      // Wake the other shards now rather than letting them wait out their deadlines.
      this.views!.abort(AbortReason.failed);
      if (error instanceof ShardError) throw error;
      throw new ShardError(spec.position.rank, `shard ${spec.position.rank} failed: ${this.lost ?? (error as Error).message}`, { cause: error });
    }
  }

  /** Counters in shared memory, so the coordinator reads them without a message round trip. */
  private publishCounters(stepMs: number): void {
    const c = this.views!.shardCounters(this.spec!.position.rank);
    const timings = this.communicator!.timings;
    c[ShardCounter.steps]!++;
    c[ShardCounter.stepMs]! += stepMs;
    c[ShardCounter.lastStepMs] = stepMs;
    c[ShardCounter.submits] = this.runner!.counters.submits;
    c[ShardCounter.collectives] = timings.count;
    c[ShardCounter.collectiveMs] = timings.totalMs;
    c[ShardCounter.collectiveWaitMs] = timings.waitMs;
  }

  /**
   * Times `iterations` collectives through the production communicator (GPU read-back → shared
   * memory → barrier → sum → write-back) on a GPU buffer of this worker's device. A shard with no
   * tensor-parallel peers takes no part in all-reduces (nothing to add), so one worker times a
   * pipeline hand-off instead: sendHidden then receiveHidden, the same read-back and write-back.
   */
  async benchCollective(request: CollectiveBenchRequest): Promise<CollectiveBenchReport> {
    this.gpu ??= await requestGpu(request.gpu);
    const device = this.gpu.device;
    const { count, position } = request;
    const bytes = Math.max(4, count * 4);
    const usage = 0x0080 | 0x0004 | 0x0008; // STORAGE | COPY_SRC | COPY_DST
    const buffer = device.createBuffer({ label: 'bench collective', size: bytes, usage });
    const received = device.createBuffer({ label: 'bench hand-off target', size: bytes, usage });
    const sender = new SharedMemoryCommunicator(request.memory, position, request.deadlineMs);
    // A hand-off's receiving half: the next stage, played by this same worker.
    const receiver = request.kind === 'handOff'
      ? new SharedMemoryCommunicator(request.memory, { ...position, rank: position.rank + 1, stage: position.stage + 1 }, request.deadlineMs)
      : undefined;
    const once = async (): Promise<void> => {
      if (!receiver) {
        await sender.collective(device, { kind: 'allReduceSum', buffer, count, label: 'benchmark' });
      } else {
        await sender.collective(device, { kind: 'sendHidden', buffer, count });
        await receiver.collective(device, { kind: 'receiveHidden', buffer: received, count });
      }
    };
    const waited = () => sender.timings.waitMs + (receiver?.timings.waitMs ?? 0);
    try {
      // Timed rounds add zeros (the buffers start zeroed), so values never overflow; only the
      // last round below carries values that are checked.
      for (let i = 0; i < request.warmup; i++) await once();
      const waitBefore = waited();
      const iterationMs: number[] = [];
      for (let i = 0; i < request.iterations; i++) {
        const start = performance.now();
        await once();
        iterationMs.push(performance.now() - start);
      }
      const waitMs = waited() - waitBefore;
      // Verify: all-reduce of (tpRank + 1) everywhere sums to tp(tp+1)/2; a hand-off arrives unchanged.
      const values = Float32Array.from({ length: count }, (_, i) => (request.kind === 'allReduceSum' ? position.tpRank + 1 : i % 251));
      writeBuffer(device, buffer, 0, values);
      await once();
      const result = new Float32Array(await readBuffer(device, request.kind === 'allReduceSum' ? buffer : received, count * 4));
      const expected = (i: number) => (request.kind === 'allReduceSum' ? (position.tp * (position.tp + 1)) / 2 : i % 251);
      const verified = result.every((value, i) => value === expected(i));
      return { adapter: this.gpu.adapterDescription, iterationMs, waitMs, verified };
    } catch (error) {
      // Wake the other participants now rather than letting them wait out their deadlines.
      new SharedViews(request.memory).abort(AbortReason.failed);
      throw error;
    } finally {
      sender.dispose();
      receiver?.dispose();
      buffer.destroy();
      received.destroy();
    }
  }

  /** Test hook: make every following step of this shard stall this long first (a wedged GPU). */
  setStepDelay(ms: number): void {
    this.stepDelayMs = ms;
  }

  /** Test hook: lose this shard's device, as a crashed or reset GPU would. */
  destroyDevice(): void {
    this.gpu?.device.destroy();
  }

  /** Drain, destroy the device, then let the worker end (never terminate() it: DESIGN.md hazards). */
  async shutdown(): Promise<void> {
    await this.runner?.dispose();
    this.communicator?.dispose();
    this.gpu?.device.destroy();
    await this.source?.close();
    this.runner = undefined;
    this.gpu = undefined;
    closeWorker();
  }

  private loaded(): LlamaRunner {
    if (this.lost) throw new ShardError(this.spec?.position.rank ?? -1, `shard ${this.spec?.position.rank}: ${this.lost}`);
    if (!this.runner) throw new ShardError(-1, 'shard worker used before load()');
    return this.runner;
  }
}

export type ShardWorkerApi = Pick<ShardWorker, 'load' | 'forward' | 'benchCollective' | 'setStepDelay' | 'destroyDevice' | 'shutdown'>;

// No top-level await: bundlers' classic worker format (vite's default) cannot have one.
const worker = new ShardWorker();
exposeToParent(worker).catch((error: unknown) => {
  console.error(error);
  closeWorker();
});
