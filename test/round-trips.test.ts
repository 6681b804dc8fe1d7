// Host round trips are counted, not assumed: one submit (and one read-back) per step on one
// device, exactly two collectives per layer with tensor parallelism.
import { expect, it } from 'vitest';
import { loadModel } from '../src/api/model.ts';
import { testGpu } from './helpers/gpu.ts';
import { modelPath } from './helpers/models.ts';

it('a greedy step on one device is one submit', async () => {
  const model = await loadModel(modelPath('stories260K.gguf'), { device: await testGpu(), contextLength: 64 });
  try {
    const before = model.stats().devices[0]!;
    const result = await model.complete([1, 403, 407, 261, 378], { temperature: 0, maxTokens: 12, ignoreEos: true });
    const after = model.stats().devices[0]!;
    // One prefill step, then one step per further token.
    expect(after.steps - before.steps).toBe(result.ids.length);
    expect(after.submits - before.submits).toBe(result.ids.length);
    expect(after.collectives).toBe(0);
    // The cold-start breakdown is reported: time reading the file, time repacking and uploading.
    expect(after.loadReadMs).toBeGreaterThan(0);
    expect(after.loadUploadMs).toBeGreaterThan(0);
  } finally {
    await model.dispose();
  }
});
