// The webshard command line (Deno): run | chat | tokenize | info.
//
//   deno task run  [-m model.gguf] [-p prompt] [-n 128] [--temperature 0.8] [--json] ...
//   deno task chat -m model.gguf [--system "Be brief."] [-p "one question"] [--chat-template FILE]
//   deno task tokenize -m model.gguf --text "Hello" --json
//   deno task info -m model.gguf
//
// Exit codes: 0 on success, 2 for bad arguments, 1 for anything else. The process ends by
// returning from main (never Deno.exit) so Dawn devices are released cleanly first.

import { flag, gpuBackend, LOAD_ALIASES, LOAD_FLAGS, LOAD_FLAGS_USAGE, loadOptionsFromFlags, numberFlag, parseFlags, UsageError, type Flags, type FlagSpec } from './flags.ts';
import { DEFAULT_RANDOM_LLAMA, describeAdapters, loadModel, MissingChatTemplateError, randomLlamaGGUF, readModelInfo, type ChatMessage, type GenerateOptions, type GenerationResult, type Model, type ModelSource, type SpeculationCounts } from './index.ts';

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
  -m, --model PATH|URL        GGUF model, or a Hugging Face model folder (a directory, or a base URL
                              ending in /: config.json, tokenizer.json, safetensors; F32/F16/BF16,
                              AWQ or GPTQ 4-bit) (run: default is a built-in random-weight demo model)
  -p, --prompt TEXT           prompt (default "Once upon a time")
  -n, --max-tokens N          tokens to generate (default 128)
      --temperature T         0 = greedy (default 0.8)
      --top-k K               (default 40)      --top-p P   (default 0.95)
      --min-p P               (default 0.05)    --repeat-penalty R (default 1)
  -s, --seed N                same seed, same text
      --stop TEXT             stop string (repeatable)
      --ignore-eos            keep generating past end-of-generation tokens
      --parse-special         (run, tokenize) special-token text in the prompt ("<|im_start|>")
                              becomes those tokens, as a rendered chat template needs (default: text)
      --no-bos                (tokenize) add no BOS/EOS around the text
      --system TEXT           (chat) system message
      --chat-template FILE    (chat) Jinja chat template to use instead of the model's
      --text TEXT             (tokenize) text to tokenize
      --json                  machine-readable output
${LOAD_FLAGS_USAGE}
  -h, --help`;

const cliFlags: FlagSpec = {
  aliases: { m: 'model', p: 'prompt', n: 'max-tokens', s: 'seed', h: 'help', temp: 'temperature', ...LOAD_ALIASES },
  booleans: new Set(['json', 'ignore-eos', 'help', 'parse-special', 'no-bos']),
  known: new Set([
    'model', 'prompt', 'max-tokens', 'temperature', 'top-k', 'top-p', 'min-p', 'repeat-penalty', 'seed',
    'stop', 'text', 'json', 'ignore-eos', 'help', 'parse-special', 'no-bos', 'system', 'chat-template', ...LOAD_FLAGS,
  ]),
};

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
  const progress = progressReporter();
  const model = await loadModel(source, {
    ...loadOptionsFromFlags(flags),
    onProgress: ({ bytesLoaded, bytesTotal }) => progress.update(bytesLoaded, bytesTotal),
    onWarning: (message) => void err(`warning: ${message}\n`),
    onStatus: (message) => void err(`${message}\n`),
  });
  await progress.finish();
  if (model.plan) await err(model.plan.summary.join('\n') + '\n');
  return model;
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
      const speculative = result.speculative && { drafted: result.speculative.drafted, accepted: result.speculative.accepted, target_steps: result.speculative.targetSteps };
      await out(JSON.stringify({ prompt_ids: result.promptIds, generated_ids: result.ids, text: result.text, ...(speculative && { speculative }) }) + '\n');
      return;
    }
    await out(prompt);
    const start = performance.now();
    let firstAt = 0;
    let count = 0;
    const result: GenerationResult = {};
    for await (const token of model.generate(promptIds, options, result)) {
      if (count++ === 0) firstAt = performance.now();
      await out(token.text);
    }
    const end = performance.now();
    const decodeTokens = Math.max(0, count - 1);
    await out('\n');
    await err(
      `\nprefill: ${promptIds.length} tokens in ${(firstAt - start).toFixed(1)} ms (${((promptIds.length * 1000) / (firstAt - start)).toFixed(1)} tok/s)\n` +
        `decode:  ${decodeTokens} tokens in ${(end - firstAt).toFixed(1)} ms (${decodeTokens ? ((decodeTokens * 1000) / (end - firstAt)).toFixed(1) : '0'} tok/s)\n` +
        (result.speculative ? speculationReport(result.speculative, count) : '') +
        (model.gpu ? `device:  ${model.gpu.adapterDescription} (${model.gpu.backend})\n` : shardReport(model)),
    );
  } finally {
    await model.dispose();
  }
}

/** How much speculation saved: accepted drafts and target steps per generated token. */
function speculationReport({ drafted, accepted, targetSteps }: SpeculationCounts, generated: number): string {
  const rate = drafted ? ((100 * accepted) / drafted).toFixed(0) : '0';
  return `speculative: ${accepted} of ${drafted} drafted tokens accepted (${rate}%); ${targetSteps} target steps for ${generated} tokens (${(targetSteps / Math.max(generated, 1)).toFixed(2)} per token)\n`;
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
  const ids = (await readModelInfo(flag(flags, 'model')!)).tokenize(text, {
    parseSpecial: flags.has('parse-special'),
    ...(flags.has('no-bos') ? { addBos: false, addEos: false } : {}),
  });
  await out(flags.has('json') ? JSON.stringify({ ids }) + '\n' : ids.join(' ') + '\n');
}

async function info(flags: Flags): Promise<void> {
  const lines: string[] = [];
  const modelArg = flag(flags, 'model');
  if (modelArg) {
    const model = await readModelInfo(modelArg);
    const config = model.config;
    lines.push(
      `model:        ${model.name} (${(model.sizeBytes / 1e6).toFixed(2)} MB, ${model.format === 'gguf' ? `GGUF v${model.ggufVersion}` : 'Hugging Face folder'})`,
      `architecture: ${config.architecture}, ${(model.parameters / 1e6).toFixed(2)}M parameters`,
      `shape:        dim ${config.dim}, ${config.nLayers} layers, ${config.nHeads} heads (${config.nKvHeads} KV), head dim ${config.headDim}, FFN ${config.ffnDim}, vocab ${config.vocabSize}`,
      `rope:         base ${config.ropeBase}, dims ${config.ropeDims}, scaling ${config.ropeScaling.type}; rms eps ${Number(config.rmsEps.toPrecision(6))}; context ${config.contextLength}`,
      `tensors:      ${[...model.tensorTypes].map(([type, n]) => `${type} ×${n}`).join(', ')}`,
      'metadata:',
    );
    for (const [key, value] of model.metadata) {
      const shown = Array.isArray(value) || ArrayBuffer.isView(value) ? `[${(value as ArrayLike<unknown>).length} values]` : String(value);
      lines.push(`  ${key} = ${shown.length > 100 ? shown.slice(0, 97) + '...' : shown}`);
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
