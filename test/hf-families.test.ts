// Hugging Face folders of the families without a shared HF fixture (Qwen2: Q/K/V biases; Phi-3:
// fused qkv_proj and gate_up_proj), written here from their F32 GGUFs under HF names and config
// keys, opened by the folder loader and run against llama.cpp's references for those GGUFs. (These
// GGUFs rotate neox-style, so their Q/K rows are already in HF's order.) Below loadModel, on the
// runner: the folders carry no tokenizer.json, and the reference prompt ids are given.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { kvGeometry } from '../src/engine/kv-cache.ts';
import { LlamaRunner } from '../src/engine/runner.ts';
import { wholeModelView } from '../src/engine/shard-view.ts';
import { llamaConfig } from '../src/model/config.ts';
import { ggmlTypeName } from '../src/model/ggml-type.ts';
import { readGGUF, readTensorBytes, type GGUFFile } from '../src/model/gguf.ts';
import { ggufToHfName } from '../src/model/hf-config.ts';
import { openModel, type OpenedModel } from '../src/model/open-model.ts';
import { writeSafetensors } from '../src/model/safetensors-writer.ts';
import { fileSource } from '../src/model/source.ts';
import { FULL_SWEEP, testGpu } from './helpers/gpu.ts';
import { modernModelPath, modernReference } from './helpers/modern-models.ts';
import { greedyTokens } from './helpers/runner.ts';

const HF_ARCHITECTURE: Record<string, string> = { qwen2: 'Qwen2ForCausalLM', phi3: 'Phi3ForCausalLM' };

/** config.json as transformers writes it for the GGUF's numbers. */
function configJson(gguf: GGUFFile): Record<string, unknown> {
  const c = llamaConfig(gguf);
  return {
    architectures: [HF_ARCHITECTURE[c.architecture]],
    hidden_size: c.dim,
    num_hidden_layers: c.nLayers,
    num_attention_heads: c.nHeads,
    num_key_value_heads: c.nKvHeads,
    head_dim: c.headDim,
    intermediate_size: c.ffnDim,
    rms_norm_eps: c.rmsEps,
    rope_theta: c.ropeBase,
    max_position_embeddings: c.contextLength,
    vocab_size: c.vocabSize,
    tie_word_embeddings: c.tiedEmbeddings,
    hidden_act: 'silu',
    torch_dtype: 'float32',
  };
}

/** The GGUF as a Hugging Face folder: its tensors under HF names, [out, in] shapes, F32. */
async function writeFolder(gguf: GGUFFile, dir: string): Promise<void> {
  const fusedGateUp = llamaConfig(gguf).family.fusedGateUp;
  const tensors = [];
  for (const t of gguf.tensors) {
    expect(ggmlTypeName(t.type)).toBe('F32');
    tensors.push({ name: ggufToHfName(t.name, { fusedGateUp }), dtype: 'F32' as const, shape: [...t.shape].reverse(), data: await readTensorBytes(gguf, t) });
  }
  writeFileSync(join(dir, 'model.safetensors'), await writeSafetensors({ tensors }));
  writeFileSync(join(dir, 'config.json'), JSON.stringify(configJson(gguf)));
}

describe.each(['qwen2-tiny-f32', 'phi3-tiny-f32'])('%s as a Hugging Face folder', (key) => {
  const dir = mkdtempSync(join(tmpdir(), `webshard-${key}-`));
  const all = modernReference().generation_cases.filter((c) => c.model === key);
  const cases = FULL_SWEEP ? all : [all.find((c) => c.name === 'chat')!];
  let opened: OpenedModel;
  let runner: LlamaRunner;

  beforeAll(async () => {
    const gguf = await readGGUF(await fileSource(modernModelPath(key)));
    try {
      await writeFolder(gguf, dir);
    } finally {
      await gguf.source.close();
    }
    opened = await openModel(dir, { tokenizer: false });
    runner = await LlamaRunner.load(await testGpu(), opened.file, opened.config, wholeModelView(opened.config), { geometry: kvGeometry(128), maxBatchTokens: 128 });
  });
  afterAll(async () => {
    runner?.dispose();
    await opened?.file.source.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("reads the family's parts from config.json and the HF names", () => {
    const { family } = opened.config;
    if (key.startsWith('qwen2')) expect(family).toMatchObject({ qkvBias: true, ropeStyle: 'neox' });
    else expect(family).toMatchObject({ fusedQkv: true, fusedGateUp: true, ropeStyle: 'neox' });
  });

  it.each(cases.map((c) => [c.name, c] as const))("%s: llama.cpp's greedy tokens up to the robust prefix", async (_, c) => {
    const n = c.robust_prefix_len;
    expect(await greedyTokens(runner, c.prompt_ids, n)).toEqual(c.generated_ids.slice(0, n));
  });
});
