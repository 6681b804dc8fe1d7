import { loadModel } from '../src/index.ts';
const out = document.getElementById('out')!;
(async () => {
  try {
    const t0 = performance.now();
    const model = await loadModel(new URL('/models/stories260K.gguf', location.href), { contextLength: 256 });
    out.textContent += `loaded ${(performance.now() - t0).toFixed(0)} ms\n`;
    const r = await model.complete('Once upon a time', { temperature: 0, maxTokens: 64, ignoreEos: true });
    out.textContent += JSON.stringify(r.text) + '\n' + JSON.stringify(r.timings) + '\nDONE';
  } catch (e) { out.textContent += 'ERROR ' + (e as Error).stack + '\nDONE'; }
})();
