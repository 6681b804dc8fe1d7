// Dawn's event polling (src/gpu/dawn-polling.ts): in Deno every poll Dawn queues through
// setImmediate is a new native function, and Deno's cost of finalizing thousands of them froze
// decode steps for seconds. These tests check the mechanism (that Deno paces the polls, that a
// long wait costs few native polls, that other setImmediate callers are untouched), not speed.
import { spawnSync } from 'node:child_process';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { dawnPollPacingHere, dawnPollPacingStats, defaultDawnPollPacing, installDawnPollPacing } from '../src/gpu/dawn-polling.ts';
import { kernelOp, readU32, runOps, storageBuffer } from '../src/gpu/kernel.ts';
import { testGpu } from './helpers/gpu.ts';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const env: Record<string, string | undefined> = { ...process.env, XDG_RUNTIME_DIR: '/tmp', NO_COLOR: '1' };
delete env.WEBSHARD_DAWN_POLL;

interface ProbeReport {
  runtime: string;
  reads: number;
  echoed: string;
  polling: { pacing: typeof defaultDawnPollPacing; stats: { polls: number; spins: number; waits: number } } | null;
}

function probe(command: string, args: string[], extraEnv: Record<string, string> = {}): ProbeReport {
  const r = spawnSync(command, args, { cwd: root, encoding: 'utf8', timeout: 120_000, env: { ...env, ...extraEnv } });
  expect(r.signal, r.stderr).toBeNull();
  expect(r.status, r.stderr).toBe(0);
  const line = r.stdout.trim().split('\n').at(-1)!;
  return JSON.parse(line) as ProbeReport;
}

const deno = (extraEnv?: Record<string, string>) =>
  probe(resolve(root, 'node_modules/.bin/deno'), ['run', '-A', 'test/fixtures/dawn-polling-probe.ts'], extraEnv);

/** A stand-in for Dawn's poll: an anonymous function that reads as native code, as napi functions do. */
const nativeLooking = (body: () => void): (() => void) => new Proxy(() => body(), {});

describe('Dawn event polling', () => {
  const savedSetting = process.env.WEBSHARD_DAWN_POLL;
  afterEach(() => {
    if (savedSetting === undefined) delete process.env.WEBSHARD_DAWN_POLL;
    else process.env.WEBSHARD_DAWN_POLL = savedSetting;
  });

  it('is paced in Deno, left to Dawn in Node, and WEBSHARD_DAWN_POLL overrides it', () => {
    delete process.env.WEBSHARD_DAWN_POLL;
    expect(dawnPollPacingHere()).toBeUndefined();
    process.env.WEBSHARD_DAWN_POLL = 'paced';
    expect(dawnPollPacingHere()).toEqual(defaultDawnPollPacing);
    process.env.WEBSHARD_DAWN_POLL = '0.1,0.25,2';
    expect(dawnPollPacingHere()).toEqual({ hotMs: 0.1, ratio: 0.25, maxGapMs: 2 });
    process.env.WEBSHARD_DAWN_POLL = 'native';
    expect(dawnPollPacingHere()).toBeUndefined();
  });

  it('in Deno, requestGpu installs the pacer and read-backs go through it', () => {
    const paced = deno();
    expect(paced.runtime).toBe('deno');
    expect(paced.reads).toBe(5);
    expect(paced.echoed).toBe('through');
    expect(paced.polling?.pacing).toEqual(defaultDawnPollPacing);
    expect(paced.polling!.stats.polls).toBeGreaterThan(0);
    expect(paced.polling!.stats.waits).toBeGreaterThanOrEqual(5);
    // The escape hatch for measurements: Dawn's own polling.
    const native = deno({ WEBSHARD_DAWN_POLL: 'native' });
    expect(native.reads).toBe(5);
    expect(native.polling).toBeNull();
  });

  it('in Node, Dawn keeps its own polling', () => {
    const report = probe(process.execPath, ['--import', 'tsx', 'test/fixtures/dawn-polling-probe.ts']);
    expect(report).toMatchObject({ runtime: 'node', reads: 5, echoed: 'through', polling: null });
  });

  // The rest installs the pacer in this test process (its own fork), as Deno does.
  it('passes other setImmediate callers through, with their arguments and handles', async () => {
    installDawnPollPacing();
    const got = await new Promise<unknown[]>((done) => setImmediate((...args: unknown[]) => done(args), 1, 'two'));
    expect(got).toEqual([1, 'two']);
    let ran = false;
    const handle = setImmediate(() => (ran = true));
    clearImmediate(handle);
    await new Promise((done) => setTimeout(done, 5));
    expect(ran).toBe(false);
  });

  it('turns a long wait into a few dozen polls, not one per immediate', async () => {
    const stats = installDawnPollPacing();
    const before = { ...stats };
    // Dawn's AsyncRunner: each poll processes events and, while work is pending, queues a new poll.
    const waitMs = 20;
    const doneAt = performance.now() + waitMs;
    let noticedAt = 0;
    await new Promise<void>((settled) => {
      const poll = (): void => {
        if (performance.now() >= doneAt) {
          noticedAt = performance.now();
          settled();
        } else {
          setImmediate(nativeLooking(poll));
        }
      };
      setImmediate(nativeLooking(poll));
    });
    const polls = stats.polls - before.polls;
    const spins = stats.spins - before.spins;
    // The schedule allows about hotMs of polls (≈ 50 at 1 µs an immediate), then
    // log(maxGap / (ratio × hotMs)) / log(1 + ratio) ≈ 48 spaced ones, then one per maxGapMs (40).
    // Dawn's own polling is one per immediate: thousands in 20 ms on any machine.
    const { hotMs, ratio, maxGapMs } = defaultDawnPollPacing;
    const schedule = hotMs * 1000 + Math.log(maxGapMs / ratio / hotMs) / Math.log(1 + ratio) + waitMs / maxGapMs;
    const bound = 3 * schedule;
    expect(polls).toBeGreaterThan(1);
    expect(polls).toBeLessThan(bound);
    expect(spins).toBeGreaterThan(polls);
    expect(stats.waits).toBe(before.waits + 1);
    expect(noticedAt).toBeGreaterThanOrEqual(doneAt);
  });

  it('real Dawn read-backs complete under the pacer', async () => {
    installDawnPollPacing();
    const before = dawnPollPacingStats()!.stats;
    const gpu = await testGpu();
    const buffer = storageBuffer(gpu.device, 'x', new Uint32Array(64));
    const wgsl = `@group(0) @binding(0) var<storage, read_write> x: array<u32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) id: vec3u) { x[id.x] = id.x * 3u; }`;
    runOps(gpu.device, [kernelOp(gpu.device, 'times3', wgsl, [buffer], [1])]);
    const out = await readU32(gpu.device, buffer, 64);
    expect(out[63]).toBe(189);
    const after = dawnPollPacingStats()!.stats;
    expect(after.polls).toBeGreaterThan(before.polls);
    expect(after.waits).toBeGreaterThan(before.waits);
  });
});
