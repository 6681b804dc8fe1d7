// Plain TypeScript references for the non-matmul kernels: the oracle of test/kernels.test.ts.
// They follow llama.cpp's CPU path (f32 storage, f64 where ggml sums in ggml_float), written
// for clarity rather than speed.

const f32 = Math.fround;

/** out[t] = x[t] * (1/sqrt(mean(x[t]²) + eps)) * weight, the sum of squares in f64 like ggml. */
export function rmsnormRef(x: Float32Array, weight: Float32Array, nTokens: number, dim: number, eps: number): Float32Array {
  const out = new Float32Array(nTokens * dim);
  for (let t = 0; t < nTokens; t++) {
    let sum = 0;
    for (let i = 0; i < dim; i++) sum += x[t * dim + i]! * x[t * dim + i]!;
    const scale = f32(1 / Math.sqrt(f32(sum / dim) + eps));
    for (let i = 0; i < dim; i++) out[t * dim + i] = f32(f32(x[t * dim + i]! * scale) * weight[i]!);
  }
  return out;
}

/** Same fields as src/shaders/rope.ts RopeShape; `positionScale` divides the position. */
export interface RopeRefShape {
  nTokens: number;
  nHeads: number;
  headDim: number;
  ropeDims: number;
  base: number;
  positionScale?: number;
  style: 'normal' | 'neox';
  freqFactors?: Float32Array;
}

/** RoPE with ggml's f32 angle: theta_i = pos·thetaScale^i by repeated f32 multiplication. */
export function ropeRef(x: Float32Array, positions: Uint32Array, shape: RopeRefShape): Float32Array {
  const { nTokens, nHeads, headDim, ropeDims, base, style } = shape;
  const freqScale = f32(1 / (shape.positionScale ?? 1)); // positions are divided by positionScale
  const thetaScale = f32(Math.pow(base, -2 / ropeDims));
  const half = ropeDims / 2;
  const out = Float32Array.from(x);
  for (let t = 0; t < nTokens; t++) {
    let theta = f32(positions[t]!);
    for (let i = 0; i < half; i++) {
      const angle = f32(freqScale * f32(theta / (shape.freqFactors?.[i] ?? 1)));
      const cos = f32(Math.cos(angle));
      const sin = f32(Math.sin(angle));
      for (let h = 0; h < nHeads; h++) {
        const start = (t * nHeads + h) * headDim;
        const a = start + (style === 'neox' ? i : 2 * i);
        const b = start + (style === 'neox' ? i + half : 2 * i + 1);
        const x0 = x[a]!;
        const x1 = x[b]!;
        out[a] = f32(x0 * cos - x1 * sin);
        out[b] = f32(x0 * sin + x1 * cos);
      }
      theta = f32(theta * thetaScale);
    }
  }
  return out;
}

export interface AttentionRefShape {
  nTokens: number;
  nHeads: number;
  nKvHeads: number;
  headDim: number;
}

/**
 * Causal GQA attention in f64 over a cache laid out `[position][nKvHeads*headDim]`: token t at
 * position p attends to rows 0..p with kv head h / (nHeads/nKvHeads).
 */
export function attentionRef(
  q: Float32Array,
  kCache: Float32Array,
  vCache: Float32Array,
  positions: Uint32Array,
  shape: AttentionRefShape,
): Float32Array {
  const { nTokens, nHeads, nKvHeads, headDim } = shape;
  const kvWidth = nKvHeads * headDim;
  const group = nHeads / nKvHeads;
  const scale = 1 / Math.sqrt(headDim);
  const out = new Float32Array(nTokens * nHeads * headDim);
  for (let t = 0; t < nTokens; t++) {
    const keyCount = positions[t]! + 1;
    for (let h = 0; h < nHeads; h++) {
      const qStart = (t * nHeads + h) * headDim;
      const kvColumn = Math.floor(h / group) * headDim;
      const scores = new Float64Array(keyCount);
      for (let j = 0; j < keyCount; j++) {
        let dot = 0;
        for (let d = 0; d < headDim; d++) dot += q[qStart + d]! * kCache[j * kvWidth + kvColumn + d]!;
        scores[j] = dot * scale;
      }
      const max = Math.max(...scores);
      let sum = 0;
      for (let j = 0; j < keyCount; j++) sum += (scores[j] = Math.exp(scores[j]! - max));
      for (let d = 0; d < headDim; d++) {
        let value = 0;
        for (let j = 0; j < keyCount; j++) value += scores[j]! * vCache[j * kvWidth + kvColumn + d]!;
        out[qStart + d] = value / sum;
      }
    }
  }
  return out;
}

/** Where a paged cache keeps its rows: `blockTable[slot][position / blockSize]` is the physical block. */
export interface PagingRef {
  tokenSlots: Uint32Array;
  blockTable: Uint32Array;
  blockSize: number;
  blocksPerSequence: number;
}

/** The physical cache row of (slot, position) through the block table. */
export function cacheRowRef(paging: PagingRef, slot: number, position: number): number {
  const { blockTable, blockSize, blocksPerSequence } = paging;
  return blockTable[slot * blocksPerSequence + Math.floor(position / blockSize)]! * blockSize + (position % blockSize);
}

/**
 * attentionRef over a paged cache `[rows][nKvHeads*headDim]`: token t reads rows 0..p of its own
 * slot (`paging.tokenSlots[t]`) through the block table.
 */
export function pagedAttentionRef(
  q: Float32Array,
  kCache: Float32Array,
  vCache: Float32Array,
  positions: Uint32Array,
  paging: PagingRef,
  shape: AttentionRefShape,
): Float32Array {
  const { nTokens, nHeads, nKvHeads, headDim } = shape;
  const kvWidth = nKvHeads * headDim;
  const qWidth = nHeads * headDim;
  const out = new Float32Array(nTokens * qWidth);
  for (let t = 0; t < nTokens; t++) {
    const keyCount = positions[t]! + 1;
    const k = new Float32Array(keyCount * kvWidth);
    const v = new Float32Array(keyCount * kvWidth);
    for (let position = 0; position < keyCount; position++) {
      const from = cacheRowRef(paging, paging.tokenSlots[t]!, position) * kvWidth;
      k.set(kCache.subarray(from, from + kvWidth), position * kvWidth);
      v.set(vCache.subarray(from, from + kvWidth), position * kvWidth);
    }
    const one = attentionRef(q.subarray(t * qWidth, (t + 1) * qWidth), k, v, positions.subarray(t, t + 1), { ...shape, nTokens: 1 });
    out.set(one, t * qWidth);
  }
  return out;
}

/** Writes k/v rows `[nTokens][kvWidth]` into caches `[contextLength][kvWidth]` at each token's position. */
export function kvCacheWriteRef(
  k: Float32Array,
  v: Float32Array,
  positions: Uint32Array,
  kCache: Float32Array,
  vCache: Float32Array,
  kvWidth: number,
): void {
  positions.forEach((position, t) => {
    kCache.set(k.subarray(t * kvWidth, (t + 1) * kvWidth), position * kvWidth);
    vCache.set(v.subarray(t * kvWidth, (t + 1) * kvWidth), position * kvWidth);
  });
}

export function swigluRef(gate: Float32Array, up: Float32Array): Float32Array {
  return gate.map((g, i) => f32(f32(g / f32(1 + f32(Math.exp(-g)))) * up[i]!));
}

/** out[r][c] = x[r][order[c]] for rows of `width` (x rows `stride` apart): an act-order weight's input. */
export function gatherColumnsRef(x: Float32Array, nRows: number, width: number, order: ArrayLike<number>, stride = width): Float32Array {
  const out = new Float32Array(nRows * width);
  for (let r = 0; r < nRows; r++) for (let c = 0; c < width; c++) out[r * width + c] = x[r * stride + order[c]!]!;
  return out;
}

export function addRef(a: Float32Array, b: Float32Array): Float32Array {
  return a.map((x, i) => x + b[i]!);
}

/** Index of the largest logit of each row; ties go to the lowest index (llama.cpp greedy). */
export function argmaxRef(logits: Float32Array, nTokens: number, vocab: number): Uint32Array {
  const ids = new Uint32Array(nTokens);
  for (let t = 0; t < nTokens; t++) {
    let best = 0;
    for (let i = 1; i < vocab; i++) if (logits[t * vocab + i]! > logits[t * vocab + best]!) best = i;
    ids[t] = best;
  }
  return ids;
}

/** The k best (id, logit) pairs of each row, best first, ties by lowest id. */
export function topKRef(logits: Float32Array, nTokens: number, vocab: number, k: number): Array<{ ids: number[]; logits: number[] }> {
  const rows = [];
  for (let t = 0; t < nTokens; t++) {
    const row = logits.subarray(t * vocab, (t + 1) * vocab);
    const order = Array.from(row.keys()).sort((a, b) => row[b]! - row[a]! || a - b).slice(0, k);
    rows.push({ ids: order, logits: order.map((i) => row[i]!) });
  }
  return rows;
}

/** llama.cpp's penalties sampler on one row: repeat (÷ if positive, × otherwise), then frequency and presence. */
export function penaltiesRef(
  row: Float32Array,
  counts: ReadonlyMap<number, number>,
  repeat: number,
  frequency: number,
  presence: number,
): Float32Array {
  const out = Float32Array.from(row);
  for (const [id, count] of counts) {
    const logit = out[id]!;
    const repeated = f32(logit > 0 ? logit / f32(repeat) : logit * f32(repeat));
    out[id] = f32(repeated - f32(f32(count * f32(frequency)) + f32(presence)));
  }
  return out;
}
