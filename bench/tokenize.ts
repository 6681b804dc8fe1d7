// Tokenizer speed on one core: byte-level BPE (Llama 3, Qwen2) and SentencePiece (Phi-3's Llama 2
// vocabulary), from 1 KB to 1 MB of text, in MB of UTF-8 per second.
//
//   deno task bench:tokenize [--repeats 3]
//
// Texts: this repository's README and ARCHITECTURE (English prose with code) repeated to size,
// the same with words shuffled into random letters (no two words alike: the word cache of the BPE
// tokenizer cannot help), and 1 MB without a single space (one pre-tokenizer word for BPE, one
// fragment for SentencePiece): a merge loop that were quadratic in the word length would show there.
// Models: the shared test GGUFs (../shared/models, or WEBSHARD_MODELS); only their headers are read.
// MB/s is computed from the process's CPU time (user + system) during the run, so other processes
// competing for the cores do not count against the tokenizer; wall time is shown beside it.

import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cpuUsage } from 'node:process';
import { parseArgs } from 'node:util';
import { readGGUF } from '../src/model/gguf.ts';
import { fileSource } from '../src/model/source.ts';
import { LlamaTokenizer } from '../src/model/tokenizer.ts';
import { runtimeDescription, table, today, writeResults } from './common.ts';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const env = (globalThis as { process?: { env: Record<string, string | undefined> } }).process?.env ?? {};
const modelsDir = env.WEBSHARD_MODELS ?? resolve(root, '../shared/models');

const VOCABULARIES = [
  { name: 'llama3 (BPE, llama-bpe)', file: 'llama3-tiny/llama3-tiny-F32.gguf' },
  { name: 'qwen2.5 (BPE, qwen2)', file: 'qwen2-tiny/qwen2-tiny-F32.gguf' },
  { name: 'phi3 (SentencePiece)', file: 'phi3-tiny/phi3-tiny-F32.gguf' },
];

const encoder = new TextEncoder();

/** `text` repeated and cut to `bytes` UTF-8 bytes (at a character boundary). */
function sized(text: string, bytes: number): string {
  let out = text;
  while (encoder.encode(out).length < bytes) out += text;
  while (encoder.encode(out).length > bytes) out = out.slice(0, Math.max(1, out.length - Math.ceil((encoder.encode(out).length - bytes) / 3)));
  return out;
}

/** The prose with every letter replaced by a pseudo-random one: word shapes stay, words never repeat. */
function scrambled(text: string, seed = 7): string {
  let state = seed;
  const letter = () => {
    state = (state * 1103515245 + 12345) >>> 0;
    return String.fromCharCode(97 + ((state >>> 16) % 26));
  };
  return text.replace(/[a-z]/gi, letter);
}

interface Row {
  vocabulary: string;
  text: string;
  bytes: number;
  tokens: number;
  wallMs: number;
  cpuMs: number;
  mbPerSecond: number;
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { repeats: { type: 'string', default: '3' } } });
  const repeats = Math.max(1, Number(values.repeats));
  const prose = ['README.md', 'ARCHITECTURE.md'].map((f) => readFileSync(resolve(root, f), 'utf8')).join('\n');
  const texts: Array<[string, string]> = [
    ['prose 1 KB', sized(prose, 1 << 10)],
    ['prose 64 KB', sized(prose, 64 << 10)],
    ['prose 1 MB', sized(prose, 1 << 20)],
    ['scrambled 1 MB', sized(scrambled(prose), 1 << 20)],
    ['no spaces 1 MB', sized(scrambled(prose).replace(/\s+/g, ''), 1 << 20)],
  ];

  const rows: Row[] = [];
  for (const vocabulary of VOCABULARIES) {
    const source = await fileSource(resolve(modelsDir, vocabulary.file));
    let metadata: Map<string, unknown>;
    try {
      metadata = (await readGGUF(source)).metadata;
    } finally {
      await source.close();
    }
    for (const [name, text] of texts) {
      const bytes = encoder.encode(text).length;
      // Small texts run many times per measurement, so the timer's resolution does not matter.
      const loops = Math.max(1, Math.round((256 << 10) / bytes));
      let best = { cpuMs: Infinity, wallMs: Infinity };
      let tokens = 0;
      for (let r = 0; r < repeats; r++) {
        // A fresh tokenizer each time: its word cache starts empty, as for a user's first request.
        const tokenizer = LlamaTokenizer.fromGGUFMetadata(metadata, { file: vocabulary.file });
        const start = performance.now();
        const cpuStart = cpuUsage();
        for (let i = 0; i < loops; i++) tokens = tokenizer.encode(text, { addBos: false }).length;
        const cpu = cpuUsage(cpuStart);
        const run = { cpuMs: (cpu.user + cpu.system) / 1000 / loops, wallMs: (performance.now() - start) / loops };
        if (run.cpuMs < best.cpuMs) best = run;
      }
      rows.push({ vocabulary: vocabulary.name, text: name, bytes, tokens, ...best, mbPerSecond: bytes / 1e6 / (best.cpuMs / 1000) });
      console.error(`${vocabulary.name}: ${name} done`);
    }
  }

  console.log(`Tokenizer speed, one core, ${runtimeDescription()}, ${today()} (best of ${repeats} by CPU time; a fresh tokenizer each run)\n`);
  console.log(
    table(
      ['vocabulary', 'text', 'bytes', 'tokens', 'CPU ms', 'wall ms', 'MB/s (CPU)'],
      rows.map((r) => [r.vocabulary, r.text, r.bytes, r.tokens, r.cpuMs.toFixed(2), r.wallMs.toFixed(2), r.mbPerSecond.toFixed(2)]),
    ),
  );
  const path = await writeResults('tokenize', { date: today(), runtime: runtimeDescription(), repeats, rows });
  console.log(`\nwrote ${path}`);
}

await main();
