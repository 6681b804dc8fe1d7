// `deno task …` as a user types it in this repository (the npm-installed deno launcher), for tests
// of the CLI and the server: colour off, the exit code and both streams returned.
import { spawn, spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { projectRoot } from './models.ts';

export const deno = resolve(projectRoot, 'node_modules/.bin/deno');

export interface TaskResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

const taskEnv = () => ({ ...process.env, XDG_RUNTIME_DIR: '/tmp', NO_COLOR: '1' });

/** `deno task -q ARGS`, waited for; `input` is its standard input. */
export function denoTask(args: readonly string[], input?: string): TaskResult {
  const result = spawnSync(deno, ['task', '-q', ...args], { cwd: projectRoot, encoding: 'utf8', input, timeout: 180_000, env: taskEnv() });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** The same without blocking this process (for a test whose own HTTP server must keep answering). */
export function denoTaskAsync(args: readonly string[]): Promise<TaskResult> {
  return new Promise((resolvePromise) => {
    const child = spawn(deno, ['task', '-q', ...args], { cwd: projectRoot, env: taskEnv() });
    let [stdout, stderr] = ['', ''];
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('close', (code) => resolvePromise({ code, stdout, stderr }));
  });
}
