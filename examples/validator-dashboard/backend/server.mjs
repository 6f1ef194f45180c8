#!/usr/bin/env node
// The validator dashboard backend: a simulated validator network (network.mjs) that talks
// to Switchboard only over HTTP, through two documented contracts (docs/operations.md):
//
//   - it answers the pages' `rpc` calls on POST /rpc: the gateway's HTTP route
//     `prefix = "validators."` posts every call here with the `X-Switchboard-Secret` header
//     ("RPC routes", HTTP routes);
//   - it publishes with the gateway's HTTP server API and an API key ("HTTP server API"):
//     `stats` after every block into `validators:network` (POST /api/v1/publish), and
//     alerts to each subscribed user's personal channel (POST /api/v1/users/publish).
//
// For development it also serves:
//   GET /token?user=<id>[&role=admin]  a connection token (signed with JWT_SECRET); never
//                                      expose it outside your laptop (DEV_TOKENS=0 turns it off)
//   GET /api/state                     the backend's state (height, last publication, alert list)
//   GET /config.json                   {gateway}: the WebSocket URL pages connect to
//   GET /, /app.js, /sdk/...           the page (../web) and the SDK (clients/js/dist)
//
//     node backend/server.mjs --gateway-api http://127.0.0.1:8000 --port 3005
//
// Prints `ready http://<host>:<port>` on stdout once it serves; logs go to stderr.

import { createHash, createHmac, randomUUID, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { dirname, extname, join, normalize, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { Network, VALIDATORS } from './network.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const log = (message) => console.error(`validator-backend: ${message}`);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function options() {
  const env = process.env;
  const { values } = parseArgs({
    options: {
      host: { type: 'string', default: env.HOST ?? '127.0.0.1' },
      // Must match the `url` of the `validators.` route in gateway.toml.
      port: { type: 'string', default: env.PORT ?? '3005' },
      // Any gateway node, or the load balancer in front of them: the API acts on the whole cluster.
      'gateway-api': { type: 'string', default: env.GATEWAY_API ?? 'http://127.0.0.1:8000' },
      // One of the gateways' `api.keys`.
      'api-key': { type: 'string', default: env.API_KEY ?? 'validator-dashboard-dev-key' },
      // The route's `secret`: calls without it are refused.
      'rpc-secret': { type: 'string', default: env.RPC_SECRET ?? 'validator-dashboard-rpc-secret' },
      // The gateways' auth.hmac_secret, to mint development tokens.
      'jwt-secret': { type: 'string', default: env.JWT_SECRET ?? 'validator-dashboard-dev-secret' },
      'block-ms': { type: 'string', default: env.BLOCK_MS ?? '500' },
      'gateway-url': { type: 'string', default: env.GATEWAY_URL ?? '' },
      web: { type: 'string', default: env.WEB_DIR ?? join(here, '../web') },
      sdk: { type: 'string', default: env.SDK_DIR ?? join(here, '../../../clients/js/dist') },
    },
  });
  return { ...values, port: Number(values.port), blockMs: Number(values['block-ms']), devTokens: env.DEV_TOKENS !== '0' };
}

/** An HS256 connection token (docs/protocol.md §9.2). */
function mintToken(secret, user, { ttlSecs = 3600, info } = {}) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const claims = { sub: user, exp: Math.floor(Date.now() / 1000) + ttlSecs, info };
  const unsigned = `${encode({ typ: 'JWT', alg: 'HS256' })}.${encode(claims)}`;
  return `${unsigned}.${createHmac('sha256', secret).update(unsigned).digest('base64url')}`;
}

/** Constant-time comparison of two strings (as SHA-256 digests, so lengths do not leak). */
function sameSecret(a, b) {
  const digest = (s) => createHash('sha256').update(String(s)).digest();
  return timingSafeEqual(digest(a), digest(b));
}

/**
 * The gateway's HTTP server API. Calls go out one at a time, in order, so the `stats`
 * events keep the order of the blocks. A call that fails for a reason that may pass (the
 * node behind the address died, 5xx, 429) is retried with the same `idempotency_key`: if
 * the first attempt was stored after all, the gateway returns its result instead of
 * publishing twice (operations.md, `POST /api/v1/publish`).
 */
class GatewayApi {
  constructor(base, key) {
    this.base = base.replace(/\/$/, '');
    this.key = key;
    this.queue = Promise.resolve();
    this.pending = 0;
    this.retries = 0;
  }

  post(path, body) {
    this.pending += 1;
    const result = this.queue.then(() => this.send(path, body));
    this.queue = result.catch(() => {}).finally(() => (this.pending -= 1));
    return result;
  }

  async send(path, body) {
    for (let attempt = 0; ; attempt++) {
      let status = 0;
      let text = '';
      try {
        const response = await fetch(`${this.base}${path}`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'x-api-key': this.key },
          body: JSON.stringify(body),
          signal: AbortSignal.timeout(5000),
        });
        status = response.status;
        text = await response.text();
        if (response.ok) return text ? JSON.parse(text) : null;
      } catch (error) {
        text = error.message;
      }
      if (status >= 400 && status < 500 && status !== 429 && status !== 408) {
        throw new Error(`${path}: HTTP ${status} ${text.slice(0, 200)}`); // our mistake: no retry
      }
      this.retries += 1;
      if (attempt % 10 === 0) log(`${path}: ${status ? `HTTP ${status}` : text}; retrying (attempt ${attempt + 1})`);
      await sleep(Math.min(100 * 2 ** Math.min(attempt, 4), 1000));
    }
  }
}

class Dashboard {
  constructor(opts) {
    this.api = new GatewayApi(opts['gateway-api'], opts['api-key']);
    this.network = new Network({ blockMs: opts.blockMs });
    this.run = randomUUID().slice(0, 8); // idempotency keys of this process only
    this.alertUsers = new Map(); // user → {since, sent}
    this.alertsSent = 0;
    this.published = null; // {height, offset, epoch} of the last stored `stats`
    this.network.onBlock = (stats) => this.publishStats(stats);
    this.network.onAlert = (alert) => this.publishAlert(alert);
  }

  publishStats(stats) {
    this.api.post('/api/v1/publish', {
      channel: 'validators:network', event: 'stats', data: stats, idempotency_key: `${this.run}:stats:${stats.height}`,
    }).then(({ offset, epoch }) => {
      this.published = { height: stats.height, offset, epoch };
    }).catch((error) => log(`stats ${stats.height} dropped: ${error.message}`));
  }

  publishAlert(alert) {
    this.alertsSent += 1;
    const id = `${this.run}:alert:${this.alertsSent}`;
    for (const [user, entry] of this.alertUsers) {
      entry.sent += 1;
      this.api.post('/api/v1/users/publish', {
        user, event: 'alert', data: { id, at: Date.now(), ...alert }, idempotency_key: `${id}:${user}`,
      }).catch((error) => log(`alert to ${user} dropped: ${error.message}`));
    }
  }

  /** One `rpc` call, as the gateway posts it: `user` and `info` come from the verified token. */
  handle({ method, data, user, info }) {
    const fail = (code, message) => ({ error: { code, message } });
    switch (method) {
      case 'validators.status':
        return { result: this.network.status() };
      case 'validators.subscribe_alerts':
      case 'validators.unsubscribe_alerts': {
        if (!user) return fail(1401, 'sign in to get alerts');
        if (method.endsWith('.subscribe_alerts')) {
          if (!this.alertUsers.has(user)) this.alertUsers.set(user, { since: this.network.height, sent: 0 });
        } else this.alertUsers.delete(user);
        return { result: { subscribed: this.alertUsers.has(user), subscribers: this.alertUsers.size } };
      }
      case 'validators.jail': {
        if (info?.role !== 'admin') return fail(1403, 'jailing a validator is for admins only');
        const blocks = data?.blocks ?? 6;
        if (!Number.isInteger(blocks) || blocks < 1 || blocks > 40) return fail(1400, 'blocks: an integer from 1 to 40');
        const jailed = this.network.jail(data?.validator, blocks, info?.name ?? user);
        return jailed ? { result: jailed } : fail(1404, `no validator ${JSON.stringify(data?.validator)}`);
      }
      default:
        return fail(1404, `unknown method ${method}`);
    }
  }

  state() {
    return {
      height: this.network.height,
      consensus: this.network.consensus,
      published: this.published,
      pending_publishes: this.api.pending,
      publish_retries: this.api.retries,
      alert_users: Object.fromEntries(this.alertUsers),
    };
  }
}

const TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css',
  '.map': 'application/json', '.png': 'image/png', '.svg': 'image/svg+xml', '.json': 'application/json',
};

function httpServer(opts, dashboard) {
  const send = (response, status, body, type = 'application/json') => {
    response.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
    response.end(type === 'application/json' ? JSON.stringify(body) : body);
  };
  const serveFile = async (response, root, path) => {
    const file = normalize(join(root, path));
    if (file !== root && !file.startsWith(root.endsWith(sep) ? root : root + sep)) return send(response, 403, { error: 'forbidden' });
    try {
      send(response, 200, await readFile(file), TYPES[extname(file)] ?? 'application/octet-stream');
    } catch {
      send(response, 404, { error: 'not found' });
    }
  };
  const readBody = async (request) => {
    let size = 0;
    const chunks = [];
    for await (const chunk of request) {
      size += chunk.length;
      if (size > 1 << 20) throw Object.assign(new Error('body too large'), { status: 413 });
      chunks.push(chunk);
    }
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  };
  return createServer(async (request, response) => {
    const url = new URL(request.url, 'http://localhost');
    const path = url.pathname;
    try {
      if (path === '/rpc') {
        // The gateway's HTTP route. Anything but 200 is `115 unavailable` for the client.
        if (request.method !== 'POST') return send(response, 405, { error: 'POST only' });
        if (!sameSecret(request.headers['x-switchboard-secret'] ?? '', opts['rpc-secret'])) return send(response, 401, { error: 'bad secret' });
        return send(response, 200, dashboard.handle(await readBody(request)));
      }
      if (path === '/token') {
        if (!opts.devTokens) return send(response, 404, { error: 'development tokens are off' });
        const user = url.searchParams.get('user') ?? '';
        if (!/^[A-Za-z0-9_.@=-]{1,64}$/.test(user)) return send(response, 400, { error: 'user: 1-64 of A-Z a-z 0-9 _ . @ = -' });
        const role = url.searchParams.get('role') === 'admin' ? 'admin' : 'viewer';
        const name = user.charAt(0).toUpperCase() + user.slice(1);
        return send(response, 200, mintToken(opts['jwt-secret'], user, { info: { name, role } }), 'text/plain');
      }
      if (path === '/api/state') return send(response, 200, dashboard.state());
      if (path === '/config.json') return send(response, 200, { gateway: opts['gateway-url'] || null, validators: VALIDATORS });
      if (path === '/healthz') return send(response, 200, { ok: true });
      if (path.startsWith('/sdk/')) return serveFile(response, normalize(opts.sdk), path.slice(5));
      return serveFile(response, normalize(opts.web), path === '/' ? 'index.html' : path.slice(1));
    } catch (error) {
      return send(response, error.status ?? (error instanceof SyntaxError ? 400 : 500), { error: error.message });
    }
  });
}

async function main() {
  const opts = options();
  const dashboard = new Dashboard(opts);
  const server = httpServer(opts, dashboard);
  await new Promise((listening) => server.listen(opts.port, opts.host, listening));
  const { port } = server.address();
  dashboard.network.start();
  process.stdout.write(`ready http://${opts.host}:${port}\n`);
  log(`serving http://${opts.host}:${port} (page at /?user=alice&role=admin); publishing to ${opts['gateway-api']}`);

  for (const signal of ['SIGTERM', 'SIGINT']) {
    process.on(signal, () => {
      log(`${signal}: stopping`);
      dashboard.network.stop();
      server.close();
      server.closeAllConnections?.();
      // Let the publications in hand finish (bounded).
      Promise.race([dashboard.api.queue, sleep(2000)]).then(() => process.exit(0));
    });
  }
}

main().catch((error) => {
  log(error.stack ?? String(error));
  process.exit(1);
});
