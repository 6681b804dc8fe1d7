// One device's share of the model, ready to run steps: weights, paged KV cache, scratch buffers
// and the recorded forward programs. The single-device model uses one runner over the
// whole-model view; a shard worker uses one runner over its view with a communicator to the
// other shards. A step is a batch: tokens of several sequences, each at its own position.

import type { GpuContext } from '../gpu/device.ts';
import { destroyOps, writeBuffer } from '../gpu/kernel.ts';
import type { LlamaConfig } from '../model/config.ts';
import type { GGUFFile } from '../model/gguf.ts';
import type { DeviceStats, ForwardEngine, StepBatch, StepResult } from './forward-engine.ts';
import { createKvCache, destroyKvCache, type KvCache, type KvGeometry } from './kv-cache.ts';
import { createActivations, destroyActivations, recordLlamaForward, type Activations, type KernelChoice } from './llama.ts';
import { aloneCommunicator, encodeProgram, runProgram, runsAlone, type Communicator, type ProgramStep, type StepCounters } from './program.ts';
import { rangeLength, type ShardView } from './shard-view.ts';
import { MAX_TOP_K, unpackTopK } from '../shaders/sampling.ts';
import { destroyWeights, loadLlamaWeights, type LlamaWeights, type LoadProgress } from './weights.ts';

// The step types live with the interface (forward-engine.ts); re-exported for the runner's users.
export type { StepBatch, StepResult } from './forward-engine.ts';

export class ContextOverflowError extends Error {
  override name = 'ContextOverflowError';
}

export interface RunnerOptions {
  geometry: KvGeometry;
  /** Most tokens one forward step processes. */
  maxBatchTokens: number;
  communicator?: Communicator;
  onProgress?: LoadProgress;
  /** Kernel variants instead of the automatic choice. */
  kernels?: KernelChoice;
}

const MAP_READ = 0x0001; // GPUMapMode.READ and GPUBufferUsage.MAP_READ
const COPY_DST = 0x0008;

function destroyProgram(steps: readonly ProgramStep[]): void {
  for (const step of steps) if (step.kind === 'kernels') destroyOps(step.ops);
}

/** Recorded programs kept per (tokens, samples) shape; more than this and the oldest go. */
const MAX_PROGRAMS = 64;

export class LlamaRunner implements ForwardEngine {
  readonly counters: StepCounters = { submits: 0, collectives: 0 };
  private readonly programs = new Map<string, ProgramStep[]>();
  private steps = 0;
  private stepMs = 0;
  private lastStepMs = 0;

  private constructor(
    readonly gpu: GpuContext,
    readonly config: LlamaConfig,
    readonly view: ShardView,
    readonly weights: LlamaWeights,
    readonly cache: KvCache,
    private readonly activations: Activations,
    private readonly communicator: Communicator,
    private readonly kernels: KernelChoice,
  ) {}

  static async load(gpu: GpuContext, file: GGUFFile, config: LlamaConfig, view: ShardView, options: RunnerOptions): Promise<LlamaRunner> {
    const weights = await loadLlamaWeights(gpu, file, config, view, options.onProgress);
    const cache = createKvCache(gpu, config, view, options.geometry);
    const activations = createActivations(gpu, config, view, options.maxBatchTokens, options.geometry, weights.orderedInputWidth);
    return new LlamaRunner(gpu, config, view, weights, cache, activations, options.communicator ?? aloneCommunicator, options.kernels ?? {});
  }

  get geometry(): KvGeometry {
    return this.cache.geometry;
  }

  get maxBatchTokens(): number {
    return this.activations.maxTokens;
  }

  /**
   * Runs one batch through this shard and returns, per sampled row, the best token (and logits
   * if asked). One submit between collectives, one read-back at the end.
   */
  async forward(batch: StepBatch): Promise<StepResult[]> {
    const a = this.activations;
    const T = batch.tokens.length;
    const S = batch.sampleRows.length;
    if (T === 0 || T > a.maxTokens) throw new RangeError(`a step takes 1..${a.maxTokens} tokens; got ${T}`);
    if (S > a.maxSamples) throw new RangeError(`a step samples at most ${a.maxSamples} rows; got ${S}`);
    const asked = batch.topK ?? 0;
    if (!Number.isInteger(asked) || asked < 0 || asked > Math.min(MAX_TOP_K, this.config.vocabSize)) {
      throw new RangeError(`a step reads back 0..${Math.min(MAX_TOP_K, this.config.vocabSize)} candidates per row; got topK ${asked}`);
    }
    const localVocab = rangeLength(this.view.vocab);
    const wholeVocabulary = localVocab === this.config.vocabSize;
    // Candidates only where they replace the logits: a sampling shard with the whole vocabulary.
    const topK = !batch.wantLogits && wholeVocabulary && this.view.samples && S > 0 ? asked : 0;
    const start = performance.now();
    const device = this.gpu.device;
    writeBuffer(device, a.tokenIds, 0, Uint32Array.from(batch.tokens));
    writeBuffer(device, a.positions, 0, Uint32Array.from(batch.positions));
    writeBuffer(device, a.tokenSlots, 0, Uint32Array.from(batch.slots));
    writeBuffer(device, a.blockTable, 0, batch.blockTable);
    if (S > 0) writeBuffer(device, a.sampleRows, 0, Uint32Array.from(batch.sampleRows));
    const results: StepResult[] = [];
    const program = this.program(T, S, topK);
    if (!this.view.samples || S === 0) {
      await runProgram(device, program, this.communicator, this.counters);
    } else {
      // argmax writes one id per row; over a vocabulary slice top-1 writes (id, logit) pairs.
      const bestBytes = S * (wholeVocabulary ? 4 : 8);
      const logitsAt = Math.ceil(bestBytes / 256) * 256;
      // The logits, or in their place the top-k candidates: (id, logit) pairs, k per row.
      const logitsBytes = batch.wantLogits ? S * localVocab * 4 : S * topK * 8;
      // The read-back copies ride in the step's last submit; one map per step, into a reused buffer.
      const staging = this.stagingBuffer(logitsAt + logitsBytes);
      const readBack = (encoder: GPUCommandEncoder) => {
        encoder.copyBufferToBuffer(a.best, 0, staging, 0, bestBytes);
        if (logitsBytes) encoder.copyBufferToBuffer(batch.wantLogits ? a.logits : a.candidates, 0, staging, logitsAt, logitsBytes);
      };
      const shape = `${T}/${S}/${topK}/${logitsBytes}`;
      const prepared = this.prepared?.shape === shape ? this.prepared.commands : undefined;
      this.prepared = undefined;
      if (prepared) {
        device.queue.submit([prepared]);
        this.counters.submits++;
      } else {
        await runProgram(device, program, this.communicator, this.counters, readBack);
      }
      // Decoding repeats its shape step after step: record the next step's command buffer now,
      // while the GPU runs this one, so the host's encoding time hides behind the GPU's work.
      if (shape === this.lastShape && runsAlone(program, this.communicator)) {
        this.prepared = { shape, commands: encodeProgram(device, program, readBack) };
      }
      this.lastShape = shape;
      await staging.mapAsync(MAP_READ, 0, logitsAt + logitsBytes);
      const mapped = staging.getMappedRange(0, logitsAt + logitsBytes);
      const ids = new Uint32Array(mapped.slice(0, bestBytes));
      const logitsOfBest = new Float32Array(ids.buffer);
      const logits = batch.wantLogits ? new Float32Array(mapped.slice(logitsAt, logitsAt + logitsBytes)) : undefined;
      const candidates = topK ? unpackTopK(mapped.slice(logitsAt, logitsAt + logitsBytes), S, topK) : undefined;
      staging.unmap();
      for (let s = 0; s < S; s++) {
        results.push({
          argmaxId: wholeVocabulary ? ids[s]! : ids[2 * s]!,
          argmaxLogit: wholeVocabulary ? undefined : logitsOfBest[2 * s + 1]!,
          logits: logits?.subarray(s * localVocab, (s + 1) * localVocab),
          candidates: candidates?.[s],
        });
      }
    }
    this.lastStepMs = performance.now() - start;
    this.stepMs += this.lastStepMs;
    this.steps++;
    return results;
  }

  private staging?: GPUBuffer;
  /** The next step's command buffer, encoded ahead for a step of this shape (see forward). */
  private prepared?: { shape: string; commands: GPUCommandBuffer };
  private lastShape = '';

  private stagingBuffer(bytes: number): GPUBuffer {
    if (!this.staging || this.staging.size < bytes) {
      this.prepared = undefined; // it copies into the old buffer
      this.staging?.destroy();
      this.staging = this.gpu.device.createBuffer({ label: 'step read-back', size: Math.max(256, bytes), usage: MAP_READ | COPY_DST });
    }
    return this.staging;
  }

  private program(nTokens: number, nSamples: number, topK: number): ProgramStep[] {
    const key = `${nTokens}/${nSamples}/${topK}`;
    let steps = this.programs.get(key);
    if (!steps) {
      steps = recordLlamaForward(this.gpu, this.config, this.view, this.weights, this.cache, this.activations, nTokens, nSamples, this.kernels, topK);
      if (this.programs.size >= MAX_PROGRAMS) {
        const [oldest, evicted] = this.programs.entries().next().value!;
        this.programs.delete(oldest);
        destroyProgram(evicted);
      }
      this.programs.set(key, steps);
    }
    return steps;
  }

  deviceStats(): DeviceStats[] {
    return [
      {
        rank: 0,
        steps: this.steps,
        stepMs: this.stepMs,
        lastStepMs: this.lastStepMs,
        submits: this.counters.submits,
        collectives: this.counters.collectives,
        collectiveMs: 0,
        collectiveWaitMs: 0,
        gpuBytes: this.weights.gpuBytes + this.cache.bytes,
        loadReadMs: this.weights.loadMs.read,
        loadUploadMs: this.weights.loadMs.upload,
      },
    ];
  }

  async dispose(): Promise<void> {
    destroyWeights(this.weights);
    destroyKvCache(this.cache);
    destroyActivations(this.activations);
    this.staging?.destroy();
    this.prepared = undefined;
    for (const steps of this.programs.values()) destroyProgram(steps);
    this.programs.clear();
  }
}
