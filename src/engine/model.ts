// The user-facing model: tokenizer + one runner on one device (sharded models plug a group of
// shard workers in behind the same GenerationBackend).

import { requestGpu, type GpuContext, type GpuOptions } from '../gpu/device.ts';
import { llamaConfig, validateLlamaTensors, type LlamaConfig } from '../model/config.ts';
import { readGGUF, type GGUFFile } from '../model/gguf.ts';
import { openSource, type ModelSource } from '../model/source.ts';
import { LlamaTokenizer } from '../model/tokenizer.ts';
import { generateTokens, type FinishReason, type GeneratedToken, type GenerateOptions, type GenerationBackend } from './generate.ts';
import { LlamaRunner, type StepResult } from './runner.ts';
import { wholeModelView } from './shard-view.ts';

export interface LoadProgressEvent {
  bytesLoaded: number;
  bytesTotal: number;
}

export interface LoadOptions {
  /** Tokens of context to allocate KV cache for. Default: the model's, capped at 4096. */
  contextLength?: number;
  /** Most prompt tokens one forward step processes. Default 512. */
  maxBatchTokens?: number;
  /** Which WebGPU implementation and adapter to use. */
  gpu?: GpuOptions;
  /** Use this already-open device instead of opening one (it is not destroyed by dispose()). */
  device?: GpuContext;
  onProgress?: (progress: LoadProgressEvent) => void;
}

export interface Completion {
  promptIds: number[];
  ids: number[];
  text: string;
  finishReason: FinishReason;
  timings: { prefillMs: number; decodeMs: number; promptTokens: number; generatedTokens: number };
}

/** Liveness of the whole model: can a forward step still complete? */
export interface HealthReport {
  ok: boolean;
  /** What was checked, e.g. "probe step 3.1 ms" or "busy; last step 12 ms ago". */
  detail: string;
}

/** What the model is doing, for metrics. */
export interface ModelStats {
  /** Generations waiting for the model. */
  queued: number;
  /** Generations running now. */
  running: number;
  /** Forward steps completed, and the last one's wall time. */
  steps: number;
  lastStepMs: number;
  /** Host submits and collective round trips, in total. */
  submits: number;
  collectives: number;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export class Model {
  private queue: Promise<unknown> = Promise.resolve();
  private disposed = false;
  private waiting = 0;
  private running = 0;
  private steps = 0;
  private lastStepMs = 0;
  private lastStepEndedAt = 0;
  /** Test hook: every forward step first waits this long (simulates a wedged GPU). */
  stepDelayMs = 0;

  private constructor(
    readonly config: LlamaConfig,
    readonly file: GGUFFile,
    readonly tokenizer: LlamaTokenizer,
    readonly gpu: GpuContext,
    private readonly runner: LlamaRunner,
    private readonly ownsDevice: boolean,
  ) {}

  static async load(source: ModelSource, options: LoadOptions = {}): Promise<Model> {
    const bytes = await openSource(source);
    try {
      const file = await readGGUF(bytes);
      const config = llamaConfig(file);
      validateLlamaTensors(file, config);
      const tokenizer = LlamaTokenizer.fromGGUFMetadata(file.metadata);
      const contextLength = options.contextLength ?? Math.min(config.contextLength, 4096);
      const gpu = options.device ?? (await requestGpu(options.gpu));
      const runner = await LlamaRunner.load(gpu, file, config, wholeModelView(config), {
        contextLength,
        maxBatchTokens: options.maxBatchTokens,
        onProgress: (bytesLoaded, bytesTotal) => options.onProgress?.({ bytesLoaded, bytesTotal }),
      });
      return new Model(config, file, tokenizer, gpu, runner, !options.device);
    } catch (error) {
      await bytes.close();
      throw error;
    }
  }

  get contextLength(): number {
    return this.runner.contextLength;
  }

  /** Token ids of `text`, with BOS prepended as llama.cpp does (unless addBos is false). */
  tokenize(text: string, options: { addBos?: boolean } = {}): number[] {
    return this.tokenizer.encode(text, options);
  }

  detokenize(ids: readonly number[]): string {
    return this.tokenizer.decode([...ids]);
  }

  /** Streams generated tokens. Calls on one model run one after another. */
  async *generate(prompt: string | readonly number[], options: GenerateOptions = {}): AsyncGenerator<GeneratedToken> {
    const promptIds = typeof prompt === 'string' ? this.tokenize(prompt) : [...prompt];
    const release = await this.acquire();
    try {
      yield* generateTokens(this.backend(), promptIds, options);
    } finally {
      release();
    }
  }

  /** Generates to the end and returns ids, text and timings. */
  async complete(prompt: string | readonly number[], options: GenerateOptions = {}): Promise<Completion> {
    const promptIds = typeof prompt === 'string' ? this.tokenize(prompt) : [...prompt];
    const release = await this.acquire();
    try {
      const result: { finish?: FinishReason } = {};
      const ids: number[] = [];
      let text = '';
      const start = performance.now();
      let firstTokenAt = start;
      for await (const token of generateTokens(this.backend(), promptIds, options, result)) {
        if (ids.length === 0) firstTokenAt = performance.now();
        ids.push(token.id);
        text += token.text;
      }
      const end = performance.now();
      return {
        promptIds,
        ids,
        text,
        finishReason: result.finish ?? 'length',
        timings: { prefillMs: firstTokenAt - start, decodeMs: end - firstTokenAt, promptTokens: promptIds.length, generatedTokens: ids.length },
      };
    } finally {
      release();
    }
  }

  /** Logits of the next token after `ids` (for tests and scoring). */
  async nextTokenLogits(ids: readonly number[]): Promise<Float32Array> {
    const release = await this.acquire();
    try {
      return (await this.step(ids, 0, true)).logits!;
    } finally {
      release();
    }
  }

  /**
   * Liveness: when idle, runs a one-token forward step and waits for it; when busy, checks that
   * the running generation completed a step recently. Either must happen within `deadlineMs`.
   */
  async health(deadlineMs = 5000): Promise<HealthReport> {
    const deadline = new Promise<HealthReport>((resolve) =>
      setTimeout(() => resolve({ ok: false, detail: `no forward step completed within ${deadlineMs} ms` }), deadlineMs),
    );
    if (this.running > 0) {
      const sinceLastStep = performance.now() - this.lastStepEndedAt;
      if (sinceLastStep <= deadlineMs) return { ok: true, detail: `busy; last step ${sinceLastStep.toFixed(0)} ms ago` };
    }
    const probe = (async (): Promise<HealthReport> => {
      const release = await this.acquire();
      try {
        const start = performance.now();
        await this.step([this.tokenizer.bosId], 0, false);
        return { ok: true, detail: `probe step ${(performance.now() - start).toFixed(1)} ms` };
      } finally {
        release();
      }
    })();
    return Promise.race([probe, deadline]);
  }

  stats(): ModelStats {
    return {
      queued: this.waiting,
      running: this.running,
      steps: this.steps,
      lastStepMs: this.lastStepMs,
      submits: this.runner.counters.submits,
      collectives: this.runner.counters.collectives,
    };
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.queue.catch(() => undefined);
    this.runner.dispose();
    if (this.ownsDevice) this.gpu.device.destroy();
    await this.file.source.close();
  }

  private backend(): GenerationBackend {
    return {
      contextLength: this.runner.contextLength,
      forward: (tokens, startPos, wantLogits) => this.step(tokens, startPos, wantLogits),
      isEndOfGeneration: (id) => this.tokenizer.isEog(id),
      createStreamDecoder: () => this.tokenizer.createStreamDecoder(),
    };
  }

  private async step(tokens: readonly number[], startPos: number, wantLogits: boolean): Promise<StepResult> {
    if (this.stepDelayMs > 0) await sleep(this.stepDelayMs);
    const start = performance.now();
    const result = await this.runner.forward(tokens, startPos, wantLogits);
    this.lastStepEndedAt = performance.now();
    this.lastStepMs = this.lastStepEndedAt - start;
    this.steps++;
    return result;
  }

  /** One sequence at a time: the KV cache belongs to the running generation. */
  private async acquire(): Promise<() => void> {
    if (this.disposed) throw new Error('This model was disposed; load it again to use it.');
    let release!: () => void;
    const previous = this.queue;
    this.queue = new Promise<void>((resolve) => (release = resolve));
    this.waiting++;
    await previous.catch(() => undefined);
    this.waiting--;
    this.running++;
    return () => {
      this.running--;
      release();
    };
  }
}

/** Loads a GGUF model from a path, URL, Blob or File onto one WebGPU device. */
export function loadModel(source: ModelSource, options: LoadOptions = {}): Promise<Model> {
  return Model.load(source, options);
}
