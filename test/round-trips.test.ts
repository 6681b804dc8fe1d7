// Host round trips are counted, not assumed: one submit (and one read-back) per step on one
// device, exactly two collectives per layer with tensor parallelism.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { loadModel, type Model } from '../src/api/model.ts';
import { requestGpu } from '../src/gpu/device.ts';
import { testGpu } from './helpers/gpu.ts';
import { modelPath } from './helpers/models.ts';

// The model on the shared test device (the tests below that count the host's calls open their own).
let model: Model;
beforeAll(async () => {
  model = await loadModel(modelPath('stories260K.gguf'), { device: await testGpu(), contextLength: 64 });
});
afterAll(() => model?.dispose());

it('a greedy step on one device is one submit', async () => {
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
});

it('decode steps are encoded ahead: the host records step n+1 while the GPU runs step n', async () => {
  const gpu = await requestGpu();
  // What the host does, in order: command encoders created, submits, read-back maps.
  const events: string[] = [];
  const device = gpu.device;
  const createCommandEncoder = device.createCommandEncoder.bind(device);
  const createBuffer = device.createBuffer.bind(device);
  const submit = device.queue.submit.bind(device.queue);
  device.createCommandEncoder = (descriptor) => {
    events.push('encode');
    return createCommandEncoder(descriptor);
  };
  device.queue.submit = (buffers) => {
    events.push('submit');
    submit(buffers);
  };
  device.createBuffer = (descriptor) => {
    const buffer = createBuffer(descriptor);
    const mapAsync = buffer.mapAsync.bind(buffer);
    buffer.mapAsync = (...args) => {
      events.push('map');
      return mapAsync(...args);
    };
    return buffer;
  };
  const prompt = [1, 403, 407, 261, 378];
  const counted = await loadModel(modelPath('stories260K.gguf'), { device: gpu, contextLength: 64 });
  try {
    const expected = await model.complete(prompt, { temperature: 0, maxTokens: 12, ignoreEos: true });
    events.length = 0;
    const result = await counted.complete(prompt, { temperature: 0, maxTokens: 12, ignoreEos: true });
    expect(result.ids).toEqual(expected.ids);
    const submits = events.flatMap((e, i) => (e === 'submit' ? [i] : []));
    expect(submits).toHaveLength(12); // still one submit per step
    // The prefill and the first decode step have new shapes: encode, submit, map. From the second
    // decode step on the shape repeats, so each submit is followed by encoding the next step
    // before its own read-back is awaited, and the next submit needs no encoding at all.
    for (const i of submits.slice(0, 2)) expect(events.slice(i - 1, i + 2), `step at event ${i}`).toEqual(['encode', 'submit', 'map']);
    expect(events.slice(submits[2]! - 1, submits[2]! + 3)).toEqual(['encode', 'submit', 'encode', 'map']);
    for (const i of submits.slice(3)) expect(events.slice(i - 1, i + 3), `step at event ${i}`).toEqual(['map', 'submit', 'encode', 'map']);
  } finally {
    await counted.dispose();
    device.destroy();
  }
});

it('top-k sampling reads back only the k best candidates, and draws what sampling all the logits draws', async () => {
  const gpu = await requestGpu();
  const readBackBytes: number[] = [];
  const createBuffer = gpu.device.createBuffer.bind(gpu.device);
  gpu.device.createBuffer = (descriptor) => {
    if (descriptor.label === 'step read-back') readBackBytes.push(descriptor.size);
    return createBuffer(descriptor);
  };
  const counted = await loadModel(modelPath('stories260K.gguf'), { device: gpu, contextLength: 64 });
  try {
    const prompt = [1, 403, 407, 261, 378];
    const sampling = { temperature: 0.9, topK: 40, topP: 0.95, minP: 0.05, seed: 11, maxTokens: 24, ignoreEos: true };
    const sampled = await counted.complete(prompt, sampling);
    // 40 (id, logit) pairs after the 256-byte best-id area, not 512 vocabulary logits (2 KiB).
    expect(readBackBytes).toEqual([256 + 40 * 8]);
    // Asking for log-probabilities makes every step read the whole row of logits back; the
    // sampler then sees all 512 logits, and with the same seed it must draw the same tokens.
    const withLogits = await counted.complete(prompt, { ...sampling, logprobs: 0 });
    expect(readBackBytes.at(-1)).toBe(256 + 512 * 4);
    expect(withLogits.ids).toEqual(sampled.ids);
    expect(new Set(sampled.ids).size).toBeGreaterThan(3); // it did sample
  } finally {
    await counted.dispose();
    gpu.device.destroy();
  }
});
