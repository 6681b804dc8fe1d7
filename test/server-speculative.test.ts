// The server with a draft model (`deno task serve -md ...`): concurrent requests draft and verify
// in the same batched steps and still get llama.cpp's greedy text; /metrics counts drafted and
// accepted tokens; a request can opt out with "speculative": false.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { reference, referenceModelPath } from './helpers/models.ts';
import { startServer, type ServerProcess } from './server-harness.ts';

const cases = reference().generation_cases.filter((c) => c.model === 'stories260K-f32' && c.n_predict === 64).slice(0, 4);

let server: ServerProcess;

async function complete(body: object): Promise<{ choices: Array<{ text: string }> }> {
  const response = await fetch(`${server.baseUrl}/v1/completions`, { method: 'POST', body: JSON.stringify({ model: 'stories260K', max_tokens: 64, temperature: 0, ...body }) });
  expect(response.status).toBe(200);
  return (await response.json()) as { choices: Array<{ text: string }> };
}

async function counter(name: string): Promise<number> {
  const text = await (await fetch(`${server.baseUrl}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  if (!line) throw new Error(`/metrics has no ${name}:\n${text}`);
  return Number(line.split(' ')[1]);
}

beforeAll(async () => {
  server = await startServer(referenceModelPath('stories260K-f32'), ['--parallel', '4', '-md', referenceModelPath('stories260K-q8_0'), '--draft-max', '6']);
}, 180_000);

afterAll(() => server?.kill());

describe('deno task serve with a draft model', () => {
  it("answers concurrent requests with llama.cpp's greedy text and counts drafted and accepted tokens", async () => {
    const answers = await Promise.all(cases.map((c) => complete({ prompt: c.prompt_ids })));
    answers.forEach((answer, i) => expect(answer.choices[0]!.text).toBe(cases[i]!.generated_text));
    const [drafted, accepted] = [await counter('webshard_speculative_draft_tokens_total'), await counter('webshard_speculative_accepted_tokens_total')];
    expect(accepted).toBeGreaterThan(0);
    expect(drafted).toBeGreaterThanOrEqual(accepted);

    const optedOut = await complete({ prompt: cases[0]!.prompt_ids, speculative: false });
    expect(optedOut.choices[0]!.text).toBe(cases[0]!.generated_text);
    expect(await counter('webshard_speculative_draft_tokens_total')).toBe(drafted);
    expect(await server.stop()).toBe(0);
  });
});
