// Chat: the GGUF's own Jinja template renders `chat_messages` to exactly the prompt llama.cpp was
// given (reference/modern-public.json chat cases), which tokenizes to its prompt_ids; and
// `model.chat` on a real device streams what `generate` gives for that prompt (llama.cpp's tokens).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChatTemplate, ChatTemplateError, loadModel, MissingChatTemplateError, type FinishReason, type Model } from '../src/index.ts';
import { readGGUF } from '../src/model/gguf.ts';
import { fileSource } from '../src/model/source.ts';
import { LlamaTokenizer } from '../src/model/tokenizer.ts';
import { testGpu } from './helpers/gpu.ts';
import { modelPath, reference, referenceModelPath } from './helpers/models.ts';
import { modernReference } from './helpers/modern-models.ts';

const modern = modernReference();
const chatCases = modern.generation_cases.filter((c) => c.chat_messages);
// The reference rendered Llama 3.2's template with its own fallback date.
const variables = { date_string: '26 Jul 2024' };

describe("chat-formatted cases: the model's template → llama.cpp's prompt and prompt_ids", () => {
  const loaded = new Map<string, { tokenizer: LlamaTokenizer; template: ChatTemplate }>();
  beforeAll(async () => {
    for (const file of new Set(chatCases.map((c) => modern.models[c.model]!.file))) {
      const source = await fileSource(modelPath(file));
      try {
        const { metadata } = await readGGUF(source);
        const tokenizer = LlamaTokenizer.fromGGUFMetadata(metadata, { file });
        loaded.set(file, { tokenizer, template: ChatTemplate.fromMetadata(metadata, tokenizer)! });
      } finally {
        await source.close();
      }
    }
  }, 120_000);

  it('cover every family', () => {
    expect(new Set(chatCases.map((c) => c.model.split('-')[0]))).toEqual(new Set(['llama3', 'qwen2', 'qwen3', 'phi3']));
  });

  for (const c of chatCases) {
    it(c.id, () => {
      const { tokenizer, template } = loaded.get(modern.models[c.model]!.file)!;
      expect(c.parse_special).toBe(true);
      expect(template.render(c.chat_messages!, { variables })).toBe(c.prompt);
      expect(template.tokenize(c.chat_messages!, { variables })).toEqual(c.prompt_ids);
      expect(tokenizer.encode(c.prompt, { parseSpecial: true })).toEqual(c.prompt_ids);
    });
  }

  it("prints today's date into Llama 3.2's system header when no date_string is given (strftime_now)", () => {
    const { template } = loaded.get(modern.models['llama3-tiny-f32']!.file)!;
    const text = template.render([{ role: 'user', content: 'Hi' }]);
    const today = new Date();
    expect(text).toContain(`Today Date: ${String(today.getDate()).padStart(2, '0')} `);
    expect(text.startsWith('<|begin_of_text|>')).toBe(false); // the vocabulary adds BOS itself
  });
});

describe('model.chat on a real device (stories260K, which has no template of its own)', () => {
  const once = reference().generation_cases.find((c) => c.id === 'stories260K-f32/once-upon-a-time')!;
  // A template that writes BOS and then the user's words: after llama.cpp's BOS strip it is exactly
  // the reference prompt, so the answer must be llama.cpp's greedy tokens.
  const echo = '{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}';
  let model: Model;
  beforeAll(async () => {
    model = await loadModel(referenceModelPath(once.model), { device: await testGpu(), contextLength: 128 });
  }, 120_000);
  afterAll(() => model?.dispose());

  it('refuses to chat without a template, naming --chat-template FILE', async () => {
    expect(model.hasChatTemplate).toBe(false);
    const chat = model.chat([{ role: 'user', content: 'Hi' }]);
    await expect(chat.next()).rejects.toThrow(MissingChatTemplateError);
    expect(() => model.chatPromptIds([{ role: 'user', content: 'Hi' }])).toThrow(/--chat-template FILE/);
  });

  it("streams llama.cpp's tokens for the rendered prompt, as generate does", async () => {
    const messages = [{ role: 'user', content: once.prompt }];
    expect(model.chatPromptIds(messages, { chatTemplate: echo })).toEqual(once.prompt_ids);
    const result: { finish?: FinishReason } = {};
    const ids: number[] = [];
    let text = '';
    for await (const token of model.chat(messages, { chatTemplate: echo, temperature: 0, maxTokens: 12, ignoreEos: true }, result)) {
      ids.push(token.id);
      text += token.text;
    }
    expect(ids).toEqual(once.generated_ids.slice(0, 12));
    expect(text).toBe(model.detokenize(ids));
    expect(result.finish).toBe('length');
  });

  it('reports a template that does not parse as a ChatTemplateError', () => {
    expect(() => model.chatPromptIds([{ role: 'user', content: 'x' }], { chatTemplate: '{% for %}' })).toThrow(ChatTemplateError);
  });
});
