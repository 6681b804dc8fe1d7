// The demo page: pick a model (URL or local file), pick devices and a split, generate, and watch
// every device work. Plain TypeScript over the DOM; the library is imported from its sources.

import { loadModel, type ChatMessage, type FinishReason, type GenerateOptions, type GenerationResult, type LoadOptions, type Model } from '../src/index.ts';
import { gpuOptionsFor, listAdapters, type AdapterEntry, type AdapterKind } from './adapters.ts';
import { $, h } from './dom.ts';
import { formatBytes, formatCount, formatDuration, formatRate, formatTokensPerSecond } from './format.ts';
import { droppedItems, droppedModel, pickedFile, pickedFolder, totalSize, type LocalModel } from './local-files.ts';
import { CacheIntegrityError, ModelCache, parseSha256, type CachedModel } from './opfs-cache.ts';
import { SplitDiagram } from './diagram.ts';
import { exampleShape, explainSplit, modelShape, previewLayout, splitLayout, type ModelShape, type SplitLayout } from './split.ts';
import { DevicePanel } from './telemetry.ts';

type SplitMode = 'tensor' | 'pipeline' | 'both';
type ModelPick = { kind: 'url'; url: string } | { kind: 'local'; local: LocalModel };

interface Loaded {
  model: Model;
  shape: ModelShape;
  layout: SplitLayout;
  /** The file's or the folder's name. */
  sourceName: string;
  /** A Hugging Face folder (picked, dropped or a URL ending in `/`) rather than one GGUF file. */
  isFolder: boolean;
  /** How many files a picked or dropped folder held. */
  fileCount?: number;
  sizeBytes: number;
}

// ---------------------------------------------------------------------------------------------
// Elements

const el = {
  env: $('#env'),
  tabUrl: $<HTMLButtonElement>('#tab-url'),
  tabFile: $<HTMLButtonElement>('#tab-file'),
  paneUrl: $('#pane-url'),
  paneFile: $('#pane-file'),
  url: $<HTMLInputElement>('#model-url'),
  useCache: $<HTMLInputElement>('#use-cache'),
  shaField: $('#sha-field'),
  expectedSha: $<HTMLInputElement>('#expected-sha'),
  loadUrl: $<HTMLButtonElement>('#load-url'),
  file: $<HTMLInputElement>('#model-file'),
  folder: $<HTMLInputElement>('#model-folder'),
  dropzone: $('#dropzone'),
  dropOverlay: $('#drop-overlay'),
  contextLength: $<HTMLSelectElement>('#context-length'),
  progress: $('#load-progress'),
  phase: $('#load-phase'),
  rate: $('#load-rate'),
  bar: $('#load-bar'),
  bytes: $('#load-bytes'),
  eta: $('#load-eta'),
  error: $('#error'),
  errorTitle: $('#error-title'),
  errorMessage: $('#error-message'),
  errorFix: $('#error-fix'),
  errorDismiss: $<HTMLButtonElement>('#error-dismiss'),
  modelInfo: $('#model-info'),
  cachePanel: $<HTMLDetailsElement>('#cache-panel'),
  cacheUsage: $('#cache-usage'),
  cacheList: $('#cache-list'),
  adapters: $('#adapters'),
  shardCount: $('#shard-count'),
  splitMode: $('#split-mode'),
  splitHint: $('#split-hint'),
  memoryBudget: $<HTMLInputElement>('#memory-budget'),
  notice: $('#load-notice'),
  temperature: $<HTMLInputElement>('#temperature'),
  topK: $<HTMLInputElement>('#top-k'),
  topP: $<HTMLInputElement>('#top-p'),
  minP: $<HTMLInputElement>('#min-p'),
  repeatPenalty: $<HTMLInputElement>('#repeat-penalty'),
  maxTokens: $<HTMLInputElement>('#max-tokens'),
  seed: $<HTMLInputElement>('#seed'),
  speculative: $<HTMLInputElement>('#speculative'),
  mAccepted: $('#m-accepted'),
  transcript: $('#transcript'),
  outputPrompt: $('#output-prompt'),
  output: $('#output'),
  prompt: $<HTMLTextAreaElement>('#prompt'),
  generate: $<HTMLButtonElement>('#generate'),
  stop: $<HTMLButtonElement>('#stop'),
  chatMode: $('#chat-mode'),
  chatToggle: $<HTMLInputElement>('#chat-toggle'),
  systemPrompt: $<HTMLInputElement>('#system-prompt'),
  newChat: $<HTMLButtonElement>('#new-chat'),
  mDecode: $('#m-decode'),
  mPrefill: $('#m-prefill'),
  mTtft: $('#m-ttft'),
  mTokens: $('#m-tokens'),
  mFinish: $('#m-finish'),
  telemetryNote: $('#telemetry-note'),
  deviceGrid: $('#device-grid'),
  diagram: $('#diagram'),
  story: $('#story'),
  explainNote: $('#explain-note'),
};

const devicePanel = new DevicePanel(el.deviceGrid);
const diagram = new SplitDiagram(el.diagram);

// ---------------------------------------------------------------------------------------------
// State

const state = {
  loaded: undefined as Loaded | undefined,
  busy: false,
  generation: undefined as AbortController | undefined,
  adapters: [] as AdapterEntry[],
  chosenAdapters: new Set<AdapterKind>(),
  shards: 1,
  split: 'tensor' as SplitMode,
  /** The conversation so far, when the chat view is on. */
  chat: [] as ChatMessage[],
};

function setBusy(busy: boolean, what: 'loading' | 'generating' = 'loading'): void {
  state.busy = busy;
  el.loadUrl.textContent = busy && what === 'loading' ? 'Loading…' : 'Load from URL';
  document.body.classList.toggle('busy', busy);
  for (const control of [el.loadUrl, el.file, el.folder, el.contextLength]) control.disabled = busy;
  el.generate.disabled = busy || !state.loaded;
}

// ---------------------------------------------------------------------------------------------
// Environment badges

/** `adapters`: how many WebGPU adapters the page got (undefined while still asking). */
function renderEnvironment(adapters?: number): void {
  const badge = (ok: boolean, text: string, title: string) => h('li', { class: ok ? 'ok' : 'missing', title }, text);
  const webgpu =
    !('gpu' in navigator) ? 'This browser has no WebGPU'
    : adapters === 0 ? 'navigator.gpu offers no adapter (Chromium on Linux needs --enable-unsafe-webgpu)'
    : 'navigator.gpu is available';
  el.env.replaceChildren(
    badge('gpu' in navigator && adapters !== 0, 'WebGPU', webgpu),
    badge(crossOriginIsolated, 'cross-origin isolated', crossOriginIsolated ? 'COOP/COEP headers are set' : 'Serve the page with COOP: same-origin and COEP: require-corp'),
    badge(typeof SharedArrayBuffer !== 'undefined', 'SharedArrayBuffer', 'Shards add their partial sums in shared memory'),
    badge(ModelCache.supported(), 'OPFS', 'Origin Private File System, for the model cache'),
  );
}

// ---------------------------------------------------------------------------------------------
// Tabs, sliders, segmented controls

function selectTab(which: 'url' | 'file'): void {
  el.tabUrl.setAttribute('aria-selected', String(which === 'url'));
  el.tabFile.setAttribute('aria-selected', String(which === 'file'));
  el.paneUrl.hidden = which !== 'url';
  el.paneFile.hidden = which !== 'file';
}

function bindSliders(): void {
  for (const input of document.querySelectorAll<HTMLInputElement>('.slider input')) {
    const output = input.parentElement!.querySelector('output')!;
    const show = () => {
      const v = Number(input.value);
      output.textContent =
        input.id === 'temperature' && v === 0 ? 'greedy'
        : input.id === 'top-k' && v === 0 ? 'off'
        : input.id === 'repeat-penalty' && v === 1 ? 'off'
        : String(v);
      input.style.setProperty('--fill', `${((v - Number(input.min)) / (Number(input.max) - Number(input.min))) * 100}%`);
    };
    input.addEventListener('input', show);
    show();
  }
}

function bindSegmented(group: HTMLElement, onChange: (value: string) => void): void {
  group.addEventListener('click', (event) => {
    const button = (event.target as Element).closest<HTMLButtonElement>('button[data-value]');
    if (!button || button.disabled) return;
    for (const b of group.querySelectorAll('button')) b.setAttribute('aria-checked', String(b === button));
    onChange(button.dataset.value!);
  });
}

function checkSegment(group: HTMLElement, value: string): void {
  for (const b of group.querySelectorAll<HTMLButtonElement>('button')) b.setAttribute('aria-checked', String(b.dataset.value === value));
}

// ---------------------------------------------------------------------------------------------
// Devices and the split

async function renderAdapters(): Promise<void> {
  state.adapters = await listAdapters();
  renderEnvironment(state.adapters.length);
  if (state.adapters.length === 0) {
    el.adapters.replaceChildren(h('li', { class: 'adapter missing' }, 'No WebGPU adapter: this browser cannot run the model.'));
    return;
  }
  if (state.chosenAdapters.size === 0) state.chosenAdapters.add(state.adapters[0]!.kind);
  el.adapters.replaceChildren(
    ...state.adapters.map((a) => {
      const kinds = [a.kind, ...a.alsoFor].map((k) => h('span', { class: 'kind' }, k));
      const feature = (on: boolean, name: string) => h('span', { class: on ? 'feature on' : 'feature' }, name);
      const item = h(
        'li',
        { class: 'adapter', 'data-kind': a.kind },
        h(
          'label',
          {},
          h('input', { type: 'checkbox', value: a.kind, checked: state.chosenAdapters.has(a.kind) }),
          h(
            'div',
            {},
            h('div', { class: 'adapter-name' }, a.name, a.isFallback ? h('span', { class: 'tag' }, 'software') : null),
            h('div', { class: 'kinds' }, ...kinds),
            h(
              'div',
              { class: 'limits' },
              `binding ${formatBytes(a.limits.maxStorageBufferBindingSize)} · ${a.limits.maxComputeInvocationsPerWorkgroup} invocations · ${a.limits.maxStorageBuffersPerShaderStage} storage buffers`,
            ),
            h('div', { class: 'features' }, feature(a.features.shaderF16, 'shader-f16'), feature(a.features.subgroups, 'subgroups'), feature(a.features.timestampQuery, 'timestamps')),
          ),
        ),
      );
      item.querySelector('input')!.addEventListener('change', (event) => {
        const input = event.target as HTMLInputElement;
        if (input.checked) state.chosenAdapters.add(a.kind);
        else if (state.chosenAdapters.size > 1) state.chosenAdapters.delete(a.kind);
        else input.checked = true; // at least one adapter
        renderSplitHint();
      });
      return item;
    }),
  );
  renderSplitHint();
}

/** Shard rank → adapter, round-robin over the chosen adapters. */
function shardAdapters(count: number): AdapterEntry[] {
  const chosen = state.adapters.filter((a) => state.chosenAdapters.has(a.kind));
  const pool = chosen.length > 0 ? chosen : state.adapters.slice(0, 1);
  return Array.from({ length: count }, (_, rank) => pool[rank % pool.length]!).filter(Boolean);
}

function splitShape(): { tp: number; pp: number } {
  const n = state.shards;
  if (n === 1) return { tp: 1, pp: 1 };
  if (state.split === 'pipeline') return { tp: 1, pp: n };
  if (state.split === 'both' && n >= 4) return { tp: n / 2, pp: 2 };
  return { tp: n, pp: 1 };
}

function renderSplitHint(): void {
  if (state.split === 'both' && state.shards < 4) {
    state.split = 'tensor';
    checkSegment(el.splitMode, 'tensor');
  }
  for (const b of el.splitMode.querySelectorAll<HTMLButtonElement>('button')) {
    b.disabled = state.shards === 1 || (b.dataset.value === 'both' && state.shards < 4);
  }

  const { tp, pp } = splitShape();
  const adapters = shardAdapters(state.shards);
  const distinct = new Set(adapters.map((a) => a.kind)).size;
  const where = distinct === 1 ? (adapters[0]?.name ?? 'the default adapter') : `${distinct} adapters`;
  const text =
    state.shards === 1 ? `One device on ${where}: no workers, no copies.`
    : `${state.shards} workers, one device each, on ${where}${distinct === 1 ? ' (several devices on one adapter stand in for several GPUs)' : ''}: ` +
      (pp === 1 ? `every layer split ${tp} ways by heads and FFN columns.` : tp === 1 ? `${pp} stages of consecutive layers.` : `${pp} stages, each split ${tp} ways.`);
  const loaded = state.loaded?.layout;
  const pending = loaded && (loaded.tp !== tp || loaded.pp !== pp) ? ' Load the model again to apply.' : '';
  el.splitHint.textContent = text + pending;
  if (!state.loaded) renderPreview(tp, pp, adapters);
}

/** Before a model is loaded: the chosen split, drawn for an example model. */
function renderPreview(tp: number, pp: number, adapters: AdapterEntry[]): void {
  const layout = previewLayout(exampleShape, tp, pp);
  diagram.render(exampleShape, layout, adapters.map((a) => a.name));
  el.story.replaceChildren(
    ...explainSplit(exampleShape, layout),
    h('p', { class: 'muted' }, 'This is a preview on an example shape; load a model to see its real split.'),
  );
  el.explainNote.textContent = `preview · ${tp * pp === 1 ? 'one device' : `tp ${tp} × pp ${pp}`}`;
}

// ---------------------------------------------------------------------------------------------
// Load progress: phase, bar, MB/s, time left

class LoadMeter {
  private samples: Array<[number, number]> = [];
  private started = performance.now();

  constructor() {
    el.progress.hidden = false;
    el.progress.classList.remove('done');
  }

  phase(name: string): void {
    el.phase.textContent = name;
    this.samples = [];
    this.started = performance.now();
    this.update(0, 0);
  }

  update(done: number, total: number): void {
    const now = performance.now();
    this.samples.push([now, done]);
    while (this.samples.length > 2 && now - this.samples[0]![0] > 1500) this.samples.shift();
    const [t0, b0] = this.samples[0]!;
    const rate = now - t0 > 50 ? ((done - b0) / (now - t0)) * 1000 : done / Math.max(1, now - this.started) * 1000;
    const fraction = total > 0 ? done / total : 0;
    el.bar.style.width = `${(fraction * 100).toFixed(1)}%`;
    el.rate.textContent = done > 0 ? formatRate(rate) : '';
    el.bytes.textContent = total > 0 ? `${formatBytes(done)} of ${formatBytes(total)}` : '';
    el.eta.textContent = rate > 0 && total > done ? `${formatDuration(((total - done) / rate) * 1000)} left` : '';
  }

  finish(summary: string): void {
    el.progress.classList.add('done');
    el.phase.textContent = summary;
    el.bar.style.width = '100%';
    el.rate.textContent = '';
    el.eta.textContent = '';
  }

  hide(): void {
    el.progress.hidden = true;
  }
}

// ---------------------------------------------------------------------------------------------
// Errors, in words a person can act on

const errorTitles: Record<string, string> = {
  ModelFormatError: 'This file is not a model webshard can read',
  UnsupportedModelError: 'This model is not supported yet',
  ModelSourceError: 'Could not read the model',
  ShardPlanError: 'The model does not fit this split',
  ShardError: 'A shard failed',
  ShardTimeoutError: 'A shard stopped answering',
  GpuUnavailableError: 'No usable WebGPU device',
  ContextOverflowError: 'The prompt does not fit the context',
  InvalidOptionError: 'An option is out of range',
  CacheIntegrityError: 'The cached copy failed its integrity check',
  OperationError: 'The GPU refused the work',
};

function showError(error: unknown): void {
  const e = error instanceof Error ? error : new Error(String(error));
  const details = e as Error & { problem?: string; fix?: string; suggestion?: string; file?: string };
  el.errorTitle.textContent = errorTitles[e.name] ?? 'Something went wrong';
  // Typed errors carry the problem and the fix separately; show them as two lines.
  const problem = details.problem ? `${details.file ? `${details.file}: ` : ''}${details.problem}.` : e.message;
  el.errorMessage.textContent = problem;
  el.errorFix.textContent = details.fix ?? details.suggestion ?? '';
  el.errorFix.hidden = !el.errorFix.textContent;
  el.error.dataset.errorName = e.name;
  el.error.hidden = false;
  console.error(e);
}

function clearError(): void {
  el.error.hidden = true;
}

/** Advice from the engine while loading (e.g. several shards share one adapter). */
function showNotice(message: string): void {
  el.notice.textContent = message;
  el.notice.hidden = false;
}

// ---------------------------------------------------------------------------------------------
// Loading a model

/** The file's name, or the folder's for a URL ending in `/`. */
function fileNameOf(url: string): string {
  const last = new URL(url, location.href).pathname.split('/').filter(Boolean).pop() || url;
  try {
    return decodeURIComponent(last);
  } catch {
    return last;
  }
}

async function cachedCopy(url: string, meter: LoadMeter): Promise<File> {
  const expectedSha256 = parseSha256(el.expectedSha.value);
  const cache = await ModelCache.open();
  let entry: CachedModel | undefined = await cache.find(url);
  if (entry) {
    meter.phase('Verifying the cached copy (SHA-256)');
    try {
      await cache.verify(entry, { expectedSha256, onProgress: (d, t) => meter.update(d, t) });
    } catch (error) {
      if (!(error instanceof CacheIntegrityError)) throw error;
      // Damaged, or not the file the user expects (an older version?): download it again; the
      // fresh download is checked against the expected digest in turn.
      showNotice(`The cached copy failed its check (${error.message}); downloading it again.`);
      await cache.remove(entry.key);
      entry = undefined;
    }
  }
  if (!entry) {
    meter.phase('Downloading into the browser cache');
    await navigator.storage.persist?.().catch(() => false);
    entry = await cache.store(url, { expectedSha256, onProgress: (d, t) => meter.update(d, t) });
  }
  void renderCache();
  // Same bytes (a Blob part is a reference, not a copy), under the model's own name.
  return new File([entry.file], fileNameOf(url));
}

async function load(pick: ModelPick): Promise<void> {
  if (state.busy) return;
  setBusy(true);
  clearError();
  el.notice.hidden = true;
  const meter = new LoadMeter();
  const started = performance.now();
  try {
    let source: string | File | File[];
    let sourceName: string;
    let isFolder: boolean;
    let local: LocalModel | undefined;
    if (pick.kind === 'url') {
      const url = new URL(pick.url.trim(), location.href).href;
      sourceName = fileNameOf(url);
      isFolder = url.endsWith('/');
      const cache = el.useCache.checked && ModelCache.supported();
      if (cache && isFolder) showNotice('The browser cache keeps single GGUF files: this folder is read from its URL (by ranges) on every load.');
      source = cache && !isFolder ? await cachedCopy(url, meter) : url;
    } else {
      local = pick.local;
      sourceName = local.name;
      isFolder = local.isFolder;
      if (local.skipped.length > 0) {
        showNotice(`Read the files at the top of ${local.name}/ only; left out ${local.skipped.join(', ')} (a Hugging Face model's files sit side by side).`);
      }
      source = local.isFolder ? local.files : local.files[0]!;
    }

    const { tp, pp } = splitShape();
    const adapters = shardAdapters(tp * pp);
    const budgetMB = Number(el.memoryBudget.value);
    const options: LoadOptions = {
      contextLength: Number(el.contextLength.value),
      gpuMemoryBytes: el.memoryBudget.value !== '' && budgetMB > 0 ? budgetMB * 1e6 : undefined,
      onProgress: ({ bytesLoaded, bytesTotal }) => meter.update(bytesLoaded, bytesTotal),
      onWarning: showNotice,
      // Prompt lookup costs no second model; each generation turns it on or off (the checkbox).
      speculative: { lookupNgram: 3, draftMax: 8 },
    };
    if (tp * pp > 1) {
      options.tp = tp;
      options.pp = pp;
      options.devices = adapters.map((a) => gpuOptionsFor(a.kind));
    } else {
      options.gpu = gpuOptionsFor(adapters[0]?.kind ?? 'high-performance');
    }
    meter.phase(tp * pp > 1 ? `Loading ${tp * pp} shards` : 'Reading weights into the GPU');
    const model = await loadModel(source, options);

    const previous = state.loaded;
    state.loaded = {
      model,
      shape: modelShape(model, sourceName),
      layout: splitLayout(model),
      sourceName,
      isFolder,
      fileCount: local?.isFolder ? local.files.length : undefined,
      sizeBytes: local ? totalSize(local) : model.file.source.size,
    };
    if (previous) await unload(previous);
    meter.finish(`Loaded in ${formatDuration(performance.now() - started)}`);
    showModel(state.loaded);
  } catch (error) {
    meter.hide();
    showError(error);
  } finally {
    setBusy(false);
    renderSplitHint();
  }
}

async function unload(loaded: Loaded): Promise<void> {
  await loaded.model.dispose();
}

function deviceNames(loaded: Loaded): string[] {
  const reports = loaded.model.shards?.reports;
  const tidy = (name: string) => name.replaceAll(' | ', ' · ');
  if (reports) return loaded.layout.shards.map((s) => tidy(reports.find((r) => r.rank === s.rank)?.adapter || 'WebGPU device'));
  return [tidy(loaded.model.gpu?.adapterDescription ?? shardAdapters(1)[0]?.name ?? 'WebGPU device')];
}

function showModel(loaded: Loaded): void {
  const { model, shape, layout } = loaded;
  const row = (term: string, value: string) => [h('dt', {}, term), h('dd', {}, value)];
  el.modelInfo.replaceChildren(
    ...row('model', shape.name),
    ...(loaded.isFolder ?
      row('folder', `${loaded.sourceName}/ · ${loaded.fileCount !== undefined ? `${loaded.fileCount} files · ${formatBytes(loaded.sizeBytes)}` : `${formatBytes(loaded.sizeBytes)} of weights`}`)
    : row('file', `${loaded.sourceName} · ${formatBytes(loaded.sizeBytes)}`)),
    ...row('shape', `${formatCount(shape.parameters)} params · ${shape.nLayers} layers · ${shape.nHeads} heads (${shape.nKvHeads} KV) · dim ${shape.dim}`),
    ...row('context', `${model.contextLength} tokens · vocabulary ${shape.vocabSize}`),
    ...row('devices', layout.shards.length === 1 ? '1 (no sharding)' : `${layout.shards.length} · tp ${layout.tp} × pp ${layout.pp}`),
  );
  el.modelInfo.hidden = false;
  el.modelInfo.dataset.model = shape.name;
  el.modelInfo.dataset.shards = String(layout.shards.length);

  const names = deviceNames(loaded);
  devicePanel.setup(layout, names, model.stats());
  diagram.render(shape, layout, names);
  el.story.replaceChildren(...explainSplit(shape, layout));
  el.explainNote.textContent = layout.shards.length === 1 ? 'one device' : `tp ${layout.tp} × pp ${layout.pp}`;
  const requested = state.shards;
  el.telemetryNote.textContent =
    requested > 1 && layout.shards.length === 1 ?
      `asked for ${requested} shards; this build of webshard ran the model on one device`
    : 'per forward step, live';
  el.generate.disabled = false;
  el.transcript.dataset.state = el.output.textContent ? el.transcript.dataset.state : 'ready';
  // The chat view is offered (and on) when the model carries a chat template.
  el.chatMode.hidden = !model.hasChatTemplate;
  el.chatToggle.checked = model.hasChatTemplate;
  newChat();
}

// ---------------------------------------------------------------------------------------------
// The chat view: the prompt box sends a user message; the transcript shows the conversation.

const chatOn = (): boolean => !el.chatMode.hidden && el.chatToggle.checked;

function chatTranscript(messages: readonly ChatMessage[]): string {
  return messages.map((m) => `${m.role === 'user' ? 'You' : m.role === 'assistant' ? 'Assistant' : m.role === 'system' ? 'System' : m.role}: ${m.content}\n\n`).join('');
}

function newChat(): void {
  state.chat = [];
  el.newChat.hidden = !chatOn();
  el.systemPrompt.hidden = !chatOn();
  el.generate.textContent = chatOn() ? 'Send' : 'Generate';
  if (chatOn()) {
    el.prompt.placeholder = 'Write a message…';
    el.outputPrompt.textContent = '';
    el.output.textContent = '';
  }
}

// ---------------------------------------------------------------------------------------------
// Generating

function samplingOptions(): GenerateOptions {
  const number = (input: HTMLInputElement, fallback: number) => (input.value === '' || !Number.isFinite(Number(input.value)) ? fallback : Number(input.value));
  return {
    temperature: number(el.temperature, 0.8),
    topK: number(el.topK, 40),
    topP: number(el.topP, 0.95),
    minP: number(el.minP, 0.05),
    repeatPenalty: number(el.repeatPenalty, 1),
    seed: Math.trunc(number(el.seed, 1)),
    maxTokens: Math.max(1, Math.trunc(number(el.maxTokens, 128))),
  };
}

const finishLabels: Record<FinishReason, string> = {
  length: 'token limit',
  stop: 'stop string',
  eos: 'end of text',
  context: 'context full',
  abort: 'stop button',
};

function stopGeneration(): void {
  state.generation?.abort();
}

async function generate(): Promise<void> {
  const loaded = state.loaded;
  if (!loaded || state.busy) return;
  const { model } = loaded;
  const prompt = el.prompt.value;
  const options = samplingOptions();
  const controller = new AbortController();
  state.generation = controller;
  setBusy(true, 'generating');
  el.generate.hidden = true;
  el.stop.hidden = false;
  clearError();

  // A conversation starts with the system message, if one is written; it stays in the history.
  const system = el.systemPrompt.value.trim();
  const opening: ChatMessage[] = state.chat.length === 0 && system ? [{ role: 'system', content: system }] : [];
  const chat: ChatMessage[] | undefined = chatOn() ? [...opening, ...state.chat, { role: 'user', content: prompt }] : undefined;
  el.outputPrompt.textContent = chat ? `${chatTranscript(chat)}Assistant: ` : prompt;
  el.output.textContent = '';
  el.transcript.dataset.state = 'generating';
  for (const m of [el.mDecode, el.mPrefill, el.mTtft, el.mTokens, el.mFinish, el.mAccepted]) m.textContent = '—';

  const started = performance.now();
  let firstAt = 0;
  let count = 0;
  let promptTokens = 0;
  const result: GenerationResult = {};
  try {
    const generation = { ...options, speculative: el.speculative.checked, signal: controller.signal };
    promptTokens = chat ? model.chatPromptIds(chat).length : model.tokenize(prompt).length;
    const stream = chat ? model.chat(chat, generation, result) : model.generate(prompt, generation, result);
    for await (const token of stream) {
      const now = performance.now();
      if (count === 0) {
        firstAt = now;
        el.mTtft.textContent = formatDuration(firstAt - started);
        el.mPrefill.textContent = formatTokensPerSecond(promptTokens / ((firstAt - started) / 1000));
      }
      count++;
      if (token.text) {
        const follow = el.transcript.scrollHeight - el.transcript.scrollTop - el.transcript.clientHeight < 24;
        el.output.append(token.text);
        if (follow) el.transcript.scrollTop = el.transcript.scrollHeight;
      }
      el.mTokens.textContent = String(count);
      const drafts = result.speculative;
      if (drafts) el.mAccepted.textContent = `${drafts.accepted}/${drafts.drafted} · ${(count / drafts.targetSteps).toFixed(2)} tok/step`;
      if (count > 1) el.mDecode.textContent = formatTokensPerSecond((count - 1) / ((now - firstAt) / 1000));
      // The first token's step is the prompt's prefill: counted, not charted.
      const samples = devicePanel.update(model.stats(), count > 1);
      if (samples.length > 0) diagram.pulse(Math.max(...samples.map((s) => s.stepMs)), loaded.shape.nLayers);
    }
    el.mFinish.textContent = result.finish ? finishLabels[result.finish] : '—';
    if (chat) {
      // The answer (even a stopped one) joins the conversation; the box is ready for the next message.
      state.chat = [...chat, { role: 'assistant', content: el.output.textContent ?? '' }];
      el.prompt.value = '';
    }
  } catch (error) {
    showError(error);
    el.mFinish.textContent = 'error';
  } finally {
    devicePanel.update(model.stats());
    el.transcript.dataset.state = 'done';
    state.generation = undefined;
    el.stop.hidden = true;
    el.generate.hidden = false;
    setBusy(false);
  }
}

// ---------------------------------------------------------------------------------------------
// The OPFS cache panel

async function renderCache(): Promise<void> {
  if (!ModelCache.supported()) return;
  const cache = await ModelCache.open();
  const entries = await cache.list();
  el.cachePanel.hidden = entries.length === 0;
  const estimate = await navigator.storage.estimate?.().catch(() => undefined);
  el.cacheUsage.textContent = estimate?.usage !== undefined ? `· ${formatBytes(estimate.usage)} used` : '';
  el.cacheList.replaceChildren(
    ...entries.map((entry) => {
      const use = h('button', { type: 'button', class: 'link', title: entry.manifest.url }, fileNameOf(entry.manifest.url));
      const remove = h('button', { type: 'button', class: 'ghost small', 'aria-label': `Remove ${fileNameOf(entry.manifest.url)} from the cache` }, 'remove');
      use.addEventListener('click', () => {
        selectTab('url');
        el.url.value = entry.manifest.url;
        el.useCache.checked = true;
        el.shaField.hidden = false;
      });
      remove.addEventListener('click', async () => {
        await cache.remove(entry.key);
        void renderCache();
      });
      return h('li', {}, use, h('span', { class: 'muted', title: `sha256 ${entry.manifest.sha256}` }, `${formatBytes(entry.manifest.size)} · sha256 ${entry.manifest.sha256.slice(0, 10)}…`), remove);
    }),
  );
}

// ---------------------------------------------------------------------------------------------
// Wiring

function wire(): void {
  el.tabUrl.addEventListener('click', () => selectTab('url'));
  el.tabFile.addEventListener('click', () => selectTab('file'));
  el.useCache.addEventListener('change', () => (el.shaField.hidden = !el.useCache.checked));
  el.loadUrl.addEventListener('click', () => {
    if (!el.url.value.trim()) {
      showError(new Error('Enter the address of a .gguf file, or of a Hugging Face folder ending in / (e.g. …/resolve/main/), first.'));
      return;
    }
    void load({ kind: 'url', url: el.url.value });
  });
  el.url.addEventListener('keydown', (event) => {
    if (event.key === 'Enter') el.loadUrl.click();
  });
  el.file.addEventListener('change', () => {
    const file = el.file.files?.[0];
    if (file) void load({ kind: 'local', local: pickedFile(file) });
    el.file.value = ''; // the same file can be chosen again
  });
  el.folder.addEventListener('change', () => {
    try {
      if (el.folder.files) void load({ kind: 'local', local: pickedFolder(el.folder.files) });
    } catch (error) {
      showError(error);
    }
    el.folder.value = ''; // the same folder can be picked again
  });
  el.errorDismiss.addEventListener('click', clearError);

  // Drag and drop anywhere on the page.
  let depth = 0;
  const hasFiles = (event: DragEvent) => event.dataTransfer?.types.includes('Files') ?? false;
  window.addEventListener('dragenter', (event) => {
    if (!hasFiles(event)) return;
    depth++;
    el.dropOverlay.hidden = false;
  });
  window.addEventListener('dragleave', () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) el.dropOverlay.hidden = true;
  });
  window.addEventListener('dragover', (event) => {
    if (hasFiles(event)) event.preventDefault();
  });
  window.addEventListener('drop', (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    depth = 0;
    el.dropOverlay.hidden = true;
    if (!event.dataTransfer || state.busy) return;
    selectTab('file');
    const items = droppedItems(event.dataTransfer);
    void droppedModel(items).then((local) => load({ kind: 'local', local }), showError);
  });

  bindSliders();
  bindSegmented(el.shardCount, (value) => {
    state.shards = Number(value);
    renderSplitHint();
  });
  bindSegmented(el.splitMode, (value) => {
    state.split = value as SplitMode;
    renderSplitHint();
  });

  el.generate.addEventListener('click', () => void generate());
  el.stop.addEventListener('click', stopGeneration);
  el.chatToggle.addEventListener('change', newChat);
  el.newChat.addEventListener('click', newChat);
  el.prompt.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      if (!el.generate.disabled && !el.generate.hidden) void generate();
    }
  });
  window.addEventListener('pagehide', () => {
    if (state.loaded) void unload(state.loaded);
  });
}

function applyQuery(): void {
  // ?model=<url>&prompt=<text>&shards=<n>&split=<tensor|pipeline|both> prefill the form (nothing loads by itself).
  const query = new URLSearchParams(location.search);
  const model = query.get('model');
  if (model) el.url.value = model;
  const prompt = query.get('prompt');
  if (prompt !== null) el.prompt.value = prompt;
  const shards = Number(query.get('shards'));
  if ([1, 2, 4].includes(shards)) {
    state.shards = shards;
    checkSegment(el.shardCount, String(shards));
  }
  const split = query.get('split');
  if (split === 'tensor' || split === 'pipeline' || split === 'both') {
    state.split = split;
    checkSegment(el.splitMode, split);
  }
}

renderEnvironment();
wire();
applyQuery();
renderSplitHint();
devicePanel.clear('Charts appear when a model is loaded: memory, step time, all-reduce time and the share of each step spent waiting for the other shards.');
void renderAdapters().catch(showError);
void renderCache().catch(() => undefined);
