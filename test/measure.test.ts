// Measuring collectives and decode steps through the production shard workers (measure.ts): the
// numbers are positive and consistent, every collective's last round is checked for the right
// sum, and every worker is shut down by message. No assertion on speed: lavapipe is a CPU.
import { afterAll, describe, expect, it } from 'vitest';
import { llamaConfig } from '../src/model/config.ts';
import { readGGUF, type GGUFFile } from '../src/model/gguf.ts';
import { fileSource } from '../src/model/source.ts';
import { decodeProbeView, latencyStats, measureDecodeStep, measureInterconnect } from '../src/sharding/measure.ts';
import { modelPath } from './helpers/models.ts';

const STORIES = modelPath('stories260K.gguf');

describe('latencyStats', () => {
  it('takes nearest-rank percentiles', () => {
    const stats = latencyStats([10, 1, 9, 2, 8, 3, 7, 4, 6, 5]);
    expect(stats).toEqual({ p50: 5, p90: 9, mean: 5.5, min: 1, max: 10 });
  });

  it('refuses an empty sample', () => {
    expect(() => latencyStats([])).toThrow(RangeError);
  });
});

describe('measureInterconnect', () => {
  it('one worker times a hand-off of 16 KB and stops cleanly', async () => {
    const m = await measureInterconnect({ devices: [{}], bytes: 16 * 1024, iterations: 5 });
    expect(m.measurements).toHaveLength(1);
    const [handOff] = m.measurements;
    expect(handOff).toMatchObject({ workers: 1, kind: 'handOff', bytes: 16 * 1024, verified: true });
    expect(handOff!.roundTripMs.p50).toBeGreaterThan(0);
    expect(handOff!.roundTripMs.p90).toBeGreaterThanOrEqual(handOff!.roundTripMs.p50);
    expect(m.roundTripMs).toEqual(handOff!.roundTripMs);
    expect(m.adapters).toHaveLength(1);
    expect(m.adapters[0]).not.toBe('');
    expect(m.workersStoppedCleanly).toBe(true);
  });

  it('two workers all-reduce every size and group size, with the right sums', async () => {
    const m = await measureInterconnect({ devices: [{}, {}], bytes: [4096, 16 * 1024], iterations: 6, groupSizes: [1, 2] });
    expect(m.measurements.map((x) => [x.bytes, x.workers, x.kind])).toEqual([
      [4096, 1, 'handOff'],
      [4096, 2, 'allReduceSum'],
      [16 * 1024, 1, 'handOff'],
      [16 * 1024, 2, 'allReduceSum'],
    ]);
    for (const x of m.measurements) {
      expect(x.verified).toBe(true);
      expect(x.roundTripMs.min).toBeGreaterThan(0);
      expect(x.roundTripMs.p90).toBeGreaterThanOrEqual(x.roundTripMs.p50);
      expect(x.waitMs).toBeGreaterThanOrEqual(0);
      expect(x.waitMs).toBeLessThanOrEqual(x.roundTripMs.max);
    }
    // The headline: the first size at the largest group.
    expect(m.roundTripMs).toEqual(m.measurements[1]!.roundTripMs);
    expect(m.adapters).toHaveLength(2);
    expect(m.workersStoppedCleanly).toBe(true);
  });

  it('refuses a group larger than the devices given, before starting any worker', async () => {
    await expect(measureInterconnect({ devices: [{}], bytes: 1024, iterations: 3, groupSizes: [2] })).rejects.toThrow(/group size 2/);
    await expect(measureInterconnect({ devices: [{}], bytes: 0, iterations: 3 })).rejects.toThrow(RangeError);
  });
});

describe('measureDecodeStep', () => {
  const opened: GGUFFile[] = [];
  afterAll(async () => {
    for (const f of opened) await f.source.close();
  });
  const open = async () => {
    const file = await readGGUF(await fileSource(STORIES));
    opened.push(file);
    return { file, config: llamaConfig(file) };
  };

  it('times real decode steps of the whole model in a shard worker', async () => {
    const { file, config } = await open();
    const m = await measureDecodeStep({ source: STORIES, file, config, steps: 4 });
    expect(m.layersTimed).toBe(config.nLayers);
    expect(m.probeBytes).toBe(m.wholeBytes);
    expect(m.probeStepMs.p50).toBeGreaterThan(0);
    expect(m.stepMs).toBe(m.probeStepMs.p50);
    expect(m.adapter).not.toBe('');
    expect(m.workersStoppedCleanly).toBe(true);
  });

  it('times the first layers of a model over the probe budget and scales up by bytes', async () => {
    const { file, config } = await open();
    const oneLayer = decodeProbeView(file, config, 1); // nothing fits 1 byte: one layer is the floor
    expect(oneLayer.layers).toEqual({ start: 0, end: 1 });
    expect(oneLayer.embeds && oneLayer.samples).toBe(true);
    const m = await measureDecodeStep({ source: STORIES, file, config, steps: 3, maxProbeBytes: 1 });
    expect(m.layersTimed).toBe(1);
    expect(m.probeBytes).toBeLessThan(m.wholeBytes);
    expect(m.stepMs).toBeCloseTo((m.probeStepMs.p50 * m.wholeBytes) / m.probeBytes, 6);
    expect(m.workersStoppedCleanly).toBe(true);
  });
});
