// Gateway CPU and bytes on the wire per delivery of large publications, subscribers with
// or without permessage-deflate (Node's `ws`; switchboard-bench's connections cannot
// inflate). One gateway node, its config with `[compression] enabled = true` for the
// compressed run. Publications go through the HTTP API one at a time, each after every
// subscriber got the previous one, so nothing coalesces and every delivery is one write.
//
//   node measure.mjs --url ws://127.0.0.1:18001/ws --pid <gateway pid> [--deflate]
//        [--subscribers 200] [--publications 200] [--rows 480]
// Tokens are HS256 with the bench secret (crates/bench/bench.toml); the HTTP API key too.
import { createHmac } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import WebSocket from 'ws';

const { values: args } = parseArgs({
  options: {
    url: { type: 'string', default: 'ws://127.0.0.1:18001/ws' },
    pid: { type: 'string' },
    deflate: { type: 'boolean', default: false },
    subscribers: { type: 'string', default: '200' },
    publications: { type: 'string', default: '200' },
    rows: { type: 'string', default: '480' },
  },
});
const SECRET = 'bench-secret';
const API_KEY = 'bench-key';
const CHANNEL = 'bench:deflate';

function token(sub) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const unsigned = `${encode({ typ: 'JWT', alg: 'HS256' })}.${encode({ sub, exp: Math.floor(Date.now() / 1000) + 3600 })}`;
  return `${unsigned}.${createHmac('sha256', SECRET).update(unsigned).digest('base64url')}`;
}

/** CPU seconds (user + system) of `pid`, from /proc. */
function cpu(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

const subscribers = Number(args.subscribers);
const publications = Number(args.publications);
let received = 0;
let waiter = null;
const sockets = [];
for (let i = 0; i < subscribers; i += 1) {
  const socket = new WebSocket(args.url, 'switchboard.v1.json', { perMessageDeflate: args.deflate });
  await new Promise((open, fail) => {
    socket.once('open', open);
    socket.once('error', fail);
  });
  const ready = new Promise((done) => {
    socket.on('message', (data) => {
      const frame = JSON.parse(data.toString());
      if (frame.error) throw new Error(JSON.stringify(frame.error));
      if (frame.id === 2) done();
      if (frame.push === 'publication') {
        received += 1;
        if (waiter && received >= waiter.until) waiter.resolve();
      }
    });
  });
  socket.send(JSON.stringify({ id: 1, method: 'connect', params: { token: token(`u${i}`) } }));
  socket.send(JSON.stringify({ id: 2, method: 'subscribe', params: { channel: CHANNEL } }));
  await ready;
  sockets.push(socket);
}
if (args.deflate && sockets.some((socket) => socket.extensions !== 'permessage-deflate')) {
  throw new Error('permessage-deflate was not negotiated: enable [compression] on the gateway');
}

const http = args.url.replace(/^ws/, 'http').replace(/\/ws$/, '/api/v1/publish');
const holdings = Array.from({ length: Number(args.rows) }, (_, i) => ({
  symbol: `SYM${i % 50}`, qty: i * 7, price: 100.25 + i, change: -(i % 9) / 10,
}));
const bytesBefore = sockets.reduce((sum, socket) => sum + socket._socket.bytesRead, 0);
const cpuBefore = cpu(args.pid);
for (let n = 1; n <= publications; n += 1) {
  const all = new Promise((resolve) => (waiter = { until: n * subscribers, resolve }));
  const response = await fetch(http, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': API_KEY },
    body: JSON.stringify({ channel: CHANNEL, data: { n, holdings } }),
  });
  if (!response.ok) throw new Error(`publish: ${response.status} ${await response.text()}`);
  await all;
}
const gatewayCpu = cpu(args.pid) - cpuBefore;
const bytes = sockets.reduce((sum, socket) => sum + socket._socket.bytesRead, 0) - bytesBefore;
const deliveries = subscribers * publications;
console.log(JSON.stringify({
  deflate: args.deflate,
  negotiated: sockets[0].extensions || 'none',
  payload_bytes: JSON.stringify({ n: 1, holdings }).length,
  deliveries,
  received,
  gateway_cpu_us_per_delivery: Math.round((gatewayCpu * 1e6) / deliveries * 10) / 10,
  wire_bytes_per_delivery: Math.round(bytes / deliveries),
}));
for (const socket of sockets) socket.terminate();
