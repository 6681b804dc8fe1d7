// Embedding lookup: out[t][c] = table[ids[t]][c], dequantized to f32, for any GPU weight type.
// One thread decodes one group of 8 values (the type's snippet from quant-wgsl.ts).
//
// A table split by rows (the loader uploads a big one in binding-sized parts) is gathered with
// one op per part: each part writes only the tokens whose id falls in its rows, so together the
// parts fill every token. Ids past the end of the whole table write nothing (validate ids on the
// host).

import { kernelOp, params, uniformBuffer, workgroupGrid, type KernelOp } from '../gpu/kernel.ts';
import type { GpuContext } from '../gpu/device.ts';
import { ggmlTypeName, type GGMLType } from '../model/ggml-type.ts';
import { weightDecodeWgsl } from './quant-wgsl.ts';
import type { GpuWeight } from './matmul.ts';

const WG = 64;

export interface EmbeddingOptions {
  label?: string;
  /** Per-dimension workgroup limit (default: the device's); tests force small ones. */
  maxWorkgroupsPerDimension?: number;
}

export function embeddingWgsl(type: GGMLType): string {
  return /* wgsl */ `
${weightDecodeWgsl(type, 0)}
struct Params {
  cols: u32,
  blocks_per_row: u32,
  scales: u32,       // word offset of the table's scales region
  n_tokens: u32,
  first_row: u32,    // this part's first row in the whole table
  rows: u32,         // rows in this part
  grid_x: u32,
}
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let groups = p.blocks_per_row * W_GROUPS_PER_BLOCK;
  let index = (wid.x + wid.y * p.grid_x) * ${WG}u + lid;
  let t = index / groups;
  let g = index % groups;
  if (t >= p.n_tokens) { return; }
  let id = ids[t];
  if (id < p.first_row || id - p.first_row >= p.rows) { return; } // another part's row
  let v = w_group((id - p.first_row) * p.blocks_per_row + g / W_GROUPS_PER_BLOCK, g % W_GROUPS_PER_BLOCK, p.scales);
  let c = g * 8u;
  let o = t * p.cols + c;
  for (var e = 0u; e < 4u; e++) {
    if (c + e < p.cols) { out[o + e] = v.a[e]; }
    if (c + 4u + e < p.cols) { out[o + 4u + e] = v.b[e]; }
  }
}
`;
}

/** Gathers `nTokens` rows of `table` (ids: u32 per token) into `out` (nTokens × cols f32). */
export function embeddingOp(gpu: GpuContext, table: GpuWeight, ids: GPUBuffer, out: GPUBuffer, nTokens: number, options: EmbeddingOptions = {}): KernelOp {
  const label = options.label ?? `embedding ${table.label}`;
  if (!Number.isInteger(nTokens) || nTokens < 1) throw new Error(`${label}: nTokens must be a positive integer, got ${nTokens}`);
  if (ids.size < nTokens * 4) throw new Error(`${label}: ids (${ids.size} bytes) is too small for ${nTokens} tokens`);
  if (out.size < nTokens * table.cols * 4) throw new Error(`${label}: out (${out.size} bytes) is too small for ${nTokens} × ${table.cols} f32`);
  const groups = table.layout.blocksPerRow * (table.layout.blockValues / 8);
  const maxPerDimension = options.maxWorkgroupsPerDimension ?? gpu.limits.maxComputeWorkgroupsPerDimension;
  const [gridX, gridY] = workgroupGrid(Math.ceil((nTokens * groups) / WG), maxPerDimension);
  const uniforms = uniformBuffer(
    gpu.device,
    `${label} params`,
    params([table.cols, table.layout.blocksPerRow, table.layout.scalesOffset, nTokens, table.rowOffset, table.rows, gridX]),
  );
  return kernelOp(gpu.device, `${label} (${ggmlTypeName(table.type)})`, embeddingWgsl(table.type), [table.buffer, ids, out, uniforms], [gridX, gridY]);
}

/** One op per part of a (possibly split) table; together they gather every token. */
export function embeddingOps(gpu: GpuContext, parts: readonly GpuWeight[], ids: GPUBuffer, out: GPUBuffer, nTokens: number, options: EmbeddingOptions = {}): KernelOp[] {
  return parts.map((part) => embeddingOp(gpu, part, ids, out, nTokens, options));
}
