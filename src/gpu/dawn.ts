// Dawn (npm `webgpu`) for Node and Deno.
//
// Hazard (ARCHITECTURE.md, Runtime hazards: Dawn's `create()` object): the object returned by Dawn's `create()` must stay reachable for as long
// as any device lives, or the process segfaults when it is garbage-collected. So every GPU we
// create is held here, at module level, for the life of the process.
//
// In Deno, Dawn's event polling is paced before Dawn loads (dawn-polling.ts explains why).

import { dawnPollPacingHere, installDawnPollPacing } from './dawn-polling.ts';

const createdGpus = new Map<string, GPU>();

interface DawnModule {
  create(flags: string[]): GPU;
  globals: object;
}

let dawnModule: Promise<DawnModule> | undefined;

function loadDawn(): Promise<DawnModule> {
  // The specifier is in a variable so browser bundlers leave this import alone.
  const specifier = 'webgpu';
  const pacing = dawnPollPacingHere();
  if (pacing) installDawnPollPacing(pacing);
  dawnModule ??= (import(/* @vite-ignore */ specifier) as Promise<DawnModule>).then((mod) => {
    // Dawn's GPUBufferUsage, GPUMapMode, ... constants, as a browser has them.
    for (const [key, value] of Object.entries(mod.globals)) {
      if (!(key in globalThis)) (globalThis as Record<string, unknown>)[key] = value;
    }
    return mod;
  });
  return dawnModule;
}

/** The Dawn `GPU` object for these flags, created once and kept alive. */
export async function dawnGpu(flags: string[]): Promise<GPU> {
  const key = flags.join('\n');
  const existing = createdGpus.get(key);
  if (existing) return existing;
  const dawn = await loadDawn();
  const gpu = dawn.create(flags);
  createdGpus.set(key, gpu);
  return gpu;
}

/** For the hazard test: how many Dawn GPU objects are held alive. */
export function heldDawnGpuCount(): number {
  return createdGpus.size;
}
