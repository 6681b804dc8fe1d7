// Hugging Face safetensors writer: one file, or N shards and a `model.safetensors.index.json`, laid
// out as the Python library (`safetensors.torch.save_file`, Rust core) and transformers'
// `save_pretrained` write them, so the reader (./safetensors.ts) is tested on the files it will
// meet:
// * tensors sorted by dtype (widest-aligned first, the Rust `Dtype` order) then by name, packed
//   back to back with no padding; the header lists `__metadata__` first, then the tensors in that
//   order;
// * the JSON header padded with spaces to a multiple of 8 bytes, so the data section (and every
//   tensor of 8-byte-multiple size) starts 8-byte aligned;
// * shards named `model-00001-of-00003.safetensors`; the index holds `metadata.total_size` (tensor
//   bytes, not file bytes) and `weight_map` sorted by tensor name, as transformers dumps it.
//
// Tensor data is bytes or a callback yielding chunks (src/model/gguf-writer.ts `TensorData`), so a
// 2.5 GB checkpoint streams to disk and is never one buffer. Files go to a `FileTarget`: memory
// (tests, the browser) or a local directory (Node and Deno, through node:fs/promises).
import { writeTensorData, type TensorData } from './gguf-writer.ts';
import { localFileSystem } from './source.ts';
import { SAFETENSORS_DTYPE_BYTES, type SafetensorsDtype } from './safetensors.ts';

export interface SafetensorsTensorSpec {
  name: string;
  dtype: SafetensorsDtype;
  /** Outermost dimension first (a Linear weight is [out, in]). */
  shape: number[];
  data: TensorData;
}

export interface SafetensorsFileSpec {
  /** `__metadata__` (string to string); transformers writes `{ format: 'pt' }`. */
  metadata?: Record<string, string>;
  tensors: SafetensorsTensorSpec[];
}

/** Receives a file's bytes in order. */
export type ChunkSink = (chunk: Uint8Array) => Promise<void> | void;

/** The Rust library's `Dtype` declaration order: it writes tensors of later dtypes first. */
const DTYPE_ORDER: readonly SafetensorsDtype[] = ['BOOL', 'U8', 'I8', 'F8_E5M2', 'F8_E4M3', 'I16', 'U16', 'F16', 'BF16', 'I32', 'U32', 'F32', 'F64', 'I64', 'U64'];

export const INDEX_FILE = 'model.safetensors.index.json';

/** Bytes a tensor of this dtype and shape holds. */
export function safetensorsByteLength(dtype: SafetensorsDtype, shape: readonly number[]): number {
  return shape.reduce((product, dim) => product * dim, SAFETENSORS_DTYPE_BYTES[dtype]);
}

interface Layout {
  header: Uint8Array;
  /** The tensors in file order, with their byte lengths. */
  tensors: Array<SafetensorsTensorSpec & { byteLength: number }>;
  fileBytes: number;
}

function layOut(spec: SafetensorsFileSpec): Layout {
  const tensors = spec.tensors
    .map((t) => ({ ...t, byteLength: safetensorsByteLength(t.dtype, t.shape) }))
    .sort((a, b) => DTYPE_ORDER.indexOf(b.dtype) - DTYPE_ORDER.indexOf(a.dtype) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const names = new Set<string>();
  const header: Record<string, unknown> = spec.metadata ? { __metadata__: spec.metadata } : {};
  let offset = 0;
  for (const t of tensors) {
    if (names.has(t.name) || t.name === '__metadata__') throw new RangeError(`safetensors writer: tensor name ${t.name} is used twice or reserved`);
    names.add(t.name);
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.byteLength] };
    offset += t.byteLength;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  const bytes = new Uint8Array(8 + padded).fill(0x20); // spaces, as the library pads
  new DataView(bytes.buffer).setBigUint64(0, BigInt(padded), true);
  bytes.set(json, 8);
  return { header: bytes, tensors, fileBytes: bytes.length + offset };
}

/** The size `writeSafetensorsStream` will produce (tensor data is not touched). */
export function safetensorsFileSize(spec: SafetensorsFileSpec): number {
  return layOut(spec).fileBytes;
}

/** Writes one safetensors file to `sink`, in file order; each tensor's data must match its dtype and shape. */
export async function writeSafetensorsStream(spec: SafetensorsFileSpec, sink: ChunkSink): Promise<void> {
  const layout = layOut(spec);
  await sink(layout.header);
  for (const t of layout.tensors) await writeTensorData(t.name, t.data, t.byteLength, sink);
}

/** One safetensors file in memory (small checkpoints, tests). */
export async function writeSafetensors(spec: SafetensorsFileSpec): Promise<Uint8Array> {
  const file = new Uint8Array(safetensorsFileSize(spec));
  let at = 0;
  await writeSafetensorsStream(spec, (chunk) => {
    file.set(chunk, at);
    at += chunk.length;
  });
  return file;
}

// ---------------------------------------------------------------------------------------------
// Sharding

export interface SafetensorsShard {
  /** `model.safetensors`, or `model-00001-of-00002.safetensors`. */
  fileName: string;
  spec: SafetensorsFileSpec;
}

export interface ShardedSafetensors {
  shards: SafetensorsShard[];
  /** `model.safetensors.index.json`'s text; absent for a single file. */
  index?: string;
}

/**
 * Splits a checkpoint's tensors (in the order given: transformers keeps the state dict's) into
 * `shardCount` consecutive runs of about equal bytes, as `save_pretrained`'s max_shard_size does
 * by size; one shard is the single-file layout with no index.
 */
export function shardSafetensors(tensors: readonly SafetensorsTensorSpec[], shardCount = 1, metadata: Record<string, string> = { format: 'pt' }): ShardedSafetensors {
  if (!Number.isSafeInteger(shardCount) || shardCount < 1 || shardCount > tensors.length) {
    throw new RangeError(`safetensors writer: ${shardCount} shards for ${tensors.length} tensors (use 1 to ${tensors.length})`);
  }
  if (shardCount === 1) return { shards: [{ fileName: 'model.safetensors', spec: { metadata, tensors: [...tensors] } }] };
  const sizes = tensors.map((t) => safetensorsByteLength(t.dtype, t.shape));
  const total = sizes.reduce((a, b) => a + b, 0);
  const groups: SafetensorsTensorSpec[][] = [];
  let done = 0;
  tensors.forEach((t, i) => {
    // A new shard starts once this one holds its share, keeping one tensor for each shard still to come.
    const share = Math.floor(total * ((groups.length || 1) / shardCount));
    const mustOpen = tensors.length - i <= shardCount - groups.length;
    if (groups.length === 0 || (groups.length < shardCount && (done >= share || mustOpen))) groups.push([]);
    groups[groups.length - 1]!.push(t);
    done += sizes[i]!;
  });
  const pad = (n: number) => String(n).padStart(5, '0');
  const shards = groups.map((group, i) => ({ fileName: `model-${pad(i + 1)}-of-${pad(shardCount)}.safetensors`, spec: { metadata, tensors: group } }));
  const weightMap: Record<string, string> = {};
  for (const shard of shards) for (const t of shard.spec.tensors) weightMap[t.name] = shard.fileName;
  const sortedMap = Object.fromEntries(Object.keys(weightMap).sort().map((name) => [name, weightMap[name]!]));
  const index = JSON.stringify({ metadata: { total_size: total }, weight_map: sortedMap }, null, 2) + '\n';
  return { shards, index };
}

// ---------------------------------------------------------------------------------------------
// Where files go

/** A folder being written: each file is written once, chunk by chunk, by `write`. */
export interface FileTarget {
  /** For messages: the directory, or "memory". */
  readonly name: string;
  writeFile(fileName: string, write: (sink: ChunkSink) => Promise<void>): Promise<void>;
}

/** Writes a whole sharded checkpoint's weight files (and index) to `target`; returns the file names written. */
export async function writeShardedSafetensors(target: FileTarget, sharded: ShardedSafetensors): Promise<string[]> {
  for (const shard of sharded.shards) await target.writeFile(shard.fileName, (sink) => writeSafetensorsStream(shard.spec, sink));
  if (sharded.index !== undefined) await writeText(target, INDEX_FILE, sharded.index);
  return [...sharded.shards.map((s) => s.fileName), ...(sharded.index !== undefined ? [INDEX_FILE] : [])];
}

/** A small text file (config.json, tokenizer.json, …). */
export function writeText(target: FileTarget, fileName: string, text: string): Promise<void> {
  return target.writeFile(fileName, async (sink) => sink(new TextEncoder().encode(text)));
}

/** Files kept in memory by name (tests, the browser). */
export function memoryTarget(): FileTarget & { files: Map<string, Uint8Array> } {
  const files = new Map<string, Uint8Array>();
  return {
    name: 'memory',
    files,
    async writeFile(fileName, write) {
      const chunks: Uint8Array[] = [];
      await write((chunk) => void chunks.push(chunk.slice()));
      const file = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
      let at = 0;
      for (const chunk of chunks) {
        file.set(chunk, at);
        at += chunk.length;
      }
      files.set(fileName, file);
    },
  };
}

/**
 * A local directory (Node and Deno; created if missing). Each file is written under a `.partial`
 * name and renamed when complete, so an interrupted write never leaves a file that looks whole.
 */
export function directoryTarget(path: string): FileTarget {
  const dir = path.replace(/[\\/]+$/, '');
  return {
    name: dir,
    async writeFile(fileName, write) {
      const fs = await localFileSystem(dir);
      await fs.mkdir(dir, { recursive: true });
      const final = `${dir}/${fileName}`;
      const handle = await fs.open(`${final}.partial`, 'w');
      try {
        await write(async (chunk) => {
          for (let done = 0; done < chunk.length; ) done += (await handle.write(chunk.subarray(done))).bytesWritten;
        });
      } finally {
        await handle.close();
      }
      await fs.rename(`${final}.partial`, final);
    },
  };
}
