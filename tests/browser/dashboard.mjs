// Drives Tern's dashboard in headless Chromium: log in, find a connected client, kick
// it, see it gone, and save a screenshot.
//
//   node dashboard.mjs URL APP_ID APP_SECRET CLIENT_ID SCREENSHOT.png
import { chromium } from 'playwright-core';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [url, appId, secret, clientId, screenshot] = process.argv.slice(2);
const browser = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), 'tern-chromium-')), {
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage();
  const outside = [];
  page.on('request', (r) => { if (!r.url().startsWith(url)) outside.push(r.url()); });
  await page.goto(url);
  await page.fill('#app_id', appId);
  await page.fill('#app_secret', secret);
  await page.click('#login_button');
  await page.click('nav a[data-tab="clients"]');
  const kick = page.locator(`button[data-kick="${clientId}"]`);
  await kick.waitFor({ timeout: 10000 });
  console.log(`saw ${clientId}`);
  await page.screenshot({ path: screenshot, fullPage: true });
  await kick.click();
  await kick.waitFor({ state: 'detached', timeout: 10000 });
  console.log(`kicked ${clientId}`);
  if (outside.length) throw new Error(`requests outside the dashboard: ${outside.join(', ')}`);
} finally {
  await browser.close();
}
