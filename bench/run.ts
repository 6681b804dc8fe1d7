// bench/run.ts: webshard's performance suite — one table, one JSON.
//
//   deno task bench                      # Llama-3-8B and Llama-3.2-1B shapes in Q4_0, Q8_0 and F16
//   deno task bench --quick              # tiny shapes, a few iterations: < 3 min on a CPU adapter
//   deno task bench --models 8b:q4_0,8b:q8_0,8b:f16,1b:q4_0 --out "$OUT" --cold
//
// 1. The adapter's own peaks: streaming-read bandwidth and f32 FMA rate (bench/kernels.ts).
// 2. Kernels at real shapes — matvec and matmul per weight type, attention decode and prefill,
//    RMSNorm — as GB/s or TFLOP/s and % of those peaks.
// 3. Per model (random weights at real shapes, written as GGUF by src/model/random-llama.ts into
//    bench/models/): cold start (load GB/s from disk to the GPU, repacking included; time to
//    first token), prefill of 512 tokens, decode at batch 1, 8 and 32 with % of roofline (tokens/s
//    × bytes read per token ÷ peak), host time, submits and read-backs per decode token
//    (bench/e2e.ts).
// 4. Peers on the same card and file: llama.cpp through node-llama-cpp (Vulkan) and PyTorch, when
//    present (bench/peer.ts); the table gives webshard's speed relative to them.
//
// Progress goes to stderr; the table to stdout; everything measured to
// bench/results/bench-<date>.json (and with --out DIR, a copy of the JSON and the table there).
// The JSON is rewritten after every stage, so a run cut short keeps what it measured.

import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import process from 'node:process';
import { parseArgs } from 'node:util';
import { GGMLType } from '../src/model/ggml-type.ts';
import type { RandomWeightType } from '../src/model/random-llama.ts';
import { runtimeDescription, table, today, writeResults } from './common.ts';
import { MATMUL_VARIANTS, type MatmulVariant } from '../src/shaders/matmul.ts';
import { benchEndToEnd, requestBenchGpu, tryDropPageCache, type E2EOptions, type E2EResult } from './e2e.ts';
import { kernelShapes, KernelTimer, measurePeakBandwidth, measurePeakFlops, runKernelSuite, type KernelResult, type KernelShapes, type Peaks, type TimerOptions } from './kernels.ts';
import { BENCH_SHAPES, BENCH_TYPES, benchModelFile, weightTypeKey, type BenchModelFile, type BenchShapeName } from './models.ts';
import { benchLlamaCpp, benchTorch, importNodeLlamaCpp, type LlamaCppResult, type PeerStatus, type TorchResult } from './peer.ts';
import { benchSpeculative, defaultModelsDir, formatSpeculativeTable, type SpeculativeRow } from './speculative.ts';

export interface ModelSpec {
  shape: BenchShapeName;
  type: RandomWeightType;
}

export interface SuiteOptions {
  quick: boolean;
  /** As typed, for the table header and the JSON. */
  command: string;
  models: ModelSpec[];
  kernels: boolean;
  endToEnd: boolean;
  llamaCpp: boolean;
  torch: boolean;
  /** Speculative decoding vs plain decoding on the shared stories260K files (bench/speculative.ts). */
  speculative: { tokens: number; draftMax: number; modelsDir: string } | undefined;
  kernelShapes: KernelShapes;
  peakBytes: number;
  peakFlops: { workgroups: number; iterations: number };
  timer: TimerOptions;
  e2e: Omit<E2EOptions, 'log'>;
  /** Where the GGUFs are cached (default bench/models/). */
  modelsDir?: string;
  /** Generator workers for the GGUFs (Deno). */
  writerWorkers?: number;
  log: (line: string) => void;
  /** Called with the report after each stage (to write partial results). */
  onStage?: (report: BenchReport) => Promise<void> | void;
}

export interface ModelReport {
  name: string;
  shape: BenchShapeName;
  type: string;
  file?: BenchModelFile;
  webshard?: E2EResult;
  webshardError?: string;
  llamaCpp?: LlamaCppResult | PeerStatus;
}

export interface BenchReport {
  suite: 'webshard bench';
  date: string;
  startedAt: string;
  command: string;
  runtime: string;
  adapter: string;
  features: { subgroups: boolean; shaderF16: boolean; timestampQuery: boolean };
  quick: boolean;
  machine: { cpus: number; cpuModel: string; loadAverageAtStart: number[]; loadAverageAtEnd?: number[] };
  peaks?: Peaks;
  kernelTiming?: string;
  timestampProblem?: string;
  kernels: KernelResult[];
  models: ModelReport[];
  speculative?: SpeculativeRow[];
  torch?: TorchResult;
  llamaCppStatus?: PeerStatus & { version?: string };
  /** Stages that failed, with their errors (the rest of the suite still ran). */
  errors: string[];
  complete: boolean;
}

const loadAverage = () => os.loadavg().map((x) => Number(x.toFixed(2)));

function modelName(m: ModelSpec): string {
  return `${m.shape === 'quick' ? 'tiny' : m.shape.toUpperCase()} ${weightTypeKey(m.type).toUpperCase()}`;
}

/** Runs the suite; never throws for one failed stage (it is recorded in `errors`). */
export async function runBenchSuite(o: SuiteOptions): Promise<BenchReport> {
  const log = o.log;
  const report: BenchReport = {
    suite: 'webshard bench',
    date: today(),
    startedAt: new Date().toISOString(),
    command: o.command,
    runtime: runtimeDescription(),
    adapter: '',
    features: { subgroups: false, shaderF16: false, timestampQuery: false },
    quick: o.quick,
    machine: { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model ?? 'unknown', loadAverageAtStart: loadAverage() },
    kernels: [],
    models: [],
    errors: [],
    complete: false,
  };
  const stage = async () => {
    report.machine.loadAverageAtEnd = loadAverage();
    await o.onStage?.(report);
  };

  // 1 + 2. Peaks and kernels, on one device that is gone before anything else opens one.
  {
    const gpu = await requestBenchGpu();
    try {
      report.adapter = gpu.adapterDescription;
      report.features = { ...gpu.features };
      log(`adapter: ${gpu.adapterDescription}`);
      if (o.kernels) {
        const suite = await runKernelSuite(gpu, { shapes: o.kernelShapes, peakBytes: o.peakBytes, peakFlops: o.peakFlops, timer: o.timer, log });
        report.peaks = suite.peaks;
        report.kernels = suite.kernels;
        report.kernelTiming = suite.timing;
        report.timestampProblem = suite.timestampProblem;
      } else {
        const timer = new KernelTimer(gpu);
        const bandwidth = await measurePeakBandwidth(gpu, timer, o.peakBytes, o.timer);
        const flops = await measurePeakFlops(gpu, timer, o.peakFlops, o.timer);
        report.peaks = { bandwidth, flops };
        report.kernelTiming = timer.source;
      }
    } catch (error) {
      report.errors.push(`kernels: ${(error as Error).stack ?? error}`);
      log(`kernels failed: ${(error as Error).message}`);
    } finally {
      gpu.device.destroy();
    }
    await stage();
  }

  // PyTorch's view of the same card, with the same shapes.
  if (o.torch) {
    log('PyTorch...');
    report.torch = benchTorch({ readBytes: o.peakBytes, rows: o.kernelShapes.rows, cols: o.kernelShapes.cols, prefillTokens: o.kernelShapes.prefillTokens });
    log(report.torch.available ? `  PyTorch ${report.torch.version} on ${report.torch.device}` : `  PyTorch: ${report.torch.reason}`);
    await stage();
  }

  // 3 + 4. Models, one at a time: write (cached), webshard, then llama.cpp on the same file.
  if (o.endToEnd && report.peaks) {
    const nlc = o.llamaCpp ? await importNodeLlamaCpp() : undefined;
    if (nlc) {
      report.llamaCppStatus = { ...nlc.status, version: nlc.version };
      if (!nlc.status.available) log(`llama.cpp peer: ${nlc.status.reason}`);
    }
    for (const spec of o.models) {
      const entry: ModelReport = { name: modelName(spec), shape: spec.shape, type: weightTypeKey(spec.type) };
      report.models.push(entry);
      try {
        log(`${entry.name}: ${BENCH_SHAPES[spec.shape].label}`);
        let lastPercent = -1;
        entry.file = await benchModelFile(spec.shape, spec.type, {
          dir: o.modelsDir,
          workers: o.writerWorkers,
          onProgress: (done, total) => {
            const percent = Math.floor((100 * done) / total / 10) * 10;
            if (total > 2 ** 28 && percent !== lastPercent) log(`  writing GGUF ${percent}%`);
            lastPercent = percent;
          },
        });
        log(`  ${entry.file.cached ? 'cached' : `written in ${(entry.file.writeMs / 1000).toFixed(1)} s`}: ${entry.file.path} (${(entry.file.bytes / 1e9).toFixed(2)} GB)`);
        entry.webshard = await benchEndToEnd(entry.file.path, entry.name, report.peaks, { ...o.e2e, log });
      } catch (error) {
        entry.webshardError = (error as Error).stack ?? String(error);
        report.errors.push(`${entry.name}: ${entry.webshardError}`);
        log(`  failed: ${(error as Error).message}`);
      }
      await stage();
      if (nlc?.module && entry.file && entry.webshard) {
        try {
          log(`  llama.cpp ${nlc.version ?? ''} on the same file...`);
          // Same footing as webshard's load: with --cold the page cache is dropped again first.
          const pageCache = o.e2e.dropPageCache && tryDropPageCache() ? 'dropped' : 'warm';
          entry.llamaCpp = await benchLlamaCpp(nlc.module, nlc.version, entry.file.path, {
            pageCache,
            prefillIds: entry.webshard.prefillIds,
            prefillRepeats: o.e2e.prefillRepeats,
            shortIds: entry.webshard.shortPromptIds,
            decodeTokens: o.e2e.decodeTokens,
            batches: o.e2e.batches,
            log,
          });
        } catch (error) {
          entry.llamaCpp = { available: false, reason: `llama.cpp failed: ${(error as Error).message}` };
          report.errors.push(`${entry.name} llama.cpp: ${(error as Error).stack ?? error}`);
          log(`  llama.cpp failed: ${(error as Error).message}`);
        }
        await stage();
      } else if (nlc && !nlc.module) {
        entry.llamaCpp = nlc.status;
      }
    }
  }
  // 5. Speculative decoding: fewer target steps per token, and what that buys in tokens/s here.
  if (o.speculative) {
    const device = await requestBenchGpu();
    try {
      report.speculative = await benchSpeculative({ ...o.speculative, device, log });
    } catch (error) {
      report.errors.push(`speculative: ${(error as Error).stack ?? error}`);
      log(`speculative failed: ${(error as Error).message}`);
    } finally {
      device.device.destroy();
    }
    await stage();
  }
  report.complete = true;
  await stage();
  return report;
}

// ---------------------------------------------------------------------------------------------
// The table

function percent(fraction: number | undefined): string {
  if (fraction === undefined || !Number.isFinite(fraction)) return '—';
  const p = fraction * 100;
  return `${p >= 10 ? p.toFixed(0) : p >= 1 ? p.toFixed(1) : p.toPrecision(2)}%`;
}

/** 3 significant digits, plain notation. */
function num(x: number | undefined): string {
  if (x === undefined || !Number.isFinite(x)) return '—';
  if (x === 0) return '0';
  const digits = Math.max(0, 2 - Math.floor(Math.log10(Math.abs(x))));
  return x.toFixed(Math.min(digits, 6));
}

const ratio = (ours: number | undefined, theirs: number | undefined) =>
  ours !== undefined && theirs !== undefined && theirs > 0 ? `${num(ours / theirs)}×` : '';

function time(ms: number): string {
  if (ms < 1) return `${num(ms * 1000)} µs`;
  if (ms < 10_000) return `${num(ms)} ms`;
  return `${num(ms / 1000)} s`;
}

/** The suite's one table (GitHub markdown). Speed vs peer: webshard ÷ peer (> 1: webshard is faster). */
export function reportTable(report: BenchReport): string {
  const rows: string[][] = [];
  const torch = report.torch?.available ? report.torch : undefined;
  const peaks = report.peaks;
  if (peaks) {
    rows.push([
      'peak read bandwidth',
      `stream ${num(peaks.bandwidth.bytes / 2 ** 20)} MiB`,
      `${num(peaks.bandwidth.gbps)} GB/s`,
      '100%',
      `best of ${peaks.bandwidth.variants.length} grids`,
      torch ? `PyTorch sum: ${num(torch.readGBps)} GB/s` : '',
      ratio(peaks.bandwidth.gbps, torch?.readGBps),
    ]);
    rows.push([
      'peak f32 FMA',
      'register FMA chains',
      `${num(peaks.flops.tflops)} TFLOP/s`,
      '100%',
      '',
      torch ? `PyTorch f32 GEMM: ${num(torch.matmulF32Tflops)} TFLOP/s` : '',
      ratio(peaks.flops.tflops, torch?.matmulF32Tflops),
    ]);
  }
  for (const k of report.kernels) {
    const memory = k.bound === 'bandwidth';
    let peer = '';
    let speed = '';
    if (torch && k.kernel === 'matvec' && k.type === 'F16') {
      peer = `PyTorch f16 mv: ${num(torch.matvecF16GBps)} GB/s`;
      speed = ratio(k.gbps, torch.matvecF16GBps);
    } else if (torch && k.kernel === 'matmul') {
      peer = `PyTorch f32 GEMM: ${num(torch.matmulF32Tflops)} TFLOP/s`;
      speed = ratio(k.tflops, torch.matmulF32Tflops);
    }
    rows.push([
      k.kernel === 'matvec' || k.kernel === 'matmul' ? `${k.kernel} ${k.type} (${k.variant})` : k.kernel.startsWith('attention') ? `${k.kernel} (${k.variant})` : k.kernel,
      k.shape,
      memory ? `${num(k.gbps)} GB/s` : `${num(k.tflops)} TFLOP/s`,
      `${percent(k.fractionOfPeak)} ${memory ? 'BW' : 'FMA'}`,
      `${time(k.ms)}/dispatch`,
      peer,
      speed,
    ]);
  }
  for (const m of report.models) {
    const w = m.webshard;
    const size = m.file ? (m.file.bytes >= 1e9 ? `${num(m.file.bytes / 1e9)} GB` : `${num(m.file.bytes / 1e6)} MB`) : '';
    const subject = m.file ? `${m.name} (${size})` : m.name;
    if (!w) {
      rows.push(['model', subject, 'FAILED', '', (m.webshardError ?? '').split('\n')[0]!.slice(0, 80), '', '']);
      continue;
    }
    const peer = m.llamaCpp && 'loadMs' in m.llamaCpp ? m.llamaCpp : undefined;
    // llama.cpp skips CPU-type Vulkan devices (lavapipe) and then runs on its CPU backend: say so.
    const llamaCpp = peer && peer.gpuDevices.length === 0 ? 'llama.cpp (CPU backend)' : 'llama.cpp';
    const c = w.coldStart;
    rows.push([
      'cold start',
      subject,
      `load ${num(c.loadGBps)} GB/s`,
      '',
      `load ${time(c.loadMs)} (weights: read ${time(c.weightsReadMs)} + repack/upload ${time(c.weightsUploadMs)} = ${num(c.weightsGBps)} GB/s), TTFT ${time(c.timeToFirstTokenMs)} (page cache ${c.pageCache})`,
      peer ? `${llamaCpp}: load ${time(peer.loadMs)}, TTFT ${time(peer.timeToFirstTokenMs)} (page cache ${peer.pageCache})` : '',
      peer ? `${ratio(peer.timeToFirstTokenMs, c.timeToFirstTokenMs)} TTFT` : '',
    ]);
    const p = w.prefill;
    rows.push([
      `prefill ${p.tokens}`,
      m.name,
      `${num(p.tokensPerSecond)} tok/s`,
      `${percent(p.fractionOfFmaPeak)} FMA`,
      `${time(p.ms)}, ${num(p.tflops)} TFLOP/s, ${percent(p.fractionOfRoofline)} of roofline`,
      peer ? `${llamaCpp}: ${num(peer.prefill.tokensPerSecond)} tok/s` : '',
      ratio(p.tokensPerSecond, peer?.prefill.tokensPerSecond),
    ]);
    for (const d of w.decode) {
      const theirs = peer?.decode.find((x) => x.batch === d.batch);
      const host =
        d.hostMsPerStepP50 !== undefined
          ? `host ${time(d.hostMsPerStepP50)}/step p50 (wall ${time(d.wallMsPerStepP50)} − GPU ${time(d.gpuMsPerStepP50!)}; mean host ${time(d.hostMsPerStep!)})`
          : `wall ${time(d.wallMsPerStepP50)}/step p50 (no GPU timestamps: host time not separable)`;
      rows.push([
        `decode batch ${d.batch}`,
        m.name,
        `${num(d.tokensPerSecond)} tok/s`,
        `${percent(d.fractionOfRoofline)} roofline`,
        `${host}; per token ${num(d.submitsPerToken)} submits, ${num(d.readbacksPerToken)} read-backs`,
        theirs ? `${llamaCpp}: ${num(theirs.tokensPerSecond)} tok/s` : '',
        ratio(d.tokensPerSecond, theirs?.tokensPerSecond),
      ]);
    }
  }
  return table(['benchmark', 'subject', 'result', '% of peak', 'detail', 'peer', 'speed vs peer'], rows);
}

/** Header lines: what ran where, when, how. */
export function reportHeader(report: BenchReport): string {
  const f = report.features;
  const lines = [
    `webshard bench  ${report.date}  ${report.runtime}${report.quick ? '  (--quick)' : ''}`,
    `command: ${report.command}`,
    `adapter: ${report.adapter}  (subgroups ${f.subgroups ? 'yes' : 'no'}, shader-f16 ${f.shaderF16 ? 'yes' : 'no'}, timestamps ${f.timestampQuery ? 'yes' : 'no'}; kernel timing: ${report.kernelTiming ?? '—'})`,
    `machine: ${report.machine.cpus} × ${report.machine.cpuModel}, load average ${report.machine.loadAverageAtStart.join(' ')} at start, ${report.machine.loadAverageAtEnd?.join(' ') ?? '—'} at end`,
  ];
  const peer = report.llamaCppStatus;
  const ran = report.models.map((m) => m.llamaCpp).find((r): r is LlamaCppResult => r !== undefined && 'loadMs' in r);
  const where = ran ? (ran.gpuDevices.length > 0 ? `, ${ran.gpu} on ${ran.gpuDevices.join(', ')}` : ', no GPU device offered: its CPU backend ran') : '';
  if (peer) lines.push(`llama.cpp: ${peer.available ? `node-llama-cpp ${peer.version ?? ''}${where}` : peer.reason}`);
  if (report.torch) lines.push(`PyTorch: ${report.torch.available ? `${report.torch.version} on ${report.torch.device}` : report.torch.reason}`);
  return lines.join('\n');
}

/** Notes under the table: how to read it. */
export function reportNotes(report: BenchReport): string {
  const notes = [
    '% of peak: against the peaks measured first on this adapter (BW: streaming read; FMA: f32 FMA chains).',
    'roofline (decode): tokens/s × bytes read per token ÷ peak BW, bytes = weights in GPU layout ÷ batch + KV cache read.',
    'prefill % FMA: model FLOPs (2 × params per token + attention) ÷ time ÷ FMA peak.',
    'speed vs peer: webshard ÷ peer (> 1× means webshard is faster); for cold start, peer TTFT ÷ webshard TTFT.',
    'cold start: load GB/s = file tensor bytes ÷ loadModel time (header, tokenizer, read + repack + upload, KV cache, until the queue is idle); weights GB/s = the same bytes ÷ the weights\' read wait + repack/upload time.',
  ];
  if (report.errors.length > 0) notes.push(`errors: ${report.errors.map((e) => e.split('\n')[0]).join(' | ')}`);
  if (!report.complete) notes.push('INCOMPLETE: the run stopped before the end.');
  return notes.map((n) => `- ${n}`).join('\n');
}

// ---------------------------------------------------------------------------------------------
// Defaults and the command line

export function defaultSuiteOptions(quick: boolean, log: (line: string) => void): SuiteOptions {
  return {
    quick,
    command: `deno task bench${quick ? ' --quick' : ''}`,
    models: quick
      ? [
          { shape: 'quick', type: GGMLType.Q4_0 },
          { shape: 'quick', type: GGMLType.Q8_0 },
          { shape: 'quick', type: GGMLType.F16 },
        ]
      : [
          // Most important first (results are saved after each model, so a run cut short keeps
          // them): the 8B Q4_0 file carries the headline targets, then the 1B shape in every type,
          // then the big 8B files (8.5 and 16 GB to write and load).
          { shape: '8b', type: GGMLType.Q4_0 },
          { shape: '1b', type: GGMLType.Q4_0 },
          { shape: '1b', type: GGMLType.Q8_0 },
          { shape: '1b', type: GGMLType.F16 },
          { shape: '8b', type: GGMLType.Q8_0 },
          { shape: '8b', type: GGMLType.F16 },
        ],
    kernels: true,
    endToEnd: true,
    llamaCpp: true,
    torch: !quick,
    speculative: { tokens: quick ? 32 : 128, draftMax: 8, modelsDir: defaultModelsDir() },
    kernelShapes: kernelShapes(quick),
    peakBytes: quick ? 16 * 2 ** 20 : 2 ** 30,
    peakFlops: quick ? { workgroups: 16, iterations: 64 } : { workgroups: 4096, iterations: 1024 },
    timer: quick ? { samples: 3, targetSampleMs: 2, maxDispatches: 64 } : { samples: 7, targetSampleMs: 20, maxDispatches: 4096 },
    e2e: quick
      ? { prefillTokens: 64, prefillRepeats: 3, decodeTokens: 8, batches: [1, 8, 32] }
      : { prefillTokens: 512, prefillRepeats: 3, decodeTokens: 64, batches: [1, 8, 32] },
    log,
  };
}

function usage(): string {
  return [
    'usage: deno task bench [--quick] [--models SHAPE:TYPE,...] [--skip kernels,e2e,llama.cpp,torch,speculative]',
    '                       [--prefill N] [--decode N] [--batches 1,8,32] [--repeats N] [--cold] [--out DIR]',
    `                       [--matmul ${MATMUL_VARIANTS.join('|')}]`,
    `  SHAPE: ${Object.keys(BENCH_SHAPES).join(' | ')}   TYPE: ${Object.keys(BENCH_TYPES).join(' | ')}`,
    '  --cold: drop the page cache before each load (Linux, root only; reported either way)',
    '  --out DIR: also write the JSON and the table (markdown) there, after every stage',
    '  --matmul V: that matmul variant in the end-to-end runs (int8: the int8 kernels for Q4_0/Q8_0 weights)',
  ].join('\n');
}

function parseModels(text: string): ModelSpec[] {
  return text.split(',').map((item) => {
    const [shape, type] = item.trim().toLowerCase().split(':');
    if (!shape || !(shape in BENCH_SHAPES) || !type || !(type in BENCH_TYPES)) throw new Error(`bad --models entry "${item}". ${usage()}`);
    return { shape: shape as BenchShapeName, type: BENCH_TYPES[type]! };
  });
}

function positiveList(text: string, name: string): number[] {
  const values = text.split(',').map(Number);
  if (values.some((v) => !Number.isInteger(v) || v < 1)) throw new Error(`--${name} takes positive integers; got ${text}`);
  return values;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      models: { type: 'string' },
      skip: { type: 'string' },
      prefill: { type: 'string' },
      decode: { type: 'string' },
      batches: { type: 'string' },
      repeats: { type: 'string' },
      cold: { type: 'boolean', default: false },
      out: { type: 'string' },
      matmul: { type: 'string' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    console.log(usage());
    return;
  }
  const log = (line: string) => console.error(line);
  const o = defaultSuiteOptions(values.quick, log);
  o.command = ['deno task bench', ...process.argv.slice(2)].join(' ');
  if (values.models) o.models = parseModels(values.models);
  const skip = new Set((values.skip ?? '').split(',').filter(Boolean));
  for (const s of skip) if (!['kernels', 'e2e', 'llama.cpp', 'torch', 'speculative'].includes(s)) throw new Error(`bad --skip entry ${s}. ${usage()}`);
  if (skip.has('speculative')) o.speculative = undefined;
  o.kernels = !skip.has('kernels');
  o.endToEnd = !skip.has('e2e');
  o.llamaCpp = !skip.has('llama.cpp');
  if (skip.has('torch')) o.torch = false;
  if (values.prefill) o.e2e.prefillTokens = positiveList(values.prefill, 'prefill')[0]!;
  if (values.decode) o.e2e.decodeTokens = positiveList(values.decode, 'decode')[0]!;
  if (values.batches) o.e2e.batches = positiveList(values.batches, 'batches');
  if (values.repeats) o.e2e.prefillRepeats = positiveList(values.repeats, 'repeats')[0]!;
  o.e2e.dropPageCache = values.cold;
  if (values.matmul) {
    if (!(MATMUL_VARIANTS as readonly string[]).includes(values.matmul)) throw new Error(`bad --matmul ${values.matmul}. ${usage()}`);
    o.e2e.kernels = { matmul: values.matmul as MatmulVariant };
  }

  const started = performance.now();
  let resultsPath = '';
  const write = async (report: BenchReport) => {
    resultsPath = await writeResults('bench', report);
    if (values.out) {
      mkdirSync(values.out, { recursive: true });
      copyFileSync(resultsPath, join(values.out, `bench-${report.date}.json`));
      const speculative = report.speculative ? `\n${formatSpeculativeTable(report.speculative)}\n` : '';
      writeFileSync(join(values.out, `bench-${report.date}.md`), `${reportHeader(report)}\n\n${reportTable(report)}\n\n${reportNotes(report)}\n${speculative}`);
    }
  };
  o.onStage = write;
  const report = await runBenchSuite(o);
  console.log(`${reportHeader(report)}\n\n${reportTable(report)}\n\n${reportNotes(report)}`);
  if (report.speculative) console.log(`\nSpeculative decoding (greedy, stories260K F32 target):\n\n${formatSpeculativeTable(report.speculative)}`);
  console.log(`\nwrote ${resultsPath}${values.out ? ` (and ${values.out})` : ''} in ${((performance.now() - started) / 1000).toFixed(0)} s`);
  if (report.errors.length > 0) process.exitCode = 1;
}

if ((import.meta as { main?: boolean }).main) {
  try {
    await main();
  } catch (error) {
    // Returning (not Deno.exit) lets every device be destroyed first.
    console.error(`bench: ${(error as Error).stack ?? error}`);
    process.exitCode = 1;
  }
}
