// examples/chat end to end: Redis, two gateway nodes behind HAProxy (the repository's
// config), the app's Python backend (hooks, RPC methods, lifecycle consumer), and the page
// in headless Chromium, one browser context per user: alice and bob (members of the
// conversation alice-bob) and eve (who is not). Other devices are SDK clients in Node.
//
// Asserts outcomes (what each page shows, compared with the backend's store), never
// timings: every wait is for a condition, bounded.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { ROOT, startHarness, until } from './harness.mjs';

const NAMES = { alice: 'Alice', bob: 'Bob', carol: 'Carol', eve: 'Eve' };
const DIRECT = 'alice-bob';
const GROUP = 'weekend-trip';
const PYTHON = process.env.PYTHON ?? 'python3';

let h;
const pages = {};

before(async () => {
  try {
    execFileSync(PYTHON, ['-c', 'import redis']);
  } catch {
    throw new Error(`${PYTHON} with redis-py is needed: pip install -r examples/chat/requirements.txt`);
  }
  h = await startHarness({
    app: 'chat',
    config: 'examples/chat/gateway.toml',
    contexts: 3,
    // A killed node's connections are recorded as disconnected ~3 s after its last beat
    // instead of ~15 s (lifecycle.node_ttl_ms).
    gatewayEnv: { SWITCHBOARD_LIFECYCLE__NODE_TTL_MS: '3000' },
    backend: ({ redisUrl, port, secret }) => ({
      command: PYTHON,
      args: [join(ROOT, 'examples/chat/backend/server.py')],
      env: { REDIS_URL: redisUrl, PORT: String(port), JWT_SECRET: secret, PYTHONUNBUFFERED: '1' },
    }),
    web: 'examples/chat/web',
  });
});

after(async () => {
  await h?.close();
});

const token = (user) => h.token(user, { info: { name: NAMES[user] } });

/** Opens the page as `user` in browser context `index` on `conversation`; waits until it is shown (or refused). */
async function openApp(index, user, conversation) {
  const page = await h.open(index, { conversation, token: token(user) }, user);
  await page.waitForFunction((c) => {
    const app = window.app;
    return app?.loaded && app.state === 'connected' && app.current === c && (app.subscribed.length > 0 || app.convError);
  }, conversation, { timeout: 20_000 });
  return page;
}

const app = (page, pick, arg) => page.evaluate(pick, arg);

/** What the page shows, read from the DOM. */
function screen(page) {
  return page.evaluate(() => {
    const $ = (id) => document.getElementById(id);
    const shown = (id) => (!$(id).hidden ? $(id).textContent : null);
    return {
      conversations: [...document.querySelectorAll('#conversations li')].map((li) => ({
        id: li.dataset.id,
        title: li.querySelector('.title').textContent,
        preview: li.querySelector('.preview').textContent,
        unread: li.querySelector('.badge').hidden ? 0 : Number(li.querySelector('.badge').textContent),
        online: li.querySelector('.presence').classList.contains('online'),
      })),
      title: $('conv-title').textContent,
      members: [...document.querySelectorAll('#members .member')].map((m) => ({ user: m.dataset.user, online: m.dataset.online === 'true' })),
      messages: [...document.querySelectorAll('#messages li.msg:not(.pending)')].map((li) => ({
        id: Number(li.dataset.id), seq: Number(li.dataset.seq), from: li.dataset.from,
        text: li.querySelector('.bubble').textContent, label: li.querySelector('.msgid').textContent,
      })),
      pending: document.querySelectorAll('#messages li.pending').length,
      seen: [...document.querySelectorAll('#messages .seen')].map((s) => ({ id: Number(s.closest('li').dataset.id), text: s.textContent })),
      typing: $('typing').textContent,
      convError: shown('conv-error'),
      sendError: shown('send-error'),
      inputDisabled: $('input').disabled,
    };
  });
}

async function getJson(path) {
  const response = await fetch(`${h.backend.http}${path}`);
  assert.equal(response.status, 200, path);
  return response.json();
}

/** The backend's store: a conversation's messages and read positions. */
const truth = (conversation) => getJson(`/api/conversations/${conversation}`);
/** The backend's online state: each user's connection ids (from the lifecycle stream). */
const online = () => getJson('/api/online');

/**
 * The page shows exactly the backend's messages of `conversation`: none missing, none
 * twice, nothing pending. Waits until the page and the store agree on how many there are
 * (a message in flight is pending on its sender's page until the backend stored it).
 */
async function assertShowsStore(page, who, conversation) {
  let t;
  await until(async () => {
    t = await truth(conversation);
    return page.evaluate((n) => window.app.messages.length === n && window.app.pending.length === 0, t.messages.length);
  }, `${who}: the page showing the stored messages of ${conversation}`, 20_000, 100);
  const shown = await screen(page);
  assert.deepEqual(
    shown.messages.map(({ id, seq, from, text, label }) => ({ id, seq, from, text, label })),
    t.messages.map(({ id, seq, from, text }) => ({ id, seq, from, text, label: `#${id}` })),
    `${who}: messages on screen`,
  );
  assert.equal(new Set(shown.messages.map((m) => m.id)).size, shown.messages.length, `${who}: no message twice`);
  assert.equal(shown.pending, 0, `${who}: nothing left pending`);
  return t;
}

/** Every run of the conversation's publications reached the page once each: contiguous offsets. */
async function assertContiguous(page, who) {
  const sessions = await app(page, () => window.app.sessions);
  for (const s of sessions) {
    assert.deepEqual(s.offsets, s.offsets.map((_, i) => s.from + 1 + i), `${who}: offsets received on ${s.channel} after ${s.from}`);
  }
}

async function send(page, text) {
  await page.fill('#input', text);
  await page.press('#input', 'Enter');
}

describe('chat: alice and bob, eve outside, two gateway nodes behind HAProxy', { timeout: 240_000 }, () => {
  test('alice and bob sign in: their conversations, and each sees the other online', async () => {
    pages.alice = await openApp(0, 'alice', DIRECT);
    pages.bob = await openApp(1, 'bob', GROUP);
    for (const [who, other] of [['alice', 'bob'], ['bob', 'alice']]) {
      const page = pages[who];
      // The other member's dot turns green once the backend saw their connect.
      await page.locator(`#conversations li[data-id=${DIRECT}][data-online=true]`).waitFor({ timeout: 15_000 });
      const shown = await screen(page);
      assert.deepEqual(shown.conversations.map((c) => c.id).sort(), [DIRECT, GROUP], `${who}: conversations`);
      assert.equal(shown.conversations.find((c) => c.id === DIRECT).title, NAMES[other], `${who}: the direct conversation's title`);
      assert.equal(shown.conversations.find((c) => c.id === GROUP).title, 'Weekend trip');
      assert.deepEqual(shown.messages, [], `${who}: no messages yet`);
      const presence = await app(page, () => window.app.presence);
      assert.deepEqual(presence, { [other]: true, carol: false }, `${who}: contacts' online state`);
    }
    const alice = await screen(pages.alice);
    assert.deepEqual(alice.members, [{ user: 'alice', online: true }, { user: 'bob', online: true }]);
    assert.ok(await h.nodeOf(pages.alice) && await h.nodeOf(pages.bob), 'both pages know their node');
  });

  test('alice sends a message: stored by the backend before the broadcast (its id on her page); bob gets an unread badge', async () => {
    const text = 'Hi Bob! Are you coming on Saturday?';
    await send(pages.alice, text);
    const t = await assertShowsStore(pages.alice, 'alice', DIRECT);
    assert.equal(t.messages.length, 1);
    assert.deepEqual([t.messages[0].seq, t.messages[0].from, t.messages[0].text], [1, 'alice', text]);
    assert.equal(typeof t.messages[0].id, 'number');
    assert.equal(typeof t.messages[0].ts, 'number');

    // Bob is reading the group: the direct conversation gets a badge and the preview.
    const badge = pages.bob.locator(`#conversations li[data-id=${DIRECT}] .badge`);
    await badge.waitFor({ state: 'visible' });
    assert.equal(await badge.textContent(), '1');
    const bob = await screen(pages.bob);
    assert.equal(bob.conversations.find((c) => c.id === DIRECT).preview, `Alice: ${text}`);
    assert.equal(bob.conversations.find((c) => c.id === GROUP).unread, 0);
    assert.deepEqual(await app(pages.bob, () => window.app.unread), { [DIRECT]: 1, [GROUP]: 0 });
    await h.screenshot(pages.bob, 'bob-unread');
  });

  test('bob opens the conversation: he reads it, his badge goes, alice sees "Seen by Bob"', async () => {
    await pages.bob.click(`#conversations li[data-id=${DIRECT}]`);
    await pages.bob.waitForFunction((c) => window.app.current === c && window.app.messages.length === 1, DIRECT);
    const t = await assertShowsStore(pages.bob, 'bob', DIRECT);
    const [message] = t.messages;

    await pages.bob.waitForFunction((c) => window.app.unread[c] === 0, DIRECT);
    assert.equal((await screen(pages.bob)).conversations.find((c) => c.id === DIRECT).unread, 0, 'no badge');
    await until(async () => (await truth(DIRECT)).reads.bob === 1, 'the backend stores bob read up to 1');

    const seen = pages.alice.locator(`#messages li[data-id="${message.id}"] .seen`);
    await seen.waitFor();
    assert.equal(await seen.textContent(), 'Seen by Bob');
    await h.screenshot(pages.alice, 'alice-seen');
  });

  test("typing: bob's typing shows on alice's page, live only, and is never stored", async () => {
    await pages.bob.click('#input');
    await pages.bob.locator('#input').pressSequentially('On my way', { delay: 30 });
    await pages.alice.locator('#typing', { hasText: 'Bob is typing…' }).waitFor();
    await h.screenshot(pages.alice, 'alice-typing');
    const typing = await app(pages.alice, () => window.app.typingReceived);
    assert.ok(typing.length >= 1 && typing.every((t) => t.user === 'bob' && t.offset === null), 'ephemeral: no offset');
    assert.ok(typing.some((t) => t.typing), 'a typing:true arrived');

    await pages.bob.press('#input', 'Enter');
    await pages.alice.waitForFunction(() => window.app.messages.some((m) => m.text === 'On my way'));
    // His message ends the indicator.
    await pages.alice.waitForFunction(() => window.app.typing.length === 0);
    assert.equal((await screen(pages.alice)).typing, '');

    // Never stored: neither in the channel's history nor in the backend.
    const history = await app(pages.alice, (c) => window.app.client.history(`conversation:${c}`), DIRECT);
    assert.deepEqual([...new Set(history.publications.map((p) => p.event))].sort(), ['message', 'read'], 'events in history');
    assert.equal(history.publications.filter((p) => p.event === 'message').length, 2);
    const t = await truth(DIRECT);
    assert.deepEqual(t.messages.map((m) => m.text), ['Hi Bob! Are you coming on Saturday?', 'On my way']);
    for (const [who, page] of Object.entries(pages)) await assertShowsStore(page, who, DIRECT);
  });

  test("rejected messages show the backend's error, and nothing is stored or shown", async () => {
    const before = await truth(DIRECT);
    await send(pages.bob, '   ');
    const error = pages.bob.locator('#send-error');
    await error.waitFor({ state: 'visible' });
    assert.equal(await error.textContent(), 'Not sent: message is empty (code 1400)');

    await send(pages.bob, 'x'.repeat(2001));
    await pages.bob.locator('#send-error', { hasText: 'too long' }).waitFor();
    assert.equal(await error.textContent(), 'Not sent: message too long: 2001 characters, at most 2000 (code 1413)');
    assert.equal((await pages.bob.inputValue('#input')).length, 2001, 'the text is given back to edit');
    assert.equal(await pages.bob.locator('#counter').textContent(), '2001 / 2000');
    assert.deepEqual((await app(pages.bob, () => window.app.sendErrors)).map((e) => e.code), [1400, 1413]);
    await h.screenshot(pages.bob, 'bob-rejected');

    assert.deepEqual((await truth(DIRECT)).messages, before.messages, 'the backend stored nothing');
    for (const [who, page] of Object.entries(pages)) await assertShowsStore(page, who, DIRECT);
    await pages.bob.fill('#input', '');
  });

  test('eve is not a member: her page shows the refusal, and she can neither read nor write', async () => {
    pages.eve = await openApp(2, 'eve', DIRECT);
    const shown = await screen(pages.eve);
    assert.equal(shown.convError, 'You cannot open this conversation: eve is not a member of this conversation (code 1403)');
    assert.deepEqual(await app(pages.eve, () => window.app.convError), { code: 1403, message: 'eve is not a member of this conversation' });
    assert.deepEqual(shown.messages, []);
    assert.equal(shown.inputDisabled, true);
    assert.deepEqual(shown.conversations.map((c) => [c.id, c.title]), [['carol-eve', 'Carol']], 'her own conversations only');
    await h.screenshot(pages.eve, 'eve-refused');

    // Not through the SDK either: publishing needs the subscription the hook refused.
    const refusals = await app(pages.eve, async (c) => {
      const codes = [];
      for (const attempt of [
        () => window.app.client.publish(`conversation:${c}`, { text: 'hi' }, { event: 'message' }),
        () => window.app.client.history(`conversation:${c}`),
        () => window.app.client.rpc('chat.get_conversation', { conversation: c }),
        () => window.app.client.rpc('chat.mark_read', { conversation: c, seq: 1 }),
      ]) {
        codes.push(await attempt().then(() => 'allowed', (error) => error.code));
      }
      return codes;
    }, DIRECT);
    assert.deepEqual(refusals, [107, 107, 1403, 1403]);
    assert.equal((await truth(DIRECT)).messages.length, 2);
    // Eve is not alice's contact (yet): alice is not told whether she is online.
    assert.equal((await app(pages.alice, () => window.app.presence)).eve, undefined);
  });

  test('alice adds eve to the group: it appears in her list, she may open it, and they see each other online', async () => {
    const direct = await app(pages.alice, (c) => window.app.client.rpc('chat.add_member', { conversation: c, user: 'eve' }).then(() => 'added', (e) => e.code), DIRECT);
    assert.equal(direct, 1400, 'a direct conversation stays between two');
    const summary = await app(pages.alice, (c) => window.app.client.rpc('chat.add_member', { conversation: c, user: 'eve' }), GROUP);
    assert.deepEqual(summary.members.map((m) => m.id), ['alice', 'bob', 'carol', 'eve']);
    assert.deepEqual((await truth(GROUP)).members, ['alice', 'bob', 'carol', 'eve']);

    await pages.eve.click(`#conversations li[data-id=${GROUP}]`);
    await pages.eve.waitForFunction((c) => window.app.current === c && window.app.subscribed.some((s) => s.channel === `conversation:${c}`), GROUP);
    const shown = await screen(pages.eve);
    assert.equal(shown.convError, null, 'no refusal any more');
    assert.equal(shown.inputDisabled, false);
    assert.equal(shown.title, 'Weekend trip');
    assert.deepEqual(shown.members.map((m) => m.user), ['alice', 'bob', 'carol', 'eve']);
    assert.deepEqual(shown.conversations.map((c) => c.id).sort(), ['carol-eve', GROUP]);
    // New contacts: each is told the other's online state.
    await pages.eve.waitForFunction(() => window.app.presence.alice === true && window.app.presence.bob === true);
    for (const page of [pages.alice, pages.bob]) await page.waitForFunction(() => window.app.presence.eve === true);
  });

  test('online state follows connections (lifecycle stream), and a resent message is stored once', async () => {
    // Carol connects from a phone: alice and bob see her online in the group.
    const carol = await h.nodeClient('carol', { info: { name: 'Carol' } });
    await carol.connect();
    for (const page of [pages.alice, pages.bob]) await page.waitForFunction(() => window.app.presence.carol === true);
    assert.equal((await online()).carol.connections.length, 1);

    // She posts in the group, and her phone resends it (same idempotency key, same cid),
    // as the SDK does after a lost connection: one publication, one stored message.
    const group = carol.subscribe(`conversation:${GROUP}`);
    const received = [];
    group.on('publication', (p) => received.push(p));
    await group.ready;
    const publish = () => carol.publish(`conversation:${GROUP}`, { text: 'Packing list?', cid: 'carol-1' }, { event: 'message', idempotencyKey: 'carol-1' });
    const first = await publish();
    assert.deepEqual(await publish(), first, 'the resend is answered like the first publish');
    const t = await truth(GROUP);
    assert.deepEqual(t.messages.map((m) => [m.from, m.text, m.cid]), [['carol', 'Packing list?', 'carol-1']]);
    // (Eve has the group open: her page reads it, so `read` events follow.)
    const messages = () => received.filter((p) => p.event === 'message');
    await until(() => messages().length === 1, 'carol receives her message');
    assert.deepEqual(messages()[0].data, t.messages[0], 'the publication carries the stored message');
    await until(async () => (await truth(GROUP)).reads.eve === 1, 'eve read it');
    assert.equal(messages().length, 1, 'published once');

    // Alice and bob read the direct conversation: the group gets an unread badge.
    for (const [who, page] of [['alice', pages.alice], ['bob', pages.bob]]) {
      await page.locator(`#conversations li[data-id=${GROUP}] .badge`, { hasText: '1' }).waitFor();
      assert.equal((await screen(page)).conversations[0].id, GROUP, `${who}: the newest conversation first`);
    }

    // Offline once no connection of hers came back within the backend's grace period.
    carol.disconnect();
    for (const page of [pages.alice, pages.bob]) await page.waitForFunction(() => window.app.presence.carol === false, null, { timeout: 20_000 });
    await until(async () => {
      const { carol: state } = await online();
      return state.connections.length === 0 && state.online === false;
    }, 'the backend records carol offline');
    assert.deepEqual((await app(pages.alice, () => window.app.presenceLog)).filter((p) => p.user === 'carol').map((p) => p.online), [false, true, false]);
  });

  test("kill -9 of alice's node: she reconnects through HAProxy, recovers, and no message is missing or doubled", async () => {
    const victim = await h.nodeOf(pages.alice);
    const survivor = h.gateways.find((g) => g !== victim);
    const bobOnVictim = (await h.nodeOf(pages.bob)) === victim;
    const aliceBefore = (await online()).alice.connections;

    // Bob's phone waits on the surviving node, to write while alice has no connection.
    const phone = await h.nodeClient('bob', { url: survivor.url, info: { name: 'Bob' } });
    await phone.connect();
    await phone.subscribe(`conversation:${DIRECT}`).ready;

    await h.kill9(victim);
    const killedAt = Date.now();
    // Alice writes at once: with no connection, it waits in the SDK's outbox.
    await send(pages.alice, 'No worries, take your time');
    for (const [i, text] of ['Train is late', 'ETA 20 minutes', 'Save me a seat'].entries()) {
      await phone.publish(`conversation:${DIRECT}`, { text, cid: `phone-${i}` }, { event: 'message', idempotencyKey: `phone-${i}` });
    }

    // The page reconnects by itself, through HAProxy, which can only pick the survivor.
    await pages.alice.waitForFunction((node) => window.app.state === 'connected' && window.app.node === node, survivor.name, { timeout: 30_000 });
    await pages.alice.waitForFunction(() => window.app.subscribed.some((e) => e.resubscribed));
    const resubscribed = (await app(pages.alice, () => window.app.subscribed)).filter((e) => e.resubscribed);
    assert.equal(resubscribed.length, 1, 'one resubscribe');
    assert.equal(resubscribed[0].recovered, true, 'recovered what it missed');
    const log = (await app(pages.alice, () => window.app.stateLog)).filter((s) => s.at >= killedAt - 1000);
    console.log(`# alice: ${log.map((s) => `${s.at - killedAt}ms ${s.state}${s.code ? ` ${s.code}` : ''}${s.reason ? ` (${s.reason})` : ''}`).join(' → ')}`);
    console.log(`# alice: reconnected to ${survivor.name} ${Date.now() - killedAt} ms after the kill, recovered ${resubscribed[0].missed} missed publication(s)`);
    if (bobOnVictim) {
      await pages.bob.waitForFunction((node) => window.app.state === 'connected' && window.app.node === node, survivor.name, { timeout: 30_000 });
    }

    // After the reconnect: bob answers from the page.
    await send(pages.bob, 'See you soon');
    await until(async () => (await truth(DIRECT)).messages.length === 7, 'the backend stores 7 messages');
    const t = await truth(DIRECT);
    assert.deepEqual(t.messages.map((m) => m.text).sort(), [
      'ETA 20 minutes', 'Hi Bob! Are you coming on Saturday?', 'No worries, take your time', 'On my way',
      'Save me a seat', 'See you soon', 'Train is late',
    ], 'each message stored once');
    assert.deepEqual(t.messages.map((m) => m.seq), t.messages.map((_, i) => i + 1));
    for (const [who, page] of [['alice', pages.alice], ['bob', pages.bob]]) {
      await assertShowsStore(page, who, DIRECT);
      await assertContiguous(page, who);
    }

    // Read receipts after the failover: alice's open page reads bob's newest message.
    const last = t.messages.at(-1);
    await until(async () => (await truth(DIRECT)).reads.alice === last.seq, 'alice read everything');
    const seen = pages.bob.locator(`#messages li[data-id="${last.id}"] .seen`);
    await seen.waitFor();
    assert.equal(await seen.textContent(), 'Seen by Alice');
    assert.equal((await screen(pages.alice)).typing, '', 'no typing indicator left');

    // The dead node's connection of alice is recorded as disconnected by the survivor
    // (lifecycle.node_ttl_ms): the backend holds exactly her new connection, still online.
    await until(async () => {
      const { alice } = await online();
      return alice.connections.length === 1 && !aliceBefore.includes(alice.connections[0]) && alice.online;
    }, "the backend drops alice's dead connection, and she is online", 20_000);
    await pages.bob.waitForFunction(() => window.app.presence.alice === true);
    const blinks = (await app(pages.bob, () => window.app.presenceLog)).filter((p) => p.user === 'alice' && !p.online);
    console.log(`# bob saw alice go offline ${blinks.length} time(s) during the failover`);
    phone.disconnect();

    await h.screenshot(pages.alice, 'alice-final');
    await h.screenshot(pages.bob, 'bob-final');
  });

  test('no errors in the pages', () => {
    assert.deepEqual(h.pageErrors, []);
  });
});
