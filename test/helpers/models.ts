// Where the shared test models live. Tests read them in place (never copied into the project).
// In CI (CI=true) a missing models folder is a failure, not a skip.
import { existsSync, readFileSync } from 'node:fs';
import { afterAll } from 'vitest';
import { llamaConfig, type LlamaConfig } from '../../src/model/config.ts';
import { readGGUF, type GGUFFile } from '../../src/model/gguf.ts';
import { fileSource } from '../../src/model/source.ts';
import { fileURLToPath } from 'node:url';
import { dirname, resolve } from 'node:path';

export const projectRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

export const modelsDir: string = process.env.WEBSHARD_MODELS ?? resolve(projectRoot, '../shared/models');

export const haveModels: boolean = existsSync(resolve(modelsDir, 'reference/public.json'));

if (!haveModels && process.env.CI === 'true') {
  throw new Error(`CI=true but the shared test models are missing at ${modelsDir} (set WEBSHARD_MODELS to their folder).`);
}

export function modelPath(file: string): string {
  return resolve(modelsDir, file);
}

export interface GenerationCase {
  id: string;
  model: string;
  name: string;
  prompt: string;
  prompt_ids: number[];
  n_predict: number;
  generated_ids: number[];
  generated_text: string;
  detokenized: string;
  top5_first: Array<[number, number]>;
  first_logits?: number[];
  step_margin: number[];
  min_margin: number;
  stable_prefix_len: Record<'0.001' | '0.01' | '0.1', number>;
}

export interface TokenizerCase {
  id: string;
  vocab: string;
  model: string;
  text: string;
  add_bos: boolean;
  parse_special: boolean;
  ids: number[];
  tokens: string[];
  detokenized: string;
}

export interface Reference {
  models: Record<string, { file: string; sha256: string; size: number }>;
  generation_cases: GenerationCase[];
  tokenizer_cases: TokenizerCase[];
}

const referenceFiles = new Map<string, unknown>();

/** A reference file of ../shared/models/reference (e.g. `public.json`), parsed once per test file. */
export function referenceJson<T>(name: string): T {
  if (!referenceFiles.has(name)) referenceFiles.set(name, JSON.parse(readFileSync(resolve(modelsDir, 'reference', name), 'utf8')));
  return referenceFiles.get(name) as T;
}

export function reference(): Reference {
  return referenceJson<Reference>('public.json');
}

/** The model file for a reference model key such as "stories260K-q4_0". */
export function referenceModelPath(key: string): string {
  const entry = reference().models[key];
  if (!entry) throw new Error(`no reference model ${key}`);
  return modelPath(entry.file);
}

let opened: GGUFFile[] | undefined;

/** A shared model's GGUF header and config, its file closed after the test file. */
export async function openModelFile(file: string): Promise<{ file: GGUFFile; config: LlamaConfig }> {
  if (!opened) {
    const files: GGUFFile[] = (opened = []);
    afterAll(async () => {
      for (const f of files) await f.source.close();
    });
  }
  const gguf = await readGGUF(await fileSource(modelPath(file)));
  opened.push(gguf);
  return { file: gguf, config: llamaConfig(gguf) };
}

/** reference/quantized-public.json: llama.cpp on the exactly dequantized AWQ/GPTQ checkpoints (`model` is the folder). */
export interface QuantizedReference {
  models: Record<string, { dir: string; format: string; gguf: { file: string } }>;
  generation_cases: GenerationCase[];
}

export function quantizedReference(): QuantizedReference {
  return referenceJson<QuantizedReference>('quantized-public.json');
}
