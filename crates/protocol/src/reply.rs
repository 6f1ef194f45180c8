//! Server replies to commands.
//!
//! A reply is `{"id": N, "result": {...}}` on success or `{"id": N, "error": {...}}` on
//! failure, never both. The shape of `result` depends on the command's method; the structs
//! below are the result of each method.

use serde::{Deserialize, Serialize};

use crate::{ClientInfo, Code};

/// A reply frame, generic over the result type so the gateway can serialize borrowed
/// results and clients can decode into `serde_json::Value` first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply<R> {
    /// The id of the command this answers.
    pub id: u64,
    /// The method's result, present on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<R>,
    /// The failure, present on error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// Why a command failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Code from the table in [`crate::codes`].
    pub code: Code,
    /// Human-readable explanation, for logs and developers.
    pub message: String,
    /// Whether retrying the same command later may succeed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub temporary: bool,
}

impl ErrorBody {
    /// An error body for `code` with a message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ErrorBody { code, message: message.into(), temporary: code.is_temporary() }
    }
}

/// Result of `connect`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectResult {
    /// This connection's id.
    pub client: String,
    /// The authenticated user id (empty when anonymous).
    pub user: String,
    /// Id of the node that holds the connection.
    pub node: String,
    /// Server version.
    pub version: String,
    /// How often the server sends WebSocket pings, in milliseconds.
    pub ping_interval_ms: u64,
    /// When the connection token expires (Unix seconds), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Server-side subscriptions made at connect: the personal channel `user:<id>`, unless
    /// anonymous.
    #[serde(default)]
    pub subscriptions: Vec<SubscribeResult>,
}

/// Result of `subscribe`, and the body of a server-side `subscribe` push.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscribeResult {
    /// The channel subscribed to.
    pub channel: String,
    /// Current stream epoch.
    pub epoch: String,
    /// Offset of the newest publication in the stream at subscribe time. Live publications
    /// that follow carry offsets greater than this.
    pub offset: u64,
    /// Present when recovery was requested: `true` when every missed publication follows
    /// this reply (as `publication` pushes, in order), `false` when that was impossible
    /// (trimmed history or changed epoch) and the application must refetch its state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// Number of missed publications that follow this reply (recovery only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<u64>,
    /// Initial data from the namespace's subscribe hook, when it returned some.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

/// Result of `publish`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishResult {
    /// Offset assigned to the publication (absent for ephemeral publications).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Epoch of the stream (absent when `offset` is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

/// Result of `rpc`: what the backend answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcResult<D = serde_json::Value> {
    /// The backend's result (`null` when it returned none).
    #[serde(default)]
    pub data: D,
}

/// Result of `presence`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceResult {
    /// Every connection present in the channel.
    pub clients: Vec<ClientInfo>,
}

/// Result of `presence_stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceStatsResult {
    /// Number of connections subscribed (the "live viewer count").
    pub clients: u64,
    /// Number of distinct users among them.
    pub users: u64,
}

/// Result of `history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryResult<P> {
    /// Current stream epoch.
    pub epoch: String,
    /// Offset of the newest publication in the stream.
    pub offset: u64,
    /// Publications, oldest first. Over WebSocket they leave out their `epoch`, which is
    /// this result's; the HTTP API's history keeps it on each publication.
    pub publications: Vec<P>,
    /// `true` when the reply stopped early because the publications asked for do not fit
    /// in one reply (the connection's outbound byte budget): ask again with `since` set to
    /// the last publication's position for the rest.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
}

/// Result of `refresh`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefreshResult {
    /// When the new token expires (Unix seconds), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// Result of commands that return nothing (`unsubscribe`, `ping`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}
