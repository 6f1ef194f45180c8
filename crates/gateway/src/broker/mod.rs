//! The broker: where publications get their offsets, where history and presence live,
//! and how publications reach every node with subscribers.
//!
//! The [`Broker`] trait is the only thing the rest of the node knows about: the
//! subscription lifecycle (`crate::subscriptions`) joins and leaves through it, sessions
//! and the HTTP API publish and read. A join and a leave are one call each, so that an
//! implementation can make each one round trip to its store. The embedded
//! [`memory::MemoryBroker`] serves a single node with no dependencies; a Redis
//! implementation serves a cluster. Events flow back through an [`EventSink`] (the hub),
//! called in per-channel order and never concurrently for one channel.

pub mod memory;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::value::RawValue;
use switchboard_protocol::{ClientInfo, StreamPosition};

use crate::channel::StreamOptions;

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The backing store is unreachable; the operation may be retried.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The requested position cannot be served exactly (other epoch, or trimmed).
    #[error("position {offset}/{epoch} is not available in this stream")]
    PositionLost {
        /// Requested offset.
        offset: u64,
        /// Requested epoch.
        epoch: String,
    },
}

/// A publication with its place in the channel's stream.
#[derive(Debug, Clone)]
pub struct Publication {
    /// Channel name.
    pub channel: Arc<str>,
    /// Offset, absent for ephemeral publications.
    pub offset: Option<u64>,
    /// Epoch, absent for ephemeral publications.
    pub epoch: Option<Arc<str>>,
    /// Application event name.
    pub event: Option<String>,
    /// Payload as canonical JSON text.
    pub data: Box<RawValue>,
    /// Server time of publication, Unix milliseconds.
    pub ts: u64,
    /// The publishing connection, for client publishes.
    pub from: Option<ClientInfo>,
}

/// What a publisher hands to [`Broker::publish`].
#[derive(Debug, Clone)]
pub struct NewPublication {
    /// Application event name.
    pub event: Option<String>,
    /// Payload as JSON text.
    pub data: Box<RawValue>,
    /// The publishing connection, for client publishes.
    pub from: Option<ClientInfo>,
    /// Live only: no offset, not stored.
    pub ephemeral: bool,
    /// A retried publish with the same key (within the idempotency window) is stored and
    /// delivered once and returns the first position.
    pub idempotency_key: Option<String>,
}

/// An operator command addressed to every connection of one user, on whichever node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    /// Close the connections with 3504 `force_disconnect`.
    Disconnect {
        /// Shown to the client in the disconnect push.
        reason: String,
    },
    /// Subscribe the connections to a channel (they get a `subscribe` push, then the
    /// publications after `recover` when given).
    Subscribe {
        /// The channel.
        channel: String,
        /// Where to resume: the position the backend last gave the user.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recover: Option<switchboard_protocol::StreamPosition>,
    },
    /// Unsubscribe the connections from a channel (they get an `unsubscribe` push).
    Unsubscribe {
        /// The channel.
        channel: String,
        /// Shown to the client.
        reason: String,
    },
}

/// Something that happened in a channel, delivered to every node with subscribers.
#[derive(Debug, Clone)]
pub enum ChannelEvent {
    /// A publication.
    Publication(Publication),
    /// A connection joined (join/leave enabled namespaces only).
    Join(ClientInfo),
    /// A connection left.
    Leave(ClientInfo),
    /// An operator command for the connections subscribed to this (personal) channel.
    Control(Control),
}

/// A page of history.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// Current epoch.
    pub epoch: Arc<str>,
    /// Offset of the newest publication (0 when none was ever published in this epoch).
    pub top: u64,
    /// Publications, oldest first.
    pub publications: Vec<Publication>,
    /// Whether the read stopped early because the next publication would have gone over
    /// its byte budget: the caller continues after the last publication returned.
    pub truncated: bool,
}

/// The bytes a stored publication is counted for against a history read's byte budget: its
/// payload and event plus a fixed allowance for the envelope around them (offset, epoch,
/// channel, time); the caller adds the publisher's client info where it has one.
pub fn history_cost(channel: &str, data: &str, event: Option<&str>) -> usize {
    const ENVELOPE: usize = 96;
    ENVELOPE + channel.len() + data.len() + event.map_or(0, str::len)
}

/// Which publications a history read returns.
#[derive(Debug, Clone, PartialEq)]
pub enum Since {
    /// The newest ones (up to the limit).
    Latest,
    /// Those after this position; fails with [`BrokerError::PositionLost`] when the
    /// position's epoch differs or publications after it were trimmed.
    After(StreamPosition),
}

/// Where a join reads the channel's stream from.
#[derive(Debug, Clone, PartialEq)]
pub enum JoinFrom {
    /// Only the position (epoch and newest offset), no publications.
    Now,
    /// At most `limit` publications after this position, oldest first (recovery). The
    /// page is returned as read: the caller decides whether it is complete.
    After(StreamPosition),
    /// The newest `limit` publications and this user's acknowledged position (offline
    /// delivery on the personal channel).
    Acked(String),
}

/// What [`Broker::join`] does besides registering interest.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// Where to read the stream from.
    pub from: JoinFrom,
    /// At most this many publications (ignored for [`JoinFrom::Now`]).
    pub limit: usize,
    /// Records this connection in the channel's presence.
    pub presence: Option<ClientInfo>,
    /// Emits a join event for this connection.
    pub join_event: Option<ClientInfo>,
    /// The channel's retention.
    pub stream: StreamOptions,
}

/// What [`Broker::join`] read.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The stream's position and the publications read (never truncated by bytes).
    pub page: HistoryPage,
    /// For [`JoinFrom::Acked`]: the user's acknowledged position, if any.
    pub acked: Option<StreamPosition>,
}

/// One RPC request as a stream route carries it (field names are the stream entry's; see
/// `docs/redis.md`, "RPC").
#[derive(Debug, Clone)]
pub struct RpcEntry {
    /// Request id, unique in the cluster (`<node>-r<n>`).
    pub id: String,
    /// The RPC method.
    pub method: String,
    /// The request payload, JSON text.
    pub data: String,
    /// The calling connection's id.
    pub client: String,
    /// The calling user (empty when anonymous).
    pub user: String,
    /// The connection's `info` claim, JSON text.
    pub info: Option<String>,
    /// The client's idempotency key, for the backend to recognise a retry.
    pub idempotency_key: Option<String>,
    /// When the caller stops waiting, Unix milliseconds.
    pub deadline_ms: u64,
}

/// Presence counts of one channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PresenceStats {
    /// Connections present.
    pub clients: u64,
    /// Distinct users among them.
    pub users: u64,
}

/// Receives channel events from the broker; implemented by the hub.
pub trait EventSink: Send + Sync + 'static {
    /// Called once per event, in the channel's order.
    fn deliver(&self, channel: &str, event: ChannelEvent);

    /// Whether this node has subscribers of `channel`.
    fn has_subscribers(&self, channel: &str) -> bool;

    /// Channels with subscribers on this node.
    fn channel_names(&self) -> Vec<String>;
}

/// The broker interface shared by the memory and Redis implementations.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Starts one local subscription of `channel`, in this order: makes this node receive
    /// the channel's events (implementations count interest themselves), reads the stream
    /// as `request.from` says, records `request.presence`, and emits `request.join_event`.
    /// One Redis round trip on the Redis broker (plus the node's `SUBSCRIBE`, shared by
    /// the subscriptions of one batch). On error nothing is left behind: no interest, no
    /// presence, no event.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the backing store cannot be reached.
    async fn join(&self, channel: &str, request: JoinRequest) -> Result<Joined, BrokerError>;

    /// Ends one local subscription of `channel`: drops one unit of interest, removes
    /// `client` from presence when `presence`, and emits a leave event when `leave_event`
    /// and the client was present (a presence entry that already expired had its leave
    /// emitted by whoever expired it). The interest is dropped even when the rest fails.
    /// Returns whether a leave event was emitted.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when presence or the leave event could not be written.
    async fn leave(
        &self,
        channel: &str,
        client: &ClientInfo,
        presence: bool,
        leave_event: bool,
    ) -> Result<bool, BrokerError>;

    /// Assigns the next offset (unless ephemeral), stores the publication under `stream`
    /// retention and delivers it to every node with subscribers. Returns the position.
    async fn publish(
        &self,
        channel: &str,
        publication: NewPublication,
        stream: StreamOptions,
    ) -> Result<Option<StreamPosition>, BrokerError>;

    /// Reads retained history: at most `limit` publications (for [`Since::Latest`], the
    /// newest `limit`), oldest first, and only as many of them as fit in `max_bytes` as
    /// counted by [`history_cost`] (always at least one); `truncated` says when that cut
    /// the page short. `usize::MAX` reads without a byte budget.
    async fn history(
        &self,
        channel: &str,
        since: Since,
        limit: usize,
        max_bytes: usize,
        stream: StreamOptions,
    ) -> Result<HistoryPage, BrokerError>;

    /// Everyone present in `channel`.
    async fn presence(&self, channel: &str) -> Result<Vec<ClientInfo>, BrokerError>;

    /// Presence counts of `channel`.
    async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, BrokerError>;

    /// Moves `user`'s acknowledged position in `channel` forward (never back within one
    /// epoch). Used for offline delivery on the personal channel.
    async fn ack(&self, channel: &str, user: &str, position: StreamPosition) -> Result<(), BrokerError>;

    /// Sends `control` to every connection of `user` on every node. Returns whether any
    /// node holds a connection of the user.
    async fn control(&self, user: &str, control: Control) -> Result<bool, BrokerError>;

    /// Channels with subscribers anywhere in the cluster.
    async fn active_channels(&self) -> Result<Vec<String>, BrokerError>;

    /// The cluster's nodes with their stats, as the registry reports them.
    async fn nodes(&self) -> Result<Vec<serde_json::Value>, BrokerError>;

    /// Adds `entry` to the RPC request stream `stream` (consumer group `group`, created if
    /// missing) and waits up to `timeout` for the backend's reply (JSON text). `Ok(None)`
    /// when no reply came in time.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the request cannot be written, or when the broker
    /// has no streams (the embedded broker; configuration refuses such routes).
    async fn rpc(
        &self,
        stream: &str,
        group: &str,
        entry: RpcEntry,
        timeout: std::time::Duration,
    ) -> Result<Option<String>, BrokerError>;

    /// Records a connection event in the lifecycle stream (`[lifecycle]`, Redis only; the
    /// embedded broker has no lifecycle stream and records nothing).
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when a connect could not be recorded (the session
    /// refuses the connection then). Disconnects are retried by the broker itself and
    /// never fail; subscribe and unsubscribe events fail when Redis is unreachable.
    async fn lifecycle(&self, event: LifecycleEvent<'_>) -> Result<(), BrokerError> {
        let _ = event;
        Ok(())
    }

    /// At start: fails when the broker refused the node's credentials (Redis `AUTH`),
    /// waiting a little for the first connection. The embedded broker has none.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] with the broker's refusal.
    async fn check_credentials(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Whether the broker can currently serve requests (feeds `/readyz`).
    fn is_ready(&self) -> bool;

    /// Records the address other nodes reach this node's HTTP listener at
    /// (`node.advertise_address`), published with the node's heartbeat. The embedded
    /// broker has no other nodes.
    fn advertise(&self, address: String) {
        let _ = address;
    }

    /// Stores a recoverable Socket.IO session's rooms (JSON) under `pid` for `ttl`.
    async fn store_socketio_session(
        &self,
        pid: &str,
        record: &str,
        ttl: std::time::Duration,
    ) -> Result<(), BrokerError>;

    /// The stored rooms of Socket.IO session `pid`, if it has not expired.
    async fn load_socketio_session(&self, pid: &str) -> Result<Option<String>, BrokerError>;

    /// Forgets Socket.IO session `pid` (the client left on purpose).
    async fn delete_socketio_session(&self, pid: &str) -> Result<(), BrokerError>;

    /// The HTTP address node `node` advertised, if it is alive and advertised one.
    async fn node_address(&self, node: &str) -> Result<Option<String>, BrokerError> {
        let _ = node;
        Ok(None)
    }
}

/// A connection event for the lifecycle stream (docs/redis.md "Lifecycle").
#[derive(Debug, Clone, Copy)]
pub enum LifecycleEvent<'a> {
    /// The connection authenticated.
    Connect {
        /// Connection id.
        client: &'a str,
        /// User id (empty: anonymous).
        user: &'a str,
        /// The connection's `info`, when it has one.
        info: Option<&'a serde_json::Value>,
    },
    /// An authenticated connection ended.
    Disconnect {
        /// Connection id.
        client: &'a str,
        /// The close code sent to the client (1000 when the client closed).
        code: u16,
        /// Why.
        reason: &'a str,
    },
    /// The connection subscribed to a channel.
    Subscribe {
        /// Connection id.
        client: &'a str,
        /// User id.
        user: &'a str,
        /// The channel.
        channel: &'a str,
    },
    /// The connection left a channel (not at disconnect: a disconnect ends them all).
    Unsubscribe {
        /// Connection id.
        client: &'a str,
        /// User id.
        user: &'a str,
        /// The channel.
        channel: &'a str,
    },
}

/// Current Unix time in milliseconds.
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A fresh random epoch identifier.
pub fn new_epoch() -> Arc<str> {
    use rand::Rng;
    let value: u64 = rand::rng().random();
    Arc::from(format!("{value:016x}"))
}
