// A shard worker: owns one GPUDevice and one shard of the model. The same code runs as a Deno
// Web Worker, a Node worker_thread and a browser dedicated Worker; comlink carries control
// (load, forward, stats, shutdown), the SharedArrayBuffer carries the data.

import { requestGpu, type GpuContext, type GpuOptions } from '../gpu/device.ts';
import type { KvGeometry } from '../engine/kv-cache.ts';
import { NextStepHang, type FaultKind } from '../engine/faults.ts';
import type { KernelChoice } from '../engine/llama.ts';
import { LlamaRunner, type StepBatch } from '../engine/runner.ts';
import type { ShardView } from '../engine/shard-view.ts';
import { openModel, type ShardableSource } from '../model/open-model.ts';
import type { ByteSource } from '../model/source.ts';
import { SharedMemoryCommunicator, type ShardPosition } from './communicator.ts';
import { ShardError } from './errors.ts';
import { AbortReason, ShardCounter, SharedViews, type SharedMemory } from './shared-memory.ts';
import { closeWorker, exposeToParent } from './worker-endpoint.ts';

/** What a worker needs to load its shard. Everything here is structured-cloneable. */
export interface ShardLoadSpec {
  /** A path or URL (GGUF file or Hugging Face folder), a Blob/File, bytes, or a folder's Files: each worker reads its own byte ranges. */
  source: ShardableSource;
  /** Sent with every request of a URL source (e.g. an Authorization header for a gated model). */
  headers?: Record<string, string>;
  position: ShardPosition;
  view: ShardView;
  memory: SharedMemory;
  geometry: KvGeometry;
  maxBatchTokens: number;
  gpu: GpuOptions;
  kernels?: KernelChoice;
  /** Longest a shard waits for the others at one collective. */
  deadlineMs: number;
  /** Test-only: accept injectFault (the model was loaded with a FaultInjector). */
  faults?: boolean;
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
  /** An injected `hang` (tests). */
  private readonly hang = new NextStepHang();
  /** Set by an injected `worker-crash`. */
  private crashAtNextStep = false;
  /** The running step, settled either way: shutdown waits for its GPU work (see shutdown). */
  private stepInFlight?: Promise<void>;

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
    const { file, config } = await openModel(spec.source, { tokenizer: false, headers: spec.headers });
    this.source = file.source;
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
  forward(batch: StepBatch): Promise<ShardStepReport[]> {
    const step = this.step(batch);
    this.stepInFlight = step.then(() => undefined, () => undefined);
    return step;
  }

  private async step(batch: StepBatch): Promise<ShardStepReport[]> {
    const runner = this.loaded();
    const spec = this.spec!;
    const start = performance.now();
    try {
      if (this.crashAtNextStep) await this.crash();
      await this.hang.wait();
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

  /** Test-only (FaultInjector, enabled by the load spec): fail the way a real shard would. */
  injectFault(kind: FaultKind, ms?: number): void {
    const spec = this.spec;
    if (!spec?.faults) throw new Error('this shard was loaded without fault injection');
    switch (kind) {
      case 'device-lost':
        this.gpu?.device.destroy();
        return;
      case 'hang':
        this.hang.arm(ms);
        return;
      case 'worker-crash':
        // At the start of the next step, when no GPU work is pending: a thread that ends with a
        // Dawn promise pending (or a live device) takes the whole process down.
        this.crashAtNextStep = true;
        return;
    }
  }

  /** Ends this worker with an uncaught error, as a bug or a native fault would; never returns. */
  private async crash(): Promise<never> {
    this.gpu?.device.destroy();
    await this.source?.close();
    setTimeout(() => {
      throw new Error(`shard ${this.spec?.position.rank}: injected worker crash`);
    }, 0);
    return new Promise<never>(() => {});
  }

  /** Drain, destroy the device, then let the worker end (never terminate() it: ARCHITECTURE.md, Runtime hazards). */
  async shutdown(): Promise<void> {
    // A group that gave up on a slow step asks a shard to stop while that step may still wait on
    // the GPU; a thread that ends with a Dawn promise pending aborts the process. The others were
    // woken (shared memory aborted), so the step soon fails; wait for it, within the deadline.
    if (this.stepInFlight) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      // A pending timer would keep this thread alive after it closed: clear it.
      await Promise.race([this.stepInFlight, new Promise((resolve) => (timer = setTimeout(resolve, this.spec?.deadlineMs ?? 0)))]);
      clearTimeout(timer);
    }
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

export type ShardWorkerApi = Pick<ShardWorker, 'load' | 'forward' | 'injectFault' | 'shutdown'>;

// No top-level await: bundlers' classic worker format (vite's default) cannot have one.
const worker = new ShardWorker();
exposeToParent(worker).catch((error: unknown) => {
  console.error(error);
  closeWorker();
});
