// JSON side files of model folders (safetensors headers and indexes, config.json, ...): parsed
// strictly as UTF-8, with a ModelFormatError that names the file and the fix.
import { ModelFormatError } from './errors.ts';

/** A JSON object (not an array, not null). */
export function isJsonObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Parses UTF-8 JSON; invalid UTF-8 or JSON is a ModelFormatError naming `file` (and `field`, if given). */
export function parseJson(file: string, bytes: Uint8Array | string, what: string, fix: string, field?: string): unknown {
  try {
    return JSON.parse(typeof bytes === 'string' ? bytes : new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (cause) {
    if (!(cause instanceof SyntaxError || cause instanceof TypeError)) throw cause;
    throw new ModelFormatError({ file, problem: `${what} is not valid UTF-8 JSON (${cause.message})`, fix, ...(field !== undefined ? { field } : {}) });
  }
}
