// Matrix products with a weight of any GPU type: y[t][r] = Σ_c W[r][c] · x[t][c].
//
// W is `rows × cols` in its repacked GPU layout (src/model/repack.ts), decoded in groups of 8
// values by the type's snippet (src/shaders/quant-wgsl.ts); x is `nTokens × cols` f32 and y is
// `nTokens × yRowStride` f32. Sums are accumulated in f32. Three variants share the decoding:
//
// * matvec: decode (few tokens). A workgroup of 64 threads owns ROWS rows and TOKENS tokens;
//   the threads stride over the row's groups of 8, so each weight word is read once per
//   TOKENS tokens, and the 64 partial sums are reduced in workgroup memory.
// * matvec-subgroup: the same, reduced with subgroupAdd first (needs the `subgroups` feature).
// * tiled: prefill (many tokens). A workgroup computes a 32-row × 32-token tile, staging
//   32-column slices of W (decoded to f32) and x in workgroup memory; each thread keeps a
//   4 × 4 register tile.
//
// All variants stay within Chromium's SwiftShader limits: 64 invocations, 4 storage-class
// bindings, ≤ 8 KiB of workgroup memory. Row-workgroup counts above the per-dimension limit
// (e.g. a 128256-row vocabulary) fold into the grid's y dimension; tokens use z.
//
// Weights bigger than one storage binding (browsers: 128 MiB) are split by rows with
// `uploadWeightSplit`: every part is a GpuWeight that knows its `rowOffset` in the whole
// weight, and `matmulOp` on a part writes its slice y[t][rowOffset .. rowOffset + rows).

import { kernelOp, params, storageBuffer, uniformBuffer, workgroupGrid, writeBuffer, type KernelOp } from '../gpu/kernel.ts';
import type { GpuContext } from '../gpu/device.ts';
import { blockGeometry, ggmlTypeName, type GGMLType } from '../model/ggml-type.ts';
import { gpuLayout, gpuRowBytes, repackForGpu, type GpuLayout } from '../model/repack.ts';
import { gpuDecodableTypes, weightDecodeWgsl } from './quant-wgsl.ts';

/** A weight matrix on the GPU, in its repacked layout. */
export interface GpuWeight {
  buffer: GPUBuffer;
  type: GGMLType;
  /** Rows held by this buffer. */
  rows: number;
  cols: number;
  label: string;
  /** Bytes of the GPU buffer. */
  bytes: number;
  layout: GpuLayout;
  /** First row of this part in the whole weight (0 unless made by uploadWeightSplit). */
  rowOffset: number;
  /** Rows of the whole weight (= rows unless made by uploadWeightSplit). */
  totalRows: number;
}

export type MatmulVariant = 'auto' | 'matvec' | 'matvec-subgroup' | 'tiled';

export interface MatmulOptions {
  variant?: MatmulVariant;
  label?: string;
  /** Row length of y (default: the whole weight's rows, `w.totalRows`). */
  yRowStride?: number;
  /** Where this weight's first output row goes in a y row (default: `w.rowOffset`). */
  yRowOffset?: number;
  /** Row length of x (default: `w.cols`), e.g. to read a slice of wider activations. */
  xRowStride?: number;
  /** Per-dimension workgroup limit (default: the device's); tests force small ones to exercise folding. */
  maxWorkgroupsPerDimension?: number;
}

/** Up to this many tokens, `auto` picks a matvec variant; above it, the tiled one. */
export const MATVEC_MAX_TOKENS = 4;

/** Weight types matmulOp and embeddingOp accept. */
export function supportedWeightTypes(): GGMLType[] {
  return gpuDecodableTypes();
}

/** Repacks GGUF bytes (`rows × cols`, row-major) and uploads them as one storage buffer. */
export function uploadWeight(gpu: GpuContext, label: string, type: GGMLType, rows: number, cols: number, ggufBytes: Uint8Array): GpuWeight {
  const { layout, words } = repackForGpu(type, rows, cols, ggufBytes);
  const bytes = words.byteLength;
  const limit = Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize);
  if (bytes > limit) {
    throw new Error(
      `${label}: ${ggmlTypeName(type)} ${rows} × ${cols} needs ${bytes} bytes, over this device's ${limit}-byte storage binding; use uploadWeightSplit`,
    );
  }
  const buffer = storageBuffer(gpu.device, label, bytes);
  writeBuffer(gpu.device, buffer, 0, words);
  return { buffer, type, rows, cols, label, bytes: buffer.size, layout, rowOffset: 0, totalRows: rows };
}

/**
 * Uploads a weight as one or more row ranges, each small enough for one storage binding
 * (`maxBindingBytes`, default the device's limit). Returns the parts in row order; run them
 * with `matmulOps` / `embeddingOps`, or one by one with `matmulOp`.
 */
export function uploadWeightSplit(
  gpu: GpuContext,
  label: string,
  type: GGMLType,
  rows: number,
  cols: number,
  ggufBytes: Uint8Array,
  maxBindingBytes: number = Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize),
): GpuWeight[] {
  // Leave room for the scales region's alignment padding (at most 3 words + 1 odd half).
  const rowsPerPart = Math.floor((maxBindingBytes - 16) / gpuRowBytes(type, cols));
  if (rowsPerPart < 1) throw new Error(`${label}: one row of ${cols} ${ggmlTypeName(type)} values exceeds ${maxBindingBytes} bytes`);
  const geometry = blockGeometry[type]!;
  const fileRowBytes = (cols / geometry.blockSize) * geometry.typeSize;
  const parts: GpuWeight[] = [];
  for (let first = 0; first < rows; first += rowsPerPart) {
    const n = Math.min(rowsPerPart, rows - first);
    const bytes = ggufBytes.subarray(first * fileRowBytes, (first + n) * fileRowBytes);
    const name = rows > rowsPerPart ? `${label}[${first}..${first + n})` : label;
    parts.push({ ...uploadWeight(gpu, name, type, n, cols, bytes), rowOffset: first, totalRows: rows });
  }
  return parts;
}

// ---------------------------------------------------------------------------------------------
// WGSL

const paramsStruct = /* wgsl */ `
struct Params {
  rows: u32,           // rows of this weight (part)
  cols: u32,           // values per row (and per x row)
  n_tokens: u32,
  blocks_per_row: u32,
  scales: u32,         // word offset of the weight's scales region
  x_stride: u32,
  y_stride: u32,
  y_offset: u32,
  grid_x: u32,         // workgroups along x, to unfold the row-tile index
}
@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;
`;

const MATVEC_WG = 64;
const MATVEC_ROWS = 4;
const MATVEC_TOKENS = 4;
// The two-stage reduction below splits the WG partial sums of each output into WG / OUTS slices.
if (MATVEC_WG % (MATVEC_ROWS * MATVEC_TOKENS) !== 0) throw new Error('matvec: ROWS × TOKENS must divide WG');

/** The WGSL of the matvec kernel for one weight type. */
export function matvecWgsl(type: GGMLType, subgroups: boolean): string {
  const reduce = subgroups
    ? /* wgsl */ `
  // Sum within each subgroup, then across the (contiguous) subgroups of the workgroup.
  for (var i = 0u; i < OUTS; i++) {
    let s = subgroupAdd(acc[i]);
    if (lane == 0u) { partial[i][lid / sg_size] = s; }
  }
  workgroupBarrier();
  if (lid < OUTS) {
    var total = 0.0;
    for (var k = 0u; k < (WG + sg_size - 1u) / sg_size; k++) { total += partial[lid][k]; }
    store(row0, tok0, lid, total);
  }`
    : /* wgsl */ `
  // Few barriers: SLICES threads per output each sum WG / SLICES partials, then one adds those.
  for (var i = 0u; i < OUTS; i++) { partial[i][lid] = acc[i]; }
  workgroupBarrier();
  let o = lid % OUTS;
  let slice = lid / OUTS;
  let len = WG / SLICES;
  var sum = 0.0;
  for (var k = slice * len; k < slice * len + len; k++) { sum += partial[o][k]; }
  workgroupBarrier();
  partial[o][slice] = sum;
  workgroupBarrier();
  if (lid < OUTS) {
    var total = 0.0;
    for (var k = 0u; k < SLICES; k++) { total += partial[lid][k]; }
    store(row0, tok0, lid, total);
  }`;

  return /* wgsl */ `${subgroups ? 'enable subgroups;' : ''}
${weightDecodeWgsl(type)}
${paramsStruct}
const WG: u32 = ${MATVEC_WG}u;
const ROWS: u32 = ${MATVEC_ROWS}u;
const TOKENS: u32 = ${MATVEC_TOKENS}u;
const OUTS: u32 = ROWS * TOKENS;
const SLICES: u32 = WG / OUTS;

var<workgroup> partial: array<array<f32, WG>, OUTS>;

// 8 activations of token t from column c (zeros past the row end: float rows are padded to 8).
fn x8(t: u32, c: u32) -> W8 {
  let i = t * p.x_stride + c;
  if (c + 8u <= p.cols) {
    return W8(vec4f(x[i], x[i + 1u], x[i + 2u], x[i + 3u]), vec4f(x[i + 4u], x[i + 5u], x[i + 6u], x[i + 7u]));
  }
  var v: array<f32, 8>;
  for (var k = 0u; k < 8u; k++) {
    if (c + k < p.cols) { v[k] = x[i + k]; }
  }
  return W8(vec4f(v[0], v[1], v[2], v[3]), vec4f(v[4], v[5], v[6], v[7]));
}

fn store(row0: u32, tok0: u32, i: u32, value: f32) {
  let row = row0 + i / TOKENS;
  let tok = tok0 + i % TOKENS;
  if (row < p.rows && tok < p.n_tokens) { y[tok * p.y_stride + p.y_offset + row] = value; }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32${
    subgroups ? ',\n        @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) sg_size: u32' : ''
  }) {
  let row0 = (wid.x + wid.y * p.grid_x) * ROWS;
  if (row0 >= p.rows) { return; } // past the end of a folded grid (uniform per workgroup)
  let tok0 = wid.z * TOKENS;
  let groups = p.blocks_per_row * W_GROUPS_PER_BLOCK;
  var acc: array<f32, OUTS>;
  for (var g = lid; g < groups; g += WG) {
    let blk = g / W_GROUPS_PER_BLOCK;
    let sub = g % W_GROUPS_PER_BLOCK;
    var xs: array<W8, TOKENS>;
    // Rows and tokens past the end are clamped (their sums are computed but never stored).
    for (var t = 0u; t < TOKENS; t++) { xs[t] = x8(min(tok0 + t, p.n_tokens - 1u), g * 8u); }
    for (var r = 0u; r < ROWS; r++) {
      let row = min(row0 + r, p.rows - 1u);
      let wv = w_group(row * p.blocks_per_row + blk, sub, p.scales);
      for (var t = 0u; t < TOKENS; t++) {
        acc[r * TOKENS + t] += dot(wv.a, xs[t].a) + dot(wv.b, xs[t].b);
      }
    }
  }
${reduce}
}
`;
}

const TILE_M = 32; // weight rows per workgroup
const TILE_N = 32; // tokens per workgroup
const TILE_K = 32; // columns per step (4 groups of 8)

/** The WGSL of the tiled (prefill) kernel for one weight type. */
export function tiledWgsl(type: GGMLType): string {
  return /* wgsl */ `
${weightDecodeWgsl(type)}
${paramsStruct}
const TILE_M: u32 = ${TILE_M}u;
const TILE_N: u32 = ${TILE_N}u;
const TILE_K: u32 = ${TILE_K}u;
const WG: u32 = 64u; // 8 × 8 threads, each owning rows tm + 8i and tokens tn + 8j (i, j < 4)

var<workgroup> wt: array<f32, TILE_K * TILE_M>; // [k][m]: decoded weights
var<workgroup> xt: array<f32, TILE_K * TILE_N>; // [k][n]: activations

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let m0 = (wid.x + wid.y * p.grid_x) * TILE_M;
  if (m0 >= p.rows) { return; } // past the end of a folded grid (uniform per workgroup)
  let n0 = wid.z * TILE_N;
  let tm = lid % 8u;
  let tn = lid / 8u;
  let groups = p.blocks_per_row * W_GROUPS_PER_BLOCK;
  var acc: array<f32, 16>;
  for (var k0 = 0u; k0 < p.cols; k0 += TILE_K) {
    // Weights: TILE_M rows × 4 groups; consecutive threads take consecutive rows.
    for (var i = lid; i < TILE_M * 4u; i += WG) {
      let m = i % TILE_M;
      let kk = (i / TILE_M) * 8u;
      let g = (k0 + kk) / 8u;
      var v = W8(vec4f(0.0), vec4f(0.0));
      if (m0 + m < p.rows && g < groups) {
        v = w_group((m0 + m) * p.blocks_per_row + g / W_GROUPS_PER_BLOCK, g % W_GROUPS_PER_BLOCK, p.scales);
      }
      for (var e = 0u; e < 4u; e++) {
        wt[(kk + e) * TILE_M + m] = v.a[e];
        wt[(kk + 4u + e) * TILE_M + m] = v.b[e];
      }
    }
    // Activations: TILE_N tokens × TILE_K columns, read along the row.
    for (var i = lid; i < TILE_N * TILE_K; i += WG) {
      let k = i % TILE_K;
      let n = i / TILE_K;
      var v = 0.0;
      if (k0 + k < p.cols && n0 + n < p.n_tokens) { v = x[(n0 + n) * p.x_stride + k0 + k]; }
      xt[k * TILE_N + n] = v;
    }
    workgroupBarrier();
    for (var k = 0u; k < TILE_K; k++) {
      var a: array<f32, 4>;
      var b: array<f32, 4>;
      for (var i = 0u; i < 4u; i++) {
        a[i] = wt[k * TILE_M + tm + 8u * i];
        b[i] = xt[k * TILE_N + tn + 8u * i];
      }
      for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) { acc[i * 4u + j] += a[i] * b[j]; }
      }
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < 4u; i++) {
    for (var j = 0u; j < 4u; j++) {
      let row = m0 + tm + 8u * i;
      let tok = n0 + tn + 8u * j;
      if (row < p.rows && tok < p.n_tokens) { y[tok * p.y_stride + p.y_offset + row] = acc[i * 4u + j]; }
    }
  }
}
`;
}

// ---------------------------------------------------------------------------------------------
// Ops

function pickVariant(gpu: GpuContext, variant: MatmulVariant, nTokens: number): Exclude<MatmulVariant, 'auto'> {
  if (variant === 'matvec-subgroup' && !gpu.features.subgroups) {
    throw new Error('matmul variant matvec-subgroup needs the subgroups feature, which this device lacks');
  }
  if (variant !== 'auto') return variant;
  if (nTokens > MATVEC_MAX_TOKENS) return 'tiled';
  return gpu.features.subgroups ? 'matvec-subgroup' : 'matvec';
}

/** y[t][yRowOffset + r] = Σ_c W[r][c] · x[t][c] for r < w.rows, t < nTokens. */
export function matmulOp(gpu: GpuContext, w: GpuWeight, x: GPUBuffer, y: GPUBuffer, nTokens: number, options: MatmulOptions = {}): KernelOp {
  const label = options.label ?? `matmul ${w.label}`;
  const variant = pickVariant(gpu, options.variant ?? 'auto', nTokens);
  const yRowStride = options.yRowStride ?? w.totalRows;
  const yRowOffset = options.yRowOffset ?? w.rowOffset;
  const xRowStride = options.xRowStride ?? w.cols;
  if (!Number.isInteger(nTokens) || nTokens < 1) throw new Error(`${label}: nTokens must be a positive integer, got ${nTokens}`);
  if (yRowOffset + w.rows > yRowStride) throw new Error(`${label}: rows ${yRowOffset}..${yRowOffset + w.rows} exceed the y row of ${yRowStride}`);
  if (x.size < ((nTokens - 1) * xRowStride + w.cols) * 4) throw new Error(`${label}: x (${x.size} bytes) is too small for ${nTokens} × ${w.cols} f32`);
  if (y.size < ((nTokens - 1) * yRowStride + yRowOffset + w.rows) * 4) {
    throw new Error(`${label}: y (${y.size} bytes) is too small for ${nTokens} rows of ${yRowStride} f32`);
  }
  const maxPerDimension = options.maxWorkgroupsPerDimension ?? gpu.limits.maxComputeWorkgroupsPerDimension;
  const [rowsPerWorkgroup, tokensPerWorkgroup] = variant === 'tiled' ? [TILE_M, TILE_N] : [MATVEC_ROWS, MATVEC_TOKENS];
  const [gridX, gridY] = workgroupGrid(Math.ceil(w.rows / rowsPerWorkgroup), maxPerDimension);
  const gridZ = Math.ceil(nTokens / tokensPerWorkgroup);
  if (gridZ > maxPerDimension) throw new Error(`${label}: ${nTokens} tokens is too many for one dispatch`);
  const wgsl = variant === 'tiled' ? tiledWgsl(w.type) : matvecWgsl(w.type, variant === 'matvec-subgroup');
  const uniforms = uniformBuffer(
    gpu.device,
    `${label} params`,
    params([w.rows, w.cols, nTokens, w.layout.blocksPerRow, w.layout.scalesOffset, xRowStride, yRowStride, yRowOffset, gridX]),
  );
  return kernelOp(gpu.device, `${label} (${ggmlTypeName(w.type)} ${variant})`, wgsl, [w.buffer, x, y, uniforms], [gridX, gridY, gridZ]);
}

/** One op per part of a (possibly split) weight; together they fill all of y's rows. */
export function matmulOps(gpu: GpuContext, parts: readonly GpuWeight[], x: GPUBuffer, y: GPUBuffer, nTokens: number, options: MatmulOptions = {}): KernelOp[] {
  return parts.map((part) => matmulOp(gpu, part, x, y, nTokens, options));
}

/** The layout a weight of this type and shape would get (for memory planning before upload). */
export function weightLayout(type: GGMLType, rows: number, cols: number): GpuLayout {
  return gpuLayout(type, rows, cols);
}
