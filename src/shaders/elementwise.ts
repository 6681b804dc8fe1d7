// Small per-element kernels of the forward pass: SwiGLU, the residual add, copy and scale, and
// gathers (of rows: the sampled tokens; of columns: an act-order weight's inputs).
// One invocation per element over a folded grid; `count` lives in a uniform so one pipeline
// serves every length.

import type { GpuContext } from '../gpu/device.ts';
import { kernelOp, params, uniformBuffer, workgroupGrid, type KernelOp } from '../gpu/kernel.ts';

const WORKGROUP_SIZE = 256;

/** Which buffer an elementwise kernel writes: its own `out`, or in place over input `a` or `b`. */
type Target = 'out' | 'a' | 'b';

/**
 * A kernel computing `target[i] = <expression>` where the expression reads `a[i]` and optionally
 * `b[i]`. Bindings in order: a, [b], [out], params. An in-place variant binds the written input
 * once as read_write and has no `out`: WebGPU forbids binding one buffer range as writable
 * storage and as another binding of the same dispatch.
 */
function elementwiseWgsl(expression: string, inputs: 1 | 2, target: Target, extraParams = ''): string {
  const access = (name: Target): string => (name === target ? 'read_write' : 'read');
  const bindings = [
    `var<storage, ${access('a')}> a: array<f32>;`,
    ...(inputs === 2 ? [`var<storage, ${access('b')}> b: array<f32>;`] : []),
    ...(target === 'out' ? ['var<storage, read_write> out: array<f32>;'] : []),
    'var<uniform> p: Params;',
  ].map((line, binding) => `@group(0) @binding(${binding}) ${line}`);
  return /* wgsl */ `
struct Params { count: u32${extraParams} }
${bindings.join('\n')}

const WG = ${WORKGROUP_SIZE}u;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= p.count) { return; }
  ${target}[i] = ${expression};
}
`;
}

function elementwiseOp(
  gpu: GpuContext,
  label: string,
  wgsl: string,
  buffers: GPUBuffer[],
  count: number,
  extraParams: Array<number | { f32: number }> = [],
): KernelOp {
  const uniforms = uniformBuffer(gpu.device, `${label} params`, params([count, ...extraParams]));
  return kernelOp(gpu.device, label, wgsl, [...buffers, uniforms], workgroupGrid(Math.ceil(count / WORKGROUP_SIZE)));
}

// silu(g) = g / (1 + exp(-g)), as ggml computes it; exp overflowing to +inf gives -0, not NaN.
const swiglu = 'a[i] / (1.0 + exp(-a[i])) * b[i]';
export const swigluWgsl = elementwiseWgsl(swiglu, 2, 'out');
export const swigluIntoGateWgsl = elementwiseWgsl(swiglu, 2, 'a');
export const swigluIntoUpWgsl = elementwiseWgsl(swiglu, 2, 'b');
export const addWgsl = elementwiseWgsl('a[i] + b[i]', 2, 'out');
export const addInPlaceWgsl = elementwiseWgsl('a[i] + b[i]', 2, 'a');
export const copyWgsl = elementwiseWgsl('a[i]', 1, 'out');
export const scaleWgsl = elementwiseWgsl('a[i] * p.factor', 1, 'out', ', factor: f32');
export const scaleInPlaceWgsl = elementwiseWgsl('a[i] * p.factor', 1, 'a', ', factor: f32');

/** `out[i] = silu(gate[i]) * up[i]` for `count` f32 elements (the Llama FFN activation); `out` may be `gate` or `up`. */
export function swigluOp(gpu: GpuContext, gate: GPUBuffer, up: GPUBuffer, out: GPUBuffer, count: number): KernelOp {
  if (gate === up) throw new Error('swigluOp: gate and up must be different buffers');
  if (out === gate) return elementwiseOp(gpu, 'swiglu into gate', swigluIntoGateWgsl, [gate, up], count);
  if (out === up) return elementwiseOp(gpu, 'swiglu into up', swigluIntoUpWgsl, [gate, up], count);
  return elementwiseOp(gpu, 'swiglu', swigluWgsl, [gate, up, out], count);
}

/** `out[i] = a[i] + b[i]`; `out` may be `a` or `b` (the residual stream updated in place). */
export function addOp(gpu: GpuContext, a: GPUBuffer, b: GPUBuffer, out: GPUBuffer, count: number): KernelOp {
  if (a === b) throw new Error('addOp: a and b must be different buffers (use scaleOp by 2)');
  if (out === b) return addOp(gpu, b, a, out, count); // addition commutes, bit for bit
  return out === a
    ? elementwiseOp(gpu, 'add in place', addInPlaceWgsl, [a, b], count)
    : elementwiseOp(gpu, 'add', addWgsl, [a, b, out], count);
}

/** `out[i] = from[i]` for `count` f32 elements (a kernel, so it sits in the same compute pass). */
export function copyOp(gpu: GpuContext, from: GPUBuffer, out: GPUBuffer, count: number): KernelOp {
  if (from === out) throw new Error('copyOp: source and destination are the same buffer');
  return elementwiseOp(gpu, 'copy', copyWgsl, [from, out], count);
}

/** `out[i] = x[i] * factor`; `out` may be `x`. */
export function scaleOp(gpu: GpuContext, x: GPUBuffer, out: GPUBuffer, count: number, factor: number): KernelOp {
  return x === out
    ? elementwiseOp(gpu, 'scale in place', scaleInPlaceWgsl, [x], count, [{ f32: factor }])
    : elementwiseOp(gpu, 'scale', scaleWgsl, [x, out], count, [{ f32: factor }]);
}

/**
 * A gather: `out[i] = source[<index>]` for `count` f32 elements, `out` read as rows of `width`,
 * `source` as rows of `stride`; `index` reads `i`, `p` and `indices` (u32, the second binding: rows or columns).
 */
function gatherWgsl(index: string): string {
  return /* wgsl */ `
struct Params { count: u32, width: u32, stride: u32 }
@group(0) @binding(0) var<storage, read> source: array<f32>;
@group(0) @binding(1) var<storage, read> indices: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

const WG = ${WORKGROUP_SIZE}u;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= p.count) { return; }
  out[i] = source[${index}];
}
`;
}

export const gatherRowsWgsl = gatherWgsl('indices[i / p.width] * p.stride + i % p.width');
export const gatherColumnsWgsl = gatherWgsl('(i / p.width) * p.stride + indices[i % p.width]');

/** `out[r] = source[rows[r]]` for `nRows` rows of `width` f32 (e.g. each sequence's last hidden state). */
export function gatherRowsOp(gpu: GpuContext, source: GPUBuffer, rows: GPUBuffer, out: GPUBuffer, nRows: number, width: number): KernelOp {
  return elementwiseOp(gpu, 'gather rows', gatherRowsWgsl, [source, rows, out], nRows * width, [width, width]);
}

/**
 * `out[r][c] = source[r][order[c]]` for `nRows` rows of `width` f32 (source rows `sourceStride`
 * apart): the activations of a GPTQ act-order weight, put in the order of its columns.
 */
export function gatherColumnsOp(gpu: GpuContext, source: GPUBuffer, order: GPUBuffer, out: GPUBuffer, nRows: number, width: number, sourceStride = width): KernelOp {
  if (source === out) throw new Error('gatherColumnsOp: source and destination are the same buffer');
  return elementwiseOp(gpu, 'gather columns', gatherColumnsWgsl, [source, order, out], nRows * width, [width, sourceStride]);
}
