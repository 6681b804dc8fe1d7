// Model folders: a Hugging Face checkpoint is several files side by side (config.json, its side
// files, one model.safetensors or an index and its shards), found in a local directory (Node and
// Deno), under a base URL (e.g. https://huggingface.co/org/model/resolve/main/) or among the files
// a browser user picked (`<input webkitdirectory>`) or dropped. A `ModelFolder` opens its files by
// name, each as a ByteSource (src/model/source.ts), so the safetensors reader reads headers and
// tensors by byte range wherever the folder lives.
//
// `detectModelSource` tells such a folder from a single GGUF file without reading weights, and
// `openHfCheckpoint` reads a folder's config and safetensors headers for the loader.
import { ModelSourceError } from './errors.ts';
import { readHfConfig, type HfModelConfig } from './hf-config.ts';
import { parseJson } from './json.ts';
import { readSafetensorsIndex, readSafetensorsModel, type SafetensorsModel } from './safetensors.ts';
import { blobSource, fileSource, localFileSystem, urlSource, type ByteSource, type ModelSource } from './source.ts';

/** Files of one folder, by name relative to it (e.g. `config.json`, `model-00001-of-00002.safetensors`). */
export interface ModelFolder {
  /** For messages: the directory path, the base URL, or the picked folder's name. */
  readonly name: string;
  /** Whether the folder holds `name` (a local stat, an HTTP HEAD, or a look among the files). */
  has(name: string): Promise<boolean>;
  /** Opens `name` for reading by range; a ModelSourceError naming the folder and the file if it is missing. */
  open(name: string): Promise<ByteSource>;
  /** The whole of a (small, side) file as UTF-8 text: config.json, tokenizer.json, an index, .... */
  readText(name: string): Promise<string>;
}

export interface UrlFolderOptions {
  /** Sent with every request, e.g. `{ Authorization: 'Bearer hf_…' }` for a gated Hugging Face model. */
  headers?: Record<string, string>;
}

/** A name inside the folder: relative, `/`-separated, no `..` (a side file must not reach outside it). */
function checkName(folder: string, name: string): string {
  const parts = name.split('/');
  if (name === '' || name.includes('\\') || parts.some((part) => part === '' || part === '.' || part === '..')) {
    throw new ModelSourceError(folder, `"${name}" is not a file name inside the folder (use a relative name like config.json, with no .. or leading /)`);
  }
  return name;
}

function missingFile(folder: string, name: string): ModelSourceError {
  return new ModelSourceError(folder, `no ${name} in this folder`);
}

const utf8 = new TextDecoder();

const HF_FOLDER_NEEDS = 'a Hugging Face model folder needs config.json and model.safetensors or model.safetensors.index.json';

// ---------------------------------------------------------------------------------------------
// A local directory (Node and Deno)

class LocalFolder implements ModelFolder {
  constructor(readonly name: string) {}

  private path(name: string): string {
    return `${this.name.replace(/[\\/]+$/, '')}/${checkName(this.name, name)}`;
  }

  async has(name: string): Promise<boolean> {
    const path = this.path(name);
    const fs = await localFileSystem(path);
    try {
      return (await fs.stat(path)).isFile();
    } catch {
      return false;
    }
  }

  async open(name: string): Promise<ByteSource> {
    if (!(await this.has(name))) throw missingFile(this.name, name);
    return fileSource(this.path(name));
  }

  async readText(name: string): Promise<string> {
    const source = await this.open(name);
    try {
      return utf8.decode(await source.read(0, source.size));
    } finally {
      await source.close();
    }
  }
}

/** A local directory in Node or Deno. Nothing is read until a file is opened. */
export function localFolder(path: string): ModelFolder {
  return new LocalFolder(path);
}

// ---------------------------------------------------------------------------------------------
// A base URL: files read with HTTP Range requests (weights) or one GET (side files)

class UrlFolder implements ModelFolder {
  readonly name: string;

  constructor(
    base: string,
    private readonly headers: Record<string, string>,
  ) {
    this.name = base.endsWith('/') ? base : `${base}/`;
  }

  private url(name: string): string {
    return new URL(checkName(this.name, name).split('/').map(encodeURIComponent).join('/'), this.name).href;
  }

  private async request(name: string, method: 'GET' | 'HEAD'): Promise<Response> {
    const url = this.url(name);
    let response: Response;
    try {
      response = await fetch(url, { method, headers: this.headers });
    } catch (cause) {
      throw new ModelSourceError(url, `request failed: ${(cause as Error).message}`, { cause });
    }
    if (response.ok || response.status === 404) return response;
    await response.body?.cancel();
    const hint = response.status === 401 || response.status === 403 ? ' (a gated or private model: pass an access token in the headers option)' : '';
    throw new ModelSourceError(url, `HTTP ${response.status}${hint}`);
  }

  async has(name: string): Promise<boolean> {
    return (await this.request(name, 'HEAD')).ok;
  }

  async open(name: string): Promise<ByteSource> {
    if (!(await this.has(name))) throw missingFile(this.name, name);
    return urlSource(this.url(name), { headers: this.headers });
  }

  async readText(name: string): Promise<string> {
    const response = await this.request(name, 'GET');
    if (!response.ok) {
      await response.body?.cancel();
      throw missingFile(this.name, name);
    }
    return utf8.decode(await response.arrayBuffer());
  }
}

/** Files under a base URL (a missing trailing `/` is added). Nothing is requested until a file is used. */
export function urlFolder(base: string | URL, options: UrlFolderOptions = {}): ModelFolder {
  return new UrlFolder(base.toString(), options.headers ?? {});
}

// ---------------------------------------------------------------------------------------------
// Files a browser user picked or dropped

/** Files as a picker or a drop gives them: a FileList, or an array of Files. */
export type FileCollection = FileList | readonly File[];

/** The path a folder picker gives (`model/config.json`), or just the name for dropped files. */
function relativePath(file: File): string {
  return (file as File & { webkitRelativePath?: string }).webkitRelativePath || file.name;
}

class FilesFolder implements ModelFolder {
  constructor(
    readonly name: string,
    private readonly files: ReadonlyMap<string, File>,
  ) {}

  private file(name: string): File | undefined {
    return this.files.get(checkName(this.name, name));
  }

  async has(name: string): Promise<boolean> {
    return this.file(name) !== undefined;
  }

  async open(name: string): Promise<ByteSource> {
    const file = this.file(name);
    if (!file) throw missingFile(this.name, name);
    return blobSource(file, name);
  }

  async readText(name: string): Promise<string> {
    const file = this.file(name);
    if (!file) throw missingFile(this.name, name);
    return file.text();
  }
}

/**
 * Picked or dropped files as a folder. Names are `webkitRelativePath` with the top folder (the one
 * the user picked) stripped, so `stories260K/config.json` is `config.json`; dropped files without a
 * relative path keep their own names.
 */
export function filesFolder(collection: FileCollection): ModelFolder {
  const files = Array.from(collection);
  const paths = files.map(relativePath);
  const tops = new Set(paths.map((path) => (path.includes('/') ? path.slice(0, path.indexOf('/')) : undefined)));
  // Strip the top folder only when every file is under the same one (a folder pick always is).
  const [top] = tops;
  const shared = tops.size === 1 && top !== undefined ? top : undefined;
  const name = shared ?? (files.length === 1 ? 'the dropped file' : 'the dropped files');
  const byName = new Map<string, File>();
  files.forEach((file, i) => {
    const path = shared !== undefined ? paths[i]!.slice(shared.length + 1) : paths[i]!;
    if (byName.has(path)) throw new ModelSourceError(name, `two of the files are named ${path}; pick or drop one model folder at a time`);
    byName.set(path, file);
  });
  return new FilesFolder(name, byName);
}

// ---------------------------------------------------------------------------------------------
// Which kind of model a source is

/** What a user can hand us: a GGUF file (any `ModelSource`), a folder (path, URL ending in `/`, files), or an open ModelFolder. */
export type ModelInput = ModelSource | FileCollection | ModelFolder;

export type DetectedModelSource =
  /** A single GGUF file: open it with `openSource(source)`. */
  | { kind: 'gguf'; source: ModelSource }
  /** A Hugging Face folder: read it with `openHfCheckpoint(folder)`. */
  | { kind: 'hf-folder'; folder: ModelFolder };

function isModelFolder(input: ModelInput): input is ModelFolder {
  return typeof input === 'object' && 'readText' in input && typeof input.readText === 'function' && 'has' in input;
}

function isFileCollection(input: ModelInput): input is FileCollection {
  return Array.isArray(input) || (typeof FileList !== 'undefined' && input instanceof FileList);
}

/** Hugging Face files people point at instead of their folder. */
const HF_FILE = /(^|[\\/])(config\.json|[^\\/]*\.safetensors|model\.safetensors\.index\.json)$/;

/**
 * A GGUF file or a Hugging Face folder? Decided from the source itself (a local path is stat-ed,
 * a URL is a folder when it ends in `/`, picked files are a folder when config.json is among them);
 * no weights are read and nothing is fetched. `options.headers` go with a URL folder's requests.
 */
export async function detectModelSource(input: ModelInput, options: UrlFolderOptions = {}): Promise<DetectedModelSource> {
  if (isModelFolder(input)) return { kind: 'hf-folder', folder: input };
  if (isFileCollection(input)) {
    const folder = filesFolder(input);
    if (await folder.has('config.json')) return { kind: 'hf-folder', folder };
    const files = Array.from(input);
    // One file is a GGUF, unless it came from a folder pick (its path names the folder).
    if (files.length === 1 && !relativePath(files[0]!).includes('/')) return { kind: 'gguf', source: files[0]! };
    throw new ModelSourceError(folder.name, `no config.json among ${files.length} files: ${HF_FOLDER_NEEDS}; or pick a single .gguf file`);
  }
  const text = typeof input === 'string' ? input : input instanceof URL ? input.href : undefined;
  if (text === undefined) return { kind: 'gguf', source: input as ModelSource };
  if (/^https?:\/\//i.test(text)) return text.endsWith('/') ? { kind: 'hf-folder', folder: urlFolder(text, options) } : { kind: 'gguf', source: input as ModelSource };
  const path = text.startsWith('file://') ? decodeURIComponent(new URL(text).pathname) : text;
  const fs = await localFileSystem(path);
  let stats: { isFile(): boolean; isDirectory(): boolean };
  try {
    stats = await fs.stat(path);
  } catch (cause) {
    throw new ModelSourceError(path, `cannot open: ${(cause as Error).message}`, { cause });
  }
  if (stats.isDirectory()) return { kind: 'hf-folder', folder: localFolder(path) };
  if (HF_FILE.test(path)) throw new ModelSourceError(path, 'is one file of a Hugging Face checkpoint; pass the folder that holds it');
  return { kind: 'gguf', source: path };
}

/** Last path parts that name a revision or a generic sub-folder rather than the model. */
const GENERIC_PART = /^(hf|main|model|models|original|[0-9a-f]{40})$/i;

/**
 * The model's name from where it lives, as a person would say it: "models/Llama-3.2-1B/" →
 * "Llama-3.2-1B", "https://huggingface.co/org/Qwen3-0.6B/resolve/main/" → "Qwen3-0.6B", the
 * Hugging Face cache's "models--org--Phi-3-mini/snapshots/<hash>" → "Phi-3-mini", and a generic
 * last part keeps its parent: "phi3-tiny/hf" → "phi3-tiny/hf". A file keeps its name ("x.gguf").
 */
export function modelNameFromPath(path: string): string {
  const withoutQuery = /^[a-z]+:\/\//i.test(path) ? new URL(path).pathname : path;
  const parts = decodeURIComponent(withoutQuery).split(/[\\/]+/).filter(Boolean);
  const resolveAt = parts.lastIndexOf('resolve');
  if (resolveAt > 0 && resolveAt >= parts.length - 2) parts.length = resolveAt;
  if (parts.at(-2) === 'snapshots' && parts.at(-3)?.startsWith('models--')) return parts.at(-3)!.split('--').at(-1)!;
  const last = parts.at(-1) ?? 'model';
  return GENERIC_PART.test(last) && parts.length > 1 ? `${parts.at(-2)}/${last}` : last;
}

// ---------------------------------------------------------------------------------------------
// A Hugging Face checkpoint

/** The JSON files of a checkpoint as read (side files only when present). */
export interface HfCheckpointFiles {
  config: unknown;
  generationConfig?: unknown;
  /** Chat template and special tokens (for the tokenizer). */
  tokenizerConfig?: unknown;
  /** AutoGPTQ's side file. */
  quantizeConfig?: unknown;
  /** The safetensors files read, in order: `model.safetensors`, or the index then its shards. */
  weights: string[];
}

export interface HfCheckpoint {
  folder: ModelFolder;
  /** config.json (+ generation_config.json, quantize_config.json) as the engine's numbers. */
  config: HfModelConfig;
  /** Every tensor's header entry, read by byte range from the open weight files. */
  tensors: SafetensorsModel;
  files: HfCheckpointFiles;
  /** Closes the weight files (file handles in Node/Deno). */
  close(): Promise<void>;
}

/** `name` inside `folder`, for messages. */
function filePath(folder: ModelFolder, name: string): string {
  return `${folder.name.replace(/\/$/, '')}/${name}`;
}

/** A side file parsed as JSON, or undefined when the folder does not have it. */
async function readOptionalJson(folder: ModelFolder, name: string): Promise<unknown> {
  if (!(await folder.has(name))) return undefined;
  return parseJson(filePath(folder, name), await folder.readText(name), name, `Download ${name} again`);
}

/**
 * Reads a Hugging Face folder's configuration and safetensors headers (one file, or an index and
 * its shards opened through the folder), as transformers does: model.safetensors first, else the
 * index. Tensor data is not read. Missing files are ModelSourceErrors naming the folder and the
 * file; bad contents are the readers' ModelFormatErrors.
 */
export async function openHfCheckpoint(folder: ModelFolder): Promise<HfCheckpoint> {
  const config = await readOptionalJson(folder, 'config.json');
  if (config === undefined) throw new ModelSourceError(folder.name, `no config.json in ${folder.name}: ${HF_FOLDER_NEEDS}`);
  const [generationConfig, tokenizerConfig, quantizeConfig] = await Promise.all(
    ['generation_config.json', 'tokenizer_config.json', 'quantize_config.json'].map((name) => readOptionalJson(folder, name)),
  );
  const hfConfig = readHfConfig({ file: filePath(folder, 'config.json'), config, generationConfig, quantizeConfig });

  const opened: ByteSource[] = [];
  const weights: string[] = [];
  const open = async (name: string) => {
    const source = await folder.open(name);
    opened.push(source);
    weights.push(name);
    return source;
  };
  const closeAll = () => Promise.all(opened.map((source) => source.close())).then(() => undefined);
  try {
    let tensors: SafetensorsModel;
    if (await folder.has('model.safetensors')) {
      tensors = await readSafetensorsModel(await open('model.safetensors'));
    } else if (await folder.has('model.safetensors.index.json')) {
      const index = await folder.open('model.safetensors.index.json');
      weights.push('model.safetensors.index.json');
      try {
        tensors = await readSafetensorsIndex(index, open);
      } finally {
        await index.close();
      }
    } else {
      throw new ModelSourceError(folder.name, `no model.safetensors or model.safetensors.index.json in ${folder.name}: ${HF_FOLDER_NEEDS}`);
    }
    const files: HfCheckpointFiles = {
      config,
      weights,
      ...(generationConfig !== undefined ? { generationConfig } : {}),
      ...(tokenizerConfig !== undefined ? { tokenizerConfig } : {}),
      ...(quantizeConfig !== undefined ? { quantizeConfig } : {}),
    };
    return { folder, config: hfConfig, tensors, files, close: closeAll };
  } catch (error) {
    await closeAll();
    throw error;
  }
}
