// Model folders: the shared Hugging Face checkpoints open the same way from a local directory, a
// base URL (read by HTTP Range: only the safetensors headers travel) and picked Files; a folder
// missing config.json, its weights or a shard, and a URL that 404s, fail with typed errors naming
// the folder and the file.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { modelPath, modelsDir } from './helpers/models.ts';
import { serveStatic, type StaticServer } from './e2e/static-server.ts';
import { ModelFormatError, ModelSourceError } from '../src/model/errors.ts';
import { detectModelSource, filesFolder, localFolder, modelNameFromPath, openHfCheckpoint, urlFolder, type HfCheckpoint, type ModelFolder } from '../src/model/folder.ts';
import { readSafetensorsBytes } from '../src/model/safetensors.ts';

interface Expected {
  folder: string;
  family: string;
  dim: number;
  nLayers: number;
  eosTokenIds: number[];
  weights: string[];
  tensorCount: number;
  /** name → [dtype, shape] */
  tensors: Record<string, [string, number[]]>;
  check?: (checkpoint: HfCheckpoint) => void;
}

const cases: Expected[] = [
  {
    folder: 'hf/stories260K',
    family: 'llama',
    dim: 64,
    nLayers: 5,
    eosTokenIds: [2],
    weights: ['model.safetensors'],
    tensorCount: 47,
    tensors: { 'model.embed_tokens.weight': ['F32', [512, 64]], 'model.layers.0.self_attn.q_proj.weight': ['F32', [64, 64]], 'model.norm.weight': ['F32', [64]] },
    check: (c) => expect(c.config.tiedEmbeddings).toBe(true),
  },
  {
    folder: 'llama3-tiny/hf',
    family: 'llama',
    dim: 32,
    nLayers: 2,
    eosTokenIds: [128001, 128008, 128009],
    weights: ['model.safetensors.index.json', 'model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'],
    tensorCount: 20,
    tensors: { 'model.embed_tokens.weight': ['BF16', [128256, 32]], 'model.norm.weight': ['BF16', [32]] },
    check: (c) => {
      expect(c.config.ropeScaling.type).toBe('llama3');
      // The two tensors above live in different shards.
      expect(c.tensors.tensor('model.embed_tokens.weight').source).not.toBe(c.tensors.tensor('model.norm.weight').source);
      expect(c.files.tokenizerConfig).toHaveProperty('chat_template');
    },
  },
  {
    folder: 'qwen3-tiny/hf',
    family: 'qwen3',
    dim: 32,
    nLayers: 3,
    eosTokenIds: [151645, 151643], // generation_config.json's, not config.json's single 151645
    weights: ['model.safetensors'],
    tensorCount: 35,
    tensors: { 'model.layers.0.self_attn.q_proj.weight': ['BF16', [64, 32]], 'model.layers.0.self_attn.q_norm.weight': ['BF16', [16]] },
    check: (c) => expect(c.config.qkNorm).toBe(true),
  },
  {
    folder: 'awq-tiny/awq-g32',
    family: 'llama',
    dim: 128,
    nLayers: 4,
    eosTokenIds: [2],
    weights: ['model.safetensors'],
    tensorCount: 95,
    tensors: {
      'model.layers.0.self_attn.q_proj.qweight': ['I32', [128, 16]],
      'model.layers.0.self_attn.q_proj.qzeros': ['I32', [4, 16]],
      'model.layers.0.self_attn.q_proj.scales': ['F16', [4, 128]],
      'lm_head.weight': ['F16', [512, 128]],
    },
    check: (c) => expect(c.config.quantization).toMatchObject({ method: 'awq', groupSize: 32, zeroPoint: true }),
  },
];

/** A folder's files as a folder pick gives them: `webkitRelativePath` is `<top folder>/<name>`. */
function pickedFiles(dir: string): File[] {
  return readdirSync(dir).map((name) => {
    const file = new File([readFileSync(join(dir, name))], name);
    Object.defineProperty(file, 'webkitRelativePath', { value: `${basename(dir)}/${name}` });
    return file;
  });
}

/** A temporary folder holding links to some files of a shared model folder. */
function partialFolder(root: string, name: string, from: string, files: string[]): string {
  const dir = join(root, name);
  mkdirSync(dir);
  for (const file of files) symlinkSync(modelPath(join(from, file)), join(dir, file));
  return dir;
}

let server: StaticServer;
let scratch: string;
const opened: HfCheckpoint[] = [];

beforeAll(async () => {
  scratch = mkdtempSync(join(tmpdir(), 'webshard-folders-'));
  server = await serveStatic({ '/models/': modelsDir, '/scratch/': scratch, '/no-range/': modelsDir }, { rangeless: ['/no-range/'] });
});

afterAll(async () => {
  await Promise.all(opened.map((c) => c.close()));
  await server?.close();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

async function open(folder: ModelFolder): Promise<HfCheckpoint> {
  const checkpoint = await openHfCheckpoint(folder);
  opened.push(checkpoint);
  return checkpoint;
}

/** What a checkpoint's tensors are, wherever they were read from (offsets included). */
const tensorTable = (c: HfCheckpoint) => c.tensors.tensors.map((t) => [t.name, t.dtype, t.shape.join('x'), t.offset, t.byteLength].join(' '));

describe.each(cases)('$folder', (expected) => {
  let local: HfCheckpoint;

  beforeAll(async () => {
    local = await open(localFolder(modelPath(expected.folder)));
  });

  it('opens from a local directory with its config, side files and tensors', () => {
    expect(local.config).toMatchObject({ family: expected.family, dim: expected.dim, nLayers: expected.nLayers, eosTokenIds: expected.eosTokenIds });
    expect(local.files.weights).toEqual(expected.weights);
    expect(local.files.generationConfig).toBeDefined();
    expect(local.files.tokenizerConfig).toBeDefined();
    expect(local.files.quantizeConfig).toBeUndefined();
    expect(local.tensors.tensors).toHaveLength(expected.tensorCount);
    for (const [name, [dtype, shape]] of Object.entries(expected.tensors)) {
      expect(local.tensors.tensor(name), name).toMatchObject({ dtype, shape });
    }
    expected.check?.(local);
  });

  it('opens from a base URL reading only the safetensors headers, by range', async () => {
    const prefix = `/models/${expected.folder}/`;
    const before = server.requests.length;
    const remote = await open(urlFolder(`${server.origin}${prefix}`));
    expect(remote.config).toEqual(local.config);
    expect(tensorTable(remote)).toEqual(tensorTable(local));

    const weightRequests = server.requests.slice(before).filter((r) => r.path.endsWith('.safetensors') && r.method === 'GET');
    expect(weightRequests.every((r) => r.range !== undefined), 'every weight file read is a Range request').toBe(true);
    const requestedBytes = weightRequests.reduce((sum, r) => {
      const [, first, last] = /^bytes=(\d+)-(\d+)$/.exec(r.range!)!;
      return sum + Number(last) - Number(first) + 1;
    }, 0);
    // Per file: the one-byte size probe, the 8-byte header length and the header; no tensor data.
    const headerBytes = remote.tensors.files.reduce((sum, f) => sum + 1 + f.dataOffset, 0);
    expect(requestedBytes).toBe(headerBytes);
    expect(remote.tensors.files.map((f) => f.source.bytesRead)).toEqual(remote.tensors.files.map((f) => f.dataOffset));

    // A tensor read through the URL is the same bytes as from the local file.
    const name = Object.keys(expected.tensors).at(-1)!;
    expect(await readSafetensorsBytes(remote.tensors.tensor(name))).toEqual(await readSafetensorsBytes(local.tensors.tensor(name)));
  });

  it('opens from picked Files, named by webkitRelativePath without the top folder', async () => {
    const folder = filesFolder(pickedFiles(modelPath(expected.folder)));
    expect(folder.name).toBe(basename(expected.folder));
    const picked = await open(folder);
    expect(picked.config).toEqual(local.config);
    expect(tensorTable(picked)).toEqual(tensorTable(local));
    expect(picked.files.weights).toEqual(expected.weights);
  });
});

describe('detectModelSource', () => {
  it('tells GGUF files from Hugging Face folders without reading them', async () => {
    expect((await detectModelSource(modelPath('hf/stories260K'))).kind).toBe('hf-folder');
    expect(await detectModelSource(modelPath('stories260K.gguf'))).toEqual({ kind: 'gguf', source: modelPath('stories260K.gguf') });
    expect((await detectModelSource(new URL(`file://${modelPath('hf/stories260K')}`))).kind).toBe('hf-folder');
    const url = await detectModelSource(`${server.origin}/models/hf/stories260K/`);
    expect(url.kind === 'hf-folder' && url.folder.name).toBe(`${server.origin}/models/hf/stories260K/`);
    expect((await detectModelSource(`${server.origin}/models/stories260K.gguf`)).kind).toBe('gguf');
    expect((await detectModelSource(pickedFiles(modelPath('hf/stories260K')))).kind).toBe('hf-folder');
    // Dropped files carry no relative path: their own names are the names in the folder.
    const dropped = readdirSync(modelPath('hf/stories260K')).map((name) => new File([readFileSync(modelPath(`hf/stories260K/${name}`))], name));
    const droppedFolder = await detectModelSource(dropped);
    expect(droppedFolder.kind === 'hf-folder' && droppedFolder.folder.name).toBe('the dropped files');
    if (droppedFolder.kind === 'hf-folder') expect((await open(droppedFolder.folder)).config.dim).toBe(64);
    const gguf = new File([new Uint8Array(4)], 'model.gguf');
    expect(await detectModelSource([gguf])).toEqual({ kind: 'gguf', source: gguf });
    expect((await detectModelSource(new Uint8Array(4))).kind).toBe('gguf');
  });

  it('refuses a missing path, a file of a checkpoint, and files without config.json', async () => {
    await expect(detectModelSource(modelPath('no-such-model'))).rejects.toThrow(ModelSourceError);
    await expect(detectModelSource(modelPath('hf/stories260K/model.safetensors'))).rejects.toThrow(/one file of a Hugging Face checkpoint; pass the folder/);
    const noConfig = pickedFiles(modelPath('hf/stories260K')).filter((f) => f.name !== 'config.json');
    await expect(detectModelSource(noConfig)).rejects.toThrow(/stories260K: no config.json among 6 files: a Hugging Face model folder needs config.json/);
  });
});

describe('incomplete folders', () => {
  it('a folder without config.json names the folder and what it needs', async () => {
    const dir = partialFolder(scratch, 'no-config', 'hf/stories260K', ['model.safetensors', 'tokenizer.json']);
    const error = await openHfCheckpoint(localFolder(dir)).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ModelSourceError);
    expect((error as Error).message).toBe(
      `${dir}: no config.json in ${dir}: a Hugging Face model folder needs config.json and model.safetensors or model.safetensors.index.json`,
    );
  });

  it('a folder without weights (local and URL)', async () => {
    const dir = partialFolder(scratch, 'no-weights', 'hf/stories260K', ['config.json', 'generation_config.json']);
    await expect(openHfCheckpoint(localFolder(dir))).rejects.toThrow(/no-weights: no model.safetensors or model.safetensors.index.json in /);
    await expect(openHfCheckpoint(urlFolder(`${server.origin}/scratch/no-weights/`))).rejects.toThrow(ModelSourceError);
  });

  it('an index naming a missing shard (local, URL and Files) names the shard', async () => {
    const dir = partialFolder(scratch, 'missing-shard', 'llama3-tiny/hf', ['config.json', 'model.safetensors.index.json', 'model-00001-of-00002.safetensors']);
    for (const folder of [localFolder(dir), urlFolder(`${server.origin}/scratch/missing-shard`), filesFolder(pickedFiles(dir))]) {
      const error = await openHfCheckpoint(folder).catch((e: unknown) => e);
      expect(error, folder.name).toBeInstanceOf(ModelFormatError);
      expect((error as ModelFormatError).field).toBe('weight_map');
      expect((error as Error).message).toMatch(/in shard model-00002-of-00002.safetensors, which cannot be opened: .*no model-00002-of-00002.safetensors in this folder.*Download model-00002-of-00002.safetensors into the same folder/);
    }
  });

  it('a server that ignores Range requests is refused at the first weight request (the one-byte probe)', async () => {
    const before = server.requests.length;
    await expect(openHfCheckpoint(urlFolder(`${server.origin}/no-range/hf/stories260K/`))).rejects.toThrow(/ignores HTTP Range requests/);
    const weightGets = server.requests.slice(before).filter((r) => r.path.endsWith('.safetensors') && r.method === 'GET');
    expect(weightGets).toEqual([{ method: 'GET', path: '/no-range/hf/stories260K/model.safetensors', range: 'bytes=0-0' }]);
  });

  it('a URL that 404s, and names that leave the folder', async () => {
    const folder = urlFolder(`${server.origin}/models/no-such-model/`);
    await expect(openHfCheckpoint(folder)).rejects.toThrow(`no config.json in ${server.origin}/models/no-such-model/`);
    await expect(folder.readText('tokenizer.json')).rejects.toThrow(/no tokenizer.json in this folder/);
    await expect(folder.open('model.safetensors')).rejects.toThrow(ModelSourceError);
    const local = localFolder(modelPath('hf/stories260K'));
    await expect(local.open('../stories260K.gguf')).rejects.toThrow(/not a file name inside the folder/);
    await expect(local.has('/etc/passwd')).rejects.toThrow(ModelSourceError);
  });
});

describe('modelNameFromPath (general.name of a folder, the served model id)', () => {
  it.each([
    ['models/Llama-3.2-1B/', 'Llama-3.2-1B'],
    ['https://huggingface.co/org/Qwen3-0.6B/resolve/main/', 'Qwen3-0.6B'],
    ['/cache/huggingface/hub/models--microsoft--Phi-3-mini-4k-instruct/snapshots/0a67737cc96d2554230f90338b163bc6380a2a85', 'Phi-3-mini-4k-instruct'],
    ['../shared/models/phi3-tiny/hf', 'phi3-tiny/hf'],
    ['path/to/stories260K.gguf', 'stories260K.gguf'],
    ['https://host/x/model.gguf?download=1', 'model.gguf'],
    ['microsoft/Phi-3-mini-4k-instruct', 'Phi-3-mini-4k-instruct'],
  ])('%s → %s', (path, name) => {
    expect(modelNameFromPath(path)).toBe(name);
  });
});
