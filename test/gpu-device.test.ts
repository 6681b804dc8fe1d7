import { describe, expect, it } from 'vitest';
import { testGpu } from './helpers/gpu.ts';
import { kernelOp, readF32, runOps, storageBuffer } from '../src/gpu/kernel.ts';
import { heldDawnGpuCount } from '../src/gpu/dawn.ts';

describe('gpu device', () => {
  it('opens a real adapter with its own limits and runs a kernel', async () => {
    const gpu = await testGpu();
    expect(gpu.limits.maxStorageBufferBindingSize).toBeGreaterThanOrEqual(128 * 2 ** 20);
    expect(heldDawnGpuCount()).toBeGreaterThan(0);
    const data = new Float32Array([1, 2, 3, 4, 5]);
    const buf = storageBuffer(gpu.device, 'x', data);
    const wgsl = `@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) id: vec3u) { if (id.x < 5u) { x[id.x] = x[id.x] * 2.0; } }`;
    runOps(gpu.device, [kernelOp(gpu.device, 'double', wgsl, [buf], [1])]);
    expect([...(await readF32(gpu.device, buf, 5))]).toEqual([2, 4, 6, 8, 10]);
  });
});
