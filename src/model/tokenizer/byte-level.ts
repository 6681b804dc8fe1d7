// Byte-level BPE's alphabet (GPT-2's `bytes_to_unicode`): every byte stands for one printable
// character, so that any UTF-8 text becomes a string the merge rules can work on. Bytes that are
// printable Latin-1 stand for themselves; the other 68 (controls, space, soft hyphen...) take
// U+0100 upwards in byte order, so a space is "Ġ" (U+0120) and a newline "Ċ" (U+010A).

function isPrintableLatin1(byte: number): boolean {
  return (byte >= 0x21 && byte <= 0x7e) || (byte >= 0xa1 && byte <= 0xac) || (byte >= 0xae && byte <= 0xff);
}

const BYTE_TO_CHAR: readonly string[] = (() => {
  const chars = new Array<string>(256);
  let next = 0x100;
  for (let byte = 0; byte < 256; byte++) chars[byte] = String.fromCharCode(isPrintableLatin1(byte) ? byte : next++);
  return chars;
})();

/** Byte of each alphabet character by code unit (-1: not in the alphabet). */
const CHAR_TO_BYTE: Int16Array = (() => {
  const bytes = new Int16Array(0x100 + 68).fill(-1);
  BYTE_TO_CHAR.forEach((char, byte) => (bytes[char.charCodeAt(0)] = byte));
  return bytes;
})();

const encoder = new TextEncoder();

/** The UTF-8 bytes of `text`, each written as its alphabet character. */
export function toByteLevel(text: string): string {
  let out = '';
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (unit >= 0x80) {
      // Not plain ASCII: go through UTF-8 for the rest of the word.
      for (const byte of encoder.encode(text.slice(i))) out += BYTE_TO_CHAR[byte];
      return out;
    }
    out += BYTE_TO_CHAR[unit];
  }
  return out;
}

/**
 * The bytes a byte-level token text stands for (llama.cpp's `llama_decode_text`). A character
 * outside the alphabet cannot come from the converter; llama.cpp writes it as "[UNK_BYTE_0x…]",
 * and so does this.
 */
export function fromByteLevel(text: string): Uint8Array {
  const bytes: number[] = [];
  for (const char of text) {
    const code = char.codePointAt(0)!;
    const byte = code < CHAR_TO_BYTE.length ? CHAR_TO_BYTE[code]! : -1;
    if (byte >= 0) {
      bytes.push(byte);
      continue;
    }
    const utf8 = encoder.encode(char);
    const hex = Array.from(utf8, (b) => b.toString(16).padStart(2, '0')).join('');
    bytes.push(...encoder.encode(`[UNK_BYTE_0x${hex}${text}]`));
  }
  return Uint8Array.from(bytes);
}

const SPACE = 0x20;
const APOSTROPHE = 0x27;
const code = (char: string): number => char.charCodeAt(0);

/**
 * llama.cpp's `clean_spaces` pass over detokenized bytes (BPE vocabularies except Qwen's): drop
 * the space before ? ! . , ; drop both spaces around a lone apostrophe (" ' "); drop the space
 * before the contractions 's 'm 're 've (not 't 'd 'll). Three passes in place, exactly as
 * `llama_vocab::impl::detokenize` does them, including its quirk of blanking the space after a
 * lone apostrophe so that the next pass cannot see it.
 */
export function cleanSpaces(bytes: Uint8Array): Uint8Array {
  const text = bytes.slice();
  let total = text.length;

  // First pass: " ?", " !", " .", " ,".
  const total1 = total;
  total = total ? 1 : 0;
  for (let i = 1; i < total1; i++) {
    const x = text[i]!;
    if (text[i - 1] === SPACE && (x === code('?') || x === code('!') || x === code('.') || x === code(','))) total--;
    text[total++] = x;
  }

  // Second pass: " ' " loses both spaces.
  const total2 = total;
  total = total ? 1 : 0;
  for (let i = 1; i < total2; i++) {
    const x = text[i]!;
    if (x === APOSTROPHE && i + 1 < total2 && text[i - 1] === SPACE && text[i + 1] === SPACE) {
      total--; // the space before
      text[++i] = 0; // the space after (skipped, and no longer a space for the next check)
    }
    text[total++] = x;
  }

  // Third pass: " 's", " 'm", " 're", " 've" lose their space.
  const total3 = total;
  total = total ? 1 : 0;
  for (let i = 1; i < total3; i++) {
    const x = text[i]!;
    if (text[i - 1] === SPACE && x === APOSTROPHE && i + 1 < total3) {
      const x1 = text[i + 1]!;
      if (x1 === code('s') || x1 === code('m')) {
        total--;
      } else if (i + 2 < total3) {
        const x2 = text[i + 2]!;
        if ((x1 === code('r') && x2 === code('e')) || (x1 === code('v') && x2 === code('e'))) total--;
      }
    }
    text[total++] = x;
  }
  return text.subarray(0, total);
}
