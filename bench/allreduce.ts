// bench/allreduce: what a collective costs on these devices, and whether the split planner's cost
// model predicts the decode speed it is used to choose by.
//
//   deno task bench:allreduce [--quick] [--model PATH] [--iterations N] [--tokens N]
//
// 1. All-reduce latency (p50/p90) of 16 KB and 1 MB with 1, 2 and 4 shard workers, one device each,
//    all on the default adapter, through the production communicator (src/sharding/measure.ts).
//    One worker has nothing to add: its row is a pipeline hand-off (read-back + write-back).
// 2. Decode tokens/s for TP=1, 2, 4 and PP=2 on one model, measured end to end with loadModel +
//    complete, next to what choose.ts predicts from the measured round trips and decode step.
//
// Prints both tables (markdown) and writes everything to bench/results/allreduce-<date>.json.
// Default model: the random-weight demo Llama at BENCH_SHAPE, written once to bench/results/.

import process from 'node:process';
import { parseArgs } from 'node:util';
import { probeAdapter } from '../src/gpu/device.ts';
import { loadModel } from '../src/engine/model.ts';
import { llamaConfig } from '../src/model/config.ts';
import { readGGUF } from '../src/model/gguf.ts';
import { GGMLType } from '../src/model/ggml-type.ts';
import type { RandomLlamaShape } from '../src/model/random-llama.ts';
import { fileSource } from '../src/model/source.ts';
import { describeShardDevices, splitMeasurementsFrom } from '../src/sharding/auto.ts';
import { chooseSplit, planCandidates, type CandidateScore, type SplitMeasurements } from '../src/sharding/choose.ts';
import { measureDecodeStep, measureInterconnect, type CollectiveMeasurement } from '../src/sharding/measure.ts';
import { formatMs, formatSize, randomModelFile, runtimeDescription, table, today, writeResults } from './common.ts';

/**
 * Big enough that kernels are real work (about 60 MB of Q8_0 weights, 8 layers, so TP=2 pays 17
 * all-reduces a token), small enough that every split decodes in seconds on lavapipe. 8 heads
 * over 4 KV heads split evenly for TP=2 and TP=4.
 */
const BENCH_SHAPE: RandomLlamaShape = {
  dim: 768,
  nLayers: 8,
  nHeads: 8,
  nKvHeads: 4,
  ffnDim: 2048,
  vocabSize: 8192,
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

interface DecodeRow {
  tp: number;
  pp: number;
  predictedTokensPerSecond: number;
  predictedStepMs: number;
  prediction: string;
  measuredTokensPerSecond: number;
  measuredStepMs: number;
  decodeTokens: number;
  /** Per shard and step: time inside collectives (all-reduces, hand-offs), the worst shard. */
  collectiveMsPerStep: number;
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
  const tokens = count(values.tokens, values.quick ? 12 : 32, 'tokens');

  const date = today();
  const adapter = (await probeAdapter()).description;
  const runtime = runtimeDescription();
  const modelPath = values.model ?? (await randomModelFile(BENCH_SHAPE));
  const file = await readGGUF(await fileSource(modelPath));
  const config = llamaConfig(file);
  await file.source.close();
  const modelName = values.model
    ? modelPath
    : `random demo Llama (dim ${config.dim}, ${config.nLayers} layers, ${config.nHeads}/${config.nKvHeads} heads, FFN ${config.ffnDim}, vocab ${config.vocabSize}, Q8_0)`;
  const decodeBytes = config.dim * 4; // what one decode collective carries
  console.log(`bench:allreduce  ${date}  ${runtime}${values.quick ? '  (--quick)' : ''}`);
  console.log(`adapter: ${adapter}  (every worker's device on this one adapter)`);
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
  const decodeStep = await measureDecodeStep({ source: modelPath, file, config, steps: values.quick ? 6 : 16 });
  const measurements: SplitMeasurements = splitMeasurementsFrom(interconnect, decodeStep, decodeBytes, 1);
  const predictions = new Map<string, CandidateScore>();
  const autoChoices: string[] = [];
  const fileForPlans = await readGGUF(await fileSource(modelPath));
  try {
    for (const deviceCount of [1, 2, 4]) {
      const devices = await describeShardDevices(Array.from({ length: deviceCount }, () => ({})));
      const candidates = planCandidates(fileForPlans, config, { contextLength: 256, maxBatchTokens: 32, devices });
      const choice = chooseSplit({ deviceCount, config, measurements, candidates });
      for (const c of choice.candidates) if (c.fits) predictions.set(`${c.tp}x${c.pp}`, c);
      if (deviceCount > 1) autoChoices.push(`${deviceCount} devices: ${choice.reason.split('\n')[0]}`);
    }
  } finally {
    await fileForPlans.source.close();
  }

  // 3. Decode end to end, every split on the same model and prompt.
  const rows: DecodeRow[] = [];
  let reference: number[] | undefined;
  for (const { tp, pp } of SPLITS) {
    const loadStart = performance.now();
    const model = await loadModel(modelPath, { tp, pp, contextLength: 256, maxBatchTokens: 32 });
    const loadMs = performance.now() - loadStart;
    try {
      await model.complete(PROMPT, { maxTokens: 3, temperature: 0, ignoreEos: true }); // compiles the programs
      const statsBefore = model.stats().devices;
      const run = await model.complete(PROMPT, { maxTokens: tokens, temperature: 0, ignoreEos: true });
      const decodeTokens = run.timings.generatedTokens - 1; // the first token comes from the prefill step
      const measuredTokensPerSecond = (decodeTokens / run.timings.decodeMs) * 1000;
      const statsAfter = model.stats().devices;
      const collectiveMsPerStep = Math.max(
        ...statsAfter.map((s, i) => (s.collectiveMs - statsBefore[i]!.collectiveMs) / Math.max(1, s.steps - statsBefore[i]!.steps)),
      );
      reference ??= run.ids;
      const predicted = predictions.get(`${tp}x${pp}`);
      rows.push({
        tp,
        pp,
        predictedTokensPerSecond: predicted?.tokensPerSecond ?? NaN,
        predictedStepMs: predicted?.stepMs ?? NaN,
        prediction: predicted?.reason ?? 'does not fit',
        measuredTokensPerSecond,
        measuredStepMs: run.timings.decodeMs / decodeTokens,
        decodeTokens,
        collectiveMsPerStep,
        sameIdsAsOneDevice: run.ids.every((id, i) => id === reference![i]),
        loadMs,
      });
    } finally {
      await model.dispose();
    }
  }
  console.log(`\nDecode, ${tokens} tokens after "${PROMPT}" (greedy), measured vs predicted by choose.ts:`);
  console.log(
    table(
      ['split', 'measured tok/s', 'predicted tok/s', 'measured ms/token', 'predicted ms/token', 'collectives ms/token', 'same ids'],
      rows.map((r) => [
        r.pp > 1 ? `PP=${r.pp}` : `TP=${r.tp}`,
        r.measuredTokensPerSecond.toFixed(1),
        r.predictedTokensPerSecond.toFixed(1),
        formatMs(r.measuredStepMs),
        formatMs(r.predictedStepMs),
        formatMs(r.collectiveMsPerStep),
        r.sameIdsAsOneDevice ? 'yes' : 'NO',
      ]),
    ),
  );
  if (!rows.every((r) => r.sameIdsAsOneDevice)) process.exitCode = 1;
  console.log(
    `\ncost model inputs: decode step on one device ${formatMs(decodeStep.stepMs)} ms ` +
      `(${decodeStep.layersTimed === config.nLayers ? 'all layers' : `${decodeStep.layersTimed} layers, scaled`}); ` +
      `all-reduce of ${formatSize(decodeBytes)} p50 ${Object.entries(measurements.roundTripMs as Record<string, number>).map(([n, v]) => `${formatMs(v)} ms (${n} workers)`).join(', ')}; ` +
      `hand-off ${formatMs(measurements.handoffMs ?? NaN)} ms; all devices on one GPU (no kernel speed-up from TP)`,
  );
  console.log(`--shard auto would choose, for\n  ${autoChoices.join('\n  ')}`);

  const path = await writeResults('allreduce', {
    date,
    runtime,
    adapter,
    quick: values.quick,
    model: { path: values.model ?? null, description: modelName, config },
    iterations,
    interconnect,
    decodeStep,
    measurements,
    decode: rows,
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
