#!/usr/bin/env node
// The DAO voting backend: answers the pages' `rpc` calls (route `dao.` → Redis stream
// `dao`) and publishes tallies and notifications with `FCALL sb_publish`. It talks to
// Switchboard only through Redis, per docs/redis.md §4 and §11.
//
// For development it also serves, over HTTP:
//   GET /token?user=<id>      a connection token for that user (signed with JWT_SECRET);
//                             never expose this outside your laptop (DEV_TOKENS=0 turns it off)
//   GET /api/proposals/<id>   the backend's state of a proposal (votes, tally)
//   GET /config.json          {gateway}: the WebSocket URL pages connect to
//   GET /, /app.js, /sdk/...  the page (../web) and the SDK (clients/js/dist)
//
//     node backend/server.mjs --redis-url redis://127.0.0.1:6379 --port 3000
//
// Prints `ready http://<host>:<port>` on stdout once it serves; logs go to stderr.

import { createHmac } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { dirname, extname, join, normalize, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { createClient } from 'redis';

import { Dao, MEMBERS } from './dao.mjs';
import { Publisher, RpcWorker } from './switchboard.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const log = (message) => console.error(`dao-backend: ${message}`);

function options() {
  const env = process.env;
  const { values } = parseArgs({
    options: {
      'redis-url': { type: 'string', default: env.REDIS_URL ?? 'redis://127.0.0.1:6379' },
      host: { type: 'string', default: env.HOST ?? '127.0.0.1' },
      port: { type: 'string', default: env.PORT ?? '3000' },
      // The gateways' auth.hmac_secret (gateway.toml), to mint development tokens.
      'jwt-secret': { type: 'string', default: env.JWT_SECRET ?? 'dao-voting-dev-secret' },
      // The `stream` of the `dao.` route in gateway.toml.
      route: { type: 'string', default: env.RPC_ROUTE ?? 'dao' },
      // What /config.json tells pages (default: port 8000 of the page's host).
      'gateway-url': { type: 'string', default: env.GATEWAY_URL ?? '' },
      web: { type: 'string', default: env.WEB_DIR ?? join(here, '../web') },
      sdk: { type: 'string', default: env.SDK_DIR ?? join(here, '../../../clients/js/dist') },
    },
  });
  return { ...values, port: Number(values.port), devTokens: env.DEV_TOKENS !== '0' };
}

/** An HS256 connection token (docs/protocol.md §9.2). */
function mintToken(secret, user, { ttlSecs = 3600, info } = {}) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const claims = { sub: user, exp: Math.floor(Date.now() / 1000) + ttlSecs, info };
  const unsigned = `${encode({ typ: 'JWT', alg: 'HS256' })}.${encode(claims)}`;
  return `${unsigned}.${createHmac('sha256', secret).update(unsigned).digest('base64url')}`;
}

const TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css',
  '.map': 'application/json', '.png': 'image/png', '.svg': 'image/svg+xml', '.json': 'application/json',
};

function httpServer(opts, dao) {
  const send = (response, status, body, type = 'application/json') => {
    response.writeHead(status, { 'content-type': type, 'access-control-allow-origin': '*', 'cache-control': 'no-store' });
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
  return createServer(async (request, response) => {
    const url = new URL(request.url, 'http://localhost');
    const path = url.pathname;
    try {
      if (path === '/token') {
        if (!opts.devTokens) return send(response, 404, { error: 'development tokens are off' });
        const user = url.searchParams.get('user') ?? '';
        if (!/^[A-Za-z0-9_.@=-]{1,64}$/.test(user)) return send(response, 400, { error: 'user: 1-64 of A-Z a-z 0-9 _ . @ = -' });
        const name = MEMBERS[user]?.name ?? user;
        return send(response, 200, mintToken(opts['jwt-secret'], user, { info: { name } }), 'text/plain');
      }
      const proposal = path.match(/^\/api\/proposals\/([^/]+)$/);
      if (proposal) return send(response, 200, dao.truth(decodeURIComponent(proposal[1])));
      if (path === '/config.json') return send(response, 200, { gateway: opts['gateway-url'] || null });
      if (path === '/healthz') return send(response, 200, { ok: true });
      if (path.startsWith('/sdk/')) return serveFile(response, normalize(opts.sdk), path.slice(5));
      return serveFile(response, normalize(opts.web), path === '/' ? 'index.html' : path.slice(1));
    } catch (error) {
      return send(response, error.code === 1404 ? 404 : 500, { error: error.message });
    }
  });
}

async function main() {
  const opts = options();
  const commands = createClient({ url: opts['redis-url'] });
  const reads = commands.duplicate();
  for (const client of [commands, reads]) client.on('error', (error) => log(`redis: ${error.message}`));
  await Promise.all([commands.connect(), reads.connect()]);

  const dao = new Dao(new Publisher(commands), { log });
  const worker = new RpcWorker(commands, reads, {
    route: opts.route,
    log,
    handlers: {
      'dao.cast_vote': (request) => dao.castVote(request),
      'dao.get_proposal': (request) => dao.snapshot(request.data?.proposal, request.user),
    },
  });

  const server = httpServer(opts, dao);
  await new Promise((listening) => server.listen(opts.port, opts.host, listening));
  const { port } = server.address();
  const running = worker.run();
  process.stdout.write(`ready http://${opts.host}:${port}\n`);
  log(`serving http://${opts.host}:${port} (page at /?user=alice)`);

  for (const signal of ['SIGTERM', 'SIGINT']) {
    process.on(signal, () => {
      log(`${signal}: stopping after the request in hand`);
      worker.stopping = true;
      server.close();
      server.closeAllConnections?.();
    });
  }
  await running;
  await Promise.all([commands.quit(), reads.quit()]).catch(() => {});
}

main().catch((error) => {
  log(error.stack ?? String(error));
  process.exit(1);
});
