// Typed errors for model loading. Every message names the file, the exact place that is wrong
// (a metadata key or a tensor) and what to do about it, so a user can act on it without a debugger.

/** Where in a model file a problem is: a metadata key (`field`) or a tensor name (`tensor`). */
export interface ModelFormatErrorDetails {
  /** The file (path, URL or name) being read. */
  file: string;
  /** What is wrong, e.g. `tensor blk.0.attn_q.weight has type 99`. */
  problem: string;
  /** What to do about it, e.g. `re-convert the model with a current llama.cpp`. */
  fix: string;
  /** The metadata key or header field at fault, if any. */
  field?: string;
  /** The tensor at fault, if any. */
  tensor?: string;
}

/** The file is not a valid (or not a supported) model file. */
export class ModelFormatError extends Error {
  override name = 'ModelFormatError';
  readonly file: string;
  readonly field?: string;
  readonly tensor?: string;
  readonly problem: string;
  readonly fix: string;

  constructor(details: ModelFormatErrorDetails) {
    super(`${details.file}: ${details.problem}. ${details.fix}`);
    this.file = details.file;
    this.field = details.field;
    this.tensor = details.tensor;
    this.problem = details.problem;
    this.fix = details.fix;
  }
}

/** The file is well formed but uses a feature webshard does not implement yet (e.g. YaRN rope scaling). */
export class UnsupportedModelError extends ModelFormatError {
  override name = 'UnsupportedModelError';
}

/** Reading bytes failed: I/O error, HTTP error, a server that ignores Range requests, or a read past the end. */
export class ModelSourceError extends Error {
  override name = 'ModelSourceError';
  /** The path, URL or name of the source. */
  readonly source: string;

  constructor(source: string, message: string, options?: { cause?: unknown }) {
    super(`${source}: ${message}`, options);
    this.source = source;
  }
}
