// Cluster mode: Redis and two gateway nodes. A node restarts while another keeps
// publishing; the client on the restarted node recovers every publication exactly once.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import { client, closeClients, config, next, record, startGateway, startRedis, token, until, sleep } from './helpers/gateway.mjs';

let redis;
let nodeA;
let nodeB;
before(async () => {
  redis = await startRedis();
  nodeA = await startGateway({ broker: redis.url });
  nodeB = await startGateway({ broker: redis.url });
});
after(async () => {
  closeClients();
  await nodeA?.stop();
  await nodeB?.stop();
  await redis?.stop();
});

describe('two nodes on Redis', { timeout: 90_000 }, () => {
  test('publications cross nodes', async () => {
    const a = client(nodeA.url, { token: token('cross-a') });
    const b = client(nodeB.url, { token: token('cross-b') });
    await Promise.all([a.connect(), b.connect()]);
    const room = a.subscribe('chat:cross');
    await room.ready;
    const got = next(room, 'publication');
    await b.publish('chat:cross', { via: 'b' });
    assert.deepEqual((await got).data, { via: 'b' });
    assert.equal((await a.presenceStats('chat:cross')).clients, 1);
  });

  test('a restart of the node loses nothing and duplicates nothing', async () => {
    const receiver = client(nodeA.url, { token: token('receiver') });
    const publisher = client(nodeB.url, { token: token('publisher') });
    await Promise.all([receiver.connect(), publisher.connect()]);
    const room = receiver.subscribe('chat:restart');
    const { publications, subscribed } = record(room);
    await room.ready;
    const disconnects = [];
    receiver.on('disconnected', (e) => disconnects.push(e));

    // Publish continuously through node B while node A restarts.
    let published = 0;
    let publishing = true;
    const loop = (async () => {
      while (publishing) {
        await publisher.publish('chat:restart', { n: published + 1 });
        published++;
        await sleep(10);
      }
    })();
    await until(() => publications.length >= 10, 'the first publications');
    const reconnected = next(receiver, 'connected');
    nodeA = await nodeA.restart();
    await reconnected;
    await until(() => published >= publications.length + 10 || published > 400, 'publications after the restart');
    publishing = false;
    await loop;
    await until(() => publications.length >= published, `all ${published} publications`);

    assert.deepEqual(publications.map((p) => p.data.n), Array.from({ length: published }, (_, i) => i + 1));
    const offsets = publications.map((p) => p.offset);
    assert.deepEqual(offsets, Array.from({ length: published }, (_, i) => offsets[0] + i));
    assert.equal(disconnects[0].code, 3000, 'the node said it was shutting down');
    const resubscribed = subscribed.filter((e) => e.resubscribed);
    assert.equal(resubscribed.length, 1);
    assert.equal(resubscribed[0].recovered, true);
    assert.ok(resubscribed[0].missed > 0, 'publications made while the node was down were recovered');
    assert.equal(resubscribed[0].epoch, subscribed[0].epoch);
  });

  test('the personal channel recovers through connect: notifications sent during a restart arrive once', async () => {
    const una = client(nodeA.url, { token: token('una') });
    await una.connect();
    const personal = una.subscription('user:una');
    const { publications, subscribed } = record(personal);
    await nodeB.api('POST', 'users/publish', { user: 'una', data: { n: 1 } });
    await until(() => publications.length === 1, 'the first notification');

    const reconnected = next(una, 'connected');
    const restarting = nodeA.restart();
    await nodeB.api('POST', 'users/publish', { user: 'una', data: { n: 2 } }); // while node A is down or draining
    nodeA = await restarting;
    await nodeB.api('POST', 'users/publish', { user: 'una', data: { n: 3 } });
    await reconnected;
    await until(() => publications.length === 3, 'every notification');
    assert.deepEqual(publications.map((p) => p.data.n), [1, 2, 3]);
    assert.deepEqual(publications.map((p) => p.offset), [1, 2, 3].map((i) => publications[0].offset + i - 1));
    const again = subscribed.at(-1);
    assert.equal(again.resubscribed, true);
    assert.equal(again.recovered, true);
    assert.equal(una.subscription('user:una'), personal, 'the same subscription object goes on');
  });

  test('after Redis lost its data the resubscribe says recovered: false', async () => {
    const reader = client(nodeA.url, { token: token('wiped') });
    await reader.connect();
    const room = reader.subscribe('chat:wiped');
    const { publications, subscribed } = record(room);
    const first = await room.ready;
    await reader.publish('chat:wiped', { n: 1 });
    await until(() => publications.length === 1, 'the first publication');

    await redis.command('FLUSHALL');
    const resubscribed = next(room, 'subscribed', (e) => e.resubscribed);
    nodeA = await nodeA.restart();
    const again = await resubscribed;
    assert.equal(again.recovered, false);
    assert.notEqual(again.epoch, first.epoch);
    // The subscription goes on in the new epoch.
    await reader.publish('chat:wiped', { n: 2 });
    await until(() => publications.length === 2, 'a publication in the new epoch');
    assert.equal(publications[1].epoch, again.epoch);
    assert.equal(subscribed.length, 2);
  });

  test('an ack made while disconnected is sent after the reconnect', async () => {
    const ada = client(nodeA.url, { token: token('ada') });
    await ada.connect();
    const personal = ada.subscription('user:ada');
    const { publications } = record(personal);
    await nodeB.api('POST', 'users/publish', { user: 'ada', data: { n: 1 } });
    await nodeB.api('POST', 'users/publish', { user: 'ada', data: { n: 2 } });
    await until(() => publications.length === 2, 'both notifications');
    const reconnected = next(ada, 'connected');
    const stopped = nodeA.stop();
    await next(ada, 'disconnected');
    await stopped;
    // Marked as read while offline: kept, and sent once connected again.
    const acked = ada.ack('user:ada', personal.position);
    nodeA = await nodeA.restart();
    await reconnected;
    await acked;
    // The user's acknowledged position in Redis (what a new device's offline delivery
    // starts after) is the one acked while offline.
    const stored = execFileSync('redis-cli', ['-u', redis.url, 'HGET', 'sb:{user:ada}:acks', 'ada']).toString().trim();
    assert.equal(stored.split(':')[0], String(publications[1].offset));
  });
});

