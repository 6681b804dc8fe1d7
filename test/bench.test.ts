// The benchmark suite's building blocks on one tiny shape, so `deno task bench` cannot rot: the
// random-model writer, the peaks, every kernel benchmark, the end-to-end measurements through
// loadModel, the peers' "not available" paths, the table and the JSON. No assertion on speed:
// lavapipe is a CPU.
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { modelCost, syntheticPromptIds } from '../bench/e2e.ts';
import { copiesToFlush, type KernelName } from '../bench/kernels.ts';
import { benchModelFile, QUICK_SHAPE } from '../bench/models.ts';
import { importNodeLlamaCpp } from '../bench/peer.ts';
import { defaultSuiteOptions, reportHeader, reportTable, runBenchSuite, type BenchReport } from '../bench/run.ts';
import { llamaConfig } from '../src/model/config.ts';
import { GGMLType } from '../src/model/ggml-type.ts';
import { readGGUF } from '../src/model/gguf.ts';
import { fileSource } from '../src/model/source.ts';

const dir = mkdtempSync(join(tmpdir(), 'webshard-bench-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const positive = (x: unknown) => {
  expect(typeof x).toBe('number');
  expect(x as number).toBeGreaterThan(0);
  expect(Number.isFinite(x as number)).toBe(true);
};

describe('bench building blocks', () => {
  it('writes a random model once and reuses it; modelCost counts its matrices', async () => {
    const first = await benchModelFile('quick', GGMLType.Q4_0, { dir });
    expect(first.cached).toBe(false);
    expect(statSync(first.path).size).toBe(first.bytes);
    const again = await benchModelFile('quick', GGMLType.Q4_0, { dir });
    expect(again).toMatchObject({ cached: true, path: first.path, bytes: first.bytes });

    const file = await readGGUF(await fileSource(first.path));
    try {
      const config = llamaConfig(file);
      const cost = modelCost(file, config);
      const { dim, nLayers, ffnDim, headDim, nHeads, nKvHeads } = config;
      const perLayer = dim * nHeads * headDim * 2 + 2 * dim * nKvHeads * headDim + 3 * dim * ffnDim;
      expect(cost.layerMatmulParams).toBe(nLayers * perLayer);
      expect(cost.outputHeadParams).toBe(dim * QUICK_SHAPE.vocabSize!);
      // Q4_0 in the GPU layout: 16 bytes of quants + 2 of scale per 32 weights (plus norms, padding).
      expect(cost.weightBytesPerStep).toBeGreaterThanOrEqual(((nLayers * perLayer + cost.outputHeadParams) * 18) / 32);
      expect(cost.kvBytesPerPosition).toBe(nLayers * 2 * nKvHeads * headDim * 4);
    } finally {
      await file.source.close();
    }
  });

  it('small helpers', () => {
    expect(copiesToFlush(10, 100)).toBe(10);
    expect(copiesToFlush(1000, 100)).toBe(1);
    expect(copiesToFlush(1, 1e9)).toBe(16);
    const ids = syntheticPromptIds(4096, 1, 16);
    expect(ids).toHaveLength(16);
    expect(ids[0]).toBe(1);
    expect(ids.every((id) => id >= 0 && id < 4096)).toBe(true);
  });

  it('reports node-llama-cpp as missing with the way to get it (unless it is installed)', async () => {
    const peer = await importNodeLlamaCpp();
    if (!peer.status.available) expect(peer.status.reason).toMatch(/npm install --no-save node-llama-cpp@/);
  });

  it('runs the whole suite on a tiny shape and produces the table and JSON', async () => {
    const logs: string[] = [];
    const o = defaultSuiteOptions(true, (line) => logs.push(line));
    o.command = 'vitest test/bench.test.ts';
    o.modelsDir = dir;
    o.models = [{ shape: 'quick', type: GGMLType.Q8_0 }];
    o.kernelShapes = { ...o.kernelShapes, rows: 256, cols: 256, prefillTokens: 16, decodeContext: 64, normTokens: 8, flushBytes: 2 ** 20, types: [GGMLType.Q4_0] };
    o.peakBytes = 2 ** 20;
    o.peakFlops = { workgroups: 4, iterations: 16 };
    o.timer = { samples: 2, targetSampleMs: 1, maxDispatches: 8 };
    o.e2e = { prefillTokens: 16, prefillRepeats: 1, decodeTokens: 4, batches: [1, 2] };
    o.llamaCpp = false;
    o.speculative = { ...o.speculative!, tokens: 12, draftMax: 4 };
    o.torch = true; // python3 without torch (or without CUDA) must come back as "not available", never throw
    let stages = 0;
    o.onStage = () => {
      stages++;
    };
    const report: BenchReport = JSON.parse(JSON.stringify(await runBenchSuite(o)));

    expect(report.errors).toEqual([]);
    expect(report.complete).toBe(true);
    // Speculative rows: every drafter keeps plain decoding's tokens; accepted drafts save target steps.
    expect(report.speculative!.map((r) => r.drafter)).toHaveLength(6);
    for (const row of report.speculative!) {
      expect(row.sameTokens, row.drafter).toBe(true);
      positive(row.decodeTokensPerSecond);
      expect(row.targetStepsPerToken).toBeLessThanOrEqual(1);
      if (row.accepted > 0) expect(row.targetStepsPerToken).toBeLessThan(1);
    }
    expect(stages).toBeGreaterThanOrEqual(3);
    expect(report.adapter).not.toBe('');
    expect(report.date).toMatch(/^\d{4}-\d{2}-\d{2}$/);
    positive(report.peaks!.bandwidth.gbps);
    positive(report.peaks!.flops.tflops);
    expect(report.torch).toBeDefined();
    if (!report.torch!.available) expect(report.torch!.reason).toBeTruthy();

    const kernels = new Set<KernelName>(report.kernels.map((k) => k.kernel));
    expect([...kernels].sort()).toEqual(['attention decode', 'attention prefill', 'matmul', 'matvec', 'rmsnorm']);
    for (const k of report.kernels) {
      for (const field of [k.ms, k.bytes, k.flops, k.gbps, k.tflops, k.fractionOfPeak, k.dispatches, k.copies]) positive(field);
      expect(['gpu-timestamps', 'wall-clock']).toContain(k.timing);
    }

    expect(report.models).toHaveLength(1);
    const w = report.models[0]!.webshard!;
    expect(w).toBeDefined();
    for (const field of [w.coldStart.openMs, w.coldStart.loadMs, w.coldStart.loadGBps, w.coldStart.firstTokenMs, w.coldStart.timeToFirstTokenMs, w.coldStart.gpuBytes, w.coldStart.weightsGBps]) positive(field);
    expect(w.prefill.tokens).toBe(16);
    for (const field of [w.prefill.ms, w.prefill.tokensPerSecond, w.prefill.flops, w.prefill.tflops, w.prefill.fractionOfFmaPeak, w.prefill.fractionOfRoofline]) positive(field);
    expect(w.decode.map((d) => d.batch)).toEqual([1, 2]);
    for (const d of w.decode) {
      for (const field of [d.tokens, d.steps, d.windowMs, d.tokensPerSecond, d.wallMsPerStep, d.wallMsPerStepP50, d.submitsPerToken, d.readbacksPerToken, d.engineSubmitsPerToken, d.bytesPerToken, d.fractionOfRoofline]) {
        positive(field);
      }
      if (w.timing === 'gpu-timestamps') positive(d.gpuMsPerStep);
      // The window holds whole steps, each making one token per sequence.
      expect(d.tokens).toBe(d.steps * d.batch);
    }
    // One step makes one token per sequence: batch 1 costs a step (≥ 1 submit, 1 read-back) per token.
    expect(w.decode[0]!.readbacksPerToken).toBeCloseTo(1, 5);
    expect(w.decode[0]!.engineSubmitsPerToken).toBeGreaterThanOrEqual(1);

    const text = `${reportHeader(report)}\n${reportTable(report)}`;
    for (const row of ['peak read bandwidth', 'peak f32 FMA', 'matvec Q4_0', 'matmul Q4_0 (tiled)', 'attention decode', 'rmsnorm', 'cold start', 'prefill 16', 'decode batch 1', 'decode batch 2']) {
      expect(text).toContain(row);
    }
    expect(existsSync(report.models[0]!.file!.path)).toBe(true);
  });
});
