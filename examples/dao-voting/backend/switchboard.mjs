// The two Switchboard contracts this backend uses, both plain Redis (node-redis v4):
//
// - publishing: one `FCALL sb_publish` per publication (docs/redis.md §4), with the
//   retention the gateways declare in `sb:namespaces`;
// - answering clients' `rpc` calls of a stream route: a consumer group on
//   `sb:rpc:{<route>}` and one `FCALL sb_rpc_reply` per request (docs/redis.md §11),
//   adapted from examples/rpc-workers/worker.mjs.
//
// Nothing here talks to a gateway directly or listens on a port.

import { readFile } from 'node:fs/promises';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
// The gateways load the Functions library themselves; this copy is only used when Redis
// lost it (restarted without persistence) before any gateway reloaded it.
const LIBRARY = join(here, '../../../crates/protocol/redis/switchboard.lua');

/** An application error: the client gets this code (1000..2999) and message. */
export class RpcError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

export class Publisher {
  /** @param {import('redis').RedisClientType} redis */
  constructor(redis, { idempotencyTtlMs = 300_000 } = {}) {
    this.redis = redis;
    this.idempotencyTtlMs = idempotencyTtlMs; // broker.idempotency_ttl_secs × 1000
    this.retentions = new Map(); // namespace -> {history_size, history_ttl_ms, meta_ttl_ms}
  }

  /** The gateways' retention for the channel's namespace (docs/redis.md §4.1). */
  async retention(channel) {
    const colon = channel.indexOf(':');
    const namespace = colon < 0 ? '' : channel.slice(0, colon);
    if (!this.retentions.has(namespace)) {
      const declared = await this.redis.hGet('sb:namespaces', namespace);
      if (declared == null) throw new Error(`no gateway declares namespace "${namespace}" (is a gateway running on this Redis?)`);
      this.retentions.set(namespace, JSON.parse(declared));
    }
    return this.retentions.get(namespace);
  }

  /**
   * Publishes `data` to `channel`; resolves to `{offset, epoch, duplicate}`. Give every
   * logical event an `idempotencyKey` and reuse it when retrying: a publication whose
   * reply was lost is then not published twice.
   */
  async publish(channel, data, { event, idempotencyKey } = {}) {
    const ret = await this.retention(channel);
    const body = { data: data === undefined ? null : data };
    if (event !== undefined) body.event = event;
    const keys = [`sb:{${channel}}:stream`, `sb:{${channel}}:meta`];
    const args = [
      `sb:{${channel}}:live`,
      JSON.stringify(body),
      String(ret.history_size),
      String(Math.max(ret.history_ttl_ms, 1)),
      String(Math.max(ret.meta_ttl_ms, 1)),
    ];
    if (idempotencyKey !== undefined) {
      keys.push(`sb:{${channel}}:idem:${idempotencyKey}`);
      args.push(String(this.idempotencyTtlMs));
    }
    const command = ['FCALL', 'sb_publish', String(keys.length), ...keys, ...args];
    let reply;
    try {
      reply = await this.redis.sendCommand(command);
    } catch (error) {
      if (!String(error.message).includes('Function not found')) throw error;
      await this.redis.sendCommand(['FUNCTION', 'LOAD', 'REPLACE', await readFile(LIBRARY, 'utf8')]);
      reply = await this.redis.sendCommand(command);
    }
    const [offset, epoch, duplicate] = reply;
    return { offset: Number(offset), epoch: String(epoch), duplicate: Number(duplicate) === 1 };
  }
}

/**
 * Serves one stream route: `handlers` maps a method name to `async (request) => result`
 * (throw RpcError for an application error). Requests are handled one at a time, in
 * stream order, which is what keeps this example's in-memory state consistent.
 */
export class RpcWorker {
  constructor(commands, reads, { route, handlers, group = 'workers', consumer, claimAfterMs = 3000, log = console.error }) {
    this.commands = commands; // answers, claims, publications
    this.reads = reads; // XREADGROUP ... BLOCK holds its own connection
    this.stream = `sb:rpc:{${route}}`;
    this.handlers = handlers;
    this.group = group;
    this.consumer = consumer ?? `${os.hostname()}-${process.pid}`;
    this.claimAfterMs = claimAfterMs;
    this.log = log;
    this.stopping = false;
    this.claimCursor = '0-0';
    this.lastClaim = 0;
  }

  async ensureGroup() {
    // From `0`: requests added before the backend started are served too.
    try {
      await this.commands.xGroupCreate(this.stream, this.group, '0', { MKSTREAM: true });
    } catch (error) {
      if (!String(error.message).startsWith('BUSYGROUP')) throw error;
    }
  }

  async run() {
    await this.ensureGroup();
    this.log(`serving ${this.stream} as ${this.consumer} in group ${this.group}`);
    while (!this.stopping) {
      try {
        for (const entry of await this.nextEntries()) await this.handle(entry);
      } catch (error) {
        if (String(error.message).startsWith('NOGROUP')) {
          this.log('consumer group missing (Redis wiped?); creating it again');
          await this.ensureGroup().catch((e) => this.log(`cannot create the group: ${e.message}`));
        } else {
          this.log(`redis error: ${error.message}; retrying`);
          await sleep(500);
        }
      }
    }
  }

  async nextEntries() {
    if (Date.now() - this.lastClaim >= this.claimAfterMs) {
      this.lastClaim = Date.now();
      // Requests a previous backend process read and never answered (it crashed).
      const { nextId, messages } = await this.commands.xAutoClaim(
        this.stream, this.group, this.consumer, this.claimAfterMs, this.claimCursor, { COUNT: 10 },
      );
      this.claimCursor = nextId;
      const claimed = messages.filter((entry) => entry !== null);
      if (claimed.length > 0) return claimed;
    }
    const reply = await this.reads.xReadGroup(
      this.group, this.consumer, { key: this.stream, id: '>' },
      { COUNT: 10, BLOCK: Math.max(Math.min(this.claimAfterMs, 2000), 100) },
    );
    return (reply ?? []).flatMap((stream) => stream.messages);
  }

  async handle({ id: entryId, message: fields }) {
    const request = { ...fields, user: fields.user ?? '', data: null, info: null };
    try {
      request.data = JSON.parse(fields.data ?? 'null');
      request.info = fields.info ? JSON.parse(fields.info) : null;
    } catch {
      // malformed JSON: the handler sees null
    }
    let answer;
    if (Number(fields.deadline ?? 0) && Number(fields.deadline) < Date.now()) {
      // The caller already got 118 timeout: answer (it comes back `late`) to delete the
      // entry, without acting on it.
      answer = { error: { code: 1504, message: 'expired before the backend took it' } };
    } else if (!Object.hasOwn(this.handlers, request.method)) {
      answer = { error: { code: 1404, message: `unknown method ${request.method}` } };
    } else {
      try {
        answer = { result: (await this.handlers[request.method](request)) ?? null };
      } catch (error) {
        if (error instanceof RpcError) answer = { error: { code: error.code, message: error.message } };
        else {
          this.log(`${request.method} failed: ${error.stack ?? error}`);
          answer = { error: { code: 1500, message: 'internal error, try again' } };
        }
      }
    }
    const outcome = await this.commands.sendCommand([
      'FCALL', 'sb_rpc_reply', '1', this.stream, this.group, entryId, JSON.stringify(answer),
    ]);
    if (outcome !== 'ok') this.log(`${request.method} ${request.id}: reply ${outcome}`);
  }
}
