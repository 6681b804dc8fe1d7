// Tensor and pipeline parallel give the same tokens as one device: every stories260K F32 case.
// Several devices on the one software adapter stand in for several GPUs.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModel, type Model } from '../src/api/model.ts';
import { ShardPlanError } from '../src/sharding/plan.ts';
import { testGpu, maxRelativeError } from './helpers/gpu.ts';
import { modelPath, reference } from './helpers/models.ts';

const MODEL = modelPath('stories260K.gguf');
const cases = reference().generation_cases.filter((c) => c.model === 'stories260K-f32');
const splits = [
  { tp: 2, pp: 1 },
  { tp: 4, pp: 1 },
  { tp: 1, pp: 2 },
  { tp: 2, pp: 2 },
];

let single: Model;
beforeAll(async () => {
  single = await loadModel(MODEL, { device: await testGpu(), contextLength: 256 });
});
afterAll(() => single?.dispose());

for (const split of splits) {
  describe(`tp ${split.tp} × pp ${split.pp}`, () => {
    let model: Model;
    beforeAll(async () => {
      model = await loadModel(MODEL, { ...split, contextLength: 256 });
    });
    afterAll(() => model?.dispose());

    it('gives llama.cpp\'s tokens for every F32 case', async () => {
      for (const c of cases) {
        const result = await model.complete(c.prompt_ids, { temperature: 0, maxTokens: c.n_predict, ignoreEos: true });
        expect(result.ids, c.id).toEqual(c.generated_ids);
      }
    });

    it('gives the one-device logits within 1e-4 relative', async () => {
      for (const c of cases.slice(0, 3)) {
        const sharded = await model.nextTokenLogits(c.prompt_ids);
        const whole = await single.nextTokenLogits(c.prompt_ids);
        // |Δ| / (|logit| + 1): relative for the logits that matter (|logit| ~ 10), absolute near 0.
        expect(maxRelativeError(sharded, whole, 1)).toBeLessThan(1e-4);
      }
    });

    it('counts exactly the collectives the split needs', async () => {
      const before = model.stats().devices.map((d) => d.collectives);
      await model.complete([1], { temperature: 0, maxTokens: 1 });
      model.stats().devices.forEach((d, rank) => {
        const { stage, view } = model.plan!.shards[rank]!;
        // Two all-reduces per layer with tensor-parallel peers, one hand-off at each stage boundary.
        const allReduces = split.tp > 1 ? 2 * (view.layers.end - view.layers.start) : 0;
        const handOffs = (stage > 0 ? 1 : 0) + (stage < split.pp - 1 ? 1 : 0);
        expect(d.collectives - before[rank]!, `shard ${rank}`).toBe(allReduces + handOffs);
      });
    });
  });
}

describe('shard file reads', () => {
  it('each TP=4 shard reads only its share of the file', async () => {
    const model = await loadModel(MODEL, { tp: 4, contextLength: 64 });
    try {
      const plan = model.plan!;
      const reports = model.shards!.reports;
      const fileSize = 1185376;
      for (const shard of plan.shards) {
        const read = reports[shard.rank]!.fileBytesRead;
        // Its planned tensor bytes plus the header (metadata and tensor table: ~20 KiB here).
        expect(read).toBeGreaterThanOrEqual(shard.fileBytesRead);
        expect(read - shard.fileBytesRead).toBeLessThanOrEqual(64 * 1024);
        expect(read).toBeLessThan(fileSize * 0.4);
      }
      const total = reports.reduce((sum, r) => sum + r.fileBytesRead, 0);
      // Four quarters of the split tensors + four copies of the replicated ones (embedding, norms).
      expect(total).toBeLessThan(fileSize * 1.6);
    } finally {
      await model.dispose();
    }
  });
});

describe('tp 8: more shards than KV heads', () => {
  it('works by replicating KV heads (8 query heads, 4 KV heads: each KV head on two shards)', async () => {
    const model = await loadModel(MODEL, { tp: 8, contextLength: 64 });
    try {
      const views = model.plan!.shards.map((s) => s.view);
      expect(views.map((v) => v.heads.end - v.heads.start)).toEqual([1, 1, 1, 1, 1, 1, 1, 1]);
      expect(views.map((v) => v.kvHeads.start)).toEqual([0, 0, 1, 1, 2, 2, 3, 3]);
      const c = cases.find((x) => x.name === 'once-upon-a-time')!;
      const result = await model.complete(c.prompt_ids, { temperature: 0, maxTokens: 16, ignoreEos: true });
      expect(result.ids).toEqual(c.generated_ids.slice(0, 16));
    } finally {
      await model.dispose();
    }
  });

  it('refuses a split with no valid head assignment, naming the fix', async () => {
    const attempt = loadModel(MODEL, { tp: 16, contextLength: 64 });
    await expect(attempt).rejects.toBeInstanceOf(ShardPlanError);
    await expect(attempt).rejects.toThrow(/only 8 query heads .* Valid tp for these heads: 1, 2, 3, 4, 5, 6, 7, 8/);
  });
});
