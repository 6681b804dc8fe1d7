// The communicator of one shard: carries out the forward pass's collective steps over shared
// memory. Each collective is one host round trip: read the GPU buffer back, meet the other
// shards at a barrier, write the result back. That cost (~60–125 µs per shard on separate GPUs,
// ARCHITECTURE.md, Measured facts) is why the forward pass has exactly two all-reduces per layer and nothing else.

import { writeBuffer } from '../gpu/kernel.ts';
import type { CollectiveStep, Communicator } from '../engine/program.ts';
import { ShardGroupStoppedError, ShardPeerTimeoutError } from './errors.ts';
import { AbortReason, SharedViews, type SharedMemory } from './shared-memory.ts';

export interface ShardPosition {
  rank: number;
  stage: number;
  tpRank: number;
  tp: number;
  pp: number;
}

export interface CollectiveTimings {
  count: number;
  /** Wall time inside collectives: read-back, waiting for the others, summing, write-back. */
  totalMs: number;
  /** Of that, time spent waiting at barriers and hand-offs for other shards. */
  waitMs: number;
}

const MAP_READ = 0x0001;
const COPY_DST = 0x0008;

export class SharedMemoryCommunicator implements Communicator {
  readonly timings: CollectiveTimings = { count: 0, totalMs: 0, waitMs: 0 };
  private readonly views: SharedViews;
  private allReduceRound = 0;
  private handOffsReceived = 0;
  private staging?: GPUBuffer;
  private readBackEncoded = false;

  constructor(
    memory: SharedMemory,
    readonly position: ShardPosition,
    /** Longest a shard waits for the others at one collective. */
    readonly deadlineMs: number,
  ) {
    this.views = new SharedViews(memory);
  }

  participates(step: CollectiveStep): boolean {
    return step.kind !== 'allReduceSum' || this.position.tp > 1;
  }

  /** The buffer a collective sends is copied to the staging buffer in the submit before it. */
  encodeReadBack(device: GPUDevice, encoder: GPUCommandEncoder, step: CollectiveStep): void {
    if (step.kind === 'receiveHidden') return;
    encoder.copyBufferToBuffer(step.buffer, 0, this.stagingBuffer(device, step.count * 4), 0, step.count * 4);
    this.readBackEncoded = true;
  }

  async collective(device: GPUDevice, step: CollectiveStep): Promise<void> {
    const start = performance.now();
    switch (step.kind) {
      case 'allReduceSum':
        await this.allReduceSum(device, step.buffer, step.count, step.label);
        break;
      case 'sendHidden':
        await this.sendHidden(device, step.buffer, step.count);
        break;
      case 'receiveHidden':
        this.receiveHidden(device, step.buffer, step.count);
        break;
    }
    this.timings.count++;
    this.timings.totalMs += performance.now() - start;
  }

  /** Sum partials over the stage's tensor-parallel shards: every shard adds the slots in rank order, so all get identical results. */
  private async allReduceSum(device: GPUDevice, buffer: GPUBuffer, count: number, label: string): Promise<void> {
    const { stage, tpRank, tp } = this.position;
    const round = this.allReduceRound++;
    this.views.allReduceSlot(stage, round, tpRank, count).set(await this.readBack(device, buffer, count));
    this.barrier(stage, label);
    const sum = new Float32Array(count);
    for (let rank = 0; rank < tp; rank++) {
      const slot = this.views.allReduceSlot(stage, round, rank, count);
      for (let i = 0; i < count; i++) sum[i]! += slot[i]!;
    }
    writeBuffer(device, buffer, 0, sum);
  }

  private async sendHidden(device: GPUDevice, buffer: GPUBuffer, count: number): Promise<void> {
    const { stage, tpRank } = this.position;
    const cell = this.views.handOffCell(stage, tpRank);
    const hidden = await this.readBack(device, buffer, count);
    // The next stage must have taken the previous hand-off before we overwrite it.
    const sent = Atomics.load(this.views.control, cell);
    this.waitUntil(cell + 1, (acknowledged) => acknowledged === sent, `stage ${stage + 1} to take the hidden state`);
    this.views.handOffData(stage, tpRank, count).set(hidden);
    Atomics.store(this.views.control, cell, sent + 1);
    Atomics.notify(this.views.control, cell);
  }

  private receiveHidden(device: GPUDevice, buffer: GPUBuffer, count: number): void {
    const { stage, tpRank } = this.position;
    const boundary = stage - 1;
    const cell = this.views.handOffCell(boundary, tpRank);
    const expected = ++this.handOffsReceived;
    this.waitUntil(cell, (sent) => sent >= expected, `stage ${boundary} to send the hidden state`);
    writeBuffer(device, buffer, 0, this.views.handOffData(boundary, tpRank, count).slice());
    Atomics.store(this.views.control, cell + 1, expected);
    Atomics.notify(this.views.control, cell + 1);
  }

  /** A sense-reversing barrier over the stage's tensor-parallel shards. */
  private barrier(stage: number, label: string): void {
    const cell = this.views.stageBarrierCell(stage);
    const control = this.views.control;
    const generation = Atomics.load(control, cell + 1);
    if (Atomics.add(control, cell, 1) === this.position.tp - 1) {
      Atomics.store(control, cell, 0);
      Atomics.add(control, cell + 1, 1);
      Atomics.notify(control, cell + 1);
      return;
    }
    this.waitUntil(cell + 1, (g) => g !== generation, `the other shards at the all-reduce after ${label}`);
  }

  /** Blocks this worker until `ready(control[cell])`, the group aborts, or the deadline passes. */
  private waitUntil(cell: number, ready: (value: number) => boolean, what: string): void {
    const control = this.views.control;
    const start = performance.now();
    const deadline = start + this.deadlineMs;
    for (;;) {
      const value = Atomics.load(control, cell);
      if (ready(value)) break;
      const abort = this.views.aborted();
      if (abort !== AbortReason.none) {
        throw new ShardGroupStoppedError(this.position.rank, `shard ${this.position.rank} stopped waiting for ${what}: the group ${abort === AbortReason.shutdown ? 'is shutting down' : 'failed'}`);
      }
      const left = deadline - performance.now();
      if (left <= 0) {
        throw new ShardPeerTimeoutError(this.position.rank, `shard ${this.position.rank} waited ${this.deadlineMs} ms for ${what}`);
      }
      Atomics.wait(control, cell, value, left);
    }
    this.timings.waitMs += performance.now() - start;
  }

  private stagingBuffer(device: GPUDevice, bytes: number): GPUBuffer {
    if (!this.staging || this.staging.size < bytes) {
      this.staging?.destroy();
      this.staging = device.createBuffer({ label: 'collective read-back', size: bytes, usage: MAP_READ | COPY_DST });
    }
    return this.staging;
  }

  /**
   * Copies `count` floats of a GPU buffer to the host through a reused staging buffer. Usually
   * the copy already rode in the previous submit (encodeReadBack); otherwise it is submitted here.
   */
  private async readBack(device: GPUDevice, buffer: GPUBuffer, count: number): Promise<Float32Array> {
    const bytes = count * 4;
    const staging = this.stagingBuffer(device, bytes);
    if (!this.readBackEncoded) {
      const encoder = device.createCommandEncoder({ label: 'collective read-back' });
      encoder.copyBufferToBuffer(buffer, 0, staging, 0, bytes);
      device.queue.submit([encoder.finish()]);
    }
    this.readBackEncoded = false;
    await staging.mapAsync(MAP_READ, 0, bytes);
    const values = new Float32Array(staging.getMappedRange(0, bytes).slice(0));
    staging.unmap();
    return values;
  }

  dispose(): void {
    this.staging?.destroy();
    this.staging = undefined;
  }
}
