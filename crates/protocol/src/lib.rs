//! Switchboard wire protocol, version 1.
//!
//! This crate owns the *shape* of every frame that crosses a Switchboard WebSocket and the
//! two codecs that put those frames on the wire (JSON text frames and MessagePack binary
//! frames). It is shared by the gateway, the Rust client and the load generator so that the
//! three can never disagree about a field name.
//!
//! It must not do I/O or depend on an async runtime: everything here is plain data and
//! pure functions, which keeps it usable from any transport and easy to test.
//!
//! The human-readable specification of the same frames lives in `docs/protocol.md`.

pub mod channel;
pub mod codec;
pub mod codes;
pub mod command;
pub mod payload;
pub mod push;
pub mod redis;
pub mod reply;
pub mod socketio;

pub use codec::{CodecError, Encoding};
pub use codes::Code;
pub use command::{Command, CommandBody};
pub use push::Push;
pub use reply::{ErrorBody, Reply};

/// The `Sec-WebSocket-Protocol` value that selects JSON text frames (also the default).
pub const SUBPROTOCOL_JSON: &str = "switchboard.v1.json";
/// The `Sec-WebSocket-Protocol` value that selects MessagePack binary frames.
pub const SUBPROTOCOL_MSGPACK: &str = "switchboard.v1.msgpack";

/// A position in a channel's stream: the offset of the last publication seen and the
/// epoch of the stream it belongs to. Offsets are contiguous within one epoch; a new epoch
/// means the stream was lost and offsets restarted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StreamPosition {
    /// Offset of the last publication seen (0 = nothing seen yet).
    pub offset: u64,
    /// Identifier of the stream generation the offset belongs to.
    pub epoch: String,
}

/// Who a connection belongs to, as shown in presence and join/leave events.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClientInfo {
    /// Connection id, unique across the cluster.
    pub client: String,
    /// User id from the token's `sub` claim (empty for anonymous connections).
    pub user: String,
    /// The token's optional `info` claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
}
