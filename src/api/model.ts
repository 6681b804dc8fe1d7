// The user-facing model: a tokenizer and a forward engine — one runner on one device, or a
// group of shard workers (tensor and/or pipeline parallel) behind the same interface.

import { GpuUnavailableError, requestGpu, type GpuContext, type GpuOptions } from '../gpu/device.ts';
import type { LlamaConfig } from '../model/config.ts';
import type { ModelInput } from '../model/folder.ts';
import type { GGUFFile } from '../model/gguf.ts';
import { openModel, shardableSource, type ShardableSource } from '../model/open-model.ts';
import type { LlamaTokenizer, TokenizerSemantics } from '../model/tokenizer.ts';
import { describeShardDevices, distinctAdapters } from '../sharding/devices.ts';
import { chooseShardSplit } from '../sharding/auto.ts';
import type { ShardGroup } from '../sharding/group.ts';
import { SelfHealingShardGroup, type RecoveryStats } from '../sharding/self-healing-group.ts';
import { planShards, type DeviceDescription, type ShardPlan } from '../sharding/plan.ts';
import { NextStepHang, type Fault, type FaultInjector } from '../engine/faults.ts';
import type { DeviceStats, ForwardEngine } from '../engine/forward-engine.ts';
import { checkGeneration, generateTokens, type FinishReason, type GeneratedToken, type GenerateOptions, type GenerationBackend, type GenerationResult, type Speculation } from '../engine/generate.ts';
import { viewFootprint } from '../engine/footprint.ts';
import { kvGeometry } from '../engine/kv-cache.ts';
import type { KernelChoice } from '../engine/llama.ts';
import { InvalidOptionError, isGreedy, Sampler, type ResolvedSampling } from '../engine/sampler.ts';
import { DraftModelDrafter, PromptLookupDrafter, type Drafter, type SpeculationCounts } from '../engine/speculative.ts';
import { ContextOverflowError, LlamaRunner } from '../engine/runner.ts';
import { Scheduler, type SchedulerStats, type Sequence } from '../engine/scheduler.ts';
import { wholeModelView } from '../engine/shard-view.ts';
import { MATMUL_VARIANTS } from '../shaders/matmul.ts';
import { CHAT_TEMPLATE_KEY, ChatTemplate, MissingChatTemplateError, type ChatMessage, type ChatRenderOptions } from './chat.ts';

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
  /**
   * 'auto' (instead of tp / pp): once the header is read, time an all-reduce and a decode step on
   * `devices` and take the fastest tp × pp split over all of them that fits (sharding/auto.ts);
   * `onStatus` hears what was measured and why the split won. One device: no split.
   */
  split?: 'auto';
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
  /** Called with progress notes of the load (e.g. what `split: 'auto'` measures, and its choice). */
  onStatus?: (message: string) => void;
  /** Called with what the model does on its own, e.g. a shard group reloading after a failure. */
  onEvent?: (message: string) => void;
  /** Tests only: a FaultInjector through which device losses, worker crashes and hangs can be injected. */
  faults?: FaultInjector;
  /** Speculative decoding: a draft model or prompt lookup proposes tokens, this model verifies them. */
  speculative?: SpeculativeOptions;
  /**
   * A Hugging Face folder's tokenizer: 'llama.cpp' (default: the ids of the model's GGUF
   * conversion) or 'huggingface' (Hugging Face's tokenizers where they differ: NFC, added tokens in text).
   */
  tokenizerSemantics?: TokenizerSemantics;
  /** Sent with every request of a URL source (e.g. `{ Authorization: 'Bearer hf_…' }` for a gated Hugging Face model). */
  headers?: Record<string, string>;
}

/**
 * Speculative decoding (llama.cpp's -md/--draft-max/--draft-min/--draft-p-min, vLLM's
 * speculative_model/num_speculative_tokens): the output is the target model's own, greedy token
 * for token and sampled in distribution, in fewer target steps. Give a draft model or `lookupNgram`.
 */
export interface SpeculativeOptions {
  /**
   * A smaller model with the same vocabulary that proposes tokens: a source, loaded on its own
   * device (`draftLoadOptions`), or a loaded Model (not disposed with this one).
   */
  draftModel?: ModelInput | Model;
  /** How to load `draftModel` when it is a source (default: this model's gpu and contextLength). */
  draftLoadOptions?: LoadOptions;
  /** Prompt lookup instead of a draft model: propose what followed the latest match of the last n tokens (prompt + output). */
  lookupNgram?: number;
  /** Most tokens drafted per step. Default 16 (llama.cpp's). */
  draftMax?: number;
  /** Fewer drafted tokens than this are not verified (a plain step runs instead). Default 0. */
  draftMin?: number;
  /** The draft model stops drafting when its best token's probability is below this. Default 0.75 (llama.cpp's). */
  draftPMin?: number;
}

/** Speculative options checked, with every default filled in. */
interface SpeculationSettings {
  lookupNgram: number;
  draftMax: number;
  draftMin: number;
  draftPMin: number;
}

/** The settings and the loaded draft model, if any. */
interface ResolvedSpeculation extends SpeculationSettings {
  draft?: Model;
  ownsDraft: boolean;
}

/** `model.chat` options: generation options, template variables, and an optional template of one's own. */
export interface ChatOptions extends GenerateOptions, ChatRenderOptions {
  /** Jinja source to use instead of the model's `tokenizer.chat_template` (the CLI's --chat-template FILE). */
  chatTemplate?: string;
}

export interface Completion {
  promptIds: number[];
  ids: number[];
  text: string;
  finishReason: FinishReason;
  timings: { prefillMs: number; decodeMs: number; promptTokens: number; generatedTokens: number };
  /** With speculative decoding: tokens drafted and accepted, and target steps taken (prompt included). */
  speculative?: SpeculationCounts;
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
  /** Speculative decoding totals over finished generations (zeros without it). */
  speculative: SpeculationCounts;
  /** A sharded model's group: its state and its recoveries from failed shards. */
  group?: RecoveryStats;
}

export class Model {
  private disposed = false;
  private disposing?: Promise<void>;
  /** Set when a one-device model's GPU device is lost: every step then fails with GpuUnavailableError. */
  private lost?: string;
  private lastStepMs = 0;
  private lastStepEndedAt = 0;
  private readonly scheduler: Scheduler;
  private speculation?: ResolvedSpeculation;
  private readonly speculationTotals: SpeculationCounts = { drafted: 0, accepted: 0, targetSteps: 0 };
  /** An injected `hang` on one device (tests). */
  private readonly hang = new NextStepHang();

  private constructor(
    readonly config: LlamaConfig,
    readonly file: GGUFFile,
    readonly tokenizer: LlamaTokenizer,
    private readonly engine: ForwardEngine,
    /** Positions one sequence may hold (prompt + generated). */
    readonly contextLength: number,
    /** The device of a one-device model (undefined when sharded: each worker has its own). */
    readonly gpu: GpuContext | undefined,
    /** The shard plan of a sharded model. */
    readonly plan: ShardPlan | undefined,
    private readonly ownsDevice: boolean,
    maxWaiting: number | undefined,
    faults: FaultInjector | undefined,
  ) {
    this.scheduler = new Scheduler(this.timedEngine(), { maxWaiting });
    // A shard group connects the injector to its workers itself; one device takes faults here.
    if (!(engine instanceof SelfHealingShardGroup)) faults?.connect((fault) => this.injectOneDeviceFault(fault));
    void gpu?.device.lost.then((info) => {
      if (!this.disposed) this.lost = `the GPU device was lost (${info.reason}): ${info.message || 'no detail'}; load the model again`;
    });
  }

  static async load(source: ModelInput, options: LoadOptions = {}): Promise<Model> {
    let tp = options.tp ?? 1;
    let pp = options.pp ?? 1;
    if (options.split !== undefined && options.split !== 'auto') throw new InvalidOptionError(`split must be 'auto' or absent; got ${JSON.stringify(options.split)}.`);
    if (options.split === 'auto' && (options.tp !== undefined || options.pp !== undefined)) {
      throw new InvalidOptionError(`split: 'auto' chooses tp and pp itself; pass either split: 'auto' or tp / pp, not both.`);
    }
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
    const opened = await openModel(source, { tokenizerSemantics: options.tokenizerSemantics, headers: options.headers });
    const { file, config } = opened;
    try {
      const tokenizer = opened.tokenizer();
      const contextLength = options.contextLength ?? Math.min(config.contextLength, 4096);
      const maxSequences = options.maxSequences ?? 1;
      // Decode tokens (one per sequence) go first in a step; the budget must leave prompts room.
      if (options.maxBatchTokens !== undefined && maxSequences > 1 && options.maxBatchTokens <= maxSequences) {
        throw new InvalidOptionError(`maxBatchTokens (${options.maxBatchTokens}) must exceed maxSequences (${maxSequences}), or waiting prompts never get into a step.`);
      }
      const maxBatchTokens = Math.min(options.maxBatchTokens ?? Math.max(512, 2 * maxSequences), contextLength * maxSequences);
      const speculative = checkSpeculativeOptions(options.speculative);
      const samplesPerSequence = speculative ? 1 + speculative.draftMax : 1;
      if (speculative && speculative.draftMax + 1 > (options.maxBatchTokens ?? Infinity)) {
        throw new InvalidOptionError(`speculative.draftMax (${speculative.draftMax}) + 1 must fit maxBatchTokens (${options.maxBatchTokens}): a verification step runs them together.`);
      }
      const geometry = kvGeometry(contextLength, options.maxSequences ?? 1, options.kvCacheTokens, samplesPerSequence);
      const onProgress = (bytesLoaded: number, bytesTotal: number) => options.onProgress?.({ bytesLoaded, bytesTotal });
      const create = async (engine: ForwardEngine, gpu: GpuContext | undefined, plan: ShardPlan | undefined, ownsDevice: boolean) => {
        const model = new Model(config, file, tokenizer, engine, contextLength, gpu, plan, ownsDevice, options.maxWaiting, options.faults);
        if (speculative) {
          try {
            model.speculation = await loadSpeculation(model, speculative, options);
          } catch (error) {
            await model.dispose();
            throw error;
          }
        }
        return model;
      };
      if (options.split === 'auto') ({ tp, pp } = await autoSplit(file, config, source, options, { contextLength, maxBatchTokens, maxSequences }));
      const planOptions = { tp, pp, contextLength, maxSequences, kvCacheTokens: options.kvCacheTokens, samplesPerSequence, maxBatchTokens, weights: options.shardWeights };
      if (tp * pp === 1) {
        // One device is planned too: buffer limits, tensor types and the memory budget are
        // checked before anything is allocated, and a model that does not fit is refused.
        const gpu = options.device ?? (await requestGpu(options.devices?.[0] ?? options.gpu));
        try {
          const device = { name: gpu.adapterDescription, maxBufferSize: gpu.limits.maxBufferSize, maxStorageBufferBindingSize: gpu.limits.maxStorageBufferBindingSize, memoryBudgetBytes: options.gpuMemoryBytes };
          const view = wholeModelView(config);
          viewFootprint(file, config, view, device, { geometry, maxBatchTokens, contextLength }, { who: `the model on ${device.name}`, rank: 0, shards: 1 });
          const runner = await LlamaRunner.load(gpu, file, config, view, { geometry, maxBatchTokens, onProgress, kernels: options.kernels });
          return await create(runner, gpu, undefined, !options.device);
        } catch (error) {
          if (!options.device) gpu.device.destroy();
          throw error;
        }
      }
      const shardSource = workerSource(source);
      const shardGpus = Array.from({ length: tp * pp }, (_, i) => options.devices?.[i] ?? options.gpu ?? {});
      const devices = await describeDevices(shardGpus, options);
      const plan = planShards(file, config, { ...planOptions, devices });
      const group = await SelfHealingShardGroup.start({
        source: shardSource,
        headers: options.headers,
        plan,
        geometry,
        maxBatchTokens,
        dim: config.dim,
        vocabSize: config.vocabSize,
        gpu: shardGpus,
        deadlineMs: options.shardDeadlineMs,
        kernels: options.kernels,
        onProgress,
      }, { log: options.onEvent, faults: options.faults });
      return await create(group, undefined, plan, false);
    } catch (error) {
      await file.source.close();
      throw error;
    }
  }

  /** The shard group serving a sharded model now (per-shard load reports). */
  get shards(): ShardGroup | undefined {
    return this.engine instanceof SelfHealingShardGroup ? this.engine.current : undefined;
  }

  /**
   * Can the model take requests now? Answers at once, without a forward step: false once
   * disposed, after a one-device model lost its GPU, and while a shard group reloads after a
   * failed shard (or after it could not be reloaded).
   */
  readiness(): HealthReport {
    if (this.disposed) return { ok: false, detail: 'the model was disposed' };
    if (this.lost) return { ok: false, detail: this.lost };
    const problem = this.engine instanceof SelfHealingShardGroup ? this.engine.problem : undefined;
    return problem ? { ok: false, detail: problem } : { ok: true, detail: 'ready' };
  }

  /**
   * Token ids of `text`, with BOS prepended as llama.cpp does (unless addBos is false). With
   * parseSpecial, special-token texts such as "<|im_start|>" become those tokens.
   */
  tokenize(text: string, options: { addBos?: boolean; parseSpecial?: boolean } = {}): number[] {
    return this.tokenizer.encode(text, options);
  }

  /** Does the model file carry a chat template (so `chat` needs no `chatTemplate` option)? It is parsed on first use. */
  get hasChatTemplate(): boolean {
    const source = this.file.metadata.get(CHAT_TEMPLATE_KEY);
    return typeof source === 'string' && source.trim() !== '';
  }

  /**
   * The prompt ids for the assistant's next turn after `messages`: rendered with the model's chat
   * template (or `options.chatTemplate`), special tokens parsed, BOS as the vocabulary wants it.
   * No template at all is a `MissingChatTemplateError`.
   */
  chatPromptIds(messages: readonly ChatMessage[], options: ChatOptions = {}): number[] {
    const template = options.chatTemplate !== undefined ? ChatTemplate.fromSource(options.chatTemplate, this.tokenizer) : this.modelChatTemplate();
    if (!template) throw new MissingChatTemplateError(this.file.source.name);
    return template.tokenize(messages, options);
  }

  /** Streams the assistant's answer to `messages`: `generate` on `chatPromptIds(messages)`. */
  async *chat(messages: readonly ChatMessage[], options: ChatOptions = {}, result: GenerationResult = {}): AsyncGenerator<GeneratedToken> {
    const { chatTemplate: _template, variables: _variables, addGenerationPrompt: _prompt, ...generateOptions } = options;
    yield* this.generate(this.chatPromptIds(messages, options), generateOptions, result);
  }

  private chatTemplateCache?: { template: ChatTemplate | undefined };
  private modelChatTemplate(): ChatTemplate | undefined {
    this.chatTemplateCache ??= { template: ChatTemplate.fromMetadata(this.file.metadata, this.tokenizer) };
    return this.chatTemplateCache.template;
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
    result: GenerationResult = {},
  ): AsyncGenerator<GeneratedToken> {
    const promptIds = typeof prompt === 'string' ? this.tokenize(prompt) : [...prompt];
    this.checkAlive();
    // Bad requests fail here, before they wait for a slot or cost a step.
    const { maxTokens, sampling } = checkGeneration(promptIds, options, this.contextLength, this.config.vocabSize);
    if (options.signal?.aborted) {
      result.finish = 'abort';
      return;
    }
    const sequence = await this.scheduler.admit(Math.min(this.contextLength, promptIds.length + maxTokens), options.signal);
    if (!sequence) {
      result.finish = 'abort'; // aborted while waiting for a slot: it never cost a step
      return;
    }
    let speculation: Speculation | undefined;
    try {
      const positions = Math.min(this.contextLength, promptIds.length + maxTokens);
      speculation = options.speculative === false ? undefined : await this.speculationFor(sequence, positions, sampling, options.signal);
      yield* generateTokens(this.backend(sequence, speculation), promptIds, options, result);
    } finally {
      speculation?.drafter.release();
      sequence.release();
      if (result.speculative) for (const key of ['drafted', 'accepted', 'targetSteps'] as const) this.speculationTotals[key] += result.speculative[key];
    }
  }

  /** Generates to the end and returns ids, text and timings. */
  async complete(prompt: string | readonly number[], options: GenerateOptions = {}): Promise<Completion> {
    const promptIds = typeof prompt === 'string' ? this.tokenize(prompt) : [...prompt];
    const result: GenerationResult = {};
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
      ...(result.speculative && { speculative: result.speculative }),
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
    const ready = this.readiness();
    if (!ready.ok) return ready;
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
        await sequence.forward([this.tokenizer.bosId], 0, false);
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
    const group = this.engine instanceof SelfHealingShardGroup ? { group: this.engine.recoveryStats() } : {};
    return { ...this.scheduler.stats(), lastStepMs: this.lastStepMs, devices: this.engine.deviceStats(), speculative: { ...this.speculationTotals }, ...group };
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
    if (this.speculation?.ownsDraft) await this.speculation.draft?.dispose();
    await this.engine.dispose();
    if (this.ownsDevice) this.gpu?.device.destroy();
    await this.file.source.close();
  }

  private checkAlive(): void {
    if (this.disposed) throw new Error('This model was disposed; load it again to use it.');
  }

  /** A sequence of this model for another model's drafter (the target asks its draft model). */
  private async admitDraftSequence(positions: number, signal?: AbortSignal): Promise<Sequence | undefined> {
    this.checkAlive();
    return this.scheduler.admit(positions, signal);
  }

  /** How this generation drafts and verifies, if the model speculates. */
  private async speculationFor(sequence: Sequence, positions: number, sampling: ResolvedSampling, signal?: AbortSignal): Promise<Speculation | undefined> {
    const spec = this.speculation;
    if (!spec) return undefined;
    let drafter: Drafter;
    if (spec.draft) {
      const draftSequence = await spec.draft.admitDraftSequence(positions, signal);
      if (!draftSequence) return undefined;
      // A sampling target drafts by sampling the draft's own distribution (any q is exact; a
      // close one is accepted more often); a greedy target drafts the draft's argmax.
      const sampler = isGreedy(sampling) ? undefined : new Sampler({ ...sampling, seed: (sampling.seed + 0x9e3779b9) % 2 ** 32 });
      drafter = new DraftModelDrafter(draftSequence, { pMin: spec.draftPMin, minTokens: spec.draftMin, sampler });
    } else {
      drafter = new PromptLookupDrafter(spec.lookupNgram);
    }
    return {
      drafter,
      maxDraft: spec.draftMax,
      forwardAll: (tokens, startPos, wantLogits) => sequence.forwardAll(tokens, startPos, wantLogits),
    };
  }

  private backend(sequence: Sequence, speculation?: Speculation): GenerationBackend {
    return {
      speculation,
      contextLength: this.contextLength,
      vocabSize: this.config.vocabSize,
      forward: (tokens, startPos, wantLogits, topK) => sequence.forward(tokens, startPos, wantLogits, topK),
      isEndOfGeneration: (id) => this.tokenizer.isEog(id),
      createStreamDecoder: () => this.tokenizer.createStreamDecoder(),
    };
  }

  /** Test-only (FaultInjector) on one device: there is no worker, so only its device or its step can fail. */
  private async injectOneDeviceFault({ shard, kind, ms }: Fault): Promise<void> {
    if (shard !== 0) throw new RangeError(`No shard ${shard}: a one-device model is shard 0.`);
    if (kind === 'worker-crash') throw new InvalidOptionError('A one-device model runs on this thread: it has no worker to crash.');
    if (kind === 'hang') this.hang.arm(ms);
    else this.gpu?.device.destroy();
  }

  /** The engine with the step timing that health checks use (and an injected hang, in tests). */
  private timedEngine(): ForwardEngine {
    const engine = this.engine;
    return {
      geometry: engine.geometry,
      maxBatchTokens: engine.maxBatchTokens,
      deviceStats: () => engine.deviceStats(),
      dispose: () => engine.dispose(),
      forward: async (batch) => {
        if (this.lost) throw new GpuUnavailableError(this.lost);
        await this.hang.wait();
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

/** Checks the speculative options (before anything loads); undefined when speculation is off. */
function checkSpeculativeOptions(options: SpeculativeOptions | undefined): SpeculationSettings | undefined {
  if (!options) return undefined;
  const { draftModel, lookupNgram } = options;
  if ((draftModel === undefined) === (lookupNgram === undefined)) {
    throw new InvalidOptionError('speculative needs exactly one of draftModel (a smaller model of the same vocabulary) and lookupNgram (prompt lookup).');
  }
  const resolved = { lookupNgram: lookupNgram ?? 0, draftMax: options.draftMax ?? 16, draftMin: options.draftMin ?? 0, draftPMin: options.draftPMin ?? 0.75 };
  const integer = (name: string, value: number, least: number) => {
    if (!Number.isInteger(value) || value < least) throw new InvalidOptionError(`speculative.${name} must be an integer ≥ ${least}; got ${value}.`);
  };
  if (lookupNgram !== undefined) integer('lookupNgram', lookupNgram, 1);
  integer('draftMax', resolved.draftMax, 1);
  integer('draftMin', resolved.draftMin, 0);
  if (resolved.draftMin > resolved.draftMax) throw new InvalidOptionError(`speculative.draftMin (${resolved.draftMin}) must not exceed draftMax (${resolved.draftMax}).`);
  if (!(resolved.draftPMin >= 0 && resolved.draftPMin <= 1)) throw new InvalidOptionError(`speculative.draftPMin must be in [0, 1]; got ${resolved.draftPMin}.`);
  return resolved;
}

/** Loads (or takes) the draft model and checks that it speaks the target's vocabulary. */
async function loadSpeculation(target: Model, spec: SpeculationSettings, options: LoadOptions): Promise<ResolvedSpeculation> {
  const source = options.speculative!.draftModel;
  if (source === undefined) return { ...spec, ownsDraft: false };
  const ownsDraft = !(source instanceof Model);
  const draft = source instanceof Model ? source : await loadModel(source, { gpu: options.gpu, contextLength: target.contextLength, maxSequences: options.maxSequences, ...options.speculative!.draftLoadOptions });
  try {
    checkSameVocabulary(target, draft);
    if (draft.contextLength < target.contextLength) {
      throw new InvalidOptionError(`the draft model's context (${draft.contextLength}) is shorter than the target's (${target.contextLength}); load it with contextLength ≥ ${target.contextLength}.`);
    }
  } catch (error) {
    if (ownsDraft) await draft.dispose();
    throw error;
  }
  return { ...spec, draft, ownsDraft };
}

/** A draft must number tokens as the target does, or its proposals mean other words. */
function checkSameVocabulary(target: Model, draft: Model): void {
  const tokensOf = (model: Model) => (model.file.metadata.get('tokenizer.ggml.tokens') as string[] | undefined) ?? [];
  const [a, b] = [tokensOf(target), tokensOf(draft)];
  const n = Math.max(a.length, b.length);
  let at = 0;
  while (at < n && a[at] === b[at]) at++;
  if (at === n) return;
  throw new InvalidOptionError(
    `the draft model's vocabulary differs from the target's: ${b.length} tokens against ${a.length}; ` +
      `the first difference is token ${at}, ${JSON.stringify(b[at] ?? '(none)')} in the draft and ${JSON.stringify(a[at] ?? '(none)')} in the target` +
      '. Use a draft model of the same family and tokenizer (e.g. a smaller or more quantized file of the same model).',
  );
}

/** What a shard worker can open itself: it reads its own byte ranges, so it gets a path, URL, Blob, bytes or Files. */
function workerSource(source: ModelInput): ShardableSource {
  const shardable = shardableSource(source);
  if (shardable !== undefined) return shardable;
  throw new InvalidOptionError('A sharded model needs a path, URL, Blob/File(s) or bytes as its source (each shard worker opens it itself), not an open ByteSource or ModelFolder.');
}

/** split: 'auto' — the fastest split over `options.devices` that fits, from measurements on them. */
async function autoSplit(
  file: GGUFFile,
  config: LlamaConfig,
  source: ModelInput,
  options: LoadOptions,
  sizes: { contextLength: number; maxBatchTokens: number; maxSequences: number },
): Promise<{ tp: number; pp: number }> {
  const devices = options.devices ?? [];
  if (devices.length < 2) return { tp: 1, pp: 1 };
  const choice = await chooseShardSplit(file, config, {
    ...sizes,
    source: workerSource(source),
    deviceCount: devices.length,
    devices,
    kvCacheTokens: options.kvCacheTokens,
    gpuMemoryBytes: options.gpuMemoryBytes,
    shardWeights: options.shardWeights,
    onStatus: options.onStatus,
  });
  options.onStatus?.(`${choice.reason}\npredicted ${choice.predictedTokensPerSecond.toFixed(1)} tokens/s (tp / pp override this choice)`);
  return { tp: choice.tp, pp: choice.pp };
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

/**
 * Loads a model onto one WebGPU device, or split over tp × pp devices: a GGUF file (path, URL,
 * Blob/File, bytes) or a Hugging Face folder (a directory path, a base URL ending in '/', or the
 * Files of a picked or dropped folder) with config.json, tokenizer.json and safetensors weights
 * (F32/F16/BF16, AWQ or GPTQ 4-bit).
 */
export function loadModel(source: ModelInput, options: LoadOptions = {}): Promise<Model> {
  return Model.load(source, options);
}
