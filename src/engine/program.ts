// A forward program: the GPU work of one step, recorded once and replayed every step.
//
// The forward function records kernels and the few collective steps the math needs (sum the
// partial outputs of a tensor-parallel shard, hand the hidden state to the next pipeline stage).
// Kernels between two collective steps become one submit; a collective step is where a shard
// must talk to the others, so it is the only place a host round trip can happen. With one
// device every collective step is a no-op and the whole step is one submit.

import { encodeOps, type KernelOp } from '../gpu/kernel.ts';

export type ProgramStep =
  | { kind: 'kernels'; ops: KernelOp[] }
  /** Sum `count` f32 values of `buffer` over all tensor-parallel shards, in place. */
  | { kind: 'allReduceSum'; buffer: GPUBuffer; count: number; label: string }
  /** Pipeline parallel: fill `buffer` with the hidden state from the previous stage. */
  | { kind: 'receiveHidden'; buffer: GPUBuffer; count: number }
  /** Pipeline parallel: pass `buffer` on to the next stage. */
  | { kind: 'sendHidden'; buffer: GPUBuffer; count: number };

export type CollectiveStep = Exclude<ProgramStep, { kind: 'kernels' }>;

/** Records steps in order; consecutive kernels are grouped. */
export class ProgramRecorder {
  readonly steps: ProgramStep[] = [];

  run(...ops: KernelOp[]): void {
    const last = this.steps.at(-1);
    if (last?.kind === 'kernels') last.ops.push(...ops);
    else this.steps.push({ kind: 'kernels', ops });
  }

  allReduceSum(buffer: GPUBuffer, count: number, label: string): void {
    this.steps.push({ kind: 'allReduceSum', buffer, count, label });
  }

  receiveHidden(buffer: GPUBuffer, count: number): void {
    this.steps.push({ kind: 'receiveHidden', buffer, count });
  }

  sendHidden(buffer: GPUBuffer, count: number): void {
    this.steps.push({ kind: 'sendHidden', buffer, count });
  }
}

/**
 * Carries out collective steps between shards. Each call may read a GPU buffer back, exchange
 * it with the other shards and write the result; it runs after everything before it was submitted.
 */
export interface Communicator {
  /** Whether this shard takes part in `step` (e.g. no all-reduce without tensor-parallel peers). */
  participates(step: CollectiveStep): boolean;
  /** Records the copies `step` will read back into the submit that precedes it (saves a submit per collective). */
  encodeReadBack?(device: GPUDevice, encoder: GPUCommandEncoder, step: CollectiveStep): void;
  collective(device: GPUDevice, step: CollectiveStep): Promise<void>;
}

/** The communicator of a model that fits one device: every collective is a no-op. */
export const aloneCommunicator: Communicator = {
  participates: () => false,
  collective: () => Promise.resolve(),
};

/** Counts what a step costs on the host: submits and collective round trips. */
export interface StepCounters {
  submits: number;
  collectives: number;
}

/**
 * Runs a recorded program: everything between collective steps goes into one command buffer,
 * one submit. Returns without waiting for the GPU unless a collective needs its results.
 */
export async function runProgram(
  device: GPUDevice,
  steps: readonly ProgramStep[],
  communicator: Communicator,
  counters?: StepCounters,
  /** Appends to the last command buffer (e.g. the copies for the step's read-back), saving a submit. */
  finish?: (encoder: GPUCommandEncoder) => void,
): Promise<void> {
  let encoder: GPUCommandEncoder | undefined;
  const submit = () => {
    if (!encoder) return;
    device.queue.submit([encoder.finish()]);
    encoder = undefined;
    if (counters) counters.submits++;
  };
  for (const step of steps) {
    switch (step.kind) {
      case 'kernels':
        encoder ??= device.createCommandEncoder({ label: 'forward' });
        encodeOps(encoder, step.ops);
        break;
      default:
        // A collective this shard takes no part in costs nothing: the kernels keep flowing into one submit.
        if (!communicator.participates(step)) break;
        if (communicator.encodeReadBack) {
          encoder ??= device.createCommandEncoder({ label: 'forward' });
          communicator.encodeReadBack(device, encoder, step);
        }
        submit();
        await communicator.collective(device, step);
        if (counters) counters.collectives++;
    }
  }
  if (finish) {
    encoder ??= device.createCommandEncoder({ label: 'forward' });
    finish(encoder);
  }
  submit();
}

/** Whether this shard runs `steps` without meeting any other shard: then it is one submit. */
export function runsAlone(steps: readonly ProgramStep[], communicator: Communicator): boolean {
  return steps.every((step) => step.kind === 'kernels' || !communicator.participates(step));
}

/**
 * Encodes a program that `runsAlone` into one command buffer without submitting it, so the host
 * can record the next step while the GPU runs this one. A command buffer names buffers, not their
 * contents: the step's inputs may be written (queue.writeBuffer) after it is encoded.
 */
export function encodeProgram(device: GPUDevice, steps: readonly ProgramStep[], finish?: (encoder: GPUCommandEncoder) => void): GPUCommandBuffer {
  const encoder = device.createCommandEncoder({ label: 'forward' });
  for (const step of steps) if (step.kind === 'kernels') encodeOps(encoder, step.ops);
  finish?.(encoder);
  return encoder.finish();
}

