// Fuzzing the loader with seeded mutations of GGUF files: 2,000 mutated headers of a small Llama
// written by webshard's GGUF writer (fast to parse) through the parser and the validation (config,
// tensor shapes, tokenizer), in-process, then 100 mutated copies of stories260K loaded end to end
// on the GPU. Every outcome is a success or one of the
// typed errors; nothing hangs (each case has a deadline), nothing crashes, and the loader never
// asks for more bytes than the file has, nor for a GPU buffer larger than the file (the largest
// of each request is recorded). A failing seed is named, so it reproduces.
//
// (Seed 1949 sets block_count to 8,388,609 in a 12-tensor file: validation once ran for 78 s and
// ended in an untyped RangeError; llamaConfig now refuses a block_count beyond the tensor table.)

import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { loadModel } from '../src/api/model.ts';
import { GpuUnavailableError } from '../src/gpu/device.ts';
import { llamaConfig, validateLlamaTensors } from '../src/model/config.ts';
import { ModelFormatError, ModelSourceError } from '../src/model/errors.ts';
import { readGGUF } from '../src/model/gguf.ts';
import { randomLlamaGGUF } from '../src/model/random-llama.ts';
import { bytesSource, type ByteSource } from '../src/model/source.ts';
import { LlamaTokenizer } from '../src/model/tokenizer.ts';
import { seededRandom } from '../src/random.ts';
import { ContextOverflowError } from '../src/engine/runner.ts';
import { InvalidOptionError } from '../src/engine/sampler.ts';
import { ShardPlanError } from '../src/sharding/plan.ts';
import { testGpu } from './helpers/gpu.ts';
import { modelPath } from './helpers/models.ts';

const stories = new Uint8Array(readFileSync(modelPath('stories260K.gguf')));
const small = randomLlamaGGUF({ dim: 32, nLayers: 1, nHeads: 2, nKvHeads: 1, ffnDim: 64 });
const TYPED_ERRORS = [ModelFormatError, ModelSourceError, ShardPlanError, InvalidOptionError, ContextOverflowError, GpuUnavailableError];
const CASE_DEADLINE_MS = 10_000;

/** Where the header (metadata and tensor table) ends: mutations aim there, where the parser reads. */
const headerBytes = async (file: Uint8Array) => (await readGGUF(bytesSource(file))).dataOffset;
const bases = { small: { bytes: small, header: await headerBytes(small) }, stories: { bytes: stories, header: await headerBytes(stories) } };

/** A source that records the largest read asked of it. */
function recordingSource(bytes: Uint8Array): ByteSource & { largestRead: number } {
  const inner = bytesSource(bytes, 'fuzzed.gguf');
  const source = {
    name: inner.name,
    size: inner.size,
    largestRead: 0,
    get bytesRead() {
      return inner.bytesRead;
    },
    read(offset: number, length: number) {
      source.largestRead = Math.max(source.largestRead, length);
      return inner.read(offset, length);
    },
    async readInto(offset: number, target: Uint8Array) {
      source.largestRead = Math.max(source.largestRead, target.length);
      target.set(await inner.read(offset, target.length));
    },
    close: () => inner.close(),
  };
  return source;
}

/** 1 to 4 mutations of the header: bit flips, bytes set to extremes, u32/u64 fields overwritten, truncation, insertion. */
function mutate(seed: number, base: { bytes: Uint8Array; header: number }): Uint8Array {
  const random = seededRandom(seed);
  const int = (n: number) => Math.floor(random() * n);
  let bytes = base.bytes.slice();
  const mutations = 1 + int(4);
  for (let m = 0; m < mutations; m++) {
    const at = int(base.header);
    const view = new DataView(bytes.buffer);
    switch (int(7)) {
      case 0:
        bytes[at] ^= 1 << int(8);
        break;
      case 1:
        bytes[at] = [0, 0xff, 0x7f, 0x80][int(4)]!;
        break;
      case 2:
        if (at + 4 <= bytes.length) view.setUint32(at, [0, 1, 0xffffffff, 0x7fffffff, int(1 << 16)][int(5)]!, true);
        break;
      case 3:
        if (at + 8 <= bytes.length) view.setBigUint64(at, [0n, 1n, 0xffffffffffffffffn, 1n << 40n, BigInt(int(1 << 20))][int(5)]!, true);
        break;
      case 4:
        bytes = bytes.slice(0, at); // truncated
        break;
      case 5:
        bytes = concat(bytes.subarray(0, at), new Uint8Array(1 + int(16)).map(() => int(256)), bytes.subarray(at)); // inserted
        break;
      case 6:
        bytes = concat(bytes.subarray(0, at), bytes.subarray(at + 1 + int(16))); // deleted
        break;
    }
  }
  return bytes;
}

function concat(...parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(parts.reduce((sum, p) => sum + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

function expectTyped(error: unknown, seed: number): void {
  if (TYPED_ERRORS.some((type) => error instanceof type)) return;
  throw new Error(`seed ${seed}: an untyped error: ${error instanceof Error ? `${error.name}: ${error.message}\n${error.stack}` : String(error)}`);
}

async function withDeadline<T>(seed: number, work: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`seed ${seed}: still running after ${CASE_DEADLINE_MS} ms`)), CASE_DEADLINE_MS)));
  try {
    return await Promise.race([work, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

describe('fuzzed GGUF files', () => {
  it('2,000 mutated headers through the parser and validation: typed errors only, reads within the file, fast', async () => {
    const started = performance.now();
    const outcomes = { parsed: 0, refused: 0 };
    for (let seed = 1; seed <= 2000; seed++) {
      const bytes = mutate(seed, bases.small);
      const source = recordingSource(bytes);
      try {
        await withDeadline(seed, (async () => {
          const file = await readGGUF(source);
          const config = llamaConfig(file);
          validateLlamaTensors(file, config);
          LlamaTokenizer.fromGGUFMetadata(file.metadata);
        })());
        outcomes.parsed++;
      } catch (error) {
        expectTyped(error, seed);
        outcomes.refused++;
      }
      if (source.largestRead > bytes.length) throw new Error(`seed ${seed}: read ${source.largestRead} bytes of a ${bytes.length}-byte file`);
    }
    // Both outcomes occur (mutations that miss what the reader checks parse fine), and the run is quick.
    expect(outcomes.refused).toBeGreaterThan(500);
    expect(outcomes.parsed).toBeGreaterThan(0);
    expect(performance.now() - started).toBeLessThan(20_000);
  }, 60_000);

  it('100 mutated files loaded end to end: typed errors or a working model, no buffer larger than the file', async () => {
    const gpu = await testGpu();
    let largestBuffer = 0;
    let largestSeen = 0;
    const createBuffer = gpu.device.createBuffer.bind(gpu.device);
    gpu.device.createBuffer = (descriptor: GPUBufferDescriptor) => {
      largestBuffer = Math.max(largestBuffer, descriptor.size);
      largestSeen = Math.max(largestSeen, descriptor.size);
      return createBuffer(descriptor);
    };
    const outcomes = { loaded: 0, refused: 0 };
    try {
      for (let seed = 10_001; seed <= 10_100; seed++) {
        const bytes = mutate(seed, bases.stories);
        const source = recordingSource(bytes);
        largestBuffer = 0;
        try {
          const model = await withDeadline(seed, loadModel(source, { device: gpu, contextLength: 32 }));
          try {
            await withDeadline(seed, model.complete([model.tokenizer.bosId], { maxTokens: 2, temperature: 0 }));
          } finally {
            await model.dispose();
          }
          outcomes.loaded++;
        } catch (error) {
          expectTyped(error, seed);
          outcomes.refused++;
        }
        if (source.largestRead > bytes.length) throw new Error(`seed ${seed}: read ${source.largestRead} bytes of a ${bytes.length}-byte file`);
        if (largestBuffer > bytes.length) throw new Error(`seed ${seed}: a ${largestBuffer}-byte GPU buffer for a ${bytes.length}-byte file`);
      }
    } finally {
      gpu.device.createBuffer = createBuffer;
    }
    expect(outcomes.refused + outcomes.loaded).toBe(100);
    // Both paths ran: mutations the loader refuses, and ones it loads and generates with (their
    // GPU buffers were counted).
    expect(outcomes.refused).toBeGreaterThan(20);
    expect(outcomes.loaded).toBeGreaterThan(0);
    expect(largestSeen).toBeGreaterThan(0);
  }, 300_000);
});
