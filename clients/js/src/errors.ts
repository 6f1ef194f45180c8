import type { ErrorBody } from './types.js';

/**
 * Why a call failed. `server`: the server answered with an error (`code`, 100–199 or a
 * backend's 1000–2999). The other kinds are the client's own:
 * - `not_connected`: the call needs a live connection and there is none;
 * - `closed`: the client was closed, or the server said not to reconnect;
 * - `timeout`: no answer within `timeoutMs` (time in the outbox included);
 * - `outbox_full`: disconnected and the outbox is full (or the call was dropped from it);
 * - `token`: the token provider failed.
 */
export type ErrorKind = 'server' | 'not_connected' | 'closed' | 'timeout' | 'outbox_full' | 'token';

export class SwitchboardError extends Error {
  override name = 'SwitchboardError';

  constructor(
    readonly kind: ErrorKind,
    message: string,
    /** The server's code, for `server` errors and for closes the server decided. */
    readonly code?: number,
    /** Retrying the same call later may succeed (codes 100, 111, 115, 118). */
    readonly temporary = false,
  ) {
    super(message);
  }
}

export const serverError = (body: ErrorBody): SwitchboardError =>
  new SwitchboardError('server', body.message, body.code, body.temporary === true);
