// The demo's incremental SHA-256 (its OPFS cache integrity check) against node:crypto.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { Sha256, sha256OfBlob } from '../demo/sha256.ts';
import { reference, referenceModelPath } from './helpers/models.ts';

const nodeSha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

function bytes(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed;
  for (let i = 0; i < length; i++) out[i] = (x = (Math.imul(x, 1103515245) + 12345) >>> 0) >>> 24;
  return out;
}

describe('demo SHA-256', () => {
  it('matches the FIPS 180-4 examples', () => {
    expect(new Sha256().hex()).toBe('e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
    expect(new Sha256().update(new TextEncoder().encode('abc')).hex()).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  });

  it('gives the same digest however the input is cut, at every padding boundary', () => {
    for (const length of [1, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 4099]) {
      const data = bytes(length, length);
      const expected = nodeSha256(data);
      expect(new Sha256().update(data).hex()).toBe(expected);
      for (const cut of [1, 7, 63, 64, 65]) {
        const hash = new Sha256();
        for (let i = 0; i < length; i += cut) hash.update(data.subarray(i, i + cut));
        expect(hash.hex(), `length ${length}, pieces of ${cut}`).toBe(expected);
      }
    }
  });

  it('hashes a model file slice by slice to the sha256 its reference pins', async () => {
    const file = readFileSync(referenceModelPath('stories260K-f32'));
    const seen: number[] = [];
    const digest = await sha256OfBlob(new Blob([file]), { sliceBytes: 100_003, onProgress: (done) => seen.push(done) });
    expect(digest).toBe(reference().models['stories260K-f32']!.sha256);
    expect(seen.at(-1)).toBe(file.length);
    expect(seen.length).toBe(Math.ceil(file.length / 100_003));
  });
});
