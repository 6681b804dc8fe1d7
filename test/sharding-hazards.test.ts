// Each runtime hazard of ARCHITECTURE.md has a test here, and so do shard failures: a shard that hangs
// or loses its device becomes a typed error for the caller within a deadline, and the process
// stays healthy.
import { spawnSync } from 'node:child_process';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { loadModel } from '../src/api/model.ts';
import { FaultInjector } from '../src/engine/faults.ts';
import { ShardError, ShardTimeoutError } from '../src/sharding/errors.ts';
import { testGpu } from './helpers/gpu.ts';
import { modelPath, reference } from './helpers/models.ts';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const MODEL = modelPath('stories260K.gguf');
const env = { ...process.env, XDG_RUNTIME_DIR: '/tmp', NO_COLOR: '1' };

function node(...args: string[]) {
  return spawnSync(process.execPath, ['--import', 'tsx', ...args], { cwd: root, encoding: 'utf8', timeout: 120_000, env });
}

describe('runtime hazards', () => {
  it("keeps Dawn's create() object alive through garbage collection", () => {
    const r = node('--expose-gc', 'test/fixtures/dawn-gc.ts');
    expect(r.signal, r.stderr).toBeNull();
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('dawn survived garbage collection');
  });

  it('a Node process with shard workers ends by itself with exit code 0', () => {
    const r = node('test/fixtures/shard-exit.ts', MODEL, 'normal');
    expect(r.signal, r.stderr).toBeNull();
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('generated 8 tokens');
  });

  it('disposing while a step is in flight drains it instead of terminating a worker (no abort)', () => {
    const r = node('test/fixtures/shard-exit.ts', MODEL, 'dispose-mid-step');
    expect(r.signal, r.stderr).toBeNull();
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/finished 32 tokens|stopped: /);
  });

  it('a Deno run with shard workers exits 0', () => {
    const deno = resolve(root, 'node_modules/.bin/deno');
    const r = spawnSync(deno, ['task', '-q', 'run', '-m', MODEL, '--tp', '2', '-n', '8', '--temperature', '0', '--json'], {
      cwd: root, encoding: 'utf8', timeout: 120_000, env,
    });
    expect(r.signal, r.stderr).toBeNull();
    expect(r.status, r.stderr).toBe(0);
    const c = reference().generation_cases.find((x) => x.id === 'stories260K-f32/once-upon-a-time')!;
    expect((JSON.parse(r.stdout) as { generated_ids: number[] }).generated_ids).toEqual(c.generated_ids.slice(0, 8));
  });
});

describe('shard failures', () => {
  it("a shard whose device is destroyed mid-generation fails the caller's generation with a ShardError, promptly", async () => {
    const faults = new FaultInjector();
    const model = await loadModel(MODEL, { tp: 2, contextLength: 64, shardDeadlineMs: 5000, faults });
    try {
      const tokens: number[] = [];
      const run = (async () => {
        for await (const t of model.generate([1], { temperature: 0, maxTokens: 48, ignoreEos: true })) {
          tokens.push(t.id);
          if (tokens.length === 4) await faults.inject({ shard: 1, kind: 'device-lost' });
        }
      })();
      const start = performance.now();
      await expect(run).rejects.toBeInstanceOf(ShardError);
      expect(performance.now() - start).toBeLessThan(15_000);
      expect(tokens.length).toBeGreaterThanOrEqual(4);
      expect(tokens.length).toBeLessThan(48);
      // While the group reloads itself (test/self-healing.test.ts), calls fail at once, typed.
      expect(model.readiness().ok).toBe(false);
      await expect(model.complete([1], { maxTokens: 1 })).rejects.toBeInstanceOf(ShardError);
    } finally {
      await model.dispose();
    }
    // The process is healthy: a fresh model on this thread's device still works.
    const healthy = await loadModel(MODEL, { device: await testGpu(), contextLength: 32 });
    expect((await healthy.complete([1], { temperature: 0, maxTokens: 4 })).ids).toHaveLength(4);
    await healthy.dispose();
  });

  it('a shard that hangs past the deadline becomes a ShardTimeoutError, and nobody waits forever', async () => {
    const faults = new FaultInjector();
    // The waiting shard gives up at 2 s and reports a peer timeout, the coordinator gives up on the
    // hung one at 4 s (twice the deadline): the margin keeps a loaded CI machine from blurring them.
    const model = await loadModel(MODEL, { tp: 2, contextLength: 64, shardDeadlineMs: 2000, faults });
    try {
      await model.complete([1], { temperature: 0, maxTokens: 2 });
      await faults.inject({ shard: 1, kind: 'hang' });
      const start = performance.now();
      const failure = await model.complete([1], { temperature: 0, maxTokens: 2 }).catch((e: unknown) => e);
      expect(failure).toBeInstanceOf(ShardTimeoutError);
      expect((failure as ShardTimeoutError).rank).toBe(1); // the shard that hung, not the one that waited for it
      expect(performance.now() - start).toBeLessThan(8000);
    } finally {
      await model.dispose();
    }
  });
});

describe('shard worker failures at load', () => {
  it('a shard that cannot open its device fails the load with a typed error, and no worker is left behind', async () => {
    const { GpuUnavailableError } = await import('../src/gpu/device.ts');
    const attempt = loadModel(MODEL, { tp: 2, contextLength: 64, devices: [{}, { adapterName: 'no-such-gpu' }] });
    await expect(attempt).rejects.toBeInstanceOf(GpuUnavailableError);
  });
});
