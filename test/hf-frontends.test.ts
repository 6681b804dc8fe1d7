// Hugging Face folders the way users run them: `deno task run|info -m folder`, `deno task serve
// -m folder`, and loadModel on a base URL read with HTTP Range requests.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModel } from '../src/api/model.ts';
import { denoTask, denoTaskAsync } from './helpers/deno-task.ts';
import { modelPath, modelsDir, reference } from './helpers/models.ts';
import { serveStatic, type StaticServer } from './e2e/static-server.ts';
import { startServer, type ServerProcess } from './server-harness.ts';

const task = (...args: string[]) => denoTask(args);
const stories = reference().generation_cases.filter((c) => c.model === 'stories260K-f32' && c.n_predict === 64);



describe('deno task run / info -m FOLDER', () => {
  it("run --json on hf/stories260K gives llama.cpp's ids and text", () => {
    const c = stories[0]!;
    const r = task('run', '-m', modelPath('hf/stories260K'), '-p', c.prompt, '-n', '64', '--temperature', '0', '--ignore-eos', '--json');
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { prompt_ids: number[]; generated_ids: number[]; text: string };
    expect(out.prompt_ids).toEqual(c.prompt_ids);
    expect(out.generated_ids).toEqual(c.generated_ids);
    expect(out.text).toBe(c.generated_text);
  });

  it('info on a GPTQ folder names the format, the shape and the packed layers', () => {
    const r = task('info', '-m', modelPath('gptq-tiny/gptq-g32'));
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/Hugging Face folder/);
    expect(r.stdout).toMatch(/dim 128, 4 layers, 8 heads \(4 KV\)/);
    expect(r.stdout).toMatch(/Q4_ZP ×28/);
  });

  it('a path to config.json asks for the folder that holds it', () => {
    const r = task('run', '-m', modelPath('hf/stories260K/config.json'));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/pass the folder that holds it/);
  });
});

describe('deno task serve -m FOLDER', () => {
  let server: ServerProcess;
  beforeAll(async () => {
    server = await startServer(modelPath('hf/stories260K') + '/');
  }, 180_000);
  afterAll(() => server?.kill());

  it("serves the folder under its name with llama.cpp's text", async () => {
    const models = (await (await fetch(`${server.baseUrl}/v1/models`)).json()) as { data: Array<{ id: string }> };
    expect(models.data.map((m) => m.id)).toEqual(['stories260K']);
    const c = stories[1]!;
    const response = await fetch(`${server.baseUrl}/v1/completions`, { method: 'POST', body: JSON.stringify({ model: 'stories260K', prompt: c.prompt_ids, max_tokens: 64, temperature: 0 }) });
    expect(response.status).toBe(200);
    expect(((await response.json()) as { choices: Array<{ text: string }> }).choices[0]!.text).toBe(c.generated_text);
  });
});

describe('loadModel on a base URL (HTTP Range requests)', () => {
  let files: StaticServer;
  beforeAll(async () => {
    files = await serveStatic({ '/models/': modelsDir });
  });
  afterAll(() => files?.close());

  it("deno task run -m URL/ reads the folder over HTTP and gives llama.cpp's ids", async () => {
    const c = stories[3]!;
    const r = await denoTaskAsync(['run', '-m', `${files.origin}/models/hf/stories260K/`, '-p', c.prompt, '-n', '64', '--temperature', '0', '--ignore-eos', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect((JSON.parse(r.stdout) as { generated_ids: number[] }).generated_ids).toEqual(c.generated_ids);
  });

  it("reads the folder's weights by ranges and gives the GGUF's tokens", async () => {
    const model = await loadModel(`${files.origin}/models/hf/stories260K/`, { contextLength: 128 });
    try {
      const c = stories[2]!;
      expect((await model.complete(c.prompt_ids, { maxTokens: 64, temperature: 0 })).ids).toEqual(c.generated_ids);
    } finally {
      await model.dispose();
    }
    const weights = files.requests.filter((r) => r.path.endsWith('model.safetensors') && r.method === 'GET');
    expect(weights.length).toBeGreaterThan(1);
    expect(weights.every((r) => r.range !== undefined)).toBe(true);
  });
});
