// What a person hands the page from their disk: one .gguf file, a model folder picked with
// `<input webkitdirectory>`, or what they drop — a .gguf, a folder, or a folder's files. The
// library decides GGUF or Hugging Face folder from the files themselves (config.json among them);
// this module only turns pickers and drops into a list of Files with a name to show.
//
// A Hugging Face folder is flat (config.json, the safetensors, the tokenizer files side by side),
// so a dropped folder's files are read from its top level only, each under its own name; a
// subfolder (e.g. `original/`, Meta's copy of the weights) is left out, and the page says so.
import { ModelSourceError } from '../src/index.ts';

export interface LocalModel {
  /** For the model info: the file's name, or the folder's. */
  name: string;
  /** The files as `loadModel` takes them: one GGUF file, or a folder's files. */
  files: File[];
  /** A folder (picked, dropped, or several dropped files) rather than one file. */
  isFolder: boolean;
  /** Subfolders of a dropped folder that were not read. */
  skipped: string[];
}

/** What one dropped item is: a file-system entry where the browser gives one, else the File. */
export type DroppedItem = FileSystemEntry | File;

/** Bytes of all the files, for the model info and the progress bar's total. */
export function totalSize(model: LocalModel): number {
  return model.files.reduce((sum, file) => sum + file.size, 0);
}

/** One picked file (a GGUF). */
export function pickedFile(file: File): LocalModel {
  return { name: file.name, files: [file], isFolder: false, skipped: [] };
}

/**
 * The files a folder pick gave (`webkitRelativePath` is `folder/name`). The library strips the
 * top folder from the paths; here it is only the name shown.
 */
export function pickedFolder(list: FileList): LocalModel {
  const files = Array.from(list);
  const name = files[0]?.webkitRelativePath.split('/')[0] || 'the picked folder';
  if (files.length === 0) throw new ModelSourceError(name, 'the picked folder holds no files; pick the folder with config.json and the .safetensors files');
  return { name, files, isFolder: true, skipped: [] };
}

/** Must run inside the drop event: the browser empties `items` once the handler returns. */
export function droppedItems(transfer: DataTransfer): DroppedItem[] {
  return Array.from(transfer.items)
    .filter((item) => item.kind === 'file')
    .map((item) => item.webkitGetAsEntry() ?? item.getAsFile())
    .filter((item): item is DroppedItem => item !== null);
}

const isDirectory = (item: DroppedItem): item is FileSystemDirectoryEntry => !(item instanceof File) && item.isDirectory;

function asFile(item: FileSystemEntry | File): Promise<File> {
  if (item instanceof File) return Promise.resolve(item);
  return new Promise((resolve, reject) => (item as FileSystemFileEntry).file(resolve, reject));
}

/** A directory's entries: `readEntries` answers in batches (100 in Chromium) until an empty one. */
async function entriesOf(directory: FileSystemDirectoryEntry): Promise<FileSystemEntry[]> {
  const reader = directory.createReader();
  const entries: FileSystemEntry[] = [];
  for (;;) {
    const batch = await new Promise<FileSystemEntry[]>((resolve, reject) => reader.readEntries(resolve, reject));
    if (batch.length === 0) return entries;
    entries.push(...batch);
  }
}

/** One dropped folder (its top-level files), one dropped file, or several dropped files (a flat folder). */
export async function droppedModel(items: DroppedItem[]): Promise<LocalModel> {
  const folders = items.filter(isDirectory);
  if (folders.length === 0) {
    const files = await Promise.all(items.map(asFile));
    if (files.length === 0) throw new ModelSourceError('the drop', 'it held no files; drop a .gguf file, a model folder or its files');
    return { name: files.length === 1 ? files[0]!.name : `${files.length} dropped files`, files, isFolder: files.length > 1, skipped: [] };
  }
  const [folder] = folders;
  if (folders.length > 1 || items.length > 1) {
    const names = items.map((item) => item.name).join(', ');
    throw new ModelSourceError('the drop', `it held ${items.length} items (${names}); drop one model folder, or the files of one model, at a time`);
  }
  const entries = await entriesOf(folder!);
  const files = await Promise.all(entries.filter((entry) => entry.isFile).map(asFile));
  const skipped = entries.filter((entry) => entry.isDirectory).map((entry) => `${entry.name}/`);
  if (files.length === 0) throw new ModelSourceError(folder!.name, 'the folder holds no files at its top level; drop the folder with config.json and the .safetensors files');
  return { name: folder!.name, files, isFolder: true, skipped };
}
