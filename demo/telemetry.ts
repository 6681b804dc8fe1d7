// Live per-device charts, fed from `model.stats().devices`. The engine keeps running totals per
// device (steps, step time, collective time, time waiting for other shards); each poll turns the
// change since the previous poll into one point per chart.

import type { ModelStats } from '../src/index.ts';
import { Sparkline } from './charts.ts';
import { h } from './dom.ts';
import { formatBytes, formatDuration } from './format.ts';
import { rangeLength, shardColor, type SplitLayout } from './split.ts';

type DeviceStats = ModelStats['devices'][number];

/** One forward step of one device, averaged over the steps since the last poll. */
export interface DeviceSample {
  rank: number;
  steps: number;
  stepMs: number;
  /** All-reduce and hand-off time per step. */
  collectiveMs: number;
  /** Share of the step spent waiting for other shards (0..1). */
  waitShare: number;
  gpuBytes: number;
}

/** Turns running totals into per-step samples (only for devices that completed a step). */
export function samplesSince(previous: ReadonlyMap<number, DeviceStats>, current: readonly DeviceStats[]): DeviceSample[] {
  const samples: DeviceSample[] = [];
  for (const now of current) {
    const before = previous.get(now.rank);
    const steps = now.steps - (before?.steps ?? 0);
    if (steps <= 0) continue;
    const stepMs = (now.stepMs - (before?.stepMs ?? 0)) / steps;
    const collectiveMs = (now.collectiveMs - (before?.collectiveMs ?? 0)) / steps;
    const waitMs = (now.collectiveWaitMs - (before?.collectiveWaitMs ?? 0)) / steps;
    samples.push({
      rank: now.rank,
      steps,
      stepMs,
      collectiveMs,
      waitShare: stepMs > 0 ? Math.min(1, Math.max(0, waitMs / stepMs)) : 0,
      gpuBytes: now.gpuBytes,
    });
  }
  return samples;
}

interface DeviceCard {
  element: HTMLElement;
  memory: Sparkline;
  step: Sparkline;
  collective: Sparkline;
  waiting: Sparkline;
  stepsLabel: HTMLElement;
}

const percent = (share: number) => `${(share * 100).toFixed(share < 0.1 ? 1 : 0)}%`;

export class DevicePanel {
  private cards = new Map<number, DeviceCard>();
  private previous = new Map<number, DeviceStats>();

  constructor(private readonly grid: HTMLElement) {}

  /** One card per shard of `layout`; `names[rank]` is its adapter. */
  setup(layout: SplitLayout, names: string[], stats: ModelStats): void {
    this.cards.clear();
    this.previous.clear();
    const alone = layout.shards.length === 1;
    // Tensor shards meet in all-reduces; pipeline stages only hand the hidden state on.
    const collectiveTitle = layout.tp > 1 && layout.pp > 1 ? 'Collectives' : layout.pp > 1 ? 'Hand-off' : 'All-reduce';
    const collectiveHint =
      layout.pp > 1 && layout.tp === 1 ?
        'Time per step passing the hidden state to the next stage, or waiting for it'
      : 'Time per step in collectives: reading partial sums back, meeting the other shards, writing the sum back';
    const cards = layout.shards.map((shard) => {
      const color = shardColor(shard.rank);
      const card: DeviceCard = {
        memory: new Sparkline({ title: 'Memory', hint: 'GPU memory for weights and KV cache on this device', color, format: formatBytes }),
        step: new Sparkline({ title: 'Step time', hint: 'Wall time of one decode step (one token) on this device', color, format: formatDuration }),
        collective: new Sparkline({ title: collectiveTitle, hint: collectiveHint, color, format: formatDuration, idleText: alone ? 'none: one device' : 'none yet' }),
        waiting: new Sparkline({ title: 'Waiting', hint: 'Share of each step spent waiting at barriers for the other shards', color, format: percent, max: 1, idleText: alone ? '0%: nobody to wait for' : '0%' }),
        stepsLabel: h('span', { class: 'muted' }, '0 steps'),
        element: h('article'),
      };
      const holds =
        alone ? 'the whole model'
        : layout.tp > 1 && layout.pp > 1 ? `layers ${rangeText(shard.layers)}, heads ${rangeText(shard.heads)}`
        : layout.pp > 1 ? `layers ${rangeText(shard.layers)}`
        : `heads ${rangeText(shard.heads)}, FFN ${rangeText(shard.ffn)}`;
      card.element = h(
        'article',
        { class: 'device', style: `--shard: ${color}`, 'data-rank': shard.rank },
        h(
          'header',
          {},
          h('span', { class: 'swatch' }),
          h('div', { class: 'device-name' }, h('strong', {}, `Shard ${shard.rank}`), h('span', { class: 'muted' }, names[shard.rank] ?? 'WebGPU device')),
          card.stepsLabel,
        ),
        h('p', { class: 'holds' }, `holds ${holds}`),
        h('div', { class: 'charts' }, card.memory.element, card.step.element, card.collective.element, card.waiting.element),
      );
      this.cards.set(shard.rank, card);
      return card.element;
    });
    this.grid.replaceChildren(...cards);
    this.grid.style.setProperty('--columns', String(Math.min(layout.shards.length, 2)));
    for (const device of stats.devices) {
      this.previous.set(device.rank, device);
      this.cards.get(device.rank)?.memory.push(device.gpuBytes);
    }
  }

  /**
   * Adds a point for every device that stepped since the last call and returns those samples.
   * With `record` false the steps are only counted (a prompt's prefill step would dwarf the
   * decode steps the charts are about).
   */
  update(stats: ModelStats, record = true): DeviceSample[] {
    const samples = samplesSince(this.previous, stats.devices);
    for (const device of stats.devices) this.previous.set(device.rank, device);
    for (const sample of samples) {
      const card = this.cards.get(sample.rank);
      if (!card) continue;
      card.stepsLabel.textContent = `${stats.devices.find((d) => d.rank === sample.rank)?.steps ?? 0} steps`;
      if (!record) continue;
      card.memory.push(sample.gpuBytes);
      card.step.push(sample.stepMs);
      card.collective.push(sample.collectiveMs);
      card.waiting.push(sample.waitShare);
    }
    return samples;
  }

  clear(message: string): void {
    this.cards.clear();
    this.previous.clear();
    this.grid.replaceChildren(h('p', { class: 'placeholder' }, message));
  }
}

function rangeText(r: { start: number; end: number }): string {
  return rangeLength(r) === 1 ? `${r.start}` : `${r.start}–${r.end - 1}`;
}
