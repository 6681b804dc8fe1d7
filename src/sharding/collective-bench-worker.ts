// A worker that times collectives (all-reduce, pipeline hand-off) through the production
// communicator on its own device, for the --shard auto measurements (measure.ts) and
// bench/allreduce.ts. Separate from the shard worker, which only serves a model.

import { requestGpu, type GpuContext, type GpuOptions } from '../gpu/device.ts';
import { readBuffer, writeBuffer } from '../gpu/kernel.ts';
import { SharedMemoryCommunicator, type ShardPosition } from './communicator.ts';
import { AbortReason, SharedViews, type SharedMemory } from './shared-memory.ts';
import { closeWorker, exposeToParent } from './worker-endpoint.ts';

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

class CollectiveBenchWorker {
  private gpu?: GpuContext;

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

  /** Destroys the device, then lets the worker end (never terminate() it: a Dawn device may be alive). */
  shutdown(): void {
    this.gpu?.device.destroy();
    this.gpu = undefined;
    closeWorker();
  }
}

export type CollectiveBenchWorkerApi = Pick<CollectiveBenchWorker, 'benchCollective' | 'shutdown'>;

// No top-level await: bundlers' classic worker format (vite's default) cannot have one.
exposeToParent(new CollectiveBenchWorker()).catch((error: unknown) => {
  console.error(error);
  closeWorker();
});
