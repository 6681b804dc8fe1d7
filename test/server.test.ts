// The real server (`deno task serve`) on loopback with stories260K: the official openai client
// gets llama.cpp's greedy text, concurrent streams equal their sequential answers, a loopback
// load test prints its table, a client that disconnects stops its sequence, and SIGTERM ends
// the server with exit code 0.
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatServeLoadTable, runServeLoad, writeServeLoadResults, type ServeLoadOptions } from '../bench/serve-load.ts';
import { renderPlain } from '../src/api/chat.ts';
import { reference, referenceModelPath } from './helpers/models.ts';
import { sleep, startServer, type ServerProcess } from './server-harness.ts';

const MODEL = 'stories260K';
/** lavapipe on a shared 2-core runner: generous, but bounded. */
const SLOW_TEST_MS = 300_000;
const cases = reference().generation_cases.filter((c) => c.model === 'stories260K-f32' && c.n_predict === 64);
const onceUponATime = cases.find((c) => c.name === 'once-upon-a-time')!;

let server: ServerProcess;
let client: OpenAI;

async function metrics(): Promise<Map<string, number>> {
  const text = await (await fetch(`${server.baseUrl}/metrics`)).text();
  const values = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    values.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return values;
}

beforeAll(async () => {
  server = await startServer(referenceModelPath('stories260K-f32'), ['--parallel', '16']);
  client = new OpenAI({ baseURL: `${server.baseUrl}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 120_000 });
});

afterAll(() => server?.kill());

describe('deno task serve', () => {
  it("gives the openai client llama.cpp's greedy text, streamed and not, with usage", async () => {
    const c = onceUponATime;
    const request = { model: MODEL, prompt: c.prompt_ids, max_tokens: 64, temperature: 0 } as const;
    const completion = await client.completions.create(request);
    expect(completion.choices[0]!.text).toBe(c.generated_text);
    expect(completion.choices[0]!.finish_reason).toBe('length');
    expect(completion.usage).toEqual({ prompt_tokens: c.prompt_ids.length, completion_tokens: 64, total_tokens: c.prompt_ids.length + 64 });

    let streamed = '';
    let usage: OpenAI.CompletionUsage | undefined | null;
    for await (const chunk of await client.completions.create({ ...request, prompt: c.prompt, stream: true, stream_options: { include_usage: true } })) {
      streamed += chunk.choices[0]?.text ?? '';
      if (chunk.usage) usage = chunk.usage;
    }
    expect(streamed).toBe(c.generated_text);
    expect(usage).toEqual(completion.usage);
  }, SLOW_TEST_MS);

  it('serves chat through the plain transcript (stories260K has no template), streamed and not', async () => {
    const messages = [{ role: 'user' as const, content: 'Once upon a time' }];
    const chat = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 12, temperature: 0 });
    const asCompletion = await client.completions.create({ model: MODEL, prompt: renderPlain(messages), max_tokens: 12, temperature: 0 });
    expect(chat.choices[0]!.message).toMatchObject({ role: 'assistant', content: asCompletion.choices[0]!.text });
    expect(chat.usage).toEqual(asCompletion.usage);

    let streamed = '';
    for await (const chunk of await client.chat.completions.create({ model: MODEL, messages, max_tokens: 12, temperature: 0, stream: true })) {
      streamed += chunk.choices[0]?.delta.content ?? '';
    }
    expect(streamed).toBe(chat.choices[0]!.message.content);
    expect((await client.models.list()).data.map((m) => m.id)).toEqual([MODEL]);
  });

  it('samples reproducibly with a seed, and reports logprobs whose best token is the greedy one', async () => {
    const sampled = { model: MODEL, prompt: 'The little dog', max_tokens: 12, temperature: 0.9, top_k: 40, seed: 7 };
    const a = await client.completions.create(sampled);
    const b = await client.completions.create(sampled);
    expect(a.choices[0]!.text).toBe(b.choices[0]!.text);

    const scored = await client.completions.create({ model: MODEL, prompt: 'The little dog', max_tokens: 4, temperature: 0, logprobs: 2 });
    const logprobs = scored.choices[0]!.logprobs!;
    expect(logprobs.tokens!.join('')).toBe(scored.choices[0]!.text);
    for (const [i, top] of logprobs.top_logprobs!.entries()) {
      const [best, second] = Object.values(top);
      expect(logprobs.token_logprobs![i]).toBeCloseTo(best!, 6);
      expect(best!).toBeGreaterThanOrEqual(second!);
    }
  }, SLOW_TEST_MS);

  it('gives 16 concurrent streaming clients each its sequential greedy answer', async () => {
    const prompts = Array.from({ length: 16 }, (_, i) => cases[i % cases.length]!.prompt_ids);
    const request = (prompt: number[]) => ({ model: MODEL, prompt, max_tokens: 16, temperature: 0 });
    const sequential = new Map<string, string>();
    for (const c of cases) sequential.set(String(c.prompt_ids), (await client.completions.create(request(c.prompt_ids))).choices[0]!.text);

    const streams = await Promise.all(
      prompts.map(async (prompt) => {
        let text = '';
        for await (const chunk of await client.completions.create({ ...request(prompt), stream: true })) text += chunk.choices[0]?.text ?? '';
        return text;
      }),
    );
    streams.forEach((text, i) => expect(text, `client ${i}`).toBe(sequential.get(String(prompts[i]))));
  }, SLOW_TEST_MS);

  it('reports loopback throughput for 1, 4 and 16 concurrent clients', async () => {
    const options: ServeLoadOptions = { baseUrl: server.baseUrl, model: MODEL, concurrencies: [1, 4, 16], rounds: 1, maxTokens: 16, prompt: 'Once upon a time', timeoutMs: 120_000 };
    const rows = await runServeLoad(options);
    console.log(`serve-load (stories260K, lavapipe, ${options.maxTokens} tokens a request):\n${formatServeLoadTable(rows)}`);
    const path = await writeServeLoadResults(options, rows, { source: 'test/server.test.ts' });
    console.log(`wrote ${path}`);
    expect(rows.map((r) => [r.concurrency, r.requests, r.failures, r.completionTokens])).toEqual([
      [1, 1, 0, 16],
      [4, 4, 0, 64],
      [16, 16, 0, 256],
    ]);
    for (const row of rows) expect(row.tokensPerSecond).toBeGreaterThan(0);
  }, SLOW_TEST_MS);

  it('stops the generation of a client that disconnects mid-stream', async () => {
    const before = (await metrics()).get('webshard_requests_cancelled_total{reason="client_disconnect"}') ?? 0;
    const disconnect = new AbortController();
    const response = await fetch(`${server.baseUrl}/v1/completions`, {
      method: 'POST',
      body: JSON.stringify({ model: MODEL, prompt: 'Once upon a time', max_tokens: 1500, ignore_eos: true, temperature: 0, stream: true }),
      signal: disconnect.signal,
    });
    const reader = response.body!.getReader();
    let received = '';
    while (!received.includes('"text":"')) {
      const { done, value } = await reader.read();
      if (done) throw new Error(`the stream ended before its first token: ${received}`);
      received += new TextDecoder().decode(value);
    }
    disconnect.abort();

    let m = await metrics();
    for (let tries = 0; tries < 100 && (m.get('webshard_sequences_running') !== 0 || m.get('webshard_engine_running') !== 0); tries++) {
      await sleep(50);
      m = await metrics();
    }
    expect(m.get('webshard_sequences_running')).toBe(0);
    expect(m.get('webshard_engine_running')).toBe(0);
    expect(m.get('webshard_requests_cancelled_total{reason="client_disconnect"}')).toBe(before + 1);
    // Stopped, not finished: far fewer than 1500 tokens were generated, and no step runs any more.
    const steps = m.get('webshard_engine_steps')!;
    await sleep(300);
    expect((await metrics()).get('webshard_engine_steps')).toBe(steps);
    expect(m.get('webshard_requests_total{endpoint="/v1/completions",status="499"}')).toBe(1);

    const after = await client.completions.create({ model: MODEL, prompt: onceUponATime.prompt_ids, max_tokens: 8, temperature: 0 });
    expect(onceUponATime.generated_text.startsWith(after.choices[0]!.text)).toBe(true);
  });

  it('exports Prometheus metrics, answers /health with a forward step, and keeps the test hook off by default', async () => {
    const m = await metrics();
    for (const name of ['webshard_prompt_tokens_total', 'webshard_generation_tokens_total', 'webshard_time_to_first_token_seconds_count', 'webshard_time_per_output_token_seconds_count']) {
      expect(m.get(name), name).toBeGreaterThan(0);
    }
    expect(m.get('webshard_queue_depth')).toBe(0);
    expect(m.get('webshard_model_ready')).toBe(1);
    expect(m.get('webshard_engine_steps')).toBeGreaterThan(0); // whatever model.stats() holds is exported
    const health = await fetch(`${server.baseUrl}/health`);
    expect(health.status).toBe(200);
    expect(((await health.json()) as { detail: string }).detail).toMatch(/probe step|busy/);
    expect((await fetch(`${server.baseUrl}/admin/step-delay`, { method: 'POST', body: '{"ms":1}' })).status).toBe(404);
  });

  it('exits 0 on SIGTERM, with nothing left unhandled', async () => {
    expect(await server.stop()).toBe(0);
    expect(server.stderr()).toMatch(/SIGTERM: shutting down/);
    expect(server.stderr()).not.toMatch(/unhandled|panicked|error 500/i);
  });
});
