// The demo page, built with vite and driven in Debian's headless Chromium (SwiftShader WebGPU):
// load stories260K from a URL, from the file input and as a Hugging Face folder (the folder
// input), generate greedily, and match llama.cpp's reference text; chat with Phi-3 through its own template; split across two shards; refuse bad files and splits that do not fit; cache in
// OPFS with an integrity check. Screenshots go to test-results/.
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative, resolve, sep } from 'node:path';
import type { Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatBytes } from '../../demo/format.ts';
import { modelPath, modelsDir, reference, referenceModelPath } from '../helpers/models.ts';
import { modernReference } from '../helpers/modern-models.ts';
import { launchChromium, type ChromiumSession } from './browser.ts';
import { buildDemo, projectRoot } from './demo-build.ts';
import { serveStatic, type StaticServer } from './static-server.ts';

const referenceCase = reference().generation_cases.find((c) => c.id === 'stories260K-f32/once-upon-a-time')!;
const modelFile = referenceModelPath('stories260K-f32');
const modelUrlPath = `/models/${relative(modelsDir, modelFile).split(sep).join('/')}`;
/** The same weights as a Hugging Face folder (safetensors F32, tokenizer.json): llama.cpp's text exactly. */
const hfFolder = modelPath('hf/stories260K');
/** A folder's side files without config.json (copied into tokenizer-only/ in beforeAll). */
const tokenizerOnlyFiles = ['tokenizer.json', 'tokenizer_config.json'];
const artifacts = resolve(projectRoot, 'test-results');

let demoDir: string;
let badDir: string;
let server: StaticServer;
let chrome: ChromiumSession;

beforeAll(async () => {
  demoDir = await buildDemo();
  badDir = mkdtempSync(join(tmpdir(), 'webshard-bad-models-'));
  writeFileSync(join(badDir, 'notes.gguf'), 'These are my notes, not a model.\n'.repeat(20));
  // Header and tensor table intact, tensor data cut off half way.
  const model = readFileSync(modelFile);
  writeFileSync(join(badDir, 'truncated.gguf'), model.subarray(0, model.length >> 1));
  mkdirSync(join(badDir, 'tokenizer-only'));
  for (const name of tokenizerOnlyFiles) copyFileSync(join(hfFolder, name), join(badDir, 'tokenizer-only', name));
  // A subfolder, as Meta's repositories have (`original/`): a picked folder includes it, a dropped one leaves it out.
  mkdirSync(join(badDir, 'tokenizer-only', 'original'));
  writeFileSync(join(badDir, 'tokenizer-only', 'original', 'params.json'), '{}');
  server = await serveStatic({ '/': demoDir, '/models/': modelsDir });
  chrome = await launchChromium();
  mkdirSync(artifacts, { recursive: true });
});

afterAll(async () => {
  await chrome?.close();
  await server?.close();
  for (const dir of [demoDir, badDir]) if (dir) rmSync(dir, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------
// Driving the page like a person would

async function openDemo(query = ''): Promise<Page> {
  const page = await chrome.newPage();
  await page.goto(`${server.origin}/${query}`);
  await page.waitForSelector('#adapters .adapter');
  return page;
}

/** Sets a range/number input and fires `input`, as dragging a slider does. */
async function setValue(page: Page, selector: string, value: string | number): Promise<void> {
  await page.locator(selector).evaluate((input: HTMLInputElement, v) => {
    input.value = v;
    input.dispatchEvent(new Event('input', { bubbles: true }));
  }, String(value));
}

/** Waits until the page is no longer loading or generating. */
async function settle(page: Page, timeout = 240_000): Promise<void> {
  await page.waitForFunction(() => !document.body.classList.contains('busy'), null, { timeout });
}

async function errorShown(page: Page): Promise<{ title: string; message: string; fix: string; name: string } | undefined> {
  return page.evaluate(() => {
    const box = document.querySelector<HTMLElement>('#error')!;
    if (box.hidden) return undefined;
    const text = (id: string) => document.querySelector(id)!.textContent ?? '';
    return { title: text('#error-title'), message: text('#error-message'), fix: text('#error-fix'), name: box.dataset.errorName ?? '' };
  });
}

async function loadUrl(page: Page, url: string): Promise<void> {
  await page.click('#tab-url');
  await page.fill('#model-url', url);
  await page.click('#load-url');
  await settle(page);
}

async function loadFile(page: Page, path: string): Promise<void> {
  await page.click('#tab-file');
  await page.setInputFiles('#model-file', path);
  await settle(page);
}

/**
 * Drops files or folders from disk on the page as the desktop does: a native drag through the
 * DevTools protocol, so a folder arrives as a directory entry the page walks.
 */
async function dropPaths(page: Page, paths: string[]): Promise<void> {
  const devtools = await page.context().newCDPSession(page);
  const data = { items: [], files: paths, dragOperationsMask: 1 /* copy */ };
  for (const type of ['dragEnter', 'dragOver', 'drop'] as const) await devtools.send('Input.dispatchDragEvent', { type, x: 200, y: 200, data });
  await devtools.detach();
}

async function expectLoaded(page: Page, shards: number): Promise<void> {
  const error = await errorShown(page);
  expect(error, `${error?.title}: ${error?.message}\n${chrome.log.join('\n')}`).toBeUndefined();
  await expect.poll(() => page.getAttribute('#model-info', 'data-shards')).toBe(String(shards));
}

async function generateGreedy(page: Page, prompt: string, maxTokens: number): Promise<string> {
  await setValue(page, '#temperature', 0);
  await setValue(page, '#max-tokens', maxTokens);
  await page.fill('#prompt', prompt);
  await page.click('#generate');
  await page.waitForSelector('#transcript[data-state="done"]', { timeout: 240_000 });
  await settle(page);
  const error = await errorShown(page);
  expect(error, `${error?.title}: ${error?.message}\n${chrome.log.join('\n')}`).toBeUndefined();
  return (await page.textContent('#output')) ?? '';
}

async function chooseShards(page: Page, count: number, split: 'tensor' | 'pipeline' = 'tensor'): Promise<void> {
  await page.click(`#shard-count [data-value="${count}"]`);
  if (count > 1) await page.click(`#split-mode [data-value="${split}"]`);
}

const modelRequests = () => server.requests.filter((r) => r.path === modelUrlPath);

// ---------------------------------------------------------------------------------------------

// SwiftShader runs WebGPU on the CPU: a 64-token generation takes 10–50 s here, more on a loaded machine.
describe('demo page in headless Chromium (SwiftShader WebGPU)', { timeout: 360_000 }, () => {
  it('runs on the software adapter, within its limits, cross-origin isolated', async () => {
    const page = await openDemo();
    const env = await page.evaluate(async () => {
      const adapter = await navigator.gpu.requestAdapter();
      return {
        isolated: crossOriginIsolated,
        sharedArrayBuffer: typeof SharedArrayBuffer === 'function',
        shaderF16: adapter!.features.has('shader-f16'),
        invocations: adapter!.limits.maxComputeInvocationsPerWorkgroup,
        storageBuffers: adapter!.limits.maxStorageBuffersPerShaderStage,
        badges: [...document.querySelectorAll('#env li.ok')].map((li) => li.textContent),
      };
    });
    // The kernels must work within these limits (ARCHITECTURE.md, "Measured facts": browser limits); the generation tests below prove they do.
    expect(env).toMatchObject({ isolated: true, sharedArrayBuffer: true, shaderF16: false });
    expect(env.invocations).toBeLessThanOrEqual(256);
    expect(env.storageBuffers).toBeLessThanOrEqual(10);
    expect(env.badges).toEqual(['WebGPU', 'cross-origin isolated', 'SharedArrayBuffer', 'OPFS']);
    await expect.poll(() => page.textContent('#adapters')).toMatch(/swiftshader/i);
    await page.close();
  });

  it('loads stories260K from a URL (HTTP Range) and generates llama.cpp\'s text greedily on one device', async () => {
    const page = await openDemo();
    const before = modelRequests().length;
    await loadUrl(page, modelUrlPath);
    await expectLoaded(page, 1);
    // Read piece by piece: every request for the model asked for a byte range.
    const requests = modelRequests().slice(before);
    expect(requests.length).toBeGreaterThan(1);
    expect(requests.every((r) => r.range?.startsWith('bytes='))).toBe(true);

    // stories260K has no chat template: no chat view, the box generates from the plain prompt.
    expect(await page.isHidden('#chat-mode')).toBe(true);
    expect(await page.textContent('#generate')).toBe('Generate');
    const text = await generateGreedy(page, referenceCase.prompt, referenceCase.n_predict);
    expect(text).toBe(referenceCase.generated_text);
    expect(await page.textContent('#m-tokens')).toBe(String(referenceCase.n_predict));
    expect(await page.textContent('#m-finish')).toBe('token limit');
    expect(Number(await page.textContent('#m-decode'))).toBeGreaterThan(0);
    // Speculative decoding (prompt lookup, on by default) kept the text; its acceptance is shown live.
    expect(await page.textContent('#m-accepted')).toMatch(/^\d+\/\d+ · [\d.]+ tok\/step$/);
    // The device card charted the decode steps.
    expect(await page.textContent('#device-grid .device header')).toMatch(/Shard 0.*\d+ steps/s);
    await page.screenshot({ path: resolve(artifacts, 'demo-1-shard.png'), fullPage: true });
    await page.close();
  });

  it("chats with a model that has a template (Phi-3): system and user message in, llama.cpp's greedy answer out", async () => {
    const chatCase = modernReference().generation_cases.find((c) => c.id === 'phi3-tiny-f32/chat')!;
    const page = await openDemo();
    await loadUrl(page, `/models/${modernReference().models[chatCase.model]!.file}`);
    await expectLoaded(page, 1);
    expect(await page.isVisible('#chat-mode')).toBe(true);
    expect(await page.textContent('#generate')).toBe('Send');
    const [system, user] = chatCase.chat_messages!;
    expect([system!.role, user!.role]).toEqual(['system', 'user']);
    await page.fill('#system-prompt', system!.content);
    const answer = await generateGreedy(page, user!.content, chatCase.n_predict);
    expect(answer).toBe(chatCase.generated_text);
    expect(await page.textContent('#output-prompt')).toBe(`System: ${system!.content}\n\nYou: ${user!.content}\n\nAssistant: `);
    await page.screenshot({ path: resolve(artifacts, 'demo-chat.png'), fullPage: true });
    await page.close();
  });

  it('splits the model across 2 shards (tensor parallel) and generates the same text', async () => {
    const page = await openDemo();
    await chooseShards(page, 2, 'tensor');
    await loadUrl(page, modelUrlPath);
    await expectLoaded(page, 2);
    expect(await page.locator('#device-grid .device').count()).toBe(2);
    expect(await page.textContent('#story')).toMatch(/Tensor split/);

    const text = await generateGreedy(page, referenceCase.prompt, referenceCase.n_predict);
    expect(text).toBe(referenceCase.generated_text);
    // Each shard charted its all-reduce time: the collectives really happened.
    const allReduce = await page.locator('#device-grid .device .chart:nth-child(3) .chart-value').allTextContents();
    expect(allReduce).toHaveLength(2);
    for (const value of allReduce) expect(value).toMatch(/\d+(\.\d+)? (µs|ms|s)$/);
    await page.screenshot({ path: resolve(artifacts, 'demo-2-shards.png'), fullPage: true });
    await page.close();
  });

  it('shows readable errors for a file that is not GGUF and for a truncated one, then still loads a good file', async () => {
    const page = await openDemo();

    await loadFile(page, join(badDir, 'notes.gguf'));
    const notGguf = await errorShown(page);
    expect(notGguf).toMatchObject({ name: 'ModelFormatError', title: 'This file is not a model webshard can read' });
    expect(notGguf!.message).toMatch(/notes\.gguf: not a GGUF file/);
    expect(notGguf!.fix.length).toBeGreaterThan(0);
    await page.screenshot({ path: resolve(artifacts, 'demo-bad-file.png'), fullPage: true });

    await loadFile(page, join(badDir, 'truncated.gguf'));
    const truncated = await errorShown(page);
    expect(truncated?.name).toBe('ModelFormatError');
    expect(`${truncated!.message} ${truncated!.fix}`).toMatch(/truncated/i);

    // The page is still usable: the file input loads a good model, which generates.
    await loadFile(page, modelFile);
    await expectLoaded(page, 1);
    expect(await page.textContent('#model-info')).toContain(modelFile.split('/').pop()!);
    const text = await generateGreedy(page, referenceCase.prompt, 8);
    expect(text.length).toBeGreaterThan(0);
    expect(referenceCase.generated_text.startsWith(text)).toBe(true);

    // The stop button ends a long generation between two steps.
    await setValue(page, '#max-tokens', 400);
    await page.click('#generate');
    await page.waitForFunction(() => Number(document.querySelector('#m-tokens')!.textContent) >= 3, null, { timeout: 120_000 });
    await page.click('#stop');
    await page.waitForSelector('#transcript[data-state="done"]', { timeout: 60_000 });
    expect(await page.textContent('#m-finish')).toBe('stop button');
    expect(Number(await page.textContent('#m-tokens'))).toBeLessThan(400);
    await page.close();
  });

  it("loads a Hugging Face folder picked with the folder input and generates llama.cpp's text; a folder without config.json is refused, picked or dropped", async () => {
    const page = await openDemo();
    await page.click('#tab-file');

    // The tokenizer files without config.json: refused with what a model folder needs, whether
    // the folder is picked, dropped, or its files are dropped.
    const tokenizerOnly = join(badDir, 'tokenizer-only');
    const refusal = (files: number) => new RegExp(`no config\\.json among ${files} files: a Hugging Face model folder needs config\\.json and model\\.safetensors`);
    await page.setInputFiles('#model-folder', tokenizerOnly);
    await settle(page);
    const picked = await errorShown(page);
    expect(picked).toMatchObject({ name: 'ModelSourceError', title: 'Could not read the model' });
    expect(picked!.message).toMatch(new RegExp(`^tokenizer-only: ${refusal(3).source}`));
    const dropExpectingError = async (paths: string[]) => {
      await page.click('#error-dismiss');
      await dropPaths(page, paths);
      await page.waitForSelector('#error', { state: 'visible' });
      await settle(page);
      return errorShown(page);
    };
    // A dropped folder is read from its top level; the subfolder left out is named.
    expect(await dropExpectingError([tokenizerOnly])).toMatchObject({ name: 'ModelSourceError', message: expect.stringMatching(refusal(2)) });
    expect(await page.isVisible('#load-notice')).toBe(true);
    expect(await page.textContent('#load-notice')).toMatch(/left out original\//);
    const droppedFiles = tokenizerOnlyFiles.map((name) => join(tokenizerOnly, name));
    expect(await dropExpectingError(droppedFiles)).toMatchObject({ name: 'ModelSourceError', message: expect.stringMatching(refusal(2)) });
    // A folder and a file dropped together: which one is the model?
    expect((await dropExpectingError([tokenizerOnly, modelFile]))?.message).toMatch(/held 2 items \(tokenizer-only, stories260K\.gguf\); drop one model folder/);

    await page.setInputFiles('#model-folder', hfFolder);
    await settle(page);
    await expectLoaded(page, 1);
    // Size: every file of the folder; shape: the folder's config.json.
    const files = readdirSync(hfFolder);
    const bytes = files.reduce((sum, name) => sum + statSync(join(hfFolder, name)).size, 0);
    const info = await page.textContent('#model-info');
    expect(info).toContain(`folderstories260K/ · ${files.length} files · ${formatBytes(bytes)}`);
    expect(info).toMatch(/5 layers · 8 heads \(4 KV\) · dim 64/);
    const text = await generateGreedy(page, referenceCase.prompt, referenceCase.n_predict);
    expect(text).toBe(referenceCase.generated_text);
    await page.screenshot({ path: resolve(artifacts, 'demo-hf-folder.png'), fullPage: true });
    await page.close();
  });

  it('refuses a split that does not fit a device with the memory planner\'s message', async () => {
    const page = await openDemo();
    await chooseShards(page, 2, 'tensor');
    await page.fill('#memory-budget', '0.5');
    await loadUrl(page, modelUrlPath);
    const error = await errorShown(page);
    expect(error).toMatchObject({ name: 'ShardPlanError', title: 'The model does not fit this split' });
    expect(error!.message).toMatch(/memory budget/);
    expect(error!.fix).toMatch(/more shards|smaller/);
    expect(await page.getAttribute('#model-info', 'hidden')).not.toBeNull();
    expect(await page.isDisabled('#load-url')).toBe(false);
    await page.close();
  });

  it('keeps a verified copy in OPFS, loads from it without the network, and replaces a damaged copy', async () => {
    const page = await openDemo();
    await page.check('#use-cache');
    const fresh = modelRequests().length;
    await loadUrl(page, modelUrlPath);
    await expectLoaded(page, 1);
    // Downloaded once, whole, into the cache (not by ranges: it is stored, not read in place).
    expect(modelRequests().slice(fresh).map((r) => r.range)).toEqual([undefined]);
    await expect.poll(() => page.textContent('#cache-list')).toContain('stories260K.gguf');

    const cached = modelRequests().length;
    await loadUrl(page, modelUrlPath);
    await expectLoaded(page, 1);
    expect(modelRequests().length).toBe(cached);

    // Damage the stored bytes: the integrity check catches it and downloads the file again.
    await page.evaluate(async () => {
      const dir = await (await navigator.storage.getDirectory()).getDirectoryHandle('webshard-models');
      for await (const name of (dir as unknown as { keys(): AsyncIterable<string> }).keys()) {
        if (!name.endsWith('.gguf')) continue;
        const writable = await (await dir.getFileHandle(name)).createWritable({ keepExistingData: true });
        await writable.write({ type: 'write', position: 100_000, data: new Uint8Array(64).fill(0xff) });
        await writable.close();
      }
    });
    await loadUrl(page, modelUrlPath);
    await expectLoaded(page, 1);
    expect(await page.textContent('#load-notice')).toMatch(/cached copy is damaged: its SHA-256 is [0-9a-f]{64}/);
    expect(modelRequests().length).toBe(cached + 1);
    const text = await generateGreedy(page, referenceCase.prompt, 4);
    expect(referenceCase.generated_text.startsWith(text)).toBe(true);
    await page.close();
  });
});
