//! Server pushes: frames the server sends without a command asking for them.
//!
//! A push is `{"push": "<kind>", ...fields}` and never carries an `id`, which is how a
//! client tells it apart from a reply.

use serde::{Deserialize, Serialize};

use crate::{ClientInfo, Code};

/// Every push, generic over the publication payload type `D` (the gateway serializes
/// borrowed raw JSON; clients decode into `serde_json::Value`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "push", rename_all = "snake_case")]
pub enum Push<D> {
    /// A message published to a channel this connection is subscribed to.
    Publication(Publication<D>),
    /// A connection joined a channel with join/leave events enabled.
    Join(ChannelClient),
    /// A connection left a channel with join/leave events enabled.
    Leave(ChannelClient),
    /// The server subscribed this connection to a channel (e.g. by an operator).
    Subscribe(crate::reply::SubscribeResult),
    /// The server unsubscribed this connection from a channel.
    Unsubscribe(Unsubscribed),
    /// The connection token expires soon: send `refresh` with a new token.
    Refresh(RefreshNeeded),
    /// The server is about to close the connection; the close frame carries the same code.
    Disconnect(Disconnect),
}

/// A publication as delivered to subscribers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Publication<D> {
    /// Channel it was published to.
    pub channel: String,
    /// Contiguous offset within the epoch; absent for ephemeral publications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Stream epoch; absent for ephemeral publications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// Application event name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// Payload.
    pub data: D,
    /// Server time of publication, Unix milliseconds.
    pub ts: u64,
    /// The publishing connection, when a client published it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<ClientInfo>,
    /// Present only when this publication could not be encoded for this connection's wire
    /// format: `data` is then `null` and the offset is still delivered, so the client sees
    /// no gap and knows what it lost (see `docs/protocol.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::ErrorBody>,
}

/// A join or leave event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelClient {
    /// The channel.
    pub channel: String,
    /// The connection that joined or left.
    pub client: ClientInfo,
}

/// Body of a server-side `unsubscribe` push.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unsubscribed {
    /// The channel left.
    pub channel: String,
    /// Why.
    pub reason: String,
}

/// Body of a `refresh` push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshNeeded {
    /// When the current token expires (Unix seconds).
    pub expires_at: u64,
}

/// Body of a `disconnect` push.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Disconnect {
    /// Code from the table in [`crate::codes`]; also the close frame's code.
    pub code: Code,
    /// Human-readable reason.
    pub reason: String,
    /// Whether the client should reconnect.
    pub reconnect: bool,
    /// Suggested delay before reconnecting, in milliseconds (jittered by the server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconnect_after_ms: Option<u64>,
}

impl Disconnect {
    /// A disconnect for `code` with the reconnect flag taken from the code's range.
    pub fn new(code: Code, reason: impl Into<String>) -> Self {
        Disconnect {
            code,
            reason: reason.into(),
            reconnect: code.should_reconnect(),
            reconnect_after_ms: None,
        }
    }
}
