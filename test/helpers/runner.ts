// Greedy decoding straight on a LlamaRunner (below loadModel), for tests that build a parsed model
// file themselves: one sequence in slot 0, the prompt as one step, then one token per step.
import type { LlamaRunner } from '../../src/engine/runner.ts';

export async function greedyTokens(runner: LlamaRunner, prompt: readonly number[], count: number): Promise<number[]> {
  const blockTable = Uint32Array.from({ length: runner.geometry.blocksPerSequence }, (_, block) => block);
  const out: number[] = [];
  for (let tokens = [...prompt], position = 0; out.length < count; ) {
    const [best] = await runner.forward({ tokens, positions: tokens.map((_, i) => position + i), slots: tokens.map(() => 0), sampleRows: [tokens.length - 1], blockTable, wantLogits: false });
    position += tokens.length;
    out.push(best!.argmaxId);
    tokens = [best!.argmaxId];
  }
  return out;
}
