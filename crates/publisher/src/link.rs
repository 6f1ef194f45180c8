//! A Redis connection that follows the primary: a [`ConnectionManager`] (multiplexed,
//! reconnecting), which through Sentinel is rebuilt on the primary the sentinels name
//! whenever the current one fails in a way a failover explains (the connection is lost
//! or refused, or the server became a read-only replica). On a Redis Cluster it is the
//! `redis` crate's cluster connection, which follows slots and failovers itself.
//!
//! A `ConnectionManager` alone reconnects to the address it was built with: after a
//! failover that is the old primary, dead or demoted. Every command that fails that way
//! is still answered with its error (the caller retries, with an idempotency key for
//! publishes); the next one goes to the new primary.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, RwLock,
};

use redis::{
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
    sentinel::SentinelClient,
    Cmd, Pipeline, RedisError, RedisFuture, Value,
};

/// Where the connection comes from.
pub(crate) enum Source {
    /// One server.
    Direct(redis::Client),
    /// The primary the sentinels name.
    Sentinel(SentinelClient),
    /// A Redis Cluster.
    Cluster(ClusterClient),
}

/// The connection commands go through.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The cloneable connection every part of the crate queries.
#[derive(Clone)]
pub(crate) struct Link {
    shared: Arc<Shared>,
}

struct Shared {
    /// The current connection; a clone is taken for each command, never held across an
    /// await while locked.
    current: RwLock<Connection>,
    /// Bumped at each rebuild, so that concurrent failures rebuild once.
    generation: AtomicU64,
    sentinel: Option<tokio::sync::Mutex<SentinelClient>>,
    config: ConnectionManagerConfig,
}

impl Link {
    /// Connects (through the sentinels: to the primary they name).
    ///
    /// # Errors
    /// When no connection can be made.
    pub(crate) async fn connect(source: Source, config: ConnectionManagerConfig) -> Result<Link, RedisError> {
        let (connection, sentinel) = match source {
            Source::Direct(client) => {
                (Connection::Single(client.get_connection_manager_with_config(config.clone()).await?), None)
            }
            Source::Sentinel(mut sentinel) => {
                let client = sentinel.async_get_client().await?;
                let manager = client.get_connection_manager_with_config(config.clone()).await?;
                (Connection::Single(manager), Some(sentinel))
            }
            Source::Cluster(client) => (Connection::Cluster(client.get_async_connection().await?), None),
        };
        Ok(Link {
            shared: Arc::new(Shared {
                current: RwLock::new(connection),
                generation: AtomicU64::new(0),
                sentinel: sentinel.map(tokio::sync::Mutex::new),
                config,
            }),
        })
    }

    /// Whether this is a Redis Cluster: live channels are sharded pub/sub there, and a
    /// pipeline may only hold commands of one slot.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.current().0, Connection::Cluster(_))
    }

    fn current(&self) -> (Connection, u64) {
        let generation = self.shared.generation.load(Ordering::Acquire);
        let current = self.shared.current.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        (current.clone(), generation)
    }

    /// After `error` on the connection of `generation`: through Sentinel, and when the
    /// error is one a failover explains, connects to the primary the sentinels name now.
    async fn follow_failover(&self, error: &RedisError, generation: u64) {
        let Some(sentinel) = &self.shared.sentinel else { return };
        let failover = error.is_io_error()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_timeout()
            || error.code() == Some("READONLY");
        if !failover {
            return;
        }
        let mut sentinel = sentinel.lock().await;
        if self.shared.generation.load(Ordering::Acquire) != generation {
            return; // Another command already followed it.
        }
        let manager = match sentinel.async_get_client().await {
            Ok(client) => client.get_connection_manager_with_config(self.shared.config.clone()).await,
            Err(error) => Err(error),
        };
        match manager {
            Ok(manager) => {
                *self.shared.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Connection::Single(manager);
                self.shared.generation.fetch_add(1, Ordering::AcqRel);
                tracing::info!("connected to the primary the sentinels name");
            }
            Err(error) => tracing::warn!(%error, "cannot reach the primary through the sentinels"),
        }
    }
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (mut connection, generation) = self.current();
            let result = connection.req_packed_command(cmd).await;
            if let Err(error) = &result {
                self.follow_failover(error, generation).await;
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (mut connection, generation) = self.current();
            let result = connection.req_packed_commands(pipeline, offset, count).await;
            match &result {
                Err(error) => self.follow_failover(error, generation).await,
                // A pipeline that ignores errors answers a demoted primary's refusals
                // item by item.
                Ok(values) => {
                    let refusal = values.iter().find_map(|value| match value {
                        Value::ServerError(error) if error.code() == "READONLY" => {
                            Some(RedisError::from(error.clone()))
                        }
                        _ => None,
                    });
                    if let Some(error) = refusal {
                        self.follow_failover(&error, generation).await;
                    }
                }
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.current().0.get_db()
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(connection) => connection.req_packed_command(cmd),
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(connection) => connection.get_db(),
            Connection::Cluster(connection) => connection.get_db(),
        }
    }
}
