// permessage-deflate in Chromium: the browser offers it on every WebSocket; a gateway
// with `[compression]` enabled accepts it, and a large publication reaches the page
// intact (Chromium inflates it; the browser's own commands arrive compressed or not, as
// it chooses, and are understood either way).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { chromium } from 'playwright-core';
import { config, startGateway, token } from '../helpers/gateway.mjs';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
let node, browser;

before(async () => {
  node = await startGateway({ toml: config({ extra: '[compression]\nenabled = true\nthreshold_bytes = 512' }) });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
  });
});
after(async () => {
  await browser?.close();
  await node?.stop();
});

describe('permessage-deflate in Chromium', { timeout: 60_000 }, () => {
  test('is negotiated and a large publication arrives intact', async () => {
    const page = await browser.newPage();
    // The page speaks the protocol on a bare WebSocket (docs/protocol.md), so the test
    // can read what the browser negotiated.
    const ready = page.evaluate(
      ({ url, jwt }) =>
        new Promise((resolve, reject) => {
          const socket = new WebSocket(url, 'switchboard.v1.json');
          window.received = new Promise((got) => {
            socket.onmessage = (event) => {
              const frame = JSON.parse(event.data);
              if (frame.id === 2) resolve(socket.extensions);
              if (frame.error) reject(new Error(JSON.stringify(frame.error)));
              if (frame.push === 'publication') got(frame.data);
            };
          });
          socket.onerror = () => reject(new Error('WebSocket error'));
          socket.onopen = () => {
            socket.send(JSON.stringify({ id: 1, method: 'connect', params: { token: jwt } }));
            socket.send(JSON.stringify({ id: 2, method: 'subscribe', params: { channel: 'chat:deflate' } }));
          };
        }),
      { url: node.url, jwt: token('chromium') },
    );
    const extensions = await ready;
    assert.equal(extensions, 'permessage-deflate; server_no_context_takeover; client_no_context_takeover');

    const rows = Array.from({ length: 300 }, (_, i) => ({ proposal: i, yes: i * 3, no: i, quorum: 0.25 }));
    await node.api('POST', 'publish', { channel: 'chat:deflate', data: { rows } });
    const data = await page.evaluate(() => window.received);
    assert.deepEqual(data, { rows });
    await page.close();
  });
});
