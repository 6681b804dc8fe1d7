// `--shard auto` on real measurements: two devices on the one lavapipe adapter stand in for two
// GPUs. The choice must be a valid split whose reason carries the measured numbers, and loading
// the model with that choice must give llama.cpp's tokens.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModel } from '../src/api/model.ts';
import { llamaConfig, type LlamaConfig } from '../src/model/config.ts';
import { readGGUF, type GGUFFile } from '../src/model/gguf.ts';
import { fileSource } from '../src/model/source.ts';
import { chooseShardSplit, type AutoSplit } from '../src/sharding/auto.ts';
import { distinctAdapters } from '../src/sharding/devices.ts';
import { ShardPlanError } from '../src/sharding/plan.ts';
import { modelPath, reference } from './helpers/models.ts';

const STORIES = modelPath('stories260K.gguf');
const TOKENS = 16;

let file: GGUFFile;
let config: LlamaConfig;
beforeAll(async () => {
  file = await readGGUF(await fileSource(STORIES));
  config = llamaConfig(file);
});
afterAll(() => file?.source.close());

const base = { source: STORIES, contextLength: 256, maxBatchTokens: 32 };

describe('chooseShardSplit, measuring two devices on one adapter', () => {
  let choice: AutoSplit;
  beforeAll(async () => {
    choice = await chooseShardSplit(file, config, { ...base, deviceCount: 2, iterations: 10, decodeSteps: 4 });
  });

  it('returns a split of the two devices that fits, with its plan', () => {
    expect(choice.tp * choice.pp).toBe(2);
    expect(choice.plan).toMatchObject({ tp: choice.tp, pp: choice.pp });
    expect(choice.plan.shards).toHaveLength(2);
    // Both splits of two devices fit stories260K; both were scored, the chosen one first.
    expect(choice.candidates.map((c) => [c.tp, c.pp, c.fits])).toEqual(
      expect.arrayContaining([
        [2, 1, true],
        [1, 2, true],
      ]),
    );
    expect(choice.candidates[0]).toMatchObject({ tp: choice.tp, pp: choice.pp });
    expect(choice.predictedTokensPerSecond).toBeGreaterThan(0);
    expect(choice.predictedTokensPerSecond).toBeCloseTo(1000 / choice.predictedStepMs, 6);
  });

  it('explains itself with the measured numbers', () => {
    const [measuredLine, chosenLine] = choice.reason.split('\n');
    expect(measuredLine).toMatch(/^measured on .+\(2 devices on 1 GPU\): /);
    expect(measuredLine).toMatch(/all-reduce of 256 B \(one token's hidden state\) p50 \d+\.\d+ ms on 2 devices/);
    expect(measuredLine).toMatch(/hand-off p50 \d+\.\d+ ms/);
    expect(measuredLine).toMatch(/decode step on one device \d+\.\d+ ms \(all 5 layers\)/);
    expect(chosenLine).toMatch(new RegExp(`^chose tp=${choice.tp} × pp=${choice.pp}: step \\d+\\.\\d+ ms = kernels .* → \\d+\\.\\d tokens/s$`));
  });

  it('measured what the fitting splits need and shut its workers down', () => {
    const { interconnect, decodeStep } = choice.measured!;
    expect(interconnect!.measurements.map((m) => [m.workers, m.kind, m.bytes, m.verified])).toEqual([
      [1, 'handOff', config.dim * 4, true],
      [2, 'allReduceSum', config.dim * 4, true],
    ]);
    expect(interconnect!.workersStoppedCleanly).toBe(true);
    expect(decodeStep.workersStoppedCleanly).toBe(true);
    expect(choice.measurements).toMatchObject({
      roundTripMs: { 2: interconnect!.measurements[1]!.roundTripMs.p50 },
      handoffMs: interconnect!.measurements[0]!.roundTripMs.p50,
      stepKernelMs: decodeStep.stepMs,
      physicalGpus: 1,
    });
  });

  it("loading with the chosen split gives llama.cpp's tokens", async () => {
    const c = reference().generation_cases.find((x) => x.model === 'stories260K-f32' && x.name === 'once-upon-a-time')!;
    const model = await loadModel(STORIES, { tp: choice.tp, pp: choice.pp, contextLength: 256 });
    try {
      expect(model.plan).toMatchObject({ tp: choice.tp, pp: choice.pp });
      const result = await model.complete(c.prompt, { temperature: 0, maxTokens: TOKENS, ignoreEos: true });
      expect(result.promptIds).toEqual(c.prompt_ids);
      expect(result.ids).toEqual(c.generated_ids.slice(0, TOKENS));
    } finally {
      await model.dispose();
    }
  });
});

describe('chooseShardSplit with given measurements (nothing measured)', () => {
  it('takes pipeline parallel when round trips dwarf the kernels', async () => {
    const choice = await chooseShardSplit(file, config, {
      ...base,
      deviceCount: 2,
      measurements: { roundTripMs: { 2: 5 }, handoffMs: 5, stepKernelMs: 1, physicalGpus: 2 },
    });
    expect([choice.tp, choice.pp]).toEqual([1, 2]);
    expect(choice.measured).toBeUndefined();
    expect(choice.reason).toMatch(/^measurements given, not measured\nchose tp=1 × pp=2: step 6\.00 ms/);
  });

  it('takes tensor parallel on separate GPUs when round trips are cheap', async () => {
    const choice = await chooseShardSplit(file, config, {
      ...base,
      deviceCount: 2,
      // Both open the one lavapipe adapter, but as distinct options they count as two GPUs.
      devices: [{}, { powerPreference: 'low-power' }],
      measurements: { roundTripMs: { 2: 0.001 }, handoffMs: 0.001, stepKernelMs: 10 },
    });
    // On two GPUs TP halves the kernels, which outweighs 11 all-reduces of 1 µs.
    expect([choice.tp, choice.pp]).toEqual([2, 1]);
    expect(choice.measurements.physicalGpus).toBe(2);
  });

  it('refuses with every split\'s reason when none fits, before measuring anything', async () => {
    const attempt = chooseShardSplit(file, config, { ...base, deviceCount: 2, gpuMemoryBytes: 64 * 1024 });
    await expect(attempt).rejects.toThrow(ShardPlanError);
    await expect(attempt).rejects.toThrow(/tp=2 × pp=1 does not fit.*tp=1 × pp=2 does not fit/s);
  });

  it('counts physical GPUs by distinct device options', () => {
    expect(distinctAdapters([{}, {}])).toBe(1);
    expect(distinctAdapters([{ adapterName: 'a' }, { adapterName: 'b' }, { adapterName: 'a' }])).toBe(2);
  });
});
