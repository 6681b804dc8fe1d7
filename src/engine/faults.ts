// Fault injection, for tests only: the one way to make a device, a shard worker or a step fail
// on purpose. A FaultInjector is given at load (`loadModel(src, { faults })`; the server makes
// one only with --test-hooks) and the engine the model chose connects itself to it; without one,
// no fault can be injected and production code never looks at it.

/**
 * `device-lost`: the shard's GPU device is destroyed, as a crashed or reset GPU would be.
 * `worker-crash`: the shard's worker dies (an uncaught error); on one device there is no worker.
 * `hang`: the shard's next forward step stalls `ms` (default: for good, so that the group's
 * deadline has to give up on it), as a wedged GPU would.
 */
export type FaultKind = 'device-lost' | 'worker-crash' | 'hang';

export const FAULT_KINDS: readonly FaultKind[] = ['device-lost', 'worker-crash', 'hang'];

export interface Fault {
  /** The shard's rank (0 on one device). */
  shard: number;
  kind: FaultKind;
  /** For `hang`: how long the next step stalls. Default: forever. */
  ms?: number;
}

/** What an engine does when asked to fail: it checks the shard and the kind, then fails. */
export type FaultTarget = (fault: Fault) => Promise<void>;

export class FaultInjector {
  private target?: FaultTarget;

  /** Called by the engine a model loads (and again when a shard group is reloaded). */
  connect(target: FaultTarget): void {
    this.target = target;
  }

  /** Injects `fault` into the loaded model; rejects with a RangeError for a shard or kind it does not have. */
  async inject(fault: Fault): Promise<void> {
    if (!this.target) throw new Error('No model is connected to this FaultInjector: pass it to loadModel as { faults } first.');
    if (!FAULT_KINDS.includes(fault.kind)) throw new RangeError(`Unknown fault kind ${JSON.stringify(fault.kind)}; use one of ${FAULT_KINDS.join(', ')}.`);
    await this.target(fault);
  }
}

/** An injected `hang`: armed with a duration, it makes the next step that waits on it stall that long. */
export class NextStepHang {
  private pending?: Promise<void>;

  /** The next step stalls `ms`, or for good (a promise that never settles). */
  arm(ms: number | undefined): void {
    this.pending = ms === undefined ? new Promise(() => {}) : new Promise((resolve) => setTimeout(resolve, ms));
  }

  /** Called at the start of each step: stalls once, if armed. */
  async wait(): Promise<void> {
    const pending = this.pending;
    this.pending = undefined;
    await pending;
  }
}
