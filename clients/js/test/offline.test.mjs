// What the client does with no server at all: backoff, giving up after
// maxReconnectAttempts, the outbox's bound and policies. And the backoff itself.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { backoffCeiling, backoffDelay } from '../dist/index.js';
import { client, closeClients, freePort, next } from './helpers/gateway.mjs';

after(closeClients);

describe('without a server', { timeout: 30_000 }, () => {
  test('backoff: exponential ceilings, full jitter, the server advice as a floor', () => {
    const options = { baseMs: 100, maxMs: 2000 };
    assert.deepEqual([0, 1, 2, 3, 4, 5, 6].map((a) => backoffCeiling(options, a)), [100, 200, 400, 800, 1600, 2000, 2000]);
    assert.equal(backoffCeiling(options, 1000), 2000);
    const delays = Array.from({ length: 1000 }, () => backoffDelay(options, 3));
    assert.ok(delays.every((d) => d >= 0 && d <= 800));
    assert.ok(Math.max(...delays) - Math.min(...delays) > 600, 'full jitter spreads the delays');
    assert.ok(Array.from({ length: 100 }, () => backoffDelay(options, 0, 1500)).every((d) => d >= 1500));
  });

  test('gives up after maxReconnectAttempts', async () => {
    const url = `ws://127.0.0.1:${await freePort()}/ws`;
    const lonely = client(url, { token: 'x', maxReconnectAttempts: 3, backoff: { baseMs: 10, maxMs: 50 } });
    const failed = next(lonely, 'reconnectFailed');
    const disconnects = [];
    lonely.on('disconnected', (e) => disconnects.push(e));
    await assert.rejects(lonely.connect(), (error) => error.kind === 'closed');
    assert.deepEqual(await failed, { attempts: 3 });
    assert.equal(lonely.state, 'closed');
    // The first attempt and three reconnects failed; the last says it will not retry.
    assert.equal(disconnects.length, 5);
    assert.equal(disconnects.at(-1).reconnect, false);
  });

  test('the outbox is bounded: reject new calls, or drop the oldest', async () => {
    const url = `ws://127.0.0.1:${await freePort()}/ws`;
    const rejecting = client(url, { token: 'x', outbox: { limit: 2 } });
    const dropping = client(url, { token: 'x', outbox: { limit: 2, whenFull: 'drop-oldest' } });
    const none = client(url, { token: 'x', outbox: { limit: 0 } });
    for (const c of [rejecting, dropping, none]) c.connect().catch(() => {});

    const kept = [rejecting.publish('chat:a', 1), rejecting.rpc('m', 2)];
    await assert.rejects(rejecting.publish('chat:a', 3), (error) => error.kind === 'outbox_full');

    const first = dropping.publish('chat:a', 1);
    const rest = [dropping.publish('chat:a', 2), dropping.publish('chat:a', 3)];
    await assert.rejects(first, (error) => error.kind === 'outbox_full');

    await assert.rejects(none.publish('chat:a', 1), (error) => error.kind === 'not_connected');

    // Closing fails what still waits.
    rejecting.disconnect();
    dropping.disconnect();
    for (const call of [...kept, ...rest]) await assert.rejects(call, (error) => error.kind === 'closed');
  });

  test('a call waits at most timeoutMs, time in the outbox included', async () => {
    const url = `ws://127.0.0.1:${await freePort()}/ws`;
    const impatient = client(url, { token: 'x', timeoutMs: 200 });
    impatient.connect().catch(() => {});
    await assert.rejects(impatient.publish('chat:a', 1), (error) => error.kind === 'timeout');
    impatient.disconnect();
  });
});
