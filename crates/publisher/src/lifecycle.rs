//! Consume the gateways' lifecycle stream (`[lifecycle] enabled = true`): every
//! connection's connect and disconnect, and its subscribes and unsubscribes, in one
//! stream for the whole cluster (see `docs/redis.md`, "Lifecycle"). Typical uses: keep
//! users' online state in a database, audit who authenticated.
//!
//! Every connect is followed by exactly one disconnect, even when the connection's node
//! died (another node records it, code 1006). A [`LifecycleConsumer`] hands events to the
//! handler one at a time, in stream order, and acknowledges each when the handler
//! returns `Ok`; a failed one is retried (order kept) until it succeeds. Order matters (a
//! connect handled after its disconnect leaves a user online), so a group has one
//! consumer with a stable name (the group's, by default), which at start first takes its
//! own entries read but not acknowledged before. Handlers must tolerate seeing an event
//! twice after a restart (e.g. keep a per-user connection set rather than a counter).
//!
//! ```no_run
//! # async fn run() -> Result<(), switchboard_publisher::worker::WorkerError> {
//! use switchboard_publisher::lifecycle::{LifecycleConsumer, LifecycleKind};
//! let consumer = LifecycleConsumer::connect("redis://127.0.0.1:6379", "presence-db").await?;
//! let stop = tokio::signal::ctrl_c();
//! consumer
//!     .serve(
//!         |event| async move {
//!             match event.kind {
//!                 LifecycleKind::Connect => println!("{} online via {}", event.user, event.client),
//!                 LifecycleKind::Disconnect => println!("{} gone ({:?})", event.client, event.code),
//!                 _ => {}
//!             }
//!             Ok::<(), std::convert::Infallible>(())
//!         },
//!         async move {
//!             let _ = stop.await;
//!         },
//!     )
//!     .await
//! # }
//! ```

use std::{fmt::Display, future::Future, time::Duration};

use serde_json::Value as Json;
use switchboard_protocol::redis as keys;

use crate::{
    group::{GroupReader, RawEntry},
    worker::WorkerError,
    RedisOptions,
};

/// What happened to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleKind {
    /// It authenticated (`connect` succeeded).
    Connect,
    /// It ended.
    Disconnect,
    /// It subscribed to `channel`.
    Subscribe,
    /// It left `channel` (not at disconnect: a disconnect ends every subscription).
    Unsubscribe,
}

/// One lifecycle event.
#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleEvent {
    /// The stream entry id (time-ordered).
    pub entry: String,
    /// What happened.
    pub kind: LifecycleKind,
    /// The connection id.
    pub client: String,
    /// The user (empty for anonymous connections).
    pub user: String,
    /// The node that held the connection.
    pub node: String,
    /// Connect: the connection's `info`.
    pub info: Option<Json>,
    /// Connect: recorded again by a node that had been cut off from Redis for longer
    /// than `lifecycle.node_ttl_ms` (its connections were meanwhile recorded as lost).
    pub resumed: bool,
    /// Disconnect: the close code (1000 the client closed, 1006 the connection or its
    /// node was lost, 3xxx the server's code).
    pub code: Option<u16>,
    /// Disconnect: why.
    pub reason: Option<String>,
    /// Disconnect of a dead node's connection: the node that recorded it.
    pub reaped_by: Option<String>,
    /// Subscribe and unsubscribe: the channel.
    pub channel: Option<String>,
}

/// Reads the lifecycle stream through a consumer group.
pub struct LifecycleConsumer {
    reader: GroupReader,
}

impl LifecycleConsumer {
    /// Connects to Redis as the consumer of group `group` (one group per purpose: each
    /// group sees every event once), named after the group.
    ///
    /// # Errors
    /// [`WorkerError::Redis`] when Redis cannot be reached.
    pub async fn connect(url: &str, group: &str) -> Result<LifecycleConsumer, WorkerError> {
        LifecycleConsumer::connect_with(&RedisOptions::new(url), group).await
    }

    /// [`LifecycleConsumer::connect`] with TLS options.
    ///
    /// # Errors
    /// As [`LifecycleConsumer::connect`]; also a TLS file that cannot be read.
    pub async fn connect_with(options: &RedisOptions, group: &str) -> Result<LifecycleConsumer, WorkerError> {
        // Stable: a restarted consumer finds its pending entries under the same name.
        let consumer = group.to_string();
        let reader =
            GroupReader::connect(options, keys::LIFECYCLE_EVENTS.to_string(), group, consumer).await?;
        Ok(LifecycleConsumer { reader })
    }

    /// Names this consumer (keep it stable across restarts; shows in `XINFO CONSUMERS`).
    #[must_use]
    pub fn consumer(mut self, consumer: impl Into<String>) -> LifecycleConsumer {
        self.reader.consumer = consumer.into();
        self
    }

    /// Hands events to `handler`, one at a time, until `stop` resolves (the event in hand
    /// is finished first).
    ///
    /// # Errors
    /// [`WorkerError::Redis`] when the consumer group cannot be created.
    pub async fn serve<H, F, E, S>(mut self, handler: H, stop: S) -> Result<(), WorkerError>
    where
        H: Fn(LifecycleEvent) -> F,
        F: Future<Output = Result<(), E>>,
        E: Display,
        S: Future<Output = ()>,
    {
        self.reader.ensure_group().await?;
        // First what this consumer read before and did not acknowledge (a restart),
        // then new entries.
        let mut from = "0";
        tokio::pin!(stop);
        loop {
            let entries = tokio::select! {
                () = &mut stop => return Ok(()),
                entries = self.reader.read_from(64, from) => entries,
            };
            let entries = match entries {
                Ok(entries) => entries,
                Err(error) if error.code() == Some("NOGROUP") => {
                    self.reader.ensure_group().await?;
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, "lifecycle consumer cannot read; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            if from == "0" && entries.is_empty() {
                from = ">";
                continue;
            }
            for entry in entries {
                let id = entry.id.clone();
                if let Some(event) = event(entry) {
                    // In order: a failed event is retried before any later one.
                    while let Err(error) = handler(event.clone()).await {
                        tracing::warn!(%error, %id, "lifecycle handler failed; retrying");
                        tokio::select! {
                            () = &mut stop => return Ok(()),
                            () = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                    }
                }
                if let Err(error) = self.reader.ack(&id).await {
                    tracing::warn!(%error, %id, "cannot acknowledge a lifecycle event; it will be handed out again");
                }
            }
        }
    }
}

/// The event in a stream entry, if it is one.
fn event(entry: RawEntry) -> Option<LifecycleEvent> {
    let RawEntry { id, fields: mut map } = entry;
    let kind = match map.remove("event")?.as_str() {
        "connect" => LifecycleKind::Connect,
        "disconnect" => LifecycleKind::Disconnect,
        "subscribe" => LifecycleKind::Subscribe,
        "unsubscribe" => LifecycleKind::Unsubscribe,
        _ => return None,
    };
    Some(LifecycleEvent {
        entry: id,
        kind,
        client: map.remove("client")?,
        user: map.remove("user").unwrap_or_default(),
        node: map.remove("node").unwrap_or_default(),
        info: map.remove("info").and_then(|info| serde_json::from_str(&info).ok()),
        resumed: map.remove("resumed").is_some_and(|r| r == "1"),
        code: map.remove("code").and_then(|code| code.parse().ok()),
        reason: map.remove("reason"),
        reaped_by: map.remove("reaped_by"),
        channel: map.remove("channel"),
    })
}
