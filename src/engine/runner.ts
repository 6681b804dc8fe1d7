// One device's share of the model, ready to run steps: weights, KV cache, scratch buffers and
// the recorded forward programs. The single-device model uses one runner over the whole-model
// view; a shard worker uses one runner over its view with a communicator to the other shards.

import type { GpuContext } from '../gpu/device.ts';
import { readBuffer, writeBuffer } from '../gpu/kernel.ts';
import type { LlamaConfig } from '../model/config.ts';
import type { GGUFFile } from '../model/gguf.ts';
import { createKvCache, destroyKvCache, type KvCache } from './kv-cache.ts';
import { createActivations, destroyActivations, recordLlamaForward, type Activations } from './llama.ts';
import type { DeviceStats, ForwardEngine } from './forward-engine.ts';
import { aloneCommunicator, runProgram, type Communicator, type ProgramStep, type StepCounters } from './program.ts';
import { rangeLength, type ShardView } from './shard-view.ts';
import { destroyWeights, loadLlamaWeights, type LlamaWeights, type LoadProgress } from './weights.ts';

export class ContextOverflowError extends Error {
  override name = 'ContextOverflowError';
}

export interface RunnerOptions {
  contextLength: number;
  /** Most tokens one forward step processes (longer prompts run in several steps). */
  maxBatchTokens?: number;
  communicator?: Communicator;
  onProgress?: LoadProgress;
}

/** What a step hands back: the best (argmax) token, and the logits when asked for. */
export interface StepResult {
  /** Index into this shard's vocabulary slice (the whole vocabulary on one device). */
  argmaxId: number;
  /** The best token's logit; only known when the shard holds a vocabulary slice. */
  argmaxLogit?: number;
  logits?: Float32Array;
}

export class LlamaRunner implements ForwardEngine {
  readonly counters: StepCounters = { submits: 0, collectives: 0 };
  private steps = 0;
  private stepMs = 0;
  private lastStepMs = 0;
  private readonly programs = new Map<number, ProgramStep[]>();

  private constructor(
    readonly gpu: GpuContext,
    readonly config: LlamaConfig,
    readonly view: ShardView,
    readonly weights: LlamaWeights,
    readonly cache: KvCache,
    private readonly activations: Activations,
    private readonly communicator: Communicator,
  ) {}

  static async load(gpu: GpuContext, file: GGUFFile, config: LlamaConfig, view: ShardView, options: RunnerOptions): Promise<LlamaRunner> {
    const weights = await loadLlamaWeights(gpu, file, config, view, options.onProgress);
    const cache = createKvCache(gpu, config, view, options.contextLength);
    const maxBatch = Math.min(options.maxBatchTokens ?? 512, options.contextLength);
    const activations = createActivations(gpu, config, view, maxBatch);
    return new LlamaRunner(gpu, config, view, weights, cache, activations, options.communicator ?? aloneCommunicator);
  }

  get contextLength(): number {
    return this.cache.contextLength;
  }

  /**
   * Runs `tokens` at positions `startPos...` through this shard, in chunks of at most
   * `maxBatchTokens`, and returns what the last token produced. Only the final chunk's result
   * is read back: one host round trip per call on a single device.
   */
  async forward(tokens: readonly number[], startPos: number, wantLogits: boolean): Promise<StepResult> {
    if (tokens.length === 0) throw new RangeError('forward() needs at least one token');
    if (startPos + tokens.length > this.contextLength) {
      throw new ContextOverflowError(
        `${startPos + tokens.length} tokens do not fit the context of ${this.contextLength}; ` +
          'load the model with a larger contextLength (--ctx) or shorten the prompt.',
      );
    }
    const a = this.activations;
    const start = performance.now();
    for (let done = 0; done < tokens.length; done += a.maxTokens) {
      const chunk = tokens.slice(done, done + a.maxTokens);
      const positions = Uint32Array.from(chunk, (_, i) => startPos + done + i);
      writeBuffer(this.gpu.device, a.tokenIds, 0, Uint32Array.from(chunk));
      writeBuffer(this.gpu.device, a.positions, 0, positions);
      await runProgram(this.gpu.device, this.program(chunk.length), this.communicator, this.counters);
    }
    if (!this.view.samples) {
      this.countStep(start);
      return { argmaxId: -1 };
    }
    const best = await readBuffer(this.gpu.device, a.best, 8);
    const argmaxId = new Uint32Array(best)[0]!;
    const argmaxLogit = rangeLength(this.view.vocab) === this.config.vocabSize ? undefined : new Float32Array(best)[1]!;
    const logits = wantLogits
      ? new Float32Array(await readBuffer(this.gpu.device, a.logits, rangeLength(this.view.vocab) * 4))
      : undefined;
    this.countStep(start);
    return { argmaxId, argmaxLogit, logits };
  }

  private countStep(start: number): void {
    this.lastStepMs = performance.now() - start;
    this.stepMs += this.lastStepMs;
    this.steps++;
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
      },
    ];
  }

  private program(nTokens: number): ProgramStep[] {
    let steps = this.programs.get(nTokens);
    if (!steps) {
      steps = recordLlamaForward(this.gpu, this.config, this.view, this.weights, this.cache, this.activations, nTokens);
      this.programs.set(nTokens, steps);
    }
    return steps;
  }

  async dispose(): Promise<void> {
    destroyWeights(this.weights);
    destroyKvCache(this.cache);
    destroyActivations(this.activations);
    this.programs.clear();
  }
}
