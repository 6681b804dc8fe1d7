// A shard group that heals itself. When a shard's device is lost, its worker dies, or it hangs
// past the deadline, the step fails with a typed ShardError for whatever was running (nothing
// waits), and this wrapper tears the whole group down and starts it again with the same plan,
// while steps asked for meanwhile fail at once. Serving resumes without restarting the process;
// after MAX_ATTEMPTS failed reloads the group stays failed (the liveness probe then fails, and
// the orchestrator restarts the process).

import type { FaultInjector } from '../engine/faults.ts';
import type { DeviceStats, ForwardEngine } from '../engine/forward-engine.ts';
import type { StepBatch, StepResult } from '../engine/runner.ts';
import { ShardError, ShardGroupStoppedError } from './errors.ts';
import { ShardGroup, type ShardGroupOptions } from './group.ts';

const MAX_ATTEMPTS = 3;

export type GroupState = 'ready' | 'recovering' | 'failed';

export interface RecoveryStats {
  /** 0 ready, 1 recovering, 2 failed for good (a number, so that metrics carry it). */
  state: number;
  recoveries: number;
  /** From the failure to serving again, of the last recovery. */
  lastRecoverySeconds: number;
}

export interface SelfHealingOptions {
  log?: (line: string) => void;
  /** Test-only: connected to every group this one starts. */
  faults?: FaultInjector;
}

const STATE_NUMBER: Record<GroupState, number> = { ready: 0, recovering: 1, failed: 2 };

export class SelfHealingShardGroup implements ForwardEngine {
  private recovering?: { since: number; cause: Error; done: Promise<void> };
  private failedForGood?: Error;
  private closed = false;
  private recoveries = 0;
  private lastRecoverySeconds = 0;

  private constructor(
    private group: ShardGroup,
    private readonly options: ShardGroupOptions,
    private readonly hooks: SelfHealingOptions,
  ) {
    this.connectFaults();
  }

  static async start(options: ShardGroupOptions, hooks: SelfHealingOptions = {}): Promise<SelfHealingShardGroup> {
    return new SelfHealingShardGroup(await ShardGroup.start({ ...options, faults: hooks.faults !== undefined }), options, hooks);
  }

  get geometry() {
    return this.group.geometry;
  }

  get maxBatchTokens(): number {
    return this.group.maxBatchTokens;
  }

  /** The group serving now (its plan and per-shard load reports). */
  get current(): ShardGroup {
    return this.group;
  }

  get state(): GroupState {
    return this.failedForGood ? 'failed' : this.recovering ? 'recovering' : 'ready';
  }

  /** Why the group is not ready, when it is not. */
  get problem(): string | undefined {
    if (this.failedForGood) return `the shard group could not be reloaded: ${this.failedForGood.message}`;
    if (this.recovering) return `the shard group is reloading after a failure (${this.recovering.cause.message})`;
    return undefined;
  }

  recoveryStats(): RecoveryStats {
    return { state: STATE_NUMBER[this.state], recoveries: this.recoveries, lastRecoverySeconds: this.lastRecoverySeconds };
  }

  /** Resolves once no recovery is running (for tests and shutdown). */
  async settled(): Promise<void> {
    while (this.recovering) await this.recovering.done;
  }

  async forward(batch: StepBatch): Promise<StepResult[]> {
    const problem = this.problem;
    if (problem) throw new ShardGroupStoppedError(-1, `${problem}; retry shortly.`, { cause: this.failedForGood ?? this.recovering?.cause });
    const group = this.group;
    try {
      return await group.forward(batch);
    } catch (error) {
      if (error instanceof ShardError) this.recover(group, error);
      throw error;
    }
  }

  deviceStats(): DeviceStats[] {
    return this.group.deviceStats();
  }

  async dispose(): Promise<void> {
    this.closed = true;
    await this.settled();
    await this.group.dispose();
  }

  /** Tears `failed` down and starts the same plan again, unless that already began. */
  private recover(failed: ShardGroup, cause: Error): void {
    if (this.recovering || this.failedForGood || this.closed || failed !== this.group) return;
    const since = performance.now();
    const { tp, pp } = this.options.plan;
    this.log(`shard group failed: ${cause.message}; tearing it down and reloading the same plan (tp ${tp}, pp ${pp})`);
    const done = (async () => {
      await failed.dispose();
      for (let attempt = 1; !this.closed; attempt++) {
        try {
          this.group = await ShardGroup.start({ ...this.options, faults: this.hooks.faults !== undefined });
          break;
        } catch (error) {
          const message = (error as Error).message;
          if (attempt >= MAX_ATTEMPTS) {
            this.failedForGood = error as Error;
            this.log(`shard group reload failed ${attempt} times (last: ${message}); giving up: restart the process`);
            return;
          }
          this.log(`shard group reload attempt ${attempt} failed (${message}); trying again`);
          await new Promise((resolve) => setTimeout(resolve, 1000 * attempt));
        }
      }
      if (this.closed) return;
      this.connectFaults();
      this.recoveries++;
      this.lastRecoverySeconds = (performance.now() - since) / 1000;
      this.log(`shard group recovered in ${this.lastRecoverySeconds.toFixed(1)} s (same plan, tp ${tp}, pp ${pp}); serving again`);
    })();
    this.recovering = { since, cause, done };
    void done.finally(() => (this.recovering = undefined));
  }

  private connectFaults(): void {
    const group = this.group;
    this.hooks.faults?.connect((fault) => group.injectFault(fault));
  }

  private log(line: string): void {
    this.hooks.log?.(line);
  }
}
