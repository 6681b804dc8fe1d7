// Server-sent events as OpenAI streams them: one `data: <json>` event per chunk, then
// `data: [DONE]`. The stream is pushed, not pulled: generation never waits for a slow reader
// (a chunk is a few bytes and a response is bounded by max_tokens), and a reader that goes away
// is reported through `onCancel` so its generation can stop.

const encoder = new TextEncoder();

export const SSE_HEADERS: Readonly<Record<string, string>> = {
  'content-type': 'text/event-stream; charset=utf-8',
  'cache-control': 'no-cache',
  'x-accel-buffering': 'no',
};

export class SseStream {
  readonly readable: ReadableStream<Uint8Array>;
  private controller!: ReadableStreamDefaultController<Uint8Array>;
  private open = true;

  constructor(onCancel: (reason: unknown) => void) {
    this.readable = new ReadableStream<Uint8Array>({
      start: (controller) => {
        this.controller = controller;
      },
      cancel: (reason) => {
        this.open = false;
        onCancel(reason);
      },
    });
  }

  /** Whether the reader is still there (and close() was not called). */
  get isOpen(): boolean {
    return this.open;
  }

  send(data: unknown): void {
    this.write(`data: ${JSON.stringify(data)}\n\n`);
  }

  /** Ends the stream with OpenAI's terminator. */
  done(): void {
    this.write('data: [DONE]\n\n');
    this.close();
  }

  close(): void {
    if (!this.open) return;
    this.open = false;
    this.controller.close();
  }

  private write(text: string): void {
    if (this.open) this.controller.enqueue(encoder.encode(text));
  }
}
