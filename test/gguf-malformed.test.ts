// Corrupt and hostile GGUF files: each must fail with a ModelFormatError that names the field or
// tensor at fault, and none may make the reader allocate more than the file could hold.
import { describe, expect, it } from 'vitest';
import { GGMLType } from '../src/model/ggml-type.ts';
import { readGGUF } from '../src/model/gguf.ts';
import { ggufValue, writeGGUF, type GGUFTensorSpec } from '../src/model/gguf-writer.ts';
import { ModelFormatError } from '../src/model/errors.ts';
import { bytesSource } from '../src/model/source.ts';

const tensors: GGUFTensorSpec[] = [
  { name: 'alpha', shape: [32, 2], type: GGMLType.F32, data: new Uint8Array(256) },
  { name: 'beta', shape: [64, 3], type: GGMLType.Q8_0, data: new Uint8Array(6 * 34) },
];

function validFile(): Uint8Array {
  return writeGGUF({
    metadata: [
      ['general.architecture', ggufValue.string('llama')],
      ['tokenizer.ggml.tokens', ggufValue.array('string', ['<unk>', '<s>', '</s>'])],
      ['tokenizer.ggml.scores', ggufValue.array('f32', [0, 0, -1])],
      ['llama.block_count', ggufValue.u32(1)],
    ],
    tensors,
  });
}

/** Where a length-prefixed string with this text ends (i.e. where what follows it starts). */
function after(bytes: Uint8Array, text: string): number {
  const needle = new TextEncoder().encode(text);
  const prefix = new Uint8Array(8 + needle.length);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(needle.length), true);
  prefix.set(needle, 8);
  outer: for (let i = 0; i + prefix.length <= bytes.length; i++) {
    for (let j = 0; j < prefix.length; j++) if (bytes[i + j] !== prefix[j]) continue outer;
    return i + prefix.length;
  }
  throw new Error(`"${text}" not found`);
}

/** Byte positions of a tensor's table entry fields. */
function tensorFields(bytes: Uint8Array, name: string): { nDims: number; dims: number; type: number; offset: number } {
  const nDims = after(bytes, name);
  const count = new DataView(bytes.buffer).getUint32(nDims, true);
  const dims = nDims + 4;
  return { nDims, dims, type: dims + 8 * count, offset: dims + 8 * count + 4 };
}

function patched(edit: (view: DataView, bytes: Uint8Array) => void): Uint8Array {
  const bytes = validFile();
  edit(new DataView(bytes.buffer), bytes);
  return bytes;
}

async function formatError(bytes: Uint8Array): Promise<ModelFormatError> {
  try {
    await readGGUF(bytesSource(bytes, 'bad.gguf'));
  } catch (error) {
    expect(error).toBeInstanceOf(ModelFormatError);
    return error as ModelFormatError;
  }
  throw new Error('readGGUF accepted a malformed file');
}

const U64_HUGE = 2n ** 62n;
const TENSOR_COUNT_AT = 8;
const KV_COUNT_AT = 16;

describe('malformed GGUF files', () => {
  it('the valid file used below parses', async () => {
    const file = await readGGUF(bytesSource(validFile()));
    expect(file.tensors.map((t) => t.name)).toEqual(['alpha', 'beta']);
  });

  it('wrong magic: "not a GGUF file"', async () => {
    const error = await formatError(new TextEncoder().encode('PK\x03\x04 this is a zip file, not a model at all'));
    expect(error.field).toBe('magic');
    expect(error.message).toMatch(/^bad\.gguf: not a GGUF file/);
    expect(error.message).toMatch(/Pass a \.gguf model file/);
  });

  it.each([
    [1, /unsupported GGUF version 1/],
    [4, /unsupported GGUF version 4/],
    [0x03000000, /big-endian/],
  ])('version %i is refused', async (version, message) => {
    const error = await formatError(patched((view) => view.setUint32(4, version, true)));
    expect(error.field).toBe('version');
    expect(error.message).toMatch(message);
  });

  it('every truncation inside the header fails cleanly', async () => {
    const bytes = validFile();
    const dataOffset = (await readGGUF(bytesSource(bytes))).dataOffset;
    for (let length = 0; length < dataOffset; length++) {
      const error = await formatError(bytes.slice(0, length));
      expect(error.message).toMatch(/not a GGUF file|ends inside the header|truncated|past the end|can hold at most/);
    }
  });

  it('truncated tensor data names the tensor', async () => {
    const bytes = validFile();
    const error = await formatError(bytes.slice(0, bytes.length - 40));
    expect(error.tensor).toBe('beta');
    expect(error.message).toMatch(/tensor beta .* ends past the end of the \d+-byte file/);
  });

  it.each([
    ['tensor_count', TENSOR_COUNT_AT],
    ['metadata_kv_count', KV_COUNT_AT],
  ])('an absurd %s is refused before allocating', async (field, at) => {
    const error = await formatError(patched((view) => view.setBigUint64(at, U64_HUGE, true)));
    expect(error.field).toBe(field);
    expect(error.message).toMatch(new RegExp(`${field} is ${U64_HUGE}, but the \\d+ bytes left in the file can hold at most \\d+`));
  });

  it('an absurd string length names the key it belongs to', async () => {
    const error = await formatError(patched((view, bytes) => view.setBigUint64(after(bytes, 'general.architecture') + 4, U64_HUGE, true)));
    expect(error.field).toBe('general.architecture');
    expect(error.message).toMatch(/length of value of general\.architecture is 4611686018427387904/);
  });

  it('an absurd array length names the array', async () => {
    const error = await formatError(patched((view, bytes) => view.setBigUint64(after(bytes, 'tokenizer.ggml.scores') + 8, 2n ** 40n, true)));
    expect(error.field).toBe('tokenizer.ggml.scores');
    expect(error.message).toMatch(/element count of array tokenizer\.ggml\.scores is 1099511627776/);
  });

  it('an unknown metadata value type names the key', async () => {
    const error = await formatError(patched((view, bytes) => view.setUint32(after(bytes, 'llama.block_count'), 13, true)));
    expect(error.field).toBe('llama.block_count');
    expect(error.message).toMatch(/unknown value type 13/);
  });

  it('a key that is not UTF-8 is refused', async () => {
    const error = await formatError(patched((_view, bytes) => (bytes[after(bytes, 'llama.block_count') - 1] = 0xff)));
    expect(error.field).toBe('metadata key #3');
    expect(error.message).toMatch(/not valid UTF-8/);
  });

  it('duplicate metadata keys and tensor names are refused', async () => {
    const twice = writeGGUF({ metadata: [['a.b', ggufValue.u8(1)], ['a.b', ggufValue.u8(2)]], tensors: [] });
    expect((await formatError(twice)).field).toBe('a.b');
    const sameName = writeGGUF({ metadata: [], tensors: [tensors[0]!, { ...tensors[0]! }] });
    const error = await formatError(sameName);
    expect(error.tensor).toBe('alpha');
    expect(error.message).toMatch(/tensor alpha appears twice/);
  });

  it('an unknown tensor type names the tensor', async () => {
    const error = await formatError(patched((view, bytes) => view.setUint32(tensorFields(bytes, 'beta').type, 99, true)));
    expect(error.tensor).toBe('beta');
    expect(error.message).toMatch(/tensor beta has unknown or unsupported ggml type 99/);
  });

  it('a row length that is not whole blocks names the tensor', async () => {
    const error = await formatError(patched((view, bytes) => view.setBigUint64(tensorFields(bytes, 'beta').dims, 48n, true)));
    expect(error.tensor).toBe('beta');
    expect(error.message).toMatch(/rows of 48 values, not a multiple of the Q8_0 block size 32/);
  });

  it.each([0, 5])('n_dims = %i names the tensor', async (nDims) => {
    const error = await formatError(patched((view, bytes) => view.setUint32(tensorFields(bytes, 'alpha').nDims, nDims, true)));
    expect(error.tensor).toBe('alpha');
    expect(error.message).toMatch(new RegExp(`tensor alpha has ${nDims} dimensions \\(must be 1\\.\\.4\\)`));
  });

  it('a zero or absurd dimension names the tensor', async () => {
    const zero = await formatError(patched((view, bytes) => view.setBigUint64(tensorFields(bytes, 'alpha').dims + 8, 0n, true)));
    expect(zero.tensor).toBe('alpha');
    expect(zero.message).toMatch(/dimension 1 = 0/);
    const huge = await formatError(patched((view, bytes) => view.setBigUint64(tensorFields(bytes, 'alpha').dims + 8, U64_HUGE, true)));
    expect(huge.tensor).toBe('alpha');
    expect(huge.message).toMatch(/impossible for a \d+-byte file/);
  });

  it('a tensor offset that is not aligned names the tensor', async () => {
    const error = await formatError(patched((view, bytes) => view.setBigUint64(tensorFields(bytes, 'beta').offset, 260n, true)));
    expect(error.tensor).toBe('beta');
    expect(error.message).toMatch(/data offset 260, not a multiple of the alignment 32/);
  });

  it('overlapping tensors name the one that overlaps', async () => {
    const error = await formatError(patched((view, bytes) => view.setBigUint64(tensorFields(bytes, 'beta').offset, 224n, true)));
    expect(error.tensor).toBe('beta');
    expect(error.message).toMatch(/tensor beta .* overlaps tensor alpha/);
  });

  it('a tensor outside the data section names the tensor', async () => {
    const error = await formatError(patched((view, bytes) => view.setBigUint64(tensorFields(bytes, 'alpha').offset, 2n ** 63n, true)));
    expect(error.tensor).toBe('alpha');
    expect(error.message).toMatch(/ends past the end/);
  });

  it('general.alignment that is not a power of two is refused', async () => {
    const bytes = writeGGUF({ metadata: [['general.alignment', ggufValue.u32(64)]], tensors });
    const view = new DataView(bytes.buffer);
    view.setUint32(after(bytes, 'general.alignment') + 4, 48, true);
    const error = await formatError(bytes);
    expect(error.field).toBe('general.alignment');
    expect(error.message).toMatch(/general\.alignment is 48, not a positive power of two/);
  });
});
