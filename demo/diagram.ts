// The split as a picture (SVG): the layer stack on the left, coloured by the devices that hold
// each layer; one layer opened up on the right — its query heads, KV heads and feed-forward
// columns coloured by owner, and the two all-reduces that add the devices' partial sums; the
// output head across the bottom. During generation a sweep runs down the stack once per token.

import { s } from './dom.ts';
import { ownerOfHead, ownerOfKvHead, rangeLength, shardColor, shardsOfLayer, type ModelShape, type SplitLayout } from './split.ts';

const W = 640;
const STACK_X = 46;
const STACK_W = 104;
const ZOOM_X = 214;
const ZOOM_W = W - ZOOM_X - 14;

export class SplitDiagram {
  private sweep?: SVGRectElement;
  private sweepSpan: [number, number] = [0, 0];
  private reduceNodes: SVGGElement[] = [];

  constructor(private readonly container: HTMLElement) {}

  clear(message: string): void {
    this.container.replaceChildren(s('svg', { viewBox: `0 0 ${W} 60`, class: 'split-svg', role: 'img' }, s('text', { x: 0, y: 30, class: 'dg-muted' }, message)));
    this.sweep = undefined;
    this.reduceNodes = [];
  }

  render(shape: ModelShape, layout: SplitLayout, deviceNames: string[]): void {
    const svg = s('svg', { class: 'split-svg', role: 'img', 'aria-label': `How ${shape.name} is split across ${layout.shards.length} device(s)` });
    this.reduceNodes = [];

    // ---- Left: embed, the layer stack, the output head ---------------------------------------
    const shown = Math.min(shape.nLayers, 48);
    const gap = shown > 24 ? 1 : 4;
    const layerH = Math.max(3, Math.min(16, (236 - gap * shown) / shown));
    let y = 30;
    svg.append(s('text', { x: STACK_X, y: 14, class: 'dg-title' }, `Layers (${shape.nLayers})`));

    const embedders = layout.shards.filter((sh) => sh.embeds);
    y = this.bar(svg, STACK_X, y, STACK_W, 10, embedders.map((sh) => ({ rank: sh.rank, weight: 1 })), 'embed') + 6;

    const stackTop = y;
    for (let i = 0; i < shown; i++) {
      const layer = Math.floor((i * shape.nLayers) / shown);
      const holders = shardsOfLayer(layout, layer);
      const nextHolders = i + 1 < shown ? shardsOfLayer(layout, Math.floor(((i + 1) * shape.nLayers) / shown)) : holders;
      this.bar(svg, STACK_X, y, STACK_W, layerH, holders.map((sh) => ({ rank: sh.rank, weight: rangeLength(sh.heads) })));
      if (shown <= 16) svg.append(s('text', { x: STACK_X - 8, y: y + layerH / 2 + 3.5, class: 'dg-small', 'text-anchor': 'end' }, `${layer}`));
      y += layerH + gap;
      if (holders[0] && nextHolders[0] && holders[0].stage !== nextHolders[0].stage) {
        // A pipeline stage boundary: the hidden state crosses to the next device here.
        svg.append(
          s('line', { x1: STACK_X - 4, x2: STACK_X + STACK_W + 4, y1: y - gap / 2 + 1, y2: y - gap / 2 + 1, class: 'dg-handoff' }),
          s('text', { x: STACK_X + STACK_W + 8, y: y - gap / 2 + 4, class: 'dg-small' }, 'hand-off'),
        );
        y += 6;
      }
    }
    const stackBottom = y - gap;
    const samplers = layout.shards.filter((sh) => sh.samples);
    y = this.bar(svg, STACK_X, y + 6, STACK_W, 10, samplers.map((sh) => ({ rank: sh.rank, weight: rangeLength(sh.vocab) })), 'head');

    this.sweep = s('rect', { x: STACK_X - 3, y: stackTop, width: STACK_W + 6, height: Math.max(layerH, 6), rx: 3, class: 'dg-sweep' });
    this.sweepSpan = [stackTop, stackBottom - Math.max(layerH, 6)];
    svg.append(this.sweep);
    let leftBottom = y;

    // ---- Right: one layer, opened up ---------------------------------------------------------
    const layer = 0;
    const holders = shardsOfLayer(layout, layer);
    const tensorSplit = holders.length > 1;
    let z = 14;
    svg.append(s('text', { x: ZOOM_X, y: z, class: 'dg-title' }, `Inside layer ${layer}`), s('text', { x: W - 14, y: z, class: 'dg-small', 'text-anchor': 'end' }, tensorSplit ? `split ${holders.length} ways` : 'whole on one device'));
    z += 16;

    // Query heads, then KV heads under the query heads that share them (grouped-query attention).
    const cell = ZOOM_W / shape.nHeads;
    const headW = Math.max(2, Math.min(26, cell - (cell > 6 ? 3 : 0.5)));
    svg.append(s('text', { x: ZOOM_X, y: z + 10, class: 'dg-label' }, `query heads · ${shape.nHeads}`));
    z += 16;
    for (let head = 0; head < shape.nHeads; head++) {
      const owner = ownerOfHead(layout, layer, head);
      svg.append(s('rect', { x: ZOOM_X + head * cell, y: z, width: headW, height: 18, rx: 2.5, fill: owner ? shardColor(owner.rank) : '#334155', class: 'dg-cell' }));
    }
    z += 26;
    const group = shape.nHeads / shape.nKvHeads;
    svg.append(s('text', { x: ZOOM_X, y: z + 10, class: 'dg-label' }, `KV heads · ${shape.nKvHeads}${group > 1 ? ` (each shared by ${group} query heads)` : ''}`));
    z += 16;
    for (let kv = 0; kv < shape.nKvHeads; kv++) {
      const owner = ownerOfKvHead(layout, layer, kv);
      svg.append(
        s('rect', { x: ZOOM_X + kv * group * cell, y: z, width: Math.max(2, group * cell - (cell > 6 ? 3 : 0.5)), height: 12, rx: 2.5, fill: owner ? shardColor(owner.rank) : '#334155', class: 'dg-cell dg-kv' }),
      );
    }
    z += 22;
    z = this.reduce(svg, z, tensorSplit, 'attention output projection');

    svg.append(s('text', { x: ZOOM_X, y: z + 10, class: 'dg-label' }, `feed-forward columns · ${shape.ffnDim}`));
    z += 16;
    z = this.bar(svg, ZOOM_X, z, ZOOM_W, 18, holders.map((sh) => ({ rank: sh.rank, weight: rangeLength(sh.ffn), label: `${rangeLength(sh.ffn)}` })));
    z += 8;
    z = this.reduce(svg, z, tensorSplit, 'feed-forward down projection');

    // ---- Bottom: legend ----------------------------------------------------------------------
    let bottom = Math.max(leftBottom, z) + 18;
    let lx = 0;
    for (const shard of layout.shards) {
      const name = deviceNames[shard.rank] ?? `device ${shard.rank}`;
      const text = `shard ${shard.rank}${layout.pp > 1 ? ` · stage ${shard.stage}` : ''} · ${name}`;
      const width = 26 + text.length * 6.1;
      if (lx + width > W && lx > 0) {
        lx = 0;
        bottom += 18;
      }
      svg.append(s('circle', { cx: lx + 6, cy: bottom - 4, r: 5, fill: shardColor(shard.rank) }), s('text', { x: lx + 16, y: bottom, class: 'dg-small' }, text));
      lx += width + 12;
    }
    leftBottom = bottom + 8;
    svg.setAttribute('viewBox', `0 0 ${W} ${leftBottom}`);
    this.container.replaceChildren(svg);
  }

  /** One token's forward step, drawn over `durationMs`: the sweep runs down the stack and each all-reduce flashes once per layer. */
  pulse(durationMs: number, layers: number): void {
    const duration = Math.max(180, Math.min(durationMs, 1500));
    const [from, to] = this.sweepSpan;
    this.sweep?.animate(
      [
        { transform: `translateY(0px)`, opacity: 0 },
        { opacity: 1, offset: 0.1 },
        { opacity: 1, offset: 0.9 },
        { transform: `translateY(${to - from}px)`, opacity: 0 },
      ],
      { duration, easing: 'linear' },
    );
    for (const node of this.reduceNodes) {
      node.animate([{ opacity: 0.35 }, { opacity: 1 }, { opacity: 0.35 }], { duration: duration / Math.max(1, Math.min(layers, 12)), iterations: Math.min(layers, 12) });
    }
  }

  /** A bar cut into coloured segments proportional to `weight`; returns the y below it. */
  private bar(svg: SVGSVGElement, x: number, y: number, width: number, height: number, parts: Array<{ rank: number; weight: number; label?: string }>, caption?: string): number {
    const total = parts.reduce((sum, p) => sum + p.weight, 0) || 1;
    let at = x;
    for (const part of parts) {
      const w = (part.weight / total) * width;
      svg.append(s('rect', { x: at + 0.5, y, width: Math.max(1, w - 1), height, rx: 2.5, fill: shardColor(part.rank), class: 'dg-cell' }));
      if (part.label && w > 28) svg.append(s('text', { x: at + w / 2, y: y + height / 2 + 3.5, class: 'dg-on-cell', 'text-anchor': 'middle' }, part.label));
      at += w;
    }
    if (parts.length === 0) svg.append(s('rect', { x, y, width, height, rx: 2.5, class: 'dg-empty' }));
    if (caption) svg.append(s('text', { x: x - 8, y: y + height / 2 + 3.5, class: 'dg-small', 'text-anchor': 'end' }, caption));
    return y + height;
  }

  /** The Σ where tensor shards add their partial sums (ghosted on one device). */
  private reduce(svg: SVGSVGElement, y: number, active: boolean, after: string): number {
    const cx = ZOOM_X + 14;
    const node = s(
      'g',
      { class: active ? 'dg-reduce' : 'dg-reduce ghost' },
      s('circle', { cx, cy: y + 12, r: 11 }),
      s('text', { x: cx, y: y + 17, 'text-anchor': 'middle', class: 'dg-sigma' }, 'Σ'),
      s('text', { x: cx + 22, y: y + 16, class: 'dg-label' }, active ? `all-reduce after the ${after}` : `${after}: whole, no all-reduce`),
    );
    svg.append(node);
    if (active) this.reduceNodes.push(node);
    return y + 32;
  }
}
