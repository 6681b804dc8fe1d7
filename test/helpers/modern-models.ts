// The modern-family reference cases (../shared/models/reference/modern-public.json): llama.cpp's
// greedy tokens and first-position logits for llama3-, qwen2-, qwen3- and phi3-tiny. Missing
// models fail in CI through ./models.ts.
import { modelPath, referenceJson, type GenerationCase, type TokenizerCase } from './models.ts';

export interface ModernGenerationCase extends GenerationCase {
  /** Tokens that are safe to compare (see the models README, "How to use them"). */
  robust_prefix_len: number;
  parse_special: boolean;
  /** The messages a chat prompt was rendered from (chat cases only). */
  chat_messages?: Array<{ role: string; content: string }>;
}

export interface ModernTokenizerCase extends TokenizerCase {
  /** Hugging Face's tokenizer gave the same ids (null where the text has Phi-3 added tokens). */
  crosscheck_ids_equal?: boolean | null;
}

export interface ModernReference {
  models: Record<string, { file: string; tensor_type_counts: Record<string, number> }>;
  generation_cases: ModernGenerationCase[];
  tokenizer_cases: ModernTokenizerCase[];
}

export function modernReference(): ModernReference {
  return referenceJson<ModernReference>('modern-public.json');
}

/** The file of a modern reference model key such as "qwen3-tiny-q4_0". */
export function modernModelPath(key: string): string {
  const entry = modernReference().models[key];
  if (!entry) throw new Error(`no modern reference model ${key}`);
  return modelPath(entry.file);
}

/** Whether a model's matrices are quantized (its reference then emulates llama.cpp's int8 activations). */
export function isQuantized(key: string): boolean {
  return Object.keys(modernReference().models[key]!.tensor_type_counts).some((type) => type.startsWith('Q'));
}
