// `--shard auto`: the cost model picks pipeline parallel when syncs are expensive, tensor parallel
// when kernels dominate, and never a split that does not fit.
import { beforeAll, describe, expect, it } from 'vitest';
import type { LlamaConfig } from '../src/model/config.ts';
import type { GGUFFile } from '../src/model/gguf.ts';
import { chooseSplit, planCandidates, roundTripFor, splitCandidates, type CandidateFit, type SplitMeasurements } from '../src/sharding/choose.ts';
import { ShardPlanError, type DeviceDescription } from '../src/sharding/plan.ts';
import { openModelFile } from './helpers/models.ts';

function devices(n: number, memoryBudgetBytes?: number): DeviceDescription[] {
  return Array.from({ length: n }, (_, i) => ({ name: `gpu${i}`, maxBufferSize: 2 ** 32, maxStorageBufferBindingSize: 2 ** 31, memoryBudgetBytes }));
}

const open = openModelFile;

describe('chooseSplit on stories260K (5 layers)', () => {
  let file: GGUFFile;
  let config: LlamaConfig;
  let twoDevices: CandidateFit[];
  beforeAll(async () => {
    ({ file, config } = await open('stories260K.gguf'));
    twoDevices = planCandidates(file, config, { contextLength: 512, maxBatchTokens: 16, devices: devices(2) });
  });

  const choose = (measurements: SplitMeasurements, candidates = twoDevices, deviceCount = 2) => chooseSplit({ deviceCount, config, measurements, candidates });

  it('lists every tp × pp = devices', () => {
    expect(splitCandidates(4)).toEqual([
      { tp: 4, pp: 1 },
      { tp: 2, pp: 2 },
      { tp: 1, pp: 4 },
    ]);
    expect(twoDevices.map((c) => [c.tp, c.pp, c.error])).toEqual([
      [2, 1, undefined],
      [1, 2, undefined],
    ]);
  });

  it('picks pipeline parallel when round trips are expensive next to the kernels', () => {
    // TP: 2 / 2 + (2·5 + 1) × 0.5 = 6.5 ms; PP: 2 + 1 × 0.5 = 2.5 ms.
    const choice = choose({ stepKernelMs: 2, roundTripMs: 0.5 });
    expect(choice).toMatchObject({ tp: 1, pp: 2 });
    expect(choice.predictedStepMs).toBeCloseTo(2.5, 10);
    expect(choice.predictedTokensPerSecond).toBeCloseTo(400, 8);
    expect(choice.candidates.map((c) => [c.tp, c.pp, c.stepMs])).toEqual([
      [1, 2, 2.5],
      [2, 1, 6.5],
    ]);
  });

  it('picks tensor parallel when kernel time dominates', () => {
    // TP: 40 / 2 + 11 × 0.06 = 20.66 ms; PP: 40 + 0.06 = 40.06 ms.
    const choice = choose({ stepKernelMs: 40, roundTripMs: 0.06 });
    expect(choice).toMatchObject({ tp: 2, pp: 1 });
    expect(choice.predictedStepMs).toBeCloseTo(20.66, 10);
  });

  it('the reason text carries the numbers behind the choice', () => {
    const { reason } = choose({ stepKernelMs: 40, roundTripMs: 0.06 });
    expect(reason).toContain('chose tp=2 × pp=1: step 20.66 ms = kernels 20.00 ms (40.00 ms / 2) + 11 all-reduces × 0.060 ms → 48.4 tokens/s');
    expect(reason).toContain('tp=1 × pp=2: step 40.06 ms = kernels 40.00 ms + 1 hand-off × 0.060 ms → 25.0 tokens/s');
  });

  it('shards on one physical GPU share its bandwidth: tensor parallel then buys nothing', () => {
    const choice = choose({ stepKernelMs: 40, roundTripMs: 0.06, physicalGpus: 1 });
    expect(choice).toMatchObject({ tp: 1, pp: 2 });
    expect(choice.candidates.find((c) => c.tp === 2)!.kernelMs).toBe(40);
  });

  it('takes the kernel time from weight bytes and bandwidth when not measured directly', () => {
    // 2 GB at 1 TB/s = 2 ms of kernels; syncs of 0.5 ms favour the pipeline, as above.
    const choice = choose({ weightBytes: 2e9, bandwidthBytesPerSecond: 1e12, roundTripMs: 0.5 });
    expect(choice).toMatchObject({ tp: 1, pp: 2 });
    expect(choice.predictedStepMs).toBeCloseTo(2.5, 10);
    expect(() => choose({ roundTripMs: 0.5 })).toThrow(/stepKernelMs, or weightBytes and bandwidthBytesPerSecond/);
  });

  it('uses round trips measured per group size, and a separate hand-off time', () => {
    // ARCHITECTURE.md's one-H100 numbers (Measured facts): 125 µs with one worker, 513 µs with two, 972 µs with four.
    const measured = { 1: 0.125, 2: 0.513, 4: 0.972 };
    expect(roundTripFor(measured, 2)).toBe(0.513);
    expect(roundTripFor(measured, 3)).toBeCloseTo((0.513 + 0.972) / 2, 12);
    expect(roundTripFor(measured, 8)).toBeCloseTo(0.972 * 2, 12);
    expect(roundTripFor(0.1, 8)).toBe(0.1);
    const choice = choose({ stepKernelMs: 10, roundTripMs: measured, handoffMs: 0.2 });
    expect(choice.candidates.find((c) => c.tp === 2)!.stepMs).toBeCloseTo(5 + 11 * 0.513, 10);
    expect(choice.candidates.find((c) => c.pp === 2)!.stepMs).toBeCloseTo(10.2, 10);
  });

  it('discards candidates that do not fit, with their reasons, and picks among the rest', async () => {
    const q4 = await open('stories260K-Q4_0.gguf');
    // Q4_0 attention output cannot be split 4 ways (16-column slices of 32-value blocks).
    const candidates = planCandidates(q4.file, q4.config, { contextLength: 512, maxBatchTokens: 16, devices: devices(4) });
    const choice = chooseSplit({ deviceCount: 4, config: q4.config, measurements: { stepKernelMs: 40, roundTripMs: 0.06 }, candidates });
    expect(choice).toMatchObject({ tp: 2, pp: 2 });
    const refused = choice.candidates.find((c) => c.tp === 4)!;
    expect(refused.fits).toBe(false);
    expect(refused.stepMs).toBeUndefined();
    expect(refused.reason).toMatch(/tp=4 × pp=1 does not fit: .*Q4_0, stored in blocks of 32 values/);
    expect(choice.reason).toMatch(/discarded: tp=4 × pp=1 does not fit/);
    // A candidate for another device count is discarded too, never chosen.
    const wrong = chooseSplit({ deviceCount: 4, config: q4.config, measurements: { stepKernelMs: 40, roundTripMs: 0.06 }, candidates: [...candidates, { tp: 8, pp: 1, plan: candidates[1]!.plan }] });
    expect(wrong.candidates.find((c) => c.tp === 8)).toMatchObject({ fits: false, reason: 'tp=8 × pp=1 uses 8 devices, not the 4 given' });
  });

  it('a fitting candidate beats a faster one that does not fit', () => {
    const noTp = twoDevices.map((c) => (c.tp === 2 ? { tp: 2, pp: 1, error: 'shard 0 needs 9.00 GiB, over its memory budget of 8.00 GiB' } : c));
    const choice = choose({ stepKernelMs: 40, roundTripMs: 0.06 }, noTp);
    expect(choice).toMatchObject({ tp: 1, pp: 2 });
    expect(choice.reason).toContain('tp=2 × pp=1 does not fit: shard 0 needs 9.00 GiB, over its memory budget of 8.00 GiB');
  });

  it('refuses with every reason when no split fits', () => {
    const tiny = planCandidates(file, config, { contextLength: 512, maxBatchTokens: 16, devices: devices(2, 64 * 1024) });
    expect(tiny.every((c) => c.error !== undefined)).toBe(true);
    const attempt = () => choose({ stepKernelMs: 2, roundTripMs: 0.5 }, tiny);
    expect(attempt).toThrow(ShardPlanError);
    expect(attempt).toThrow(/no split of 2 devices fits: tp=2 × pp=1 does not fit: .*memory budget of 64\.0 KiB.*; tp=1 × pp=2 does not fit: /);
  });
});
