// RMS normalization, llama.cpp order: out = (x * 1/sqrt(mean(x²) + eps)) * weight.
// One workgroup per token row: the threads stride over the row summing squares, reduce the sum
// in workgroup memory, then write the scaled row. Rows are `dim` f32 values, `[nTokens][dim]`.
// In place (`rmsnormInPlaceOp`, Qwen3's per-head Q/K norm: rows are heads) each thread writes
// only the values it read, after the barrier that ends the sum, so x may be the output.

import type { GpuContext } from '../gpu/device.ts';
import { kernelOp, params, uniformBuffer, workgroupGrid, type KernelOp } from '../gpu/kernel.ts';

const WORKGROUP_SIZE = 256;

export function rmsnormWgsl(inPlace: boolean): string {
  const bindings = inPlace
    ? /* wgsl */ `@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;`
    : /* wgsl */ `@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;`;
  return /* wgsl */ `
struct Params { nTokens: u32, dim: u32, eps: f32 }

${bindings}

const WG = ${WORKGROUP_SIZE}u;
var<workgroup> partialSums: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let token = wid.x + wid.y * nwg.x; // the grid folds past 65535 rows
  if (token >= p.nTokens) { return; }
  let row = token * p.dim;

  var sumOfSquares = 0.0;
  for (var i = lid; i < p.dim; i += WG) {
    let v = x[row + i];
    sumOfSquares += v * v;
  }
  partialSums[lid] = sumOfSquares;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
    if (lid < stride) { partialSums[lid] += partialSums[lid + stride]; }
    workgroupBarrier();
  }

  let scale = 1.0 / sqrt(partialSums[0] / f32(p.dim) + p.eps);
  for (var i = lid; i < p.dim; i += WG) {
    ${inPlace ? 'x' : 'out'}[row + i] = (x[row + i] * scale) * weight[i];
  }
}
`;
}

/** `out[t] = x[t] / rms(x[t]) * weight` for each of `nTokens` rows of `dim` f32. `out` must not alias `x`. */
export function rmsnormOp(
  gpu: GpuContext,
  x: GPUBuffer,
  weight: GPUBuffer,
  out: GPUBuffer,
  nTokens: number,
  dim: number,
  eps: number,
): KernelOp {
  if (x === out) throw new Error('rmsnormOp: out must be a different buffer from x');
  const uniforms = uniformBuffer(gpu.device, 'rmsnorm params', params([nTokens, dim, { f32: eps }]));
  return kernelOp(gpu.device, 'rmsnorm', rmsnormWgsl(false), [x, weight, out, uniforms], workgroupGrid(nTokens));
}

/** `x[r] = x[r] / rms(x[r]) * weight` for each of `nRows` rows of `dim` f32, in place (the same arithmetic as rmsnormOp). */
export function rmsnormInPlaceOp(gpu: GpuContext, x: GPUBuffer, weight: GPUBuffer, nRows: number, dim: number, eps: number): KernelOp {
  const uniforms = uniformBuffer(gpu.device, 'rmsnorm params', params([nRows, dim, { f32: eps }]));
  return kernelOp(gpu.device, 'rmsnorm in place', rmsnormWgsl(true), [x, weight, uniforms], workgroupGrid(nRows));
}
