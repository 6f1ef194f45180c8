//! The Switchboard gateway: a real-time pub/sub server over WebSocket.
//!
//! [`server::run`] serves one node on a bound listener until its shutdown future
//! resolves. Modules by job: [`config`], [`auth`], [`channel`], [`http`], `session` (one
//! connection), [`subscriptions`] (join and leave), [`hub`] (local fan-out), [`outbox`]
//! (per-connection bounded queue and the flushers that write it), [`transport`]
//! (handshake, frames, the socket), [`broker`] (trait and implementations), [`rpc`]
//! (client calls to backends), [`metrics`].

pub mod api;
pub mod auth;
pub mod broker;
pub mod channel;
pub mod config;
pub mod engineio;
pub mod error;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod ratelimit;
pub mod rpc;
pub mod server;
mod session;
pub mod sio_recovery;
pub mod subscriptions;
pub mod transport;
pub mod wire;
