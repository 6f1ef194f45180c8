// Token refresh: the server's `refresh` push is answered with a token from getToken, and a
// connection the server expired (3004) comes back with a fresh token.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { client, closeClients, config, next, startGateway, token } from './helpers/gateway.mjs';

// Every token expires within the refresh window, so the server asks for a refresh at once;
// an expired token gets no grace.
const toml = config({ auth: 'refresh_ahead_secs = 600\nexpired_grace_secs = 0' });
let node;
before(async () => {
  node = await startGateway({ toml });
});
after(async () => {
  closeClients();
  await node?.stop();
});

describe('token refresh', { timeout: 60_000 }, () => {
  test('the refresh push is answered with a new token from getToken', async () => {
    const ttls = [60, 3600];
    let calls = 0;
    const rex = client(node.url, { getToken: () => token('rex', { ttl: ttls[Math.min(calls++, 1)] }) });
    const refreshed = next(rex, 'refreshed');
    const disconnected = [];
    rex.on('disconnected', (e) => disconnected.push(e));
    await rex.connect();
    const firstExpiry = rex.connection.expiresAt;
    const { expiresAt } = await refreshed;
    assert.equal(calls, 2);
    assert.ok(expiresAt > firstExpiry + 3000, `the new expiry ${expiresAt} is the new token's`);
    assert.equal(rex.connection.expiresAt, expiresAt);
    assert.deepEqual(disconnected, []);
  });

  test('a connection expired by the server (3004) reconnects with a fresh token', async () => {
    // The token expires in 2 s and every refresh offers a token the server refuses (another
    // user), until the server closes with 3004; then getToken gives a good one.
    let expired = false;
    let calls = 0;
    const ned = client(node.url, {
      getToken: () => {
        calls++;
        if (expired) return token('ned');
        return calls === 1 ? token('ned', { ttl: 2 }) : token('someone-else');
      },
    });
    const errors = [];
    ned.on('error', (e) => errors.push(e));
    ned.on('disconnected', (e) => {
      if (e.code === 3004) expired = true;
    });
    await ned.connect();
    const lost = await next(ned, 'disconnected', (e) => e.code === 3004, 20_000);
    assert.equal(lost.reconnect, true);
    await next(ned, 'connected');
    assert.equal(ned.connection.user, 'ned');
    assert.ok(errors.some((e) => e.code === 113), 'the refused refresh was reported');
  });

  test('without getToken a 3004 stops the client: the same token cannot work again', async () => {
    const old = client(node.url, { token: token('old', { ttl: 2 }) });
    await old.connect();
    const closed = await next(old, 'disconnected', () => true, 20_000);
    assert.equal(closed.code, 3004);
    assert.equal(closed.reconnect, false);
    assert.equal(old.state, 'closed');
  });
});
