// The generate loop and stop strings as a specification, driven by a scripted fake backend:
// no GPU, so every limit, stop and abort path is exact and cheap to check.
import { describe, expect, it } from 'vitest';
import { generateTokens, StopStringFilter, type FinishReason, type GeneratedToken, type GenerateOptions, type GenerationBackend } from '../src/engine/generate.ts';
import { ContextOverflowError } from '../src/engine/runner.ts';
import type { StepResult } from '../src/engine/runner.ts';
import { InvalidOptionError } from '../src/engine/sampler.ts';
import { rng } from './helpers/gpu.ts';

// ---------------------------------------------------------------------------------------------
// StopStringFilter

/** Feeds `chunks` through a filter; returns what came out (including the final flush). */
function filterAll(stops: string[], chunks: string[]): { out: string; pieces: string[]; stoppedAt: number | undefined } {
  const filter = new StopStringFilter(stops);
  const pieces: string[] = [];
  for (let i = 0; i < chunks.length; i++) {
    const { text, stopped } = filter.push(chunks[i]!);
    pieces.push(text);
    if (stopped) return { out: pieces.join(''), pieces, stoppedAt: i };
  }
  pieces.push(filter.flush());
  return { out: pieces.join(''), pieces, stoppedAt: undefined };
}

describe('StopStringFilter', () => {
  it('passes text straight through when there are no stop strings', () => {
    expect(filterAll([], ['Hello', ', ', 'world']).pieces).toEqual(['Hello', ', ', 'world', '']);
  });

  it('cuts before a stop string that arrives whole', () => {
    expect(filterAll(['.'], ['Hi', ' there. More'])).toEqual({ out: 'Hi there', pieces: ['Hi', ' there'], stoppedAt: 1 });
  });

  it('finds a stop string split over many pushes and emits nothing of it', () => {
    const result = filterAll(['STOP'], [...'abcSTOPdef']);
    expect(result.out).toBe('abc');
    expect(result.stoppedAt).toBe(6);
  });

  it('holds back only text that could still begin a stop string', () => {
    const filter = new StopStringFilter(['<end>']);
    expect(filter.push('one <')).toEqual({ text: 'one ', stopped: false });
    expect(filter.push('e')).toEqual({ text: '', stopped: false });
    // "<ex" can no longer become "<end>": released.
    expect(filter.push('x')).toEqual({ text: '<ex', stopped: false });
  });

  it('handles overlapping prefixes: stop "ab" in "aab"', () => {
    expect(filterAll(['ab'], ['a', 'a', 'b']).out).toBe('a');
    expect(filterAll(['ab'], ['aab']).out).toBe('a');
    expect(filterAll(['aab'], ['a', 'a', 'a', 'b']).out).toBe('a');
    expect(filterAll(['abab'], ['ab', 'ab', 'ab']).out).toBe('');
    expect(filterAll(['abac'], ['ab', 'ab', 'ac']).out).toBe('ab');
  });

  it('with several stop strings, the one that starts earliest wins', () => {
    expect(filterAll(['world', 'lo w'], ['hello world']).out).toBe('hel');
    expect(filterAll(['lo w', 'world'], ['hello world']).out).toBe('hel');
    expect(filterAll(['x', 'o'], [...'hello world']).out).toBe('hell');
  });

  it('stops as soon as any stop string is complete, before a longer one begun earlier could finish', () => {
    expect(filterAll(['cba', 'b'], ['cc', 'b', 'a'])).toEqual({ out: 'cc', pieces: ['c', 'c'], stoppedAt: 1 });
  });

  it('releases held-back text at flush', () => {
    const filter = new StopStringFilter(['xyz']);
    expect(filter.push('abx')).toEqual({ text: 'ab', stopped: false });
    expect(filter.push('y')).toEqual({ text: '', stopped: false });
    expect(filter.flush()).toBe('xy');
    expect(filter.flush()).toBe('');
  });

  it('loses nothing and stops at the first occurrence, for any chunking (randomised, seeded)', () => {
    const next = rng(2024);
    const pick = (alphabet: string, n: number) => Array.from({ length: n }, () => alphabet[Math.floor(next() * alphabet.length)]).join('');
    for (let trial = 0; trial < 2000; trial++) {
      const text = pick('abc', 1 + Math.floor(next() * 20));
      const stops = Array.from({ length: Math.floor(next() * 3) }, () => pick('abc', 1 + Math.floor(next() * 4)));
      const chunks: string[] = [];
      for (let at = 0; at < text.length; ) {
        const size = Math.floor(next() * 4); // empty chunks too
        chunks.push(text.slice(at, at + size));
        at += size;
      }
      // A stop string is noticed as soon as it is complete (as llama.cpp's server does), and the
      // cut is at the earliest stop string complete at that moment. (A longer stop string that
      // started earlier but is not yet complete does not hold generation back.)
      const prefixes = chunks.map((_, i) => chunks.slice(0, i + 1).join(''));
      const stopChunk = prefixes.findIndex((p) => stops.some((s) => p.includes(s)));
      const expected = stopChunk < 0 ? text : prefixes[stopChunk]!.slice(0, Math.min(...stops.map((s) => prefixes[stopChunk]!.indexOf(s)).filter((i) => i >= 0)));
      const result = filterAll(stops, chunks);
      const context = `text ${JSON.stringify(text)} stops ${JSON.stringify(stops)} chunks ${JSON.stringify(chunks)}`;
      expect(result.out, context).toBe(expected);
      expect(result.stoppedAt, context).toBe(stopChunk < 0 ? undefined : stopChunk);
      expect(text.startsWith(result.out), context).toBe(true);
      for (const stop of stops) expect(result.out.includes(stop), context).toBe(false);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// A scripted backend

/** Token pieces as bytes, so multi-byte characters can be split across tokens like real BPE. */
const EOS = 0;
const vocabulary: Uint8Array[] = [
  new Uint8Array(0), // 0: </s> (control: no text)
  ...['a', 'b', ' ', '.', 'Hello', ' world', 'x'].map((s) => new TextEncoder().encode(s)), // 1..7
  Uint8Array.of(0xc3), // 8: first byte of "é"
  Uint8Array.of(0xa9), // 9: second byte of "é"
];
const A = 1, B = 2, SPACE = 3, PERIOD = 4, HELLO = 5, WORLD = 6, X = 7, E_FIRST = 8, E_SECOND = 9;

interface ForwardCall {
  tokens: number[];
  startPos: number;
  wantLogits: boolean;
}

class ScriptedBackend implements GenerationBackend {
  readonly calls: ForwardCall[] = [];
  // Fewer tokens than the default top-k (40): sampling needs the whole row of logits.
  readonly vocabSize = vocabulary.length;

  /**
   * `script[i]` is the token the model "predicts" after forward call i. Logits, when asked for,
   * put that token far ahead of every other (so any sampling settings pick it), or come from
   * `logitsFor` when given.
   */
  constructor(
    private readonly script: readonly number[],
    readonly contextLength = 1024,
    private readonly logitsFor?: (call: number) => Float32Array,
  ) {}

  async forward(tokens: readonly number[], startPos: number, wantLogits: boolean): Promise<StepResult> {
    if (startPos + tokens.length > this.contextLength) throw new ContextOverflowError(`forward past the context: ${startPos}+${tokens.length}`);
    const call = this.calls.length;
    this.calls.push({ tokens: [...tokens], startPos, wantLogits });
    const id = this.script[call];
    if (id === undefined) throw new Error(`script exhausted at forward call ${call}`);
    let logits: Float32Array | undefined;
    if (wantLogits) {
      logits = this.logitsFor?.(call) ?? new Float32Array(vocabulary.length);
      if (!this.logitsFor) logits[id] = 50;
    }
    return { argmaxId: id, logits };
  }

  isEndOfGeneration(id: number): boolean {
    return id === EOS;
  }

  createStreamDecoder(): { push(id: number): string; flush(): string } {
    const decoder = new TextDecoder();
    return { push: (id) => decoder.decode(vocabulary[id], { stream: true }), flush: () => decoder.decode() };
  }

  /** Host round trips: one per forward call on a single device. */
  get roundTrips(): number {
    return this.calls.length;
  }
}

async function run(
  backend: GenerationBackend,
  prompt: readonly number[],
  options: GenerateOptions,
): Promise<{ tokens: GeneratedToken[]; ids: number[]; text: string; finish: FinishReason | undefined }> {
  const result: { finish?: FinishReason } = {};
  const tokens: GeneratedToken[] = [];
  for await (const token of generateTokens(backend, prompt, options, result)) tokens.push(token);
  return { tokens, ids: tokens.map((t) => t.id), text: tokens.map((t) => t.text).join(''), finish: result.finish };
}

const greedy: GenerateOptions = { temperature: 0 };
const PROMPT = [HELLO, SPACE];

describe('generateTokens', () => {
  it('stops after maxTokens, with one forward step per token and none after the last', async () => {
    const backend = new ScriptedBackend([A, B, A, B, A, B]);
    const out = await run(backend, PROMPT, { ...greedy, maxTokens: 3 });
    expect(out.ids).toEqual([A, B, A]);
    expect(out.text).toBe('aba');
    expect(out.finish).toBe('length');
    expect(backend.calls.map((c) => [c.tokens, c.startPos])).toEqual([
      [PROMPT, 0],
      [[A], 2],
      [[B], 3],
    ]);
  });

  it('maxTokens 0 yields nothing and runs nothing', async () => {
    const backend = new ScriptedBackend([A]);
    const out = await run(backend, PROMPT, { ...greedy, maxTokens: 0 });
    expect(out.tokens).toEqual([]);
    expect(out.finish).toBe('length');
    expect(backend.calls).toEqual([]);
  });

  it('stops at end-of-generation, yielding the EOS token with finish "eos"', async () => {
    const backend = new ScriptedBackend([A, B, EOS, A]);
    const out = await run(backend, PROMPT, { ...greedy, maxTokens: 10 });
    expect(out.ids).toEqual([A, B, EOS]);
    expect(out.tokens.at(-1)).toEqual({ id: EOS, text: '' });
    expect(out.finish).toBe('eos');
    expect(backend.calls).toHaveLength(3);
  });

  it('with ignoreEos keeps going past end-of-generation', async () => {
    const out = await run(new ScriptedBackend([A, EOS, B, EOS]), PROMPT, { ...greedy, maxTokens: 4, ignoreEos: true });
    expect(out.ids).toEqual([A, EOS, B, EOS]);
    expect(out.text).toBe('ab');
    expect(out.finish).toBe('length');
  });

  it('stops at a stop string, cutting the text before it', async () => {
    const backend = new ScriptedBackend([A, B, PERIOD, SPACE, X, X]);
    const out = await run(backend, PROMPT, { ...greedy, maxTokens: 10, stop: ['.'] });
    expect(out.ids).toEqual([A, B, PERIOD]);
    expect(out.text).toBe('ab');
    expect(out.finish).toBe('stop');
    expect(backend.calls).toHaveLength(3);
  });

  it('stops at a stop string spread over several tokens, emitting none of it', async () => {
    const out = await run(new ScriptedBackend([A, X, B, X, SPACE, B, A]), PROMPT, { ...greedy, maxTokens: 10, stop: ['x b', 'never'] });
    expect(out.ids).toEqual([A, X, B, X, SPACE, B]);
    expect(out.text).toBe('axb');
    expect(out.tokens.map((t) => t.text)).toEqual(['a', '', 'xb', '', '', '']);
    expect(out.finish).toBe('stop');
  });

  it('accepts a single stop string as well as a list', async () => {
    const out = await run(new ScriptedBackend([A, PERIOD, B]), PROMPT, { ...greedy, maxTokens: 10, stop: '.' as unknown as string[] });
    expect(out.text).toBe('a');
    expect(out.finish).toBe('stop');
  });

  it('releases text held back for a possible stop string with the last token', async () => {
    const out = await run(new ScriptedBackend([B, X, A]), PROMPT, { ...greedy, maxTokens: 3, stop: ['ab'] });
    expect(out.tokens.map((t) => t.text)).toEqual(['b', 'x', 'a']);
    expect(out.finish).toBe('length');
  });

  it('releases held-back text with the EOS token', async () => {
    const out = await run(new ScriptedBackend([X, A, EOS]), PROMPT, { ...greedy, maxTokens: 10, stop: ['ab'] });
    expect(out.tokens).toEqual([
      { id: X, text: 'x' },
      { id: A, text: '' },
      { id: EOS, text: 'a' },
    ]);
    expect(out.finish).toBe('eos');
  });

  it('streams a character split over two tokens once it is whole', async () => {
    const out = await run(new ScriptedBackend([A, E_FIRST, E_SECOND, B]), PROMPT, { ...greedy, maxTokens: 4 });
    expect(out.tokens.map((t) => t.text)).toEqual(['a', '', 'é', 'b']);
  });

  it('a character cut off by the token limit comes out as U+FFFD with the last token', async () => {
    const out = await run(new ScriptedBackend([A, E_FIRST]), PROMPT, { ...greedy, maxTokens: 2 });
    expect(out.tokens.map((t) => t.text)).toEqual(['a', '\uFFFD']);
  });

  it('stops when prompt + generated tokens fill the context, never stepping past it', async () => {
    const backend = new ScriptedBackend([A, B, A, B, A, B], 6);
    const out = await run(backend, [HELLO, SPACE, WORLD], { ...greedy, maxTokens: 100 });
    expect(out.ids).toEqual([A, B, A]);
    expect(out.finish).toBe('context');
    for (const call of backend.calls) expect(call.startPos + call.tokens.length).toBeLessThanOrEqual(6);
  });

  it('refuses a prompt that leaves no room in the context, naming both lengths', async () => {
    const backend = new ScriptedBackend([A], 4);
    for (const prompt of [
      [A, B, A, B],
      [A, B, A, B, A, B, A],
    ]) {
      const attempt = run(backend, prompt, greedy);
      await expect(attempt).rejects.toThrow(ContextOverflowError);
      await expect(run(backend, prompt, greedy)).rejects.toThrow(new RegExp(`${prompt.length} tokens.*context holds 4`));
    }
    expect(backend.calls).toEqual([]);
  });

  it('an already-aborted signal runs nothing', async () => {
    const backend = new ScriptedBackend([A, B]);
    const out = await run(backend, PROMPT, { ...greedy, signal: AbortSignal.abort() });
    expect(out.tokens).toEqual([]);
    expect(out.finish).toBe('abort');
    expect(backend.calls).toEqual([]);
  });

  it('aborting while holding a token stops before the next step', async () => {
    const backend = new ScriptedBackend([A, B, A, B, A, B]);
    const controller = new AbortController();
    const result: { finish?: FinishReason } = {};
    const ids: number[] = [];
    for await (const token of generateTokens(backend, PROMPT, { ...greedy, maxTokens: 6, signal: controller.signal }, result)) {
      ids.push(token.id);
      if (ids.length === 2) controller.abort();
    }
    expect(ids).toEqual([A, B]);
    expect(result.finish).toBe('abort');
    expect(backend.calls).toHaveLength(2);
  });

  it('aborting during a step ends with that step’s token', async () => {
    const controller = new AbortController();
    const backend = new ScriptedBackend([A, B, A, B]);
    const forward = backend.forward.bind(backend);
    backend.forward = async (tokens, startPos, wantLogits) => {
      const step = await forward(tokens, startPos, wantLogits);
      if (backend.calls.length === 2) controller.abort();
      return step;
    };
    const out = await run(backend, PROMPT, { ...greedy, maxTokens: 6, signal: controller.signal });
    expect(out.ids).toEqual([A, B]);
    expect(out.finish).toBe('abort');
  });

  it('greedy decoding never asks for logits: one read-back of an id per token', async () => {
    const backend = new ScriptedBackend([A, B, A, B, A]);
    const out = await run(backend, PROMPT, { ...greedy, maxTokens: 5 });
    expect(out.ids).toEqual([A, B, A, B, A]);
    expect(backend.calls.every((c) => !c.wantLogits)).toBe(true);
    expect(backend.roundTrips).toBe(5);
  });

  it('sampling, or a penalty at temperature 0, asks for logits at every step', async () => {
    for (const options of [{ temperature: 0.7, seed: 1 }, { temperature: 0, repeatPenalty: 1.1 }, { temperature: 0, presencePenalty: 0.5 }]) {
      const backend = new ScriptedBackend([A, B, A]);
      const out = await run(backend, PROMPT, { ...options, maxTokens: 3 });
      expect(out.ids).toEqual([A, B, A]);
      expect(backend.calls.map((c) => c.wantLogits)).toEqual([true, true, true]);
    }
  });

  it('penalties see the prompt as well as the generated tokens', async () => {
    // Token A leads B by a little at every step; A is in the prompt, so a repeat penalty flips it.
    const logits = () => {
      const l = new Float32Array(vocabulary.length).fill(-10);
      l[A] = 2;
      l[B] = 1.5;
      return l;
    };
    const plain = await run(new ScriptedBackend([A, A], 64, logits), [HELLO], { temperature: 0, repeatPenalty: 1.0001, maxTokens: 1 });
    expect(plain.ids).toEqual([A]);
    const penalised = await run(new ScriptedBackend([A, A], 64, logits), [HELLO, A], { temperature: 0, repeatPenalty: 2, maxTokens: 1 });
    expect(penalised.ids).toEqual([B]);
  });

  it('the same seed draws the same tokens; another seed draws others', async () => {
    // Flat logits over the letters: every draw is a real coin toss.
    const flat = () => {
      const l = new Float32Array(vocabulary.length).fill(-100);
      for (const id of [A, B, X, SPACE]) l[id] = 0;
      return l;
    };
    const draw = async (seed: number) =>
      (await run(new ScriptedBackend(new Array(40).fill(A), 64, flat), PROMPT, { temperature: 1, topK: 0, topP: 1, minP: 0, seed, maxTokens: 30 })).ids;
    const first = await draw(7);
    expect(await draw(7)).toEqual(first);
    expect(await draw(8)).not.toEqual(first);
    expect(new Set(first).size).toBeGreaterThan(1);
  });

  it('rejects invalid options with InvalidOptionError before running anything', async () => {
    const backend = new ScriptedBackend([A]);
    const bad: Array<[GenerateOptions, string]> = [
      [{ maxTokens: -1 }, 'maxTokens'],
      [{ maxTokens: 1.5 }, 'maxTokens'],
      [{ temperature: -1 }, 'temperature'],
      [{ topP: 2 }, 'topP'],
      [{ stop: [1 as unknown as string] }, 'stop'],
    ];
    for (const [options, name] of bad) {
      await expect(run(backend, PROMPT, options)).rejects.toThrow(InvalidOptionError);
      await expect(run(backend, PROMPT, options)).rejects.toThrow(name);
    }
    await expect(run(backend, [], greedy)).rejects.toThrow(InvalidOptionError);
    expect(backend.calls).toEqual([]);
  });

  it('knows the finish reason as soon as the last token is yielded', async () => {
    const result: { finish?: FinishReason } = {};
    const iterator = generateTokens(new ScriptedBackend([A, B]), PROMPT, { ...greedy, maxTokens: 1 }, result);
    expect((await iterator.next()).value).toEqual({ id: A, text: 'a' });
    expect(result.finish).toBe('length');
    await iterator.return(undefined);
  });
});
