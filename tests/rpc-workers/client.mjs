// The WebSocket client of run.sh: speaks protocol v1 JSON (docs/protocol.md) to gateway
// nodes and checks what the RPC workers answer. One check per invocation:
//
//   node client.mjs cast <ws url> <ws url> <calls per node>
//   node client.mjs fail <ws url>
//   node client.mjs hold <ws url> <hold ms>
//   node client.mjs timeout <ws url>
//
// The connection token comes from $TOKEN (user `alice`). Exit status 0 when the check
// passes; otherwise 1 with `FAIL: ...` on stderr.

import WebSocket from 'ws';

const USER = 'alice';
const TOKEN = process.env.TOKEN;

class CheckFailed extends Error {}

function check(condition, message) {
  if (!condition) throw new CheckFailed(message);
}

/** One protocol connection: commands out, replies matched to them by `id`. */
class Connection {
  static open(url) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, 'switchboard.v1.json');
      ws.once('open', () => resolve(new Connection(ws, url)));
      ws.once('error', (error) => reject(new CheckFailed(`cannot open ${url}: ${error.message}`)));
    });
  }

  constructor(ws, url) {
    this.ws = ws;
    this.url = url;
    this.nextId = 1;
    this.waiting = new Map(); // id -> resolve
    // Every reply by id, so a check can tell whether a command got a second one.
    this.replies = new Map(); // id -> [reply, ...]
    ws.on('message', (text) => {
      const frame = JSON.parse(text);
      if (frame.push !== undefined) return; // pushes (publications, refresh, ...) don't matter here
      const seen = this.replies.get(frame.id) ?? [];
      seen.push(frame);
      this.replies.set(frame.id, seen);
      this.waiting.get(frame.id)?.(frame);
      this.waiting.delete(frame.id);
    });
    ws.on('close', (code, reason) => {
      this.closed = `${code} ${reason}`;
      for (const resolve of this.waiting.values()) resolve({ closed: this.closed });
      this.waiting.clear();
    });
  }

  /** Sends a command; resolves with its reply, or fails after `limitMs`. */
  send(method, params, limitMs = 10_000) {
    const id = this.nextId++;
    return this.sendWithId(id, method, params, limitMs);
  }

  sendWithId(id, method, params, limitMs) {
    check(!this.closed, `${this.url} closed: ${this.closed}`);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new CheckFailed(`no reply to ${method} ${JSON.stringify(params)} within ${limitMs} ms`));
      }, limitMs);
      this.waiting.set(id, (reply) => {
        clearTimeout(timer);
        if (reply.closed) reject(new CheckFailed(`${this.url} closed while waiting: ${reply.closed}`));
        else resolve(reply);
      });
      this.ws.send(JSON.stringify({ id, method, params }));
    });
  }

  async connect() {
    const reply = await this.send('connect', { token: TOKEN });
    check(reply.result, `connect to ${this.url} failed: ${JSON.stringify(reply.error)}`);
    check(reply.result.user === USER, `connect: user ${reply.result.user}, expected ${USER}`);
    return reply.result;
  }

  rpc(method, data, limitMs) {
    return this.send('rpc', { method, data }, limitMs);
  }

  close() {
    this.ws.close();
  }
}

async function connected(url) {
  const connection = await Connection.open(url);
  const result = await connection.connect();
  return { connection, node: result.node };
}

const show = (value) => JSON.stringify(value);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// a. votes.cast through both nodes: every call answered correctly, and the answers come
// from both the Python and the Node worker (the consumer group spreads the requests).
async function cast(url1, url2, perNode) {
  const nodes = [await connected(url1), await connected(url2)];
  check(nodes[0].node !== nodes[1].node, `both connections landed on node ${nodes[0].node}`);
  const seen = {};
  for (const { connection, node } of nodes) {
    // One call at a time: both workers are then blocked in XREADGROUP when a request
    // arrives, and Redis hands it to the one that has waited longest, so they alternate.
    for (let proposal = 1; proposal <= perNode; proposal++) {
      const reply = await connection.rpc('votes.cast', { proposal, choice: 'for' });
      const data = reply.result?.data;
      check(data, `votes.cast on ${node}: expected a result, got ${show(reply)}`);
      check(data.accepted === true, `votes.cast on ${node}: not accepted: ${show(data)}`);
      check(data.proposal === proposal, `votes.cast on ${node}: proposal ${show(data.proposal)}, sent ${proposal}`);
      check(data.by === USER, `votes.cast on ${node}: by ${show(data.by)}, expected ${USER} (the entry's user)`);
      check(['python', 'node'].includes(data.worker), `votes.cast on ${node}: unknown worker ${show(data.worker)}`);
      seen[data.worker] = (seen[data.worker] ?? 0) + 1;
    }
    connection.close();
  }
  console.log(`votes.cast: ${2 * perNode} calls on ${nodes.map((n) => n.node).join(' and ')}, answered by ${show(seen)}`);
  check(seen.python > 0 && seen.node > 0, `expected answers from both workers, got ${show(seen)}`);
}

// b. Application errors pass through with their code and message.
async function fail(url) {
  const { connection } = await connected(url);
  const reply = await connection.rpc('votes.fail', { proposal: 7 });
  check(
    reply.error?.code === 1403 && reply.error?.message === 'not a member',
    `votes.fail: expected error 1403 "not a member", got ${show(reply)}`,
  );
  const unknown = await connection.rpc('votes.nope', {});
  check(unknown.error?.code === 1404, `votes.nope: expected error 1404, got ${show(unknown)}`);
  console.log('votes.fail: error 1403 "not a member"; unknown method: error 1404');
  connection.close();
}

// c. The worker holding this call is killed by run.sh; another one claims and answers it.
// The client must get exactly one reply, the claimer's.
async function hold(url, holdMs) {
  const { connection } = await connected(url);
  const id = 1000;
  // Longer than the route's timeout would make a 118 the expected outcome; the route
  // gives 20 s, and run.sh finishes the kill-and-claim well within that.
  const reply = await connection.sendWithId(id, 'rpc', { method: 'votes.hold', data: { proposal: 9, ms: holdMs } }, 25_000);
  check(reply.result?.data, `votes.hold: expected a result, got ${show(reply)}`);
  check(reply.result.data.worker === 'node', `votes.hold: answered by ${show(reply.result.data.worker)}, expected the claiming node worker`);
  check(reply.result.data.proposal === 9, `votes.hold: wrong answer ${show(reply)}`);
  // A second answer (the killed worker's, or a second claim's) must never reach us.
  await sleep(2000);
  const replies = connection.replies.get(id) ?? [];
  check(replies.length === 1, `votes.hold: ${replies.length} replies: ${show(replies)}`);
  check(!connection.closed, `connection closed: ${connection.closed}`);
  console.log(`votes.hold: one reply, from worker ${reply.result.data.worker}`);
  connection.close();
}

// d. With no worker, the client gets 118 timeout at the route's deadline (1 s).
async function timeout(url) {
  const { connection } = await connected(url);
  const started = Date.now();
  const reply = await connection.rpc('slow', { n: 1 }, 10_000);
  check(reply.error?.code === 118, `slow: expected error 118 timeout, got ${show(reply)}`);
  console.log(`slow: error 118 after ${Date.now() - started} ms`);
  connection.close();
}

const CHECKS = {
  cast: (url1, url2, perNode) => cast(url1, url2, Number(perNode)),
  fail,
  hold: (url, holdMs) => hold(url, Number(holdMs)),
  timeout,
};

const [name, ...args] = process.argv.slice(2);
if (!Object.hasOwn(CHECKS, name ?? '') || !TOKEN) {
  console.error('usage: TOKEN=<jwt> node client.mjs cast|fail|hold|timeout <args>');
  process.exit(2);
}
try {
  await CHECKS[name](...args);
  process.exit(0);
} catch (error) {
  console.error(`FAIL: ${error instanceof CheckFailed ? error.message : error.stack}`);
  process.exit(1);
}
