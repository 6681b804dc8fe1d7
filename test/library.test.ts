// The library entry points on a real WebGPU device: loadModel from every kind of source, and
// Model.generate / complete / dispose as a user calls them. Expected tokens come from llama.cpp
// (reference case stories260K-f32/once-upon-a-time).
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ContextOverflowError, InvalidOptionError, loadModel, type GeneratedToken, type GenerateOptions, type LoadOptions, type LoadProgressEvent, type Model } from '../src/index.ts';
import { testGpu } from './helpers/gpu.ts';
import { reference, referenceModelPath } from './helpers/models.ts';

const cases = reference().generation_cases;
const onceUponATime = cases.find((c) => c.id === 'stories260K-f32/once-upon-a-time')!;
const littleDog = cases.find((c) => c.id === 'stories260K-f32/the-little-dog')!;
const modelFile = referenceModelPath(onceUponATime.model);
const fileBytes = readFileSync(modelFile);

const FIRST = 16;
const greedy: GenerateOptions = { temperature: 0, maxTokens: FIRST, ignoreEos: true };

async function options(extra: LoadOptions = {}): Promise<LoadOptions> {
  return { device: await testGpu(), contextLength: 256, ...extra };
}

/** Loads, checks the first greedy tokens against llama.cpp, disposes. */
async function expectReferenceTokens(model: Model): Promise<void> {
  try {
    expect(model.tokenize(onceUponATime.prompt)).toEqual(onceUponATime.prompt_ids);
    const { ids } = await model.complete(onceUponATime.prompt, greedy);
    expect(ids).toEqual(onceUponATime.generated_ids.slice(0, FIRST));
  } finally {
    await model.dispose();
  }
}

async function collect(iterator: AsyncIterable<GeneratedToken>): Promise<GeneratedToken[]> {
  const tokens: GeneratedToken[] = [];
  for await (const token of iterator) tokens.push(token);
  return tokens;
}

// ---------------------------------------------------------------------------------------------
// A static file server that honours Range and records every request.

interface ServedRequest {
  range: string | undefined;
  status: number;
  bytes: number;
}

function startRangeServer(bytes: Uint8Array): Promise<{ server: Server; url: string; requests: ServedRequest[] }> {
  const requests: ServedRequest[] = [];
  const server = createServer((request, response) => {
    const range = request.headers.range;
    const match = range ? /^bytes=(\d+)-(\d*)$/.exec(range) : null;
    if (!match) {
      requests.push({ range, status: 200, bytes: bytes.length });
      response.writeHead(200, { 'Content-Length': bytes.length, 'Accept-Ranges': 'bytes' });
      response.end(bytes);
      return;
    }
    const first = Number(match[1]);
    const last = Math.min(match[2] ? Number(match[2]) : bytes.length - 1, bytes.length - 1);
    if (first >= bytes.length || last < first) {
      requests.push({ range, status: 416, bytes: 0 });
      response.writeHead(416, { 'Content-Range': `bytes */${bytes.length}` });
      response.end();
      return;
    }
    const body = bytes.subarray(first, last + 1);
    requests.push({ range, status: 206, bytes: body.length });
    response.writeHead(206, {
      'Content-Length': body.length,
      'Content-Range': `bytes ${first}-${last}/${bytes.length}`,
      'Accept-Ranges': 'bytes',
    });
    response.end(body);
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      resolve({ server, url: `http://127.0.0.1:${port}/stories260K.gguf`, requests });
    });
  });
}

// ---------------------------------------------------------------------------------------------

describe('loadModel: every kind of source gives the same tokens as llama.cpp', () => {
  it('from a path', async () => {
    await expectReferenceTokens(await loadModel(modelFile, await options()));
  });

  it('from a file:// URL', async () => {
    await expectReferenceTokens(await loadModel(new URL(`file://${modelFile}`), await options()));
  });

  it('from a Blob', async () => {
    await expectReferenceTokens(await loadModel(new Blob([readFileSync(modelFile)]), await options()));
  });

  it('from a File', async () => {
    await expectReferenceTokens(await loadModel(new File([readFileSync(modelFile)], 'stories260K.gguf'), await options()));
  });

  it('from a Uint8Array', async () => {
    await expectReferenceTokens(await loadModel(new Uint8Array(readFileSync(modelFile)), await options()));
  });

  describe('from an http:// URL, read by Range requests', () => {
    let served: Awaited<ReturnType<typeof startRangeServer>>;
    beforeAll(async () => {
      served = await startRangeServer(fileBytes);
    });
    afterAll(() => new Promise<void>((resolve) => served.server.close(() => resolve())));

    it('as a string and as a URL object', async () => {
      for (const source of [served.url, new URL(served.url)]) {
        served.requests.length = 0;
        const model = await loadModel(source, await options());
        const tensorBytes = model.file.tensors.reduce((sum, t) => sum + t.byteLength, 0);
        await expectReferenceTokens(model);

        expect(served.requests.length).toBeGreaterThan(1);
        for (const request of served.requests) {
          expect(request.range, 'every request asks for a byte range').toMatch(/^bytes=\d+-\d+$/);
          expect(request.status).toBe(206);
          expect(request.bytes, 'no request fetches the whole file in one go').toBeLessThan(fileBytes.length);
        }
        const total = served.requests.reduce((sum, r) => sum + r.bytes, 0);
        // One device needs every tensor, each read about once.
        expect(total).toBeGreaterThanOrEqual(tensorBytes);
        expect(total).toBeLessThan(2 * fileBytes.length);
      }
    });
  });

  it('reports load progress: increasing bytes, ending at the total', async () => {
    const events: LoadProgressEvent[] = [];
    const model = await loadModel(modelFile, await options({ onProgress: (p) => events.push({ ...p }) }));
    try {
      expect(events.length).toBeGreaterThan(2);
      const total = events[0]!.bytesTotal;
      expect(total).toBe(model.file.tensors.reduce((sum, t) => sum + t.byteLength, 0));
      for (const e of events) expect(e.bytesTotal).toBe(total);
      for (let i = 1; i < events.length; i++) expect(events[i]!.bytesLoaded).toBeGreaterThan(events[i - 1]!.bytesLoaded);
      expect(events.at(-1)!.bytesLoaded).toBe(total);
    } finally {
      await model.dispose();
    }
  });
});

describe('Model', () => {
  let model: Model;
  beforeAll(async () => {
    model = await loadModel(modelFile, await options());
  });
  afterAll(() => model?.dispose());

  it('generate() streams {id, text} tokens that add up to what complete() returns', async () => {
    for (const settings of [
      { temperature: 0, maxTokens: 40 },
      { temperature: 0.8, seed: 42, maxTokens: 40 },
    ]) {
      const streamed = await collect(model.generate(onceUponATime.prompt, settings));
      const completed = await model.complete(onceUponATime.prompt, settings);
      for (const token of streamed) {
        expect(Number.isInteger(token.id)).toBe(true);
        expect(typeof token.text).toBe('string');
      }
      expect(streamed.map((t) => t.id)).toEqual(completed.ids);
      expect(streamed.map((t) => t.text).join('')).toBe(completed.text);
      expect(completed.text).toBe(model.detokenize(completed.ids));
    }
  });

  it('greedy text is llama.cpp\'s, and a token-id prompt gives the same as its text', async () => {
    const fromText = await model.complete(onceUponATime.prompt, { temperature: 0, maxTokens: onceUponATime.n_predict, ignoreEos: true });
    expect(fromText.text).toBe(onceUponATime.generated_text);
    const fromIds = await model.complete(onceUponATime.prompt_ids, { temperature: 0, maxTokens: FIRST, ignoreEos: true });
    expect(fromIds.ids).toEqual(fromText.ids.slice(0, FIRST));
    expect(fromText.promptIds).toEqual(onceUponATime.prompt_ids);
  });

  it('seeded sampling: the same seed gives the same text, another seed another text', async () => {
    const sample = async (seed: number) => (await model.complete(onceUponATime.prompt, { temperature: 0.8, seed, maxTokens: 48 })).text;
    const first = await sample(42);
    const other = await sample(43);
    expect(await sample(42)).toBe(first);
    expect(other).not.toBe(first);
    // And both really sampled: neither is the greedy text (checked for these two seeds).
    const greedyText = (await model.complete(onceUponATime.prompt, { temperature: 0, maxTokens: 48 })).text;
    expect(first).not.toBe(greedyText);
    expect(other).not.toBe(greedyText);
  });

  it("stop: ['.'] ends before the first period", async () => {
    const result = await model.complete(onceUponATime.prompt, { temperature: 0, maxTokens: 64, stop: ['.'] });
    const expected = onceUponATime.generated_text.slice(0, onceUponATime.generated_text.indexOf('.'));
    expect(expected.length).toBeGreaterThan(0);
    expect(result.text).toBe(expected);
    expect(result.finishReason).toBe('stop');
  });

  it('maxTokens: 0 yields nothing', async () => {
    expect(await collect(model.generate(onceUponATime.prompt, { maxTokens: 0 }))).toEqual([]);
    const result = await model.complete(onceUponATime.prompt, { maxTokens: 0 });
    expect(result.ids).toEqual([]);
    expect(result.text).toBe('');
  });

  it('reports why generation ended', async () => {
    expect((await model.complete(onceUponATime.prompt, { temperature: 0, maxTokens: 3 })).finishReason).toBe('length');
  });

  it('invalid options reject with InvalidOptionError', async () => {
    const invalid: GenerateOptions[] = [{ temperature: -1 }, { topP: 0 }, { topK: 1.5 }, { maxTokens: -1 }, { seed: 0.5 }];
    for (const o of invalid) {
      await expect(model.complete(onceUponATime.prompt, o)).rejects.toThrow(InvalidOptionError);
      await expect(collect(model.generate(onceUponATime.prompt, o))).rejects.toThrow(InvalidOptionError);
    }
    // The model still works afterwards.
    expect((await model.complete(onceUponATime.prompt, greedy)).ids).toEqual(onceUponATime.generated_ids.slice(0, FIRST));
  });

  it('concurrent generate calls on one model both complete correctly (they run one after another)', async () => {
    const [a, b, c] = await Promise.all([
      collect(model.generate(onceUponATime.prompt, greedy)),
      collect(model.generate(littleDog.prompt, greedy)),
      model.complete(onceUponATime.prompt, greedy),
    ]);
    expect(a.map((t) => t.id)).toEqual(onceUponATime.generated_ids.slice(0, FIRST));
    expect(b.map((t) => t.id)).toEqual(littleDog.generated_ids.slice(0, FIRST));
    expect(c.ids).toEqual(onceUponATime.generated_ids.slice(0, FIRST));
  });

  it('a generation abandoned half way leaves the model ready for the next', async () => {
    for await (const token of model.generate(littleDog.prompt, greedy)) {
      expect(token.id).toBe(littleDog.generated_ids[0]);
      break;
    }
    expect((await model.complete(onceUponATime.prompt, greedy)).ids).toEqual(onceUponATime.generated_ids.slice(0, FIRST));
  });

  it('an abort signal ends generation with finish reason "abort"', async () => {
    const controller = new AbortController();
    const ids: number[] = [];
    for await (const token of model.generate(onceUponATime.prompt, { ...greedy, signal: controller.signal })) {
      ids.push(token.id);
      if (ids.length === 3) controller.abort();
    }
    expect(ids).toEqual(onceUponATime.generated_ids.slice(0, 3));
    const aborted = await model.complete(onceUponATime.prompt, { ...greedy, signal: AbortSignal.abort() });
    expect(aborted.finishReason).toBe('abort');
    expect(aborted.ids).toEqual([]);
  });
});

describe('Model limits and lifetime', () => {
  it('a prompt longer than the context rejects with ContextOverflowError naming both lengths', async () => {
    const model = await loadModel(modelFile, await options({ contextLength: 16 }));
    try {
      expect(model.contextLength).toBe(16);
      const prompt = 'Once upon a time there was a little girl named Lily who loved to play outside in the park';
      const length = model.tokenize(prompt).length;
      expect(length).toBeGreaterThan(16);
      for (const attempt of [model.complete(prompt, greedy), collect(model.generate(prompt, greedy))]) {
        const error = await attempt.then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(error).toBeInstanceOf(ContextOverflowError);
        expect((error as Error).message).toMatch(new RegExp(`\\b${length}\\b`));
        expect((error as Error).message).toMatch(/\b16\b/);
      }
      // Generation that reaches the context ends there, with the whole sequence inside it.
      const filled = await model.complete(onceUponATime.prompt, { temperature: 0, maxTokens: 100, ignoreEos: true });
      expect(filled.finishReason).toBe('context');
      expect(filled.promptIds.length + filled.ids.length).toBe(16);
      expect(filled.ids).toEqual(onceUponATime.generated_ids.slice(0, 16 - onceUponATime.prompt_ids.length));
    } finally {
      await model.dispose();
    }
  });

  it('invalid load options reject with InvalidOptionError naming the option', async () => {
    const invalid: Array<[LoadOptions, string]> = [
      [{ contextLength: 0 }, 'contextLength'],
      [{ contextLength: -5 }, 'contextLength'],
      [{ contextLength: 2.5 }, 'contextLength'],
      [{ maxBatchTokens: 0 }, 'maxBatchTokens'],
    ];
    for (const [extra, name] of invalid) {
      const error = await loadModel(modelFile, await options(extra)).then(
        async (model) => {
          await model.dispose();
          return undefined;
        },
        (e: unknown) => e,
      );
      expect(error, JSON.stringify(extra)).toBeInstanceOf(InvalidOptionError);
      expect((error as Error).message).toContain(name);
    }
  });

  it('dispose() then generate rejects with a clear error; the shared device lives on', async () => {
    const model = await loadModel(new Uint8Array(fileBytes), await options());
    await model.dispose();
    await model.dispose(); // twice is harmless
    await expect(collect(model.generate(onceUponATime.prompt, greedy))).rejects.toThrow(/disposed/);
    await expect(model.complete(onceUponATime.prompt, greedy)).rejects.toThrow(/disposed/);
    // The device handed in with `device:` belongs to the caller and still works.
    await expectReferenceTokens(await loadModel(modelFile, await options()));
  });

  it('dispose() waits for a running generation to finish', async () => {
    const model = await loadModel(modelFile, await options());
    const running = model.complete(onceUponATime.prompt, greedy);
    await model.dispose();
    expect((await running).ids).toEqual(onceUponATime.generated_ids.slice(0, FIRST));
  });
});
