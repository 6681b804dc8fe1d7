// All or nothing for a request's sequences. A request may ask for n choices (OpenAI's `n`): it is
// refused at once with 429 unless all n fit within `maxRunning` sequences generating plus
// `maxQueued` waiting, so a request never runs some choices and is refused the rest.
//
// This is a count, not a queue: the reserved sequences go straight to the model, and the engine's
// scheduler (engine/scheduler.ts) is the one admission queue. It admits them in order as sequence
// slots and KV blocks free up, and drops one whose request is cancelled while it waits, so that
// costs the GPU nothing. It is loaded with the same two numbers (see `engineAdmission`).

import { QueueFullError } from './errors.ts';

/** One sequence's place; release it exactly once, when the engine is done with the sequence. */
export interface Reservation {
  release(): void;
}

/** The engine's admission limits that match the server's: its sequence slots and its waiting room. */
export function engineAdmission(limits: { maxRunning: number; maxQueued: number }): { maxSequences: number; maxWaiting: number } {
  return { maxSequences: limits.maxRunning, maxWaiting: limits.maxQueued };
}

export class SequenceReservations {
  private held = 0;
  private idleWaiters: Array<() => void> = [];

  constructor(readonly maxRunning: number, readonly maxQueued: number) {
    if (!Number.isInteger(maxRunning) || maxRunning < 1) throw new RangeError(`maxRunning must be an integer ≥ 1; got ${maxRunning}`);
    if (!Number.isInteger(maxQueued) || maxQueued < 0) throw new RangeError(`maxQueued must be an integer ≥ 0; got ${maxQueued}`);
  }

  /** Reserved sequences the engine can run at once (the rest wait in its queue). */
  get running(): number {
    return Math.min(this.held, this.maxRunning);
  }

  /** Reserved sequences beyond those: waiting in the engine's queue. */
  get queued(): number {
    return this.held - this.running;
  }

  /** Resolves once every reservation is released. */
  whenIdle(): Promise<void> {
    if (this.held === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Reserves `count` places for one request, all or nothing: throws QueueFullError (429) when they do not fit. */
  reserve(count: number): Reservation[] {
    if (this.held + count > this.maxRunning + this.maxQueued) {
      throw new QueueFullError(
        `The server is at capacity (${this.running} sequences running, ${this.queued} waiting, room for ${this.maxQueued}); try again shortly.`,
        { code: 'queue_full', headers: { 'retry-after': '1' } },
      );
    }
    this.held += count;
    return Array.from({ length: count }, () => {
      let released = false;
      return {
        release: () => {
          if (released) return;
          released = true;
          if (--this.held === 0) this.notifyIdle();
        },
      };
    });
  }

  private notifyIdle(): void {
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const resolve of waiters) resolve();
  }
}
