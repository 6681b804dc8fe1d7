// The soak benchmark's quick run (30 s, 64 streaming clients, one request in eight disconnecting
// midway, on stories260K): it exits 0 only when every completed stream equals its sequential
// text, cancelled streams gave their KV blocks back, memory stayed flat, and the server it started
// exited 0 on SIGTERM (bench/soak.ts checks each and names what failed).
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';
import { modelPath } from './helpers/models.ts';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');

it('deno task bench:soak --quick passes its checks', () => {
  const run = spawnSync(resolve(root, 'node_modules/.bin/deno'), ['task', '-q', 'bench:soak', '--quick', '--model', modelPath('stories260K.gguf')], {
    cwd: root,
    encoding: 'utf8',
    timeout: 180_000,
    env: { ...process.env, XDG_RUNTIME_DIR: '/tmp', NO_COLOR: '1' },
  });
  expect(run.status, `${run.stdout}\n${run.stderr}`).toBe(0);
  const path = /wrote (\S+\.json)/.exec(run.stdout)![1]!;
  const result = JSON.parse(readFileSync(path, 'utf8')) as { clients: number; completed: number; disconnected: number; mismatched: number; failed: number; problems: string[] };
  expect(result.clients).toBe(64);
  expect(result.completed).toBeGreaterThan(64);
  expect(result.disconnected).toBeGreaterThan(0);
  expect(result).toMatchObject({ mismatched: 0, failed: 0, problems: [] });
}, 200_000);
