// Admission control in front of the engine: at most `maxRunning` sequences are handed to the
// model at once, at most `maxQueued` more wait here in FIFO order, and anything beyond that is
// refused at once with 429. A sequence that is cancelled while it waits leaves the queue without
// ever reaching the engine.
//
// The engine batches the sequences it is given (continuous batching); it never sees more than
// `maxRunning`, so a request cancelled while it waits here costs the GPU nothing.

import { QueueFullError } from './errors.ts';

/** A granted place in the engine; release it exactly once, when the engine is done with it. */
export interface Slot {
  release(): void;
}

interface Waiter {
  grant(slot: Slot): void;
  signal: AbortSignal;
  onAbort: () => void;
}

export class Scheduler {
  private runningCount = 0;
  private readonly waiting: Waiter[] = [];
  private idleWaiters: Array<() => void> = [];

  constructor(readonly maxRunning: number, readonly maxQueued: number) {
    if (!Number.isInteger(maxRunning) || maxRunning < 1) throw new RangeError(`maxRunning must be an integer ≥ 1; got ${maxRunning}`);
    if (!Number.isInteger(maxQueued) || maxQueued < 0) throw new RangeError(`maxQueued must be an integer ≥ 0; got ${maxQueued}`);
  }

  /** Sequences handed to the engine and not yet released. */
  get running(): number {
    return this.runningCount;
  }

  /** Sequences waiting for a slot. */
  get queued(): number {
    return this.waiting.length;
  }

  /** Resolves once no sequence runs or waits. */
  whenIdle(): Promise<void> {
    if (this.isIdle()) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /**
   * Reserves `count` slots for one request, all or nothing: throws QueueFullError when they do
   * not fit. Each promise resolves in turn (FIFO) or rejects with `signal.reason` once aborted.
   */
  enqueue(count: number, signal: AbortSignal): Array<Promise<Slot>> {
    const free = Math.max(0, this.maxRunning - this.runningCount - this.waiting.length);
    const mustWait = Math.max(0, count - free);
    if (this.waiting.length + mustWait > this.maxQueued) {
      throw new QueueFullError(
        `The server is at capacity (${this.runningCount} sequences running, ${this.waiting.length} waiting, room for ${this.maxQueued}); try again shortly.`,
        { code: 'queue_full', headers: { 'retry-after': '1' } },
      );
    }
    return Array.from({ length: count }, () => this.acquire(signal));
  }

  private acquire(signal: AbortSignal): Promise<Slot> {
    if (signal.aborted) return Promise.reject(signal.reason);
    if (this.runningCount < this.maxRunning && this.waiting.length === 0) return Promise.resolve(this.grant());
    return new Promise<Slot>((resolve, reject) => {
      const waiter: Waiter = {
        grant: resolve,
        signal,
        onAbort: () => {
          this.waiting.splice(this.waiting.indexOf(waiter), 1);
          reject(signal.reason);
          this.notifyIfIdle();
        },
      };
      signal.addEventListener('abort', waiter.onAbort, { once: true });
      this.waiting.push(waiter);
    });
  }

  private grant(): Slot {
    this.runningCount++;
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        this.runningCount--;
        this.next();
        this.notifyIfIdle();
      },
    };
  }

  private next(): void {
    while (this.runningCount < this.maxRunning && this.waiting.length > 0) {
      const waiter = this.waiting.shift()!;
      waiter.signal.removeEventListener('abort', waiter.onAbort);
      waiter.grant(this.grant());
    }
  }

  private isIdle(): boolean {
    return this.runningCount === 0 && this.waiting.length === 0;
  }

  private notifyIfIdle(): void {
    if (!this.isIdle()) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const resolve of waiters) resolve();
  }
}
