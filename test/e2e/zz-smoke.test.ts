import { it } from 'vitest';
import { chromium } from 'playwright-core';
import { serveStatic } from './static-server.ts';
it('smoke', async () => {
const srv = await serveStatic({ '/': '/work/main/demo/dist', '/models/': '/work/shared/models' });
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true,
  args: ['--no-sandbox','--disable-background-networking','--disable-component-update','--disable-sync','--no-first-run','--disable-quic','--enable-unsafe-webgpu'] });
const page = await browser.newPage();
page.on('console', m => console.log('console:', m.text()));
await page.goto(srv.origin + '/');
await page.waitForFunction(() => document.getElementById('out')!.textContent!.includes('DONE'), null, { timeout: 300000 });
console.log(await page.textContent('#out'));
await browser.close(); await srv.close();
}, 300000);
