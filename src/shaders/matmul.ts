// Matrix products with a weight of any GPU type: y[t][r] = Σ_c W[r][c] · x[t][c].
//
// W is `rows × cols` in its repacked GPU layout (src/model/repack.ts), decoded by the type's
// snippet (src/shaders/quant-wgsl.ts); x is `nTokens × cols` f32 (rows `xRowStride` apart) and y
// is `nTokens × yRowStride` f32. Sums are accumulated in f32. The variants share the decoding:
//
// * matvec: decode (1–4 tokens; compiled for 1, 2 or 4). A workgroup of 64 threads owns ROWS
//   rows; each thread takes whole chunks of a row (Q4_0/Q8_0: a block of 32 values in one or two
//   16-byte loads; F16/F32: 8 values), loads the tokens' matching activations once as vec4s and
//   uses them for all ROWS rows. Decode is bound by reading W once, so the loads are wide and
//   consecutive threads read consecutive chunks. The 64 partial sums are reduced in workgroup memory.
// * matvec-subgroup: the same, reduced with subgroupAdd first (needs the `subgroups` feature).
// * tiled: prefill (many tokens). A workgroup computes a 32-row × 32-token tile, staging
//   32-column slices of W (decoded to f32) and x in workgroup memory; each thread keeps a
//   4 × 4 register tile. Fits every adapter (SwiftShader's 256 invocations and 16 KiB included).
// * tiled-large: a 128-row × 64-token tile, 256 threads with 8 × 4 register tiles, for GPUs.
// * matvec-int8 / tiled-int8 (Q4_0, Q8_0, Q4_ZP): the activations are quantized to int8 per block of 32
//   (scale max|x|/127, as ggml's Q8_0) inside the kernel, and blocks multiply as integers with
//   dot4I8Packed (4 products per instruction; DP4A on GPUs), one scale per block. `int8` picks
//   between them as `auto` does; other weight types fall back to the float kernels.
//
// Epilogues fuse the element-wise op that follows a projection in the forward pass: `accumulate`
// (y += W·x, the residual add) and `gate` (y = silu(gate) ⊙ W·x, the FFN's SwiGLU), which saves
// a dispatch and a pass over the activations each; a bias (Qwen2's Q, K and V) is added to the
// sum before either. The output rows can also be split over
// several buffers (`MatmulOutput`s: the first `rows` rows go to the first, the next to the
// second, ...), so projections stacked into one weight (Q, K and V) run as one dispatch and still
// fill their own activations: every kernel hands each finished sum to `put(tok, row, s)`, which
// picks the output whose rows hold `row`.
//
// Row-workgroup counts above the per-dimension limit (e.g. a 128256-row vocabulary) fold into
// the grid's y dimension; tokens use z. Weights bigger than one storage binding (browsers:
// 128 MiB) are uploaded by rows (engine/weights.ts, the one upload path): every part is a GpuWeight that knows its
// `rowOffset` in the whole weight, and `matmulOp` on a part writes its slice y[t][rowOffset ..)
// (with split outputs: to the outputs its rows fall in, binding only those).
//
// A GPTQ act-order weight (src/model/awq-gptq.ts) has its columns in group order, not input
// order: its `inputOrder` says which input feature each column multiplies, and `matmulOps` runs
// one gather of the activations into that order before the product (the kernels stay unaware).

import { kernelOp, params, uniformBuffer, workgroupGrid, type KernelOp } from '../gpu/kernel.ts';
import type { GpuContext } from '../gpu/device.ts';
import { ggmlTypeName, type GGMLType } from '../model/ggml-type.ts';
import { gpuLayout, type GpuLayout } from '../model/repack.ts';
import { gatherColumnsOp } from './elementwise.ts';
import { gpuDecodableTypes, int8ConstantOffset, int8DecodableTypes, weightDecodeInt8Wgsl, weightDecodeWgsl } from './quant-wgsl.ts';

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
  /** First row of this part in the whole weight (0 unless the weight was split over bindings). */
  rowOffset: number;
  /** Rows of the whole weight (= rows unless the weight was split over bindings). */
  totalRows: number;
  /**
   * GPTQ act-order (u32[cols], every part the same buffer): column c multiplies input feature
   * inputOrder[c]. matmulOp multiplies x as given; matmulOps gathers x into that order first.
   */
  inputOrder?: GPUBuffer;
}

export const MATMUL_VARIANTS = ['auto', 'int8', 'matvec', 'matvec-subgroup', 'matvec-int8', 'tiled', 'tiled-large', 'tiled-int8'] as const;
export type MatmulVariant = (typeof MATMUL_VARIANTS)[number];

/**
 * One of several buffers a matmul's output rows are split over: the outputs take the weight's
 * rows in order (`rows` each; together all of `totalRows`), and row r of output o is stored at
 * `o.buffer[t * o.rows + (r - first row of o)]` for token t.
 */
export interface MatmulOutput {
  buffer: GPUBuffer;
  rows: number;
  /** Added to every row of this output (f32[rows]): the projection's bias. All outputs have one, or none. */
  bias?: GPUBuffer;
}

export interface MatmulOptions {
  variant?: MatmulVariant;
  label?: string;
  /** Row length of y (default: the whole weight's rows, `w.totalRows`); one y only. */
  yRowStride?: number;
  /** Where this weight's first output row goes in a y row (default: `w.rowOffset`); one y only. */
  yRowOffset?: number;
  /** Row length of x (default: `w.cols`), e.g. to read a slice of wider activations. */
  xRowStride?: number;
  /** Per-dimension workgroup limit (default: the device's); tests force small ones to exercise folding. */
  maxWorkgroupsPerDimension?: number;
  /** Add the product to y instead of overwriting it (y += W·x: the residual add, fused). */
  accumulate?: boolean;
  /** Store silu(gate) ⊙ (W·x), gate indexed like y (the FFN's SwiGLU, fused into the up projection). */
  gate?: GPUBuffer;
  /** y = W·x + bias, the bias indexed like a y row (f32[yRowStride]); one y only (split outputs carry their own). */
  bias?: GPUBuffer;
  /** matmulOps, for a weight with an `inputOrder`: where x is gathered into it (f32[nTokens][cols] at least). */
  orderedInput?: GPUBuffer;
}

/** Up to this many tokens, `auto` picks a matvec variant; above it, the tiled one. */
export const MATVEC_MAX_TOKENS = 4;

/** Weight types matmulOp and embeddingOp accept. */
export function supportedWeightTypes(): GGMLType[] {
  return gpuDecodableTypes();
}

// ---------------------------------------------------------------------------------------------
// WGSL

/** What a kernel does with each finished sum `s` before storing it at y[i]. */
export type MatmulEpilogue =
  /** y[i] = s */
  | 'store'
  /** y[i] += s: a residual add fused into the projection that feeds it. */
  | 'accumulate'
  /** y[i] = silu(gate[i]) · s: the SwiGLU of the FFN fused into the up projection. */
  | 'gate';

/** The parameters and shared bindings; outputs past the first are bound at 4, 5, ... (gate epilogue: one output). */
function paramsWgsl(outputs: number): string {
  const extra = Array.from({ length: outputs - 1 }, (_, k) => k + 1);
  return /* wgsl */ `
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
${extra.length > 0 ? '  // Outputs 1, 2, ...: the first row (of this part) each takes, its row length, where that row goes.\n' : ''}${extra
    .map((k) => `  y${k}_first: u32,\n  y${k}_stride: u32,\n  y${k}_offset: u32,\n`)
    .join('')}}
@group(0) @binding(1) var<storage, read> x: array<vec4f>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;
${extra.map((k) => `@group(0) @binding(${3 + k}) var<storage, read_write> y${k}: array<f32>;\n`).join('')}`;
}

/** Reading activations (x is bound as vec4s; rows that start on a vec4 use them whole). */
function activationWgsl(rowsAligned: boolean): string {
  return /* wgsl */ `
const X_ROWS_ALIGNED: bool = ${rowsAligned};
fn x_at(i: u32) -> f32 { return x[i >> 2u][i & 3u]; }
// 8 activations of token t from column c (a multiple of 8); zeros past the row end (float
// weight rows are padded with zeros to 8 values, so those products vanish).
fn x8(t: u32, c: u32) -> W8 {
  let i = t * p.x_stride + c;
  if (c + 8u <= p.cols) {
    if (X_ROWS_ALIGNED) { return W8(x[i >> 2u], x[(i >> 2u) + 1u]); }
    return W8(vec4f(x_at(i), x_at(i + 1u), x_at(i + 2u), x_at(i + 3u)), vec4f(x_at(i + 4u), x_at(i + 5u), x_at(i + 6u), x_at(i + 7u)));
  }
  var v = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0); // explicit: lavapipe once kept stale values
  for (var k = 0u; k < 8u; k++) {
    if (c + k < p.cols) { v[k] = x_at(i + k); }
  }
  return W8(vec4f(v[0], v[1], v[2], v[3]), vec4f(v[4], v[5], v[6], v[7]));
}`;
}

/**
 * The output function `put(tok, row, s)` for an epilogue: row `row` of this weight (part) for
 * token `tok` goes to the output whose rows hold it (the gate, if any, is binding 4; the biases,
 * one per output, follow every other binding), plus that output's bias where it has one.
 */
function epilogueWgsl(epilogue: MatmulEpilogue, outputs: number, biased: boolean): string {
  const store = (k: number): string => {
    const y = k === 0 ? 'y' : `y${k}`;
    const sum = biased ? `(s + bias${k}[j])` : 's';
    switch (epilogue) {
      case 'store':
        return `${y}[i] = ${sum};`;
      case 'accumulate':
        return `${y}[i] = ${y}[i] + ${sum};`;
      case 'gate':
        // The same expression as swigluOp (src/shaders/elementwise.ts), so fusing changes no bit.
        return `let g = gate[i]; ${y}[i] = g / (1.0 + exp(-g)) * ${sum};`;
    }
  };
  if (epilogue === 'gate' && outputs > 1) throw new Error('the gate epilogue writes one output');
  const gateBindings = epilogue === 'gate' ? 1 : 0;
  const biasBindings = biased
    ? Array.from({ length: outputs }, (_, k) => `@group(0) @binding(${4 + gateBindings + outputs - 1 + k}) var<storage, read> bias${k}: array<f32>;\n`).join('')
    : '';
  // Later outputs first: each takes the rows from its first one on. j: where the row is in a y row.
  let later = '';
  for (let k = outputs - 1; k >= 1; k--) {
    later += `  if (row >= p.y${k}_first) { let j = p.y${k}_offset + (row - p.y${k}_first); let i = tok * p.y${k}_stride + j; ${store(k)} return; }\n`;
  }
  return `${epilogue === 'gate' ? '@group(0) @binding(4) var<storage, read> gate: array<f32>;\n' : ''}${biasBindings}fn put(tok: u32, row: u32, s: f32) {
${later}  let j = p.y_offset + row;
  let i = tok * p.y_stride + j;
  ${store(0)}
}`;
}

/** What every matmul kernel shares around its loop: parameters and bindings, reading x, storing y. */
function kernelIoWgsl(spec: KernelSpec): string {
  return [paramsWgsl(spec.outputs), activationWgsl(spec.rowsAligned), epilogueWgsl(spec.epilogue, spec.outputs, spec.biased)].join('\n');
}

const MATVEC_WG = 64;
/** Tokens one matvec workgroup multiplies at once: each weight chunk it loads serves all of them. */
const MATVEC_TOKENS = 4;
/** Rows per matvec workgroup; the int8 one takes more, to spread quantizing x over more rows. */
const matvecRows = (int8: boolean) => (int8 ? 8 : 4);

export interface KernelSpec {
  type: GGMLType;
  epilogue: MatmulEpilogue;
  /** Buffers the output rows are split over (1: one y). */
  outputs: number;
  /** Every x row starts on a 16-byte boundary (x_stride % 4 == 0), so rows load as vec4s. */
  rowsAligned: boolean;
  /** Each output adds its bias. */
  biased: boolean;
}

/** Multiplies one chunk of W's ROWS rows by the tokens' activations (loaded here) into acc. */
const floatChunkWgsl = /* wgsl */ `
  let chunks = p.blocks_per_row * (W_GROUPS_PER_BLOCK / W_CHUNK);
  for (var c = lid; c < chunks; c += WG) {
    let g0 = c * W_CHUNK;
    let blk = g0 / W_GROUPS_PER_BLOCK;
    let sub0 = g0 % W_GROUPS_PER_BLOCK;
    var xs: array<array<W8, W_CHUNK>, TOKENS>;
    // Rows and tokens past the end are clamped (their sums are computed but never stored).
    for (var t = 0u; t < TOKENS; t++) {
      let token = min(tok0 + t, p.n_tokens - 1u);
      for (var k = 0u; k < W_CHUNK; k++) { xs[t][k] = x8(token, (g0 + k) * 8u); }
    }
    for (var r = 0u; r < ROWS; r++) {
      let row = min(row0 + r, p.rows - 1u);
      let wv = w_chunk(row * p.blocks_per_row + blk, sub0, p.scales);
      for (var t = 0u; t < TOKENS; t++) {
        var s = 0.0;
        for (var k = 0u; k < W_CHUNK; k++) { s += dot(wv[k].a, xs[t][k].a) + dot(wv[k].b, xs[t][k].b); }
        acc[r * TOKENS + t] += s;
      }
    }
  }`;

/**
 * ggml stores a Q8_0 block's scale as f16 (the values are divided by the f32 scale, the products
 * multiplied by the f16 one): rounding it the same way keeps llama.cpp's logits on small models,
 * where a 2^-12 change of one scale can flip a token. Scales are ≥ 0; in f16's normal range the
 * rounding is done on the bits (to nearest, ties to even: WGSL leaves pack2x16float's rounding to
 * the implementation), below it (amax < 0.008) by the conversion.
 */
const f16RoundWgsl = /* wgsl */ `fn f16_round(v: f32) -> f32 {
  let bits = bitcast<u32>(v);
  let nearest = bitcast<f32>((bits + 0xfffu + ((bits >> 13u) & 1u)) & 0xffffe000u);
  return select(nearest, unpack2x16float(pack2x16float(vec2f(v, 0.0))).x, v < 6.103515625e-5);
}`;

/**
 * The int8 version: each thread quantizes its block of 32 activations per token to int8 (scale
 * max|x|/127, like ggml's Q8_0) in registers, then takes integer dot products with the weight
 * block's bytes, 4 at a time (dot4I8Packed), and scales the sum once per block by the weight's
 * scale and the f16-rounded activation scale.
 */
const int8ChunkWgsl = /* wgsl */ `
  for (var blk = lid; blk < p.blocks_per_row; blk += WG) {
    var xq: array<array<u32, 8>, TOKENS>;
    var xd: array<f32, TOKENS>;
    var xsum: array<i32, TOKENS>;
    for (var t = 0u; t < TOKENS; t++) {
      let token = min(tok0 + t, p.n_tokens - 1u);
      var v: array<vec4f, 8>;
      var amax = 0.0;
      for (var k = 0u; k < 4u; k++) {
        let g = x8(token, blk * 32u + k * 8u);
        v[2u * k] = g.a;
        v[2u * k + 1u] = g.b;
        amax = max(amax, max(max(abs(g.a.x), abs(g.a.y)), max(abs(g.a.z), abs(g.a.w))));
        amax = max(amax, max(max(abs(g.b.x), abs(g.b.y)), max(abs(g.b.z), abs(g.b.w))));
      }
      let d = amax / 127.0;
      let inverse = select(0.0, 1.0 / d, d > 0.0);
      var sum = 0i;
      for (var i = 0u; i < 8u; i++) {
        let q = pack4xI8(vec4i(round(v[i] * inverse)));
        xq[t][i] = q;
        sum += dot4I8Packed(q, 0x01010101u);
      }
      xd[t] = f16_round(d);
      xsum[t] = sum;
    }
    for (var r = 0u; r < ROWS; r++) {
      let row = min(row0 + r, p.rows - 1u);
      let wb = w_block_i8(row * p.blocks_per_row + blk, p.scales);
      for (var t = 0u; t < TOKENS; t++) {
        var s = 0i;
        for (var i = 0u; i < 8u; i++) { s += dot4I8Packed(wb.q[i], xq[t][i]); }
        acc[r * TOKENS + t] += wb.d * xd[t] * f32(s - wb.o * xsum[t]);
      }
    }
  }`;

/**
 * The WGSL of the matvec kernel. Each thread takes whole chunks of a row (a block of 32 for
 * Q4_0/Q8_0, loaded in one or two 16-byte reads), consecutive threads consecutive chunks, and
 * multiplies each by `tokens` activation rows it loaded once for all ROWS rows. `int8` selects
 * the integer dot products (Q4_0 and Q8_0 only).
 */
export function matvecWgsl(spec: KernelSpec, tokens: number, subgroups: boolean, int8 = false): string {
  const outs = matvecRows(int8) * tokens;
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
  // The two-stage reduction splits the WG partial sums of each output into WG / OUTS slices.
  if (!subgroups && MATVEC_WG % outs !== 0) throw new Error(`matvec: ${outs} outputs per workgroup do not divide ${MATVEC_WG}`);

  return /* wgsl */ `${subgroups ? 'enable subgroups;' : ''}
${int8 ? `${weightDecodeInt8Wgsl(spec.type, 0)}\n${f16RoundWgsl}` : weightDecodeWgsl(spec.type, 0)}
${kernelIoWgsl(spec)}
const WG: u32 = ${MATVEC_WG}u;
const ROWS: u32 = ${matvecRows(int8)}u;
const TOKENS: u32 = ${tokens}u;
const OUTS: u32 = ROWS * TOKENS;
const SLICES: u32 = WG / OUTS;

var<workgroup> partial: array<array<f32, WG>, OUTS>;

fn store(row0: u32, tok0: u32, i: u32, value: f32) {
  let row = row0 + i / TOKENS;
  let tok = tok0 + i % TOKENS;
  if (row < p.rows && tok < p.n_tokens) { put(tok, row, value); }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32${
    subgroups ? ',\n        @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) sg_size: u32' : ''
  }) {
  let row0 = (wid.x + wid.y * p.grid_x) * ROWS;
  if (row0 >= p.rows) { return; } // past the end of a folded grid (uniform per workgroup)
  let tok0 = wid.z * TOKENS;
  var acc: array<f32, OUTS>;
${int8 ? int8ChunkWgsl : floatChunkWgsl}
${reduce}
}
`;
}

/** A register-tiled matmul configuration: a workgroup computes a TILE_M-row × TILE_N-token tile. */
interface TileConfig {
  /** Threads along rows and tokens (their product is the workgroup size). */
  threadsM: number;
  threadsN: number;
  /** Outputs per thread along rows and tokens (rows tm + threadsM·i, tokens tn + threadsN·j). */
  perThreadM: number;
  perThreadN: number;
  /** Columns staged per step (a multiple of 8). */
  tileK: number;
}

const TILE_CONFIGS = {
  // 32 × 32 tile, 64 threads of 4 × 4: fits every adapter (SwiftShader included).
  tiled: { threadsM: 8, threadsN: 8, perThreadM: 4, perThreadN: 4, tileK: 32 },
  // 128 × 64 tile, 256 threads of 8 × 4, 12 KiB of workgroup memory: each decoded weight value
  // is reused by 64 tokens and each staged activation by 128 rows (prefill on GPUs).
  'tiled-large': { threadsM: 16, threadsN: 16, perThreadM: 8, perThreadN: 4, tileK: 16 },
} satisfies Record<string, TileConfig>;

const tileRows = (c: TileConfig) => c.threadsM * c.perThreadM;
const tileTokens = (c: TileConfig) => c.threadsN * c.perThreadN;
const tileThreads = (c: TileConfig) => c.threadsM * c.threadsN;
const tileWorkgroupBytes = (c: TileConfig) => (tileRows(c) + tileTokens(c)) * c.tileK * 4;

/** A tile configuration as WGSL constants: thread grid, outputs per thread, tile size, workgroup size. */
function tileConstantsWgsl(c: TileConfig): string {
  return /* wgsl */ `const TM: u32 = ${c.threadsM}u;
const TN: u32 = ${c.threadsN}u;
const PM: u32 = ${c.perThreadM}u;
const PN: u32 = ${c.perThreadN}u;
const TILE_M: u32 = TM * PM;
const TILE_N: u32 = TN * PN;
const WG: u32 = TM * TN;`;
}

/** Every tiled kernel's end: each thread hands its register tile (rows tm + TM·i, tokens tn + TN·j) to put. */
const storeTileWgsl = /* wgsl */ `  for (var i = 0u; i < PM; i++) {
    for (var j = 0u; j < PN; j++) {
      let row = m0 + tm + TM * i;
      let tok = n0 + tn + TN * j;
      if (row < p.rows && tok < p.n_tokens) { put(tok, row, acc[i * PN + j]); }
    }
  }`;

/**
 * The WGSL of a tiled (prefill) kernel: per step the workgroup decodes a TILE_K-column slice of
 * its rows of W to f32 and stages the same columns of its tokens of x in workgroup memory; each
 * thread then accumulates its perThreadM × perThreadN register tile from them.
 */
export function tiledWgsl(spec: KernelSpec, config: TileConfig): string {
  return /* wgsl */ `
${weightDecodeWgsl(spec.type, 0)}
${kernelIoWgsl(spec)}
${tileConstantsWgsl(config)}
const TILE_K: u32 = ${config.tileK}u;

var<workgroup> wt: array<f32, TILE_K * TILE_M>; // [k][m]: decoded weights
var<workgroup> xt: array<f32, TILE_K * TILE_N>; // [k][n]: activations

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let m0 = (wid.x + wid.y * p.grid_x) * TILE_M;
  if (m0 >= p.rows) { return; } // past the end of a folded grid (uniform per workgroup)
  let n0 = wid.z * TILE_N;
  let tm = lid % TM;
  let tn = lid / TM;
  let groups = p.blocks_per_row * W_GROUPS_PER_BLOCK;
  var acc: array<f32, PM * PN>;
  for (var k0 = 0u; k0 < p.cols; k0 += TILE_K) {
    // Weights: TILE_M rows × TILE_K / 8 groups; consecutive threads take consecutive rows.
    for (var i = lid; i < TILE_M * (TILE_K / 8u); i += WG) {
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
    // Activations: TILE_N tokens × TILE_K / 8 groups of 8 columns.
    for (var i = lid; i < TILE_N * (TILE_K / 8u); i += WG) {
      let n = i % TILE_N;
      let kk = (i / TILE_N) * 8u;
      var v = W8(vec4f(0.0), vec4f(0.0));
      if (k0 + kk < p.cols && n0 + n < p.n_tokens) { v = x8(n0 + n, k0 + kk); }
      for (var e = 0u; e < 4u; e++) {
        xt[(kk + e) * TILE_N + n] = v.a[e];
        xt[(kk + 4u + e) * TILE_N + n] = v.b[e];
      }
    }
    workgroupBarrier();
    for (var k = 0u; k < TILE_K; k++) {
      var a: array<f32, PM>;
      var b: array<f32, PN>;
      for (var i = 0u; i < PM; i++) { a[i] = wt[k * TILE_M + tm + TM * i]; }
      for (var j = 0u; j < PN; j++) { b[j] = xt[k * TILE_N + tn + TN * j]; }
      for (var i = 0u; i < PM; i++) {
        for (var j = 0u; j < PN; j++) { acc[i * PN + j] += a[i] * b[j]; }
      }
    }
    workgroupBarrier();
  }
${storeTileWgsl}
}
`;
}

/** Workgroup bytes of the int8 tiled kernel for a tile configuration. */
const int8TileWorkgroupBytes = (c: TileConfig, type: GGMLType) =>
  4 * (tileRows(c) * (int8ConstantOffset(type) === undefined ? 10 : 9) + tileTokens(c) * (8 + 2 + 4 + 32));

/**
 * The WGSL of the int8 tiled (prefill) kernel, for Q4_0/Q8_0/Q4_ZP weights. Per block of 32 columns the
 * workgroup stages its rows' weight bytes (8 packed words and a scale per row) and its tokens'
 * activations, which it quantizes to int8 like the int8 matvec (per block of 32, scale
 * max|x|/127); each thread then accumulates its register tile with dot4I8Packed, 4 products per
 * instruction, and scales each block's integer sums once.
 */
export function tiledInt8Wgsl(spec: KernelSpec, config: TileConfig): string {
  const offset = int8ConstantOffset(spec.type);
  const blockOffsets = offset === undefined;
  return /* wgsl */ `
${weightDecodeInt8Wgsl(spec.type, 0)}
${blockOffsets ? '' : `const W_I8_OFFSET: i32 = ${offset};`}
${f16RoundWgsl}
${kernelIoWgsl(spec)}
${tileConstantsWgsl(config)}

var<workgroup> wq: array<u32, 8 * TILE_M>;     // [word][m]: the rows' block, packed signed bytes
var<workgroup> wd: array<f32, TILE_M>;         // the rows' block scales
${blockOffsets ? 'var<workgroup> wo: array<i32, TILE_M>;         // and offsets (see WI8 in quant-wgsl.ts)\n' : ''}var<workgroup> xf: array<f32, 32 * TILE_N>;    // [n][32]: the tokens' block of activations
var<workgroup> xmax: array<f32, 4 * TILE_N>;   // [n][quarter]: max |x| of each quarter
var<workgroup> xq: array<u32, 8 * TILE_N>;     // [word][n]: the block quantized to int8
var<workgroup> xd: array<f32, TILE_N>;         // its scale
var<workgroup> xsum: array<i32, TILE_N>;       // and the sum of its int8 values

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let m0 = (wid.x + wid.y * p.grid_x) * TILE_M;
  if (m0 >= p.rows) { return; } // past the end of a folded grid (uniform per workgroup)
  let n0 = wid.z * TILE_N;
  let tm = lid % TM;
  let tn = lid / TM;
  var acc: array<f32, PM * PN>;
  for (var blk = 0u; blk < p.blocks_per_row; blk++) {
    // Weights: one row's block per thread.
    for (var m = lid; m < TILE_M; m += WG) {
      let wb = w_block_i8(min(m0 + m, p.rows - 1u) * p.blocks_per_row + blk, p.scales);
      for (var i = 0u; i < 8u; i++) { wq[i * TILE_M + m] = wb.q[i]; }
      wd[m] = wb.d;
${blockOffsets ? '      wo[m] = wb.o;\n' : ''}    }
    // Activations: a quarter of a token's block (8 values) per thread, and its max |x|.
    for (var i = lid; i < 4u * TILE_N; i += WG) {
      let n = i / 4u;
      let quarter = i % 4u;
      var v = W8(vec4f(0.0), vec4f(0.0));
      if (n0 + n < p.n_tokens) { v = x8(n0 + n, blk * 32u + quarter * 8u); }
      let at = n * 32u + quarter * 8u;
      for (var e = 0u; e < 4u; e++) {
        xf[at + e] = v.a[e];
        xf[at + 4u + e] = v.b[e];
      }
      let a = max(abs(v.a), abs(v.b));
      xmax[i] = max(max(a.x, a.y), max(a.z, a.w));
    }
    workgroupBarrier();
    // Quantize each token's block: the same arithmetic as the int8 matvec.
    for (var i = lid; i < 4u * TILE_N; i += WG) {
      let n = i / 4u;
      let quarter = i % 4u;
      let amax = max(max(xmax[4u * n], xmax[4u * n + 1u]), max(xmax[4u * n + 2u], xmax[4u * n + 3u]));
      let d = amax / 127.0;
      let inverse = select(0.0, 1.0 / d, d > 0.0);
      let at = n * 32u + quarter * 8u;
      let lo = pack4xI8(vec4i(round(vec4f(xf[at], xf[at + 1u], xf[at + 2u], xf[at + 3u]) * inverse)));
      let hi = pack4xI8(vec4i(round(vec4f(xf[at + 4u], xf[at + 5u], xf[at + 6u], xf[at + 7u]) * inverse)));
      xq[(2u * quarter) * TILE_N + n] = lo;
      xq[(2u * quarter + 1u) * TILE_N + n] = hi;
      if (quarter == 0u) { xd[n] = f16_round(d); }
    }
    workgroupBarrier();
    for (var n = lid; n < TILE_N; n += WG) {
      var sum = 0i;
      for (var i = 0u; i < 8u; i++) { sum += dot4I8Packed(xq[i * TILE_N + n], 0x01010101u); }
      xsum[n] = sum;
    }
    workgroupBarrier();
    // The register tile: integer dot products over the block's 8 words, then one scale each.
    var dots: array<i32, PM * PN>;
    for (var k = 0u; k < PM * PN; k++) { dots[k] = 0i; }
    for (var word = 0u; word < 8u; word++) {
      var a: array<u32, PM>;
      var b: array<u32, PN>;
      for (var i = 0u; i < PM; i++) { a[i] = wq[word * TILE_M + tm + TM * i]; }
      for (var j = 0u; j < PN; j++) { b[j] = xq[word * TILE_N + tn + TN * j]; }
      for (var i = 0u; i < PM; i++) {
        for (var j = 0u; j < PN; j++) { dots[i * PN + j] += dot4I8Packed(a[i], b[j]); }
      }
    }
    for (var i = 0u; i < PM; i++) {
      for (var j = 0u; j < PN; j++) {
        let n = tn + TN * j;
        acc[i * PN + j] += wd[tm + TM * i] * xd[n] * f32(dots[i * PN + j] - ${blockOffsets ? 'wo[tm + TM * i]' : 'W_I8_OFFSET'} * xsum[n]);
      }
    }
    workgroupBarrier();
  }
${storeTileWgsl}
}
`;
}

// ---------------------------------------------------------------------------------------------
// Ops

type Variant = Exclude<MatmulVariant, 'auto'>;

/** Whether this device can run the large tile (256 invocations, 12 KiB of workgroup memory). */
function fitsTile(gpu: GpuContext, config: TileConfig): boolean {
  return (
    tileThreads(config) <= gpu.limits.maxComputeInvocationsPerWorkgroup &&
    tileWorkgroupBytes(config) <= gpu.limits.maxComputeWorkgroupStorageSize
  );
}

function pickVariant(gpu: GpuContext, variant: MatmulVariant, nTokens: number, type: GGMLType): Variant {
  if (variant === 'matvec-subgroup' && !gpu.features.subgroups) {
    throw new Error('matmul variant matvec-subgroup needs the subgroups feature, which this device lacks');
  }
  if (variant === 'tiled-large' && !fitsTile(gpu, TILE_CONFIGS['tiled-large'])) {
    throw new Error(
      `matmul variant tiled-large needs ${tileThreads(TILE_CONFIGS['tiled-large'])} invocations and ` +
        `${tileWorkgroupBytes(TILE_CONFIGS['tiled-large'])} bytes of workgroup memory; this device allows ` +
        `${gpu.limits.maxComputeInvocationsPerWorkgroup} and ${gpu.limits.maxComputeWorkgroupStorageSize}`,
    );
  }
  // The int8 kernels where the weight type allows them (Q4_0, Q8_0, Q4_ZP), else the float ones: so a
  // whole model can be run with `kernels: { matmul: 'int8' }` (or one int8 kernel forced).
  const int8 = int8DecodableTypes().includes(type);
  if (variant === 'int8') return !int8 ? pickVariant(gpu, 'auto', nTokens, type) : nTokens <= MATVEC_MAX_TOKENS ? 'matvec-int8' : 'tiled-int8';
  if (variant === 'matvec-int8' && !int8) return gpu.features.subgroups ? 'matvec-subgroup' : 'matvec';
  if (variant === 'tiled-int8' && !int8) return pickVariant(gpu, 'auto', Math.max(nTokens, MATVEC_MAX_TOKENS + 1), type);
  if (variant !== 'auto') return variant;
  if (nTokens <= MATVEC_MAX_TOKENS) return gpu.features.subgroups ? 'matvec-subgroup' : 'matvec';
  // A 64-token tile only pays when there are tokens to fill it.
  return nTokens > tileTokens(TILE_CONFIGS.tiled) && fitsTile(gpu, TILE_CONFIGS['tiled-large']) ? 'tiled-large' : 'tiled';
}

/** The int8 tile: the large one where the device allows it, else the portable one. */
function int8TileConfig(gpu: GpuContext, type: GGMLType): TileConfig {
  const large = TILE_CONFIGS['tiled-large'];
  const fits = tileThreads(large) <= gpu.limits.maxComputeInvocationsPerWorkgroup && int8TileWorkgroupBytes(large, type) <= gpu.limits.maxComputeWorkgroupStorageSize;
  return fits ? large : TILE_CONFIGS.tiled;
}

/** Whether this device can run the `tiled-large` variant. */
export function largeTileFits(gpu: GpuContext): boolean {
  return fitsTile(gpu, TILE_CONFIGS['tiled-large']);
}

/** Where a weight part's rows go in one output: rows `first ..< first + rows` of the part, to `tok * stride + offset + (row - first)`. */
interface BoundOutput {
  buffer: GPUBuffer;
  bias?: GPUBuffer;
  first: number;
  rows: number;
  stride: number;
  offset: number;
}

/** The outputs a weight part writes (those its rows fall in), in row order; checks that they fit. */
function boundOutputs(label: string, w: GpuWeight, y: GPUBuffer | readonly MatmulOutput[], options: MatmulOptions, nTokens: number): BoundOutput[] {
  let bound: BoundOutput[];
  if (!Array.isArray(y)) {
    const stride = options.yRowStride ?? w.totalRows;
    const offset = options.yRowOffset ?? w.rowOffset;
    if (offset + w.rows > stride) throw new Error(`${label}: rows ${offset}..${offset + w.rows} exceed the y row of ${stride}`);
    bound = [{ buffer: y as GPUBuffer, bias: options.bias, first: 0, rows: w.rows, stride, offset }];
  } else {
    const outputs = y as readonly MatmulOutput[];
    if (options.yRowStride !== undefined || options.yRowOffset !== undefined) throw new Error(`${label}: split outputs take their own row lengths (no yRowStride / yRowOffset)`);
    if (options.gate) throw new Error(`${label}: the gate epilogue writes one output`);
    if (options.bias) throw new Error(`${label}: split outputs take their own biases (MatmulOutput.bias)`);
    if (outputs.some((o) => (o.bias === undefined) !== (outputs[0]!.bias === undefined))) throw new Error(`${label}: every output has a bias, or none does`);
    if (!outputs.every((o) => Number.isInteger(o.rows) && o.rows >= 1)) throw new Error(`${label}: output rows must be positive integers, got ${outputs.map((o) => o.rows).join(', ')}`);
    const total = outputs.reduce((sum, o) => sum + o.rows, 0);
    if (total !== w.totalRows) throw new Error(`${label}: outputs of ${outputs.map((o) => o.rows).join(' + ')} rows do not split the weight's ${w.totalRows}`);
    bound = [];
    let start = 0; // the output's first row in the whole weight
    for (const o of outputs) {
      const [from, to] = [Math.max(start, w.rowOffset), Math.min(start + o.rows, w.rowOffset + w.rows)];
      if (from < to) bound.push({ buffer: o.buffer, bias: o.bias, first: from - w.rowOffset, rows: to - from, stride: o.rows, offset: from - start });
      start += o.rows;
    }
  }
  for (const [k, o] of bound.entries()) {
    const bytes = ((nTokens - 1) * o.stride + o.offset + o.rows) * 4;
    const name = bound.length > 1 ? `output ${k}` : 'y';
    if (o.buffer.size < bytes) throw new Error(`${label}: ${name} (${o.buffer.size} bytes) is too small for ${nTokens} rows of ${o.stride} f32`);
    if (options.gate && options.gate.size < bytes) throw new Error(`${label}: gate (${options.gate.size} bytes) is smaller than y's ${bytes}`);
    if (o.bias && o.bias.size < (o.offset + o.rows) * 4) throw new Error(`${label}: the ${name} bias (${o.bias.size} bytes) is shorter than its ${o.offset + o.rows} rows`);
  }
  return bound;
}

/**
 * y[t][yRowOffset + r] = Σ_c W[r][c] · x[t][c] for r < w.rows, t < nTokens (or the epilogue's
 * variation of it). With `y` a list of outputs, each row goes to the output that takes it
 * (see MatmulOutput): a part of a split weight binds only the outputs its rows fall in.
 */
export function matmulOp(
  gpu: GpuContext,
  w: GpuWeight,
  x: GPUBuffer,
  y: GPUBuffer | readonly MatmulOutput[],
  nTokens: number,
  options: MatmulOptions = {},
): KernelOp {
  const label = options.label ?? `matmul ${w.label}`;
  const variant = pickVariant(gpu, options.variant ?? 'auto', nTokens, w.type);
  const xRowStride = options.xRowStride ?? w.cols;
  const epilogue = options.gate ? 'gate' : options.accumulate ? 'accumulate' : 'store';
  if (!Number.isInteger(nTokens) || nTokens < 1) throw new Error(`${label}: nTokens must be a positive integer, got ${nTokens}`);
  if (x.size < ((nTokens - 1) * xRowStride + w.cols) * 4) throw new Error(`${label}: x (${x.size} bytes) is too small for ${nTokens} × ${w.cols} f32`);
  if (options.gate && options.accumulate) throw new Error(`${label}: gate and accumulate cannot be combined`);
  const outputs = boundOutputs(label, w, y, options, nTokens);
  const biased = outputs[0]!.bias !== undefined;
  const storageBuffers = 2 + outputs.length * (biased ? 2 : 1) + (options.gate ? 1 : 0);
  if (storageBuffers > gpu.limits.maxStorageBuffersPerShaderStage) {
    throw new Error(`${label}: ${outputs.length} outputs need ${storageBuffers} storage buffers, the device allows ${gpu.limits.maxStorageBuffersPerShaderStage}`);
  }
  const maxPerDimension = options.maxWorkgroupsPerDimension ?? gpu.limits.maxComputeWorkgroupsPerDimension;
  const spec: KernelSpec = { type: w.type, epilogue, outputs: outputs.length, rowsAligned: xRowStride % 4 === 0, biased };
  let wgsl: string;
  let rowsPerWorkgroup: number;
  let tokensPerWorkgroup: number;
  if (variant === 'tiled' || variant === 'tiled-large') {
    const config = TILE_CONFIGS[variant];
    [wgsl, rowsPerWorkgroup, tokensPerWorkgroup] = [tiledWgsl(spec, config), tileRows(config), tileTokens(config)];
  } else if (variant === 'tiled-int8') {
    const config = int8TileConfig(gpu, w.type);
    [wgsl, rowsPerWorkgroup, tokensPerWorkgroup] = [tiledInt8Wgsl(spec, config), tileRows(config), tileTokens(config)];
  } else {
    // Compiled for the token count (1, 2 or MATVEC_TOKENS), so a single token does no wasted work.
    tokensPerWorkgroup = nTokens <= 2 ? nTokens : MATVEC_TOKENS;
    const int8 = variant === 'matvec-int8';
    const subgroups = variant === 'matvec-subgroup' || (int8 && gpu.features.subgroups);
    [wgsl, rowsPerWorkgroup] = [matvecWgsl(spec, tokensPerWorkgroup, subgroups, int8), matvecRows(int8)];
  }
  const [gridX, gridY] = workgroupGrid(Math.ceil(w.rows / rowsPerWorkgroup), maxPerDimension);
  const gridZ = Math.ceil(nTokens / tokensPerWorkgroup);
  if (gridZ > maxPerDimension) throw new Error(`${label}: ${nTokens} tokens is too many for one dispatch`);
  const [first, ...later] = outputs;
  const uniforms = uniformBuffer(
    gpu.device,
    `${label} params`,
    params([
      ...[w.rows, w.cols, nTokens, w.layout.blocksPerRow, w.layout.scalesOffset, xRowStride, first!.stride, first!.offset, gridX],
      ...later.flatMap((o) => [o.first, o.stride, o.offset]),
    ]),
  );
  const biases = biased ? outputs.map((o) => o.bias!) : [];
  const buffers = [w.buffer, x, first!.buffer, uniforms, ...(options.gate ? [options.gate] : []), ...later.map((o) => o.buffer), ...biases];
  const what = [ggmlTypeName(w.type), variant, ...(epilogue === 'store' ? [] : [epilogue]), ...(biased ? ['+ bias'] : []), ...(later.length > 0 ? [`→ ${outputs.length} outputs`] : [])];
  return kernelOp(gpu.device, `${label} (${what.join(' ')})`, wgsl, buffers, [gridX, gridY, gridZ]);
}

/**
 * One op per part of a (possibly split) weight; together they fill all of y's rows (or all the
 * outputs'). A weight with an `inputOrder` (GPTQ act-order) first gathers its activations into
 * `options.orderedInput`, x'[t][c] = x[t][inputOrder[c]], and multiplies those.
 */
export function matmulOps(
  gpu: GpuContext,
  parts: readonly GpuWeight[],
  x: GPUBuffer,
  y: GPUBuffer | readonly MatmulOutput[],
  nTokens: number,
  options: MatmulOptions = {},
): KernelOp[] {
  const order = parts[0]!.inputOrder;
  if (parts.some((part) => part.inputOrder !== order)) throw new Error(`${parts[0]!.label}: the parts of one weight share its input order`);
  if (!order) return parts.map((part) => matmulOp(gpu, part, x, y, nTokens, options));
  const { cols, label } = parts[0]!;
  const ordered = options.orderedInput;
  if (!ordered || ordered.size < nTokens * cols * 4) {
    throw new Error(`matmul ${label}: its act-order input needs an orderedInput buffer of ${nTokens} × ${cols} f32${ordered ? `, not ${ordered.size} bytes` : ''}`);
  }
  const gather = gatherColumnsOp(gpu, x, order, ordered, nTokens, cols, options.xRowStride ?? cols);
  return [gather, ...parts.map((part) => matmulOp(gpu, part, ordered, y, nTokens, { ...options, xRowStride: cols }))];
}

/** The layout a weight of this type and shape would get (for memory planning before upload). */
export function weightLayout(type: GGMLType, rows: number, cols: number): GpuLayout {
  return gpuLayout(type, rows, cols);
}
