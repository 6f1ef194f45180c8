import { Emitter } from './emitter.js';
import { SwitchboardError } from './errors.js';
import type { ClientInfo, Publication, StreamPosition } from './types.js';

/**
 * A channel is (re)subscribed. Fired after every subscribe reply, so after each reconnect
 * too, and when a live publication shows the stream was reset (`reset: true`).
 *
 * `recovered: false` means publications were missed and cannot be replayed: refetch the
 * channel's state (from your backend or `history`), then keep applying publications.
 */
export interface SubscribedEvent {
  channel: string;
  epoch: string;
  /** Offset of the newest publication at subscribe time; publications that follow are after it. */
  offset: number;
  /** Absent when no recovery was asked (a first subscribe without `since`). */
  recovered?: boolean;
  /** With `recovered: true`: the number of missed publications that follow. */
  missed?: number;
  /** Initial data from a subscribe hook. */
  data?: unknown;
  /** True when this re-subscribes a channel the client was subscribed to before. */
  resubscribed: boolean;
  /** True when a live publication arrived in a new epoch (or out of sequence): the stream was reset. */
  reset?: boolean;
}

export interface UnsubscribedEvent {
  channel: string;
  reason: string;
}

export interface SubscriptionEvents<T> {
  publication: Publication<T>;
  join: ClientInfo;
  leave: ClientInfo;
  subscribed: SubscribedEvent;
  /** The subscription ended: unsubscribed by the application or the server, or refused. */
  unsubscribed: UnsubscribedEvent;
  error: SwitchboardError;
}

/** What async iteration over a subscription yields. */
export type SubscriptionEvent<T> =
  | { type: 'publication'; publication: Publication<T> }
  | { type: 'join'; client: ClientInfo }
  | { type: 'leave'; client: ClientInfo }
  | ({ type: 'subscribed' } & SubscribedEvent)
  | ({ type: 'unsubscribed' } & UnsubscribedEvent);

export interface SubscribeOptions {
  /** Recover from this position on the first subscribe (a position the app persisted). */
  since?: StreamPosition;
  /** A subscription token (protocol §9.3), or a function giving a fresh one for every (re)subscribe. */
  token?: string | (() => string | Promise<string>);
  /** Passed to the namespace's subscribe hook. */
  data?: unknown;
}

export type SubscriptionState = 'subscribing' | 'subscribed' | 'unsubscribed';

/**
 * A channel subscription. It survives reconnects: the client resubscribes it from the
 * position of the last publication it delivered, so the application sees every
 * publication once and in order, or a `subscribed` event with `recovered: false`.
 */
export class Subscription<T = unknown> extends Emitter<SubscriptionEvents<T>> {
  state: SubscriptionState = 'subscribing';
  /** The last publication delivered (or, before any, where the stream stood at subscribe). */
  position?: StreamPosition;
  /** Settles at the first subscribe reply: resolves with it, or rejects with the refusal. */
  readonly ready: Promise<SubscribedEvent>;

  /** @internal The epoch this connection was last told for the channel (§5.1.1). */
  knownEpoch?: string;
  /** @internal */
  settle!: (event?: SubscribedEvent, error?: SwitchboardError) => void;
  private ends = new Set<() => void>();

  constructor(
    readonly channel: string,
    /** True for subscriptions a backend made: the personal channel, connect hook, `subscribe` push. */
    readonly serverSide: boolean,
    /** @internal */
    readonly options: SubscribeOptions,
    private readonly leave: (subscription: Subscription<T>) => Promise<void>,
  ) {
    super();
    this.position = options.since;
    this.ready = new Promise((resolve, reject) => {
      this.settle = (event, error) => {
        this.settle = () => {};
        if (event) resolve(event);
        else reject(error);
      };
    });
    // Who does not await `ready` hears of a refusal through the `error` event instead.
    this.ready.catch(() => {});
  }

  /** Leaves the channel (the personal channel cannot be left). */
  unsubscribe(): Promise<void> {
    return this.leave(this);
  }

  /** @internal Ends the subscription for good. */
  end(reason: string, error?: SwitchboardError): void {
    if (this.state === 'unsubscribed') return;
    this.state = 'unsubscribed';
    this.settle(undefined, error ?? new SwitchboardError('closed', reason));
    if (error) this.emit('error', error);
    this.emit('unsubscribed', { channel: this.channel, reason });
    this.endIterators();
  }

  /** @internal Ends every async iteration (the client closed for good). */
  endIterators(): void {
    for (const end of [...this.ends]) end();
  }

  /**
   * Every event in order, until the subscription ends (or the client is closed for good).
   * Events are buffered until read: keep reading.
   */
  [Symbol.asyncIterator](): AsyncIterableIterator<SubscriptionEvent<T>> {
    const queue: SubscriptionEvent<T>[] = [];
    let done = this.state === 'unsubscribed';
    let wake: (() => void) | undefined;
    const push = (event: SubscriptionEvent<T>) => {
      queue.push(event);
      wake?.();
    };
    const offs = [
      this.on('publication', (publication) => push({ type: 'publication', publication })),
      this.on('join', (client) => push({ type: 'join', client })),
      this.on('leave', (client) => push({ type: 'leave', client })),
      this.on('subscribed', (event) => push({ type: 'subscribed', ...event })),
      this.on('unsubscribed', (event) => push({ type: 'unsubscribed', ...event })),
    ];
    const end = () => {
      done = true;
      offs.forEach((off) => off());
      this.ends.delete(end);
      wake?.();
    };
    this.ends.add(end);
    const iterator: AsyncIterableIterator<SubscriptionEvent<T>> = {
      next: async () => {
        while (queue.length === 0) {
          if (done) return { done: true, value: undefined };
          await new Promise<void>((resolve) => (wake = resolve));
          wake = undefined;
        }
        return { done: false, value: queue.shift()! };
      },
      return: async () => {
        queue.length = 0;
        end();
        return { done: true, value: undefined };
      },
      [Symbol.asyncIterator]: () => iterator,
    };
    return iterator;
  }
}
