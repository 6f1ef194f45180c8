#!/usr/bin/env node
// The portfolio backend (Node, no dependencies): simulated tokenized-asset prices, KYC
// reviews and governance proposals. It talks to Switchboard only over HTTP, through two
// documented contracts (docs/operations.md):
//
//   - it answers the pages' `rpc` calls on POST /rpc (the gateway's HTTP route
//     `prefix = "portfolio."` posts them with the X-Switchboard-Secret header);
//   - it publishes (POST /api/v1/publish) and attaches / detaches channels to a user's
//     connections server-side (POST /api/v1/users/subscribe, /api/v1/users/unsubscribe).
//
// Topics and the channels they mean (the page names a topic, never a channel):
//   portfolio   portfolio:<user>  a `valuation` event every TICK_MS for every known user
//   kyc         kyc:<user>        `kyc` status transitions: pending → review → approved
//   governance  governance:all    a `proposal` event every PROPOSAL_MS
//
// Server-side subscriptions last one connection (protocol §5.5): after a reconnect the page
// calls portfolio.subscribe_topic again with the position of its last publication
// (`since`), and the backend attaches the channel with `recover`, so the missed
// publications follow the `subscribe` push with no gap and no duplicate.
//
// For development it also serves:
//   GET /token?user=<id>   a connection token (signed with JWT_SECRET; DEV_TOKENS=0 turns it off)
//   GET /api/state         the backend's state (topics per user, last publications)
//   GET /config.json       {gateway}: the WebSocket URL pages connect to
//   GET /, /app.js, /sdk/  the page (../web) and the SDK (clients/js/dist)
//
//     node backend/server.mjs --gateway-api http://127.0.0.1:8000 --port 3006
//
// Prints `ready http://<host>:<port>` on stdout once it serves; logs go to stderr.

import { createHash, createHmac, randomUUID, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { dirname, extname, join, normalize, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = dirname(fileURLToPath(import.meta.url));
const log = (message) => console.error(`portfolio-backend: ${message}`);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export const TOPICS = ['portfolio', 'kyc', 'governance'];
const KYC_STEPS = ['pending', 'review', 'approved'];
const ASSETS = [
  { symbol: 'RE-JKT1', name: 'Jakarta Office Tower (tokenized)', price: 104.2 },
  { symbol: 'INF-TOLL', name: 'Toll Road Revenue Share', price: 51.7 },
  { symbol: 'GRN-SOL', name: 'Solar Farm Bond', price: 12.35 },
];
const HOLDINGS = { // units per asset; unknown users get the default
  alice: [120, 300, 2000],
  bob: [10, 40, 150],
  default: [25, 25, 25],
};

function options() {
  const env = process.env;
  const { values } = parseArgs({
    options: {
      host: { type: 'string', default: env.HOST ?? '127.0.0.1' },
      // Must match the `url` of the `portfolio.` route in gateway.toml.
      port: { type: 'string', default: env.PORT ?? '3006' },
      // Any gateway node, or the load balancer in front of them: the API acts on the whole cluster.
      'gateway-api': { type: 'string', default: env.GATEWAY_API ?? 'http://127.0.0.1:8000' },
      'api-key': { type: 'string', default: env.API_KEY ?? 'portfolio-dev-key' },
      'rpc-secret': { type: 'string', default: env.RPC_SECRET ?? 'portfolio-rpc-secret' },
      'jwt-secret': { type: 'string', default: env.JWT_SECRET ?? 'portfolio-dev-secret' },
      'tick-ms': { type: 'string', default: env.TICK_MS ?? '500' },
      'kyc-step-ms': { type: 'string', default: env.KYC_STEP_MS ?? '3000' },
      'proposal-ms': { type: 'string', default: env.PROPOSAL_MS ?? '1500' },
      'gateway-url': { type: 'string', default: env.GATEWAY_URL ?? '' },
      web: { type: 'string', default: env.WEB_DIR ?? join(here, '../web') },
      sdk: { type: 'string', default: env.SDK_DIR ?? join(here, '../../../clients/js/dist') },
    },
  });
  return {
    ...values,
    port: Number(values.port),
    tickMs: Number(values['tick-ms']),
    kycStepMs: Number(values['kyc-step-ms']),
    proposalMs: Number(values['proposal-ms']),
    devTokens: env.DEV_TOKENS !== '0',
  };
}

/** An HS256 connection token (docs/protocol.md §9.2). */
function mintToken(secret, user, { ttlSecs = 3600, info } = {}) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const claims = { sub: user, exp: Math.floor(Date.now() / 1000) + ttlSecs, info };
  const unsigned = `${encode({ typ: 'JWT', alg: 'HS256' })}.${encode(claims)}`;
  return `${unsigned}.${createHmac('sha256', secret).update(unsigned).digest('base64url')}`;
}

function sameSecret(a, b) {
  const digest = (s) => createHash('sha256').update(String(s)).digest();
  return timingSafeEqual(digest(a), digest(b));
}

class ApiError extends Error {
  constructor(status, body, path) {
    super(`${path}: HTTP ${status} ${body.slice(0, 200)}`);
    this.status = status;
    try {
      this.slug = JSON.parse(body).error?.code;
    } catch {
      this.slug = undefined;
    }
  }
}

/**
 * The gateway's HTTP server API. Publications go out one at a time per channel queue, in
 * order; a call that fails for a reason that may pass (node died, 5xx, 429) is retried with
 * the same idempotency key (operations.md, POST /api/v1/publish).
 */
class GatewayApi {
  constructor(base, key) {
    this.base = base.replace(/\/$/, '');
    this.key = key;
    this.queue = Promise.resolve();
    this.pending = 0;
    this.retries = 0;
  }

  /** Queued, in order, retried until it works or fails for good. */
  post(path, body) {
    this.pending += 1;
    const result = this.queue.then(() => this.send(path, body));
    this.queue = result.catch(() => {}).finally(() => (this.pending -= 1));
    return result;
  }

  async send(path, body, { retries = Infinity } = {}) {
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
      if ((status >= 400 && status < 500 && status !== 429 && status !== 408) || attempt >= retries) {
        throw new ApiError(status, text, path);
      }
      this.retries += 1;
      if (attempt % 10 === 0) log(`${path}: ${status ? `HTTP ${status}` : text}; retrying (attempt ${attempt + 1})`);
      await sleep(Math.min(100 * 2 ** Math.min(attempt, 4), 1000));
    }
  }
}

class Portfolio {
  constructor(opts) {
    this.opts = opts;
    this.api = new GatewayApi(opts['gateway-api'], opts['api-key']);
    this.run = randomUUID().slice(0, 8);
    this.prices = ASSETS.map((a) => a.price);
    this.users = new Map(); // user → {topics: Set, seq, kyc: {step, since}}
    this.published = {}; // channel → {offset, epoch, seq?}
    this.proposals = 0;
    this.timers = [];
  }

  channelOf(user, topic) {
    return topic === 'governance' ? 'governance:all' : `${topic}:${user}`;
  }

  userEntry(user) {
    let entry = this.users.get(user);
    if (!entry) {
      entry = { topics: new Set(), seq: 0, kyc: null };
      this.users.set(user, entry);
    }
    return entry;
  }

  start() {
    this.timers.push(setInterval(() => this.tick(), this.opts.tickMs));
    this.timers.push(setInterval(() => this.propose(), this.opts.proposalMs));
    this.timers.push(setInterval(() => this.advanceKyc(), 250));
  }

  stop() {
    for (const timer of this.timers) clearInterval(timer);
  }

  publish(channel, event, data, key) {
    return this.api.post('/api/v1/publish', { channel, event, data, idempotency_key: `${this.run}:${key}` })
      .then(({ offset, epoch }) => {
        this.published[channel] = { offset, epoch, ...(data.seq !== undefined ? { seq: data.seq } : {}) };
      })
      .catch((error) => log(`${channel} ${event} dropped: ${error.message}`));
  }

  /** Prices move; every user who ever asked for a topic gets a valuation (attached or not). */
  tick() {
    this.prices = this.prices.map((p) => Math.max(0.01, p * (1 + (Math.random() - 0.5) * 0.01)));
    for (const [user, entry] of this.users) {
      entry.seq += 1;
      const units = HOLDINGS[user] ?? HOLDINGS.default;
      const positions = ASSETS.map((a, i) => ({
        symbol: a.symbol, name: a.name, units: units[i], price: round(this.prices[i]), value: round(units[i] * this.prices[i]),
      }));
      const total = round(positions.reduce((sum, p) => sum + p.value, 0));
      this.publish(`portfolio:${user}`, 'valuation', { user, seq: entry.seq, at: Date.now(), total, positions }, `portfolio:${user}:${entry.seq}`);
    }
  }

  propose() {
    this.proposals += 1;
    const n = this.proposals;
    const subjects = ['Raise solar farm reserve to 8%', 'Refinance toll road tranche B', 'Add auditor for office tower', 'Quarterly distribution schedule', 'Lower platform fee to 0.4%'];
    this.publish('governance:all', 'proposal', { id: n, at: Date.now(), title: `#${n} ${subjects[n % subjects.length]}`, status: 'voting' }, `gov:${n}`);
  }

  advanceKyc() {
    const now = Date.now();
    for (const [user, entry] of this.users) {
      const kyc = entry.kyc;
      if (!kyc || kyc.step >= KYC_STEPS.length - 1 || now - kyc.since < this.opts.kycStepMs) continue;
      kyc.step += 1;
      kyc.since = now;
      this.publish(`kyc:${user}`, 'kyc', { user, status: KYC_STEPS[kyc.step], at: now }, `kyc:${user}:${kyc.step}`);
    }
  }

  /** Attaches `channel` to every connection of `user`, recovering from `since` if given. */
  async attach(user, channel, since) {
    const body = { user, channel };
    if (since && Number.isInteger(since.offset) && typeof since.epoch === 'string') body.recover = { offset: since.offset, epoch: since.epoch };
    try {
      await this.api.send('/api/v1/users/subscribe', body, { retries: 5 });
    } catch (error) {
      if (error.slug === 'unrecoverable_position' && body.recover) {
        // History trimmed or stream reset: attach live; the page is told recovered=false.
        delete body.recover;
        await this.api.send('/api/v1/users/subscribe', body, { retries: 5 });
      } else throw error;
    }
  }

  /** One `rpc` call, as the gateway posts it: `user` comes from the verified token. */
  async handle({ method, data, user }) {
    const fail = (code, message) => ({ error: { code, message } });
    if (!user) return fail(1401, 'sign in first');
    const topic = data?.topic;
    switch (method) {
      case 'portfolio.subscribe_topic': {
        if (!TOPICS.includes(topic)) return fail(1400, `unknown topic ${JSON.stringify(topic)} (portfolio, kyc, governance)`);
        const entry = this.userEntry(user);
        entry.topics.add(topic);
        const channel = this.channelOf(user, topic);
        let since = data?.since;
        if (topic === 'kyc' && !entry.kyc) {
          // The review starts now: `pending` is published first, and the channel attached
          // from just before it, so the page gets it (a live attach would come after it).
          entry.kyc = { step: 0, since: Date.now() };
          await this.publish(channel, 'kyc', { user, status: KYC_STEPS[0], at: Date.now() }, `kyc:${user}:0`);
          const stored = this.published[channel];
          if (!since && stored) since = { offset: stored.offset - 1, epoch: stored.epoch };
        }
        try {
          await this.attach(user, channel, since);
        } catch (error) {
          return fail(1503, `could not attach ${topic}: ${error.slug ?? error.message}`);
        }
        return { result: { topic, channel, kyc: topic === 'kyc' ? KYC_STEPS[entry.kyc.step] : undefined } };
      }
      case 'portfolio.unsubscribe_topic': {
        if (!TOPICS.includes(topic)) return fail(1400, `unknown topic ${JSON.stringify(topic)} (portfolio, kyc, governance)`);
        this.users.get(user)?.topics.delete(topic);
        const channel = this.channelOf(user, topic);
        try {
          await this.api.send('/api/v1/users/unsubscribe', { user, channel, reason: `${topic} turned off` }, { retries: 5 });
        } catch (error) {
          if (error.slug !== 'unknown_user') return fail(1503, `could not detach ${topic}: ${error.slug ?? error.message}`);
        }
        return { result: { topic, channel } };
      }
      default:
        return fail(1404, `unknown method ${method}`);
    }
  }

  state() {
    return {
      users: Object.fromEntries([...this.users].map(([u, e]) => [u, { topics: [...e.topics], seq: e.seq, kyc: e.kyc ? KYC_STEPS[e.kyc.step] : null }])),
      published: this.published,
      pending_publishes: this.api.pending,
      publish_retries: this.api.retries,
    };
  }
}

const round = (x) => Math.round(x * 100) / 100;

const TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css',
  '.map': 'application/json', '.png': 'image/png', '.svg': 'image/svg+xml', '.json': 'application/json',
};

function httpServer(opts, portfolio) {
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
        if (request.method !== 'POST') return send(response, 405, { error: 'POST only' });
        if (!sameSecret(request.headers['x-switchboard-secret'] ?? '', opts['rpc-secret'])) return send(response, 401, { error: 'bad secret' });
        return send(response, 200, await portfolio.handle(await readBody(request)));
      }
      if (path === '/token') {
        if (!opts.devTokens) return send(response, 404, { error: 'development tokens are off' });
        const user = url.searchParams.get('user') ?? '';
        if (!/^[A-Za-z0-9_.@=-]{1,64}$/.test(user)) return send(response, 400, { error: 'user: 1-64 of A-Z a-z 0-9 _ . @ = -' });
        const name = user.charAt(0).toUpperCase() + user.slice(1);
        return send(response, 200, mintToken(opts['jwt-secret'], user, { info: { name } }), 'text/plain');
      }
      if (path === '/api/state') return send(response, 200, portfolio.state());
      if (path === '/config.json') return send(response, 200, { gateway: opts['gateway-url'] || null });
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
  const portfolio = new Portfolio(opts);
  const server = httpServer(opts, portfolio);
  await new Promise((listening) => server.listen(opts.port, opts.host, listening));
  const { port } = server.address();
  portfolio.start();
  process.stdout.write(`ready http://${opts.host}:${port}\n`);
  log(`serving http://${opts.host}:${port} (page at /?user=alice); gateway API ${opts['gateway-api']}`);
  for (const signal of ['SIGTERM', 'SIGINT']) {
    process.on(signal, () => {
      log(`${signal}: stopping`);
      portfolio.stop();
      server.close();
      server.closeAllConnections?.();
      Promise.race([portfolio.api.queue, sleep(2000)]).then(() => process.exit(0));
    });
  }
}

main().catch((error) => {
  log(error.stack ?? String(error));
  process.exit(1);
});
