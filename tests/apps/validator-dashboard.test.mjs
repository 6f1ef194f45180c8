// examples/validator-dashboard end to end: Redis, two gateway nodes behind HAProxy, the
// app's Node backend (rpc through the gateways' HTTP route, publications through their
// HTTP API, by HAProxy's address), and the page in headless Chromium, one browser context
// per user: alice (admin) and bob (viewer).
//
// Asserts outcomes (what each page shows, compared with the backend's state and the
// channel's offsets), never timings: every wait is for a condition, bounded.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { ROOT, startHarness, until } from './harness.mjs';

const APP = join(ROOT, 'examples/validator-dashboard');
const USERS = { alice: { name: 'Alice', role: 'admin' }, bob: { name: 'Bob', role: 'viewer' } };
const VALIDATOR_IDS = ['aurora', 'borealis', 'cygnus', 'draco', 'eridani'];

let h;
const pages = {};
// While true, alice's browser refuses her page's new WebSocket connections (closes them
// before they reach HAProxy). Playwright applies WebSocket routes to pages loaded after
// the route is set, so it is set on her context before her page opens; until then every
// connection goes through to the server unchanged.
let holdAlice = false;

before(async () => {
  h = await startHarness({
    app: 'validator-dashboard',
    config: join(APP, 'gateway.toml'),
    // The route's URL in gateway.toml: the harness points it at the backend's port.
    httpRoute: 'http://127.0.0.1:3005/rpc',
    // A crashed node's connection leaves within ~8 s instead of ~40 s (presence expiry).
    gatewayEnv: { SWITCHBOARD_BROKER__PRESENCE_TTL_SECS: '6' },
    // The backend publishes through HAProxy (`lb`), so a dead node does not stop it.
    backend: ({ secret, port, lb }) => {
      return {
        command: process.execPath,
        args: [join(APP, 'backend/server.mjs')],
        env: { PORT: String(port), GATEWAY_API: lb.http, JWT_SECRET: secret },
      };
    },
    web: 'examples/validator-dashboard/web',
  });
});

after(async () => {
  await h?.close();
});

async function openApp(index, user) {
  const page = await h.open(index, { token: h.token(user, { info: USERS[user] }) }, user);
  await page.waitForFunction(() => window.app?.state === 'connected' && window.app.stats && window.app.directory, null, { timeout: 20_000 });
  return page;
}

const app = (page, pick, arg) => page.evaluate(pick, arg);

/** What the page shows, read from the DOM. */
function screen(page) {
  return page.evaluate(() => {
    const $ = (id) => document.getElementById(id);
    return {
      height: Number($('height').dataset.height),
      totalValidations: Number($('total-validations').dataset.value),
      consensus: $('consensus-text').textContent,
      connected: $('connected').textContent,
      rows: [...document.querySelectorAll('#validators tr')].map((tr) => ({
        id: tr.dataset.id, status: tr.dataset.status, validations: Number(tr.dataset.validations), name: tr.querySelector('.name').textContent,
      })),
      statusResult: $('status-result').textContent,
      actionError: $('action-error').hidden ? null : $('action-error').textContent,
      alerts: [...document.querySelectorAll('#alerts li')].map((li) => ({ kind: li.dataset.kind, message: li.querySelector('.message').textContent })),
      stats: window.app.stats, // read together with the DOM: a block may arrive between two evaluates
    };
  });
}

async function state() {
  const response = await fetch(`${h.backend.http}/api/state`);
  assert.equal(response.status, 200);
  return response.json();
}

/** Every `stats` publication the page received, once and in order: contiguous offsets and heights. */
async function assertContiguous(page, who) {
  const { subscribed, received, anomalies } = await app(page, () => window.app);
  assert.deepEqual(anomalies, [], `${who}: publications out of sequence`);
  const first = subscribed[0].offset; // the first subscribe had no `recover`: live from here
  const offsets = received.map((r) => r.offset);
  assert.deepEqual(offsets, offsets.map((_, i) => first + 1 + i), `${who}: offsets received`);
  const heights = received.map((r) => r.height);
  assert.deepEqual(heights, heights.map((_, i) => heights[0] + i), `${who}: block heights received`);
  assert.equal(new Set(received.map((r) => r.epoch)).size, 1, `${who}: one epoch`);
  return received;
}

/** Waits until `page` has received the backend's newest stored `stats` (as of now). */
async function caughtUp(page) {
  const { published } = await state();
  await page.waitForFunction((offset) => (window.app.received.at(-1)?.offset ?? -1) >= offset, published.offset, { timeout: 20_000 });
  return published;
}

describe('validator-dashboard: two users, two gateway nodes behind HAProxy', { timeout: 240_000 }, () => {
  test('both users see blocks, validation counts and consensus move, and 2 connected', async () => {
    await h.contexts[0].routeWebSocket(/\/ws/, (ws) => (holdAlice ? ws.close({ code: 1011, reason: 'held by the test' }) : ws.connectToServer()));
    pages.alice = await openApp(0, 'alice');
    pages.bob = await openApp(1, 'bob');
    for (const [who, page] of Object.entries(pages)) {
      const first = await screen(page);
      // Three more blocks reach the page: the counters move.
      await page.waitForFunction((height) => Number(document.getElementById('height').dataset.height) >= height + 3, first.height, { timeout: 15_000 });
      const later = await screen(page);
      assert.ok(later.totalValidations > first.totalValidations, `${who}: validation count moved (${first.totalValidations} → ${later.totalValidations})`);
      const { stats } = later;
      assert.equal(later.height, stats.height);
      assert.equal(later.consensus, `${stats.consensus.toFixed(1)}%`, `${who}: consensus shown`);
      assert.ok(stats.consensus >= 0 && stats.consensus <= 100);
      assert.deepEqual(later.rows.map((r) => r.id), VALIDATOR_IDS, `${who}: one row per validator`);
      assert.deepEqual(later.rows.map((r) => r.validations), stats.validators.map((v) => v.validations), `${who}: per-validator counts shown`);
      assert.equal(later.rows[0].name, 'Aurora Labs', `${who}: names from validators.status`);
      assert.ok(later.height <= (await state()).height, `${who}: not ahead of the backend`);
      await page.locator('#connected', { hasText: '2 connected' }).waitFor({ timeout: 15_000 });
    }
    assert.ok((await h.nodeOf(pages.alice)) && (await h.nodeOf(pages.bob)), 'both pages know their node');
    await h.screenshot(pages.alice, 'alice-live');
  });

  test('the status rpc answer is shown', async () => {
    for (const [who, page] of Object.entries(pages)) {
      const shownBefore = (await screen(page)).height;
      await page.click('#status-btn');
      await page.waitForFunction(() => window.app.statusAnswers.length === 1);
      const [answer] = await app(page, () => window.app.statusAnswers);
      assert.ok(answer.height >= shownBefore, `${who}: the answer is the backend's current height`);
      assert.deepEqual(answer.validators.map((v) => v.id), VALIDATOR_IDS);
      assert.equal(answer.threshold, 66.7);
      const shown = (await screen(page)).statusResult;
      assert.match(shown, new RegExp(`^Status at block #${answer.height}: consensus ${answer.consensus.toFixed(1)}% \\((not )?final\\), \\d/5 validators up`), `${who}: ${shown}`);
    }
  });

  test('forbidden and unknown calls are refused, visibly for the page', async () => {
    await pages.bob.selectOption('#jail-target', 'aurora');
    await pages.bob.click('#jail-btn');
    const error = pages.bob.locator('#action-error');
    await error.waitFor({ state: 'visible' });
    assert.equal(await error.textContent(), 'Jail refused: jailing a validator is for admins only (code 1403)');
    const status = await app(pages.bob, () => window.app.client.rpc('validators.status'));
    assert.ok(status.validators.every((v) => v.status !== 'jailed'), 'nobody was jailed');
    // An unknown method of the route (the backend answers) and a method no route serves
    // (the gateway answers).
    const refusal = (method) => app(pages.bob, (m) => window.app.client.rpc(m).then(() => null, (e) => ({ code: e.code, message: e.message })), method);
    assert.deepEqual(await refusal('validators.reboot'), { code: 1404, message: 'unknown method validators.reboot' });
    assert.equal((await refusal('admin.reset'))?.code, 119, 'no route');
    await h.screenshot(pages.bob, 'bob-refused');
  });

  test('alice subscribes to alerts: she gets them, bob does not', async () => {
    await pages.alice.click('#alerts-btn');
    await pages.alice.locator('#alerts-state', { hasText: '(on)' }).waitFor();
    assert.deepEqual(Object.keys((await state()).alert_users), ['alice']);

    await pages.alice.selectOption('#jail-target', 'borealis');
    await pages.alice.click('#jail-btn');
    await pages.alice.locator('#status-result', { hasText: 'Borealis jailed until block #' }).waitFor();
    for (const page of Object.values(pages)) await page.locator('#validators tr[data-id=borealis][data-status=jailed]').waitFor({ timeout: 10_000 });
    await pages.alice.locator('#alerts li[data-kind=validator_jailed]', { hasText: 'Borealis jailed by Alice' }).waitFor({ timeout: 10_000 });
    // Six blocks later it is back, and alice is told.
    await pages.alice.locator('#alerts li[data-kind=validator_back]', { hasText: 'Borealis is back' }).waitFor({ timeout: 15_000 });
    await pages.bob.locator('#validators tr[data-id=borealis]:not([data-status=jailed])').waitFor({ timeout: 15_000 });

    const sent = (await state()).alert_users.alice.sent;
    await until(async () => (await app(pages.alice, () => window.app.alerts.length)) >= sent, `alice: ${sent} alerts`);
    const alerts = await app(pages.alice, () => window.app.alerts);
    assert.equal(new Set(alerts.map((a) => a.id)).size, alerts.length, 'each alert once');
    assert.deepEqual(await app(pages.bob, () => window.app.alerts), [], 'bob got no alert');
    assert.deepEqual((await screen(pages.bob)).alerts, []);
    assert.equal(await pages.bob.locator('#alerts-empty').isVisible(), true);
    await h.screenshot(pages.alice, 'alice-alerts');
  });

  test("kill -9 of alice's node: her page reconnects to the other node and misses no block", async () => {
    const victim = await h.nodeOf(pages.alice);
    const survivor = h.gateways.find((g) => g !== victim);
    const bobOnVictim = (await h.nodeOf(pages.bob)) === victim;

    // Alice's reconnect attempts are refused until the backend has published a few blocks
    // more, so there is something to recover whatever the SDK's (jittered, often tiny)
    // first delay; afterwards they go through to HAProxy again (see `holdAlice`).
    holdAlice = true;
    await h.kill9(victim);
    const heightBefore = (await app(pages.alice, () => window.app.received.at(-1))).height;
    await until(async () => (await state()).published?.height >= heightBefore + 5, 'five blocks published while alice is away', 30_000, 100);
    const away = await app(pages.alice, () => ({ state: window.app.state, nodes: window.app.nodes, subscribed: window.app.subscribed, last: window.app.received.at(-1) }));
    assert.notEqual(away.state, 'connected', `alice has no connection meanwhile: ${JSON.stringify(away)} (victim ${victim.name}, height before ${heightBefore})`);
    holdAlice = false;
    // The page reconnects by itself, through HAProxy, which can only pick the survivor.
    await pages.alice.waitForFunction((node) => window.app.state === 'connected' && window.app.node === node, survivor.name, { timeout: 30_000 });
    await pages.alice.waitForFunction(() => window.app.subscribed.some((e) => e.resubscribed));
    const resubscribed = (await app(pages.alice, () => window.app.subscribed)).filter((e) => e.resubscribed);
    assert.equal(resubscribed.length, 1, 'one resubscribe');
    assert.equal(resubscribed[0].recovered, true, 'recovered the missed blocks');
    assert.ok(resubscribed[0].missed >= 5, `recovered ${resubscribed[0].missed} blocks, at least the 5 published meanwhile`);
    await pages.alice.locator('#notice', { hasText: 'Reconnected to' }).waitFor();
    if (bobOnVictim) await pages.bob.waitForFunction((node) => window.app.node === node, survivor.name, { timeout: 30_000 });

    // Blocks go on (the backend's publications reach the survivor through HAProxy); both
    // pages catch up with the newest stored one.
    const published = await until(async () => {
      const s = await state();
      return s.published && s.published.height >= heightBefore + 10 && s.pending_publishes === 0 && s.published;
    }, 'the backend publishing again', 30_000, 200);
    for (const page of Object.values(pages)) await caughtUp(page);
    console.log(`# alice: reconnected to ${survivor.name}, recovered ${resubscribed[0].missed} missed block(s); backend retried ${(await state()).publish_retries} publish(es)`);

    for (const [who, page] of Object.entries(pages)) {
      const received = await assertContiguous(page, who);
      const heights = received.map((r) => r.height);
      assert.ok(heights.includes(heightBefore + 1) && heights.at(-1) >= published.height, `${who}: blocks across the kill (${heights[0]}…${heights.at(-1)})`);
      const shown = await screen(page);
      assert.equal(shown.height, shown.stats.height, `${who}: the newest block shown`);
      assert.ok(shown.height >= published.height, `${who}: at least block ${published.height} shown`);
    }

    // Alerts still reach alice (her personal channel was recovered too), once each.
    await pages.alice.selectOption('#jail-target', 'cygnus');
    await pages.alice.click('#jail-btn');
    await pages.alice.locator('#alerts li[data-kind=validator_jailed]', { hasText: 'Cygnus Node jailed by Alice' }).waitFor({ timeout: 10_000 });
    // Every alert the backend sent her, including any sent while her page had no connection.
    const sent = (await state()).alert_users.alice.sent;
    await until(async () => (await app(pages.alice, () => window.app.alerts.length)) >= sent, `alice: ${sent} alerts`);
    const alerts = await app(pages.alice, () => window.app.alerts);
    assert.equal(new Set(alerts.map((a) => a.id)).size, alerts.length, 'each alert once');
    assert.deepEqual(await app(pages.bob, () => window.app.alerts), [], 'bob got no alert');

    // The dead node's connection leaves when its presence entry expires: 2 connected again.
    for (const page of Object.values(pages)) await page.locator('#connected', { hasText: '2 connected' }).waitFor({ timeout: 30_000 });
    await h.screenshot(pages.alice, 'alice-recovered');
    await h.screenshot(pages.bob, 'bob-final');
  });

  test('no errors in the pages', () => {
    assert.deepEqual(h.pageErrors, []);
  });
});
