// A plain-TypeScript forward pass (llama2.c's forward(), in f64) with the family switches of
// config.family (Q/K/V biases, per-head Q/K RMSNorm, neox RoPE, fused QKV and gate‖up as
// llama.cpp's graphs read them): the oracle the GPU forward pass is tested against. Weights are
// dequantized with the CPU dequantizers.

import { ropePositionScale, type LlamaConfig } from '../../src/model/config.ts';
import { readTensorBytes, type GGUFFile } from '../../src/model/gguf.ts';
import { dequantize } from '../../src/model/quant.ts';

interface Matrix {
  rows: number;
  cols: number;
  data: Float32Array;
}

async function tensor(file: GGUFFile, name: string): Promise<Matrix> {
  const t = file.tensor(name);
  const count = t.shape.reduce((a, b) => a * b, 1);
  const data = dequantize(t.type, await readTensorBytes(file, t), count);
  return { cols: t.shape[0]!, rows: count / t.shape[0]!, data };
}

function matvec(w: Matrix, x: Float64Array): Float64Array {
  const out = new Float64Array(w.rows);
  for (let r = 0; r < w.rows; r++) {
    let sum = 0;
    const row = r * w.cols;
    for (let c = 0; c < w.cols; c++) sum += w.data[row + c]! * x[c]!;
    out[r] = sum;
  }
  return out;
}

function rmsnorm(x: Float64Array, weight: Matrix, eps: number): Float64Array {
  let ss = 0;
  for (const v of x) ss += v * v;
  const scale = 1 / Math.sqrt(ss / x.length + eps);
  return x.map((v, i) => v * scale * weight.data[i]!);
}

/** Each head of `x` RMS-normalized with one weight per head dim (Qwen3's Q/K norm). */
function rmsnormHeads(x: Float64Array, headDim: number, weight: Matrix, eps: number): Float64Array {
  const out = new Float64Array(x.length);
  for (let h = 0; h < x.length / headDim; h++) out.set(rmsnorm(x.subarray(h * headDim, (h + 1) * headDim), weight, eps), h * headDim);
  return out;
}

/**
 * Rotates pair i of every head by pos · base^(-2i/ropeDims): the pair is adjacent dims (2i, 2i+1)
 * for "normal" RoPE (llama's permuted GGUF Q/K rows), dims (i, i + ropeDims/2) for "neox".
 */
function rope(x: Float64Array, nHeads: number, headDim: number, ropeDims: number, pos: number, base: number, style: 'normal' | 'neox', factors?: Float32Array): void {
  for (let h = 0; h < nHeads; h++) {
    for (let i = 0; i < ropeDims / 2; i++) {
      const theta = (pos * Math.pow(base, (-2 * i) / ropeDims)) / (factors?.[i] ?? 1);
      const [c, s] = [Math.cos(theta), Math.sin(theta)];
      const [j, k] = style === 'neox' ? [h * headDim + i, h * headDim + i + ropeDims / 2] : [h * headDim + 2 * i, h * headDim + 2 * i + 1];
      const [a, b] = [x[j]!, x[k]!];
      x[j] = a * c - b * s;
      x[k] = a * s + b * c;
    }
  }
}

const plus = (x: Float64Array, bias: Matrix | undefined): Float64Array => (bias ? x.map((v, i) => v + bias.data[i]!) : x);

export class ReferenceLlama {
  private keys: Float64Array[][] = [];
  private values: Float64Array[][] = [];

  private constructor(
    readonly config: LlamaConfig,
    private readonly w: Map<string, Matrix>,
  ) {}

  static async load(file: GGUFFile, config: LlamaConfig): Promise<ReferenceLlama> {
    const w = new Map<string, Matrix>();
    for (const t of file.tensors) w.set(t.name, await tensor(file, t.name));
    return new ReferenceLlama(config, w);
  }

  private m(name: string): Matrix {
    return this.w.get(name)!;
  }

  /** Runs one token at position `pos` (positions must come in order) and returns its logits. */
  forward(token: number, pos: number): Float64Array {
    const c = this.config;
    const hd = c.headDim;
    const group = c.nHeads / c.nKvHeads;
    const embedding = this.m('token_embd.weight');
    let x = Float64Array.from(embedding.data.subarray(token * c.dim, (token + 1) * c.dim));
    for (let l = 0; l < c.nLayers; l++) {
      const p = `blk.${l}.`;
      const n = rmsnorm(x, this.m(p + 'attn_norm.weight'), c.rmsEps);
      let q: Float64Array, k: Float64Array, v: Float64Array;
      if (c.family.fusedQkv) {
        const qkv = matvec(this.m(p + 'attn_qkv.weight'), n);
        const [qDim, kvDim] = [c.nHeads * hd, c.nKvHeads * hd];
        [q, k, v] = [qkv.slice(0, qDim), qkv.slice(qDim, qDim + kvDim), qkv.slice(qDim + kvDim)];
      } else {
        [q, k, v] = ['attn_q', 'attn_k', 'attn_v'].map((name) => matvec(this.m(p + name + '.weight'), n)) as [Float64Array, Float64Array, Float64Array];
      }
      if (c.family.qkvBias) [q, k, v] = [plus(q, this.m(p + 'attn_q.bias')), plus(k, this.m(p + 'attn_k.bias')), plus(v, this.m(p + 'attn_v.bias'))];
      if (c.family.qkNorm) [q, k] = [rmsnormHeads(q, hd, this.m(p + 'attn_q_norm.weight'), c.rmsEps), rmsnormHeads(k, hd, this.m(p + 'attn_k_norm.weight'), c.rmsEps)];
      const factors = c.ropeFreqsTensor ? this.m(c.ropeFreqsTensor).data : undefined;
      rope(q, c.nHeads, hd, c.ropeDims, pos / ropePositionScale(c), c.ropeBase, c.family.ropeStyle, factors);
      rope(k, c.nKvHeads, hd, c.ropeDims, pos / ropePositionScale(c), c.ropeBase, c.family.ropeStyle, factors);
      ((this.keys[l] ??= [])[pos] = k), ((this.values[l] ??= [])[pos] = v);
      const attention = new Float64Array(c.nHeads * hd);
      for (let h = 0; h < c.nHeads; h++) {
        const kv = Math.floor(h / group) * hd;
        const scores = new Float64Array(pos + 1);
        for (let t = 0; t <= pos; t++) {
          let dot = 0;
          for (let i = 0; i < hd; i++) dot += q[h * hd + i]! * this.keys[l]![t]![kv + i]!;
          scores[t] = dot / Math.sqrt(hd);
        }
        const max = Math.max(...scores);
        const e = scores.map((s) => Math.exp(s - max));
        const sum = e.reduce((a, b) => a + b, 0);
        for (let t = 0; t <= pos; t++) {
          for (let i = 0; i < hd; i++) attention[h * hd + i]! += (e[t]! / sum) * this.values[l]![t]![kv + i]!;
        }
      }
      const attentionOut = matvec(this.m(p + 'attn_output.weight'), attention);
      x = x.map((xi, i) => xi + attentionOut[i]!);
      const n2 = rmsnorm(x, this.m(p + 'ffn_norm.weight'), c.rmsEps);
      let gate: Float64Array, up: Float64Array;
      if (c.family.fusedGateUp) {
        const gateUp = matvec(this.m(p + 'ffn_up.weight'), n2);
        [gate, up] = [gateUp.slice(0, c.ffnDim), gateUp.slice(c.ffnDim)];
      } else {
        [gate, up] = [matvec(this.m(p + 'ffn_gate.weight'), n2), matvec(this.m(p + 'ffn_up.weight'), n2)];
      }
      const hidden = gate.map((g, i) => (g / (1 + Math.exp(-g))) * up[i]!);
      const down = matvec(this.m(p + 'ffn_down.weight'), hidden);
      x = x.map((xi, i) => xi + down[i]!);
    }
    const head = this.w.get('output.weight') ?? embedding;
    return matvec(head, rmsnorm(x, this.m('output_norm.weight'), c.rmsEps));
  }

  /** Logits after the whole prompt. */
  promptLogits(ids: readonly number[]): Float64Array {
    let logits: Float64Array = new Float64Array();
    ids.forEach((id, pos) => (logits = this.forward(id, pos)));
    return logits;
  }
}
