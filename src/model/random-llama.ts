// A deterministic random-weight Llama as a GGUF file, so the CLI, the demo and the benchmarks run
// with no model download. Weights are uniform with the spread of N(0, 0.02), norms are 1, and
// the vocabulary is a small but real SentencePiece-style one (specials, 256 byte tokens, letters
// and prefix-closed word pieces with BPE scores), so the tokenizer works on it like on Llama 2's.
//
// Tiny shapes come back as one Uint8Array (`randomLlamaGGUF`); real shapes (Llama-3.2-1B is
// 1.2 billion weights) stream row chunks to a sink (`writeRandomLlamaGGUF`) and never sit in
// memory at once.
import { seededRandom } from '../random.ts';
import { GGMLType, blockGeometry } from './ggml-type.ts';
import { ggufValue, writeGGUF, writeGGUFStream, type GGUFTypedValue, type GGUFWriteSpec, type TensorData } from './gguf-writer.ts';
import { quantize } from './quant.ts';

/** Weight types the generator writes (matrices; norms are always F32). */
export type RandomWeightType = typeof GGMLType.F32 | typeof GGMLType.F16 | typeof GGMLType.Q8_0 | typeof GGMLType.Q4_0;

export interface RandomLlamaShape {
  dim: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  ffnDim: number;
  /** Default: the size of the built-in vocabulary; larger sizes are padded with placeholder pieces. */
  vocabSize?: number;
  contextLength?: number;
  ropeBase?: number;
  rmsEps?: number;
  /** Type of the matrices (default F32). Rows that are not whole blocks fall back to F16, as llama.cpp does. */
  weightType?: RandomWeightType;
  /** Leave out `output.weight` so the logits reuse `token_embd.weight` (Llama 3.2 does). */
  tiedEmbeddings?: boolean;
}

/** The default: small enough for unit tests, GQA like real models. */
export const TINY_LLAMA_SHAPE: RandomLlamaShape = { dim: 64, nLayers: 2, nHeads: 4, nKvHeads: 2, ffnDim: 128 };

/** What the CLI and demo run when given no model. */
export const DEFAULT_RANDOM_LLAMA: RandomLlamaShape = TINY_LLAMA_SHAPE;

/** Llama-3.2-1B's shape (with this generator's vocabulary padded to its 128256 entries), for benchmarks. */
export const LLAMA_3_2_1B_SHAPE: RandomLlamaShape = {
  dim: 2048,
  nLayers: 16,
  nHeads: 32,
  nKvHeads: 8,
  ffnDim: 8192,
  vocabSize: 128256,
  contextLength: 131072,
  ropeBase: 500000,
  tiedEmbeddings: true,
};

// ---------------------------------------------------------------------------------------------
// Vocabulary

/** SentencePiece token types as llama.cpp stores them in `tokenizer.ggml.token_type`. */
export const TokenType = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

export interface RandomVocab {
  tokens: string[];
  scores: Float32Array;
  types: Int32Array;
}

const SPACE = '\u2581'; // ▁, SentencePiece's visible space

const CHARACTERS = [
  SPACE,
  ...'abcdefghijklmnopqrstuvwxyz',
  ...'ABCDEFGHIJKLMNOPQRSTUVWXYZ',
  ...'0123456789',
  ...'.,!?\'":;-()',
];

const WORDS = (
  'the a and to was he she it of in Once upon time there little girl boy day They said with her his had play went big ' +
  'happy saw friend One very mom dad is on for you that not so He She The but wanted tree dog cat sun park ball toy ' +
  'fun help look like loved named Lily Tim Ben were they be at all Sue bird home run can up made one see'
).split(' ');

const SUFFIXES = ['ing', 'ed', 'er', 'ly', 'es', 'en', 'an', 'in', 'on', 'th', 'he', 'ou', 're', 'at', 'st'];

/** Word pieces with every prefix present, shortest first, so SentencePiece BPE can reach each by merges. */
function wordPieces(): string[] {
  const pieces = new Set<string>();
  for (const piece of [...WORDS.map((word) => SPACE + word), ...SUFFIXES]) {
    for (let end = 2; end <= piece.length; end++) pieces.add(piece.slice(0, end));
  }
  return [...pieces].sort((a, b) => a.length - b.length);
}

/** The built-in vocabulary, padded with placeholder pieces (or cut, longest merges first) to `size`. */
export function randomLlamaVocab(size?: number): RandomVocab {
  const tokens: string[] = ['<unk>', '<s>', '</s>'];
  const types: number[] = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL];
  const scores: number[] = [0, 0, 0];
  for (let byte = 0; byte < 256; byte++) {
    tokens.push(`<0x${byte.toString(16).toUpperCase().padStart(2, '0')}>`);
    types.push(TokenType.BYTE);
    scores.push(0);
  }
  // Single characters are never the result of a merge: they get the lowest scores.
  CHARACTERS.forEach((character, i) => {
    tokens.push(character);
    types.push(TokenType.NORMAL);
    scores.push(-1000 - i);
  });
  // Merged pieces: a higher score merges first, like the merge rank of a trained BPE model.
  wordPieces().forEach((piece, rank) => {
    tokens.push(piece);
    types.push(TokenType.NORMAL);
    scores.push(-rank);
  });
  const target = size ?? tokens.length;
  if (target < 3 + 256 + CHARACTERS.length) {
    throw new RangeError(`vocabSize ${target} is too small: the vocabulary needs at least ${3 + 256 + CHARACTERS.length} tokens`);
  }
  for (let i = 0; tokens.length < target; i++) {
    tokens.push(`<extra_${i}>`); // never produced by tokenization: not reachable by merges
    types.push(TokenType.UNUSED);
    scores.push(-1e6);
  }
  tokens.length = types.length = scores.length = target;
  return { tokens, scores: Float32Array.from(scores), types: Int32Array.from(types) };
}

// ---------------------------------------------------------------------------------------------
// Weights

/** 32-bit string hash (FNV-1a), to give every tensor its own random stream. */
function hashName(name: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) hash = Math.imul(hash ^ name.charCodeAt(i), 0x01000193);
  return hash >>> 0;
}

/** Half-width of a uniform distribution with standard deviation 0.02. */
const UNIFORM_HALF_WIDTH = 0.02 * Math.sqrt(3);
/** Upper bound on the values generated (then encoded) at once. */
const CHUNK_VALUES = 1 << 22;

export interface WeightSpec {
  /** The GGUF name. */
  name: string;
  /** ggml order: shape[0] is the row length (the same bytes as Hugging Face's [out, in]). */
  shape: number[];
  type: GGMLType;
  /** Norm weights are all ones; everything else is random. */
  isNorm: boolean;
}

/**
 * Chunks of whole rows of one tensor's values (at most `chunkValues` each, or one row), before
 * encoding; the same values whatever the chunk size. The Hugging Face writer encodes them its way.
 */
export function* randomWeightValues(weight: Pick<WeightSpec, 'name' | 'shape' | 'isNorm'>, seed: number, chunkValues = CHUNK_VALUES): Generator<Float32Array> {
  const rowLength = weight.shape[0]!;
  const rows = weight.shape.slice(1).reduce((a, b) => a * b, 1);
  const rowsPerChunk = Math.max(1, Math.floor(chunkValues / rowLength));
  const random = seededRandom((hashName(weight.name) ^ Math.imul(seed, 0x9e3779b1)) >>> 0);
  for (let row = 0; row < rows; row += rowsPerChunk) {
    const values = new Float32Array(Math.min(rowsPerChunk, rows - row) * rowLength);
    if (weight.isNorm) values.fill(1);
    else for (let i = 0; i < values.length; i++) values[i] = (2 * random() - 1) * UNIFORM_HALF_WIDTH;
    yield values;
  }
}

/** Chunks of whole rows of one tensor's encoded bytes. */
function* weightChunks(weight: WeightSpec, seed: number): Generator<Uint8Array> {
  for (const values of randomWeightValues(weight, seed)) yield quantize(weight.type, values);
}

/** llama.cpp's fallback: a quantized type whose blocks do not tile a row becomes F16. */
function matrixType(wanted: GGMLType, rowLength: number): GGMLType {
  return rowLength % blockGeometry[wanted]!.blockSize === 0 ? wanted : GGMLType.F16;
}

/** The tensors of a random llama, in GGUF names and file order. */
export function weightSpecs(shape: Required<RandomLlamaShape>): WeightSpec[] {
  const { dim, ffnDim, vocabSize, weightType } = shape;
  const headDim = dim / shape.nHeads;
  const qDim = shape.nHeads * headDim;
  const kvDim = shape.nKvHeads * headDim;
  const norm = (name: string): WeightSpec => ({ name, shape: [dim], type: GGMLType.F32, isNorm: true });
  const matrix = (name: string, columns: number, rows: number): WeightSpec => ({
    name,
    shape: [columns, rows],
    type: matrixType(weightType, columns),
    isNorm: false,
  });
  const specs = [matrix('token_embd.weight', dim, vocabSize), norm('output_norm.weight')];
  if (!shape.tiedEmbeddings) specs.push(matrix('output.weight', dim, vocabSize));
  for (let layer = 0; layer < shape.nLayers; layer++) {
    const blk = `blk.${layer}.`;
    specs.push(
      norm(`${blk}attn_norm.weight`),
      matrix(`${blk}attn_q.weight`, dim, qDim),
      matrix(`${blk}attn_k.weight`, dim, kvDim),
      matrix(`${blk}attn_v.weight`, dim, kvDim),
      matrix(`${blk}attn_output.weight`, qDim, dim),
      norm(`${blk}ffn_norm.weight`),
      matrix(`${blk}ffn_gate.weight`, dim, ffnDim),
      matrix(`${blk}ffn_up.weight`, dim, ffnDim),
      matrix(`${blk}ffn_down.weight`, ffnDim, dim),
    );
  }
  return specs;
}

// ---------------------------------------------------------------------------------------------
// The file

/** llama.cpp's `general.file_type` (LLAMA_FTYPE_*) for a weight type. */
const FILE_TYPE: Record<RandomWeightType, number> = { [GGMLType.F32]: 0, [GGMLType.F16]: 1, [GGMLType.Q4_0]: 2, [GGMLType.Q8_0]: 7 };

/** The shape with every default filled in (and checked). */
export function completeShape(shape: Partial<RandomLlamaShape>): Required<RandomLlamaShape> {
  const full = {
    ...TINY_LLAMA_SHAPE,
    contextLength: 2048,
    ropeBase: 10000,
    rmsEps: 1e-5,
    weightType: GGMLType.F32,
    tiedEmbeddings: false,
    ...shape,
  };
  const vocabSize = full.vocabSize ?? randomLlamaVocab().tokens.length;
  if (full.dim % full.nHeads !== 0 || full.nHeads % full.nKvHeads !== 0) {
    throw new RangeError(`random llama: ${full.nHeads} heads must divide dim ${full.dim}, and ${full.nKvHeads} KV heads must divide the heads`);
  }
  return { ...full, vocabSize };
}

/** The GGUF spec (metadata and lazily generated tensor data) of a random llama. */
export function randomLlamaSpec(shape: Partial<RandomLlamaShape> = {}, seed = 1): GGUFWriteSpec<TensorData> {
  const full = completeShape(shape);
  const vocab = randomLlamaVocab(full.vocabSize);
  const metadata: Array<[string, GGUFTypedValue]> = [
    ['general.architecture', ggufValue.string('llama')],
    ['general.name', ggufValue.string(`webshard random llama (seed ${seed})`)],
    ['general.file_type', ggufValue.u32(FILE_TYPE[full.weightType])],
    ['llama.context_length', ggufValue.u32(full.contextLength)],
    ['llama.embedding_length', ggufValue.u32(full.dim)],
    ['llama.block_count', ggufValue.u32(full.nLayers)],
    ['llama.feed_forward_length', ggufValue.u32(full.ffnDim)],
    ['llama.attention.head_count', ggufValue.u32(full.nHeads)],
    ['llama.attention.head_count_kv', ggufValue.u32(full.nKvHeads)],
    ['llama.attention.layer_norm_rms_epsilon', ggufValue.f32(full.rmsEps)],
    ['llama.rope.dimension_count', ggufValue.u32(full.dim / full.nHeads)],
    ['llama.rope.freq_base', ggufValue.f32(full.ropeBase)],
    ['llama.vocab_size', ggufValue.u32(full.vocabSize)],
    ['tokenizer.ggml.model', ggufValue.string('llama')],
    ['tokenizer.ggml.tokens', ggufValue.array('string', vocab.tokens)],
    ['tokenizer.ggml.scores', ggufValue.array('f32', vocab.scores)],
    ['tokenizer.ggml.token_type', ggufValue.array('i32', vocab.types)],
    ['tokenizer.ggml.unknown_token_id', ggufValue.u32(0)],
    ['tokenizer.ggml.bos_token_id', ggufValue.u32(1)],
    ['tokenizer.ggml.eos_token_id', ggufValue.u32(2)],
    ['tokenizer.ggml.add_bos_token', ggufValue.bool(true)],
    ['tokenizer.ggml.add_eos_token', ggufValue.bool(false)],
  ];
  const tensors = weightSpecs(full).map((weight) => ({
    name: weight.name,
    shape: weight.shape,
    type: weight.type,
    data: () => weightChunks(weight, seed),
  }));
  return { metadata, tensors };
}

/** A random llama GGUF file in memory (tiny shapes; use `writeRandomLlamaGGUF` for big ones). */
export function randomLlamaGGUF(shape: Partial<RandomLlamaShape> = TINY_LLAMA_SHAPE, seed = 1): Uint8Array {
  const spec = randomLlamaSpec(shape, seed);
  const tensors = spec.tensors.map((tensor) => {
    const chunks = [...(tensor.data as () => Iterable<Uint8Array>)()];
    return { ...tensor, data: chunks.length === 1 ? chunks[0]! : concat(chunks) };
  });
  return writeGGUF({ ...spec, tensors });
}

/** Streams a random llama GGUF file to `sink` chunk by chunk (a 1B-parameter file is never one buffer). */
export async function writeRandomLlamaGGUF(
  shape: Partial<RandomLlamaShape>,
  seed: number,
  sink: (chunk: Uint8Array) => Promise<void> | void,
): Promise<void> {
  await writeGGUFStream(randomLlamaSpec(shape, seed), sink);
}

function concat(chunks: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((total, chunk) => total + chunk.length, 0));
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.length;
  }
  return out;
}
