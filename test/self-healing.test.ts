// A shard group that heals itself, through the server's own handler with a real TP=2 model
// (stories260K on two lavapipe devices): for each fault kind, injected over HTTP while requests
// run, the running requests end promptly with a clean error (non-stream: 503 with an OpenAI error
// body; stream: an error event, then [DONE]), /ready and /health fail, the group reloads the same
// plan, and the next request gets llama.cpp's reference text. Recoveries show in /metrics.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModel, type Model } from '../src/api/model.ts';
import { FaultInjector, type FaultKind } from '../src/engine/faults.ts';
import { InferenceServer } from '../src/server/server.ts';
import { reference, referenceModelPath } from './helpers/models.ts';
import { readSse, sleep } from './server-harness.ts';

const SLOW_TEST_MS = 180_000;
const referenceCase = reference().generation_cases.find((c) => c.id === 'stories260K-f32/once-upon-a-time')!;

let model: Model;
let server: InferenceServer;
const log: string[] = [];

beforeAll(async () => {
  const faults = new FaultInjector();
  const onEvent = (line: string) => log.push(line);
  // A 4 s shard deadline (first steps compile pipelines on lavapipe): a hung shard is given up on within 8 s.
  model = await loadModel(referenceModelPath('stories260K-f32'), { tp: 2, contextLength: 256, maxSequences: 4, shardDeadlineMs: 4000, faults, onEvent });
  server = new InferenceServer({ modelName: 'stories260K', testHooks: true, faults, healthDeadlineMs: 3000, limits: { maxRunning: 4 }, log: onEvent });
  server.attach(model);
}, SLOW_TEST_MS);

afterAll(async () => {
  await server?.shutdown(0);
  await model?.dispose();
});

const call = (path: string, body?: unknown) =>
  server.handle(new Request(`http://127.0.0.1${path}`, body === undefined ? {} : { method: 'POST', body: JSON.stringify(body) }));
const completion = (extra: Record<string, unknown>) => ({ model: 'stories260K', prompt: 'Once upon a time', temperature: 0, ...extra });

async function metric(name: string): Promise<number> {
  const text = await (await call('/metrics')).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line === undefined ? NaN : Number(line.slice(name.length + 1));
}

async function untilReady(timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while ((await call('/ready')).status !== 200) {
    if (Date.now() > deadline) throw new Error(`not ready again within ${timeoutMs} ms:\n${log.join('\n')}`);
    await sleep(100);
  }
}

describe('a shard group that heals itself (TP=2)', () => {
  it.each<FaultKind>(['device-lost', 'worker-crash', 'hang'])('%s under load: clean errors, then the reference text', async (kind) => {
    const recoveriesBefore = await metric('webshard_group_recoveries_total');
    // Load: two long streams and a non-stream request, all running when the fault hits.
    const long = { max_tokens: 200, ignore_eos: true };
    const streams = [call('/v1/completions', completion({ ...long, stream: true })), call('/v1/completions', completion({ ...long, stream: true }))];
    const plain = call('/v1/completions', completion(long));
    const [first] = await Promise.all(streams);
    expect(first!.status).toBe(200);
    await sleep(200);

    const injectedAt = performance.now();
    expect((await call('/admin/fault', { shard: 1, kind })).status).toBe(200);

    const plainResponse = await plain;
    expect(plainResponse.status).toBe(503);
    const body = (await plainResponse.json()) as { error: { message: string; type: string; code: string } };
    expect(body.error.type).toBe('service_unavailable_error');
    expect(body.error.code).toBe('shard_failed');
    for (const response of await Promise.all(streams)) {
      const { events, done } = await readSse(response);
      expect(done).toBe(true);
      expect(events.at(-1)).toHaveProperty('error.code', 'shard_failed');
    }
    // Promptly: within the shard deadline (2 × 4 s for a hang) and some slack for lavapipe.
    expect(performance.now() - injectedAt).toBeLessThan(15_000);

    // Recovering or recovered; never serving from the failed group.
    await untilReady(60_000);
    expect((await call('/health')).status).toBe(200);
    const answer = await call('/v1/completions', completion({ prompt: referenceCase.prompt_ids, max_tokens: referenceCase.n_predict }));
    expect(answer.status).toBe(200);
    expect(((await answer.json()) as { choices: Array<{ text: string }> }).choices[0]!.text).toBe(referenceCase.generated_text);

    expect(await metric('webshard_group_recoveries_total')).toBe(recoveriesBefore + 1);
    expect(await metric('webshard_group_last_recovery_seconds')).toBeGreaterThan(0);
    expect(log.join('\n')).toMatch(/shard group recovered in [\d.]+ s \(same plan, tp 2, pp 1\)/);
  }, SLOW_TEST_MS);

  it('fails /ready and new requests with 503 while the group reloads', async () => {
    expect((await call('/admin/fault', { shard: 0, kind: 'device-lost' })).status).toBe(200);
    // The loss is seen at the next step; a request makes one.
    expect((await call('/v1/completions', completion({ max_tokens: 4 }))).status).toBe(503);
    const ready = await call('/ready');
    expect(ready.status).toBe(503);
    expect(((await ready.json()) as { detail: string }).detail).toMatch(/reloading after a failure/);
    expect((await call('/health')).status).toBe(503);
    const refused = await call('/v1/completions', completion({ max_tokens: 4 }));
    expect(refused.status).toBe(503);
    expect(refused.headers.get('retry-after')).toBe('5');
    await untilReady(60_000);
    expect((await call('/v1/completions', completion({ max_tokens: 4 }))).status).toBe(200);
  }, SLOW_TEST_MS);

  it('refuses a shard it does not have', async () => {
    const wrong = await call('/admin/fault', { shard: 7, kind: 'hang' });
    expect(wrong.status).toBe(400);
    expect(((await wrong.json()) as { error: { message: string } }).error.message).toMatch(/No shard 7/);
  });
});
