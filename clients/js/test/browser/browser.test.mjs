// The built SDK in headless Chromium (Debian's /usr/bin/chromium through playwright-core):
// a chat page served by a tiny static server, two users in two browser contexts, a
// gateway restart with recovery, and recovered: false once the history is gone.
// Gateways: two nodes on Redis, so history survives a node's restart and a node can
// publish while the other one is down.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { dirname, extname, join, normalize } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { client, closeClients, config, sleep, startGateway, startRedis, token } from '../helpers/gateway.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, '../../dist');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const SCREENSHOT = process.env.SCREENSHOT ?? '/tmp/switchboard-browser.png';
const CHANNEL = 'chat:browser';
// Pings every second: the page's client sends application pings (browsers cannot see
// WebSocket pings), and a dead connection is noticed in 3 s.
const toml = config({ extra: '[heartbeat]\nping_interval_ms = 1000\npong_timeout_ms = 2000' });

let redis, nodeA, nodeB, site, browser;
const pageErrors = [];

/** Serves the page and dist/. */
function serveStatic() {
  const types = { '.html': 'text/html', '.js': 'text/javascript', '.map': 'application/json' };
  const server = createServer(async (request, response) => {
    const path = normalize(new URL(request.url, 'http://x').pathname);
    const file = path === '/' ? join(here, 'page/index.html')
      : path.startsWith('/dist/') ? join(dist, path.slice(6))
      : join(here, 'page', path);
    if (!file.startsWith(here) && !file.startsWith(dist)) return response.writeHead(403).end();
    try {
      const body = await readFile(file);
      response.writeHead(200, { 'content-type': types[extname(file)] ?? 'application/octet-stream' }).end(body);
    } catch {
      response.writeHead(404).end();
    }
  });
  return new Promise((listening) => server.listen(0, '127.0.0.1', () => listening(server)));
}

before(async () => {
  redis = await startRedis();
  nodeA = await startGateway({ toml, broker: redis.url });
  nodeB = await startGateway({ toml, broker: redis.url });
  site = await serveStatic();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    // playwright-core gives every launch a fresh temporary --user-data-dir of its own.
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});
after(async () => {
  closeClients();
  await browser?.close();
  site?.close();
  await nodeA?.stop();
  await nodeB?.stop();
  await redis?.stop();
});

/** Opens the chat page in a fresh context (its own storage: another user). */
async function openChat(user, node, extra = {}) {
  const context = await browser.newContext({ viewport: { width: 900, height: 620 } });
  const page = await context.newPage();
  page.on('pageerror', (error) => pageErrors.push(`${user}: ${error.message}`));
  const query = new URLSearchParams({ url: node.url, token: token(user), user, channel: CHANNEL, ...extra });
  await page.goto(`http://127.0.0.1:${site.address().port}/?${query}`);
  await page.waitForFunction(() => window.app?.state === 'connected' && window.app.subscribed.length > 0);
  return { page, context };
}

const app = (page, pick) => page.evaluate(pick);

describe('in Chromium', { timeout: 150_000 }, () => {
  let alice, bob;

  test('two users in two contexts see each other in presence and publications', async () => {
    alice = await openChat('alice', nodeA);
    bob = await openChat('bob', nodeB); // on the other node: the cluster carries it
    await alice.page.waitForFunction(() => window.app.presence.join() === 'alice,bob');
    await bob.page.waitForFunction(() => window.app.presence.join() === 'alice,bob');

    await alice.page.fill('#text', 'hi bob');
    await alice.page.press('#text', 'Enter');
    await bob.page.fill('#text', 'hi alice');
    await bob.page.click('button');
    for (const { page } of [alice, bob]) {
      await page.waitForFunction(() => window.app.messages.length === 2);
      const messages = await app(page, () => window.app.messages);
      assert.deepEqual(messages.map((m) => [m.user, m.data.text]).sort(), [['alice', 'hi bob'], ['bob', 'hi alice']]);
      // Epoch filled in by the SDK; offsets contiguous.
      assert.ok(messages.every((m) => typeof m.epoch === 'string' && m.epoch.length > 0));
      assert.deepEqual(messages.map((m) => m.offset), [messages[0].offset, messages[0].offset + 1]);
    }
    await bob.page.locator('#messages li', { hasText: 'hi bob' }).waitFor();
  });

  test('an idle connection stays up: application pings keep it alive', async () => {
    await sleep(4500); // longer than the 3 s silence window, with nothing published
    assert.deepEqual(await app(alice.page, () => window.app.disconnects), []);
  });

  test('a restart of its node loses nothing: the page recovers what it missed', async () => {
    const publisher = client(nodeB.url, { token: token('bot') });
    await publisher.connect();
    const before = (await app(alice.page, () => window.app.messages)).length;
    let published = 0;
    let publishing = true;
    const loop = (async () => {
      while (publishing) {
        await publisher.publish(CHANNEL, { text: `update ${++published}`, n: published });
        await sleep(25);
      }
    })();
    await alice.page.waitForFunction((n) => window.app.messages.length >= n + 5, before);
    nodeA = await nodeA.restart();
    await alice.page.waitForFunction(() => window.app.subscribed.some((e) => e.resubscribed));
    await alice.page.waitForFunction((n) => window.app.messages.length >= n + 5, published + before);
    publishing = false;
    await loop;
    await alice.page.waitForFunction((n) => window.app.messages.length === n, published + before);

    const { messages, subscribed, disconnects } = await app(alice.page, () => window.app);
    const received = messages.slice(before).map((m) => m.data.n);
    assert.deepEqual(received, Array.from({ length: published }, (_, i) => i + 1), 'every update once, in order');
    const offsets = messages.map((m) => m.offset);
    assert.deepEqual(offsets, offsets.map((_, i) => offsets[0] + i));
    assert.equal(disconnects[0].code, 3000);
    const again = subscribed.find((e) => e.resubscribed);
    assert.equal(again.recovered, true);
    assert.ok(again.missed > 0, 'publications made while the node restarted were recovered');
    // Bob, on the other node, saw the same sequence live.
    await bob.page.waitForFunction((n) => window.app.messages.length === n, published + before);

    await alice.page.locator('#messages li.notice', { hasText: 'recovered' }).waitFor();
    await alice.page.screenshot({ path: SCREENSHOT });
  });

  test('after the history is gone the page gets recovered: false and refetches', async () => {
    await redis.command('FLUSHALL');
    nodeA = await nodeA.restart();
    await alice.page.waitForFunction(() => window.app.subscribed.some((e) => e.recovered === false));
    await alice.page.waitForFunction(() => window.app.refetched.length === 1 && window.app.state === 'connected');
    const lost = (await app(alice.page, () => window.app.subscribed)).find((e) => e.recovered === false);
    const first = (await app(alice.page, () => window.app.subscribed))[0];
    assert.notEqual(lost.epoch, first.epoch);
    // Publications go on in the new epoch, for both users.
    await bob.page.fill('#text', 'still here?');
    await bob.page.press('#text', 'Enter');
    await alice.page.waitForFunction(() => window.app.messages.at(-1)?.data.text === 'still here?');
    assert.equal((await app(alice.page, () => window.app.messages.at(-1))).epoch, lost.epoch);
    await alice.page.locator('#messages li.notice', { hasText: 'could not be recovered' }).waitFor();
    await alice.page.screenshot({ path: SCREENSHOT.replace(/\.png$/, '-lost.png') });
  });

  test('the browser coming back online reconnects at once, not at the end of the backoff', async () => {
    // A backoff so long the client would not retry by itself within the test.
    const carl = await openChat('carl', nodeA, { backoffBase: String(1e9) });
    await nodeA.stop();
    await carl.page.waitForFunction(() => window.app.state === 'disconnected');
    nodeA = await startGateway({ toml, broker: redis.url, listen: nodeA.address });
    await sleep(300);
    assert.equal(await app(carl.page, () => window.app.state), 'disconnected');
    await carl.context.setOffline(true);
    await carl.context.setOffline(false); // fires `online`
    await carl.page.waitForFunction(() => window.app.state === 'connected');
    await carl.context.close();
  });

  test('no errors in the pages', () => {
    assert.deepEqual(pageErrors, []);
  });
});
