// Command-line flags for webshard's entry points (the CLI and the server), in llama.cpp's style:
// `--name value`, `--name=value`, short aliases, repeatable flags, booleans without a value; and
// the one mapping of the model-loading flags both share onto loadModel's options.

import { MATMUL_VARIANTS, TOKENIZER_SEMANTICS, type GpuBackend, type LoadOptions, type SpeculativeOptions } from './index.ts';

export class UsageError extends Error {
  override name = 'UsageError';
}

/** Every value given for each flag, in order (the last one wins for single-valued flags). */
export type Flags = Map<string, string[]>;

export interface FlagSpec {
  /** Every flag name the command knows (long form, without dashes). */
  known: ReadonlySet<string>;
  /** Flags that take no value. */
  booleans: ReadonlySet<string>;
  /** Short or alternative names, e.g. { m: 'model' }. */
  aliases: Readonly<Record<string, string>>;
}

export function parseFlags(args: readonly string[], spec: FlagSpec): Flags {
  const flags: Flags = new Map();
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    const match = /^--?([^=]+)(?:=(.*))?$/s.exec(arg);
    if (!match) throw new UsageError(`unexpected argument "${arg}"`);
    const name = spec.aliases[match[1]!] ?? match[1]!;
    if (!spec.known.has(name)) throw new UsageError(`unknown option "${arg}"`);
    let value = match[2];
    if (spec.booleans.has(name)) value ??= 'true';
    else if (value === undefined) {
      if (i + 1 >= args.length) throw new UsageError(`option --${name} needs a value`);
      value = args[++i]!;
    }
    flags.set(name, [...(flags.get(name) ?? []), value]);
  }
  return flags;
}

export const flag = (flags: Flags, name: string): string | undefined => flags.get(name)?.at(-1);

export function numberFlag(flags: Flags, name: string, options: { integer?: boolean; min?: number } = {}): number | undefined {
  const text = flag(flags, name);
  if (text === undefined) return undefined;
  const value = Number(text);
  const min = options.min ?? 0;
  if (text.trim() === '' || !Number.isFinite(value) || (options.integer && !Number.isInteger(value)) || value < min) {
    throw new UsageError(`--${name} must be ${options.integer ? 'an integer' : 'a number'} ≥ ${min}; got "${text}"`);
  }
  return value;
}

/** One of a fixed set of words. */
export function choiceFlag<T extends string>(flags: Flags, name: string, choices: readonly T[]): T | undefined {
  const text = flag(flags, name);
  if (text === undefined) return undefined;
  if (!(choices as readonly string[]).includes(text)) throw new UsageError(`--${name} must be one of ${choices.join(', ')}; got "${text}"`);
  return text as T;
}

/** A size such as 8GiB, 512MiB or 1000000 (bytes). */
export function byteSize(flags: Flags, name: string): number | undefined {
  const text = flag(flags, name);
  if (text === undefined) return undefined;
  const match = /^(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB)?$/i.exec(text.trim());
  if (!match) throw new UsageError(`--${name} must be a size such as 8GiB or 512MiB; got "${text}"`);
  const units: Record<string, number> = { b: 1, kib: 2 ** 10, mib: 2 ** 20, gib: 2 ** 30, tib: 2 ** 40, kb: 1e3, mb: 1e6, gb: 1e9, tb: 1e12 };
  return Math.round(Number(match[1]) * units[(match[2] ?? 'b').toLowerCase()]!);
}

/** The model-loading flags of `run` and `serve`, with one meaning in both. */
export const LOAD_FLAGS = ['ctx', 'gpu', 'tp', 'pp', 'devices', 'gpu-memory', 'matmul', 'model-draft', 'draft-max', 'draft-min', 'draft-p-min', 'lookup-ngram', 'tokenizer'] as const;

/** Their short names. */
export const LOAD_ALIASES: Readonly<Record<string, string>> = { c: 'ctx', md: 'model-draft' };

/** Their usage lines, shown by both. */
export const LOAD_FLAGS_USAGE = `  -c, --ctx N                 context length to allocate (default: model's, at most 4096)
      --gpu dawn|deno         WebGPU implementation (default dawn; deno = Deno's built-in WebGPU)
      --tp N                  tensor-parallel shards (one worker and one GPU device each; default 1)
      --pp N                  pipeline stages (tp × pp shards in all; default 1)
      --devices N|LIST        the devices to run on: N devices of the default adapter, or adapter
                              names, comma-separated, one device each; with more than one and no
                              --tp/--pp, the split is chosen by measuring the all-reduce and the
                              kernels on them (loadModel's split: 'auto')
      --gpu-memory SIZE       memory budget per device for the shard planner, e.g. 8GiB or 512MiB
      --matmul KIND           matmul kernels: auto (default), int8 (int8 activations for Q4_0/Q8_0
                              weights, as llama.cpp's CPU path), or one variant forced everywhere
  -md, --model-draft PATH     speculative decoding: a smaller model of the same vocabulary drafts,
                              the model verifies (same output, fewer model steps)
      --draft-max N           most tokens drafted per step (default 16)
      --draft-min N           verify only drafts at least this long (default 0)
      --draft-p-min P         stop drafting below this draft probability (default 0.75)
      --lookup-ngram N        speculative decoding without a draft model: propose what followed the
                              last N tokens earlier in the prompt and output (prompt lookup)
      --tokenizer KIND        a Hugging Face folder's tokenizer.json read as llama.cpp reads its GGUF
                              (llama.cpp, default) or as Hugging Face's tokenizers do (huggingface:
                              NFC for Qwen, added tokens split out of plain text)`;

/** --gpu: which WebGPU implementation. */
export function gpuBackend(flags: Flags): GpuBackend {
  const gpu = flag(flags, 'gpu') ?? 'dawn';
  if (gpu !== 'dawn' && gpu !== 'deno') throw new UsageError(`--gpu must be "dawn" or "deno"; got "${gpu}"`);
  return gpu;
}

/** The loadModel options of the LOAD_FLAGS (callers add their own callbacks and limits). */
export function loadOptionsFromFlags(flags: Flags): LoadOptions {
  const backend = gpuBackend(flags);
  const devicesFlag = flag(flags, 'devices')?.trim();
  const count = devicesFlag !== undefined && /^\d+$/.test(devicesFlag) ? Number(devicesFlag) : undefined;
  if (count === 0) throw new UsageError('--devices must name at least one device; got 0');
  const adapterNames = count === undefined ? devicesFlag?.split(',').map((name) => name.trim()).filter(Boolean) : undefined;
  if (adapterNames?.length === 0) throw new UsageError(`--devices must be a count or adapter names; got "${devicesFlag}"`);
  const devices = count !== undefined ? Array.from({ length: count }, () => ({ backend })) : adapterNames?.map((adapterName) => ({ backend, adapterName }));
  const tp = numberFlag(flags, 'tp', { integer: true, min: 1 });
  const pp = numberFlag(flags, 'pp', { integer: true, min: 1 });
  const auto = devices !== undefined && devices.length > 1 && tp === undefined && pp === undefined;
  return {
    contextLength: numberFlag(flags, 'ctx', { integer: true, min: 1 }),
    gpu: { backend },
    ...(auto ? { split: 'auto' as const } : { tp, pp }),
    devices,
    gpuMemoryBytes: byteSize(flags, 'gpu-memory'),
    kernels: { matmul: choiceFlag(flags, 'matmul', MATMUL_VARIANTS) },
    speculative: speculativeFlags(flags),
    tokenizerSemantics: choiceFlag(flags, 'tokenizer', TOKENIZER_SEMANTICS),
  };
}

/** Speculative decoding options from -md/--model-draft, --draft-max, --draft-min, --draft-p-min, --lookup-ngram; undefined when off. */
function speculativeFlags(flags: Flags): SpeculativeOptions | undefined {
  const draftModel = flag(flags, 'model-draft');
  const lookupNgram = numberFlag(flags, 'lookup-ngram', { integer: true, min: 1 });
  const draftMax = numberFlag(flags, 'draft-max', { integer: true, min: 1 });
  const draftMin = numberFlag(flags, 'draft-min', { integer: true, min: 0 });
  const draftPMin = numberFlag(flags, 'draft-p-min', { min: 0 });
  if (draftPMin !== undefined && draftPMin > 1) throw new UsageError(`--draft-p-min must be a probability from 0 to 1; got "${flag(flags, 'draft-p-min')}"`);
  if (draftModel !== undefined && lookupNgram !== undefined) throw new UsageError('give either --model-draft (a draft model) or --lookup-ngram (prompt lookup), not both');
  if (draftModel === undefined && lookupNgram === undefined) {
    const stray = ['draft-max', 'draft-min', 'draft-p-min'].find((name) => flags.has(name));
    if (stray) throw new UsageError(`--${stray} needs --model-draft PATH or --lookup-ngram N`);
    return undefined;
  }
  return { draftModel, lookupNgram, draftMax, draftMin, draftPMin };
}
