// Every family split over devices gives the one-device tokens: tensor parallel (biases split with
// their rows, Q/K norms replicated, fused QKV and gate‖up read as their parts, the 128k–152k-row
// output head split by vocabulary), pipeline parallel, and both. The one-device model gives
// llama.cpp's tokens (families.test.ts), so each split is checked against llama.cpp's tokens and
// first-position logits. Several devices on the one software adapter stand in for several GPUs.
// `npm test` splits each family one way, the three splits in rotation (every family split, every
// split of a family run); `npm run test:full` runs every family with every split.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModel, type Model } from '../src/api/model.ts';
import { pairwise } from './helpers/gpu.ts';
import { modernModelPath, modernReference } from './helpers/modern-models.ts';

const TOKENS = 8; // a 151936-row output head makes each sharded step slow on a software adapter
// In this order the rotation puts every TP-specific part under TP: Qwen2's biases (tp 2), Phi-3's
// fused QKV and gate‖up (tp 2 × pp 2), Qwen3's per-head norms (tp 2), and their 152k-row heads.
const families = ['qwen2-tiny-f32', 'llama3-tiny-f32', 'phi3-tiny-f32', 'qwen3-tiny-f32'];
const splits = [
  { tp: 2, pp: 1 },
  { tp: 1, pp: 2 },
  { tp: 2, pp: 2 },
];

families.forEach((key, familyIndex) => {
  // A case whose first TOKENS steps all have clear margins.
  const c = modernReference().generation_cases.find((x) => x.model === key && x.robust_prefix_len === 64 && x.stable_prefix_len['0.1'] >= TOKENS)!;
  for (const split of pairwise(splits, familyIndex)) {
    describe(`${key}: tp ${split.tp} × pp ${split.pp}`, () => {
      let model: Model;
      beforeAll(async () => {
        model = await loadModel(modernModelPath(key), { ...split, contextLength: 64 });
      }, 300_000);
      afterAll(() => model?.dispose());

      it(`${c.name}: llama.cpp's first-position logits and ${TOKENS} tokens`, async () => {
        const shards = model.plan!.shards;
        if (split.tp > 1) expect(shards.at(-1)!.view.vocab.end - shards.at(-1)!.view.vocab.start).toBeLessThan(model.config.vocabSize);
        const logits = await model.nextTokenLogits(c.prompt_ids);
        for (const [id, logit] of c.top5_first) expect(Math.abs(logits[id]! - logit), `logit of ${id}`).toBeLessThan(1e-3 * Math.abs(logit));
        const result = await model.complete(c.prompt_ids, { temperature: 0, maxTokens: TOKENS, ignoreEos: true });
        expect(result.ids).toEqual(c.generated_ids.slice(0, TOKENS));
      }, 600_000);
    });
  }
});
