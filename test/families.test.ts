// Llama 3, Qwen2, Qwen3 and Phi-3 through the one forward pass: every public generation case of
// modern-public.json gives llama.cpp's greedy tokens up to its robust prefix, and its first
// position's top-5 logits. One load per model file. Quantized files run with the int8 matmuls,
// which quantize activations per 32-block as llama.cpp's CPU path does before each Q4_0/Q8_0
// matmul, and round each block's scale to f16 as ggml stores it (without that the tokens drift
// within a few steps, see the models README). A file's cases run concurrently: the scheduler
// batches their steps, so the 128k–152k-row output head is read once per step for all of them.
import { afterAll, beforeAll, describe, it } from 'vitest';
import { loadModel, type Model } from '../src/api/model.ts';
import { testGpu } from './helpers/gpu.ts';
import { isQuantized, modernModelPath, modernReference } from './helpers/modern-models.ts';

const CONTEXT = 128; // the longest prompt (48) + 64 generated tokens

for (const key of Object.keys(modernReference().models)) {
  const quantized = isQuantized(key);
  const cases = modernReference().generation_cases.filter((x) => x.model === key);
  describe.concurrent(key, () => {
    let model: Model;
    beforeAll(async () => {
      const options = { device: await testGpu(), contextLength: CONTEXT, maxSequences: cases.length, maxBatchTokens: 512 };
      model = await loadModel(modernModelPath(key), { ...options, kernels: quantized ? { matmul: 'int8' } : {} });
    }, 300_000);
    afterAll(() => model?.dispose());

    for (const c of cases) {
      it(`${c.name}: ${c.robust_prefix_len} tokens and the first top-5 logits`, async ({ expect }) => {
        const logits = await model.nextTokenLogits(c.prompt_ids);
        for (const [id, logit] of c.top5_first) {
          // F32: llama.cpp and this forward agree to ~1e-4 (logits ~100); quantized: one activation
          // rounding to the neighbouring Q8_0 level moves a logit by up to ~2.
          expect(Math.abs(logits[id]! - logit), `${c.id}: logit of ${id}`).toBeLessThan(quantized ? 2 : 1e-3 * Math.abs(logit));
        }
        const result = await model.complete(c.prompt_ids, { temperature: 0, maxTokens: c.robust_prefix_len, ignoreEos: true });
        expect(result.ids, c.id).toEqual(c.generated_ids.slice(0, c.robust_prefix_len));
      }, 900_000); // 64 steps over a 152k-row output head take minutes on a loaded software adapter
    }
  });
}
