// The whole engine against llama.cpp: every generation case of reference/public.json.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModel, type Model } from '../src/api/model.ts';
import { testGpu } from './helpers/gpu.ts';
import { reference, referenceModelPath, type GenerationCase } from './helpers/models.ts';

const cases = reference().generation_cases;
const modelKeys = [...new Set(cases.map((c) => c.model))];

/** F32 must match token for token; F16 and quantized files up to the case's stable prefix. */
function expectations(c: GenerationCase): { tokens: number; logitTolerance: number } {
  if (c.model === 'stories260K-f32') return { tokens: c.n_predict, logitTolerance: 1e-3 };
  return { tokens: c.stable_prefix_len['0.1'], logitTolerance: 0.3 };
}

for (const key of modelKeys) {
  describe(`generation: ${key}`, () => {
    let model: Model;
    beforeAll(async () => {
      model = await loadModel(referenceModelPath(key), { device: await testGpu(), contextLength: 512 });
    });
    afterAll(() => model?.dispose());

    for (const c of cases.filter((x) => x.model === key)) {
      it(c.name, async () => {
        expect(model.tokenize(c.prompt)).toEqual(c.prompt_ids);
        const result = await model.complete(c.prompt_ids, { temperature: 0, maxTokens: c.n_predict, ignoreEos: true });
        expect(result.ids).toHaveLength(c.n_predict);
        if (key.startsWith('llama-2-tiny-random')) {
          // Nearly flat logits (margins down to 5e-6): its tokens are information, not an assertion.
          const logits = await model.nextTokenLogits(c.prompt_ids);
          for (const [id, logit] of c.top5_first) expect(Math.abs(logits[id]! - logit)).toBeLessThan(1e-3);
          return;
        }
        const { tokens, logitTolerance } = expectations(c);
        expect(result.ids.slice(0, tokens)).toEqual(c.generated_ids.slice(0, tokens));
        if (tokens === c.n_predict) expect(result.text).toBe(c.generated_text);
        const logits = await model.nextTokenLogits(c.prompt_ids);
        // All logits where the case has them; otherwise its top five.
        const expected: Array<[number, number]> = c.first_logits ? c.first_logits.map((logit, id) => [id, logit]) : c.top5_first;
        let worst = 0;
        for (const [id, logit] of expected) worst = Math.max(worst, Math.abs(logits[id]! - logit));
        expect(worst).toBeLessThan(logitTolerance);
      });
    }
  });
}
