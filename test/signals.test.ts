// Stopping the server the way process managers do, with a stream in flight, through both start
// commands: the production command (deno itself, what the Containerfile runs) and the README's
// `npx deno task serve` (npx → bin/deno.cjs → deno task → bin/deno.cjs under Deno → the server).
// SIGTERM or SIGINT goes to the top process alone (`docker stop`, Kubernetes) or to its whole
// process group (a terminal's Ctrl-C, `kill -- -PGID`). Each time: the command exits 0, the stream completes,
// /ready and new requests get 503 while it drains, and no process is left holding the port.

import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, realpathSync } from 'node:fs';
import { createRequire } from 'node:module';
import { arch, platform } from 'node:os';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { referenceModelPath } from './helpers/models.ts';
import { sleep } from './server-harness.ts';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const SLOW_TEST_MS = 180_000;

/** The native deno binary of the npm package (no launcher), as the container runs it. */
function nativeDeno(): string {
  const require = createRequire(import.meta.url);
  const target = `${platform()}-${arch()}${platform() === 'linux' ? '-glibc' : ''}`;
  return resolve(dirname(require.resolve(`@deno/${target}/package.json`)), 'deno');
}

/** The production command: the `serve` task of deno.json, run by deno itself. */
function productionCommand(): string[] {
  const task = (JSON.parse(readFileSync(resolve(root, 'deno.json'), 'utf8')) as { tasks: Record<string, string> }).tasks.serve!;
  const [program, ...args] = task.split(/\s+/);
  expect(program).toBe('deno');
  return [nativeDeno(), ...args];
}

/** `npx deno task serve` needs node_modules/.bin/deno to be our launcher (`npm ci` links it: bin/link-deno.cjs). */
function npxCommand(): string[] {
  const linked = realpathSync(resolve(root, 'node_modules/.bin/deno'));
  if (linked !== realpathSync(resolve(root, 'bin/deno.cjs'))) {
    throw new Error(`node_modules/.bin/deno is ${linked}, not bin/deno.cjs: run \`npm ci\` (its prepare script links the launcher).`);
  }
  return ['npx', 'deno', 'task', '-q', 'serve'];
}

interface Started {
  child: ChildProcess;
  baseUrl: string;
  serverPid: number;
  output(): string;
}

async function start(command: string[]): Promise<Started> {
  const [program, ...args] = command;
  const child = spawn(program!, [...args, '--model', referenceModelPath('stories260K-f32'), '--port', '0', '--ctx', '512', '--shutdown-grace', '60'], {
    cwd: root,
    env: { ...process.env, XDG_RUNTIME_DIR: '/tmp', NO_COLOR: '1' },
    detached: true, // its own process group, as a shell job or a container's PID 1 has
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
  const deadline = Date.now() + 90_000;
  let listening: RegExpExecArray | null;
  while (!(listening = /listening on (http:\/\/[\d.]+:\d+) \(pid (\d+)\)/.exec(output))) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`the server did not start:\n${output}`);
    await sleep(50);
  }
  const baseUrl = listening[1]!;
  while ((await fetch(`${baseUrl}/ready`).then((r) => r.status, () => 0)) !== 200) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`the server did not get ready:\n${output}`);
    await sleep(100);
  }
  return { child, baseUrl, serverPid: Number(listening[2]), output: () => output };
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

const exitOf = (child: ChildProcess) =>
  new Promise<number | null>((resolveExit) =>
    child.exitCode !== null || child.signalCode !== null ? resolveExit(child.exitCode) : child.once('exit', (code) => resolveExit(code)),
  );

// Pairwise: each command gets each delivery, and each signal (SIGINT is a terminal's Ctrl-C, sent
// to the foreground process group).
const cases = [
  { command: 'production', delivery: 'process', signal: 'SIGTERM' },
  { command: 'production', delivery: 'group', signal: 'SIGINT' },
  { command: 'npx deno task serve', delivery: 'process', signal: 'SIGINT' },
  { command: 'npx deno task serve', delivery: 'group', signal: 'SIGTERM' },
] as const;

describe('stopping the server by signal', () => {
  it.each(cases)('$command, $signal to the $delivery: the stream finishes, exit 0, nothing left', async ({ command, delivery, signal }) => {
    const server = await start(command === 'production' ? productionCommand() : npxCommand());
    try {
      const response = await fetch(`${server.baseUrl}/v1/completions`, {
        method: 'POST',
        body: JSON.stringify({ model: 'stories260K', prompt: 'Once upon a time', max_tokens: 400, temperature: 0, ignore_eos: true, stream: true }),
      });
      const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
      let streamed = (await reader.read()).value ?? '';
      expect(streamed).toContain('data: ');

      process.kill(delivery === 'group' ? -server.child.pid! : server.child.pid!, signal);
      // Draining: still listening, but no longer ready, and new work is refused.
      let ready = 200;
      for (let i = 0; i < 100 && ready === 200; i++) ready = await fetch(`${server.baseUrl}/ready`).then((r) => r.status, () => 0);
      expect(ready).toBe(503);
      const refused = await fetch(`${server.baseUrl}/v1/completions`, { method: 'POST', body: JSON.stringify({ model: 'stories260K', prompt: 'Hi' }) });
      expect(refused.status).toBe(503);
      expect(((await refused.json()) as { error: { code: string } }).error.code).toBe('shutting_down');

      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        streamed += value;
      }
      expect(streamed).toContain('"finish_reason":"length"');
      expect(streamed.trimEnd().endsWith('data: [DONE]')).toBe(true);

      expect(await exitOf(server.child)).toBe(0);
      expect(alive(server.serverPid)).toBe(false);
      expect(await fetch(`${server.baseUrl}/ready`).then(() => 'answered', () => 'refused')).toBe('refused');
      expect(server.output()).toContain('webshard serve: stopped');
    } finally {
      if (server.child.exitCode === null) process.kill(-server.child.pid!, 'SIGKILL');
    }
  }, SLOW_TEST_MS);
});
