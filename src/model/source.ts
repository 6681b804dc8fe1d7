// Where model bytes come from. Everything reads through `ByteSource.read(offset, length)`, so no
// reader ever needs the whole file in memory: local files use a file handle, browser files use
// Blob slices, URLs use HTTP Range requests. Filled in by the model-loading work.

/** Random-access bytes of a model file. */
export interface ByteSource {
  /** For messages: a path, URL or file name. */
  readonly name: string;
  /** Total size in bytes. */
  readonly size: number;
  /** Reads exactly `length` bytes at `offset`; rejects if the range runs past the end. */
  read(offset: number, length: number): Promise<Uint8Array>;
  /** Bytes read so far (for tests proving a shard reads only its share, and for progress). */
  readonly bytesRead: number;
  close(): Promise<void>;
}
