//! The Redis contract of cluster mode: the Functions library, key and pub/sub channel
//! names, and the publication body. Shared by the gateway and the publisher crate so the
//! two can never disagree; `docs/redis.md` specifies the same for other languages.
//!
//! Every name of one Switchboard channel embeds the channel as a hash tag `{<channel>}`,
//! so a channel's keys share one Redis Cluster slot. Channel names cannot contain braces
//! (see `crate::channel::ALLOWED_PUNCTUATION`), so the tag is always the whole channel name.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::ClientInfo;

/// The Redis Functions library (`#!lua name=switchboard`), for `FUNCTION LOAD REPLACE`.
pub const LIBRARY: &str = include_str!("../redis/switchboard.lua");

/// Hash of namespace name -> retention JSON `{"history_size":N,"history_ttl_ms":N,"meta_ttl_ms":N}`,
/// written by every gateway at start so that publishers use the gateways' retention.
pub const NAMESPACES: &str = "sb:namespaces";

/// A publication body as stored in streams and published live: `data` is required,
/// `event` and `from` optional.
#[derive(Debug, Serialize)]
pub struct Body<'a> {
    /// Application event name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<&'a str>,
    /// Payload, raw JSON.
    pub data: &'a RawValue,
    /// The publishing connection, for client publishes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<&'a ClientInfo>,
}

impl Body<'_> {
    /// The body as JSON text.
    ///
    /// # Errors
    /// Never in practice: every part is valid JSON already.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }
}

/// The channel's history stream (entry id `<offset>-0`, fields `t` and `b`).
pub fn stream(channel: &str) -> String {
    format!("sb:{{{channel}}}:stream")
}

/// The channel's stream metadata hash (`epoch`, `offset`).
pub fn meta(channel: &str) -> String {
    format!("sb:{{{channel}}}:meta")
}

/// The pub/sub channel carrying the channel's live events.
pub fn live(channel: &str) -> String {
    format!("sb:{{{channel}}}:live")
}

/// The Switchboard channel of a live pub/sub channel name, if it is one.
pub fn channel_of_live(live: &str) -> Option<&str> {
    live.strip_prefix("sb:{")?.strip_suffix("}:live")
}

/// An idempotency key of a publish into the channel.
pub fn idempotency(channel: &str, key: &str) -> String {
    format!("sb:{{{channel}}}:idem:{key}")
}

/// Presence: client id -> client info JSON.
pub fn presence(channel: &str) -> String {
    format!("sb:{{{channel}}}:presence")
}

/// Presence: client id -> expiry (Unix ms), sorted.
pub fn presence_expiry(channel: &str) -> String {
    format!("sb:{{{channel}}}:presence:expiry")
}

/// Presence: user id -> number of that user's connections present.
pub fn presence_users(channel: &str) -> String {
    format!("sb:{{{channel}}}:presence:users")
}

/// Acknowledged positions: user id -> `<offset>:<epoch>`.
pub fn acks(channel: &str) -> String {
    format!("sb:{{{channel}}}:acks")
}

/// Node registry: node id -> stats JSON.
pub const NODES: &str = "sb:nodes";

/// Node registry: node id -> last heartbeat (Unix ms), sorted.
pub const NODES_SEEN: &str = "sb:nodes:seen";

/// An RPC route's request stream: entries with the fields listed in `docs/redis.md`
/// ("RPC"), read by the backend's workers with `XREADGROUP` and answered with
/// `FCALL sb_rpc_reply`. `route` is the route's `stream` setting.
pub fn rpc_stream(route: &str) -> String {
    format!("sb:rpc:{{{route}}}")
}

/// The pub/sub channel on which a node receives the replies to its RPC requests, as
/// `<request id>\n<reply JSON>` (published by `sb_rpc_reply`).
pub fn rpc_replies(node: &str) -> String {
    format!("sb:rpc:reply:{node}")
}

/// The lifecycle stream: connect, disconnect, subscribe and unsubscribe events of every
/// connection, for backends (docs/redis.md "Lifecycle"). The lifecycle keys share the
/// hash tag `{lifecycle}`, so its functions work on a Redis Cluster.
pub const LIFECYCLE_EVENTS: &str = "sb:{lifecycle}:events";

/// The set of nodes that have registered connections in the lifecycle.
pub const LIFECYCLE_NODES: &str = "sb:{lifecycle}:nodes";

/// A node's registered connections: client id -> user id.
pub fn lifecycle_connections(node: &str) -> String {
    format!("sb:{{lifecycle}}:conns:{node}")
}

/// A node's lifecycle liveness key (expires when the node stops beating).
pub fn lifecycle_alive(node: &str) -> String {
    format!("sb:{{lifecycle}}:alive:{node}")
}

/// The stored rooms of a recoverable Socket.IO session (docs/socketio.md), a JSON string
/// with the recovery window as TTL.
pub fn socketio_session(pid: &str) -> String {
    format!("sb:sio:{pid}")
}

/// The pub/sub channel a node publishes its liveness probe to (and subscribes to).
pub fn probe(node: &str) -> String {
    format!("sb:probe:{node}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_names_round_trip() {
        assert_eq!(live("chat:lobby"), "sb:{chat:lobby}:live");
        assert_eq!(channel_of_live(&live("chat:lobby")), Some("chat:lobby"));
        assert_eq!(channel_of_live("sb:probe:n1"), None);
    }
}
