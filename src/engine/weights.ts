// Loading one shard's weights: read only this shard's byte ranges of the file, repack, upload.
//
// Tensor parallel slices follow Megatron-LM: Q, K, V, gate and up are split by output rows
// (whole heads, whole KV heads, FFN columns), the attention output and down projections by
// input columns, so each shard's partial output is summed by one all-reduce per block.

import type { GpuContext } from '../gpu/device.ts';
import { storageBuffer } from '../gpu/kernel.ts';
import type { LlamaConfig } from '../model/config.ts';
import { ModelFormatError } from '../model/errors.ts';
import { blockGeometry, ggmlTypeName } from '../model/ggml-type.ts';
import type { GGUFFile, GGUFTensorInfo } from '../model/gguf.ts';
import { dequantize } from '../model/quant.ts';
import { uploadWeightSplit, type GpuWeight } from '../shaders/matmul.ts';
import { rangeLength, type Range, type ShardView } from './shard-view.ts';

/**
 * A weight matrix on the GPU: one part, or several row ranges when it exceeds one storage
 * binding (browsers may allow only 128 MiB per binding).
 */
export type GpuMatrix = GpuWeight[];

export interface LayerWeights {
  attentionNorm: GPUBuffer;
  query: GpuMatrix;
  key: GpuMatrix;
  value: GpuMatrix;
  output: GpuMatrix;
  ffnNorm: GPUBuffer;
  gate: GpuMatrix;
  up: GpuMatrix;
  down: GpuMatrix;
}

export interface LlamaWeights {
  tokenEmbedding?: GpuMatrix;
  /** Indexed from the view's first layer. */
  layers: LayerWeights[];
  outputNorm?: GPUBuffer;
  /** Llama 3.1+ `rope_freqs.weight`: a divisor per rotary frequency (f32[ropeDims / 2]). */
  ropeFrequencyFactors?: GPUBuffer;
  /** This shard's vocabulary rows of the output head. */
  output?: GpuMatrix;
  /** Bytes uploaded to the GPU. */
  gpuBytes: number;
  /** Where load time went: reading the file, and repacking + handing to the GPU queue (host time; the cold-start breakdown). */
  loadMs: { read: number; upload: number };
}

export type LoadProgress = (bytesDone: number, bytesTotal: number) => void;

/** What part of a tensor a shard reads: a range of rows, or a range of columns of every row. */
export type Slice = { rows?: Range; columns?: Range };

export interface TensorRead {
  name: string;
  slice: Slice;
}

function rowCount(t: GGUFTensorInfo): number {
  return t.shape.slice(1).reduce((a, b) => a * b, 1);
}

function rowBytes(t: GGUFTensorInfo): number {
  return t.byteLength / rowCount(t);
}

/** Bytes of `columns` of one row, checking the slice falls on quantization block boundaries. */
function columnSpan(file: GGUFFile, t: GGUFTensorInfo, columns: Range): { offset: number; length: number } {
  const geometry = blockGeometry[t.type]!;
  if (columns.start % geometry.blockSize !== 0 || columns.end % geometry.blockSize !== 0) {
    throw new ModelFormatError({
      file: file.source.name,
      tensor: t.name,
      problem: `tensor ${t.name} (${ggmlTypeName(t.type)}) cannot be split at columns ${columns.start}..${columns.end}: slices must fall on ${geometry.blockSize}-value quantization blocks`,
      fix: 'Use fewer tensor-parallel shards, or pipeline parallelism.',
    });
  }
  const bytesPerBlock = geometry.typeSize / geometry.blockSize;
  return { offset: columns.start * bytesPerBlock, length: rangeLength(columns) * bytesPerBlock };
}

function sliceBytes(file: GGUFFile, t: GGUFTensorInfo, slice: Slice): number {
  if (slice.rows) return rangeLength(slice.rows) * rowBytes(t);
  if (slice.columns) return rowCount(t) * columnSpan(file, t, slice.columns).length;
  return t.byteLength;
}

/** Reads exactly the bytes of a slice: whole rows in one read, column slices row by row. */
async function readSlice(file: GGUFFile, t: GGUFTensorInfo, slice: Slice): Promise<Uint8Array> {
  if (slice.rows) {
    return file.source.read(t.offset + slice.rows.start * rowBytes(t), rangeLength(slice.rows) * rowBytes(t));
  }
  if (slice.columns) {
    const span = columnSpan(file, t, slice.columns);
    const rows = rowCount(t);
    const out = new Uint8Array(rows * span.length);
    const stride = rowBytes(t);
    const reads: Promise<void>[] = [];
    for (let r = 0; r < rows; r++) {
      reads.push(file.source.read(t.offset + r * stride + span.offset, span.length).then((bytes) => out.set(bytes, r * span.length)));
      if (reads.length === 256) await Promise.all(reads.splice(0));
    }
    await Promise.all(reads);
    return out;
  }
  return file.source.read(t.offset, t.byteLength);
}

/** A tied output head over the whole vocabulary is the embedding table itself: upload it once. */
export function outputHeadIsEmbedding(config: LlamaConfig, view: ShardView): boolean {
  return config.tiedEmbeddings && view.embeds && view.vocab.start === 0 && view.vocab.end === config.vocabSize;
}

/** The tensor reads a shard needs, in file order of use. */
export function plannedReads(config: LlamaConfig, view: ShardView): TensorRead[] {
  const hd = config.headDim;
  const headRows = { start: view.heads.start * hd, end: view.heads.end * hd };
  const kvRows = { start: view.kvHeads.start * hd, end: view.kvHeads.end * hd };
  const reads: TensorRead[] = [];
  if (view.embeds) reads.push({ name: 'token_embd.weight', slice: {} });
  if (config.ropeFreqsTensor && view.layers.end > view.layers.start) reads.push({ name: config.ropeFreqsTensor, slice: {} });
  for (let l = view.layers.start; l < view.layers.end; l++) {
    reads.push(
      { name: `blk.${l}.attn_norm.weight`, slice: {} },
      { name: `blk.${l}.attn_q.weight`, slice: { rows: headRows } },
      { name: `blk.${l}.attn_k.weight`, slice: { rows: kvRows } },
      { name: `blk.${l}.attn_v.weight`, slice: { rows: kvRows } },
      { name: `blk.${l}.attn_output.weight`, slice: { columns: headRows } },
      { name: `blk.${l}.ffn_norm.weight`, slice: {} },
      { name: `blk.${l}.ffn_gate.weight`, slice: { rows: view.ffn } },
      { name: `blk.${l}.ffn_up.weight`, slice: { rows: view.ffn } },
      { name: `blk.${l}.ffn_down.weight`, slice: { columns: view.ffn } },
    );
  }
  if (view.samples) {
    reads.push({ name: 'output_norm.weight', slice: {} });
    if (!outputHeadIsEmbedding(config, view)) {
      reads.push({ name: config.tiedEmbeddings ? 'token_embd.weight' : 'output.weight', slice: { rows: view.vocab } });
    }
  }
  return reads;
}

/** Bytes of the file a shard reads (for the memory planner and for load progress). */
export function shardReadBytes(file: GGUFFile, config: LlamaConfig, view: ShardView): number {
  return plannedReads(config, view).reduce((sum, r) => sum + sliceBytes(file, file.tensor(r.name), r.slice), 0);
}

export async function loadLlamaWeights(
  gpu: GpuContext,
  file: GGUFFile,
  config: LlamaConfig,
  view: ShardView,
  onProgress?: LoadProgress,
): Promise<LlamaWeights> {
  const reads = plannedReads(config, view);
  const total = reads.reduce((sum, r) => sum + sliceBytes(file, file.tensor(r.name), r.slice), 0);
  let done = 0;
  let gpuBytes = 0;
  const loadMs = { read: 0, upload: 0 };
  onProgress?.(0, total);

  // Upload every planned read once: 1-D tensors (norm weights) as f32 vectors, the rest as matrices.
  const uploaded = new Map<string, GpuMatrix | GPUBuffer>();
  for (const { name, slice } of reads) {
    const t = file.tensor(name);
    const readStart = performance.now();
    const bytes = await readSlice(file, t, slice);
    const uploadStart = performance.now();
    loadMs.read += uploadStart - readStart;
    done += bytes.byteLength;
    onProgress?.(done, total);
    if (t.shape.length === 1) {
      const values = dequantize(t.type, bytes, t.shape[0]!);
      gpuBytes += values.byteLength;
      uploaded.set(name, storageBuffer(gpu.device, name, values));
    } else {
      const rows = slice.rows ? rangeLength(slice.rows) : rowCount(t);
      const cols = slice.columns ? rangeLength(slice.columns) : t.shape[0]!;
      const weight = uploadWeightSplit(gpu, name, t.type, rows, cols, bytes);
      gpuBytes += weight.reduce((sum, part) => sum + part.bytes, 0);
      // The tied output head and the embedding are different reads of one tensor.
      uploaded.set(slice.rows && name === 'token_embd.weight' ? 'output head' : name, weight);
    }
    loadMs.upload += performance.now() - uploadStart;
  }
  const matrix = (name: string) => uploaded.get(name) as GpuMatrix;
  const vector = (name: string) => uploaded.get(name) as GPUBuffer;

  const weights: LlamaWeights = { layers: [], gpuBytes, loadMs };
  if (view.embeds) weights.tokenEmbedding = matrix('token_embd.weight');
  if (config.ropeFreqsTensor) weights.ropeFrequencyFactors = uploaded.get(config.ropeFreqsTensor) as GPUBuffer | undefined;
  for (let l = view.layers.start; l < view.layers.end; l++) {
    weights.layers.push({
      attentionNorm: vector(`blk.${l}.attn_norm.weight`),
      query: matrix(`blk.${l}.attn_q.weight`),
      key: matrix(`blk.${l}.attn_k.weight`),
      value: matrix(`blk.${l}.attn_v.weight`),
      output: matrix(`blk.${l}.attn_output.weight`),
      ffnNorm: vector(`blk.${l}.ffn_norm.weight`),
      gate: matrix(`blk.${l}.ffn_gate.weight`),
      up: matrix(`blk.${l}.ffn_up.weight`),
      down: matrix(`blk.${l}.ffn_down.weight`),
    });
  }
  if (view.samples) {
    weights.outputNorm = vector('output_norm.weight');
    weights.output = outputHeadIsEmbedding(config, view)
      ? matrix('token_embd.weight')
      : matrix(config.tiedEmbeddings ? 'output head' : 'output.weight');
  }
  return weights;
}

export function destroyWeights(w: LlamaWeights): void {
  const buffers = new Set<GPUBuffer>();
  const add = (x: GpuMatrix | GPUBuffer | undefined) => {
    if (Array.isArray(x)) for (const part of x) buffers.add(part.buffer);
    else if (x) buffers.add(x);
  };
  add(w.tokenEmbedding);
  add(w.outputNorm);
  add(w.ropeFrequencyFactors);
  add(w.output); // may share buffers with the embedding: the set destroys each once
  for (const layer of w.layers) for (const value of Object.values(layer)) add(value as GpuMatrix | GPUBuffer);
  for (const buffer of buffers) buffer.destroy();
}
