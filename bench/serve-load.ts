// bench/serve-load: throughput and latency of a running `deno task serve` at 1, 4 and 16
// concurrent streaming clients, over loopback.
//
//   deno task serve --model ../shared/models/stories260K.gguf --port 8080 &
//   deno run --allow-net --allow-read --allow-write bench/serve-load.ts --url http://127.0.0.1:8080 \
//       [--concurrency 1,4,16] [--rounds 2] [--max-tokens 32] [--prompt "Once upon a time"]
//
// Each client sends `rounds` streaming completions one after another (greedy, ignore_eos, so
// every answer is max_tokens long). Prints a markdown table and writes
// bench/results/serve-load-<date>.json. The run is bounded: every request has a timeout.

import { parseArgs } from 'node:util';
import { runtimeDescription, table, today, writeResults } from './common.ts';

export interface ServeLoadOptions {
  baseUrl: string;
  model: string;
  concurrencies: readonly number[];
  /** Requests each client sends, one after another. */
  rounds: number;
  maxTokens: number;
  prompt: string;
  /** Per request. */
  timeoutMs: number;
}

export interface ServeLoadRow {
  concurrency: number;
  requests: number;
  failures: number;
  completionTokens: number;
  wallSeconds: number;
  /** Generated tokens per second, all clients together. */
  tokensPerSecond: number;
  requestsPerSecond: number;
  ttftMsP50: number;
  ttftMsP95: number;
  latencyMsP50: number;
  latencyMsP95: number;
}

interface RequestTiming {
  ok: boolean;
  ttftMs: number;
  latencyMs: number;
  completionTokens: number;
}

/** One streaming completion, timed: first token, end, and the usage the server reports. */
async function timedRequest(options: ServeLoadOptions): Promise<RequestTiming> {
  const start = performance.now();
  let ttftMs = NaN;
  let completionTokens = 0;
  try {
    const response = await fetch(`${options.baseUrl}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model: options.model,
        prompt: options.prompt,
        max_tokens: options.maxTokens,
        temperature: 0,
        ignore_eos: true,
        stream: true,
        stream_options: { include_usage: true },
      }),
      signal: AbortSignal.timeout(options.timeoutMs),
    });
    if (!response.ok || !response.body) return { ok: false, ttftMs, latencyMs: performance.now() - start, completionTokens };
    const decoder = new TextDecoder();
    let buffered = '';
    let done = false;
    for await (const bytes of response.body) {
      buffered += decoder.decode(bytes, { stream: true });
      let end: number;
      while ((end = buffered.indexOf('\n\n')) >= 0) {
        const event = buffered.slice(0, end);
        buffered = buffered.slice(end + 2);
        if (!event.startsWith('data: ')) continue;
        const data = event.slice(6);
        if (data === '[DONE]') {
          done = true;
          continue;
        }
        const chunk = JSON.parse(data) as { choices: Array<{ text: string }>; usage?: { completion_tokens: number } | null; error?: unknown };
        if (chunk.error) return { ok: false, ttftMs, latencyMs: performance.now() - start, completionTokens };
        if (Number.isNaN(ttftMs) && chunk.choices.some((c) => c.text !== '')) ttftMs = performance.now() - start;
        if (chunk.usage) completionTokens = chunk.usage.completion_tokens;
      }
    }
    return { ok: done, ttftMs, latencyMs: performance.now() - start, completionTokens };
  } catch {
    return { ok: false, ttftMs, latencyMs: performance.now() - start, completionTokens };
  }
}

function percentile(values: readonly number[], p: number): number {
  const sorted = values.filter((v) => !Number.isNaN(v)).sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

/** Runs every concurrency level in turn. */
export async function runServeLoad(options: ServeLoadOptions): Promise<ServeLoadRow[]> {
  const rows: ServeLoadRow[] = [];
  for (const concurrency of options.concurrencies) {
    const start = performance.now();
    const timings = (
      await Promise.all(
        Array.from({ length: concurrency }, async () => {
          const mine: RequestTiming[] = [];
          for (let round = 0; round < options.rounds; round++) mine.push(await timedRequest(options));
          return mine;
        }),
      )
    ).flat();
    const wallSeconds = (performance.now() - start) / 1000;
    const ok = timings.filter((t) => t.ok);
    const completionTokens = ok.reduce((n, t) => n + t.completionTokens, 0);
    rows.push({
      concurrency,
      requests: timings.length,
      failures: timings.length - ok.length,
      completionTokens,
      wallSeconds,
      tokensPerSecond: completionTokens / wallSeconds,
      requestsPerSecond: ok.length / wallSeconds,
      ttftMsP50: percentile(ok.map((t) => t.ttftMs), 50),
      ttftMsP95: percentile(ok.map((t) => t.ttftMs), 95),
      latencyMsP50: percentile(ok.map((t) => t.latencyMs), 50),
      latencyMsP95: percentile(ok.map((t) => t.latencyMs), 95),
    });
  }
  return rows;
}

export function formatServeLoadTable(rows: readonly ServeLoadRow[]): string {
  return table(
    ['clients', 'requests', 'failed', 'tokens', 'tok/s', 'req/s', 'TTFT p50 ms', 'TTFT p95 ms', 'latency p50 ms', 'latency p95 ms'],
    rows.map((r) => [
      r.concurrency,
      r.requests,
      r.failures,
      r.completionTokens,
      r.tokensPerSecond.toFixed(1),
      r.requestsPerSecond.toFixed(2),
      r.ttftMsP50.toFixed(0),
      r.ttftMsP95.toFixed(0),
      r.latencyMsP50.toFixed(0),
      r.latencyMsP95.toFixed(0),
    ]),
  );
}

/** Writes bench/results/serve-load-<date>.json; returns its path. */
export function writeServeLoadResults(options: ServeLoadOptions, rows: readonly ServeLoadRow[], extra: Record<string, unknown> = {}): Promise<string> {
  const { baseUrl, model, rounds, maxTokens, prompt } = options;
  return writeResults('serve-load', { benchmark: 'serve-load', date: today(), runtime: runtimeDescription(), baseUrl, model, rounds, maxTokens, prompt, ...extra, rows });
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      url: { type: 'string', default: 'http://127.0.0.1:8080' },
      model: { type: 'string' },
      concurrency: { type: 'string', default: '1,4,16' },
      rounds: { type: 'string', default: '2' },
      'max-tokens': { type: 'string', default: '32' },
      prompt: { type: 'string', default: 'Once upon a time' },
      'timeout-s': { type: 'string', default: '300' },
    },
  });
  const positive = (text: string, name: string) => {
    const n = Number(text);
    if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer; got "${text}"`);
    return n;
  };
  const baseUrl = values.url.replace(/\/$/, '');
  // The served model's id, unless given.
  const model = values.model ?? ((await (await fetch(`${baseUrl}/v1/models`)).json()) as { data: Array<{ id: string }> }).data[0]!.id;
  const options: ServeLoadOptions = {
    baseUrl,
    model,
    concurrencies: values.concurrency.split(',').map((c) => positive(c.trim(), 'concurrency')),
    rounds: positive(values.rounds, 'rounds'),
    maxTokens: positive(values['max-tokens'], 'max-tokens'),
    prompt: values.prompt,
    timeoutMs: positive(values['timeout-s'], 'timeout-s') * 1000,
  };
  console.log(`bench:serve-load  ${today()}  ${runtimeDescription()}  ${baseUrl}  model ${model}, ${options.maxTokens} tokens a request\n`);
  const rows = await runServeLoad(options);
  console.log(formatServeLoadTable(rows));
  console.log(`\nwrote ${await writeServeLoadResults(options, rows)}`);
}

if ((import.meta as { main?: boolean }).main) await main();
