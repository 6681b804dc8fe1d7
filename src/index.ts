// webshard's public API.
export { loadModel, Model, type Completion, type HealthReport, type LoadOptions, type LoadProgressEvent, type ModelStats } from './api/model.ts';
export type { FinishReason, GeneratedToken, GenerateOptions } from './engine/generate.ts';
export { InvalidOptionError, type SamplingOptions } from './engine/sampler.ts';
export { ContextOverflowError } from './engine/runner.ts';
export { requestGpu, describeAdapters, GpuUnavailableError, type GpuBackend, type GpuContext, type GpuOptions } from './gpu/device.ts';
export { ModelFormatError, ModelSourceError, UnsupportedModelError } from './model/errors.ts';
export type { LlamaConfig } from './model/config.ts';
export type { ByteSource } from './model/source.ts';
export { ShardError, ShardGroupStoppedError, ShardTimeoutError } from './sharding/errors.ts';
export { ShardPlanError, type ShardPlan, type ShardSpec } from './sharding/plan.ts';
export type { DeviceStats } from './engine/forward-engine.ts';
export { FaultInjector, type Fault, type FaultKind } from './engine/faults.ts';
export type { Range, ShardView } from './engine/shard-view.ts';
export { QueueFullError } from './engine/scheduler.ts';
