// The fast load path against the plain one: the word-at-a-time repacking (src/model/repack.ts)
// and the streamed, chunked upload (src/engine/weights.ts) must put exactly the words on the GPU
// that the block-by-block reference repack (test/reference/repack.ts) makes, for every type.
import { describe, expect, it } from 'vitest';
import { rng, testGpu } from './helpers/gpu.ts';
import { repackReference } from './reference/repack.ts';
import { readU32 } from '../src/gpu/kernel.ts';
import type { GpuContext } from '../src/gpu/device.ts';
import { blockGeometry, ggmlTypeName, GGMLType } from '../src/model/ggml-type.ts';
import { gpuLayout, repackableTypes, repackForGpu, repackRows, rowsPlacement } from '../src/model/repack.ts';
import { bytesSource, type ByteSource } from '../src/model/source.ts';
import { uploadWeights, type WeightRead } from '../src/engine/weights.ts';

function randomBytes(length: number, seed: number): Uint8Array {
  const next = rng(seed);
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = Math.floor(next() * 256);
  return bytes;
}

const isFloat = (type: GGMLType) => type === GGMLType.F32 || type === GGMLType.F16 || type === GGMLType.BF16;

/** Row lengths per type: for floats one that needs padding to 8 and two that do not; else odd and even blocks per row. */
function columnsFor(type: GGMLType): number[] {
  if (isFloat(type)) return [13, 16, 40];
  const block = blockGeometry[type]!.blockSize;
  return [block, 2 * block, 3 * block];
}

const fileBytes = (type: GGMLType, rows: number, cols: number) => (rows * cols / blockGeometry[type]!.blockSize) * blockGeometry[type]!.typeSize;

describe('fast repacking', () => {
  for (const type of repackableTypes()) {
    it(`${ggmlTypeName(type)}: the same words as the reference, for any shape and alignment`, () => {
      let seed = type * 100;
      for (const cols of columnsFor(type)) {
        for (const rows of [1, 2, 3, 7]) {
          const length = fileBytes(type, rows, cols);
          const backing = randomBytes(length + 3, ++seed);
          for (const misalign of [0, 1, 2, 3]) {
            const bytes = backing.subarray(misalign, misalign + length);
            const expected = repackReference(type, rows, cols, bytes);
            const { layout, words } = repackForGpu(type, rows, cols, bytes);
            expect(layout).toEqual(gpuLayout(type, rows, cols));
            expect(words.length, `${rows} × ${cols}`).toBe(expected.length);
            expect(words, `${ggmlTypeName(type)} ${rows} × ${cols}, byte offset ${misalign}`).toEqual(expected);
          }
        }
      }
    });
  }

  it('repackRows in pieces of rows writes every byte of reused (dirty) outputs', () => {
    for (const type of repackableTypes()) {
      for (const cols of columnsFor(type)) {
        const rows = 9;
        const bytes = randomBytes(fileBytes(type, rows, cols), type);
        const layout = gpuLayout(type, rows, cols);
        const gpuBytes = new Uint8Array(layout.totalWords * 4);
        const rowFileBytes = fileBytes(type, 1, cols);
        // Pieces that start on even blocks (what the uploader guarantees), else single rows.
        const step = layout.scalesOffset > 0 && layout.blocksPerRow % 2 === 1 ? 2 : 3;
        for (let first = 0; first < rows; first += step) {
          const count = Math.min(step, rows - first);
          const at = rowsPlacement(layout, first, count);
          const quants = new Uint8Array(at.quantsBytes).fill(0xaa);
          const scales = new Uint8Array(Math.ceil(at.scalesBytes / 4) * 4).fill(0xaa);
          repackRows(layout, bytes.subarray(first * rowFileBytes), count, quants, at.scalesBytes > 0 ? scales : undefined);
          gpuBytes.set(quants, at.quantsAt);
          if (at.scalesBytes > 0) gpuBytes.set(scales, at.scalesAt);
        }
        expect(new Uint32Array(gpuBytes.buffer), `${ggmlTypeName(type)} × ${cols}`).toEqual(repackReference(type, rows, cols, bytes));
      }
    }
  });
});

/** A source with only `read` (no `readInto`), like a user's own ByteSource: the loader falls back to it. */
function readOnlySource(inner: ByteSource): ByteSource {
  return {
    name: inner.name,
    get size() {
      return inner.size;
    },
    get bytesRead() {
      return inner.bytesRead;
    },
    read: (offset, length) => inner.read(offset, length),
    close: () => inner.close(),
  };
}

interface Case {
  read: WeightRead;
  /** The slice's bytes, row after row (what the reference repacks). */
  bytes: Uint8Array;
}

/** One weight of every type back to back in a file: whole ones, and column slices of wider ones. */
function buildFile(): { file: Uint8Array; cases: Case[] } {
  const pieces: Uint8Array[] = [];
  const cases: Case[] = [];
  let offset = 0;
  let seed = 1;
  const add = (bytes: Uint8Array) => {
    const at = offset;
    pieces.push(bytes, new Uint8Array(6)); // a gap, so weights start unaligned in the file
    offset += bytes.length + 6;
    return at;
  };
  for (const type of repackableTypes()) {
    const block = blockGeometry[type]!.blockSize;
    for (const [rows, cols] of isFloat(type) ? [[37, 13], [29, 24]] : [[37, block], [30, 3 * block], [19, 2 * block]]) {
      const bytes = randomBytes(fileBytes(type, rows!, cols!), ++seed);
      const rowLength = fileBytes(type, 1, cols!);
      cases.push({ read: { label: `${ggmlTypeName(type)} ${rows} × ${cols}`, type, cols: cols!, segments: [{ rows: rows!, at: { offset: add(bytes), stride: rowLength, length: rowLength } }] }, bytes });
    }
    // Columns [block, 3 block) of a 4-block-wide weight (for floats, 8 of 32 values at 16).
    const [wide, first, width] = isFloat(type) ? [32, 16, 8] : [4 * block, block, 2 * block];
    const rows = 23;
    const bytes = randomBytes(fileBytes(type, rows, wide), ++seed);
    const stride = fileBytes(type, 1, wide);
    const skip = fileBytes(type, 1, first);
    const length = fileBytes(type, 1, width);
    const slice = new Uint8Array(rows * length);
    for (let r = 0; r < rows; r++) slice.set(bytes.subarray(r * stride + skip, r * stride + skip + length), r * length);
    const at = add(bytes);
    cases.push({ read: { label: `${ggmlTypeName(type)} columns`, type, cols: width, segments: [{ rows, at: { offset: at + skip, stride, length } }] }, bytes: slice });

    // Rows stacked from three places (as a layer's Q, K and V): odd row counts, so with one
    // block per row a segment (and a chunk) starts on an odd block; the middle one is a column
    // slice of a wider weight, so its rows are not contiguous in the file.
    const cols = isFloat(type) ? 13 : block;
    const rowLength = fileBytes(type, 1, cols);
    const segments: WeightRead['segments'] = [];
    const stacked: Uint8Array[] = [];
    for (const [n, sliced] of [[5, false], [3, true], [7, false]] as const) {
      if (!sliced) {
        const rowsBytes = randomBytes(n * rowLength, ++seed);
        segments.push({ rows: n, at: { offset: add(rowsBytes), stride: rowLength, length: rowLength } });
        stacked.push(rowsBytes);
        continue;
      }
      // Columns [cols, 2 cols) of a 3-col-wide weight.
      const wideBytes = randomBytes(n * 3 * rowLength, ++seed);
      segments.push({ rows: n, at: { offset: add(wideBytes) + rowLength, stride: 3 * rowLength, length: rowLength } });
      for (let r = 0; r < n; r++) stacked.push(wideBytes.subarray((3 * r + 1) * rowLength, (3 * r + 2) * rowLength));
    }
    const all = new Uint8Array(stacked.reduce((sum, b) => sum + b.length, 0));
    stacked.reduce((at, b) => (all.set(b, at), at + b.length), 0);
    cases.push({ read: { label: `${ggmlTypeName(type)} stacked`, type, cols, segments }, bytes: all });
  }
  const file = new Uint8Array(offset);
  let at = 0;
  for (const piece of pieces) {
    file.set(piece, at);
    at += piece.length;
  }
  return { file, cases };
}

async function expectSameWords(gpu: GpuContext, source: ByteSource, cases: Case[], chunkBytes: number): Promise<void> {
  const before = source.bytesRead;
  const progress: number[] = [];
  const { weights } = await uploadWeights(gpu, source, cases.map((c) => c.read), { chunkBytes, onRead: (done) => progress.push(done) });
  const expectedRead = cases.reduce((sum, c) => sum + c.bytes.length, 0);
  // Exactly the slices' bytes are read, once.
  expect(source.bytesRead - before).toBe(expectedRead);
  expect(progress.at(-1)).toBe(expectedRead);
  for (const [i, c] of cases.entries()) {
    const parts = weights[i]!;
    const { type, cols } = c.read;
    const rows = c.read.segments.reduce((sum, segment) => sum + segment.rows, 0);
    const rowLength = fileBytes(type, 1, cols);
    expect(parts.reduce((sum, p) => sum + p.rows, 0)).toBe(rows);
    for (const part of parts) {
      expect(part.totalRows).toBe(rows);
      expect(part.layout).toEqual(gpuLayout(type, part.rows, cols));
      const words = await readU32(gpu.device, part.buffer, part.layout.totalWords);
      const expected = repackReference(type, part.rows, cols, c.bytes.subarray(part.rowOffset * rowLength, (part.rowOffset + part.rows) * rowLength));
      expect(words, `${part.label}, chunks of ${chunkBytes} bytes`).toEqual(expected);
      part.buffer.destroy();
    }
  }
}

describe('streamed upload', () => {
  const { file, cases } = buildFile();

  it('writes the reference words for every type, across chunk, segment and binding boundaries', async () => {
    const gpu = await testGpu();
    // 2 KiB bindings, so the bigger weights are uploaded as several parts, as in a browser.
    const small = { ...gpu, limits: { maxBufferSize: gpu.limits.maxBufferSize, maxStorageBufferBindingSize: 2048 } as GPUSupportedLimits };
    for (const chunkBytes of [1, 100, 333, 1 << 20]) await expectSameWords(small, bytesSource(file), cases, chunkBytes);
  });

  it('works the same through a source without readInto', async () => {
    const gpu = await testGpu();
    await expectSameWords(gpu, readOnlySource(bytesSource(file)), cases, 250);
  });
});
