//! Client-to-server commands.
//!
//! Every command is one frame `{"id": N, "method": "...", "params": {...}}` and receives
//! exactly one reply carrying the same `id`. Commands are decoded into these types by
//! [`crate::codec::decode_command`]; the Rust client serializes the same types, so the two
//! sides share one definition.

use serde::{Deserialize, Serialize};

use crate::StreamPosition;

/// One client command with its client-chosen id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Client-chosen id, echoed in the reply. Must be unique among commands in flight.
    pub id: u64,
    /// What to do.
    #[serde(flatten)]
    pub body: CommandBody,
}

/// The method and its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", content = "params", rename_all = "snake_case")]
pub enum CommandBody {
    /// Authenticate the connection; must be the first command.
    Connect(ConnectParams),
    /// Subscribe to a channel, optionally recovering from a position.
    Subscribe(SubscribeParams),
    /// Leave a channel.
    Unsubscribe(ChannelParams),
    /// Publish to a channel (where the namespace allows client publishing).
    Publish(PublishParams),
    /// List the connections present in a channel.
    Presence(ChannelParams),
    /// Count the connections and unique users present in a channel.
    PresenceStats(ChannelParams),
    /// Read a channel's retained history.
    History(HistoryParams),
    /// Replace the connection token with a fresh one before it expires.
    Refresh(RefreshParams),
    /// Acknowledge having processed a channel up to a position (offline delivery).
    Ack(AckParams),
    /// Application-level ping; answered with an empty result.
    Ping(PingParams),
    /// Call a backend method (RPC): routed by the method name to a backend service,
    /// answered with the backend's result or error.
    Rpc(RpcParams),
}

impl CommandBody {
    /// The wire name of the method, for logs and metric labels.
    pub fn method(&self) -> &'static str {
        match self {
            CommandBody::Connect(_) => "connect",
            CommandBody::Subscribe(_) => "subscribe",
            CommandBody::Unsubscribe(_) => "unsubscribe",
            CommandBody::Publish(_) => "publish",
            CommandBody::Presence(_) => "presence",
            CommandBody::PresenceStats(_) => "presence_stats",
            CommandBody::History(_) => "history",
            CommandBody::Refresh(_) => "refresh",
            CommandBody::Ack(_) => "ack",
            CommandBody::Ping(_) => "ping",
            CommandBody::Rpc(_) => "rpc",
        }
    }
}

/// Parameters of `ping` (none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingParams {}

/// Parameters of `connect`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectParams {
    /// The connection JWT. May be omitted when it was sent in an `Authorization: Bearer`
    /// header or when anonymous connections are enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Recovery positions for the personal channel `user:<id>`, to which the server
    /// subscribes every connection itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recover: Option<StreamPosition>,
    /// Passed to the connect hook, when the server has one and no token was sent (e.g. a
    /// session id); ignored otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// Recovery positions for the channels the connect hook subscribes this connection to,
    /// by channel name (as the client last saw them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<std::collections::BTreeMap<String, StreamPosition>>,
}

/// Parameters of `subscribe`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscribeParams {
    /// Channel name, `namespace:rest` or a bare name in the default namespace.
    pub channel: String,
    /// Position of the last publication seen; the server delivers everything after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recover: Option<StreamPosition>,
    /// A subscription token granting access to this one channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Passed to the namespace's subscribe hook, when it has one (e.g. an invitation
    /// code); ignored otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

/// Parameters naming one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelParams {
    /// Channel name.
    pub channel: String,
}

/// Parameters of `publish`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishParams {
    /// Channel name.
    pub channel: String,
    /// Application event name, e.g. `"vote"` or `"typing"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// Payload: any JSON value (in MessagePack, any value JSON can represent).
    pub data: serde_json::Value,
    /// Deliver live only: no offset, never stored in history (typing indicators).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ephemeral: bool,
    /// Makes a retry safe: a second publish with the same key (by the same user, to the
    /// same channel, within the idempotency window) is not published again and answers
    /// the first one's position. At most [`MAX_IDEMPOTENCY_KEY_LEN`] bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// The longest idempotency key a client may send with `publish` or `rpc`.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// Parameters of `history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryParams {
    /// Channel name.
    pub channel: String,
    /// Return publications after this position (omit for the most recent ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<StreamPosition>,
    /// Maximum number of publications to return (server caps it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// Parameters of `ack`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AckParams {
    /// Channel name.
    pub channel: String,
    /// Offset of the last publication the user has processed.
    pub offset: u64,
    /// Epoch of that publication.
    pub epoch: String,
}

/// Parameters of `rpc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcParams {
    /// The backend method, e.g. `"cast_vote"`; the server routes on it.
    pub method: String,
    /// The request payload: any JSON value (absent means `null`).
    #[serde(default)]
    pub data: serde_json::Value,
    /// Passed to the backend unchanged, so that it can recognise a retried call (the
    /// client's offline outbox sends the same key again after a reconnect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// Parameters of `refresh`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefreshParams {
    /// A fresh connection token for the same user.
    pub token: String,
}
