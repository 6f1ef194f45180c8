// A harness for the reference apps (examples/<app>): real processes, nothing mocked.
//
//   redis-server (a free port, never 6379) ─┬─ gateway node-1 ─┐
//                                           ├─ gateway node-2 ─┼─ HAProxy (deploy/haproxy.cfg, 2 servers) ─ pages
//                                           └─ the app's backend (Redis only)
//   a static server: the app's web/ at /, the SDK's clients/js/dist at /sdk/
//   headless Chromium (playwright-core, Debian's /usr/bin/chromium), one context per user
//
// Environment: SWITCHBOARD_BIN (default target/debug/switchboard, relative to the repo
// root), CHROMIUM (default /usr/bin/chromium). Logs of every process go to
// target/app-logs/<app>/, screenshots to target/app-screenshots/<app>-<name>.png.
//
// Pages must expose `window.app.node`: the `node` of their current connection (the
// connect reply's), which is how `nodeOf(page)` finds the gateway a page is on.

import { execFile, spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { createServer as createTcpServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, extname, isAbsolute, join, normalize, resolve, sep } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';

import { chromium } from 'playwright-core';
import WebSocket from 'ws';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const BIN = resolve(ROOT, process.env.SWITCHBOARD_BIN ?? 'target/debug/switchboard');
export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
export const SDK_DIST = join(ROOT, 'clients/js/dist');
export { sleep };

const STARTUP_MS = 30_000;
const run = promisify(execFile);

/** Every process started and temporary folder made, removed if the test process exits without `close()`. */
const processes = new Set();
const tmpDirs = new Set();
process.on('exit', () => {
  for (const child of processes) {
    try {
      child.kill('SIGKILL');
    } catch {
      // gone
    }
  }
  for (const dir of tmpDirs) rmSync(dir, { recursive: true, force: true });
});
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => process.exit(130)); // runs the exit handler above
}

/** A free TCP port on 127.0.0.1 (never 6379, which may be a developer's Redis). */
export async function freePort() {
  for (;;) {
    const port = await new Promise((resolvePort, reject) => {
      const server = createTcpServer();
      server.on('error', reject);
      server.listen(0, '127.0.0.1', () => {
        const { port: chosen } = server.address();
        server.close(() => resolvePort(chosen));
      });
    });
    if (port !== 6379) return port;
  }
}

/** Polls `condition` until it returns something truthy; fails after `timeoutMs`. */
export async function until(condition, what, timeoutMs = 15_000, everyMs = 50) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await condition();
      if (last) return last;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${last})`);
    await sleep(everyMs);
  }
}

async function httpStatus(url) {
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(2000) });
    await response.arrayBuffer();
    return response.status;
  } catch {
    return 0;
  }
}

/** An HS256 connection token (protocol §9.2). */
export function mintToken(secret, sub, { ttl = 3600, info, channels } = {}) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const claims = { sub, exp: Math.floor(Date.now() / 1000) + ttl, info, channels };
  const unsigned = `${encode({ typ: 'JWT', alg: 'HS256' })}.${encode(claims)}`;
  return `${unsigned}.${createHmac('sha256', secret).update(unsigned).digest('base64url')}`;
}

/** `auth.hmac_secret` of a TOML configuration (the [auth] section's). */
export function hmacSecret(toml) {
  const auth = toml.split(/^\[/m).find((section) => section.startsWith('auth]'));
  const match = auth?.match(/^\s*hmac_secret\s*=\s*"([^"]*)"/m);
  if (!match) throw new Error('the configuration has no [auth] hmac_secret: pass `secret`');
  return match[1];
}

/**
 * deploy/haproxy.cfg for `count` gateways: the `server gatewayN` lines beyond `count`
 * removed, everything else unchanged (the addresses still come from SB_GATEWAY<n>).
 */
export function renderHaproxyConfig(count) {
  const original = readFileSync(join(ROOT, 'deploy/haproxy.cfg'), 'utf8');
  let servers = 0;
  const lines = original.split('\n').filter((line) => {
    const server = line.match(/^\s*server gateway(\d+) /);
    if (!server) return true;
    servers += 1;
    return Number(server[1]) <= count;
  });
  if (servers < count) throw new Error(`deploy/haproxy.cfg has ${servers} gateway servers, ${count} wanted`);
  return lines.join('\n');
}

class Proc {
  constructor(name, command, args, { env = {}, cwd = ROOT, logDir }) {
    this.name = name;
    this.log = join(logDir, `${name}.log`);
    const fd = openSync(this.log, 'a');
    this.stdout = '';
    this.child = spawn(command, args, { cwd, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', fd] });
    closeSync(fd);
    processes.add(this.child);
    this.child.stdout.on('data', (chunk) => {
      this.stdout += chunk;
      writeFileSync(this.log, chunk, { flag: 'a' });
    });
    this.exited = new Promise((done) => this.child.once('exit', (code, signal) => done({ code, signal })));
    this.exited.then(() => processes.delete(this.child));
    this.child.on('error', (error) => writeFileSync(this.log, `spawn error: ${error.message}\n`, { flag: 'a' }));
  }

  get alive() {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  tail(lines = 20) {
    try {
      return readFileSync(this.log, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '';
    }
  }

  /** Waits until `ready()` is truthy, failing at once if the process exits. */
  async waitReady(ready, what) {
    let exited = false;
    this.exited.then(() => (exited = true));
    await until(async () => {
      if (exited) throw new Error(`${this.name} exited before ${what}:\n${this.tail()}`);
      return ready();
    }, `${this.name}: ${what}`, STARTUP_MS, 100).catch((error) => {
      throw new Error(`${error.message}\n---- ${this.log}\n${this.tail()}`);
    });
  }

  /** SIGTERM, then SIGKILL after `graceMs`. */
  async stop(graceMs = 5000) {
    if (!this.alive) return;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }

  async kill9() {
    if (this.alive) this.child.kill('SIGKILL');
    await this.exited;
  }
}

/**
 * Starts everything for one app and returns the harness `h`. Options:
 * - `app`: the app's name (logs, screenshots);
 * - `config`: the gateway TOML file (absolute or relative to the repo root); `broker.url`
 *   and `node.listen` are overridden; `secret`: its HS256 secret when not `auth.hmac_secret`;
 * - `gatewayEnv`: extra environment of the gateways (e.g. SWITCHBOARD_BROKER__PRESENCE_TTL_SECS);
 * - `backend({redisUrl, port, secret, root, lb})` → `{command, args, env?, cwd?, ready?}`:
 *   the app's backend, ready when its stdout matches `ready` (default /^ready/m); `lb` is
 *   HAProxy (`lb.http` for the HTTP API through the load balancer);
 * - `httpRoute`: the URL of an HTTP rpc route in the config that the backend serves (e.g.
 *   `http://127.0.0.1:3005/rpc`): the backend's port is picked first and the gateways get
 *   a copy of the config with the route pointing at it;
 * - `web`: the page's folder; `nodes` (2) gateways; `contexts` (2) browser contexts.
 */
export async function startHarness(options) {
  const h = new Harness(options);
  try {
    await h.start();
  } catch (error) {
    await h.close();
    throw error;
  }
  return h;
}

class Harness {
  constructor({ app, config, secret, gatewayEnv = {}, backend, httpRoute, web, nodes = 2, contexts = 2, viewport = { width: 1180, height: 760 } }) {
    this.app = app;
    this.configFile = isAbsolute(config) ? config : join(ROOT, config);
    this.toml = readFileSync(this.configFile, 'utf8');
    this.httpRoute = httpRoute;
    this.secret = secret ?? hmacSecret(this.toml);
    this.gatewayEnv = gatewayEnv;
    this.backendSpec = backend;
    this.web = web && (isAbsolute(web) ? web : join(ROOT, web));
    this.nodeCount = nodes;
    this.contextCount = contexts;
    this.viewport = viewport;
    this.logDir = join(ROOT, 'target/app-logs', app);
    this.screenshotDir = join(ROOT, 'target/app-screenshots');
    this.tmp = mkdtempSync(join(tmpdir(), `sb-app-${app}-`));
    tmpDirs.add(this.tmp);
    this.gateways = [];
    this.contexts = [];
    this.pageErrors = [];
    this.clients = new Set();
  }

  async start() {
    rmSync(this.logDir, { recursive: true, force: true });
    mkdirSync(this.logDir, { recursive: true });
    mkdirSync(this.screenshotDir, { recursive: true });
    await this.startRedis();
    if (this.httpRoute) await this.routeToBackend();
    for (let n = 1; n <= this.nodeCount; n++) this.gateways.push(await this.startGateway(n));
    await this.startHaproxy();
    if (this.backendSpec) await this.startBackend();
    if (this.web) await this.startSite();
    if (this.contextCount > 0) await this.startBrowser();
  }

  // ---- processes ------------------------------------------------------------------

  async startRedis() {
    const port = await freePort();
    const dir = join(this.tmp, 'redis');
    mkdirSync(dir);
    this.redisProc = new Proc('redis', 'redis-server', [
      '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir,
    ], { logDir: this.logDir });
    this.redis = { port, url: `redis://127.0.0.1:${port}`, proc: this.redisProc };
    await this.redisProc.waitReady(async () => (await this.redisCli('PING')) === 'PONG', 'PONG');
  }

  /** One redis-cli command; resolves with its stdout, trimmed. */
  async redisCli(...args) {
    const { stdout } = await run('redis-cli', ['-p', String(this.redis.port), ...args.map(String)], { timeout: 5000 });
    return stdout.trim();
  }

  async startGateway(n) {
    const port = await freePort();
    const name = `node-${n}`;
    const proc = new Proc(`gateway-${n}`, BIN, [
      '--config', this.configFile, '--listen', `127.0.0.1:${port}`, '--broker', this.redis.url,
    ], { logDir: this.logDir, env: { NO_COLOR: '1', SWITCHBOARD_NODE__NAME: name, ...this.gatewayEnv } });
    const gateway = {
      n, name, port, proc,
      address: `127.0.0.1:${port}`,
      url: `ws://127.0.0.1:${port}/ws`,
      http: `http://127.0.0.1:${port}`,
      get alive() {
        return proc.alive;
      },
    };
    // /readyz is 200 once the node's Redis connections work (operations.md, Readiness).
    await proc.waitReady(async () => (await httpStatus(`${gateway.http}/readyz`)) === 200, `ready on ${gateway.address}`);
    return gateway;
  }

  async startHaproxy() {
    const port = await freePort();
    const file = join(this.tmp, 'haproxy.cfg');
    writeFileSync(file, renderHaproxyConfig(this.gateways.length));
    const env = { SB_LB_BIND: `127.0.0.1:${port}` };
    for (const g of this.gateways) env[`SB_GATEWAY${g.n}`] = g.address;
    this.haproxyProc = new Proc('haproxy', 'haproxy', ['-db', '-f', file], { logDir: this.logDir, env });
    this.lb = { port, url: `ws://127.0.0.1:${port}/ws`, http: `http://127.0.0.1:${port}`, proc: this.haproxyProc };
    await this.haproxyProc.waitReady(async () => (await httpStatus(`${this.lb.http}/readyz`)) === 200, `forwarding on port ${port}`);
  }

  /** The gateways start before the backend: pick its port now and point the route at it. */
  async routeToBackend() {
    this.backendPort = await freePort();
    const url = new URL(this.httpRoute);
    const routed = this.toml.replaceAll(this.httpRoute, `http://127.0.0.1:${this.backendPort}${url.pathname}`);
    if (routed === this.toml) throw new Error(`${this.configFile} has no route URL ${this.httpRoute}`);
    this.configFile = join(this.tmp, 'gateway.toml');
    writeFileSync(this.configFile, routed);
    this.toml = routed;
  }

  async startBackend() {
    const port = this.backendPort ?? (await freePort());
    const spec = this.backendSpec({ redisUrl: this.redis.url, port, secret: this.secret, root: ROOT, lb: this.lb });
    const ready = spec.ready ?? /^ready/m;
    this.backendProc = new Proc('backend', spec.command, spec.args ?? [], { logDir: this.logDir, env: spec.env, cwd: spec.cwd });
    await this.backendProc.waitReady(() => ready.test(this.backendProc.stdout), `stdout matching ${ready}`);
    this.backend = { port, http: `http://127.0.0.1:${port}`, proc: this.backendProc };
  }

  /** Serves the app's web/ at / and the SDK's dist at /sdk/. */
  async startSite() {
    const types = {
      '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css',
      '.map': 'application/json', '.json': 'application/json', '.png': 'image/png', '.svg': 'image/svg+xml',
    };
    const inside = (root, file) => file === root || file.startsWith(root + sep);
    this.siteServer = createServer(async (request, response) => {
      const path = decodeURIComponent(new URL(request.url, 'http://x').pathname);
      const [root, rest] = path.startsWith('/sdk/') ? [SDK_DIST, path.slice(5)] : [this.web, path === '/' ? 'index.html' : path.slice(1)];
      const file = normalize(join(root, rest));
      if (!inside(root, file)) return response.writeHead(403).end();
      try {
        const body = await readFile(file);
        response.writeHead(200, { 'content-type': types[extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-store' }).end(body);
      } catch {
        response.writeHead(404).end();
      }
    });
    await new Promise((listening) => this.siteServer.listen(0, '127.0.0.1', listening));
    this.site = `http://127.0.0.1:${this.siteServer.address().port}`;
  }

  async startBrowser() {
    this.browser = await chromium.launch({
      executablePath: CHROMIUM,
      // As in clients/js/test/browser: playwright-core gives every launch a fresh profile.
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      timeout: STARTUP_MS,
    });
    for (let i = 0; i < this.contextCount; i++) this.contexts.push(await this.browser.newContext({ viewport: this.viewport }));
  }

  // ---- helpers for tests --------------------------------------------------------

  /** A connection token for `user`, signed with the gateways' secret. */
  token(user, options) {
    return mintToken(this.secret, user, options);
  }

  /**
   * Opens the app's page in `context` (a context, or its index) with the query
   * parameters given (`ws` defaults to HAProxy's URL). Errors thrown in the page are
   * collected in `h.pageErrors`.
   */
  async open(context, params = {}, label = '') {
    const ctx = typeof context === 'number' ? this.contexts[context] : context;
    const page = await ctx.newPage();
    page.on('pageerror', (error) => this.pageErrors.push(`${label}: ${error.message}`));
    const query = new URLSearchParams({ ws: this.lb.url, ...params });
    await page.goto(`${this.site}/?${query}`);
    return page;
  }

  /** The gateway (`h.gateways[i]`) `page` is connected to, from `window.app.node`. */
  async nodeOf(page) {
    const name = await page.evaluate(() => window.app?.state === 'connected' ? window.app.node : null);
    return this.gateways.find((g) => g.name === name);
  }

  /** SIGKILLs a gateway node (`h.gateways[i]` or its name) and waits until it is gone. */
  async kill9(gateway) {
    const g = typeof gateway === 'string' ? this.gateways.find((x) => x.name === gateway) : gateway;
    await g.proc.kill9();
    return g;
  }

  /** Saves a screenshot of `page` to target/app-screenshots/<app>-<name>.png; returns the path. */
  async screenshot(page, name) {
    const path = join(this.screenshotDir, `${this.app}-${name}.png`);
    // Transitions finished: the bars at their final width.
    await page.screenshot({ path, fullPage: true, animations: 'disabled' });
    return path;
  }

  /**
   * An SDK client in Node (the `ws` package) for `user` (token `info` from `info`), closed
   * by `close()`. `url` defaults to HAProxy; other options go to the SDK's `Client`.
   */
  async nodeClient(user, { url = this.lb.url, info, ...options } = {}) {
    const { Client } = await import(pathToFileURL(join(SDK_DIST, 'index.js')).href);
    const client = new Client(url, {
      WebSocket,
      getToken: () => this.token(user, { info }),
      backoff: { baseMs: 50, maxMs: 1000 },
      ...options,
    });
    this.clients.add(client);
    return client;
  }

  /** Stops everything; bounded (each step has its own limit). Safe to call twice. */
  async close() {
    for (const client of this.clients) client.disconnect();
    this.clients.clear();
    const withLimit = (promise, ms) => Promise.race([promise.catch(() => {}), sleep(ms)]);
    if (this.browser) await withLimit(this.browser.close(), 10_000);
    this.browser = undefined;
    if (this.siteServer) {
      this.siteServer.closeAllConnections?.();
      await withLimit(new Promise((done) => this.siteServer.close(done)), 2000);
      this.siteServer = undefined;
    }
    await this.backendProc?.stop(3000);
    await this.haproxyProc?.kill9();
    await Promise.all(this.gateways.map((g) => g.proc.stop(5000)));
    await this.redisProc?.stop(3000);
    rmSync(this.tmp, { recursive: true, force: true });
    tmpDirs.delete(this.tmp);
  }

  /** The last lines of every process log, for failure messages. */
  logs(lines = 15) {
    const procs = [this.redisProc, ...this.gateways.map((g) => g.proc), this.haproxyProc, this.backendProc].filter(Boolean);
    return procs.map((p) => `---- ${p.log}\n${p.tail(lines)}`).join('\n');
  }
}
