// examples/portfolio end to end: Redis, two gateway nodes behind HAProxy, the app's Node
// backend (rpc through the gateways' HTTP route; publications and server-side
// subscriptions through their HTTP API, by HAProxy's address), and the page in headless
// Chromium, one browser context per user: alice and bob.
//
// The pages name topics, never channels: the backend attaches portfolio:<user>,
// kyc:<user> and governance:all with POST /api/v1/users/subscribe. Asserts outcomes (what
// each page received and shows, compared with the backend's publications and the
// channels' offsets), never timings: every wait is for a condition, bounded.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { ROOT, startHarness, until } from './harness.mjs';

const APP = join(ROOT, 'examples/portfolio');
const TOPICS = ['portfolio', 'kyc', 'governance'];
const channelsOf = (user) => ({ portfolio: `portfolio:${user}`, kyc: `kyc:${user}`, governance: 'governance:all' });

let h;
const pages = {};
// While true, alice's browser refuses her page's new WebSocket connections (see the
// validator-dashboard test): set on her context before her page opens.
let holdAlice = false;

before(async () => {
  h = await startHarness({
    app: 'portfolio',
    config: join(APP, 'gateway.toml'),
    // The route's URL in gateway.toml: the harness points it at the backend's port.
    httpRoute: 'http://127.0.0.1:3006/rpc',
    gatewayEnv: { SWITCHBOARD_BROKER__PRESENCE_TTL_SECS: '6' },
    // The backend uses the API through HAProxy (`lb`), so a dead node does not stop it.
    backend: ({ secret, port, lb }) => {
      return {
        command: process.execPath,
        args: [join(APP, 'backend/server.mjs')],
        env: { PORT: String(port), GATEWAY_API: lb.http, JWT_SECRET: secret, KYC_STEP_MS: '1000', PROPOSAL_MS: '1000' },
      };
    },
    web: 'examples/portfolio/web',
  });
});

after(async () => {
  await h?.close();
});

async function openApp(index, user) {
  const page = await h.open(index, { token: h.token(user, { info: { name: user } }) }, user);
  await page.waitForFunction(() => window.app?.state === 'connected', null, { timeout: 20_000 });
  return page;
}

const app = (page, pick, arg) => page.evaluate(pick, arg);

async function state() {
  const response = await fetch(`${h.backend.http}/api/state`);
  assert.equal(response.status, 200);
  return response.json();
}

/** Clicks a topic's toggle and waits until the page's wish is `on`. */
async function toggle(page, topic, on) {
  await page.click(`#toggle-${topic}`);
  await page.waitForFunction(([t, o]) => window.app.topics[t] === o, [topic, on], { timeout: 10_000 });
}

/** Every valuation the page received, once and in order: contiguous offsets and sequence numbers. */
async function assertContiguous(page, who) {
  const { attached, valuations, anomalies, foreign } = await app(page, () => window.app);
  assert.deepEqual(anomalies, [], `${who}: publications out of sequence`);
  assert.deepEqual(foreign, [], `${who}: only their own data`);
  const first = attached.find((a) => a.topic === 'portfolio').offset; // attached live, no position
  const offsets = valuations.map((v) => v.offset);
  assert.deepEqual(offsets, offsets.map((_, i) => first + 1 + i), `${who}: portfolio offsets received`);
  const seqs = valuations.map((v) => v.seq);
  assert.deepEqual(seqs, seqs.map((_, i) => seqs[0] + i), `${who}: valuation sequence numbers`);
  assert.equal(new Set(valuations.map((v) => v.epoch)).size, 1, `${who}: one epoch`);
  return valuations;
}

describe('portfolio: two users, per-user channels attached server-side, two nodes behind HAProxy', { timeout: 240_000 }, () => {
  test('each user turns the three topics on and sees only their own portfolio and KYC status', async () => {
    await h.contexts[0].routeWebSocket(/\/ws/, (ws) => (holdAlice ? ws.close({ code: 1011, reason: 'held by the test' }) : ws.connectToServer()));
    pages.alice = await openApp(0, 'alice');
    pages.bob = await openApp(1, 'bob');
    for (const [who, page] of Object.entries(pages)) {
      for (const topic of TOPICS) await toggle(page, topic, true);
      const channels = channelsOf(who);
      // Three valuations, two proposals and the whole KYC review reach the page.
      await page.waitForFunction(() => window.app.valuations.length >= 3 && window.app.proposals.length >= 2, null, { timeout: 20_000 });
      await page.locator('#kyc-badge[data-status=approved]').waitFor({ timeout: 20_000 });
      const seen = await app(page, () => ({
        attached: window.app.attached, kyc: window.app.kyc.map((k) => k.status), total: Number(document.getElementById('total').dataset.value),
        rows: document.querySelectorAll('#positions tr').length, subs: window.app.client.subscriptions().map((s) => s.channel),
        last: window.app.valuations.at(-1),
      }));
      assert.deepEqual(seen.attached.map((a) => a.channel).sort(), Object.values(channels).sort(), `${who}: the backend attached their channels`);
      assert.ok(seen.attached.every((a) => a.serverSide), `${who}: server-side subscriptions`);
      assert.deepEqual(seen.kyc, ['pending', 'review', 'approved'], `${who}: KYC transitions in order`);
      assert.equal(seen.rows, 3, `${who}: three positions shown`);
      assert.equal(seen.total, seen.last.total, `${who}: the newest valuation shown`);
      assert.deepEqual(seen.subs.sort(), [`user:${who}`, ...Object.values(channels)].sort(), `${who}: no other channel`);
    }
    // The two portfolios differ (alice holds far more), and neither page got the other's data.
    const alice = await app(pages.alice, () => window.app.valuations.at(-1).total);
    const bob = await app(pages.bob, () => window.app.valuations.at(-1).total);
    assert.ok(alice > 10 * bob, `alice's portfolio (${alice}) is not bob's (${bob})`);
    for (const [who, page] of Object.entries(pages)) await assertContiguous(page, who);
    assert.deepEqual(Object.keys((await state()).users).sort(), ['alice', 'bob']);
    await h.screenshot(pages.alice, 'alice-live');
    await h.screenshot(pages.bob, 'bob-live');
  });

  test("bob's direct subscribe to alice's channels is refused, visibly", async () => {
    for (const channel of ['portfolio:alice', 'kyc:alice']) {
      await pages.bob.fill('#direct-channel', channel);
      await pages.bob.click('#direct-btn');
      await pages.bob.locator('#errors li', { hasText: `Subscribe to ${channel} refused` }).waitFor({ timeout: 10_000 });
    }
    const direct = await app(pages.bob, () => window.app.direct);
    assert.deepEqual(direct.map((d) => [d.channel, d.ok, d.code]), [['portfolio:alice', false, 107], ['kyc:alice', false, 107]]);
    const shown = await pages.bob.locator('#errors li').allTextContents();
    assert.ok(shown.every((text) => text.endsWith('(code 107)')), `bob sees the refusals: ${JSON.stringify(shown)}`);
    const subs = await app(pages.bob, () => window.app.client.subscriptions().map((s) => s.channel));
    assert.ok(!subs.some((c) => c.endsWith(':alice')), `bob holds none of alice's channels: ${subs}`);
    assert.deepEqual(await app(pages.bob, () => window.app.foreign), []);
    // Unknown topics are refused by the backend, visibly too.
    const refusal = await app(pages.bob, () => window.app.client.rpc('portfolio.subscribe_topic', { topic: 'portfolio:alice' }).then(() => null, (e) => e.code));
    assert.equal(refusal, 1400);
    await h.screenshot(pages.bob, 'bob-refused');
  });

  test('unsubscribing stops the updates of that topic', async () => {
    await toggle(pages.bob, 'portfolio', false);
    await toggle(pages.bob, 'governance', false);
    await pages.bob.waitForFunction(() => ['portfolio', 'governance'].every((t) => window.app.detached.some((d) => d.topic === t)), null, { timeout: 10_000 });
    const detached = await app(pages.bob, () => window.app.detached);
    assert.deepEqual(detached.map((d) => d.reason).sort(), ['governance turned off', 'portfolio turned off']);
    const before = await app(pages.bob, () => ({ valuations: window.app.valuations.length, proposals: window.app.proposals.length, positions: window.app.positions }));
    // The channels go on (the backend still values bob's portfolio, proposals keep coming):
    // three more publications in each, none reaches bob.
    await until(async () => {
      const { published } = await state();
      return published['portfolio:bob'].offset >= before.positions['portfolio:bob'].offset + 3 &&
        published['governance:all'].offset >= before.positions['governance:all'].offset + 3;
    }, 'three more publications in portfolio:bob and governance:all', 20_000, 100);
    // Alice, still on governance, has them: they were delivered.
    const govOffset = (await state()).published['governance:all'].offset;
    await pages.alice.waitForFunction((o) => (window.app.positions['governance:all']?.offset ?? 0) >= o, govOffset, { timeout: 10_000 });
    const afterwards = await app(pages.bob, () => ({ valuations: window.app.valuations.length, proposals: window.app.proposals.length }));
    assert.deepEqual(afterwards, { valuations: before.valuations, proposals: before.proposals }, 'bob got nothing after unsubscribing');
    assert.equal(await pages.bob.textContent('#total-sub'), 'not subscribed');
  });

  test("kill -9 of alice's node: her page reconnects, the backend re-attaches her topics, no valuation missed or repeated", async () => {
    const victim = await h.nodeOf(pages.alice);
    const survivor = h.gateways.find((g) => g !== victim);
    const bobOnVictim = (await h.nodeOf(pages.bob)) === victim;

    holdAlice = true;
    await h.kill9(victim);
    const lastBefore = await app(pages.alice, () => window.app.valuations.at(-1));
    await until(async () => (await state()).published['portfolio:alice']?.offset >= lastBefore.offset + 5, 'five valuations published while alice is away', 30_000, 100);
    const away = await app(pages.alice, () => window.app.state);
    assert.notEqual(away, 'connected', 'alice has no connection meanwhile');
    holdAlice = false;

    await pages.alice.waitForFunction((node) => window.app.state === 'connected' && window.app.node === node, survivor.name, { timeout: 30_000 });
    // The page asked for her three topics again with its positions: three new attaches.
    await pages.alice.waitForFunction(() => ['portfolio', 'kyc', 'governance'].every((t) => window.app.attached.some((a) => a.topic === t && a.again)), null, { timeout: 20_000 });
    const again = (await app(pages.alice, () => window.app.attached)).filter((a) => a.again);
    assert.deepEqual(again.map((a) => a.topic).sort(), ['governance', 'kyc', 'portfolio'], 'each topic once');
    const portfolio = again.find((a) => a.topic === 'portfolio');
    assert.equal(portfolio.recovered, true, 'recovered the missed valuations');
    assert.ok(portfolio.missed >= 5, `recovered ${portfolio.missed} valuations, at least the 5 published meanwhile`);
    await pages.alice.locator('#notice', { hasText: 'Reconnected to' }).waitFor();
    if (bobOnVictim) await pages.bob.waitForFunction((node) => window.app.state === 'connected' && window.app.node === node, survivor.name, { timeout: 30_000 });

    // Valuations go on; alice catches up with the newest stored one.
    const published = await until(async () => {
      const s = await state();
      const p = s.published['portfolio:alice'];
      return p.offset >= lastBefore.offset + 10 && s.pending_publishes === 0 && p;
    }, 'the backend publishing again', 30_000, 200);
    await pages.alice.waitForFunction((o) => (window.app.valuations.at(-1)?.offset ?? 0) >= o, published.offset, { timeout: 20_000 });
    const valuations = await assertContiguous(pages.alice, 'alice');
    const offsets = valuations.map((v) => v.offset);
    assert.ok(offsets.includes(lastBefore.offset + 1) && offsets.at(-1) >= published.offset, `alice: valuations across the kill (${offsets[0]}…${offsets.at(-1)})`);
    console.log(`# alice: reconnected to ${survivor.name}, recovered ${portfolio.missed} missed valuation(s)`);

    // Governance reaches her again, and bob (only KYC on) still gets nothing of alice's.
    const gov = (await state()).published['governance:all'].offset;
    await pages.alice.waitForFunction((o) => (window.app.positions['governance:all']?.offset ?? 0) >= o + 1, gov, { timeout: 15_000 });
    assert.deepEqual(await app(pages.alice, () => window.app.anomalies), []);
    for (const page of Object.values(pages)) assert.deepEqual(await app(page, () => window.app.foreign), []);
    await h.screenshot(pages.alice, 'alice-recovered');
    await h.screenshot(pages.bob, 'bob-final');
  });

  test('no errors in the pages', () => {
    assert.deepEqual(h.pageErrors, []);
  });
});
