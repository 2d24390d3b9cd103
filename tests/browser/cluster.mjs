// Drives Tern's dashboard in headless Chromium to the Cluster tab and waits for a peer
// node's row to say it is running; saves a screenshot.
//
//   node cluster.mjs URL APP_ID APP_SECRET PEER SCREENSHOT.png
import { chromium } from 'playwright-core';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [url, appId, secret, peer, screenshot] = process.argv.slice(2);
const browser = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), 'tern-chromium-')), {
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage();
  await page.goto(url);
  await page.fill('#app_id', appId);
  await page.fill('#app_secret', secret);
  await page.click('#login_button');
  await page.click('nav a[data-tab="cluster"]');
  const row = page.locator('#cluster tr', { hasText: peer }).filter({ hasText: 'Running' });
  await row.waitFor({ timeout: 10000 });
  console.log(`cluster row: ${(await row.innerText()).replace(/\s+/g, ' ')}`);
  console.log(await page.locator('#cluster_note').innerText());
  await page.screenshot({ path: screenshot, fullPage: true });
} finally {
  await browser.close();
}
