// One real WebGPU device per test file (Dawn on lavapipe in CI), destroyed after the file.
import { afterAll } from 'vitest';
import { requestGpu, type GpuContext } from '../../src/gpu/device.ts';
import { seededRandom } from '../../src/random.ts';
import { uploadWeightBytes } from '../../src/engine/weights.ts';
import type { GGMLType } from '../../src/model/ggml-type.ts';
import type { GpuWeight } from '../../src/shaders/matmul.ts';

let context: Promise<GpuContext> | undefined;

export function testGpu(): Promise<GpuContext> {
  if (!context) {
    context = requestGpu();
    afterAll(async () => {
      (await context!).device.destroy();
    });
  }
  return context;
}

/** Deterministic pseudo-random numbers, so failures reproduce. */
export const rng = seededRandom;

export function randomF32(count: number, seed: number, scale = 1): Float32Array {
  const next = rng(seed);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) out[i] = (next() * 2 - 1) * scale;
  return out;
}

/** Max of |a-b| / (|b| + floor): a relative error that tolerates values near zero. */
export function maxRelativeError(a: ArrayLike<number>, b: ArrayLike<number>, floor = 1): number {
  let worst = 0;
  for (let i = 0; i < b.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!) / (Math.abs(b[i]!) + floor));
  return worst;
}

/**
 * Uploads a `rows × cols` weight (GGUF bytes) through the engine's load path, as binding-sized
 * parts: of the device's binding limit, or of `maxBindingBytes` to force a split.
 */
export async function uploadTestWeight(
  gpu: GpuContext,
  label: string,
  type: GGMLType,
  rows: number,
  cols: number,
  bytes: Uint8Array,
  maxBindingBytes?: number,
): Promise<GpuWeight[]> {
  // The uploader reads only these two limits.
  const limits = { maxStorageBufferBindingSize: maxBindingBytes, maxBufferSize: maxBindingBytes } as GPUSupportedLimits;
  return uploadWeightBytes(maxBindingBytes === undefined ? gpu : { ...gpu, limits }, label, type, rows, cols, bytes);
}

/** `uploadTestWeight` for a weight that fits one binding: its one part. */
export async function uploadWholeWeight(gpu: GpuContext, label: string, type: GGMLType, rows: number, cols: number, bytes: Uint8Array): Promise<GpuWeight> {
  const parts = await uploadTestWeight(gpu, label, type, rows, cols, bytes);
  if (parts.length !== 1) throw new Error(`${label}: expected one binding part, got ${parts.length}`);
  return parts[0]!;
}

/**
 * `npm run test:full` sets WEBSHARD_FULL_SWEEP=1: the kernel sweeps then run every combination of
 * their factors. `npm test` covers them pairwise: every kernel specialization (type × variant)
 * compiles and runs, and each other factor's levels meet every variant, without the full product
 * (compiling a kernel on lavapipe costs seconds; running it, milliseconds).
 */
export const FULL_SWEEP = process.env.WEBSHARD_FULL_SWEEP === '1';

/** The levels of a factor to run for the case at these indices: all (full sweep), or one, rotating with the indices. */
export function pairwise<T>(levels: readonly T[], ...indices: number[]): T[] {
  if (FULL_SWEEP) return [...levels];
  return [levels[indices.reduce((sum, i) => sum + i, 0) % levels.length]!];
}
