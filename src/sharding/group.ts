// The shard group: spawns one worker per shard, loads each with its view, and drives steps.
// The coordinator (this thread) never waits on a barrier; it sends each step to every shard,
// and the shards meet each other through shared memory. A failing or hanging shard becomes a
// typed error here within the deadline, and the group is stopped for good.

import * as Comlink from 'comlink';
import type { GpuOptions } from '../gpu/device.ts';
import type { DeviceStats, ForwardEngine } from '../engine/forward-engine.ts';
import { maxSampledRows, type KvGeometry } from '../engine/kv-cache.ts';
import type { Fault } from '../engine/faults.ts';
import type { KernelChoice } from '../engine/llama.ts';
import type { StepBatch, StepResult } from '../engine/runner.ts';
import { GpuUnavailableError } from '../gpu/device.ts';
import { ModelFormatError, ModelSourceError } from '../model/errors.ts';
import { ShardError, ShardGroupStoppedError, ShardPeerTimeoutError, ShardTimeoutError } from './errors.ts';
import type { ShardPlan } from './plan.ts';
import { AbortReason, createSharedMemory, ShardCounter, SharedViews } from './shared-memory.ts';
import { shutdownWorker, spawnShardWorker, type ShardWorkerHandle } from './spawn.ts';
import type { ShardLoadReport, ShardStepReport } from './worker.ts';
import type { ShardableSource } from '../model/open-model.ts';

export interface ShardGroupOptions {
  /** What each worker opens: a path or URL (file or folder), Blob/File(s) or bytes. */
  source: ShardableSource;
  /** Sent with every request of a URL source. */
  headers?: Record<string, string>;
  plan: ShardPlan;
  geometry: KvGeometry;
  maxBatchTokens: number;
  dim: number;
  vocabSize: number;
  /** GPU options per shard (e.g. an adapter name each); one entry is used for all. */
  gpu: GpuOptions[];
  /** Kernel variants instead of the automatic choice. */
  kernels?: KernelChoice;
  /** Longest one step (or one collective inside it) may take. Default 30 s. */
  deadlineMs?: number;
  onProgress?: (bytesDone: number, bytesTotal: number) => void;
  /** Test-only: let injectFault reach the workers (the model was loaded with a FaultInjector). */
  faults?: boolean;
}

const withDeadline = <T>(promise: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> =>
  new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(onTimeout()), ms);
    promise.then(
      (value) => (clearTimeout(timer), resolve(value)),
      (error) => (clearTimeout(timer), reject(error)),
    );
  });

export class ShardGroup implements ForwardEngine {
  private stopped?: Error;
  private closed = false;

  private constructor(
    readonly plan: ShardPlan,
    readonly geometry: KvGeometry,
    readonly maxBatchTokens: number,
    readonly reports: ShardLoadReport[],
    private readonly workers: ShardWorkerHandle[],
    private readonly views: SharedViews,
    private readonly deadlineMs: number,
  ) {}

  static async start(options: ShardGroupOptions): Promise<ShardGroup> {
    const { plan } = options;
    const deadlineMs = options.deadlineMs ?? 30_000;
    const memory = createSharedMemory({
      tp: plan.tp,
      pp: plan.pp,
      slotFloats: options.maxBatchTokens * options.dim,
      vocabSize: options.vocabSize,
      maxSequences: maxSampledRows(options.geometry),
    });
    // Every spawn and every load settles before anything is cleaned up: a shard still loading
    // must not be asked to shut down with its GPU work pending.
    const spawned = await Promise.allSettled(plan.shards.map(() => spawnShardWorker()));
    const workers = spawned.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
    const spawnFailure = spawned.find((s): s is PromiseRejectedResult => s.status === 'rejected');
    if (spawnFailure) {
      await Promise.allSettled(workers.map((w) => shutdownWorker(w, deadlineMs)));
      throw spawnFailure.reason;
    }
    const progress = plan.shards.map(() => ({ done: 0, total: 0 }));
    const report = () =>
      options.onProgress?.(
        progress.reduce((sum, p) => sum + p.done, 0),
        progress.reduce((sum, p) => sum + p.total, 0),
      );
    const loads = await Promise.allSettled(
      plan.shards.map((shard, i) =>
        whileAlive(
          workers[i]!,
          workers[i]!.api.load(
            {
              source: options.source,
              headers: options.headers,
              position: { rank: shard.rank, stage: shard.stage, tpRank: shard.tpRank, tp: plan.tp, pp: plan.pp },
              view: shard.view,
              memory,
              geometry: options.geometry,
              maxBatchTokens: options.maxBatchTokens,
              gpu: options.gpu[i] ?? options.gpu[0] ?? {},
              kernels: options.kernels,
              deadlineMs,
              faults: options.faults,
            },
            Comlink.proxy((done: number, total: number) => {
              progress[i] = { done, total };
              report();
            }),
          ),
        ),
      ),
    );
    const loadFailure = loads.findIndex((l) => l.status === 'rejected');
    if (loadFailure >= 0) {
      await Promise.allSettled(workers.map((w) => shutdownWorker(w, deadlineMs)));
      throw reviveLoadError((loads[loadFailure] as PromiseRejectedResult).reason, loadFailure);
    }
    const reports = loads.map((l) => (l as PromiseFulfilledResult<ShardLoadReport>).value);
    return new ShardGroup(plan, options.geometry, options.maxBatchTokens, reports, workers, new SharedViews(memory), deadlineMs);
  }

  /** One step on every shard; per sampled row, the sampling shards' best tokens decide the global winner. */
  async forward(batch: StepBatch): Promise<StepResult[]> {
    if (this.stopped) throw new ShardGroupStoppedError(-1, `the shard group stopped earlier: ${this.stopped.message}`, { cause: this.stopped });
    // Shards hold vocabulary slices and gather their logits in shared memory anyway: a batch
    // that asks for top-k candidates gets the logits instead (sampling takes either).
    const wantLogits = batch.wantLogits || (batch.topK ?? 0) > 0;
    const shardBatch: StepBatch = { ...batch, wantLogits, topK: 0 };
    const steps = this.workers.map((w, rank) =>
      withDeadline(whileAlive(w, w.api.forward(shardBatch)), this.deadlineMs * 2, () =>
        new ShardTimeoutError(rank, `shard ${rank} did not finish a step within ${this.deadlineMs * 2} ms`),
      ).catch((error: unknown) => {
        // Wake the other shards now (a dead or hung one never will), rather than at their deadlines.
        this.views.abort(AbortReason.failed);
        throw error;
      }),
    );
    const settled = await Promise.allSettled(steps);
    const errors = settled.flatMap((s, rank) => (s.status === 'rejected' ? [reviveShardError(s.reason, rank)] : []));
    if (errors.length > 0) {
      this.views.abort(AbortReason.failed);
      // Report the shard that failed first, not the ones its failure stopped.
      this.stopped = errors.find((e) => !(e instanceof ShardGroupStoppedError)) ?? errors[0]!;
      throw this.stopped;
    }
    const reports = settled.map((s) => (s as PromiseFulfilledResult<ShardStepReport[]>).value);
    return batch.sampleRows.map((_, row) => {
      let best: ShardStepReport | undefined;
      for (const shardRows of reports) {
        const r = shardRows[row];
        if (!r) continue; // a shard that does not sample
        // Highest logit wins, ties (and NaN logits, which compare false) go to the lower id.
        if (!best || r.argmaxLogit > best.argmaxLogit || (!(r.argmaxLogit < best.argmaxLogit) && r.argmaxId < best.argmaxId)) best = r;
      }
      return { argmaxId: best!.argmaxId, logits: wantLogits ? this.views.logits(row).slice() : undefined };
    });
  }

  /** Per-shard counters, read from shared memory (no round trip to the workers). */
  deviceStats(): DeviceStats[] {
    return this.plan.shards.map(({ rank }) => {
      const c = this.views.shardCounters(rank);
      return {
        rank,
        steps: c[ShardCounter.steps]!,
        stepMs: c[ShardCounter.stepMs]!,
        lastStepMs: c[ShardCounter.lastStepMs]!,
        submits: c[ShardCounter.submits]!,
        collectives: c[ShardCounter.collectives]!,
        collectiveMs: c[ShardCounter.collectiveMs]!,
        collectiveWaitMs: c[ShardCounter.collectiveWaitMs]!,
        gpuBytes: c[ShardCounter.gpuBytes]!,
        loadReadMs: this.reports[rank]!.loadReadMs,
        loadUploadMs: this.reports[rank]!.loadUploadMs,
      };
    });
  }

  /** Test-only (FaultInjector): makes shard `fault.shard` fail as `fault.kind` says. */
  async injectFault(fault: Fault): Promise<void> {
    const worker = this.workers[fault.shard];
    if (!worker) throw new RangeError(`No shard ${fault.shard}: this group has shards 0 to ${this.workers.length - 1}.`);
    await worker.api.injectFault(fault.kind, fault.ms);
  }

  /** Shuts every shard down by message and waits until each has ended. */
  async dispose(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.views.abort(AbortReason.shutdown);
    await Promise.allSettled(this.workers.map((w) => shutdownWorker(w, this.deadlineMs)));
  }
}

/** A call on a worker, failing at once if the worker dies instead of never settling. */
function whileAlive<T>(worker: ShardWorkerHandle, call: Promise<T>): Promise<T> {
  return Promise.race([call, worker.died]);
}

/**
 * A shard's load error, with its class restored (only name and message cross the worker
 * boundary), so callers can tell a missing GPU or an unreadable file from a shard failure.
 */
function reviveLoadError(error: unknown, rank: number): Error {
  const { name, message } = error instanceof Error ? error : { name: 'Error', message: String(error) };
  const where = `shard ${rank}: ${message}`;
  const options = { cause: error };
  switch (name) {
    case 'GpuUnavailableError':
      return new GpuUnavailableError(where, options);
    case 'ModelSourceError':
      return new ModelSourceError(`shard ${rank}`, message, options);
    case 'ModelFormatError':
    case 'UnsupportedModelError':
      return Object.assign(new ModelFormatError({ file: `shard ${rank}`, problem: message, fix: '' }), { message: where });
    default:
      return new ShardError(rank, `shard ${rank} failed to load: ${name}: ${message}`, options);
  }
}

/** Errors lose their class crossing the worker boundary (only name and message survive): restore it. */
function reviveShardError(error: unknown, rank: number): ShardError {
  if (error instanceof ShardError) return error;
  const { name, message } = error instanceof Error ? error : { name: 'Error', message: String(error) };
  const options = { cause: error };
  if (name === 'ShardTimeoutError') return new ShardTimeoutError(rank, message, options);
  if (name === 'ShardPeerTimeoutError') return new ShardPeerTimeoutError(rank, message, options);
  if (name === 'ShardGroupStoppedError') return new ShardGroupStoppedError(rank, message, options);
  return new ShardError(rank, name === 'ShardError' ? message : `shard ${rank} failed: ${name}: ${message}`, options);
}
