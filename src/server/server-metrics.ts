// The server's metrics, by name. Latency buckets span a fast GPU (milliseconds) to a software
// adapter under load (tens of seconds).

import { KV_BLOCK_SIZE } from '../index.ts';
import { MetricsRegistry, renderNumericFields, type Counter, type Histogram } from './metrics.ts';

export type CancelReason = 'client_disconnect' | 'deadline' | 'shutdown';

export interface MetricSources {
  queued(): number;
  running(): number;
  ready(): boolean;
  /** The engine's `stats()`, or undefined before the model is loaded. */
  engineStats(): object | undefined;
}

/** The fields of `model.stats()` that named metrics read (others appear as webshard_engine_*). */
interface EngineNumbers {
  waiting?: number;
  kvBlocksUsed?: number;
  kvBlocksFree?: number;
  group?: { recoveries: number; lastRecoverySeconds: number };
  speculative?: { drafted: number; accepted: number };
}

export class ServerMetrics {
  readonly registry = new MetricsRegistry();
  readonly requests: Counter;
  readonly cancelled: Counter;
  readonly promptTokens: Counter;
  readonly generationTokens: Counter;
  readonly timeToFirstToken: Histogram;
  readonly timePerOutputToken: Histogram;
  readonly requestLatency: Histogram;

  constructor(sources: MetricSources) {
    const r = this.registry;
    this.requests = r.counter('webshard_requests_total', 'HTTP requests by endpoint and final status (a stream counts when it ends).');
    this.cancelled = r.counter('webshard_requests_cancelled_total', 'Generation requests cancelled before they finished, by reason.');
    this.promptTokens = r.counter('webshard_prompt_tokens_total', 'Prompt tokens prefilled.');
    this.generationTokens = r.counter('webshard_generation_tokens_total', 'Tokens generated.');
    this.timeToFirstToken = r.histogram(
      'webshard_time_to_first_token_seconds',
      'From request arrival (queueing included) to the first generated token.',
      [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    );
    this.timePerOutputToken = r.histogram(
      'webshard_time_per_output_token_seconds',
      'Mean time between generated tokens, per sequence.',
      [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    );
    this.requestLatency = r.histogram(
      'webshard_e2e_request_latency_seconds',
      'From request arrival to the last byte of a successful generation request.',
      [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300],
    );
    r.gauge('webshard_queue_depth', 'Sequences waiting for a place in the engine.', sources.queued);
    r.gauge('webshard_sequences_running', 'Sequences handed to the engine and not yet finished.', sources.running);
    r.gauge('webshard_model_ready', '1 once the model is loaded and the server accepts requests.', () => (sources.ready() ? 1 : 0));
    const engine = () => (sources.engineStats() ?? {}) as EngineNumbers;
    r.counter('webshard_group_recoveries_total', 'Times a failed shard group was torn down and reloaded without restarting the process.', () => engine().group?.recoveries ?? 0);
    r.gauge('webshard_group_last_recovery_seconds', 'From the failure to serving again, of the last shard group recovery.', () => engine().group?.lastRecoverySeconds ?? 0);
    // The Model Server Protocol of the Gateway API Inference Extension: the endpoint picker reads
    // these names (vLLM's) to route each request to the replica with the shortest queue and the
    // most free KV cache.
    r.gauge('vllm:num_requests_waiting', 'Requests waiting to be scheduled (the server queue and the engine\'s).', () => sources.queued() + (engine().waiting ?? 0));
    r.gauge('vllm:num_requests_running', 'Requests generating in the engine.', sources.running);
    r.gauge('vllm:kv_cache_usage_perc', 'Share of the KV cache blocks in use, 0 to 1.', () => {
      const { kvBlocksUsed = 0, kvBlocksFree = 0 } = engine();
      return kvBlocksUsed + kvBlocksFree > 0 ? kvBlocksUsed / (kvBlocksUsed + kvBlocksFree) : 0;
    });
    r.gauge('vllm:cache_config_info', 'KV cache configuration (labels); the value is always 1.').set(1, { block_size: String(KV_BLOCK_SIZE) });
    r.addCollector(() => {
      const stats = sources.engineStats();
      return stats ? renderNumericFields('webshard_engine', stats) : '';
    });
    // Speculative decoding (vLLM exports the same pair as spec_decode_num_*_tokens_total).
    r.counter('webshard_speculative_draft_tokens_total', 'Tokens proposed by the draft model or prompt lookup and checked by the model.', () => engine().speculative?.drafted ?? 0);
    r.counter('webshard_speculative_accepted_tokens_total', 'Drafted tokens the model kept.', () => engine().speculative?.accepted ?? 0);
  }

  render(): string {
    return this.registry.render();
  }
}
