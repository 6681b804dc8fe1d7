// The Deno CLI end to end: the same token ids as llama.cpp (and as the Node engine, which
// test/model.test.ts checks against the same references), clean exit codes, clear usage errors.
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { denoTask } from './helpers/deno-task.ts';
import { projectRoot, reference, referenceModelPath } from './helpers/models.ts';

const task = (...args: string[]) => denoTask(args);


describe('deno CLI', () => {
  const cases = reference().generation_cases.filter((c) => c.model === 'stories260K-f32' && c.n_predict === 64).slice(0, 2);
  for (const c of cases) {
    it(`run --json gives llama.cpp's ids: ${c.name}`, () => {
      const r = task('run', '-m', referenceModelPath(c.model), '-p', c.prompt, '-n', '64', '--temperature', '0', '--ignore-eos', '--json');
      expect(r.code, r.stderr).toBe(0);
      const out = JSON.parse(r.stdout) as { prompt_ids: number[]; generated_ids: number[]; text: string };
      expect(out.prompt_ids).toEqual(c.prompt_ids);
      expect(out.generated_ids).toEqual(c.generated_ids);
      expect(out.text).toBe(c.generated_text);
    });
  }

  it('quantized model through the CLI matches up to the stable prefix, with the float and the int8 kernels', () => {
    const c = reference().generation_cases.find((x) => x.model === 'stories260K-q8_0' && x.name === 'once-upon-a-time')!;
    const n = c.stable_prefix_len['0.1'];
    for (const kernels of [[], ['--matmul', 'int8']]) {
      const r = task('run', '-m', referenceModelPath(c.model), '-p', c.prompt, '-n', '64', '--temperature', '0', '--json', ...kernels);
      expect(r.code, r.stderr).toBe(0);
      expect((JSON.parse(r.stdout) as { generated_ids: number[] }).generated_ids.slice(0, n), kernels.join(' ')).toEqual(c.generated_ids.slice(0, n));
    }
  });

  it('--devices 2 without --tp/--pp measures the devices, says which split it chose and why, and keeps the tokens', () => {
    const c = reference().generation_cases.find((x) => x.id === 'stories260K-f32/once-upon-a-time')!;
    const r = task('run', '-m', referenceModelPath(c.model), '-p', c.prompt, '-n', '16', '--temperature', '0', '--devices', '2', '--json');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/chose tp=\d+ × pp=\d+: step [\d.]+ ms = kernels [\d.]+ ms/);
    expect(r.stderr).toMatch(/predicted [\d.]+ tokens\/s/);
    expect((JSON.parse(r.stdout) as { generated_ids: number[] }).generated_ids).toEqual(c.generated_ids.slice(0, 16));
  });

  it('tokenize --json adds BOS as llama.cpp does', () => {
    const c = reference().tokenizer_cases.find((x) => x.vocab === 'stories260K' && x.text === 'Hello world')!;
    const r = task('tokenize', '-m', referenceModelPath('stories260K-f32'), '--text', c.text, '--json');
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ ids: c.ids });
  });

  it('runs with no arguments on the built-in random model, streams text and timings, exits 0', () => {
    const r = task('run', '-n', '8');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/RANDOM-WEIGHT/);
    expect(r.stderr).toMatch(/decode: +\d+ tokens .* tok\/s/);
    expect(r.stdout.startsWith('Once upon a time')).toBe(true);
  });

  it('same seed, same text', () => {
    const args = ['run', '-m', referenceModelPath('stories260K-f32'), '-n', '24', '--seed', '7', '--temperature', '1', '--json'];
    const a = task(...args);
    const b = task(...args);
    expect(a.code, a.stderr).toBe(0);
    expect(a.stdout).toBe(b.stdout);
  });

  it('info lists metadata, tensor types and adapters', () => {
    const r = task('info', '-m', referenceModelPath('stories260K-q4_0'));
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/dim 64, 5 layers, 8 heads \(4 KV\)/);
    expect(r.stdout).toMatch(/Q4_0 ×31/);
    expect(r.stdout).toMatch(/adapters:\n {2}\S/);
  });

  it('bad arguments and bad files exit non-zero with a clear message', () => {
    const unknown = task('run', '--bogus');
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/unknown option "--bogus"/);
    const badNumber = task('run', '-n', 'many');
    expect(badNumber.code).toBe(2);
    expect(badNumber.stderr).toMatch(/--max-tokens must be an integer/);
    const badKernels = task('run', '--matmul', 'fast');
    expect(badKernels.code).toBe(2);
    expect(badKernels.stderr).toMatch(/--matmul must be one of auto, int8, .*; got "fast"/);
    const notGguf = task('run', '-m', resolve(projectRoot, 'package.json'));
    expect(notGguf.code).toBe(1);
    expect(notGguf.stderr).toMatch(/ModelFormatError: .*not a GGUF file/);
    const noAdapter = task('run', '-m', referenceModelPath('stories260K-f32'), '--devices', 'nosuchgpu');
    expect(noAdapter.code).toBe(1);
    expect(noAdapter.stderr).toMatch(/GpuUnavailableError: No adapter matches "nosuchgpu"/);
    const badSplit = task('run', '-m', referenceModelPath('stories260K-q4_0'), '--tp', '4');
    expect(badSplit.code).toBe(1);
    expect(badSplit.stderr).toMatch(/ShardPlanError: .*Q4_0.*blocks of 32/);
    const missing = task('run', '-m', '/nonexistent/model.gguf');
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/model\.gguf/);
  });

  it('speculative decoding (-md draft, --lookup-ngram) keeps the ids, reports acceptance, refuses bad draft flags', () => {
    const c = reference().generation_cases.find((x) => x.id === 'stories260K-f32/once-upon-a-time')!;
    const base = ['run', '-m', referenceModelPath(c.model), '-p', c.prompt, '-n', '64', '--temperature', '0', '--ignore-eos'];
    const drafted = task(...base, '-md', referenceModelPath('stories260K-q8_0'), '--draft-max', '6', '--json');
    expect(drafted.code, drafted.stderr).toBe(0);
    const out = JSON.parse(drafted.stdout) as { generated_ids: number[]; speculative: { drafted: number; accepted: number; target_steps: number } };
    expect(out.generated_ids).toEqual(c.generated_ids);
    expect(out.speculative.accepted).toBeGreaterThan(0);
    expect(out.speculative.target_steps + out.speculative.accepted).toBe(64);
    const lookup = task(...base, '--lookup-ngram', '2');
    expect(lookup.code, lookup.stderr).toBe(0);
    expect(lookup.stdout).toContain(c.generated_text);
    expect(lookup.stderr).toMatch(/speculative: \d+ of \d+ drafted tokens accepted \(\d+%\); \d+ target steps for 64 tokens/);
    const zero = task(...base, '--lookup-ngram', '2', '--draft-max', '0');
    expect(zero.code).toBe(2);
    expect(zero.stderr).toMatch(/--draft-max must be an integer ≥ 1; got "0"/);
    const negative = task(...base, '--lookup-ngram', '-3');
    expect(negative.code).toBe(2);
    const otherVocabulary = task(...base, '-md', referenceModelPath('llama-2-tiny-random-f16'));
    expect(otherVocabulary.code).toBe(1);
    expect(otherVocabulary.stderr).toMatch(/InvalidOptionError: the draft model's vocabulary differs from the target's: 32000 tokens against 512/);
  });
});
