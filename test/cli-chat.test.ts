// The Deno CLI's chat command and tokenizer flags end to end: `chat -p` answers one turn with
// llama.cpp's tokens; interactive chat answers line by line, Ctrl-C stops one answer and Ctrl-D
// (end of input) ends the session; a model without a template is refused naming --chat-template
// FILE; `tokenize --parse-special --no-bos` gives llama.cpp's ids for a special-token prompt.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { modelPath, projectRoot, reference, referenceModelPath } from './helpers/models.ts';
import { modernReference } from './helpers/modern-models.ts';
import { denoTask } from './helpers/deno-task.ts';



const once = reference().generation_cases.find((c) => c.id === 'stories260K-f32/once-upon-a-time')!;
const stories = referenceModelPath(once.model);
// stories260K has no chat template: this one writes BOS and every message's words, so one turn
// is exactly the reference prompt (after llama.cpp's BOS strip), and later turns carry the history.
const echoTemplate = join(mkdtempSync(join(tmpdir(), 'webshard-chat-')), 'echo.jinja');
writeFileSync(echoTemplate, '{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}');
const greedy = ['--temperature', '0', '--ignore-eos'];

describe('deno task chat', () => {
  it("-p answers one turn with llama.cpp's tokens (--json keeps prompt_ids, generated_ids, text)", () => {
    const r = denoTask(['chat', '-m', stories, '--chat-template', echoTemplate, '-p', once.prompt, '-n', '8', ...greedy, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { prompt_ids: number[]; generated_ids: number[]; text: string };
    expect(out.prompt_ids).toEqual(once.prompt_ids);
    expect(out.generated_ids).toEqual(once.generated_ids.slice(0, 8));
    expect(typeof out.text).toBe('string');
  });

  it('interactive: answers each non-empty line, ends at end of input (Ctrl-D)', () => {
    const r = denoTask(['chat', '-m', stories, '--chat-template', echoTemplate, '-n', '4', ...greedy], `${once.prompt}\n\n there\n`);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/Ctrl-D/);
    // A prompt ("> ") before each line and before the end of input; the blank line gets no answer.
    const turns = r.stdout.split('> ');
    expect(turns).toHaveLength(5);
    expect(turns[1]!.trim().length).toBeGreaterThan(0);
    expect(turns[2]).toBe('');
    expect(turns[3]!.trim().length).toBeGreaterThan(0);
  });

  it('Ctrl-C stops the answer being written, not the session; the next line is answered', async () => {
    // The npm "deno" command is a Node wrapper that a signal would kill first: run the platform binary it wraps.
    const platforms = resolve(projectRoot, 'node_modules/@deno');
    const binary = readdirSync(platforms).map((dir) => join(platforms, dir, 'deno')).find((path) => existsSync(path));
    expect(binary, 'the deno binary under node_modules/@deno').toBeDefined();
    const child = spawn(binary!, ['run', '--allow-read', '--allow-write', '--allow-env', '--allow-ffi', '--allow-net', 'src/cli.ts', 'chat', '-m', stories, '--chat-template', echoTemplate, '-n', '400', ...greedy], {
      cwd: projectRoot,
      env: { ...process.env, XDG_RUNTIME_DIR: '/tmp', NO_COLOR: '1' },
    });
    let stdout = '';
    let interrupted = false;
    const exited = new Promise<number | null>((done) => child.on('exit', (code) => done(code)));
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      // Some of the first answer is out: press Ctrl-C, then ask once more and close the input (Ctrl-D).
      if (!interrupted && stdout.length > 40) {
        interrupted = true;
        child.kill('SIGINT');
        setTimeout(() => child.stdin.end('Lily\n'), 500);
      }
    });
    child.stdin.write(`${once.prompt}\n`);
    expect(await exited).toBe(0);
    const turns = stdout.split('> ');
    expect(turns).toHaveLength(4); // two answers, then the end of input
    expect(once.generated_text.startsWith(turns[1]!.trimEnd())).toBe(true); // llama.cpp's text, cut short
    expect(turns[1]!.length).toBeLessThan(once.generated_text.length);
    expect(turns[2]!.trim().length).toBeGreaterThan(0);
  }, 180_000);

  it('refuses a model without a chat template, naming --chat-template FILE', () => {
    const r = denoTask(['chat', '-m', stories, '-p', 'Hi', '-n', '1']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/MissingChatTemplateError: .*--chat-template FILE/);
  });
});

describe('deno task tokenize --parse-special / --no-bos', () => {
  it("gives llama.cpp's ids for a special-token prompt, and keeps the text as text without --parse-special", () => {
    const c = modernReference().tokenizer_cases.find((x) => x.id === 'llama3/special-parsed')!;
    const parsed = denoTask(['tokenize', '-m', modelPath(c.model), '--text', c.text, '--parse-special', '--json']);
    expect(parsed.code, parsed.stderr).toBe(0);
    expect((JSON.parse(parsed.stdout) as { ids: number[] }).ids).toEqual(c.ids);
    const bare = denoTask(['tokenize', '-m', modelPath(c.model), '--text', c.text, '--parse-special', '--no-bos', '--json']);
    expect((JSON.parse(bare.stdout) as { ids: number[] }).ids).toEqual(c.ids.slice(1));
    const plain = denoTask(['tokenize', '-m', modelPath(c.model), '--text', c.text, '--json']);
    expect((JSON.parse(plain.stdout) as { ids: number[] }).ids).not.toContain(c.ids.at(-1)); // <|eot_id|> stays text
  });
});
