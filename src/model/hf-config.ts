// Hugging Face `config.json` (+ `generation_config.json`, and `quantization_config` or
// `quantize_config.json`) mapped to the hyper-parameters the engine uses (the numbers of
// LlamaConfig in src/model/config.ts), and HF tensor names mapped to GGUF's.
//
// RoPE order. Hugging Face's attention rotates pairs (i, i + headDim/2) of each head
// (`rotate_half`): NeoX-style RoPE. llama.cpp's converter permutes the Q and K rows of llama models
// so that GGUF files use the interleaved pairs (2i, 2i + 1) instead. A safetensors checkpoint is
// read as it is, so its Q/K rows are in rotate_half order, and the plan is to run it with the neox
// RoPE kernel (src/shaders/rope.ts `style: 'neox'`) rather than permute weights on the CPU (which
// would also break reading a tensor-parallel shard's rows by byte range). So every mapped config
// says `ropeStyle: 'neox'`, the llama one included. (Permuting back is a reordering of rows within
// each head: gguf row h·d + 2i + j = hf row h·d + j·d/2 + i, for i < d/2, j ∈ {0, 1}.)
import type { LlamaConfig } from './config.ts';
import { ModelFormatError, UnsupportedModelError } from './errors.ts';
import { isJsonObject } from './json.ts';

/** config.json `architectures` webshard reads, and the family (model_type) each is. */
export const HF_ARCHITECTURES = {
  LlamaForCausalLM: 'llama',
  Qwen2ForCausalLM: 'qwen2',
  Qwen3ForCausalLM: 'qwen3',
  Phi3ForCausalLM: 'phi3',
  // llama.cpp converts Mistral (7B v0.1–v0.3) as llama: the same blocks (its sliding window is not used).
  MistralForCausalLM: 'llama',
} as const;

export type HfArchitecture = keyof typeof HF_ARCHITECTURES;
export type HfFamily = (typeof HF_ARCHITECTURES)[HfArchitecture];

export type HfRopeScaling =
  | { type: 'none' }
  /** Positions are divided by `factor`. */
  | { type: 'linear'; factor: number }
  /** Llama 3.1+: each frequency i is divided by `divisors[i]` (GGUF's rope_freqs tensor). */
  | { type: 'llama3'; factor: number; lowFreqFactor: number; highFreqFactor: number; originalContextLength: number; divisors: Float32Array };

export interface HfQuantization {
  method: 'awq' | 'gptq';
  bits: 4;
  /** Input features per group; -1 = one group over all of a layer's input features. */
  groupSize: number;
  /** Asymmetric (a zero point per group): AWQ's zero_point, GPTQ's !sym. */
  zeroPoint: boolean;
  /** GPTQ act-order: g_idx is a permutation of the groups (see src/model/awq-gptq.ts). */
  descAct: boolean;
  /** AWQ: "gemm"; GPTQ: "gptq" (v1, stored zero − 1) or "gptq_v2". */
  checkpointFormat: string;
  /** Module names left unquantized (AWQ's modules_to_not_convert). */
  modulesNotConverted: string[];
  /** GPTQModel's lm_head: whether the output projection is quantized too. */
  lmHead: boolean;
}

/** The engine's numbers (LlamaConfig's, same meaning) plus what only an HF folder says. */
export interface HfModelConfig
  extends Pick<LlamaConfig, 'vocabSize' | 'dim' | 'nLayers' | 'nHeads' | 'nKvHeads' | 'headDim' | 'ffnDim' | 'rmsEps' | 'ropeBase' | 'ropeDims' | 'contextLength' | 'tiedEmbeddings'> {
  architecture: HfArchitecture;
  family: HfFamily;
  /** A superset of LlamaConfig's: llama3 carries its per-frequency divisors (GGUF's rope_freqs tensor). */
  ropeScaling: HfRopeScaling;
  /** Always 'neox' for HF checkpoints: their Q/K rows are in rotate_half order (see the top of this file). */
  ropeStyle: 'neox';
  /** Q/K/V projections carry biases (Qwen2; or attention_bias). */
  attentionBias: boolean;
  /** Q and K are RMS-normalized per head before RoPE (Qwen3). */
  qkNorm: boolean;
  bosTokenId?: number;
  /** End-of-generation ids: generation_config.json's, else config.json's. */
  eosTokenIds: number[];
  /** config.json torch_dtype (e.g. "bfloat16"), for messages. */
  dtype?: string;
  quantization?: HfQuantization;
}

export interface HfConfigFiles {
  /** For messages: the folder or config.json path. */
  file: string;
  config: unknown;
  generationConfig?: unknown;
  /** quantize_config.json (AutoGPTQ's side file), if there is one. */
  quantizeConfig?: unknown;
}


class Fields {
  constructor(
    readonly file: string,
    readonly record: Record<string, unknown>,
    readonly prefix = '',
  ) {}

  error(field: string, problem: string, fix = 'Fix config.json or download it again'): ModelFormatError {
    return new ModelFormatError({ file: this.file, field: this.prefix + field, problem: `${this.prefix + field} ${problem}`, fix });
  }

  has(field: string): boolean {
    return this.record[field] !== undefined && this.record[field] !== null;
  }

  number(field: string, fallback?: number, check: (v: number) => boolean = Number.isFinite): number {
    const value = this.record[field];
    if (value === undefined || value === null) {
      if (fallback !== undefined) return fallback;
      throw this.error(field, 'is missing');
    }
    if (typeof value !== 'number' || !check(value)) throw this.error(field, `is ${JSON.stringify(value)}, not a valid number here`);
    return value;
  }

  count(field: string, fallback?: number): number {
    return this.number(field, fallback, (v) => Number.isSafeInteger(v) && v > 0);
  }

  boolean(field: string, fallback: boolean): boolean {
    const value = this.record[field];
    if (value === undefined || value === null) return fallback;
    if (typeof value !== 'boolean') throw this.error(field, `is ${JSON.stringify(value)}, not true or false`);
    return value;
  }

  string(field: string, fallback: string): string {
    const value = this.record[field];
    if (value === undefined || value === null) return fallback;
    if (typeof value !== 'string') throw this.error(field, `is ${JSON.stringify(value)}, not a string`);
    return value;
  }

  /** A token id or a list of them (eos_token_id is either). */
  ids(field: string): number[] | undefined {
    const value = this.record[field];
    if (value === undefined || value === null) return undefined;
    const list = Array.isArray(value) ? value : [value];
    if (!list.every((id) => Number.isSafeInteger(id) && id >= 0)) throw this.error(field, `is ${JSON.stringify(value)}, not a token id or a list of them`);
    return list as number[];
  }
}

function readArchitecture(f: Fields): HfArchitecture {
  const architectures = f.record.architectures;
  const supported = Object.keys(HF_ARCHITECTURES).join(', ');
  const names = Array.isArray(architectures) ? architectures.filter((a): a is string => typeof a === 'string') : [];
  const known = names.find((a): a is HfArchitecture => a in HF_ARCHITECTURES);
  if (known) return known;
  // No architectures list: the model_type alone decides, as transformers' AutoModelForCausalLM does.
  const modelType = f.string('model_type', '');
  const byType = (Object.keys(HF_ARCHITECTURES) as HfArchitecture[]).find((a) => HF_ARCHITECTURES[a] === modelType);
  if (names.length === 0 && byType) return byType;
  throw new UnsupportedModelError({
    file: f.file,
    field: names.length > 0 ? 'architectures' : 'model_type',
    problem: `architecture ${names.length > 0 ? names.join(', ') : `model_type "${modelType}"`} is not supported (supported: ${supported})`,
    fix: 'Use a checkpoint of a supported architecture, or convert it to GGUF with llama.cpp if its architecture is llama-like',
  });
}

const fround = Math.fround;

/**
 * Llama 3's per-frequency divisors, computed as llama.cpp's convert_hf_to_gguf.py does (in
 * float32, as torch does): 1 for wavelengths under original/highFreqFactor, `factor` over
 * original/lowFreqFactor, and a smooth blend between.
 */
export function llama3RopeDivisors(base: number, dims: number, s: { factor: number; lowFreqFactor: number; highFreqFactor: number; originalContextLength: number }): Float32Array {
  const lowWavelength = s.originalContextLength / s.lowFreqFactor;
  const highWavelength = s.originalContextLength / s.highFreqFactor;
  const divisors = new Float32Array(dims / 2);
  for (let i = 0; i < dims / 2; i++) {
    const freq = fround(1 / fround(Math.pow(base, fround((2 * i) / dims))));
    const wavelength = fround((2 * Math.PI) / freq);
    if (wavelength < highWavelength) divisors[i] = 1;
    else if (wavelength > lowWavelength) divisors[i] = s.factor;
    else {
      const smooth = fround(fround(fround(s.originalContextLength / wavelength) - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor));
      divisors[i] = fround(1 / fround(fround(fround(1 - smooth) / s.factor) + smooth));
    }
  }
  return divisors;
}

function readRopeScaling(f: Fields, base: number, ropeDims: number): HfRopeScaling {
  const scaling = f.record.rope_scaling;
  if (scaling === undefined || scaling === null) return { type: 'none' };
  if (!isJsonObject(scaling)) throw f.error('rope_scaling', `is ${JSON.stringify(scaling)}, not an object or null`);
  const s = new Fields(f.file, scaling, 'rope_scaling.');
  const type = s.string('rope_type', s.string('type', 'default'));
  if (type === 'default') return { type: 'none' };
  const factor = s.number('factor', undefined, (v) => v > 0);
  if (type === 'linear') return factor === 1 ? { type: 'none' } : { type: 'linear', factor };
  if (type === 'llama3') {
    const params = {
      factor,
      lowFreqFactor: s.number('low_freq_factor', 1, (v) => v > 0),
      highFreqFactor: s.number('high_freq_factor', 4, (v) => v > 0),
      originalContextLength: s.count('original_max_position_embeddings', 8192),
    };
    if (params.highFreqFactor <= params.lowFreqFactor) throw s.error('high_freq_factor', `(${params.highFreqFactor}) must exceed low_freq_factor (${params.lowFreqFactor})`);
    return { type: 'llama3', ...params, divisors: llama3RopeDivisors(base, ropeDims, params) };
  }
  throw new UnsupportedModelError({
    file: f.file,
    field: 'rope_scaling.rope_type',
    problem: `rope scaling type "${type}" is not supported yet (supported: default, linear, llama3)`,
    fix: 'Use a checkpoint without this long-context rope scaling, or set rope_scaling to null to run it at its original context length',
  });
}

function readQuantization(file: string, config: Record<string, unknown>, side: unknown): HfQuantization | undefined {
  const inConfig = config.quantization_config;
  const record = isJsonObject(inConfig) ? inConfig : isJsonObject(side) ? side : undefined;
  if (!record) return undefined;
  const q = new Fields(file, record, isJsonObject(inConfig) ? 'quantization_config.' : 'quantize_config.json ');
  const method = q.string('quant_method', isJsonObject(side) ? 'gptq' : '');
  const unsupported = (field: string, problem: string) =>
    new UnsupportedModelError({ file, field: q.prefix + field, problem, fix: 'Use a 4-bit AWQ (gemm) or GPTQ checkpoint, or an unquantized one' });
  if (method !== 'awq' && method !== 'gptq') throw unsupported('quant_method', `quantization method "${method}" is not supported (supported: awq, gptq)`);
  const bits = method === 'awq' ? q.count('bits', q.count('w_bit', 4)) : q.count('bits');
  if (bits !== 4) throw unsupported('bits', `${bits}-bit ${method.toUpperCase()} is not supported (only 4-bit)`);
  const groupSize = method === 'awq' ? q.number('group_size', q.number('q_group_size', 128)) : q.number('group_size');
  // -1: one group over all input features (per-channel scales), as GPTQ writes it.
  if (groupSize !== -1 && (!Number.isSafeInteger(groupSize) || groupSize < 32 || groupSize % 32 !== 0)) {
    throw unsupported('group_size', `group size ${groupSize} is not supported (a multiple of 32, e.g. 32, 64 or 128, or -1 for one group per row)`);
  }
  if (method === 'awq') {
    const version = q.string('version', 'gemm').toLowerCase();
    if (version !== 'gemm') throw unsupported('version', `AWQ version "${version}" is not supported (only gemm, the packing vLLM reads)`);
    const notConverted = record.modules_to_not_convert;
    return {
      method,
      bits: 4,
      groupSize,
      zeroPoint: q.boolean('zero_point', true),
      descAct: false,
      checkpointFormat: 'gemm',
      modulesNotConverted: Array.isArray(notConverted) ? notConverted.filter((m): m is string => typeof m === 'string') : [],
      lmHead: false,
    };
  }
  const checkpointFormat = q.string('checkpoint_format', 'gptq');
  if (checkpointFormat !== 'gptq' && checkpointFormat !== 'gptq_v2') throw unsupported('checkpoint_format', `GPTQ checkpoint_format "${checkpointFormat}" is not supported (supported: gptq, gptq_v2)`);
  return {
    method,
    bits: 4,
    groupSize,
    zeroPoint: !q.boolean('sym', true),
    descAct: q.boolean('desc_act', false),
    checkpointFormat,
    modulesNotConverted: [],
    lmHead: q.boolean('lm_head', false),
  };
}

/** Maps config.json (and its side files) to the engine's hyper-parameters; refuses what it cannot run, naming the field. */
export function readHfConfig(files: HfConfigFiles): HfModelConfig {
  if (!isJsonObject(files.config)) throw new ModelFormatError({ file: files.file, problem: 'config.json is not a JSON object', fix: 'Download config.json again' });
  const f = new Fields(files.file, files.config);
  const architecture = readArchitecture(f);
  const family = HF_ARCHITECTURES[architecture];
  const dim = f.count('hidden_size');
  const nHeads = f.count('num_attention_heads');
  const nKvHeads = f.count('num_key_value_heads', nHeads);
  if (nHeads % nKvHeads !== 0) throw f.error('num_key_value_heads', `(${nKvHeads}) does not divide num_attention_heads (${nHeads})`);
  const headDim = f.count('head_dim', dim / nHeads);
  if (!f.has('head_dim') && dim % nHeads !== 0) throw f.error('hidden_size', `(${dim}) is not a multiple of num_attention_heads (${nHeads}) and there is no head_dim`);
  const rotary = f.number('partial_rotary_factor', 1, (v) => v > 0 && v <= 1);
  const ropeDims = Math.round(headDim * rotary);
  if (ropeDims % 2 !== 0) throw f.error('partial_rotary_factor', `rotates ${ropeDims} of ${headDim} dimensions, an odd number`);
  const ropeBase = fround(f.number('rope_theta', 10000, (v) => v > 0));
  const activation = f.string('hidden_act', 'silu');
  if (activation !== 'silu') {
    throw new UnsupportedModelError({ file: files.file, field: 'hidden_act', problem: `activation "${activation}" is not supported (only silu, SwiGLU's)`, fix: 'Use a checkpoint of a supported architecture' });
  }
  const generation = isJsonObject(files.generationConfig) ? new Fields(files.file, files.generationConfig, 'generation_config.') : undefined;
  const bosTokenId = (generation?.ids('bos_token_id') ?? f.ids('bos_token_id'))?.[0];
  return {
    architecture,
    family,
    vocabSize: f.count('vocab_size'),
    dim,
    nLayers: f.count('num_hidden_layers'),
    nHeads,
    nKvHeads,
    headDim,
    ffnDim: f.count('intermediate_size'),
    // f32, as GGUF stores it and the kernels use it: the same numbers as the model's GGUF conversion.
    rmsEps: fround(f.number('rms_norm_eps', 1e-6, (v) => v > 0)),
    ropeBase,
    ropeScaling: readRopeScaling(f, ropeBase, ropeDims),
    ropeDims,
    ropeStyle: 'neox',
    contextLength: f.count('max_position_embeddings', 2048),
    tiedEmbeddings: f.boolean('tie_word_embeddings', false),
    attentionBias: family === 'qwen2' || f.boolean('attention_bias', false), // Qwen2 always has Q/K/V biases
    qkNorm: family === 'qwen3',
    ...(bosTokenId !== undefined ? { bosTokenId } : {}),
    eosTokenIds: generation?.ids('eos_token_id') ?? f.ids('eos_token_id') ?? [],
    ...(f.has('torch_dtype') ? { dtype: f.string('torch_dtype', '') } : {}),
    ...((q) => (q ? { quantization: q } : {}))(readQuantization(files.file, files.config, files.quantizeConfig)),
  };
}

// ---------------------------------------------------------------------------------------------
// Tensor names

/** HF module path within a layer → GGUF tensor within a block. */
const LAYER_MODULES: Record<string, string> = {
  input_layernorm: 'attn_norm',
  post_attention_layernorm: 'ffn_norm',
  'self_attn.q_proj': 'attn_q',
  'self_attn.k_proj': 'attn_k',
  'self_attn.v_proj': 'attn_v',
  'self_attn.o_proj': 'attn_output',
  'self_attn.qkv_proj': 'attn_qkv', // Phi-3: Q, K and V stacked
  'self_attn.q_norm': 'attn_q_norm', // Qwen3
  'self_attn.k_norm': 'attn_k_norm',
  'mlp.gate_proj': 'ffn_gate',
  'mlp.up_proj': 'ffn_up',
  'mlp.down_proj': 'ffn_down',
  'mlp.gate_up_proj': 'ffn_up', // Phi-3: gate and up stacked, as llama.cpp keeps them
};

const TOP_MODULES: Record<string, string> = {
  'model.embed_tokens': 'token_embd',
  'model.norm': 'output_norm',
  lm_head: 'output',
};

/** The parts a module's tensors can have: float weights and biases, and AWQ/GPTQ's packed tensors. */
const PARTS = ['weight', 'bias', 'qweight', 'qzeros', 'scales', 'g_idx'] as const;

/**
 * The GGUF name of an HF tensor (model.layers.3.self_attn.q_proj.weight → blk.3.attn_q.weight;
 * AWQ/GPTQ parts keep their suffix: ….q_proj.qweight → blk.3.attn_q.qweight), or undefined for
 * tensors the engine does not use (e.g. old checkpoints' rotary_emb.inv_freq).
 */
export function hfToGgufName(name: string): string | undefined {
  const dot = name.lastIndexOf('.');
  const [module, part] = [name.slice(0, dot), name.slice(dot + 1)];
  if (!(PARTS as readonly string[]).includes(part)) return undefined;
  const top = TOP_MODULES[module];
  if (top) return `${top}.${part}`;
  const match = /^model\.layers\.(\d+)\.(.+)$/.exec(module);
  const mapped = match ? LAYER_MODULES[match[2]!] : undefined;
  return mapped ? `blk.${match![1]}.${mapped}.${part}` : undefined;
}

/** GGUF tensor within a block → HF module path, the inverse of LAYER_MODULES (fused Phi-3 names where asked). */
function hfModuleOf(ggufModule: string, fusedGateUp: boolean): string | undefined {
  if (ggufModule === 'ffn_up' && fusedGateUp) return 'mlp.gate_up_proj';
  return Object.keys(LAYER_MODULES).find((module) => LAYER_MODULES[module] === ggufModule);
}

/**
 * The HF name of a GGUF tensor name (blk.3.attn_q.weight → model.layers.3.self_attn.q_proj.weight),
 * for messages about a folder; `fusedGateUp` for Phi-3's gate_up_proj. The name itself if unknown.
 */
export function ggufToHfName(name: string, options: { fusedGateUp?: boolean } = {}): string {
  const dot = name.lastIndexOf('.');
  const [module, part] = [name.slice(0, dot), name.slice(dot + 1)];
  const top = Object.keys(TOP_MODULES).find((m) => TOP_MODULES[m] === module);
  if (top) return `${top}.${part}`;
  const match = /^blk\.(\d+)\.(.+)$/.exec(module);
  const hf = match ? hfModuleOf(match[2]!, options.fusedGateUp ?? false) : undefined;
  return hf ? `model.layers.${match![1]}.${hf}.${part}` : name;
}
