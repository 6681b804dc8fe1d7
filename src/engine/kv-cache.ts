// The paged KV cache: per layer, keys and values in blocks of `blockSize` positions, for this
// shard's KV heads. Sequences take blocks when they start and give them back when they end, so
// many sequences share one pool (src/shaders/attention.ts has the row layout).

import type { GpuContext } from '../gpu/device.ts';
import { storageBuffer } from '../gpu/kernel.ts';
import type { LlamaConfig } from '../model/config.ts';
import { rangeLength, type ShardView } from './shard-view.ts';

/** Positions per block: small enough to waste little at a sequence's end, big enough to keep tables short. */
export const KV_BLOCK_SIZE = 16;

/** The shape of the cache pool: how many sequences, how long each may get, how many blocks in all. */
export interface KvGeometry {
  blockSize: number;
  /** Logical blocks per sequence: ceil(contextLength / blockSize). */
  blocksPerSequence: number;
  /** Sequences that can run at once (slots in the block table). */
  maxSequences: number;
  /** Physical blocks in the pool. Fewer than maxSequences × blocksPerSequence means admission waits for free blocks. */
  totalBlocks: number;
  /**
   * Rows one sequence may sample in one step: 1, or 1 + the draft length when speculative
   * decoding verifies drafted tokens (every drafted position's next-token logits are wanted).
   */
  samplesPerSequence: number;
}

export function kvGeometry(contextLength: number, maxSequences = 1, cacheTokens?: number, samplesPerSequence = 1): KvGeometry {
  const blocksPerSequence = Math.ceil(contextLength / KV_BLOCK_SIZE);
  const totalBlocks = Math.max(blocksPerSequence, Math.ceil((cacheTokens ?? maxSequences * contextLength) / KV_BLOCK_SIZE));
  return { blockSize: KV_BLOCK_SIZE, blocksPerSequence, maxSequences, totalBlocks, samplesPerSequence };
}

/** Most rows one step samples: what the scratch buffers for logits and best tokens are sized for. */
export function maxSampledRows(geometry: KvGeometry): number {
  return geometry.maxSequences * geometry.samplesPerSequence;
}

export interface KvCache {
  geometry: KvGeometry;
  layers: Array<{ keys: GPUBuffer; values: GPUBuffer }>;
  bytes: number;
}

/** Bytes of one layer's K (or V) buffer for this shard. */
export function kvLayerBytes(config: LlamaConfig, view: ShardView, geometry: KvGeometry): number {
  return geometry.totalBlocks * geometry.blockSize * rangeLength(view.kvHeads) * config.headDim * 4;
}

/** Bytes of K and V for one shard (the memory planner uses this too). */
export function kvCacheBytes(config: LlamaConfig, view: ShardView, geometry: KvGeometry): number {
  return 2 * rangeLength(view.layers) * kvLayerBytes(config, view, geometry);
}

export function createKvCache(gpu: GpuContext, config: LlamaConfig, view: ShardView, geometry: KvGeometry): KvCache {
  const perLayer = kvLayerBytes(config, view, geometry);
  const layers = [];
  for (let layer = view.layers.start; layer < view.layers.end; layer++) {
    layers.push({
      keys: storageBuffer(gpu.device, `layer ${layer} keys`, perLayer),
      values: storageBuffer(gpu.device, `layer ${layer} values`, perLayer),
    });
  }
  return { geometry, layers, bytes: kvCacheBytes(config, view, geometry) };
}

export function destroyKvCache(cache: KvCache): void {
  for (const { keys, values } of cache.layers) {
    keys.destroy();
    values.destroy();
  }
}

/** Hands out sequence slots and cache blocks on the host; the GPU only sees the block table. */
export class BlockAllocator {
  private readonly freeBlocks: number[];
  private readonly freeSlots: number[];
  /** [slot][logical block] = physical block, as uploaded to the GPU. */
  readonly table: Uint32Array;

  constructor(readonly geometry: KvGeometry) {
    this.freeBlocks = Array.from({ length: geometry.totalBlocks }, (_, i) => geometry.totalBlocks - 1 - i);
    this.freeSlots = Array.from({ length: geometry.maxSequences }, (_, i) => geometry.maxSequences - 1 - i);
    this.table = new Uint32Array(geometry.maxSequences * geometry.blocksPerSequence);
  }

  get blocksFree(): number {
    return this.freeBlocks.length;
  }

  get blocksUsed(): number {
    return this.geometry.totalBlocks - this.freeBlocks.length;
  }

  get slotsFree(): number {
    return this.freeSlots.length;
  }

  blocksFor(positions: number): number {
    return Math.ceil(positions / this.geometry.blockSize);
  }

  /** A slot with blocks for `positions` positions, or undefined when the pool cannot hold it now. */
  allocate(positions: number): { slot: number; blocks: number[] } | undefined {
    const count = this.blocksFor(positions);
    if (count > this.geometry.blocksPerSequence || count > this.freeBlocks.length || this.freeSlots.length === 0) return undefined;
    const slot = this.freeSlots.pop()!;
    const blocks = this.freeBlocks.splice(this.freeBlocks.length - count, count).reverse();
    this.table.set(blocks, slot * this.geometry.blocksPerSequence);
    return { slot, blocks };
  }

  release(allocation: { slot: number; blocks: number[] }): void {
    this.freeBlocks.push(...allocation.blocks);
    this.freeSlots.push(allocation.slot);
  }
}
