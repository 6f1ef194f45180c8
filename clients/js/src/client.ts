import { backoffDelay, type BackoffOptions } from './backoff.js';
import { json, type Encoding } from './codec.js';
import { Emitter } from './emitter.js';
import { serverError, SwitchboardError } from './errors.js';
import { Outbox, type Call, type OutboxOptions } from './outbox.js';
import { Subscription, type SubscribeOptions, type SubscribedEvent } from './subscription.js';
import type {
  ConnectResult,
  DisconnectNotice,
  ErrorBody,
  HistoryResult,
  PresenceResult,
  PresenceStats,
  Publication,
  PublishResult,
  StreamPosition,
  SubscribeResult,
} from './types.js';

/**
 * The part of the WebSocket API the client uses (browsers' WebSocket, or the `ws` package).
 * Handlers take `any` so that implementations with richer event types fit.
 */
export interface WebSocketLike {
  readonly readyState: number;
  binaryType: string;
  onopen: ((event: any) => void) | null;
  /** `event.data`: a string (text frame) or an ArrayBuffer (binary frame). */
  onmessage: ((event: any) => void) | null;
  /** `event.code`, `event.reason`: the close frame's. */
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
  send(data: any): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string, protocols: string[]) => WebSocketLike;

export interface ClientOptions {
  /** A connection token (JWT). Use `getToken` instead for tokens that expire. */
  token?: string;
  /**
   * Supplies a fresh connection token: called at every (re)connect and when the server asks
   * for a refresh. Without `token` and `getToken` the client connects anonymously (or
   * through the server's connect hook, with `data`).
   */
  getToken?: () => string | Promise<string>;
  /** Passed to the server's connect hook (`connect.data`), e.g. a session id. */
  data?: unknown;
  /** WebSocket constructor; default the global one (Node 20 has none: pass `ws`). */
  WebSocket?: WebSocketConstructor;
  /** Wire encoding; default JSON. MessagePack: `import { msgpack } from '@switchboard-rt/client/msgpack'`. */
  encoding?: Encoding;
  /** Reconnect delays. */
  backoff?: BackoffOptions;
  /** Reconnect attempts without a successful connect before giving up (event `reconnectFailed`). Default unlimited. */
  maxReconnectAttempts?: number;
  /** How long a call waits for its answer (time in the outbox included), and a connect attempt for the `connect` reply, ms. Default 10 000. */
  timeoutMs?: number;
  /** The `publish`/`rpc` calls kept while disconnected. */
  outbox?: OutboxOptions;
  /** Nothing received for this long means the connection is dead, ms. Default `2 × ping_interval_ms + 1000`. */
  silenceTimeoutMs?: number;
  /** A connection that stayed up this long resets the backoff, ms. Default 10 000. */
  stableAfterMs?: number;
  /** React to the browser's `online` and `visibilitychange` events. Default true (where they exist). */
  browserEvents?: boolean;
}

/**
 * `idle`: not started; `connecting`: opening and authenticating; `connected`; `disconnected`:
 * lost, reconnecting after a delay; `closed`: stopped for good (by `disconnect()`, a
 * don't-reconnect code, or after `maxReconnectAttempts`). `connect()` starts it again.
 */
export type ConnectionState = 'idle' | 'connecting' | 'connected' | 'disconnected' | 'closed';

export interface StateEvent {
  state: ConnectionState;
  /** The server's code, when it gave one (disconnected, closed). */
  code?: number;
  reason?: string;
  /** Reconnect attempts since the last successful connect (0 before the first retry). */
  attempt: number;
}

export interface ConnectedEvent {
  client: string;
  user: string;
  node: string;
  version: string;
  pingIntervalMs: number;
  /** Token expiry, Unix seconds. */
  expiresAt?: number;
}

export interface DisconnectedEvent {
  /** The server's code (3000–3999) when it said one; otherwise the transport failed. */
  code?: number;
  reason: string;
  /** Whether the client will reconnect. */
  reconnect: boolean;
}

export interface ClientEvents {
  state: StateEvent;
  connected: ConnectedEvent;
  disconnected: DisconnectedEvent;
  /** Failures that are no call's answer: a token provider error, a refused refresh, an undecodable frame. */
  error: SwitchboardError;
  /** A backend subscribed this connection: the personal channel, connect hook channels, a `subscribe` push. */
  subscribed: Subscription<any>;
  /** The token was refreshed. */
  refreshed: { expiresAt?: number };
  /** `maxReconnectAttempts` reached; the client is closed. */
  reconnectFailed: { attempts: number };
}

type Pending =
  | { kind: 'call'; call: Call }
  | { kind: 'subscribe'; subscription: Subscription<any> }
  | { kind: 'connect' | 'refresh' | 'ping' };

/** One WebSocket and what belongs to it. */
interface Connection {
  ws: WebSocketLike;
  nextId: number;
  pending: Map<number, Pending>;
  connected: boolean;
  connectedAt: number;
  lastSeen: number;
  pinging: boolean;
  /** The server's `disconnect` push: decides what happens if the close frame is lost. */
  notice?: DisconnectNotice;
  timers: ReturnType<typeof setTimeout>[];
  refreshes: number;
}

interface Lost {
  code?: number;
  reason: string;
  advisedMs?: number;
}

const OPEN = 1;
const isTemporary = (code: number) => code === 100 || code === 111 || code === 115 || code === 118;

/** A random idempotency key: 128 bits, hex. */
export function randomKey(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, '0')).join('');
}

/**
 * A Switchboard client: one WebSocket, re-established with backoff; subscriptions that
 * recover what they missed; an outbox for publications and RPCs made while disconnected.
 * Mirrors `crates/client` (the reference implementation).
 */
export class Client extends Emitter<ClientEvents> {
  private readonly WS: WebSocketConstructor;
  private readonly encoding: Encoding;
  private readonly timeoutMs: number;
  private readonly outbox: Outbox;
  private readonly subs = new Map<string, Subscription<any>>();
  private conn?: Connection;
  private currentState: ConnectionState = 'idle';
  /** Bumped whenever an attempt is abandoned, so a token fetched for it is not used. */
  private attemptId = 0;
  /** Backoff exponent; reset only after a connection stayed up `stableAfterMs`. */
  private attempt = 0;
  /** Reconnect attempts since the last successful connect. */
  private failures = 0;
  private pendingAcks = new Map<
    string,
    { position: StreamPosition; waiters: Array<{ resolve: () => void; reject: (error: unknown) => void }> }
  >();
  private retryTimer?: ReturnType<typeof setTimeout>;
  /** No reconnect before this time (the server's advice). */
  private advisedUntil = 0;
  private waiters: { resolve: () => void; reject: (error: SwitchboardError) => void }[] = [];
  private personalChannel?: string;
  private connectedInfo?: ConnectedEvent;
  private hiddenAt = 0;
  private unlisten?: () => void;

  constructor(
    readonly url: string,
    private readonly options: ClientOptions = {},
  ) {
    super();
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WS) throw new TypeError('no global WebSocket: pass options.WebSocket (for example the `ws` package)');
    this.WS = WS;
    this.encoding = options.encoding ?? json;
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.outbox = new Outbox(options.outbox);
  }

  get state(): ConnectionState {
    return this.currentState;
  }

  /** The current connection, while connected. */
  get connection(): ConnectedEvent | undefined {
    return this.currentState === 'connected' ? this.connectedInfo : undefined;
  }

  /** Starts connecting (again, after `closed`); resolves once connected, rejects if the client closes first. */
  connect(): Promise<void> {
    if (this.currentState === 'connected') return Promise.resolve();
    const connected = new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject }));
    if (this.currentState === 'idle' || this.currentState === 'closed') {
      this.attempt = 0;
      this.failures = 0;
      this.listenToBrowser();
      void this.open();
    }
    return connected;
  }

  /** Closes the connection for good; pending and queued calls fail with `closed`. Subscriptions are kept for a later `connect()`. */
  disconnect(): void {
    this.close(undefined, 'closed by the application');
  }

  /**
   * Subscribes to a channel (now, or at the next connect). Attach listeners right away:
   * events start with the reply. `ready` settles with the first reply.
   */
  subscribe<T = unknown>(channel: string, options: SubscribeOptions = {}): Subscription<T> {
    if (this.subs.has(channel)) throw new SwitchboardError('server', `already subscribed to ${channel}`, 108);
    const subscription = new Subscription<T>(channel, false, options, (sub) => this.leave(sub));
    this.subs.set(channel, subscription);
    if (this.conn?.connected) void this.sendSubscribe(this.conn, subscription);
    return subscription;
  }

  /** The subscription to `channel`, made by the application or by the server (e.g. `user:<id>`). */
  subscription<T = unknown>(channel: string): Subscription<T> | undefined {
    return this.subs.get(channel);
  }

  /** Every current subscription. */
  subscriptions(): Subscription<any>[] {
    return [...this.subs.values()];
  }

  /**
   * Publishes to a channel whose namespace allows client publishing. While disconnected a
   * stored (non-ephemeral) publication waits in the outbox and is sent after the next
   * connect, with an idempotency key (random unless given) so a resend is published once.
   * Ephemeral publications fail with `not_connected` instead: they are worthless later.
   */
  publish<T = unknown>(
    channel: string,
    data: T,
    options: { event?: string; ephemeral?: boolean; idempotencyKey?: string } = {},
  ): Promise<PublishResult> {
    const params = { channel, data: data === undefined ? null : data, event: options.event };
    if (options.ephemeral) return this.call('publish', { ...params, ephemeral: true });
    return this.queued('publish', { ...params, idempotency_key: options.idempotencyKey ?? randomKey() });
  }

  /**
   * Calls a backend method (protocol §4.11) and returns its result. Waits in the outbox
   * while disconnected, like `publish`; the idempotency key (random unless given) lets the
   * backend tell a resend from a new call. Pass your own to cover the application's retries.
   */
  async rpc<R = unknown, D = unknown>(method: string, data?: D, options: { idempotencyKey?: string } = {}): Promise<R> {
    const params = { method, data: data === undefined ? null : data, idempotency_key: options.idempotencyKey ?? randomKey() };
    const result = (await this.queued('rpc', params)) as { data?: R };
    return result.data as R;
  }

  presence(channel: string): Promise<PresenceResult> {
    return this.call('presence', { channel });
  }

  presenceStats(channel: string): Promise<PresenceStats> {
    return this.call('presence_stats', { channel });
  }

  /** Retained publications: the newest `limit`, or those after `since`, oldest first. */
  async history<T = unknown>(
    channel: string,
    options: { limit?: number; since?: StreamPosition } = {},
  ): Promise<HistoryResult<T>> {
    const result = await this.call<HistoryResult<T>>('history', { channel, ...options });
    // Publications in a history result leave out the result's epoch (§4.7): put it back.
    for (const publication of result.publications) publication.epoch ??= result.epoch;
    return result;
  }

  /** Records that the user processed `channel` up to `position` (drives offline delivery, §3.1). */
  async ack(channel: string, position: StreamPosition): Promise<void> {
    if (this.conn?.connected) {
      await this.call('ack', { channel, offset: position.offset, epoch: position.epoch });
      return;
    }
    // Disconnected: keep the newest position per channel and send it right after the
    // next connect (every earlier promise for the channel settles with it), so "mark as
    // read" made offline is not lost.
    const pending = this.pendingAcks.get(channel);
    return new Promise<void>((resolve, reject) => {
      const waiters = [...(pending?.waiters ?? []), { resolve, reject }];
      const newer = !pending || pending.position.epoch !== position.epoch || position.offset >= pending.position.offset;
      this.pendingAcks.set(channel, { position: newer ? position : pending.position, waiters });
    });
  }

  /** Acks made while disconnected, sent after the next connect. */
  private flushAcks(): void {
    for (const [channel, { position, waiters }] of this.pendingAcks) {
      this.pendingAcks.delete(channel);
      this.call('ack', { channel, offset: position.offset, epoch: position.epoch }).then(
        () => waiters.forEach((w) => w.resolve()),
        (error) => waiters.forEach((w) => w.reject(error)),
      );
    }
  }

  /** Any command by method name; resolves with its raw result. Needs a connection. */
  call<R = any>(method: string, params: object = {}): Promise<R> {
    const call = this.newCall(method, params, false);
    if (this.conn?.connected) this.sendCall(this.conn, call);
    else this.finish(call, new SwitchboardError('not_connected', 'not connected'));
    return call.promise as Promise<R>;
  }

  // ---- calls and the outbox ----

  private queued(method: string, params: object): Promise<any> {
    const call = this.newCall(method, params, true);
    if (this.currentState === 'closed') this.finish(call, new SwitchboardError('closed', 'client closed'));
    else if (this.conn?.connected) this.sendCall(this.conn, call);
    else this.outbox.add(call, (dropped, error) => this.finish(dropped, error));
    return call.promise;
  }

  private newCall(method: string, params: object, queued: boolean): Call {
    const call = { method, params, queued, done: false } as Call;
    call.promise = new Promise((resolve, reject) => {
      call.resolve = resolve;
      call.reject = reject;
    });
    call.timer = setTimeout(() => {
      this.outbox.remove(call);
      this.finish(call, new SwitchboardError('timeout', `no answer to ${method} within ${this.timeoutMs} ms`));
    }, this.timeoutMs);
    return call;
  }

  private finish(call: Call, error?: SwitchboardError, result?: unknown): void {
    if (call.done) return;
    call.done = true;
    clearTimeout(call.timer);
    if (error) call.reject(error);
    else call.resolve(result);
  }

  private sendCall(conn: Connection, call: Call): void {
    this.send(conn, call.method, call.params, { kind: 'call', call });
  }

  // ---- connection lifecycle ----

  private setState(state: ConnectionState, code?: number, reason?: string): void {
    this.currentState = state;
    // `attempt`: reconnect attempts since the last successful connect (0 on the first
    // connect), for "reconnecting (attempt n/max)" indicators.
    this.emit('state', { state, code, reason, attempt: this.failures });
  }

  private async open(): Promise<void> {
    const attemptId = ++this.attemptId;
    this.setState('connecting');
    let token: string | undefined;
    try {
      token = this.options.getToken ? await this.options.getToken() : this.options.token;
    } catch (cause) {
      if (attemptId !== this.attemptId) return;
      const error = new SwitchboardError('token', `token provider failed: ${String(cause)}`);
      this.emit('error', error);
      return this.retry({ reason: error.message });
    }
    if (attemptId !== this.attemptId) return;
    let ws: WebSocketLike;
    try {
      ws = new this.WS(this.url, [this.encoding.protocol]);
    } catch (cause) {
      return this.close(undefined, `cannot open ${this.url}: ${String(cause)}`);
    }
    ws.binaryType = 'arraybuffer';
    const conn: Connection = {
      ws,
      nextId: 1,
      pending: new Map(),
      connected: false,
      connectedAt: 0,
      lastSeen: Date.now(),
      pinging: false,
      timers: [],
      refreshes: 0,
    };
    this.conn = conn;
    conn.timers.push(setTimeout(() => this.lose(conn, { reason: `not connected within ${this.timeoutMs} ms` }), this.timeoutMs));
    ws.onopen = () => this.conn === conn && this.sendConnect(conn, token);
    ws.onmessage = (event: { data: unknown }) => this.conn === conn && this.onMessage(conn, event.data);
    ws.onclose = (event: { code: number; reason: string }) => this.conn === conn && this.onClose(conn, event.code, event.reason);
    ws.onerror = () => {}; // a close event follows, with what there is to know
    // The `ws` package shows the server's WebSocket pings; browsers hide them (see checkAlive).
    (ws as { on?: (event: string, listener: () => void) => void }).on?.('ping', () => {
      conn.lastSeen = Date.now();
    });
  }

  private sendConnect(conn: Connection, token: string | undefined): void {
    const params: Record<string, unknown> = { token, data: this.options.data };
    const personal = this.personalChannel && this.subs.get(this.personalChannel);
    // With a position: recover exactly. Without: offline delivery from the user's ack (§3.1).
    if (personal && personal.position) params.recover = personal.position;
    const channels: Record<string, StreamPosition> = {};
    for (const sub of this.subs.values()) {
      if (sub.serverSide && sub !== personal && sub.position) channels[sub.channel] = sub.position;
    }
    if (Object.keys(channels).length) params.channels = channels;
    this.send(conn, 'connect', params, { kind: 'connect' });
  }

  private onConnected(conn: Connection, result: ConnectResult): void {
    conn.connected = true;
    conn.connectedAt = Date.now();
    this.failures = 0;
    this.advisedUntil = 0;
    clearTimeout(conn.timers.shift());
    const pingMs = result.ping_interval_ms;
    if (pingMs > 0) conn.timers.push(setInterval(() => this.checkAlive(conn), Math.max(250, pingMs / 2)));
    // Resubscribe every channel from its position, then send what waited in the outbox.
    for (const sub of this.subs.values()) if (!sub.serverSide) void this.sendSubscribe(conn, sub);
    this.outbox.drain((call) => this.sendCall(conn, call));
    this.flushAcks();

    this.connectedInfo = {
      client: result.client,
      user: result.user,
      node: result.node,
      version: result.version,
      pingIntervalMs: pingMs,
      expiresAt: result.expires_at,
    };
    this.setState('connected');
    for (const waiter of this.waiters.splice(0)) waiter.resolve();
    this.emit('connected', this.connectedInfo);
    if (this.conn !== conn) return; // a listener disconnected

    const entries = result.subscriptions ?? [];
    const listed = new Set(entries.map((entry) => entry.channel));
    if (result.user) this.personalChannel = entries[0]?.channel;
    // Server-side subscriptions last as long as a connection: those this one did not renew are over.
    for (const sub of this.subs.values()) {
      if (sub.serverSide && !listed.has(sub.channel)) this.drop(sub, 'not renewed by the server on reconnect');
    }
    for (const entry of entries) this.serverSubscribed(entry);
  }

  /** A subscription a backend made (connect result entry or `subscribe` push). */
  private serverSubscribed(result: SubscribeResult): void {
    let sub = this.subs.get(result.channel);
    if (!sub) {
      sub = new Subscription(result.channel, true, {}, (s) => this.leave(s));
      this.subs.set(result.channel, sub);
      this.emit('subscribed', sub);
    }
    this.applySubscribed(sub, result);
  }

  private async sendSubscribe(conn: Connection, sub: Subscription<any>): Promise<void> {
    const params: Record<string, unknown> = { channel: sub.channel, recover: sub.position, data: sub.options.data };
    const { token } = sub.options;
    if (token !== undefined) {
      try {
        params.token = typeof token === 'function' ? await token() : token;
      } catch (cause) {
        // Without it the server refuses (107), and the subscription ends with that reason.
        this.emit('error', new SwitchboardError('token', `subscription token provider failed: ${String(cause)}`));
      }
      if (this.conn !== conn || this.subs.get(sub.channel) !== sub) return;
    }
    this.send(conn, 'subscribe', params, { kind: 'subscribe', subscription: sub });
  }

  /** Applies a subscribe result (protocol §6.3) and tells the application. */
  private applySubscribed(sub: Subscription<any>, result: SubscribeResult): void {
    const resubscribed = sub.knownEpoch !== undefined;
    sub.knownEpoch = result.epoch;
    // With `missed`, that many publications follow and continue from here.
    sub.position = { epoch: result.epoch, offset: result.offset - (result.missed ?? 0) };
    sub.state = 'subscribed';
    const event: SubscribedEvent = {
      channel: sub.channel,
      epoch: result.epoch,
      offset: result.offset,
      recovered: result.recovered,
      missed: result.missed,
      data: result.data,
      resubscribed,
    };
    sub.settle(event);
    sub.emit('subscribed', event);
  }

  private onMessage(conn: Connection, data: unknown): void {
    conn.lastSeen = Date.now();
    let frame: any;
    try {
      frame = this.encoding.decode(data);
    } catch (cause) {
      this.emit('error', new SwitchboardError('server', `undecodable frame from the server: ${String(cause)}`));
      return;
    }
    if (frame === null || typeof frame !== 'object') return;
    if (typeof frame.push === 'string') this.onPush(conn, frame);
    else if (typeof frame.id === 'number') this.onReply(conn, frame.id, frame.result, frame.error);
  }

  private onReply(conn: Connection, id: number, result: any, error?: ErrorBody): void {
    const pending = conn.pending.get(id);
    if (!pending) return;
    conn.pending.delete(id);
    switch (pending.kind) {
      case 'connect':
        return error ? this.connectRefused(conn, error) : this.onConnected(conn, result);
      case 'call':
        // Answered, successfully or not: a refusal is the caller's to handle (a temporary
        // one, e.g. 118, is retried by calling again with the same idempotency key).
        return this.finish(pending.call, error && serverError(error), result ?? {});
      case 'subscribe':
        return this.onSubscribeReply(conn, pending.subscription, result, error);
      case 'refresh':
        if (error) return this.refreshFailed(conn, serverError(error));
        if (this.connectedInfo) this.connectedInfo.expiresAt = result?.expires_at;
        conn.refreshes = 0;
        return this.emit('refreshed', { expiresAt: result?.expires_at });
      case 'ping':
        conn.pinging = false;
    }
  }

  private connectRefused(conn: Connection, error: ErrorBody): void {
    // Expired: a new token is asked for on the next attempt. Temporary: try again later.
    // Anything else (invalid token, too many connections, a hook's denial) stops the client.
    if (error.code === 114 || isTemporary(error.code)) {
      this.lose(conn, { code: error.code, reason: error.message });
    } else {
      this.close(error.code, error.message);
    }
  }

  private onSubscribeReply(conn: Connection, sub: Subscription<any>, result: SubscribeResult, error?: ErrorBody): void {
    if (this.subs.get(sub.channel) !== sub) return; // left meanwhile
    if (!error) return this.applySubscribed(sub, result);
    // A temporary failure (broker down) is retried with the whole connection, as the Rust client does.
    if (isTemporary(error.code)) return this.lose(conn, { code: error.code, reason: error.message });
    this.subs.delete(sub.channel);
    sub.end(`subscribe refused: ${error.code} ${error.message}`, serverError(error));
  }

  private onPush(conn: Connection, push: any): void {
    const sub = typeof push.channel === 'string' ? this.subs.get(push.channel) : undefined;
    switch (push.push) {
      case 'publication':
        if (sub) this.deliver(sub, push);
        return;
      case 'join':
      case 'leave':
        sub?.emit(push.push, push.client);
        return;
      case 'subscribe':
        delete push.push;
        return this.serverSubscribed(push);
      case 'unsubscribe':
        if (sub) this.drop(sub, push.reason ?? 'unsubscribed by the server');
        return;
      case 'refresh':
        return void this.refresh(conn);
      case 'disconnect':
        conn.notice = push;
    }
  }

  /** Delivers a publication in order, with its epoch filled in (protocol §5.1.1, §6.3). */
  private deliver(sub: Subscription<any>, publication: Publication & { push?: string }): void {
    delete publication.push;
    const { offset } = publication;
    if (offset === undefined) return sub.emit('publication', publication); // ephemeral
    if (publication.epoch === undefined) publication.epoch = sub.knownEpoch;
    else sub.knownEpoch = publication.epoch;
    const epoch = publication.epoch!;
    const position = sub.position;
    if (position && epoch === position.epoch && offset <= position.offset) return; // already delivered
    if (position && (epoch !== position.epoch || offset !== position.offset + 1)) {
      // A new epoch: the stream was reset and what it held may be lost. Refetch, as after recovered: false.
      sub.emit('subscribed', { channel: sub.channel, epoch, offset: offset - 1, recovered: false, resubscribed: false, reset: true });
    }
    sub.position = { epoch, offset };
    sub.emit('publication', publication);
  }

  private async refresh(conn: Connection): Promise<void> {
    if (!this.options.getToken) {
      this.emit('error', new SwitchboardError('token', 'the server asks for a token refresh, and no getToken was given'));
      return;
    }
    let token: string;
    try {
      token = await this.options.getToken();
    } catch (cause) {
      return this.refreshFailed(conn, new SwitchboardError('token', `token provider failed on refresh: ${String(cause)}`));
    }
    if (this.conn === conn) this.send(conn, 'refresh', { token }, { kind: 'refresh' });
  }

  /** A refused refresh leaves the connection open until `exp` + grace: try again a few times. */
  private refreshFailed(conn: Connection, error: SwitchboardError): void {
    this.emit('error', error);
    if (this.conn !== conn || conn.refreshes >= 5) return;
    const delay = backoffDelay({ baseMs: 1000, maxMs: 10_000 }, conn.refreshes++, 500);
    conn.timers.push(setTimeout(() => this.conn === conn && this.refresh(conn), delay));
  }

  /**
   * Liveness. Browsers cannot see WebSocket pings, so any frame counts as a sign of life,
   * and after `ping_interval_ms` of quiet an application `ping` makes the server say
   * something. Silence beyond the window means the connection is gone (a sleeping laptop,
   * a dead NAT entry) even if the socket does not know it yet.
   */
  private checkAlive(conn: Connection): void {
    const idle = Date.now() - conn.lastSeen;
    if (idle > this.silenceMs()) return this.lose(conn, { reason: `nothing from the server for ${idle} ms` });
    if (idle >= this.pingMs() && !conn.pinging) {
      conn.pinging = true;
      this.send(conn, 'ping', undefined, { kind: 'ping' });
    }
  }

  private pingMs(): number {
    return this.connectedInfo?.pingIntervalMs || 25_000;
  }

  /** How long the server may say nothing before the connection counts as gone. */
  private silenceMs(): number {
    return this.options.silenceTimeoutMs ?? 2 * this.pingMs() + 1000;
  }

  private onClose(conn: Connection, closeCode: number, closeReason: string): void {
    // The close code is authoritative when it is the server's; the disconnect push says
    // what a lost close frame would have (protocol §3.4).
    const notice = conn.notice;
    let code: number | undefined = closeCode >= 3000 && closeCode <= 3999 ? closeCode : undefined;
    let reason = closeReason;
    if (code === undefined && notice) ({ code, reason } = notice);
    if ((code !== undefined && code >= 3500) || (notice && !notice.reconnect)) {
      return this.close(code, reason);
    }
    this.lose(conn, { code, reason: reason || `connection closed (${closeCode})`, advisedMs: notice?.reconnect_after_ms });
  }

  /** Drops the connection and reconnects after a delay. */
  private lose(conn: Connection, lost: Lost): void {
    if (this.conn !== conn) return;
    this.teardown(conn);
    if ((lost.code === 3004 || lost.code === 114) && !this.options.getToken) {
      // The token expired and there is no way to get another: retrying cannot succeed.
      return this.close(lost.code, lost.reason);
    }
    this.emit('disconnected', { code: lost.code, reason: lost.reason, reconnect: true });
    this.retry(lost);
  }

  private retry(lost: Lost): void {
    if (this.currentState === 'closed') return; // a listener closed the client meanwhile
    const max = this.options.maxReconnectAttempts ?? Infinity;
    if (this.failures >= max) {
      this.emit('reconnectFailed', { attempts: this.failures });
      return this.close(lost.code, `gave up after ${this.failures} reconnect attempts: ${lost.reason}`);
    }
    this.failures++;
    const delay = backoffDelay(this.options.backoff ?? {}, this.attempt++, lost.advisedMs);
    this.advisedUntil = Date.now() + (lost.advisedMs ?? 0);
    this.setState('disconnected', lost.code, lost.reason);
    this.retryTimer = setTimeout(() => this.open(), delay);
  }

  /** Reconnects now rather than at the end of the backoff delay (the server's advice still holds). */
  private reconnectNow(): void {
    if (this.currentState !== 'disconnected') return;
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.open(), Math.max(0, this.advisedUntil - Date.now()));
  }

  /** Detaches a connection: closes its socket, fails or requeues what waited on it. */
  private teardown(conn: Connection): void {
    this.conn = undefined;
    conn.timers.forEach((timer) => clearTimeout(timer));
    const { ws } = conn;
    ws.onopen = ws.onmessage = ws.onclose = null;
    try {
      // `ws` can drop a dead socket at once; a browser's close() does not wait either.
      const terminate = (ws as { terminate?: () => void }).terminate;
      if (terminate) terminate.call(ws);
      else ws.close(1000);
    } catch {
      // already closed
    }
    if (conn.connected && Date.now() - conn.connectedAt >= (this.options.stableAfterMs ?? 10_000)) this.attempt = 0;
    const unanswered: Call[] = [];
    for (const pending of conn.pending.values()) {
      if (pending.kind !== 'call') continue;
      // Outbox calls go back to the outbox, oldest first (Map keeps send order); a resend
      // carries the same idempotency key.
      if (pending.call.queued) unanswered.push(pending.call);
      else this.finish(pending.call, new SwitchboardError('not_connected', 'connection lost before the answer'));
    }
    this.outbox.requeue(unanswered, (dropped, error) => this.finish(dropped, error));
    for (const sub of this.subs.values()) if (sub.state === 'subscribed') sub.state = 'subscribing';
  }

  /** Stops for good: a don't-reconnect code, the application's `disconnect()`, or attempts exhausted. */
  private close(code: number | undefined, reason: string): void {
    const wasActive = this.currentState !== 'closed' && this.currentState !== 'idle';
    this.attemptId++;
    clearTimeout(this.retryTimer);
    if (this.conn) this.teardown(this.conn);
    this.unlisten?.();
    this.unlisten = undefined;
    const error = new SwitchboardError('closed', reason, code);
    this.outbox.clear((call) => this.finish(call, error));
    for (const { waiters } of this.pendingAcks.values()) waiters.forEach((w) => w.reject(error));
    this.pendingAcks.clear();
    for (const waiter of this.waiters.splice(0)) waiter.reject(error);
    if (this.currentState === 'closed') return;
    this.setState('closed', code, reason);
    if (wasActive) this.emit('disconnected', { code, reason, reconnect: false });
    for (const sub of this.subs.values()) sub.endIterators();
  }

  /** Leaves a subscription at the application's request. */
  private async leave(sub: Subscription<any>): Promise<void> {
    if (this.subs.get(sub.channel) !== sub) return;
    if (sub.channel === this.personalChannel) {
      throw new SwitchboardError('server', 'the personal channel cannot be left', 107);
    }
    this.subs.delete(sub.channel);
    sub.end('unsubscribed by the application');
    if (this.conn?.connected) await this.call('unsubscribe', { channel: sub.channel }).catch(() => {});
  }

  /** A subscription the server ended. */
  private drop(sub: Subscription<any>, reason: string): void {
    this.subs.delete(sub.channel);
    sub.end(reason);
  }

  private send(conn: Connection, method: string, params: object | undefined, pending: Pending): void {
    const id = conn.nextId++;
    conn.pending.set(id, pending);
    if (conn.ws.readyState !== OPEN) return; // closing: the close handler requeues or fails it
    try {
      conn.ws.send(this.encoding.encode(params === undefined ? { id, method } : { id, method, params }));
    } catch (cause) {
      // An unencodable call fails alone; the connection is fine.
      conn.pending.delete(id);
      const error = new SwitchboardError('server', `cannot send ${method}: ${String(cause)}`);
      if (pending.kind === 'call') this.finish(pending.call, error);
      else this.emit('error', error);
    }
  }

  /** In browsers: reconnect at once when the network comes back or a tab wakes from a long sleep. */
  private listenToBrowser(): void {
    const win = (globalThis as { window?: Window }).window;
    if (this.unlisten || !win?.addEventListener || this.options.browserEvents === false) return;
    const doc = win.document;
    const wake = () => {
      if (this.currentState === 'disconnected') this.reconnectNow();
      else if (this.conn?.connected) this.checkAlive(this.conn);
    };
    const onVisibility = () => {
      if (doc.visibilityState === 'hidden') this.hiddenAt = Date.now();
      else if (this.hiddenAt && Date.now() - this.hiddenAt > this.silenceMs()) wake();
    };
    win.addEventListener('online', wake);
    doc?.addEventListener('visibilitychange', onVisibility);
    this.unlisten = () => {
      win.removeEventListener('online', wake);
      doc?.removeEventListener('visibilitychange', onVisibility);
    };
  }
}
