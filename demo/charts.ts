// Small live charts on canvas: a title, the latest value in large type, and the recent history as
// an area line. Redraws are batched into one animation frame for every chart on the page.

import { h } from './dom.ts';

export interface ChartOptions {
  title: string;
  /** A tooltip: what exactly is measured. */
  hint?: string;
  /** CSS color of the line and fill. */
  color: string;
  format: (value: number) => string;
  /** A fixed top of the scale (e.g. 1 for shares); otherwise the visible maximum. */
  max?: number;
  /** Points kept (the newest `capacity`). */
  capacity?: number;
  /** Shown instead of a value while the series is empty or all zero, e.g. "no collectives". */
  idleText?: string;
}

const dirty = new Set<Sparkline>();
let frame = 0;

function schedule(chart: Sparkline): void {
  dirty.add(chart);
  frame ||= requestAnimationFrame(() => {
    frame = 0;
    for (const c of dirty) c.draw();
    dirty.clear();
  });
}

export class Sparkline {
  readonly element: HTMLElement;
  private readonly canvas: HTMLCanvasElement;
  private readonly valueLabel: HTMLElement;
  private readonly values: number[] = [];
  private readonly capacity: number;

  constructor(private readonly options: ChartOptions) {
    this.capacity = options.capacity ?? 90;
    this.canvas = h('canvas', { 'aria-hidden': 'true' });
    this.valueLabel = h('span', { class: 'chart-value' }, '—');
    this.element = h(
      'figure',
      { class: 'chart', style: `--chart-color: ${options.color}`, title: options.hint },
      h('figcaption', {}, h('span', { class: 'chart-title' }, options.title), this.valueLabel),
      this.canvas,
    );
    new ResizeObserver(() => schedule(this)).observe(this.canvas);
  }

  push(value: number): void {
    this.values.push(value);
    if (this.values.length > this.capacity) this.values.splice(0, this.values.length - this.capacity);
    schedule(this);
  }

  /** Replaces the whole series (e.g. a flat memory line). */
  set(values: number[]): void {
    this.values.splice(0, this.values.length, ...values.slice(-this.capacity));
    schedule(this);
  }

  clear(): void {
    this.values.length = 0;
    schedule(this);
  }

  draw(): void {
    const { canvas, values, options } = this;
    const last = values.at(-1);
    const idle = options.idleText !== undefined && values.every((v) => v === 0);
    this.valueLabel.textContent = idle ? options.idleText! : last === undefined ? '—' : options.format(last);
    this.element.classList.toggle('idle', idle);

    const ratio = devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
    const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    const g = canvas.getContext('2d');
    if (!g) return;
    g.clearRect(0, 0, width, height);

    // Quiet guides at a quarter, half and three quarters of the scale.
    g.strokeStyle = 'rgba(148, 163, 184, 0.12)';
    g.lineWidth = 1;
    for (const f of [0.25, 0.5, 0.75]) {
      const y = Math.round(height * f) + 0.5;
      g.beginPath();
      g.moveTo(0, y);
      g.lineTo(width, y);
      g.stroke();
    }
    if (values.length === 0) return;

    const top = options.max ?? Math.max(...values) * 1.15;
    const scale = top > 0 ? top : 1;
    const pad = 3 * ratio;
    const step = width / Math.max(1, this.capacity - 1);
    const x0 = width - (values.length - 1) * step;
    const y = (v: number) => height - pad - (Math.min(v, scale) / scale) * (height - 2 * pad);

    const color = getComputedStyle(this.element).getPropertyValue('--chart-color').trim() || options.color;
    const fill = g.createLinearGradient(0, 0, 0, height);
    fill.addColorStop(0, withAlpha(color, 0.35));
    fill.addColorStop(1, withAlpha(color, 0));

    g.beginPath();
    g.moveTo(x0, height);
    values.forEach((v, i) => g.lineTo(x0 + i * step, y(v)));
    g.lineTo(x0 + (values.length - 1) * step, height);
    g.closePath();
    g.fillStyle = fill;
    g.fill();

    g.beginPath();
    values.forEach((v, i) => (i === 0 ? g.moveTo(x0, y(v)) : g.lineTo(x0 + i * step, y(v))));
    g.strokeStyle = color;
    g.lineWidth = 1.5 * ratio;
    g.lineJoin = 'round';
    g.stroke();

    const lx = x0 + (values.length - 1) * step - 2 * ratio;
    const ly = y(values.at(-1)!);
    g.beginPath();
    g.arc(lx, ly, 2.5 * ratio, 0, Math.PI * 2);
    g.fillStyle = color;
    g.shadowColor = color;
    g.shadowBlur = 8 * ratio;
    g.fill();
    g.shadowBlur = 0;
  }
}

/** `#rrggbb` or `rgb(...)` with an alpha. */
function withAlpha(color: string, alpha: number): string {
  const hex = /^#([0-9a-f]{6})$/i.exec(color);
  if (hex) {
    const n = parseInt(hex[1]!, 16);
    return `rgba(${n >> 16}, ${(n >> 8) & 255}, ${n & 255}, ${alpha})`;
  }
  const rgb = /^rgba?\(([^)]+)\)$/.exec(color);
  if (rgb) {
    const [r, g, b] = rgb[1]!.split(',').map((part) => part.trim());
    return `rgba(${r}, ${g}, ${b}, ${alpha})`;
  }
  return color;
}
