// bench/hf-load.ts on the quick shape, so `deno task bench:hf-load` cannot rot: the models written
// once and reused, every format loaded through loadModel, decode timed, the table. No assertion on
// speed: lavapipe is a CPU.
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { benchHfLoad, formatHfLoadTable } from '../bench/hf-load.ts';
import { testGpu } from './helpers/gpu.ts';

const dir = mkdtempSync(join(tmpdir(), 'webshard-bench-hf-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('bench/hf-load', () => {
  it('loads GGUF Q4_0, sharded BF16 and AWQ folders of one model and decodes the 4-bit ones', async () => {
    const options = { shapeName: 'quick' as const, formats: ['q4_0', 'bf16-sharded', 'awq'], shards: 3, repeats: 1, decode: ['q4_0', 'awq'], decodeTokens: 4, modelsDir: dir, device: await testGpu(), log: () => {} };
    const rows = await benchHfLoad(options);
    expect(rows.map((r) => r.format)).toEqual(options.formats);
    for (const r of rows) {
      for (const x of [r.fileBytes, r.gpuBytes, r.loadMs, r.fileGBps, r.gpuGBps]) expect(x).toBeGreaterThan(0);
      expect(r.fileGBps).toBeCloseTo(r.fileBytes / r.loadMs / 1e6, 6);
    }
    expect(readdirSync(rows[1]!.path).filter((f) => f.endsWith('.safetensors'))).toHaveLength(3);
    // The AWQ folder holds 4-bit layers and F16 embeddings: fewer bytes than BF16, more than Q4_0.
    expect(rows[2]!.fileBytes).toBeLessThan(rows[1]!.fileBytes);
    expect(rows[2]!.fileBytes).toBeGreaterThan(rows[0]!.fileBytes);
    for (const r of [rows[0]!, rows[2]!]) {
      expect(r.decodeTokens).toBe(4);
      expect(r.decodeTokensPerSecond).toBeGreaterThan(0);
    }
    expect(rows[1]!.decodeTokensPerSecond).toBeUndefined();
    // Written once: a second run reuses the folders (same paths, no ".partial" left behind).
    const again = await benchHfLoad({ ...options, formats: ['awq'], decode: [] });
    expect(again[0]!.path).toBe(rows[2]!.path);
    expect(readdirSync(dir).some((f) => f.endsWith('.partial'))).toBe(false);
    const text = formatHfLoadTable(rows);
    expect(text.split('\n')).toHaveLength(2 + rows.length);
    expect(text).toContain('AWQ gemm g128');
  });
});
