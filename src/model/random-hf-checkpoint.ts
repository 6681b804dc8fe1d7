// A deterministic random-weight model as a Hugging Face folder: config.json, generation_config.json,
// tokenizer.json + tokenizer_config.json and safetensors weights (one file or N shards and an
// index), in F32, F16 or BF16, or 4-bit AWQ ("gemm") / GPTQ as AutoAWQ and AutoGPTQ write them.
// Benchmarks load it next to the GGUF of the same shape; tests read it back.
//
// It is the same model as src/model/random-llama.ts's GGUF of the same shape and seed: the same
// weight values (`randomWeightValues`), in HF names and [out, in] layout, with llama's Q/K rows in
// HF's rotate_half order (./rope-order.ts); so an F32 checkpoint is that GGUF's exact HF export, and
// the tokenizer.json written (the random vocabulary as a SentencePiece-converted BPE with byte
// fallback, as Llama 2's) gives the GGUF tokenizer's ids. A real tokenizer can be written instead
// (`tokenizer`), e.g. one read at run time from a model folder. AWQ/GPTQ layers are quantized from
// those values by round to nearest (awq-gptq.ts `quantizeInt4Codes`); embeddings, norms and the
// output head stay in the float dtype (F16 for quantized checkpoints, as the quantizers leave them).
import { actOrderGroupIndex, groupSizeOf, packInt4Linear, quantizeInt4Codes, type Int4Linear } from './awq-gptq.ts';
import { GGMLType } from './ggml-type.ts';
import { hfToGgufName } from './hf-config.ts';
import { quantize } from './quant.ts';
import { completeShape, randomLlamaVocab, randomWeightValues, TokenType, weightSpecs, type RandomLlamaShape, type RandomVocab, type WeightSpec } from './random-llama.ts';
import { seededRandom } from '../random.ts';
import { permuteRopeRows } from './rope-order.ts';
import { directoryTarget, safetensorsByteLength, shardSafetensors, writeShardedSafetensors, writeText, type FileTarget, type SafetensorsTensorSpec } from './safetensors-writer.ts';
import type { TensorData } from './gguf-writer.ts';

export type HfFloatDtype = 'F32' | 'F16' | 'BF16';

export interface RandomHfQuantization {
  method: 'awq' | 'gptq';
  /** A multiple of 32 dividing dim and FFN; GPTQ also -1 (one group over each layer's inputs). */
  groupSize: number;
  /** GPTQ act-order (a shuffled g_idx). */
  descAct?: boolean;
  /** GPTQ: symmetric (zero 8, the default) or a zero point per group; AWQ always has zero points. */
  sym?: boolean;
}

export interface RandomHfOptions {
  /** Dtype of the float tensors (default F32; quantized checkpoints default to F16, as AutoAWQ/AutoGPTQ save them). */
  dtype?: HfFloatDtype;
  quantization?: RandomHfQuantization;
  /** Weight files: 1 (model.safetensors, the default) or N shards and model.safetensors.index.json. */
  shards?: number;
  /** Default llama. qwen2 adds Q/K/V biases, qwen3 the per-head Q/K norms (their Q/K rows are not permuted: GGUF's are neox too). */
  architecture?: 'llama' | 'qwen2' | 'qwen3';
  seed?: number;
  /** tokenizer.json (and tokenizer_config.json) text to write instead of the random vocabulary's. */
  tokenizer?: { json: string; config?: string };
}

export interface WrittenHfCheckpoint {
  /** File names written, weights last. */
  files: string[];
  /** Bytes of all tensors (the index's total_size). */
  tensorBytes: number;
}

const ARCHITECTURES = { llama: 'LlamaForCausalLM', qwen2: 'Qwen2ForCausalLM', qwen3: 'Qwen3ForCausalLM' } as const;
const TORCH_DTYPE: Record<HfFloatDtype, string> = { F32: 'float32', F16: 'float16', BF16: 'bfloat16' };
const GGML_OF: Record<HfFloatDtype, GGMLType> = { F32: GGMLType.F32, F16: GGMLType.F16, BF16: GGMLType.BF16 };
const LINEARS = ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj', 'mlp.gate_proj', 'mlp.up_proj', 'mlp.down_proj'];

// ---------------------------------------------------------------------------------------------
// config.json and friends

function configJson(shape: Required<RandomLlamaShape>, options: RandomHfOptions, dtype: HfFloatDtype): Record<string, unknown> {
  const architecture = options.architecture ?? 'llama';
  const q = options.quantization;
  const quantizationConfig = !q
    ? undefined
    : q.method === 'awq'
      ? { bits: 4, group_size: q.groupSize, modules_to_not_convert: null, quant_method: 'awq', version: 'gemm', zero_point: true }
      : { bits: 4, checkpoint_format: 'gptq', damp_percent: 0.01, desc_act: q.descAct ?? false, group_size: q.groupSize, quant_method: 'gptq', static_groups: false, sym: q.sym ?? true, true_sequential: true };
  return {
    architectures: [ARCHITECTURES[architecture]],
    attention_bias: architecture === 'qwen2',
    bos_token_id: 1,
    eos_token_id: 2,
    head_dim: shape.dim / shape.nHeads,
    hidden_act: 'silu',
    hidden_size: shape.dim,
    initializer_range: 0.02,
    intermediate_size: shape.ffnDim,
    max_position_embeddings: shape.contextLength,
    model_type: architecture,
    num_attention_heads: shape.nHeads,
    num_hidden_layers: shape.nLayers,
    num_key_value_heads: shape.nKvHeads,
    ...(quantizationConfig ? { quantization_config: quantizationConfig } : {}),
    rms_norm_eps: shape.rmsEps,
    rope_scaling: null,
    rope_theta: shape.ropeBase,
    tie_word_embeddings: shape.tiedEmbeddings,
    torch_dtype: TORCH_DTYPE[dtype],
    use_cache: true,
    vocab_size: shape.vocabSize,
  };
}

const SPACE = '\u2581';

/**
 * The random vocabulary as a SentencePiece-converted tokenizer.json (Llama 2's form): its pieces
 * and bytes in `model.vocab`, the specials as added tokens, and for every piece each split into two
 * tokens as a merge, pieces in score order, as transformers' converter lists them (the reader ranks
 * a piece by its first merge, which keeps the scores' order). Placeholder ids past the real pieces
 * are left out: config.json's vocab_size pads them, as for real models.
 */
export function randomTokenizerJson(vocab: RandomVocab): { json: string; config: string } {
  const real = vocab.tokens.map((text, id) => ({ text, id, type: vocab.types[id]!, score: vocab.scores[id]! })).filter((t) => t.type !== TokenType.UNUSED);
  const specials = real.filter((t) => t.type === TokenType.CONTROL || t.type === TokenType.UNKNOWN);
  const inVocab = new Set(real.filter((t) => t.type === TokenType.NORMAL).map((t) => t.text));
  const merges: string[] = [];
  const pieces = real.filter((t) => t.type === TokenType.NORMAL && [...t.text].length > 1).sort((a, b) => b.score - a.score || a.id - b.id);
  for (const { text } of pieces) {
    const chars = [...text];
    for (let cut = 1; cut < chars.length; cut++) {
      const [left, right] = [chars.slice(0, cut).join(''), chars.slice(cut).join('')];
      if (inVocab.has(left) && inVocab.has(right)) merges.push(`${left} ${right}`);
    }
  }
  const added = specials.map((t) => ({ id: t.id, content: t.text, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }));
  const tokenizer = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: SPACE }, { type: 'Replace', pattern: { String: ' ' }, content: SPACE }] },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '<s>', type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: {
      type: 'Sequence',
      decoders: [{ type: 'Replace', pattern: { String: SPACE }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }, { type: 'Strip', content: ' ', start: 1, stop: 0 }],
    },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: '<unk>',
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab: Object.fromEntries(real.filter((t) => !specials.includes(t)).map((t) => [t.text, t.id])),
      merges,
    },
  };
  const config = { add_bos_token: true, add_eos_token: false, bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>', clean_up_tokenization_spaces: false, legacy: false, tokenizer_class: 'LlamaTokenizerFast' };
  return { json: JSON.stringify(tokenizer), config: JSON.stringify(config, null, 2) + '\n' };
}

// ---------------------------------------------------------------------------------------------
// Tensors

/** The tensors' HF names in state-dict order, each with the random weight it holds. */
function hfTensors(shape: Required<RandomLlamaShape>, architecture: RandomHfOptions['architecture']): Array<{ hf: string; weight: Pick<WeightSpec, 'name' | 'shape' | 'isNorm'> }> {
  const byName = new Map(weightSpecs(shape).map((w) => [w.name, w]));
  const headDim = shape.dim / shape.nHeads;
  const names = ['model.embed_tokens.weight'];
  for (let layer = 0; layer < shape.nLayers; layer++) {
    const prefix = `model.layers.${layer}.`;
    names.push(...LINEARS.slice(0, 4).map((m) => `${prefix}${m}.weight`));
    if (architecture === 'qwen2') names.push(...['q', 'k', 'v'].map((p) => `${prefix}self_attn.${p}_proj.bias`));
    if (architecture === 'qwen3') names.push(`${prefix}self_attn.q_norm.weight`, `${prefix}self_attn.k_norm.weight`);
    names.push(...LINEARS.slice(4).map((m) => `${prefix}${m}.weight`), `${prefix}input_layernorm.weight`, `${prefix}post_attention_layernorm.weight`);
  }
  names.push('model.norm.weight');
  if (!shape.tiedEmbeddings) names.push('lm_head.weight');
  return names.map((hf) => {
    const name = hfToGgufName(hf)!;
    const known = byName.get(name);
    if (known) return { hf, weight: known };
    // The parts a GGUF llama lacks: Qwen2's biases (random, as the weights) and Qwen3's Q/K norms (ones).
    const rows = /attn_q\./.test(name) ? shape.nHeads : shape.nKvHeads;
    return hf.endsWith('.bias') ? { hf, weight: { name, shape: [rows * headDim], isNorm: false } } : { hf, weight: { name, shape: [headDim], isNorm: true } };
  });
}

/** All of a weight's values at once (a layer matrix: ≤ 64 MB at 8B shapes), Q/K rows in HF order where GGUF's are permuted. */
function wholeValues(weight: Pick<WeightSpec, 'name' | 'shape' | 'isNorm'>, seed: number, permuteHeadDim?: number): Float32Array {
  const [values] = randomWeightValues(weight, seed, Infinity);
  return permuteHeadDim ? permuteRopeRows(values!, weight.shape[0]!, permuteHeadDim, false) : values!;
}

/** One layer's packed tensors, computed once when the first of them is written; qweight is dropped once written. */
function packedLayer(make: () => Int4Linear): (part: 'qweight' | 'qzeros' | 'scales' | 'g_idx') => Uint8Array {
  let layer: Int4Linear | undefined;
  return (part) => {
    layer ??= make();
    const array = part === 'g_idx' ? layer.gIdx! : layer[part];
    if (part === 'qweight') layer = { ...layer, qweight: new Uint32Array(0) };
    return new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
  };
}

function tensorSpecs(shape: Required<RandomLlamaShape>, options: RandomHfOptions, dtype: HfFloatDtype, seed: number): SafetensorsTensorSpec[] {
  const architecture = options.architecture ?? 'llama';
  const headDim = shape.dim / shape.nHeads;
  const q = options.quantization;
  const specs: SafetensorsTensorSpec[] = [];
  for (const { hf, weight } of hfTensors(shape, architecture)) {
    const hfShape = [...weight.shape].reverse();
    const permute = architecture === 'llama' && /\.(q|k)_proj\.weight$/.test(hf) ? headDim : undefined;
    const module = hf.slice(0, hf.lastIndexOf('.'));
    if (q && LINEARS.some((m) => module.endsWith(m))) {
      const [n, k] = hfShape as [number, number];
      const groupSize = groupSizeOf(q, k);
      const gIdx = q.method === 'gptq' ? (q.descAct ? actOrderGroupIndex(k, groupSize, seededRandom(seed + specs.length)) : new Int32Array(k).map((_, c) => Math.floor(c / groupSize))) : undefined;
      const part = packedLayer(() => {
        const codes = quantizeInt4Codes(wholeValues(weight, seed, permute), { method: q.method, inFeatures: k, outFeatures: n, groupSize, zeroPoint: q.method === 'awq' || q.sym === false, ...(gIdx ? { gIdx } : {}) });
        return packInt4Linear(codes, module);
      });
      const groups = k / groupSize;
      const lazy = (p: Parameters<typeof part>[0]): TensorData => () => [part(p)];
      specs.push(
        { name: `${module}.qweight`, dtype: 'I32', shape: q.method === 'awq' ? [k, n / 8] : [k / 8, n], data: lazy('qweight') },
        { name: `${module}.qzeros`, dtype: 'I32', shape: [groups, n / 8], data: lazy('qzeros') },
        { name: `${module}.scales`, dtype: 'F16', shape: [groups, n], data: lazy('scales') },
        ...(gIdx ? [{ name: `${module}.g_idx`, dtype: 'I32' as const, shape: [k], data: lazy('g_idx') }] : []),
      );
      continue;
    }
    const type = GGML_OF[dtype];
    const data: TensorData = permute ? () => [quantize(type, wholeValues(weight, seed, permute))] : function* () {
      for (const values of randomWeightValues(weight, seed)) yield quantize(type, values);
    };
    specs.push({ name: hf, dtype, shape: hfShape, data });
  }
  return specs;
}

/**
 * Writes a random model of `shape` as a Hugging Face folder to `target` (a local directory path in
 * Node/Deno, or a FileTarget such as `memoryTarget()`). Weights stream file by file; only one
 * layer's values are in memory at a time (plus the quantized layers' scales until they are written).
 */
export async function writeRandomHfCheckpoint(target: FileTarget | string, shape: Partial<RandomLlamaShape> = {}, options: RandomHfOptions = {}): Promise<WrittenHfCheckpoint> {
  const full = completeShape(shape);
  const files = typeof target === 'string' ? directoryTarget(target) : target;
  const seed = options.seed ?? 1;
  const dtype = options.dtype ?? (options.quantization ? 'F16' : 'F32');
  const q = options.quantization;
  const perChannel = q?.method === 'gptq' && q.groupSize === -1;
  if (q && !perChannel && (q.groupSize % 32 !== 0 || full.dim % q.groupSize !== 0 || full.ffnDim % q.groupSize !== 0)) {
    throw new RangeError(`random checkpoint: group size ${q.groupSize} must be a multiple of 32 dividing dim ${full.dim} and FFN ${full.ffnDim} (or -1 for GPTQ)`);
  }
  const tokenizer = options.tokenizer ?? randomTokenizerJson(randomLlamaVocab(full.vocabSize));
  await writeText(files, 'config.json', JSON.stringify(configJson(full, options, dtype), null, 2) + '\n');
  await writeText(files, 'generation_config.json', JSON.stringify({ bos_token_id: 1, eos_token_id: 2 }, null, 2) + '\n');
  await writeText(files, 'tokenizer.json', tokenizer.json);
  const written = ['config.json', 'generation_config.json', 'tokenizer.json'];
  if (tokenizer.config !== undefined) {
    await writeText(files, 'tokenizer_config.json', tokenizer.config);
    written.push('tokenizer_config.json');
  }
  const sharded = shardSafetensors(tensorSpecs(full, options, dtype, seed), options.shards ?? 1);
  written.push(...(await writeShardedSafetensors(files, sharded)));
  const tensorBytes = sharded.shards.flatMap((s) => s.spec.tensors).reduce((sum, t) => sum + safetensorsByteLength(t.dtype, t.shape), 0);
  return { files: written, tensorBytes };
}
