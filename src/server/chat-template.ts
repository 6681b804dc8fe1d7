// Chat messages → prompt text, with the model's own template (GGUF `tokenizer.chat_template`,
// a Jinja template, rendered by @huggingface/jinja as transformers does) or, for models that
// carry none, a plain "Role: text" transcript.

import { Template } from '@huggingface/jinja';
import { InvalidRequestError } from './errors.ts';
import type { ChatMessage } from './openai-schema.ts';

export const CHAT_TEMPLATE_KEY = 'tokenizer.chat_template';

/** What rendering needs to know about the vocabulary. */
export interface TemplateTokens {
  bosToken: string;
  eosToken: string;
}

export class ChatTemplate {
  private constructor(
    /** Where the template came from: the model file, or the built-in plain transcript. */
    readonly source: 'model' | 'plain',
    private readonly template: Template | undefined,
    private readonly tokens: TemplateTokens,
  ) {}

  /**
   * The model's template from its metadata; the plain transcript when it has none. A template
   * that does not parse is an error here, at startup, not on every request.
   */
  static fromMetadata(metadata: ReadonlyMap<string, unknown>, tokens: TemplateTokens): ChatTemplate {
    const source = metadata.get(CHAT_TEMPLATE_KEY);
    if (typeof source !== 'string' || source.trim() === '') return new ChatTemplate('plain', undefined, tokens);
    return ChatTemplate.fromSource(source, tokens);
  }

  static fromSource(source: string, tokens: TemplateTokens): ChatTemplate {
    try {
      return new ChatTemplate('model', new Template(source), tokens);
    } catch (error) {
      throw new Error(`The model's chat template (${CHAT_TEMPLATE_KEY}) does not parse: ${(error as Error).message}`);
    }
  }

  static plain(tokens: TemplateTokens): ChatTemplate {
    return new ChatTemplate('plain', undefined, tokens);
  }

  /** The prompt for the assistant's next turn. Template errors (raise_exception) are the request's fault. */
  render(messages: readonly ChatMessage[]): string {
    if (!this.template) return renderPlain(messages);
    try {
      return this.template.render({
        messages,
        add_generation_prompt: true,
        bos_token: this.tokens.bosToken,
        eos_token: this.tokens.eosToken,
      });
    } catch (error) {
      throw new InvalidRequestError(`The model's chat template rejected these messages: ${(error as Error).message}`, {
        param: 'messages',
        code: 'chat_template_error',
      });
    }
  }
}

const ROLE_NAMES: Record<ChatMessage['role'], string> = {
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
  return messages.map((m) => `${ROLE_NAMES[m.role]}: ${m.content}\n`).join('') + 'Assistant:';
}
