// What a model says about itself, from its header alone (no GPU, no weights read): what
// `webshard info` prints and what `webshard tokenize` needs. A GGUF file or a Hugging Face folder.
import type { LlamaConfig } from '../model/config.ts';
import type { ModelInput } from '../model/folder.ts';
import { ggmlTypeName } from '../model/ggml-type.ts';
import type { GGUFValue } from '../model/gguf.ts';
import { openModel } from '../model/open-model.ts';
import type { EncodeOptions } from '../model/tokenizer.ts';

export interface ModelInfo {
  /** The source's name (file name, folder or URL). */
  name: string;
  /** 'gguf', or 'hf-folder' for a Hugging Face checkpoint (its metadata is what llama.cpp's converter would write). */
  format: 'gguf' | 'hf-folder';
  /** Bytes of the model's file, or of a folder's weights as the engine reads them. */
  sizeBytes: number;
  /** The GGUF version (3 for a folder, whose metadata follows GGUF v3's keys). */
  ggufVersion: number;
  config: LlamaConfig;
  /** Tensor count per ggml type name, e.g. Q4_0 → 43 (AWQ/GPTQ layers count as Q4_ZP). */
  tensorTypes: Map<string, number>;
  parameters: number;
  metadata: ReadonlyMap<string, GGUFValue>;
  /** Token ids of `text` as the model's tokenizer gives them (BOS prepended unless addBos is false). */
  tokenize(text: string, options?: EncodeOptions): number[];
}

/** Reads a model's header: its configuration, tensor types, metadata and tokenizer. */
export async function readModelInfo(source: ModelInput): Promise<ModelInfo> {
  const { format, file, config, tokenizer } = await openModel(source);
  try {
    const tensorTypes = new Map<string, number>();
    for (const t of file.tensors) tensorTypes.set(ggmlTypeName(t.type), (tensorTypes.get(ggmlTypeName(t.type)) ?? 0) + 1);
    return {
      name: file.source.name,
      format,
      sizeBytes: format === 'gguf' ? file.source.size : file.tensors.reduce((sum, t) => sum + t.byteLength, 0),
      ggufVersion: file.version,
      config,
      tensorTypes,
      parameters: file.tensors.reduce((sum, t) => sum + t.shape.reduce((a, b) => a * b, 1), 0),
      metadata: file.metadata,
      tokenize: (text, options) => tokenizer().encode(text, options),
    };
  } finally {
    await file.source.close();
  }
}
