// bench/speculative.ts: speculative decoding against plain decoding, on the shared stories260K
// files (F32 target; Q8_0 and Q4_0 drafts; prompt lookup on a prompt the output repeats).
//
//   deno task bench:speculative [--tokens 64] [--draft-max 8]      (also a stage of deno task bench)
//
// For each row: decode tokens/s (wall clock after the first token), target steps per generated
// token (1.00 for plain decoding; the prompt's step included), and the share of drafted tokens
// the target kept. Every row's greedy tokens are checked against plain decoding's.

import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import process from 'node:process';
import { parseArgs } from 'node:util';
import { loadModel, type Model, type SpeculativeOptions } from '../src/api/model.ts';
import type { GpuContext } from '../src/gpu/device.ts';
import { runtimeDescription, table, today, writeResults } from './common.ts';
import { requestBenchGpu } from './e2e.ts';

export interface SpeculativeRow {
  target: string;
  drafter: string;
  prompt: string;
  tokens: number;
  decodeTokensPerSecond: number;
  targetStepsPerToken: number;
  drafted: number;
  accepted: number;
  /** Whether the greedy tokens equal plain decoding's (they must). */
  sameTokens: boolean;
}

export interface SpeculativeBenchOptions {
  modelsDir: string;
  tokens: number;
  draftMax: number;
  device: GpuContext;
  log: (line: string) => void;
}

export const defaultModelsDir = (): string => process.env.WEBSHARD_MODELS ?? fileURLToPath(new URL('../../shared/models', import.meta.url));

const PROMPTS = {
  story: 'Once upon a time',
  // A prompt the continuation repeats: where prompt lookup pays off (code edits, RAG, summaries).
  repetitive: 'Lily saw a big red ball. Lily saw a big red ball. Lily saw a big red ball. Lily saw a big red ball. Lily saw a',
};

export async function benchSpeculative(o: SpeculativeBenchOptions): Promise<SpeculativeRow[]> {
  const file = (name: string) => resolve(o.modelsDir, name);
  const target = file('stories260K.gguf');
  if (!existsSync(target)) throw new Error(`no ${target}: set WEBSHARD_MODELS to the shared models folder`);
  const drafters: Array<{ name: string; speculative?: SpeculativeOptions; prompts: Array<keyof typeof PROMPTS> }> = [
    { name: 'none (plain decoding)', prompts: ['story', 'repetitive'] },
    { name: 'draft stories260K Q8_0', speculative: { draftModel: file('stories260K-Q8_0.gguf'), draftLoadOptions: { device: o.device }, draftMax: o.draftMax, draftPMin: 0 }, prompts: ['story'] },
    { name: 'draft stories260K Q4_0', speculative: { draftModel: file('stories260K-Q4_0.gguf'), draftLoadOptions: { device: o.device }, draftMax: o.draftMax, draftPMin: 0 }, prompts: ['story'] },
    { name: 'prompt lookup (n = 3)', speculative: { lookupNgram: 3, draftMax: o.draftMax }, prompts: ['story', 'repetitive'] },
  ];
  const rows: SpeculativeRow[] = [];
  const plainIds = new Map<string, number[]>();
  for (const drafter of drafters) {
    o.log(`speculative: ${drafter.name}`);
    const model: Model = await loadModel(target, { device: o.device, contextLength: 512, speculative: drafter.speculative });
    try {
      for (const prompt of drafter.prompts) {
        const options = { temperature: 0, maxTokens: o.tokens, ignoreEos: true };
        // Warm-up: the same run once, so every step shape's program is recorded (compiled) before timing.
        await model.complete(PROMPTS[prompt], options);
        const result = await model.complete(PROMPTS[prompt], options);
        if (!drafter.speculative) plainIds.set(prompt, result.ids);
        const counts = result.speculative ?? { drafted: 0, accepted: 0, targetSteps: result.ids.length };
        rows.push({
          target: 'stories260K F32',
          drafter: drafter.name,
          prompt,
          tokens: result.ids.length,
          decodeTokensPerSecond: (result.ids.length - 1) / (result.timings.decodeMs / 1000),
          targetStepsPerToken: counts.targetSteps / result.ids.length,
          drafted: counts.drafted,
          accepted: counts.accepted,
          sameTokens: JSON.stringify(result.ids) === JSON.stringify(plainIds.get(prompt)),
        });
      }
    } finally {
      await model.dispose();
    }
  }
  return rows;
}

export function formatSpeculativeTable(rows: readonly SpeculativeRow[]): string {
  const plain = new Map(rows.filter((r) => r.drafted === 0 && r.drafter.startsWith('none')).map((r) => [r.prompt, r]));
  return table(
    ['target', 'drafter', 'prompt', 'decode tok/s', 'vs plain', 'target steps / token', 'fewer steps', 'accepted', 'same tokens'],
    rows.map((r) => {
      const base = plain.get(r.prompt);
      return [
        r.target,
        r.drafter,
        r.prompt,
        r.decodeTokensPerSecond.toFixed(1),
        base ? `${(r.decodeTokensPerSecond / base.decodeTokensPerSecond).toFixed(2)}×` : '',
        r.targetStepsPerToken.toFixed(2),
        `${(1 / r.targetStepsPerToken).toFixed(2)}×`,
        r.drafted ? `${r.accepted}/${r.drafted} (${((100 * r.accepted) / r.drafted).toFixed(0)}%)` : '',
        r.sameTokens ? 'yes' : 'NO',
      ];
    }),
  );
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { tokens: { type: 'string' }, 'draft-max': { type: 'string' } } });
  const device = await requestBenchGpu();
  try {
    const rows = await benchSpeculative({
      modelsDir: defaultModelsDir(),
      tokens: Number(values.tokens ?? 64),
      draftMax: Number(values['draft-max'] ?? 8),
      device,
      log: (line) => console.error(line),
    });
    console.log(`webshard speculative decoding — ${today()}, ${device.adapterDescription}, ${runtimeDescription()}\n`);
    console.log(formatSpeculativeTable(rows));
    console.error(`\nwrote ${await writeResults('speculative', { date: today(), adapter: device.adapterDescription, runtime: runtimeDescription(), rows })}`);
  } finally {
    device.device.destroy();
  }
}

if ((import.meta as { main?: boolean }).main) await main();
