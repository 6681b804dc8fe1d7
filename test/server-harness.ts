// Test support for the HTTP server: a real `deno task serve` process on a free loopback port,
// and a stand-in model that follows the engine's generate loop on a scripted "forward pass".

import { spawn, type ChildProcess } from 'node:child_process';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { generateTokens, type FinishReason, type GenerationBackend } from '../src/engine/generate.ts';
import { FaultInjector, NextStepHang } from '../src/engine/faults.ts';
import type { StepResult } from '../src/engine/runner.ts';
import type { GeneratedToken, GenerateOptions, HealthReport, ServedModel, ServedTokenizer } from '../src/server/served-model.ts';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const deno = resolve(root, 'node_modules/.bin/deno');

export interface ServerProcess {
  baseUrl: string;
  /** The Deno process that serves (below the npm wrapper and `deno task`). */
  pid: number;
  stderr(): string;
  /** SIGTERM to the server; resolves with the exit code that reaches the spawned `deno task`. */
  stop(timeoutMs?: number): Promise<number | null>;
  /** Last resort (afterAll): kill the whole process group if it is still running. */
  kill(): void;
}

function waitForExit(child: ChildProcess, timeoutMs: number): Promise<number | null | 'timeout'> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolvePromise) => {
    const timer = setTimeout(() => resolvePromise('timeout'), timeoutMs);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolvePromise(code);
    });
  });
}

/** Starts `deno task serve --model <model> --port 0 ...args` and waits until /ready says 200. */
export async function startServer(model: string, args: string[] = [], startTimeoutMs = 90_000): Promise<ServerProcess> {
  const child = spawn(deno, ['task', '-q', 'serve', '--model', model, '--port', '0', ...args], {
    cwd: root,
    env: { ...process.env, XDG_RUNTIME_DIR: '/tmp', NO_COLOR: '1' },
    detached: true, // its own process group, so kill() reaches the wrapper, deno task and the server
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const kill = () => {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  };

  const deadline = Date.now() + startTimeoutMs;
  let listening: RegExpExecArray | null = null;
  while (!(listening = /listening on (http:\/\/[\d.]+:\d+) \(pid (\d+)\)/.exec(stdout))) {
    if (child.exitCode !== null || Date.now() > deadline) {
      kill();
      throw new Error(`the server did not start (exit ${child.exitCode}):\n${stderr}`);
    }
    await sleep(50);
  }
  const baseUrl = listening[1]!;
  const pid = Number(listening[2]);
  for (;;) {
    const ready = await fetch(`${baseUrl}/ready`).then((r) => r.status, () => 0);
    if (ready === 200) break;
    if (child.exitCode !== null || Date.now() > deadline) {
      kill();
      throw new Error(`the server did not get ready (exit ${child.exitCode}, /ready ${ready}):\n${stderr}`);
    }
    await sleep(100);
  }

  return {
    baseUrl,
    pid,
    stderr: () => stderr,
    kill,
    async stop(timeoutMs = 30_000) {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        // already gone: the exit code below tells
      }
      const code = await waitForExit(child, timeoutMs);
      if (code === 'timeout') {
        kill();
        throw new Error(`the server did not stop within ${timeoutMs} ms after SIGTERM:\n${stderr}`);
      }
      return code;
    },
  };
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Reads an SSE response to the end: the parsed `data:` events, and whether [DONE] came last. */
export async function readSse(response: Response): Promise<{ events: Array<Record<string, unknown>>; done: boolean }> {
  const text = await response.text();
  const data = text
    .split('\n\n')
    .filter((block) => block.startsWith('data: '))
    .map((block) => block.slice('data: '.length));
  const done = data.at(-1) === '[DONE]';
  return { events: data.filter((d) => d !== '[DONE]').map((d) => JSON.parse(d) as Record<string, unknown>), done };
}

// --- a stand-in model ------------------------------------------------------------------------

const BOS = 256;
const EOS = 257;
const utf8 = new TextEncoder();

/** Bytes are tokens 0-255, then BOS and EOS. */
export const fakeTokenizer: ServedTokenizer = {
  bosId: BOS,
  eosId: EOS,
  vocabSize: 258,
  encode: (text: string, options: { addBos?: boolean } = {}) => [...(options.addBos === false ? [] : [BOS]), ...utf8.encode(text)],
  tokenToPiece: (id: number, options: { special?: boolean } = {}) =>
    id < 256 ? Uint8Array.of(id) : options.special ? utf8.encode(id === BOS ? '<s>' : '</s>') : new Uint8Array(0),
  tokenText: (id: number) => (id < 256 ? String.fromCharCode(id) : id === BOS ? '<s>' : '</s>'),
  isEog: (id: number) => id === EOS,
};

export interface FakeModelOptions {
  /** What the model "says": the token at position p is script[p] (cycled); "\u0000" stands for EOS. */
  script?: string;
  stepMs?: number;
  contextLength?: number;
  metadata?: Map<string, unknown>;
}

/**
 * The engine's real generate loop (stop strings, EOS, abort between steps) over a scripted
 * forward pass, serialized like the engine: one generation holds the model at a time.
 */
export class FakeModel implements ServedModel {
  readonly tokenizer = fakeTokenizer;
  readonly contextLength: number;
  readonly file: { metadata: Map<string, unknown> };
  /** Its fault injector: only `hang` on shard 0 (it has no device and no workers). */
  readonly faults = new FaultInjector();
  private readonly hang = new NextStepHang();
  steps = 0;
  running = 0;
  queued = 0;
  /** Prompts handed to generate(), in order. */
  readonly prompts: number[][] = [];
  private readonly script: string;
  private readonly stepMs: number;
  private lock: Promise<void> = Promise.resolve();
  private lastStepEndedAt = 0;

  constructor(options: FakeModelOptions = {}) {
    this.script = options.script ?? 'The quick brown fox jumps over the lazy dog. ';
    this.stepMs = options.stepMs ?? 1;
    this.contextLength = options.contextLength ?? 256;
    this.file = { metadata: options.metadata ?? new Map() };
    this.faults.connect(async ({ shard, kind, ms }) => {
      if (shard !== 0 || kind !== 'hang') throw new RangeError(`the stand-in model only hangs, on shard 0; not ${kind} on shard ${shard}`);
      this.hang.arm(ms);
    });
  }

  readiness(): HealthReport {
    return { ok: true, detail: 'ready' };
  }

  /** The token this model predicts at sequence position `position`, whatever came before. */
  tokenAt(position: number): number {
    const char = this.script[position % this.script.length]!;
    return char === '\u0000' ? EOS : char.charCodeAt(0);
  }

  /** The text of `count` tokens generated after a prompt of `promptLength` tokens (EOS ends it). */
  answer(promptLength: number, count: number): string {
    let text = '';
    for (let p = promptLength; p < promptLength + count && this.tokenAt(p) !== EOS; p++) text += String.fromCharCode(this.tokenAt(p));
    return text;
  }

  async *generate(promptIds: readonly number[], options: GenerateOptions, result: { finish?: FinishReason } = {}): AsyncGenerator<GeneratedToken> {
    this.prompts.push([...promptIds]);
    const release = await this.acquire();
    try {
      yield* generateTokens(this.backend(), promptIds, options, result);
    } finally {
      release();
    }
  }

  async nextTokenLogits(ids: readonly number[]): Promise<Float32Array> {
    const release = await this.acquire();
    try {
      return (await this.step(ids.length, true)).logits!;
    } finally {
      release();
    }
  }

  async health(deadlineMs: number): Promise<HealthReport> {
    if (this.running > 0 && performance.now() - this.lastStepEndedAt <= deadlineMs) return { ok: true, detail: 'busy' };
    let timer: ReturnType<typeof setTimeout> | undefined;
    const deadline = new Promise<HealthReport>((r) => (timer = setTimeout(() => r({ ok: false, detail: `no step within ${deadlineMs} ms` }), deadlineMs)));
    const probe = (async () => {
      const release = await this.acquire();
      try {
        await this.step(1, false);
        return { ok: true, detail: 'probe ok' };
      } finally {
        release();
      }
    })();
    try {
      return await Promise.race([probe, deadline]);
    } finally {
      clearTimeout(timer);
    }
  }

  stats(): object {
    // A 16-block KV cache, 2 blocks per running sequence.
    const kvBlocksUsed = 2 * this.running;
    return { queued: this.queued, running: this.running, steps: this.steps, kvBlocksUsed, kvBlocksFree: 16 - kvBlocksUsed, devices: [{ stepMs: this.stepMs }] };
  }

  private backend(): GenerationBackend {
    return {
      contextLength: this.contextLength,
      // Logits also stand in for top-k candidates (sampling takes either).
      forward: (tokens, startPos, wantLogits, topK) => this.step(startPos + tokens.length, wantLogits || (topK ?? 0) > 0),
      isEndOfGeneration: (id) => id === EOS,
      createStreamDecoder: () => {
        const decoder = new TextDecoder();
        return { push: (id) => decoder.decode(fakeTokenizer.tokenToPiece(id), { stream: true }), flush: () => decoder.decode() };
      },
    };
  }

  /** One "forward step" predicting the token at `position`. */
  private async step(position: number, wantLogits: boolean): Promise<StepResult> {
    await this.hang.wait();
    await sleep(this.stepMs);
    this.steps++;
    this.lastStepEndedAt = performance.now();
    const argmaxId = this.tokenAt(position);
    if (!wantLogits) return { argmaxId };
    const logits = new Float32Array(this.tokenizer.vocabSize).fill(-5);
    logits[argmaxId] = 5;
    return { argmaxId, logits };
  }

  private async acquire(): Promise<() => void> {
    const previous = this.lock;
    let release!: () => void;
    this.lock = new Promise<void>((r) => (release = r));
    this.queued++;
    await previous;
    this.queued--;
    this.running++;
    return () => {
      this.running--;
      release();
    };
  }
}
