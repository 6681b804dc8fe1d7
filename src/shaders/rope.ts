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

import type { GpuContext } from '../gpu/device.ts';
import { kernelOp, params, uniformBuffer, workgroupGrid, type KernelOp } from '../gpu/kernel.ts';

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

export function ropeWgsl(shape: Pick<RopeShape, 'nHeads' | 'headDim' | 'ropeDims' | 'style'>, withFreqFactors: boolean): string {
  const [c1, c2, c3] = twoPiParts();
  const halfRotated = shape.ropeDims / 2;
  // For pair i: 'normal' rotates (2i, 2i+1), 'neox' rotates (i, i + ropeDims/2).
  const first = shape.style === 'neox' ? 'i' : '2u * i';
  const second = shape.style === 'neox' ? `i + ${halfRotated}u` : '2u * i + 1u';
  return /* wgsl */ `
struct Params { nTokens: u32, thetaScale: f32, freqScale: f32 }

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> positions: array<u32>;
@group(0) @binding(2) var<uniform> p: Params;
${withFreqFactors ? '@group(0) @binding(3) var<storage, read> freqFactors: array<f32>;' : ''}

const WG = ${WORKGROUP_SIZE}u;
const N_HEADS = ${shape.nHeads}u;
const HEAD_DIM = ${shape.headDim}u;
const HALF_ROTATED = ${halfRotated}u;
const TWO_PI_1 = ${f32Literal(c1)};
const TWO_PI_2 = ${f32Literal(c2)};
const TWO_PI_3 = ${f32Literal(c3)};
const INV_TWO_PI = ${f32Literal(1 / (2 * Math.PI))};

// theta - k·2π with k = round(theta / 2π): k·TWO_PI_1 and k·TWO_PI_2 are exact for |k| < 4096.
fn reduceAngle(theta: f32) -> f32 {
  let k = round(theta * INV_TWO_PI);
  return ((theta - k * TWO_PI_1) - k * TWO_PI_2) - k * TWO_PI_3;
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let pair = gid.x + gid.y * nwg.x * WG;
  let pairsPerToken = N_HEADS * HALF_ROTATED;
  let token = pair / pairsPerToken;
  if (token >= p.nTokens) { return; }
  let head = (pair % pairsPerToken) / HALF_ROTATED;
  let i = pair % HALF_ROTATED;

  var theta = f32(positions[token]);
  for (var step = 0u; step < i; step++) { theta *= p.thetaScale; }
  ${withFreqFactors ? 'theta = theta / freqFactors[i];' : ''}
  theta = reduceAngle(p.freqScale * theta);
  let c = cos(theta);
  let s = sin(theta);

  let headStart = (token * N_HEADS + head) * HEAD_DIM;
  let a = headStart + ${first};
  let b = headStart + ${second};
  let x0 = x[a];
  let x1 = x[b];
  x[a] = x0 * c - x1 * s;
  x[b] = x0 * s + x1 * c;
}
`;
}

/** Rotates q or k rows in place by each token's position (read from `positions`, u32 per token). */
export function ropeOp(gpu: GpuContext, x: GPUBuffer, positions: GPUBuffer, shape: RopeShape): KernelOp {
  const { nTokens, nHeads, headDim, ropeDims, base } = shape;
  if (ropeDims % 2 !== 0 || ropeDims > headDim || ropeDims <= 0) {
    throw new Error(`ropeOp: ropeDims ${ropeDims} must be even and within headDim ${headDim}`);
  }
  const positionScale = shape.positionScale ?? 1;
  if (!(positionScale > 0)) throw new Error(`ropeOp: positionScale ${positionScale} must be positive`);
  const thetaScale = Math.fround(Math.pow(base, -2 / ropeDims));
  const freqScale = Math.fround(1 / positionScale);
  const uniforms = uniformBuffer(
    gpu.device,
    'rope params',
    params([nTokens, { f32: thetaScale }, { f32: freqScale }]),
  );
  const buffers = [x, positions, uniforms];
  if (shape.freqFactors) buffers.push(shape.freqFactors);
  const pairs = nTokens * nHeads * (ropeDims / 2);
  const wgsl = ropeWgsl(shape, shape.freqFactors !== undefined);
  return kernelOp(gpu.device, `rope ${shape.style}`, wgsl, buffers, workgroupGrid(Math.ceil(pairs / WORKGROUP_SIZE)));
}
