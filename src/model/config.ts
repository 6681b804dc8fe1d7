// Hyper-parameters of a decoder-only model, from GGUF metadata (keys prefixed by the architecture,
// e.g. `llama.block_count`), the family's description (what its blocks add to llama's, read by the
// one forward pass in src/engine/llama.ts), and a check that the tensor table has every weight
// with the shape the hyper-parameters imply, so a mismatched file fails at load time with names,
// not mid-forward.
import { ModelFormatError, UnsupportedModelError } from './errors.ts';
import { getArchitecture, getF32, getString, getU32, type GGUFFile } from './gguf.ts';

/**
 * How a family's blocks differ from llama's, as llama.cpp's graph builders (llm_build_llama,
 * llm_build_qwen2, llm_build_qwen3, llm_build_phi3) differ. Every family: RMSNorm before
 * attention and FFN, a SwiGLU FFN (silu(gate) ⊙ up), residual adds, a final RMSNorm and output head.
 */
export interface FamilyDescription {
  /**
   * RoPE pairs: 'normal' rotates adjacent dims (2i, 2i+1), as llama's GGUF Q/K rows are permuted
   * for; 'neox' rotates dim i with i + ropeDims/2 (the halves), as Qwen and Phi-3 are stored.
   */
  ropeStyle: 'normal' | 'neox';
  /** Q, K and V add a bias after the projection (`attn_{q,k,v}.bias`: Qwen2). */
  qkvBias: boolean;
  /** RMSNorm over each head of Q and of K, before RoPE, with one weight per head dim (`attn_{q,k}_norm`: Qwen3). */
  qkNorm: boolean;
  /** Q, K and V in one tensor `attn_qkv` (rows: q, then k, then v: Phi-3). */
  fusedQkv: boolean;
  /** Gate and up in one tensor `ffn_up` (rows: gate, then up: Phi-3). */
  fusedGateUp: boolean;
}

const LLAMA_BLOCKS: FamilyDescription = { ropeStyle: 'normal', qkvBias: false, qkNorm: false, fusedQkv: false, fusedGateUp: false };

/** The supported `general.architecture` values and their descriptions. */
export const FAMILIES: Readonly<Record<string, FamilyDescription>> = {
  llama: LLAMA_BLOCKS,
  qwen2: { ...LLAMA_BLOCKS, ropeStyle: 'neox', qkvBias: true },
  qwen3: { ...LLAMA_BLOCKS, ropeStyle: 'neox', qkNorm: true },
  phi3: { ...LLAMA_BLOCKS, ropeStyle: 'neox', fusedQkv: true, fusedGateUp: true },
};

/** Architectures that run through the one forward pass. */
export const SUPPORTED_ARCHITECTURES: readonly string[] = Object.keys(FAMILIES);

export type RopeScaling = { type: 'none' } | { type: 'linear'; /** positions are divided by this */ factor: number };

export interface LlamaConfig {
  architecture: string;
  /** What this architecture's blocks add to llama's (from FAMILIES; biases also where a llama file has them). */
  family: FamilyDescription;
  vocabSize: number;
  /** Embedding width (`embedding_length`). */
  dim: number;
  nLayers: number;
  nHeads: number;
  /** Key/value heads (< nHeads with grouped-query attention). */
  nKvHeads: number;
  headDim: number;
  /** Hidden width of the SwiGLU feed-forward block. */
  ffnDim: number;
  rmsEps: number;
  ropeBase: number;
  ropeScaling: RopeScaling;
  /** Leading dimensions of each head that rope rotates (the rest pass through). */
  ropeDims: number;
  /** Per-frequency divisors for rope (Llama 3.1+ "llama3" scaling), stored as this tensor when present. */
  ropeFreqsTensor?: string;
  contextLength: number;
  /** True when there is no `output.weight`: the logits reuse `token_embd.weight`. */
  tiedEmbeddings: boolean;
  bosTokenId?: number;
  eosTokenId?: number;
  unkTokenId?: number;
}

/** What positions are divided by before rope (1 without scaling; the factor for linear scaling). */
export function ropePositionScale(config: LlamaConfig): number {
  return config.ropeScaling.type === 'linear' ? config.ropeScaling.factor : 1;
}

function configError(file: GGUFFile, field: string, problem: string, fix: string): ModelFormatError {
  return new ModelFormatError({ file: file.source.name, field, problem, fix });
}

function optionalTokenId(file: GGUFFile, key: string): number | undefined {
  if (!file.metadata.has(key)) return undefined;
  const id = getU32(file, key);
  return id === 0xffffffff ? undefined : id; // converters write -1 (as u32) for "none"
}

function readVocabSize(file: GGUFFile, prefix: string): number {
  if (file.metadata.has(`${prefix}.vocab_size`)) return getU32(file, `${prefix}.vocab_size`);
  const tokens = file.metadata.get('tokenizer.ggml.tokens');
  if (Array.isArray(tokens)) return tokens.length;
  if (file.hasTensor('token_embd.weight')) return file.tensor('token_embd.weight').shape[1] ?? 1;
  throw configError(file, `${prefix}.vocab_size`, 'the vocabulary size is unknown (no vocab_size, no tokenizer.ggml.tokens, no token_embd.weight)', 'Re-convert the model with a current llama.cpp');
}

function readRopeScaling(file: GGUFFile, prefix: string): RopeScaling {
  const typeKey = `${prefix}.rope.scaling.type`;
  const factorKey = `${prefix}.rope.scaling.factor`;
  // Old converters wrote only `rope.scale_linear`.
  const type = getString(file, typeKey, file.metadata.has(`${prefix}.rope.scale_linear`) ? 'linear' : 'none');
  if (type === 'none') return { type: 'none' };
  if (type === 'linear') {
    const factor = getF32(file, factorKey, getF32(file, `${prefix}.rope.scale_linear`, 1));
    if (!(factor > 0)) throw configError(file, factorKey, `linear rope scaling factor is ${factor}`, 'The factor must be positive; fix the metadata');
    return factor === 1 ? { type: 'none' } : { type: 'linear', factor };
  }
  throw new UnsupportedModelError({
    file: file.source.name,
    field: typeKey,
    problem: `rope scaling type "${type}" is not supported yet (supported: none, linear)`,
    fix: 'Use a model without long-context rope scaling, or a webshard version that implements it',
  });
}

/** The family's description; refuses architectures it does not know and features it does not run. */
function readFamily(file: GGUFFile, architecture: string): FamilyDescription {
  const family = FAMILIES[architecture];
  if (!family) {
    throw new UnsupportedModelError({
      file: file.source.name,
      field: 'general.architecture',
      problem: `architecture "${architecture}" is not supported (supported: ${SUPPORTED_ARCHITECTURES.join(', ')})`,
      fix: 'Use a Llama (1/2/3.x, TinyLlama, Mistral 7B, SmolLM, ...), Qwen2/Qwen2.5, Qwen3 or Phi-3 model',
    });
  }
  // Phi-3's 128k-context files rotate with per-frequency "LongRoPE" factors chosen by context
  // (and scale attention): silently dropping them would give wrong logits.
  for (const tensor of ['rope_factors_long.weight', 'rope_factors_short.weight']) {
    if (file.hasTensor(tensor)) {
      throw new UnsupportedModelError({
        file: file.source.name,
        tensor,
        problem: `${tensor}: LongRoPE scaling (Phi-3 128k-context models) is not supported yet`,
        fix: 'Use the 4k-context version of the model (e.g. Phi-3-mini-4k-instruct)',
      });
    }
  }
  // llama.cpp's llama graph adds Q/K/V biases where a llama-architecture file has them.
  return family.qkvBias || !file.hasTensor('blk.0.attn_q.bias') ? family : { ...family, qkvBias: true };
}

/** Reads a model's configuration; throws ModelFormatError naming any missing or invalid key. */
export function llamaConfig(file: GGUFFile): LlamaConfig {
  const architecture = getArchitecture(file);
  const family = readFamily(file, architecture);
  const p = architecture;
  const dim = getU32(file, `${p}.embedding_length`);
  const nHeads = getU32(file, `${p}.attention.head_count`);
  const nKvHeads = getU32(file, `${p}.attention.head_count_kv`, nHeads);
  if (nHeads === 0 || dim % nHeads !== 0 && !file.metadata.has(`${p}.attention.key_length`)) {
    throw configError(file, `${p}.attention.head_count`, `${nHeads} heads do not divide the embedding width ${dim}`, 'Fix the metadata or set attention.key_length');
  }
  if (nKvHeads === 0 || nHeads % nKvHeads !== 0) {
    throw configError(file, `${p}.attention.head_count_kv`, `${nKvHeads} KV heads do not divide ${nHeads} query heads`, 'Fix the metadata');
  }
  const headDim = getU32(file, `${p}.attention.key_length`, dim / nHeads);
  const valueDim = getU32(file, `${p}.attention.value_length`, headDim);
  if (valueDim !== headDim) {
    throw new UnsupportedModelError({
      file: file.source.name,
      field: `${p}.attention.value_length`,
      problem: `value head size ${valueDim} differs from key head size ${headDim}`,
      fix: 'Such models are not supported yet',
    });
  }
  const ropeDims = getU32(file, `${p}.rope.dimension_count`, headDim);
  if (ropeDims > headDim || ropeDims % 2 !== 0) {
    throw configError(file, `${p}.rope.dimension_count`, `rope over ${ropeDims} dims does not fit heads of ${headDim}`, 'Fix the metadata');
  }
  // Every layer has at least two norm weights and its projections: a block_count beyond the
  // tensor table is a corrupt header, refused before anything iterates over the layers.
  const nLayers = getU32(file, `${p}.block_count`);
  if (nLayers === 0 || nLayers > file.tensors.length) {
    throw configError(file, `${p}.block_count`, `${nLayers} layers, but the file has ${file.tensors.length} tensors`, 'The header is corrupt or does not belong to these weights; re-convert the model');
  }
  return {
    architecture,
    family,
    vocabSize: readVocabSize(file, p),
    dim,
    nLayers,
    nHeads,
    nKvHeads,
    headDim,
    ffnDim: getU32(file, `${p}.feed_forward_length`),
    rmsEps: getF32(file, `${p}.attention.layer_norm_rms_epsilon`),
    ropeBase: getF32(file, `${p}.rope.freq_base`, 10000),
    ropeScaling: readRopeScaling(file, p),
    ropeDims,
    ropeFreqsTensor: file.hasTensor('rope_freqs.weight') ? 'rope_freqs.weight' : undefined,
    contextLength: getU32(file, `${p}.context_length`),
    tiedEmbeddings: !file.hasTensor('output.weight'),
    bosTokenId: optionalTokenId(file, 'tokenizer.ggml.bos_token_id'),
    eosTokenId: optionalTokenId(file, 'tokenizer.ggml.eos_token_id'),
    unkTokenId: optionalTokenId(file, 'tokenizer.ggml.unknown_token_id'),
  };
}

/** Tensor names and ggml shapes (shape[0] = row length) that a config implies, for its family. */
export function expectedLlamaTensors(config: LlamaConfig): Map<string, number[]> {
  const { family } = config;
  const { dim, vocabSize, ffnDim } = config;
  const qDim = config.nHeads * config.headDim;
  const kvDim = config.nKvHeads * config.headDim;
  const expected = new Map<string, number[]>([
    ['token_embd.weight', [dim, vocabSize]],
    ['output_norm.weight', [dim]],
  ]);
  if (!config.tiedEmbeddings) expected.set('output.weight', [dim, vocabSize]);
  if (config.ropeFreqsTensor) expected.set(config.ropeFreqsTensor, [config.ropeDims / 2]);
  for (let layer = 0; layer < config.nLayers; layer++) {
    const block = (name: string, shape: number[], kind = 'weight') => expected.set(`blk.${layer}.${name}.${kind}`, shape);
    block('attn_norm', [dim]);
    if (family.fusedQkv) {
      block('attn_qkv', [dim, qDim + 2 * kvDim]);
    } else {
      block('attn_q', [dim, qDim]);
      block('attn_k', [dim, kvDim]);
      block('attn_v', [dim, kvDim]);
    }
    if (family.qkvBias) {
      block('attn_q', [qDim], 'bias');
      block('attn_k', [kvDim], 'bias');
      block('attn_v', [kvDim], 'bias');
    }
    if (family.qkNorm) {
      block('attn_q_norm', [config.headDim]);
      block('attn_k_norm', [config.headDim]);
    }
    block('attn_output', [qDim, dim]);
    block('ffn_norm', [dim]);
    if (family.fusedGateUp) {
      block('ffn_up', [dim, 2 * ffnDim]);
    } else {
      block('ffn_gate', [dim, ffnDim]);
      block('ffn_up', [dim, ffnDim]);
    }
    block('ffn_down', [ffnDim, dim]);
  }
  return expected;
}

/** Drops trailing 1s, which writers may or may not store ([64, 1] and [64] are the same tensor). */
function canonicalShape(shape: readonly number[]): number[] {
  const trimmed = [...shape];
  while (trimmed.length > 1 && trimmed.at(-1) === 1) trimmed.pop();
  return trimmed;
}

/** Whether two ggml shapes are the same tensor shape (trailing 1s aside). */
function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return canonicalShape(a).join() === canonicalShape(b).join();
}

/** What a tensor-table error says: the tensor at fault (in the model's own naming), the problem, the fix. */
type TensorProblem = { tensor: string; problem: string; fix: string };

/**
 * How `validateLlamaTensors` words its errors, given GGUF names and ggml shapes: a GGUF's terms by
 * default; a Hugging Face folder says them in its own (src/model/open-model.ts).
 */
export interface TensorCheckTerms {
  missing(name: string, expected: readonly number[]): TensorProblem;
  wrongShape(name: string, found: readonly number[], expected: readonly number[]): TensorProblem;
}

const GGUF_TERMS: TensorCheckTerms = {
  missing: (name, expected) => ({
    tensor: name,
    problem: `tensor ${name} is missing (expected shape [${expected.join(', ')}])`,
    fix: 'The model is incomplete or its metadata does not match its weights; re-convert it',
  }),
  wrongShape: (name, found, expected) => ({
    tensor: name,
    problem: `tensor ${name} has shape [${found.join(', ')}], expected [${expected.join(', ')}] from the metadata`,
    fix: 'The metadata does not match the weights; re-convert the model',
  }),
};

/** Checks every tensor the config needs is present with the implied shape; throws naming the first that is not. */
export function validateLlamaTensors(file: GGUFFile, config: LlamaConfig, terms: TensorCheckTerms = GGUF_TERMS): void {
  for (const [name, shape] of expectedLlamaTensors(config)) {
    if (!file.hasTensor(name)) throw new ModelFormatError({ file: file.source.name, ...terms.missing(name, shape) });
    const found = file.tensor(name).shape;
    if (!sameShape(found, shape)) throw new ModelFormatError({ file: file.source.name, ...terms.wrongShape(name, found, shape) });
  }
}
