// GGUF reader (versions 2 and 3, little-endian). Reads only the header: metadata and the tensor
// table. Tensor data stays in the source until someone asks for a row range of one tensor.
//
// The file is untrusted input. Every count and length is checked against the bytes the file could
// possibly hold *before* anything is allocated, so a corrupt or hostile header fails with a
// ModelFormatError that names the field, never with an out-of-memory crash.
//
// Layout (all little-endian):
//   magic "GGUF" | u32 version | u64 tensor_count | u64 kv_count
//   kv_count × (string key, u32 value_type, value)
//   tensor_count × (string name, u32 n_dims, n_dims × u64 dim, u32 ggml_type, u64 offset)
//   padding to `general.alignment` | tensor data (each tensor at data_offset + offset)
// A string is u64 length + UTF-8 bytes; an array is u32 element_type + u64 count + elements.
import { blockGeometry, ggmlTypeName, tensorByteLength, type GGMLType } from './ggml-type.ts';
import { ModelFormatError } from './errors.ts';
import type { ByteSource } from './source.ts';

/** GGUF metadata value type ids, as stored in the file. */
export const GGUFValueType = {
  UINT8: 0,
  INT8: 1,
  UINT16: 2,
  INT16: 3,
  UINT32: 4,
  INT32: 5,
  FLOAT32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  UINT64: 10,
  INT64: 11,
  FLOAT64: 12,
} as const;
export type GGUFValueType = (typeof GGUFValueType)[keyof typeof GGUFValueType];

/**
 * A metadata value. Scalars: numbers (u64/i64 as `bigint` only when beyond 2^53), booleans, strings.
 * Arrays: numeric arrays as typed arrays (64-bit integers as BigInt64Array/BigUint64Array),
 * string arrays as `string[]`, bool arrays as `boolean[]`, arrays of arrays as nested arrays.
 */
export type GGUFValue =
  | number
  | bigint
  | boolean
  | string
  | GGUFValue[]
  | string[]
  | Int8Array
  | Uint8Array
  | Int16Array
  | Uint16Array
  | Int32Array
  | Uint32Array
  | Float32Array
  | Float64Array
  | BigInt64Array
  | BigUint64Array;

export interface GGUFTensorInfo {
  name: string;
  /** ggml order: shape[0] is the row length (columns), shape[1] the rows, then outer dims. */
  shape: number[];
  type: GGMLType;
  /** Absolute file offset of the first byte. */
  offset: number;
  byteLength: number;
  /**
   * GPTQ act-order (Q4_ZP weights from a Hugging Face checkpoint, never in a GGUF file): column t
   * of the stored rows multiplies input feature inputOrder[t], so the matmul is fed x[inputOrder[t]]
   * (see src/model/awq-gptq.ts).
   */
  inputOrder?: Int32Array;
}

export interface GGUFFile {
  source: ByteSource;
  version: number;
  metadata: Map<string, GGUFValue>;
  /** The stored type of each metadata value (so a file can be re-written faithfully). */
  metadataTypes: Map<string, GGUFValueType>;
  tensors: GGUFTensorInfo[];
  /** The named tensor; throws a ModelFormatError naming it when absent. */
  tensor(name: string): GGUFTensorInfo;
  hasTensor(name: string): boolean;
  alignment: number;
  /** Absolute file offset where tensor data starts. */
  dataOffset: number;
}

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
export const GGUF_DEFAULT_ALIGNMENT = 32;
const SUPPORTED_VERSIONS = [2, 3];
const MAX_DIMS = 4;

/** Fewest bytes one entry can take, used to reject counts the file cannot hold before allocating. */
const MIN_BYTES = {
  kv: 8 + 4 + 1, // empty key, type, smallest value
  tensorInfo: 8 + 4 + 8 + 4 + 8, // empty name, n_dims, one dim, type, offset
  string: 8,
  array: 4 + 8,
};

const scalarSize: Partial<Record<number, number>> = {
  [GGUFValueType.UINT8]: 1,
  [GGUFValueType.INT8]: 1,
  [GGUFValueType.BOOL]: 1,
  [GGUFValueType.UINT16]: 2,
  [GGUFValueType.INT16]: 2,
  [GGUFValueType.UINT32]: 4,
  [GGUFValueType.INT32]: 4,
  [GGUFValueType.FLOAT32]: 4,
  [GGUFValueType.UINT64]: 8,
  [GGUFValueType.INT64]: 8,
  [GGUFValueType.FLOAT64]: 8,
};

// ---------------------------------------------------------------------------------------------
// A cursor over the header that fetches more of the file only when a field needs it.

const FIRST_CHUNK_BYTES = 64 * 1024;

class HeaderCursor {
  private bytes = new Uint8Array(0);
  private view = new DataView(this.bytes.buffer);
  pos = 0;
  private readonly decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

  constructor(readonly source: ByteSource) {}

  get remaining(): number {
    return this.source.size - this.pos;
  }

  /** Makes `n` bytes from `pos` available, reading a bigger prefix of the file if needed. */
  async need(n: number, what: string, where: Where = {}): Promise<void> {
    const end = this.pos + n;
    if (end <= this.bytes.length) return;
    if (end > this.source.size) {
      throw formatError(this.source, {
        ...where,
        problem: `the file ends inside the header (at ${what}, offset ${this.pos}: needs ${n} bytes, ${this.remaining} left)`,
        fix: 'The file is truncated; download it again',
      });
    }
    // Grow geometrically so a big header (a 128k-token vocabulary) takes few reads.
    const newLength = Math.min(this.source.size, Math.max(end, FIRST_CHUNK_BYTES, this.bytes.length * 2));
    const more = await this.source.read(this.bytes.length, newLength - this.bytes.length);
    const grown = new Uint8Array(newLength);
    grown.set(this.bytes);
    grown.set(more, this.bytes.length);
    this.bytes = grown;
    this.view = new DataView(grown.buffer);
  }

  u8(): number {
    return this.view.getUint8(this.pos++);
  }
  u32(): number {
    const value = this.view.getUint32(this.pos, true);
    this.pos += 4;
    return value;
  }
  u64(): bigint {
    const value = this.view.getBigUint64(this.pos, true);
    this.pos += 8;
    return value;
  }

  /** A copy of the next `n` bytes (already made available by `need`). */
  take(n: number): Uint8Array {
    const slice = this.bytes.slice(this.pos, this.pos + n);
    this.pos += n;
    return slice;
  }

  scalar(type: number): number | bigint | boolean {
    const { view, pos } = this;
    this.pos += scalarSize[type]!;
    switch (type) {
      case GGUFValueType.UINT8: return view.getUint8(pos);
      case GGUFValueType.INT8: return view.getInt8(pos);
      case GGUFValueType.BOOL: return view.getUint8(pos) !== 0;
      case GGUFValueType.UINT16: return view.getUint16(pos, true);
      case GGUFValueType.INT16: return view.getInt16(pos, true);
      case GGUFValueType.UINT32: return view.getUint32(pos, true);
      case GGUFValueType.INT32: return view.getInt32(pos, true);
      case GGUFValueType.FLOAT32: return view.getFloat32(pos, true);
      case GGUFValueType.FLOAT64: return view.getFloat64(pos, true);
      case GGUFValueType.UINT64: return narrowBigInt(view.getBigUint64(pos, true));
      case GGUFValueType.INT64: return narrowBigInt(view.getBigInt64(pos, true));
      default: throw new Error(`not a scalar type: ${type}`);
    }
  }

  decodeUtf8(bytes: Uint8Array): string {
    return this.decoder.decode(bytes);
  }
}

/** 64-bit integers become plain numbers when that loses nothing. */
function narrowBigInt(value: bigint): number | bigint {
  return value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
}

interface Where {
  field?: string;
  tensor?: string;
}

function formatError(source: ByteSource, details: Where & { problem: string; fix: string }): ModelFormatError {
  return new ModelFormatError({ file: source.name, ...details });
}

const CORRUPT_FIX = 'The file is corrupt or not a GGUF model; download or convert it again';

// ---------------------------------------------------------------------------------------------
// Header fields

/**
 * Reads a u64 count or length and proves the rest of the file could hold `count` items of at
 * least `minItemBytes` each, before the caller allocates anything for them.
 */
async function readCount(cursor: HeaderCursor, what: string, minItemBytes: number, where: Where): Promise<number> {
  await cursor.need(8, what, where);
  const count = cursor.u64();
  const fits = BigInt(cursor.remaining) / BigInt(Math.max(1, minItemBytes));
  if (count > fits) {
    throw formatError(cursor.source, {
      ...where,
      problem: `${what} is ${count}, but the ${cursor.remaining} bytes left in the file can hold at most ${fits}`,
      fix: CORRUPT_FIX,
    });
  }
  return Number(count);
}

async function readString(cursor: HeaderCursor, what: string, where: Where): Promise<string> {
  const length = await readCount(cursor, `length of ${what}`, 1, where);
  await cursor.need(length, what, where);
  const bytes = cursor.take(length);
  try {
    return cursor.decodeUtf8(bytes);
  } catch {
    throw formatError(cursor.source, { ...where, problem: `${what} is not valid UTF-8`, fix: CORRUPT_FIX });
  }
}

async function readValueType(cursor: HeaderCursor, what: string, where: Where): Promise<GGUFValueType> {
  await cursor.need(4, what, where);
  const type = cursor.u32();
  if (type > GGUFValueType.FLOAT64) {
    throw formatError(cursor.source, {
      ...where,
      problem: `${what} has unknown value type ${type} (known: 0..12)`,
      fix: 'The file is corrupt or written by a newer GGUF version; re-convert it with a current llama.cpp',
    });
  }
  return type as GGUFValueType;
}

async function readValue(cursor: HeaderCursor, type: GGUFValueType, key: string): Promise<GGUFValue> {
  const where = { field: key };
  if (type === GGUFValueType.STRING) return readString(cursor, `value of ${key}`, where);
  if (type === GGUFValueType.ARRAY) return readArray(cursor, key);
  await cursor.need(scalarSize[type]!, `value of ${key}`, where);
  return cursor.scalar(type);
}

type TypedArrayConstructor = new (buffer: ArrayBuffer) => GGUFValue;

const typedArrayFor: Partial<Record<number, TypedArrayConstructor>> = {
  [GGUFValueType.UINT8]: Uint8Array,
  [GGUFValueType.INT8]: Int8Array,
  [GGUFValueType.UINT16]: Uint16Array,
  [GGUFValueType.INT16]: Int16Array,
  [GGUFValueType.UINT32]: Uint32Array,
  [GGUFValueType.INT32]: Int32Array,
  [GGUFValueType.FLOAT32]: Float32Array,
  [GGUFValueType.FLOAT64]: Float64Array,
  [GGUFValueType.UINT64]: BigUint64Array,
  [GGUFValueType.INT64]: BigInt64Array,
};

async function readArray(cursor: HeaderCursor, key: string): Promise<GGUFValue> {
  const where = { field: key };
  const elementType = await readValueType(cursor, `element type of array ${key}`, where);
  const minElementBytes =
    elementType === GGUFValueType.STRING ? MIN_BYTES.string : elementType === GGUFValueType.ARRAY ? MIN_BYTES.array : scalarSize[elementType]!;
  const count = await readCount(cursor, `element count of array ${key}`, minElementBytes, where);

  const TypedArray = typedArrayFor[elementType];
  if (TypedArray) {
    const byteLength = count * minElementBytes;
    await cursor.need(byteLength, `array ${key}`, where);
    // A fresh buffer is aligned for any element size; GGUF is little-endian like every WebGPU host.
    return new TypedArray(cursor.take(byteLength).buffer as ArrayBuffer);
  }
  if (elementType === GGUFValueType.BOOL) {
    await cursor.need(count, `array ${key}`, where);
    return Array.from(cursor.take(count), (byte) => byte !== 0);
  }
  if (elementType === GGUFValueType.STRING) {
    const strings: string[] = [];
    for (let i = 0; i < count; i++) strings.push(await readString(cursor, `${key}[${i}]`, where));
    return strings;
  }
  const arrays: GGUFValue[] = [];
  for (let i = 0; i < count; i++) arrays.push(await readArray(cursor, `${key}[${i}]`));
  return arrays;
}

// ---------------------------------------------------------------------------------------------
// Tensor table

interface RawTensorInfo {
  name: string;
  shape: number[];
  type: number;
  /** Relative to the data section. */
  relativeOffset: bigint;
}

async function readTensorInfo(cursor: HeaderCursor, index: number): Promise<RawTensorInfo> {
  const name = await readString(cursor, `name of tensor #${index}`, { field: `tensor #${index}` });
  const where = { tensor: name };
  await cursor.need(4, `n_dims of tensor ${name}`, where);
  const nDims = cursor.u32();
  if (nDims === 0 || nDims > MAX_DIMS) {
    throw formatError(cursor.source, {
      ...where,
      problem: `tensor ${name} has ${nDims} dimensions (must be 1..${MAX_DIMS})`,
      fix: CORRUPT_FIX,
    });
  }
  await cursor.need(8 * nDims + 4 + 8, `shape, type and offset of tensor ${name}`, where);
  const shape: number[] = [];
  for (let d = 0; d < nDims; d++) {
    const dim = cursor.u64();
    if (dim === 0n || dim > BigInt(cursor.source.size) * 8n) {
      // The densest type (IQ1_S, ~1.6 bits a value) holds about 5 values a byte; 8 a byte is impossible.
      throw formatError(cursor.source, {
        ...where,
        problem: `tensor ${name} has dimension ${d} = ${dim}, impossible for a ${cursor.source.size}-byte file`,
        fix: CORRUPT_FIX,
      });
    }
    shape.push(Number(dim));
  }
  const type = cursor.u32();
  const relativeOffset = cursor.u64();
  return { name, shape, type, relativeOffset };
}

function elementCount(shape: readonly number[]): number {
  return shape.reduce((product, dim) => product * dim, 1);
}

/** Checks one tensor's type, size, alignment and bounds; returns its absolute placement. */
function placeTensor(source: ByteSource, raw: RawTensorInfo, dataOffset: number, alignment: number): GGUFTensorInfo {
  const { name } = raw;
  const where = { tensor: name };
  const geometry = blockGeometry[raw.type as GGMLType];
  if (!geometry) {
    throw formatError(source, {
      ...where,
      problem: `tensor ${name} has unknown or unsupported ggml type ${raw.type} (${ggmlTypeName(raw.type)})`,
      fix: 'Convert or quantize the model to a supported type (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K, ...)',
    });
  }
  const type = raw.type as GGMLType;
  if (raw.shape[0]! % geometry.blockSize !== 0) {
    throw formatError(source, {
      ...where,
      problem: `tensor ${name} has rows of ${raw.shape[0]} values, not a multiple of the ${ggmlTypeName(type)} block size ${geometry.blockSize}`,
      fix: CORRUPT_FIX,
    });
  }
  const count = elementCount(raw.shape);
  const byteLength = Number.isSafeInteger(count) ? tensorByteLength(type, count) : undefined;
  const start = BigInt(dataOffset) + raw.relativeOffset;
  if (byteLength === undefined || start + BigInt(byteLength) > BigInt(source.size)) {
    throw formatError(source, {
      ...where,
      problem:
        `tensor ${name} (${ggmlTypeName(type)} [${raw.shape.join(', ')}], ${byteLength ?? 'too many'} bytes at data offset ${raw.relativeOffset}) ` +
        `ends past the end of the ${source.size}-byte file`,
      fix: 'The file is truncated or corrupt; download it again',
    });
  }
  if (raw.relativeOffset % BigInt(alignment) !== 0n) {
    throw formatError(source, {
      ...where,
      problem: `tensor ${name} starts at data offset ${raw.relativeOffset}, not a multiple of the alignment ${alignment}`,
      fix: CORRUPT_FIX,
    });
  }
  return { name, shape: raw.shape, type, offset: Number(start), byteLength };
}

/** Tensors must not share bytes; a corrupt table that aliases them would silently load wrong weights. */
function checkNoOverlap(source: ByteSource, tensors: readonly GGUFTensorInfo[]): void {
  const byOffset = [...tensors].sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < byOffset.length; i++) {
    const previous = byOffset[i - 1]!;
    const current = byOffset[i]!;
    if (current.offset < previous.offset + previous.byteLength) {
      throw formatError(source, {
        tensor: current.name,
        problem: `tensor ${current.name} (bytes ${current.offset}..${current.offset + current.byteLength}) overlaps tensor ${previous.name} (bytes ${previous.offset}..${previous.offset + previous.byteLength})`,
        fix: CORRUPT_FIX,
      });
    }
  }
}

function readAlignment(source: ByteSource, metadata: Map<string, GGUFValue>): number {
  const value = metadata.get('general.alignment');
  if (value === undefined) return GGUF_DEFAULT_ALIGNMENT;
  if (typeof value !== 'number' || !Number.isInteger(value) || value <= 0 || (value & (value - 1)) !== 0) {
    throw formatError(source, {
      field: 'general.alignment',
      problem: `general.alignment is ${String(value)}, not a positive power of two`,
      fix: CORRUPT_FIX,
    });
  }
  return value;
}

// ---------------------------------------------------------------------------------------------

/** Reads the header of a GGUF v2/v3 file: metadata and tensor table. Tensor data is not read. */
export async function readGGUF(source: ByteSource): Promise<GGUFFile> {
  const cursor = new HeaderCursor(source);
  await cursor.need(4, 'magic', { field: 'magic' });
  const magic = cursor.u32();
  if (magic !== GGUF_MAGIC) {
    throw formatError(source, {
      field: 'magic',
      problem: `not a GGUF file (the first bytes are 0x${magic.toString(16).padStart(8, '0')}, a GGUF file starts with "GGUF")`,
      fix: 'Pass a .gguf model file (convert other formats with llama.cpp\'s convert_hf_to_gguf.py)',
    });
  }
  await cursor.need(4, 'version', { field: 'version' });
  const version = cursor.u32();
  if (!SUPPORTED_VERSIONS.includes(version)) {
    const bigEndian = (version & 0xffff) === 0 && version !== 0;
    throw formatError(source, {
      field: 'version',
      problem: bigEndian
        ? `GGUF version field reads ${version}: this is a big-endian GGUF file`
        : `unsupported GGUF version ${version} (supported: ${SUPPORTED_VERSIONS.join(', ')})`,
      fix: bigEndian || version > 3 ? 'Re-convert the model to a little-endian GGUF v3 file with a current llama.cpp' : 'Re-convert the model with a current llama.cpp (GGUF v1 is obsolete)',
    });
  }
  const tensorCount = await readCount(cursor, 'tensor_count', MIN_BYTES.tensorInfo, { field: 'tensor_count' });
  const kvCount = await readCount(cursor, 'metadata_kv_count', MIN_BYTES.kv, { field: 'metadata_kv_count' });

  const metadata = new Map<string, GGUFValue>();
  const metadataTypes = new Map<string, GGUFValueType>();
  for (let i = 0; i < kvCount; i++) {
    const key = await readString(cursor, `metadata key #${i}`, { field: `metadata key #${i}` });
    if (metadata.has(key)) {
      throw formatError(source, { field: key, problem: `metadata key ${key} appears twice`, fix: CORRUPT_FIX });
    }
    const type = await readValueType(cursor, `metadata ${key}`, { field: key });
    metadata.set(key, await readValue(cursor, type, key));
    metadataTypes.set(key, type);
  }
  const alignment = readAlignment(source, metadata);

  const rawTensors: RawTensorInfo[] = [];
  const seen = new Set<string>();
  for (let i = 0; i < tensorCount; i++) {
    const raw = await readTensorInfo(cursor, i);
    if (seen.has(raw.name)) {
      throw formatError(source, { tensor: raw.name, problem: `tensor ${raw.name} appears twice in the tensor table`, fix: CORRUPT_FIX });
    }
    seen.add(raw.name);
    rawTensors.push(raw);
  }

  const dataOffset = alignUp(cursor.pos, alignment);
  if (rawTensors.length > 0 && dataOffset > source.size) {
    throw formatError(source, {
      field: 'tensor data',
      problem: `the tensor data section would start at ${dataOffset}, past the end of the ${source.size}-byte file`,
      fix: 'The file is truncated; download it again',
    });
  }
  const tensors = rawTensors.map((raw) => placeTensor(source, raw, dataOffset, alignment));
  checkNoOverlap(source, tensors);
  return makeFile(source, version, metadata, metadataTypes, tensors, alignment, dataOffset);
}

function makeFile(
  source: ByteSource,
  version: number,
  metadata: Map<string, GGUFValue>,
  metadataTypes: Map<string, GGUFValueType>,
  tensors: GGUFTensorInfo[],
  alignment: number,
  dataOffset: number,
): GGUFFile {
  const byName = new Map(tensors.map((tensor) => [tensor.name, tensor]));
  return {
    source,
    version,
    metadata,
    metadataTypes,
    tensors,
    alignment,
    dataOffset,
    hasTensor: (name) => byName.has(name),
    tensor(name) {
      const tensor = byName.get(name);
      if (!tensor) {
        throw formatError(source, {
          tensor: name,
          problem: `tensor ${name} is missing (the file has ${tensors.length} tensors)`,
          fix: 'The model is incomplete or of a different architecture; check that it is the model you meant',
        });
      }
      return tensor;
    },
  };
}

export function alignUp(offset: number, alignment: number): number {
  return Math.ceil(offset / alignment) * alignment;
}

// ---------------------------------------------------------------------------------------------
// Typed metadata getters. Each throws a ModelFormatError naming the key when it is missing (and no
// fallback was given) or has the wrong type.

function missingKey(file: GGUFFile, key: string): ModelFormatError {
  return formatError(file.source, {
    field: key,
    problem: `metadata key ${key} is missing`,
    fix: 'The model is incomplete or of an unsupported architecture; re-convert it with a current llama.cpp',
  });
}

function wrongType(file: GGUFFile, key: string, expected: string, value: GGUFValue): ModelFormatError {
  const found = Array.isArray(value) ? 'an array' : ArrayBuffer.isView(value) ? value.constructor.name : `${typeof value} ${String(value)}`;
  return formatError(file.source, {
    field: key,
    problem: `metadata key ${key} should be ${expected}, found ${found}`,
    fix: CORRUPT_FIX,
  });
}

function lookup<T>(file: GGUFFile, key: string, fallback: T | undefined): GGUFValue | T {
  const value = file.metadata.get(key);
  if (value !== undefined) return value;
  if (fallback !== undefined) return fallback;
  throw missingKey(file, key);
}

/** Any numeric scalar (64-bit integers too, when they fit a double exactly). */
export function getNumber(file: GGUFFile, key: string, fallback?: number): number {
  const value = lookup(file, key, fallback);
  if (typeof value === 'number') return value;
  throw wrongType(file, key, 'a number', value);
}

/** A non-negative integer below 2^32 (stored as any integer type). */
export function getU32(file: GGUFFile, key: string, fallback?: number): number {
  const value = getNumber(file, key, fallback);
  if (Number.isInteger(value) && value >= 0 && value <= 0xffffffff) return value;
  throw wrongType(file, key, 'an unsigned 32-bit integer', value);
}

/** An integer that fits a double exactly (u64/i64 included). */
export function getInt(file: GGUFFile, key: string, fallback?: number): number {
  const value = getNumber(file, key, fallback);
  if (Number.isInteger(value)) return value;
  throw wrongType(file, key, 'an integer', value);
}

export function getF32(file: GGUFFile, key: string, fallback?: number): number {
  return getNumber(file, key, fallback);
}

export function getBool(file: GGUFFile, key: string, fallback?: boolean): boolean {
  const value = lookup(file, key, fallback);
  if (typeof value === 'boolean') return value;
  throw wrongType(file, key, 'a bool', value);
}

export function getString(file: GGUFFile, key: string, fallback?: string): string {
  const value = lookup(file, key, fallback);
  if (typeof value === 'string') return value;
  throw wrongType(file, key, 'a string', value);
}

export function getStringArray(file: GGUFFile, key: string, fallback?: string[]): string[] {
  const value = lookup(file, key, fallback);
  if (Array.isArray(value) && value.every((item) => typeof item === 'string')) return value as string[];
  throw wrongType(file, key, 'an array of strings', value);
}

function getNumericArray<T>(file: GGUFFile, key: string, expected: string, convert: (values: ArrayLike<number>) => T, fallback?: T): T {
  const value = lookup(file, key, fallback);
  if (value === fallback) return fallback as T;
  if (ArrayBuffer.isView(value) && !(value instanceof BigInt64Array) && !(value instanceof BigUint64Array)) {
    return convert(value as ArrayLike<number>);
  }
  throw wrongType(file, key, expected, value as GGUFValue);
}

/** A numeric array as Float32Array (converted from any non-64-bit-integer numeric array). */
export function getF32Array(file: GGUFFile, key: string, fallback?: Float32Array): Float32Array {
  return getNumericArray(file, key, 'a numeric array', (values) => (values instanceof Float32Array ? values : Float32Array.from(values)), fallback);
}

/** An integer array as Int32Array (e.g. `tokenizer.ggml.token_type`). */
export function getI32Array(file: GGUFFile, key: string, fallback?: Int32Array): Int32Array {
  return getNumericArray(
    file,
    key,
    'an integer array',
    (values) => {
      if (values instanceof Int32Array) return values;
      if (values instanceof Float32Array || values instanceof Float64Array) throw wrongType(file, key, 'an integer array', values);
      return Int32Array.from(values);
    },
    fallback,
  );
}

/** The architecture prefix of hyper-parameter keys, e.g. "llama" for `llama.block_count`. */
export function getArchitecture(file: GGUFFile): string {
  return getString(file, 'general.architecture');
}

// ---------------------------------------------------------------------------------------------
// Tensor data: row ranges and bounded chunks

/** Rows of a tensor: every dimension but the first (the row length), flattened. */
export function tensorRowCount(tensor: GGUFTensorInfo): number {
  return elementCount(tensor.shape.slice(1));
}

/** Bytes of one row (shape[0] values in the tensor's type). */
export function tensorRowBytes(tensor: GGUFTensorInfo): number {
  return tensor.byteLength / tensorRowCount(tensor);
}

export interface RowRange {
  /** First row (default 0). */
  rowStart?: number;
  /** Rows to read (default: to the last row). */
  rowCount?: number;
}

function resolveRows(file: GGUFFile, tensor: GGUFTensorInfo, range: RowRange): { rowStart: number; rowCount: number } {
  const rows = tensorRowCount(tensor);
  const rowStart = range.rowStart ?? 0;
  const rowCount = range.rowCount ?? rows - rowStart;
  if (!Number.isInteger(rowStart) || !Number.isInteger(rowCount) || rowStart < 0 || rowCount < 0 || rowStart + rowCount > rows) {
    throw new RangeError(`${file.source.name}: rows ${rowStart}..${rowStart + rowCount} are outside tensor ${tensor.name}, which has ${rows} rows`);
  }
  return { rowStart, rowCount };
}

/** Reads whole rows `rowStart .. rowStart + rowCount` of a tensor (all of it by default): exactly that byte range. */
export async function readTensorBytes(file: GGUFFile, tensor: GGUFTensorInfo, range: RowRange = {}): Promise<Uint8Array> {
  const { rowStart, rowCount } = resolveRows(file, tensor, range);
  const rowBytes = tensorRowBytes(tensor);
  return file.source.read(tensor.offset + rowStart * rowBytes, rowCount * rowBytes);
}

export interface TensorChunk {
  /** First row of this chunk (absolute row index in the tensor). */
  rowStart: number;
  rowCount: number;
  bytes: Uint8Array;
}

export interface ChunkOptions extends RowRange {
  /** Upper bound of one chunk (default 64 MiB); a chunk always holds whole rows, at least one. */
  maxChunkBytes?: number;
  /** Called after each chunk with the bytes read so far and in total. */
  onProgress?: (bytesDone: number, bytesTotal: number) => void;
}

export const DEFAULT_CHUNK_BYTES = 64 * 1024 * 1024;

/** Streams a row range of a tensor in chunks of whole rows, so big tensors never sit in memory at once. */
export async function* readTensorChunks(file: GGUFFile, tensor: GGUFTensorInfo, options: ChunkOptions = {}): AsyncGenerator<TensorChunk> {
  const { rowStart, rowCount } = resolveRows(file, tensor, options);
  const rowBytes = tensorRowBytes(tensor);
  const rowsPerChunk = Math.max(1, Math.floor((options.maxChunkBytes ?? DEFAULT_CHUNK_BYTES) / rowBytes));
  const bytesTotal = rowCount * rowBytes;
  let bytesDone = 0;
  for (let row = rowStart; row < rowStart + rowCount; row += rowsPerChunk) {
    const rows = Math.min(rowsPerChunk, rowStart + rowCount - row);
    const bytes = await file.source.read(tensor.offset + row * rowBytes, rows * rowBytes);
    bytesDone += bytes.length;
    options.onProgress?.(bytesDone, bytesTotal);
    yield { rowStart: row, rowCount: rows, bytes };
  }
}
