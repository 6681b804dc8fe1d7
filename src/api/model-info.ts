// What a model file says about itself, from its header alone (no GPU, no weights read): what
// `webshard info` prints and what `webshard tokenize` needs.
import { llamaConfig, type LlamaConfig } from '../model/config.ts';
import { ggmlTypeName } from '../model/ggml-type.ts';
import { readGGUF, type GGUFValue } from '../model/gguf.ts';
import { openSource, type ModelSource } from '../model/source.ts';
import { LlamaTokenizer, type EncodeOptions } from '../model/tokenizer.ts';

export interface ModelInfo {
  /** The source's name (file name or URL). */
  name: string;
  sizeBytes: number;
  ggufVersion: number;
  config: LlamaConfig;
  /** Tensor count per ggml type name, e.g. Q4_0 → 43. */
  tensorTypes: Map<string, number>;
  parameters: number;
  metadata: ReadonlyMap<string, GGUFValue>;
  /** Token ids of `text` as the model's tokenizer gives them (BOS prepended unless addBos is false). */
  tokenize(text: string, options?: EncodeOptions): number[];
}

/** Reads a model's header: its configuration, tensor types, metadata and tokenizer. */
export async function readModelInfo(source: ModelSource): Promise<ModelInfo> {
  const bytes = await openSource(source);
  try {
    const file = await readGGUF(bytes);
    const config = llamaConfig(file);
    const tensorTypes = new Map<string, number>();
    for (const t of file.tensors) tensorTypes.set(ggmlTypeName(t.type), (tensorTypes.get(ggmlTypeName(t.type)) ?? 0) + 1);
    let tokenizer: LlamaTokenizer | undefined; // built on first use: `info` never needs it
    return {
      name: bytes.name,
      sizeBytes: bytes.size,
      ggufVersion: file.version,
      config,
      tensorTypes,
      parameters: file.tensors.reduce((sum, t) => sum + t.shape.reduce((a, b) => a * b, 1), 0),
      metadata: file.metadata,
      tokenize: (text, options) => (tokenizer ??= LlamaTokenizer.fromGGUFMetadata(file.metadata)).encode(text, options),
    };
  } finally {
    await bytes.close();
  }
}
