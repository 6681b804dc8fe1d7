// The user-facing model: a tokenizer and a forward engine — one runner on one device, or a
// group of shard workers (tensor and/or pipeline parallel) behind the same interface.

import { GpuUnavailableError, requestGpu, type GpuContext, type GpuOptions } from '../gpu/device.ts';
import { llamaConfig, validateLlamaTensors, type LlamaConfig } from '../model/config.ts';
import { readGGUF, type GGUFFile } from '../model/gguf.ts';
import { openSource, type ModelSource } from '../model/source.ts';
import { LlamaTokenizer, UnsupportedTokenizerError } from '../model/tokenizer.ts';
import { describeShardDevices, distinctAdapters } from '../sharding/devices.ts';
import { ShardGroup } from '../sharding/group.ts';
import { planShards, type DeviceDescription, type ShardPlan } from '../sharding/plan.ts';
import type { DeviceStats, ForwardEngine } from '../engine/forward-engine.ts';
import { checkGeneration, generateTokens, type FinishReason, type GeneratedToken, type GenerateOptions, type GenerationBackend } from '../engine/generate.ts';
import { viewFootprint } from '../engine/footprint.ts';
import { kvGeometry } from '../engine/kv-cache.ts';
import type { KernelChoice } from '../engine/llama.ts';
import { InvalidOptionError } from '../engine/sampler.ts';
import { ContextOverflowError, LlamaRunner } from '../engine/runner.ts';
import { Scheduler, type SchedulerStats, type Sequence } from '../engine/scheduler.ts';
import { wholeModelView } from '../engine/shard-view.ts';
import { MATMUL_VARIANTS } from '../shaders/matmul.ts';

export interface LoadProgressEvent {
  bytesLoaded: number;
  bytesTotal: number;
}

export interface LoadOptions {
  /** Tokens of context to allocate KV cache for. Default: the model's, capped at 4096. */
  contextLength?: number;
  /** Most tokens one batched forward step processes (decode tokens and prompt chunks). Default 512. */
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
  /** Sequences that can generate at once (continuous batching). Default 1. */
  maxSequences?: number;
  /** KV cache positions shared by all sequences. Default maxSequences × contextLength. */
  kvCacheTokens?: number;
  /** Generations that may wait for a free sequence slot before new ones get QueueFullError. Default unlimited. */
  maxWaiting?: number;
  /** Longest a shard step or collective may take before it becomes a ShardTimeoutError. Default 30 s. */
  shardDeadlineMs?: number;
  /** Kernel variants instead of the automatic choice, e.g. { matmul: 'tiled' } (for benchmarks). */
  kernels?: KernelChoice;
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
export interface ModelStats extends SchedulerStats {
  /** Wall time of the last batched step. */
  lastStepMs: number;
  /** Per device (per shard): steps, step time, collective (all-reduce/hand-off) time, memory. */
  devices: DeviceStats[];
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export class Model {
  private disposed = false;
  private disposing?: Promise<void>;
  /** Set when a one-device model's GPU device is lost: every step then fails with GpuUnavailableError. */
  private lost?: string;
  private lastStepMs = 0;
  private lastStepEndedAt = 0;
  private readonly scheduler: Scheduler;
  /** Test hook: every forward step first waits this long (simulates a wedged GPU). */
  stepDelayMs = 0;

  private constructor(
    readonly config: LlamaConfig,
    readonly file: GGUFFile,
    private readonly tokenizerOrRefusal: LlamaTokenizer | UnsupportedTokenizerError,
    private readonly engine: ForwardEngine,
    /** Positions one sequence may hold (prompt + generated). */
    readonly contextLength: number,
    /** The device of a one-device model (undefined when sharded: each worker has its own). */
    readonly gpu: GpuContext | undefined,
    /** The shard plan of a sharded model. */
    readonly plan: ShardPlan | undefined,
    private readonly ownsDevice: boolean,
    maxWaiting: number | undefined,
  ) {
    this.scheduler = new Scheduler(this.timedEngine(), { maxWaiting });
    void gpu?.device.lost.then((info) => {
      if (!this.disposed) this.lost = `the GPU device was lost (${info.reason}): ${info.message || 'no detail'}; load the model again`;
    });
  }

  static async load(source: ModelSource, options: LoadOptions = {}): Promise<Model> {
    const tp = options.tp ?? 1;
    const pp = options.pp ?? 1;
    const counts = {
      tp,
      pp,
      contextLength: options.contextLength,
      maxBatchTokens: options.maxBatchTokens,
      maxSequences: options.maxSequences,
      kvCacheTokens: options.kvCacheTokens,
    };
    for (const [name, value] of Object.entries(counts)) {
      if (value !== undefined && (!Number.isInteger(value) || value < 1)) {
        throw new InvalidOptionError(`${name} must be an integer ≥ 1; got ${value}.`);
      }
    }
    const matmul = options.kernels?.matmul;
    if (matmul !== undefined && !(MATMUL_VARIANTS as readonly string[]).includes(matmul)) {
      throw new InvalidOptionError(`kernels.matmul must be one of ${MATMUL_VARIANTS.join(', ')}; got ${JSON.stringify(matmul)}.`);
    }
    const bytes = await openSource(source);
    try {
      const file = await readGGUF(bytes);
      const config = llamaConfig(file);
      validateLlamaTensors(file, config);
      const tokenizer = readTokenizer(file);
      const contextLength = options.contextLength ?? Math.min(config.contextLength, 4096);
      const maxSequences = options.maxSequences ?? 1;
      // Decode tokens (one per sequence) go first in a step; the budget must leave prompts room.
      if (options.maxBatchTokens !== undefined && maxSequences > 1 && options.maxBatchTokens <= maxSequences) {
        throw new InvalidOptionError(`maxBatchTokens (${options.maxBatchTokens}) must exceed maxSequences (${maxSequences}), or waiting prompts never get into a step.`);
      }
      const maxBatchTokens = Math.min(options.maxBatchTokens ?? Math.max(512, 2 * maxSequences), contextLength * maxSequences);
      const geometry = kvGeometry(contextLength, options.maxSequences ?? 1, options.kvCacheTokens);
      const onProgress = (bytesLoaded: number, bytesTotal: number) => options.onProgress?.({ bytesLoaded, bytesTotal });
      const create = (engine: ForwardEngine, gpu: GpuContext | undefined, plan: ShardPlan | undefined, ownsDevice: boolean) =>
        new Model(config, file, tokenizer, engine, contextLength, gpu, plan, ownsDevice, options.maxWaiting);
      const planOptions = { tp, pp, contextLength, maxSequences, kvCacheTokens: options.kvCacheTokens, maxBatchTokens, weights: options.shardWeights };
      if (tp * pp === 1) {
        // One device is planned too: buffer limits, tensor types and the memory budget are
        // checked before anything is allocated, and a model that does not fit is refused.
        const gpu = options.device ?? (await requestGpu(options.devices?.[0] ?? options.gpu));
        try {
          const device = { name: gpu.adapterDescription, maxBufferSize: gpu.limits.maxBufferSize, maxStorageBufferBindingSize: gpu.limits.maxStorageBufferBindingSize, memoryBudgetBytes: options.gpuMemoryBytes };
          const view = wholeModelView(config);
          viewFootprint(file, config, view, device, { geometry, maxBatchTokens, contextLength }, { who: `the model on ${device.name}`, rank: 0, shards: 1 });
          const runner = await LlamaRunner.load(gpu, file, config, view, { geometry, maxBatchTokens, onProgress, kernels: options.kernels });
          return create(runner, gpu, undefined, !options.device);
        } catch (error) {
          if (!options.device) gpu.device.destroy();
          throw error;
        }
      }
      const shardSource = workerSource(source);
      const shardGpus = Array.from({ length: tp * pp }, (_, i) => options.devices?.[i] ?? options.gpu ?? {});
      const devices = await describeDevices(shardGpus, options);
      const plan = planShards(file, config, { ...planOptions, devices });
      const group = await ShardGroup.start({
        source: shardSource,
        plan,
        geometry,
        maxBatchTokens,
        dim: config.dim,
        vocabSize: config.vocabSize,
        gpu: shardGpus,
        deadlineMs: options.shardDeadlineMs,
        kernels: options.kernels,
        onProgress,
      });
      return create(group, undefined, plan, false);
    } catch (error) {
      await bytes.close();
      throw error;
    }
  }

  /** The model's tokenizer; throws UnsupportedTokenizerError for a byte-level BPE vocabulary (not read yet). */
  get tokenizer(): LlamaTokenizer {
    if (this.tokenizerOrRefusal instanceof Error) throw this.tokenizerOrRefusal;
    return this.tokenizerOrRefusal;
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

  /**
   * Streams generated tokens. Many generations may run at once: each waits for a sequence slot
   * and KV blocks, then joins the running batch at the next step (continuous batching).
   */
  async *generate(
    prompt: string | readonly number[],
    options: GenerateOptions = {},
    result: { finish?: FinishReason } = {},
  ): AsyncGenerator<GeneratedToken> {
    const promptIds = typeof prompt === 'string' ? this.tokenize(prompt) : [...prompt];
    this.checkAlive();
    // Bad requests fail here, before they wait for a slot or cost a step.
    const { maxTokens } = checkGeneration(promptIds, options, this.contextLength, this.config.vocabSize);
    if (options.signal?.aborted) {
      result.finish = 'abort';
      return;
    }
    const sequence = await this.scheduler.admit(Math.min(this.contextLength, promptIds.length + maxTokens), options.signal);
    if (!sequence) {
      result.finish = 'abort'; // aborted while waiting for a slot: it never cost a step
      return;
    }
    try {
      yield* generateTokens(this.backend(sequence), promptIds, options, result);
    } finally {
      sequence.release();
    }
  }

  /** Generates to the end and returns ids, text and timings. */
  async complete(prompt: string | readonly number[], options: GenerateOptions = {}): Promise<Completion> {
    const promptIds = typeof prompt === 'string' ? this.tokenize(prompt) : [...prompt];
    const result: { finish?: FinishReason } = {};
    const ids: number[] = [];
    let text = '';
    const start = performance.now();
    let firstTokenAt = start;
    for await (const token of this.generate(promptIds, options, result)) {
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
  }

  /** Logits of the next token after `ids` (for tests and scoring). */
  async nextTokenLogits(ids: readonly number[]): Promise<Float32Array> {
    this.checkAlive();
    checkGeneration(ids, { maxTokens: 0 }, this.contextLength, this.config.vocabSize);
    if (ids.length > this.contextLength) {
      throw new ContextOverflowError(`${ids.length} tokens do not fit the context of ${this.contextLength}; load the model with a larger contextLength (--ctx).`);
    }
    const sequence = (await this.scheduler.admit(ids.length))!;
    try {
      return (await sequence.forward(ids, 0, true)).logits!;
    } finally {
      sequence.release();
    }
  }

  /**
   * Liveness: when idle, runs a one-token forward step and waits for it; when busy, checks that
   * the running generations completed a step recently. Either must happen within `deadlineMs`.
   */
  async health(deadlineMs = 5000): Promise<HealthReport> {
    if (this.disposed) return { ok: false, detail: 'the model was disposed' };
    if (this.lost) return { ok: false, detail: this.lost };
    if (this.scheduler.stats().running > 0) {
      const sinceLastStep = performance.now() - this.lastStepEndedAt;
      if (sinceLastStep <= deadlineMs) return { ok: true, detail: `busy; last step ${sinceLastStep.toFixed(0)} ms ago` };
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const gaveUp = new AbortController();
    const deadline = new Promise<HealthReport>((resolve) => {
      timer = setTimeout(() => {
        gaveUp.abort(); // a probe still waiting for a slot leaves the queue instead of piling up
        resolve({ ok: false, detail: `no forward step completed within ${deadlineMs} ms` });
      }, deadlineMs);
    });
    const probe = (async (): Promise<HealthReport> => {
      const start = performance.now();
      const sequence = await this.scheduler.admit(1, gaveUp.signal);
      if (!sequence) return { ok: false, detail: 'gave up waiting for a slot' };
      try {
        await sequence.forward([this.probeToken()], 0, false);
      } finally {
        sequence.release();
      }
      return { ok: true, detail: `probe step ${(performance.now() - start).toFixed(1)} ms` };
    })();
    probe.catch(() => {}); // a probe that loses the race must not become an unhandled rejection
    try {
      return await Promise.race([probe.catch((e: Error) => ({ ok: false, detail: `probe failed: ${e.message}` })), deadline]);
    } finally {
      clearTimeout(timer); // a pending timer would keep the process alive after the answer
    }
  }

  stats(): ModelStats {
    return { ...this.scheduler.stats(), lastStepMs: this.lastStepMs, devices: this.engine.deviceStats() };
  }

  /** Refuses new generations, lets running ones finish, then frees the devices. */
  dispose(): Promise<void> {
    this.disposing ??= this.disposeOnce();
    return this.disposing;
  }

  private async disposeOnce(): Promise<void> {
    this.disposed = true;
    // Nothing new starts; what is running finishes (nothing is lost), then the devices go.
    this.scheduler.close(new Error('This model was disposed; load it again to use it.'));
    await this.scheduler.idle();
    await this.engine.dispose();
    if (this.ownsDevice) this.gpu?.device.destroy();
    await this.file.source.close();
  }

  private checkAlive(): void {
    if (this.disposed) throw new Error('This model was disposed; load it again to use it.');
  }

  private backend(sequence: Sequence): GenerationBackend {
    return {
      contextLength: this.contextLength,
      vocabSize: this.config.vocabSize,
      forward: (tokens, startPos, wantLogits, topK) => sequence.forward(tokens, startPos, wantLogits, topK),
      ...this.textBackend(),
    };
  }

  // Until the byte-level BPE tokenizer lands (issue 10), a "gpt2"-vocabulary model runs from token
  // ids alone: generation stops at the metadata's EOS and its text is empty. Temporary, and only
  // for that vocabulary; every other tokenizer problem still refuses the load.
  private textBackend(): Pick<GenerationBackend, 'isEndOfGeneration' | 'createStreamDecoder'> {
    const tokenizer = this.tokenizerOrRefusal;
    if (!(tokenizer instanceof Error)) return { isEndOfGeneration: (id) => tokenizer.isEog(id), createStreamDecoder: () => tokenizer.createStreamDecoder() };
    return { isEndOfGeneration: (id) => id === this.config.eosTokenId, createStreamDecoder: () => ({ push: () => '', flush: () => '' }) };
  }

  /** The token the health probe runs (BOS). */
  private probeToken(): number {
    return this.tokenizerOrRefusal instanceof Error ? (this.config.bosTokenId ?? 0) : this.tokenizerOrRefusal.bosId;
  }

  /** The engine with the step timing (and the wedged-GPU test hook) that health checks use. */
  private timedEngine(): ForwardEngine {
    const engine = this.engine;
    return {
      geometry: engine.geometry,
      maxBatchTokens: engine.maxBatchTokens,
      deviceStats: () => engine.deviceStats(),
      dispose: () => engine.dispose(),
      forward: async (batch) => {
        if (this.lost) throw new GpuUnavailableError(this.lost);
        if (this.stepDelayMs > 0) await sleep(this.stepDelayMs);
        const start = performance.now();
        const results = await engine.forward(batch).catch((error: unknown) => {
          throw this.lost ? new GpuUnavailableError(this.lost, { cause: error }) : error;
        });
        this.lastStepEndedAt = performance.now();
        this.lastStepMs = this.lastStepEndedAt - start;
        return results;
      },
    };
  }
}

/** What a shard worker can open itself: it reads its own byte ranges, so it gets a path, URL, Blob or bytes. */
function workerSource(source: ModelSource): string | Blob | Uint8Array {
  if (source instanceof URL) return source.href;
  // Bytes would be copied into every worker; a Blob is shared (each shard reads its own slices).
  if (source instanceof Uint8Array) return new Blob([source as Uint8Array<ArrayBuffer>]);
  if (typeof source === 'string' || source instanceof Blob) return source;
  throw new InvalidOptionError('A sharded model needs a path, URL, Blob/File or bytes as its source (each shard worker opens it itself), not an open ByteSource.');
}

/** The file's tokenizer, or the refusal of a byte-level BPE ("gpt2") vocabulary, which the model keeps (see textBackend). */
function readTokenizer(file: GGUFFile): LlamaTokenizer | UnsupportedTokenizerError {
  try {
    return LlamaTokenizer.fromGGUFMetadata(file.metadata);
  } catch (error) {
    if (error instanceof UnsupportedTokenizerError && error.tokenizerModel === 'gpt2') return error;
    throw error;
  }
}

/** The planner's view of each shard's device, with a warning when several shards share one adapter. */
async function describeDevices(shardGpus: GpuOptions[], options: LoadOptions): Promise<DeviceDescription[]> {
  const devices = await describeShardDevices(shardGpus, options.gpuMemoryBytes);
  if (shardGpus.length > 1 && distinctAdapters(shardGpus) === 1) {
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
