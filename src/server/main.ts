// `deno task serve`: the OpenAI-compatible server on Deno.serve. Everything Deno-specific lives
// here (flags, Deno.serve, signals); the HTTP logic is the runtime-neutral InferenceServer.
//
//   deno task serve --model model.gguf [--host 127.0.0.1] [--port 8080] [--parallel 8] ...
//
// The server listens at once (GET /ready says 503 until the model is loaded). SIGINT, SIGTERM or
// SIGHUP stop it gracefully: new requests and /ready get 503, in-flight ones get --shutdown-grace
// seconds to finish and are cancelled after that (a second signal cancels them at once), then the
// model is released and main returns: exit code 0. Never Deno.exit: Dawn devices must be released
// first (ARCHITECTURE.md, Runtime hazards).
// Exit codes: 0 after a clean shutdown, 2 for bad arguments, 1 when the model cannot be loaded.

import { FaultInjector, loadModel, modelNameFromPath, type LoadOptions, type Model } from '../index.ts';
import { flag, LOAD_ALIASES, LOAD_FLAGS, LOAD_FLAGS_USAGE, loadOptionsFromFlags, numberFlag, parseFlags, UsageError, type Flags, type FlagSpec } from '../flags.ts';
import { engineAdmission } from './reservations.ts';
import { DEFAULT_LIMITS, InferenceServer, type ServerLimits } from './server.ts';

interface DenoServer {
  finished: Promise<void>;
  shutdown(): Promise<void>;
}

type DenoSignal = 'SIGINT' | 'SIGTERM' | 'SIGHUP';

/** Signals this close together are one request to stop (see onSignal). */
const REPEATED_SIGNAL_MS = 1000;

declare const Deno: {
  args: string[];
  pid: number;
  exitCode: number;
  env: { get(name: string): string | undefined };
  serve(
    options: { hostname: string; port: number; onListen?: (address: { hostname: string; port: number }) => void },
    handler: (request: Request) => Promise<Response>,
  ): DenoServer;
  addSignalListener(signal: DenoSignal, handler: () => void): void;
  removeSignalListener(signal: DenoSignal, handler: () => void): void;
};

const USAGE = `webshard serve — an OpenAI-compatible HTTP server

  deno task serve --model PATH|URL [options]

Endpoints: POST /v1/completions, POST /v1/chat/completions, GET /v1/models,
           GET /health, GET /ready, GET /metrics

Options:
  -m, --model PATH|URL        GGUF model, or a Hugging Face model folder (a directory, or a base URL
                              ending in /) with config.json, tokenizer.json and safetensors (required)
      --model-name NAME       the id clients send as "model" (default: the file or folder name, without .gguf)
      --host HOST             address to listen on (default 127.0.0.1)
      --port N                port (default 8080; 0 = any free port, printed at startup)
${LOAD_FLAGS_USAGE}
      --parallel N            sequences the engine batches together (default ${DEFAULT_LIMITS.maxRunning})
      --kv-cache-tokens N     KV cache positions shared by those sequences (default parallel × context)
      --max-queue N           sequences that may wait beyond those; more get 429 (default ${DEFAULT_LIMITS.maxQueued})
      --max-body-bytes N      request body limit (default ${DEFAULT_LIMITS.maxBodyBytes})
      --max-header-bytes N    request header limit (default ${DEFAULT_LIMITS.maxHeaderBytes})
      --request-timeout S     deadline of one generation request, queueing included (default ${DEFAULT_LIMITS.requestTimeoutMs / 1000})
      --health-deadline-ms N  /health fails when no forward step completes within N ms (default 5000)
      --shutdown-grace S      on SIGINT/SIGTERM, time in-flight requests get to finish (default 10)
      --api-key KEY           require "Authorization: Bearer KEY" on /v1/* (or env WEBSHARD_API_KEY)
                              (with -md or --lookup-ngram, a request opts out with "speculative": false)
      --test-hooks            enable POST /admin/fault {"shard": N, "kind": "device-lost"|"worker-crash"|"hang"}
                              (tests only; never in production)
  -h, --help`;

const serveFlags: FlagSpec = {
  aliases: { m: 'model', h: 'help', ...LOAD_ALIASES },
  booleans: new Set(['test-hooks', 'help']),
  known: new Set([
    'model', 'model-name', 'host', 'port', 'parallel', 'kv-cache-tokens', 'max-queue', 'max-body-bytes', 'max-header-bytes',
    'request-timeout', 'health-deadline-ms', 'shutdown-grace', 'api-key', 'test-hooks', 'help', ...LOAD_FLAGS,
  ]),
};

interface ServeConfig {
  model: string;
  modelName: string;
  host: string;
  port: number;
  load: LoadOptions;
  limits: Partial<ServerLimits>;
  healthDeadlineMs: number;
  shutdownGraceMs: number;
  apiKey?: string;
  testHooks: boolean;
}

/** The id clients send as "model": the file's or folder's name without .gguf (modelNameFromPath). */
function defaultModelName(source: string): string {
  return modelNameFromPath(source).replace(/\.gguf$/i, '') || 'model';
}

function serveConfig(flags: Flags): ServeConfig {
  const model = flag(flags, 'model');
  if (!model) throw new UsageError('serve needs --model PATH|URL');
  const seconds = (name: string, min: number) => {
    const s = numberFlag(flags, name, { min });
    return s === undefined ? undefined : Math.round(s * 1000);
  };
  const admission = {
    maxRunning: numberFlag(flags, 'parallel', { integer: true, min: 1 }) ?? DEFAULT_LIMITS.maxRunning,
    maxQueued: numberFlag(flags, 'max-queue', { integer: true }) ?? DEFAULT_LIMITS.maxQueued,
  };
  const limits: Partial<ServerLimits> = {
    ...admission,
    maxBodyBytes: numberFlag(flags, 'max-body-bytes', { integer: true, min: 1 }),
    maxHeaderBytes: numberFlag(flags, 'max-header-bytes', { integer: true, min: 1 }),
    requestTimeoutMs: seconds('request-timeout', 0.001),
  };
  return {
    model,
    modelName: flag(flags, 'model-name') ?? defaultModelName(model),
    host: flag(flags, 'host') ?? '127.0.0.1',
    port: numberFlag(flags, 'port', { integer: true }) ?? 8080,
    load: {
      ...loadOptionsFromFlags(flags),
      // The engine's scheduler is the one admission queue: as many sequence slots as --parallel,
      // as much waiting room as --max-queue (the server only checks a request's n choices fit).
      ...engineAdmission(admission),
      kvCacheTokens: numberFlag(flags, 'kv-cache-tokens', { integer: true, min: 1 }),
      onWarning: (message) => log(`warning: ${message}`),
      onStatus: log,
    },
    limits: Object.fromEntries(Object.entries(limits).filter(([, v]) => v !== undefined)),
    healthDeadlineMs: numberFlag(flags, 'health-deadline-ms', { integer: true, min: 1 }) ?? 5000,
    shutdownGraceMs: seconds('shutdown-grace', 0) ?? 10_000,
    apiKey: flag(flags, 'api-key') ?? Deno.env.get('WEBSHARD_API_KEY'),
    testHooks: flags.has('test-hooks'),
  };
}

const log = (line: string) => console.error(`webshard serve: ${line}`);

async function serve(config: ServeConfig): Promise<void> {
  // Only --test-hooks makes a fault injector; without one no fault can be injected at all.
  const faults = config.testHooks ? new FaultInjector() : undefined;
  const server = new InferenceServer({
    faults,
    modelName: config.modelName,
    limits: config.limits,
    healthDeadlineMs: config.healthDeadlineMs,
    apiKey: config.apiKey,
    testHooks: config.testHooks,
    log,
  });

  let requestStop!: () => void;
  const stopRequested = new Promise<void>((resolve) => (requestStop = resolve));
  let firstSignalAt: number | undefined;
  const onSignal = (name: DenoSignal) => () => {
    if (firstSignalAt === undefined) {
      firstSignalAt = performance.now();
      log(`${name}: shutting down (in-flight requests get ${config.shutdownGraceMs / 1000} s)`);
      requestStop();
    } else if (performance.now() - firstSignalAt > REPEATED_SIGNAL_MS) {
      log(`${name} again: cancelling in-flight requests now`);
      void server.shutdown(0);
    }
    // A repeat within REPEATED_SIGNAL_MS is the same request to stop, delivered twice: a signal to
    // the whole process group reaches the server both directly and through the launchers above it.
  };
  const handlers = { SIGINT: onSignal('SIGINT'), SIGTERM: onSignal('SIGTERM'), SIGHUP: onSignal('SIGHUP') } as const;
  for (const [name, handler] of Object.entries(handlers)) Deno.addSignalListener(name as DenoSignal, handler);

  // A bug that leaves a promise rejected must not take every other request down with it.
  const onUnhandled = (event: PromiseRejectionEvent) => {
    event.preventDefault();
    log(`unhandled rejection: ${event.reason instanceof Error ? (event.reason.stack ?? event.reason.message) : String(event.reason)}`);
  };
  globalThis.addEventListener('unhandledrejection', onUnhandled);

  if (config.testHooks) log('--test-hooks: POST /admin/fault is enabled; never use this in production');
  const http = Deno.serve(
    {
      hostname: config.host,
      port: config.port,
      onListen: ({ hostname, port }) => console.log(`webshard serve: listening on http://${hostname}:${port} (pid ${Deno.pid})`),
    },
    server.handle,
  );

  let model: Model | undefined;
  try {
    const started = performance.now();
    model = await loadModel(config.model, { ...config.load, faults, onEvent: log });
    for (const line of model.plan?.summary ?? []) log(line);
    server.attach(model);
    const { plan } = model;
    const device = plan ? `${plan.tp * plan.pp} shards (tp ${plan.tp}, pp ${plan.pp})` : (model.gpu?.adapterDescription ?? 'one device');
    log(`ready: "${config.modelName}" (context ${model.contextLength}) on ${device}, loaded in ${((performance.now() - started) / 1000).toFixed(1)} s`);
    await stopRequested;
  } catch (error) {
    const e = error as Error;
    log(`cannot serve ${config.model}: ${e.name ?? 'Error'}: ${e.message}`);
    Deno.exitCode = 1;
  }

  // Keep listening while draining, so that new requests and /ready get a 503 (a load balancer
  // learns to send traffic elsewhere) rather than a refused connection; then close.
  await server.shutdown(config.shutdownGraceMs);
  await http.shutdown();
  await http.finished;
  await model?.dispose();
  for (const [name, handler] of Object.entries(handlers)) Deno.removeSignalListener(name as DenoSignal, handler);
  globalThis.removeEventListener('unhandledrejection', onUnhandled);
  log('stopped');
}

async function main(args: string[]): Promise<void> {
  let config: ServeConfig;
  try {
    const flags = parseFlags(args, serveFlags);
    if (flags.has('help')) {
      console.log(USAGE);
      return;
    }
    config = serveConfig(flags);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`webshard serve: ${error.message}\n\n${USAGE}`);
    Deno.exitCode = 2;
    return;
  }
  await serve(config);
}

await main(Deno.args);
