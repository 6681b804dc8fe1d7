// What every benchmark shares: the date and machine it ran on, a plain table for the terminal
// (GitHub-flavoured markdown, so it can be pasted into BENCHMARKS.md as it is), the JSON results
// under bench/results/ (git-ignored), and the random demo model written once to a file there.
// Written with node: modules, which Deno and Node both provide.

import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { basename, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeRandomLlamaGGUF, type RandomLlamaShape } from '../src/model/random-llama.ts';
import { directoryTarget } from '../src/model/safetensors-writer.ts';

export const resultsDir: string = resolve(dirname(fileURLToPath(import.meta.url)), 'results');

/** Today as YYYY-MM-DD (UTC), for file names and tables. */
export function today(): string {
  return new Date().toISOString().slice(0, 10);
}

/** "Deno 2.9.6 (V8 ...)" or "Node v20...": the runtime that produced the numbers. */
export function runtimeDescription(): string {
  const deno = (globalThis as { Deno?: { version: { deno: string; v8: string } } }).Deno;
  if (deno) return `Deno ${deno.version.deno} (V8 ${deno.version.v8})`;
  const node = (globalThis as { process?: { version?: string } }).process?.version;
  return node ? `Node ${node}` : 'unknown runtime';
}

/** A markdown table with padded columns; numbers are right-aligned. */
export function table(headers: readonly string[], rows: ReadonlyArray<ReadonlyArray<string | number>>): string {
  const cells = rows.map((row) => row.map(String));
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((row) => row[i]?.length ?? 0)));
  // A column is right-aligned when every filled cell is a number (a blank is "not measured").
  const filled = (i: number) => rows.filter((row) => String(row[i] ?? '') !== '');
  const numeric = headers.map((_, i) => filled(i).length > 0 && filled(i).every((row) => typeof row[i] === 'number' || /^[-+]?[\d.,]+%?$/.test(String(row[i]))));
  const line = (values: readonly string[]) =>
    `| ${values.map((v, i) => (numeric[i] ? v.padStart(widths[i]!) : v.padEnd(widths[i]!))).join(' | ')} |`;
  const rule = `|${widths.map((w, i) => (numeric[i] ? `${'-'.repeat(w + 1)}:` : '-'.repeat(w + 2))).join('|')}|`;
  return [line(headers), rule, ...cells.map(line)].join('\n');
}

/** Writes `data` as bench/results/<name>-<date>.json and returns the path. */
export async function writeResults(name: string, data: unknown): Promise<string> {
  await mkdir(resultsDir, { recursive: true });
  const path = resolve(resultsDir, `${name}-${today()}.json`);
  await writeFile(path, JSON.stringify(data, null, 2) + '\n');
  return path;
}

/** The random-weight demo model at `shape`, written once to bench/results/ and reused. */
export async function randomModelFile(shape: RandomLlamaShape, seed = 1): Promise<string> {
  const key = [shape.dim, shape.nLayers, shape.nHeads, shape.nKvHeads, shape.ffnDim, shape.vocabSize ?? 'v', shape.weightType ?? 0, seed].join('-');
  const path = resolve(resultsDir, `random-llama-${key}.gguf`);
  if (existsSync(path)) return path;
  // Written under a temporary name first, so an interrupted run never leaves half a model behind.
  await directoryTarget(resultsDir).writeFile(basename(path), (sink) => writeRandomLlamaGGUF(shape, seed, sink));
  return path;
}

/** Milliseconds for tables: 3 significant decimals below 1 ms, 2 above. */
export function formatMs(x: number): string {
  return x.toFixed(x < 1 ? 3 : 2);
}

/** Bytes as the issue names sizes: 16 KB, 1 MB (powers of two), 256 B. */
export function formatSize(bytes: number): string {
  if (bytes >= 2 ** 20 && bytes % 2 ** 20 === 0) return `${bytes / 2 ** 20} MB`;
  if (bytes >= 1024 && bytes % 1024 === 0) return `${bytes / 1024} KB`;
  return `${bytes} B`;
}
