// The real server under abuse: a table of bad requests (each gets its documented status and an
// OpenAI error body, and the server keeps serving), a full queue (429 + Retry-After), a hung
// forward step (/health fails, then recovers; through the --test-hooks step delay), and a
// SIGTERM in the middle of a stream (the stream finishes, the process exits 0).
import { spawnSync } from 'node:child_process';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { referenceModelPath } from './helpers/models.ts';
import { readSse, sleep, startServer, type ServerProcess } from './server-harness.ts';

const MODEL = 'stories260K';
const CONTEXT = 64;
const BODY_LIMIT = 65536;

let server: ServerProcess;

beforeAll(async () => {
  server = await startServer(referenceModelPath('stories260K-f32'), [
    '--ctx', String(CONTEXT),
    '--max-body-bytes', String(BODY_LIMIT),
    '--parallel', '1',
    '--max-queue', '0',
    '--health-deadline-ms', '1000',
    '--test-hooks',
  ]);
});

afterAll(() => server?.kill());

const url = (path: string) => `${server.baseUrl}${path}`;
/** Strings and Blobs go as they are (to send broken JSON or bytes); anything else as JSON. */
const bodyOf = (body: unknown): string | Blob => (typeof body === 'string' || body instanceof Blob ? body : JSON.stringify(body));
const post = (path: string, body: unknown, headers: Record<string, string> = {}) =>
  fetch(url(path), { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: bodyOf(body) });
/** The next forward step stalls `ms` (one device: shard 0). */
const hangNextStep = async (ms: number) => expect((await post('/admin/fault', { shard: 0, kind: 'hang', ms })).status).toBe(200);

const completion = (extra: Record<string, unknown>) => ({ model: MODEL, prompt: 'Once upon a time', max_tokens: 2, temperature: 0, ...extra });
const chat = (extra: Record<string, unknown>) => ({ model: MODEL, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 2, ...extra });

interface BadRequest {
  name: string;
  path?: string;
  method?: string;
  body?: unknown;
  headers?: Record<string, string>;
  status: number;
  type: string;
  param?: string;
  code?: string;
  message?: RegExp;
}

const longPrompt = 'Once upon a time, there was a little girl. '.repeat(12);

const badRequests: BadRequest[] = [
  { name: 'malformed JSON', body: '{"model": "stories260K", "prompt": ', status: 400, type: 'invalid_request_error', code: 'invalid_json' },
  { name: 'invalid UTF-8 body', body: new Blob([Uint8Array.of(0x7b, 0x22, 0xc3, 0x28, 0x22, 0x7d)]), status: 400, type: 'invalid_request_error', code: 'invalid_encoding' },
  { name: 'empty body', body: '', status: 400, type: 'invalid_request_error', code: 'invalid_json' },
  { name: 'body not an object', body: '["stories260K"]', status: 400, type: 'invalid_request_error', code: 'invalid_type' },
  { name: 'model missing', body: { prompt: 'x' }, status: 400, type: 'invalid_request_error', param: 'model' },
  { name: 'unknown model', body: completion({ model: 'gpt-9' }), status: 404, type: 'not_found_error', param: 'model', code: 'model_not_found' },
  { name: 'prompt missing', body: { model: MODEL }, status: 400, type: 'invalid_request_error', param: 'prompt' },
  { name: 'prompt an object', body: completion({ prompt: { text: 'x' } }), status: 400, type: 'invalid_request_error', param: 'prompt' },
  { name: 'prompt empty array', body: completion({ prompt: [] }), status: 400, type: 'invalid_request_error', param: 'prompt' },
  { name: 'prompt negative token id', body: completion({ prompt: [1, -5] }), status: 400, type: 'invalid_request_error', param: 'prompt[1]' },
  { name: 'prompt token id beyond the vocabulary', body: completion({ prompt: [1, 1e9] }), status: 400, type: 'invalid_request_error', param: 'prompt[1]' },
  {
    name: 'prompt over the context',
    body: completion({ prompt: longPrompt }),
    status: 400,
    type: 'invalid_request_error',
    param: 'prompt',
    code: 'context_length_exceeded',
    message: new RegExp(`maximum context length is ${CONTEXT} tokens, but the prompt has \\d{3} tokens`),
  },
  { name: 'chat over the context', path: '/v1/chat/completions', body: chat({ messages: [{ role: 'user', content: longPrompt }] }), status: 400, type: 'invalid_request_error', param: 'messages', code: 'context_length_exceeded' },
  { name: 'max_tokens a string', body: completion({ max_tokens: '5' }), status: 400, type: 'invalid_request_error', param: 'max_tokens', code: 'invalid_type' },
  { name: 'max_tokens zero', body: completion({ max_tokens: 0 }), status: 400, type: 'invalid_request_error', param: 'max_tokens' },
  { name: 'max_tokens huge', body: completion({ max_tokens: 1e30 }), status: 400, type: 'invalid_request_error', param: 'max_tokens' },
  { name: 'temperature a string', body: completion({ temperature: 'hot' }), status: 400, type: 'invalid_request_error', param: 'temperature' },
  { name: 'temperature negative', body: completion({ temperature: -0.5 }), status: 400, type: 'invalid_request_error', param: 'temperature' },
  { name: 'top_p above 1', body: completion({ top_p: 1.5 }), status: 400, type: 'invalid_request_error', param: 'top_p' },
  { name: 'top_k fractional', body: completion({ top_k: 2.5 }), status: 400, type: 'invalid_request_error', param: 'top_k' },
  { name: 'min_p negative', body: completion({ min_p: -0.1 }), status: 400, type: 'invalid_request_error', param: 'min_p' },
  { name: 'presence_penalty out of range', body: completion({ presence_penalty: 9 }), status: 400, type: 'invalid_request_error', param: 'presence_penalty' },
  { name: 'frequency_penalty null-ish string', body: completion({ frequency_penalty: 'none' }), status: 400, type: 'invalid_request_error', param: 'frequency_penalty' },
  { name: 'repetition_penalty zero', body: completion({ repetition_penalty: 0 }), status: 400, type: 'invalid_request_error', param: 'repetition_penalty' },
  { name: 'seed huge', body: completion({ seed: 1e300 }), status: 400, type: 'invalid_request_error', param: 'seed' },
  { name: 'n zero', body: completion({ n: 0 }), status: 400, type: 'invalid_request_error', param: 'n' },
  { name: 'n huge', body: completion({ n: 1_000_000 }), status: 400, type: 'invalid_request_error', param: 'n' },
  { name: 'stop a number', body: completion({ stop: 42 }), status: 400, type: 'invalid_request_error', param: 'stop' },
  { name: 'too many stop strings', body: completion({ stop: Array.from({ length: 100 }, (_, i) => `s${i}`) }), status: 400, type: 'invalid_request_error', param: 'stop' },
  { name: 'logprobs too many', body: completion({ logprobs: 99 }), status: 400, type: 'invalid_request_error', param: 'logprobs' },
  { name: 'stream a string', body: completion({ stream: 'yes' }), status: 400, type: 'invalid_request_error', param: 'stream' },
  { name: 'stream_options without stream', body: completion({ stream_options: { include_usage: true } }), status: 400, type: 'invalid_request_error', param: 'stream_options' },
  { name: 'chat: messages missing', path: '/v1/chat/completions', body: { model: MODEL }, status: 400, type: 'invalid_request_error', param: 'messages' },
  { name: 'chat: empty messages', path: '/v1/chat/completions', body: chat({ messages: [] }), status: 400, type: 'invalid_request_error', param: 'messages' },
  { name: 'chat: unknown role', path: '/v1/chat/completions', body: chat({ messages: [{ role: 'robot', content: 'x' }] }), status: 400, type: 'invalid_request_error', param: 'messages[0].role' },
  { name: 'chat: content a number', path: '/v1/chat/completions', body: chat({ messages: [{ role: 'user', content: 7 }] }), status: 400, type: 'invalid_request_error', param: 'messages[0].content' },
  { name: 'chat: top_logprobs too many', path: '/v1/chat/completions', body: chat({ logprobs: true, top_logprobs: 50 }), status: 400, type: 'invalid_request_error', param: 'top_logprobs' },
  { name: 'chat: unknown model', path: '/v1/chat/completions', body: chat({ model: 'nope' }), status: 404, type: 'not_found_error', code: 'model_not_found' },
  { name: 'oversize body', body: completion({ prompt: 'a'.repeat(BODY_LIMIT + 4000) }), status: 413, type: 'invalid_request_error', code: 'body_too_large' },
  { name: 'oversize headers', body: completion({}), headers: { 'x-padding': 'p'.repeat(20_000) }, status: 431, type: 'invalid_request_error', code: 'headers_too_large' },
  { name: 'wrong method', method: 'GET', status: 405, type: 'invalid_request_error', code: 'method_not_allowed' },
  { name: 'unknown route', path: '/v1/embeddings', body: {}, status: 404, type: 'not_found_error', code: 'not_found' },
];

describe('deno task serve: bad requests', () => {
  for (const bad of badRequests) {
    it(`${bad.name} → ${bad.status}`, async () => {
      const method = bad.method ?? 'POST';
      const response = await fetch(url(bad.path ?? '/v1/completions'), {
        method,
        headers: { 'content-type': 'application/json', ...bad.headers },
        body: method === 'GET' ? undefined : bodyOf(bad.body),
      });
      expect(response.status).toBe(bad.status);
      expect(response.headers.get('content-type')).toBe('application/json');
      const { error } = (await response.json()) as { error: { message: string; type: string; param: string | null; code: string | null } };
      expect(error.type).toBe(bad.type);
      expect(error.message.length).toBeGreaterThan(10);
      if (bad.param) expect(error.param).toBe(bad.param);
      if (bad.code) expect(error.code).toBe(bad.code);
      if (bad.message) expect(error.message).toMatch(bad.message);
    });
  }

  it('keeps serving after all of them', async () => {
    const response = await post('/v1/completions', completion({ max_tokens: 4 }));
    expect(response.status).toBe(200);
    expect(((await response.json()) as { choices: Array<{ text: string }> }).choices[0]!.text).toBe(', there was a');
    const metrics = await (await fetch(url('/metrics'))).text();
    expect(metrics).toMatch(/webshard_requests_total\{endpoint="\/v1\/completions",status="400"\} \d+/);
    expect((await fetch(url('/health'))).status).toBe(200);
  });
});

describe('deno task serve: load and faults', () => {
  it('refuses with 429 and Retry-After when the queue is full', async () => {
    await hangNextStep(1500);
    const busy = await post('/v1/completions', completion({ max_tokens: 3, stream: true }));
    expect(busy.status).toBe(200);
    const refused = await post('/v1/completions', completion({}));
    expect(refused.status).toBe(429);
    expect(refused.headers.get('retry-after')).toBe('1');
    expect(((await refused.json()) as { error: { type: string } }).error.type).toBe('rate_limit_error');
    const { done } = await readSse(busy);
    expect(done).toBe(true);
    expect((await post('/v1/completions', completion({}))).status).toBe(200);
  });

  it('fails /health while a forward step hangs, and recovers after', async () => {
    expect((await fetch(url('/health'))).status).toBe(200);
    await hangNextStep(2500);
    const hung = post('/v1/completions', completion({ max_tokens: 2, stream: true }));
    await sleep(1200);
    const started = Date.now();
    const failing = await fetch(url('/health'));
    expect(failing.status).toBe(503);
    expect(((await failing.json()) as { status: string; detail: string }).status).toBe('unhealthy');
    expect(Date.now() - started).toBeLessThan(2000); // the deadline is 1 s: HTTP itself never hung
    expect((await fetch(url('/ready'))).status).toBe(200); // loaded, only not live

    expect((await readSse(await hung)).done).toBe(true); // the step resumes after 2.5 s
    let status = 0;
    for (let tries = 0; tries < 60 && status !== 200; tries++) {
      await sleep(250);
      status = (await fetch(url('/health'))).status;
    }
    expect(status).toBe(200);
  });

  it('finishes an in-flight stream on SIGTERM and exits 0', async () => {
    const response = await post('/v1/completions', completion({ max_tokens: 24, stream: true }));
    const reader = response.body!.getReader();
    const decoder = new TextDecoder();
    let text = decoder.decode((await reader.read()).value);
    const exit = server.stop();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      text += decoder.decode(value);
    }
    expect(text.trimEnd().endsWith('data: [DONE]')).toBe(true);
    expect(text).toContain('"finish_reason":"length"');
    expect(await exit).toBe(0);
    expect(server.stderr()).toMatch(/SIGTERM: shutting down/);
    expect(server.stderr()).not.toMatch(/unhandled|panicked/i);
  });
});

describe('deno task serve: command line', () => {
  const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
  const serve = (...args: string[]) =>
    spawnSync(resolve(root, 'node_modules/.bin/deno'), ['task', '-q', 'serve', ...args], {
      cwd: root,
      encoding: 'utf8',
      timeout: 60_000,
      env: { ...process.env, XDG_RUNTIME_DIR: '/tmp', NO_COLOR: '1' },
    });

  it('exits 2 with the usage for bad flags', () => {
    for (const [args, message] of [
      [['--bogus'], /unknown option "--bogus"/],
      [[], /serve needs --model/],
      [['-m', 'x.gguf', '--parallel', '0'], /--parallel must be an integer ≥ 1/],
      [['-m', 'x.gguf', '--gpu', 'metal'], /--gpu must be "dawn" or "deno"/],
    ] as const) {
      const r = serve(...args);
      expect(r.status, r.stderr).toBe(2);
      expect(r.stderr).toMatch(message);
      expect(r.stderr).toMatch(/deno task serve --model PATH\|URL/);
    }
  });

  it('exits 1, naming the file, when the model cannot be loaded', () => {
    const r = serve('--model', '/nonexistent/model.gguf', '--port', '0');
    expect(r.status, r.stderr).toBe(1);
    expect(r.stderr).toMatch(/cannot serve \/nonexistent\/model\.gguf: ModelSourceError/);
  });
});
