// Chat messages → prompt → token ids, with the model's own template (GGUF
// `tokenizer.chat_template`, a Jinja template, rendered by @huggingface/jinja as transformers
// does) or, where the caller allows it, a plain "Role: text" transcript for models without one.
// The library's `model.chat`, the CLI's chat and the server's /v1/chat/completions all use this.

import { Template } from '@huggingface/jinja';

export const CHAT_TEMPLATE_KEY = 'tokenizer.chat_template';

export interface ChatMessage {
  /** "system", "user", "assistant" (templates may know others, e.g. "tool"). */
  role: string;
  content: string;
}

/** What rendering and tokenizing a chat need from the vocabulary. */
export interface ChatTokenizer {
  readonly bosId: number;
  readonly eosId: number;
  readonly vocabSize: number;
  tokenText(id: number): string;
  encode(text: string, options?: { addBos?: boolean; parseSpecial?: boolean }): number[];
}

export interface ChatRenderOptions {
  /** Append the assistant's turn header (default true): the prompt then asks for the next answer. */
  addGenerationPrompt?: boolean;
  /**
   * Further template variables, e.g. `{ date_string: '26 Jul 2024' }` for Llama 3.x (whose
   * template otherwise prints today's date) or `{ enable_thinking: false }` for Qwen3.
   */
  variables?: Record<string, unknown>;
}

/** The model has no chat template, and the caller gave none. */
export class MissingChatTemplateError extends Error {
  override name = 'MissingChatTemplateError';

  constructor(model: string) {
    super(
      `${model} has no chat template (metadata key ${CHAT_TEMPLATE_KEY}), so its chat format is unknown. ` +
        'Supply one: --chat-template FILE on the command line, or the chatTemplate option (the Jinja source) in the library.',
    );
  }
}

/** A chat template that does not parse, or that refused the messages (its raise_exception). */
export class ChatTemplateError extends Error {
  override name = 'ChatTemplateError';
}

export class ChatTemplate {
  private constructor(
    /** Where the template came from: the model file (or a caller's source), or the built-in plain transcript. */
    readonly source: 'model' | 'plain',
    private readonly template: Template | undefined,
    private readonly tokenizer: ChatTokenizer,
  ) {}

  /**
   * The model's template from its metadata; `undefined` when it has none. A template that does
   * not parse is a `ChatTemplateError`.
   */
  static fromMetadata(metadata: ReadonlyMap<string, unknown>, tokenizer: ChatTokenizer): ChatTemplate | undefined {
    const source = metadata.get(CHAT_TEMPLATE_KEY);
    if (typeof source !== 'string' || source.trim() === '') return undefined;
    return ChatTemplate.fromSource(source, tokenizer);
  }

  static fromSource(source: string, tokenizer: ChatTokenizer): ChatTemplate {
    try {
      return new ChatTemplate('model', new Template(source), tokenizer);
    } catch (error) {
      throw new ChatTemplateError(`The chat template does not parse: ${(error as Error).message}`, { cause: error });
    }
  }

  /** "Role: text" lines, for base models without a template (the server's fallback). */
  static plain(tokenizer: ChatTokenizer): ChatTemplate {
    return new ChatTemplate('plain', undefined, tokenizer);
  }

  /**
   * The prompt text for these messages. Like llama.cpp's chat code, a leading BOS text is removed
   * when the vocabulary adds BOS itself (`tokenize` puts it back as a token).
   */
  render(messages: readonly ChatMessage[], options: ChatRenderOptions = {}): string {
    if (!this.template) return renderPlain(messages);
    const bosToken = this.specialText(this.tokenizer.bosId);
    let text: string;
    try {
      // @huggingface/jinja brings `strftime_now` (today's date), as transformers and llama.cpp do.
      text = this.template.render({
        ...options.variables,
        messages,
        add_generation_prompt: options.addGenerationPrompt ?? true,
        bos_token: bosToken,
        eos_token: this.specialText(this.tokenizer.eosId),
      });
    } catch (error) {
      throw new ChatTemplateError(`The chat template rejected these messages: ${(error as Error).message}`, { cause: error });
    }
    return bosToken !== '' && text.startsWith(bosToken) && this.addsBos() ? text.slice(bosToken.length) : text;
  }

  /**
   * Token ids of the rendered prompt. A model's template writes control tokens as text, so they
   * are parsed as tokens (llama.cpp's parse_special); the plain transcript stays plain text.
   */
  tokenize(messages: readonly ChatMessage[], options: ChatRenderOptions = {}): number[] {
    return this.tokenizer.encode(this.render(messages, options), { parseSpecial: this.source === 'model' });
  }

  private specialText(id: number): string {
    return id >= 0 && id < this.tokenizer.vocabSize ? this.tokenizer.tokenText(id) : '';
  }

  /** Does encoding add BOS by itself? (Asked of the tokenizer, so it holds for any vocabulary.) */
  private addsBos(): boolean {
    return this.tokenizer.bosId >= 0 && this.tokenizer.encode('')[0] === this.tokenizer.bosId;
  }
}

const ROLE_NAMES: Readonly<Record<string, string>> = {
  system: 'System',
  developer: 'System',
  user: 'User',
  assistant: 'Assistant',
  tool: 'Tool',
};

/**
 * For models without a template (base models such as stories260K): one "Role: text" line per
 * message, then "Assistant:" for the model to continue.
 */
export function renderPlain(messages: readonly ChatMessage[]): string {
  return messages.map((m) => `${ROLE_NAMES[m.role] ?? m.role}: ${m.content}\n`).join('') + 'Assistant:';
}
