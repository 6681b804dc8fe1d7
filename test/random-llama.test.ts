// The random-weight Llama: deterministic, a valid llama GGUF with a usable vocabulary, each weight
// type encoding the same underlying values, and big shapes streamed rather than built in memory.
import { describe, expect, it } from 'vitest';
import { GGMLType } from '../src/model/ggml-type.ts';
import { getStringArray, readGGUF, readTensorBytes, type GGUFFile } from '../src/model/gguf.ts';
import { ggufFileSize } from '../src/model/gguf-writer.ts';
import { llamaConfig, validateLlamaTensors } from '../src/model/config.ts';
import { dequantize } from '../src/model/quant.ts';
import {
  LLAMA_3_2_1B_SHAPE,
  TINY_LLAMA_SHAPE,
  TokenType,
  randomLlamaGGUF,
  randomLlamaSpec,
  randomLlamaVocab,
  writeRandomLlamaGGUF,
  type RandomWeightType,
} from '../src/model/random-llama.ts';
import { bytesSource, type ByteSource } from '../src/model/source.ts';

async function open(bytes: Uint8Array): Promise<GGUFFile> {
  return readGGUF(bytesSource(bytes, 'random.gguf'));
}

async function weights(file: GGUFFile, name: string): Promise<Float32Array> {
  const tensor = file.tensor(name);
  const count = tensor.shape.reduce((a, b) => a * b, 1);
  return dequantize(tensor.type, await readTensorBytes(file, tensor), count);
}

describe('randomLlamaGGUF', () => {
  it('is deterministic in its seed', () => {
    const a = Buffer.from(randomLlamaGGUF(TINY_LLAMA_SHAPE, 7));
    expect(a.equals(randomLlamaGGUF(TINY_LLAMA_SHAPE, 7))).toBe(true);
    const b = randomLlamaGGUF(TINY_LLAMA_SHAPE, 8);
    expect(b.length).toBe(a.length);
    expect(a.equals(b)).toBe(false);
  });

  it('is a valid tiny llama by default: dim 64, 2 layers, 4 heads, 2 KV heads, ffn 128', async () => {
    const file = await open(randomLlamaGGUF());
    const config = llamaConfig(file);
    expect(config).toMatchObject({ dim: 64, nLayers: 2, nHeads: 4, nKvHeads: 2, headDim: 16, ffnDim: 128, tiedEmbeddings: false, bosTokenId: 1, eosTokenId: 2, unkTokenId: 0 });
    expect(config.vocabSize).toBe(randomLlamaVocab().tokens.length);
    validateLlamaTensors(file, config);
    expect(file.tensors.every((t) => t.type === GGMLType.F32)).toBe(true);
  });

  it('has norms of 1 and weights with the spread of N(0, 0.02)', async () => {
    const file = await open(randomLlamaGGUF());
    expect(Array.from(await weights(file, 'blk.1.ffn_norm.weight')).every((x) => x === 1)).toBe(true);
    const w = await weights(file, 'blk.0.ffn_up.weight');
    const mean = w.reduce((s, x) => s + x, 0) / w.length;
    const std = Math.sqrt(w.reduce((s, x) => s + (x - mean) ** 2, 0) / w.length);
    expect(Math.abs(mean)).toBeLessThan(0.002);
    expect(std).toBeGreaterThan(0.018);
    expect(std).toBeLessThan(0.022);
    expect(Math.max(...w.map(Math.abs))).toBeLessThanOrEqual(0.02 * Math.sqrt(3));
    // Different tensors get different streams.
    expect((await weights(file, 'blk.1.ffn_up.weight')).slice(0, 8)).not.toEqual(w.slice(0, 8));
  });

  it.each([
    ['F16', GGMLType.F16, 1e-4],
    ['Q8_0', GGMLType.Q8_0, 0.0004],
    ['Q4_0', GGMLType.Q4_0, 0.006],
  ] as Array<[string, RandomWeightType, number]>)('%s encodes the same values as F32', async (_name, weightType, tolerance) => {
    const reference = await open(randomLlamaGGUF(TINY_LLAMA_SHAPE, 3));
    const file = await open(randomLlamaGGUF({ ...TINY_LLAMA_SHAPE, weightType }, 3));
    validateLlamaTensors(file, llamaConfig(file));
    expect(file.tensor('blk.0.attn_q.weight').type).toBe(weightType);
    expect(file.tensor('token_embd.weight').type).toBe(weightType);
    expect(file.tensor('output_norm.weight').type).toBe(GGMLType.F32);
    for (const name of ['token_embd.weight', 'blk.1.attn_k.weight', 'blk.0.ffn_down.weight']) {
      const exact = await weights(reference, name);
      const encoded = await weights(file, name);
      const worst = exact.reduce((max, x, i) => Math.max(max, Math.abs(x - encoded[i]!)), 0);
      expect(worst, name).toBeLessThan(tolerance);
    }
  });

  it('falls back to F16 for rows that are not whole quant blocks, as llama.cpp does', async () => {
    const file = await open(randomLlamaGGUF({ ...TINY_LLAMA_SHAPE, ffnDim: 80, weightType: GGMLType.Q8_0 }));
    expect(file.tensor('blk.0.ffn_up.weight').type).toBe(GGMLType.Q8_0);
    expect(file.tensor('blk.0.ffn_down.weight').type).toBe(GGMLType.F16);
  });

  it('ties embeddings on request', async () => {
    const file = await open(randomLlamaGGUF({ ...TINY_LLAMA_SHAPE, tiedEmbeddings: true }));
    expect(file.hasTensor('output.weight')).toBe(false);
    expect(llamaConfig(file).tiedEmbeddings).toBe(true);
  });
});

describe('vocabulary', () => {
  const vocab = randomLlamaVocab();

  it('is SentencePiece-shaped: <unk> <s> </s>, 256 byte tokens, then pieces with scores', async () => {
    expect(vocab.tokens.slice(0, 3)).toEqual(['<unk>', '<s>', '</s>']);
    expect(Array.from(vocab.types.slice(0, 3))).toEqual([TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]);
    expect(vocab.tokens[3]).toBe('<0x00>');
    expect(vocab.tokens[3 + 0x41]).toBe('<0x41>');
    expect(vocab.tokens[258]).toBe('<0xFF>');
    expect(Array.from(vocab.types.slice(3, 259)).every((t) => t === TokenType.BYTE)).toBe(true);
    expect(vocab.tokens).toContain('\u2581the');
    expect(vocab.tokens).toContain('\u2581a');
    expect(new Set(vocab.tokens).size).toBe(vocab.tokens.length);
    const file = await open(randomLlamaGGUF());
    expect(getStringArray(file, 'tokenizer.ggml.tokens')).toEqual(vocab.tokens);
    expect(file.metadata.get('tokenizer.ggml.model')).toBe('llama');
    expect(file.metadata.get('tokenizer.ggml.token_type')).toEqual(vocab.types);
  });

  it('every merged piece can be reached by BPE merges of shorter pieces', () => {
    const known = new Set(vocab.tokens);
    for (let id = 259; id < vocab.tokens.length; id++) {
      const piece = vocab.tokens[id]!;
      if (piece.length < 2) continue;
      expect(known.has(piece.slice(0, -1)), piece).toBe(true);
      expect(known.has(piece.slice(-1)), piece).toBe(true);
      // A longer piece is a later merge than its prefix (single characters are not merges).
      if (piece.length > 2) expect(vocab.scores[id]!).toBeLessThan(vocab.scores[vocab.tokens.indexOf(piece.slice(0, -1))]!);
    }
  });

  it('pads to a requested size with unused placeholder tokens', () => {
    const big = randomLlamaVocab(1000);
    expect(big.tokens).toHaveLength(1000);
    expect(big.tokens.slice(0, vocab.tokens.length)).toEqual(vocab.tokens);
    expect(big.types[999]).toBe(TokenType.UNUSED);
    expect(() => randomLlamaVocab(100)).toThrow(/too small/);
  });
});

describe('streaming big shapes', () => {
  it('the stream equals the in-memory file', async () => {
    const chunks: Uint8Array[] = [];
    await writeRandomLlamaGGUF({ ...TINY_LLAMA_SHAPE, weightType: GGMLType.Q4_0 }, 5, (chunk) => {
      chunks.push(chunk);
    });
    expect(Buffer.concat(chunks).equals(randomLlamaGGUF({ ...TINY_LLAMA_SHAPE, weightType: GGMLType.Q4_0 }, 5))).toBe(true);
  });

  it('a Llama-3.2-1B-shaped file has the right size and streams in bounded chunks', async () => {
    const parameters = 1_235_814_400; // Llama-3.2-1B with tied embeddings
    const spec = randomLlamaSpec(LLAMA_3_2_1B_SHAPE, 1);
    // Stream the start and stop: the header parses and no chunk is big.
    const stop = new Error('enough');
    const received: Uint8Array[] = [];
    let total = 0;
    const streaming = writeRandomLlamaGGUF(LLAMA_3_2_1B_SHAPE, 1, (chunk) => {
      received.push(chunk);
      total += chunk.length;
      if (total > 40 * 1024 * 1024) throw stop;
    });
    await expect(streaming).rejects.toBe(stop);
    expect(Math.max(...received.slice(1).map((c) => c.length))).toBeLessThanOrEqual(16 * 1024 * 1024);
    // The file's first 40 MB, seen through a source that claims the whole file's size.
    const prefix = new Uint8Array(Buffer.concat(received));
    const partial: ByteSource = {
      ...bytesSource(prefix),
      size: ggufFileSize(spec),
      read: async (offset, length) => prefix.slice(offset, offset + length),
    };
    const file = await readGGUF(partial);
    expect(received[0]!.length).toBe(file.dataOffset); // the first chunk is the whole header
    // F32 and every tensor already 32-byte aligned: the data section is exactly 4 bytes a parameter.
    expect(file.tensors.reduce((total, t) => total + t.byteLength, 0)).toBe(4 * parameters);
    expect(partial.size).toBe(file.dataOffset + 4 * parameters);
    const config = llamaConfig(file);
    validateLlamaTensors(file, config);
    expect(config).toMatchObject({ dim: 2048, nLayers: 16, nHeads: 32, nKvHeads: 8, headDim: 64, ffnDim: 8192, vocabSize: 128256, ropeBase: 500000, tiedEmbeddings: true });
  });
});
