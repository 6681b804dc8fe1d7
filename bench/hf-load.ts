// Hugging Face checkpoints next to GGUF: load throughput for GGUF Q4_0, safetensors BF16 (one file
// and sharded) and AWQ (and GPTQ) g128, and decode tokens/s of the 4-bit formats, all through
// `loadModel(path)` on one device, the same model in every format.
//
//   deno task bench:hf-load [--shape small|1b|8b|quick] [--formats q4_0,bf16,bf16-sharded,awq,gptq,gptq-act-order] [--shards 4]
//                           [--repeats 2] [--decode q4_0,awq] [--decode-tokens 32] [--out DIR]
//
// The models are the project's random Llama (src/model/random-llama.ts) at that shape, seed 1: the
// GGUF by bench/models.ts, the folders by src/model/random-hf-checkpoint.ts from the same values
// (BF16 rounds them; AWQ/GPTQ quantize the layers by round to nearest, embeddings stay F16 as
// AutoAWQ leaves them). They are written once to bench/models/ (git-ignored) and reused.
//
// Load: wall time of `loadModel` until the queue is idle (header, tokenizer, read + repack + upload
// of every weight, a 256-token KV cache), file in the page cache after an untimed warm-up load; best
// of --repeats. File GB/s = bytes of the weight files ÷ wall; GPU GB/s = bytes the device holds
// (weights in their GPU layout + the KV cache) ÷ wall. Decode: greedy, --decode-tokens after
// "Once upon a time", timed after the first token (`complete`'s decodeMs), after one warm-up run.

import { existsSync } from 'node:fs';
import { mkdir, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { loadModel } from '../src/api/model.ts';
import type { GpuContext } from '../src/gpu/device.ts';
import { GGMLType } from '../src/model/ggml-type.ts';
import { writeRandomHfCheckpoint, type RandomHfOptions } from '../src/model/random-hf-checkpoint.ts';
import { runtimeDescription, table, today, writeResults } from './common.ts';
import { requestBenchGpu } from './e2e.ts';
import { BENCH_SHAPES, benchModelFile, benchModelsDir, type BenchShapeName } from './models.ts';

/** The formats, by their command-line names: a GGUF type, or a Hugging Face folder's writer options. */
function formats(shards: number): Record<string, { label: string; hf?: RandomHfOptions }> {
  return {
    q4_0: { label: 'GGUF Q4_0' },
    bf16: { label: 'safetensors BF16, one file', hf: { dtype: 'BF16' } },
    'bf16-sharded': { label: `safetensors BF16, ${shards} shards + index`, hf: { dtype: 'BF16', shards } },
    awq: { label: 'AWQ gemm g128 (F16 embeddings)', hf: { quantization: { method: 'awq', groupSize: 128 } } },
    gptq: { label: 'GPTQ g128 sym (F16 embeddings)', hf: { quantization: { method: 'gptq', groupSize: 128 } } },
    'gptq-act-order': { label: 'GPTQ g128 act-order (desc_act)', hf: { quantization: { method: 'gptq', groupSize: 128, descAct: true } } },
  };
}

export interface HfLoadRow {
  format: string;
  label: string;
  path: string;
  /** Bytes of the weight files (GGUF: the file; a folder: its .safetensors files). */
  fileBytes: number;
  /** Weights (GPU layout) + KV cache on the device (model.stats()). */
  gpuBytes: number;
  /** Best wall time of loadModel until the queue is idle. */
  loadMs: number;
  fileGBps: number;
  gpuGBps: number;
  /** The weight loader's split in that run: waiting for reads, and repacking + uploading. */
  readMs: number;
  uploadMs: number;
  decodeTokensPerSecond?: number;
  decodeTokens?: number;
}

/** The random model in `format` at `shapeName`, written once to bench/models/ and reused. */
async function benchModel(shapeName: BenchShapeName, format: string, hf: RandomHfOptions | undefined, modelsDir: string, log: (line: string) => void): Promise<{ path: string; fileBytes: number }> {
  if (!hf) {
    const file = await benchModelFile(shapeName, GGMLType.Q4_0, { dir: modelsDir });
    return { path: file.path, fileBytes: file.bytes };
  }
  const dir = resolve(modelsDir, `random-hf-${shapeName}-${format}${hf.shards ? hf.shards : ''}-seed1`);
  if (!existsSync(dir)) {
    const start = performance.now();
    // Written beside its final name and renamed when complete: an interrupted write is never reused.
    const partial = `${dir}.partial`;
    await rm(partial, { recursive: true, force: true });
    await writeRandomHfCheckpoint(partial, BENCH_SHAPES[shapeName].shape, { seed: 1, ...hf });
    await rename(partial, dir);
    log(`  wrote ${dir} in ${((performance.now() - start) / 1000).toFixed(1)} s`);
  }
  let fileBytes = 0;
  for (const name of await readdir(dir)) if (name.endsWith('.safetensors')) fileBytes += (await stat(resolve(dir, name))).size;
  return { path: dir, fileBytes };
}

export interface HfLoadOptions {
  shapeName: BenchShapeName;
  formats: string[];
  shards: number;
  repeats: number;
  decode: string[];
  decodeTokens: number;
  /** Where the models are written and reused (default bench/models/). */
  modelsDir?: string;
  device: GpuContext;
  log: (line: string) => void;
}

export async function benchHfLoad(o: HfLoadOptions): Promise<HfLoadRow[]> {
  const known = formats(o.shards);
  const rows: HfLoadRow[] = [];
  for (const format of o.formats) {
    const spec = known[format];
    if (!spec) throw new Error(`unknown format ${format} (known: ${Object.keys(known).join(', ')})`);
    o.log(`${format}: ${spec.label}`);
    const { path, fileBytes } = await benchModel(o.shapeName, format, spec.hf, o.modelsDir ?? benchModelsDir, o.log);
    let best: HfLoadRow | undefined;
    // Run 0 warms the page cache (and the JIT); the rest are timed. The last model stays for decode.
    for (let run = 0; run <= o.repeats; run++) {
      const start = performance.now();
      const model = await loadModel(path, { device: o.device, contextLength: 256 });
      await o.device.device.queue.onSubmittedWorkDone();
      const loadMs = performance.now() - start;
      const stats = model.stats().devices[0]!;
      const row: HfLoadRow = {
        format,
        label: spec.label,
        path,
        fileBytes,
        gpuBytes: stats.gpuBytes,
        loadMs,
        fileGBps: fileBytes / loadMs / 1e6,
        gpuGBps: stats.gpuBytes / loadMs / 1e6,
        readMs: stats.loadReadMs,
        uploadMs: stats.loadUploadMs,
      };
      o.log(`  ${run === 0 ? 'warm-up' : `run ${run}`}: ${loadMs.toFixed(0)} ms = ${row.fileGBps.toFixed(2)} GB/s of file`);
      if (run > 0 && (!best || loadMs < best.loadMs)) best = row;
      try {
        if (run === o.repeats && o.decode.includes(format)) {
          const options = { temperature: 0, maxTokens: o.decodeTokens, ignoreEos: true };
          await model.complete('Once upon a time', options); // records (compiles) every step shape
          const result = await model.complete('Once upon a time', options);
          best!.decodeTokens = result.ids.length;
          best!.decodeTokensPerSecond = (result.ids.length - 1) / (result.timings.decodeMs / 1000);
          o.log(`  decode: ${best!.decodeTokensPerSecond.toFixed(2)} tok/s`);
        }
      } finally {
        await model.dispose();
      }
    }
    rows.push(best!);
  }
  return rows;
}

export function formatHfLoadTable(rows: readonly HfLoadRow[]): string {
  const q4 = rows.find((r) => r.format === 'q4_0');
  return table(
    ['format', 'file MB', 'GPU MB', 'load ms', 'file GB/s', 'GPU GB/s', 'read + repack/upload ms', 'decode tok/s', 'vs Q4_0'],
    rows.map((r) => [
      r.label,
      (r.fileBytes / 1e6).toFixed(0),
      (r.gpuBytes / 1e6).toFixed(0),
      r.loadMs.toFixed(0),
      r.fileGBps.toFixed(2),
      r.gpuGBps.toFixed(2),
      `${r.readMs.toFixed(0)} + ${r.uploadMs.toFixed(0)}`,
      r.decodeTokensPerSecond?.toFixed(2) ?? '',
      r.decodeTokensPerSecond && q4?.decodeTokensPerSecond ? `${(r.decodeTokensPerSecond / q4.decodeTokensPerSecond).toFixed(2)}×` : '',
    ]),
  );
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      shape: { type: 'string', default: 'small' },
      formats: { type: 'string', default: 'q4_0,bf16,bf16-sharded,awq' },
      shards: { type: 'string', default: '4' },
      repeats: { type: 'string', default: '2' },
      decode: { type: 'string', default: 'q4_0,awq' },
      'decode-tokens': { type: 'string', default: '32' },
      out: { type: 'string' },
    },
  });
  const shapeName = values.shape as BenchShapeName;
  if (!(shapeName in BENCH_SHAPES)) throw new Error(`--shape: one of ${Object.keys(BENCH_SHAPES).join(', ')}`);
  const device = await requestBenchGpu();
  try {
    const options = {
      shapeName,
      formats: values.formats!.split(','),
      shards: Number(values.shards),
      repeats: Math.max(1, Number(values.repeats)),
      decode: values.decode!.split(','),
      decodeTokens: Number(values['decode-tokens']),
    };
    const rows = await benchHfLoad({ ...options, device, log: (line) => console.error(line) });
    const heading =
      `webshard Hugging Face loading — ${today()}, ${device.adapterDescription}, ${runtimeDescription()}\n` +
      `${BENCH_SHAPES[shapeName].label}; best of ${options.repeats} loads (page cache warm); decode ${options.decodeTokens} tokens, greedy\n`;
    const text = `${heading}\n${formatHfLoadTable(rows)}\n`;
    console.log(text);
    const data = { date: today(), adapter: device.adapterDescription, runtime: runtimeDescription(), ...options, rows };
    console.error(`wrote ${await writeResults('hf-load', data)}`);
    if (values.out) {
      await mkdir(values.out, { recursive: true });
      await writeFile(resolve(values.out, `hf-load-${today()}.md`), text);
      await writeFile(resolve(values.out, `hf-load-${today()}.json`), JSON.stringify(data, null, 2) + '\n');
    }
  } finally {
    device.device.destroy();
  }
}

if ((import.meta as { main?: boolean }).main) await main();
