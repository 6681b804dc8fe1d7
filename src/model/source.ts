// Where model bytes come from. Everything reads through `ByteSource.read(offset, length)`, so no
// reader ever needs the whole file in memory: local files use a file handle, browser files use
// Blob slices, URLs use HTTP Range requests.
import { ModelSourceError } from './errors.ts';

/** Random-access bytes of a model file. */
export interface ByteSource {
  /** For messages: a path, URL or file name. */
  readonly name: string;
  /** Total size in bytes. */
  readonly size: number;
  /** Reads exactly `length` bytes at `offset`; rejects if the range runs past the end. */
  read(offset: number, length: number): Promise<Uint8Array>;
  /**
   * Reads exactly `target.length` bytes at `offset` into `target`, allocating nothing: the weight
   * loader streams tensors through two reused buffers this way. Optional for custom sources
   * (the loader falls back to `read`).
   */
  readInto?(offset: number, target: Uint8Array): Promise<void>;
  /** Bytes read so far (for tests proving a shard reads only its share, and for progress). */
  readonly bytesRead: number;
  /**
   * Frees what the source keeps in memory to serve reads (a made tensor's bytes); later reads make
   * it again. The weight loader calls it when a load is done. Optional.
   */
  evict?(): void;
  close(): Promise<void>;
}

/**
 * The shared half of every source: range checks and byte counting. Subclasses only say how to
 * fetch a range that is known to lie inside the file.
 */
abstract class CountingSource implements ByteSource {
  protected bytesCounted = 0;
  abstract readonly name: string;
  abstract readonly size: number;

  protected abstract readRange(offset: number, length: number): Promise<Uint8Array>;

  /** Fills `target` from `offset` (inside the file); sources that can read in place override it. */
  protected async readRangeInto(offset: number, target: Uint8Array): Promise<void> {
    const bytes = await this.readRange(offset, target.length);
    this.checkLength(offset, target.length, bytes.length);
    target.set(bytes);
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    this.checkRange(offset, length);
    if (length === 0) return new Uint8Array(0);
    const bytes = await this.readRange(offset, length);
    this.checkLength(offset, length, bytes.length);
    this.bytesCounted += length;
    return bytes;
  }

  async readInto(offset: number, target: Uint8Array): Promise<void> {
    this.checkRange(offset, target.length);
    if (target.length === 0) return;
    await this.readRangeInto(offset, target);
    this.bytesCounted += target.length;
  }

  private checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new ModelSourceError(this.name, `invalid read of ${length} bytes at offset ${offset}`);
    }
    if (offset + length > this.size) {
      throw new ModelSourceError(
        this.name,
        `read of ${length} bytes at offset ${offset} runs past the end of the ${this.size}-byte file (is it truncated?)`,
      );
    }
  }

  private checkLength(offset: number, length: number, got: number): void {
    if (got !== length) throw new ModelSourceError(this.name, `asked for ${length} bytes at offset ${offset}, got ${got}`);
  }

  get bytesRead(): number {
    return this.bytesCounted;
  }

  async close(): Promise<void> {}
}

// ---------------------------------------------------------------------------------------------
// In memory

class BytesSource extends CountingSource {
  constructor(
    private readonly bytes: Uint8Array,
    readonly name: string,
  ) {
    super();
  }
  get size(): number {
    return this.bytes.length;
  }
  protected async readRange(offset: number, length: number): Promise<Uint8Array> {
    // A copy, so a caller that transfers or mutates the result cannot corrupt the source.
    return this.bytes.slice(offset, offset + length);
  }
  protected override async readRangeInto(offset: number, target: Uint8Array): Promise<void> {
    target.set(this.bytes.subarray(offset, offset + target.length));
  }
}

/** Bytes already in memory (tests, generated models). */
export function bytesSource(bytes: Uint8Array, name = 'memory'): ByteSource {
  return new BytesSource(bytes, name);
}

// ---------------------------------------------------------------------------------------------
// Several sources as one address space

/** A part of a joined source: its bytes, and whether reading it reads the model's files (for bytesRead). */
export interface JoinedPart {
  source: ByteSource;
  /** False for parts made in memory from other parts' bytes (they count where they read). Default true. */
  counted?: boolean;
}

/** Several sources one after the other, each at the sum of the sizes before it; a read must lie inside one part. */
class Joined extends CountingSource {
  private readonly offsets: number[] = [];
  readonly size: number;

  constructor(
    readonly name: string,
    private readonly parts: readonly JoinedPart[],
  ) {
    super();
    let end = 0;
    for (const part of parts) {
      this.offsets.push(end);
      end += part.source.size;
    }
    this.size = end;
  }

  /** The bytes the parts read from their files (not the bytes handed out: a made part reads more or less). */
  override get bytesRead(): number {
    return this.parts.reduce((sum, part) => sum + (part.counted === false ? 0 : part.source.bytesRead), 0);
  }

  /** The part holding [offset, offset + length), and the offset inside it. */
  private locate(offset: number, length: number): { source: ByteSource; at: number } {
    let lo = 0;
    let hi = this.offsets.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.offsets[mid]! <= offset) lo = mid;
      else hi = mid - 1;
    }
    const source = this.parts[lo]!.source;
    const at = offset - this.offsets[lo]!;
    if (at + length > source.size) throw new ModelSourceError(this.name, `read of ${length} bytes at offset ${offset} crosses from ${source.name} into the next file`);
    return { source, at };
  }

  protected readRange(offset: number, length: number): Promise<Uint8Array> {
    const { source, at } = this.locate(offset, length);
    return source.read(at, length);
  }

  protected override async readRangeInto(offset: number, target: Uint8Array): Promise<void> {
    const { source, at } = this.locate(offset, target.length);
    if (source.readInto) await source.readInto(at, target);
    else target.set(await source.read(at, target.length));
  }

  evict(): void {
    for (const part of this.parts) part.source.evict?.();
  }

  override async close(): Promise<void> {
    await Promise.all(this.parts.map((part) => part.source.close()));
  }
}

/**
 * Sources laid end to end as one (a Hugging Face checkpoint's shards and the tensors made from
 * them, as one "file" for the weight loader). Closing it closes every part.
 */
export function joinedSource(name: string, parts: readonly JoinedPart[]): ByteSource {
  return new Joined(name, parts);
}

/**
 * A source whose bytes are computed for each read (e.g. a layer repacked from a checkpoint's
 * tensors, only the part asked for): `read` gets ranges inside the source and may keep what it
 * made for the next reads; `evict` lets that go.
 */
export function computedSource(name: string, size: number, read: (offset: number, length: number) => Promise<Uint8Array>, evict?: () => void): ByteSource {
  return new (class extends CountingSource {
    readonly name = name;
    readonly size = size;
    evict(): void {
      evict?.();
    }
    protected readRange(offset: number, length: number): Promise<Uint8Array> {
      return read(offset, length);
    }
  })();
}

// ---------------------------------------------------------------------------------------------
// Blob / File (browser file pickers, drag and drop)

class BlobSource extends CountingSource {
  constructor(
    private readonly blob: Blob,
    readonly name: string,
  ) {
    super();
  }
  get size(): number {
    return this.blob.size;
  }
  protected async readRange(offset: number, length: number): Promise<Uint8Array> {
    return new Uint8Array(await this.blob.slice(offset, offset + length).arrayBuffer());
  }
}

/** A Blob or File; reads slices, never the whole blob. */
export function blobSource(blob: Blob, name?: string): ByteSource {
  const fileName = (blob as Partial<File>).name;
  return new BlobSource(blob, name ?? (fileName || 'blob'));
}

// ---------------------------------------------------------------------------------------------
// Local file (Node and Deno, through node:fs/promises)

/** The part of node:fs/promises' FileHandle this module uses (so src needs no Node types). */
interface FileHandleLike {
  read(options: { buffer: Uint8Array; offset: number; length: number; position: number }): Promise<{ bytesRead: number }>;
  /** Files opened with flags 'w' (the checkpoint writers' directory target). */
  write(buffer: Uint8Array): Promise<{ bytesWritten: number }>;
  stat(): Promise<{ size: number | bigint }>;
  close(): Promise<void>;
}
/** The part of node:fs/promises this module, the folder reader (folder.ts) and the checkpoint writers use. */
export interface LocalFileSystem {
  open(path: string, flags: string): Promise<FileHandleLike>;
  stat(path: string): Promise<{ isFile(): boolean; isDirectory(): boolean }>;
  mkdir(path: string, options: { recursive: true }): Promise<unknown>;
  rename(from: string, to: string): Promise<void>;
}

/**
 * node:fs/promises in Node and Deno (Deno serves it too): the one place local files are reached.
 * `path` is only for the message a browser gets.
 */
export async function localFileSystem(path: string): Promise<LocalFileSystem> {
  // The specifier lives in a variable so browser bundlers do not try to resolve it.
  const fsModule = 'node:fs/promises';
  try {
    return (await import(/* @vite-ignore */ fsModule)) as LocalFileSystem;
  } catch (cause) {
    throw new ModelSourceError(path, 'local files need Node or Deno; in a browser pass a File/Blob or a URL', { cause });
  }
}

class FileSource extends CountingSource {
  constructor(
    private readonly handle: FileHandleLike,
    readonly name: string,
    readonly size: number,
  ) {
    super();
  }
  protected async readRange(offset: number, length: number): Promise<Uint8Array> {
    const buffer = new Uint8Array(length);
    await this.readRangeInto(offset, buffer);
    return buffer;
  }
  protected override async readRangeInto(offset: number, target: Uint8Array): Promise<void> {
    const length = target.length;
    let done = 0;
    // A single read may return fewer bytes than asked for; keep going until the range is full.
    while (done < length) {
      const { bytesRead } = await this.handle.read({
        buffer: target,
        offset: done,
        length: length - done,
        position: offset + done,
      });
      if (bytesRead === 0) {
        throw new ModelSourceError(this.name, `unexpected end of file at offset ${offset + done} (did the file shrink?)`);
      }
      done += bytesRead;
    }
  }
  override async close(): Promise<void> {
    await this.handle.close();
  }
}

/** A local file in Node or Deno. Not available in browsers (use `blobSource` there). */
export async function fileSource(path: string): Promise<ByteSource> {
  const fs = await localFileSystem(path);
  let handle: FileHandleLike;
  try {
    handle = await fs.open(path, 'r');
  } catch (cause) {
    throw new ModelSourceError(path, `cannot open file: ${(cause as Error).message}`, { cause });
  }
  const size = Number((await handle.stat()).size);
  return new FileSource(handle, path, size);
}

// ---------------------------------------------------------------------------------------------
// HTTP(S) with Range requests

class UrlSource extends CountingSource {
  constructor(
    private readonly url: string,
    readonly size: number,
    private readonly headers: Record<string, string>,
  ) {
    super();
  }
  get name(): string {
    return this.url;
  }
  protected async readRange(offset: number, length: number): Promise<Uint8Array> {
    const response = await rangeRequest(this.url, offset, offset + length - 1, this.headers);
    if (response.status !== 206) {
      await response.body?.cancel();
      throw rangeIgnoredError(this.url, response.status);
    }
    return new Uint8Array(await response.arrayBuffer());
  }
}

async function rangeRequest(url: string, first: number, last: number, headers: Record<string, string>): Promise<Response> {
  try {
    return await fetch(url, { headers: { ...headers, Range: `bytes=${first}-${last}` } });
  } catch (cause) {
    throw new ModelSourceError(url, `request failed: ${(cause as Error).message}`, { cause });
  }
}

function rangeIgnoredError(url: string, status: number): ModelSourceError {
  if (status === 200) {
    return new ModelSourceError(
      url,
      'the server ignores HTTP Range requests (answered 200 with the whole file instead of 206), so the model cannot be ' +
        'read piece by piece; serve it from a server that supports Range (most static file servers and CDNs do) or download it first',
    );
  }
  return new ModelSourceError(url, `HTTP ${status} for a Range request`);
}

/** The total size from a `Content-Range: bytes 0-0/12345` (or `bytes *\/12345`) header. */
function totalFromContentRange(header: string | null): number | undefined {
  const match = header ? /\/(\d+)\s*$/.exec(header) : null;
  return match ? Number(match[1]) : undefined;
}

/**
 * A file served over HTTP(S). The size comes from a one-byte Range probe, which also proves that
 * the server honours Range (a server that does not would make us download the whole model per read).
 */
export async function urlSource(url: string | URL, options: { headers?: Record<string, string> } = {}): Promise<ByteSource> {
  const href = url.toString();
  const headers = options.headers ?? {};
  const probe = await rangeRequest(href, 0, 0, headers);
  await probe.body?.cancel();
  const total = totalFromContentRange(probe.headers.get('content-range'));
  if (probe.status === 416 && total === 0) return new UrlSource(href, 0, headers);
  if (probe.status !== 206) throw rangeIgnoredError(href, probe.status);
  if (total === undefined) {
    throw new ModelSourceError(href, 'the server answered a Range request without a usable Content-Range header, so the file size is unknown');
  }
  return new UrlSource(href, total, headers);
}

// ---------------------------------------------------------------------------------------------

/** What a user can hand us as a model: a path, an http(s) URL, a Blob/File, bytes in memory, or an open source. */
export type ModelSource = string | URL | Blob | Uint8Array | ByteSource;

function isByteSource(source: ModelSource): source is ByteSource {
  return typeof source === 'object' && 'read' in source && typeof source.read === 'function' && 'bytesRead' in source;
}

/** Opens whatever the user handed us (see `ModelSource`). */
export async function openSource(source: ModelSource, options: { headers?: Record<string, string> } = {}): Promise<ByteSource> {
  if (source instanceof Uint8Array) return bytesSource(source);
  if (isByteSource(source)) return source;
  if (typeof Blob !== 'undefined' && source instanceof Blob) return blobSource(source);
  if (source instanceof URL) {
    if (source.protocol === 'file:') return fileSource(decodeURIComponent(source.pathname));
    return urlSource(source, options);
  }
  if (typeof source === 'string') {
    if (/^https?:\/\//i.test(source)) return urlSource(source, options);
    if (source.startsWith('file://')) return fileSource(decodeURIComponent(new URL(source).pathname));
    return fileSource(source);
  }
  throw new ModelSourceError(String(source), 'cannot open this kind of source; pass a path, a URL, a Blob or a Uint8Array');
}
