// The OpenAI-compatible HTTP server as a fetch-style handler: `server.handle(request)` answers
// one Request with one Response using only web APIs, so any runtime can host it (Deno.serve in
// main.ts). Routes:
//
//   POST /v1/completions        POST /v1/chat/completions        GET /v1/models
//   GET  /health (liveness: a forward step within a deadline)     GET /ready (model loaded)
//   GET  /metrics (Prometheus)  POST /admin/fault (only with testHooks and a FaultInjector)

import { ChatTemplate, ChatTemplateError, FAULT_KINDS, type FaultInjector, type FaultKind } from '../index.ts';
import {
  AuthenticationError,
  ClientClosedError,
  DeadlineExceededError,
  errorResponse,
  InvalidRequestError,
  jsonResponse,
  MethodNotAllowedError,
  NotFoundError,
  ServiceUnavailableError,
  toHttpError,
  type HttpError,
} from './errors.ts';
import { HealthMonitor } from './health.ts';
import { checkRequestSize, readJsonBody } from './http.ts';
import { ChatFormat, CompletionFormat, usageOf, type ChoiceFormat, type ResponseMeta, type Usage } from './openai-format.ts';
import { parseChatRequest, parseCompletionRequest, type ChatMessage, type GenerationParams, type Prompt } from './openai-schema.ts';
import { SequenceReservations, type Reservation } from './reservations.ts';
import { runSequence, type SequenceResult, type SequenceSpec } from './sequence.ts';
import { ServerMetrics, type CancelReason } from './server-metrics.ts';
import type { GeneratedToken, ServedModel } from './served-model.ts';
import { PROMETHEUS_CONTENT_TYPE } from './metrics.ts';
import { SSE_HEADERS, SseStream } from './sse.ts';

export interface ServerLimits {
  maxBodyBytes: number;
  maxHeaderBytes: number;
  maxUrlBytes: number;
  /**
   * Sequences generating at once, and sequences that may wait beyond those (more is refused with
   * 429): a request's n choices must fit, all or nothing. The waiting is done by the engine's
   * scheduler: load the model with `engineAdmission(limits)` (reservations.ts).
   */
  maxRunning: number;
  maxQueued: number;
  /** Deadline of a whole generation request, waiting included. */
  requestTimeoutMs: number;
}

export const DEFAULT_LIMITS: ServerLimits = {
  maxBodyBytes: 1 << 20,
  maxHeaderBytes: 16 << 10,
  maxUrlBytes: 8 << 10,
  maxRunning: 4,
  maxQueued: 64,
  requestTimeoutMs: 600_000,
};

export interface ServerOptions {
  /** The id clients name in `model`. */
  modelName: string;
  limits?: Partial<ServerLimits>;
  /** Deadline of the /health forward step. Default 5000 ms. */
  healthDeadlineMs?: number;
  /** When set, /v1/* needs `Authorization: Bearer <apiKey>`. */
  apiKey?: string;
  /**
   * Enables POST /admin/fault {"shard": N, "kind": "device-lost" | "worker-crash" | "hang", "ms"?}
   * through `faults`, the FaultInjector the model was loaded with. Tests only, never in production.
   */
  testHooks?: boolean;
  faults?: FaultInjector;
  log?: (line: string) => void;
}

type State = 'loading' | 'ready' | 'draining' | 'stopped';

/** One generation request in flight: its cancellation, its deadline, and when it is over. */
class InFlight {
  readonly startedAt = performance.now();
  private readonly controller = new AbortController();
  private readonly deadline: ReturnType<typeof setTimeout>;
  private readonly onClientGone = () => this.cancel('client_disconnect', new ClientClosedError('The client closed the connection.'));
  private ended = false;
  private resolveDone!: () => void;
  readonly done = new Promise<void>((resolve) => (this.resolveDone = resolve));

  constructor(
    private readonly request: Request,
    timeoutMs: number,
    private readonly onCancel: (reason: CancelReason) => void,
  ) {
    this.deadline = setTimeout(
      () => this.cancel('deadline', new DeadlineExceededError(`The request did not finish within its deadline of ${timeoutMs / 1000} s.`, { code: 'deadline_exceeded' })),
      timeoutMs,
    );
    request.signal.addEventListener('abort', this.onClientGone, { once: true });
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /** Stops every sequence of this request, which then fails with `error`; the first cancel wins. */
  cancel(reason: CancelReason, error: HttpError): void {
    if (this.ended || this.signal.aborted) return;
    this.onCancel(reason);
    this.controller.abort(error);
  }

  clientGone(): void {
    this.onClientGone();
  }

  /** Stops the siblings of a sequence that failed (not a cancellation: not counted as one). */
  fail(error: unknown): void {
    if (!this.signal.aborted) this.controller.abort(error);
  }

  end(): void {
    if (this.ended) return;
    this.ended = true;
    clearTimeout(this.deadline);
    this.request.signal.removeEventListener('abort', this.onClientGone);
    this.resolveDone();
  }
}

/** Hooks into a request's sequences as they run, by choice index. */
interface SequenceHooks {
  token?(index: number, token: GeneratedToken): void;
  finished?(index: number, result: SequenceResult): void;
}

/** Everything needed to produce the answer to one admitted generation request. */
interface Answer {
  model: ServedModel;
  /** One per choice, in choice order. */
  specs: SequenceSpec[];
  slots: Reservation[];
  flight: InFlight;
  format: ChoiceFormat;
  meta: ResponseMeta;
  usage(results: readonly SequenceResult[]): Usage;
}

interface Route {
  method: 'GET' | 'POST';
  handler: (request: Request) => Promise<Response>;
}

export class InferenceServer {
  readonly limits: ServerLimits;
  readonly metrics: ServerMetrics;
  private readonly reservations: SequenceReservations;
  private readonly routes: Map<string, Route>;
  private readonly inFlight = new Set<InFlight>();
  /** Streaming responses, counted in the metrics when their stream ends rather than when they start. */
  private readonly streams = new WeakSet<Response>();
  private readonly log: (line: string) => void;
  private state: State = 'loading';
  private model: ServedModel | undefined;
  private template: ChatTemplate | undefined;
  private health: HealthMonitor | undefined;

  constructor(private readonly options: ServerOptions) {
    this.limits = { ...DEFAULT_LIMITS, ...options.limits };
    this.reservations = new SequenceReservations(this.limits.maxRunning, this.limits.maxQueued);
    this.log = options.log ?? (() => undefined);
    this.metrics = new ServerMetrics({
      queued: () => this.reservations.queued,
      running: () => this.reservations.running,
      ready: () => this.state === 'ready',
      engineStats: () => this.model?.stats(),
    });
    const routes: Array<[string, Route]> = [
      ['/v1/completions', { method: 'POST', handler: (r) => this.completions(r) }],
      ['/v1/chat/completions', { method: 'POST', handler: (r) => this.chatCompletions(r) }],
      ['/v1/models', { method: 'GET', handler: (r) => this.models(r) }],
      ['/health', { method: 'GET', handler: () => this.liveness() }],
      ['/ready', { method: 'GET', handler: async () => this.readiness() }],
      ['/metrics', { method: 'GET', handler: async () => new Response(this.metrics.render(), { headers: { 'content-type': PROMETHEUS_CONTENT_TYPE } }) }],
    ];
    if (options.testHooks && options.faults) routes.push(['/admin/fault', { method: 'POST', handler: (r) => this.injectFault(r, options.faults!) }]);
    this.routes = new Map(routes);
  }

  get modelName(): string {
    return this.options.modelName;
  }

  get isReady(): boolean {
    return this.state === 'ready';
  }

  /** Serves `model` from now on: /ready turns 200. */
  attach(model: ServedModel): void {
    if (this.state !== 'loading') throw new Error(`cannot attach a model to a server that is ${this.state}`);
    const { tokenizer } = model;
    try {
      this.template = ChatTemplate.fromMetadata(model.file.metadata, tokenizer) ?? ChatTemplate.plain(tokenizer);
    } catch (error) {
      this.log(`warning: ${(error as Error).message}; chat requests use the plain transcript instead.`);
      this.template = ChatTemplate.plain(tokenizer);
    }
    this.model = model;
    this.health = new HealthMonitor(model, this.options.healthDeadlineMs ?? 5000);
    this.state = 'ready';
  }

  /** The fetch-style handler. Never throws: every failure is an error response. */
  readonly handle = async (request: Request): Promise<Response> => {
    const path = new URL(request.url).pathname;
    const route = this.routes.get(path);
    const endpoint = route ? path : 'unmatched';
    let response: Response;
    try {
      checkRequestSize(request, this.limits);
      if (!route) throw new NotFoundError(`No route ${request.method} ${path}.`, { code: 'not_found' });
      if (request.method !== route.method) {
        throw new MethodNotAllowedError(`${path} takes ${route.method}, not ${request.method}.`, { code: 'method_not_allowed', headers: { allow: route.method } });
      }
      response = await route.handler(request);
    } catch (error) {
      response = this.errorResponse(error);
    }
    if (!this.streams.has(response)) this.metrics.requests.inc({ endpoint, status: String(response.status) });
    return response;
  };

  /**
   * Stops taking generation requests, gives those in flight `graceMs` to finish, cancels the
   * rest, and resolves once the engine has let go of every sequence.
   */
  async shutdown(graceMs: number): Promise<void> {
    if (this.state === 'stopped') return;
    this.state = 'draining';
    const allDone = () => Promise.all([...this.inFlight].map((f) => f.done)).then(() => undefined);
    if (!(await settlesWithin(allDone(), graceMs))) {
      this.log(`shutdown: cancelling ${this.inFlight.size} request(s) still running after ${graceMs} ms`);
      for (const flight of this.inFlight) flight.cancel('shutdown', new ServiceUnavailableError('The server is shutting down.', { code: 'shutting_down' }));
      await allDone();
    }
    await this.reservations.whenIdle();
    this.state = 'stopped';
  }

  // --- routes ------------------------------------------------------------------------------

  private async completions(request: Request): Promise<Response> {
    const model = this.servingModel(request);
    const params = parseCompletionRequest(await readJsonBody(request, this.limits.maxBodyBytes));
    this.checkModelName(params.model);
    const prompts = params.prompts.map((prompt, i) => this.promptIds(model, prompt, params.prompts.length > 1 ? `prompt[${i}]` : 'prompt'));
    return this.generate(request, model, params, prompts, new CompletionFormat(model.tokenizer));
  }

  private async chatCompletions(request: Request): Promise<Response> {
    const model = this.servingModel(request);
    const params = parseChatRequest(await readJsonBody(request, this.limits.maxBodyBytes));
    this.checkModelName(params.model);
    return this.generate(request, model, params, [this.chatPromptIds(model, params.messages)], new ChatFormat(model.tokenizer));
  }

  private async models(request: Request): Promise<Response> {
    const model = this.servingModel(request);
    return jsonResponse({
      object: 'list',
      data: [{ id: this.modelName, object: 'model', created: 0, owned_by: 'webshard', context_length: model.contextLength }],
    });
  }

  private async liveness(): Promise<Response> {
    if (!this.health) return jsonResponse({ status: this.state }, 503);
    const report = await this.health.check();
    return jsonResponse({ status: report.ok ? 'ok' : 'unhealthy', detail: report.detail }, report.ok ? 200 : 503);
  }

  private readiness(): Response {
    const model = this.state === 'ready' ? this.model?.readiness() : undefined;
    if (model && !model.ok) return jsonResponse({ status: 'unavailable', detail: model.detail }, 503);
    return jsonResponse({ status: this.state }, this.state === 'ready' ? 200 : 503);
  }

  private async injectFault(request: Request, faults: FaultInjector): Promise<Response> {
    this.servingModel(request);
    const body = (await readJsonBody(request, this.limits.maxBodyBytes)) as { shard?: unknown; kind?: unknown; ms?: unknown } | null;
    const { shard, kind, ms } = body ?? {};
    if (typeof shard !== 'number' || !Number.isInteger(shard) || shard < 0) {
      throw new InvalidRequestError("'shard': expected a shard rank (an integer ≥ 0).", { param: 'shard', code: 'invalid_value' });
    }
    if (!FAULT_KINDS.includes(kind as FaultKind)) {
      throw new InvalidRequestError(`'kind': expected one of ${FAULT_KINDS.join(', ')}.`, { param: 'kind', code: 'invalid_value' });
    }
    if (ms !== undefined && (typeof ms !== 'number' || !Number.isFinite(ms) || ms < 0 || ms > 600_000)) {
      throw new InvalidRequestError("'ms': expected a number of milliseconds in [0, 600000].", { param: 'ms', code: 'invalid_value' });
    }
    try {
      await faults.inject({ shard, kind: kind as FaultKind, ms: ms as number | undefined });
    } catch (error) {
      throw new InvalidRequestError((error as Error).message, { param: 'shard', code: 'invalid_value' });
    }
    this.log(`test hook: injected ${kind} into shard ${shard}${ms === undefined ? '' : ` (${ms} ms)`}`);
    return jsonResponse({ injected: { shard, kind, ...(ms === undefined ? {} : { ms }) } });
  }

  // --- generation --------------------------------------------------------------------------

  /** The model, when requests may use it; the API key, when one is set. */
  private servingModel(request: Request): ServedModel {
    const { apiKey } = this.options;
    if (apiKey !== undefined && request.headers.get('authorization') !== `Bearer ${apiKey}`) {
      throw new AuthenticationError('Missing or wrong API key: send "Authorization: Bearer <key>".', { code: 'invalid_api_key' });
    }
    if (this.state === 'loading' || !this.model) {
      throw new ServiceUnavailableError('The model is still loading; try again shortly.', { code: 'model_loading', headers: { 'retry-after': '5' } });
    }
    if (this.state !== 'ready') throw new ServiceUnavailableError('The server is shutting down.', { code: 'shutting_down' });
    const ready = this.model.readiness();
    if (!ready.ok) throw new ServiceUnavailableError(`The model cannot serve now: ${ready.detail}.`, { code: 'model_unavailable', headers: { 'retry-after': '5' } });
    return this.model;
  }

  private checkModelName(name: string): void {
    if (name !== this.modelName) {
      throw new NotFoundError(`The model "${name}" does not exist; this server serves "${this.modelName}".`, { param: 'model', code: 'model_not_found' });
    }
  }

  private promptIds(model: ServedModel, prompt: Prompt, param: string): number[] {
    const ids = typeof prompt === 'string' ? model.tokenizer.encode(prompt) : prompt;
    const bad = ids.findIndex((id) => id >= model.tokenizer.vocabSize);
    if (bad >= 0) {
      throw new InvalidRequestError(`'${param}[${bad}]': token id ${ids[bad]} is outside the vocabulary (0 to ${model.tokenizer.vocabSize - 1}).`, {
        param: `${param}[${bad}]`,
        code: 'invalid_value',
      });
    }
    return this.checkContext(model, ids, param);
  }

  private chatPromptIds(model: ServedModel, messages: readonly ChatMessage[]): number[] {
    let ids: number[];
    try {
      ids = this.template!.tokenize(messages);
    } catch (error) {
      if (!(error instanceof ChatTemplateError)) throw error;
      throw new InvalidRequestError(`The model's ${error.message.replace(/^The /, '')}`, { param: 'messages', code: 'chat_template_error' });
    }
    return this.checkContext(model, ids, 'messages');
  }

  private checkContext(model: ServedModel, ids: number[], param: string): number[] {
    if (ids.length >= model.contextLength) {
      throw new InvalidRequestError(
        `This model's maximum context length is ${model.contextLength} tokens, but the prompt has ${ids.length} tokens; ` +
          `it must be shorter than the context to leave room for the answer.`,
        { param, code: 'context_length_exceeded' },
      );
    }
    return ids;
  }

  /** Runs every choice of a validated request and answers with JSON or a stream of events. */
  private async generate(request: Request, model: ServedModel, params: GenerationParams, prompts: number[][], format: ChoiceFormat): Promise<Response> {
    const specs: SequenceSpec[] = prompts.flatMap((promptIds) =>
      Array.from({ length: params.n }, (_, i): SequenceSpec => ({
        promptIds,
        maxTokens: Math.min(params.maxTokens ?? Infinity, model.contextLength - promptIds.length),
        stop: params.stop,
        ignoreEos: params.ignoreEos,
        speculative: params.speculative,
        // Same seed, same answers; each choice its own stream of draws.
        sampling: { ...params.sampling, seed: params.sampling.seed === undefined ? undefined : params.sampling.seed + i },
        logprobs: params.logprobs,
      })),
    );
    const flight = new InFlight(request, this.limits.requestTimeoutMs, (reason) => this.metrics.cancelled.inc({ reason }));
    let slots: Reservation[];
    try {
      slots = this.reservations.reserve(specs.length);
    } catch (error) {
      flight.end();
      throw error;
    }
    this.inFlight.add(flight);
    void flight.done.then(() => this.inFlight.delete(flight));

    const promptTokens = prompts.reduce((n, ids) => n + ids.length, 0);
    const answer: Answer = {
      model,
      specs,
      slots,
      flight,
      format,
      meta: { id: format.idPrefix + crypto.randomUUID().replaceAll('-', ''), created: Math.floor(Date.now() / 1000), model: this.modelName, includeUsage: params.includeUsage },
      usage: (results) => usageOf(promptTokens, results.reduce((n, r) => n + r.ids.length, 0)),
    };
    return params.stream ? this.streamAnswer(new URL(request.url).pathname, answer) : this.jsonAnswer(answer);
  }

  /** The answer as one JSON body; the request is over when it is built (or failed). */
  private async jsonAnswer(answer: Answer): Promise<Response> {
    try {
      const results = await this.runAll(answer);
      return jsonResponse(answer.format.response(answer.meta, results, answer.usage(results)));
    } finally {
      answer.flight.end();
    }
  }

  /** The answer as server-sent events, pushed as tokens come; counted in the metrics when it ends. */
  private streamAnswer(endpoint: string, answer: Answer): Response {
    const { format, meta, specs, flight } = answer;
    const stream = new SseStream(() => flight.clientGone());
    const response = new Response(stream.readable, { headers: SSE_HEADERS });
    this.streams.add(response);
    const produce = async (): Promise<number> => {
      for (let index = 0; index < specs.length; index++) {
        const opening = format.opening(meta, index);
        if (opening !== undefined) stream.send(opening);
      }
      const textOffsets = specs.map(() => 0);
      const results = await this.runAll(answer, {
        token: (index, token) => {
          // With logprobs every token goes out with its log-probability, as it is generated.
          if (token.logprobs) {
            stream.send(format.delta(meta, index, token.text, token.logprobs, textOffsets[index]));
            textOffsets[index]! += token.text.length;
          } else if (token.text !== '') {
            stream.send(format.delta(meta, index, token.text));
          }
        },
        finished: (index, result) => stream.send(format.finish(meta, index, result.finishReason)),
      });
      if (meta.includeUsage) stream.send(format.usage(meta, answer.usage(results)));
      return 200;
    };
    void produce()
      .catch((error: unknown) => {
        const httpError = this.toLoggedHttpError(error);
        // OpenAI reports a failure inside a stream as an event with the error body.
        stream.send(httpError.body());
        return httpError.status;
      })
      .then((status) => {
        stream.done();
        flight.end();
        this.metrics.requests.inc({ endpoint, status: String(status) });
      });
    return response;
  }

  /**
   * Runs each spec in its reserved place, all at once (the engine's scheduler decides who waits). The first failure
   * stops the others and is thrown.
   */
  private async runAll({ model, specs, slots, flight }: Answer, hooks: SequenceHooks = {}): Promise<SequenceResult[]> {
    const runs = specs.map(async (spec, index) => {
      const slot = slots[index]!;
      let generated = 0;
      const result = await runSequence(model, spec, slot, flight.signal, (token) => {
        if (generated++ === 0) {
          this.metrics.promptTokens.inc({}, spec.promptIds.length);
          this.metrics.timeToFirstToken.observe((performance.now() - flight.startedAt) / 1000);
        }
        this.metrics.generationTokens.inc();
        hooks.token?.(index, token);
      });
      if (result.ids.length > 1) {
        this.metrics.timePerOutputToken.observe((result.lastTokenAt! - result.firstTokenAt!) / 1000 / (result.ids.length - 1));
      }
      hooks.finished?.(index, result);
      return result;
    });
    try {
      const results = await Promise.all(runs);
      this.metrics.requestLatency.observe((performance.now() - flight.startedAt) / 1000);
      return results;
    } catch (error) {
      flight.fail(error);
      throw error;
    }
  }

  private errorResponse(error: unknown): Response {
    return errorResponse(this.toLoggedHttpError(error));
  }

  private toLoggedHttpError(error: unknown): HttpError {
    const httpError = toHttpError(error);
    if (httpError.status >= 500 && httpError.status !== 503 && httpError.status !== 504) {
      this.log(`error ${httpError.status}: ${httpError.message}${error instanceof Error && error.stack ? `\n${error.stack}` : ''}`);
    }
    return httpError;
  }
}

/** Whether `promise` settles within `ms` (the timer does not outlive the answer). */
async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  try {
    return await Promise.race([promise.then(() => true, () => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
