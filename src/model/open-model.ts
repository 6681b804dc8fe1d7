// Opening a model, whatever the user handed us: a GGUF file (path, URL, Blob, bytes) or a Hugging
// Face folder (a directory, a base URL ending in '/', picked or dropped Files). Both become the
// same three things, read by the rest of the engine without knowing which it was: a `GGUFFile`
// (metadata and a tensor table over a byte source), its `LlamaConfig`, and a tokenizer.
import { llamaConfig, validateLlamaTensors, type LlamaConfig, type TensorCheckTerms } from './config.ts';
import { ModelSourceError } from './errors.ts';
import { detectModelSource, openHfCheckpoint, type FileCollection, type HfCheckpoint, type ModelInput } from './folder.ts';
import { readGGUF, type GGUFFile } from './gguf.ts';
import { checkpointName, hfModelFile } from './hf-checkpoint.ts';
import { ggufToHfName } from './hf-config.ts';
import { parseJson } from './json.ts';
import { openSource } from './source.ts';
import { LlamaTokenizer, vocabFromTokenizerJson, type TokenizerJsonVocab, type TokenizerSemantics } from './tokenizer.ts';

/** What a shard worker can open by itself (structured-cloneable): a path or URL (file or folder), a Blob, bytes, or a folder's Files. */
export type ShardableSource = string | Blob | Uint8Array | File[];

export interface OpenModelOptions {
  /** Read the tokenizer (a folder's tokenizer.json). Default true; a shard worker needs none. */
  tokenizer?: boolean;
  /**
   * A Hugging Face folder's tokenizer: 'llama.cpp' (default) gives the ids of the model's GGUF
   * conversion, 'huggingface' those of Hugging Face's tokenizers where they differ (NFC, added
   * tokens in plain text; see src/model/tokenizer/hf-json.ts).
   */
  tokenizerSemantics?: TokenizerSemantics;
  /** Sent with every request of a URL folder (e.g. an Authorization header for a gated model). */
  headers?: Record<string, string>;
}

export interface OpenedModel {
  /** 'gguf' for a GGUF file, 'hf-folder' for a Hugging Face checkpoint. */
  format: 'gguf' | 'hf-folder';
  /** Metadata and tensor table; `file.source` reads the weights (closing it closes every file). */
  file: GGUFFile;
  config: LlamaConfig;
  /** The model's tokenizer (built on first use; absent when opened with `tokenizer: false` from a folder). */
  tokenizer(): LlamaTokenizer;
}

/** Opens a model's header (and a folder's side files): no weights are read. */
export async function openModel(input: ModelInput, options: OpenModelOptions = {}): Promise<OpenedModel> {
  const detected = await detectModelSource(input, { headers: options.headers });
  if (detected.kind === 'gguf') {
    const source = await openSource(detected.source, { headers: options.headers });
    try {
      const file = await readGGUF(source);
      const config = llamaConfig(file);
      validateLlamaTensors(file, config);
      let tokenizer: LlamaTokenizer | undefined;
      return { format: 'gguf', file, config, tokenizer: () => (tokenizer ??= LlamaTokenizer.fromGGUFMetadata(file.metadata, { file: source.name })) };
    } catch (error) {
      await source.close();
      throw error;
    }
  }
  const checkpoint = await openHfCheckpoint(detected.folder);
  try {
    const tokenizerJson = options.tokenizer === false ? undefined : await readTokenizerJson(checkpoint, options.tokenizerSemantics);
    const file = await hfModelFile(checkpoint, tokenizerJson ? { vocab: tokenizerJson.vocab, chatTemplate: tokenizerJson.chatTemplate } : {});
    const gguf = llamaConfig(file);
    // HF's Q/K rows are in rotate_half order: neox RoPE on them is llama.cpp's RoPE on its permuted rows.
    const config: LlamaConfig = { ...gguf, family: { ...gguf.family, ropeStyle: 'neox' } };
    validateLlamaTensors(file, config, hfTensorTerms(checkpoint, config));
    let tokenizer: LlamaTokenizer | undefined;
    return {
      format: 'hf-folder',
      file,
      config,
      tokenizer: () => {
        if (!tokenizerJson) throw new Error(`${checkpoint.folder.name} was opened without its tokenizer`);
        return (tokenizer ??= LlamaTokenizer.fromTokenizerJsonVocab(tokenizerJson));
      },
    };
  } catch (error) {
    await checkpoint.close();
    throw error;
  }
}

/**
 * validateLlamaTensors' errors in the folder's own terms: HF tensor names, [out, in] shapes, and
 * config.json's numbers as what implies them.
 */
function hfTensorTerms({ config: hf }: HfCheckpoint, config: LlamaConfig): TensorCheckTerms {
  const described = `config.json (${hf.architecture}: hidden_size ${hf.dim}, ${hf.nLayers} layers, ${hf.nHeads} heads, ${hf.nKvHeads} KV heads, head_dim ${hf.headDim}, intermediate_size ${hf.ffnDim}, vocab_size ${hf.vocabSize})`;
  const fix = 'The weights and config.json are from different models or revisions: download the checkpoint again, all files from one revision';
  const hfName = (name: string) => ggufToHfName(name, { fusedGateUp: config.family.fusedGateUp });
  const hfShape = (shape: readonly number[]) => `[${[...shape].reverse().join(', ')}]`;
  return {
    missing: (name, expected) => ({ tensor: hfName(name), problem: `tensor ${hfName(name)} is missing: ${described} needs it with shape ${hfShape(expected)}`, fix }),
    wrongShape: (name, found, expected) => ({ tensor: hfName(name), problem: `tensor ${hfName(name)} has shape ${hfShape(found)}, but ${described} implies ${hfShape(expected)}`, fix }),
  };
}

/** A folder's tokenizer.json (+ tokenizer_config.json), read as gguf-py would convert it. */
async function readTokenizerJson(checkpoint: HfCheckpoint, semantics: TokenizerSemantics | undefined): Promise<TokenizerJsonVocab> {
  const { folder, config, files } = checkpoint;
  if (!(await folder.has('tokenizer.json'))) {
    throw new ModelSourceError(
      folder.name,
      `no tokenizer.json in ${folder.name}: webshard reads a Hugging Face folder's tokenizer from tokenizer.json (the "fast" tokenizer file); ` +
        'download it with the model (or save it with transformers: AutoTokenizer.from_pretrained(...).save_pretrained(folder))',
    );
  }
  const path = `${folder.name.replace(/\/$/, '')}/tokenizer.json`;
  const json = parseJson(path, await folder.readText('tokenizer.json'), 'tokenizer.json', 'Download tokenizer.json again');
  const raw = files.config as Record<string, unknown>;
  // As gguf-py's SpecialVocab: config.json's ids where the tokenizer files name no such token (a list is no id).
  const read = vocabFromTokenizerJson(json, files.tokenizerConfig, {
    file: path,
    vocabSize: config.vocabSize,
    bosTokenId: raw.bos_token_id,
    eosTokenId: raw.eos_token_id,
    ...(semantics ? { semantics } : {}),
  });
  // The model's name, as the GGUF's general.name (the tokenizer reads Phi-3 special-token rules from it);
  // generation_config.json's end tokens end a generation too, as in transformers and vLLM.
  return { ...read, vocab: { ...read.vocab, modelName: checkpointName(checkpoint), endOfGenerationIds: config.eosTokenIds } };
}

/** The part of a model input that a shard worker can open again by itself, or undefined. */
export function shardableSource(input: ModelInput): ShardableSource | undefined {
  if (input instanceof URL) return input.href;
  // Bytes would be copied into every worker; a Blob is shared (each shard reads its own slices).
  if (input instanceof Uint8Array) return new Blob([input as Uint8Array<ArrayBuffer>]);
  if (typeof input === 'string' || (typeof Blob !== 'undefined' && input instanceof Blob)) return input;
  if (Array.isArray(input) || (typeof FileList !== 'undefined' && input instanceof FileList)) return Array.from(input as FileCollection);
  return undefined;
}
