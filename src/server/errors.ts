// Errors the server answers with, in OpenAI's shape:
//   {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": "invalid_type"}}
// Each HTTP status has its own class, so code that throws says what went wrong, and
// `errorResponse` is the one place that turns any thrown value into a response.

import { ContextOverflowError, GpuUnavailableError, InvalidOptionError, QueueFullError as EngineQueueFullError, ShardError } from '../index.ts';

export interface OpenAIErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

export interface HttpErrorDetails {
  /** The request field at fault, e.g. "messages[2].content". */
  param?: string;
  /** A machine-readable reason, e.g. "invalid_type", "context_length_exceeded". */
  code?: string;
  /** Extra response headers, e.g. Retry-After. */
  headers?: Record<string, string>;
}

export abstract class HttpError extends Error {
  abstract readonly status: number;
  abstract readonly type: string;

  constructor(message: string, readonly details: HttpErrorDetails = {}) {
    super(message);
  }

  body(): OpenAIErrorBody {
    return { error: { message: this.message, type: this.type, param: this.details.param ?? null, code: this.details.code ?? null } };
  }
}

/** 400: the request is malformed or asks for something this server cannot do. */
export class InvalidRequestError extends HttpError {
  override name = 'InvalidRequestError';
  readonly status = 400;
  readonly type = 'invalid_request_error';
}

/** 401: an API key is configured and the request did not carry it. */
export class AuthenticationError extends HttpError {
  override name = 'AuthenticationError';
  readonly status = 401;
  readonly type = 'authentication_error';
}

/** 404: no such route, or no such model. */
export class NotFoundError extends HttpError {
  override name = 'NotFoundError';
  readonly status = 404;
  readonly type = 'not_found_error';
}

/** 405: the route exists, but not for this method. */
export class MethodNotAllowedError extends HttpError {
  override name = 'MethodNotAllowedError';
  readonly status = 405;
  readonly type = 'invalid_request_error';
}

/** 413: the request body is over the configured limit. */
export class PayloadTooLargeError extends HttpError {
  override name = 'PayloadTooLargeError';
  readonly status = 413;
  readonly type = 'invalid_request_error';
}

/** 414: the request target is over the configured limit. */
export class UriTooLongError extends HttpError {
  override name = 'UriTooLongError';
  readonly status = 414;
  readonly type = 'invalid_request_error';
}

/** 431: the request headers are over the configured limit. */
export class HeadersTooLargeError extends HttpError {
  override name = 'HeadersTooLargeError';
  readonly status = 431;
  readonly type = 'invalid_request_error';
}

/** 429: the wait queue is full; try again after `Retry-After` seconds. */
export class QueueFullError extends HttpError {
  override name = 'QueueFullError';
  readonly status = 429;
  readonly type = 'rate_limit_error';
}

/** 499 (nginx's "client closed request"): the client went away before the answer was done. */
export class ClientClosedError extends HttpError {
  override name = 'ClientClosedError';
  readonly status = 499;
  readonly type = 'client_closed_request';
}

/** 500: the engine failed while generating. */
export class EngineError extends HttpError {
  override name = 'EngineError';
  readonly status = 500;
  readonly type = 'server_error';
}

/** 503: the model is still loading, the server is shutting down, or the GPU is gone. */
export class ServiceUnavailableError extends HttpError {
  override name = 'ServiceUnavailableError';
  readonly status = 503;
  readonly type = 'service_unavailable_error';
}

/** 504: the request ran past its deadline. */
export class DeadlineExceededError extends HttpError {
  override name = 'DeadlineExceededError';
  readonly status = 504;
  readonly type = 'timeout_error';
}

/** Any thrown value as an HttpError: the engine's own typed errors keep their meaning. */
export function toHttpError(error: unknown): HttpError {
  if (error instanceof HttpError) return error;
  if (error instanceof InvalidOptionError) return new InvalidRequestError(error.message, { code: 'invalid_value' });
  if (error instanceof ContextOverflowError) return new InvalidRequestError(error.message, { code: 'context_length_exceeded' });
  if (error instanceof EngineQueueFullError) {
    return new QueueFullError(error.message, { code: 'queue_full', headers: { 'retry-after': String(error.retryAfterSeconds) } });
  }
  if (error instanceof GpuUnavailableError) return new ServiceUnavailableError(`GPU unavailable: ${error.message}`, { code: 'gpu_unavailable' });
  // A shard that failed, hung or lost its device: the group reloads itself, so trying again soon works.
  if (error instanceof ShardError) {
    return new ServiceUnavailableError(`A shard failed: ${error.message}`, { code: 'shard_failed', headers: { 'retry-after': '5' } });
  }
  const message = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  return new EngineError(`The engine failed: ${message}`, { code: 'engine_error' });
}

export function jsonResponse(body: unknown, status = 200, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json', ...headers } });
}

export function errorResponse(error: HttpError): Response {
  return jsonResponse(error.body(), error.status, error.details.headers);
}
