// Which part of the model each device holds, as the page shows it: taken from the loaded model
// (its shard plan, or the whole model on one device), plus the plain-words story of a step.

import type { Model, Range, ShardView } from '../src/index.ts';
import { h } from './dom.ts';
import { formatBytes, formatCount } from './format.ts';

export type { Range };

export interface ModelShape {
  name: string;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  dim: number;
  ffnDim: number;
  vocabSize: number;
  /** Parameters, counted from the tensor table. */
  parameters: number;
}

/** A shard's view of the model (what the engine's plan says it holds), with its place in the split. */
export interface ShardLayout extends ShardView {
  rank: number;
  /** Pipeline stage and tensor-parallel rank within it. */
  stage: number;
  tpRank: number;
  /** GPU bytes it allocates, when the plan says. */
  gpuBytes?: number;
}

export interface SplitLayout {
  tp: number;
  pp: number;
  shards: ShardLayout[];
}

/** The colors of shards 0, 1, 2, … everywhere on the page (charts, diagram, legend). */
export const shardColors = ['#38d5c4', '#f5b948', '#a78bfa', '#fb7185', '#60a5fa', '#a3e635', '#fb923c', '#f472b6'];
export const shardColor = (rank: number): string => shardColors[rank % shardColors.length]!;

export const rangeLength = (r: Range): number => r.end - r.start;

/** "stories260K.gguf" → "stories260K"; a folder's name stays as it is. */
const fileStem = (name: string): string => name.replace(/\.gguf$/i, '');
const covers = (r: Range, i: number) => i >= r.start && i < r.end;

/** `sourceName`: the file's or folder's name, shown when the model names itself nowhere. */
export function modelShape(model: Model, sourceName: string): ModelShape {
  const c = model.config;
  const name = model.file.metadata.get('general.name');
  const parameters = model.file.tensors.reduce((sum, t) => sum + t.shape.reduce((a, b) => a * b, 1), 0);
  return {
    name: typeof name === 'string' && name.length > 0 ? name : fileStem(sourceName) || c.architecture,
    nLayers: c.nLayers,
    nHeads: c.nHeads,
    nKvHeads: c.nKvHeads,
    headDim: c.headDim,
    dim: c.dim,
    ffnDim: c.ffnDim,
    vocabSize: c.vocabSize,
    parameters,
  };
}

/** The loaded model's real split: its shard plan, or one device holding everything. */
export function splitLayout(model: Model): SplitLayout {
  const plan = model.plan;
  if (plan && plan.shards.length > 0) {
    return {
      tp: plan.tp,
      pp: plan.pp,
      shards: plan.shards.map((s) => ({ rank: s.rank, stage: s.stage, tpRank: s.tpRank, ...s.view, gpuBytes: s.bytes.total })),
    };
  }
  const c = model.config;
  const all = (end: number): Range => ({ start: 0, end });
  return {
    tp: 1,
    pp: 1,
    shards: [
      {
        rank: 0,
        stage: 0,
        tpRank: 0,
        layers: all(c.nLayers),
        heads: all(c.nHeads),
        kvHeads: all(c.nKvHeads),
        ffn: all(c.ffnDim),
        vocab: all(c.vocabSize),
        embeds: true,
        samples: true,
      },
    ],
  };
}

/** The shape the page illustrates before a model is loaded. */
export const exampleShape: ModelShape = {
  name: 'A Llama 3.2 1B-shaped model',
  nLayers: 16,
  nHeads: 32,
  nKvHeads: 8,
  headDim: 64,
  dim: 2048,
  ffnDim: 8192,
  vocabSize: 128256,
  parameters: 1.24e9,
};

/**
 * An even split of `shape` over tp × pp identical devices, drawn before anything is loaded.
 * (The engine's planner makes the real one: it also weighs devices and checks their memory.)
 */
export function previewLayout(shape: ModelShape, tp: number, pp: number): SplitLayout {
  const cut = (total: number, parts: number, i: number): Range => ({ start: Math.floor((total * i) / parts), end: Math.floor((total * (i + 1)) / parts) });
  const group = shape.nHeads / shape.nKvHeads;
  const shards: ShardLayout[] = [];
  for (let stage = 0; stage < pp; stage++) {
    for (let tpRank = 0; tpRank < tp; tpRank++) {
      // Whole KV heads per shard when there are enough; otherwise shards share (replicate) one.
      const heads = tp <= shape.nKvHeads ? scale(cut(shape.nKvHeads, tp, tpRank), group) : cut(shape.nHeads, tp, tpRank);
      shards.push({
        rank: stage * tp + tpRank,
        stage,
        tpRank,
        layers: cut(shape.nLayers, pp, stage),
        heads,
        kvHeads: { start: Math.floor(heads.start / group), end: Math.ceil(heads.end / group) },
        ffn: cut(shape.ffnDim, tp, tpRank),
        vocab: cut(shape.vocabSize, tp, tpRank),
        embeds: stage === 0,
        samples: stage === pp - 1,
      });
    }
  }
  return { tp, pp, shards };
}

const scale = (r: Range, factor: number): Range => ({ start: r.start * factor, end: r.end * factor });

/** The shards that hold layer `layer`, in tensor-parallel order. */
export function shardsOfLayer(layout: SplitLayout, layer: number): ShardLayout[] {
  return layout.shards.filter((s) => covers(s.layers, layer)).sort((a, b) => a.tpRank - b.tpRank);
}

/** The owner of query head `head` in layer `layer`. */
export function ownerOfHead(layout: SplitLayout, layer: number, head: number): ShardLayout | undefined {
  return shardsOfLayer(layout, layer).find((s) => covers(s.heads, head));
}

export function ownerOfKvHead(layout: SplitLayout, layer: number, kvHead: number): ShardLayout | undefined {
  return shardsOfLayer(layout, layer).find((s) => covers(s.kvHeads, kvHead));
}

/** Collective round trips per generated token: two all-reduces per layer when tensor-split, one hand-off per stage boundary. */
export function syncsPerToken(shape: ModelShape, layout: SplitLayout): { allReduces: number; handOffs: number } {
  return { allReduces: layout.tp > 1 ? 2 * shape.nLayers : 0, handOffs: layout.pp - 1 };
}

const plural = (n: number, one: string, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;
const span = (r: Range) => (rangeLength(r) === 1 ? `${r.start}` : `${r.start}–${r.end - 1}`);

/** A few sentences on what each device does for every token, for the loaded split. */
export function explainSplit(shape: ModelShape, layout: SplitLayout): HTMLElement[] {
  const { tp, pp, shards } = layout;
  const { allReduces, handOffs } = syncsPerToken(shape, layout);
  const paragraphs: HTMLElement[] = [];
  const model = h('strong', {}, `${shape.name}`);
  const size = `${formatCount(shape.parameters)} parameters, ${plural(shape.nLayers, 'layer')} of ${plural(shape.nHeads, 'attention head')} (${plural(shape.nKvHeads, 'KV head')}) and a ${shape.ffnDim}-wide feed-forward block`;

  if (shards.length === 1) {
    paragraphs.push(h('p', {}, model, ` — ${size} — lives on one device.`));
    paragraphs.push(
      h(
        'p',
        {},
        'Each token runs every layer as one GPU submission: embed, then per layer norm → Q/K/V → rotary positions → attention over the KV cache → output projection → SwiGLU feed-forward, and finally the output head picks the next token on the GPU. ',
        h('em', {}, 'Nothing has to be synchronised'),
        ': with more shards, the devices would meet twice per layer to add up their partial results.',
      ),
    );
    return paragraphs;
  }

  paragraphs.push(h('p', {}, model, ` — ${size} — is split across `, h('strong', {}, plural(shards.length, 'device')), tp > 1 && pp > 1 ? ` (${pp} pipeline stages × ${tp} tensor shards).` : '.'));
  if (tp > 1) {
    const first = shards.filter((s) => s.stage === 0);
    const who = first
      .map((s) => `device ${s.rank} holds heads ${span(s.heads)} (KV ${span(s.kvHeads)}) and FFN columns ${span(s.ffn)}`)
      .join('; ');
    paragraphs.push(
      h(
        'p',
        {},
        h('strong', {}, 'Tensor split'),
        ` (Megatron-LM): every layer is cut by heads and feed-forward columns — ${who}. `,
        'Q, K, V, gate and up are split by their outputs, so each device computes its own heads without talking to anyone; the attention output and down projections are split by their inputs, so each device ends with a ',
        h('em', {}, 'partial sum'),
        ' of the full result. The devices add those partial sums in a shared memory buffer (',
        h('code', {}, 'SharedArrayBuffer'),
        ` + Atomics): ${plural(allReduces, 'all-reduce')} per token, each one a GPU read-back, a barrier and a write-back.`,
      ),
    );
  }
  if (pp > 1) {
    const stages = Array.from({ length: pp }, (_, stage) => shards.find((s) => s.stage === stage)!).filter(Boolean);
    const who = stages.map((s) => `stage ${s.stage} runs layers ${span(s.layers)}`).join(', ');
    paragraphs.push(
      h(
        'p',
        {},
        h('strong', {}, 'Pipeline split'),
        `: ${who}. The hidden state (${shape.dim} numbers per token) is handed on ${handOffs === 1 ? 'once' : `${handOffs} times`} per token; while one stage works the others wait, so a single sequence gains memory, not speed.`,
      ),
    );
  }
  const heaviest = shards.reduce((a, b) => ((a.gpuBytes ?? 0) >= (b.gpuBytes ?? 0) ? a : b));
  if (heaviest.gpuBytes !== undefined) {
    paragraphs.push(
      h('p', { class: 'muted' }, `The largest shard allocates ${formatBytes(heaviest.gpuBytes)} (weights, KV cache and activations); each device read only its own byte ranges of the file.`),
    );
  }
  return paragraphs;
}
