// The KV cache: per layer, keys and values of every position so far, for this shard's KV heads.
// Layout [contextLength][localKvHeads * headDim] f32 (see src/shaders/attention.ts).

import type { GpuContext } from '../gpu/device.ts';
import { storageBuffer } from '../gpu/kernel.ts';
import type { LlamaConfig } from '../model/config.ts';
import { rangeLength, type ShardView } from './shard-view.ts';

export interface KvCache {
  contextLength: number;
  layers: Array<{ keys: GPUBuffer; values: GPUBuffer }>;
  bytes: number;
}

/** Bytes of K and V for one shard at a given context length (the memory planner uses this too). */
export function kvCacheBytes(config: LlamaConfig, view: ShardView, contextLength: number): number {
  return 2 * rangeLength(view.layers) * contextLength * rangeLength(view.kvHeads) * config.headDim * 4;
}

export function createKvCache(gpu: GpuContext, config: LlamaConfig, view: ShardView, contextLength: number): KvCache {
  const perLayer = contextLength * rangeLength(view.kvHeads) * config.headDim * 4;
  const layers = [];
  for (let layer = view.layers.start; layer < view.layers.end; layer++) {
    layers.push({
      keys: storageBuffer(gpu.device, `layer ${layer} keys`, perLayer),
      values: storageBuffer(gpu.device, `layer ${layer} values`, perLayer),
    });
  }
  return { contextLength, layers, bytes: kvCacheBytes(config, view, contextLength) };
}

export function destroyKvCache(cache: KvCache): void {
  for (const { keys, values } of cache.layers) {
    keys.destroy();
    values.destroy();
  }
}
