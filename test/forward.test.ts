// The GPU forward pass against the plain-TypeScript reference forward pass, for every weight
// type in the test models: same weights (dequantized on the CPU), same math, f64 on the CPU.
import { describe, expect, it } from 'vitest';
import { loadModel } from '../src/engine/model.ts';
import { llamaConfig } from '../src/model/config.ts';
import { readGGUF } from '../src/model/gguf.ts';
import { fileSource } from '../src/model/source.ts';
import { testGpu, maxRelativeError } from './helpers/gpu.ts';
import { modelPath } from './helpers/models.ts';
import { ReferenceLlama } from './reference/llama-forward.ts';

const files = [
  'stories260K.gguf',
  'stories260K-F16.gguf',
  'stories260K-Q8_0.gguf',
  'stories260K-Q4_0.gguf',
  'stories260K-Q4_K_M.gguf',
  'llama-2-tiny-random.gguf',
];

// Prompts of several lengths, so prefill runs with token counts that are not workgroup multiples.
const prompts = [[1], [1, 403, 407, 261, 378], [1, 291, 348, 411, 295, 410, 479, 477, 479, 484, 381, 410, 300, 315, 311, 261, 322, 280]];

describe('forward pass vs the TypeScript reference', () => {
  for (const name of files) {
    it(name, async () => {
      const source = await fileSource(modelPath(name));
      const file = await readGGUF(source);
      const reference = await ReferenceLlama.load(file, llamaConfig(file));
      await source.close();
      const model = await loadModel(modelPath(name), { device: await testGpu(), contextLength: 64, maxBatchTokens: 8 });
      try {
        for (const ids of prompts) {
          const expected = reference.promptLogits(ids);
          const actual = await model.nextTokenLogits(ids);
          expect(maxRelativeError(actual, expected, 1)).toBeLessThan(1e-4);
        }
      } finally {
        await model.dispose();
      }
    });
  }
});
