// The WebGPU adapters this page can get: one per power preference, plus the fallback (software)
// adapter. Browsers often hand out the same adapter for several requests; those are folded
// together so the list shows real, distinct devices.

import type { GpuOptions } from '../src/index.ts';

export type AdapterKind = 'high-performance' | 'low-power' | 'fallback';

export interface AdapterEntry {
  kind: AdapterKind;
  /** Other requests that returned this same adapter. */
  alsoFor: AdapterKind[];
  name: string;
  isFallback: boolean;
  features: { shaderF16: boolean; subgroups: boolean; timestampQuery: boolean };
  limits: {
    maxBufferSize: number;
    maxStorageBufferBindingSize: number;
    maxComputeInvocationsPerWorkgroup: number;
    maxStorageBuffersPerShaderStage: number;
    maxComputeWorkgroupStorageSize: number;
  };
}


const requests: Record<AdapterKind, GPURequestAdapterOptions> = {
  'high-performance': { powerPreference: 'high-performance' },
  'low-power': { powerPreference: 'low-power' },
  fallback: { forceFallbackAdapter: true },
};

function adapterName(info: GPUAdapterInfo): string {
  const parts = [info.vendor, info.architecture, info.device, info.description].filter((p) => p && p.length > 0);
  return parts.length > 0 ? [...new Set(parts)].join(' · ') : 'unnamed adapter';
}

function describe(kind: AdapterKind, adapter: GPUAdapter): AdapterEntry {
  const info = adapter.info;
  const l = adapter.limits;
  return {
    kind,
    alsoFor: [],
    name: adapterName(info),
    isFallback: (info as GPUAdapterInfo & { isFallbackAdapter?: boolean }).isFallbackAdapter ?? kind === 'fallback',
    features: {
      shaderF16: adapter.features.has('shader-f16'),
      subgroups: adapter.features.has('subgroups'),
      timestampQuery: adapter.features.has('timestamp-query'),
    },
    limits: {
      maxBufferSize: l.maxBufferSize,
      maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
      maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
      maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
      maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
    },
  };
}

const sameAdapter = (a: AdapterEntry, b: AdapterEntry) =>
  a.name === b.name && a.isFallback === b.isFallback && JSON.stringify(a.limits) === JSON.stringify(b.limits);

/** Every distinct adapter, in the order high-performance, low-power, fallback. */
export async function listAdapters(): Promise<AdapterEntry[]> {
  if (!navigator.gpu) return [];
  const found: AdapterEntry[] = [];
  for (const kind of Object.keys(requests) as AdapterKind[]) {
    const adapter = await navigator.gpu.requestAdapter(requests[kind]).catch(() => null);
    if (!adapter) continue;
    const entry = describe(kind, adapter);
    const twin = found.find((other) => sameAdapter(other, entry));
    if (twin) twin.alsoFor.push(kind);
    else found.push(entry);
  }
  return found;
}

/** What a shard worker is told about its adapter. */
export function gpuOptionsFor(kind: AdapterKind): GpuOptions {
  return kind === 'fallback' ? { backend: 'browser', forceFallbackAdapter: true } : { backend: 'browser', powerPreference: kind };
}

