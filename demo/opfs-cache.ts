// A model cache in the Origin Private File System. A URL is downloaded once, streamed straight
// into OPFS while it is hashed; every later load re-hashes the stored copy slice by slice and
// compares it with the digest recorded at download time (and with the one the user expects, if
// given), so a damaged or swapped file is never handed to the GPU. The cached copy is then read
// like any local file: Blob slices, never the whole model in memory.

import { Sha256, sha256OfBlob } from './sha256.ts';

const DIRECTORY = 'webshard-models';
/** Bytes gathered before each write to OPFS (fetch hands out ~64 kB chunks). */
const WRITE_BATCH = 4 << 20;

export interface CacheManifest {
  url: string;
  size: number;
  /** SHA-256 of the bytes as downloaded, lowercase hex. */
  sha256: string;
  storedAt: string;
  etag?: string;
}

export interface CachedModel {
  key: string;
  manifest: CacheManifest;
  file: File;
}

export type Progress = (done: number, total: number) => void;

/** The cached copy is not what it should be; the message says which check failed. */
export class CacheIntegrityError extends Error {
  override name = 'CacheIntegrityError';
}

const isNotFound = (error: unknown) => error instanceof DOMException && (error.name === 'NotFoundError' || error.name === 'TypeMismatchError');

/** Normalizes a user-typed digest: trims, lowercases, checks it is 64 hex digits. */
export function parseSha256(text: string): string | undefined {
  const digest = text.trim().toLowerCase();
  if (digest === '') return undefined;
  if (!/^[0-9a-f]{64}$/.test(digest)) throw new CacheIntegrityError(`"${text.trim()}" is not a SHA-256 digest (64 hex digits)`);
  return digest;
}

export class ModelCache {
  private constructor(private readonly directory: FileSystemDirectoryHandle) {}

  static supported(): boolean {
    return typeof navigator !== 'undefined' && typeof navigator.storage?.getDirectory === 'function';
  }

  static async open(): Promise<ModelCache> {
    const root = await navigator.storage.getDirectory();
    return new ModelCache(await root.getDirectoryHandle(DIRECTORY, { create: true }));
  }

  /** A file name for a URL: the first 24 hex digits of its SHA-256. */
  static async keyFor(url: string): Promise<string> {
    const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(url)));
    return Array.from(digest.subarray(0, 12), (b) => b.toString(16).padStart(2, '0')).join('');
  }

  /** The cached copy of `url`, if a complete one is stored (not yet verified). */
  async find(url: string): Promise<CachedModel | undefined> {
    const entry = await this.read(await ModelCache.keyFor(url));
    return entry?.manifest.url === url ? entry : undefined;
  }

  /** Re-hashes the stored bytes; throws CacheIntegrityError when they differ from the manifest or `expectedSha256`. */
  async verify(entry: CachedModel, options: { expectedSha256?: string; onProgress?: Progress; signal?: AbortSignal } = {}): Promise<void> {
    const { file, manifest } = entry;
    if (file.size !== manifest.size) {
      throw new CacheIntegrityError(`the cached copy has ${file.size} bytes but ${manifest.size} were downloaded (it was cut short)`);
    }
    const digest = await sha256OfBlob(file, { onProgress: options.onProgress, signal: options.signal });
    if (digest !== manifest.sha256) {
      throw new CacheIntegrityError(`the cached copy is damaged: its SHA-256 is ${digest}, the download's was ${manifest.sha256}`);
    }
    if (options.expectedSha256 && digest !== options.expectedSha256) {
      throw new CacheIntegrityError(`the cached copy's SHA-256 is ${digest}, not the expected ${options.expectedSha256}`);
    }
  }

  /** Downloads `url` into the cache, hashing as it streams. */
  async store(url: string, options: { expectedSha256?: string; onProgress?: Progress; signal?: AbortSignal } = {}): Promise<CachedModel> {
    const key = await ModelCache.keyFor(url);
    // The manifest goes first and comes back last: a half-written file is never trusted.
    await this.remove(key);
    let response: Response;
    try {
      response = await fetch(url, { signal: options.signal });
    } catch (cause) {
      throw new Error(`${url}: download failed (${(cause as Error).message}); is the address right, and does the server allow cross-origin requests (CORS)?`, { cause });
    }
    if (!response.ok || !response.body) throw new Error(`${url}: HTTP ${response.status} ${response.statusText} while downloading into the cache`);
    const total = Number(response.headers.get('content-length') ?? NaN);

    const handle = await this.directory.getFileHandle(`${key}.gguf`, { create: true });
    const writable = await handle.createWritable();
    const hash = new Sha256();
    let done = 0;
    let batch: Uint8Array[] = [];
    let batchBytes = 0;
    const flush = async () => {
      if (batchBytes === 0) return;
      const joined = new Uint8Array(batchBytes);
      let at = 0;
      for (const chunk of batch) {
        joined.set(chunk, at);
        at += chunk.length;
      }
      await writable.write(joined);
      batch = [];
      batchBytes = 0;
    };
    try {
      const reader = response.body.getReader();
      for (;;) {
        const { done: ended, value } = await reader.read();
        if (ended) break;
        hash.update(value);
        batch.push(value);
        batchBytes += value.length;
        done += value.length;
        if (batchBytes >= WRITE_BATCH) await flush();
        options.onProgress?.(done, Number.isFinite(total) ? total : done);
      }
      await flush();
      await writable.close();
    } catch (error) {
      await writable.abort().catch(() => undefined);
      await this.remove(key);
      throw error;
    }

    const sha256 = hash.hex();
    if (Number.isFinite(total) && done !== total) {
      await this.remove(key);
      throw new CacheIntegrityError(`the download ended after ${done} of ${total} bytes`);
    }
    if (options.expectedSha256 && sha256 !== options.expectedSha256) {
      await this.remove(key);
      throw new CacheIntegrityError(`the downloaded file's SHA-256 is ${sha256}, not the expected ${options.expectedSha256}; nothing was cached`);
    }
    const manifest: CacheManifest = {
      url,
      size: done,
      sha256,
      storedAt: new Date().toISOString(),
      etag: response.headers.get('etag') ?? undefined,
    };
    const manifestWriter = await (await this.directory.getFileHandle(`${key}.json`, { create: true })).createWritable();
    await manifestWriter.write(JSON.stringify(manifest, null, 2));
    await manifestWriter.close();
    return { key, manifest, file: await handle.getFile() };
  }

  /** Every complete entry, newest first. */
  async list(): Promise<CachedModel[]> {
    const names: string[] = [];
    const directory = this.directory as unknown as { keys(): AsyncIterable<string> };
    for await (const name of directory.keys()) if (name.endsWith('.json')) names.push(name.slice(0, -'.json'.length));
    const entries = (await Promise.all(names.map((key) => this.read(key)))).filter((e): e is CachedModel => e !== undefined);
    return entries.sort((a, b) => b.manifest.storedAt.localeCompare(a.manifest.storedAt));
  }

  async remove(key: string): Promise<void> {
    for (const name of [`${key}.json`, `${key}.gguf`]) {
      try {
        await this.directory.removeEntry(name);
      } catch (error) {
        if (!isNotFound(error)) throw error;
      }
    }
  }

  private async read(key: string): Promise<CachedModel | undefined> {
    try {
      const manifestFile = await (await this.directory.getFileHandle(`${key}.json`)).getFile();
      const manifest = JSON.parse(await manifestFile.text()) as CacheManifest;
      const file = await (await this.directory.getFileHandle(`${key}.gguf`)).getFile();
      return { key, manifest, file };
    } catch (error) {
      if (isNotFound(error) || error instanceof SyntaxError) return undefined;
      throw error;
    }
  }
}
