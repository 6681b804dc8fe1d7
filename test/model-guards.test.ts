// Bad input to the library fails early with a typed error that names the problem; nothing
// computes on garbage, nothing hangs.
import { expect, it } from 'vitest';
import { loadModel } from '../src/api/model.ts';
import { ContextOverflowError } from '../src/engine/runner.ts';
import { InvalidOptionError } from '../src/engine/sampler.ts';
import { ShardPlanError } from '../src/sharding/plan.ts';
import { testGpu } from './helpers/gpu.ts';
import { modelPath } from './helpers/models.ts';

const MODEL = modelPath('stories260K.gguf');

it('refuses token ids outside the vocabulary, and logits past the context', async () => {
  const model = await loadModel(MODEL, { device: await testGpu(), contextLength: 32 });
  try {
    await expect(model.complete([1, 99999, 5], { maxTokens: 2 })).rejects.toThrow(/prompt token 1 is 99999, not a token id of this model \(0 to 511\)/);
    await expect(model.complete([1, -1, 2.5], { maxTokens: 2 })).rejects.toBeInstanceOf(InvalidOptionError);
    await expect(model.nextTokenLogits([1, 512])).rejects.toBeInstanceOf(InvalidOptionError);
    await expect(model.nextTokenLogits(new Array(40).fill(1))).rejects.toBeInstanceOf(ContextOverflowError);
    expect(model.stats().steps).toBe(0); // none of them cost a step
  } finally {
    await model.dispose();
  }
});

it('refuses, before allocating anything, a KV cache over the device\'s storage binding limit', async () => {
  const gpu = await testGpu();
  // 4 KV heads × 8 × 4 bytes = 128 bytes per position and layer: 2^21 positions is 256 MiB per buffer.
  const attempt = loadModel(MODEL, { device: gpu, contextLength: 2048, maxSequences: 1, kvCacheTokens: 2 ** 21 });
  await expect(attempt).rejects.toBeInstanceOf(ShardPlanError);
  await expect(attempt).rejects.toThrow(/one layer's KV buffer needs 256\.00 MiB/);
});

it('refuses an unknown kernel choice, naming the valid ones', async () => {
  const attempt = loadModel(MODEL, { device: await testGpu(), kernels: { matmul: 'fastest' as never } });
  await expect(attempt).rejects.toBeInstanceOf(InvalidOptionError);
  await expect(attempt).rejects.toThrow(/kernels\.matmul must be one of auto, int8, matvec, .*; got "fastest"/);
});

it('refuses a step budget that would starve waiting prompts', async () => {
  await expect(loadModel(MODEL, { device: await testGpu(), maxSequences: 8, maxBatchTokens: 8 })).rejects.toThrow(/maxBatchTokens \(8\) must exceed maxSequences \(8\)/);
});

it('dispose() ends even when a consumer dropped its iterator without finishing it', async () => {
  const model = await loadModel(MODEL, { device: await testGpu(), contextLength: 64, maxSequences: 2 });
  const iterator = model.generate([1], { temperature: 0, maxTokens: 32, ignoreEos: true })[Symbol.asyncIterator]();
  await iterator.next(); // holds a sequence slot, never asks again
  const started = performance.now();
  await model.dispose();
  expect(performance.now() - started).toBeLessThan(5000);
  expect((await model.health()).ok).toBe(false);
  await expect(model.complete([1], { maxTokens: 1 })).rejects.toThrow(/disposed/);
});
