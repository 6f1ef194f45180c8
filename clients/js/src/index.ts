export { Client, randomKey } from './client.js';
export type {
  ClientEvents,
  ClientOptions,
  ConnectedEvent,
  ConnectionState,
  DisconnectedEvent,
  StateEvent,
  WebSocketConstructor,
  WebSocketLike,
} from './client.js';
export { Subscription } from './subscription.js';
export type {
  SubscribedEvent,
  SubscribeOptions,
  SubscriptionEvent,
  SubscriptionEvents,
  SubscriptionState,
  UnsubscribedEvent,
} from './subscription.js';
export { SwitchboardError } from './errors.js';
export type { ErrorKind } from './errors.js';
export { json } from './codec.js';
export type { Encoding } from './codec.js';
export { backoffDelay, backoffCeiling } from './backoff.js';
export type { BackoffOptions } from './backoff.js';
export type { OutboxOptions } from './outbox.js';
export type { Listener } from './emitter.js';
export type * from './types.js';
