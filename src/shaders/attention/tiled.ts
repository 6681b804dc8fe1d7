// Tiled attention (flash attention), the prefill kernel.
//
// One workgroup of 128 threads per (block of BQ
//   consecutive tokens, kv head, group of QH query heads of that kv head): ROWS = BQ × QH query
//   rows share every K/V tile. It walks keys in tiles of BK positions: the tile's keys go to
//   workgroup memory once, every (row, key) score is computed, one thread per row updates its
//   online softmax (max, sum, the factor that rescales the accumulators, the tile's weights in
//   place of the scores), the tile's values replace its keys, and each thread accumulates its
//   (row, column) outputs; 4 barriers per tile. A batch may mix sequences, so the block's tokens
//   are walked in runs: consecutive tokens of one slot share a key range 0..(largest position of
//   the run) through that slot's block table, each row masks keys past its own position and rows
//   outside the run mask everything; a run's rows are written after its last tile, then the next
//   run starts from key 0 (one flat loop over (run, tile), so lavapipe compiles it quickly).
//   Tiles are picked by `tiledAttentionPlan` to fit 16 KiB of workgroup memory: e.g. 32 rows ×
//   16 keys for headDim 64, 16 × 8 for headDim 128; headDims whose smallest tiles do not fit
//   fall back to single under 'auto'.
import type { GpuContext } from '../../gpu/device.ts';
import { kernelOp, params, uniformBuffer, workgroupGrid, type KernelOp } from '../../gpu/kernel.ts';
import { attentionBindingsWgsl, attentionBuffers, attentionScale, checkHeadGroups, dotWgsl, NO_SCORE_WGSL, vectorWidth, type AttentionIo, type AttentionOptions } from './common.ts';
import type { AttentionShape, KvPaging } from './paging.ts';

/** Threads of a tiled workgroup. */
const TILED_WORKGROUP_SIZE = 128;
/** The tiled kernel's workgroup-memory budget: the WebGPU default, also where a device offers more (more would cut occupancy). */
const TILED_MAX_WORKGROUP_BYTES = 16384;
/** Planned tiles: smaller ones would barely share K/V loads or would spend most of their time in barriers ('single' then). */
const TILED_ROW_CHOICES = [32, 16, 8, 4];
const TILED_KEY_CHOICES = [32, 16, 8];

/** How the tiled (flash-attention) kernel cuts its work for one shape (exported for tests and benchmarks). */
export interface TiledAttentionPlan {
  /** 4: q, K, V and out are read and written as vec4f; 1: scalar (headDim % 4 != 0). */
  vec: 1 | 4;
  /** Consecutive query tokens per workgroup (BQ). */
  tokensPerBlock: number;
  /** Query heads of one kv head per workgroup; with the block's tokens they make the query rows. */
  headsPerWorkgroup: number;
  /** Workgroups per (token block, kv head): (nHeads / nKvHeads) / headsPerWorkgroup. */
  headGroups: number;
  /** Query rows per workgroup: tokensPerBlock × headsPerWorkgroup; each K/V tile is read once for all of them. */
  rows: number;
  /** Key positions per K/V tile (BK). */
  keysPerTile: number;
  workgroupSize: number;
  workgroupBytes: number;
}

/** Workgroup bytes of the tiled kernel: queries, one K/V tile (rows padded by one column), scores, row state, tile rows. */
function tiledWorkgroupBytes(rows: number, keys: number, headDim: number, vec: number): number {
  return 4 * (rows * headDim + keys * (headDim + vec) + rows * keys + 4 * rows + keys);
}

/**
 * The tiled plan for a shape, or undefined when this device cannot run it (too few invocations
 * per workgroup, or a headDim whose smallest tiles overflow the workgroup-memory budget).
 * `queryRows` / `keysPerTile` force the tile sizes (tests); otherwise the fitting pair with the
 * least K/V traffic plus synchronisation per (row, key), 1/rows + 1/keys, wins (ties: more rows).
 */
export function tiledAttentionPlan(
  gpu: Pick<GpuContext, 'limits'>,
  shape: Omit<AttentionShape, 'nTokens'>,
  options: Pick<AttentionOptions, 'queryRows' | 'keysPerTile'> = {},
): TiledAttentionPlan | undefined {
  const { nHeads, nKvHeads, headDim } = shape;
  checkHeadGroups(shape, 'attention');
  for (const [name, value] of [['queryRows', options.queryRows], ['keysPerTile', options.keysPerTile]] as const) {
    if (value !== undefined && (!Number.isInteger(value) || value < 1)) throw new Error(`attention: tiled ${name} ${value} must be a positive integer`);
  }
  const WG = TILED_WORKGROUP_SIZE;
  if (gpu.limits.maxComputeInvocationsPerWorkgroup < WG || gpu.limits.maxComputeWorkgroupSizeX < WG) return undefined;
  const budget = Math.min(gpu.limits.maxComputeWorkgroupStorageSize, TILED_MAX_WORKGROUP_BYTES);
  const vec = vectorWidth(headDim);
  const group = nHeads / nKvHeads;
  // Rows = tokens × heads: as many of the group's heads as fit (a divisor of the group), then tokens.
  const split = (target: number): { tokens: number; heads: number } => {
    let heads = Math.min(group, target);
    while (group % heads !== 0) heads--;
    return { tokens: Math.max(1, Math.floor(target / heads)), heads };
  };
  let best: { tokens: number; heads: number; keys: number; bytes: number; cost: number } | undefined;
  for (const target of options.queryRows !== undefined ? [options.queryRows] : TILED_ROW_CHOICES) {
    const { tokens, heads } = split(target);
    const rows = tokens * heads;
    for (const keys of options.keysPerTile !== undefined ? [options.keysPerTile] : TILED_KEY_CHOICES) {
      const bytes = tiledWorkgroupBytes(rows, keys, headDim, vec);
      if (bytes > budget) continue;
      const cost = 1 / rows + 1 / keys;
      if (!best || cost < best.cost - 1e-12) best = { tokens, heads, keys, bytes, cost };
    }
  }
  if (!best) return undefined;
  return {
    vec,
    tokensPerBlock: best.tokens,
    headsPerWorkgroup: best.heads,
    headGroups: group / best.heads,
    rows: best.tokens * best.heads,
    keysPerTile: best.keys,
    workgroupSize: WG,
    workgroupBytes: best.bytes,
  };
}

export function tiledAttentionWgsl(shape: Omit<AttentionShape, 'nTokens'>, paging: KvPaging, plan: TiledAttentionPlan): string {
  const { nHeads, nKvHeads, headDim } = shape;
  const { vec, tokensPerBlock: BQ, headsPerWorkgroup: QH, rows: ROWS, keysPerTile: BK, workgroupSize: WG } = plan;
  const T = vec === 4 ? 'vec4f' : 'f32';
  const headCols = headDim / vec;
  const dot = dotWgsl(vec);
  return /* wgsl */ `
// headCols: HEAD_COLS at run time, the dot loop's bound: with the constant, lavapipe unrolled the
// loop and took ~10 s to compile the kernel (its per-lane workgroup loads made the barrier
// coroutines huge). The output loops stride by WG for the same reason (~1 s less).
struct Params { nTokens: u32, scale: f32, headCols: u32 }

${attentionBindingsWgsl(T, 'out', paging)}
const WG = ${WG}u;
const BQ = ${BQ}u; // query tokens per block
const QH = ${QH}u; // query heads per workgroup, all of one kv head
const ROWS = ${ROWS}u; // query rows: row r = (token r / QH, head r % QH) of the block
const BK = ${BK}u; // key positions per K/V tile
const N_KV_HEADS = ${nKvHeads}u;
const HEADS_PER_KV_HEAD = ${nHeads / nKvHeads}u;
const HEAD_GROUPS = ${plan.headGroups}u;
const HEAD_COLS = ${headCols}u; // ${T} columns per head
const TILE_STRIDE = HEAD_COLS + 1u; // a tile row padded by one column (spreads the score pass over memory banks)
const Q_COLS = ${nHeads * headCols}u;
const KV_COLS = ${nKvHeads * headCols}u;
const OUTS_PER_THREAD = ${Math.ceil((ROWS * headCols) / WG)}u;
${NO_SCORE_WGSL}

var<workgroup> query: array<${T}, ${ROWS * headCols}>;
var<workgroup> tileKv: array<${T}, ${BK * (headCols + 1)}>; // the tile's keys, then (same memory) its values
var<workgroup> scores: array<f32, ${ROWS * BK}>; // scores, then softmax weights
var<workgroup> rowEnd: array<u32, ROWS>; // keys row r sees in the current run; 0: not in the run
var<workgroup> rowMax: array<f32, ROWS>;
var<workgroup> rowSum: array<f32, ROWS>;
var<workgroup> rowScale: array<f32, ROWS>; // rescales what came before to the new max
var<workgroup> tileRows: array<u32, BK>; // cache rows of the tile's keys

// Causal: positions 0..p (a position past the capacity sees the whole sequence, as the other kernels).
fn keyCount(token: u32) -> u32 { return min(positions[token], SEQUENCE_CAPACITY - 1u) + 1u; }

// A run: the block's consecutive tokens from \`start\` that share a slot; they walk one key range.
struct Run { end: u32, slot: u32, keys: u32 }
fn runFrom(first: u32, start: u32, count: u32) -> Run {
  let slot = tokenSlots[first + start];
  var end = start;
  var keys = 0u;
  loop {
    if (end >= count) { break; }
    if (tokenSlots[first + end] != slot) { break; }
    keys = max(keys, keyCount(first + end));
    end++;
  }
  return Run(end, slot, keys);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let item = wid.x + wid.y * nwg.x;
  let headGroup = item % HEAD_GROUPS;
  let kvHead = (item / HEAD_GROUPS) % N_KV_HEADS;
  let first = (item / (HEAD_GROUPS * N_KV_HEADS)) * BQ;
  if (first >= p.nTokens) { return; }
  let count = min(BQ, p.nTokens - first);
  let queryStart = firstHeadColumn(kvHead, headGroup);
  let kvColumn = kvHead * HEAD_COLS;

  // The block's queries (rows of tokens past nTokens are zero and never written).
  for (var i = lid; i < ROWS * HEAD_COLS; i += WG) {
    let t = i / (QH * HEAD_COLS);
    var value = ${T}(0.0);
    if (t < count) { value = q[(first + t) * Q_COLS + queryStart + i % (QH * HEAD_COLS)]; }
    query[i] = value;
  }

  // This thread's outputs: acc[o] holds (row, column) = (i / HEAD_COLS, i % HEAD_COLS) for i = lid + o * WG.
  var acc: array<${T}, OUTS_PER_THREAD>;
  for (var o = 0u; o < OUTS_PER_THREAD; o++) { acc[o] = ${T}(0.0); }

  // One loop over (run, tile): a run's rows start fresh at tile 0 and are written after its last
  // tile. Every value that steers it comes from storage at uniform indices (uniform control flow).
  var runStart = 0u;
  var run = runFrom(first, 0u, count);
  var tile = 0u;
  loop {
    // 1. A new run resets its rows; all: load the tile's keys.
    if (tile == 0u && lid < ROWS) {
      let t = lid / QH;
      var end = 0u;
      if (t >= runStart && t < run.end) { end = keyCount(first + t); }
      rowEnd[lid] = end;
      rowMax[lid] = NO_SCORE;
      rowSum[lid] = 0.0;
    }
    let tileLength = min(BK, run.keys - tile);
    if (lid < tileLength) { tileRows[lid] = cacheRow(run.slot, tile + lid); }
    for (var i = lid; i < tileLength * HEAD_COLS; i += WG) {
      let k = i / HEAD_COLS;
      let c = i % HEAD_COLS;
      tileKv[k * TILE_STRIDE + c] = kCache[cacheRow(run.slot, tile + k) * KV_COLS + kvColumn + c];
    }
    workgroupBarrier();

    // 2. Scores of every (row, key) of the tile; keys past a row's position (or rows outside the run) are masked.
    for (var i = lid; i < ROWS * BK; i += WG) {
      let r = i / BK;
      let k = i % BK;
      var score = NO_SCORE;
      if (tile + k < rowEnd[r]) { // rowEnd <= run.keys, so k < tileLength
        var total = 0.0;
        for (var c = 0u; c < p.headCols; c++) { total += ${dot('query[r * HEAD_COLS + c]', 'tileKv[k * TILE_STRIDE + c]')}; }
        score = total * p.scale;
      }
      scores[i] = score;
    }
    workgroupBarrier();

    // 3. The tile's values replace its keys; one thread per row: online softmax (new max, rescale, weights).
    for (var i = lid; i < tileLength * HEAD_COLS; i += WG) {
      let k = i / HEAD_COLS;
      let c = i % HEAD_COLS;
      tileKv[k * TILE_STRIDE + c] = vCache[tileRows[k] * KV_COLS + kvColumn + c];
    }
    if (lid < ROWS) {
      var tileMax = NO_SCORE;
      for (var k = 0u; k < BK; k++) { tileMax = max(tileMax, scores[lid * BK + k]); }
      let oldMax = rowMax[lid];
      let newMax = max(oldMax, tileMax);
      let scale = exp(oldMax - newMax);
      var sum = 0.0;
      for (var k = 0u; k < BK; k++) {
        let s = scores[lid * BK + k];
        let w = select(0.0, exp(s - newMax), s > NO_SCORE);
        scores[lid * BK + k] = w;
        sum += w;
      }
      rowMax[lid] = newMax;
      rowScale[lid] = scale;
      rowSum[lid] = rowSum[lid] * scale + sum;
    }
    workgroupBarrier();

    // 4. Rescale and accumulate this thread's outputs over the tile's values.
    var o = 0u;
    for (var i = lid; i < ROWS * HEAD_COLS; i += WG) {
      let r = i / HEAD_COLS;
      let c = i % HEAD_COLS;
      var value = acc[o] * rowScale[r];
      for (var k = 0u; k < tileLength; k++) { value += scores[r * BK + k] * tileKv[k * TILE_STRIDE + c]; }
      acc[o] = value;
      o++;
    }

    // 5. The run's last tile: write its rows, move to the next run.
    tile += BK;
    if (tile >= run.keys) {
      o = 0u;
      for (var i = lid; i < ROWS * HEAD_COLS; i += WG) {
        let t = i / (QH * HEAD_COLS);
        if (t >= runStart && t < run.end) {
          out[(first + t) * Q_COLS + queryStart + i % (QH * HEAD_COLS)] = acc[o] * (1.0 / rowSum[i / HEAD_COLS]);
        }
        acc[o] = ${T}(0.0);
        o++;
      }
      runStart = run.end;
      if (runStart < count) { run = runFrom(first, runStart, count); }
      tile = 0u;
    }
    // The next tile overwrites tileKv, scores, tileRows and (new run) the row state read above.
    workgroupBarrier();
    if (runStart >= count) { break; }
  }
}

// Column (in ${T}s) of the first query head of this workgroup within a token's q / out row.
fn firstHeadColumn(kvHead: u32, headGroup: u32) -> u32 {
  return (kvHead * HEADS_PER_KV_HEAD + headGroup * QH) * HEAD_COLS;
}
`;
}

/** The tiled kernel's op; throws (naming 'single') where the device cannot run it for this shape. */
export function tiledAttentionOp(
  gpu: GpuContext,
  io: AttentionIo,
  out: GPUBuffer,
  shape: AttentionShape,
  options: Pick<AttentionOptions, 'queryRows' | 'keysPerTile'>,
): KernelOp {
  const { nTokens, nKvHeads, headDim } = shape;
  const plan = tiledAttentionPlan(gpu, shape, options);
  if (!plan) {
    const smallest = tiledWorkgroupBytes(options.queryRows ?? 4, options.keysPerTile ?? 8, headDim, vectorWidth(headDim));
    throw new Error(
      `attention: the tiled variant does not fit this device for headDim ${headDim} (${smallest} bytes of workgroup storage, budget ` +
        `${Math.min(gpu.limits.maxComputeWorkgroupStorageSize, TILED_MAX_WORKGROUP_BYTES)}; ${TILED_WORKGROUP_SIZE} invocations, limit ` +
        `${gpu.limits.maxComputeInvocationsPerWorkgroup}); use 'single'`,
    );
  }
  const uniforms = uniformBuffer(gpu.device, 'attention tiled params', params([nTokens, { f32: attentionScale(headDim) }, headDim / plan.vec]));
  return kernelOp(
    gpu.device,
    'attention tiled',
    tiledAttentionWgsl(shape, io.paging, plan),
    attentionBuffers(io, out, uniforms),
    workgroupGrid(Math.ceil(nTokens / plan.tokensPerBlock) * nKvHeads * plan.headGroups, gpu.limits.maxComputeWorkgroupsPerDimension),
  );
}
