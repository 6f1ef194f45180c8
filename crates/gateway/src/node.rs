//! The state one gateway node shares among its sessions and HTTP handlers.
//!
//! The node owns the long-lived parts (hub, broker, subscription lifecycle, counters) so
//! that a session holds nothing but its own connection's state.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use dashmap::DashMap;
use switchboard_protocol::{payload, Code, StreamPosition};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    auth::Verifier,
    broker::{memory::MemoryBroker, redis::RedisBroker, Broker, NewPublication},
    channel::ChannelRules,
    config::Config,
    error::CommandError,
    hub::{ConnId, Hub},
    metrics::Metrics,
    outbox::{backlog::Backlog, shard::Flushers},
    rpc::Rpc,
    subscriptions::Subscriptions,
};

/// Why a node could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Auth configuration is unusable.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    /// The broker URL is not supported.
    #[error("unsupported broker url `{0}` (supported: memory://, redis://, rediss://, redis-sentinel://, rediss-sentinel://, redis-cluster://, rediss-cluster://)")]
    BrokerUrl(String),
    /// The broker could not be set up.
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
    /// An RPC route could not be set up.
    #[error(transparent)]
    Rpc(#[from] crate::rpc::RouteSetupError),
}

/// Everything a session or handler needs from its node.
pub struct Node {
    /// Effective configuration.
    pub config: Config,
    /// This node's id, unique per process start.
    pub id: String,
    /// Token verification.
    pub verifier: Verifier,
    /// Channel namespace rules.
    pub rules: Arc<ChannelRules>,
    /// Local channel index.
    pub hub: Arc<Hub>,
    /// The broker.
    pub broker: Arc<dyn Broker>,
    /// The subscription lifecycle (join and leave) over the hub and the broker.
    pub subscriptions: Subscriptions,
    /// Where clients' `rpc` calls go.
    pub rpc: Rpc,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Cancelled when the node starts shutting down; every session watches it.
    pub shutdown: CancellationToken,
    /// Tracks session tasks so shutdown can wait for them.
    pub sessions: TaskTracker,
    /// The tasks that write queued frames to sockets, one per runtime worker.
    pub flushers: Flushers,
    /// Publication frames queued on this node and not yet written.
    pub backlog: Arc<Backlog>,
    /// Socket.IO connections on HTTP long-polling, by session id.
    pub polling: crate::transport::polling::PollingSessions,
    draining: AtomicBool,
    connections: AtomicUsize,
    user_connections: DashMap<String, usize>,
    next_conn: AtomicU64,
}

impl Node {
    /// Builds a node; spawns the broker's background tasks on the current runtime.
    ///
    /// # Errors
    /// [`NodeError`] when auth or broker configuration is unusable.
    pub fn new(config: Config) -> Result<Arc<Node>, NodeError> {
        let verifier = Verifier::from_config(&config.auth)?;
        let metrics = Arc::new(Metrics::new());
        let backlog = Arc::new(Backlog::new(config.limits.fanout_backlog_frames));
        let coalesce = Duration::from_millis(config.limits.write_coalesce_ms);
        let hub = Arc::new(Hub::new(metrics.clone(), config.limits.outbound_queue_frames, backlog.clone()));
        let rules = Arc::new(ChannelRules::new(&config.namespaces, config.limits.max_channel_length));
        let id = config.node.name.clone().unwrap_or_else(random_node_id);
        let url = config.broker.url.as_str();
        let broker: Arc<dyn Broker> = if url.starts_with("memory://") {
            let idle = Duration::from_secs(config.broker.stream_meta_ttl_secs);
            let idempotency = Duration::from_secs(config.broker.idempotency_ttl_secs);
            let unpublished = Duration::from_secs(config.broker.unpublished_stream_ttl_secs);
            let broker = Arc::new(
                MemoryBroker::new(hub.clone(), idle)
                    .with_idempotency_ttl(idempotency)
                    .with_unpublished_ttl(unpublished),
            );
            spawn_sweeper(broker.clone(), rules.clone(), metrics.clone());
            broker
        } else if config.broker.is_redis() {
            RedisBroker::start(
                &config.broker,
                &id,
                hub.clone(),
                metrics.clone(),
                rules.clone(),
                config.rpc.stream_max_len,
                &config.lifecycle,
            )?
        } else {
            return Err(NodeError::BrokerUrl(config.broker.url.clone()));
        };
        let subscriptions = Subscriptions::new(hub.clone(), broker.clone());
        let limits = (config.limits.max_payload_bytes, config.limits.max_nesting_depth);
        let rpc = Rpc::new(&config.rpc, limits, broker.clone(), metrics.clone(), id.clone())?;
        Ok(Arc::new(Node {
            config,
            id,
            verifier,
            rules,
            hub,
            broker,
            subscriptions,
            rpc,
            metrics,
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            flushers: Flushers::start(
                tokio::runtime::Handle::current().metrics().num_workers(),
                &backlog,
                coalesce,
            ),
            backlog,
            polling: Default::default(),
            draining: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            user_connections: DashMap::new(),
            next_conn: AtomicU64::new(1),
        }))
    }

    /// Checks the payload size and publishes into `channel` (namespace rules apply; the
    /// caller has checked permissions). Shared by client publishes and the HTTP API.
    ///
    /// # Errors
    /// [`CommandError`] for a bad channel, an oversized payload or a broker failure.
    pub async fn publish(
        &self,
        channel: &str,
        publication: NewPublication,
    ) -> Result<Option<StreamPosition>, CommandError> {
        let namespace = self.rules.resolve(channel)?;
        let max = self.config.limits.max_payload_bytes;
        if publication.data.get().len() > max {
            return Err(CommandError::refused(
                Code::PayloadTooLarge,
                format!("payload is larger than {max} bytes"),
            ));
        }
        // Deeper payloads could not be re-encoded for every reader (see the protocol
        // crate's `payload` module).
        payload::check_depth(publication.data.get(), self.config.limits.max_nesting_depth)
            .map_err(|e| CommandError::refused(Code::BadRequest, e.to_string()))?;
        // A node that cannot write its fan-out as fast as it is published slows its
        // publishers down instead of dropping its subscribers (see `outbox::backlog`).
        let patience = Duration::from_millis(self.config.limits.outbound_wait_ms);
        if self.backlog.room(patience).await {
            self.metrics.publish_backpressure.inc();
        }
        let position = self.broker.publish(channel, publication, namespace.stream).await?;
        self.metrics.publications.inc();
        Ok(position)
    }

    /// Whether the node should receive traffic (`/readyz`).
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.broker.is_ready()
    }

    /// Whether a graceful shutdown has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Starts a graceful shutdown: readiness goes false and sessions are told to close.
    pub fn begin_shutdown(&self) {
        self.draining.store(true, Ordering::Release);
        self.shutdown.cancel();
    }

    /// Allocates a connection id.
    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts a new connection; `false` (and nothing counted) when the node is full.
    pub fn try_add_connection(&self) -> bool {
        let max = self.config.limits.max_connections;
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .is_ok()
    }

    /// Forgets a connection counted by [`Node::try_add_connection`].
    pub fn remove_connection(&self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
    }

    /// Counts a connection of `user`; `false` (and nothing counted) over the per-user limit.
    pub fn try_add_user_connection(&self, user: &str) -> bool {
        let max = self.config.limits.max_connections_per_user;
        let mut count = self.user_connections.entry(user.to_string()).or_insert(0);
        if max != 0 && *count >= max {
            return false;
        }
        *count += 1;
        true
    }

    /// Forgets a connection counted by [`Node::try_add_user_connection`].
    pub fn remove_user_connection(&self, user: &str) {
        if let dashmap::Entry::Occupied(mut entry) = self.user_connections.entry(user.to_string()) {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }
}

fn random_node_id() -> String {
    use rand::Rng;
    format!("{:08x}", rand::rng().random::<u32>())
}

fn spawn_sweeper(broker: Arc<MemoryBroker>, rules: Arc<ChannelRules>, metrics: Arc<Metrics>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            let streams = broker.sweep(|channel| rules.resolve(channel).ok().map(|ns| ns.stream));
            metrics.memory_streams.set(streams as i64);
        }
    });
}
