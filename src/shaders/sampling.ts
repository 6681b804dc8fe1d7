// Sampling on the GPU. Greedy decoding reads back one token id per sequence (argmax). Top-1
// gives (id, logit) pairs so shards holding vocabulary slices can agree on the winner. Top-k
// with k > 1 and the penalty kernel are here for sampling that stays on the GPU; the engine
// still reads back the logits for temperature sampling today (see src/engine/sampler.ts).
//
// Both kernels run one workgroup per token row and loop over the vocabulary. That is plenty for
// correctness and for small vocabularies; large ones (256k) will want a first pass spread over
// many workgroups per row and a small merge pass, with the same outputs.

import type { GpuContext } from '../gpu/device.ts';
import { kernelOp, params, uniformBuffer, workgroupGrid, type KernelOp } from '../gpu/kernel.ts';

const WORKGROUP_SIZE = 256;

export const argmaxWgsl = /* wgsl */ `
struct Params { nTokens: u32, vocab: u32 }

@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read_write> outIds: array<u32>;
@group(0) @binding(2) var<uniform> p: Params;

const WG = ${WORKGROUP_SIZE}u;
const NONE = 0xffffffffu;
var<workgroup> bestValues: array<f32, WG>;
var<workgroup> bestIds: array<u32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let token = wid.x + wid.y * nwg.x;
  if (token >= p.nTokens) { return; }
  let row = token * p.vocab;

  // A thread sees its ids in increasing order, so a strict '>' keeps the lowest id of a tie.
  var bestValue = 0.0;
  var bestId = NONE;
  for (var i = lid; i < p.vocab; i += WG) {
    let v = logits[row + i];
    if (bestId == NONE || v > bestValue) { bestValue = v; bestId = i; }
  }
  bestValues[lid] = bestValue;
  bestIds[lid] = bestId;
  workgroupBarrier();

  for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
    if (lid < stride) {
      let otherValue = bestValues[lid + stride];
      let otherId = bestIds[lid + stride];
      let mine = bestIds[lid];
      let otherWins = otherId != NONE &&
        (mine == NONE || otherValue > bestValues[lid] || (otherValue == bestValues[lid] && otherId < mine));
      if (otherWins) { bestValues[lid] = otherValue; bestIds[lid] = otherId; }
    }
    workgroupBarrier();
  }
  if (lid == 0u) { outIds[token] = bestIds[0]; }
}
`;

/** Greedy sampling: `outIds[t]` (u32) = index of the largest logit of row t; ties go to the lowest index. */
export function argmaxOp(gpu: GpuContext, logits: GPUBuffer, outIds: GPUBuffer, nTokens: number, vocab: number): KernelOp {
  const uniforms = uniformBuffer(gpu.device, 'argmax params', params([nTokens, vocab]));
  return kernelOp(gpu.device, 'argmax', argmaxWgsl, [logits, outIds, uniforms], workgroupGrid(nTokens));
}

export const MAX_TOP_K = 64;

/**
 * Top-k by radix select. Logits map to u32 keys that order like the floats; four passes of 8-bit
 * histograms (most significant byte first) find the key of the k-th best logit (the threshold).
 * Every logit above the threshold is a candidate; of those equal to it, the lowest ids are taken
 * one per pass (usually a single pass). The k candidates are then ranked against each other.
 */
export function topKWgsl(k: number): string {
  return /* wgsl */ `
struct Params { nTokens: u32, vocab: u32 }

@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@group(0) @binding(2) var<uniform> p: Params;

const WG = ${WORKGROUP_SIZE}u; // also the number of histogram bins
const K = ${k}u;
var<workgroup> histogram: array<atomic<u32>, 256>;
var<workgroup> thresholdPrefix: u32;
var<workgroup> tiesToTake: u32;
var<workgroup> candidateCount: atomic<u32>;
var<workgroup> lowestTie: atomic<u32>;
var<workgroup> candidateIds: array<u32, K>;
var<workgroup> candidateKeys: array<u32, K>;

// Orders like the float: flip all bits of negatives, set the sign bit of positives.
fn orderKey(v: f32) -> u32 {
  let bits = bitcast<u32>(v);
  return select(bits | 0x80000000u, ~bits, (bits & 0x80000000u) != 0u);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let token = wid.x + wid.y * nwg.x;
  if (token >= p.nTokens) { return; }
  let row = token * p.vocab;

  if (lid == 0u) {
    thresholdPrefix = 0u;
    tiesToTake = K;
    atomicStore(&candidateCount, 0u);
  }
  var prefixMask = 0u;
  for (var digit = 0u; digit < 4u; digit++) {
    let shift = 24u - 8u * digit;
    atomicStore(&histogram[lid], 0u);
    workgroupBarrier();
    let prefix = thresholdPrefix;
    for (var i = lid; i < p.vocab; i += WG) {
      let key = orderKey(logits[row + i]);
      if ((key & prefixMask) == prefix) { atomicAdd(&histogram[(key >> shift) & 255u], 1u); }
    }
    workgroupBarrier();
    if (lid == 0u) {
      // Walk the bins from the top until they hold the k-th best key.
      var need = tiesToTake;
      var bin = 255u;
      loop {
        let count = atomicLoad(&histogram[bin]);
        if (count >= need || bin == 0u) { break; }
        need -= count;
        bin -= 1u;
      }
      thresholdPrefix = prefix | (bin << shift);
      tiesToTake = need;
    }
    prefixMask |= 255u << shift;
    workgroupBarrier();
  }
  let threshold = thresholdPrefix;

  for (var i = lid; i < p.vocab; i += WG) {
    let key = orderKey(logits[row + i]);
    if (key > threshold) {
      let slot = atomicAdd(&candidateCount, 1u);
      candidateIds[slot] = i;
      candidateKeys[slot] = key;
    }
  }

  // Slots K - ties .. K - 1 take the lowest ids among the logits equal to the threshold.
  let ties = workgroupUniformLoad(&tiesToTake);
  var searchFrom = 0u;
  for (var t = 0u; t < ties; t++) {
    if (lid == 0u) { atomicStore(&lowestTie, 0xffffffffu); }
    workgroupBarrier();
    for (var i = searchFrom + lid; i < p.vocab; i += WG) {
      if (orderKey(logits[row + i]) == threshold) { atomicMin(&lowestTie, i); break; }
    }
    workgroupBarrier();
    let id = atomicLoad(&lowestTie);
    if (lid == 0u) {
      candidateIds[K - ties + t] = id;
      candidateKeys[K - ties + t] = threshold;
    }
    searchFrom = id + 1u;
    workgroupBarrier();
  }
  workgroupBarrier();

  // Rank: better logit first, lower id first among equals. Pairs are (id, f32 bits of the logit).
  if (lid < K) {
    let key = candidateKeys[lid];
    let id = candidateIds[lid];
    var rank = 0u;
    for (var j = 0u; j < K; j++) {
      let other = candidateKeys[j];
      if (other > key || (other == key && candidateIds[j] < id)) { rank++; }
    }
    let slot = (token * K + rank) * 2u;
    out[slot] = id;
    out[slot + 1u] = bitcast<u32>(logits[row + id]);
  }
}
`;
}

/**
 * The k best (id, logit) pairs of each row, best first (ties: lowest id first), `k ≤ 64`.
 * `outIdsAndValues` layout: `[nTokens][k][2]` u32 words, `[id, bits of the f32 logit]`;
 * read it with `unpackTopK`.
 */
export function topKOp(
  gpu: GpuContext,
  logits: GPUBuffer,
  outIdsAndValues: GPUBuffer,
  nTokens: number,
  vocab: number,
  k: number,
): KernelOp {
  if (!Number.isInteger(k) || k < 1 || k > MAX_TOP_K || k > vocab) {
    throw new Error(`topKOp: k ${k} must be an integer in 1..${Math.min(MAX_TOP_K, vocab)}`);
  }
  const uniforms = uniformBuffer(gpu.device, 'top-k params', params([nTokens, vocab]));
  return kernelOp(gpu.device, `top-${k}`, topKWgsl(k), [logits, outIdsAndValues, uniforms], workgroupGrid(nTokens));
}

export interface TopK {
  ids: Uint32Array;
  logits: Float32Array;
}

/** Splits the read-back bytes of a topKOp output into per-token ids and logits (best first). */
export function unpackTopK(bytes: ArrayBuffer, nTokens: number, k: number): TopK[] {
  const words = new Uint32Array(bytes, 0, nTokens * k * 2);
  const floats = new Float32Array(bytes, 0, nTokens * k * 2);
  const rows: TopK[] = [];
  for (let t = 0; t < nTokens; t++) {
    const ids = new Uint32Array(k);
    const logits = new Float32Array(k);
    for (let r = 0; r < k; r++) {
      ids[r] = words[(t * k + r) * 2]!;
      logits[r] = floats[(t * k + r) * 2 + 1]!;
    }
    rows.push({ ids, logits });
  }
  return rows;
}

export interface PenaltyOptions {
  nRows: number;
  vocab: number;
  /** Capacity of each row's list of (token id, count) pairs. */
  maxIds: number;
  /** Repetition penalty (1 = off): a positive logit is divided by it, any other multiplied. */
  repeat: number;
  /** Subtracted once per occurrence (OpenAI frequency_penalty). Default 0. */
  frequency?: number;
  /** Subtracted once for any occurrence (OpenAI presence_penalty). Default 0. */
  presence?: number;
}

const PENALTY_WORKGROUP_SIZE = 64;

export const repetitionPenaltyWgsl = /* wgsl */ `
struct Params { nRows: u32, vocab: u32, rowWords: u32, repeat: f32, frequency: f32, presence: f32 }

@group(0) @binding(0) var<storage, read_write> logits: array<f32>;
@group(0) @binding(1) var<storage, read> penalized: array<u32>;
@group(0) @binding(2) var<uniform> p: Params;

const WG = ${PENALTY_WORKGROUP_SIZE}u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= p.nRows) { return; }
  let list = row * p.rowWords;
  let entries = min(penalized[list], (p.rowWords - 1u) / 2u);
  for (var j = lid; j < entries; j += WG) {
    let id = penalized[list + 1u + 2u * j];
    let count = penalized[list + 2u + 2u * j];
    if (id >= p.vocab || count == 0u) { continue; }
    let at = row * p.vocab + id;
    let logit = logits[at];
    let repeated = select(logit * p.repeat, logit / p.repeat, logit > 0.0);
    logits[at] = repeated - (f32(count) * p.frequency + p.presence);
  }
}
`;

/**
 * llama.cpp's penalties sampler on the GPU, applied in place to `logits` `[nRows][vocab]`.
 * `penalized` (u32) holds one list per row, `[nRows][1 + 2*maxIds]`: the number of entries,
 * then (token id, occurrence count) pairs. Ids must be unique within a row (count them on the
 * host over the last-n window); the host rewrites the lists each step, the op stays built.
 */
export function repetitionPenaltyOp(gpu: GpuContext, logits: GPUBuffer, penalized: GPUBuffer, options: PenaltyOptions): KernelOp {
  const { nRows, vocab, maxIds, repeat } = options;
  const uniforms = uniformBuffer(
    gpu.device,
    'penalty params',
    params([nRows, vocab, 1 + 2 * maxIds, { f32: repeat }, { f32: options.frequency ?? 0 }, { f32: options.presence ?? 0 }]),
  );
  return kernelOp(gpu.device, 'repetition penalty', repetitionPenaltyWgsl, [logits, penalized, uniforms], workgroupGrid(nRows));
}

/** Packs per-row occurrence counts (token id → count) into the layout repetitionPenaltyOp reads. */
export function packPenalties(rows: ReadonlyArray<ReadonlyMap<number, number>>, maxIds: number): Uint32Array {
  const rowWords = 1 + 2 * maxIds;
  const words = new Uint32Array(rows.length * rowWords);
  rows.forEach((counts, r) => {
    if (counts.size > maxIds) throw new Error(`packPenalties: ${counts.size} ids exceed the capacity ${maxIds}`);
    words[r * rowWords] = counts.size;
    let j = 0;
    for (const [id, count] of counts) {
      words[r * rowWords + 1 + 2 * j] = id;
      words[r * rowWords + 2 + 2 * j] = count;
      j++;
    }
  });
  return words;
}
