// Peers measured in the same run, on the same card and the same GGUF:
//
// * llama.cpp through the npm package `node-llama-cpp` (Vulkan build). It is NOT a dependency of
//   webshard (its CUDA binaries are hundreds of MB); install it next to the project only for a
//   benchmark run:
//       npm install --no-save node-llama-cpp@3.21.1
//   and ../shared/device/pack.sh carries its linux-x64-vulkan binaries to the GPU machine.
//   A copy elsewhere can be named with WEBSHARD_NODE_LLAMA_CPP=/path/to/node_modules/node-llama-cpp.
// * PyTorch, when `python3 -c "import torch"` works and sees CUDA: the same kernel shapes
//   (streaming read, f16 matvec, f32 and f16 GEMM) as a reference for what the card can do.
//
// Neither is ever required: each reports why it did not run. Runtime-neutral (node: modules).
//
// On a CPU adapter (lavapipe) llama.cpp skips the CPU-type Vulkan device and runs its own CPU
// backend; the table says so. GGML_VK_VISIBLE_DEVICES=0 would put it on lavapipe too, but there
// its Vulkan path was very slow and once hung on the F16 model, so that is left to the caller.

import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import process from 'node:process';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const NODE_LLAMA_CPP_VERSION = '3.21.1';
export const NODE_LLAMA_CPP_HOWTO =
  `npm install --no-save node-llama-cpp@${NODE_LLAMA_CPP_VERSION} (in the project root; not a dependency), ` +
  'then bash ../shared/device/pack.sh carries its Vulkan build to the GPU machine';

// The parts of node-llama-cpp's API used here (its own types are not available without the package).
interface LlamaToken {
  readonly __brand?: 'token';
}
type Token = number & LlamaToken;
interface NlcSequence {
  evaluate(tokens: Token[], options?: { temperature?: number }): AsyncGenerator<Token, void, void | Token | Token[]>;
  clearHistory(): Promise<void>;
  dispose(): void | Promise<void>;
}
interface NlcContext {
  readonly contextSize: number;
  readonly batchSize: number;
  getSequence(): NlcSequence;
  dispose(): Promise<void>;
}
interface NlcModel {
  createContext(options: { contextSize?: number; batchSize?: number; sequences?: number }): Promise<NlcContext>;
  dispose(): Promise<void>;
}
interface NlcLlama {
  readonly gpu: string | false;
  getGpuDeviceNames(): Promise<string[]>;
  loadModel(options: { modelPath: string; gpuLayers?: 'max' | 'auto' | number }): Promise<NlcModel>;
  dispose(): Promise<void>;
}
interface NodeLlamaCpp {
  getLlama(options?: { gpu?: string; build?: string; logLevel?: string; usePrebuiltBinaries?: boolean }): Promise<NlcLlama>;
}

export interface PeerStatus {
  available: boolean;
  /** Why not, and how to get it. */
  reason?: string;
}

/** node-llama-cpp from node_modules (or WEBSHARD_NODE_LLAMA_CPP), or why it is not there. */
export async function importNodeLlamaCpp(): Promise<{ module?: NodeLlamaCpp; version?: string; status: PeerStatus }> {
  const projectRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');
  const dir = process.env.WEBSHARD_NODE_LLAMA_CPP ?? join(projectRoot, 'node_modules', 'node-llama-cpp');
  if (!existsSync(join(dir, 'package.json'))) {
    return { status: { available: false, reason: `node-llama-cpp is not installed (${dir}): ${NODE_LLAMA_CPP_HOWTO}` } };
  }
  try {
    const packageJson = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { version: string };
    // Imported by path: the same file whether or not this runtime resolves undeclared packages.
    const module = (await import(/* @vite-ignore */ pathToFileURL(join(dir, 'dist', 'index.js')).href)) as NodeLlamaCpp;
    return { module, version: packageJson.version, status: { available: true } };
  } catch (error) {
    return { status: { available: false, reason: `node-llama-cpp failed to load: ${(error as Error).message}` } };
  }
}

export interface LlamaCppDecode {
  batch: number;
  tokens: number;
  windowMs: number;
  tokensPerSecond: number;
}

export interface LlamaCppResult {
  available: true;
  version?: string;
  gpu: string | false;
  gpuDevices: string[];
  /** getLlama (backend and GPU initialisation). */
  openMs: number;
  /** loadModel (all layers on the GPU) + createContext. */
  loadMs: number;
  pageCache: 'dropped' | 'warm';
  /** Backend + load + first token of the short prompt. */
  timeToFirstTokenMs: number;
  contextSize: number;
  prefill: { tokens: number; ms: number; samplesMs: number[]; tokensPerSecond: number };
  decode: LlamaCppDecode[];
}

export interface LlamaCppOptions {
  /** Token ids of the prefill prompt (the same ids webshard prefills). */
  prefillIds: number[];
  prefillRepeats: number;
  /** Ids of the short prompt decode starts from. */
  shortIds: number[];
  decodeTokens: number;
  batches: number[];
  /** Whether the page cache was dropped before this load (reported; the caller drops it). */
  pageCache: 'dropped' | 'warm';
  /** llama.cpp backend to ask for (default vulkan: the build that travels to the GPU machine). */
  gpu?: string;
  log?: (line: string) => void;
}

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/** llama.cpp on the same GGUF: load, time to first token, prefill, and decode at each batch size. */
export async function benchLlamaCpp(nlc: NodeLlamaCpp, version: string | undefined, path: string, o: LlamaCppOptions): Promise<LlamaCppResult> {
  const log = o.log ?? (() => {});
  const openStart = performance.now();
  const llama = await nlc.getLlama({ gpu: o.gpu ?? 'vulkan', build: 'never', logLevel: 'error' });
  const openMs = performance.now() - openStart;
  try {
    const gpuDevices = await llama.getGpuDeviceNames().catch(() => [] as string[]);
    const maxBatch = Math.max(...o.batches);
    const loadStart = performance.now();
    const model = await llama.loadModel({ modelPath: path, gpuLayers: 'max' });
    // node-llama-cpp's contextSize is per sequence (it allocates contextSize × sequences cells).
    const contextSize = Math.max(o.prefillIds.length + 16, o.shortIds.length + o.decodeTokens + 16);
    const context = await model.createContext({ contextSize, batchSize: Math.max(o.prefillIds.length, maxBatch), sequences: maxBatch });
    const loadMs = performance.now() - loadStart;
    try {
      const sequences = Array.from({ length: maxBatch }, () => context.getSequence());
      const first = sequences[0]!;
      // Time to first token right after load (cold, like webshard's).
      const firstStart = performance.now();
      for await (const _ of first.evaluate(o.shortIds as Token[], { temperature: 0 })) break;
      const timeToFirstTokenMs = openMs + loadMs + (performance.now() - firstStart);
      await first.clearHistory();

      // Like webshard's prefill: the whole prompt in, the first generated token out.
      const prefillOnce = async () => {
        const start = performance.now();
        for await (const _ of first.evaluate(o.prefillIds as Token[], { temperature: 0 })) break;
        const ms = performance.now() - start;
        await first.clearHistory();
        return ms;
      };
      await prefillOnce();
      const samplesMs: number[] = [];
      for (let r = 0; r < o.prefillRepeats; r++) samplesMs.push(await prefillOnce());
      const prefillMs = median(samplesMs);
      log(`  llama.cpp prefill ${o.prefillIds.length}: ${prefillMs.toFixed(1)} ms`);

      const decode: LlamaCppDecode[] = [];
      for (const batch of o.batches) {
        const run = async (tokens: number) => {
          const times: Array<{ at: number; sequence: number; index: number }> = [];
          await Promise.all(
            sequences.slice(0, batch).map(async (sequence, s) => {
              let index = 0;
              for await (const _ of sequence.evaluate(o.shortIds as Token[], { temperature: 0 })) {
                times.push({ at: performance.now(), sequence: s, index });
                if (++index > tokens) break;
              }
              await sequence.clearHistory();
            }),
          );
          return times;
        };
        await run(2); // warm-up
        const times = await run(o.decodeTokens);
        // From the moment every sequence has its first token to the last token of all (the
        // sequences run in lockstep: llama.cpp batches them into one decode per step).
        const start = Math.max(...times.filter((t) => t.index === 0).map((t) => t.at));
        const end = Math.max(...times.map((t) => t.at));
        const tokens = times.filter((t) => t.at > start).length;
        const windowMs = end - start;
        decode.push({ batch, tokens, windowMs, tokensPerSecond: (tokens / windowMs) * 1000 });
        log(`  llama.cpp decode batch ${batch}: ${((tokens / windowMs) * 1000).toFixed(1)} tok/s`);
      }
      return {
        available: true,
        version,
        gpu: llama.gpu,
        gpuDevices,
        openMs,
        loadMs,
        pageCache: o.pageCache,
        timeToFirstTokenMs,
        contextSize: context.contextSize,
        prefill: { tokens: o.prefillIds.length, ms: prefillMs, samplesMs, tokensPerSecond: (o.prefillIds.length / prefillMs) * 1000 },
        decode,
      };
    } finally {
      await context.dispose();
      await model.dispose();
    }
  } finally {
    await llama.dispose();
  }
}

// ---------------------------------------------------------------------------------------------
// PyTorch

export interface TorchShapes {
  /** Streaming-read bytes. */
  readBytes: number;
  rows: number;
  cols: number;
  prefillTokens: number;
}

export interface TorchResult {
  available: boolean;
  reason?: string;
  version?: string;
  device?: string;
  /** Read bandwidth of torch.sum over readBytes of f32, GB/s. */
  readGBps?: number;
  /** torch.mv with an f16 rows × cols matrix (cuBLAS), GB/s of the matrix + vectors. */
  matvecF16GBps?: number;
  /** (tokens × cols) @ (cols × rows) in f32 with TF32 off: the plain FMA rate cuBLAS reaches. */
  matmulF32Tflops?: number;
  /** The same in f16 (tensor cores): what the card's matrix units give. */
  matmulF16Tflops?: number;
}

const TORCH_SCRIPT = String.raw`
import json, sys
shapes = json.loads(sys.argv[1])
try:
    import torch
except Exception as e:
    print(json.dumps({"available": False, "reason": "python3 cannot import torch: %s" % e})); sys.exit(0)
out = {"version": torch.__version__}
if not torch.cuda.is_available():
    out.update(available=False, reason="torch %s sees no CUDA device" % torch.__version__)
    print(json.dumps(out)); sys.exit(0)
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
dev = torch.device("cuda")
out.update(available=True, device=torch.cuda.get_device_name(0))
def timed(fn, reps=20):
    for _ in range(3): fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(5):
        a = torch.cuda.Event(enable_timing=True); b = torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps): fn()
        b.record(); torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / reps)
    times.sort()
    return times[len(times) // 2]
n = shapes["readBytes"] // 4
x = torch.rand(n, device=dev)
ms = timed(lambda: x.sum())
out["readGBps"] = n * 4 / ms / 1e6
del x
R, C, T = shapes["rows"], shapes["cols"], shapes["prefillTokens"]
w = (torch.rand(R, C, device=dev) - 0.5).half()
v = torch.rand(C, device=dev).half()
ms = timed(lambda: torch.mv(w, v))
out["matvecF16GBps"] = (R * C * 2 + C * 2 + R * 2) / ms / 1e6
a = torch.rand(T, C, device=dev)
w32 = w.float()
ms = timed(lambda: a @ w32.t())
out["matmulF32Tflops"] = 2 * R * C * T / ms / 1e9
a16 = a.half()
ms = timed(lambda: a16 @ w.t())
out["matmulF16Tflops"] = 2 * R * C * T / ms / 1e9
print(json.dumps(out))
`;

/** PyTorch on the same card, if python3 has torch with CUDA; otherwise why not. Never throws. */
export function benchTorch(shapes: TorchShapes, python = 'python3'): TorchResult {
  try {
    const stdout = execFileSync(python, ['-c', TORCH_SCRIPT, JSON.stringify(shapes)], {
      encoding: 'utf8',
      timeout: 180_000,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const line = stdout.trim().split('\n').at(-1) ?? '';
    return JSON.parse(line) as TorchResult;
  } catch (error) {
    const e = error as { code?: string; stderr?: string; message: string };
    if (e.code === 'ENOENT') return { available: false, reason: `${python} is not installed` };
    const detail = (e.stderr ?? '').trim().split('\n').at(-1) || e.message;
    return { available: false, reason: `${python} failed: ${detail}` };
  }
}
