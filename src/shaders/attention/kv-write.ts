// The KV cache write: each token's K and V rows go to its sequence's cache row for its position.
// (`ropeAndCacheWriteOp` in rope.ts fuses it with the two RoPE dispatches where the device allows.)
import type { GpuContext } from '../../gpu/device.ts';
import { kernelOp, params, uniformBuffer, workgroupGrid, type KernelOp } from '../../gpu/kernel.ts';
import { pagingWgsl, type KvCacheShape, type KvPaging } from './paging.ts';

const WRITE_WORKGROUP_SIZE = 256;

export function kvCacheWriteWgsl(shape: Omit<KvCacheShape, 'nTokens'>, paging: KvPaging): string {
  return /* wgsl */ `
struct Params { nTokens: u32 }

@group(0) @binding(0) var<storage, read> k: array<f32>;
@group(0) @binding(1) var<storage, read> v: array<f32>;
@group(0) @binding(2) var<storage, read> positions: array<u32>;
@group(0) @binding(3) var<storage, read> tokenSlots: array<u32>;
@group(0) @binding(4) var<storage, read> blockTable: array<u32>;
@group(0) @binding(5) var<storage, read_write> kCache: array<f32>;
@group(0) @binding(6) var<storage, read_write> vCache: array<f32>;
@group(0) @binding(7) var<uniform> p: Params;

const WG = ${WRITE_WORKGROUP_SIZE}u;
const KV_WIDTH = ${shape.nKvHeads * shape.headDim}u;
${pagingWgsl(paging)}
@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let index = gid.x + gid.y * nwg.x * WG;
  let token = index / KV_WIDTH;
  if (token >= p.nTokens) { return; }
  let position = positions[token];
  if (position >= SEQUENCE_CAPACITY) { return; } // a full sequence drops the write rather than corrupt memory
  let column = index % KV_WIDTH;
  let row = cacheRow(tokenSlots[token], position);
  kCache[row * KV_WIDTH + column] = k[index];
  vCache[row * KV_WIDTH + column] = v[index];
}
`;
}

/** Writes each token's K and V rows (`[nTokens][nKvHeads*headDim]`) into its sequence's cache row for its position. */
export function kvCacheWriteOp(
  gpu: GpuContext,
  k: GPUBuffer,
  v: GPUBuffer,
  positions: GPUBuffer,
  paging: KvPaging,
  kCache: GPUBuffer,
  vCache: GPUBuffer,
  shape: KvCacheShape,
): KernelOp {
  const uniforms = uniformBuffer(gpu.device, 'kv write params', params([shape.nTokens]));
  const elements = shape.nTokens * shape.nKvHeads * shape.headDim;
  return kernelOp(
    gpu.device,
    'kv cache write',
    kvCacheWriteWgsl(shape, paging),
    [k, v, positions, paging.tokenSlots, paging.blockTable, kCache, vCache, uniforms],
    workgroupGrid(Math.ceil(elements / WRITE_WORKGROUP_SIZE)),
  );
}
