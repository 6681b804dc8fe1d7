// Load throughput: file (in the page cache) → repacked GPU buffers, timed by loadLlamaWeights'
// own split (read vs repack + upload) and by wall clock until the queue has taken everything.
//
//   deno task bench:load [--shape 1b|8b|quick] [--types q4_0,q8_0,f16] [--repeats 3]
//
// The files are Llama-shaped GGUFs written by the project's writer with the real tensor table and
// metadata, but filled with cheap pseudo-random bytes instead of quantized random weights (a
// Llama-3.2-1B file takes seconds instead of minutes to write). Loading does not look at the
// values, so this measures exactly what a real file of that shape costs. They are written to
// bench/results/ (git-ignored) and reused.

import { existsSync } from 'node:fs';
import { stat, writeFile } from 'node:fs/promises';
import { basename, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { requestGpu } from '../src/gpu/device.ts';
import { llamaConfig, validateLlamaTensors } from '../src/model/config.ts';
import { tensorByteLength } from '../src/model/ggml-type.ts';
import { readGGUF } from '../src/model/gguf.ts';
import { ggufFileSize, writeGGUFStream, type TensorData } from '../src/model/gguf-writer.ts';
import { randomLlamaSpec, type RandomWeightType } from '../src/model/random-llama.ts';
import { directoryTarget } from '../src/model/safetensors-writer.ts';
import { fileSource } from '../src/model/source.ts';
import { wholeModelView } from '../src/engine/shard-view.ts';
import { destroyWeights, loadLlamaWeights, shardReadBytes, type LlamaWeights } from '../src/engine/weights.ts';
import type { GpuWeight } from '../src/shaders/matmul.ts';
import { BENCH_SHAPES, BENCH_TYPES, weightTypeKey, type BenchShapeName } from './models.ts';

const resultsDir = resolve(dirname(fileURLToPath(import.meta.url)), 'results');

/** Cheap deterministic bytes (xorshift32), in chunks of at most 16 MiB. */
function* fillerChunks(byteLength: number, seed: number): Generator<Uint8Array> {
  let state = seed >>> 0 || 1;
  for (let done = 0; done < byteLength; ) {
    const length = Math.min(16 << 20, byteLength - done);
    const chunk = new Uint8Array(Math.ceil(length / 4) * 4);
    const words = new Uint32Array(chunk.buffer);
    for (let i = 0; i < words.length; i++) {
      state ^= state << 13;
      state ^= state >>> 17;
      state ^= state << 5;
      words[i] = state;
    }
    done += length;
    yield chunk.subarray(0, length);
  }
}

/** A `shapeName` Llama in `type` with filler weights (norms stay real), written once to bench/results/. */
export async function loadBenchFile(shapeName: BenchShapeName, type: RandomWeightType): Promise<{ path: string; bytes: number }> {
  const spec = randomLlamaSpec({ ...BENCH_SHAPES[shapeName].shape, weightType: type }, 1);
  const tensors = spec.tensors.map((t, i) =>
    t.shape.length === 1 ? t : { ...t, data: (() => fillerChunks(tensorByteLength(t.type, t.shape.reduce((a, b) => a * b, 1))!, i + 1)) as TensorData },
  );
  const path = resolve(resultsDir, `load-llama-${shapeName}-${weightTypeKey(type)}.gguf`);
  const expected = ggufFileSize(spec);
  if (existsSync(path) && (await stat(path)).size === expected) return { path, bytes: expected };
  await directoryTarget(resultsDir).writeFile(basename(path), (sink) => writeGGUFStream({ ...spec, tensors }, sink));
  return { path, bytes: expected };
}

export interface LoadMeasurement {
  type: string;
  fileBytes: number;
  /** Bytes of the tensors read (all of them: one device). */
  tensorBytes: number;
  /** loadLlamaWeights' split: waiting for reads that were not hidden behind work, and repacking + uploading. */
  readMs: number;
  uploadMs: number;
  /** loadLlamaWeights until queue.onSubmittedWorkDone. */
  wallMs: number;
  gbps: number;
  /** Process CPU time (all threads, user + system) over the same span. */
  cpuMs: number;
  /**
   * The same GPU buffers filled from one reused 4 MiB host buffer (no reading, no repacking):
   * what the device's own memory costs. On lavapipe that is fresh host memory, so page faults.
   */
  floorMs: number;
  floorGBps: number;
}

const cpuMs = (): number => {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) / 1000;
};

/** Time to fill fresh GPU buffers of these sizes the way the loader does (4 MiB writes, a submit every 64 MiB). */
async function floorMs(device: GPUDevice, sizes: number[]): Promise<number> {
  const chunk = new Uint8Array(4 << 20);
  const buffers: GPUBuffer[] = [];
  const start = performance.now();
  let unflushed = 0;
  for (const size of sizes) {
    const buffer = device.createBuffer({ size, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
    buffers.push(buffer);
    for (let at = 0; at < size; at += chunk.length) {
      const n = Math.min(chunk.length, size - at);
      device.queue.writeBuffer(buffer, at, chunk, 0, n);
      unflushed += n;
      if (unflushed >= 64 << 20) {
        device.queue.submit([]);
        unflushed = 0;
      }
    }
  }
  device.queue.submit([]);
  await device.queue.onSubmittedWorkDone();
  const ms = performance.now() - start;
  for (const buffer of buffers) buffer.destroy();
  return ms;
}

function bufferSizes(weights: LlamaWeights): number[] {
  const buffers = new Set<GPUBuffer>();
  const add = (x: GPUBuffer | GpuWeight[] | undefined) => {
    if (Array.isArray(x)) for (const part of x) buffers.add(part.buffer);
    else if (x) buffers.add(x);
  };
  add(weights.tokenEmbedding);
  add(weights.output);
  add(weights.outputNorm);
  add(weights.ropeFrequencyFactors);
  for (const layer of weights.layers) for (const value of Object.values(layer)) add(value as GPUBuffer | GpuWeight[]);
  return [...buffers].map((b) => b.size);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      shape: { type: 'string', default: '1b' },
      types: { type: 'string', default: 'q4_0,q8_0,f16' },
      repeats: { type: 'string', default: '3' },
    },
  });
  const shapeName = values.shape as BenchShapeName;
  if (!(shapeName in BENCH_SHAPES)) throw new Error(`--shape: one of ${Object.keys(BENCH_SHAPES).join(', ')}`);
  const repeats = Number(values.repeats);
  const gpu = await requestGpu();
  console.log(`adapter: ${gpu.adapterDescription}`);
  const results: LoadMeasurement[] = [];
  for (const key of values.types!.split(',')) {
    const type = BENCH_TYPES[key];
    if (type === undefined) throw new Error(`unknown type ${key}`);
    const written = performance.now();
    const { path, bytes } = await loadBenchFile(shapeName, type);
    console.log(`${key}: ${path} (${(bytes / 1e6).toFixed(0)} MB, ready in ${(performance.now() - written).toFixed(0)} ms)`);
    const runs: LoadMeasurement[] = [];
    // Run 0 warms the page cache (and the JIT); the rest are reported.
    for (let run = 0; run <= repeats; run++) {
      const source = await fileSource(path);
      try {
        const file = await readGGUF(source);
        const config = llamaConfig(file);
        validateLlamaTensors(file, config);
        const view = wholeModelView(config);
        const tensorBytes = shardReadBytes(file, config, view);
        const cpuStart = cpuMs();
        const start = performance.now();
        const weights = await loadLlamaWeights(gpu, file, config, view);
        await gpu.device.queue.onSubmittedWorkDone();
        const wallMs = performance.now() - start;
        const cpu = cpuMs() - cpuStart;
        const sizes = bufferSizes(weights);
        destroyWeights(weights);
        const floor = await floorMs(gpu.device, sizes);
        const m: LoadMeasurement = {
          type: key,
          fileBytes: bytes,
          tensorBytes,
          readMs: weights.loadMs.read,
          uploadMs: weights.loadMs.upload,
          wallMs,
          gbps: tensorBytes / wallMs / 1e6,
          cpuMs: cpu,
          floorMs: floor,
          floorGBps: tensorBytes / floor / 1e6,
        };
        console.log(
          `  ${run === 0 ? 'warm-up' : `run ${run}`}: read ${m.readMs.toFixed(0)} ms, repack+upload ${m.uploadMs.toFixed(0)} ms, ` +
            `wall ${wallMs.toFixed(0)} ms = ${m.gbps.toFixed(2)} GB/s (CPU ${cpu.toFixed(0)} ms); GPU-memory floor ${floor.toFixed(0)} ms`,
        );
        if (run > 0) runs.push(m);
      } finally {
        await source.close();
      }
    }
    runs.sort((a, b) => a.wallMs - b.wallMs);
    results.push(runs[0]!);
  }
  const header = ['type', 'file MB', 'read ms', 'repack+upload ms', 'wall ms', 'GB/s', 'CPU ms', 'floor ms', 'floor GB/s'];
  const rows = results.map((r) => [
    r.type,
    (r.fileBytes / 1e6).toFixed(0),
    r.readMs.toFixed(0),
    r.uploadMs.toFixed(0),
    r.wallMs.toFixed(0),
    r.gbps.toFixed(2),
    r.cpuMs.toFixed(0),
    r.floorMs.toFixed(0),
    r.floorGBps.toFixed(2),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  console.log(`\n${shapeName} shape, best of ${repeats} runs (by wall time), file in the page cache:`);
  for (const row of [header, ...rows]) console.log(row.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join('  '));
  console.log('GB/s = tensor bytes ÷ wall (loadLlamaWeights until the queue is idle). floor = the same GPU buffers filled from a reused host buffer.');
  const out = resolve(resultsDir, `load-${new Date().toISOString().slice(0, 10)}.json`);
  await writeFile(out, JSON.stringify({ adapter: gpu.adapterDescription, shape: shapeName, repeats, results }, null, 2));
  console.log(`wrote ${out}`);
  gpu.device.destroy();
}

if ((import.meta as { main?: boolean }).main) await main();
