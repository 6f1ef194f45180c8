// `rpc` through an HTTP route to a backend served by the test itself.
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { after, before, describe, test } from 'node:test';
import { client, closeClients, config, next, startGateway, token } from './helpers/gateway.mjs';

const calls = [];
let backend;
let node;
let toml;
before(async () => {
  backend = createServer((request, response) => {
    let body = '';
    request.on('data', (chunk) => (body += chunk));
    request.on('end', () => {
      const call = JSON.parse(body);
      calls.push(call);
      const answer =
        call.method === 'fail'
          ? { error: { code: 1403, message: 'already voted' } }
          : { result: { echo: call.data, user: call.user } };
      response.setHeader('content-type', 'application/json');
      response.end(JSON.stringify(answer));
    });
  });
  await new Promise((listening) => backend.listen(0, '127.0.0.1', listening));
  const url = `http://127.0.0.1:${backend.address().port}/rpc`;
  toml = config({ extra: `[[rpc.routes]]\nprefix = ""\nurl = "${url}"\n` });
  node = await startGateway({ toml });
});
after(async () => {
  closeClients();
  await node?.stop();
  backend?.close();
});

describe('rpc', { timeout: 60_000 }, () => {
  test('answers with the backend result, or its own error code', async () => {
    const rita = client(node.url, { token: token('rita') });
    await rita.connect();
    assert.deepEqual(await rita.rpc('echo', { proposal: 7 }), { echo: { proposal: 7 }, user: 'rita' });
    await assert.rejects(rita.rpc('fail'), (error) => error.kind === 'server' && error.code === 1403 && !error.temporary);

    await rita.rpc('echo', 1, { idempotencyKey: 'vote-7-rita' });
    assert.equal(calls.at(-1).idempotency_key, 'vote-7-rita');
    // Without a key of its own, every call carries a random one.
    assert.match(calls[0].idempotency_key, /^[0-9a-f]{32}$/);
    assert.notEqual(calls[0].idempotency_key, calls[1].idempotency_key);
  });

  test('a call made while disconnected is sent once after the reconnect', async () => {
    const roy = client(node.url, { token: token('roy') });
    await roy.connect();
    const lost = next(roy, 'disconnected');
    await node.stop();
    await lost;
    const before = calls.length;
    const answer = roy.rpc('echo', { offline: true });
    node = await startGateway({ toml, listen: node.address });
    assert.deepEqual(await answer, { echo: { offline: true }, user: 'roy' });
    assert.equal(calls.length, before + 1);
  });
});
