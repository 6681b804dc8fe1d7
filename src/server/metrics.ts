// A small Prometheus registry: counters, gauges and histograms with labels, rendered in the text
// exposition format (version 0.0.4). Also renders any object of numbers (the engine's `stats()`)
// as gauges, so fields the engine adds later show up without a server change.

export type Labels = Readonly<Record<string, string>>;

export const PROMETHEUS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

interface Sample {
  /** Name suffix such as "_bucket" (histograms). */
  suffix?: string;
  labels: Labels;
  value: number;
}

function escapeLabelValue(value: string): string {
  return value.replaceAll('\\', '\\\\').replaceAll('"', '\\"').replaceAll('\n', '\\n');
}

function formatLabels(labels: Labels): string {
  const entries = Object.entries(labels);
  if (entries.length === 0) return '';
  return `{${entries.map(([key, value]) => `${key}="${escapeLabelValue(value)}"`).join(',')}}`;
}

function formatValue(value: number): string {
  if (Number.isNaN(value)) return 'NaN';
  if (value === Infinity) return '+Inf';
  if (value === -Infinity) return '-Inf';
  return String(value);
}

/** A stable key for a label set (label order does not matter). */
function labelKey(labels: Labels): string {
  return JSON.stringify(Object.entries(labels).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

abstract class Metric {
  constructor(readonly name: string, readonly help: string, readonly type: 'counter' | 'gauge' | 'histogram') {}

  abstract samples(): Sample[];

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help.replaceAll('\\', '\\\\').replaceAll('\n', '\\n')}`, `# TYPE ${this.name} ${this.type}`];
    for (const s of this.samples()) lines.push(`${this.name}${s.suffix ?? ''}${formatLabels(s.labels)} ${formatValue(s.value)}`);
    return lines.join('\n');
  }
}

/** Per label set, a value; label sets appear in first-use order. */
class LabelledValues {
  private readonly values = new Map<string, { labels: Labels; value: number }>();

  add(labels: Labels, delta: number): void {
    const key = labelKey(labels);
    const entry = this.values.get(key);
    if (entry) entry.value += delta;
    else this.values.set(key, { labels: { ...labels }, value: delta });
  }

  set(labels: Labels, value: number): void {
    this.values.set(labelKey(labels), { labels: { ...labels }, value });
  }

  get(labels: Labels): number {
    return this.values.get(labelKey(labels))?.value ?? 0;
  }

  entries(): Array<{ labels: Labels; value: number }> {
    return [...this.values.values()];
  }
}

/** A counter incremented by the code, or read from `collect` at render time (a count kept elsewhere). */
export class Counter extends Metric {
  private readonly values = new LabelledValues();

  constructor(name: string, help: string, private readonly collect?: () => number) {
    super(name, help, 'counter');
  }

  inc(labels: Labels = {}, by = 1): void {
    if (by < 0) throw new RangeError(`counter ${this.name} cannot decrease`);
    this.values.add(labels, by);
  }

  get(labels: Labels = {}): number {
    return this.values.get(labels);
  }

  samples(): Sample[] {
    return this.collect ? [{ labels: {}, value: this.collect() }] : this.values.entries();
  }
}

/** A gauge set by the code, or read from `collect` at render time. */
export class Gauge extends Metric {
  private readonly values = new LabelledValues();

  constructor(name: string, help: string, private readonly collect?: () => number) {
    super(name, help, 'gauge');
  }

  set(value: number, labels: Labels = {}): void {
    this.values.set(labels, value);
  }

  samples(): Sample[] {
    return this.collect ? [{ labels: {}, value: this.collect() }] : this.values.entries();
  }
}

export class Histogram extends Metric {
  private readonly series = new Map<string, { labels: Labels; counts: number[]; sum: number; count: number }>();

  /** `buckets`: upper bounds, ascending; +Inf is implied. */
  constructor(name: string, help: string, readonly buckets: readonly number[]) {
    super(name, help, 'histogram');
    if (buckets.some((b, i) => i > 0 && b <= buckets[i - 1]!)) throw new RangeError(`histogram ${name}: buckets must ascend`);
  }

  observe(value: number, labels: Labels = {}): void {
    const key = labelKey(labels);
    let s = this.series.get(key);
    if (!s) this.series.set(key, (s = { labels: { ...labels }, counts: this.buckets.map(() => 0), sum: 0, count: 0 }));
    for (let i = 0; i < this.buckets.length; i++) if (value <= this.buckets[i]!) s.counts[i]!++;
    s.sum += value;
    s.count++;
  }

  /** Observations so far (all label sets). */
  count(): number {
    let total = 0;
    for (const s of this.series.values()) total += s.count;
    return total;
  }

  samples(): Sample[] {
    const out: Sample[] = [];
    for (const s of this.series.values()) {
      this.buckets.forEach((bound, i) => out.push({ suffix: '_bucket', labels: { ...s.labels, le: formatValue(bound) }, value: s.counts[i]! }));
      out.push({ suffix: '_bucket', labels: { ...s.labels, le: '+Inf' }, value: s.count });
      out.push({ suffix: '_sum', labels: s.labels, value: s.sum });
      out.push({ suffix: '_count', labels: s.labels, value: s.count });
    }
    return out;
  }
}

export class MetricsRegistry {
  private readonly metrics: Metric[] = [];
  private readonly collectors: Array<() => string> = [];

  counter(name: string, help: string, collect?: () => number): Counter {
    return this.add(new Counter(name, help, collect));
  }

  gauge(name: string, help: string, collect?: () => number): Gauge {
    return this.add(new Gauge(name, help, collect));
  }

  histogram(name: string, help: string, buckets: readonly number[]): Histogram {
    return this.add(new Histogram(name, help, buckets));
  }

  /** Text rendered after the registered metrics, e.g. `renderNumericFields` of live stats. */
  addCollector(collect: () => string): void {
    this.collectors.push(collect);
  }

  render(): string {
    const parts = [...this.metrics.map((m) => m.render()), ...this.collectors.map((c) => c())].filter((p) => p !== '');
    return parts.join('\n') + '\n';
  }

  private add<M extends Metric>(metric: M): M {
    if (this.metrics.some((m) => m.name === metric.name)) throw new Error(`metric ${metric.name} registered twice`);
    this.metrics.push(metric);
    return metric;
  }
}

/** "lastStepMs" → "last_step_ms"; anything outside [a-zA-Z0-9_] becomes "_". */
export function snakeCase(name: string): string {
  return name
    .replace(/([a-z0-9])([A-Z])/g, '$1_$2')
    .replace(/[^a-zA-Z0-9_]/g, '_')
    .toLowerCase();
}

/** A label name for the items of an array field: "devices" → "device", "batches" → "batch". */
function itemLabel(arrayName: string): string {
  if (arrayName === '') return 'index';
  if (/[^aeiou]ies$/.test(arrayName)) return arrayName.slice(0, -3) + 'y';
  if (/(s|x|ch|sh)es$/.test(arrayName)) return arrayName.slice(0, -2);
  if (/[^s]s$/.test(arrayName)) return arrayName.slice(0, -1);
  return arrayName;
}

/**
 * Every number (and boolean) in `value` as a gauge named `prefix_path_to_field`. Nested objects
 * extend the name; array items get a label named after the array, holding their index, so
 * `{devices: [{stepMs: 2}]}` becomes `prefix_devices_step_ms{device="0"} 2`.
 */
export function renderNumericFields(prefix: string, value: unknown, help = 'Engine statistic (model.stats()).'): string {
  const series = new Map<string, Sample[]>();
  const visit = (name: string, labels: Labels, v: unknown, depth: number): void => {
    if (depth > 8) return;
    if (typeof v === 'number' || typeof v === 'bigint' || typeof v === 'boolean') {
      const n = Number(v);
      if (typeof v === 'boolean' || Number.isFinite(n)) series.set(name, [...(series.get(name) ?? []), { labels, value: n }]);
    } else if (Array.isArray(v) || ArrayBuffer.isView(v)) {
      const label = itemLabel(name.slice(prefix.length + 1).split('_').at(-1)!);
      Array.from(v as ArrayLike<unknown>).forEach((item, i) => visit(name, { ...labels, [label]: String(i) }, item, depth + 1));
    } else if (typeof v === 'object' && v !== null) {
      for (const [key, item] of Object.entries(v)) visit(`${name}_${snakeCase(key)}`, labels, item, depth + 1);
    }
  };
  visit(prefix, {}, value, 0);
  const blocks: string[] = [];
  for (const [name, samples] of series) {
    blocks.push([`# HELP ${name} ${help}`, `# TYPE ${name} gauge`, ...samples.map((s) => `${name}${formatLabels(s.labels)} ${formatValue(s.value)}`)].join('\n'));
  }
  return blocks.join('\n');
}
