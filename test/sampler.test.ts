// The host sampler as a specification: llama.cpp's chain (penalties → top-k → top-p → min-p →
// temperature → draw), option validation, and seeded determinism. Pure: no GPU.
import { describe, expect, it } from 'vitest';
import {
  applyPenalties,
  argmax,
  candidateIds,
  candidatesSuffice,
  InvalidOptionError,
  isGreedy,
  resolveSampling,
  Sampler,
  type ResolvedSampling,
  type SamplingOptions,
} from '../src/engine/sampler.ts';
import { seededRandom } from '../src/random.ts';
import { randomF32 } from './helpers/gpu.ts';

/** Every filter off: a plain softmax draw at temperature 1 unless overridden. */
function plain(overrides: SamplingOptions = {}): ResolvedSampling {
  return resolveSampling({ temperature: 1, topK: 0, topP: 1, minP: 0, seed: 1, ...overrides });
}

function softmax(logits: ArrayLike<number>, temperature = 1): number[] {
  const values = Array.from(logits, (l) => l / temperature);
  const max = Math.max(...values);
  const weights = values.map((v) => Math.exp(v - max));
  const total = weights.reduce((a, b) => a + b, 0);
  return weights.map((w) => w / total);
}

/** Draws `n` tokens from fresh copies of `logits` (the sampler modifies its input in place). */
function draws(sampler: Sampler, logits: Float32Array, n: number, history: number[] = []): number[] {
  return Array.from({ length: n }, () => sampler.sample(logits.slice(), history));
}

/** Pearson's chi-square statistic of observed counts against expected probabilities. */
function chiSquare(counts: number[], probabilities: number[], n: number): number {
  let chi = 0;
  for (let i = 0; i < counts.length; i++) {
    const expected = probabilities[i]! * n;
    if (expected === 0) {
      expect(counts[i], `token ${i} has probability 0 but was drawn`).toBe(0);
      continue;
    }
    chi += (counts[i]! - expected) ** 2 / expected;
  }
  return chi;
}

function histogram(ids: number[], size: number): number[] {
  const counts = new Array<number>(size).fill(0);
  for (const id of ids) counts[id]!++;
  return counts;
}

/**
 * The straightforward reading of llama.cpp's chain (sort everything, then filter in order),
 * against which the optimised candidate selection is checked.
 */
function referenceCandidates(logits: Float32Array, s: ResolvedSampling): number[] {
  let ids = Array.from(logits.keys()).sort((a, b) => logits[b]! - logits[a]! || a - b);
  if (s.topK > 0) ids = ids.slice(0, s.topK);
  const max = logits[ids[0]!]!;
  const weights = ids.map((id) => Math.exp(logits[id]! - max));
  const total = weights.reduce((a, b) => a + b, 0);
  if (s.topP < 1) {
    let cumulative = 0;
    for (let i = 0; i < ids.length; i++) {
      cumulative += weights[i]! / total;
      if (cumulative >= s.topP) {
        ids = ids.slice(0, i + 1);
        break;
      }
    }
  }
  if (s.minP > 0) ids = ids.filter((id) => logits[id]! >= max + Math.log(s.minP));
  return ids;
}

describe('resolveSampling', () => {
  it("fills in llama.cpp's defaults", () => {
    const s = resolveSampling({ seed: 7 });
    expect(s).toEqual({
      temperature: 0.8,
      topK: 40,
      topP: 0.95,
      minP: 0.05,
      repeatPenalty: 1,
      repeatLastN: 64,
      frequencyPenalty: 0,
      presencePenalty: 0,
      seed: 7,
    });
  });

  it('picks a random integer seed when none is given', () => {
    const seed = resolveSampling({}).seed;
    expect(Number.isInteger(seed)).toBe(true);
    expect(seed).toBeGreaterThanOrEqual(0);
    expect(seed).toBeLessThan(2 ** 32);
  });

  const invalid: Array<[keyof SamplingOptions, number, string]> = [
    ['temperature', -0.1, '≥ 0'],
    ['temperature', Number.NaN, '≥ 0'],
    ['temperature', Number.POSITIVE_INFINITY, '≥ 0'],
    ['topK', -1, 'integer ≥ 0'],
    ['topK', 2.5, 'integer ≥ 0'],
    ['topP', 0, '(0, 1]'],
    ['topP', 1.01, '(0, 1]'],
    ['minP', -0.01, '[0, 1]'],
    ['minP', 1.5, '[0, 1]'],
    ['repeatPenalty', 0, '> 0'],
    ['repeatPenalty', -1, '> 0'],
    ['repeatLastN', -1, 'integer ≥ 0'],
    ['repeatLastN', 1.5, 'integer ≥ 0'],
    ['frequencyPenalty', Number.NaN, 'finite number'],
    ['presencePenalty', Number.NEGATIVE_INFINITY, 'finite number'],
    ['seed', 1.5, 'integer'],
    ['seed', Number.NaN, 'integer'],
  ];
  for (const [option, value, range] of invalid) {
    it(`rejects ${option} = ${value} with an InvalidOptionError naming ${option} and its range`, () => {
      const attempt = () => resolveSampling({ [option]: value });
      expect(attempt).toThrow(InvalidOptionError);
      expect(attempt).toThrow(option);
      expect(attempt).toThrow(range);
      expect(attempt).toThrow(String(value));
    });
  }

  it('rejects a number passed as a string (e.g. straight from a query string)', () => {
    expect(() => resolveSampling({ temperature: '0.5' as unknown as number })).toThrow(InvalidOptionError);
  });

  it('accepts the edges of every range', () => {
    expect(() =>
      resolveSampling({ temperature: 0, topK: 0, topP: 1, minP: 0, repeatPenalty: 0.5, repeatLastN: 0, frequencyPenalty: -1, presencePenalty: 2, seed: 0 }),
    ).not.toThrow();
    expect(() => resolveSampling({ topP: 1e-9, minP: 1, seed: -1 })).not.toThrow();
  });
});

describe('isGreedy: when the GPU argmax alone decides', () => {
  it('is greedy at temperature 0 without penalties', () => {
    expect(isGreedy(resolveSampling({ temperature: 0 }))).toBe(true);
    expect(isGreedy(resolveSampling({ temperature: 0, topK: 5, topP: 0.5 }))).toBe(true);
  });
  it('is not greedy when sampling or when any penalty needs the logits', () => {
    expect(isGreedy(resolveSampling({ temperature: 0.1 }))).toBe(false);
    expect(isGreedy(resolveSampling({ temperature: 0, repeatPenalty: 1.1 }))).toBe(false);
    expect(isGreedy(resolveSampling({ temperature: 0, frequencyPenalty: 0.5 }))).toBe(false);
    expect(isGreedy(resolveSampling({ temperature: 0, presencePenalty: 0.5 }))).toBe(false);
  });
});

describe('penalties (llama.cpp semantics)', () => {
  it('divides a positive logit and multiplies a negative one by the repeat penalty', () => {
    const logits = Float32Array.of(2, -2, 1, 0);
    applyPenalties(logits, [0, 1, 3], plain({ repeatPenalty: 2 }));
    expect(Array.from(logits)).toEqual([1, -4, 1, 0]);
  });

  it('penalises a token once for repetition however often it appears', () => {
    const logits = Float32Array.of(3, 1);
    applyPenalties(logits, [0, 0, 0], plain({ repeatPenalty: 1.5 }));
    expect(logits[0]).toBeCloseTo(2, 6);
    expect(logits[1]).toBe(1);
  });

  it('subtracts count × frequency penalty and, once, the presence penalty', () => {
    const logits = Float32Array.of(1, 1, 1);
    applyPenalties(logits, [0, 0, 0, 1], plain({ frequencyPenalty: 0.5, presencePenalty: 0.25 }));
    expect(logits[0]).toBeCloseTo(1 - 3 * 0.5 - 0.25, 6);
    expect(logits[1]).toBeCloseTo(1 - 1 * 0.5 - 0.25, 6);
    expect(logits[2]).toBe(1);
  });

  it('applies the repeat penalty first, then frequency and presence', () => {
    const logits = Float32Array.of(4);
    applyPenalties(logits, [0, 0], plain({ repeatPenalty: 2, frequencyPenalty: 1, presencePenalty: 0.5 }));
    expect(logits[0]).toBeCloseTo(4 / 2 - 2 * 1 - 0.5, 6);
  });

  it('looks only at the last repeatLastN tokens', () => {
    const logits = Float32Array.of(2, 2, 2, 2);
    // Token 0 and one of the two 1s are older than the window of 3.
    applyPenalties(logits, [0, 1, 1, 2, 2], plain({ repeatPenalty: 2, frequencyPenalty: 0.25, repeatLastN: 3 }));
    expect(logits[0]).toBe(2);
    expect(logits[1]).toBeCloseTo(2 / 2 - 1 * 0.25, 6);
    expect(logits[2]).toBeCloseTo(2 / 2 - 2 * 0.25, 6);
    expect(logits[3]).toBe(2);
  });

  it('does nothing with repeatLastN = 0', () => {
    const logits = Float32Array.of(2, -2);
    applyPenalties(logits, [0, 1], plain({ repeatPenalty: 2, frequencyPenalty: 1, presencePenalty: 1, repeatLastN: 0 }));
    expect(Array.from(logits)).toEqual([2, -2]);
  });

  it('steers a greedy choice away from a repeated token', () => {
    const sampler = new Sampler(resolveSampling({ temperature: 0, repeatPenalty: 2, seed: 1 }));
    expect(sampler.sample(Float32Array.of(3, 2), [])).toBe(0);
    expect(sampler.sample(Float32Array.of(3, 2), [0])).toBe(1);
  });
});

describe('candidate filters', () => {
  const logits = Float32Array.of(0.5, 3, -1, 2, 2.5, 1, 0, 1.5);
  // Most likely first: 1 (3), 4 (2.5), 3 (2), 7 (1.5), 5 (1), 0 (0.5), 6 (0), 2 (-1).
  const order = [1, 4, 3, 7, 5, 0, 6, 2];

  it('with every filter off keeps all tokens, most likely first', () => {
    expect(candidateIds(logits, plain())).toEqual(order);
  });

  for (const k of [1, 2, 3, 5, 8]) {
    it(`top-k keeps exactly the ${k} most likely token${k > 1 ? 's' : ''}`, () => {
      expect(candidateIds(logits, plain({ topK: k }))).toEqual(order.slice(0, k));
    });
  }

  it('top-k larger than the vocabulary keeps everything', () => {
    expect(candidateIds(logits, plain({ topK: 1000 }))).toEqual(order);
  });

  it('top-k breaks ties by the lower id', () => {
    expect(candidateIds(Float32Array.of(1, 2, 2, 2, 0), plain({ topK: 2 }))).toEqual([1, 2]);
  });

  it('top-p keeps the smallest prefix whose probability reaches p', () => {
    const p = softmax(logits);
    const sortedP = order.map((id) => p[id]!);
    for (let n = 1; n <= order.length; n++) {
      const mass = sortedP.slice(0, n).reduce((a, b) => a + b, 0);
      // Just below the prefix's mass: n tokens are needed; just above: n + 1 (or all).
      expect(candidateIds(logits, plain({ topP: mass - 1e-6 }))).toEqual(order.slice(0, n));
      if (n < order.length && mass + 1e-6 < 1) expect(candidateIds(logits, plain({ topP: mass + 1e-6 }))).toEqual(order.slice(0, n + 1));
    }
  });

  it('top-p measures probability among the top-k survivors', () => {
    // Among the top 2 (logits 3 and 2.5) the first has 62% of the mass.
    expect(candidateIds(logits, plain({ topK: 2, topP: 0.6 }))).toEqual([1]);
    expect(candidateIds(logits, plain({ topK: 2, topP: 0.63 }))).toEqual([1, 4]);
  });

  it('min-p drops tokens less likely than minP × the most likely one', () => {
    const p = softmax(logits);
    const pmax = Math.max(...p);
    for (const minP of [0.01, 0.1, 0.3, 0.5, 0.61, 0.99, 1]) {
      const expected = order.filter((id) => p[id]! >= minP * pmax - 1e-9);
      expect(candidateIds(logits, plain({ minP })), `minP ${minP}`).toEqual(expected);
    }
  });

  it('min-p = 1 keeps every token tied for the maximum', () => {
    expect(candidateIds(Float32Array.of(1, 4, 4, 2), plain({ minP: 1 }))).toEqual([1, 2]);
  });

  it('matches the plain sort-then-filter chain on random vocabularies, for every combination', () => {
    let cases = 0;
    for (const vocab of [1, 7, 300, 5000]) {
      const random = randomF32(vocab, vocab, 6);
      for (const topK of [0, 1, 40, 299, 1000])
        for (const topP of [0.05, 0.5, 0.95, 1])
          for (const minP of [0, 0.01, 0.05, 0.5]) {
            const s = plain({ topK, topP, minP });
            expect(candidateIds(random, s), `vocab ${vocab} topK ${topK} topP ${topP} minP ${minP}`).toEqual(referenceCandidates(random, s));
            cases++;
          }
    }
    expect(cases).toBe(4 * 5 * 4 * 4);
  });

  it('a sampler never draws a token the filters removed', () => {
    const s = plain({ topK: 5, topP: 0.9, minP: 0.2, temperature: 1.5, seed: 3 });
    const allowed = new Set(candidateIds(logits.slice(), s));
    expect(allowed.size).toBeLessThan(5);
    for (const id of draws(new Sampler(s), logits, 2000)) expect(allowed.has(id)).toBe(true);
  });
});

describe('temperature', () => {
  it('temperature 0 is the argmax, lowest id on ties, and draws nothing random', () => {
    const sampler = new Sampler(resolveSampling({ temperature: 0, seed: 1 }));
    expect(sampler.sample(Float32Array.of(1, 5, 2, 5), [])).toBe(1);
    expect(argmax(Float32Array.of(-3, -1, -2))).toBe(1);
  });

  it('as temperature approaches 0 sampling approaches the argmax', () => {
    const logits = randomF32(1000, 11, 4);
    const best = argmax(logits);
    for (const temperature of [1e-3, 1e-6, 1e-30]) {
      const sampler = new Sampler(plain({ temperature, seed: 5 }));
      expect(new Set(draws(sampler, logits, 200))).toEqual(new Set([best]));
    }
  });

  it('a high temperature spreads the draws out, a low one concentrates them', () => {
    const logits = Float32Array.of(2, 1, 0, -1);
    const hot = histogram(draws(new Sampler(plain({ temperature: 5, seed: 9 })), logits, 4000), 4);
    const cold = histogram(draws(new Sampler(plain({ temperature: 0.1, seed: 9 })), logits, 4000), 4);
    expect(hot[0]! / 4000).toBeLessThan(0.4);
    expect(cold[0]! / 4000).toBeGreaterThan(0.99);
  });
});

describe('seeded draws', () => {
  const logits = randomF32(64, 21, 2);

  it('the same seed gives the same draws', () => {
    const a = draws(new Sampler(plain({ seed: 1234 })), logits, 500);
    const b = draws(new Sampler(plain({ seed: 1234 })), logits, 500);
    expect(a).toEqual(b);
  });

  it('different seeds give different draws', () => {
    const runs = [1, 2, 3, 2 ** 32 + 1].map((seed) => draws(new Sampler(plain({ seed })), logits, 200).join(','));
    expect(new Set(runs).size).toBe(runs.length);
  });

  it('the random stream is uniform in [0, 1) and replays from its seed', () => {
    const next = seededRandom(99);
    const values = Array.from({ length: 100_000 }, next);
    expect(Math.min(...values)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...values)).toBeLessThan(1);
    const mean = values.reduce((a, b) => a + b, 0) / values.length;
    expect(Math.abs(mean - 0.5)).toBeLessThan(0.005);
    const again = seededRandom(99);
    expect(Array.from({ length: 10 }, again)).toEqual(values.slice(0, 10));
  });
});

// What the GPU's top-k kernel hands back: the k best (id, logit), best first, lower id on ties.
function topKOf(logits: Float32Array, k: number): { ids: Uint32Array; logits: Float32Array } {
  const ids = Array.from(logits.keys()).sort((a, b) => logits[b]! - logits[a]! || a - b).slice(0, k);
  return { ids: Uint32Array.from(ids), logits: Float32Array.from(ids, (id) => logits[id]!) };
}

describe('sampling from the top-k candidates alone', () => {
  it('draws exactly what sampling the whole row of logits draws, seed for seed', () => {
    const settings: SamplingOptions[] = [
      { temperature: 0.8, topK: 40, topP: 0.95, minP: 0.05 },
      { temperature: 1.5, topK: 64, topP: 1, minP: 0 },
      { temperature: 0.3, topK: 1, topP: 0.5, minP: 0.2 },
      { temperature: 1, topK: 8, topP: 0.9, minP: 0 },
    ];
    for (const [i, options] of settings.entries()) {
      // Ties included: logits rounded to a coarse grid.
      const logits = randomF32(5000, 40 + i, 6).map((x) => Math.round(x * 4) / 4);
      const s = resolveSampling({ ...options, seed: 77 + i });
      expect(candidatesSuffice(s, logits.length)).toBe(options.topK);
      const fromLogits = new Sampler(s);
      const fromCandidates = new Sampler(s);
      const candidates = topKOf(logits, options.topK!);
      for (let draw = 0; draw < 300; draw++) {
        expect(fromCandidates.sample(candidates, []), `settings ${i}, draw ${draw}`).toBe(fromLogits.sample(logits.slice(), []));
      }
    }
  });

  it('is not used where it would change the draw: penalties, top-k off or above 64, greedy, tiny vocabularies', () => {
    expect(candidatesSuffice(resolveSampling({ temperature: 0.8, repeatPenalty: 1.1 }))).toBe(0);
    expect(candidatesSuffice(resolveSampling({ temperature: 0.8, presencePenalty: 0.5 }))).toBe(0);
    expect(candidatesSuffice(resolveSampling({ temperature: 0.8, topK: 0 }))).toBe(0);
    expect(candidatesSuffice(resolveSampling({ temperature: 0.8, topK: 65 }))).toBe(0);
    expect(candidatesSuffice(resolveSampling({ temperature: 0, topK: 40 }))).toBe(0);
    expect(candidatesSuffice(resolveSampling({ temperature: 0.8, topK: 40 }), 40)).toBe(0);
    expect(candidatesSuffice(resolveSampling({ temperature: 0.8, topK: 40 }), 41)).toBe(40);
  });

  it('refuses a candidate list of the wrong length', () => {
    const sampler = new Sampler(resolveSampling({ temperature: 0.8, topK: 40, seed: 1 }));
    expect(() => sampler.sample(topKOf(randomF32(100, 1), 10), [])).toThrow(/needs 40 candidates; got 10/);
  });
});

describe('the distribution of draws', () => {
  // 99.9th percentile of chi-square: df 5 → 20.52, df 3 → 16.27. The seeds are fixed, so the
  // statistic is the same number on every run: these tests cannot flake, yet a wrong temperature,
  // a missing renormalisation or an off-by-one in the draw moves it far past the bound.
  const logits = Float32Array.of(1.2, -0.3, 0.4, 2.0, 0, -1.1);
  const n = 40_000;

  it('matches softmax(logits / T) with every filter off', () => {
    for (const temperature of [0.5, 1, 1.7]) {
      const counts = histogram(draws(new Sampler(plain({ temperature, seed: 42 })), logits, n), logits.length);
      const chi = chiSquare(counts, softmax(logits, temperature), n);
      expect(chi, `T = ${temperature}: counts ${counts.join(' ')}`).toBeLessThan(20.52);
    }
  });

  it('matches softmax(logits / T) renormalised over the tokens the filters keep', () => {
    const s = plain({ temperature: 0.8, topK: 4, seed: 43 });
    const kept = new Set(candidateIds(logits, s));
    expect(kept.size).toBe(4);
    const restricted = Float32Array.from(logits, (l, id) => (kept.has(id) ? l : Number.NEGATIVE_INFINITY));
    const counts = histogram(draws(new Sampler(s), logits, n), logits.length);
    expect(chiSquare(counts, softmax(restricted, s.temperature), n)).toBeLessThan(16.27);
  });

  it('a wrong distribution does fail the same check (the test has teeth)', () => {
    const counts = histogram(draws(new Sampler(plain({ temperature: 1, seed: 42 })), logits, n), logits.length);
    expect(chiSquare(counts, softmax(logits, 0.9), n)).toBeGreaterThan(20.52);
  });
});
