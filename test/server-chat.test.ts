// The server's chat path with a real vocabulary and template (Qwen2.5's, from qwen2-tiny's GGUF
// header) over a scripted forward pass: /v1/chat/completions renders llama.cpp's prompt ids for the
// reference chat messages, and an answer that ends with <|im_end|> (or Qwen's other end token,
// <|endoftext|>) reports finish_reason "stop" with the end token's text left out.
import { beforeAll, describe, expect, it } from 'vitest';
import { generateTokens, type FinishReason, type GeneratedToken, type GenerateOptions } from '../src/engine/generate.ts';
import { readGGUF } from '../src/model/gguf.ts';
import { fileSource } from '../src/model/source.ts';
import { LlamaTokenizer } from '../src/model/tokenizer.ts';
import { InferenceServer } from '../src/server/server.ts';
import type { ServedModel } from '../src/server/served-model.ts';
import { modelPath } from './helpers/models.ts';
import { modernReference } from './helpers/modern-models.ts';

const chatCase = modernReference().generation_cases.find((c) => c.id === 'qwen2-tiny-f32/chat')!;

/** A model that "answers" `answer` (token ids, in turn) to any prompt, with the real tokenizer. */
class ScriptedQwen implements ServedModel {
  readonly contextLength = 512;
  readonly prompts: number[][] = [];
  answer: number[] = [];

  constructor(
    readonly tokenizer: LlamaTokenizer,
    readonly file: { metadata: Map<string, unknown> },
  ) {}

  async *generate(promptIds: readonly number[], options: GenerateOptions, result: { finish?: FinishReason }): AsyncGenerator<GeneratedToken> {
    this.prompts.push([...promptIds]);
    let step = 0;
    const backend = {
      contextLength: this.contextLength,
      vocabSize: this.tokenizer.vocabSize,
      forward: async () => ({ argmaxId: this.answer[step++]! }),
      isEndOfGeneration: (id: number) => this.tokenizer.isEog(id),
      createStreamDecoder: () => this.tokenizer.createStreamDecoder(),
    };
    yield* generateTokens(backend, promptIds, options, result);
  }

  async nextTokenLogits(): Promise<Float32Array> {
    throw new Error('not used');
  }
  async health() {
    return { ok: true, detail: 'scripted' };
  }
  readiness() {
    return { ok: true, detail: 'scripted' };
  }
  stats(): object {
    return {};
  }
}

let model: ScriptedQwen;
let post: (body: unknown) => Promise<Response>;

beforeAll(async () => {
  const source = await fileSource(modelPath('qwen2-tiny/qwen2-tiny-F32.gguf'));
  try {
    const { metadata } = await readGGUF(source);
    model = new ScriptedQwen(LlamaTokenizer.fromGGUFMetadata(metadata), { metadata });
  } finally {
    await source.close();
  }
  const server = new InferenceServer({ modelName: 'qwen2-tiny', log: () => {} });
  server.attach(model);
  post = (body) => server.handle(new Request('http://127.0.0.1/v1/chat/completions', { method: 'POST', body: JSON.stringify(body) }));
}, 60_000);

describe('/v1/chat/completions with a real template and vocabulary', () => {
  for (const end of ['<|im_end|>', '<|endoftext|>']) {
    it(`renders llama.cpp's prompt ids and stops at ${end} with finish_reason "stop"`, async () => {
      const hello = model.tokenizer.encode('Hello there!');
      model.answer = [...hello, model.tokenizer.tokenId(end)!, ...hello];
      const response = await post({ model: 'qwen2-tiny', messages: chatCase.chat_messages, max_tokens: 20, temperature: 0 });
      expect(response.status).toBe(200);
      const body = (await response.json()) as { choices: Array<{ message: { content: string }; finish_reason: string }>; usage: { completion_tokens: number } };
      expect(model.prompts.at(-1)).toEqual(chatCase.prompt_ids);
      expect(body.choices[0]).toMatchObject({ message: { content: 'Hello there!' }, finish_reason: 'stop' });
      expect(body.usage.completion_tokens).toBe(hello.length + 1);
    });
  }

  it('keeps going past the end token with ignore_eos, to finish_reason "length"', async () => {
    const hello = model.tokenizer.encode('Hi');
    model.answer = [...hello, model.tokenizer.tokenId('<|im_end|>')!, ...hello];
    const response = await post({ model: 'qwen2-tiny', messages: chatCase.chat_messages, max_tokens: 2 * hello.length + 1, temperature: 0, ignore_eos: true });
    const body = (await response.json()) as { choices: Array<{ message: { content: string }; finish_reason: string }> };
    expect(body.choices[0]).toMatchObject({ message: { content: 'HiHi' }, finish_reason: 'length' });
  });
});
