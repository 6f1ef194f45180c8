//! Publish events into a Switchboard cluster from a backend service, through Redis.
//!
//! A backend that records a vote, completes a KYC check or detects a vault risk calls
//! [`Publisher::publish`] (or [`Publisher::publish_to_user`] for one user on all their
//! devices). Each publish is one call of the `sb_publish` Redis Function that the gateways
//! also use, so the publication gets the channel's next offset, is stored in history and
//! reaches every gateway node with subscribers, atomically.
//!
//! Retention (history size and TTL) comes from the gateways: every gateway writes its
//! namespaces to `sb:namespaces` at start, and the publisher reads them, so the two never
//! disagree. Publishing to a namespace no gateway declared is an error.
//!
//! Retrying is safe with an idempotency key: a retried publish within the key's window
//! is stored and delivered once and returns the original offset.

mod connection;
mod group;
pub mod lifecycle;
mod link;
mod replicated;
mod send;
pub use connection::{RedisOptions, DEFAULT_COMMAND_TIMEOUT, DEFAULT_CONNECT_TIMEOUT};
use send::Prepared;
pub mod worker;

use std::{collections::HashMap, sync::Arc};

use redis::RedisError;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard_protocol::{channel, payload, redis as keys};
use tokio::sync::RwLock;

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The channel name breaks the grammar.
    #[error("invalid channel `{channel}`: {why}")]
    InvalidChannel {
        /// The name.
        channel: String,
        /// What is wrong.
        why: &'static str,
    },
    /// No gateway declared the channel's namespace in `sb:namespaces`.
    #[error("unknown namespace `{0}`: no gateway declares it (is a gateway running against this Redis?)")]
    UnknownNamespace(String),
    /// The payload could not be serialized as JSON.
    #[error("payload is not JSON-serializable: {0}")]
    Payload(#[from] serde_json::Error),
    /// The payload is nested deeper than the publisher's limit (the gateways' default,
    /// [`switchboard_protocol::payload::DEFAULT_MAX_NESTING_DEPTH`], unless changed with
    /// [`Publisher::with_max_nesting_depth`]).
    #[error("payload refused: {0}")]
    TooDeep(#[from] switchboard_protocol::payload::TooDeep),
    /// Redis could not be reached or the connection dropped; the publish may or may not
    /// have happened. Retrying with the same idempotency key is safe.
    #[error("Redis connection failed (retry with the same idempotency key): {0}")]
    Connection(#[source] RedisError),
    /// Redis answered something other than the contract's reply (an old library?).
    #[error("unexpected reply from sb_publish: {0}")]
    UnexpectedReply(String),
    /// Redis answered with an error (e.g. the body broke the contract).
    #[error("Redis refused the publish: {0}")]
    Refused(#[source] RedisError),
    /// Replicated publishing (the gateways' `broker.ack_replicas`): too few replicas
    /// acknowledged the publication in time. It is held, not delivered; retrying with the
    /// same idempotency key commits it.
    #[error("the publication reached {acknowledged} of {wanted} replicas in time (retry with the same idempotency key)")]
    NotReplicated {
        /// Replicas that acknowledged.
        acknowledged: i64,
        /// Replicas required.
        wanted: u32,
    },
}

impl PublishError {
    /// Whether retrying (with the same idempotency key) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, PublishError::Connection(_) | PublishError::NotReplicated { .. })
    }
}

impl From<RedisError> for PublishError {
    fn from(error: RedisError) -> Self {
        if error.is_io_error()
            || error.is_connection_dropped()
            || error.is_timeout()
            || error.is_connection_refusal()
        {
            PublishError::Connection(error)
        } else {
            PublishError::Refused(error)
        }
    }
}

/// Retention of one namespace, as declared by the gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Publications kept per channel (0: none).
    pub history_size: u64,
    /// How long a publication is kept, in milliseconds.
    pub history_ttl_ms: u64,
    /// How long the stream's epoch and offset outlive its last publication, in milliseconds.
    pub meta_ttl_ms: u64,
    /// Replicas that must hold a publication before it is delivered (the gateways'
    /// `broker.ack_replicas`; 0: publish at once). Absent in older declarations.
    #[serde(default)]
    pub ack_replicas: u32,
    /// How long to wait for them, in milliseconds.
    #[serde(default)]
    pub ack_timeout_ms: u64,
}

/// Options of one publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// Application event name, e.g. `"vote"`.
    pub event: Option<String>,
    /// Makes retries safe: a publish repeated with the same key within the gateways'
    /// idempotency window is delivered once and returns the first result.
    pub idempotency_key: Option<String>,
    /// Deliver live only: no offset, not stored in history.
    pub live_only: bool,
}

impl PublishOptions {
    /// Options with an event name.
    pub fn event(name: impl Into<String>) -> PublishOptions {
        PublishOptions { event: Some(name.into()), ..PublishOptions::default() }
    }

    /// Adds an idempotency key.
    #[must_use]
    pub fn idempotent(mut self, key: impl Into<String>) -> PublishOptions {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Makes the publish live only.
    #[must_use]
    pub fn live_only(mut self) -> PublishOptions {
        self.live_only = true;
        self
    }
}

/// The result of a publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// The channel.
    pub channel: String,
    /// Offset assigned (absent for live-only publishes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Stream epoch (absent for live-only publishes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// True when the idempotency key was seen before and nothing new was published.
    pub duplicate: bool,
}

/// A domain event that knows its channel and event name, published with
/// [`Publisher::publish_event`].
pub trait DomainEvent: Serialize {
    /// The event name clients see in `publication.event`.
    const EVENT: &'static str;

    /// The channel the event belongs to, e.g. `format!("dao:proposal-{}", self.proposal)`.
    fn channel(&self) -> String;

    /// A key that identifies this occurrence, for safe retries (none by default).
    fn idempotency_key(&self) -> Option<String> {
        None
    }
}

/// One item of [`Publisher::publish_batch`].
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Channel.
    pub channel: String,
    /// Payload as JSON.
    pub data: serde_json::Value,
    /// Options.
    pub options: PublishOptions,
}

/// How long idempotency keys are remembered, in milliseconds (the gateway's default).
pub const DEFAULT_IDEMPOTENCY_TTL_MS: u64 = 300_000;

/// A cheap, cloneable publisher over one multiplexed, auto-reconnecting Redis connection.
#[derive(Clone)]
pub struct Publisher {
    connection: link::Link,
    retention: Arc<RwLock<HashMap<String, Retention>>>,
    idempotency_ttl_ms: u64,
    max_nesting_depth: usize,
}

impl Publisher {
    /// Connects to Redis (`redis://[user:password@]host:port[/db]`, `rediss://` for TLS
    /// with the system's trust store), loads the Functions library and reads the
    /// gateways' namespaces.
    ///
    /// # Errors
    /// [`PublishError`] when Redis cannot be reached or refuses the library.
    pub async fn connect(url: &str) -> Result<Publisher, PublishError> {
        Publisher::connect_with(&RedisOptions::new(url)).await
    }

    /// [`Publisher::connect`] with TLS options (a private CA, a client certificate).
    ///
    /// # Errors
    /// As [`Publisher::connect`]; also a TLS file that cannot be read.
    pub async fn connect_with(options: &RedisOptions) -> Result<Publisher, PublishError> {
        let connection = options.link(None).await?;
        let publisher = Publisher {
            connection,
            retention: Arc::new(RwLock::new(HashMap::new())),
            idempotency_ttl_ms: DEFAULT_IDEMPOTENCY_TTL_MS,
            max_nesting_depth: payload::DEFAULT_MAX_NESTING_DEPTH,
        };
        publisher.load_library().await?;
        publisher.refresh_namespaces().await?;
        Ok(publisher)
    }

    /// Sets how long idempotency keys are remembered.
    #[must_use]
    pub fn with_idempotency_ttl_ms(mut self, ttl_ms: u64) -> Publisher {
        self.idempotency_ttl_ms = ttl_ms.max(1);
        self
    }

    /// Sets the deepest nesting of `data` this publisher sends; keep it equal to the
    /// gateways' `limits.max_nesting_depth`. Capped at
    /// [`switchboard_protocol::payload::MAX_NESTING_CEILING`], which the Redis Function
    /// enforces for every caller.
    #[must_use]
    pub fn with_max_nesting_depth(mut self, depth: usize) -> Publisher {
        self.max_nesting_depth = depth.min(payload::MAX_NESTING_CEILING);
        self
    }

    async fn load_library(&self) -> Result<(), PublishError> {
        let mut connection = self.connection.clone();
        let _: String = redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(keys::LIBRARY)
            .query_async(&mut connection)
            .await?;
        Ok(())
    }

    /// Re-reads `sb:namespaces` (done automatically when an unknown namespace is met).
    ///
    /// # Errors
    /// [`PublishError::Connection`] when Redis cannot be reached.
    pub async fn refresh_namespaces(&self) -> Result<(), PublishError> {
        let mut connection = self.connection.clone();
        let raw: HashMap<String, String> =
            redis::cmd("HGETALL").arg(keys::NAMESPACES).query_async(&mut connection).await?;
        let parsed = raw
            .into_iter()
            .filter_map(|(name, json)| Some((name, serde_json::from_str(&json).ok()?)))
            .collect();
        *self.retention.write().await = parsed;
        Ok(())
    }

    /// The retention the gateways declared for `channel`'s namespace.
    ///
    /// # Errors
    /// [`PublishError::InvalidChannel`] or [`PublishError::UnknownNamespace`].
    pub async fn retention(&self, channel_name: &str) -> Result<Retention, PublishError> {
        let namespace = channel::namespace_of(channel_name, channel::DEFAULT_MAX_LENGTH)
            .map_err(|why| PublishError::InvalidChannel { channel: channel_name.to_string(), why })?;
        if let Some(retention) = self.retention.read().await.get(namespace) {
            return Ok(*retention);
        }
        self.refresh_namespaces().await?;
        self.retention
            .read()
            .await
            .get(namespace)
            .copied()
            .ok_or_else(|| PublishError::UnknownNamespace(namespace.to_string()))
    }

    /// Publishes `data` to `channel`.
    ///
    /// # Errors
    /// [`PublishError`]; retry [`PublishError::Connection`] with the same idempotency key.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        channel_name: &str,
        data: &T,
        options: &PublishOptions,
    ) -> Result<Published, PublishError> {
        let prepared = self.command(channel_name, &serde_json::value::to_raw_value(data)?, options).await?;
        let mut results =
            send::execute(&self.connection, vec![(channel_name, options, Ok(prepared))]).await?;
        results.pop().unwrap_or_else(|| unreachable!("one result per item"))
    }

    /// Publishes to the personal channel `user:<id>`: every device of the user receives
    /// it, and devices that are offline get it when they connect (within retention).
    ///
    /// # Errors
    /// As [`Publisher::publish`].
    pub async fn publish_to_user<T: Serialize + ?Sized>(
        &self,
        user: &str,
        data: &T,
        options: &PublishOptions,
    ) -> Result<Published, PublishError> {
        self.publish(&channel::personal(user), data, options).await
    }

    /// Subscribes every connection of `user`, on every node, to `channel`, server-side
    /// (no namespace policy or hook is asked: the backend decided). With `recover`, the
    /// connections first receive what was published after that position. Returns whether
    /// the user had a connection anywhere (`false`: nobody was subscribed).
    ///
    /// # Errors
    /// [`PublishError::InvalidChannel`] for a malformed channel; Redis failures.
    pub async fn subscribe_user(
        &self,
        user: &str,
        channel_name: &str,
        recover: Option<&switchboard_protocol::StreamPosition>,
    ) -> Result<bool, PublishError> {
        channel::namespace_of(channel_name, channel::DEFAULT_MAX_LENGTH)
            .map_err(|why| PublishError::InvalidChannel { channel: channel_name.to_string(), why })?;
        let control = serde_json::json!({"c": {"subscribe": {"channel": channel_name, "recover": recover}}});
        self.control(user, &control).await
    }

    /// Unsubscribes every connection of `user`, on every node, from `channel`; they get
    /// an `unsubscribe` push with `reason`. Returns whether the user had a connection.
    ///
    /// # Errors
    /// Redis failures.
    pub async fn unsubscribe_user(
        &self,
        user: &str,
        channel_name: &str,
        reason: &str,
    ) -> Result<bool, PublishError> {
        let control = serde_json::json!({"c": {"unsubscribe": {"channel": channel_name, "reason": reason}}});
        self.control(user, &control).await
    }

    /// Disconnects every connection of `user`, on every node (close code 3504).
    ///
    /// # Errors
    /// Redis failures.
    pub async fn disconnect_user(&self, user: &str, reason: &str) -> Result<bool, PublishError> {
        self.control(user, &serde_json::json!({"c": {"disconnect": {"reason": reason}}})).await
    }

    /// Sends an operator command to the nodes holding `user`'s connections: they listen
    /// on the user's personal live channel.
    async fn control(&self, user: &str, control: &serde_json::Value) -> Result<bool, PublishError> {
        let live = keys::live(&channel::personal(user));
        let mut connection = self.connection.clone();
        let receivers: i64 = redis::cmd(if connection.is_cluster() { "SPUBLISH" } else { "PUBLISH" })
            .arg(live)
            .arg(control.to_string())
            .query_async(&mut connection)
            .await?;
        Ok(receivers > 0)
    }

    /// Publishes a typed domain event to its channel.
    ///
    /// # Errors
    /// As [`Publisher::publish`].
    pub async fn publish_event<E: DomainEvent>(&self, event: &E) -> Result<Published, PublishError> {
        let mut options = PublishOptions::event(E::EVENT);
        options.idempotency_key = event.idempotency_key();
        self.publish(&event.channel(), event, &options).await
    }

    /// Publishes one payload to many channels in one pipelined round trip. Each channel
    /// gets its own result.
    ///
    /// # Errors
    /// [`PublishError`] for the whole call when the payload cannot be serialized or the
    /// connection fails; per-channel errors are in the returned list.
    pub async fn broadcast<T: Serialize + ?Sized>(
        &self,
        channels: &[&str],
        data: &T,
        options: &PublishOptions,
    ) -> Result<Vec<Result<Published, PublishError>>, PublishError> {
        let data = serde_json::to_value(data)?;
        let items = channels
            .iter()
            .map(|c| Outgoing { channel: (*c).to_string(), data: data.clone(), options: options.clone() })
            .collect();
        self.publish_batch(items).await
    }

    /// Publishes many publications in one pipelined round trip, for high rates.
    ///
    /// # Errors
    /// [`PublishError`] for the whole call when the connection fails; per-item errors
    /// are in the returned list, in input order.
    pub async fn publish_batch(
        &self,
        items: Vec<Outgoing>,
    ) -> Result<Vec<Result<Published, PublishError>>, PublishError> {
        let mut prepared = Vec::with_capacity(items.len());
        for item in &items {
            let command = match serde_json::value::to_raw_value(&item.data) {
                Ok(data) => self.command(&item.channel, &data, &item.options).await,
                Err(error) => Err(error.into()),
            };
            prepared.push((item.channel.as_str(), &item.options, command));
        }
        send::execute(&self.connection, prepared).await
    }

    /// Builds the Redis command of one publish.
    async fn command(
        &self,
        channel_name: &str,
        data: &RawValue,
        options: &PublishOptions,
    ) -> Result<Prepared, PublishError> {
        payload::check_depth(data.get(), self.max_nesting_depth)?;
        let retention = self.retention(channel_name).await?;
        let body = keys::Body { event: options.event.as_deref(), data, from: None }.to_json()?;
        if options.live_only {
            let envelope =
                serde_json::json!({"t": unix_millis(), "b": serde_json::from_str::<&RawValue>(&body)?});
            // Sharded pub/sub on a Redis Cluster (docs/redis.md §10).
            let mut command = redis::cmd(if self.connection.is_cluster() { "SPUBLISH" } else { "PUBLISH" });
            command.arg(keys::live(channel_name)).arg(envelope.to_string());
            return Ok(Prepared { command, hold: None });
        }
        let hold = replicated::Hold::for_channel(channel_name, &retention);
        let mut command = redis::cmd("FCALL");
        command.arg("sb_publish");
        match &options.idempotency_key {
            Some(key) => command
                .arg(3)
                .arg(keys::stream(channel_name))
                .arg(keys::meta(channel_name))
                .arg(keys::idempotency(channel_name, key)),
            None => command.arg(2).arg(keys::stream(channel_name)).arg(keys::meta(channel_name)),
        };
        command
            .arg(keys::live(channel_name))
            .arg(body)
            .arg(retention.history_size)
            .arg(retention.history_ttl_ms.max(1))
            .arg(retention.meta_ttl_ms.max(1))
            .arg(self.idempotency_ttl_ms)
            // The body was serialized here and its depth checked: the function need not
            // decode it again (a sixth of its cost).
            .arg(if hold.is_some() { "checked+hold" } else { "checked" });
        Ok(Prepared { command, hold })
    }
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
