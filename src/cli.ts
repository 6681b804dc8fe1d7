// The webshard command line (Deno): run | chat | tokenize | info.
//
//   deno task run  [-m model.gguf] [-p prompt] [-n 128] [--temperature 0.8] [--json] ...
//   deno task chat -m model.gguf [--system "Be brief."] [-p "one question"] [--chat-template FILE]
//   deno task tokenize -m model.gguf --text "Hello" --json
//   deno task info -m model.gguf
//
// Exit codes: 0 on success, 2 for bad arguments, 1 for anything else. The process ends by
// returning from main (never Deno.exit) so Dawn devices are released cleanly first.

import { byteSize, choiceFlag, flag, numberFlag, parseFlags, UsageError, type Flags, type FlagSpec } from './flags.ts';
import { MATMUL_VARIANTS } from './shaders/matmul.ts';
import { describeAdapters, type GpuBackend, type GpuOptions } from './gpu/device.ts';
import { chooseShardSplit } from './sharding/auto.ts';
import { loadModel, type Model } from './api/model.ts';
import { llamaConfig } from './model/config.ts';
import { readGGUF } from './model/gguf.ts';
import { ggmlTypeName } from './model/ggml-type.ts';
import { openSource, type ModelSource } from './model/source.ts';
import { randomLlamaGGUF, DEFAULT_RANDOM_LLAMA } from './model/random-llama.ts';
import { MissingChatTemplateError, type ChatMessage } from './api/chat.ts';
import type { GenerateOptions } from './engine/generate.ts';

declare const Deno: {
  args: string[];
  exitCode: number;
  stdout: { write(bytes: Uint8Array): Promise<number> };
  stderr: { write(bytes: Uint8Array): Promise<number>; isTerminal(): boolean };
  stdin: { readable: ReadableStream<Uint8Array>; isTerminal(): boolean };
  readTextFile(path: string): Promise<string>;
  addSignalListener(signal: 'SIGINT', handler: () => void): void;
  removeSignalListener(signal: 'SIGINT', handler: () => void): void;
};

const USAGE = `webshard — LLM inference on WebGPU

Commands (deno task <command> ...):
  run       generate text
  chat      talk with a chat model (its own template): interactive, history kept; Ctrl-C stops
            an answer, Ctrl-D quits; -p asks one question and exits
  tokenize  print token ids
  info      print model metadata, tensor types and the GPU adapters found

Options:
  -m, --model PATH|URL    GGUF model (run: default is a built-in random-weight demo model)
  -p, --prompt TEXT       prompt (default "Once upon a time")
  -n, --max-tokens N      tokens to generate (default 128)
      --temperature T     0 = greedy (default 0.8)
      --top-k K           (default 40)      --top-p P   (default 0.95)
      --min-p P           (default 0.05)    --repeat-penalty R (default 1)
  -s, --seed N            same seed, same text
  -c, --ctx N             context length to allocate (default: model's, at most 4096)
      --stop TEXT         stop string (repeatable)
      --ignore-eos        keep generating past end-of-generation tokens
      --parse-special     (run, tokenize) special-token text in the prompt ("<|im_start|>")
                          becomes those tokens, as a rendered chat template needs (default: text)
      --no-bos            (tokenize) add no BOS/EOS around the text
      --system TEXT       (chat) system message
      --chat-template FILE  (chat) Jinja chat template to use instead of the model's
      --text TEXT         (tokenize) text to tokenize
      --json              machine-readable output
      --gpu dawn|deno     WebGPU implementation (default dawn; deno = Deno's built-in WebGPU)
      --tp N              tensor-parallel shards (one worker and one GPU device each)
      --pp N              pipeline stages (tp × pp shards in all)
      --devices N|LIST    how many devices (on one adapter), or adapter names, one per shard;
                          with more than one and no --tp/--pp, the split is chosen by measuring
                          the all-reduce and the kernels on these devices (--shard auto)
      --gpu-memory SIZE   memory budget per device for the planner, e.g. 8GiB or 512MiB
      --matmul KIND       matmul kernels: auto (default), int8 (int8 activations for Q4_0/Q8_0
                          weights, as llama.cpp's CPU path), or one variant forced everywhere
  -h, --help`;

const cliFlags: FlagSpec = {
  aliases: { m: 'model', p: 'prompt', n: 'max-tokens', s: 'seed', c: 'ctx', h: 'help', temp: 'temperature' },
  booleans: new Set(['json', 'ignore-eos', 'help', 'parse-special', 'no-bos']),
  known: new Set([
    'model', 'prompt', 'max-tokens', 'temperature', 'top-k', 'top-p', 'min-p', 'repeat-penalty', 'seed', 'ctx',
    'stop', 'text', 'json', 'gpu', 'ignore-eos', 'help', 'tp', 'pp', 'devices', 'gpu-memory', 'matmul',
    'parse-special', 'no-bos', 'system', 'chat-template',
  ]),
};

function gpuBackend(flags: Flags): GpuBackend {
  const gpu = flag(flags, 'gpu') ?? 'dawn';
  if (gpu !== 'dawn' && gpu !== 'deno') throw new UsageError(`--gpu must be "dawn" or "deno"; got "${gpu}"`);
  return gpu;
}

const encoder = new TextEncoder();
const out = (text: string) => Deno.stdout.write(encoder.encode(text));
const err = (text: string) => Deno.stderr.write(encoder.encode(text));

/** A progress bar on a terminal; a single summary line otherwise. */
function progressReporter(): { update(done: number, total: number): void; finish(): Promise<void> } {
  const start = performance.now();
  const tty = Deno.stderr.isTerminal();
  let last = { done: 0, total: 0 };
  let drawn = 0;
  const line = () => {
    const seconds = (performance.now() - start) / 1000;
    const mb = last.done / 1e6;
    const fraction = last.total ? last.done / last.total : 1;
    const bar = '#'.repeat(Math.round(fraction * 30)).padEnd(30, '.');
    return `loading [${bar}] ${(fraction * 100).toFixed(0).padStart(3)}%  ${mb.toFixed(1)} MB  ${(mb / Math.max(seconds, 1e-3)).toFixed(1)} MB/s`;
  };
  return {
    update(done, total) {
      last = { done, total };
      const now = performance.now();
      if (tty && now - drawn > 100) {
        drawn = now;
        void err(`\r${line()}`);
      }
    },
    async finish() {
      await err(`${tty ? '\r' : ''}${line()}\n`);
    },
  };
}

async function openModel(flags: Flags): Promise<Model> {
  let source: ModelSource | undefined = flag(flags, 'model');
  if (source === undefined) {
    const shape = DEFAULT_RANDOM_LLAMA;
    await err(
      `No --model given: running webshard's built-in demo model, a deterministic RANDOM-WEIGHT Llama ` +
        `(dim ${shape.dim}, ${shape.nLayers} layers, ${shape.nHeads} heads) written by webshard's own GGUF writer.\n` +
        `Its output is gibberish by design. For real text: deno task run -m path/to/model.gguf -p "Once upon a time"\n`,
    );
    source = randomLlamaGGUF(shape, 1);
  }
  const backend = gpuBackend(flags);
  const devicesFlag = flag(flags, 'devices');
  const deviceCount = devicesFlag && /^\d+$/.test(devicesFlag.trim()) ? Number(devicesFlag) : undefined;
  const adapterNames = deviceCount ? undefined : devicesFlag?.split(',').map((name) => name.trim()).filter(Boolean);
  const devices = adapterNames?.map((adapterName) => ({ backend, adapterName })) ?? (deviceCount ? Array.from({ length: deviceCount }, () => ({ backend })) : undefined);
  let tp = numberFlag(flags, 'tp', { integer: true });
  let pp = numberFlag(flags, 'pp', { integer: true });
  const contextLength = numberFlag(flags, 'ctx', { integer: true });
  const gpuMemoryBytes = byteSize(flags, 'gpu-memory');
  if (devices && devices.length > 1 && tp === undefined && pp === undefined) {
    ({ tp, pp } = await autoSplit(source, devices, contextLength, gpuMemoryBytes));
  }
  const progress = progressReporter();
  const model = await loadModel(source, {
    contextLength,
    gpu: { backend },
    tp,
    pp,
    devices,
    gpuMemoryBytes,
    kernels: { matmul: choiceFlag(flags, 'matmul', MATMUL_VARIANTS) },
    onProgress: ({ bytesLoaded, bytesTotal }) => progress.update(bytesLoaded, bytesTotal),
    onWarning: (message) => void err(`warning: ${message}\n`),
  });
  await progress.finish();
  if (model.plan) await err(model.plan.summary.join('\n') + '\n');
  return model;
}

/** --shard auto: measure the devices, plan every split that fits, take the fastest; say why. */
async function autoSplit(
  source: ModelSource,
  devices: GpuOptions[],
  contextLength: number | undefined,
  gpuMemoryBytes: number | undefined,
): Promise<{ tp: number; pp: number }> {
  if (typeof source !== 'string' && !(source instanceof Uint8Array)) throw new UsageError('--devices needs a model path or URL');
  const bytes = await openSource(source);
  try {
    const file = await readGGUF(bytes);
    const config = llamaConfig(file);
    const context = contextLength ?? Math.min(config.contextLength, 4096);
    const choice = await chooseShardSplit(file, config, {
      source,
      deviceCount: devices.length,
      devices,
      contextLength: context,
      maxBatchTokens: Math.min(512, context),
      gpuMemoryBytes,
      onStatus: (message) => void err(`${message}\n`),
    });
    await err(`${choice.reason}\npredicted ${choice.predictedTokensPerSecond.toFixed(1)} tokens/s (--tp/--pp override this choice)\n`);
    return { tp: choice.tp, pp: choice.pp };
  } finally {
    await bytes.close();
  }
}

function generateOptions(flags: Flags, defaultMaxTokens: number): GenerateOptions {
  return {
    maxTokens: numberFlag(flags, 'max-tokens', { integer: true }) ?? defaultMaxTokens,
    temperature: numberFlag(flags, 'temperature'),
    topK: numberFlag(flags, 'top-k', { integer: true }),
    topP: numberFlag(flags, 'top-p'),
    minP: numberFlag(flags, 'min-p'),
    repeatPenalty: numberFlag(flags, 'repeat-penalty'),
    seed: numberFlag(flags, 'seed', { integer: true }),
    stop: flags.get('stop'),
    ignoreEos: flags.has('ignore-eos'),
  };
}

async function run(flags: Flags): Promise<void> {
  const json = flags.has('json');
  const model = await openModel(flags);
  try {
    const prompt = flag(flags, 'prompt') ?? 'Once upon a time';
    const options = generateOptions(flags, 128);
    const promptIds = model.tokenize(prompt, { parseSpecial: flags.has('parse-special') });
    if (json) {
      const result = await model.complete(promptIds, options);
      await out(JSON.stringify({ prompt_ids: result.promptIds, generated_ids: result.ids, text: result.text }) + '\n');
      return;
    }
    await out(prompt);
    const start = performance.now();
    let firstAt = 0;
    let count = 0;
    for await (const token of model.generate(promptIds, options)) {
      if (count++ === 0) firstAt = performance.now();
      await out(token.text);
    }
    const end = performance.now();
    const decodeTokens = Math.max(0, count - 1);
    await out('\n');
    await err(
      `\nprefill: ${promptIds.length} tokens in ${(firstAt - start).toFixed(1)} ms (${((promptIds.length * 1000) / (firstAt - start)).toFixed(1)} tok/s)\n` +
        `decode:  ${decodeTokens} tokens in ${(end - firstAt).toFixed(1)} ms (${decodeTokens ? ((decodeTokens * 1000) / (end - firstAt)).toFixed(1) : '0'} tok/s)\n` +
        (model.gpu ? `device:  ${model.gpu.adapterDescription} (${model.gpu.backend})\n` : shardReport(model)),
    );
  } finally {
    await model.dispose();
  }
}

/**
 * A conversation with the model's chat template: each answer streams out and joins the history.
 * Ctrl-C stops the answer being written (what came so far stays in the history); at the prompt,
 * Ctrl-C or Ctrl-D ends the session. With -p: one question, one answer (--json: ids and text).
 */
async function chat(flags: Flags): Promise<void> {
  const templateFile = flag(flags, 'chat-template');
  const chatTemplate =
    templateFile === undefined ? undefined : await Deno.readTextFile(templateFile).catch((error: Error) => {
      throw new UsageError(`--chat-template: cannot read ${templateFile} (${error.message})`);
    });
  const model = await openModel(flags);
  let stopAnswer: AbortController | undefined;
  let lines: LineReader | undefined;
  const onInterrupt = () => (stopAnswer ? stopAnswer.abort() : lines?.close());
  Deno.addSignalListener('SIGINT', onInterrupt);
  try {
    if (chatTemplate === undefined && !model.hasChatTemplate) throw new MissingChatTemplateError(flag(flags, 'model') ?? 'the model');
    const generation = generateOptions(flags, 512);
    const options = { ...generation, chatTemplate };
    const system = flag(flags, 'system');
    const messages: ChatMessage[] = system === undefined ? [] : [{ role: 'system', content: system }];
    const answer = async (question: string): Promise<void> => {
      messages.push({ role: 'user', content: question });
      stopAnswer = new AbortController();
      let text = '';
      try {
        for await (const token of model.chat(messages, { ...options, signal: stopAnswer.signal })) {
          text += token.text;
          await out(token.text);
        }
      } finally {
        stopAnswer = undefined;
        messages.push({ role: 'assistant', content: text });
      }
      await out('\n');
    };

    const question = flag(flags, 'prompt');
    if (question !== undefined) {
      if (!flags.has('json')) return await answer(question);
      const promptIds = model.chatPromptIds([...messages, { role: 'user', content: question }], options);
      const result = await model.complete(promptIds, generation);
      await out(JSON.stringify({ prompt_ids: result.promptIds, generated_ids: result.ids, text: result.text }) + '\n');
      return;
    }
    await err('chatting; Ctrl-C stops an answer, Ctrl-D (or Ctrl-C here) quits\n');
    lines = new LineReader(Deno.stdin.readable);
    for (;;) {
      await out('> ');
      const line = await lines.next();
      if (line === undefined) break;
      if (line.trim() !== '') await answer(line);
    }
    await out('\n');
  } finally {
    Deno.removeSignalListener('SIGINT', onInterrupt);
    await lines?.close();
    await model.dispose();
  }
}

/** Lines of a byte stream (stdin), one at a time; `undefined` at its end or once closed. */
class LineReader {
  private readonly reader: ReadableStreamDefaultReader<Uint8Array>;
  private readonly decoder = new TextDecoder();
  private buffered = '';
  private closed = false;

  constructor(stream: ReadableStream<Uint8Array>) {
    this.reader = stream.getReader();
  }

  async next(): Promise<string | undefined> {
    for (;;) {
      const newline = this.buffered.indexOf('\n');
      if (newline >= 0) {
        const line = this.buffered.slice(0, newline).replace(/\r$/, '');
        this.buffered = this.buffered.slice(newline + 1);
        return line;
      }
      const { value, done } = this.closed ? { value: undefined, done: true } : await this.reader.read();
      if (done) {
        const rest = this.buffered;
        this.buffered = '';
        return rest === '' ? undefined : rest;
      }
      this.buffered += this.decoder.decode(value, { stream: true });
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.reader.cancel().catch(() => {});
  }
}

/** Per shard, after a sharded run: weights held, step time, all-reduce time and its waiting share. */
function shardReport(model: Model): string {
  const group = model.shards!;
  const lines = [`shards:  tp ${model.plan!.tp} × pp ${model.plan!.pp}`];
  for (const s of model.stats().devices) {
    const load = group.reports[s.rank]!;
    const perStep = (ms: number) => (s.steps ? ms / s.steps : 0).toFixed(2);
    lines.push(
      `  shard ${s.rank}: ${(s.gpuBytes / 2 ** 20).toFixed(2)} MiB on GPU, read ${(load.fileBytesRead / 2 ** 20).toFixed(2)} MiB of the file; ` +
        `step ${perStep(s.stepMs)} ms, collectives ${perStep(s.collectiveMs)} ms/step (${s.collectives} in all, ` +
        `${((100 * s.collectiveWaitMs) / Math.max(s.stepMs, 1e-9)).toFixed(0)}% of the step waiting) — ${load.adapter}`,
    );
  }
  return lines.join('\n') + '\n';
}

async function tokenize(flags: Flags): Promise<void> {
  const text = flag(flags, 'text') ?? flag(flags, 'prompt');
  if (text === undefined) throw new UsageError('tokenize needs --text TEXT');
  if (!flag(flags, 'model')) throw new UsageError('tokenize needs --model PATH');
  const source = await openSource(flag(flags, 'model')!);
  try {
    const file = await readGGUF(source);
    const { LlamaTokenizer } = await import('./model/tokenizer.ts');
    const noBos = flags.has('no-bos');
    const ids = LlamaTokenizer.fromGGUFMetadata(file.metadata, { file: source.name }).encode(text, {
      parseSpecial: flags.has('parse-special'),
      ...(noBos ? { addBos: false, addEos: false } : {}),
    });
    await out(flags.has('json') ? JSON.stringify({ ids }) + '\n' : ids.join(' ') + '\n');
  } finally {
    await source.close();
  }
}

async function info(flags: Flags): Promise<void> {
  const lines: string[] = [];
  const modelArg = flag(flags, 'model');
  if (modelArg) {
    const source = await openSource(modelArg);
    try {
      const file = await readGGUF(source);
      const config = llamaConfig(file);
      const typeCounts = new Map<string, number>();
      for (const t of file.tensors) typeCounts.set(ggmlTypeName(t.type), (typeCounts.get(ggmlTypeName(t.type)) ?? 0) + 1);
      const parameters = file.tensors.reduce((sum, t) => sum + t.shape.reduce((a, b) => a * b, 1), 0);
      lines.push(
        `model:        ${source.name} (${(source.size / 1e6).toFixed(2)} MB, GGUF v${file.version})`,
        `architecture: ${config.architecture}, ${(parameters / 1e6).toFixed(2)}M parameters`,
        `shape:        dim ${config.dim}, ${config.nLayers} layers, ${config.nHeads} heads (${config.nKvHeads} KV), head dim ${config.headDim}, FFN ${config.ffnDim}, vocab ${config.vocabSize}`,
        `rope:         base ${config.ropeBase}, dims ${config.ropeDims}, scaling ${config.ropeScaling.type}; rms eps ${Number(config.rmsEps.toPrecision(6))}; context ${config.contextLength}`,
        `tensors:      ${[...typeCounts].map(([type, n]) => `${type} ×${n}`).join(', ')}`,
        'metadata:',
      );
      for (const [key, value] of file.metadata) {
        const shown = Array.isArray(value) || ArrayBuffer.isView(value) ? `[${(value as ArrayLike<unknown>).length} values]` : String(value);
        lines.push(`  ${key} = ${shown.length > 100 ? shown.slice(0, 97) + '...' : shown}`);
      }
    } finally {
      await source.close();
    }
  }
  lines.push('adapters:');
  for (const adapter of await describeAdapters({ backend: gpuBackend(flags) })) lines.push(`  ${adapter}`);
  await out(lines.join('\n') + '\n');
}

async function main(args: string[]): Promise<void> {
  const [command, ...rest] = args;
  try {
    const flags = parseFlags(rest, cliFlags);
    if (flags.has('help') || command === undefined || command === 'help') {
      await out(USAGE + '\n');
      return;
    }
    if (command === 'run') await run(flags);
    else if (command === 'chat') await chat(flags);
    else if (command === 'tokenize') await tokenize(flags);
    else if (command === 'info') await info(flags);
    else throw new UsageError(`unknown command "${command}"`);
  } catch (error) {
    if (error instanceof UsageError) {
      await err(`webshard: ${error.message}\n\n${USAGE}\n`);
      Deno.exitCode = 2;
    } else {
      const e = error as Error;
      await err(`webshard: ${e.name ?? 'Error'}: ${e.message}\n`);
      Deno.exitCode = 1;
    }
  }
}

await main(Deno.args);
