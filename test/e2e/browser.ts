// Debian's Chromium, driven by playwright-core: never a downloaded browser, never the network.
import { existsSync } from 'node:fs';
import { chromium, type Browser, type Page } from 'playwright-core';

export const chromiumPath = process.env.WEBSHARD_CHROMIUM ?? '/usr/bin/chromium';

/**
 * Flags for headless Chromium on Linux (checked with Debian's Chromium 156). WebGPU needs only
 * `--enable-unsafe-webgpu`: without it navigator.gpu exists but requestAdapter() resolves to null.
 * With it every request (high-performance, low-power, fallback) gets the same SwiftShader adapter
 * (Vulkan on the CPU: no shader-f16, 256 invocations per workgroup, 10 storage buffers per stage),
 * with or without `--disable-gpu`; no `--use-webgpu-adapter` or `--enable-features=Vulkan` needed.
 * The page must be on http://127.0.0.1 or localhost (a secure context), not about:blank.
 * The other flags keep Chromium off the network.
 */
export const chromiumArgs = [
  '--enable-unsafe-webgpu',
  '--no-sandbox',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-quic',
  '--disable-default-apps',
  '--disable-extensions',
  '--no-default-browser-check',
];

export interface ChromiumSession {
  browser: Browser;
  /** Console lines and page errors, for failure messages. */
  log: string[];
  newPage(): Promise<Page>;
  close(): Promise<void>;
}

export async function launchChromium(): Promise<ChromiumSession> {
  if (!existsSync(chromiumPath)) throw new Error(`Chromium is missing at ${chromiumPath}: apt-get install chromium (never let Playwright download one)`);
  // Playwright gives every launch a fresh, empty profile of its own.
  const browser = await chromium.launch({ executablePath: chromiumPath, headless: true, args: chromiumArgs });
  const log: string[] = [];
  return {
    browser,
    log,
    async newPage() {
      const page = await browser.newPage({ viewport: { width: 1440, height: 1100 }, deviceScaleFactor: 1 });
      page.on('console', (m) => log.push(`[${m.type()}] ${m.text()}`));
      page.on('pageerror', (e) => log.push(`[pageerror] ${e.stack ?? e.message}`));
      return page;
    },
    close: () => browser.close(),
  };
}
