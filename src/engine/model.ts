// The user-facing model: a tokenizer and a forward engine — one runner on one device, or a
// group of shard workers (tensor and/or pipeline parallel) behind the same interface.

import { probeAdapter, requestGpu, type GpuContext, type GpuOptions } from '../gpu/device.ts';
import { llamaConfig, validateLlamaTensors, type LlamaConfig } from '../model/config.ts';
import { readGGUF, type GGUFFile } from '../model/gguf.ts';
import { openSource, type ModelSource } from '../model/source.ts';
import { LlamaTokenizer } from '../model/tokenizer.ts';
import { ShardGroup } from '../sharding/group.ts';
import { planShards, type DeviceDescription, type ShardPlan } from '../sharding/plan.ts';
import type { DeviceStats, ForwardEngine } from './forward-engine.ts';
import { generateTokens, type FinishReason, type GeneratedToken, type GenerateOptions, type GenerationBackend } from './generate.ts';
import { InvalidOptionError } from './sampler.ts';
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
  /** Tensor-parallel shards per pipeline stage (default 1). */
  tp?: number;
  /** Pipeline stages (default 1). tp × pp shards run in one worker each, one device each. */
  pp?: number;
  /** Per-shard GPU options (e.g. a different adapter each); default: `gpu` for every shard. */
  devices?: GpuOptions[];
  /** Per-device memory budget in bytes for the planner (WebGPU does not report device memory). */
  gpuMemoryBytes?: number;
  /** Split weights for unequal devices, one per shard. */
  shardWeights?: number[];
  /** Longest a shard step or collective may take before it becomes a ShardTimeoutError. Default 30 s. */
  shardDeadlineMs?: number;
  /** Called with notes worth telling a user (e.g. several shards share one GPU). */
  onWarning?: (message: string) => void;
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
  /** Per device (per shard): steps, step time, collective (all-reduce/hand-off) time, memory. */
  devices: DeviceStats[];
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
    private readonly engine: ForwardEngine,
    /** The device of a one-device model (undefined when sharded: each worker has its own). */
    readonly gpu: GpuContext | undefined,
    /** The shard plan of a sharded model. */
    readonly plan: ShardPlan | undefined,
    private readonly ownsDevice: boolean,
  ) {}

  static async load(source: ModelSource, options: LoadOptions = {}): Promise<Model> {
    const tp = options.tp ?? 1;
    const pp = options.pp ?? 1;
    const counts = { tp, pp, contextLength: options.contextLength, maxBatchTokens: options.maxBatchTokens };
    for (const [name, value] of Object.entries(counts)) {
      if (value !== undefined && (!Number.isInteger(value) || value < 1)) {
        throw new InvalidOptionError(`${name} must be an integer ≥ 1; got ${value}.`);
      }
    }
    const bytes = await openSource(source);
    try {
      const file = await readGGUF(bytes);
      const config = llamaConfig(file);
      validateLlamaTensors(file, config);
      const tokenizer = LlamaTokenizer.fromGGUFMetadata(file.metadata);
      const contextLength = options.contextLength ?? Math.min(config.contextLength, 4096);
      const maxBatchTokens = Math.min(options.maxBatchTokens ?? 512, contextLength);
      const onProgress = (bytesLoaded: number, bytesTotal: number) => options.onProgress?.({ bytesLoaded, bytesTotal });
      if (tp * pp === 1) {
        const gpu = options.device ?? (await requestGpu(options.gpu));
        try {
          const runner = await LlamaRunner.load(gpu, file, config, wholeModelView(config), { contextLength, maxBatchTokens, onProgress });
          return new Model(config, file, tokenizer, runner, gpu, undefined, !options.device);
        } catch (error) {
          if (!options.device) gpu.device.destroy();
          throw error;
        }
      }
      const shardSource = workerSource(source);
      const shardGpus = Array.from({ length: tp * pp }, (_, i) => options.devices?.[i] ?? options.gpu ?? {});
      const devices = await describeDevices(shardGpus, options);
      const plan = planShards(file, config, { tp, pp, contextLength, maxBatchTokens, devices, weights: options.shardWeights });
      const group = await ShardGroup.start({
        source: shardSource,
        plan,
        contextLength,
        maxBatchTokens,
        dim: config.dim,
        vocabSize: config.vocabSize,
        gpu: shardGpus,
        deadlineMs: options.shardDeadlineMs,
        onProgress,
      });
      return new Model(config, file, tokenizer, group, undefined, plan, false);
    } catch (error) {
      await bytes.close();
      throw error;
    }
  }

  get contextLength(): number {
    return this.engine.contextLength;
  }

  /** The shard group of a sharded model (per-shard load reports, test hooks). */
  get shards(): ShardGroup | undefined {
    return this.engine instanceof ShardGroup ? this.engine : undefined;
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
      devices: this.engine.deviceStats(),
    };
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.queue.catch(() => undefined);
    await this.engine.dispose();
    if (this.ownsDevice) this.gpu?.device.destroy();
    await this.file.source.close();
  }

  private backend(): GenerationBackend {
    return {
      contextLength: this.engine.contextLength,
      forward: (tokens, startPos, wantLogits) => this.step(tokens, startPos, wantLogits),
      isEndOfGeneration: (id) => this.tokenizer.isEog(id),
      createStreamDecoder: () => this.tokenizer.createStreamDecoder(),
    };
  }

  private async step(tokens: readonly number[], startPos: number, wantLogits: boolean): Promise<StepResult> {
    if (this.stepDelayMs > 0) await sleep(this.stepDelayMs);
    const start = performance.now();
    const result = await this.engine.forward(tokens, startPos, wantLogits);
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

/** What a shard worker can open itself: it reads its own byte ranges, so it gets a path, URL, Blob or bytes. */
function workerSource(source: ModelSource): string | Blob | Uint8Array {
  if (source instanceof URL) return source.href;
  if (typeof source === 'string' || source instanceof Blob || source instanceof Uint8Array) return source;
  throw new InvalidOptionError('A sharded model needs a path, URL, Blob/File or bytes as its source (each shard worker opens it itself), not an open ByteSource.');
}

/** What the planner needs to know about each shard's device, asked before anything is allocated. */
async function describeDevices(shardGpus: GpuOptions[], options: LoadOptions): Promise<DeviceDescription[]> {
  const probes = new Map<string, Awaited<ReturnType<typeof probeAdapter>>>();
  const devices: DeviceDescription[] = [];
  for (const gpu of shardGpus) {
    const key = JSON.stringify(gpu);
    if (!probes.has(key)) probes.set(key, await probeAdapter(gpu));
    const probe = probes.get(key)!;
    devices.push({
      name: probe.description,
      maxBufferSize: probe.limits.maxBufferSize,
      maxStorageBufferBindingSize: probe.limits.maxStorageBufferBindingSize,
      memoryBudgetBytes: options.gpuMemoryBytes,
    });
  }
  if (probes.size === 1 && shardGpus.length > 1) {
    options.onWarning?.(
      `All ${shardGpus.length} shards share one adapter (${devices[0]!.name}): several devices on one GPU pay for switching ` +
        'between them at every all-reduce. Pass one adapter per shard (devices / --devices) when you have several GPUs.',
    );
  }
  return devices;
}

/** Loads a GGUF model from a path, URL, Blob or File onto one WebGPU device, or split over tp × pp devices. */
export function loadModel(source: ModelSource, options: LoadOptions = {}): Promise<Model> {
  return Model.load(source, options);
}
