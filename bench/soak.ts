// bench/soak: the server under a steady load for a fixed time.
//
//   deno task bench:soak [--model ../shared/models/stories260K.gguf] [--seconds 600] [--clients 64] [--quick]
//
// Starts the server (the production command: deno run src/server/main.ts) and runs `clients`
// concurrent streaming clients until the time is up, each sending greedy completions of mixed
// lengths one after another; one request in eight disconnects midway. It checks that every
// completed stream equals the text the same request gets alone, that cancelled streams give their
// KV blocks back (vllm:kv_cache_usage_perc returns to 0), and that the server's RSS and GPU memory
// stay flat between the warm run (after its first quarter) and its last tenth; then it stops the
// server with SIGTERM and expects exit 0. Prints a table, writes bench/results/soak-<date>.json,
// and exits 1 when a check fails. --quick: 30 s instead of 600 (CI).

import { parseArgs } from 'node:util';
import { runtimeDescription, table, writeResults } from './common.ts';

const { values } = parseArgs({
  options: {
    model: { type: 'string', default: '../shared/models/stories260K.gguf' },
    seconds: { type: 'string' },
    clients: { type: 'string' },
    quick: { type: 'boolean', default: false },
  },
});
const seconds = Number(values.seconds ?? (values.quick ? 30 : 600));
const clients = Number(values.clients ?? 64);
const PROMPTS = ['Once upon a time', 'The little dog', 'One day, Lily went to the park', 'Tom had a big red ball'];
const LENGTHS = [8, 16, 32, 64];

// --- the server -----------------------------------------------------------------------------

// Deno's own process API: its node:child_process reports a child that exited 0 after SIGTERM as
// killed by the signal.
declare const Deno: {
  execPath(): string;
  env: { get(name: string): string | undefined };
  Command: DenoCommand;
  exit(code: number): never;
};
type DenoCommand = {
  new (program: string, options: { args: string[]; stdout: 'piped'; stderr: 'inherit'; env?: Record<string, string> }): {
    spawn(): { pid: number; stdout: ReadableStream<Uint8Array>; kill(signal: 'SIGTERM'): void; status: Promise<{ code: number }> };
    output(): Promise<{ stdout: Uint8Array }>;
  };
};

const server = new Deno.Command(Deno.execPath(), {
  args: ['run', '--allow-read', '--allow-net', '--allow-env', '--allow-ffi', '--unstable-no-legacy-abort', 'src/server/main.ts',
    '--model', values.model!, '--model-name', 'soak', '--port', '0', '--ctx', '512', '--parallel', '16', '--max-queue', '256'],
  stdout: 'piped',
  stderr: 'inherit',
  env: { XDG_RUNTIME_DIR: Deno.env.get('XDG_RUNTIME_DIR') ?? '/tmp' },
}).spawn();
const baseUrl = await (async () => {
  const reader = server.stdout.getReader();
  const decoder = new TextDecoder();
  let output = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`the server exited before listening:\n${output}`);
    output += decoder.decode(value, { stream: true });
    const match = /listening on (http:\/\/[\d.]+:\d+)/.exec(output);
    if (match) {
      void (async () => {
        while (!(await reader.read()).done); // keep draining its stdout
      })();
      return match[1]!;
    }
  }
})();
while ((await fetch(`${baseUrl}/ready`).then((r) => (r.body?.cancel(), r.status), () => 0)) !== 200) await new Promise((r) => setTimeout(r, 200));

async function metrics(): Promise<Map<string, number>> {
  const text = await (await fetch(`${baseUrl}/metrics`)).text();
  return new Map(text.split('\n').filter((l) => l && !l.startsWith('#')).map((l) => [l.slice(0, l.lastIndexOf(' ')), Number(l.slice(l.lastIndexOf(' ') + 1))]));
}

/** Resident memory of the server process (Linux), and its weights + KV cache on the GPU. */
async function memory(): Promise<{ rssBytes: number; gpuBytes: number }> {
  // ps, not /proc (Deno asks for --allow-all to read /proc).
  const ps = await new Deno.Command('ps', { args: ['-o', 'rss=', '-p', String(server.pid)], stdout: 'piped', stderr: 'inherit' }).output();
  const rssKiB = Number(new TextDecoder().decode(ps.stdout).trim() || NaN);
  const gpuBytes = [...(await metrics())].filter(([k]) => k.startsWith('webshard_engine_devices_gpu_bytes')).reduce((sum, [, v]) => sum + v, 0);
  return { rssBytes: rssKiB * 1024, gpuBytes };
}

// --- the load --------------------------------------------------------------------------------

interface Outcome { kind: 'completed' | 'disconnected' | 'failed'; tokens: number; detail?: string }

/** Streams one completion; `disconnectAfter` events in, it goes away instead. Returns the text. */
async function stream(prompt: string, maxTokens: number, disconnectAfter?: number): Promise<{ text: string; outcome: Outcome }> {
  const response = await fetch(`${baseUrl}/v1/completions`, {
    method: 'POST',
    body: JSON.stringify({ model: 'soak', prompt, max_tokens: maxTokens, temperature: 0, ignore_eos: true, stream: true }),
  });
  if (response.status !== 200) return { text: '', outcome: { kind: 'failed', tokens: 0, detail: `HTTP ${response.status}: ${await response.text()}` } };
  const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let text = '';
  let events = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end: number;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const data = buffer.slice(0, end).replace(/^data: /, '');
      buffer = buffer.slice(end + 2);
      if (data === '[DONE]') return { text, outcome: { kind: 'completed', tokens: events } };
      const event = JSON.parse(data) as { choices?: Array<{ text: string }>; error?: { message: string } };
      if (event.error) return { text, outcome: { kind: 'failed', tokens: events, detail: event.error.message } };
      text += event.choices?.[0]?.text ?? '';
      if (++events === disconnectAfter) {
        await reader.cancel();
        return { text, outcome: { kind: 'disconnected', tokens: events } };
      }
    }
  }
  return { text, outcome: { kind: 'failed', tokens: events, detail: 'the stream ended without [DONE]' } };
}

// What each (prompt, length) gives alone: the text every completed stream must equal.
const expected = new Map<string, string>();
for (const prompt of PROMPTS) for (const length of LENGTHS) expected.set(`${prompt}|${length}`, (await stream(prompt, length)).text);

const started = performance.now();
const endAt = started + seconds * 1000;
const samples: Array<{ at: number; rssBytes: number; gpuBytes: number }> = [];
const sampler = setInterval(async () => samples.push({ at: (performance.now() - started) / 1000, ...(await memory()) }), Math.max(1000, (seconds * 1000) / 40));
const counts = { completed: 0, disconnected: 0, failed: 0, mismatched: 0, tokens: 0 };
const problems: string[] = [];
let requestNumber = 0;

await Promise.all(Array.from({ length: clients }, async () => {
  while (performance.now() < endAt) {
    const n = requestNumber++;
    const prompt = PROMPTS[n % PROMPTS.length]!;
    const length = LENGTHS[(n >> 2) % LENGTHS.length]!;
    const disconnect = n % 8 === 7 ? 1 + (n % (length / 2)) : undefined;
    const { text, outcome } = await stream(prompt, length, disconnect);
    counts[outcome.kind]++;
    counts.tokens += outcome.tokens;
    if (outcome.kind === 'failed') problems.push(`request ${n}: ${outcome.detail}`);
    if (outcome.kind === 'completed' && text !== expected.get(`${prompt}|${length}`)) {
      counts.mismatched++;
      problems.push(`request ${n} (${JSON.stringify(prompt)}, ${length} tokens): ${JSON.stringify(text)} differs from its sequential text`);
    }
  }
}));
clearInterval(sampler);
const wallSeconds = (performance.now() - started) / 1000;

// Cancelled streams gave their KV blocks back once nothing runs.
let kvUsage = NaN;
for (let i = 0; i < 50; i++) {
  const m = await metrics();
  kvUsage = m.get('vllm:kv_cache_usage_perc') ?? NaN;
  if (m.get('vllm:num_requests_running') === 0 && kvUsage === 0) break;
  await new Promise((r) => setTimeout(r, 100));
}
if (kvUsage !== 0) problems.push(`KV cache usage ${kvUsage} after the load, not 0: cancelled sequences kept blocks`);

// Flat memory: the last tenth of the run against the tenth after the first quarter (by then the
// pipelines are compiled and the JS heap has grown to its working size; a leak keeps growing).
const tenth = Math.max(1, Math.floor(samples.length / 10));
const quarter = Math.floor(samples.length / 4);
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const warm = samples.slice(quarter, quarter + tenth);
const first = { rss: mean(warm.map((s) => s.rssBytes)), gpu: mean(warm.map((s) => s.gpuBytes)) };
const last = { rss: mean(samples.slice(-tenth).map((s) => s.rssBytes)), gpu: mean(samples.slice(-tenth).map((s) => s.gpuBytes)) };
if (!(last.rss <= first.rss * 1.2 + 32 * 2 ** 20)) problems.push(`RSS grew from ${(first.rss / 2 ** 20).toFixed(0)} MiB to ${(last.rss / 2 ** 20).toFixed(0)} MiB`);
if (last.gpu !== first.gpu) problems.push(`GPU memory changed from ${first.gpu} to ${last.gpu} bytes`);

server.kill('SIGTERM');
const { code } = await server.status;
if (code !== 0) problems.push(`the server exited ${code} after SIGTERM, not 0`);

const row = {
  clients,
  seconds: Number(wallSeconds.toFixed(1)),
  requests: counts.completed + counts.disconnected + counts.failed,
  ...counts,
  tokensPerSecond: Number((counts.tokens / wallSeconds).toFixed(1)),
  rssFirstMiB: Number((first.rss / 2 ** 20).toFixed(1)),
  rssLastMiB: Number((last.rss / 2 ** 20).toFixed(1)),
  gpuMiB: Number((last.gpu / 2 ** 20).toFixed(2)),
  kvUsageAfter: kvUsage,
};
console.log(table(Object.keys(row), [Object.values(row)]));
const path = await writeResults('soak', { runtime: runtimeDescription(), model: values.model, ...row, problems });
console.log(`\nwrote ${path}`);
if (problems.length > 0) {
  console.error(`soak: ${problems.length} problem(s):\n${problems.slice(0, 20).join('\n')}`);
  Deno.exit(1);
}
console.log('soak: every completed stream equals its sequential text; KV blocks returned; memory flat; exit 0');
