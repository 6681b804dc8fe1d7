// Loading one shard's weights: read only this shard's byte ranges of the file, repack, upload.
//
// Tensor parallel slices follow Megatron-LM: Q, K, V, gate and up are split by output rows
// (whole heads, whole KV heads, FFN columns), the attention output and down projections by
// input columns, so each shard's partial output is summed by one all-reduce per block.
//
// A layer's Q, K and V (as this shard reads them: whole, or its heads' rows) go to the GPU as one
// stacked weight, q rows then k rows then v rows, when they share a type and width: the forward
// pass then runs them as one matmul dispatch that splits its output rows over q, k and v. Where
// the types differ (Q4_K_M files keep some attn_v at a higher precision) they stay three weights.
//
// A GPTQ act-order tensor (`inputOrder`, src/model/awq-gptq.ts) goes up with its order as a u32
// buffer beside it (the matmul gathers its input by it); it stacks only with tensors of the same
// order, and it cannot be cut by columns (refused here and by the sharding planner).
//
// Families (src/model/config.ts) change only what is read: Phi-3's fused `attn_qkv` is read as
// its q, k and v row ranges (this shard's rows of each, stacked as above), its fused `ffn_up` as
// the gate rows and the up rows (two weights, as llama's ffn_gate and ffn_up); Qwen2's Q/K/V
// biases as this shard's elements of each; Qwen3's per-head Q/K norm weights whole (every head
// uses them).

import type { GpuContext } from '../gpu/device.ts';
import { align16, storageBuffer } from '../gpu/kernel.ts';
import type { LlamaConfig } from '../model/config.ts';
import { actOrderColumnSplitRefusal } from '../model/awq-gptq.ts';
import { ModelFormatError, UnsupportedModelError } from '../model/errors.ts';
import { blockGeometry, ggmlTypeName, type GGMLType } from '../model/ggml-type.ts';
import type { GGUFFile, GGUFTensorInfo } from '../model/gguf.ts';
import { dequantize } from '../model/quant.ts';
import { bindingParts, gpuLayout, isVerbatimLayout, repackRows, rowsPlacement, type GpuLayout } from '../model/repack.ts';
import { bytesSource, type ByteSource } from '../model/source.ts';
import type { GpuWeight } from '../shaders/matmul.ts';
import { rangeLength, type Range, type ShardView } from './shard-view.ts';

/**
 * A weight matrix on the GPU: one part, or several row ranges when it exceeds one storage
 * binding (browsers may allow only 128 MiB per binding).
 */
export type GpuMatrix = GpuWeight[];

interface LayerWeightsCommon {
  attentionNorm: GPUBuffer;
  /** Qwen2: this shard's elements of the Q, K and V biases. */
  qkvBias?: { query: GPUBuffer; key: GPUBuffer; value: GPUBuffer };
  /** Qwen3: the per-head RMSNorm weights of Q and K (f32[headDim] each). */
  qkNorm?: { query: GPUBuffer; key: GPUBuffer };
  output: GpuMatrix;
  ffnNorm: GPUBuffer;
  gate: GpuMatrix;
  up: GpuMatrix;
  down: GpuMatrix;
}

/**
 * One layer's weights. Q, K and V are one stacked weight `qkv` (this shard's q rows, then its k
 * rows, then its v rows) where they share a GGML type and width, else three weights.
 */
export type LayerWeights = LayerWeightsCommon &
  ({ qkv: GpuMatrix; query?: undefined; key?: undefined; value?: undefined } | { qkv?: undefined; query: GpuMatrix; key: GpuMatrix; value: GpuMatrix });

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
  /** The widest input of an act-order weight (0: none), for the scratch its matmul gathers into. */
  orderedInputWidth: number;
  /**
   * Where load time went (host time; the cold-start breakdown): `read` is time spent waiting for
   * file reads that were not hidden behind work, `upload` is repacking + handing bytes to the GPU
   * queue (the next chunk is read meanwhile). Their sum is the load's wall time.
   */
  loadMs: { read: number; upload: number };
}

export type LoadProgress = (bytesDone: number, bytesTotal: number) => void;

/** What part of a tensor a shard reads: a range of rows (of a 1-D tensor: elements), or a range of columns of every row. */
export type Slice = { rows?: Range; columns?: Range };

export interface TensorRead {
  name: string;
  slice: Slice;
  /** Consecutive reads with the same `stack` go to the GPU as one weight, stacked by rows, when their types and widths match. */
  stack?: string;
  /** The name the loader finds the upload by, where it is not the tensor's (a part of a fused tensor, the tied output head). */
  as?: string;
}

function rowCount(t: GGUFTensorInfo): number {
  return t.shape.slice(1).reduce((a, b) => a * b, 1);
}

function rowBytes(t: GGUFTensorInfo): number {
  return t.byteLength / rowCount(t);
}

/** Bytes of `columns` of one row, checking the slice falls on quantization block boundaries. */
function columnSpan(file: GGUFFile, t: GGUFTensorInfo, columns: Range): { offset: number; length: number } {
  if (t.inputOrder && rangeLength(columns) !== t.shape[0]) {
    throw new UnsupportedModelError({ file: file.source.name, tensor: t.name, ...actOrderColumnSplitRefusal(t.name) });
  }
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
  if (t.shape.length === 1) return t.byteLength; // vectors are read whole (a few KiB) and sliced on the host
  if (slice.rows) return rangeLength(slice.rows) * rowBytes(t);
  if (slice.columns) return rowCount(t) * columnSpan(file, t, slice.columns).length;
  return t.byteLength;
}

/** A tied output head over the whole vocabulary is the embedding table itself: upload it once. */
export function outputHeadIsEmbedding(config: LlamaConfig, view: ShardView): boolean {
  return config.tiedEmbeddings && view.embeds && view.vocab.start === 0 && view.vocab.end === config.vocabSize;
}

/** The name of layer `l`'s stacked Q, K and V weight (not a tensor of the file). */
const qkvName = (l: number): string => `blk.${l}.attn_qkv`;

/** `r` moved `by` rows on: where a part of a fused tensor starts. */
const shifted = (r: Range, by: number): Range => ({ start: r.start + by, end: r.end + by });

/** The tensor reads a shard needs, in file order of use. */
export function plannedReads(config: LlamaConfig, view: ShardView): TensorRead[] {
  const { family, headDim: hd, ffnDim } = config;
  const [qDim, kvDim] = [config.nHeads * hd, config.nKvHeads * hd];
  const headRows = { start: view.heads.start * hd, end: view.heads.end * hd };
  const kvRows = { start: view.kvHeads.start * hd, end: view.kvHeads.end * hd };
  const reads: TensorRead[] = [];
  if (view.embeds) reads.push({ name: 'token_embd.weight', slice: {} });
  if (config.ropeFreqsTensor && view.layers.end > view.layers.start) reads.push({ name: config.ropeFreqsTensor, slice: {} });
  for (let l = view.layers.start; l < view.layers.end; l++) {
    const tensor = (name: string, kind = 'weight') => `blk.${l}.${name}.${kind}`;
    const stack = qkvName(l);
    reads.push({ name: tensor('attn_norm'), slice: {} });
    if (family.fusedQkv) {
      // attn_qkv holds all of q's rows, then k's, then v's: this shard's rows of each.
      reads.push(
        { name: tensor('attn_qkv'), slice: { rows: headRows }, stack },
        { name: tensor('attn_qkv'), slice: { rows: shifted(kvRows, qDim) }, stack },
        { name: tensor('attn_qkv'), slice: { rows: shifted(kvRows, qDim + kvDim) }, stack },
      );
    } else {
      reads.push(
        { name: tensor('attn_q'), slice: { rows: headRows }, stack },
        { name: tensor('attn_k'), slice: { rows: kvRows }, stack },
        { name: tensor('attn_v'), slice: { rows: kvRows }, stack },
      );
    }
    if (family.qkvBias) {
      reads.push(
        { name: tensor('attn_q', 'bias'), slice: { rows: headRows } },
        { name: tensor('attn_k', 'bias'), slice: { rows: kvRows } },
        { name: tensor('attn_v', 'bias'), slice: { rows: kvRows } },
      );
    }
    if (family.qkNorm) reads.push({ name: tensor('attn_q_norm'), slice: {} }, { name: tensor('attn_k_norm'), slice: {} });
    reads.push({ name: tensor('attn_output'), slice: { columns: headRows } }, { name: tensor('ffn_norm'), slice: {} });
    if (family.fusedGateUp) {
      // ffn_up holds the gate's rows, then up's: this shard's FFN rows of each, as two weights.
      reads.push(
        { name: tensor('ffn_up'), slice: { rows: view.ffn }, as: tensor('ffn_gate') },
        { name: tensor('ffn_up'), slice: { rows: shifted(view.ffn, ffnDim) } },
      );
    } else {
      reads.push({ name: tensor('ffn_gate'), slice: { rows: view.ffn } }, { name: tensor('ffn_up'), slice: { rows: view.ffn } });
    }
    reads.push({ name: tensor('ffn_down'), slice: { columns: view.ffn } });
  }
  if (view.samples) {
    reads.push({ name: 'output_norm.weight', slice: {} });
    if (!outputHeadIsEmbedding(config, view)) {
      // The tied output head and the embedding are different reads of one tensor.
      const tied = config.tiedEmbeddings;
      reads.push({ name: tied ? 'token_embd.weight' : 'output.weight', slice: { rows: view.vocab }, as: tied ? 'output head' : undefined });
    }
  }
  return reads;
}

/** Bytes of the file a shard reads (for the memory planner and for load progress). */
export function shardReadBytes(file: GGUFFile, config: LlamaConfig, view: ShardView): number {
  return plannedReads(config, view).reduce((sum, r) => sum + sliceBytes(file, file.tensor(r.name), r.slice), 0);
}

/** What a shard puts on the GPU, made from its planned reads: the loader uploads exactly these, the memory planner counts them. */
export type PlannedUpload =
  /** A 1-D tensor (a norm's weights, a bias), or a range of its elements, uploaded as f32 values. */
  | { kind: 'vector'; name: string; tensor: GGUFTensorInfo; elements: Range }
  /**
   * A matrix: one read, or several stacked by rows (a layer's Q, K and V), each a segment.
   * `name` is how the loader finds it (a tensor name, 'output head', or a stack's name).
   */
  | {
      kind: 'matrix';
      name: string;
      label: string;
      type: GGMLType;
      rows: number;
      cols: number;
      segments: Array<WeightSegment & { tensor: string }>;
      /** GPTQ act-order: the input feature each column multiplies (every segment's tensor has this order). */
      inputOrder?: Int32Array;
    };

/** A tensor's act-order permutation, checked to be one of its columns (a loader's bug otherwise). */
function checkedInputOrder(file: GGUFFile, t: GGUFTensorInfo): Int32Array | undefined {
  const order = t.inputOrder;
  if (!order) return undefined;
  const cols = t.shape[0]!;
  const seen = new Uint8Array(cols);
  const bad = order.length !== cols ? -1 : order.findIndex((c) => !(c >= 0 && c < cols) || seen[c]++ !== 0);
  if (order.length !== cols || bad >= 0) {
    throw new ModelFormatError({
      file: file.source.name,
      tensor: t.name,
      problem: `${t.name}: its input order is not a permutation of its ${cols} columns (${order.length !== cols ? `${order.length} entries` : `entry ${bad} is ${order[bad]}`})`,
      fix: 'The act-order (g_idx) of this layer was read wrongly; check the checkpoint and the loader',
    });
  }
  return order;
}

/** Both absent, or the same permutation. */
function sameOrder(a: Int32Array | undefined, b: Int32Array | undefined): boolean {
  return a === b || (a !== undefined && b !== undefined && a.length === b.length && a.every((c, i) => c === b[i]));
}

/** The widest input of a weight with an act-order (0: none): the matmul's gather scratch is this wide. */
export function orderedInputWidth(uploads: readonly PlannedUpload[]): number {
  return uploads.reduce((widest, u) => (u.kind === 'matrix' && u.inputOrder ? Math.max(widest, u.cols) : widest), 0);
}

/** GPU bytes of an act-order weight's order buffer (u32 per column). */
export const inputOrderBytes = (cols: number): number => Math.max(16, align16(cols * 4));

/** The GPU buffers a shard's reads become, in read order (see PlannedUpload). */
export function plannedUploads(file: GGUFFile, config: LlamaConfig, view: ShardView): PlannedUpload[] {
  const reads = plannedReads(config, view);
  const uploads: PlannedUpload[] = [];
  for (let i = 0; i < reads.length; ) {
    const t = file.tensor(reads[i]!.name);
    if (t.shape.length === 1) {
      uploads.push({ kind: 'vector', name: t.name, tensor: t, elements: reads[i]!.slice.rows ?? { start: 0, end: t.shape[0]! } });
      i++;
      continue;
    }
    // A run of reads of one stack becomes one weight if they share a type and width.
    const stack = reads[i]!.stack;
    let end = i + 1;
    while (stack !== undefined && end < reads.length && reads[end]!.stack === stack) end++;
    const matrices = reads.slice(i, end).map((read) => {
      const tensor = file.tensor(read.name);
      return { read, type: tensor.type, inputOrder: checkedInputOrder(file, tensor), ...fileRows(file, tensor, read.slice) };
    });
    const first = matrices[0]!;
    const stacked = matrices.length > 1 && matrices.every((m) => m.type === first.type && m.cols === first.cols && sameOrder(m.inputOrder, first.inputOrder));
    for (const group of stacked ? [matrices] : matrices.map((m) => [m])) {
      const { read, type, cols, inputOrder } = group[0]!;
      const name = stacked ? stack! : (read.as ?? read.name);
      const segments = group.map((m) => ({ tensor: m.read.name, rows: m.rows, at: m.at }));
      const rows = segments.reduce((sum, segment) => sum + segment.rows, 0);
      uploads.push({ kind: 'matrix', name, label: name, type, rows, cols, segments, ...(inputOrder ? { inputOrder } : {}) });
    }
    i = end;
  }
  return uploads;
}

// ---------------------------------------------------------------------------------------------
// Streaming the bytes to the GPU
//
// Every weight is cut into chunks of whole rows (LOAD_CHUNK_BYTES of file bytes at most; a
// stacked weight's chunks each come from one of its segments), read
// into a small ring of reused host buffers, repacked into one more (unless its GPU layout is its
// file layout, as for F32/F16 rows of whole groups of 8 and the word-sized quant types: then the
// read buffer goes to the queue as it is) and written into the weight's GPU buffer at the rows'
// place. While one chunk is repacked and written, the next READ_AHEAD are being read (file reads
// run on the runtime's I/O threads). Fresh host memory is expensive (every new page faults), so
// nothing is allocated per tensor or per chunk: the only new memory a load touches is the GPU's.

/** File bytes per chunk: small enough that the reused buffers stay in cache, big enough that per-chunk costs vanish. */
export const LOAD_CHUNK_BYTES = 4 * 1024 * 1024;

/** Bytes handed to the queue between submits, so the queue's staging memory is recycled as the load goes. */
const FLUSH_BYTES = 64 * 1024 * 1024;

/** Where a weight's rows are in the file: row r is `length` bytes at `offset + r × stride`. */
export interface FileRows {
  offset: number;
  stride: number;
  /** File bytes of one row (= stride for whole rows; less for a column slice). */
  length: number;
}

/** `rows` consecutive rows of a weight, read from `at`. */
export interface WeightSegment {
  rows: number;
  at: FileRows;
}

/**
 * A weight to upload: rows of `cols` values of `type`, read from one or more places in the file
 * (segments, stacked by rows in order: a layer's Q, K and V rows make one weight).
 */
export interface WeightRead {
  label: string;
  type: GGMLType;
  cols: number;
  segments: WeightSegment[];
}

export interface StreamOptions {
  /** File bytes per chunk (default LOAD_CHUNK_BYTES); tests use tiny ones to cross chunk boundaries. */
  chunkBytes?: number;
  /** Chunks read ahead of the one being repacked (default READ_AHEAD). */
  readAhead?: number;
  /** Called after each chunk is read, with the bytes read so far. */
  onRead?: (bytesDone: number) => void;
}

/** One chunk of the load: `count` pieces of `length` file bytes `stride` apart, and what to do with them once read. */
interface LoadStep {
  offset: number;
  length: number;
  stride: number;
  count: number;
  consume(data: Uint8Array): void;
}

const stepBytes = (step: LoadStep): number => step.length * step.count;

/** Reads a step's bytes into `target`, in place where the source can. */
async function readStep(source: ByteSource, step: LoadStep, target: Uint8Array): Promise<void> {
  const readAt = (offset: number, into: Uint8Array): Promise<void> =>
    source.readInto ? source.readInto(offset, into) : source.read(offset, into.length).then((bytes) => into.set(bytes));
  if (step.count === 1) return readAt(step.offset, target.subarray(0, step.length));
  const reads: Promise<void>[] = [];
  for (let i = 0; i < step.count; i++) {
    reads.push(readAt(step.offset + i * step.stride, target.subarray(i * step.length, (i + 1) * step.length)));
    if (reads.length === 256) await Promise.all(reads.splice(0));
  }
  await Promise.all(reads);
}

/** One binding part being uploaded: its buffer (made at its first chunk) and the last scale written. */
interface UploadTarget {
  layout: GpuLayout;
  buffer?: GPUBuffer;
  lastScale: number;
}

/** Turns weights into load steps and writes chunks to the GPU; one per load. */
class WeightUploader {
  private scratch = new Uint8Array(0);
  private unflushed = 0;
  private readonly maxBindingBytes: number;

  constructor(
    private readonly gpu: GpuContext,
    private readonly chunkBytes: number,
  ) {
    this.maxBindingBytes = Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize);
  }

  /**
   * The steps that upload a weight as binding-sized row ranges (`bindingParts`),
   * chunk by chunk; a chunk never straddles two segments (a part may). `parts` is filled as the
   * steps run; `done` is called after the last one.
   */
  steps(w: WeightRead, parts: GpuWeight[], done?: () => void): LoadStep[] {
    const rows = w.segments.reduce((sum, segment) => sum + segment.rows, 0);
    const rowLength = w.segments[0]!.at.length;
    if (w.segments.some((segment) => segment.at.length !== rowLength || !(segment.rows >= 1))) {
      throw new Error(`${w.label}: segments must be non-empty runs of rows of one length`);
    }
    let split: Array<{ first: number; rows: number }>;
    try {
      split = bindingParts(w.type, rows, w.cols, this.maxBindingBytes);
    } catch (error) {
      throw new Error(`${w.label}: ${(error as Error).message}`);
    }
    // The segment holding a row of the stacked weight, and where that row is in it.
    const segmentAt = (row: number): { at: FileRows; row: number; rows: number } => {
      let start = 0;
      for (const segment of w.segments) {
        if (row < start + segment.rows) return { at: segment.at, row: row - start, rows: segment.rows };
        start += segment.rows;
      }
      throw new Error(`${w.label}: row ${row} is past its ${rows} rows`);
    };
    const steps: LoadStep[] = [];
    for (const part of split) {
      const label = split.length > 1 ? `${w.label}[${part.first}..${part.first + part.rows})` : w.label;
      const layout = gpuLayout(w.type, part.rows, w.cols);
      let rowsPerChunk = Math.max(1, Math.floor(this.chunkBytes / rowLength));
      // A chunk of a split type starts on an even block where it can, so its scales start on a
      // whole word (after a segment that ends on an odd block, see writeRows).
      if (layout.scalesOffset > 0 && layout.blocksPerRow % 2 === 1 && rowsPerChunk % 2 === 1) rowsPerChunk += rowsPerChunk === 1 ? 1 : -1;
      const target: UploadTarget = { layout, lastScale: 0 };
      for (let first = 0; first < part.rows; ) {
        const { at, row: inSegment, rows: segmentRows } = segmentAt(part.first + first);
        const count = Math.min(rowsPerChunk, part.rows - first, segmentRows - inSegment);
        const whole = at.stride === at.length;
        const chunkFirst = first;
        steps.push({
          offset: at.offset + inSegment * at.stride,
          length: whole ? count * at.length : at.length,
          stride: whole ? 0 : at.stride,
          count: whole ? 1 : count,
          consume: (data) => {
            if (!target.buffer) {
              target.buffer = storageBuffer(this.gpu.device, label, layout.totalWords * 4);
              parts.push({ buffer: target.buffer, type: w.type, rows: part.rows, cols: w.cols, label, bytes: target.buffer.size, layout, rowOffset: part.first, totalRows: rows });
            }
            this.writeRows(target, data, chunkFirst, count);
          },
        });
        first += count;
      }
    }
    if (done) {
      const last = steps.at(-1)!;
      const consume = last.consume;
      last.consume = (data) => {
        consume(data);
        done();
      };
    }
    return steps;
  }

  /**
   * Repacks `count` rows (from row `first` of the part) and writes them in place in its buffer.
   * Writes are whole words: rows that start on an odd block (after a segment of an odd number of
   * blocks) share their first scales word with the rows before, whose last scale is kept for it.
   */
  private writeRows(target: UploadTarget, data: Uint8Array, first: number, count: number): void {
    const { layout, buffer } = target;
    const queue = this.gpu.device.queue;
    const at = rowsPlacement(layout, first, count);
    if (isVerbatimLayout(layout)) {
      queue.writeBuffer(buffer!, at.quantsAt, data, 0, at.quantsBytes); // whole words: word-sized blocks, rows of 8 floats
      this.wrote(at.quantsBytes);
      return;
    }
    // Scratch: the quants, a word for the half word kept from the rows before, the scales.
    const lead = at.scalesAt % 4; // 2 when the first scale is the high half of a word
    const scalesAt = at.quantsBytes + 4;
    const scalesEnd = at.scalesBytes > 0 ? scalesAt - lead + Math.ceil((lead + at.scalesBytes) / 4) * 4 : scalesAt;
    if (this.scratch.length < scalesEnd + 4) this.scratch = new Uint8Array(scalesEnd + 4);
    const quants = this.scratch.subarray(0, at.quantsBytes);
    const scales = at.scalesBytes > 0 ? this.scratch.subarray(scalesAt, scalesAt + Math.ceil(at.scalesBytes / 4) * 4) : undefined;
    repackRows(layout, data, count, quants, scales);
    queue.writeBuffer(buffer!, at.quantsAt, quants);
    let written = at.quantsBytes;
    if (scales) {
      const view = new DataView(this.scratch.buffer, this.scratch.byteOffset);
      if (lead > 0) view.setUint16(scalesAt - 2, target.lastScale, true);
      this.scratch.fill(0, scalesAt + at.scalesBytes, scalesEnd); // the pad after an odd last scale is the scales region's own
      target.lastScale = view.getUint16(scalesAt + at.scalesBytes - 2, true);
      queue.writeBuffer(buffer!, at.scalesAt - lead, this.scratch.subarray(scalesAt - lead, scalesEnd));
      written += scalesEnd - (scalesAt - lead);
    }
    this.wrote(written);
  }

  private wrote(bytes: number): void {
    this.unflushed += bytes;
    if (this.unflushed >= FLUSH_BYTES) this.flush();
  }

  /** Hands the pending writes to the GPU, so their staging memory can be reused. */
  flush(): void {
    this.gpu.device.queue.submit([]);
    this.unflushed = 0;
  }
}

/**
 * Chunks read ahead of the one being consumed: enough to hide a network round trip per chunk for
 * URL sources; a local file needs one.
 */
export const READ_AHEAD = 3;

/**
 * Runs the steps in order, reading the next READ_AHEAD steps while step i is consumed, through
 * READ_AHEAD + 1 reused buffers. Returns the time spent waiting for reads, and the rest (loadMs).
 */
async function runSteps(
  source: ByteSource,
  steps: readonly LoadStep[],
  onRead: ((bytesDone: number) => void) | undefined,
  readAhead: number,
): Promise<{ read: number; upload: number }> {
  const ms = { read: 0, upload: 0 };
  if (steps.length === 0) return ms;
  const largest = steps.reduce((max, step) => Math.max(max, stepBytes(step)), 0);
  const buffers = Array.from({ length: Math.min(Math.max(1, readAhead) + 1, steps.length) }, () => new Uint8Array(largest));
  const pending: Promise<void>[] = [];
  const startRead = (i: number) => {
    const read = readStep(source, steps[i]!, buffers[i % buffers.length]!);
    read.catch(() => {}); // a failure surfaces where the step is awaited
    pending[i % buffers.length] = read;
  };
  for (let i = 0; i < buffers.length; i++) startRead(i);
  let done = 0;
  for (let i = 0; i < steps.length; i++) {
    const waitStart = performance.now();
    await pending[i % buffers.length];
    const workStart = performance.now();
    ms.read += workStart - waitStart;
    const bytes = stepBytes(steps[i]!);
    done += bytes;
    onRead?.(done);
    steps[i]!.consume(buffers[i % buffers.length]!.subarray(0, bytes));
    // This buffer is free again: read a later step into it while the next ones are consumed.
    if (i + buffers.length < steps.length) startRead(i + buffers.length);
    ms.upload += performance.now() - workStart;
  }
  return ms;
}

/**
 * Streams weights from `source` into GPU buffers in their repacked layouts (each as binding-sized
 * parts, as `bindingParts` cuts them), reading the next chunk while the current one is repacked.
 */
export async function uploadWeights(
  gpu: GpuContext,
  source: ByteSource,
  weights: readonly WeightRead[],
  options: StreamOptions = {},
): Promise<{ weights: GpuWeight[][]; loadMs: { read: number; upload: number } }> {
  const uploader = new WeightUploader(gpu, options.chunkBytes ?? LOAD_CHUNK_BYTES);
  const parts = weights.map(() => [] as GpuWeight[]);
  const steps = weights.flatMap((w, i) => uploader.steps(w, parts[i]!));
  const loadMs = await runSteps(source, steps, options.onRead, options.readAhead ?? READ_AHEAD);
  uploader.flush();
  return { weights: parts, loadMs };
}

/** Where a planned read's rows are in the file, and its shape. */
function fileRows(file: GGUFFile, t: GGUFTensorInfo, slice: Slice): { rows: number; cols: number; at: FileRows } {
  const stride = rowBytes(t);
  if (slice.rows) {
    return { rows: rangeLength(slice.rows), cols: t.shape[0]!, at: { offset: t.offset + slice.rows.start * stride, stride, length: stride } };
  }
  if (slice.columns) {
    const span = columnSpan(file, t, slice.columns);
    return { rows: rowCount(t), cols: rangeLength(slice.columns), at: { offset: t.offset + span.offset, stride, length: span.length } };
  }
  return { rows: rowCount(t), cols: t.shape[0]!, at: { offset: t.offset, stride, length: stride } };
}

export async function loadLlamaWeights(
  gpu: GpuContext,
  file: GGUFFile,
  config: LlamaConfig,
  view: ShardView,
  onProgress?: LoadProgress,
  options: Pick<StreamOptions, 'chunkBytes' | 'readAhead'> = {},
): Promise<LlamaWeights> {
  const reads = plannedReads(config, view);
  const total = reads.reduce((sum, r) => sum + sliceBytes(file, file.tensor(r.name), r.slice), 0);
  let gpuBytes = 0;
  onProgress?.(0, total);

  // Upload every planned read once: 1-D tensors (norm weights) as f32 vectors, the rest as
  // matrices (a layer's Q, K and V stacked into one where they can be).
  const uploaded = new Map<string, GpuMatrix | GPUBuffer>();
  const uploader = new WeightUploader(gpu, options.chunkBytes ?? LOAD_CHUNK_BYTES);
  const steps: LoadStep[] = [];
  const uploads = plannedUploads(file, config, view);
  for (const upload of uploads) {
    if (upload.kind === 'vector') {
      const t = upload.tensor;
      steps.push({
        offset: t.offset,
        length: t.byteLength,
        stride: 0,
        count: 1,
        consume: (data) => {
          const values = dequantize(t.type, data, t.shape[0]!).subarray(upload.elements.start, upload.elements.end);
          gpuBytes += values.byteLength;
          uploaded.set(upload.name, storageBuffer(gpu.device, upload.name, values));
        },
      });
      continue;
    }
    // (A column slice as wide as the row is whole rows: read in one piece per chunk.)
    const { label, type, cols, segments, inputOrder } = upload;
    const parts: GpuWeight[] = [];
    uploaded.set(upload.name, parts);
    const done = () => {
      gpuBytes += parts.reduce((sum, p) => sum + p.bytes, 0);
      if (inputOrder) gpuBytes += attachInputOrder(gpu, parts, inputOrder).size;
    };
    steps.push(...uploader.steps({ label, type, cols, segments }, parts, done));
  }
  let loadMs: { read: number; upload: number };
  try {
    loadMs = await runSteps(file.source, steps, (done) => onProgress?.(done, total), options.readAhead ?? READ_AHEAD);
  } catch (error) {
    for (const value of uploaded.values()) for (const buffer of Array.isArray(value) ? matrixBuffers(value) : [value]) buffer.destroy();
    throw error;
  } finally {
    file.source.evict?.(); // bytes a source made to serve the reads (AWQ/GPTQ layers) are not needed again
  }
  uploader.flush();
  const matrix = (name: string) => uploaded.get(name) as GpuMatrix;
  const vector = (name: string) => uploaded.get(name) as GPUBuffer;

  const weights: LlamaWeights = { layers: [], gpuBytes, loadMs, orderedInputWidth: orderedInputWidth(uploads) };
  if (view.embeds) weights.tokenEmbedding = matrix('token_embd.weight');
  if (config.ropeFreqsTensor) weights.ropeFrequencyFactors = uploaded.get(config.ropeFreqsTensor) as GPUBuffer | undefined;
  for (let l = view.layers.start; l < view.layers.end; l++) {
    const qkv = uploaded.has(qkvName(l))
      ? { qkv: matrix(qkvName(l)) }
      : { query: matrix(`blk.${l}.attn_q.weight`), key: matrix(`blk.${l}.attn_k.weight`), value: matrix(`blk.${l}.attn_v.weight`) };
    const tensor = (name: string, kind = 'weight') => `blk.${l}.${name}.${kind}`;
    weights.layers.push({
      attentionNorm: vector(`blk.${l}.attn_norm.weight`),
      ...qkv,
      qkvBias: config.family.qkvBias ? { query: vector(tensor('attn_q', 'bias')), key: vector(tensor('attn_k', 'bias')), value: vector(tensor('attn_v', 'bias')) } : undefined,
      qkNorm: config.family.qkNorm ? { query: vector(tensor('attn_q_norm')), key: vector(tensor('attn_k_norm')) } : undefined,
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

/**
 * Uploads an act-order weight's input order (u32 per column) and gives it to every part of the
 * weight (src/shaders/matmul.ts gathers the weight's input by it). Returns the buffer.
 */
export function attachInputOrder(gpu: GpuContext, parts: GpuMatrix, order: Int32Array): GPUBuffer {
  const buffer = storageBuffer(gpu.device, `${parts[0]!.label} input order`, order);
  for (const part of parts) part.inputOrder = buffer;
  return buffer;
}

/** The GPU buffers of a weight: its parts and their input order. */
function matrixBuffers(parts: GpuMatrix): GPUBuffer[] {
  return [...parts.map((p) => p.buffer), ...(parts[0]?.inputOrder ? [parts[0].inputOrder] : [])];
}

export function destroyWeights(w: LlamaWeights): void {
  const buffers = new Set<GPUBuffer>();
  const add = (x: GpuMatrix | GPUBuffer | undefined) => {
    if (Array.isArray(x)) for (const buffer of matrixBuffers(x)) buffers.add(buffer);
    else if (x) buffers.add(x);
  };
  add(w.tokenEmbedding);
  add(w.outputNorm);
  add(w.ropeFrequencyFactors);
  add(w.output); // may share buffers with the embedding: the set destroys each once
  for (const { qkvBias, qkNorm, ...layer } of w.layers) {
    for (const value of [...Object.values(layer), ...Object.values(qkvBias ?? {}), ...Object.values(qkNorm ?? {})]) add(value as GpuMatrix | GPUBuffer);
  }
  for (const buffer of buffers) buffer.destroy();
}

/**
 * Uploads one weight held in memory (`rows × cols` of `type`, GGUF row-major bytes) through the
 * same path as a model load: binding-sized parts in the repacked layout. For tests and benchmarks.
 */
export async function uploadWeightBytes(gpu: GpuContext, label: string, type: GGMLType, rows: number, cols: number, bytes: Uint8Array): Promise<GpuMatrix> {
  const rowLength = bytes.length / rows;
  const read: WeightRead = { label, type, cols, segments: [{ rows, at: { offset: 0, stride: rowLength, length: rowLength } }] };
  const { weights } = await uploadWeights(gpu, bytesSource(bytes, label), [read]);
  return weights[0]!;
}
