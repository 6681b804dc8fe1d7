// A Hugging Face checkpoint as the engine's model file: the same `GGUFFile` shape a GGUF gives
// (metadata under GGUF's keys, a tensor table under GGUF's names), so config validation, the
// planner, the weight loader and the shard workers read a folder exactly as they read a GGUF.
//
// * Metadata: the keys llama.cpp's convert_hf_to_gguf.py writes from config.json (and the
//   tokenizer's from tokenizer.json, as gguf-py writes them), so `llamaConfig` gives the numbers
//   of the model's GGUF conversion.
// * Tensors: float weights (F32/F16/BF16) are the safetensors bytes where they lie: an HF Linear
//   [out, in] row-major is a ggml [in, out] tensor byte for byte. The checkpoint's files are laid
//   end to end as one address space (`joinedSource`), so a tensor-parallel shard reads only its
//   rows or columns, as from a GGUF.
// * AWQ/GPTQ layers are Q4_ZP tensors made at read time from qweight, qzeros and scales (bits
//   moved, no float made: src/model/awq-gptq.ts), only the rows or columns a read asks for (a
//   tensor-parallel shard repacks its own part; it still reads the whole packed layer, whose
//   rows are strided in AWQ/GPTQ packing), a few layers held at once; act-order layers carry
//   their column order (`inputOrder`), read from g_idx when the table is built.
// * Llama 3 rope scaling becomes the `rope_freqs.weight` tensor llama.cpp's converter writes.
// * RoPE: HF keeps Q/K rows in rotate_half order, where llama.cpp's converter permutes llama's
//   rows for interleaved RoPE. Rather than permute rows on the CPU, the model runs neox RoPE
//   (rotating dim i with i + d/2), which is the same rotation on the unpermuted rows; `openModel`
//   sets it (qwen2, qwen3 and phi3 are neox in GGUF too).
import { groupOrder, groupSizeOf, int4ToQ4Zp, readInt4Linear, type Int4Linear } from './awq-gptq.ts';
import { GGMLType } from './ggml-type.ts';
import { GGUFValueType, type GGUFFile, type GGUFTensorInfo, type GGUFValue } from './gguf.ts';
import { modelNameFromPath, type HfCheckpoint } from './folder.ts';
import { hfToGgufName, type HfModelConfig } from './hf-config.ts';
import { ModelFormatError } from './errors.ts';
import { readSafetensorsBytes, ggufView } from './safetensors.ts';
import { bytesSource, computedSource, joinedSource, type ByteSource, type JoinedPart } from './source.ts';
import type { VocabData } from './tokenizer.ts';

/** Checkpoint layers kept in memory at once: the loader reads a layer's rows in order, a few reads ahead. */
const LAYERS_KEPT = 4;

/** Bytes of a Q4_ZP weight: a 20-byte block per 32 columns of each row. */
const q4ZpBytes = (rows: number, cols: number): number => rows * (cols / 32) * 20;

/** The tokenizer metadata keys gguf-py writes for a vocabulary. */
function vocabMetadata(vocab: VocabData, chatTemplate: string | undefined): Array<[string, GGUFValue]> {
  const entries: Array<[string, GGUFValue]> = [
    ['tokenizer.ggml.model', vocab.model ?? 'llama'],
    ['tokenizer.ggml.tokens', vocab.tokens],
    ['tokenizer.ggml.scores', Float32Array.from(vocab.scores)],
    ['tokenizer.ggml.token_type', Int32Array.from(vocab.tokenTypes)],
    ['tokenizer.ggml.add_bos_token', vocab.addBos],
    ['tokenizer.ggml.add_eos_token', vocab.addEos],
    ['tokenizer.ggml.add_space_prefix', vocab.addSpacePrefix],
  ];
  if (vocab.merges) entries.push(['tokenizer.ggml.merges', [...vocab.merges]]);
  if (vocab.pre !== undefined) entries.push(['tokenizer.ggml.pre', vocab.pre]);
  for (const [key, id] of [['bos', vocab.bosId], ['eos', vocab.eosId], ['unknown', vocab.unkId]] as const) {
    if (id >= 0) entries.push([`tokenizer.ggml.${key}_token_id`, id]);
  }
  if (chatTemplate !== undefined) entries.push(['tokenizer.chat_template', chatTemplate]);
  return entries;
}

/** The model metadata keys convert_hf_to_gguf.py writes for these numbers. */
function modelMetadata(name: string, c: HfModelConfig): Array<[string, GGUFValue]> {
  const a = c.family;
  const entries: Array<[string, GGUFValue]> = [
    ['general.architecture', a],
    ['general.name', name],
    [`${a}.context_length`, c.contextLength],
    [`${a}.embedding_length`, c.dim],
    [`${a}.block_count`, c.nLayers],
    [`${a}.feed_forward_length`, c.ffnDim],
    [`${a}.attention.head_count`, c.nHeads],
    [`${a}.attention.head_count_kv`, c.nKvHeads],
    [`${a}.attention.key_length`, c.headDim],
    [`${a}.attention.value_length`, c.headDim],
    [`${a}.attention.layer_norm_rms_epsilon`, c.rmsEps],
    [`${a}.rope.freq_base`, c.ropeBase],
    [`${a}.rope.dimension_count`, c.ropeDims],
    [`${a}.vocab_size`, c.vocabSize],
  ];
  if (c.ropeScaling.type === 'linear') entries.push([`${a}.rope.scaling.type`, 'linear'], [`${a}.rope.scaling.factor`, c.ropeScaling.factor]);
  return entries;
}

/** GGUF's stored type of each value (for tools that print or rewrite metadata). */
function valueType(value: GGUFValue): GGUFValueType {
  if (typeof value === 'string') return GGUFValueType.STRING;
  if (typeof value === 'boolean') return GGUFValueType.BOOL;
  if (typeof value === 'number') return Number.isInteger(value) ? GGUFValueType.UINT32 : GGUFValueType.FLOAT32;
  return GGUFValueType.ARRAY;
}

/**
 * The model's name (GGUF general.name). It matters to the tokenizer as it does to llama.cpp's
 * (Phi-3's special tokens strip the whitespace after them by name): config.json's own name of the
 * model (`_name_or_path`), else the folder's.
 */
export function checkpointName({ files, folder }: Pick<HfCheckpoint, 'files' | 'folder'>): string {
  const nameOrPath = (files.config as Record<string, unknown>)._name_or_path;
  return modelNameFromPath(typeof nameOrPath === 'string' && nameOrPath.trim() !== '' ? nameOrPath : folder.name);
}

const Q4_ZP_BLOCK_BYTES = 20;

/**
 * One AWQ/GPTQ layer's Q4_ZP bytes, made for what each read asks, so a tensor-parallel shard
 * repacks only its part: whole rows (its output rows, or a load chunk of them), or a span of blocks
 * of one row (its input columns: made for every row at once, kept for the next rows' reads).
 */
class MadeInt4Layer {
  private columns?: { blocks: readonly [number, number]; bytes: Promise<Uint8Array> };

  constructor(
    private readonly layer: () => Promise<Int4Linear>,
    private readonly rows: number,
    private readonly blocks: number,
  ) {}

  async read(offset: number, length: number): Promise<Uint8Array> {
    const rowBytes = this.blocks * Q4_ZP_BLOCK_BYTES;
    const row = Math.floor(offset / rowBytes);
    if (offset % rowBytes === 0 && length % rowBytes === 0) {
      return int4ToQ4Zp(await this.layer(), { rows: [row, row + length / rowBytes], blocks: [0, this.blocks] }).bytes;
    }
    const within = offset - row * rowBytes;
    if (within % Q4_ZP_BLOCK_BYTES !== 0 || length % Q4_ZP_BLOCK_BYTES !== 0 || within + length > rowBytes) {
      throw new RangeError(`Q4_ZP reads are whole rows or whole blocks of one row; got ${length} bytes at ${offset} (rows of ${rowBytes})`);
    }
    const blocks = [within / Q4_ZP_BLOCK_BYTES, (within + length) / Q4_ZP_BLOCK_BYTES] as const;
    if (this.columns?.blocks[0] !== blocks[0] || this.columns.blocks[1] !== blocks[1]) {
      const bytes = this.layer().then((l) => int4ToQ4Zp(l, { rows: [0, this.rows], blocks }).bytes);
      bytes.catch(() => (this.columns = undefined));
      this.columns = { blocks, bytes };
    }
    return (await this.columns.bytes).slice(row * length, (row + 1) * length);
  }

  evict(): void {
    this.columns = undefined;
  }
}

export interface HfModelFileOptions {
  /** The vocabulary read from tokenizer.json (absent: the file has no tokenizer metadata, as a shard worker needs none). */
  vocab?: VocabData;
  chatTemplate?: string;
}

/**
 * The checkpoint as a `GGUFFile` whose source is its files laid end to end (plus the tensors made
 * from them). Reads GPTQ's g_idx (small); no other tensor data is read until the loader asks.
 */
export async function hfModelFile(checkpoint: HfCheckpoint, options: HfModelFileOptions = {}): Promise<GGUFFile> {
  const { config, tensors: model, folder } = checkpoint;
  const name = checkpointName(checkpoint);
  const parts: JoinedPart[] = model.files.map((file) => ({ source: file.source }));
  const offsetOf = new Map<ByteSource, number>();
  let end = 0;
  for (const part of parts) {
    offsetOf.set(part.source, end);
    end += part.source.size;
  }
  /** Adds a made part; returns its offset in the joined source. */
  const addPart = (source: ByteSource): number => {
    parts.push({ source, counted: false });
    const at = end;
    end += source.size;
    return at;
  };

  const table: GGUFTensorInfo[] = [];
  const quantized = new Set<string>();
  for (const t of model.tensors) {
    const gguf = hfToGgufName(t.name);
    if (gguf === undefined) continue;
    if (gguf.endsWith('.qweight')) quantized.add(t.name.slice(0, -'.qweight'.length));
    if (!gguf.endsWith('.weight') && !gguf.endsWith('.bias')) continue; // qweight, qzeros, scales, g_idx: below
    const view = ggufView(t, gguf);
    table.push({ name: gguf, shape: view.shape, type: view.type, offset: offsetOf.get(t.source)! + t.offset, byteLength: t.byteLength });
  }

  if (quantized.size > 0) {
    const q = config.quantization;
    if (!q) {
      const [prefix] = quantized;
      throw new ModelFormatError({
        file: `${folder.name}`,
        tensor: `${prefix}.qweight`,
        problem: `${prefix}.qweight is a quantized layer, but config.json has no quantization_config (and there is no quantize_config.json)`,
        fix: 'Download config.json (or quantize_config.json) of this checkpoint again',
      });
    }
    // Layers as read from the checkpoint, most recent last: a layer is read once while the loader
    // reads its Q4_ZP rows, and all are let go when the load is done (the source's evict).
    const layers = new Map<string, Promise<Int4Linear>>();
    const layerOf = (prefix: string) => (): Promise<Int4Linear> => {
      let layer = layers.get(prefix);
      if (layer) {
        layers.delete(prefix);
      } else {
        layer = readInt4Linear(model, prefix, q);
        layer.catch(() => layers.delete(prefix));
      }
      layers.set(prefix, layer);
      while (layers.size > LAYERS_KEPT) layers.delete(layers.keys().next().value!);
      return layer;
    };
    const orders: Promise<void>[] = []; // g_idx reads, all at once (many small ranges over HTTP)
    for (const prefix of quantized) {
      const gguf = hfToGgufName(`${prefix}.weight`)!;
      const qweight = model.tensor(`${prefix}.qweight`);
      const [inFeatures, outFeatures] = q.method === 'awq' ? [qweight.shape[0]!, qweight.shape[1]! * 8] : [qweight.shape[0]! * 8, qweight.shape[1]!];
      if (inFeatures % 32 !== 0) {
        throw new ModelFormatError({ file: qweight.source.name, tensor: qweight.name, problem: `${prefix} has ${inFeatures} input features, not a multiple of 32`, fix: 'Use a checkpoint quantized with group_size 32, 64 or 128' });
      }
      const byteLength = q4ZpBytes(outFeatures, inFeatures);
      const made = new MadeInt4Layer(layerOf(prefix), outFeatures, inFeatures / 32);
      const offset = addPart(computedSource(`${prefix} (Q4_ZP from ${q.method.toUpperCase()})`, byteLength, (at, length) => made.read(at, length), () => {
        layers.delete(prefix);
        made.evict();
      }));
      const entry: GGUFTensorInfo = { name: gguf, shape: [inFeatures, outFeatures], type: GGMLType.Q4_ZP, offset, byteLength };
      // g_idx is read whenever it is there (not only with desc_act): the layer is made in its group
      // order, so the table must carry that order too. A trivial g_idx (k // G) gives none.
      const gIdxName = `${prefix}.g_idx`;
      if (q.method === 'gptq' && model.hasTensor(gIdxName)) {
        orders.push(
          readSafetensorsBytes(model.tensor(gIdxName)).then((bytes) => {
            const gIdx = new Int32Array(bytes.slice().buffer);
            const order = groupOrder({ method: 'gptq', file: qweight.source.name, name: prefix, inFeatures, outFeatures, groupSize: groupSizeOf(q, inFeatures), gIdx, qweight: new Uint32Array(0), qzeros: new Uint32Array(0), scales: new Uint16Array(0) });
            if (order) entry.inputOrder = order;
          }),
        );
      }
      table.push(entry);
    }
    await Promise.all(orders);
  }

  if (config.ropeScaling.type === 'llama3') {
    const divisors = config.ropeScaling.divisors;
    const bytes = new Uint8Array(divisors.buffer, divisors.byteOffset, divisors.byteLength);
    table.push({ name: 'rope_freqs.weight', shape: [divisors.length], type: GGMLType.F32, offset: addPart(bytesSource(bytes, 'rope_freqs (from rope_scaling)')), byteLength: bytes.length });
  }

  const metadata = new Map<string, GGUFValue>([
    ...modelMetadata(name, config),
    ...(options.vocab ? vocabMetadata(options.vocab, options.chatTemplate) : []),
  ]);
  const metadataTypes = new Map([...metadata].map(([key, value]) => [key, valueType(value)]));
  const byName = new Map(table.map((t) => [t.name, t]));
  const source = joinedSource(folder.name, parts);
  return {
    source,
    version: 3,
    metadata,
    metadataTypes,
    tensors: table,
    tensor(tensorName: string): GGUFTensorInfo {
      const t = byName.get(tensorName);
      if (!t) {
        throw new ModelFormatError({ file: folder.name, tensor: tensorName, problem: `the checkpoint has no tensor for ${tensorName}`, fix: 'Check that the checkpoint matches its config.json (architecture and layer count)' });
      }
      return t;
    },
    hasTensor: (tensorName: string) => byName.has(tensorName),
    alignment: 1,
    dataOffset: 0,
  };
}
