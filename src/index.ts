// webshard's public API.
export { loadModel, Model, type Completion, type HealthReport, type LoadOptions, type LoadProgressEvent, type ModelStats, type SpeculativeOptions } from './api/model.ts';
export type { ChatOptions } from './api/model.ts';
export { ChatTemplate, ChatTemplateError, MissingChatTemplateError, type ChatMessage, type ChatRenderOptions } from './api/chat.ts';
export { UnsupportedPreTokenizerError, UnsupportedTokenizerError } from './model/tokenizer.ts';
export type { FinishReason, GeneratedToken, GenerateOptions, GenerationResult } from './engine/generate.ts';
export type { SpeculationCounts } from './engine/speculative.ts';
export { InvalidOptionError, type SamplingOptions } from './engine/sampler.ts';
export { ContextOverflowError } from './engine/runner.ts';
export { requestGpu, describeAdapters, GpuUnavailableError, type GpuBackend, type GpuContext, type GpuOptions } from './gpu/device.ts';
export { ModelFormatError, ModelSourceError, UnsupportedModelError } from './model/errors.ts';
export type { LlamaConfig } from './model/config.ts';
export type { ByteSource } from './model/source.ts';
export { ShardError, ShardGroupStoppedError, ShardTimeoutError } from './sharding/errors.ts';
export { ShardPlanError, type ShardPlan, type ShardSpec } from './sharding/plan.ts';
export type { DeviceStats } from './engine/forward-engine.ts';
export { FAULT_KINDS, FaultInjector, type Fault, type FaultKind } from './engine/faults.ts';
export { KV_BLOCK_SIZE } from './engine/kv-cache.ts';
export type { Range, ShardView } from './engine/shard-view.ts';
export { QueueFullError } from './engine/scheduler.ts';
export { readModelInfo, type ModelInfo } from './api/model-info.ts';
export type { ModelSource } from './model/source.ts';
export { detectModelSource, filesFolder, localFolder, modelNameFromPath, urlFolder, type FileCollection, type ModelFolder, type ModelInput, type UrlFolderOptions } from './model/folder.ts';
export { TOKENIZER_SEMANTICS, type TokenizerSemantics } from './model/tokenizer.ts';
export { tokenLogprobs, type TokenAlternative, type TokenLogprob } from './engine/sampler.ts';
export type { LlamaTokenizer } from './model/tokenizer.ts';
export type { KernelChoice } from './engine/llama.ts';
/** The matmul kernel choices of `LoadOptions.kernels.matmul`. */
export { MATMUL_VARIANTS, type MatmulVariant } from './shaders/matmul.ts';
/** webshard's built-in demo model: a deterministic random-weight Llama written as GGUF bytes. */
export { randomLlamaGGUF, DEFAULT_RANDOM_LLAMA, type RandomLlamaShape } from './model/random-llama.ts';
