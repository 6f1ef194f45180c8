// examples/dao-voting end to end: Redis, two gateway nodes behind HAProxy (the
// repository's config), the app's Node backend, and the page in headless Chromium, one
// browser context per user (alice, bob). Other voters are SDK clients in Node.
//
// Asserts outcomes (what each page shows, compared with the backend's state), never
// timings: every wait is for a condition, bounded.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { ROOT, startHarness, until } from './harness.mjs';

const PROPOSAL = '1';
const NAMES = { alice: 'Alice', bob: 'Bob', carol: 'Carol', dave: 'Dave', erin: 'Erin', frank: 'Frank', grace: 'Grace', heidi: 'Heidi' };
const SHOWN = 20; // the page lists the newest 20 votes

let h;
const pages = {};

before(async () => {
  h = await startHarness({
    app: 'dao-voting',
    config: 'examples/dao-voting/gateway.toml',
    // A crashed node's viewers leave within ~8 s instead of ~40 s (presence expiry).
    gatewayEnv: { SWITCHBOARD_BROKER__PRESENCE_TTL_SECS: '6' },
    backend: ({ redisUrl, port, secret }) => ({
      command: process.execPath,
      args: [join(ROOT, 'examples/dao-voting/backend/server.mjs')],
      env: { REDIS_URL: redisUrl, PORT: String(port), JWT_SECRET: secret },
    }),
    web: 'examples/dao-voting/web',
  });
});

after(async () => {
  await h?.close();
});

/** Opens the page as `user` in browser context `index`, and waits until it shows the proposal. */
async function openApp(index, user) {
  const page = await h.open(index, { proposal: PROPOSAL, token: h.token(user, { info: { name: NAMES[user] } }) }, user);
  await ready(page);
  return page;
}

async function ready(page) {
  await page.waitForFunction(() => window.app?.loaded && window.app.state === 'connected' && window.app.personal.length > 0, null, { timeout: 20_000 });
}

const app = (page, pick, arg) => page.evaluate(pick, arg);

/** What the page shows, read from the DOM. */
function screen(page) {
  return page.evaluate(() => {
    const $ = (id) => document.getElementById(id);
    const text = (id) => $(id).textContent;
    return {
      title: text('title'),
      viewers: text('viewers'),
      votes: [...document.querySelectorAll('#votes li')].map((li) => ({
        seq: Number(li.dataset.seq), user: li.dataset.user, choice: li.dataset.choice, power: Number(li.dataset.power),
      })),
      tally: Object.fromEntries(['for', 'against', 'abstain'].map((c) => [c, { power: Number($(`${c}-text`).dataset.power), voters: Number($(`${c}-text`).dataset.voters) }])),
      quorumPower: Number($('quorum-text').dataset.power),
      quorumBanner: !$('quorum-banner').hidden,
      unread: $('unread').hidden ? 0 : Number(text('unread')),
      voteError: $('vote-error').hidden ? null : text('vote-error'),
      notifications: [...document.querySelectorAll('#notif-list li')].map((li) => ({
        read: li.classList.contains('read'), unread: li.classList.contains('unread'), title: li.querySelector('.title').textContent,
      })),
    };
  });
}

/** The backend's state of the proposal (its dev HTTP endpoint). */
async function truth() {
  const response = await fetch(`${h.backend.http}/api/proposals/${PROPOSAL}`);
  assert.equal(response.status, 200);
  return response.json();
}

/** What a page must show for the backend's state `t`. */
function expected(t) {
  return {
    votes: t.votes.slice(-SHOWN).reverse().map(({ seq, user, choice, power }) => ({ seq, user, choice, power })),
    tally: Object.fromEntries(['for', 'against', 'abstain'].map((c) => [c, { power: t.tally[c].power, voters: t.tally[c].votes }])),
    quorumPower: t.tally.total_power,
  };
}

async function assertMatchesBackend(page, who) {
  const t = await truth();
  await page.waitForFunction((seq) => window.app.tally?.seq === seq, t.tally.seq, { timeout: 15_000 });
  const shown = await screen(page);
  const want = expected(t);
  assert.deepEqual(shown.votes, want.votes, `${who}: recent votes on screen`);
  assert.deepEqual(shown.tally, want.tally, `${who}: tally on screen`);
  assert.equal(shown.quorumPower, want.quorumPower, `${who}: quorum progress on screen`);
  // Every vote the page holds (not only the 20 shown), once and in order.
  const held = await app(page, () => window.app.votes.map((v) => `${v.seq}:${v.user}`));
  assert.deepEqual(held, t.votes.map((v) => `${v.seq}:${v.user}`), `${who}: votes held by the page`);
  return t;
}

/** The page received every publication of the proposal channel once: contiguous offsets. */
async function assertContiguous(page, who, t) {
  const { subscribed, received, anomalies } = await app(page, () => window.app);
  assert.deepEqual(anomalies, [], `${who}: publications out of sequence`);
  const first = subscribed[0].offset; // the first subscribe had no `recover`: live from here
  const offsets = received.map((r) => r.offset);
  assert.deepEqual(offsets, offsets.map((_, i) => first + 1 + i), `${who}: offsets received`);
  assert.equal(new Set(received.map((r) => r.epoch)).size <= 1, true, `${who}: one epoch`);
  if (received.length > 0) assert.equal(offsets.at(-1), t.position.offset, `${who}: up to the backend's last publication`);
}

describe('dao-voting: two users, two gateway nodes behind HAProxy', { timeout: 240_000 }, () => {
  test('both users see the proposal, and two viewers', async () => {
    pages.alice = await openApp(0, 'alice');
    pages.bob = await openApp(1, 'bob');
    for (const [who, page] of Object.entries(pages)) {
      await page.locator('#title', { hasText: 'Marketing Budget Allocation' }).waitFor();
      await page.locator('#viewers', { hasText: '2 watching' }).waitFor({ timeout: 15_000 });
      const shown = await screen(page);
      assert.deepEqual(shown.votes, [], `${who}: no votes yet`);
      assert.equal(shown.quorumBanner, false);
    }
    const nodes = [await h.nodeOf(pages.alice), await h.nodeOf(pages.bob)];
    assert.ok(nodes.every(Boolean), 'both pages know their node');
  });

  test('alice votes: both pages show the tally move and her vote', async () => {
    await pages.alice.click('button[data-choice=for]');
    await pages.alice.locator('#vote-status', { hasText: 'recorded: FOR with 120 votes' }).waitFor();
    for (const [who, page] of Object.entries(pages)) {
      await page.locator('#votes li[data-user=alice]').waitFor();
      const t = await assertMatchesBackend(page, who);
      assert.equal(t.tally.for.power, 120);
      assert.equal((await screen(page)).quorumBanner, false);
    }
  });

  test('bob votes: quorum reached, the event reaches both pages', async () => {
    await pages.bob.click('button[data-choice=against]');
    for (const [who, page] of Object.entries(pages)) {
      await page.locator('#quorum-banner').waitFor({ state: 'visible' });
      await page.waitForFunction(() => window.app.quorumEvents.length === 1);
      const event = await app(page, () => window.app.quorumEvents[0]);
      assert.equal(event.reached_by, 'bob', `${who}: quorum_reached event`);
      assert.equal(event.total_power, 420);
      await assertMatchesBackend(page, who);
    }
    await h.screenshot(pages.bob, 'bob-quorum');
  });

  test("alice's second vote is refused, visibly, and the tally does not move", async () => {
    const before = await truth();
    await pages.alice.click('button[data-choice=against]');
    const error = pages.alice.locator('#vote-error');
    await error.waitFor({ state: 'visible' });
    assert.match(await error.textContent(), /already voted on proposal 1 \(FOR\).*1409/);
    const [refusal] = await app(pages.alice, () => window.app.voteErrors);
    assert.equal(refusal.code, 1409);
    const t = await truth();
    assert.deepEqual(t.votes, before.votes, 'the backend recorded nothing');
    for (const [who, page] of Object.entries(pages)) await assertMatchesBackend(page, who);
    await h.screenshot(pages.alice, 'alice-refused');
  });

  test('alice reads her notification; after a reload it stays read', async () => {
    const page = pages.alice;
    await page.waitForFunction(() => window.app.unread === 1);
    let shown = await screen(page);
    assert.equal(shown.unread, 1, 'the bell shows 1');
    const [note] = await app(page, () => window.app.notifications);
    assert.equal(note.priority, 'high');
    assert.equal(note.title, 'Quorum reached');

    await page.click('#bell');
    await page.locator('#notif-list li.unread').waitFor();
    await page.click('#mark-read');
    // The ack reached the gateway (its reply came back), so the read state is stored.
    await page.waitForFunction((offset) => window.app.ackedOffset === offset, note.offset);
    shown = await screen(page);
    assert.equal(shown.unread, 0);

    await page.reload();
    await ready(page);
    // The read notification comes back from history, as read; nothing unread is delivered.
    await page.waitForFunction(() => window.app.notifications.length === 1);
    const [personal] = await app(page, () => window.app.personal);
    assert.equal(personal.missed, 0, 'offline delivery resumed after the acked position');
    assert.equal(personal.recovered, true);
    shown = await screen(page);
    assert.equal(shown.unread, 0, 'unread count after the reload');
    assert.equal(await page.locator('#unread').isVisible(), false, 'no badge');
    assert.deepEqual(shown.notifications.map((n) => [n.title, n.read, n.unread]), [['Quorum reached', true, false]]);
    // The page after the reload shows the same proposal state.
    await assertMatchesBackend(page, 'alice (reloaded)');
    await page.locator('#viewers', { hasText: '2 watching' }).waitFor({ timeout: 15_000 });
  });

  test('a notification that arrives after marking read stays unread across a reload', async () => {
    const page = pages.alice;
    // Bob votes on proposal 2, which alice wrote: she is told (medium priority), live.
    const bob = await h.nodeClient('bob', { info: { name: 'Bob' } });
    await bob.connect();
    await bob.rpc('dao.cast_vote', { proposal: '2', choice: 'for' });
    await page.waitForFunction(() => window.app.unread === 1 && window.app.notifications.length === 2);
    const fresh = (await app(page, () => window.app.notifications)).find((n) => !n.read);
    assert.deepEqual([fresh.type, fresh.priority, fresh.proposal], ['vote', 'medium', '2']);

    await page.reload();
    await ready(page);
    await page.waitForFunction(() => window.app.notifications.length === 2);
    const [personal] = await app(page, () => window.app.personal);
    assert.equal(personal.missed, 1, 'offline delivery: only the unacknowledged notification');
    assert.equal(personal.recovered, true, 'complete: it starts right after the acked position');
    const shown = await screen(page);
    assert.equal(shown.unread, 1);
    assert.deepEqual(shown.notifications.map((n) => [n.title, n.read]), [['New vote on your proposal', false], ['Quorum reached', true]]);
    await assertMatchesBackend(page, 'alice (reloaded)');
    await page.locator('#viewers', { hasText: '2 watching' }).waitFor({ timeout: 15_000 });
  });

  test("kill -9 of alice's node: she reconnects through HAProxy to the other node and misses nothing", async () => {
    const victim = await h.nodeOf(pages.alice);
    const survivor = h.gateways.find((g) => g !== victim);
    const bobOnVictim = (await h.nodeOf(pages.bob)) === victim;

    // Carol (the proposal's author) and Dave wait on the surviving node, to vote while
    // alice's page has no connection. Carol records her personal channel from the start.
    const carolNotes = [];
    const carol = await h.nodeClient('carol', { url: survivor.url, info: { name: 'Carol' } });
    carol.on('subscribed', (sub) => sub.channel === 'user:carol' && sub.on('publication', (p) => carolNotes.push(p.data)));
    const dave = await h.nodeClient('dave', { url: survivor.url, info: { name: 'Dave' } });
    await Promise.all([carol.connect(), dave.connect()]);

    await h.kill9(victim);
    // One after the other, so the order of the votes is known.
    assert.ok((await carol.rpc('dao.cast_vote', { proposal: PROPOSAL, choice: 'for' })).accepted);
    assert.ok((await dave.rpc('dao.cast_vote', { proposal: PROPOSAL, choice: 'against' })).accepted);

    // The page reconnects by itself, through HAProxy, which can only pick the survivor.
    await pages.alice.waitForFunction((node) => window.app.state === 'connected' && window.app.node === node, survivor.name, { timeout: 30_000 });
    await pages.alice.waitForFunction(() => window.app.subscribed.some((e) => e.resubscribed));
    const resubscribed = (await app(pages.alice, () => window.app.subscribed)).filter((e) => e.resubscribed);
    assert.equal(resubscribed.length, 1, 'one resubscribe');
    assert.equal(resubscribed[0].recovered, true, 'recovered the missed tallies');
    console.log(`# alice: reconnected to ${survivor.name}, recovered ${resubscribed[0].missed} missed publication(s)`);

    // More votes after the reconnect, through HAProxy; a member without power is refused.
    for (const [user, choice] of [['erin', 'abstain'], ['frank', 'for'], ['grace', 'for']]) {
      const voter = await h.nodeClient(user, { info: { name: NAMES[user] } });
      await voter.connect();
      const key = `vote-${user}-1`;
      const first = await voter.rpc('dao.cast_vote', { proposal: PROPOSAL, choice }, { idempotencyKey: key });
      // A resend with the same key (what the SDK does after a lost connection) is the
      // same call: the first answer again, not "already voted", and no second vote.
      const resent = await voter.rpc('dao.cast_vote', { proposal: PROPOSAL, choice }, { idempotencyKey: key });
      assert.deepEqual(resent, first, `${user}: resend answered like the first call`);
    }
    const heidi = await h.nodeClient('heidi');
    await heidi.connect();
    await assert.rejects(heidi.rpc('dao.cast_vote', { proposal: PROPOSAL, choice: 'for' }), (error) => error.code === 1403);

    const t = await truth();
    assert.deepEqual(t.votes.map((v) => v.user), ['alice', 'bob', 'carol', 'dave', 'erin', 'frank', 'grace']);
    for (const [who, page] of Object.entries(pages)) {
      await assertMatchesBackend(page, who);
      await assertContiguous(page, who, t);
      // No refetch was needed: recovery filled the gap (one snapshot since the page loaded).
      assert.equal(await app(page, () => window.app.snapshots), 1, `${who}: snapshots loaded`);
      assert.equal((await app(page, () => window.app.quorumEvents)).length, who === 'alice' ? 0 : 1, `${who}: quorum events`);
    }
    // Alice's notifications were not delivered again by the reconnect (it recovers from
    // the page's own position, not from the acknowledged one).
    const notes = await app(pages.alice, () => window.app.notifications.map((n) => [n.title, n.read]));
    assert.deepEqual(notes, [['New vote on your proposal', false], ['Quorum reached', true]]);
    if (bobOnVictim) {
      await pages.bob.waitForFunction((node) => window.app.node === node, survivor.name, { timeout: 30_000 });
    }
    // The dead node's connection leaves when its presence entry expires: 2 viewers again.
    for (const page of Object.values(pages)) await page.locator('#viewers', { hasText: '2 watching' }).waitFor({ timeout: 30_000 });

    // The author's notifications: each vote on her proposal (medium until quorum, low
    // after), and the quorum (high); none for her own vote.
    await until(() => carolNotes.length === 7, 'carol: 7 notifications');
    assert.deepEqual(carolNotes.map((n) => [n.type, n.priority]), [
      ['vote', 'medium'], ['vote', 'medium'], ['quorum', 'high'], ['vote', 'low'], ['vote', 'low'], ['vote', 'low'], ['vote', 'low'],
    ]);
    assert.deepEqual(carolNotes.filter((n) => n.type === 'vote').map((n) => n.message.split(' ')[0]), ['Alice', 'Bob', 'Dave', 'Erin', 'Frank', 'Grace']);

    // Final screens, then alice's notifications (one read, one unread) opened.
    await h.screenshot(pages.alice, 'alice-final');
    await pages.bob.locator('#unread', { hasText: '1' }).waitFor();
    await h.screenshot(pages.bob, 'bob-final');
    await pages.alice.click('#bell');
    await pages.alice.locator('#notif-list li.read').waitFor();
    await h.screenshot(pages.alice, 'alice-notifications');
  });

  test('no errors in the pages', () => {
    assert.deepEqual(h.pageErrors, []);
  });
});
