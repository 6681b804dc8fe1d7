// How Dawn (npm `webgpu`) notices finished GPU work, and why Deno needs that paced.
//
// dawn.node settles mapAsync, onSubmittedWorkDone, requestAdapter/requestDevice, ... only when it
// calls wgpuInstanceProcessEvents. While any of them is pending it polls from the event loop: each
// poll is `globalThis.setImmediate(f)` with a *new native function* `f` (a napi function with a
// finalizer) that processes events and queues the next poll (AsyncRunner::ScheduleProcessEvents;
// the global is looked up on every call). A 12-20 ms step on lavapipe was 500-1,000 polls, some
// 40,000 native functions a second.
//
// Node frees those functions cheaply. Deno 2.9 finalizes them in bulk after mark-compact GCs, at a
// cost that grows faster than their number (perf: the main thread in memmove and a tight loop in
// deno, under Dawn's ScheduleProcessEvents finalizer). Every ~25 steps the thread froze for
// 0.2-5 s with the GPU long done: the read-back's promise, timers and HTTP requests all waited.
//
// So in Deno Dawn's polls are paced: a young wait is polled on every immediate (short waits, e.g.
// a collective's read-back, see no delay); after `hotMs` a poll runs once the time since the last
// poll reaches `ratio` of the time already waited, at most `maxGapMs`. A completion is noticed at
// most min(ratio × wait, maxGapMs) late, and a wait costs O(log wait) native functions instead of
// O(wait): a few dozen per decode step instead of ~1,000. In between we spin on plain JS
// immediates, which leave nothing to finalize. Node keeps Dawn's own polling. Dawn objects made
// per step (encoders, passes, command buffers) have finalizers too, but a handful per step is far
// below what stalls.

/** How Dawn's polls are paced once a wait is older than `hotMs`. */
export interface DawnPollPacing {
  /** Poll on every immediate while the current wait is younger than this (ms). */
  hotMs: number;
  /** Then poll when the time since the last poll reaches this fraction of the time waited... */
  ratio: number;
  /** ... or this many ms, whichever is smaller: the most a completion is noticed late. */
  maxGapMs: number;
}

export const defaultDawnPollPacing: Readonly<DawnPollPacing> = { hotMs: 0.05, ratio: 0.1, maxGapMs: 0.5 };

/** What the pacing did so far, for tests and diagnosis. */
export interface DawnPollStats {
  /** Dawn's polls (native callbacks) that ran. */
  polls: number;
  /** Immediates spent waiting between paced polls. */
  spins: number;
  /** Runs of polls that ended with nothing left pending (about one per awaited GPU operation). */
  waits: number;
}

type Immediate = (callback: (...args: unknown[]) => void, ...args: unknown[]) => unknown;

/** Per realm (each worker has its own global and its own Dawn polls). */
const INSTALLED = Symbol.for('webshard.dawnPollPacing');

interface PacerState {
  pacing: DawnPollPacing;
  stats: DawnPollStats;
}

function pacerState(): PacerState | undefined {
  return (globalThis as Record<symbol, PacerState | undefined>)[INSTALLED];
}

interface DenoEnv {
  env: { get(name: string): string | undefined };
  permissions: { querySync?(descriptor: { name: 'env'; variable: string }): { state: string } };
}

/** WEBSHARD_DAWN_POLL, read only where that needs no permission prompt. */
function pollSetting(): string | undefined {
  const name = 'WEBSHARD_DAWN_POLL';
  try {
    const deno = (globalThis as { Deno?: DenoEnv }).Deno;
    if (deno) return deno.permissions.querySync?.({ name: 'env', variable: name }).state === 'granted' ? deno.env.get(name) : undefined;
    return (globalThis as { process?: { env: Record<string, string | undefined> } }).process?.env[name];
  } catch {
    return undefined;
  }
}

/**
 * The pacing for this runtime, or undefined for Dawn's own polling: paced in Deno, Dawn's own in
 * Node. WEBSHARD_DAWN_POLL overrides it for measurements: `native`, `paced`, or
 * `HOT_MS,RATIO,MAX_GAP_MS` (e.g. `0.05,0.1,0.5`).
 */
export function dawnPollPacingHere(): DawnPollPacing | undefined {
  const setting = pollSetting()?.trim();
  if (setting === 'native') return undefined;
  if (setting === 'paced') return { ...defaultDawnPollPacing };
  const numbers = setting?.split(',').map(Number);
  if (numbers?.length === 3 && numbers.every((n) => Number.isFinite(n) && n >= 0)) {
    const [hotMs, ratio, maxGapMs] = numbers as [number, number, number];
    return { hotMs, ratio, maxGapMs };
  }
  return typeof (globalThis as { Deno?: unknown }).Deno !== 'undefined' ? { ...defaultDawnPollPacing } : undefined;
}

const fnToString = Function.prototype.toString;

/**
 * Dawn's poll: an anonymous native function passed with no arguments. (Bound functions are native
 * too, but named "bound …".) Everything else passes straight through; a native callback of some
 * other addon would at worst be paced like Dawn's.
 */
function isDawnPoll(callback: unknown, args: readonly unknown[]): callback is () => void {
  return typeof callback === 'function' && args.length === 0 && callback.name === '' && fnToString.call(callback).includes('[native code]');
}

/**
 * Routes Dawn's polls through the pacer, once per realm (later calls return the same statistics
 * and keep the first pacing). Must run before Dawn's first wait; dawn.ts calls it before loading
 * Dawn. Returns the live statistics.
 */
export function installDawnPollPacing(pacing: DawnPollPacing = { ...defaultDawnPollPacing }): DawnPollStats {
  const existing = pacerState();
  if (existing) return existing.stats;
  const global = globalThis as unknown as { setImmediate?: Immediate };
  const realSetImmediate = global.setImmediate;
  const stats: DawnPollStats = { polls: 0, spins: 0, waits: 0 };
  if (typeof realSetImmediate !== 'function') return stats; // no setImmediate: Dawn cannot poll here either
  const schedule = (callback: () => void): unknown => realSetImmediate.call(globalThis, callback);

  /** Dawn's queued polls: at most one per Dawn instance (one per `create()`). */
  let pending: Array<() => void> = [];
  let pumping = false;
  let waitStartedAt = 0;
  let lastPollAt = 0;

  const pump = (): void => {
    const now = performance.now();
    const waited = now - waitStartedAt;
    const gap = waited < pacing.hotMs ? 0 : Math.min(pacing.maxGapMs, waited * pacing.ratio);
    if (now - lastPollAt >= gap) {
      lastPollAt = now;
      const due = pending;
      pending = [];
      for (const poll of due) {
        stats.polls++;
        try {
          poll(); // processes events; if work is still pending, queues the next poll (back into `pending`)
        } catch (error) {
          queueMicrotask(() => {
            throw error;
          });
        }
      }
    } else {
      stats.spins++;
    }
    if (pending.length > 0) {
      schedule(pump);
    } else {
      pumping = false;
      stats.waits++;
    }
  };

  const pacedSetImmediate = function setImmediate(callback: (...args: unknown[]) => void, ...args: unknown[]): unknown {
    if (!isDawnPoll(callback, args)) return realSetImmediate.call(globalThis, callback, ...args);
    pending.push(callback);
    if (!pumping) {
      pumping = true;
      waitStartedAt = performance.now();
      lastPollAt = -Infinity;
      schedule(pump);
    }
    return undefined; // Dawn ignores the handle
  };
  // Keep what the runtime hangs on its setImmediate (e.g. util.promisify.custom).
  for (const key of Reflect.ownKeys(realSetImmediate)) {
    if (key === 'length' || key === 'name' || key === 'prototype') continue;
    const descriptor = Object.getOwnPropertyDescriptor(realSetImmediate, key);
    if (descriptor) Object.defineProperty(pacedSetImmediate, key, descriptor);
  }
  global.setImmediate = pacedSetImmediate as Immediate;
  (globalThis as Record<symbol, PacerState>)[INSTALLED] = { pacing, stats };
  return stats;
}

/** This realm's pacing and its statistics, or undefined where Dawn polls on its own. */
export function dawnPollPacingStats(): { pacing: DawnPollPacing; stats: DawnPollStats } | undefined {
  const state = pacerState();
  return state ? { pacing: { ...state.pacing }, stats: { ...state.stats } } : undefined;
}
