//! Consume the gateways' lifecycle stream (`[lifecycle] enabled = true`): every
//! connection's connect and disconnect, and its subscribes and unsubscribes, in one
//! stream for the whole cluster (see `docs/redis.md`, "Lifecycle"). Typical uses: keep
//! users' online state in a database, audit who authenticated.
//!
//! Every connect is followed by exactly one disconnect, even when the connection's node
//! died (another node records it, code 1006). A [`LifecycleConsumer`] hands events to the
//! handler one at a time, in stream order; an event is acknowledged when the handler
//! returns `Ok`, and one whose handler failed (or whose consumer died) is handed out
//! again after [`LifecycleConsumer::claim_after`], so handlers must tolerate seeing an
//! event twice (e.g. keep a per-user connection set rather than a counter).
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
    /// Connects to Redis as a consumer of group `group` (one group per purpose: each
    /// group sees every event once), with a random consumer name.
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
        let consumer = format!("lifecycle-{}-{:08x}", std::process::id(), rand::random::<u32>());
        let reader =
            GroupReader::connect(options, keys::LIFECYCLE_EVENTS.to_string(), group, consumer).await?;
        Ok(LifecycleConsumer { reader })
    }

    /// Names this consumer (unique per process; shows in `XINFO CONSUMERS`).
    #[must_use]
    pub fn consumer(mut self, consumer: impl Into<String>) -> LifecycleConsumer {
        self.reader.consumer = consumer.into();
        self
    }

    /// Takes over events other consumers of the group (or a failed handler) have held
    /// this long. Default 5 s.
    #[must_use]
    pub fn claim_after(mut self, idle: Duration) -> LifecycleConsumer {
        self.reader.claim_after = idle.max(Duration::from_millis(1));
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
        let mut last_claim = tokio::time::Instant::now();
        tokio::pin!(stop);
        loop {
            let next = async {
                if last_claim.elapsed() >= self.reader.claim_after {
                    last_claim = tokio::time::Instant::now();
                    let claimed = self.reader.claim(64).await?;
                    if !claimed.is_empty() {
                        return Ok(claimed);
                    }
                }
                self.reader.read(64).await
            };
            let entries = tokio::select! {
                () = &mut stop => return Ok(()),
                entries = next => entries,
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
            for entry in entries {
                let id = entry.id.clone();
                let handled = match event(entry) {
                    Some(event) => handler(event).await.map_err(|error| error.to_string()),
                    // Not an event this version knows: acknowledge, don't block the group.
                    None => Ok(()),
                };
                match handled {
                    Ok(()) => {
                        if let Err(error) = self.reader.ack(&id).await {
                            tracing::warn!(%error, %id, "cannot acknowledge a lifecycle event; it will be handed out again");
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, %id, "lifecycle handler failed; the event will be handed out again")
                    }
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
