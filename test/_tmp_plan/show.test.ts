import { it } from 'vitest';
import { llamaConfig } from '../../src/model/config.ts';
import { readGGUF } from '../../src/model/gguf.ts';
import { fileSource } from '../../src/model/source.ts';
import { planShards } from '../../src/sharding/plan.ts';
import { modelPath } from '../helpers/models.ts';
it('show', async () => {
  const file = await readGGUF(await fileSource(modelPath('stories260K-Q4_0.gguf')));
  const config = llamaConfig(file);
  const dev = (i: number) => ({ name: `gpu${i}`, maxBufferSize: 2**30, maxStorageBufferBindingSize: 2**27, memoryBudgetBytes: 2**22 });
  for (const [tp, pp] of [[2, 2], [1, 4], [4, 1], [2,1]]) {
    try { console.log(planShards(file, config, { tp, pp, contextLength: 2048, maxBatchTokens: 512, devices: Array.from({ length: tp * pp }, (_, i) => dev(i)) }).summary.join('\n')); }
    catch (e) { console.log(String(e)); }
  }
});
