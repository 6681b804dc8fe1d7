// The HTTP server without a GPU: its modules one by one, then the whole handler over a stand-in
// model that runs the engine's real generate loop on a scripted forward pass.
import { describe, expect, it } from 'vitest';
import { ChatTemplate, ChatTemplateError, renderPlain } from '../src/api/chat.ts';
import { HealthMonitor } from '../src/server/health.ts';
import { MetricsRegistry, renderNumericFields, snakeCase } from '../src/server/metrics.ts';
import { parseChatRequest, parseCompletionRequest } from '../src/server/openai-schema.ts';
import { engineAdmission, SequenceReservations } from '../src/server/reservations.ts';
import { logprobsOf } from '../src/server/sequence.ts';
import { InferenceServer, type ServerLimits, type ServerOptions } from '../src/server/server.ts';
import { FakeModel, fakeTokenizer, readSse, sleep, type FakeModelOptions } from './server-harness.ts';

const CHATML =
  "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

function setup(options: { model?: FakeModelOptions; limits?: Partial<ServerLimits> } & Partial<ServerOptions> = {}) {
  const model = new FakeModel(options.model);
  const log: string[] = [];
  const faults = options.testHooks ? model.faults : undefined;
  const server = new InferenceServer({ modelName: 'fake', faults, ...options, log: (line) => log.push(line) });
  server.attach(model);
  const call = (path: string, init?: RequestInit) => server.handle(new Request(`http://127.0.0.1${path}`, init));
  const post = (path: string, body: unknown, init: RequestInit = {}) =>
    call(path, { method: 'POST', body: typeof body === 'string' ? body : JSON.stringify(body), ...init });
  const metric = async (line: string) => {
    const text = await (await call('/metrics')).text();
    const match = text.split('\n').find((l) => l.startsWith(line + ' '));
    return match === undefined ? undefined : Number(match.slice(line.length + 1));
  };
  return { model, server, call, post, metric, log };
}

async function until(condition: () => boolean | Promise<boolean>, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await sleep(5);
  }
}

const completion = (extra: Record<string, unknown> = {}) => ({ model: 'fake', prompt: 'Hi', max_tokens: 8, temperature: 0, ...extra });

describe('request validation', () => {
  const cases: Array<[string, Record<string, unknown>, string]> = [
    ['model missing', { prompt: 'x' }, 'model'],
    ['model a number', { model: 3, prompt: 'x' }, 'model'],
    ['prompt missing', { model: 'm' }, 'prompt'],
    ['prompt an object', { model: 'm', prompt: { text: 'x' } }, 'prompt'],
    ['prompt empty array', { model: 'm', prompt: [] }, 'prompt'],
    ['prompt negative id', { model: 'm', prompt: [1, -2] }, 'prompt[1]'],
    ['prompt fractional id', { model: 'm', prompt: [1, 2.5] }, 'prompt[1]'],
    ['prompt batch with a number', { model: 'm', prompt: ['a', 3] }, 'prompt[1]'],
    ['max_tokens a string', { model: 'm', prompt: 'x', max_tokens: '8' }, 'max_tokens'],
    ['max_tokens zero', { model: 'm', prompt: 'x', max_tokens: 0 }, 'max_tokens'],
    ['max_tokens huge', { model: 'm', prompt: 'x', max_tokens: 1e20 }, 'max_tokens'],
    ['temperature negative', { model: 'm', prompt: 'x', temperature: -1 }, 'temperature'],
    ['temperature above 2', { model: 'm', prompt: 'x', temperature: 2.5 }, 'temperature'],
    ['top_p zero', { model: 'm', prompt: 'x', top_p: 0 }, 'top_p'],
    ['top_k fractional', { model: 'm', prompt: 'x', top_k: 1.5 }, 'top_k'],
    ['min_p above 1', { model: 'm', prompt: 'x', min_p: 2 }, 'min_p'],
    ['presence_penalty out of range', { model: 'm', prompt: 'x', presence_penalty: 3 }, 'presence_penalty'],
    ['frequency_penalty a bool', { model: 'm', prompt: 'x', frequency_penalty: true }, 'frequency_penalty'],
    ['repetition_penalty zero', { model: 'm', prompt: 'x', repetition_penalty: 0 }, 'repetition_penalty'],
    ['seed fractional', { model: 'm', prompt: 'x', seed: 1.5 }, 'seed'],
    ['seed beyond 2^53', { model: 'm', prompt: 'x', seed: 1e300 }, 'seed'],
    ['n zero', { model: 'm', prompt: 'x', n: 0 }, 'n'],
    ['n huge', { model: 'm', prompt: 'x', n: 1e9 }, 'n'],
    ['prompts × n over the limit', { model: 'm', prompt: ['a', 'b', 'c'], n: 6 }, 'n'],
    ['stop a number', { model: 'm', prompt: 'x', stop: 5 }, 'stop'],
    ['stop array with a number', { model: 'm', prompt: 'x', stop: ['a', 5] }, 'stop[1]'],
    ['too many stops', { model: 'm', prompt: 'x', stop: Array(17).fill('a') }, 'stop'],
    ['stream a string', { model: 'm', prompt: 'x', stream: 'yes' }, 'stream'],
    ['stream_options without stream', { model: 'm', prompt: 'x', stream_options: { include_usage: true } }, 'stream_options'],
    ['include_usage a string', { model: 'm', prompt: 'x', stream: true, stream_options: { include_usage: 'y' } }, 'stream_options.include_usage'],
    ['logprobs above 5', { model: 'm', prompt: 'x', logprobs: 6 }, 'logprobs'],
    ['echo', { model: 'm', prompt: 'x', echo: true }, 'echo'],
    ['logit_bias', { model: 'm', prompt: 'x', logit_bias: { '1': 5 } }, 'logit_bias'],
    ['best_of', { model: 'm', prompt: 'x', best_of: 3 }, 'best_of'],
  ];
  for (const [name, body, param] of cases) {
    it(`completions: ${name} → 400 naming ${param}`, () => {
      expect(() => parseCompletionRequest(body)).toThrowError(expect.objectContaining({ status: 400, details: expect.objectContaining({ param }) }));
    });
  }

  const chatCases: Array<[string, Record<string, unknown>, string]> = [
    ['messages missing', { model: 'm' }, 'messages'],
    ['messages empty', { model: 'm', messages: [] }, 'messages'],
    ['messages a string', { model: 'm', messages: 'hi' }, 'messages'],
    ['message a string', { model: 'm', messages: ['hi'] }, 'messages[0]'],
    ['role unknown', { model: 'm', messages: [{ role: 'wizard', content: 'x' }] }, 'messages[0].role'],
    ['content a number', { model: 'm', messages: [{ role: 'user', content: 5 }] }, 'messages[0].content'],
    ['content missing', { model: 'm', messages: [{ role: 'user' }] }, 'messages[0].content'],
    ['image part', { model: 'm', messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] }, 'messages[0].content[0].type'],
    ['top_logprobs without logprobs', { model: 'm', messages: [{ role: 'user', content: 'x' }], top_logprobs: 2 }, 'top_logprobs'],
    ['top_logprobs above 20', { model: 'm', messages: [{ role: 'user', content: 'x' }], logprobs: true, top_logprobs: 21 }, 'top_logprobs'],
    ['tools', { model: 'm', messages: [{ role: 'user', content: 'x' }], tools: [{ type: 'function' }] }, 'tools'],
    ['max_completion_tokens negative', { model: 'm', messages: [{ role: 'user', content: 'x' }], max_completion_tokens: -1 }, 'max_completion_tokens'],
  ];
  for (const [name, body, param] of chatCases) {
    it(`chat: ${name} → 400 naming ${param}`, () => {
      expect(() => parseChatRequest(body)).toThrowError(expect.objectContaining({ status: 400, details: expect.objectContaining({ param }) }));
    });
  }

  it('fills in OpenAI defaults and reads every supported field', () => {
    expect(parseCompletionRequest({ model: 'm', prompt: 'x' })).toEqual({
      model: 'm',
      prompts: ['x'],
      maxTokens: 16,
      stop: [],
      n: 1,
      stream: false,
      includeUsage: false,
      logprobs: undefined,
      ignoreEos: false,
      speculative: true,
      sampling: { temperature: 1, topP: 1, topK: 0, minP: 0, presencePenalty: 0, frequencyPenalty: 0, repetitionPenalty: 1, seed: undefined },
    });
    const chat = parseChatRequest({
      model: 'm',
      messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: [{ type: 'text', text: 'a' }, { type: 'text', text: 'b' }] }],
      max_tokens: 5,
      max_completion_tokens: 7,
      stop: 'x',
      top_k: -1,
      logprobs: true,
      top_logprobs: 3,
      stream: true,
      stream_options: { include_usage: true },
      seed: 42,
      user: 'ignored',
    });
    expect(chat.messages).toEqual([{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'a\nb' }]);
    expect(chat).toMatchObject({ maxTokens: 7, stop: ['x'], logprobs: 3, includeUsage: true, sampling: { topK: 0, seed: 42 } });
    expect(parseChatRequest({ model: 'm', messages: [{ role: 'user', content: 'x' }] }).maxTokens).toBeUndefined();
    expect(parseCompletionRequest({ model: 'm', prompt: [[1, 2], 'b'] }).prompts).toEqual([[1, 2], 'b']);
    expect(parseCompletionRequest({ model: 'm', prompt: 'x', speculative: false }).speculative).toBe(false);
    expect(() => parseCompletionRequest({ model: 'm', prompt: 'x', speculative: 'no' })).toThrowError(expect.objectContaining({ status: 400, details: expect.objectContaining({ param: 'speculative' }) }));
  });
});

describe('chat templates', () => {
  const tokens = fakeTokenizer; // BOS "<s>", EOS "</s>"

  it("renders the model's Jinja template with the generation prompt", () => {
    const template = ChatTemplate.fromMetadata(new Map([['tokenizer.chat_template', CHATML]]), tokens)!;
    expect(template.source).toBe('model');
    expect(template.render([{ role: 'user', content: 'Hi' }])).toBe('<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n');
  });

  it("turns the template's raise_exception into a ChatTemplateError (the server's 400 naming messages)", () => {
    const strict = ChatTemplate.fromSource("{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must be the user') }}{% endif %}ok", tokens);
    expect(() => strict.render([{ role: 'assistant', content: 'x' }])).toThrowError(ChatTemplateError);
    expect(() => strict.render([{ role: 'assistant', content: 'x' }])).toThrowError(/first message must be the user/);
  });

  it('falls back to a plain transcript when the model has no template', () => {
    expect(ChatTemplate.fromMetadata(new Map(), tokens)).toBeUndefined();
    const template = ChatTemplate.plain(tokens);
    expect(template.source).toBe('plain');
    const messages = [
      { role: 'system' as const, content: 'Be brief.' },
      { role: 'user' as const, content: 'Hi' },
    ];
    expect(template.render(messages)).toBe('System: Be brief.\nUser: Hi\nAssistant:');
    expect(renderPlain(messages)).toBe(template.render(messages));
  });

  it('refuses a template that does not parse', () => {
    expect(() => ChatTemplate.fromSource('{% for x in %}', tokens)).toThrow(/does not parse/);
  });
});

describe('metrics', () => {
  it('renders counters, gauges and histograms in the Prometheus text format', () => {
    const registry = new MetricsRegistry();
    const requests = registry.counter('t_requests_total', 'Requests.');
    requests.inc({ status: '200' });
    requests.inc({ status: '200' });
    requests.inc({ status: '400', path: 'a"b\\c\nd' });
    registry.gauge('t_depth', 'Depth.', () => 3);
    const latency = registry.histogram('t_latency_seconds', 'Latency.', [0.1, 1]);
    latency.observe(0.05);
    latency.observe(0.5);
    latency.observe(5);
    expect(registry.render()).toBe(
      [
        '# HELP t_requests_total Requests.',
        '# TYPE t_requests_total counter',
        't_requests_total{status="200"} 2',
        't_requests_total{status="400",path="a\\"b\\\\c\\nd"} 1',
        '# HELP t_depth Depth.',
        '# TYPE t_depth gauge',
        't_depth 3',
        '# HELP t_latency_seconds Latency.',
        '# TYPE t_latency_seconds histogram',
        't_latency_seconds_bucket{le="0.1"} 1',
        't_latency_seconds_bucket{le="1"} 2',
        't_latency_seconds_bucket{le="+Inf"} 3',
        't_latency_seconds_sum 5.55',
        't_latency_seconds_count 3',
        '',
      ].join('\n'),
    );
  });

  it('renders every numeric field of an object, nested and per array item', () => {
    const text = renderNumericFields('e', { queued: 1, lastStepMs: 2.5, ok: true, name: 'x', devices: [{ stepMs: 3 }, { stepMs: 4 }], kv: { blocksUsed: 7 } });
    expect(text.split('\n').filter((l) => !l.startsWith('#'))).toEqual([
      'e_queued 1',
      'e_last_step_ms 2.5',
      'e_ok 1',
      'e_devices_step_ms{device="0"} 3',
      'e_devices_step_ms{device="1"} 4',
      'e_kv_blocks_used 7',
    ]);
    expect(snakeCase('allReduceMs')).toBe('all_reduce_ms');
  });
});

describe('sequence reservations', () => {
  it('counts running and queued places, refuses beyond them with 429 and Retry-After, and resolves when idle', async () => {
    const reservations = new SequenceReservations(1, 2);
    const [first] = reservations.reserve(1);
    const [second, third] = reservations.reserve(2);
    expect(() => reservations.reserve(1)).toThrowError(expect.objectContaining({ status: 429, details: expect.objectContaining({ headers: { 'retry-after': '1' } }) }));
    expect([reservations.running, reservations.queued]).toEqual([1, 2]);
    second!.release();
    second!.release(); // twice is once
    expect([reservations.running, reservations.queued]).toEqual([1, 1]);
    let idle = false;
    const whenIdle = reservations.whenIdle().then(() => (idle = true));
    first!.release();
    await Promise.resolve();
    expect(idle).toBe(false);
    third!.release();
    await whenIdle;
    expect([reservations.running, reservations.queued]).toEqual([0, 0]);
  });

  it('admits a request with several choices all or nothing', () => {
    const reservations = new SequenceReservations(2, 1);
    expect(() => reservations.reserve(4)).toThrowError(expect.objectContaining({ status: 429 }));
    expect(reservations.running + reservations.queued).toBe(0);
    expect(reservations.reserve(3)).toHaveLength(3);
  });

  it('loads the engine with the same limits: its slots and its waiting room', () => {
    expect(engineAdmission({ maxRunning: 3, maxQueued: 5 })).toEqual({ maxSequences: 3, maxWaiting: 5 });
  });
});

describe('logprobs', () => {
  it('are a log-softmax, with the best alternatives in order', () => {
    const logits = Float32Array.from([1, 3, 2, 3, -1]);
    const { id, logprob, top } = logprobsOf(logits, 2, 3);
    const logZ = Math.log([...logits].reduce((s, x) => s + Math.exp(x), 0));
    expect(id).toBe(2);
    expect(logprob).toBeCloseTo(2 - logZ, 6);
    expect(top.map((t) => t.id)).toEqual([1, 3, 2]);
    expect(top[0]!.logprob).toBeCloseTo(3 - logZ, 6);
    expect(logprobsOf(logits, 0, 0).top).toEqual([]);
  });
});

describe('health monitor', () => {
  it('shares one probe among concurrent checks and answers at once while a failed probe is still stuck', async () => {
    let calls = 0;
    let steps = 0;
    let ok = false;
    const monitor = new HealthMonitor(
      {
        health: async () => {
          calls++;
          await sleep(5);
          return ok ? { ok: true, detail: 'fine' } : { ok: false, detail: 'stuck' };
        },
        stats: () => ({ steps }),
      },
      100,
    );
    const [a, b] = await Promise.all([monitor.check(), monitor.check()]);
    expect([a.ok, b.ok, calls]).toEqual([false, false, 1]);
    expect((await monitor.check()).detail).toMatch(/no forward step has completed since/);
    expect(calls).toBe(1);
    steps++;
    ok = true;
    expect(await monitor.check()).toEqual({ ok: true, detail: 'fine' });
    expect(calls).toBe(2);
  });
});

describe('handler over a stand-in model', () => {
  it('answers completions in JSON and as a stream with the same text, usage and finish reason', async () => {
    const { model, post } = setup();
    const response = await post('/v1/completions', completion());
    expect(response.status).toBe(200);
    const body = (await response.json()) as { choices: Array<{ text: string; finish_reason: string }>; usage: unknown; object: string };
    expect(body.object).toBe('text_completion');
    expect(body.choices).toEqual([{ index: 0, text: model.answer(3, 8), logprobs: null, finish_reason: 'length' }]);
    expect(body.usage).toEqual({ prompt_tokens: 3, completion_tokens: 8, total_tokens: 11 });

    const stream = await post('/v1/completions', completion({ stream: true, stream_options: { include_usage: true } }));
    expect(stream.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const { events, done } = await readSse(stream);
    expect(done).toBe(true);
    const choices = events.flatMap((e) => e.choices as Array<{ text: string; finish_reason: string | null }>);
    expect(choices.map((c) => c.text).join('')).toBe(model.answer(3, 8));
    expect(choices.at(-1)!.finish_reason).toBe('length');
    expect(events.slice(0, -1).every((e) => e.usage === null)).toBe(true);
    expect(events.at(-1)).toMatchObject({ choices: [], usage: { prompt_tokens: 3, completion_tokens: 8, total_tokens: 11 } });
  });

  it('stops at stop strings and at EOS with finish_reason "stop", also on the very last token', async () => {
    const { model, post } = setup({ model: { script: 'abcdefgh\u0000' } });
    const stopped = (await (await post('/v1/completions', completion({ prompt: [1], stop: ['de'] }))).json()) as { choices: Array<{ text: string; finish_reason: string }> };
    expect(stopped.choices[0]).toMatchObject({ text: 'bc', finish_reason: 'stop' });
    const atLimit = (await (await post('/v1/completions', completion({ prompt: [1], stop: ['d'], max_tokens: 3 }))).json()) as typeof stopped;
    expect(atLimit.choices[0]).toMatchObject({ text: 'bc', finish_reason: 'stop' });
    const eos = (await (await post('/v1/completions', completion({ prompt: [1], max_tokens: 50 }))).json()) as typeof stopped & { usage: { completion_tokens: number } };
    expect(eos.choices[0]).toMatchObject({ text: model.answer(1, 50), finish_reason: 'stop' });
    expect(eos.usage.completion_tokens).toBe(8); // "bcdefgh" and the EOS token
    const ignored = (await (await post('/v1/completions', completion({ prompt: [1], max_tokens: 12, ignore_eos: true }))).json()) as typeof stopped;
    expect(ignored.choices[0]!.finish_reason).toBe('length');
  });

  it('clamps max_tokens to the context and refuses prompts that do not fit, naming both lengths', async () => {
    const { post } = setup({ model: { contextLength: 16 } });
    const clamped = (await (await post('/v1/completions', completion({ prompt: 'abc', max_tokens: 1000 }))).json()) as { usage: { completion_tokens: number }; choices: Array<{ finish_reason: string }> };
    expect(clamped.usage.completion_tokens).toBe(12);
    expect(clamped.choices[0]!.finish_reason).toBe('length');
    const over = await post('/v1/completions', completion({ prompt: 'x'.repeat(20) }));
    expect(over.status).toBe(400);
    const error = ((await over.json()) as { error: { message: string; code: string; param: string } }).error;
    expect(error).toMatchObject({ code: 'context_length_exceeded', param: 'prompt' });
    expect(error.message).toMatch(/16 tokens.*21 tokens/);
    const badId = await post('/v1/completions', completion({ prompt: [1, 300] }));
    expect(((await badId.json()) as { error: { param: string } }).error.param).toBe('prompt[1]');
  });

  it('renders chat through the model template and streams the role first', async () => {
    const { model, post } = setup({ model: { metadata: new Map([['tokenizer.chat_template', CHATML]]) } });
    const messages = [{ role: 'user', content: 'Hi' }];
    const response = (await (await post('/v1/chat/completions', { model: 'fake', messages, max_tokens: 4, temperature: 0 })).json()) as {
      object: string;
      choices: Array<{ message: { role: string; content: string }; finish_reason: string }>;
    };
    const promptText = '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n';
    expect(model.prompts.at(-1)).toEqual(model.tokenizer.encode(promptText));
    expect(response.object).toBe('chat.completion');
    expect(response.choices[0]).toMatchObject({ message: { role: 'assistant', content: model.answer(promptText.length + 1, 4) }, finish_reason: 'length' });

    const { events } = await readSse(await post('/v1/chat/completions', { model: 'fake', messages, max_tokens: 4, temperature: 0, stream: true }));
    const deltas = events.map((e) => (e.choices as Array<{ delta: { role?: string; content?: string } }>)[0]!.delta);
    expect(deltas[0]).toEqual({ role: 'assistant', content: '' });
    expect(deltas.map((d) => d.content ?? '').join('')).toBe(response.choices[0]!.message.content);
    expect(events.every((e) => e.object === 'chat.completion.chunk')).toBe(true);
  });

  it('reports logprobs in both shapes, streamed and not', async () => {
    const { post } = setup();
    const expected = 5 - Math.log(Math.exp(5) + 257 * Math.exp(-5));
    const legacy = (await (await post('/v1/completions', completion({ max_tokens: 3, logprobs: 2 }))).json()) as {
      choices: Array<{ text: string; logprobs: { tokens: string[]; token_logprobs: number[]; top_logprobs: Array<Record<string, number>>; text_offset: number[] } }>;
    };
    const lp = legacy.choices[0]!.logprobs;
    expect(lp.tokens.join('')).toBe(legacy.choices[0]!.text);
    expect(lp.token_logprobs[0]).toBeCloseTo(expected, 5);
    expect(Object.keys(lp.top_logprobs[0]!)).toHaveLength(2);
    expect(lp.text_offset).toEqual([0, 1, 2]);

    const chat = (await (await post('/v1/chat/completions', { model: 'fake', messages: [{ role: 'user', content: 'x' }], max_tokens: 2, temperature: 0, logprobs: true, top_logprobs: 1 })).json()) as {
      choices: Array<{ logprobs: { content: Array<{ token: string; logprob: number; bytes: number[]; top_logprobs: unknown[] }> } }>;
    };
    const first = chat.choices[0]!.logprobs.content[0]!;
    expect(first.logprob).toBeCloseTo(expected, 5);
    expect(first.bytes).toEqual([...new TextEncoder().encode(first.token)]);
    expect(first.top_logprobs).toHaveLength(1);

    const { events } = await readSse(await post('/v1/completions', completion({ max_tokens: 3, logprobs: 0, stream: true })));
    const streamed = events.flatMap((e) => e.choices as Array<{ logprobs: { tokens: string[] } | null }>).filter((c) => c.logprobs);
    expect(streamed.map((c) => c.logprobs!.tokens[0]).join('')).toBe(legacy.choices[0]!.text);
  });

  it('answers n choices and a batch of prompts, indexed prompt-major', async () => {
    const { model, post } = setup();
    const body = (await (await post('/v1/completions', completion({ prompt: ['a', 'bb'], n: 2, max_tokens: 3 }))).json()) as {
      choices: Array<{ index: number; text: string }>;
      usage: { prompt_tokens: number; completion_tokens: number };
    };
    expect(body.choices.map((c) => c.index)).toEqual([0, 1, 2, 3]);
    expect(body.choices.map((c) => c.text)).toEqual([model.answer(2, 3), model.answer(2, 3), model.answer(3, 3), model.answer(3, 3)]);
    expect(body.usage).toMatchObject({ prompt_tokens: 5, completion_tokens: 12 });
  });

  it('exports the Model Server Protocol gauges the Inference Extension endpoint picker reads', async () => {
    const { post, metric } = setup({ model: { stepMs: 20 }, limits: { maxRunning: 1 } });
    const running = await post('/v1/completions', completion({ max_tokens: 100, stream: true }));
    const waiting = post('/v1/completions', completion({ max_tokens: 2 }));
    await until(async () => (await metric('vllm:num_requests_waiting')) === 1);
    expect(await metric('vllm:num_requests_running')).toBe(1);
    expect(await metric('vllm:kv_cache_usage_perc')).toBe(2 / 16);
    expect(await metric('vllm:cache_config_info{block_size="16"}')).toBe(1);
    await running.body!.cancel();
    expect((await waiting).status).toBe(200);
    await until(async () => (await metric('vllm:num_requests_running')) === 0);
    expect(await metric('vllm:num_requests_waiting')).toBe(0);
    expect(await metric('vllm:kv_cache_usage_perc')).toBe(0);
  });

  it('stops a stream whose client went away within a step, and counts the cancellation', async () => {
    const { model, post, metric } = setup({ model: { stepMs: 20 } });
    const response = await post('/v1/completions', completion({ max_tokens: 200, stream: true }));
    const reader = response.body!.getReader();
    await reader.read();
    await reader.cancel();
    const stepsAtCancel = model.steps;
    await until(() => model.running === 0);
    expect(model.steps - stepsAtCancel).toBeLessThanOrEqual(1);
    await until(async () => (await metric('webshard_sequences_running')) === 0);
    expect(await metric('webshard_requests_cancelled_total{reason="client_disconnect"}')).toBe(1);
  });

  it('cancels a JSON request when the connection closes (request.signal)', async () => {
    const { model, post, metric } = setup({ model: { stepMs: 20 } });
    const client = new AbortController();
    const pending = post('/v1/completions', completion({ max_tokens: 200 }), { signal: client.signal });
    await until(() => model.steps > 2);
    client.abort();
    expect((await pending).status).toBe(499);
    await until(() => model.running === 0);
    expect(await metric('webshard_requests_cancelled_total{reason="client_disconnect"}')).toBe(1);
  });

  it('refuses with 429 and Retry-After when the queue is full, and serves again afterwards', async () => {
    const { post, server } = setup({ model: { stepMs: 10 }, limits: { maxRunning: 1, maxQueued: 0 } });
    const first = post('/v1/completions', completion({ max_tokens: 10 }));
    await sleep(1);
    const refused = await post('/v1/completions', completion());
    expect(refused.status).toBe(429);
    expect(refused.headers.get('retry-after')).toBe('1');
    expect(((await refused.json()) as { error: { type: string; code: string } }).error).toMatchObject({ type: 'rate_limit_error', code: 'queue_full' });
    expect((await first).status).toBe(200);
    expect((await post('/v1/completions', completion())).status).toBe(200);
    expect(server.isReady).toBe(true);
  });

  it('ends a request at its deadline: 504 in JSON, an error event in a stream', async () => {
    const { model, post, metric } = setup({ model: { stepMs: 20 }, limits: { requestTimeoutMs: 100 } });
    const late = await post('/v1/completions', completion({ max_tokens: 200 }));
    expect(late.status).toBe(504);
    expect(((await late.json()) as { error: { code: string } }).error.code).toBe('deadline_exceeded');
    const { events, done } = await readSse(await post('/v1/completions', completion({ max_tokens: 200, stream: true })));
    expect(done).toBe(true);
    expect(events.at(-1)).toMatchObject({ error: { type: 'timeout_error', code: 'deadline_exceeded' } });
    await until(() => model.running === 0);
    expect(await metric('webshard_requests_cancelled_total{reason="deadline"}')).toBe(2);
    expect(await metric('webshard_requests_total{endpoint="/v1/completions",status="504"}')).toBe(2);
  });

  it('shuts down gracefully: finishes in-flight work within the grace period, cancels it after', async () => {
    const { post, server, call } = setup({ model: { stepMs: 10 } });
    const finishing = post('/v1/completions', completion({ max_tokens: 5, stream: true }));
    await sleep(1);
    const shutdown = server.shutdown(5000);
    expect((await call('/ready')).status).toBe(503);
    expect((await post('/v1/completions', completion())).status).toBe(503);
    const { events } = await readSse(await finishing);
    expect(events.flatMap((e) => e.choices as Array<{ finish_reason: string | null }>).at(-1)!.finish_reason).toBe('length');
    await shutdown;

    const second = setup({ model: { stepMs: 10 } });
    const cut = second.post('/v1/completions', completion({ max_tokens: 500, stream: true }));
    await until(() => second.model.steps > 2);
    await second.server.shutdown(30);
    const { events: cutEvents, done } = await readSse(await cut);
    expect(done).toBe(true);
    expect(cutEvents.at(-1)).toMatchObject({ error: { code: 'shutting_down' } });
    expect(second.model.running).toBe(0);
    expect(await second.metric('webshard_requests_cancelled_total{reason="shutdown"}')).toBe(1);
  });

  it('says 503 until a model is attached', async () => {
    const server = new InferenceServer({ modelName: 'fake' });
    const call = (path: string, init?: RequestInit) => server.handle(new Request(`http://127.0.0.1${path}`, init));
    expect((await call('/ready')).status).toBe(503);
    expect((await call('/health')).status).toBe(503);
    const early = await call('/v1/completions', { method: 'POST', body: JSON.stringify(completion()) });
    expect(early.status).toBe(503);
    expect(early.headers.get('retry-after')).toBe('5');
    server.attach(new FakeModel());
    expect((await call('/ready')).status).toBe(200);
  });

  it('fails /health when steps hang and recovers when they resume', async () => {
    const { model, call } = setup({ healthDeadlineMs: 50, testHooks: true });
    expect((await call('/health')).status).toBe(200);
    const hook = await call('/admin/fault', { method: 'POST', body: JSON.stringify({ shard: 0, kind: 'hang', ms: 300 }) });
    expect(await hook.json()).toEqual({ injected: { shard: 0, kind: 'hang', ms: 300 } });
    const wrongKind = await call('/admin/fault', { method: 'POST', body: JSON.stringify({ shard: 0, kind: 'melt' }) });
    expect(wrongKind.status).toBe(400);
    expect(((await wrongKind.json()) as { error: { param: string } }).error.param).toBe('kind');
    const failed = await call('/health');
    expect(failed.status).toBe(503);
    expect(((await failed.json()) as { status: string }).status).toBe('unhealthy');
    expect((await call('/health')).status).toBe(503);
    // The hung step ends after 300 ms; the next probe completes a step again.
    await until(async () => (await call('/health')).status === 200, 3000);
    expect(model.steps).toBeGreaterThan(0);
  });

  it('hides the test hook unless enabled, and checks the API key when one is set', async () => {
    const { call, post } = setup({ apiKey: 'secret' });
    expect((await call('/admin/fault', { method: 'POST', body: '{"shard":0,"kind":"hang","ms":1}' })).status).toBe(404);
    const denied = await post('/v1/completions', completion());
    expect(denied.status).toBe(401);
    expect((await post('/v1/completions', completion(), { headers: { authorization: 'Bearer secret' } })).status).toBe(200);
    expect((await call('/health')).status).toBe(200); // probes need no key
  });

  it('refuses oversize, undecodable and malformed requests with the right status, and keeps serving', async () => {
    const { call, post, metric } = setup({ limits: { maxBodyBytes: 1000, maxHeaderBytes: 2000 } });
    const status = async (response: Promise<Response>) => {
      const r = await response;
      const body = (await r.json()) as { error: { type: string; message: string } };
      expect(typeof body.error.message).toBe('string');
      return r.status;
    };
    expect(await status(post('/v1/completions', completion({ prompt: 'x'.repeat(2000) })))).toBe(413);
    const chunked = new ReadableStream<Uint8Array>({
      start(controller) {
        for (let i = 0; i < 5; i++) controller.enqueue(new Uint8Array(400).fill(32));
        controller.close();
      },
    });
    expect(await status(call('/v1/completions', { method: 'POST', body: chunked, duplex: 'half' } as RequestInit))).toBe(413);
    expect(await status(call('/v1/completions', { method: 'POST', body: Uint8Array.of(0x7b, 0xff, 0x7d) }))).toBe(400);
    expect(await status(call('/v1/completions', { method: 'POST', body: '{"model": ' }))).toBe(400);
    expect(await status(call('/v1/completions', { method: 'POST', body: '' }))).toBe(400);
    expect(await status(call('/v1/completions', { method: 'POST', body: '[1, 2]' }))).toBe(400);
    expect(await status(call('/v1/completions', { method: 'POST', body: JSON.stringify(completion()), headers: { 'x-big': 'y'.repeat(3000) } }))).toBe(431);
    expect(await status(call(`/v1/models?${'q'.repeat(9000)}`))).toBe(414);
    expect(await status(call('/v1/completions'))).toBe(405);
    expect(await status(call('/v2/nothing'))).toBe(404);
    expect(await status(post('/v1/completions', completion({ model: 'other' })))).toBe(404);
    expect((await post('/v1/completions', completion())).status).toBe(200);
    expect(await metric('webshard_requests_total{endpoint="/v1/completions",status="413"}')).toBe(2);
    expect(await metric('webshard_requests_total{endpoint="unmatched",status="404"}')).toBe(1);
  });

  it('exports request, token, latency, queue and engine metrics', async () => {
    const { post, call } = setup();
    await post('/v1/completions', completion({ max_tokens: 4 }));
    const response = await call('/metrics');
    expect(response.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await response.text();
    for (const line of [
      'webshard_requests_total{endpoint="/v1/completions",status="200"} 1',
      'webshard_prompt_tokens_total 3',
      'webshard_generation_tokens_total 4',
      'webshard_time_to_first_token_seconds_count 1',
      'webshard_time_per_output_token_seconds_count 1',
      'webshard_e2e_request_latency_seconds_count 1',
      'webshard_queue_depth 0',
      'webshard_sequences_running 0',
      'webshard_model_ready 1',
      'webshard_engine_running 0',
      'webshard_engine_devices_step_ms{device="0"} 1',
    ]) {
      expect(text).toContain(line + '\n');
    }
  });

  it('lists the model', async () => {
    const { call } = setup();
    expect(await (await call('/v1/models')).json()).toEqual({
      object: 'list',
      data: [{ id: 'fake', object: 'model', created: 0, owned_by: 'webshard', context_length: 256 }],
    });
  });
});
