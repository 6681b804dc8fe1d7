// The npm package as a user gets it: `npm pack` (its prepack builds dist/), installed into a fresh
// project, then the README's own examples — extracted from README.md and run as written — in
// Node, in Deno (`npm:webshard`), and as a vite-built page in Chromium. Plus the types.
//
// Offline by construction: the fresh project gets a lockfile naming the exact versions (and
// integrity hashes) the repository's own lockfile installed, and `npm ci --offline` takes them
// from npm's cache, where the repository's `npm ci` put them.
import { execFile } from 'node:child_process';
import { copyFileSync, cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { build } from 'vite';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { modelPath, reference, referenceModelPath } from '../helpers/models.ts';
import { launchChromium } from './browser.ts';
import { projectRoot } from './demo-build.ts';
import { serveStatic } from './static-server.ts';

const run = promisify(execFile);
const referenceCase = reference().generation_cases.find((c) => c.id === 'stories260K-f32/once-upon-a-time')!;
const expected = referenceCase.prompt + referenceCase.generated_text;
const bin = (name: string) => resolve(projectRoot, 'node_modules/.bin', name);
const env = { ...process.env, XDG_RUNTIME_DIR: '/tmp', DENO_NO_UPDATE_CHECK: '1', NO_COLOR: '1' };

let work: string;
let consumer: string;
let packed: { filename: string; files: string[] };

/** README blocks marked `<!-- example: dir/file -->`, keyed by that path. */
function readmeExamples(): Map<string, string> {
  const readme = readFileSync(resolve(projectRoot, 'README.md'), 'utf8');
  const examples = new Map<string, string>();
  for (const match of readme.matchAll(/<!-- example: (\S+) -->\s*```\w*\n([\s\S]*?)```/g)) examples.set(match[1]!, match[2]!);
  return examples;
}

/** A lockfile installing the packed webshard and its dependencies as the repository's lockfile has them (hoisted). */
function lockfileFor(name: string, webshard: { tarball: string; integrity: string; version: string; dependencies: Record<string, string> }): object {
  const { tarball, dependencies } = webshard;
  const repoLock = JSON.parse(readFileSync(resolve(projectRoot, 'package-lock.json'), 'utf8')) as {
    packages: Record<string, { version: string; integrity?: string; dependencies?: Record<string, string>; license?: string }>;
  };
  const packages: Record<string, object> = {
    '': { name, version: '1.0.0', dependencies: { webshard: `file:${tarball}` } },
    'node_modules/webshard': { version: webshard.version, resolved: `file:${tarball}`, integrity: webshard.integrity, dependencies },
  };
  const queue = Object.keys(dependencies);
  while (queue.length > 0) {
    const dep = queue.shift()!;
    const key = `node_modules/${dep}`;
    if (packages[key]) continue;
    const entry = repoLock.packages[key];
    if (!entry) throw new Error(`${dep} is not in the repository's package-lock.json (run npm install there)`);
    const { version, integrity, dependencies: more, license } = entry;
    // With the tarball's address and integrity, npm takes it from its cache without asking the registry.
    const resolved = `https://registry.npmjs.org/${dep}/-/${dep.split('/').pop()}-${version}.tgz`;
    packages[key] = { version, resolved, integrity, license, ...(more ? { dependencies: more } : {}) };
    queue.push(...Object.keys(more ?? {}));
  }
  return { name, version: '1.0.0', lockfileVersion: 3, requires: true, packages };
}

function filesUnder(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? filesUnder(path) : [path];
  });
}

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'webshard-package-'));
  // Exactly as a user packs, with the repository's own npm settings: prepack cleans dist/, then
  // tsc -p tsconfig.build.json.
  const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', work], { cwd: projectRoot, env, maxBuffer: 1 << 26 });
  // The prepack script's banner may come first; the JSON report starts at a line that opens with '['.
  const [info] = JSON.parse(stdout.slice(stdout.search(/^\[/m))) as Array<{ filename: string; integrity: string; files: Array<{ path: string }> }>;
  packed = { filename: info!.filename, files: info!.files.map((f) => f.path) };

  consumer = join(work, 'consumer');
  mkdirSync(consumer);
  const manifest = JSON.parse(readFileSync(resolve(projectRoot, 'package.json'), 'utf8')) as { version: string; dependencies: Record<string, string> };
  const tarball = `../${info!.filename}`;
  writeFileSync(join(consumer, 'package.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', private: true, type: 'module', dependencies: { webshard: `file:${tarball}` } }, null, 2));
  writeFileSync(join(consumer, 'package-lock.json'), JSON.stringify(lockfileFor('consumer', { tarball, integrity: info!.integrity, ...manifest }), null, 2));
  // Dependencies' install scripts are not needed on Linux (and npm 11 skips them anyway).
  await run('npm', ['ci', '--offline', '--ignore-scripts', '--no-audit', '--no-fund', '--loglevel=error'], { cwd: consumer, env });

  for (const [path, code] of readmeExamples()) {
    mkdirSync(join(consumer, dirname(path)), { recursive: true });
    writeFileSync(join(consumer, path), code);
  }
  for (const dir of ['node', 'deno']) copyFileSync(referenceModelPath('stories260K-f32'), join(consumer, dir, 'stories260K.gguf'));
  cpSync(modelPath('hf/stories260K'), join(consumer, 'node', 'stories260K-hf'), { recursive: true }); // a temporary copy beside the example
  // Deno, offline: `npm:webshard` resolves from the node_modules folder beside its deno.json.
  writeFileSync(join(consumer, 'deno', 'deno.json'), JSON.stringify({ nodeModulesDir: 'manual' }));
  symlinkSync('../node_modules', join(consumer, 'deno', 'node_modules'));
}, 300_000);

afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('npm package', { timeout: 300_000 }, () => {
  it('packs the built library, its types and docs, and no sources or tests', () => {
    expect(packed.files).toEqual(expect.arrayContaining(['package.json', 'README.md', 'docs/API.md', 'dist/index.js', 'dist/index.d.ts', 'dist/sharding/worker.js']));
    expect(packed.files.filter((f) => !f.startsWith('dist/') && !['package.json', 'README.md', 'docs/API.md'].includes(f))).toEqual([]);
    expect(packed.files.filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts'))).toEqual([]);
    expect(packed.files).not.toContain('dist/cli.js');
  });

  it('publishes the same files: `npm publish --dry-run` builds dist/ too', async () => {
    const { stdout } = await run('npm', ['publish', '--dry-run', '--json'], { cwd: projectRoot, env, maxBuffer: 1 << 26 });
    // npm 11 reports { "webshard": { files, ... } }.
    const report = JSON.parse(stdout.slice(stdout.search(/^\{/m))) as Record<string, { files: Array<{ path: string }> }>;
    const files = report.webshard!.files.map((f) => f.path);
    expect(files.sort()).toEqual([...packed.files].sort());
  });

  it('README examples exist for every runtime', () => {
    expect([...readmeExamples().keys()].sort()).toEqual(['browser/index.html', 'browser/main.ts', 'deno/main.ts', 'node/hf-folder.mjs', 'node/main.mjs', 'node/sharded.mjs']);
  });

  it('runs the README Node example: llama.cpp\'s greedy text', async () => {
    const { stdout } = await run('node', ['main.mjs'], { cwd: join(consumer, 'node'), env });
    expect(stdout).toBe(referenceCase.generated_text);
  });

  it('runs the README sharded example from the package (worker threads from dist/)', async () => {
    const { stdout } = await run('node', ['sharded.mjs'], { cwd: join(consumer, 'node'), env });
    expect(stdout).toContain(`\n${referenceCase.generated_text}\n`);
    expect(stdout).toMatch(/shard 0: \d+ steps/);
    expect(stdout).toMatch(/shard 1: \d+ steps/);
  });

  it('runs the README Hugging Face folder example from the package (tp = 2, each worker opening the folder)', async () => {
    const { stdout } = await run('node', ['hf-folder.mjs'], { cwd: join(consumer, 'node'), env });
    expect(stdout).toBe(`${referenceCase.generated_text}\n`);
  });

  it('runs the README Deno example through npm:webshard', async () => {
    const { stdout, stderr } = await run(bin('deno'), ['run', '--allow-read', '--allow-env', '--allow-ffi', 'main.ts'], { cwd: join(consumer, 'deno'), env });
    expect(stdout).toBe(`${referenceCase.generated_text}\n`);
    expect(stderr).toMatch(/tokens\/s/);
  });

  it('type-checks a consumer under nodenext and bundler resolution, and catches a wrong option', async () => {
    writeFileSync(
      join(consumer, 'check.ts'),
      [
        "import { loadModel, ModelFormatError, ShardPlanError, type DeviceStats, type GenerateOptions, type Model } from 'webshard';",
        'const options: GenerateOptions = { maxTokens: 4, temperature: 0, stop: ["."] };',
        "const model: Model = await loadModel('m.gguf', { contextLength: 64, tp: 2, onProgress: (p) => p.bytesLoaded / p.bytesTotal });",
        'for await (const { id, text } of model.generate("hi", options)) console.log(id, text.length);',
        'const devices: DeviceStats[] = model.stats().devices;',
        'const e: unknown = devices;',
        'if (e instanceof ModelFormatError) console.log(e.fix);',
        'if (e instanceof ShardPlanError) console.log(e.suggestion);',
        '// @ts-expect-error contextLength is a number',
        "await loadModel('m.gguf', { contextLength: 'long' });",
      ].join('\n'),
    );
    const configs = {
      'tsconfig.node.json': { module: 'NodeNext', moduleResolution: 'nodenext', lib: ['ES2023', 'DOM'] },
      'tsconfig.bundler.json': { module: 'ESNext', moduleResolution: 'bundler', lib: ['ES2023', 'DOM'], types: [] },
    };
    for (const [file, options] of Object.entries(configs)) {
      writeFileSync(join(consumer, file), JSON.stringify({ compilerOptions: { target: 'ES2022', strict: true, noEmit: true, ...options }, files: ['check.ts'] }));
      const result = await run(bin('tsc'), ['-p', file], { cwd: consumer, env }).catch((e: { stdout: string }) => ({ stdout: `FAILED\n${e.stdout}` }));
      expect(result.stdout, file).toBe('');
    }
  });

  it('builds the README browser example with vite (without Dawn) and runs it in Chromium', async () => {
    const root = join(consumer, 'browser');
    const outDir = join(root, 'dist');
    await build({ root, configFile: false, logLevel: 'warn', build: { outDir, emptyOutDir: true, target: 'es2022' } });
    const output = filesUnder(outDir);
    for (const file of output) {
      expect(file, 'no TypeScript sources in the bundle').not.toMatch(/\.ts$/);
      expect(readFileSync(file, 'latin1'), `${file} must not contain Dawn`).not.toContain('dawn.node');
    }

    const server = await serveStatic({ '/': outDir, '/stories260K.gguf': referenceModelPath('stories260K-f32') });
    const chrome = await launchChromium();
    try {
      const page = await chrome.newPage();
      await page.goto(`${server.origin}/`);
      await page.waitForSelector('#out[data-done="true"]', { timeout: 240_000 }).catch((error: Error) => {
        throw new Error(`${error.message}\n${chrome.log.join('\n')}`);
      });
      expect(await page.textContent('#out')).toBe(expected);
    } finally {
      await chrome.close();
      await server.close();
    }
  });
});
