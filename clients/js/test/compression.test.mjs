// permessage-deflate against Node's `ws` (a third-party implementation of RFC 7692):
// negotiated only when `[compression]` is enabled, large publications arrive compressed
// (fewer bytes on the socket than the payload) and intact, small ones as they are, and
// commands the client compresses are understood. The SDK in Node rides on the same
// negotiation without knowing about it.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { client, closeClients, config, next, startGateway, token } from './helpers/gateway.mjs';

let plain, compressed;
before(async () => {
  plain = await startGateway();
  compressed = await startGateway({ toml: config({ extra: '[compression]\nenabled = true\nthreshold_bytes = 512' }) });
});
after(async () => {
  closeClients();
  await plain?.stop();
  await compressed?.stop();
});

/** A raw protocol connection through `ws`, compressing everything it sends when it may. */
async function open(node, user) {
  const socket = new WebSocket(node.url, 'switchboard.v1.json', { perMessageDeflate: { threshold: 0 } });
  let extensions = '';
  socket.once('upgrade', (response) => (extensions = response.headers['sec-websocket-extensions'] ?? ''));
  const frames = [];
  const waiting = [];
  socket.on('message', (data) => {
    const frame = JSON.parse(data.toString());
    const index = waiting.findIndex(({ match }) => match(frame));
    if (index >= 0) waiting.splice(index, 1)[0].found(frame);
    else frames.push(frame);
  });
  await new Promise((opened, failed) => {
    socket.once('open', opened);
    socket.once('error', failed);
  });
  let id = 0;
  const wait = (match) => {
    const index = frames.findIndex(match);
    if (index >= 0) return Promise.resolve(frames.splice(index, 1)[0]);
    return new Promise((found) => waiting.push({ match, found }));
  };
  const call = async (method, params) => {
    id += 1;
    const sent = id;
    socket.send(JSON.stringify({ id: sent, method, params }));
    const reply = await wait((frame) => frame.id === sent);
    assert.equal(reply.error, undefined, `${method}: ${JSON.stringify(reply.error)}`);
    return reply.result;
  };
  await call('connect', { token: token(user) });
  return { socket, extensions, call, wait, bytesRead: () => socket._socket.bytesRead };
}

describe('permessage-deflate', { timeout: 60_000 }, () => {
  test('is not negotiated unless enabled', async () => {
    const { socket, extensions } = await open(plain, 'pia');
    assert.equal(extensions, '');
    assert.equal(socket.extensions, '');
    socket.close();
  });

  test('large publications arrive compressed and intact, commands may be compressed', async () => {
    const { socket, extensions, call, wait, bytesRead } = await open(compressed, 'cody');
    assert.equal(extensions, 'permessage-deflate; server_no_context_takeover; client_no_context_takeover');
    assert.equal(socket.extensions, 'permessage-deflate');
    await call('subscribe', { channel: 'chat:deflate' });

    // A portfolio snapshot: repetitive JSON, 40 kB. Published by this very socket, whose
    // command `ws` sends compressed.
    const holdings = Array.from({ length: 400 }, (_, i) => ({ symbol: `SYM${i % 50}`, qty: i, price: 101.25 }));
    const before = bytesRead();
    await call('publish', { channel: 'chat:deflate', data: { holdings } });
    const big = await wait((frame) => frame.push === 'publication' && frame.data?.holdings);
    assert.deepEqual(big.data.holdings, holdings);
    const size = JSON.stringify(holdings).length;
    const read = bytesRead() - before;
    assert.ok(read < size / 4, `${read} bytes read for a ${size}-byte payload (reply included)`);

    // Below the threshold: sent as it is, still readable.
    await call('publish', { channel: 'chat:deflate', data: { votes: 12 } });
    const small = await wait((frame) => frame.push === 'publication' && frame.data?.votes === 12);
    assert.equal(small.offset, big.offset + 1);
    socket.close();
  });

  test('a compressed message that inflates past the limit closes with 3502', async () => {
    const { socket } = await open(compressed, 'bomb');
    const closed = new Promise((done) => socket.once('close', (code, reason) => done({ code, reason: `${reason}` })));
    // 200 kB of one letter compresses to a few hundred bytes; the limit is 65 536 once inflated.
    socket.send(JSON.stringify({ id: 9, method: 'publish', params: { channel: 'chat:deflate', data: 'a'.repeat(200_000) } }));
    const { code, reason } = await closed;
    assert.equal(code, 3502);
    assert.match(reason, /larger than 65536 bytes/);
  });

  test('a compressed message that is not deflate data closes with 3500', async () => {
    const { socket } = await open(compressed, 'garbage');
    const closed = new Promise((done) => socket.once('close', (code, reason) => done({ code, reason: `${reason}` })));
    // A final text frame with RSV1, masked with a zero key, whose payload is not deflate.
    socket._socket.write(Buffer.from([0xc1, 0x84, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]));
    const { code, reason } = await closed;
    assert.equal(code, 3500);
    assert.match(reason, /invalid permessage-deflate data/);
  });

  test('the SDK works on a compressed connection', async () => {
    const alice = client(compressed.url, { token: token('alice') });
    const bob = client(compressed.url, { token: token('bob') });
    await alice.connect();
    await bob.connect();
    const room = await bob.subscribe('chat:sdk');
    const got = next(room, 'publication');
    const text = 'long message '.repeat(200);
    await alice.publish('chat:sdk', { text });
    assert.equal((await got).data.text, text);
  });
});
