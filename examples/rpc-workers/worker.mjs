#!/usr/bin/env node
// A Switchboard RPC worker with node-redis v4: answers clients' `rpc` calls of one
// stream route.
//
// The contract is docs/redis.md §11: the gateway adds each call to the stream
// `sb:rpc:{<route>}`, workers read it through a consumer group and answer each entry with
// one `FCALL sb_rpc_reply`, which acknowledges the entry and routes the answer to the
// caller's node. Nothing here listens on a port.
//
// This worker handles one request at a time to stay easy to read; run several processes
// (each gets its own consumer name) to serve more. A worker that dies holding a request
// leaves it pending, and another worker (of any language) claims it with XAUTOCLAIM.
//
//     node worker.mjs --redis-url redis://127.0.0.1:6379 --route votes
//
// Prints `ready <consumer>` on stdout once it reads; logs go to stderr. SIGTERM or
// Ctrl-C stops it after the request in hand is answered (exit status 0).

import os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';

import { createClient } from 'redis';

// Entries read per XREADGROUP / XAUTOCLAIM call. They are handled one after the other,
// so keep it small: entries read but not yet handled wait in this worker's hands.
const BATCH = 10;

const log = (message) => console.error(`worker.mjs: ${message}`);

/** An application error: the client gets this code (1000..2999) and message. */
class RpcError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

// ---------------------------------------------------------------------------------------
// The demo methods. A handler gets the request (the entry's fields, `data` decoded) and
// returns the result (any JSON value) or throws RpcError.

const METHODS = {
  'votes.cast': async (request) => ({
    accepted: true,
    proposal: request.data?.proposal ?? null,
    by: request.user,
    worker: 'node',
  }),

  'votes.fail': async () => {
    throw new RpcError(1403, 'not a member');
  },

  // Simulates slow work, so a test can kill the worker while it holds a request.
  // --hold-max-ms caps it: a worker that claims the request can then answer at once.
  'votes.hold': async (request, options) => {
    let holdMs = Number(request.data?.ms ?? 0) || 0;
    if (options.holdMaxMs !== null) holdMs = Math.min(holdMs, options.holdMaxMs);
    await sleep(Math.max(holdMs, 0));
    return METHODS['votes.cast'](request, options);
  },
};

// ---------------------------------------------------------------------------------------

class Worker {
  constructor(commands, reads, options) {
    // XREADGROUP ... BLOCK holds its connection while it waits, so it gets its own;
    // answers and claims go over `commands`.
    this.commands = commands;
    this.reads = reads;
    this.options = options;
    this.stream = `sb:rpc:{${options.route}}`;
    this.group = options.group;
    this.consumer = options.consumer;
    this.stopping = false;
    // XAUTOCLAIM walks the pending entries in pages; keep our place between rounds.
    this.claimCursor = '0-0';
    this.lastClaim = 0;
  }

  async ensureGroup() {
    // From `0`, not `$`: requests added before any worker existed are served too.
    try {
      await this.commands.xGroupCreate(this.stream, this.group, '0', { MKSTREAM: true });
    } catch (error) {
      if (!String(error.message).startsWith('BUSYGROUP')) throw error;
    }
  }

  async run() {
    await this.ensureGroup();
    process.stdout.write(`ready ${this.consumer}\n`);
    log(`${this.consumer} serving ${this.stream} in group ${this.group}`);
    while (!this.stopping) {
      try {
        // Entries we read are ours: answer them even when asked to stop, or they would
        // wait for another worker's claim. (An error mid-batch leaves the rest pending: a
        // claim round, ours or another's, gets them.)
        for (const entry of await this.nextEntries()) await this.handle(entry);
      } catch (error) {
        if (String(error.message).startsWith('NOGROUP')) {
          // The stream or group is gone (e.g. Redis was wiped): recreate it.
          log('consumer group missing; creating it again');
          await this.ensureGroup().catch((e) => log(`cannot create the group: ${e.message}`));
        } else {
          // node-redis reconnects by itself; don't spin meanwhile.
          log(`redis error: ${error.message}; retrying`);
          await sleep(500);
        }
      }
    }
    log('stopped');
  }

  /** Requests of dead workers when a claim round is due, else new requests. */
  async nextEntries() {
    const claimAfter = this.options.claimAfterMs;
    if (Date.now() - this.lastClaim >= claimAfter) {
      this.lastClaim = Date.now();
      const claimed = await this.claim();
      if (claimed.length > 0) return claimed;
    }
    // Block at most the claim interval, so claims stay on time and a stop request is
    // noticed within that.
    const blockMs = Math.max(Math.min(claimAfter, 2000), 100);
    const reply = await this.reads.xReadGroup(
      this.group,
      this.consumer,
      { key: this.stream, id: '>' },
      { COUNT: BATCH, BLOCK: blockMs },
    );
    // [{name, messages: [{id, message: {field: value}}]}], or null when the block timed out.
    return (reply ?? []).flatMap((stream) => stream.messages);
  }

  async claim() {
    // Takes entries pending (read but unanswered) for longer than claim-after ms: their
    // worker died or hangs.
    const { nextId, messages } = await this.commands.xAutoClaim(
      this.stream,
      this.group,
      this.consumer,
      this.options.claimAfterMs,
      this.claimCursor,
      { COUNT: BATCH },
    );
    this.claimCursor = nextId;
    // Pending entries trimmed from the stream are only listed as deleted ids: nobody
    // waits for them any more. (The filter drops placeholders some versions return.)
    const entries = messages.filter((entry) => entry !== null);
    if (entries.length > 0) log(`claimed ${entries.length} request(s) of another worker`);
    return entries;
  }

  async handle({ id: entryId, message: fields }) {
    const request = { ...fields, user: fields.user ?? '' };
    try {
      request.data = JSON.parse(fields.data ?? 'null');
    } catch {
      request.data = null;
    }
    const deadline = Number(fields.deadline ?? 0);

    let answer;
    if (deadline && deadline < Date.now()) {
      // The caller already got `118 timeout`. Answer anyway, without doing the work: the
      // answer (dropped as `late`) is what deletes the entry.
      answer = { error: { code: 1000, message: 'expired before a worker took it' } };
      log(`${request.method} ${request.id} expired; not handling it`);
    } else {
      answer = await this.call(request);
    }

    const outcome = await this.commands.sendCommand([
      'FCALL', 'sb_rpc_reply', '1', this.stream, this.group, entryId, JSON.stringify(answer),
    ]);
    // 'ok' reached the caller; 'duplicate' means another worker answered first, 'late'
    // that the deadline passed, 'gone' that the entry was trimmed.
    log(`${request.method} ${request.id} -> ${outcome}`);
  }

  async call(request) {
    // hasOwn: a method named e.g. `toString` must not reach Object.prototype.
    if (!Object.hasOwn(METHODS, request.method)) {
      return { error: { code: 1404, message: `unknown method ${request.method}` } };
    }
    try {
      return { result: (await METHODS[request.method](request, this.options)) ?? null };
    } catch (error) {
      if (error instanceof RpcError) return { error: { code: error.code, message: error.message } };
      // A bug in a handler must not kill the worker.
      log(`${request.method} failed: ${error.stack ?? error}`);
      return { error: { code: 1500, message: 'internal error' } };
    }
  }
}

function parseOptions() {
  const env = process.env;
  const { values } = parseArgs({
    options: {
      'redis-url': { type: 'string', default: env.REDIS_URL ?? 'redis://127.0.0.1:6379' },
      // The route's `stream` setting.
      route: { type: 'string', default: env.RPC_ROUTE ?? 'votes' },
      group: { type: 'string', default: env.RPC_GROUP ?? 'workers' },
      // Unique per worker process.
      consumer: { type: 'string', default: env.RPC_CONSUMER ?? `${os.hostname()}-${process.pid}` },
      // Claim requests pending this long: above the slowest handling, below the route timeout.
      'claim-after-ms': { type: 'string', default: env.CLAIM_AFTER_MS ?? '5000' },
      // Cap on votes.hold's sleep (default: none).
      'hold-max-ms': { type: 'string', default: env.HOLD_MAX_MS ?? '' },
    },
  });
  const number = (name, text) => {
    const value = Number(text);
    if (!Number.isInteger(value)) throw new Error(`--${name} must be an integer, not ${text}`);
    return value;
  };
  return {
    redisUrl: values['redis-url'],
    route: values.route,
    group: values.group,
    consumer: values.consumer,
    claimAfterMs: Math.max(number('claim-after-ms', values['claim-after-ms']), 1),
    holdMaxMs: values['hold-max-ms'] === '' ? null : number('hold-max-ms', values['hold-max-ms']),
  };
}

async function main() {
  const options = parseOptions();
  const commands = createClient({ url: options.redisUrl });
  const reads = commands.duplicate();
  // Without a listener, a lost connection would crash the process; node-redis reconnects.
  for (const client of [commands, reads]) client.on('error', (error) => log(`redis: ${error.message}`));
  await Promise.all([commands.connect(), reads.connect()]);

  const worker = new Worker(commands, reads, options);
  for (const signal of ['SIGTERM', 'SIGINT']) {
    process.on(signal, () => {
      log(`${signal}: stopping after the request in hand`);
      worker.stopping = true;
    });
  }
  await worker.run();
  await Promise.all([commands.quit(), reads.quit()]);
}

main().catch((error) => {
  log(error.stack ?? String(error));
  process.exit(1);
});
