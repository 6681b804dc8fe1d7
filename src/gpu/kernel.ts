// The small vocabulary every kernel speaks: a compiled pipeline, a bind group, a dispatch size.
// Ops are built once (pipelines cached per device, bind groups and parameter buffers made at
// build time) and then encoded into one compute pass per step, so a step costs one submit.

/** One dispatch, ready to encode. */
export interface KernelOp {
  label: string;
  pipeline: GPUComputePipeline;
  bindGroup: GPUBindGroup;
  workgroups: [number, number, number];
  /** Buffers made for this op alone (its parameter uniforms): destroyed with it. */
  owned: GPUBuffer[];
}

/** Frees what ops made for themselves, when their program is dropped. */
export function destroyOps(ops: readonly KernelOp[]): void {
  for (const op of ops) for (const buffer of op.owned) buffer.destroy();
}

const pipelineCache = new WeakMap<GPUDevice, Map<string, GPUComputePipeline>>();

/** Compiles (once per device and source) a compute pipeline whose entry point is `main`. */
export function computePipeline(device: GPUDevice, wgsl: string, label: string): GPUComputePipeline {
  let cache = pipelineCache.get(device);
  if (!cache) {
    cache = new Map();
    pipelineCache.set(device, cache);
  }
  let pipeline = cache.get(wgsl);
  if (!pipeline) {
    const module = device.createShaderModule({ code: wgsl, label });
    pipeline = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' }, label });
    cache.set(wgsl, pipeline);
  }
  return pipeline;
}

/** Builds an op whose bindings are, in order, @group(0) @binding(0..n-1). */
export function kernelOp(
  device: GPUDevice,
  label: string,
  wgsl: string,
  buffers: GPUBuffer[],
  workgroups: [number, number?, number?],
): KernelOp {
  const pipeline = computePipeline(device, wgsl, label);
  const bindGroup = device.createBindGroup({
    label,
    layout: pipeline.getBindGroupLayout(0),
    entries: buffers.map((buffer, binding) => ({ binding, resource: { buffer } })),
  });
  // Uniform buffers carry this op's parameters and belong to it; storage buffers are shared.
  const owned = buffers.filter((buffer) => (buffer.usage & UNIFORM) !== 0);
  return { label, pipeline, bindGroup, workgroups: [workgroups[0], workgroups[1] ?? 1, workgroups[2] ?? 1], owned };
}

/** Encodes ops into one compute pass. Ops on the same pass see each other's writes in order. */
export function encodeOps(encoder: GPUCommandEncoder, ops: readonly KernelOp[], label = 'step'): void {
  const pass = encoder.beginComputePass({ label });
  let pipeline: GPUComputePipeline | undefined;
  for (const op of ops) {
    // Each call into the native binding costs host time: skip the ones that change nothing.
    if (op.pipeline !== pipeline) pass.setPipeline((pipeline = op.pipeline));
    pass.setBindGroup(0, op.bindGroup);
    pass.dispatchWorkgroups(...op.workgroups);
  }
  pass.end();
}

/** Encodes and submits ops in one submit. */
export function runOps(device: GPUDevice, ops: readonly KernelOp[], label = 'step'): void {
  const encoder = device.createCommandEncoder({ label });
  encodeOps(encoder, ops, label);
  device.queue.submit([encoder.finish()]);
}

/** Splits a flat workgroup count over x and y when it exceeds the per-dimension limit. */
export function workgroupGrid(count: number, maxPerDimension = 65535): [number, number] {
  if (count <= maxPerDimension) return [Math.max(1, count), 1];
  const y = Math.ceil(count / maxPerDimension);
  return [Math.ceil(count / y), y];
}

const STORAGE = 0x0080; // GPUBufferUsage.STORAGE (as numbers so this file needs no globals)
const COPY_SRC = 0x0004;
const COPY_DST = 0x0008;
const UNIFORM = 0x0040;
const MAP_READ = 0x0001;

/** Rounds up to a multiple of 4 bytes (buffer sizes and writeBuffer need it). */
export const align4 = (n: number): number => Math.ceil(n / 4) * 4;

/** Rounds up to a multiple of 16 bytes: kernels may bind any storage buffer as an array of vec4s. */
export const align16 = (n: number): number => Math.ceil(n / 16) * 16;

/** A storage buffer, optionally filled. Sizes are rounded up to 16 bytes (and at least 16). */
export function storageBuffer(
  device: GPUDevice,
  label: string,
  sizeOrData: number | ArrayBufferView,
): GPUBuffer {
  const size = Math.max(16, align16(typeof sizeOrData === 'number' ? sizeOrData : sizeOrData.byteLength));
  const buffer = device.createBuffer({ label, size, usage: STORAGE | COPY_SRC | COPY_DST });
  if (typeof sizeOrData !== 'number') writeBuffer(device, buffer, 0, sizeOrData);
  return buffer;
}

/** A uniform buffer holding u32/i32/f32 parameters, written once. */
export function uniformBuffer(device: GPUDevice, label: string, data: ArrayBufferView): GPUBuffer {
  const size = Math.max(16, Math.ceil(data.byteLength / 16) * 16);
  const buffer = device.createBuffer({ label, size, usage: UNIFORM | COPY_DST });
  writeBuffer(device, buffer, 0, data);
  return buffer;
}

/** Packs numbers into a 4-byte-per-field parameter block: integers as u32 unless marked f32. */
export function params(fields: Array<number | { f32: number }>): Uint32Array {
  const words = new Uint32Array(Math.max(4, Math.ceil(fields.length / 4) * 4));
  const floats = new Float32Array(words.buffer);
  fields.forEach((field, i) => {
    if (typeof field === 'number') words[i] = field >>> 0;
    else floats[i] = field.f32;
  });
  return words;
}

/** writeBuffer with the 4-byte size rule handled (pads a copy when needed). */
export function writeBuffer(device: GPUDevice, buffer: GPUBuffer, offset: number, data: ArrayBufferView): void {
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (bytes.byteLength % 4 === 0) {
    device.queue.writeBuffer(buffer, offset, bytes);
  } else {
    const padded = new Uint8Array(align4(bytes.byteLength));
    padded.set(bytes);
    device.queue.writeBuffer(buffer, offset, padded);
  }
}

/** Copies `byteLength` bytes of a storage buffer to the host. One round trip: use once per step. */
export async function readBuffer(device: GPUDevice, buffer: GPUBuffer, byteLength = buffer.size, offset = 0): Promise<ArrayBuffer> {
  const size = align4(byteLength);
  const staging = device.createBuffer({ label: 'readback', size, usage: MAP_READ | COPY_DST });
  const encoder = device.createCommandEncoder({ label: 'readback' });
  encoder.copyBufferToBuffer(buffer, offset, staging, 0, size);
  device.queue.submit([encoder.finish()]);
  await staging.mapAsync(MAP_READ);
  const copy = staging.getMappedRange().slice(0, byteLength);
  staging.unmap();
  staging.destroy();
  return copy;
}

export async function readF32(device: GPUDevice, buffer: GPUBuffer, count: number): Promise<Float32Array> {
  return new Float32Array(await readBuffer(device, buffer, count * 4));
}

export async function readU32(device: GPUDevice, buffer: GPUBuffer, count: number): Promise<Uint32Array> {
  return new Uint32Array(await readBuffer(device, buffer, count * 4));
}
