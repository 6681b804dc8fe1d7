// Plain-TypeScript references for AWQ and GPTQ checkpoints, written straight from the formulas in
// ../shared/models/README.md (AutoAWQ dequantize_gemm, vLLM's GPTQ reader), independent of the
// loader's conversion to Q4_ZP: a dequantizer to f32 W[out][in], and random layers of any group
// size, symmetric or not, v1 or v2 zeros, with or without act-order (packed by the writer's
// packInt4Linear; this file's dequantizer reads them back independently).
import { f16ToF32, f32ToF16 } from '../../src/model/quant.ts';
import { actOrderGroupIndex, packInt4Linear, type Int4Linear } from '../../src/model/awq-gptq.ts';
import { rng } from '../helpers/gpu.ts';
import { gatherColumnsRef } from './ops.ts';

const AWQ_REVERSE = [0, 4, 1, 5, 2, 6, 3, 7];
const nib = (x: number, i: number) => (x >>> (4 * i)) & 0xf;

/** W[n][k] (row-major, out × in) of a layer, each value (q − z) · s in f32, exact. */
export function dequantizeInt4Reference(l: Int4Linear): Float32Array {
  const { inFeatures: k, outFeatures: n, groupSize: g } = l;
  const w = new Float32Array(n * k);
  const v1 = l.method === 'gptq' && (l.checkpointFormat ?? 'gptq') === 'gptq';
  for (let o = 0; o < n; o++) {
    for (let c = 0; c < k; c++) {
      const group = l.method === 'gptq' && l.gIdx ? l.gIdx[c]! : Math.floor(c / g);
      let q: number, z: number;
      if (l.method === 'awq') {
        q = nib(l.qweight[c * (n / 8) + (o >> 3)]!, AWQ_REVERSE[o & 7]!);
        z = nib(l.qzeros[group * (n / 8) + (o >> 3)]!, AWQ_REVERSE[o & 7]!);
      } else {
        q = nib(l.qweight[(c >> 3) * n + o]!, c & 7);
        z = nib(l.qzeros[group * (n / 8) + (o >> 3)]!, o & 7) + (v1 ? 1 : 0);
      }
      w[o * k + c] = Math.fround((q - z) * f16ToF32(l.scales[group * n + o]!));
    }
  }
  return w;
}

export interface RandomInt4Options {
  method: 'awq' | 'gptq';
  inFeatures: number;
  outFeatures: number;
  groupSize: number;
  /** Zero points vary per group (else 8: GPTQ's sym). */
  asymmetric: boolean;
  /** GPTQ: permute the groups of the input columns (desc_act). */
  actOrder?: boolean;
  checkpointFormat?: 'gptq' | 'gptq_v2';
  seed: number;
}

/** A random layer in the checkpoint's packing (as AutoAWQ / AutoGPTQ write it). */
export function randomInt4Linear(o: RandomInt4Options): Int4Linear {
  const next = rng(o.seed);
  const { inFeatures: k, outFeatures: n, groupSize: g } = o;
  const groups = k / g;
  const quants = new Uint8Array(n * k).map(() => Math.floor(next() * 16));
  // v1 stores zero − 1 in a nibble, so its zeros are 1..16; v2 and AWQ store 0..15.
  const v1 = o.method === 'gptq' && (o.checkpointFormat ?? 'gptq') === 'gptq';
  const zeros = new Uint8Array(n * groups).map(() => (o.asymmetric ? Math.floor(next() * 16) + (v1 ? 1 : 0) : 8));
  const scales = new Uint16Array(groups * n).map(() => f32ToF16((next() * 2 - 1) * 0.05));
  let gIdx: Int32Array | undefined;
  if (o.method === 'gptq') gIdx = o.actOrder ? actOrderGroupIndex(k, g, next) : new Int32Array(k).map((_, c) => Math.floor(c / g));
  const codes = { method: o.method, inFeatures: k, outFeatures: n, groupSize: g, quants, zeros, scales, ...(gIdx ? { gIdx } : {}), ...(o.checkpointFormat ? { checkpointFormat: o.checkpointFormat } : {}) };
  return packInt4Linear(codes, `random.${o.method}`, 'random');
}

/** x with its columns in the order a Q4_ZP weight made with `inputOrder` expects: x'[t] = x[order[t]]. */
export function permuteColumns(x: Float32Array, cols: number, order: Int32Array | undefined): Float32Array {
  return order ? gatherColumnsRef(x, x.length / cols, cols, order) : x;
}
