// The benchmark models: random-weight Llamas at real shapes, written as GGUF by the project's own
// writer (src/model/random-llama.ts) into bench/models/ (git-ignored) and reused while they exist.
//
// The full-size files take minutes to generate on one core (Llama-3-8B is 8 billion random
// values), so in Deno they are generated tensor by tensor in Web Workers (one per spare core):
// each worker rebuilds the same spec and produces whole tensors, which the writer streams to disk
// in file order. Every tensor has its own random stream, so the bytes are identical to a
// single-threaded write. In Node (the vitest smoke test) the write runs in-process.
//
// This module is also the workers' entry point: a worker started with WORKER_NAME answers
// "generate tensor i" messages (see the bottom of the file).

import { existsSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import os from 'node:os';
import { basename, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ggufFileSize, writeGGUFStream, type TensorData } from '../src/model/gguf-writer.ts';
import { GGMLType, ggmlTypeName } from '../src/model/ggml-type.ts';
import { LLAMA_3_2_1B_SHAPE, randomLlamaSpec, type RandomLlamaShape, type RandomWeightType } from '../src/model/random-llama.ts';
import { directoryTarget } from '../src/model/safetensors-writer.ts';

/** Where the benchmark GGUFs are cached (git-ignored; never commit model files). */
export const benchModelsDir: string = resolve(dirname(fileURLToPath(import.meta.url)), 'models');

/** Llama-3-8B's shape (vocabulary padded to its 128256 entries; untied output head, as Llama 3 8B has). */
export const LLAMA_3_8B_SHAPE: RandomLlamaShape = {
  dim: 4096,
  nLayers: 32,
  nHeads: 32,
  nKvHeads: 8,
  ffnDim: 14336,
  vocabSize: 128256,
  contextLength: 8192,
  ropeBase: 500000,
  tiedEmbeddings: false,
};

/** `--quick`: tiny, but GQA, 64-wide heads and every weight type, so each code path runs on a CPU adapter. */
export const QUICK_SHAPE: RandomLlamaShape = {
  dim: 256,
  nLayers: 2,
  nHeads: 4,
  nKvHeads: 2,
  ffnDim: 768,
  vocabSize: 4096,
  contextLength: 2048,
};

/** Between quick and 1B: big enough that loading is bandwidth, not overhead, yet written and loaded in seconds on a CPU adapter. */
export const SMALL_SHAPE: RandomLlamaShape = {
  dim: 1024,
  nLayers: 4,
  nHeads: 16,
  nKvHeads: 4,
  ffnDim: 4096,
  vocabSize: 32000,
  contextLength: 4096,
  tiedEmbeddings: true,
};

export type BenchShapeName = 'quick' | 'small' | '1b' | '8b';

export const BENCH_SHAPES: Record<BenchShapeName, { label: string; shape: RandomLlamaShape }> = {
  quick: { label: 'tiny (dim 256, 2 layers, 4/2 heads, FFN 768, vocab 4096)', shape: QUICK_SHAPE },
  small: { label: 'small (dim 1024, 4 layers, 16/4 heads, FFN 4096, vocab 32000, tied)', shape: SMALL_SHAPE },
  '1b': { label: 'Llama-3.2-1B shape (2048, 16 layers, 32/8 heads, FFN 8192, vocab 128256, tied)', shape: LLAMA_3_2_1B_SHAPE },
  '8b': { label: 'Llama-3-8B shape (4096, 32 layers, 32/8 heads, FFN 14336, vocab 128256)', shape: LLAMA_3_8B_SHAPE },
};

/** The weight types the suite writes, by the names used on the command line. */
export const BENCH_TYPES: Record<string, RandomWeightType> = {
  q4_0: GGMLType.Q4_0,
  q8_0: GGMLType.Q8_0,
  f16: GGMLType.F16,
};

export function weightTypeKey(type: RandomWeightType): string {
  return ggmlTypeName(type).toLowerCase();
}

export interface BenchModelFile {
  path: string;
  shapeName: BenchShapeName;
  type: RandomWeightType;
  bytes: number;
  /** Already on disk from an earlier run. */
  cached: boolean;
  /** Time to generate and write it (0 when cached). */
  writeMs: number;
  /** Workers that generated it (0: in-process). */
  workers: number;
}

export interface BenchModelOptions {
  /** Folder for the files (default bench/models/). */
  dir?: string;
  seed?: number;
  /** Generator workers (Deno only); default: spare cores (up to 12), in-process for tiny files. */
  workers?: number;
  onProgress?: (bytesWritten: number, bytesTotal: number) => void;
}

/** The GGUF for `shapeName` in `type`, written once (under a temporary name first) and reused. */
export async function benchModelFile(shapeName: BenchShapeName, type: RandomWeightType, options: BenchModelOptions = {}): Promise<BenchModelFile> {
  const seed = options.seed ?? 1;
  const dir = options.dir ?? benchModelsDir;
  const shape = { ...BENCH_SHAPES[shapeName].shape, weightType: type };
  const path = resolve(dir, `random-llama-${shapeName}-${weightTypeKey(type)}-seed${seed}.gguf`);
  const spec = randomLlamaSpec(shape, seed);
  const expected = ggufFileSize(spec);
  if (existsSync(path) && (await stat(path)).size === expected) {
    return { path, shapeName, type, bytes: expected, cached: true, writeMs: 0, workers: 0 };
  }
  const isDeno = typeof (globalThis as { Deno?: unknown }).Deno !== 'undefined';
  const bigFile = expected > 256 * 2 ** 20;
  const workers = isDeno ? (options.workers ?? (bigFile ? Math.min(12, Math.max(1, os.cpus().length - 1)) : 0)) : 0;
  const start = performance.now();
  const pool = workers > 0 ? new TensorWorkerPool(workers, shape, seed) : undefined;
  try {
    const tensors = pool ? spec.tensors.map((t, i) => ({ ...t, data: pool.tensorData(i) })) : spec.tensors;
    let written = 0;
    // Under a temporary name first, renamed when whole (directoryTarget).
    await directoryTarget(dir).writeFile(basename(path), (sink) =>
      writeGGUFStream({ ...spec, tensors }, async (chunk) => {
        await sink(chunk);
        written += chunk.byteLength;
        options.onProgress?.(written, expected);
      }),
    );
  } finally {
    pool?.close();
  }
  const bytes = (await stat(path)).size;
  if (bytes !== expected) throw new Error(`${path}: wrote ${bytes} bytes, expected ${expected}`);
  return { path, shapeName, type, bytes, cached: false, writeMs: performance.now() - start, workers };
}

// ---------------------------------------------------------------------------------------------
// Parallel generation (Deno Web Workers)

const WORKER_NAME = 'webshard-bench-gguf-tensors';

interface TensorRequest {
  shape: RandomLlamaShape;
  seed: number;
  index: number;
}

interface TensorReply {
  index: number;
  chunks?: Uint8Array[];
  error?: string;
}

/**
 * Hands tensor i to a worker when the writer gets close to it (a window of 4 per worker ahead, so
 * workers stay busy while the writer waits for a big tensor), so memory holds at most that many
 * finished tensors.
 */
class TensorWorkerPool {
  private readonly workers: Worker[] = [];
  private readonly results = new Map<number, Promise<Uint8Array[]>>();
  private readonly waiting = new Map<number, { resolve: (c: Uint8Array[]) => void; reject: (e: Error) => void }>();
  private dispatched = 0;
  private readonly count: number;

  constructor(
    size: number,
    private readonly shape: RandomLlamaShape,
    private readonly seed: number,
  ) {
    this.count = randomLlamaSpec(shape, seed).tensors.length;
    for (let i = 0; i < size; i++) {
      const worker = new Worker(new URL('./models.ts', import.meta.url).href, { type: 'module', name: WORKER_NAME });
      worker.onmessage = (event: MessageEvent<TensorReply>) => {
        const reply = event.data;
        const pending = this.waiting.get(reply.index);
        this.waiting.delete(reply.index);
        if (reply.error !== undefined) pending?.reject(new Error(`tensor ${reply.index}: ${reply.error}`));
        else pending?.resolve(reply.chunks!);
      };
      worker.onerror = (event: ErrorEvent) => {
        event.preventDefault();
        for (const pending of this.waiting.values()) pending.reject(new Error(`generator worker failed: ${event.message}`));
        this.waiting.clear();
      };
      this.workers.push(worker);
    }
  }

  /** The tensor's data as the writer wants it: dispatches it (and the next few) and yields its chunks. */
  tensorData(index: number): TensorData {
    return () => this.chunks(index);
  }

  private async *chunks(index: number): AsyncGenerator<Uint8Array> {
    this.dispatchUpTo(index + 4 * this.workers.length);
    const chunks = await this.results.get(index)!;
    this.results.delete(index);
    yield* chunks;
  }

  private dispatchUpTo(last: number): void {
    while (this.dispatched <= last && this.dispatched < this.count) {
      const index = this.dispatched++;
      const promise = new Promise<Uint8Array[]>((resolve, reject) => this.waiting.set(index, { resolve, reject }));
      promise.catch(() => {}); // rejections surface where the writer awaits the tensor
      this.results.set(index, promise);
      const request: TensorRequest = { shape: this.shape, seed: this.seed, index };
      this.workers[index % this.workers.length]!.postMessage(request);
    }
  }

  close(): void {
    for (const worker of this.workers) worker.terminate();
  }
}

function isTensorWorker(): boolean {
  return (globalThis as { name?: unknown }).name === WORKER_NAME && typeof (globalThis as { postMessage?: unknown }).postMessage === 'function';
}

if (isTensorWorker()) {
  const scope = globalThis as unknown as {
    onmessage: ((event: MessageEvent<TensorRequest>) => void) | null;
    postMessage(message: TensorReply, transfer?: Transferable[]): void;
  };
  // The spec (with its 128256-entry vocabulary) is built once per worker, not once per tensor.
  let cached: { key: string; spec: ReturnType<typeof randomLlamaSpec> } | undefined;
  scope.onmessage = (event) => {
    const { shape, seed, index } = event.data;
    try {
      const key = JSON.stringify([shape, seed]);
      if (cached?.key !== key) cached = { key, spec: randomLlamaSpec(shape, seed) };
      const tensor = cached.spec.tensors[index]!;
      const chunks = [...(tensor.data as () => Iterable<Uint8Array>)()];
      scope.postMessage({ index, chunks }, [...new Set(chunks.map((c) => c.buffer as ArrayBuffer))]);
    } catch (error) {
      scope.postMessage({ index, error: (error as Error).stack ?? String(error) });
    }
  };
}
