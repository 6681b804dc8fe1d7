// Hugging Face safetensors: one file, or an index (`model.safetensors.index.json`) and its shards.
//
// A file is an 8-byte little-endian header length N, N bytes of JSON
//     { "__metadata__": { string: string }?, name: { dtype, shape, data_offsets: [begin, end] }, ... }
// and the tensor data; offsets are relative to the data section (just after the header). Only
// the header is read here; tensors are read later by byte range through the same ByteSource
// (files in Node/Deno, HTTP Range URLs, Blobs), so a tensor-parallel shard reads only its part.
// Every check that the GGUF reader makes has its counterpart, and failures are ModelFormatErrors
// that name the file, the tensor and the fix.
//
// Tensors are presented like GGUF's (name, type, ggml-order shape, absolute offset, byte length)
// plus the source they live in, so the weight loader can read either through one adapter
// (`ggufView`); shapes are also kept in the file's own order (outermost first).
import { ModelFormatError } from './errors.ts';
import { GGMLType } from './ggml-type.ts';
import { isJsonObject, parseJson } from './json.ts';
import type { GGUFTensorInfo } from './gguf.ts';
import type { ByteSource } from './source.ts';

/** Bytes per element of each dtype the safetensors format defines (packed int4 travels as I32). */
export const SAFETENSORS_DTYPE_BYTES = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
} as const;

export type SafetensorsDtype = keyof typeof SAFETENSORS_DTYPE_BYTES;

/** The ggml type of the dtypes that have one (the float weights and the int32 of AWQ/GPTQ). */
const GGML_OF_DTYPE: Partial<Record<SafetensorsDtype, GGMLType>> = {
  F64: GGMLType.F64,
  F32: GGMLType.F32,
  F16: GGMLType.F16,
  BF16: GGMLType.BF16,
  I64: GGMLType.I64,
  I32: GGMLType.I32,
  I16: GGMLType.I16,
  I8: GGMLType.I8,
};

/**
 * The safetensors library refuses headers over 100 MB; real ones are well under 1 MB even for
 * thousands of tensors. A bigger length is a corrupt or hostile file, not a model.
 */
export const MAX_SAFETENSORS_HEADER_BYTES = 100_000_000;

export interface SafetensorsTensor {
  name: string;
  dtype: SafetensorsDtype;
  /** As stored: outermost dimension first (a Linear weight is [out, in]). */
  shape: number[];
  /** Absolute offset of the first byte in `source`. */
  offset: number;
  byteLength: number;
  /** The file it lives in. */
  source: ByteSource;
}

export interface SafetensorsFile {
  source: ByteSource;
  /** `__metadata__` (string to string), or empty. */
  metadata: Record<string, string>;
  tensors: SafetensorsTensor[];
  /** Absolute offset of the data section. */
  dataOffset: number;
  /** The named tensor; throws a ModelFormatError naming it when absent. */
  tensor(name: string): SafetensorsTensor;
  hasTensor(name: string): boolean;
}

/** One file or all shards of an index, as one set of tensors. */
export interface SafetensorsModel {
  /** Each file once, in the order the index names them. */
  files: SafetensorsFile[];
  tensors: SafetensorsTensor[];
  /** The index's `metadata` (e.g. total_size), or the single file's `__metadata__`. */
  metadata: Record<string, unknown>;
  tensor(name: string): SafetensorsTensor;
  hasTensor(name: string): boolean;
}

const CORRUPT_FIX = 'The file is truncated or corrupt, or not a safetensors file; download or export it again';

function formatError(file: string, problem: string, fix: string, tensor?: string, field?: string): ModelFormatError {
  return new ModelFormatError({ file, problem, fix, ...(tensor !== undefined ? { tensor } : {}), ...(field !== undefined ? { field } : {}) });
}

/** A name lookup that throws a ModelFormatError naming the missing tensor. */
function tensorLookup(file: string, tensors: readonly SafetensorsTensor[]) {
  const byName = new Map(tensors.map((t) => [t.name, t]));
  return {
    tensor(name: string): SafetensorsTensor {
      const t = byName.get(name);
      if (!t) throw formatError(file, `there is no tensor ${name}`, 'Check that the checkpoint matches its config.json (architecture and layer count)', name);
      return t;
    },
    hasTensor: (name: string) => byName.has(name),
  };
}

const isCount = (value: unknown): value is number => typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;

/** Checks one header entry; returns the tensor with absolute offsets. */
function parseEntry(source: ByteSource, name: string, entry: unknown, dataOffset: number, dataBytes: number): SafetensorsTensor {
  const fail = (problem: string, fix = CORRUPT_FIX) => formatError(source.name, `tensor ${name} ${problem}`, fix, name);
  if (!isJsonObject(entry)) throw fail('is not a {dtype, shape, data_offsets} object');
  const { dtype, shape, data_offsets: offsets } = entry;
  if (typeof dtype !== 'string' || !(dtype in SAFETENSORS_DTYPE_BYTES)) {
    throw fail(
      `has unknown dtype ${JSON.stringify(dtype)} (known: ${Object.keys(SAFETENSORS_DTYPE_BYTES).join(', ')})`,
      'Export the checkpoint with a current safetensors library, in F32, F16 or BF16 (or AWQ/GPTQ int32 packing)',
    );
  }
  if (!Array.isArray(shape) || !shape.every(isCount)) throw fail(`has shape ${JSON.stringify(shape)}, not a list of non-negative integers`);
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount) || offsets[0] > offsets[1]) {
    throw fail(`has data_offsets ${JSON.stringify(offsets)}, not [begin, end] with 0 <= begin <= end`);
  }
  const [begin, end] = offsets as [number, number];
  const elements = (shape as number[]).reduce((product, dim) => product * dim, 1);
  const expected = elements * SAFETENSORS_DTYPE_BYTES[dtype as SafetensorsDtype];
  if (!Number.isSafeInteger(expected) || expected !== end - begin) {
    throw fail(`(${dtype} [${(shape as number[]).join(', ')}]) needs ${expected} bytes, but its data_offsets [${begin}, ${end}] hold ${end - begin}`);
  }
  if (end > dataBytes) {
    throw fail(`has data_offsets [${begin}, ${end}], past the end of the ${dataBytes}-byte data section (the file is ${source.size} bytes)`, 'The file is truncated; download it again');
  }
  return { name, dtype: dtype as SafetensorsDtype, shape: shape as number[], offset: dataOffset + begin, byteLength: end - begin, source };
}

/** Tensors must not share bytes (a corrupt table that aliases them would silently load wrong weights). */
function checkNoOverlap(source: ByteSource, tensors: readonly SafetensorsTensor[]): void {
  const sorted = tensors.filter((t) => t.byteLength > 0).sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) {
    const [previous, current] = [sorted[i - 1]!, sorted[i]!];
    if (current.offset < previous.offset + previous.byteLength) {
      throw formatError(
        source.name,
        `tensor ${current.name} (data bytes ${current.offset}..${current.offset + current.byteLength}) overlaps tensor ${previous.name} (${previous.offset}..${previous.offset + previous.byteLength})`,
        CORRUPT_FIX,
        current.name,
      );
    }
  }
}

/** Reads and checks the header of one safetensors file. Tensor data is not read. */
export async function readSafetensors(source: ByteSource): Promise<SafetensorsFile> {
  if (source.size < 8) {
    throw formatError(source.name, `the file is ${source.size} bytes, shorter than the 8-byte header length`, 'The file is truncated or empty; download it again', undefined, 'header length');
  }
  const lengthBytes = await source.read(0, 8);
  const headerLength = new DataView(lengthBytes.buffer, lengthBytes.byteOffset, 8).getBigUint64(0, true);
  if (headerLength > BigInt(MAX_SAFETENSORS_HEADER_BYTES)) {
    throw formatError(source.name, `the header length is ${headerLength} bytes, over the ${MAX_SAFETENSORS_HEADER_BYTES}-byte maximum`, CORRUPT_FIX, undefined, 'header length');
  }
  const dataOffset = 8 + Number(headerLength);
  if (dataOffset > source.size) {
    throw formatError(source.name, `the header length is ${headerLength} bytes, past the end of the ${source.size}-byte file`, 'The file is truncated; download it again', undefined, 'header length');
  }
  const header = parseJson(source.name, await source.read(8, Number(headerLength)), 'the header', CORRUPT_FIX, 'header');
  if (!isJsonObject(header)) throw formatError(source.name, 'the header is not a JSON object', CORRUPT_FIX, undefined, 'header');

  let metadata: Record<string, string> = {};
  const tensors: SafetensorsTensor[] = [];
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') {
      if (!isJsonObject(entry) || !Object.values(entry).every((v) => typeof v === 'string')) {
        throw formatError(source.name, '__metadata__ is not an object of strings', CORRUPT_FIX, undefined, '__metadata__');
      }
      metadata = entry as Record<string, string>;
      continue;
    }
    tensors.push(parseEntry(source, name, entry, dataOffset, source.size - dataOffset));
  }
  checkNoOverlap(source, tensors);
  return { source, metadata, tensors, dataOffset, ...tensorLookup(source.name, tensors) };
}

/** A one-file checkpoint as a model. */
export async function readSafetensorsModel(source: ByteSource): Promise<SafetensorsModel> {
  const file = await readSafetensors(source);
  return { files: [file], tensors: file.tensors, metadata: file.metadata, tensor: file.tensor, hasTensor: file.hasTensor };
}

/**
 * A sharded checkpoint: the index and its shards, each opened by `openShard(fileName)` (relative
 * to the index; e.g. a path join, a URL resolve, or a lookup among dropped Files). Every shard the
 * weight_map names must exist and hold the tensors it is named for; shards it does not name are
 * never opened (as vLLM does, which skips e.g. a stray consolidated.safetensors).
 */
export async function readSafetensorsIndex(index: ByteSource, openShard: (fileName: string) => Promise<ByteSource>): Promise<SafetensorsModel> {
  const json = parseJson(index.name, await index.read(0, index.size), 'the index', 'Download model.safetensors.index.json again', 'index');
  const weightMap = isJsonObject(json) ? json.weight_map : undefined;
  if (!isJsonObject(weightMap) || !Object.values(weightMap).every((v) => typeof v === 'string' && v.length > 0)) {
    throw formatError(index.name, 'the index has no weight_map of tensor name to file name', 'Download model.safetensors.index.json again', undefined, 'weight_map');
  }
  const names = [...new Set(Object.values(weightMap) as string[])];
  const files: SafetensorsFile[] = [];
  for (const fileName of names) {
    if (fileName.includes('/') || fileName.includes('\\') || fileName === '..' || fileName === '.') {
      throw formatError(index.name, `weight_map names the shard "${fileName}", which is not a file name beside the index`, 'Download model.safetensors.index.json again', undefined, 'weight_map');
    }
    let shard: ByteSource;
    try {
      shard = await openShard(fileName);
    } catch (cause) {
      const tensor = Object.keys(weightMap).find((t) => weightMap[t] === fileName)!;
      throw new ModelFormatError({
        file: index.name,
        field: 'weight_map',
        tensor,
        problem: `weight_map puts ${tensor} (and others) in shard ${fileName}, which cannot be opened: ${(cause as Error).message}`,
        fix: `Download ${fileName} into the same folder as the index`,
      });
    }
    files.push(await readSafetensors(shard));
  }
  const byFile = new Map(names.map((name, i) => [name, files[i]!]));
  const tensors: SafetensorsTensor[] = [];
  for (const [tensor, fileName] of Object.entries(weightMap) as Array<[string, string]>) {
    const file = byFile.get(fileName)!;
    if (!file.hasTensor(tensor)) {
      throw formatError(index.name, `weight_map puts tensor ${tensor} in ${fileName}, which does not hold it`, `Download ${fileName} and the index again (they are from different revisions)`, tensor, 'weight_map');
    }
    tensors.push(file.tensor(tensor));
  }
  const metadata = isJsonObject(json) && isJsonObject(json.metadata) ? json.metadata : {};
  return { files, tensors, metadata, ...tensorLookup(index.name, tensors) };
}

/** Reads a tensor's bytes (all of them). */
export function readSafetensorsBytes(tensor: SafetensorsTensor): Promise<Uint8Array> {
  return tensor.source.read(tensor.offset, tensor.byteLength);
}

/**
 * A tensor as the weight loader sees GGUF tensors: ggml order (row length first) and ggml type,
 * under its GGUF name, plus the source it lives in (a sharded checkpoint has several). Throws for
 * dtypes with no ggml type (U8, BOOL, F8): no weight the engine reads is stored that way.
 */
export function ggufView(tensor: SafetensorsTensor, ggufName: string): GGUFTensorInfo & { source: ByteSource } {
  const type = GGML_OF_DTYPE[tensor.dtype];
  if (type === undefined) {
    throw formatError(tensor.source.name, `tensor ${tensor.name} is ${tensor.dtype}, which webshard does not read`, 'Export the weights as F32, F16 or BF16', tensor.name);
  }
  return { name: ggufName, shape: [...tensor.shape].reverse(), type, offset: tensor.offset, byteLength: tensor.byteLength, source: tensor.source };
}
