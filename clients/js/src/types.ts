// Shapes of the wire protocol (docs/protocol.md) as the application sees them.

/** A position in a channel's stream (protocol §5.7): the last publication seen. */
export interface StreamPosition {
  offset: number;
  epoch: string;
}

/** A connection as others see it: in presence, `join`/`leave` and `from` (§5.8). */
export interface ClientInfo {
  /** Connection id. */
  client: string;
  /** User id (`""` for anonymous connections). */
  user: string;
  /** The token's `info` claim, when it had one. */
  info?: unknown;
}

/** An error as the server words it (§2.2). */
export interface ErrorBody {
  code: number;
  message: string;
  temporary?: boolean;
}

/**
 * A publication (§5.1). `epoch` is always present when `offset` is: the server leaves it
 * out of most frames (§5.1.1) and the client puts it back.
 */
export interface Publication<T = unknown> {
  channel: string;
  /** Absent for ephemeral publications. */
  offset?: number;
  epoch?: string;
  event?: string;
  data: T;
  /** Server time of publication, Unix milliseconds. */
  ts: number;
  /** The publishing connection; absent for publications made by a backend. */
  from?: ClientInfo;
  /** Present when this offset's payload could not be encoded for this connection (§6.5): `data` is then `null`. */
  error?: ErrorBody;
}

/** A `subscribe` result, an entry of the `connect` result, or a `subscribe` push (§4.2, §5.5). */
export interface SubscribeResult {
  channel: string;
  epoch: string;
  offset: number;
  recovered?: boolean;
  missed?: number;
  data?: unknown;
}

/** The `connect` result (§4.1). */
export interface ConnectResult {
  client: string;
  user: string;
  node: string;
  version: string;
  ping_interval_ms: number;
  expires_at?: number;
  subscriptions: SubscribeResult[];
}

/** A `history` result (§4.7); every publication carries its epoch. */
export interface HistoryResult<T = unknown> {
  epoch: string;
  offset: number;
  publications: Publication<T>[];
  more?: boolean;
}

/** A `publish` result: no offset or epoch for ephemeral publications. */
export interface PublishResult {
  offset?: number;
  epoch?: string;
}

export interface PresenceResult {
  clients: ClientInfo[];
}

export interface PresenceStats {
  clients: number;
  users: number;
}

/** The `disconnect` push (§5.4). */
export interface DisconnectNotice {
  code: number;
  reason: string;
  reconnect: boolean;
  reconnect_after_ms?: number;
}
