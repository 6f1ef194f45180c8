// Socket.IO compatibility (issue 16, docs/socketio.md) with the real clients: socket.io-client
// (npm) and python-socketio (PyPI) against two gateway nodes of the built binary over Redis,
// behind HAProxy with deploy/haproxy.cfg (least connections, no stickiness: polling requests
// land on either node and are forwarded to the session's node). Processes and logs come from
// the reference apps' harness (tests/apps/harness.mjs): target/app-logs/socketio/.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { io } from 'socket.io-client';

import { ROOT, sleep, startHarness, until } from '../apps/harness.mjs';

const API_KEY = 'socketio-test-key';
let h;
let backend;
const rpcCalls = [];
const sockets = new Set();

before(async () => {
  h = await startHarness({
    app: 'socketio',
    config: 'tests/socketio/gateway.toml',
    httpRoute: 'http://127.0.0.1:3999/rpc',
    nodes: 2,
    contexts: 0,
  });
  // The `dao.*` rpc backend: answers with what it was asked, and who asked.
  backend = createServer((request, response) => {
    let body = '';
    request.on('data', (chunk) => (body += chunk));
    request.on('end', () => {
      const call = JSON.parse(body);
      rpcCalls.push(call);
      const answer = call.data?.fail
        ? { error: { code: 1042, message: 'the proposal is closed' } }
        : { result: { echo: call.data, method: call.method, user: call.user } };
      response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(answer));
    });
  });
  await new Promise((listening) => backend.listen(h.backendPort, '127.0.0.1', listening));
});

after(async () => {
  for (const socket of sockets) socket.close();
  backend?.close();
  await h?.close();
});

/** A socket.io-client socket for `user` through HAProxy (closed after the tests). */
function connect(user, options = {}) {
  const socket = io(h.lb.http, {
    auth: { token: h.token(user) },
    reconnectionDelay: 100,
    reconnectionDelayMax: 500,
    ...options,
  });
  sockets.add(socket);
  return socket;
}

function connected(socket) {
  if (socket.connected) return Promise.resolve();
  return new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('connect_error', reject);
  });
}

/** Publishes through the HTTP API (any node, through HAProxy). */
async function apiPublish(channel, event, data) {
  const response = await fetch(`${h.lb.http}/api/v1/publish`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': API_KEY },
    body: JSON.stringify({ channel, event, data }),
  });
  const body = await response.text();
  assert.equal(response.status, 200, body);
  return JSON.parse(body);
}

/** Collects `count` events named `event` on `socket`. */
function collect(socket, event, count) {
  const seen = [];
  const done = new Promise((resolve) => {
    socket.on(event, (data) => {
      seen.push(data);
      if (seen.length === count) resolve(seen);
    });
  });
  return { seen, done };
}

test('connect with auth, emit with ack, and the same publications in the same order as a native client', async () => {
  const socket = connect('alice');
  await connected(socket);
  assert.match(socket.id, /^node-[12]-\d+$/);
  const joined = await socket.emitWithAck('subscribe', 'room:lobby');
  assert.equal(joined.channel, 'room:lobby');

  const native = await h.nodeClient('bob');
  const nativeRoom = native.subscribe('room:lobby');
  const nativeSeen = [];
  nativeRoom.on('publication', (p) => nativeSeen.push(p.data));
  await native.connect();
  await until(() => nativeRoom.state === 'subscribed', 'the native client subscribed');

  const ticks = collect(socket, 'tick', 20);
  for (let n = 0; n < 20; n++) {
    if (n % 2 === 0) await apiPublish('room:lobby', 'tick', { n, by: 'api' });
    else await native.publish('room:lobby', { n, by: 'native' }, { event: 'tick' });
  }
  const seen = await ticks.done;
  assert.deepEqual(seen.map((t) => t.n), [...Array(20).keys()]);
  await until(() => nativeSeen.length === 20, 'the native client got all 20');
  assert.deepEqual(seen, nativeSeen, 'Socket.IO and native clients see the same sequence');

  // emit with ack: an rpc to the HTTP backend, its answer as the ack.
  const answer = await socket.timeout(5000).emitWithAck('dao.cast_vote', { proposal: 7, choice: 'yes' });
  assert.deepEqual(answer, { echo: { proposal: 7, choice: 'yes' }, method: 'dao.cast_vote', user: 'alice' });
  const refused = await socket.emitWithAck('dao.cast_vote', { fail: true });
  assert.deepEqual(refused.error, { code: 1042, message: 'the proposal is closed' });
  // A client publication through the built-in event reaches both.
  const own = collect(socket, 'said', 1);
  const published = await socket.emitWithAck('publish', { channel: 'room:lobby', event: 'said', data: 'hi' });
  assert.equal(typeof published.offset, 'number');
  assert.deepEqual(await own.done, ['hi']);
  socket.close();
});

test('the personal channel: a backend reaches the user with emit_to_user', async () => {
  const socket = connect('carol');
  const direct = collect(socket, 'notice', 1);
  await connected(socket);
  const response = await fetch(`${h.lb.http}/api/v1/users/publish`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': API_KEY },
    body: JSON.stringify({ user: 'carol', event: 'notice', data: { kyc: 'approved' } }),
  });
  assert.equal(response.status, 200, await response.text());
  assert.deepEqual(await direct.done, [{ kyc: 'approved' }]);
  socket.close();
});

test('a polling-only client works through the load balancer (requests forwarded between nodes)', async () => {
  const socket = connect('dave', { transports: ['polling'] });
  await connected(socket);
  assert.equal(socket.io.engine.transport.name, 'polling');
  await socket.emitWithAck('subscribe', 'room:polling');
  const ticks = collect(socket, 'tick', 30);
  for (let n = 0; n < 30; n++) await apiPublish('room:polling', 'tick', n);
  assert.deepEqual(await ticks.done, [...Array(30).keys()]);
  assert.equal(socket.io.engine.transport.name, 'polling', 'still polling');
  // The balancer spread the requests over both nodes: some were forwarded to the session's.
  const forwarded = await Promise.all(h.gateways.map(async (g) => {
    const metrics = await (await fetch(`${g.http}/metrics`)).text();
    const line = metrics.split('\n').find((l) => l.startsWith('switchboard_socketio_forwarded_total '));
    return Number(line?.split(' ')[1] ?? 0);
  }));
  assert.ok(forwarded[0] + forwarded[1] > 0, `forwarded requests per node: ${forwarded}`);
  socket.close();
});

test('polling upgrades to WebSocket and nothing is lost or doubled across the upgrade', async () => {
  const socket = connect('erin');
  const upgraded = new Promise((resolve) => socket.io.on('open', () => socket.io.engine.once('upgrade', resolve)));
  await connected(socket);
  await socket.emitWithAck('subscribe', 'room:upgrade');
  const ticks = collect(socket, 'tick', 40);
  // Publications flow while the client upgrades.
  for (let n = 0; n < 40; n++) {
    await apiPublish('room:upgrade', 'tick', n);
    if (n === 5) await Promise.race([upgraded, sleep(5000)]);
  }
  assert.deepEqual(await ticks.done, [...Array(40).keys()]);
  assert.equal(socket.io.engine.transport.name, 'websocket');
  socket.close();
});

test('permessage-deflate: large publications arrive compressed, over a direct WebSocket and after an upgrade', async () => {
  // Straight to one node: an upgrade relayed to another node is never compressed.
  const node = h.gateways[0];
  const rows = Array.from({ length: 300 }, (_, i) => ({ proposal: i, yes: i * 3, no: i, quorum: 0.25 }));
  const size = JSON.stringify(rows).length;
  for (const transports of [['websocket'], ['polling', 'websocket']]) {
    const socket = io(node.http, { auth: { token: h.token('fay') }, transports });
    sockets.add(socket);
    const upgraded = transports.length > 1 ? new Promise((resolve) => socket.io.engine.once('upgrade', resolve)) : null;
    await connected(socket);
    if (upgraded) await upgraded;
    const ws = socket.io.engine.transport.ws;
    assert.equal(ws.extensions, 'permessage-deflate', `${transports}`);
    await socket.emitWithAck('subscribe', 'room:deflate');
    const got = collect(socket, 'snapshot', 2);
    const before = ws._socket.bytesRead;
    await apiPublish('room:deflate', 'snapshot', { rows });
    await apiPublish('room:deflate', 'snapshot', { small: true });
    const [big, small] = await got.done;
    assert.deepEqual(big, { rows });
    assert.deepEqual(small, { small: true });
    const read = ws._socket.bytesRead - before;
    assert.ok(read < size / 3, `${transports}: ${read} bytes read for a ${size}-byte payload`);
    socket.close();
  }
});

test('a bad token is refused with connect_error and a message', async () => {
  const socket = io(h.lb.http, { auth: { token: 'not-a-jwt' }, reconnection: false, transports: ['websocket'] });
  sockets.add(socket);
  const error = await new Promise((resolve) => socket.once('connect_error', resolve));
  assert.match(error.message, /token/);
  assert.equal(error.data.code, 113);
  const polling = io(h.lb.http, { auth: { token: h.token('x', { ttl: -60 }) }, reconnection: false });
  sockets.add(polling);
  const expired = await new Promise((resolve) => polling.once('connect_error', resolve));
  assert.match(expired.message, /expired/);
});

test('python-socketio connects, subscribes, receives and calls through the load balancer', async () => {
  const child = spawn('python3', [join(ROOT, 'tests/socketio/python_client.py')], {
    env: { ...process.env, SB_URL: h.lb.http, SB_TOKEN: h.token('grace'), SB_ROOM: 'room:python', SB_COUNT: '25' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk) => (stdout += chunk));
  child.stderr.on('data', (chunk) => (stderr += chunk));
  const exited = new Promise((resolve) => child.once('exit', resolve));
  await until(() => stdout.includes('ready') || child.exitCode !== null, 'python ready', 30_000);
  assert.ok(stdout.includes('ready'), `python-socketio did not get ready:\n${stdout}\n${stderr}`);
  for (let n = 0; n < 25; n++) await apiPublish('room:python', 'tick', { n });
  const code = await Promise.race([exited, sleep(30_000).then(() => 'timeout')]);
  assert.equal(code, 0, `python exited ${code}:\n${stdout}\n${stderr}`);
  const result = JSON.parse(stdout.trim().split('\n').pop());
  assert.deepEqual(result.ticks.map((t) => t.n), [...Array(25).keys()]);
  assert.equal(result.transport, 'websocket', 'python-socketio upgraded from polling');
  assert.equal(result.subscribed.channel, 'room:python');
  assert.deepEqual(result.answer, { echo: { from: 'python' }, method: 'dao.echo', user: 'grace' });
});

test('kill -9 of the node a client is on: it recovers on the other node, recovered === true, no event missing or doubled', async () => {
  const socket = io(`${h.lb.http}/recover`, {
    auth: { token: h.token('frank') },
    transports: ['websocket'],
    forceNew: true,
    reconnectionDelay: 100,
    reconnectionDelayMax: 500,
  });
  sockets.add(socket);
  await connected(socket);
  assert.equal(socket.recovered, false, 'a first connection is not a recovery');
  const first = socket.id;
  const home = h.gateways.find((g) => first.startsWith(`${g.name}-`));
  await socket.emitWithAck('subscribe', 'room:kill');
  const seen = [];
  socket.on('tick', (n, offset) => {
    assert.equal(typeof offset, 'string', 'events carry the position vector');
    seen.push(n);
  });
  for (let n = 0; n < 10; n++) await apiPublish('room:kill', 'tick', n);
  await until(() => seen.length === 10, 'the first ten ticks');
  await h.kill9(home);
  // Published while the client is away (HAProxy sends the API calls to the survivor).
  for (let n = 10; n < 20; n++) await apiPublish('room:kill', 'tick', n);
  await until(() => socket.connected && socket.id !== first, 'reconnected', 20_000);
  assert.ok(!socket.id.startsWith(`${home.name}-`), `now on another node: ${socket.id}`);
  assert.equal(socket.recovered, true, 'recovered on the other node');
  for (let n = 20; n < 25; n++) await apiPublish('room:kill', 'tick', n);
  await until(() => seen.length >= 25, 'every tick', 15_000);
  await sleep(300);
  assert.deepEqual(seen, [...Array(25).keys()], 'every event once, in order');
  socket.close();
});
