// What the planner needs to know about each shard's device, asked before anything is allocated.

import { probeAdapter, type GpuOptions } from '../gpu/device.ts';
import type { DeviceDescription } from './plan.ts';

/** The planner's view of each device: its adapter's name and limits (no device is opened). */
export async function describeShardDevices(gpus: readonly GpuOptions[], memoryBudgetBytes?: number): Promise<DeviceDescription[]> {
  const probes = new Map<string, Awaited<ReturnType<typeof probeAdapter>>>();
  const devices: DeviceDescription[] = [];
  for (const gpu of gpus) {
    const key = JSON.stringify(gpu);
    if (!probes.has(key)) probes.set(key, await probeAdapter(gpu));
    const probe = probes.get(key)!;
    devices.push({
      name: probe.description,
      maxBufferSize: probe.limits.maxBufferSize,
      maxStorageBufferBindingSize: probe.limits.maxStorageBufferBindingSize,
      memoryBudgetBytes,
    });
  }
  return devices;
}

/** Equal GPU options open devices on the same adapter: count the distinct ones. */
export function distinctAdapters(gpus: readonly GpuOptions[]): number {
  return new Set(gpus.map((gpu) => JSON.stringify(gpu))).size;
}

