// AWQ and GPTQ 4-bit linear layers, read as they are: their packed nibbles, f16 scales and zero
// points are moved (never turned into floats) into webshard's Q4_ZP blocks, which the kernels
// decode like Q4_0 with a per-block zero point (src/shaders/quant-wgsl.ts).
//
// The checkpoint formats (HF nn.Linear weight W[n, k]: n output, k input; G the group size;
// nib(x, i) = (x >>> 4i) & 15 of an int32 read as u32):
//
// * AWQ "gemm" (AutoAWQ): qweight int32 [in, out/8] packed along the OUTPUT dim in interleaved
//   order (q[8c + j, k] = nib(qweight[k, c], REV[j]), REV = [0,4,1,5,2,6,3,7]); qzeros int32
//   [in/G, out/8] packed the same way; scales f16 [in/G, out]. W = (q - z) · s.
// * GPTQ (AutoGPTQ / GPTQModel): qweight int32 [in/8, out] packed along the INPUT dim in order
//   (q[n, 8r + j] = nib(qweight[r, n], j)); qzeros int32 [in/G, out/8] packed along the output
//   dim in order; scales f16 [in/G, out]; g_idx int32 [in], the group of each input column.
//   Checkpoint format "gptq" (v1) stores zero − 1 (readers add 1); "gptq_v2" stores the zero.
//   W = (q - z[g_idx[k]]) · s[g_idx[k]].
//
// Q4_ZP holds, per row n (an output feature) and 32 consecutive input columns, the f16 scale, the
// zero point (u16: GPTQ v1's 15 + 1 = 16 does not fit a nibble) and the 32 nibbles in Q4_0's
// order. Row-major per output row, so a matvec thread reads one row's nibbles contiguously. Each
// group of G ≥ 32 columns repeats its scale and zero in each of its G/32 blocks: 5 bits per weight
// whatever G (4.125 + 1/8 would be the minimum at G = 128), in exchange for one block layout and
// decoder for every group size, and for the int8 kernels, which work in blocks of 32.
//
// Act-order (GPTQ desc_act: g_idx not k // G) is handled once here, at load: the input columns are
// put in group order (a stable sort by g_idx), so each group's columns are contiguous and the
// blocks above apply. The permutation is returned as `inputOrder` (the tensor table carries it:
// GGUFTensorInfo.inputOrder), and the engine feeds the layer x'[t] = x[inputOrder[t]]:
//
// * the loader (src/engine/weights.ts) uploads the order as a u32 buffer beside the weight, and
//   stacks Q, K and V into one matmul only where their orders are equal (GPTQ sorts by the
//   Hessian of the layer's input, which q, k and v share; the test checkpoint's random g_idx
//   gives three orders);
// * matmulOps (src/shaders/matmul.ts) records one gather of the activations into the order
//   (gatherColumnsOp, src/shaders/elementwise.ts) into a scratch the runner sizes for a step × the
//   widest act-order input, then the unchanged matmul over it: one pass over T × k floats per
//   weight, far cheaper than a per-column group index in the kernels' inner loops, and the int8
//   kernels quantize x in blocks of the weight's columns as they must;
// * tensor parallelism: an output-row cut (q/k/v/gate/up) gathers the replicated input in the
//   whole order; an input-feature cut (o_proj, down_proj) is refused (actOrderColumnSplitRefusal)
//   by the planner and the loader, since its columns would need every shard's activations.
//
// Not done: down_proj's gather could vanish by reading gate_proj's and up_proj's rows in its
// order (their outputs are its input), which would also allow cutting down_proj; o_proj's would
// still refuse tensor parallelism, so only one gather of T × ffn floats per layer is at stake.
import { GGMLType } from './ggml-type.ts';
import { f16ToF32, f32ToF16 } from './quant.ts';
import { ModelFormatError, UnsupportedModelError } from './errors.ts';
import type { HfQuantization } from './hf-config.ts';
import { readSafetensorsBytes, type SafetensorsDtype, type SafetensorsModel, type SafetensorsTensor } from './safetensors.ts';

export type Int4Method = 'awq' | 'gptq';

/** The tensors of one 4-bit linear layer as the checkpoint stores them (int32 read as u32, f16 as bits). */
export interface Int4Linear {
  method: Int4Method;
  /** For messages: the file and the layer prefix (e.g. `model.layers.0.self_attn.q_proj`). */
  file: string;
  name: string;
  inFeatures: number;
  outFeatures: number;
  groupSize: number;
  qweight: Uint32Array;
  qzeros: Uint32Array;
  /** f16 bit patterns, [in/G, out]. */
  scales: Uint16Array;
  /** GPTQ only: the group of each input column (absent: k // G). */
  gIdx?: Int32Array;
  /** GPTQ only: "gptq" (v1, stored zero = zero − 1; the default) or "gptq_v2". */
  checkpointFormat?: string;
}

/** A layer as Q4_ZP rows: `rows` = outFeatures, `cols` = inFeatures, row-major blocks of 32. */
export interface Q4ZpWeight {
  type: typeof GGMLType.Q4_ZP;
  rows: number;
  cols: number;
  bytes: Uint8Array;
  /** Act-order only: column t of these rows is input feature inputOrder[t] (feed x[inputOrder[t]]). */
  inputOrder?: Int32Array;
}

/** AWQ's interleaved nibble order, inverted: output 8c + j is nibble AWQ_REVERSE_ORDER[j] of word c. */
export const AWQ_REVERSE_ORDER: readonly number[] = [0, 4, 1, 5, 2, 6, 3, 7];

const BLOCK = 32;
const BLOCK_BYTES = 20;

const nib = (word: number, i: number): number => (word >>> (4 * i)) & 0xf;

function layerError(l: Int4Linear, tensor: string, problem: string, fix: string): ModelFormatError {
  return new ModelFormatError({ file: l.file, tensor: `${l.name}.${tensor}`, problem: `${l.name}.${tensor}: ${problem}`, fix });
}

const REQUANTIZE_FIX = 'Re-export the checkpoint with AutoAWQ / AutoGPTQ / GPTQModel, or download it again';

/** Checks the shapes a layer's tensors must have (lengths of the flat arrays). */
function checkShapes(l: Int4Linear): void {
  const { inFeatures: k, outFeatures: n, groupSize: g } = l;
  if (!Number.isInteger(g) || g < BLOCK || g % BLOCK !== 0 || k % g !== 0) {
    throw new UnsupportedModelError({
      file: l.file,
      tensor: `${l.name}.qweight`,
      problem: `${l.name}: group size ${g} with ${k} input features is not supported (the kernels need groups of a multiple of 32 columns that divide the input)`,
      fix: 'Use a checkpoint quantized with group_size 32, 64 or 128',
    });
  }
  if (n % 8 !== 0) throw layerError(l, 'qzeros', `${n} output features are not a multiple of 8, so they cannot be packed 8 to an int32`, REQUANTIZE_FIX);
  const groups = k / g;
  const expect = (tensor: string, got: number, want: number, shape: string) => {
    if (got !== want) throw layerError(l, tensor, `holds ${got} values, but [${shape}] needs ${want}`, REQUANTIZE_FIX);
  };
  if (l.method === 'awq') expect('qweight', l.qweight.length, (k * n) / 8, `${k}, ${n / 8}`);
  else expect('qweight', l.qweight.length, (k / 8) * n, `${k / 8}, ${n}`);
  expect('qzeros', l.qzeros.length, (groups * n) / 8, `${groups}, ${n / 8}`);
  expect('scales', l.scales.length, groups * n, `${groups}, ${n}`);
  if (l.gIdx) expect('g_idx', l.gIdx.length, k, `${k}`);
}

/**
 * The input columns in group order (stable), or undefined when g_idx is k // G already. Refuses a
 * g_idx whose groups do not each hold exactly G columns.
 */
export function groupOrder(l: Int4Linear): Int32Array | undefined {
  const { gIdx, groupSize: g, inFeatures: k } = l;
  if (!gIdx) return undefined;
  const groups = k / g;
  const members = new Int32Array(groups);
  let inOrder = true;
  for (let c = 0; c < k; c++) {
    const group = gIdx[c]!;
    if (!Number.isInteger(group) || group < 0 || group >= groups) {
      throw layerError(l, 'g_idx', `column ${c} is in group ${group}, outside 0..${groups - 1}`, REQUANTIZE_FIX);
    }
    members[group]!++;
    if (group !== Math.floor(c / g)) inOrder = false;
  }
  const uneven = members.findIndex((m) => m !== g);
  if (uneven >= 0) throw layerError(l, 'g_idx', `group ${uneven} has ${members[uneven]} columns, not the group size ${g}`, REQUANTIZE_FIX);
  if (inOrder) return undefined;
  const next = new Int32Array(groups); // the next free slot of each group
  for (let group = 0; group < groups; group++) next[group] = group * g;
  const order = new Int32Array(k);
  for (let c = 0; c < k; c++) order[next[gIdx[c]!]!++] = c;
  return order;
}

/** The zero point GPTQ means by a stored nibble. */
function gptqZeroOffset(l: Pick<Int4Linear, 'checkpointFormat' | 'file'>): number {
  const format = l.checkpointFormat ?? 'gptq';
  if (format === 'gptq') return 1;
  if (format === 'gptq_v2') return 0;
  throw new UnsupportedModelError({
    file: l.file,
    field: 'quantization_config.checkpoint_format',
    problem: `GPTQ checkpoint_format "${format}" is not supported (supported: gptq, gptq_v2)`,
    fix: 'Use a checkpoint in the gptq or gptq_v2 format',
  });
}

/**
 * Converts one AWQ or GPTQ layer to Q4_ZP rows (bits moved, no float made); with `region`, only
 * those rows and blocks (a tensor-parallel shard's part), row-major with the region's width.
 */
export function int4ToQ4Zp(l: Int4Linear, region?: Q4ZpRegion): Q4ZpWeight {
  checkShapes(l);
  const { inFeatures: k, outFeatures: n, groupSize: g } = l;
  const { rows: [r0, r1], blocks: [b0, b1] } = checkRegion(l, region);
  const order = l.method === 'gptq' ? groupOrder(l) : undefined;
  const zeroOffset = l.method === 'gptq' ? gptqZeroOffset(l) : 0;
  const packedOut = n / 8;
  const zero =
    l.method === 'awq'
      ? (o: number, group: number) => nib(l.qzeros[group * packedOut + (o >> 3)]!, AWQ_REVERSE_ORDER[o & 7]!)
      : (o: number, group: number) => nib(l.qzeros[group * packedOut + (o >> 3)]!, o & 7) + zeroOffset;

  const rowBytes = (b1 - b0) * BLOCK_BYTES; // of the region's rows
  const bytes = new Uint8Array((r1 - r0) * rowBytes);
  for (let o = r0; o < r1; o++) {
    for (let b = b0; b < b1; b++) {
      const at = (o - r0) * rowBytes + (b - b0) * BLOCK_BYTES;
      const group = Math.floor((b * BLOCK) / g); // in group order, the block's group
      const scale = l.scales[group * n + o]!;
      const z = zero(o, group);
      bytes[at] = scale & 0xff;
      bytes[at + 1] = scale >> 8;
      bytes[at + 2] = z & 0xff;
      bytes[at + 3] = z >> 8;
    }
  }
  // The nibbles, walking the checkpoint's words in their own order rather than looking each weight
  // up (3–4 ns a weight instead of 8–11 on the 2-core test machine: this runs for every layer at
  // load time). Q4_ZP column t of a row is byte 4 + t mod 16 of block t / 32, low nibble for
  // t mod 32 < 16 (t counted from the region's first block).
  const columnOf = order ? new Int32Array(k) : undefined; // input column → Q4_ZP column
  if (order) order.forEach((c, t) => (columnOf![c] = t));
  const byteOf = (t: number) => (t >> 5) * BLOCK_BYTES + 4 + (t & 15);
  const shiftOf = (t: number) => (t & 16 ? 4 : 0);
  const q = l.qweight;
  if (l.method === 'awq') {
    // A block's 32 input rows of one packed word column hold its 8 outputs' 32 nibbles each:
    // gathered once, they make 8 rows' 16 bytes, written in sequence.
    const shifts = AWQ_REVERSE_ORDER.map((slot) => 4 * slot); // output 8w + j is nibble REV[j] of word w
    const words = new Uint32Array(BLOCK);
    for (let b = b0; b < b1; b++) {
      for (let w = r0 >> 3; w < (r1 + 7) >> 3; w++) {
        for (let c = 0; c < BLOCK; c++) words[c] = q[(b * BLOCK + c) * packedOut + w]!;
        for (let j = Math.max(0, r0 - 8 * w); j < Math.min(8, r1 - 8 * w); j++) {
          const shift = shifts[j]!;
          const at = (8 * w + j - r0) * rowBytes + (b - b0) * BLOCK_BYTES + 4;
          for (let m = 0; m < 16; m++) bytes[at + m] = ((words[m]! >>> shift) & 15) | (((words[m + 16]! >>> shift) & 15) << 4);
        }
      }
    }
  } else {
    // Packed row r holds input columns 8r .. 8r + 7; without act-order those are the region's
    // for r in its blocks' rows, with it any r may hold some (columns outside are skipped: -1).
    const columns = new Int32Array(8);
    const shifts = new Int32Array(8);
    const [t0, t1] = [b0 * BLOCK, b1 * BLOCK];
    const [firstRow, endRow] = columnOf ? [0, k / 8] : [t0 / 8, t1 / 8];
    for (let r = firstRow; r < endRow; r++) {
      for (let i = 0; i < 8; i++) {
        const t = columnOf ? columnOf[8 * r + i]! : 8 * r + i;
        const inside = t >= t0 && t < t1;
        [columns[i], shifts[i]] = [inside ? byteOf(t - t0) : -1, shiftOf(t)];
      }
      for (let o = r0, word = r * n + r0; o < r1; o++, word++) {
        const x = q[word]!;
        const rowAt = (o - r0) * rowBytes;
        for (let i = 0; i < 8; i++) if (columns[i]! >= 0) bytes[rowAt + columns[i]!]! |= ((x >>> (4 * i)) & 15) << shifts[i]!;
      }
    }
  }
  return { type: GGMLType.Q4_ZP, rows: r1 - r0, cols: (b1 - b0) * BLOCK, bytes, ...(order ? { inputOrder: order } : {}) };
}

/** Part of a layer's Q4_ZP rows: output rows [start, end) × 32-column blocks [start, end) (in group order). */
export interface Q4ZpRegion {
  rows: readonly [number, number];
  blocks: readonly [number, number];
}

/** The region asked for (default: the whole layer), checked to lie inside it. */
function checkRegion(l: Int4Linear, region: Q4ZpRegion | undefined): Q4ZpRegion {
  const whole: Q4ZpRegion = { rows: [0, l.outFeatures], blocks: [0, l.inFeatures / BLOCK] };
  if (!region) return whole;
  const inside = (range: readonly [number, number], size: number) => Number.isInteger(range[0]) && Number.isInteger(range[1]) && 0 <= range[0] && range[0] < range[1] && range[1] <= size;
  if (!inside(region.rows, l.outFeatures) || !inside(region.blocks, l.inFeatures / BLOCK)) {
    throw new RangeError(`${l.name}: region rows ${region.rows.join('..')} × blocks ${region.blocks.join('..')} is not inside ${l.outFeatures} rows × ${l.inFeatures / BLOCK} blocks`);
  }
  return region;
}

// ---------------------------------------------------------------------------------------------
// Writing a layer (the random checkpoint writer, tests): the inverse of the packing above

/** A layer's 4-bit codes before packing, in the input's own column order. */
export interface Int4Codes extends Pick<Int4Linear, 'method' | 'inFeatures' | 'outFeatures' | 'groupSize' | 'gIdx' | 'checkpointFormat'> {
  /** q[o · in + c], 0..15. */
  quants: Uint8Array;
  /** The zero point W = (q − z) · s uses, [o · groups + group] (GPTQ v1 stores it minus 1, so 1..16 there). */
  zeros: Uint8Array;
  /** f16 bits, [group · out + o], as the checkpoint stores them. */
  scales: Uint16Array;
}

/** The nibble of its word that output o goes to in AWQ's interleaved packing (the reader's order, read backwards). */
const awqSlot = (o: number): number => AWQ_REVERSE_ORDER[o & 7]!;

/** Packs codes into the checkpoint's tensors, as AutoAWQ (`WQLinear_GEMM.from_linear`) and AutoGPTQ (`QuantLinear.pack`) do. */
export function packInt4Linear(codes: Int4Codes, name = `${codes.method}.linear`, file = 'memory'): Int4Linear {
  const { method, inFeatures: k, outFeatures: n, groupSize: g } = codes;
  const groups = k / g;
  const zeroOffset = method === 'gptq' ? gptqZeroOffset({ checkpointFormat: codes.checkpointFormat, file }) : 0;
  const qzeros = new Uint32Array((groups * n) / 8);
  for (let group = 0; group < groups; group++) {
    for (let o = 0; o < n; o++) {
      const slot = method === 'awq' ? awqSlot(o) : o & 7;
      qzeros[group * (n / 8) + (o >> 3)]! |= (codes.zeros[o * groups + group]! - zeroOffset) << (4 * slot);
    }
  }
  const qweight = new Uint32Array((k * n) / 8);
  for (let o = 0; o < n; o++) {
    for (let c = 0; c < k; c++) {
      const q = codes.quants[o * k + c]!;
      if (method === 'awq') qweight[c * (n / 8) + (o >> 3)]! |= q << (4 * awqSlot(o));
      else qweight[(c >> 3) * n + o]! |= q << (4 * (c & 7));
    }
  }
  const { quants: _quants, zeros: _zeros, ...shape } = codes;
  return { ...shape, file, name, qweight, qzeros, scales: codes.scales };
}

/**
 * A GPTQ act-order g_idx: each input column's group, every group with groupSize members, in the
 * order `random` shuffles them (standing in for argsort of the Hessian's diagonal).
 */
export function actOrderGroupIndex(inFeatures: number, groupSize: number, random: () => number): Int32Array {
  const gIdx = new Int32Array(inFeatures).map((_, c) => Math.floor(c / groupSize));
  for (let i = inFeatures - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [gIdx[i], gIdx[j]] = [gIdx[j]!, gIdx[i]!];
  }
  return gIdx;
}

/** Rounds half to even, as torch.round does. */
const roundHalfEven = (x: number): number => (Math.abs(x % 1) === 0.5 ? 2 * Math.round(x / 2) : Math.round(x));

export interface Int4QuantizeOptions extends Pick<Int4Linear, 'method' | 'inFeatures' | 'outFeatures' | 'groupSize' | 'checkpointFormat'> {
  /** A zero point per group (AWQ's zero_point, GPTQ's !sym); else GPTQ's symmetric zero 8. */
  zeroPoint: boolean;
  /** GPTQ act-order: the group of each input column (each group must have groupSize members). */
  gIdx?: Int32Array;
}

/**
 * Round-to-nearest 4-bit quantization of W[out][in] (row-major f32), as AutoAWQ's
 * `pseudo_quantize_tensor` (zero point: s = f16((max − min)/15), z = −round(min/s)) and AutoGPTQ's
 * `Quantizer` (sym: s = f16(2·max|w|/15), z = 8) compute codes, without calibration.
 */
export function quantizeInt4Codes(w: Float32Array, o: Int4QuantizeOptions): Int4Codes {
  const { inFeatures: k, outFeatures: n, groupSize: g } = o;
  const groups = k / g;
  const groupOf = (c: number) => (o.gIdx ? o.gIdx[c]! : Math.floor(c / g));
  const quants = new Uint8Array(n * k);
  const zeros = new Uint8Array(n * groups);
  const scales = new Uint16Array(groups * n);
  const low = new Float64Array(groups);
  const high = new Float64Array(groups);
  for (let row = 0; row < n; row++) {
    low.fill(Infinity);
    high.fill(-Infinity);
    for (let c = 0; c < k; c++) {
      const v = w[row * k + c]!;
      const group = groupOf(c);
      low[group] = Math.min(low[group]!, v);
      high[group] = Math.max(high[group]!, v);
    }
    const scale = new Float64Array(groups);
    for (let group = 0; group < groups; group++) {
      let [min, max] = [low[group]!, high[group]!];
      let s: number, z: number;
      if (o.zeroPoint) {
        if (o.method === 'gptq') [min, max] = [Math.min(min, 0), Math.max(max, 0)];
        s = f16ToF32(f32ToF16(Math.max(max - min, 1e-5) / 15));
        z = Math.min(15, Math.max(0, -roundHalfEven(min / s)));
      } else {
        const bound = Math.max(Math.abs(min), Math.abs(max)) || 1;
        s = f16ToF32(f32ToF16((2 * bound) / 15));
        z = 8;
      }
      scale[group] = s;
      scales[group * n + row] = f32ToF16(s);
      // GPTQ v1 stores z − 1 in a nibble, so a zero of 0 cannot be written (AutoGPTQ's known wrap): use 1.
      zeros[row * groups + group] = o.method === 'gptq' && (o.checkpointFormat ?? 'gptq') === 'gptq' ? Math.max(1, z) : z;
    }
    for (let c = 0; c < k; c++) {
      const group = groupOf(c);
      const z = zeros[row * groups + group]!;
      quants[row * k + c] = Math.min(15, Math.max(0, roundHalfEven(w[row * k + c]! / scale[group]!) + z));
    }
  }
  const { method, checkpointFormat } = o;
  return { method, inFeatures: k, outFeatures: n, groupSize: g, quants, zeros, scales, ...(o.gIdx ? { gIdx: o.gIdx } : {}), ...(checkpointFormat ? { checkpointFormat } : {}) };
}

// ---------------------------------------------------------------------------------------------
// Reading a layer from a checkpoint

/** Copies into an aligned buffer: tensors start anywhere in a file, typed arrays need alignment. */
const aligned = (bytes: Uint8Array): ArrayBuffer => bytes.slice().buffer;

/** A layer's group size: the config's, or all its input features for group_size -1. */
export function groupSizeOf(q: Pick<HfQuantization, 'groupSize'>, inFeatures: number): number {
  return q.groupSize === -1 ? inFeatures : q.groupSize;
}

/**
 * Reads the packed tensors of one quantized linear layer (`prefix` e.g.
 * `model.layers.0.self_attn.q_proj`): qweight, qzeros, scales (and g_idx for GPTQ, if present),
 * checking their dtypes and shapes against each other and the quantization config.
 */
export async function readInt4Linear(model: Pick<SafetensorsModel, 'tensor' | 'hasTensor'>, prefix: string, q: HfQuantization): Promise<Int4Linear> {
  const part = (name: string, dtype: SafetensorsDtype, rank: number): SafetensorsTensor => {
    const t = model.tensor(`${prefix}.${name}`);
    if (t.dtype !== dtype || t.shape.length !== rank) {
      throw new ModelFormatError({
        file: t.source.name,
        tensor: t.name,
        problem: `${t.name} is ${t.dtype} [${t.shape.join(', ')}], but ${q.method.toUpperCase()} stores ${name} as ${rank}-D ${dtype}`,
        fix: `Check that config.json's quantization_config (${q.method}) matches the checkpoint, or export it again`,
      });
    }
    return t;
  };
  const qweight = part('qweight', 'I32', 2);
  const [inFeatures, outFeatures] = q.method === 'awq' ? [qweight.shape[0]!, qweight.shape[1]! * 8] : [qweight.shape[0]! * 8, qweight.shape[1]!];
  const scales = part('scales', 'F16', 2);
  if (scales.shape[1] !== outFeatures) {
    throw new ModelFormatError({
      file: scales.source.name,
      tensor: scales.name,
      problem: `${scales.name} has ${scales.shape[1]} output features, but ${qweight.name} [${qweight.shape.join(', ')}] read as ${q.method.toUpperCase()} has ${outFeatures}`,
      fix: `Check that config.json's quant_method (${q.method}) is the checkpoint's format`,
    });
  }
  const gIdxName = `${prefix}.g_idx`;
  const gIdx = q.method === 'gptq' && model.hasTensor(gIdxName) ? new Int32Array(aligned(await readSafetensorsBytes(part('g_idx', 'I32', 1)))) : undefined;
  // Shapes are checked (with the tensor's name) by int4ToQ4Zp against in/out features and the group size.
  return {
    method: q.method,
    file: qweight.source.name,
    name: prefix,
    inFeatures,
    outFeatures,
    groupSize: groupSizeOf(q, inFeatures),
    qweight: new Uint32Array(aligned(await readSafetensorsBytes(qweight))),
    qzeros: new Uint32Array(aligned(await readSafetensorsBytes(part('qzeros', 'I32', 2)))),
    scales: new Uint16Array(aligned(await readSafetensorsBytes(scales))),
    ...(gIdx ? { gIdx } : {}),
    checkpointFormat: q.checkpointFormat,
  };
}

// ---------------------------------------------------------------------------------------------
// Tensor-parallel cuts

/** A weight cut that does not fall on a packing or group boundary. */
export class QuantizedSplitError extends Error {
  override name = 'QuantizedSplitError';
  constructor(
    readonly tensor: string,
    readonly axis: 'rows' | 'columns',
    readonly cut: number,
    readonly granularity: number,
    why: string,
  ) {
    super(`${tensor}: cannot cut the ${axis} at ${cut}: ${axis} cuts must be multiples of ${granularity} (${why}). Use a shard count that divides the layer into multiples of ${granularity}, or fewer shards`);
  }
}

/**
 * Why an act-order layer (a tensor with an `inputOrder`) cannot be cut by input features: its
 * columns are in group order, so one shard's columns multiply input features from every shard's
 * slice of the activations, which would take an all-gather per layer. Cutting its output rows is
 * fine (each shard gathers its replicated input in the whole order).
 */
export function actOrderColumnSplitRefusal(tensor: string): { problem: string; fix: string } {
  return {
    problem: `${tensor} is a GPTQ act-order (desc_act) layer: its columns are in group order, so a tensor-parallel cut of its input features would need every shard's activations`,
    fix: 'Use tp=1 (pipeline parallelism, which splits by layers, works), or a checkpoint quantized without desc_act',
  };
}

/** What a layer needs to know where it may be cut. */
export type Int4Shape = Pick<Int4Linear, 'method' | 'name' | 'inFeatures' | 'outFeatures' | 'groupSize'>;

/**
 * Where a 4-bit layer may be cut for tensor parallelism, in output features (`rows`, the
 * column-parallel split) or input features (`columns`, the row-parallel split): rows on whole
 * int32 words of 8 packed outputs (AWQ's qweight, both formats' qzeros), columns on whole groups
 * (each shard then reads only its rows of scales and qzeros; for act-order the cut is in group
 * order, see the top of this file).
 */
export function int4SplitGranularity(l: Int4Shape, axis: 'rows' | 'columns'): { granularity: number; why: string } {
  if (axis === 'rows') return { granularity: 8, why: `${l.method.toUpperCase()} packs 8 output features into each int32 of its zero points` };
  return { granularity: l.groupSize, why: `each group of ${l.groupSize} input features shares one scale and zero point` };
}

/** Checks the cuts (each an index inside 0..size) of one axis; throws QuantizedSplitError naming the first bad one. */
export function checkInt4Split(l: Int4Shape, axis: 'rows' | 'columns', cuts: readonly number[]): void {
  const { granularity, why } = int4SplitGranularity(l, axis);
  const size = axis === 'rows' ? l.outFeatures : l.inFeatures;
  for (const cut of cuts) {
    if (!Number.isInteger(cut) || cut < 0 || cut > size || cut % granularity !== 0) {
      throw new QuantizedSplitError(l.name, axis, cut, granularity, cut > size ? `and inside 0..${size}` : why);
    }
  }
}
