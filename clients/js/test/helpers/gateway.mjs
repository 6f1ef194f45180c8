// Real processes for the tests: the `switchboard` binary (SWITCHBOARD_BIN, default the
// workspace's debug build), redis-server, and HS256 tokens for the gateway's secret.
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, connect as tcpConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { Client } from '../../dist/index.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const BIN = resolve(root, process.env.SWITCHBOARD_BIN ?? '../../target/debug/switchboard');
export const SECRET = 'js-client-tests-secret';
export const API_KEY = 'js-test-key';

/** Namespaces of the tests: `chat` as in --dev but with 100 publications kept, and the personal `user`. */
const NAMESPACES = `
[[namespaces]]
name = ""

[[namespaces]]
name = "chat"
publish = true
presence = true
join_leave = true
history_size = 100
history_ttl_secs = 300

[[namespaces]]
name = "user"
subscribe = "owner"
presence = false
history_size = 1000
history_ttl_secs = 86400
`;

/** A TOML configuration: the test secret, an API key, fast shutdown; `auth` lines go in [auth], `extra` is appended. */
export function config({ auth = '', extra = '' } = {}) {
  return `
[node]
shutdown_timeout_ms = 3000
shutdown_reconnect_jitter_ms = 200

[auth]
hmac_secret = "${SECRET}"
${auth}

[api]
keys = ["${API_KEY}"]

[limits]
commands_per_second = 10000
command_burst = 10000
${extra}
${NAMESPACES}`;
}

export function freePort() {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

const children = new Set();
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});

/**
 * Starts a gateway node and waits for its "listening" log line. `listen` defaults to a free
 * port picked by the node (127.0.0.1:0); pass the same one to restart a node in place.
 */
export async function startGateway({ toml = config(), broker, listen = '127.0.0.1:0', env = {} } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'sb-js-'));
  const file = join(dir, 'switchboard.toml');
  writeFileSync(file, toml);
  const args = ['--config', file, '--listen', listen, '--log-format', 'json'];
  if (broker) args.push('--broker', broker);
  const child = spawn(BIN, args, { env: { ...process.env, RUST_LOG: 'info', ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
  children.add(child);
  const exited = new Promise((done) => child.once('exit', (code, signal) => done({ code, signal })));
  exited.then(() => children.delete(child));
  const log = [];
  const address = await new Promise((resolveAddress, reject) => {
    const timer = setTimeout(() => reject(new Error(`no listening line within 20 s:\n${log.join('\n')}`)), 20_000);
    createInterface({ input: child.stderr }).on('line', (line) => {
      if (log.length < 200) log.push(line);
      try {
        const address = JSON.parse(line).fields?.address;
        if (address) {
          clearTimeout(timer);
          resolveAddress(address);
        }
      } catch {
        // not a JSON record
      }
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`gateway exited (${code ?? signal}) before listening:\n${log.join('\n')}`));
    });
  });
  const node = {
    address,
    url: `ws://${address}/ws`,
    http: `http://${address}`,
    child,
    exited,
    /** SIGTERM: graceful drain (3000 shutdown to every client), then wait for the exit. */
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    },
    /** SIGSTOP, and wait until every thread has stopped (kill returns before they have). */
    async pause() {
      child.kill('SIGSTOP');
      await until(() => threadStates(child.pid).every((state) => state === 'T'), 'the gateway to stop', 5000);
    },
    resume: () => child.kill('SIGCONT'),
    /** Stops the node and starts another one on the same address. */
    async restart(options = {}) {
      await node.stop();
      return startGateway({ toml, broker, env, ...options, listen: address });
    },
    /** Calls the HTTP server API. */
    async api(method, path, body) {
      const response = await fetch(`${node.http}/api/v1/${path}`, {
        method,
        headers: { 'content-type': 'application/json', 'x-api-key': API_KEY },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const text = await response.text();
      if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
      return text ? JSON.parse(text) : undefined;
    },
  };
  return node;
}

/** The scheduler state letter of each thread of a process (Linux /proc). */
function threadStates(pid) {
  return readdirSync(`/proc/${pid}/task`).map((task) => {
    const stat = readFileSync(`/proc/${pid}/task/${task}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
  });
}

/** Starts redis-server on a free port without persistence. */
export async function startRedis() {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'sb-js-redis-'));
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], {
    stdio: 'ignore',
  });
  children.add(child);
  const exited = new Promise((done) => child.once('exit', done));
  exited.then(() => children.delete(child));
  const redis = {
    url: `redis://127.0.0.1:${port}`,
    command: (...words) => redisCommand(port, words),
    async stop() {
      child.kill('SIGTERM');
      await exited;
    },
  };
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      if ((await redis.command('PING')) === '+PONG') return redis;
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) throw new Error('redis-server did not start');
    await sleep(50);
  }
}

/** One Redis command over RESP; returns the first reply line. */
function redisCommand(port, words) {
  return new Promise((resolveReply, reject) => {
    const socket = tcpConnect(port, '127.0.0.1');
    const body = `*${words.length}\r\n${words.map((w) => `$${Buffer.byteLength(w)}\r\n${w}\r\n`).join('')}`;
    socket.setTimeout(5000, () => socket.destroy(new Error('redis timeout')));
    socket.on('error', reject);
    socket.once('data', (data) => {
      socket.end();
      resolveReply(data.toString().split('\r\n')[0]);
    });
    socket.write(body);
  });
}

/** An HS256 connection token for the test secret. `ttl` in seconds; `exp` overrides it. */
export function token(sub, { ttl = 3600, exp, info, channels } = {}) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const claims = { sub, exp: exp ?? Math.floor(Date.now() / 1000) + ttl, info, channels };
  const unsigned = `${encode({ typ: 'JWT', alg: 'HS256' })}.${encode(claims)}`;
  return `${unsigned}.${createHmac('sha256', SECRET).update(unsigned).digest('base64url')}`;
}

const clients = new Set();

/** A client on Node's `ws`, with fast reconnects; closed by `closeClients()`. */
export function client(url, options = {}) {
  const created = new Client(url, {
    WebSocket,
    backoff: { baseMs: 50, maxMs: 500 },
    ...options,
  });
  clients.add(created);
  return created;
}

export function closeClients() {
  for (const created of clients) created.disconnect();
  clients.clear();
}

export const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

/** Resolves with the first `event` of `emitter` that satisfies `predicate`. */
export function next(emitter, event, predicate = () => true, timeoutMs = 15_000) {
  return new Promise((resolveEvent, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no ${event} within ${timeoutMs} ms`));
    }, timeoutMs);
    const off = emitter.on(event, (value) => {
      if (!predicate(value)) return;
      clearTimeout(timer);
      off();
      resolveEvent(value);
    });
  });
}

/** Waits until `condition()` is true (polling), or fails after `timeoutMs`. */
export async function until(condition, what, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** Records a subscription's publications. */
export function record(subscription) {
  const publications = [];
  const subscribed = [];
  subscription.on('publication', (p) => publications.push(p));
  subscription.on('subscribed', (e) => subscribed.push(e));
  return { publications, subscribed };
}
