// Reading requests within limits: header and URL size, body size (declared or streamed), UTF-8
// and JSON, each failure as its own status.

import { HeadersTooLargeError, InvalidRequestError, PayloadTooLargeError, UriTooLongError } from './errors.ts';

export function checkRequestSize(request: Request, limits: { maxUrlBytes: number; maxHeaderBytes: number }): void {
  if (request.url.length > limits.maxUrlBytes) {
    throw new UriTooLongError(`The request URL is ${request.url.length} bytes; the limit is ${limits.maxUrlBytes}.`, { code: 'uri_too_long' });
  }
  let headerBytes = 0;
  for (const [name, value] of request.headers) headerBytes += name.length + value.length + 4; // "name: value\r\n"
  if (headerBytes > limits.maxHeaderBytes) {
    throw new HeadersTooLargeError(`The request headers are ${headerBytes} bytes; the limit is ${limits.maxHeaderBytes}.`, { code: 'headers_too_large' });
  }
}

function tooLarge(limit: number, size?: number): PayloadTooLargeError {
  const got = size === undefined ? 'more than that' : `${size} bytes`;
  return new PayloadTooLargeError(`The request body is limited to ${limit} bytes; got ${got}.`, { code: 'body_too_large' });
}

/** The body's bytes, refusing more than `maxBytes` without reading past the limit. */
async function readBody(request: Request, maxBytes: number): Promise<Uint8Array> {
  const declared = request.headers.get('content-length');
  if (declared !== null && Number(declared) > maxBytes) throw tooLarge(maxBytes, Number(declared));
  if (!request.body) return new Uint8Array(0);
  const reader = request.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > maxBytes) {
      await reader.cancel().catch(() => undefined);
      throw tooLarge(maxBytes);
    }
    chunks.push(value);
  }
  const bytes = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return bytes;
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/** The body as parsed JSON: 413 when too large, 400 when empty, not UTF-8, or not JSON. */
export async function readJsonBody(request: Request, maxBytes: number): Promise<unknown> {
  const bytes = await readBody(request, maxBytes);
  let text: string;
  try {
    text = strictUtf8.decode(bytes);
  } catch {
    throw new InvalidRequestError('The request body is not valid UTF-8.', { code: 'invalid_encoding' });
  }
  if (text.trim() === '') throw new InvalidRequestError('The request body is empty; send a JSON object.', { code: 'invalid_json' });
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new InvalidRequestError(`The request body is not valid JSON: ${(error as Error).message}`, { code: 'invalid_json' });
  }
}
