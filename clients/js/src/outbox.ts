import { SwitchboardError } from './errors.js';

export interface OutboxOptions {
  /** Calls kept while disconnected. 0 makes `publish`/`rpc` fail with `not_connected` at once. Default 64. */
  limit?: number;
  /** When full: refuse the new call (`reject`, the default) or drop the oldest waiting one (`drop-oldest`). */
  whenFull?: 'reject' | 'drop-oldest';
}

/** @internal A command on its way: its answer settles `promise`. */
export interface Call {
  method: string;
  params: object;
  /** Kept in the outbox while disconnected (and put back there if the connection is lost before the answer). */
  queued: boolean;
  done: boolean;
  timer: ReturnType<typeof setTimeout>;
  promise: Promise<unknown>;
  resolve: (value: unknown) => void;
  reject: (error: SwitchboardError) => void;
}

type Drop = (call: Call, error: SwitchboardError) => void;

/**
 * @internal
 * `publish` and `rpc` calls made while disconnected (or sent, then cut off before their
 * answer), sent in order after the next connect. Bounded, so an app that stays offline
 * does not pile up memory; each call still times out on its own timer.
 */
export class Outbox {
  private calls: Call[] = [];
  private readonly limit: number;
  private readonly dropOldest: boolean;

  constructor(options: OutboxOptions = {}) {
    this.limit = options.limit ?? 64;
    this.dropOldest = options.whenFull === 'drop-oldest';
  }

  add(call: Call, drop: Drop): void {
    if (this.limit <= 0) return drop(call, new SwitchboardError('not_connected', 'not connected'));
    this.calls.push(call);
    this.trim(drop);
  }

  /** Calls cut off before their answer go back to the front, oldest first. */
  requeue(calls: Call[], drop: Drop): void {
    this.calls.unshift(...calls.filter((call) => !call.done));
    this.trim(drop);
  }

  remove(call: Call): void {
    const index = this.calls.indexOf(call);
    if (index >= 0) this.calls.splice(index, 1);
  }

  /** Hands every waiting call to `send`, in order. */
  drain(send: (call: Call) => void): void {
    for (const call of this.calls.splice(0)) if (!call.done) send(call);
  }

  clear(fail: (call: Call) => void): void {
    this.calls.splice(0).forEach(fail);
  }

  private trim(drop: Drop): void {
    while (this.calls.length > this.limit) {
      const call = this.dropOldest ? this.calls.shift()! : this.calls.pop()!;
      drop(call, new SwitchboardError('outbox_full', 'disconnected and the outbox is full'));
    }
  }
}
