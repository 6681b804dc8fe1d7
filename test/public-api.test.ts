// The front ends (the CLI, the flag mapper and the server) use webshard as any library user
// would: through the public API (src/index.ts) and nothing else, so what they need is part of it.
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const src = resolve(dirname(fileURLToPath(import.meta.url)), '../src');

/** Front-end files, and the modules each may import besides the public API: one another, and npm packages. */
const frontEnds = [join(src, 'cli.ts'), join(src, 'flags.ts'), ...readdirSync(join(src, 'server')).filter((f) => f.endsWith('.ts')).map((f) => join(src, 'server', f))];
const publicApi = join(src, 'index.ts');

/** Every module specifier a file imports or re-exports (static and dynamic). */
function importedSpecifiers(code: string): string[] {
  const found: string[] = [];
  for (const match of code.matchAll(/(?:^|[\s;])(?:import|export)\s[^'"]*?\sfrom\s+['"]([^'"]+)['"]/g)) found.push(match[1]!);
  for (const match of code.matchAll(/(?:^|[\s;])import\s+['"]([^'"]+)['"]/g)) found.push(match[1]!);
  for (const match of code.matchAll(/\bimport\(\s*['"]([^'"]+)['"]\s*\)/g)) found.push(match[1]!);
  return found;
}

/** The imports of a front-end file (`code`: its text) that reach into webshard past its public API. */
function forbiddenImports(file: string, code = readFileSync(file, 'utf8')): string[] {
  return importedSpecifiers(code).filter((specifier) => {
    if (!specifier.startsWith('.')) return false; // an npm package or a runtime built-in
    const target = resolve(dirname(file), specifier);
    return target !== publicApi && !frontEnds.includes(target);
  });
}

describe('front ends use only the public API', () => {
  it('finds every kind of import in the scan', () => {
    const code = `import { a } from './a.ts';\nimport type { B } from "../b.ts";\nexport { c } from './c.ts';\nimport './d.ts';\nconst e = await import('./e.ts');\nimport {\n  f,\n} from './f.ts';`;
    expect(importedSpecifiers(code)).toEqual(['./a.ts', '../b.ts', './c.ts', './f.ts', './d.ts', './e.ts']);
  });

  it('flags a front end that imports an engine module', () => {
    const code = `import { Scheduler } from '../engine/scheduler.ts';\nimport { loadModel } from '../index.ts';\nimport { log } from './errors.ts';`;
    expect(forbiddenImports(join(src, 'server', 'example.ts'), code)).toEqual(['../engine/scheduler.ts']);
  });

  it.each(frontEnds.map((file) => [relative(src, file), file]))('%s imports only src/index.ts and other front-end files', (_name, file) => {
    expect(forbiddenImports(file)).toEqual([]);
  });
});
