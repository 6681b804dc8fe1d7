// bench/dawn-stalls: host time per step, step by step, and how often the host stalls while it
// waits for a GPU read-back: the Deno-vs-Node gap that src/gpu/dawn-polling.ts closes.
//
//   npx deno run -A bench/dawn-stalls.ts [--model PATH [--tp N]] [--steps N] [--busy ITERATIONS]
//   npx tsx bench/dawn-stalls.ts [same flags]                         (Node, for comparison)
//   WEBSHARD_DAWN_POLL=native npx deno run -A bench/dawn-stalls.ts    (Dawn's own polling)
//
// Without --model: a kernel that keeps the GPU busy for a while (lavapipe: ~10-20 ms at the
// default --busy) and a 256-byte read-back, --steps times; Dawn only, no engine code. With
// --model: a greedy decode of --steps tokens through loadModel/generate; with --tp N over N shard
// workers (their polls are paced in each worker; the table adds ms per collective round trip).
// Prints step p50/p90/max, steps over 50 and 100 ms, event-loop lag (a 5 ms timer more than 20 ms
// late) and Dawn's poll statistics; writes bench/results/dawn-stalls-<date>.json.

import { parseArgs } from 'node:util';
import { dawnPollPacingHere, dawnPollPacingStats } from '../src/gpu/dawn-polling.ts';
import { requestGpu } from '../src/gpu/device.ts';
import { kernelOp, readU32, runOps, storageBuffer } from '../src/gpu/kernel.ts';
import { formatMs, runtimeDescription, table, writeResults } from './common.ts';

const args = (globalThis as { Deno?: { args: string[] } }).Deno?.args ?? process.argv.slice(2);
const { values } = parseArgs({
  args,
  options: {
    model: { type: 'string' },
    steps: { type: 'string', default: '300' },
    busy: { type: 'string', default: '150000' },
    prompt: { type: 'string', default: 'Once upon a time' },
    tp: { type: 'string', default: '1' },
  },
});
const steps = Number(values.steps);
if (!(Number.isInteger(steps) && steps > 0)) throw new RangeError(`--steps must be a positive integer; got ${values.steps}`);

/** Event-loop lag: how late a 5 ms interval fires; a stalled thread shows up here whatever stalled it. */
function lagMonitor() {
  const periodMs = 5;
  let last = performance.now();
  const lags: number[] = [];
  const timer = setInterval(() => {
    const now = performance.now();
    const late = now - last - periodMs;
    last = now;
    if (late > 20) lags.push(late);
  }, periodMs);
  return {
    stop: () => {
      clearInterval(timer);
      return { over20ms: lags.length, totalMs: lags.reduce((a, b) => a + b, 0), maxMs: Math.max(0, ...lags) };
    },
  };
}

async function microSteps(): Promise<number[]> {
  const { device } = await requestGpu();
  const buffer = storageBuffer(device, 'x', new Uint32Array(256));
  const wgsl = `@group(0) @binding(0) var<storage, read_write> x: array<u32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) id: vec3u) {
  var v = x[id.x];
  for (var i = 0u; i < ${Number(values.busy) >>> 0}u; i++) { v = v * 1664525u + 1013904223u; }
  x[id.x] = v;
}`;
  const op = kernelOp(device, 'busy', wgsl, [buffer], [4]);
  const times: number[] = [];
  for (let i = 0; i < steps; i++) {
    const start = performance.now();
    runOps(device, [op]);
    await readU32(device, buffer, 64);
    times.push(performance.now() - start);
  }
  device.destroy();
  return times;
}

/** Sharded decodes: mean ms per collective round trip over all shards. */
let collectiveMs: number | undefined;

async function decodeSteps(path: string): Promise<number[]> {
  const { loadModel } = await import('../src/index.ts');
  const tp = Number(values.tp);
  const model = await loadModel(path, { contextLength: Math.min(2048, steps + 64), tp });
  const times: number[] = [];
  let last = performance.now();
  for await (const _token of model.generate(values.prompt!, { maxTokens: steps, temperature: 0, ignoreEos: true })) {
    const now = performance.now();
    times.push(now - last);
    last = now;
  }
  const devices = model.stats().devices;
  const collectives = devices.reduce((n, d) => n + d.collectives, 0);
  if (collectives > 0) collectiveMs = devices.reduce((n, d) => n + d.collectiveMs, 0) / collectives;
  await model.dispose();
  return times.slice(1); // the first includes the prompt's prefill
}

const monitor = lagMonitor();
const times = values.model ? await decodeSteps(values.model) : await microSteps();
const lag = monitor.stop();
const sorted = [...times].sort((a, b) => a - b);
const at = (p: number) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
// This thread's polls (none when shard workers hold the devices; they pace theirs the same way).
const polling = dawnPollPacingStats();
const pacing = polling?.pacing ?? dawnPollPacingHere();
const pollSetting = pacing ? `paced ${pacing.hotMs}/${pacing.ratio}/${pacing.maxGapMs}` : "Dawn's own";
const result = {
  runtime: runtimeDescription(),
  workload: values.model ? `decode ${values.model}${Number(values.tp) > 1 ? ` --tp ${values.tp}` : ''}` : `busy kernel (${values.busy} iterations) + 256 B read-back`,
  polling: pollSetting,
  steps: times.length,
  p50Ms: at(0.5),
  p90Ms: at(0.9),
  maxMs: sorted.at(-1)!,
  over50Ms: times.filter((t) => t > 50).length,
  over100Ms: times.filter((t) => t > 100).length,
  eventLoopLag: lag,
  msPerCollective: collectiveMs,
  pollsPerWait: polling?.stats.polls ? polling.stats.polls / Math.max(1, polling.stats.waits) : undefined,
  pollStats: polling?.stats,
  stepsMs: times.map((t) => Math.round(t * 100) / 100),
};
console.log(
  table(
    ['runtime', 'polling', 'steps', 'p50 ms', 'p90 ms', 'max ms', '> 50 ms', '> 100 ms', 'lag > 20 ms (total ms)', 'polls/wait', 'ms/collective'],
    [[
      result.runtime,
      pollSetting,
      result.steps,
      formatMs(result.p50Ms),
      formatMs(result.p90Ms),
      formatMs(result.maxMs),
      result.over50Ms,
      result.over100Ms,
      `${lag.over20ms} (${lag.totalMs.toFixed(0)})`,
      result.pollsPerWait === undefined ? '-' : result.pollsPerWait.toFixed(1),
      collectiveMs === undefined ? '-' : formatMs(collectiveMs),
    ]],
  ),
);
console.log(`wrote ${await writeResults(`dawn-stalls-${'Deno' in globalThis ? 'deno' : 'node'}`, result)}`);
