// MQTT.js in headless Chromium against a Tern WebSocket listener.
//
//   node mqttjs.mjs URL [SPKI_SHA256_BASE64]
//
// The page connects with MQTT 5, subscribes to browser/in, publishes "hello from
// chromium" retained at QoS 1 on browser/out, prints "ready" and waits for one message
// on browser/in (the Python test publishes it over TCP once it saw browser/out), which
// it prints as "received PAYLOAD". With SPKI, Chromium trusts exactly that server key
// (wss:// with the test's own CA, without turning certificate checks off).
import { chromium } from 'playwright-core';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const [url, spki] = process.argv.slice(2);
const here = dirname(fileURLToPath(import.meta.url));
const args = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
if (spki) args.push(`--ignore-certificate-errors-spki-list=${spki}`);

const browser = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), 'tern-chromium-')), {
  executablePath: '/usr/bin/chromium',
  args,
});
try {
  const page = await browser.newPage();
  page.on('console', (m) => console.error(`page: ${m.text()}`));
  await page.setContent('<!doctype html><title>tern</title>');
  await page.addScriptTag({ path: join(here, 'node_modules/mqtt/dist/mqtt.min.js') });
  await page.exposeFunction('ready', () => console.log('ready'));
  const received = await page.evaluate((url) => new Promise((resolve, reject) => {
    const client = mqtt.connect(url, { protocolVersion: 5, clientId: 'chromium', reconnectPeriod: 0 });
    client.on('error', (e) => reject(`MQTT.js: ${e.message}`));
    client.on('close', () => reject('connection closed'));
    client.on('message', (topic, payload) => {
      if (topic === 'browser/in') {
        client.end();
        resolve(new TextDecoder().decode(payload));
      }
    });
    client.on('connect', () => {
      client.subscribe('browser/in', { qos: 1 }, (err) => {
        if (err) return reject(`subscribe: ${err.message}`);
        client.publish('browser/out', 'hello from chromium', { qos: 1, retain: true }, (err) => {
          if (err) return reject(`publish: ${err.message}`);
          window.ready();
        });
      });
    });
    setTimeout(() => reject('no message on browser/in within 20 s'), 20000);
  }), url);
  console.log(`received ${received}`);
} finally {
  await browser.close();
}
