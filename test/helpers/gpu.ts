// One real WebGPU device per test file (Dawn on lavapipe in CI), destroyed after the file.
import { afterAll } from 'vitest';
import { requestGpu, type GpuContext } from '../../src/gpu/device.ts';
import { seededRandom } from '../../src/random.ts';

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
