// Reconnecting against one gateway on the embedded broker: restarts (which lose history),
// the outbox, a server that goes silent, and codes that forbid reconnecting.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { client, closeClients, config, next, record, startGateway, token, until, sleep } from './helpers/gateway.mjs';

// Server pings every second, so a silent (stopped) server is noticed in about 3 s.
const toml = config({ extra: '[heartbeat]\nping_interval_ms = 1000\npong_timeout_ms = 2000' });
let node;
before(async () => {
  node = await startGateway({ toml });
});
after(async () => {
  closeClients();
  await node?.stop();
});

/** What a fresh client reads from a channel's history. */
async function historyOf(channel) {
  const reader = client(node.url, { token: token('auditor') });
  await reader.connect();
  const { publications } = await reader.history(channel, { limit: 100 });
  reader.disconnect();
  return publications.map((p) => p.data);
}

describe('one gateway, embedded broker', { timeout: 60_000 }, () => {
  test('a restart loses the embedded history: the resubscribe says recovered: false', async () => {
    const eve = client(node.url, { token: token('eve') });
    await eve.connect();
    const room = eve.subscribe('chat:volatile');
    const { publications } = record(room);
    const first = await room.ready;
    await eve.publish('chat:volatile', { n: 1 });
    await until(() => publications.length === 1, 'the first publication');
    const disconnected = next(eve, 'disconnected');
    const resubscribed = next(room, 'subscribed', (e) => e.resubscribed);

    node = await node.restart();
    assert.equal((await disconnected).code, 3000);
    const again = await resubscribed;
    assert.equal(again.recovered, false);
    assert.notEqual(again.epoch, first.epoch);
    // Position continues in the new epoch; publications flow again.
    await eve.publish('chat:volatile', { n: 2 });
    await until(() => publications.length === 2, 'a publication after the restart');
    assert.equal(publications[1].epoch, again.epoch);
    assert.deepEqual(room.position, { epoch: again.epoch, offset: publications[1].offset });
  });

  test('server-side subscriptions end when the next connection does not renew them', async () => {
    const sid = client(node.url, { token: token('sid') });
    await sid.connect();
    const pushed = next(sid, 'subscribed', (sub) => sub.channel === 'chat:server-made');
    await node.api('POST', 'users/subscribe', { user: 'sid', channel: 'chat:server-made' });
    const sub = await pushed;
    const ended = next(sub, 'unsubscribed');
    const personal = sid.subscription('user:sid');
    const personalAgain = next(personal, 'subscribed', (e) => e.resubscribed);

    node = await node.restart(); // the reconnect sends the position of both in connect
    assert.match((await ended).reason, /not renewed/);
    assert.equal(sid.subscription('chat:server-made'), undefined);
    // The personal channel always comes back (here in a new epoch: the embedded broker restarted).
    assert.equal((await personalAgain).recovered, false);
    assert.equal(sid.subscription('user:sid'), personal);
  });

  test('a publish made while the gateway is down waits in the outbox and lands once', async () => {
    const otto = client(node.url, { token: token('otto') });
    await otto.connect();
    const lost = next(otto, 'disconnected');
    await node.stop();
    await lost;
    assert.notEqual(otto.state, 'connected');
    const publishing = otto.publish('chat:outbox', { text: 'sent while offline' });
    const rpcOffline = otto.presence('chat:outbox'); // not an outbox call: fails at once
    await assert.rejects(rpcOffline, (error) => error.kind === 'not_connected');
    await assert.rejects(otto.publish('chat:outbox', 1, { ephemeral: true }), (error) => error.kind === 'not_connected');

    node = await startGateway({ toml, listen: node.address });
    const result = await publishing;
    assert.equal(result.offset, 1);
    assert.deepEqual(await historyOf('chat:outbox'), [{ text: 'sent while offline' }]);
  });

  test('a silent server is noticed; a publish cut off before its answer is resent and lands once', async () => {
    const sam = client(node.url, { token: token('sam'), timeoutMs: 15_000 });
    await sam.connect();
    const lost = next(sam, 'disconnected');

    await node.pause(); // SIGSTOP: the socket stays open, the server says nothing
    const publishing = sam.publish('chat:silent', { text: 'once' });
    const disconnected = await lost;
    assert.match(disconnected.reason, /nothing from the server/);
    assert.equal(disconnected.reconnect, true);
    node.resume();

    // The resumed server may or may not read the first send from the dead socket: either
    // way the resend carries the same idempotency key and the publication exists once.
    const result = await publishing; // the server was stopped: answered on the new connection
    assert.equal(sam.state, 'connected');
    assert.deepEqual(await historyOf('chat:silent'), [{ text: 'once' }]);
    assert.equal(result.offset, 1);
  });

  test('force_disconnect (3504) stops the client: no reconnect', async () => {
    const fay = client(node.url, { token: token('fay') });
    await fay.connect();
    const states = [];
    fay.on('state', (e) => states.push(e));
    const disconnected = next(fay, 'disconnected');
    await node.api('POST', 'users/disconnect', { user: 'fay', reason: 'banned' });
    const event = await disconnected;
    assert.deepEqual(event, { code: 3504, reason: 'banned', reconnect: false });
    assert.equal(fay.state, 'closed');
    await sleep(500);
    assert.deepEqual(states.map((s) => s.state), ['closed']);
    await assert.rejects(fay.publish('chat:x', 1), (error) => error.kind === 'closed');
    // The application may start it again deliberately.
    await fay.connect();
    assert.equal(fay.state, 'connected');
  });

  test('an invalid token stops the client and rejects connect()', async () => {
    const mal = client(node.url, { token: 'not-a-jwt' });
    const states = [];
    mal.on('state', (e) => states.push(e.state));
    await assert.rejects(mal.connect(), (error) => error.kind === 'closed' && error.code === 113);
    await sleep(300);
    assert.deepEqual(states, ['connecting', 'closed']);
  });

  test('an expired token at connect is replaced by a fresh one from getToken', async () => {
    let calls = 0;
    const tia = client(node.url, {
      getToken: () => (++calls === 1 ? token('tia', { exp: Math.floor(Date.now() / 1000) - 120 }) : token('tia')),
    });
    const disconnected = next(tia, 'disconnected');
    await tia.connect();
    const first = await disconnected;
    assert.equal(first.code, 114);
    assert.equal(calls, 2);
    assert.equal(tia.connection.user, 'tia');
  });
});
