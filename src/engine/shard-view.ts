// A shard view: the part of the model one device holds. The forward pass runs over a view and
// never asks how many shards exist; the whole model is simply the view that holds everything.

import type { LlamaConfig } from '../model/config.ts';

/** A half-open range [start, end). */
export interface Range {
  start: number;
  end: number;
}

export const rangeLength = (r: Range): number => r.end - r.start;

export interface ShardView {
  /** Layers this shard runs (pipeline parallel: a contiguous range). */
  layers: Range;
  /** Query heads this shard holds (tensor parallel: whole heads). */
  heads: Range;
  /** KV heads this shard holds; with GQA each local query head maps into this range. */
  kvHeads: Range;
  /** FFN hidden columns (gate/up rows, down columns). */
  ffn: Range;
  /** Vocabulary rows of the output head. */
  vocab: Range;
  /** First pipeline stage: embeds tokens. */
  embeds: boolean;
  /** Last pipeline stage: computes logits and samples. */
  samples: boolean;
}

/** The view that holds the whole model: one device, no communication. */
export function wholeModelView(config: LlamaConfig): ShardView {
  return {
    layers: { start: 0, end: config.nLayers },
    heads: { start: 0, end: config.nHeads },
    kvHeads: { start: 0, end: config.nKvHeads },
    ffn: { start: 0, end: config.ffnDim },
    vocab: { start: 0, end: config.vocabSize },
    embeds: true,
    samples: true,
  };
}
