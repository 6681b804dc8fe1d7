// Rotary position embedding, applied in place to `[nTokens][nHeads * headDim]` rows.
//
// The angle follows llama.cpp's CPU path in f32 so that small models stay token-exact:
//   thetaScale = base^(-2 / ropeDims)                  (host, f32)
//   theta_i    = pos * thetaScale * thetaScale * ...   (i multiplications, f32, like ggml's cache)
//   theta_i    = freqScale * (theta_i / freqFactor_i)     freqScale = 1 / positionScale (f32)
// GPU sin/cos are only accurate near [-π, π] (WGSL promises 2^-11 absolute there and nothing
// outside), while theta reaches the position itself (hundreds to thousands of radians), so the
// shader first reduces theta by 2π with a three-part Cody–Waite split that is exact for
// |theta| < 4096·2π ≈ 25,700 and degrades gently beyond.
//
// One invocation per rotated pair: pair i of a head is (2i, 2i+1) for 'normal' (llama GGUF) and
// (i, i + ropeDims/2) for 'neox'. Dimensions from ropeDims to headDim are left untouched.
//
// ropeAndCacheWriteOp fuses what a layer does between the Q/K/V projections and attention —
// rope(q), rope(k), and the paged KV-cache write of k and v — into one dispatch. The angle and
// rotation are the same WGSL functions as ropeOp's, so its results are bit-identical.

import type { GpuContext } from '../gpu/device.ts';
import { kernelOp, params, uniformBuffer, workgroupGrid, type KernelOp } from '../gpu/kernel.ts';
import { kvCacheWriteOp } from './attention/kv-write.ts';
import { pagingWgsl, type KvPaging } from './attention/paging.ts';

export type RopeStyle = 'normal' | 'neox';

export interface RopeShape {
  nTokens: number;
  nHeads: number;
  headDim: number;
  /** How many leading dimensions of each head are rotated (even, ≤ headDim). */
  ropeDims: number;
  /** rope_freq_base, e.g. 10000 (Llama 2) or 500000 (Llama 3). */
  base: number;
  /**
   * Linear rope scaling factor: positions are divided by it (GGUF `rope.scaling.factor` with
   * type linear; llama.cpp multiplies by freq_scale = 1 / factor, and so do we). Default 1.
   */
  positionScale?: number;
  style: RopeStyle;
  /** Optional f32[ropeDims / 2] divisors of each frequency (GGUF `rope_freqs.weight`, Llama 3.1+). */
  freqFactors?: GPUBuffer;
}

const WORKGROUP_SIZE = 64;

/** A WGSL float literal that converts exactly to the f32 `value`. */
function f32Literal(value: number): string {
  const text = String(Math.fround(value));
  return /[.eE]/.test(text) ? text : `${text}.0`;
}

/** 2π as C1 + C2 + C3, the first two with 12 significant bits so k·C1 and k·C2 are exact in f32. */
function twoPiParts(): [number, number, number] {
  const keep12Bits = (v: number): number => {
    const exponent = Math.floor(Math.log2(Math.abs(v)));
    const unit = 2 ** (exponent - 11);
    return Math.trunc(v / unit) * unit;
  };
  const c1 = keep12Bits(2 * Math.PI);
  const c2 = keep12Bits(2 * Math.PI - c1);
  return [c1, c2, Math.fround(2 * Math.PI - c1 - c2)];
}

/**
 * WGSL shared by ropeOp and ropeAndCacheWriteOp (so both compute bit-identical values): the
 * angle of pair i at a position (needs `p.thetaScale`, `p.freqScale` and, with factors, a
 * `freqFactors` binding) and the rotation of one pair.
 */
function ropeFunctionsWgsl(withFreqFactors: boolean): string {
  const [c1, c2, c3] = twoPiParts();
  return /* wgsl */ `
const TWO_PI_1 = ${f32Literal(c1)};
const TWO_PI_2 = ${f32Literal(c2)};
const TWO_PI_3 = ${f32Literal(c3)};
const INV_TWO_PI = ${f32Literal(1 / (2 * Math.PI))};

// theta - k·2π with k = round(theta / 2π): k·TWO_PI_1 and k·TWO_PI_2 are exact for |k| < 4096.
fn reduceAngle(theta: f32) -> f32 {
  let k = round(theta * INV_TWO_PI);
  return ((theta - k * TWO_PI_1) - k * TWO_PI_2) - k * TWO_PI_3;
}

// (cos, sin) of pair i's angle at a position.
fn ropeCosSin(position: u32, i: u32) -> vec2f {
  var theta = f32(position);
  for (var step = 0u; step < i; step++) { theta *= p.thetaScale; }
  ${withFreqFactors ? 'theta = theta / freqFactors[i];' : ''}
  theta = reduceAngle(p.freqScale * theta);
  return vec2f(cos(theta), sin(theta));
}

// The pair (x0, x1) rotated by the angle whose (cos, sin) is cs.
fn rotatePair(x0: f32, x1: f32, cs: vec2f) -> vec2f {
  return vec2f(x0 * cs.x - x1 * cs.y, x0 * cs.y + x1 * cs.x);
}
`;
}

/** The two dimensions of pair i within a head: (2i, 2i+1) for 'normal', (i, i + ropeDims/2) for 'neox'. */
function pairDims(style: RopeStyle, ropeDims: number): { first: string; second: string } {
  return style === 'neox' ? { first: 'i', second: `i + ${ropeDims / 2}u` } : { first: '2u * i', second: '2u * i + 1u' };
}

export function ropeWgsl(shape: Pick<RopeShape, 'nHeads' | 'headDim' | 'ropeDims' | 'style'>, withFreqFactors: boolean): string {
  const { first, second } = pairDims(shape.style, shape.ropeDims);
  return /* wgsl */ `
struct Params { nTokens: u32, thetaScale: f32, freqScale: f32 }

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> positions: array<u32>;
@group(0) @binding(2) var<uniform> p: Params;
${withFreqFactors ? '@group(0) @binding(3) var<storage, read> freqFactors: array<f32>;' : ''}

const WG = ${WORKGROUP_SIZE}u;
const N_HEADS = ${shape.nHeads}u;
const HEAD_DIM = ${shape.headDim}u;
const HALF_ROTATED = ${shape.ropeDims / 2}u;
${ropeFunctionsWgsl(withFreqFactors)}
@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let pair = gid.x + gid.y * nwg.x * WG;
  let pairsPerToken = N_HEADS * HALF_ROTATED;
  let token = pair / pairsPerToken;
  if (token >= p.nTokens) { return; }
  let head = (pair % pairsPerToken) / HALF_ROTATED;
  let i = pair % HALF_ROTATED;
  let cs = ropeCosSin(positions[token], i);

  let headStart = (token * N_HEADS + head) * HEAD_DIM;
  let a = headStart + ${first};
  let b = headStart + ${second};
  let rotated = rotatePair(x[a], x[b], cs);
  x[a] = rotated.x;
  x[b] = rotated.y;
}
`;
}

interface RopeUniformShape {
  nTokens: number;
  headDim: number;
  ropeDims: number;
  base: number;
  positionScale?: number;
}

/** Checks the rope parameters and packs the uniforms both rope kernels read. */
function ropeParams(gpu: GpuContext, shape: RopeUniformShape, label: string): GPUBuffer {
  const { nTokens, headDim, ropeDims, base } = shape;
  if (ropeDims % 2 !== 0 || ropeDims > headDim || ropeDims <= 0) {
    throw new Error(`${label}: ropeDims ${ropeDims} must be even and within headDim ${headDim}`);
  }
  const positionScale = shape.positionScale ?? 1;
  if (!(positionScale > 0)) throw new Error(`${label}: positionScale ${positionScale} must be positive`);
  const thetaScale = Math.fround(Math.pow(base, -2 / ropeDims));
  const freqScale = Math.fround(1 / positionScale);
  return uniformBuffer(gpu.device, `${label} params`, params([nTokens, { f32: thetaScale }, { f32: freqScale }]));
}

/** Rotates q or k rows in place by each token's position (read from `positions`, u32 per token). */
export function ropeOp(gpu: GpuContext, x: GPUBuffer, positions: GPUBuffer, shape: RopeShape): KernelOp {
  const { nTokens, nHeads, ropeDims } = shape;
  const uniforms = ropeParams(gpu, shape, 'ropeOp');
  const buffers = [x, positions, uniforms];
  if (shape.freqFactors) buffers.push(shape.freqFactors);
  const pairs = nTokens * nHeads * (ropeDims / 2);
  const wgsl = ropeWgsl(shape, shape.freqFactors !== undefined);
  return kernelOp(gpu.device, `rope ${shape.style}`, wgsl, buffers, workgroupGrid(Math.ceil(pairs / WORKGROUP_SIZE)));
}

/** ropeOp's fields for both q (nHeads) and k (nKvHeads). */
export interface RopeCacheWriteShape extends RopeShape {
  nKvHeads: number;
}

const FUSED_WORKGROUP_SIZE = 64;

export function ropeAndCacheWriteWgsl(
  shape: Pick<RopeCacheWriteShape, 'nHeads' | 'nKvHeads' | 'headDim' | 'ropeDims' | 'style'>,
  paging: KvPaging,
  withFreqFactors: boolean,
): string {
  const { first, second } = pairDims(shape.style, shape.ropeDims);
  // The invocation that owns pair i of a head: the lower dimension of the pair.
  const isFirst = shape.style === 'neox' ? 'd < HALF_ROTATED' : 'd % 2u == 0u';
  const pairOf = shape.style === 'neox' ? 'd' : 'd / 2u';
  return /* wgsl */ `
struct Params { nTokens: u32, thetaScale: f32, freqScale: f32 }

@group(0) @binding(0) var<storage, read_write> q: array<f32>;
@group(0) @binding(1) var<storage, read_write> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read> positions: array<u32>;
@group(0) @binding(4) var<storage, read> tokenSlots: array<u32>;
@group(0) @binding(5) var<storage, read> blockTable: array<u32>;
@group(0) @binding(6) var<storage, read_write> kCache: array<f32>;
@group(0) @binding(7) var<storage, read_write> vCache: array<f32>;
@group(0) @binding(8) var<uniform> p: Params;
${withFreqFactors ? '@group(0) @binding(9) var<storage, read> freqFactors: array<f32>;' : ''}
${pagingWgsl(paging)}
const WG = ${FUSED_WORKGROUP_SIZE}u;
const N_HEADS = ${shape.nHeads}u;
const HEAD_DIM = ${shape.headDim}u;
const ROPE_DIMS = ${shape.ropeDims}u;
const HALF_ROTATED = ${shape.ropeDims / 2}u;
const Q_PAIRS = ${shape.nHeads * (shape.ropeDims / 2)}u;
const KV_WIDTH = ${shape.nKvHeads * shape.headDim}u;
const ITEMS_PER_TOKEN = Q_PAIRS + KV_WIDTH;
${ropeFunctionsWgsl(withFreqFactors)}
// Per token: one invocation per rotated pair of q, then one per element of the k/v row. A k
// element that starts a rotated pair rotates the pair; k elements past ropeDims are copied.
@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let index = gid.x + gid.y * nwg.x * WG;
  let token = index / ITEMS_PER_TOKEN;
  if (token >= p.nTokens) { return; }
  let item = index % ITEMS_PER_TOKEN;
  let position = positions[token];

  if (item < Q_PAIRS) {
    let head = item / HALF_ROTATED;
    let i = item % HALF_ROTATED;
    let cs = ropeCosSin(position, i);
    let headStart = (token * N_HEADS + head) * HEAD_DIM;
    let a = headStart + ${first};
    let b = headStart + ${second};
    let rotated = rotatePair(q[a], q[b], cs);
    q[a] = rotated.x;
    q[b] = rotated.y;
    return;
  }

  let column = item - Q_PAIRS; // kvHead * HEAD_DIM + d
  let d = column % HEAD_DIM;
  let fits = position < SEQUENCE_CAPACITY; // a full sequence drops the write rather than corrupt memory
  var row = 0u;
  if (fits) {
    row = cacheRow(tokenSlots[token], position);
    vCache[row * KV_WIDTH + column] = v[token * KV_WIDTH + column];
  }
  if (d >= ROPE_DIMS) {
    if (fits) { kCache[row * KV_WIDTH + column] = k[token * KV_WIDTH + column]; }
  } else if (${isFirst}) {
    let i = ${pairOf};
    let cs = ropeCosSin(position, i);
    let headStart = token * KV_WIDTH + column - d;
    let a = headStart + ${first};
    let b = headStart + ${second};
    let rotated = rotatePair(k[a], k[b], cs);
    k[a] = rotated.x;
    k[b] = rotated.y;
    if (fits) {
      let rowStart = row * KV_WIDTH + column - d;
      kCache[rowStart + ${first}] = rotated.x;
      kCache[rowStart + ${second}] = rotated.y;
    }
  }
}
`;
}

/** Storage buffers the fused op binds: q, k, v, positions, slots, block table, both caches (+ rope_freqs). */
const fusedStorageBuffers = (shape: RopeCacheWriteShape): number => (shape.freqFactors ? 9 : 8);

/**
 * One dispatch for rope(q), rope(k) and the paged cache write of k and v: bit-identical to
 * ropeOp(q, nHeads), ropeOp(k, nKvHeads), kvCacheWriteOp(k, v). Like that sequence it leaves q
 * and k rotated in place (k's buffer holds the rotated keys too), and a position at or past the
 * sequence capacity is rotated but not written to the cache.
 */
export function ropeAndCacheWriteOp(
  gpu: GpuContext,
  q: GPUBuffer,
  k: GPUBuffer,
  v: GPUBuffer,
  positions: GPUBuffer,
  paging: KvPaging,
  kCache: GPUBuffer,
  vCache: GPUBuffer,
  shape: RopeCacheWriteShape,
): KernelOp {
  const { nTokens, nHeads, nKvHeads, headDim, ropeDims } = shape;
  const storageCount = fusedStorageBuffers(shape);
  if (storageCount > gpu.limits.maxStorageBuffersPerShaderStage) {
    throw new Error(
      `ropeAndCacheWriteOp: needs ${storageCount} storage buffers, the device allows ${gpu.limits.maxStorageBuffersPerShaderStage}; use ropeOp + kvCacheWriteOp`,
    );
  }
  const uniforms = ropeParams(gpu, shape, 'ropeAndCacheWriteOp');
  const buffers = [q, k, v, positions, paging.tokenSlots, paging.blockTable, kCache, vCache, uniforms];
  if (shape.freqFactors) buffers.push(shape.freqFactors);
  const invocations = nTokens * (nHeads * (ropeDims / 2) + nKvHeads * headDim);
  const wgsl = ropeAndCacheWriteWgsl(shape, paging, shape.freqFactors !== undefined);
  return kernelOp(gpu.device, `rope ${shape.style} + kv cache write`, wgsl, buffers, workgroupGrid(Math.ceil(invocations / FUSED_WORKGROUP_SIZE)));
}

/**
 * ropeAndCacheWriteOp where the device has the storage buffers it needs (9 with rope_freqs: the
 * WebGPU default limit is 8), else the three ops it fuses. Either way, the same bits.
 */
export function ropeAndCacheWriteOps(
  gpu: GpuContext,
  q: GPUBuffer,
  k: GPUBuffer,
  v: GPUBuffer,
  positions: GPUBuffer,
  paging: KvPaging,
  kCache: GPUBuffer,
  vCache: GPUBuffer,
  shape: RopeCacheWriteShape,
): KernelOp[] {
  if (fusedStorageBuffers(shape) <= gpu.limits.maxStorageBuffersPerShaderStage) return [ropeAndCacheWriteOp(gpu, q, k, v, positions, paging, kCache, vCache, shape)];
  return [
    ropeOp(gpu, q, positions, { ...shape, nHeads: shape.nHeads }),
    ropeOp(gpu, k, positions, { ...shape, nHeads: shape.nKvHeads }),
    kvCacheWriteOp(gpu, k, v, positions, paging, kCache, vCache, shape),
  ];
}
