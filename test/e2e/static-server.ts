// A tiny static file server for browser tests: 127.0.0.1 only, cross-origin isolated (COOP/COEP,
// so SharedArrayBuffer works), HTTP Range requests (the library reads models piece by piece).
import { createReadStream, statSync, type Stats } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { extname, join, normalize, resolve, sep } from 'node:path';

const contentTypes: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.svg': 'image/svg+xml',
  '.wasm': 'application/wasm',
};

export interface StaticServer {
  /** e.g. `http://127.0.0.1:41234` (no trailing slash). */
  origin: string;
  /** Requests seen, newest last: method, path and Range header (tests check how a model was read). */
  requests: Array<{ method: string; path: string; range?: string }>;
  close(): Promise<void>;
}

/**
 * Serves each `mounts` entry's folder at its URL prefix (e.g. `{ '/': 'demo/dist', '/models/': modelsDir }`).
 * `rangeless` prefixes answer 200 with the whole file even when a Range is asked for.
 */
export async function serveStatic(mounts: Record<string, string>, options: { rangeless?: string[] } = {}): Promise<StaticServer> {
  const requests: StaticServer['requests'] = [];
  // Longest prefix first, so '/models/' wins over '/'.
  const table = Object.entries(mounts)
    .map(([prefix, dir]) => [prefix, resolve(dir)] as const)
    .sort((a, b) => b[0].length - a[0].length);

  const server: Server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const path = decodeURIComponent(url.pathname);
    requests.push({ method: req.method ?? 'GET', path, range: req.headers.range });
    res.setHeader('Cross-Origin-Opener-Policy', 'same-origin');
    res.setHeader('Cross-Origin-Embedder-Policy', 'require-corp');
    res.setHeader('Cross-Origin-Resource-Policy', 'same-origin');
    res.setHeader('Cache-Control', 'no-store');

    const mount = table.find(([prefix]) => path.startsWith(prefix));
    let file: string | undefined;
    let stats: Stats | undefined;
    if (mount) {
      const [prefix, dir] = mount;
      let candidate = normalize(join(dir, path.slice(prefix.length)));
      if (candidate === dir || candidate.startsWith(dir + sep)) {
        try {
          stats = statSync(candidate);
          if (stats.isDirectory()) {
            candidate = join(candidate, 'index.html');
            stats = statSync(candidate);
          }
          file = candidate;
        } catch {
          file = undefined;
        }
      }
    }
    if (!file || !stats) {
      res.writeHead(404, { 'Content-Type': 'text/plain' }).end(`not found: ${path}`);
      return;
    }

    const size = stats.size;
    res.setHeader('Content-Type', contentTypes[extname(file)] ?? 'application/octet-stream');
    res.setHeader('Accept-Ranges', 'bytes');
    const rangeless = options.rangeless?.some((prefix) => path.startsWith(prefix)) ?? false;
    const match = !rangeless && req.headers.range ? /^bytes=(\d*)-(\d*)$/.exec(req.headers.range) : null;
    if (match) {
      const first = match[1] ? Number(match[1]) : Math.max(0, size - Number(match[2]));
      const last = match[1] && match[2] ? Math.min(Number(match[2]), size - 1) : size - 1;
      if (first >= size || first > last) {
        res.writeHead(416, { 'Content-Range': `bytes */${size}` }).end();
        return;
      }
      res.writeHead(206, { 'Content-Range': `bytes ${first}-${last}/${size}`, 'Content-Length': last - first + 1 });
      if (req.method === 'HEAD') res.end();
      else createReadStream(file, { start: first, end: last }).pipe(res);
      return;
    }
    res.writeHead(200, { 'Content-Length': size });
    if (req.method === 'HEAD') res.end();
    else createReadStream(file).pipe(res);
  });

  await new Promise<void>((resolveListen) => server.listen(0, '127.0.0.1', resolveListen));
  const { port } = server.address() as AddressInfo;
  return {
    origin: `http://127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise<void>((resolveClose) => {
        server.closeAllConnections();
        server.close(() => resolveClose());
      }),
  };
}
