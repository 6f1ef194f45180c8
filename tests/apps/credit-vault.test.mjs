// examples/credit-vault end to end: Redis, two gateway nodes behind HAProxy, the app's
// Python backend (publications with FCALL sb_publish, `vault.*` calls from a Redis stream
// route) and the page in headless Chromium, one browser context per user: alice owns
// vault A, bob vault B.
//
// Asserts outcomes (what each page shows, compared with the backend's state and the
// channels' offsets and message ids), never timings: every wait is for a condition, bounded.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closeSync, mkdirSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { BIN, ROOT, startHarness, until } from './harness.mjs';

const APP = join(ROOT, 'examples/credit-vault');
const CHAINS = ['ethereum', 'arbitrum', 'base'];

let h;
const pages = {};
// While true, alice's browser refuses her pages' new WebSocket connections (closes them
// before they reach HAProxy); `aliceSockets` are her open ones, which the test can cut.
// Playwright applies WebSocket routes to pages loaded after the route is set, so it is
// set on her context before her page opens.
let holdAlice = false;
const aliceSockets = [];
let restarted; // a gateway the test started again (the harness has no restart)

before(async () => {
  h = await startHarness({
    app: 'credit-vault',
    config: 'examples/credit-vault/gateway.toml',
    backend: ({ redisUrl, port, secret }) => ({
      command: 'python3',
      args: [join(APP, 'backend/server.py'), '--redis-url', redisUrl, '--port', String(port)],
      env: { JWT_SECRET: secret, TICK_MS: '500', PYTHONUNBUFFERED: '1' },
    }),
    web: 'examples/credit-vault/web',
  });
});

after(async () => {
  if (restarted && restarted.exitCode === null) {
    restarted.kill('SIGKILL');
    await new Promise((done) => restarted.once('exit', done));
  }
  await h?.close();
});

async function openApp(index, user, params = {}) {
  const page = await h.open(index, { token: h.token(user, { info: { name: user } }), ...params }, user);
  await page.waitForFunction(() => window.app?.state === 'connected' && window.app.vault && Object.keys(window.app.markets).length === 3 && window.app.system, null, { timeout: 20_000 });
  return page;
}

const app = (page, pick, arg) => page.evaluate(pick, arg);

async function state() {
  const response = await fetch(`${h.backend.http}/api/state`);
  assert.equal(response.status, 200);
  return response.json();
}

/** What the page shows, read from the DOM. */
function screen(page) {
  return page.evaluate(() => {
    const $ = (id) => document.getElementById(id);
    return {
      vault: $('vault-id').dataset.vault,
      health: Number($('health').dataset.health),
      collateral: Number($('collateral').dataset.value),
      tickers: [...document.querySelectorAll('.ticker')].map((t) => ({ chain: t.dataset.chain, price: Number(t.dataset.price) })),
      system: $('system').dataset.status,
      beat: $('beat').textContent,
      conn: $('conn-state').textContent,
      indicator: $('conn').dataset.indicator,
      alerts: [...document.querySelectorAll('#alerts li')].map((li) => ({ id: li.dataset.id, level: li.dataset.level, message: li.querySelector('.message').textContent })),
      actionError: $('action-error').hidden ? null : $('action-error').textContent,
      result: $('result').textContent,
      pending: $('pending').textContent,
    };
  });
}

/** Every message of `channel` the page received, once and in order: contiguous offsets, unique ids. */
async function assertContiguous(page, channel, who) {
  const { received, anomalies, subscribed } = await app(page, (c) => ({ received: window.app.received[c] ?? [], anomalies: window.app.anomalies, subscribed: window.app.subscribed[c] ?? [] }), channel);
  assert.deepEqual(anomalies, [], `${who}: messages out of sequence`);
  assert.ok(received.length > 0, `${who}: ${channel} received something`);
  const offsets = received.map((r) => r.offset);
  const first = subscribed[0]?.offset; // the first subscribe had no `recover`: live from its offset
  if (first !== undefined) assert.equal(offsets[0], first + 1, `${who}: ${channel} from the subscribe's offset on`);
  assert.deepEqual(offsets, offsets.map((_, i) => offsets[0] + i), `${who}: ${channel} offsets`);
  assert.equal(new Set(received.map((r) => r.id)).size, received.length, `${who}: ${channel} message ids unique`);
  assert.equal(new Set(received.map((r) => r.epoch)).size, 1, `${who}: ${channel} one epoch`);
  return received;
}

/** Waits until `page` has received the backend's newest publication of `channel` (as of now). */
async function caughtUp(page, channel) {
  const { published } = await state();
  const offset = published[channel].offset;
  await page.waitForFunction(([c, o]) => (window.app.received[c]?.at(-1)?.offset ?? -1) >= o, [channel, offset], { timeout: 20_000 });
}

async function restartGateway(g) {
  // The node comes back on its old address, where HAProxy's health check finds it.
  mkdirSync(h.logDir, { recursive: true });
  const fd = openSync(join(h.logDir, `gateway-${g.n}-restarted.log`), 'a');
  restarted = spawn(BIN, ['--config', h.configFile, '--listen', g.address, '--broker', h.redis.url], {
    env: { ...process.env, NO_COLOR: '1', SWITCHBOARD_NODE__NAME: g.name }, stdio: ['ignore', fd, fd],
  });
  closeSync(fd);
  const ok = async (url) => {
    try {
      const r = await fetch(url, { signal: AbortSignal.timeout(1000) });
      await r.arrayBuffer();
      return r.status === 200;
    } catch {
      return false;
    }
  };
  await until(() => ok(`${g.http}/readyz`), `${g.name} ready again`, 30_000, 100);
  await until(() => ok(`${h.lb.http}/readyz`), 'HAProxy forwarding again', 30_000, 100);
}

describe('credit-vault: two owners, two gateway nodes behind HAProxy', { timeout: 240_000 }, () => {
  test('each user sees their own vault, the shared market data and the system status', async () => {
    await h.contexts[0].routeWebSocket(/\/ws/, (ws) => {
      if (holdAlice) return ws.close({ code: 1011, reason: 'held by the test' });
      aliceSockets.push({ page: ws, server: ws.connectToServer() });
    });
    // 20 reconnect attempts before giving up: more than the held reconnects below can use up.
    pages.alice = await openApp(0, 'alice', { attempts: '20' });
    pages.bob = await openApp(1, 'bob', { attempts: '20' });
    const truth = await state();
    for (const [who, vault] of [['alice', 'A'], ['bob', 'B']]) {
      const page = pages[who];
      // Two more price ticks reach the page: the vault and the tickers move with them.
      const tick = await app(page, () => window.app.markets.ethereum.block);
      await page.waitForFunction((t) => window.app.markets.ethereum.block >= t + 2, tick, { timeout: 15_000 });
      const shown = await screen(page);
      assert.equal(shown.vault, vault, `${who}: their vault`);
      assert.equal(shown.collateral, truth.vaults[who].collateral, `${who}: collateral`);
      // The screen and the state are read one after the other, and a vault_update may land
      // in between: the screen must catch up with the newest one.
      await until(async () => {
        const [onScreen, inState] = [(await screen(page)).health, (await app(page, () => window.app.vault)).health];
        return onScreen === inState;
      }, `${who}: health shown is the newest vault_update's`, 10_000, 50);
      assert.ok(Math.abs(shown.health - truth.vaults[who].health) < 0.1, `${who}: health ${shown.health} ≈ backend ${truth.vaults[who].health}`);
      assert.deepEqual(shown.tickers.map((t) => t.chain), CHAINS, `${who}: one ticker per chain`);
      assert.equal(shown.system, 'operational');
      await page.waitForFunction(() => window.app.beats >= 1, null, { timeout: 10_000 });
      assert.match((await screen(page)).beat, /^♥ /);
      assert.equal(shown.indicator, 'connected');
      assert.deepEqual(await app(page, () => window.app.unknown), [], `${who}: every message type has a handler`);
    }
    // The same market messages reach both: for every chain, the ids at the offsets both received match.
    for (const chain of CHAINS) {
      const channel = `market:${chain}`;
      const [a, b] = await Promise.all([pages.alice, pages.bob].map((p) => app(p, (c) => window.app.received[c], channel)));
      const byOffset = new Map(b.map((r) => [r.offset, r.id]));
      const common = a.filter((r) => byOffset.has(r.offset));
      assert.ok(common.length >= 2, `${chain}: messages seen by both`);
      for (const r of common) assert.equal(byOffset.get(r.offset), r.id, `${chain} offset ${r.offset}: the same message`);
    }
    // Nobody else's vault: bob may not subscribe to alice's (namespace policy `owner`).
    const refused = await app(pages.bob, () => window.app.client.subscribe('vault:alice').ready.then(() => null, (e) => e.code));
    assert.equal(refused, 107, "bob cannot subscribe to alice's vault");
    await h.screenshot(pages.alice, 'alice-live');
    await h.screenshot(pages.bob, 'bob-live');
  });

  test('a withdraw below the alert threshold alerts the owner only', async () => {
    await pages.alice.fill('#amount', '3');
    await pages.alice.click('#withdraw-btn');
    await pages.alice.locator('#result', { hasText: 'Withdrew 3 ETH' }).waitFor({ timeout: 10_000 });
    const alert = pages.alice.locator('#alerts li[data-level=warning]', { hasText: /^Vault A health 1\.\d\d is below 1\.50/ });
    await alert.waitFor({ timeout: 10_000 });
    const truth = await state();
    assert.equal(truth.vaults.alice.collateral, 7);
    assert.ok(truth.vaults.alice.health < 1.5 && truth.vaults.alice.health > 1.2, `health ${truth.vaults.alice.health}`);
    assert.deepEqual(truth.alerts_sent, { alice: 1 });
    const alerts = await app(pages.alice, () => window.app.alerts);
    assert.equal(alerts.length, 1, 'one alert, though it came on vault:alice and user:alice');
    const [onVault, onPersonal] = await Promise.all(['vault:alice', 'user:alice'].map((c) => app(pages.alice, (ch) => window.app.received[ch]?.filter((r) => r.type === 'risk_alert').map((r) => r.id) ?? [], c)));
    await until(async () => (await app(pages.alice, () => window.app.received['user:alice']?.length ?? 0)) >= 1, 'the alert on user:alice');
    assert.deepEqual(onVault, [alerts[0].id]);
    assert.deepEqual((await app(pages.alice, () => window.app.received['user:alice'].map((r) => r.id))), [alerts[0].id], `personal channel: ${onPersonal}`);
    assert.equal((await screen(pages.alice)).alerts.length, 1);
    // Bob's vault is fine and he was told nothing.
    await caughtUp(pages.bob, 'vault:bob');
    assert.deepEqual(await app(pages.bob, () => window.app.alerts), [], 'bob got no alert');
    assert.deepEqual((await screen(pages.bob)).alerts, []);
    assert.equal(await pages.bob.locator('#alerts-empty').isVisible(), true);
    assert.equal(await app(pages.bob, () => (window.app.received['user:bob'] ?? []).length), 0);
    await h.screenshot(pages.alice, 'alice-alert');
  });

  test('an unsafe withdraw is refused, visibly, and changes nothing', async () => {
    const opsBefore = (await state()).ops.length;
    await pages.alice.fill('#amount', '2');
    await pages.alice.click('#withdraw-btn');
    const error = pages.alice.locator('#action-error');
    await error.waitFor({ state: 'visible', timeout: 10_000 });
    assert.match(await error.textContent(), /^Withdraw refused: health would be (0\.9\d|1\.0\d), below the safe minimum 1\.20 \(code 1409\)$/);
    const truth = await state();
    assert.equal(truth.ops.length, opsBefore, 'nothing applied');
    assert.equal(truth.vaults.alice.collateral, 7);
    await caughtUp(pages.alice, 'vault:alice');
    assert.equal((await screen(pages.alice)).collateral, 7, 'the page still shows 7 ETH');
    await h.screenshot(pages.alice, 'alice-refused');
  });

  test("kill -9 of alice's node: her page shows reconnecting, then recovers with no gap or duplicate", async () => {
    const victim = await h.nodeOf(pages.alice);
    assert.ok(victim, 'alice is on a node');
    const survivor = h.gateways.find((g) => g !== victim);
    const bobOnVictim = (await h.nodeOf(pages.bob)) === victim;
    const lastBefore = await app(pages.alice, () => window.app.received['vault:alice'].at(-1).offset);

    // Her reconnects are refused until the backend has published a few updates more, so
    // there is something to recover whatever the SDK's (jittered) first delay.
    holdAlice = true;
    await h.kill9(victim);
    await pages.alice.locator('#conn-state', { hasText: /^reconnecting \(attempt \d+\/20\)$/ }).waitFor({ timeout: 20_000 });
    await pages.alice.locator('#offline-text', { hasText: 'Connection lost: reconnecting' }).waitFor();
    // What she had when the connection died: an update may have reached her between
    // reading `lastBefore` and the kill.
    const lastSeen = await app(pages.alice, () => window.app.received['vault:alice'].at(-1).offset);
    await until(async () => (await state()).published['vault:alice'].offset >= lastSeen + 4, 'four vault updates published while alice is away', 30_000, 100);
    await h.screenshot(pages.alice, 'alice-reconnecting');
    holdAlice = false;

    await pages.alice.waitForFunction((node) => window.app.state === 'connected' && window.app.node === node, survivor.name, { timeout: 30_000 });
    await pages.alice.locator('#conn-state', { hasText: /^connected$/ }).waitFor();
    // `connected` comes with the connect reply; the resubscribe's reply follows it.
    await pages.alice.waitForFunction(() => (window.app.subscribed['vault:alice'] ?? []).some((e) => e.resubscribed), null, { timeout: 30_000 });
    const resubscribed = await app(pages.alice, () => (window.app.subscribed['vault:alice'] ?? []).filter((e) => e.resubscribed));
    assert.equal(resubscribed.length, 1, 'one resubscribe');
    assert.equal(resubscribed[0].recovered, true, 'recovered');
    assert.ok(resubscribed[0].missed >= 4, `recovered ${resubscribed[0].missed} updates, at least the 4 published meanwhile`);
    if (bobOnVictim) await pages.bob.waitForFunction((node) => window.app.state === 'connected' && window.app.node === node, survivor.name, { timeout: 30_000 });

    const channels = ['vault:alice', ...CHAINS.map((c) => `market:${c}`), 'system:status'];
    for (const channel of channels) await caughtUp(pages.alice, channel);
    for (const channel of channels) {
      const received = await assertContiguous(pages.alice, channel, 'alice');
      if (channel === 'vault:alice') assert.ok(received.some((r) => r.offset === lastBefore + 1), 'alice: the first update after the kill');
    }
    for (const channel of ['vault:bob', 'market:ethereum']) {
      await caughtUp(pages.bob, channel);
      await assertContiguous(pages.bob, channel, 'bob');
    }
    console.log(`# alice: reconnected to ${survivor.name}, recovered ${resubscribed[0].missed} vault update(s); bob was ${bobOnVictim ? '' : 'not '}on the killed node`);
    await h.screenshot(pages.alice, 'alice-recovered');
  });

  test('a deposit made while the page is disconnected is applied exactly once after the reconnect', async () => {
    const before = await state();
    // Cut alice's connection and refuse her reconnects.
    holdAlice = true;
    for (const s of aliceSockets.splice(0)) {
      s.server.close();
      s.page.close({ code: 1011, reason: 'cut by the test' });
    }
    await pages.alice.locator('#conn-state', { hasText: /^reconnecting/ }).waitFor({ timeout: 15_000 });
    await pages.alice.fill('#amount', '1');
    await pages.alice.click('#deposit-btn');
    await pages.alice.locator('#pending', { hasText: '1 queued (offline)' }).waitFor({ timeout: 5000 });
    // Still refused a while: two more failed attempts, and the backend has not seen the call.
    const attempt = await app(pages.alice, () => window.app.attempt);
    await pages.alice.waitForFunction((a) => window.app.attempt >= a + 2, attempt, { timeout: 15_000 });
    const meanwhile = await state();
    assert.equal(meanwhile.ops.length, before.ops.length, 'not applied while offline');
    assert.equal(await app(pages.alice, () => window.app.pending), 1, 'waiting in the outbox');
    await h.screenshot(pages.alice, 'alice-queued');
    holdAlice = false;

    await pages.alice.waitForFunction(() => window.app.state === 'connected', null, { timeout: 30_000 });
    await pages.alice.locator('#result', { hasText: /^Deposited 1 ETH \(operation #\d+\)/ }).waitFor({ timeout: 20_000 });
    const after = await state();
    const added = after.ops.slice(before.ops.length);
    assert.equal(added.length, 1, `one operation applied: ${JSON.stringify(added)}`);
    assert.deepEqual({ user: added[0].user, action: added[0].action, amount: added[0].amount }, { user: 'alice', action: 'deposit', amount: 1 });
    assert.ok(added[0].key, 'it carried an idempotency key');
    assert.ok(after.requests[added[0].key] >= 1, 'the backend received it');
    assert.equal(after.ops.filter((o) => o.key === added[0].key).length, 1, 'applied once, however often it was sent');
    assert.equal(after.vaults.alice.collateral, 8);
    const ops = await app(pages.alice, () => window.app.ops.filter((o) => o.action === 'deposit'));
    assert.equal(ops.length, 1);
    assert.equal(ops[0].op, added[0].seq);
    await caughtUp(pages.alice, 'vault:alice');
    assert.equal((await screen(pages.alice)).collateral, 8, 'the page shows 8 ETH');
    assert.equal((await screen(pages.alice)).pending, '');
    await assertContiguous(pages.alice, 'vault:alice', 'alice');
    console.log(`# deposit ${added[0].key}: received ${after.requests[added[0].key]} time(s), applied once`);
  });

  test('all gateways down: the page gives up after maxReconnectAttempts and shows failed; retry recovers', async () => {
    const page = await openApp(0, 'alice', { attempts: '3' });
    pages.failing = page;
    const dead = h.gateways.filter((g) => !g.alive);
    for (const g of h.gateways.filter((x) => x.alive)) await h.kill9(g);
    await page.locator('#conn-state', { hasText: /^failed$/ }).waitFor({ timeout: 60_000 });
    await page.locator('#offline-text', { hasText: 'Could not reconnect after 3 attempts.' }).waitFor();
    await page.locator('#retry-btn').waitFor({ state: 'visible' });
    assert.deepEqual(await app(page, () => window.app.failures), [{ attempts: 3 }]);
    assert.equal(await app(page, () => window.app.state), 'closed');
    await h.screenshot(page, 'alice-failed');

    // One node back (on its old address); Retry connects through HAProxy again.
    await restartGateway(dead[0] ?? h.gateways[0]);
    const lastBefore = await app(page, () => window.app.received['vault:alice'].at(-1).offset);
    await page.click('#retry-btn');
    await page.waitForFunction(() => window.app.state === 'connected', null, { timeout: 30_000 });
    await page.locator('#conn-state', { hasText: /^connected$/ }).waitFor();
    assert.equal(await page.locator('#offline').isVisible(), false, 'the offline banner is gone');
    await caughtUp(page, 'vault:alice');
    const received = await assertContiguous(page, 'vault:alice', 'alice (retried)');
    assert.ok(received.some((r) => r.offset === lastBefore + 1), 'recovered what was published while failed');
    await h.screenshot(page, 'alice-retried');
  });

  test('no errors in the pages', () => {
    assert.deepEqual(h.pageErrors, []);
  });
});
