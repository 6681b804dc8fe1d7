// Continuous batching over a paged KV cache: concurrent generations share batched steps and
// each still gets exactly its sequential (llama.cpp) tokens; blocks come back when sequences end.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModel, type Model } from '../src/api/model.ts';
import { QueueFullError } from '../src/engine/scheduler.ts';
import { testGpu } from './helpers/gpu.ts';
import { modelPath, reference } from './helpers/models.ts';

const MODEL = modelPath('stories260K.gguf');
const cases = reference().generation_cases.filter((c) => c.model === 'stories260K-f32' && c.n_predict === 64);
const greedy = { temperature: 0, maxTokens: 64, ignoreEos: true };

describe('continuous batching', () => {
  // One model for the tests that need no particular pool (each leaves it idle, every block free).
  let model: Model;
  beforeAll(async () => {
    model = await loadModel(MODEL, { device: await testGpu(), contextLength: 128, maxSequences: 4 });
  });
  afterAll(() => model?.dispose());

  it('runs more generations than slots at once, each token-exact, in shared steps', async () => {
    // Staggered starts: later requests join the running batch mid-way.
    const results = await Promise.all(
      cases.map(async (c, i) => {
        await new Promise((resolve) => setTimeout(resolve, i * 15));
        return model.complete(c.prompt_ids, greedy);
      }),
    );
    results.forEach((r, i) => expect(r.ids, cases[i]!.id).toEqual(cases[i]!.generated_ids));
    const stats = model.stats();
    const batched = stats.batchSequencesHistogram.slice(2).reduce((a, b) => a + b, 0);
    expect(batched, JSON.stringify(stats.batchSequencesHistogram)).toBeGreaterThan(0);
    expect(stats.batchSequencesHistogram.length).toBeLessThanOrEqual(5); // never more than 4 sequences in a step
    expect(stats.running).toBe(0);
    expect(stats.kvBlocksUsed).toBe(0);
  });

  it('frees a sequence\'s KV blocks as soon as its consumer stops', async () => {
    let seen = 0;
    for await (const _token of model.generate(cases[0]!.prompt_ids, greedy)) {
      if (++seen === 3) {
        expect(model.stats().running).toBe(1);
        expect(model.stats().kvBlocksUsed).toBeGreaterThan(0);
        break;
      }
    }
    expect(model.stats().running).toBe(0);
    expect(model.stats().kvBlocksUsed).toBe(0);
    const controller = new AbortController();
    const aborted = model.complete(cases[1]!.prompt_ids, { ...greedy, signal: controller.signal });
    setTimeout(() => controller.abort(), 30);
    expect((await aborted).finishReason).toBe('abort');
    expect(model.stats().kvBlocksUsed).toBe(0);
  });

  it('admits by free blocks: a sequence waits until another gives its blocks back', async () => {
    // 4 blocks of 16 positions; each request reserves prompt + 40 positions = 3 blocks.
    const model = await loadModel(MODEL, { device: await testGpu(), contextLength: 64, maxSequences: 2, kvCacheTokens: 64, maxWaiting: 1 });
    try {
      const options = { temperature: 0, maxTokens: 40, ignoreEos: true };
      const first = model.complete(cases[0]!.prompt_ids, options);
      await new Promise((resolve) => setTimeout(resolve, 5));
      const second = model.complete(cases[1]!.prompt_ids, options);
      await new Promise((resolve) => setTimeout(resolve, 5));
      expect(model.stats().waiting).toBe(1);
      await expect(model.complete(cases[2]!.prompt_ids, options)).rejects.toBeInstanceOf(QueueFullError);
      const [a, b] = await Promise.all([first, second]);
      expect(a.ids).toEqual(cases[0]!.generated_ids.slice(0, 40));
      expect(b.ids).toEqual(cases[1]!.generated_ids.slice(0, 40));
      expect(model.stats().batchSequencesHistogram[2] ?? 0).toBe(0); // they never shared a step
    } finally {
      await model.dispose();
    }
  });

  it('batches across tensor-parallel shards too', async () => {
    const model = await loadModel(MODEL, { tp: 2, contextLength: 128, maxSequences: 3 });
    try {
      const some = cases.slice(0, 3);
      const results = await Promise.all(some.map((c) => model.complete(c.prompt_ids, greedy)));
      results.forEach((r, i) => expect(r.ids, some[i]!.id).toEqual(some[i]!.generated_ids));
      expect(model.stats().batchSequencesHistogram[3] ?? 0).toBeGreaterThan(0);
    } finally {
      await model.dispose();
    }
  });
});
