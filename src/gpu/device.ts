// Getting a GPUDevice in each runtime. This file (with dawn.ts) is the only place that knows
// which runtime we are in; everything above it sees a plain WebGPU `GPUDevice`.

import { dawnGpu } from './dawn.ts';

/** Which WebGPU implementation to use. `auto` picks Dawn in Node/Deno and `navigator.gpu` in a browser. */
export type GpuBackend = 'auto' | 'dawn' | 'deno' | 'browser';

export interface GpuOptions {
  backend?: GpuBackend;
  powerPreference?: GPUPowerPreference;
  /** Ask for the fallback (software) adapter, e.g. a browser's second adapter. */
  forceFallbackAdapter?: boolean;
  /** Dawn only: pick an adapter whose name contains this text (e.g. one of several GPUs). */
  adapterName?: string;
  /** Dawn only: extra toggles passed to `create()`, e.g. `enable-dawn-features=allow_unsafe_apis`. */
  dawnFlags?: string[];
}

/** Features the kernels can specialize on. None of them is required. */
export interface GpuFeatures {
  subgroups: boolean;
  shaderF16: boolean;
  timestampQuery: boolean;
}

/** A device plus what we learned about it when we opened it. */
export interface GpuContext {
  device: GPUDevice;
  backend: Exclude<GpuBackend, 'auto'>;
  adapterDescription: string;
  features: GpuFeatures;
  limits: GPUSupportedLimits;
}

export class GpuUnavailableError extends Error {
  override name = 'GpuUnavailableError';
}

function isBrowser(): boolean {
  return typeof (globalThis as { document?: unknown }).document !== 'undefined' ||
    (typeof (globalThis as { WorkerGlobalScope?: unknown }).WorkerGlobalScope !== 'undefined' &&
      typeof (globalThis as { Deno?: unknown }).Deno === 'undefined');
}

async function gpuFor(backend: Exclude<GpuBackend, 'auto'>, options: GpuOptions): Promise<GPU> {
  // Dawn picks among several GPUs by name when asked (`adapter=NAME`); we check the match below too.
  if (backend === 'dawn') return dawnGpu([...(options.dawnFlags ?? []), ...(options.adapterName ? [`adapter=${options.adapterName}`] : [])]);
  const gpu = (globalThis.navigator as Navigator | undefined)?.gpu;
  if (!gpu) {
    throw new GpuUnavailableError(
      backend === 'deno'
        ? "Deno's built-in WebGPU is not available: run Deno with --unstable-webgpu, or use the default Dawn backend (--gpu=dawn)."
        : 'navigator.gpu is missing: this browser has no WebGPU (Chromium needs --enable-unsafe-webgpu on Linux).',
    );
  }
  return gpu;
}

const limitNames = [
  'maxStorageBufferBindingSize',
  'maxBufferSize',
  'maxComputeWorkgroupStorageSize',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupSizeY',
  'maxComputeWorkgroupSizeZ',
  'maxComputeWorkgroupsPerDimension',
  'maxStorageBuffersPerShaderStage',
] as const;

/**
 * Opens one device on a fresh adapter (an adapter creates only one device) with the adapter's
 * real limits, not the defaults: browsers otherwise cap storage bindings at 128 MiB.
 */
export async function requestGpu(options: GpuOptions = {}): Promise<GpuContext> {
  const backend: Exclude<GpuBackend, 'auto'> =
    options.backend && options.backend !== 'auto' ? options.backend : isBrowser() ? 'browser' : 'dawn';
  const gpu = await gpuFor(backend, options);
  const adapter = await pickAdapter(gpu, options);
  const requiredLimits: Record<string, number> = {};
  for (const name of limitNames) requiredLimits[name] = adapter.limits[name];
  const wanted: GPUFeatureName[] = ['subgroups', 'shader-f16', 'timestamp-query'];
  const requiredFeatures = wanted.filter((f) => adapter.features.has(f));
  const device = await adapter.requestDevice({ requiredLimits, requiredFeatures });
  const info = adapter.info;
  const adapterDescription =
    [info.vendor, info.architecture, info.device, info.description].filter(Boolean).join(' | ') || 'unknown adapter';
  return {
    device,
    backend,
    adapterDescription,
    features: {
      subgroups: device.features.has('subgroups'),
      shaderF16: device.features.has('shader-f16'),
      timestampQuery: device.features.has('timestamp-query'),
    },
    limits: device.limits,
  };
}

async function pickAdapter(gpu: GPU, options: GpuOptions): Promise<GPUAdapter> {
  let adapter: GPUAdapter | null;
  try {
    adapter = await gpu.requestAdapter({ powerPreference: options.powerPreference, forceFallbackAdapter: options.forceFallbackAdapter });
  } catch (error) {
    // Dawn rejects when no adapter matches `adapter=NAME`; its message lists the ones it has.
    const wanted = options.adapterName ? `No adapter matches "${options.adapterName}". ` : '';
    throw new GpuUnavailableError(`${wanted}${(error as Error).message}`, { cause: error });
  }
  if (!adapter) {
    throw new GpuUnavailableError(
      'No WebGPU adapter found. On Linux without a GPU install Mesa lavapipe (mesa-vulkan-drivers from bookworm-backports) and libvulkan1.',
    );
  }
  if (options.adapterName) {
    const info = adapter.info;
    const text = `${info.vendor} ${info.architecture} ${info.device} ${info.description}`.toLowerCase();
    if (!text.includes(options.adapterName.toLowerCase())) {
      throw new GpuUnavailableError(`No adapter matches "${options.adapterName}"; found "${text.trim()}".`);
    }
  }
  return adapter;
}

/** An adapter's name and limits, without opening a device (for planning before allocating). */
export interface AdapterProbe {
  description: string;
  limits: GPUSupportedLimits;
}

export async function probeAdapter(options: GpuOptions = {}): Promise<AdapterProbe> {
  const backend = options.backend && options.backend !== 'auto' ? options.backend : isBrowser() ? 'browser' : 'dawn';
  const adapter = await pickAdapter(await gpuFor(backend, options), options);
  const i = adapter.info;
  return { description: [i.vendor, i.architecture, i.device, i.description].filter(Boolean).join(' | '), limits: adapter.limits };
}

/** Describes the adapters this runtime can see, for `info` commands. */
export async function describeAdapters(options: GpuOptions = {}): Promise<string[]> {
  const backend = options.backend && options.backend !== 'auto' ? options.backend : isBrowser() ? 'browser' : 'dawn';
  const gpu = await gpuFor(backend, options);
  const found: string[] = [];
  for (const powerPreference of ['high-performance', 'low-power'] as const) {
    const adapter = await gpu.requestAdapter({ powerPreference });
    if (!adapter) continue;
    const i = adapter.info;
    const features = [...adapter.features].filter((f) => ['subgroups', 'shader-f16', 'timestamp-query'].includes(f));
    found.push(
      `${powerPreference}: ${[i.vendor, i.architecture, i.device, i.description].filter(Boolean).join(' | ')}` +
        ` (storage binding ${(adapter.limits.maxStorageBufferBindingSize / 2 ** 20).toFixed(0)} MiB,` +
        ` features: ${features.join(', ') || 'none'})`,
    );
  }
  return found;
}
