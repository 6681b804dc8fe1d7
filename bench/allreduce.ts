// bench/allreduce: what a collective costs on these devices, and whether the split planner's cost
// model predicts the decode speed it is used to choose by.
//
//   deno task bench:allreduce [--quick] [--model PATH] [--iterations N] [--tokens N]
//
// 1. All-reduce latency (p50/p90) of 16 KB and 1 MB with 1, 2 and 4 shard workers, one device each,
//    all on the default adapter, through the production communicator (src/sharding/measure.ts).
//    One worker has nothing to add: its row is a pipeline hand-off (read-back + write-back).
// 2. Decode tokens/s for TP=1, 2, 4 and PP=2 on one model, measured end to end with loadModel +
//    generate (every step timed), next to what choose.ts predicts from the measured round trips
//    and decode step.
//
// Prints both tables (markdown) and writes everything to bench/results/allreduce-<date>.json.
// Default model: the random-weight demo Llama at BENCH_SHAPE, written once to bench/results/.

import os from 'node:os';
import process from 'node:process';
import { parseArgs } from 'node:util';
import { probeAdapter } from '../src/gpu/device.ts';
import { loadModel } from '../src/api/model.ts';
import { llamaConfig } from '../src/model/config.ts';
import { readGGUF, type GGUFFile } from '../src/model/gguf.ts';
import { GGMLType } from '../src/model/ggml-type.ts';
import type { RandomLlamaShape } from '../src/model/random-llama.ts';
import { fileSource } from '../src/model/source.ts';
import { splitMeasurementsFrom } from '../src/sharding/auto.ts';
import { describeShardDevices } from '../src/sharding/devices.ts';
import { chooseSplit, planCandidates, type CandidateScore, type SplitMeasurements } from '../src/sharding/choose.ts';
import { latencyStats, measureDecodeStep, measureInterconnect, type CollectiveMeasurement, type LatencyMs } from '../src/sharding/measure.ts';
import { formatMs, formatSize, randomModelFile, runtimeDescription, table, today, writeResults } from './common.ts';

/**
 * Big enough that kernels are real work (about 28 MB of Q8_0 weights; 8 layers, so TP=2 pays 17
 * all-reduces a token), small enough that every split decodes a token in about 0.1 s on lavapipe.
 * 8 heads over 4 KV heads split evenly for TP=2 and TP=4.
 */
const BENCH_SHAPE: RandomLlamaShape = {
  dim: 512,
  nLayers: 8,
  nHeads: 8,
  nKvHeads: 4,
  ffnDim: 1536,
  vocabSize: 4096,
  contextLength: 2048,
  weightType: GGMLType.Q8_0,
};

const SIZES = [16 * 1024, 1024 * 1024];
const WORKERS = [1, 2, 4];
const SPLITS = [
  { tp: 1, pp: 1 },
  { tp: 2, pp: 1 },
  { tp: 4, pp: 1 },
  { tp: 1, pp: 2 },
];
const PROMPT = 'Once upon a time';
/** KV positions and tokens per step for every load (the prompt is short, decode is one token). */
const CONTEXT = 256;
const BATCH = 32;

interface DecodeRow {
  tp: number;
  pp: number;
  predictedTokensPerSecond: number;
  predictedStepMs: number;
  prediction: string;
  measuredTokensPerSecond: number;
  /** Wall time of each decode step as the caller sees it (tokens/s above is 1000 / its mean). */
  measuredStepMs: LatencyMs;
  decodeTokens: number;
  sameIdsAsOneDevice: boolean;
  loadMs: number;
}

function usage(): string {
  return 'usage: deno task bench:allreduce [--quick] [--model PATH] [--iterations N] [--tokens N]';
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      model: { type: 'string' },
      iterations: { type: 'string' },
      tokens: { type: 'string' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    console.log(usage());
    return;
  }
  const count = (text: string | undefined, fallback: number, name: string) => {
    const n = text === undefined ? fallback : Number(text);
    if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer; got ${text}. ${usage()}`);
    return n;
  };
  const iterations = count(values.iterations, values.quick ? 20 : 100, 'iterations');
  const tokens = count(values.tokens, values.quick ? 12 : 24, 'tokens');

  const modelPath = values.model ?? (await randomModelFile(BENCH_SHAPE));
  const file = await readGGUF(await fileSource(modelPath));
  try {
    await benchmark(file, modelPath, { quick: values.quick, iterations, tokens, modelGiven: values.model !== undefined });
  } finally {
    await file.source.close();
  }
}

interface BenchSettings {
  quick: boolean;
  /** Timed collectives per payload and group size. */
  iterations: number;
  /** Timed decode steps per split. */
  tokens: number;
  /** --model was given (else the random demo model). */
  modelGiven: boolean;
}

/** The CPUs matter on a software adapter, and so does whatever else runs on them. */
const machine = () => ({ cpus: os.cpus().length, loadAverage: os.loadavg().map((x) => Number(x.toFixed(2))) });

async function benchmark(file: GGUFFile, modelPath: string, settings: BenchSettings): Promise<void> {
  const { quick, iterations, tokens } = settings;
  const date = today();
  const adapter = (await probeAdapter()).description;
  const runtime = runtimeDescription();
  const machineAtStart = machine();
  const config = llamaConfig(file);
  const modelName = settings.modelGiven
    ? modelPath
    : `random demo Llama (dim ${config.dim}, ${config.nLayers} layers, ${config.nHeads}/${config.nKvHeads} heads, FFN ${config.ffnDim}, vocab ${config.vocabSize}, Q8_0)`;
  const decodeBytes = config.dim * 4; // what one decode collective carries
  console.log(`bench:allreduce  ${date}  ${runtime}${quick ? '  (--quick)' : ''}`);
  console.log(`adapter: ${adapter}  (every worker's device on this one adapter)`);
  console.log(`machine: ${machineAtStart.cpus} CPUs, load average ${machineAtStart.loadAverage.join(' ')}`);
  console.log(`model:   ${modelName}\n`);

  // 1. Collectives: one set of 4 workers for every size and group.
  const sizes = SIZES.includes(decodeBytes) ? SIZES : [...SIZES, decodeBytes];
  const interconnect = await measureInterconnect({
    devices: Array.from({ length: Math.max(...WORKERS) }, () => ({})),
    bytes: sizes,
    iterations,
    groupSizes: WORKERS,
  });
  const latencyRow = (m: CollectiveMeasurement) => [
    formatSize(m.bytes) + (m.bytes === decodeBytes && !SIZES.includes(m.bytes) ? ' (decode)' : ''),
    m.workers === 1 ? '1 (hand-off)' : String(m.workers),
    formatMs(m.roundTripMs.p50),
    formatMs(m.roundTripMs.p90),
    formatMs(m.waitMs),
    m.verified ? 'yes' : 'NO',
  ];
  console.log(`All-reduce latency, ${iterations} timed rounds each (ms; per round the slowest worker):`);
  console.log(table(['payload', 'workers', 'p50', 'p90', 'mean wait', 'sum right'], interconnect.measurements.map(latencyRow)));
  if (!interconnect.measurements.every((m) => m.verified)) process.exitCode = 1;

  // 2. The cost model's inputs, measured on one device, and its predictions.
  const decodeStep = await measureDecodeStep({ source: modelPath, file, config, steps: quick ? 10 : 24 });
  const measurements: SplitMeasurements = splitMeasurementsFrom(interconnect, decodeStep, decodeBytes, 1);
  const predictions = new Map<string, CandidateScore>();
  const autoChoices: string[] = [];
  for (const deviceCount of [1, 2, 4]) {
    const devices = await describeShardDevices(Array.from({ length: deviceCount }, () => ({})));
    const candidates = planCandidates(file, config, { contextLength: CONTEXT, maxBatchTokens: BATCH, devices });
    if (!candidates.some((c) => c.plan)) continue;
    const choice = chooseSplit({ deviceCount, config, measurements, candidates });
    for (const c of choice.candidates) if (c.fits) predictions.set(`${c.tp}x${c.pp}`, c);
    if (deviceCount > 1) autoChoices.push(`${deviceCount} devices: ${choice.reason.split('\n')[0]}`);
  }

  // 3. Decode end to end, every split on the same model and prompt.
  const rows: DecodeRow[] = [];
  let reference: number[] | undefined;
  const notRun: string[] = [];
  for (const { tp, pp } of SPLITS) {
    const predicted = predictions.get(`${tp}x${pp}`);
    if (!predicted) {
      notRun.push(`tp=${tp} × pp=${pp} (does not fit or cannot split this model)`);
      continue;
    }
    const loadStart = performance.now();
    const model = await loadModel(modelPath, { tp, pp, contextLength: CONTEXT, maxBatchTokens: BATCH });
    const loadMs = performance.now() - loadStart;
    try {
      await model.complete(PROMPT, { maxTokens: 3, temperature: 0, ignoreEos: true }); // compiles the programs
      // Each token after the first is one decode step: time them one by one, since a shared
      // machine stalls some steps and the mean alone would hide what a step usually costs.
      const ids: number[] = [];
      const stepMs: number[] = [];
      let last = 0;
      for await (const token of model.generate(PROMPT, { maxTokens: tokens + 1, temperature: 0, ignoreEos: true })) {
        const now = performance.now();
        if (ids.length > 0) stepMs.push(now - last);
        ids.push(token.id);
        last = now;
      }
      reference ??= ids;
      const step = latencyStats(stepMs);
      rows.push({
        tp,
        pp,
        predictedTokensPerSecond: predicted.tokensPerSecond!,
        predictedStepMs: predicted.stepMs!,
        prediction: predicted.reason,
        measuredTokensPerSecond: 1000 / step.mean,
        measuredStepMs: step,
        decodeTokens: stepMs.length,
        sameIdsAsOneDevice: ids.every((id, i) => id === reference![i]),
        loadMs,
      });
    } finally {
      await model.dispose();
    }
  }
  console.log(`\nDecode, ${tokens} steps after "${PROMPT}" (greedy), measured vs predicted by choose.ts:`);
  console.log(
    table(
      ['split', 'measured tok/s', 'predicted tok/s', 'ms/token p50', 'ms/token p90', 'predicted ms/token', 'same ids'],
      rows.map((r) => [
        r.pp > 1 ? `PP=${r.pp}` : `TP=${r.tp}`,
        r.measuredTokensPerSecond.toFixed(1),
        r.predictedTokensPerSecond.toFixed(1),
        formatMs(r.measuredStepMs.p50),
        formatMs(r.measuredStepMs.p90),
        formatMs(r.predictedStepMs),
        r.sameIdsAsOneDevice ? 'yes' : 'NO',
      ]),
    ),
  );
  if (notRun.length > 0) console.log(`not run: ${notRun.join('; ')}`);
  if (!rows.every((r) => r.sameIdsAsOneDevice)) process.exitCode = 1;
  console.log(
    `\ncost model inputs: decode step on one device ${formatMs(decodeStep.stepMs)} ms ` +
      `(${decodeStep.layersTimed === config.nLayers ? 'all layers' : `${decodeStep.layersTimed} layers, scaled`}); ` +
      `all-reduce of ${formatSize(decodeBytes)} p50 ${Object.entries(measurements.roundTripMs as Record<string, number>).map(([n, v]) => `${formatMs(v)} ms (${n} workers)`).join(', ')}; ` +
      `hand-off ${formatMs(measurements.handoffMs ?? NaN)} ms; all devices on one GPU (no kernel speed-up from TP)`,
  );
  console.log(`--shard auto would choose, for\n  ${autoChoices.join('\n  ')}`);
  const machineAtEnd = machine();
  console.log(`load average at the end: ${machineAtEnd.loadAverage.join(' ')}`);

  const path = await writeResults('allreduce', {
    date,
    runtime,
    adapter,
    machine: { atStart: machineAtStart, atEnd: machineAtEnd },
    quick,
    model: { path: settings.modelGiven ? modelPath : null, description: modelName, config },
    iterations,
    interconnect,
    decodeStep,
    measurements,
    decode: rows,
    notRun,
    autoChoices,
  });
  console.log(`\nwrote ${path}`);
}

try {
  await main();
} catch (error) {
  // Returning (not Deno.exit) lets every shard worker finish closing its device first.
  console.error(`bench:allreduce: ${(error as Error).stack ?? error}`);
  process.exitCode = 1;
}
