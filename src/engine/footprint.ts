// What a view costs on its device, and whether it fits, decided from the file's header before any
// byte of weights is read or any buffer allocated: the GPU layout of every planned upload (a read,
// or a layer's Q, K and V stacked into one weight; split over storage bindings as the loader does;
// a GPTQ act-order weight's order buffer), the KV cache (`kvCacheBytes`), the scratch activations
// of `createActivations` (with the act-order gather's), and the file bytes the view reads. The
// one-device model checks its whole-model view here; the sharding planner (src/sharding/plan.ts)
// cuts the views and checks each of them here too.

import { align16 } from '../gpu/kernel.ts';
import type { LlamaConfig } from '../model/config.ts';
import { ggmlTypeName, type GGMLType } from '../model/ggml-type.ts';
import type { GGUFFile } from '../model/gguf.ts';
import { bindingParts, gpuLayout, gpuRowBytes, repackableTypes, rowsPerBinding } from '../model/repack.ts';
import { kvCacheBytes, kvLayerBytes, type KvGeometry } from './kv-cache.ts';
import { activationSizes } from './llama.ts';
import { rangeLength, type ShardView } from './shard-view.ts';
import { inputOrderBytes, orderedInputWidth, plannedUploads, shardReadBytes, type PlannedUpload } from './weights.ts';

/** A device as the footprint sees it: its buffer limits and, from --gpu-memory, a memory budget. */
export interface DeviceLimits {
  name: string;
  maxBufferSize: number;
  maxStorageBufferBindingSize: number;
  /** From --gpu-memory: WebGPU does not expose how much memory a device has. */
  memoryBudgetBytes?: number;
}

export interface ShardPlanErrorDetails {
  /** What does not work, with the numbers. */
  problem: string;
  /** What to do: more shards, a smaller --ctx, a smaller quant type, a valid tp... */
  suggestion: string;
  /** The shard at fault, when one is. */
  rank?: number;
}

/**
 * A placement that cannot work: a split with no valid assignment (src/sharding/plan.ts), or a view
 * — a shard's, or the whole model on one device — that does not fit its device.
 */
export class ShardPlanError extends Error {
  override name = 'ShardPlanError';
  readonly problem: string;
  readonly suggestion: string;
  readonly rank?: number;

  constructor(details: ShardPlanErrorDetails) {
    super(`${details.problem}. ${details.suggestion}`);
    this.problem = details.problem;
    this.suggestion = details.suggestion;
    this.rank = details.rank;
  }
}

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

/** Bytes for people: "1.50 GiB", "12.00 MiB", "3.2 KiB", "17 B". */
export function formatBytes(bytes: number): string {
  if (bytes >= GiB) return `${(bytes / GiB).toFixed(2)} GiB`;
  if (bytes >= MiB) return `${(bytes / MiB).toFixed(2)} MiB`;
  if (bytes >= KiB) return `${(bytes / KiB).toFixed(1)} KiB`;
  return `${bytes} B`;
}

/** What a view puts on its device (GPU bytes) and reads from the file. */
export interface ViewFootprint {
  bytes: { weights: number; kvCache: number; activations: number; total: number };
  fileBytesRead: number;
}

/** How a view will run: the KV cache's shape and the most tokens in one step. */
export interface ViewRun {
  geometry: KvGeometry;
  maxBatchTokens: number;
  /** Positions per sequence (for the messages). */
  contextLength: number;
}

/** Who the view is, for the messages: "shard 1 (stage 0, tp rank 1, gpu1)"; and how many shards there are. */
export interface ViewOwner {
  who: string;
  rank: number;
  shards: number;
}

/** GPU bytes of a `rows × cols` weight uploaded as the loader does (parts under one binding). */
function gpuMatrixBytes(type: GGMLType, rows: number, cols: number, maxBindingBytes: number): number {
  return bindingParts(type, rows, cols, maxBindingBytes).reduce((bytes, part) => bytes + gpuLayout(type, part.rows, cols).totalWords * 4, 0);
}

const f32Buffer = (values: number) => Math.max(16, align16(values * 4)); // storageBuffer: ≥ 16 bytes, whole vec4s

/** GPU bytes of a view's weights; throws when a type has no GPU layout or one row does not fit a storage binding. */
function weightBytes(uploads: readonly PlannedUpload[], device: DeviceLimits, owner: ViewOwner): number {
  const maxBinding = Math.min(device.maxStorageBufferBindingSize, device.maxBufferSize);
  const known = new Set<number>(repackableTypes());
  let bytes = 0;
  for (const upload of uploads) {
    if (upload.kind === 'vector') {
      bytes += f32Buffer(rangeLength(upload.elements)); // 1-D weights (norms, biases) are uploaded as f32
      continue;
    }
    const { label, type, rows, cols } = upload;
    if (!known.has(type)) {
      throw new ShardPlanError({
        rank: owner.rank,
        problem: `${owner.who}: tensor ${upload.segments[0]!.tensor} is ${ggmlTypeName(type)}, which has no GPU layout`,
        suggestion: `Use a file quantized to one of ${[...known].map(ggmlTypeName).join(', ')}`,
      });
    }
    if (rowsPerBinding(type, cols, maxBinding) < 1) {
      throw new ShardPlanError({
        rank: owner.rank,
        problem: `${owner.who}: one row of ${label} (${cols} ${ggmlTypeName(type)} values, ${formatBytes(gpuRowBytes(type, cols))} on the GPU) does not fit the device's ${formatBytes(maxBinding)} storage binding`,
        suggestion: 'Use a device with larger maxStorageBufferBindingSize/maxBufferSize, or more tensor-parallel shards',
      });
    }
    bytes += gpuMatrixBytes(type, rows, cols, maxBinding) + (upload.inputOrder ? inputOrderBytes(cols) : 0);
  }
  return bytes;
}

/**
 * What `view` costs on `device`, checked against its buffer limits and memory budget. Throws
 * ShardPlanError, with the numbers and what to change, when it does not fit.
 */
export function viewFootprint(file: GGUFFile, config: LlamaConfig, view: ShardView, device: DeviceLimits, run: ViewRun, owner: ViewOwner): ViewFootprint {
  const { geometry, maxBatchTokens } = run;
  const { who, rank } = owner;
  const maxBinding = Math.min(device.maxStorageBufferBindingSize, device.maxBufferSize);
  const limitName = device.maxStorageBufferBindingSize <= device.maxBufferSize ? 'maxStorageBufferBindingSize' : 'maxBufferSize';
  const uploads = plannedUploads(file, config, view);
  const weights = weightBytes(uploads, device, owner);

  // One layer's keys (or values) is one buffer: [cache positions][kvHeads · headDim] f32.
  const kvHeads = rangeLength(view.kvHeads);
  const kvRowBytes = kvHeads * config.headDim * 4;
  const kvLayer = kvLayerBytes(config, view, geometry);
  if (kvLayer > maxBinding) {
    const moreShards = kvHeads > 1 ? ', or more tensor-parallel shards (fewer KV heads per shard)' : '';
    throw new ShardPlanError({
      rank,
      problem: `${who}: one layer's KV buffer needs ${formatBytes(kvLayer)} (${geometry.totalBlocks * geometry.blockSize} cache positions × ${kvHeads} KV heads × headDim ${config.headDim} × 4 bytes), over the device's ${limitName} of ${formatBytes(maxBinding)}`,
      suggestion: `Use a smaller --ctx or fewer parallel sequences (up to ${Math.floor(maxBinding / kvRowBytes)} cache positions fit)${moreShards}`,
    });
  }

  const buffers = Object.entries(activationSizes(config, view, maxBatchTokens, geometry, orderedInputWidth(uploads))).map(([label, bytes]) => ({ label, bytes }));
  const largest = buffers.reduce((a, b) => (b.bytes > a.bytes ? b : a));
  if (largest.bytes > maxBinding) {
    throw new ShardPlanError({
      rank,
      problem: `${who}: the "${largest.label}" activation buffer for ${maxBatchTokens} tokens needs ${formatBytes(largest.bytes)}, over the device's ${limitName} of ${formatBytes(maxBinding)}`,
      suggestion: 'Use a smaller batch (fewer tokens per step)',
    });
  }

  const kvCache = kvCacheBytes(config, view, geometry);
  const activations = buffers.reduce((sum, b) => sum + b.bytes, 0);
  const footprint: ViewFootprint = {
    bytes: { weights, kvCache, activations, total: weights + kvCache + activations },
    fileBytesRead: shardReadBytes(file, config, view),
  };
  checkBudget(footprint, device, run, owner);
  return footprint;
}

function checkBudget({ bytes }: ViewFootprint, device: DeviceLimits, run: ViewRun, owner: ViewOwner): void {
  const budget = device.memoryBudgetBytes;
  if (budget === undefined || bytes.total <= budget) return;
  const { geometry } = run;
  const { weights, kvCache, activations, total } = bytes;
  // KV bytes per cache position, and the largest whole-block context that fits what is left.
  const kvPerPosition = kvCache / (geometry.totalBlocks * geometry.blockSize);
  const fittingPositions = Math.floor((budget - weights - activations) / kvPerPosition / geometry.maxSequences);
  const fittingContext = Math.floor(fittingPositions / geometry.blockSize) * geometry.blockSize;
  const remedies = [`more shards (now ${owner.shards})`];
  if (fittingContext >= 1) remedies.push(`a smaller --ctx (up to ${fittingContext} fits)`);
  // Activations grow with the tokens per step: worth naming when they are a real share.
  if (activations > total / 4) remedies.push(`fewer tokens per step (now ${run.maxBatchTokens})`);
  remedies.push('a smaller quant type');
  throw new ShardPlanError({
    rank: owner.rank,
    problem: `${owner.who} needs ${formatBytes(total)} (weights ${formatBytes(weights)} + KV cache ${formatBytes(kvCache)} for context ${run.contextLength} + activations ${formatBytes(activations)}), over its memory budget of ${formatBytes(budget)}`,
    suggestion: `Use ${remedies.slice(0, -1).join(', ')} or ${remedies.at(-1)}`,
  });
}
