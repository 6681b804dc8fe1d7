// Log-probabilities come with each generated token, from the raw logits of that very step.
import { expect, it } from 'vitest';
import { loadModel } from '../src/api/model.ts';
import { testGpu } from './helpers/gpu.ts';
import { modelPath, reference } from './helpers/models.ts';

it("each token carries its log-probability and the top alternatives, matching llama.cpp's logits", async () => {
  const c = reference().generation_cases.find((x) => x.id === 'stories260K-f32/once-upon-a-time')!;
  const model = await loadModel(modelPath('stories260K.gguf'), { device: await testGpu(), contextLength: 64 });
  try {
    const tokens = [];
    for await (const t of model.generate(c.prompt_ids, { temperature: 0, maxTokens: 8, logprobs: 3 })) tokens.push(t);
    expect(tokens.map((t) => t.id)).toEqual(c.generated_ids.slice(0, 8));
    for (const t of tokens) {
      expect(t.logprobs!.id).toBe(t.id);
      expect(t.logprobs!.logprob).toBeLessThanOrEqual(0);
      expect(t.logprobs!.top).toHaveLength(3);
      expect(t.logprobs!.top[0]!.id).toBe(t.id); // greedy: the chosen token is the most likely
    }
    // First step against llama.cpp's first-position logits: log-softmax at the chosen token.
    const logits = c.first_logits!;
    const max = Math.max(...logits);
    const logZ = max + Math.log(logits.reduce((sum, x) => sum + Math.exp(x - max), 0));
    expect(tokens[0]!.logprobs!.logprob).toBeCloseTo(logits[c.generated_ids[0]!]! - logZ, 3);
    await expect(model.complete(c.prompt_ids, { logprobs: 99 })).rejects.toThrow(/logprobs must be an integer from 0 to 20/);
  } finally {
    await model.dispose();
  }
});
