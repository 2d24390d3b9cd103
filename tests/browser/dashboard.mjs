// Drives Tern's dashboard in headless Chromium through what an operator does on site
// (tests/python/test_dashboard.py sets up the broker and its clients): log in with
// Enter, read the Overview chart, find a sensor in the topic tree, read a JSON and a
// binary value, watch a filter and stop, publish, find one client of 2,000 and kick
// it. Screenshots at 1280x800 and 390x844 go into SHOTS_DIR.
//
//   node dashboard.mjs URL APP_ID APP_SECRET CLIENT_ID SHOTS_DIR
import { chromium } from 'playwright-core';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [url, appId, secret, clientId, shots] = process.argv.slice(2);
const browser = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), 'tern-chromium-')), {
  executablePath: '/usr/bin/chromium',
  viewport: { width: 1280, height: 800 },
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const shot = async (page, name) => {
  const path = join(shots, name);
  await page.screenshot({ path, fullPage: true });
  console.log(`screenshot: ${path}`);
};
try {
  const page = await browser.newPage();
  const outside = [];
  page.on('request', (r) => { if (!r.url().startsWith(url)) outside.push(r.url()); });
  page.on('pageerror', (e) => { console.log(`page error: ${e.message}`); process.exitCode = 1; });
  await page.goto(url);
  await page.fill('#app_id', appId);
  await page.fill('#app_secret', secret);
  await page.press('#app_secret', 'Enter');
  await page.locator('#app').waitFor({ state: 'visible', timeout: 5000 });
  console.log('logged in with Enter');

  // The Overview chart is drawn from the broker's history as soon as the page opens.
  await page.waitForFunction(() => Number(document.getElementById('chart').dataset.points) > 0, null, { timeout: 3000 });
  await page.locator('#chart polyline').first().waitFor({ state: 'attached', timeout: 1000 });
  console.log(`chart points on first load: ${await page.getAttribute('#chart', 'data-points')}`);
  await shot(page, 'dashboard-overview-1280x800.png');

  // The topic tree: open site, then line1; the sensor's latest value shows.
  await page.click('nav a[data-tab="topics"]');
  await page.click('[data-topic="site"] .toggle', { timeout: 3000 });
  await page.click('[data-topic="site/line1"] .toggle', { timeout: 3000 });
  const temp = page.locator('[data-topic="site/line1/temp"] .value');
  const opened = Date.now();
  await temp.waitFor({ timeout: 1000 });
  console.log(`site/line1/temp in the tree ${Date.now() - opened} ms after line1 was opened`);
  const first = await temp.innerText();
  await page.waitForFunction((v) => document.querySelector('[data-topic="site/line1/temp"] .value').textContent !== v,
    first, { timeout: 1500 });
  console.log(`tree shows site/line1/temp = ${await temp.innerText()} (was ${first} a moment before)`);

  await page.click('[data-topic="site/line1/config"] .name');
  await page.waitForFunction(() => document.getElementById('topic_value').textContent.includes('\n  "unit": "C"'), null, { timeout: 3000 });
  console.log('json pretty-printed');
  await page.click('[data-topic="site/line1/raw"] .name');
  await page.waitForFunction(() => document.getElementById('topic_value').textContent.includes('0000  de ad be ef 00'), null, { timeout: 3000 });
  console.log('binary as hex');
  // "/lead/x" starts with an empty level, which is not the top of the tree.
  await page.click('[data-topic=""] .toggle', { timeout: 3000 });
  await page.locator('[data-topic="/lead"]').waitFor({ timeout: 3000 });
  console.log('empty level opens');

  // The tap: watch the sensor, then stop.
  await page.fill('#tap_filter', 'site/line1/temp');
  await page.click('#tap_start');
  await page.waitForFunction(() => document.querySelectorAll('#tap_log li').length >= 5, null, { timeout: 5000 });
  console.log(`tap streamed: ${await page.locator('#tap_log li').first().innerText()}`);
  await page.click('#tap_start');
  await page.locator('#tap_status', { hasText: 'Not watching' }).waitFor({ timeout: 3000 });
  const stopped = await page.locator('#tap_log li').count();
  await page.waitForTimeout(700);
  if (await page.locator('#tap_log li').count() !== stopped) throw new Error('the tap went on after Stop');
  console.log('tap stopped');

  // The publish form reaches a real subscriber (the test checks it got the message).
  await page.fill('#pub_topic', 'from/dashboard');
  await page.fill('#pub_payload', 'hello from the page');
  await page.selectOption('#pub_qos', '1');
  await page.click('#pub_send');
  await page.locator('#pub_result', { hasText: 'Published' }).waitFor({ timeout: 3000 });
  console.log('published');
  await shot(page, 'dashboard-1280x800.png');

  // Clients: one of 2,000, found by search, looked at, kicked.
  await page.click('nav a[data-tab="clients"]');
  await page.waitForFunction(() => /^2,0\d\d connected/.test(document.getElementById('client_count').textContent), null, { timeout: 5000 });
  const total = await page.locator('#client_count').innerText();
  await page.fill('#client_search', clientId);
  const kick = page.locator(`button[data-kick="${clientId}"]`);
  await kick.waitFor({ timeout: 5000 });
  await page.locator('#client_count', { hasText: '1 found' }).waitFor({ timeout: 3000 });
  console.log(`found ${clientId} among 2000 (${total})`);
  await shot(page, 'dashboard-clients-1280x800.png');
  await page.click(`#clients a[href="#client/${clientId}"]`);
  await page.locator('#client_facts', { hasText: 'MQTT 3.1.1' }).waitFor({ timeout: 3000 });
  console.log(`detail: ${(await page.locator('#client_facts').innerText()).replace(/\s+/g, ' ').slice(0, 160)}`);
  await page.goBack();
  await kick.click();
  await kick.waitFor({ state: 'detached', timeout: 5000 });
  console.log(`kicked ${clientId}`);

  // A phone: the same views in a narrow layout.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.click('nav a[data-tab="topics"]');
  await page.locator('[data-topic="site/line1/temp"]').waitFor({ timeout: 3000 });
  await shot(page, 'dashboard-390x844.png');
  const narrow = await page.evaluate(() => document.documentElement.scrollWidth);
  if (narrow > 390) throw new Error(`the phone layout of the topic tree is ${narrow} px wide`);
  await page.click('nav a[data-tab="overview"]');
  await page.waitForTimeout(300);
  await shot(page, 'dashboard-overview-390x844.png');
  await page.emulateMedia({ colorScheme: 'dark' });
  await shot(page, 'dashboard-overview-dark-390x844.png');
  const wide = await page.evaluate(() => document.documentElement.scrollWidth);
  if (wide > 390) throw new Error(`the phone layout is ${wide} px wide`);
  if (outside.length) throw new Error(`requests outside the dashboard: ${outside.join(', ')}`);
} finally {
  await browser.close();
}
