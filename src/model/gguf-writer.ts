// GGUF writer (v3 by default, v2 on request; little-endian). Used by tests and by the random model
// generator. Metadata values carry explicit type tags (`ggufValue.u16(7)`), so every GGUF value
// type can be written and round-tripped. Two entry points share one layout:
//   writeGGUF(spec)              -> Uint8Array        small files, tests
//   writeGGUFStream(spec, sink)  -> chunks to a sink  big files: tensor data comes from callbacks,
//                                                     so a 1 GB model is never one buffer
import { blockGeometry, ggmlTypeName, tensorByteLength, type GGMLType } from './ggml-type.ts';
import { GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUFValueType, alignUp } from './gguf.ts';

type NumberTypeName = 'u8' | 'i8' | 'u16' | 'i16' | 'u32' | 'i32' | 'f32' | 'f64';
type BigTypeName = 'u64' | 'i64';
export type GGUFValueTypeName = NumberTypeName | BigTypeName | 'bool' | 'string' | 'array';

/** An array value; arrays may nest (`elementType: 'array'`). */
export type GGUFTypedArray =
  | { type: 'array'; elementType: NumberTypeName; value: ArrayLike<number> }
  | { type: 'array'; elementType: BigTypeName; value: ArrayLike<number | bigint> }
  | { type: 'array'; elementType: 'bool'; value: readonly boolean[] }
  | { type: 'array'; elementType: 'string'; value: readonly string[] }
  | { type: 'array'; elementType: 'array'; value: readonly GGUFTypedArray[] };

/** A metadata value with its GGUF type spelled out. */
export type GGUFTypedValue =
  | { type: NumberTypeName; value: number }
  | { type: BigTypeName; value: number | bigint }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string }
  | GGUFTypedArray;

/** Constructors for typed metadata values: `ggufValue.u32(2048)`, `ggufValue.array('f32', scores)`. */
export const ggufValue = {
  u8: (value: number): GGUFTypedValue => ({ type: 'u8', value }),
  i8: (value: number): GGUFTypedValue => ({ type: 'i8', value }),
  u16: (value: number): GGUFTypedValue => ({ type: 'u16', value }),
  i16: (value: number): GGUFTypedValue => ({ type: 'i16', value }),
  u32: (value: number): GGUFTypedValue => ({ type: 'u32', value }),
  i32: (value: number): GGUFTypedValue => ({ type: 'i32', value }),
  f32: (value: number): GGUFTypedValue => ({ type: 'f32', value }),
  f64: (value: number): GGUFTypedValue => ({ type: 'f64', value }),
  u64: (value: number | bigint): GGUFTypedValue => ({ type: 'u64', value }),
  i64: (value: number | bigint): GGUFTypedValue => ({ type: 'i64', value }),
  bool: (value: boolean): GGUFTypedValue => ({ type: 'bool', value }),
  string: (value: string): GGUFTypedValue => ({ type: 'string', value }),
  array: typedArray,
};

function typedArray(elementType: NumberTypeName, value: ArrayLike<number>): GGUFTypedArray;
function typedArray(elementType: BigTypeName, value: ArrayLike<number | bigint>): GGUFTypedArray;
function typedArray(elementType: 'bool', value: readonly boolean[]): GGUFTypedArray;
function typedArray(elementType: 'string', value: readonly string[]): GGUFTypedArray;
function typedArray(elementType: 'array', value: readonly GGUFTypedArray[]): GGUFTypedArray;
function typedArray(elementType: GGUFTypedArray['elementType'], value: GGUFTypedArray['value']): GGUFTypedArray {
  return { type: 'array', elementType, value } as GGUFTypedArray;
}

const typeIds: Record<GGUFValueTypeName, GGUFValueType> = {
  u8: GGUFValueType.UINT8,
  i8: GGUFValueType.INT8,
  u16: GGUFValueType.UINT16,
  i16: GGUFValueType.INT16,
  u32: GGUFValueType.UINT32,
  i32: GGUFValueType.INT32,
  f32: GGUFValueType.FLOAT32,
  bool: GGUFValueType.BOOL,
  string: GGUFValueType.STRING,
  array: GGUFValueType.ARRAY,
  u64: GGUFValueType.UINT64,
  i64: GGUFValueType.INT64,
  f64: GGUFValueType.FLOAT64,
};

/** Tensor data: bytes, or a callback producing them in chunks (for files too big for one buffer). */
export type TensorData = Uint8Array | (() => Iterable<Uint8Array> | AsyncIterable<Uint8Array>);

export interface GGUFTensorSpec<Data = Uint8Array> {
  name: string;
  /** ggml order: shape[0] is the row length. */
  shape: number[];
  type: GGMLType;
  data: Data;
}

export interface GGUFWriteSpec<Data = Uint8Array> {
  metadata: Array<[string, GGUFTypedValue]>;
  tensors: Array<GGUFTensorSpec<Data>>;
  /** Tensor data alignment (default: `general.alignment` from metadata, else 32); written to metadata when not 32. */
  alignment?: number;
  /** 3 (default) or 2: the two differ only in the version field for little-endian files. */
  version?: 2 | 3;
}

// ---------------------------------------------------------------------------------------------
// Header encoding

/** A little-endian byte builder that grows as needed. */
class ByteWriter {
  private bytes = new Uint8Array(4096);
  private view = new DataView(this.bytes.buffer);
  length = 0;
  private readonly encoder = new TextEncoder();

  private reserve(n: number): DataView {
    if (this.length + n > this.bytes.length) {
      const grown = new Uint8Array(Math.max(this.length + n, this.bytes.length * 2));
      grown.set(this.bytes.subarray(0, this.length));
      this.bytes = grown;
      this.view = new DataView(grown.buffer);
    }
    return this.view;
  }

  u8(value: number): void {
    this.reserve(1).setUint8(this.length, value);
    this.length += 1;
  }
  u32(value: number): void {
    this.reserve(4).setUint32(this.length, value, true);
    this.length += 4;
  }
  u64(value: number | bigint): void {
    this.reserve(8).setBigUint64(this.length, BigInt(value), true);
    this.length += 8;
  }
  bytesOf(bytes: Uint8Array): void {
    this.reserve(bytes.length);
    this.bytes.set(bytes, this.length);
    this.length += bytes.length;
  }
  string(value: string): void {
    const utf8 = this.encoder.encode(value);
    this.u64(utf8.length);
    this.bytesOf(utf8);
  }
  zeros(n: number): void {
    this.reserve(n);
    this.bytes.fill(0, this.length, this.length + n);
    this.length += n;
  }

  scalar(type: Exclude<GGUFValueTypeName, 'string' | 'array'>, value: number | bigint | boolean): void {
    const size = { u8: 1, i8: 1, bool: 1, u16: 2, i16: 2, u32: 4, i32: 4, f32: 4, u64: 8, i64: 8, f64: 8 }[type];
    const view = this.reserve(size);
    const at = this.length;
    this.length += size;
    switch (type) {
      case 'u8': return view.setUint8(at, value as number);
      case 'i8': return view.setInt8(at, value as number);
      case 'bool': return view.setUint8(at, value ? 1 : 0);
      case 'u16': return view.setUint16(at, value as number, true);
      case 'i16': return view.setInt16(at, value as number, true);
      case 'u32': return view.setUint32(at, value as number, true);
      case 'i32': return view.setInt32(at, value as number, true);
      case 'f32': return view.setFloat32(at, value as number, true);
      case 'f64': return view.setFloat64(at, value as number, true);
      case 'u64': return view.setBigUint64(at, BigInt(value as number | bigint), true);
      case 'i64': return view.setBigInt64(at, BigInt(value as number | bigint), true);
    }
  }

  value(typed: GGUFTypedValue): void {
    if (typed.type === 'string') this.string(typed.value);
    else if (typed.type === 'array') this.array(typed);
    else this.scalar(typed.type, typed.value);
  }

  array(typed: GGUFTypedArray): void {
    this.u32(typeIds[typed.elementType]);
    this.u64(typed.value.length);
    for (let i = 0; i < typed.value.length; i++) {
      const item = typed.value[i]!;
      if (typed.elementType === 'string') this.string(item as string);
      else if (typed.elementType === 'array') this.array(item as GGUFTypedArray);
      else this.scalar(typed.elementType, item as number | bigint | boolean);
    }
  }

  result(): Uint8Array {
    return this.bytes.slice(0, this.length);
  }
}

interface Layout {
  /** Everything before the tensor data, padding included. */
  header: Uint8Array;
  alignment: number;
  tensors: Array<{ byteLength: number; paddedLength: number }>;
  totalBytes: number;
}

function resolveAlignment(spec: GGUFWriteSpec<unknown>): { alignment: number; metadata: Array<[string, GGUFTypedValue]> } {
  const declared = spec.metadata.find(([key]) => key === 'general.alignment')?.[1];
  const declaredValue = declared && typeof declared.value === 'number' ? declared.value : undefined;
  const alignment = spec.alignment ?? declaredValue ?? GGUF_DEFAULT_ALIGNMENT;
  if (!Number.isInteger(alignment) || alignment <= 0 || (alignment & (alignment - 1)) !== 0) {
    throw new RangeError(`GGUF alignment must be a positive power of two, got ${alignment}`);
  }
  if (declaredValue !== undefined && declaredValue !== alignment) {
    throw new RangeError(`alignment ${alignment} contradicts general.alignment ${declaredValue} in the metadata`);
  }
  const metadata =
    declared || alignment === GGUF_DEFAULT_ALIGNMENT ? spec.metadata : [...spec.metadata, ['general.alignment', ggufValue.u32(alignment)] as [string, GGUFTypedValue]];
  return { alignment, metadata };
}

function tensorBytes(tensor: GGUFTensorSpec<unknown>): number {
  const count = tensor.shape.reduce((product, dim) => product * dim, 1);
  const byteLength = tensorByteLength(tensor.type, count);
  const blockSize = blockGeometry[tensor.type]?.blockSize;
  if (byteLength === undefined || blockSize === undefined || tensor.shape[0]! % blockSize !== 0) {
    throw new RangeError(`tensor ${tensor.name}: rows of ${tensor.shape[0]} values are not whole blocks of ${ggmlTypeName(tensor.type)} (or the type is unknown)`);
  }
  return byteLength;
}

/** Encodes the header and computes where every tensor goes. */
function layOut(spec: GGUFWriteSpec<unknown>): Layout {
  const { alignment, metadata } = resolveAlignment(spec);
  const tensors = spec.tensors.map((tensor) => {
    const byteLength = tensorBytes(tensor);
    return { byteLength, paddedLength: alignUp(byteLength, alignment) };
  });

  const out = new ByteWriter();
  out.u32(GGUF_MAGIC);
  out.u32(spec.version ?? 3);
  out.u64(spec.tensors.length);
  out.u64(metadata.length);
  for (const [key, value] of metadata) {
    out.string(key);
    out.u32(typeIds[value.type]);
    out.value(value);
  }
  let offset = 0;
  spec.tensors.forEach((tensor, i) => {
    out.string(tensor.name);
    out.u32(tensor.shape.length);
    for (const dim of tensor.shape) out.u64(dim);
    out.u32(tensor.type);
    out.u64(offset);
    offset += tensors[i]!.paddedLength;
  });
  out.zeros(alignUp(out.length, alignment) - out.length);
  const header = out.result();
  return { header, alignment, tensors, totalBytes: header.length + offset };
}

function sizeMismatch(name: string, expected: number, got: number): RangeError {
  return new RangeError(`tensor ${name}: its type and shape make ${expected} bytes, but its data has ${got}`);
}

// ---------------------------------------------------------------------------------------------

/** Writes a whole GGUF file into one buffer. */
export function writeGGUF(spec: GGUFWriteSpec): Uint8Array {
  const layout = layOut(spec);
  const file = new Uint8Array(layout.totalBytes);
  file.set(layout.header);
  let at = layout.header.length;
  spec.tensors.forEach((tensor, i) => {
    const { byteLength, paddedLength } = layout.tensors[i]!;
    if (tensor.data.length !== byteLength) throw sizeMismatch(tensor.name, byteLength, tensor.data.length);
    file.set(tensor.data, at); // padding stays zero
    at += paddedLength;
  });
  return file;
}

/** The size `writeGGUF`/`writeGGUFStream` will produce for `spec` (tensor data is not touched). */
export function ggufFileSize(spec: GGUFWriteSpec<unknown>): number {
  return layOut(spec).totalBytes;
}

/**
 * Writes a GGUF file as a sequence of chunks to `sink`, in file order. Tensor data may be a
 * callback yielding chunks of any size; their total must match the tensor's type and shape.
 */
export async function writeGGUFStream(spec: GGUFWriteSpec<TensorData>, sink: (chunk: Uint8Array) => Promise<void> | void): Promise<void> {
  const layout = layOut(spec);
  await sink(layout.header);
  for (let i = 0; i < spec.tensors.length; i++) {
    const tensor = spec.tensors[i]!;
    const { byteLength, paddedLength } = layout.tensors[i]!;
    await writeTensorData(tensor.name, tensor.data, byteLength, sink);
    if (paddedLength > byteLength) await sink(new Uint8Array(paddedLength - byteLength));
  }
}

/**
 * Streams one tensor's data (bytes, or a callback yielding chunks of any size) to `sink`, checking
 * that it is exactly `byteLength` bytes (also the safetensors writer's).
 */
export async function writeTensorData(name: string, data: TensorData, byteLength: number, sink: (chunk: Uint8Array) => Promise<void> | void): Promise<void> {
  let written = 0;
  for await (const chunk of data instanceof Uint8Array ? [data] : data()) {
    written += chunk.length;
    if (written > byteLength) throw sizeMismatch(name, byteLength, written);
    await sink(chunk);
  }
  if (written !== byteLength) throw sizeMismatch(name, byteLength, written);
}
