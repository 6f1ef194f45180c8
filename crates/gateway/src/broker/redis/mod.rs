//! The Redis broker: cluster mode for Redis >= 7, on `fred`.
//!
//! Publishing is one call of the `sb_publish` Redis Function (see `switchboard.lua`): it
//! assigns the offset, appends to the channel's stream and publishes on the channel's
//! live pub/sub channel atomically, so history and live traffic never disagree. History
//! and presence are Redis Functions too, so each is one round trip and atomic.
//!
//! Two connections per node: one for commands (`client`), one for pub/sub (see
//! `subscriber`). Both reconnect with exponential backoff; commands fail fast while Redis
//! is unreachable (the session answers 115 `unavailable`), and client WebSockets stay up.

mod connection;
mod lifecycle;
mod link_state;
mod registry;
mod replicated;
mod rpc;
mod socketio;
mod subscriber;
pub mod wire;

use link_state::{first_outcome, link_down};

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use dashmap::DashMap;
use fred::{clients::SubscriberClient, prelude::*};
use switchboard_protocol::{ClientInfo, StreamPosition};
use tokio::sync::{broadcast::error::RecvError, watch};

use super::{
    Broker, BrokerError, Control, EventSink, HistoryPage, JoinFrom, JoinRequest, Joined, LifecycleEvent,
    NewPublication, PresenceStats, Publication, RpcEntry, Since,
};
use crate::{
    channel::{ChannelRules, StreamOptions},
    config::{BrokerConfig, LifecycleConfig},
    metrics::Metrics,
};

use switchboard_protocol::redis::{self as keys, LIBRARY};

impl From<fred::error::Error> for BrokerError {
    fn from(error: fred::error::Error) -> Self {
        BrokerError::Unavailable(error.to_string())
    }
}

/// What the broker's tasks share.
pub(crate) struct RedisShared {
    client: Client,
    /// Set while the command client's connection is known to be down (see [`link_down`]).
    command_link_down: Arc<AtomicBool>,
    /// Set while the subscriber client's connection is known to be down.
    pubsub_link_down: Arc<AtomicBool>,
    config: BrokerConfig,
    node_id: String,
    /// The address peers reach this node's HTTP listener at, for the registry.
    node_address: std::sync::OnceLock<String>,
    /// Asks the registry task for a heartbeat now (the address was just set).
    beat_now: tokio::sync::Notify,
    sink: Arc<dyn EventSink>,
    metrics: Arc<Metrics>,
    rules: Arc<ChannelRules>,
    /// RPC requests of this node waiting for their reply.
    rpc: rpc::RpcWaiters,
    /// `rpc.stream_max_len`: request streams are trimmed to about this many entries.
    rpc_max_len: u64,
    /// The lifecycle stream (when enabled).
    lifecycle: lifecycle::Lifecycle,
    /// Held publishing through its own connection, when `broker.ack_replicas` > 0.
    replicated: Option<replicated::Replicated>,
    /// A Redis Cluster: live channels are sharded pub/sub (`SPUBLISH`, `SSUBSCRIBE`).
    sharded: bool,
}

/// Broadcast capacity of the command client's event channels (fred's default).
const COMMAND_BROADCAST_CAPACITY: usize = 32;
/// Broadcast capacity of the subscriber client: live messages wait here for the reader.
/// The reader never waits on Redis (stream reads run in their own tasks) and hands each
/// message to the hub without waiting either, so the buffer only absorbs scheduling
/// hiccups: 8 192 messages is ~80 ms at 100 000 live messages/s. A reader that still
/// falls behind catches every channel up from the streams (nothing is lost). fred
/// preallocates every broadcast channel of the client at this size: 65 536 slots cost
/// ~40 MB of RSS per node, 8 192 about 5.
const SUBSCRIBER_BROADCAST_CAPACITY: usize = 1 << 13;

/// The Redis broker.
pub struct RedisBroker {
    shared: Arc<RedisShared>,
    /// The first connection's outcome, for [`RedisBroker::check_credentials`].
    first: watch::Receiver<Option<Result<(), String>>>,
    subscriber: subscriber::Subscriber,
    /// Presence entries of this node's connections, refreshed before they expire.
    local_presence: Arc<DashMap<String, HashMap<String, ClientInfo>>>,
}

impl RedisBroker {
    /// Connects (in the background) and starts the broker's tasks.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the URL is invalid.
    pub fn start(
        config: &BrokerConfig,
        node_id: &str,
        sink: Arc<dyn EventSink>,
        metrics: Arc<Metrics>,
        rules: Arc<ChannelRules>,
        rpc_max_len: u64,
        lifecycle: &LifecycleConfig,
    ) -> Result<Arc<RedisBroker>, BrokerError> {
        let mut redis_config = connection::redis_config(config)?;
        redis_config.fail_fast = true;
        let command_timeout = Duration::from_millis(config.command_timeout_ms);
        // fred preallocates every broadcast channel of a client (messages, errors,
        // reconnections, ...) at this capacity, ~10 MB each at 65 536 slots. Only the
        // subscriber's message stream needs depth (bursts of live traffic); the command
        // client keeps fred's default (measured: cluster-mode RSS at start 87 MB -> see
        // docs/BENCHMARKS.md).
        let builder = |broadcast_capacity: usize| {
            let mut builder = Builder::from_config(redis_config.clone());
            builder
                .with_performance_config(|performance| {
                    performance.default_command_timeout = command_timeout;
                    performance.broadcast_channel_capacity = broadcast_capacity;
                })
                .with_connection_config(|connection| {
                    connection.connection_timeout = Duration::from_millis(config.connect_timeout_ms.max(1));
                    connection.internal_command_timeout = command_timeout;
                    connection.max_command_attempts = 1;
                })
                .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
            builder
        };
        let client = builder(COMMAND_BROADCAST_CAPACITY).build()?;
        let pubsub: SubscriberClient = builder(SUBSCRIBER_BROADCAST_CAPACITY).build_subscriber_client()?;
        let first = first_outcome(&client);
        let lanes = if config.ack_replicas > 0 { config.ack_replicas_connections.max(1) } else { 0 };
        let clients =
            (0..lanes).map(|_| builder(COMMAND_BROADCAST_CAPACITY).build()).collect::<Result<_, _>>()?;
        let replicated =
            replicated::Replicated::new(clients, config.ack_replicas, config.ack_replicas_timeout_ms);
        let shared = Arc::new(RedisShared {
            command_link_down: link_down(&client),
            pubsub_link_down: link_down(&pubsub),
            client: client.clone(),
            config: config.clone(),
            node_id: node_id.to_string(),
            node_address: std::sync::OnceLock::new(),
            beat_now: tokio::sync::Notify::new(),
            sink,
            metrics,
            rules,
            rpc: rpc::RpcWaiters::default(),
            rpc_max_len,
            lifecycle: lifecycle::Lifecycle::new(lifecycle.clone()),
            replicated,
            sharded: config.is_cluster(),
        });
        // Event receivers are taken before connecting so that the first connection's
        // event (load functions, subscribe) is not missed.
        spawn_function_loader(shared.clone());
        let subscriber = subscriber::Subscriber::start(pubsub.clone(), shared.clone());
        client.connect();
        pubsub.connect();
        if let Some(replicated) = &shared.replicated {
            replicated.connect();
        }
        let broker =
            Arc::new(RedisBroker { shared, first, subscriber, local_presence: Arc::new(DashMap::new()) });
        broker.spawn_presence_keeper();
        registry::spawn(broker.shared.clone());
        lifecycle::spawn(broker.shared.clone());
        Ok(broker)
    }

    /// Waits up to `wait` for the first connection: an error when Redis refused the
    /// credentials (the node should not start), `Ok` when connected or when Redis did not
    /// answer in time (it may start later; readiness stays false meanwhile).
    async fn first_connection(&self, wait: Duration) -> Result<(), BrokerError> {
        let mut first = self.first.clone();
        let outcome = match tokio::time::timeout(wait, first.wait_for(Option::is_some)).await {
            Ok(Ok(outcome)) => outcome.clone(),
            _ => None,
        };
        match outcome {
            Some(Err(error)) => {
                Err(BrokerError::Unavailable(format!("redis refused the credentials: {error}")))
            }
            _ => Ok(()),
        }
    }

    /// Refreshes this node's presence entries and expires dead ones (emitting their
    /// leave events) well within the presence TTL.
    fn spawn_presence_keeper(&self) {
        let shared = self.shared.clone();
        let local = self.local_presence.clone();
        tokio::spawn(async move {
            let ttl = Duration::from_secs(shared.config.presence_ttl_secs.max(1));
            let mut tick = tokio::time::interval(ttl / 3);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let snapshot: Vec<(String, Vec<ClientInfo>)> =
                    local.iter().map(|e| (e.key().clone(), e.value().values().cloned().collect())).collect();
                for (channel, clients) in snapshot {
                    let mut args = vec![(ttl.as_millis() as u64).to_string()];
                    for client in clients {
                        let Ok(info) = serde_json::to_string(&client) else { continue };
                        args.extend([client.client, client.user, info]);
                    }
                    if let Err(error) =
                        shared.fcall("sb_presence_refresh", presence_keys(&channel), args).await
                    {
                        tracing::debug!(%error, %channel, "cannot refresh presence");
                        continue;
                    }
                    match shared.fcall("sb_presence_expire", presence_keys(&channel), Vec::new()).await {
                        Ok(expired) => shared.emit_leaves(&channel, strings(expired)).await,
                        Err(error) => tracing::debug!(%error, %channel, "cannot expire presence"),
                    }
                }
            }
        });
    }
}

fn spawn_function_loader(shared: Arc<RedisShared>) {
    let mut connects = shared.client.reconnect_rx();
    tokio::spawn(async move {
        loop {
            match connects.recv().await {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    if let Err(error) = shared.load_functions().await {
                        tracing::warn!(%error, "cannot load the Redis Functions library");
                    }
                    if let Err(error) = shared.declare_namespaces().await {
                        tracing::warn!(%error, "cannot declare namespaces in Redis");
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
}

/// The functions take whole numbers of at most 15 digits.
const UNBOUNDED: usize = 999_999_999_999_999;

fn presence_keys(channel: &str) -> Vec<String> {
    vec![keys::presence(channel), keys::presence_expiry(channel), keys::presence_users(channel)]
}

fn strings(value: Value) -> Vec<String> {
    match value {
        Value::Array(items) => items.into_iter().filter_map(|v| v.as_string()).collect(),
        _ => Vec::new(),
    }
}

fn integer(value: &Value) -> Option<u64> {
    match value {
        Value::Integer(n) => u64::try_from(*n).ok(),
        other => other.as_str().and_then(|s| s.parse().ok()),
    }
}

impl RedisShared {
    async fn load_functions(&self) -> Result<(), BrokerError> {
        if self.sharded {
            // Every primary runs the functions of the slots it owns.
            let _: () = self.client.function_load_cluster(true, LIBRARY).await?;
        } else {
            let _: Value = self.client.function_load(true, LIBRARY).await?;
        }
        tracing::info!("Redis Functions library loaded");
        Ok(())
    }

    /// Writes every namespace's retention to `sb:namespaces`, where publishers read it.
    pub(super) async fn declare_namespaces(&self) -> Result<(), BrokerError> {
        let entries: Vec<(String, String)> = self
            .rules
            .namespaces()
            .map(|ns| {
                let retention = serde_json::json!({
                    "history_size": ns.stream.history_size,
                    "history_ttl_ms": ns.stream.history_ttl.as_millis() as u64,
                    "meta_ttl_ms": self.meta_ttl_ms(ns.stream),
                    // Publishers hold their publications the same way (redis.md §4.11).
                    "ack_replicas": self.config.ack_replicas,
                    "ack_timeout_ms": self.config.ack_replicas_timeout_ms,
                });
                (ns.config.name.clone(), retention.to_string())
            })
            .collect();
        let _: () = self.client.hset(keys::NAMESPACES, entries).await?;
        Ok(())
    }

    /// Calls a library function, loading the library once if Redis does not know it
    /// (a restarted or wiped Redis).
    async fn fcall(
        &self,
        function: &str,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, BrokerError> {
        self.fcall_on(&self.client, function, keys, args).await
    }

    /// [`RedisShared::fcall`] on another connection of the node.
    async fn fcall_on(
        &self,
        client: &Client,
        function: &str,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, BrokerError> {
        match client.fcall::<Value, _, _, _>(function, keys.clone(), args.clone()).await {
            Err(error) if error.details().contains("Function not found") => {
                self.load_functions().await?;
                Ok(client.fcall(function, keys, args).await?)
            }
            other => Ok(other?),
        }
    }

    fn stream_options(&self, channel: &str) -> StreamOptions {
        self.rules.resolve(channel).map(|ns| ns.stream).unwrap_or(StreamOptions {
            history_size: 0,
            history_ttl: Duration::from_secs(self.config.stream_meta_ttl_secs),
        })
    }

    fn meta_ttl_ms(&self, stream: StreamOptions) -> u64 {
        (self.config.stream_meta_ttl_secs * 1000).max(stream.history_ttl.as_millis() as u64)
    }

    /// One `sb_history` call: the epoch, the top offset and the publications (at most
    /// `max_bytes` of them, as `sb_history` counts).
    async fn read(
        &self,
        channel: &str,
        after: Option<u64>,
        limit: usize,
        max_bytes: usize,
        stream: StreamOptions,
    ) -> Result<HistoryPage, BrokerError> {
        let args = vec![
            if after.is_some() { "after" } else { "latest" }.to_string(),
            after.unwrap_or(0).to_string(),
            limit.to_string(),
            (stream.history_ttl.as_millis() as u64).to_string(),
            self.meta_ttl_ms(stream).to_string(),
            (self.config.unpublished_stream_ttl_secs.max(1) * 1000).to_string(),
            max_bytes.clamp(1, UNBOUNDED).to_string(),
        ];
        let reply = self.fcall("sb_history", vec![keys::stream(channel), keys::meta(channel)], args).await?;
        let Value::Array(items) = reply else {
            return Err(BrokerError::Unavailable("unexpected sb_history reply".into()));
        };
        let mut items = items.into_iter();
        let epoch: Arc<str> = Arc::from(items.next().and_then(|v| v.as_string()).unwrap_or_default());
        let top = items.next().as_ref().and_then(integer).unwrap_or(0);
        let truncated = items.next().as_ref().and_then(integer) == Some(1);
        let publications = self.entries(channel, &epoch, items);
        Ok(HistoryPage { epoch, top, publications, truncated })
    }

    /// Decodes the `offset, ts, body` triples that end an `sb_history` or `sb_join` reply.
    fn entries(
        &self,
        channel: &str,
        epoch: &Arc<str>,
        mut items: impl Iterator<Item = Value>,
    ) -> Vec<Publication> {
        let name: Arc<str> = Arc::from(channel);
        let mut publications = Vec::new();
        while let (Some(offset), Some(ts), Some(body)) = (items.next(), items.next(), items.next()) {
            let (Some(offset), Some(ts), Some(body)) = (integer(&offset), integer(&ts), body.as_string())
            else {
                continue;
            };
            match wire::publication(&name, Some((offset, epoch.clone())), ts, &body) {
                Ok(publication) => publications.push(publication),
                Err(error) => {
                    self.metrics.broker_invalid_messages.inc();
                    tracing::warn!(%error, %channel, offset, "skipping an undecodable stream entry");
                }
            }
        }
        publications
    }

    /// One `sb_join` call: see [`Broker::join`] and docs/redis.md.
    async fn join(&self, channel: &str, request: &JoinRequest) -> Result<Joined, BrokerError> {
        let stream = request.stream;
        let (mode, after, user) = match &request.from {
            JoinFrom::Now => ("latest", 0, ""),
            JoinFrom::After(position) => ("after", position.offset, ""),
            JoinFrom::Acked(user) => ("acked", 0, user.as_str()),
        };
        let limit = if request.from == JoinFrom::Now { 0 } else { request.limit };
        let (presence_ttl, client, info) = match &request.presence {
            Some(client) => {
                let info =
                    serde_json::to_string(client).map_err(|e| BrokerError::Unavailable(e.to_string()))?;
                (self.config.presence_ttl_secs.max(1) * 1000, client.client.as_str(), info)
            }
            None => (0, "", String::new()),
        };
        let user = request.presence.as_ref().map_or(user, |c| c.user.as_str());
        let envelope = match &request.join_event {
            Some(client) => {
                wire::presence_event(true, client).map_err(|e| BrokerError::Unavailable(e.to_string()))?
            }
            None => String::new(),
        };
        let keys = vec![
            keys::stream(channel),
            keys::meta(channel),
            keys::presence(channel),
            keys::presence_expiry(channel),
            keys::presence_users(channel),
            keys::acks(channel),
        ];
        let args = vec![
            mode.to_string(),
            after.to_string(),
            limit.min(UNBOUNDED).to_string(),
            (stream.history_ttl.as_millis() as u64).max(1).to_string(),
            self.meta_ttl_ms(stream).to_string(),
            (self.config.unpublished_stream_ttl_secs.max(1) * 1000).to_string(),
            presence_ttl.to_string(),
            client.to_string(),
            user.to_string(),
            info,
            keys::live(channel),
            envelope,
        ];
        let Value::Array(items) = self.fcall("sb_join", keys, args).await? else {
            return Err(BrokerError::Unavailable("unexpected sb_join reply".into()));
        };
        let mut items = items.into_iter();
        let epoch: Arc<str> = Arc::from(items.next().and_then(|v| v.as_string()).unwrap_or_default());
        let top = items.next().as_ref().and_then(integer).unwrap_or(0);
        let acked_offset = items.next().as_ref().and_then(integer);
        let acked_epoch = items.next().and_then(|v| v.as_string()).filter(|e| !e.is_empty());
        let acked = acked_offset.zip(acked_epoch).map(|(offset, epoch)| StreamPosition { offset, epoch });
        let publications = self.entries(channel, &epoch, items);
        Ok(Joined { page: HistoryPage { epoch, top, publications, truncated: false }, acked })
    }

    /// Publications after `from`, as far as the stream holds them.
    async fn read_after(
        &self,
        channel: &str,
        from: u64,
    ) -> Result<(Arc<str>, Vec<Publication>), BrokerError> {
        let stream = self.stream_options(channel);
        let limit = stream.history_size.clamp(1, 10_000);
        let page = self.read(channel, Some(from), limit, usize::MAX, stream).await?;
        Ok((page.epoch, page.publications))
    }

    /// Fails at once while a connection to Redis is known to be down, instead of
    /// queueing the command until `command_timeout_ms` (docs/operations.md promises an
    /// immediate 115 during an outage). Both connections count: a command that succeeds
    /// while pub/sub is down would not reach the other nodes' subscribers live. Checked
    /// where clients' commands enter the broker (the `Broker` methods) and nowhere else:
    /// the reader's gap fills and catch-ups after a reconnect must wait for Redis, not
    /// give up (a failed catch-up would leave a gap).
    fn connected(&self) -> Result<(), BrokerError> {
        let down =
            self.command_link_down.load(Ordering::Acquire) || self.pubsub_link_down.load(Ordering::Acquire);
        if self.client.is_connected() && !down {
            Ok(())
        } else {
            Err(BrokerError::Unavailable("the connection to Redis is down".into()))
        }
    }

    async fn publish_live(&self, channel: &str, message: String) -> Result<(), BrokerError> {
        self.publish_live_counted(channel, message).await.map(|_| ())
    }

    /// Publishes on `channel`'s live pub/sub channel (sharded on a Redis Cluster); returns
    /// how many subscribers (nodes) received it.
    async fn publish_live_counted(&self, channel: &str, message: String) -> Result<i64, BrokerError> {
        Ok(if self.sharded {
            self.client.spublish(keys::live(channel), message).await?
        } else {
            self.client.publish(keys::live(channel), message).await?
        })
    }

    /// Emits leave events for expired presence entries (JSON client infos).
    async fn emit_leaves(&self, channel: &str, expired: Vec<String>) {
        if expired.is_empty() || !self.rules.resolve(channel).is_ok_and(|ns| ns.config.join_leave) {
            return;
        }
        for info in expired {
            let message = match serde_json::from_str::<ClientInfo>(&info) {
                Ok(client) => wire::presence_event(false, &client),
                Err(error) => {
                    tracing::warn!(%error, %channel, "undecodable presence entry");
                    continue;
                }
            };
            if let Ok(message) = message {
                if let Err(error) = self.publish_live(channel, message).await {
                    tracing::warn!(%error, %channel, "cannot emit leave of an expired connection");
                }
            }
        }
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn join(&self, channel: &str, request: JoinRequest) -> Result<Joined, BrokerError> {
        self.shared.connected()?;
        // SUBSCRIBE before reading the position: a publication after the read then
        // arrives live (see the subscriber's module docs).
        self.subscriber.subscribe(channel).await?;
        match self.shared.join(channel, &request).await {
            Ok(joined) => {
                self.subscriber.baseline(channel, joined.page.epoch.clone(), joined.page.top).await;
                if let Some(client) = request.presence {
                    self.local_presence
                        .entry(channel.to_string())
                        .or_default()
                        .insert(client.client.clone(), client);
                }
                Ok(joined)
            }
            Err(error) => {
                self.subscriber.unsubscribe(channel).await;
                Err(error)
            }
        }
    }

    async fn leave(
        &self,
        channel: &str,
        client: &ClientInfo,
        presence: bool,
        leave_event: bool,
    ) -> Result<bool, BrokerError> {
        self.subscriber.unsubscribe(channel).await;
        if presence {
            if let dashmap::Entry::Occupied(mut entry) = self.local_presence.entry(channel.to_string()) {
                entry.get_mut().remove(&client.client);
                if entry.get().is_empty() {
                    entry.remove();
                }
            }
        }
        if !presence && !leave_event {
            return Ok(false);
        }
        self.shared.connected()?;
        let envelope = if leave_event {
            wire::presence_event(false, client).map_err(|e| BrokerError::Unavailable(e.to_string()))?
        } else {
            String::new()
        };
        let tracked = if presence { "1" } else { "0" };
        let args = vec![client.client.clone(), tracked.to_string(), keys::live(channel), envelope];
        let present = self.shared.fcall("sb_leave", presence_keys(channel), args).await?;
        Ok(leave_event && integer(&present) == Some(1))
    }

    async fn publish(
        &self,
        channel: &str,
        publication: NewPublication,
        stream: StreamOptions,
    ) -> Result<Option<StreamPosition>, BrokerError> {
        self.shared.connected()?;
        let body = wire::body(publication.event.as_deref(), &publication.data, publication.from.as_ref())
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        if publication.ephemeral {
            let message = wire::ephemeral(super::unix_millis(), &body)
                .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
            self.shared.publish_live(channel, message).await?;
            return Ok(None);
        }
        let args = vec![
            keys::live(channel),
            body,
            stream.history_size.to_string(),
            (stream.history_ttl.as_millis() as u64).max(1).to_string(),
            self.shared.meta_ttl_ms(stream).to_string(),
            (self.shared.config.idempotency_ttl_secs.max(1) * 1000).to_string(),
            // The body was built by serde from checked data: the function need not
            // decode it again (a sixth of its cost).
            "checked".to_string(),
        ];
        let mut keys_list = vec![keys::stream(channel), keys::meta(channel)];
        if let Some(key) = &publication.idempotency_key {
            keys_list.push(keys::idempotency(channel, key));
        }
        if let Some(replicated) = &self.shared.replicated {
            let mut args = args;
            args[6] = "checked+hold".to_string();
            let (offset, epoch) = replicated.publish(&self.shared, keys_list, args).await?;
            return Ok(Some(StreamPosition { offset, epoch }));
        }
        let reply = self.shared.fcall("sb_publish", keys_list, args).await?;
        match reply {
            Value::Array(items) if items.len() >= 2 => {
                let offset =
                    integer(&items[0]).ok_or_else(|| BrokerError::Unavailable("bad offset".into()))?;
                let epoch = items[1].as_string().unwrap_or_default();
                Ok(Some(StreamPosition { offset, epoch }))
            }
            other => Err(BrokerError::Unavailable(format!("unexpected sb_publish reply {other:?}"))),
        }
    }

    async fn history(
        &self,
        channel: &str,
        since: Since,
        limit: usize,
        max_bytes: usize,
        stream: StreamOptions,
    ) -> Result<HistoryPage, BrokerError> {
        self.shared.connected()?;
        let after = match &since {
            Since::Latest => None,
            Since::After(position) => Some(position.offset),
        };
        let page = self.shared.read(channel, after, limit, max_bytes, stream).await?;
        if let Since::After(position) = since {
            let first = page.publications.first().and_then(|p| p.offset);
            let continuous = position.offset == page.top || first == Some(position.offset + 1);
            if *position.epoch != *page.epoch || position.offset > page.top || !continuous {
                return Err(BrokerError::PositionLost { offset: position.offset, epoch: position.epoch });
            }
        }
        Ok(page)
    }

    async fn presence(&self, channel: &str) -> Result<Vec<ClientInfo>, BrokerError> {
        self.shared.connected()?;
        let reply = strings(self.shared.fcall("sb_presence_list", presence_keys(channel), Vec::new()).await?);
        let split = reply.iter().position(String::is_empty).unwrap_or(reply.len());
        let (expired, present) = reply.split_at(split);
        self.shared.emit_leaves(channel, expired.to_vec()).await;
        Ok(present.iter().skip(1).filter_map(|info| serde_json::from_str(info).ok()).collect())
    }

    async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, BrokerError> {
        self.shared.connected()?;
        let reply = self.shared.fcall("sb_presence_stats", presence_keys(channel), Vec::new()).await?;
        let Value::Array(items) = reply else {
            return Err(BrokerError::Unavailable("unexpected sb_presence_stats reply".into()));
        };
        let clients = items.first().and_then(integer).unwrap_or(0);
        let users = items.get(1).and_then(integer).unwrap_or(0);
        let expired = items.into_iter().skip(2).filter_map(|v| v.as_string()).collect();
        self.shared.emit_leaves(channel, expired).await;
        Ok(PresenceStats { clients, users })
    }

    async fn ack(&self, channel: &str, user: &str, position: StreamPosition) -> Result<(), BrokerError> {
        self.shared.connected()?;
        let ttl_ms = self.shared.meta_ttl_ms(self.shared.stream_options(channel));
        let args = vec![user.to_string(), position.offset.to_string(), position.epoch, ttl_ms.to_string()];
        self.shared.fcall("sb_ack", vec![keys::acks(channel)], args).await?;
        Ok(())
    }

    async fn control(&self, user: &str, control: Control) -> Result<bool, BrokerError> {
        self.shared.connected()?;
        let message = wire::control(&control).map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let channel = switchboard_protocol::channel::personal(user);
        let receivers = self.shared.publish_live_counted(&channel, message).await?;
        Ok(receivers > 0)
    }

    async fn active_channels(&self) -> Result<Vec<String>, BrokerError> {
        self.shared.connected()?;
        let live: Vec<String> = if self.shared.sharded {
            // Sharded channels are listed by the primary that owns them: ask each.
            let primaries = self
                .shared
                .client
                .cached_cluster_state()
                .map(|state| state.unique_primary_nodes())
                .unwrap_or_default();
            let mut all = Vec::new();
            for primary in primaries {
                let names: Vec<String> =
                    self.shared.client.with_cluster_node(primary).pubsub_shardchannels("sb:{*}:live").await?;
                all.extend(names);
            }
            all.sort_unstable();
            all.dedup();
            all
        } else {
            self.shared.client.pubsub_channels("sb:{*}:live").await?
        };
        let mut channels: Vec<String> =
            live.iter().filter_map(|l| keys::channel_of_live(l)).map(str::to_string).collect();
        channels.sort_unstable();
        Ok(channels)
    }

    async fn check_credentials(&self) -> Result<(), BrokerError> {
        let wait = Duration::from_millis(self.shared.config.command_timeout_ms.max(1000));
        self.first_connection(wait).await
    }

    async fn lifecycle(&self, event: LifecycleEvent<'_>) -> Result<(), BrokerError> {
        if !self.shared.lifecycle.enabled() {
            return Ok(());
        }
        // A disconnect is queued and retried when Redis is down, never refused.
        if !matches!(event, LifecycleEvent::Disconnect { .. }) {
            self.shared.connected()?;
        }
        self.shared.lifecycle.record(&self.shared, event).await
    }

    async fn rpc(
        &self,
        stream: &str,
        group: &str,
        entry: RpcEntry,
        timeout: Duration,
    ) -> Result<Option<String>, BrokerError> {
        self.shared.rpc(stream, group, entry, timeout).await
    }

    async fn nodes(&self) -> Result<Vec<serde_json::Value>, BrokerError> {
        registry::nodes(&self.shared).await
    }

    fn advertise(&self, address: String) {
        let _ = self.shared.node_address.set(address);
        // Peers can forward to this node as soon as the registry has the address.
        self.shared.beat_now.notify_one();
    }

    async fn store_socketio_session(
        &self,
        pid: &str,
        record: &str,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        socketio::store(&self.shared, pid, record, ttl).await
    }

    async fn load_socketio_session(&self, pid: &str) -> Result<Option<String>, BrokerError> {
        socketio::load(&self.shared, pid).await
    }

    async fn delete_socketio_session(&self, pid: &str) -> Result<(), BrokerError> {
        socketio::delete(&self.shared, pid).await
    }

    async fn node_address(&self, node: &str) -> Result<Option<String>, BrokerError> {
        registry::node_address(&self.shared, node).await
    }

    fn is_ready(&self) -> bool {
        self.shared.connected().is_ok()
            && self.subscriber.is_healthy(Duration::from_millis(self.shared.config.probe_timeout_ms))
    }
}
