// Speculative decoding: the output is the target's own. Greedy gives llama.cpp's tokens for
// every reference case with either drafter (a Q8_0 draft model, prompt lookup), on one device
// and with a tensor-parallel target; sampling follows the target's distribution (a seeded
// frequency test); bad options and a draft of another vocabulary are refused.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModel, type Model } from '../src/api/model.ts';
import { InvalidOptionError, pointMass, resolveSampling, Sampler, type TokenDistribution } from '../src/engine/sampler.ts';
import { acceptDrafts, PromptLookupDrafter, type DraftToken } from '../src/engine/speculative.ts';
import type { StepResult } from '../src/engine/runner.ts';
import { testGpu } from './helpers/gpu.ts';
import { modelPath, reference } from './helpers/models.ts';

const cases = reference().generation_cases.filter((c) => c.model === 'stories260K-f32');
const target = modelPath('stories260K.gguf');
const draftQ8 = modelPath('stories260K-Q8_0.gguf');
const greedy = (n: number) => ({ temperature: 0, maxTokens: n, ignoreEos: true });

describe('prompt lookup drafting', () => {
  it('proposes what followed the latest earlier match of the last n tokens', async () => {
    const drafter = new PromptLookupDrafter(2);
    expect(await drafter.propose([1, 2, 3, 9, 1, 2, 3, 4, 5, 1, 2], 3)).toEqual([{ id: 3 }, { id: 4 }, { id: 5 }]);
    expect(await drafter.propose([1, 2, 3, 9, 1, 2], 8)).toEqual([{ id: 3 }, { id: 9 }, { id: 1 }, { id: 2 }]);
    expect(await drafter.propose([5, 6, 7, 8], 4)).toEqual([]);
    expect(await drafter.propose([1, 2, 1, 2], 0)).toEqual([]);
  });
});

describe('accepting drafts', () => {
  /** A target row whose sampling distribution is `probs` (logits = log p, temperature 1, no truncation). */
  const row = (probs: number[]): StepResult => ({ argmaxId: probs.indexOf(Math.max(...probs)), logits: Float32Array.from(probs, (p) => (p > 0 ? Math.log(p) : -Infinity)) });
  const plainSampling = { temperature: 1, topK: 0, topP: 1, minP: 0 };

  it('keeps greedy drafts exactly while they are the argmax, then takes the target’s token', () => {
    const sampler = new Sampler(resolveSampling({ temperature: 0, seed: 1 }));
    const oneHot = (r: StepResult): TokenDistribution => pointMass(r.argmaxId);
    const rows = [0, 1, 2, 3].map((id) => ({ argmaxId: [7, 8, 5, 6][id]! }));
    const choice = { distribution: oneHot, sampler };
    expect(acceptDrafts(rows, [{ id: 7 }, { id: 8 }, { id: 9 }], [1], choice)).toEqual([7, 8, 5]);
    expect(acceptDrafts(rows, [{ id: 7 }, { id: 8 }, { id: 5 }], [1], choice)).toEqual([7, 8, 5, 6]);
    expect(acceptDrafts(rows, [{ id: 2 }], [1], choice)).toEqual([7]);
  });

  it('leaves every emitted token distributed as the target’s p (seeded frequency test)', () => {
    const p = [0.5, 0.3, 0.15, 0.05];
    const q: TokenDistribution = { ids: [0, 1, 2, 3], weights: [0.1, 0.2, 0.3, 0.4], total: 1 };
    const second = [0.25, 0.25, 0.25, 0.25];
    const sampler = new Sampler(resolveSampling({ ...plainSampling, seed: 7 }));
    const draftSampler = new Sampler(resolveSampling({ ...plainSampling, seed: 8 }));
    const distribution = (r: StepResult, history: readonly number[]) => sampler.distribution(r.logits!.slice(), history);
    const trials = 40_000;
    const first = [0, 0, 0, 0];
    const next = [0, 0, 0, 0];
    let accepted = 0;
    for (let t = 0; t < trials; t++) {
      const drafts: DraftToken[] = [{ id: draftSampler.drawFrom(q), q }];
      const emitted = acceptDrafts([row(p), row(second)], drafts, [], { distribution, sampler });
      first[emitted[0]!]!++;
      if (emitted.length === 2) {
        accepted++;
        next[emitted[1]!]!++;
      }
    }
    // Standard error of a frequency ≤ 0.5/√n: 0.0025 at 40k; 0.01 is four of them.
    first.forEach((count, id) => expect(Math.abs(count / trials - p[id]!)).toBeLessThan(0.01));
    next.forEach((count, id) => expect(Math.abs(count / accepted - second[id]!)).toBeLessThan(0.02));
    // Acceptance is Σ min(p, q) = 0.1 + 0.2 + 0.15 + 0.05.
    expect(Math.abs(accepted / trials - 0.5)).toBeLessThan(0.01);
  });
});

describe('speculative decoding on stories260K (one device)', () => {
  let plain: Model;
  let withDraft: Model;
  let withLookup: Model;
  beforeAll(async () => {
    const device = await testGpu();
    plain = await loadModel(target, { device, contextLength: 512 });
    withDraft = await loadModel(target, { device, contextLength: 512, speculative: { draftModel: draftQ8, draftLoadOptions: { device }, draftMax: 8, draftPMin: 0 } });
    withLookup = await loadModel(target, { device, contextLength: 512, speculative: { lookupNgram: 2, draftMax: 6 } });
  });
  afterAll(async () => {
    await plain?.dispose();
    await withDraft?.dispose();
    await withLookup?.dispose();
  });

  const draftTotals = { steps: 0, tokens: 0 };
  for (const c of cases) {
    it(`${c.name}: the Q8_0 draft and prompt lookup give llama.cpp's tokens in fewer target steps`, async () => {
      for (const model of [withDraft, withLookup]) {
        const result = await model.complete(c.prompt_ids, greedy(c.n_predict));
        if (model === withDraft) {
          draftTotals.steps += result.speculative!.targetSteps;
          draftTotals.tokens += result.ids.length;
        }
        expect(result.ids).toEqual(c.generated_ids);
        expect(result.text).toBe(c.generated_text);
        const { drafted, accepted, targetSteps } = result.speculative!;
        expect(accepted).toBeLessThanOrEqual(drafted);
        // Every step emits one token of the target's own plus the drafts it accepted.
        expect(targetSteps + accepted).toBe(c.n_predict);
      }
    });
  }

  it('needs at least 1.8× fewer target steps per token with the Q8_0 draft, over all cases', () => {
    expect(draftTotals.tokens).toBe(cases.reduce((n, c) => n + c.n_predict, 0));
    expect(draftTotals.tokens / draftTotals.steps).toBeGreaterThanOrEqual(1.8);
    expect(withDraft.stats().speculative.targetSteps).toBe(draftTotals.steps);
  });

  it('sampling with a draft follows the target’s distribution (seeded token frequencies vs plain sampling)', async () => {
    const prompt = cases[0]!.prompt_ids;
    const runs = 120;
    const sampling = { temperature: 1, topK: 0, topP: 1, minP: 0, maxTokens: 3, ignoreEos: true };
    const histogram = async (model: Model, speculative: boolean) => {
      const counts = new Map<number, number>();
      for (let seed = 0; seed < runs; seed++) {
        const { ids } = await model.complete(prompt, { ...sampling, seed, speculative });
        counts.set(ids[2]!, (counts.get(ids[2]!) ?? 0) + 1);
      }
      return counts;
    };
    const [reference, speculated] = [await histogram(plain, false), await histogram(withDraft, true)];
    // Total variation distance between the two empirical distributions of the third token;
    // two samples of 120 from one distribution stay well under 0.35 here, unlike a biased sampler.
    let distance = 0;
    for (const id of new Set([...reference.keys(), ...speculated.keys()])) distance += Math.abs((reference.get(id) ?? 0) - (speculated.get(id) ?? 0)) / runs;
    expect(distance / 2).toBeLessThan(0.35);
  });

  it('a request can opt out, and concurrent sequences draft and verify together', async () => {
    const optedOut = await withDraft.complete(cases[0]!.prompt_ids, { ...greedy(16), speculative: false });
    expect(optedOut.speculative).toBeUndefined();
    expect(optedOut.ids).toEqual(cases[0]!.generated_ids.slice(0, 16));
  });
});

describe('speculative decoding with several sequences and a tensor-parallel target', () => {
  let model: Model;
  beforeAll(async () => {
    const device = await testGpu();
    model = await loadModel(target, { contextLength: 256, tp: 2, maxSequences: 2, speculative: { draftModel: draftQ8, draftLoadOptions: { device }, draftMax: 4, draftPMin: 0.5 } });
  });
  afterAll(() => model?.dispose());

  // Every case runs on one device above; here two of them, together, on a TP=2 target.
  it("gives llama.cpp's tokens, two sequences drafting and verifying in the same steps", async () => {
    const pair = cases.slice(0, 2);
    const results = await Promise.all(pair.map((c) => model.complete(c.prompt_ids, greedy(c.n_predict))));
    results.forEach((result, j) => {
      expect(result.ids).toEqual(pair[j]!.generated_ids);
      expect(result.speculative!.targetSteps).toBeLessThan(pair[j]!.n_predict);
    });
  });
});

describe('speculative options', () => {
  it('refuses bad values and a draft of another vocabulary, naming the difference', async () => {
    const device = await testGpu();
    const load = (speculative: object) => loadModel(target, { device, contextLength: 128, speculative });
    await expect(load({ lookupNgram: 2, draftMax: 0 })).rejects.toThrow(/draftMax must be an integer ≥ 1; got 0/);
    await expect(load({ lookupNgram: -1 })).rejects.toThrow(/lookupNgram must be an integer ≥ 1/);
    await expect(load({ lookupNgram: 2, draftMin: 5, draftMax: 3 })).rejects.toThrow(/draftMin \(5\) must not exceed draftMax \(3\)/);
    await expect(load({ lookupNgram: 2, draftPMin: 2 })).rejects.toThrow(/draftPMin must be in \[0, 1\]/);
    await expect(load({})).rejects.toThrow(InvalidOptionError);
    const other = load({ draftModel: modelPath('llama-2-tiny-random.gguf'), draftLoadOptions: { device } });
    await expect(other).rejects.toThrow(InvalidOptionError);
    await expect(other).rejects.toThrow(/32000 tokens against 512; the first difference is token \d+/);
  });
});
