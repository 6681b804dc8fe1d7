// Continuous batching. Every running sequence asks for its next forward step on its own (the
// generate loop does not know about batching); the scheduler gathers what all sequences asked
// for into one batched step — decode tokens first, then prompt chunks up to the token budget —
// runs it, and hands each sequence its result. A sequence joins at the next step after it is
// admitted and leaves when it ends; admission waits for a free slot and enough free KV blocks.

import type { ForwardEngine } from './forward-engine.ts';
import { BlockAllocator } from './kv-cache.ts';
import { ContextOverflowError, type StepBatch, type StepResult } from './runner.ts';

/** Too many requests are already waiting for the model. */
export class QueueFullError extends Error {
  override name = 'QueueFullError';
  constructor(
    message: string,
    /** A hint for clients: when a retry may succeed. */
    readonly retryAfterSeconds: number,
  ) {
    super(message);
  }
}

/** A request for one forward step of one sequence (a prompt, or one generated token). */
interface StepRequest {
  sequence: Sequence;
  tokens: readonly number[];
  startPos: number;
  wantLogits: boolean;
  /** Candidates to read back instead of logits (see StepBatch.topK). */
  topK: number;
  /**
   * Sample every token, not only the last (speculative decoding verifies each drafted token).
   * Such a request runs in one step, never split: its rows must all be in the same batch.
   */
  sampleAll: boolean;
  /** Tokens already run (a long prompt is split over several steps). */
  done: number;
  /** One result per sampled token: the last only, or all with sampleAll. */
  resolve(results: StepResult[]): void;
  reject(error: unknown): void;
}

export interface SchedulerStats {
  /** Sequences holding a slot. */
  running: number;
  /** Sequences waiting for a slot and KV blocks. */
  waiting: number;
  kvBlocksUsed: number;
  kvBlocksFree: number;
  steps: number;
  /** Sequences and tokens in the last step. */
  lastBatchSequences: number;
  lastBatchTokens: number;
  /** How many steps ran with 1, 2, 3, ... sequences (index = sequences in the step). */
  batchSequencesHistogram: number[];
}

/** One admitted sequence: a slot and KV blocks, and a way to ask for forward steps. */
export class Sequence {
  private released = false;

  constructor(
    private readonly scheduler: Scheduler,
    readonly allocation: { slot: number; blocks: number[] },
  ) {}

  get slot(): number {
    return this.allocation.slot;
  }

  /** Runs `tokens` at positions startPos... of this sequence in the next batched step(s); returns the last token's result. */
  async forward(tokens: readonly number[], startPos: number, wantLogits: boolean, topK = 0): Promise<StepResult> {
    const results = await this.run(tokens, startPos, wantLogits, topK, false);
    return results[0]!;
  }

  /**
   * Runs `tokens` in one step and returns every token's result (the next-token prediction at
   * each position), as speculative decoding's verification needs. At most
   * `samplesPerSequence` tokens (see KvGeometry).
   */
  forwardAll(tokens: readonly number[], startPos: number, wantLogits: boolean): Promise<StepResult[]> {
    const most = this.scheduler.samplesPerSequence;
    if (tokens.length > most) return Promise.reject(new RangeError(`a step samples at most ${most} tokens of one sequence; got ${tokens.length}`));
    return this.run(tokens, startPos, wantLogits, 0, true);
  }

  private run(tokens: readonly number[], startPos: number, wantLogits: boolean, topK: number, sampleAll: boolean): Promise<StepResult[]> {
    if (this.released) return Promise.reject(new Error('this sequence has ended'));
    const capacity = this.allocation.blocks.length * this.scheduler.blockSize;
    if (startPos + tokens.length > capacity) {
      return Promise.reject(new ContextOverflowError(`positions up to ${startPos + tokens.length} do not fit the ${capacity} this sequence reserved; load the model with a larger contextLength (--ctx).`));
    }
    return this.scheduler.enqueue(this, tokens, startPos, wantLogits, topK, sampleAll);
  }

  /** Gives the slot and blocks back. Safe to call twice. */
  release(): void {
    if (this.released) return;
    this.released = true;
    this.scheduler.release(this);
  }
}

export interface SchedulerOptions {
  /** Most sequences waiting for admission before new ones are refused with QueueFullError. Default unlimited. */
  maxWaiting?: number;
}

export class Scheduler {
  private readonly allocator: BlockAllocator;
  private readonly pending: StepRequest[] = [];
  private readonly admissions: Array<{ positions: number; admit: (s: Sequence | undefined) => void; reject: (e: unknown) => void }> = [];
  private readonly active = new Set<Sequence>();
  private looping = false;
  private closed?: Error;
  /** When each running sequence last asked for a step (a consumer that stopped pulling stops asking). */
  private readonly lastAsked = new Map<Sequence, number>();
  private wakeGather?: () => void;
  private readonly counters = { steps: 0, lastBatchSequences: 0, lastBatchTokens: 0, histogram: [] as number[] };

  constructor(
    private readonly engine: ForwardEngine,
    private readonly options: SchedulerOptions = {},
  ) {
    this.allocator = new BlockAllocator(engine.geometry);
  }

  /**
   * Reserves a slot and KV blocks for up to `positions` positions; waits while the pool is full.
   * Resolves undefined if `signal` aborts while waiting.
   */
  get blockSize(): number {
    return this.engine.geometry.blockSize;
  }

  get samplesPerSequence(): number {
    return this.engine.geometry.samplesPerSequence;
  }

  admit(positions: number, signal?: AbortSignal): Promise<Sequence | undefined> {
    if (this.closed) return Promise.reject(this.closed);
    const capacity = this.engine.geometry.blocksPerSequence * this.engine.geometry.blockSize;
    const wanted = Math.min(Math.max(1, positions), capacity);
    if (this.admissions.length === 0) {
      const allocation = this.allocator.allocate(wanted);
      if (allocation) return Promise.resolve(this.start(allocation));
    }
    const maxWaiting = this.options.maxWaiting ?? Infinity;
    if (this.admissions.length >= maxWaiting) {
      return Promise.reject(new QueueFullError(`${this.admissions.length} requests are already waiting for the model; try again shortly.`, 1));
    }
    return new Promise((admit, reject) => {
      const waiting = { positions: wanted, admit, reject };
      this.admissions.push(waiting);
      signal?.addEventListener(
        'abort',
        () => {
          const at = this.admissions.indexOf(waiting);
          if (at >= 0) this.admissions.splice(at, 1);
          admit(undefined);
        },
        { once: true },
      );
    });
  }

  stats(): SchedulerStats {
    return {
      running: this.active.size,
      waiting: this.admissions.length,
      kvBlocksUsed: this.allocator.blocksUsed,
      kvBlocksFree: this.allocator.blocksFree,
      steps: this.counters.steps,
      lastBatchSequences: this.counters.lastBatchSequences,
      lastBatchTokens: this.counters.lastBatchTokens,
      batchSequencesHistogram: [...this.counters.histogram].map((n) => n ?? 0),
    };
  }

  /** Refuses new sequences and those still waiting for admission (the model is going away); running ones go on. */
  close(error: Error): void {
    this.closed = error;
    for (const waiting of this.admissions.splice(0)) waiting.reject(error);
  }

  /**
   * Resolves once every running sequence has ended and no step is in flight — or once the engine
   * has had nothing to do for `abandonedAfterMs`: a sequence whose consumer dropped its iterator
   * without ending it never asks again, and must not hold up a shutdown forever.
   */
  async idle(abandonedAfterMs = 200): Promise<void> {
    while (this.active.size > 0 || this.looping) {
      const quiet = !this.looping && this.pending.length === 0;
      const woke = await new Promise<boolean>((resolve) => {
        this.idleWaiters.push(() => resolve(true));
        if (quiet) setTimeout(() => resolve(false), abandonedAfterMs);
      });
      if (!woke && !this.looping && this.pending.length === 0) return;
    }
  }

  private readonly idleWaiters: Array<() => void> = [];

  /** Wakes idle() waiters: on every release and every finished step, so they can re-check. */
  private notifyIdle(): void {
    for (const wake of this.idleWaiters.splice(0)) wake();
  }

  enqueue(sequence: Sequence, tokens: readonly number[], startPos: number, wantLogits: boolean, topK: number, sampleAll: boolean): Promise<StepResult[]> {
    if (tokens.length === 0) return Promise.reject(new RangeError('a forward step needs at least one token'));
    if (sampleAll && tokens.length > this.engine.maxBatchTokens) {
      return Promise.reject(new RangeError(`a step takes at most ${this.engine.maxBatchTokens} tokens; got ${tokens.length} to sample together`));
    }
    this.lastAsked.set(sequence, performance.now());
    return new Promise((resolve, reject) => {
      this.pending.push({ sequence, tokens, startPos, wantLogits, topK, sampleAll, done: 0, resolve, reject });
      this.wakeGather?.();
      if (!this.looping) void this.loop();
    });
  }

  release(sequence: Sequence): void {
    if (!this.active.delete(sequence)) return;
    this.lastAsked.delete(sequence);
    this.allocator.release(sequence.allocation);
    this.notifyIdle();
    // Admit waiting sequences in order while the pool has room for the first of them.
    while (this.admissions.length > 0) {
      const allocation = this.allocator.allocate(this.admissions[0]!.positions);
      if (!allocation) break;
      this.admissions.shift()!.admit(this.start(allocation));
    }
  }

  private start(allocation: { slot: number; blocks: number[] }): Sequence {
    const sequence = new Sequence(this, allocation);
    this.active.add(sequence);
    return sequence;
  }

  private async loop(): Promise<void> {
    this.looping = true;
    try {
      while (this.pending.length > 0) {
        await this.gather();
        const { batch, completing } = this.takeBatch();
        let results: StepResult[];
        try {
          results = await this.engine.forward(batch);
        } catch (error) {
          // Everything in the failed step fails with it, including prompts only partly run.
          const partlyRun = this.pending.filter((r) => r.done > 0);
          for (const request of partlyRun) this.pending.splice(this.pending.indexOf(request), 1);
          for (const request of [...completing, ...partlyRun]) request.reject(error);
          continue;
        }
        this.counters.steps++;
        let row = 0;
        for (const request of completing) {
          const rows = request.sampleAll ? request.tokens.length : 1;
          request.resolve(results.slice(row, row + rows));
          row += rows;
        }
        this.notifyIdle();
      }
    } finally {
      this.looping = false;
      this.notifyIdle();
    }
  }

  /**
   * Waits (briefly) until every running sequence has asked for its next step, so they share one
   * step instead of taking turns. A sequence whose consumer is slow is not waited for long.
   */
  private async gather(): Promise<void> {
    // Only sequences that asked recently are waited for: one whose consumer stopped pulling is not.
    const now = performance.now();
    let expected = 0;
    for (const sequence of this.active) if (now - (this.lastAsked.get(sequence) ?? now) < 100) expected++;
    const everyoneAsked = () => new Set(this.pending.map((r) => r.sequence)).size >= expected;
    if (everyoneAsked()) return;
    const deadline = performance.now() + 2;
    while (!everyoneAsked() && performance.now() < deadline) {
      await new Promise<void>((resolve) => {
        this.wakeGather = resolve;
        setTimeout(resolve, 1);
      });
      this.wakeGather = undefined;
    }
  }

  /**
   * Decode tokens first (one per sequence), then speculative verifications (whole, never split),
   * then prompt chunks, up to the step's token budget.
   */
  private takeBatch(): { batch: StepBatch; completing: StepRequest[] } {
    const budget = this.engine.maxBatchTokens;
    const decodes = this.pending.filter((r) => remaining(r) === 1);
    const verifications = this.pending.filter((r) => remaining(r) > 1 && r.sampleAll);
    const prompts = this.pending.filter((r) => remaining(r) > 1 && !r.sampleAll);
    const ordered = [...decodes, ...verifications, ...prompts];
    const batch: StepBatch = { tokens: [], positions: [], slots: [], sampleRows: [], blockTable: this.allocator.table, wantLogits: false, topK: 0 };
    const completing: StepRequest[] = [];
    for (const request of ordered) {
      const room = budget - batch.tokens.length;
      if (room <= 0) break;
      if (request.sampleAll && remaining(request) > room) continue; // whole, in a later step
      const n = Math.min(room, remaining(request));
      for (let i = 0; i < n; i++) {
        batch.tokens.push(request.tokens[request.done + i]!);
        batch.positions.push(request.startPos + request.done + i);
        batch.slots.push(request.sequence.slot);
      }
      request.done += n;
      if (request.done === request.tokens.length) {
        if (request.sampleAll) for (let i = n; i > 0; i--) batch.sampleRows.push(batch.tokens.length - i);
        else batch.sampleRows.push(batch.tokens.length - 1);
        batch.wantLogits ||= request.wantLogits;
        // One k for the step: the largest asked (each sequence keeps its own k best of them).
        batch.topK = Math.max(batch.topK!, request.topK);
        completing.push(request);
        this.pending.splice(this.pending.indexOf(request), 1);
      }
    }
    this.counters.lastBatchTokens = batch.tokens.length;
    this.counters.lastBatchSequences = new Set(batch.slots).size;
    this.counters.histogram[this.counters.lastBatchSequences] = (this.counters.histogram[this.counters.lastBatchSequences] ?? 0) + 1;
    return { batch, completing };
  }
}

const remaining = (r: StepRequest) => r.tokens.length - r.done;
