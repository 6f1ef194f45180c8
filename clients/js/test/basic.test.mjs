// Connect, subscribe, publish, receive; presence, history, ack; server-side subscriptions;
// MessagePack. One gateway (embedded broker) for the file.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { msgpack } from '../dist/msgpack.js';
import { SwitchboardError } from '../dist/index.js';
import { client, closeClients, next, record, startGateway, token, until } from './helpers/gateway.mjs';

let node;
before(async () => {
  node = await startGateway();
});
after(async () => {
  closeClients();
  await node?.stop();
});

describe('one gateway', { timeout: 60_000 }, () => {
  test('connects, subscribes, publishes and receives with the epoch filled in', async () => {
    const alice = client(node.url, { token: token('alice', { info: { name: 'Alice' } }) });
    const states = [];
    alice.on('state', (e) => states.push(e.state));
    const connected = next(alice, 'connected');
    await alice.connect();
    const info = await connected;
    assert.equal(info.user, 'alice');
    assert.ok(info.pingIntervalMs > 0);
    assert.deepEqual(states, ['connecting', 'connected']);

    const room = alice.subscribe('chat:basics');
    const { publications } = record(room);
    const subscribed = await room.ready;
    assert.equal(subscribed.channel, 'chat:basics');
    assert.equal(subscribed.resubscribed, false);
    assert.equal(room.state, 'subscribed');

    const result = await alice.publish('chat:basics', { text: 'hello' }, { event: 'msg' });
    assert.equal(result.epoch, subscribed.epoch);
    await until(() => publications.length === 1, 'the publication');
    const [p] = publications;
    assert.deepEqual(p.data, { text: 'hello' });
    assert.equal(p.event, 'msg');
    assert.equal(p.offset, result.offset);
    // The server leaves the epoch out of the frame (§5.1.1); the client puts it back.
    assert.equal(p.epoch, subscribed.epoch);
    assert.equal(p.from.user, 'alice');
    assert.deepEqual(p.from.info, { name: 'Alice' });
    assert.deepEqual(room.position, { epoch: subscribed.epoch, offset: result.offset });

    // Ephemeral: live only, no offset.
    const ephemeral = await alice.publish('chat:basics', { typing: true }, { ephemeral: true });
    assert.deepEqual(ephemeral, {});
    await until(() => publications.length === 2, 'the ephemeral publication');
    assert.equal(publications[1].offset, undefined);

    await room.unsubscribe();
    assert.equal(room.state, 'unsubscribed');
    assert.equal(alice.subscription('chat:basics'), undefined);
  });

  test('a refused subscription rejects `ready` and ends with the server code', async () => {
    const carol = client(node.url, { token: token('carol') });
    await carol.connect();
    const other = carol.subscribe('user:dave');
    const unsubscribed = next(other, 'unsubscribed');
    await assert.rejects(other.ready, (error) => error instanceof SwitchboardError && error.code === 107);
    assert.match((await unsubscribed).reason, /107/);
    await assert.rejects(carol.presence('nope:x'), (error) => error.kind === 'server' && error.code === 106);
  });

  test('two users see each other in presence and join/leave', async () => {
    const ann = client(node.url, { token: token('ann', { info: { name: 'Ann' } }) });
    const bob = client(node.url, { token: token('bob') });
    await Promise.all([ann.connect(), bob.connect()]);
    const annRoom = ann.subscribe('chat:presence');
    await annRoom.ready;
    const joined = next(annRoom, 'join', (c) => c.user === 'bob');
    const bobRoom = bob.subscribe('chat:presence');
    await bobRoom.ready;
    assert.equal((await joined).user, 'bob');

    const { clients } = await ann.presence('chat:presence');
    assert.deepEqual(clients.map((c) => c.user).sort(), ['ann', 'bob']);
    assert.deepEqual(clients.find((c) => c.user === 'ann').info, { name: 'Ann' });
    assert.deepEqual(await bob.presenceStats('chat:presence'), { clients: 2, users: 2 });

    const left = next(annRoom, 'leave', (c) => c.user === 'bob');
    bob.disconnect();
    assert.equal((await left).user, 'bob');
    assert.deepEqual(await ann.presenceStats('chat:presence'), { clients: 1, users: 1 });
  });

  test('history returns retained publications with their epoch, and pages with since', async () => {
    const hal = client(node.url, { token: token('hal') });
    await hal.connect();
    for (let n = 1; n <= 5; n++) await hal.publish('chat:history', { n });
    const newest = await hal.history('chat:history', { limit: 3 });
    assert.deepEqual(newest.publications.map((p) => p.data.n), [3, 4, 5]);
    assert.ok(newest.publications.every((p) => p.epoch === newest.epoch));
    assert.equal(newest.offset, 5);
    const after2 = await hal.history('chat:history', { since: { offset: 2, epoch: newest.epoch } });
    assert.deepEqual(after2.publications.map((p) => p.offset), [3, 4, 5]);
    await assert.rejects(
      hal.history('chat:history', { since: { offset: 2, epoch: 'another-epoch' } }),
      (error) => error.code === 117,
    );
  });

  test('the personal channel and server-side subscriptions surface as subscriptions', async () => {
    const pat = client(node.url, { token: token('pat') });
    const serverSide = [];
    pat.on('subscribed', (sub) => serverSide.push(sub));
    await pat.connect();
    assert.deepEqual(serverSide.map((s) => s.channel), ['user:pat']);
    const personal = pat.subscription('user:pat');
    assert.equal(personal, serverSide[0]);
    assert.equal(personal.serverSide, true);
    await assert.rejects(personal.unsubscribe(), (error) => error.code === 107);

    // A backend notifies the user: it arrives on the personal channel; the app acks it.
    const notified = next(personal, 'publication');
    await node.api('POST', 'users/publish', { user: 'pat', event: 'notice', data: { text: 'KYC approved' } });
    const notice = await notified;
    assert.deepEqual(notice.data, { text: 'KYC approved' });
    assert.equal(notice.epoch, personal.position.epoch);
    await pat.ack('user:pat', personal.position);

    // A backend subscribes the user's connections to a channel (`subscribe` push).
    const pushed = next(pat, 'subscribed', (sub) => sub.channel === 'chat:pushed');
    await node.api('POST', 'users/subscribe', { user: 'pat', channel: 'chat:pushed' });
    const sub = await pushed;
    assert.equal(pat.subscription('chat:pushed'), sub);
    const received = next(sub, 'publication');
    await node.api('POST', 'publish', { channel: 'chat:pushed', data: { hi: 1 } });
    assert.deepEqual((await received).data, { hi: 1 });

    // And takes it away again (`unsubscribe` push).
    const ended = next(sub, 'unsubscribed');
    await node.api('POST', 'users/unsubscribe', { user: 'pat', channel: 'chat:pushed', reason: 'revoked' });
    assert.equal((await ended).reason, 'revoked');
    assert.equal(pat.subscription('chat:pushed'), undefined);
  });

  test('async iteration yields the events in order', async () => {
    const ivy = client(node.url, { token: token('ivy') });
    await ivy.connect();
    const room = ivy.subscribe('chat:iterate');
    const seen = [];
    const reading = (async () => {
      for await (const event of room) {
        seen.push(event.type === 'publication' ? event.publication.data.n : event.type);
        if (seen.length === 5) break;
      }
    })();
    await room.ready;
    for (let n = 1; n <= 3; n++) await ivy.publish('chat:iterate', { n });
    await reading;
    // subscribe reply, own join, then the publications.
    assert.deepEqual(seen, ['subscribed', 'join', 1, 2, 3]);
  });

  test('MessagePack: publish and receive, across encodings', async () => {
    const packed = client(node.url, { token: token('mia'), encoding: msgpack });
    const plain = client(node.url, { token: token('jay') });
    await Promise.all([packed.connect(), plain.connect()]);
    const packedRoom = packed.subscribe('chat:msgpack');
    const plainRoom = plain.subscribe('chat:msgpack');
    const packedSeen = record(packedRoom).publications;
    const plainSeen = record(plainRoom).publications;
    const [subscribed] = await Promise.all([packedRoom.ready, plainRoom.ready]);

    const data = { text: 'héllo', n: 42, f: 1.5, list: [1, 'two', null], nested: { ok: true } };
    const published = await packed.publish('chat:msgpack', data, { event: 'msg' });
    await plain.publish('chat:msgpack', { from: 'json' });
    await until(() => packedSeen.length === 2 && plainSeen.length === 2, 'both publications on both clients');
    for (const seen of [packedSeen, plainSeen]) {
      assert.deepEqual(seen[0].data, data);
      assert.equal(seen[0].offset, published.offset);
      assert.equal(seen[0].epoch, subscribed.epoch);
      assert.deepEqual(seen[1].data, { from: 'json' });
    }
    const history = await packed.history('chat:msgpack', { limit: 10 });
    assert.deepEqual(history.publications[0].data, data);
    assert.deepEqual(await packed.presenceStats('chat:msgpack'), { clients: 2, users: 2 });
  });
});
