//! Serve clients' `rpc` calls from a backend: [`Worker`] reads an RPC route's request
//! stream through its consumer group and answers each request with one `sb_rpc_reply`
//! call, which routes the answer to the caller's gateway node.
//!
//! Several workers (in one process or many, in any language) share a route's requests:
//! the consumer group hands each request to one of them. A worker that dies holding
//! requests leaves them pending; any other worker claims them once they have been idle
//! for [`Worker::claim_after`] (`XAUTOCLAIM`) and answers them, and `sb_rpc_reply` lets
//! only the first answer through, so the client gets exactly one reply, or its timeout
//! error. Requests whose deadline passed are acknowledged without calling the handler.
//!
//! ```no_run
//! # async fn run() -> Result<(), switchboard_publisher::worker::WorkerError> {
//! use switchboard_publisher::worker::{RpcFailure, Worker};
//! let worker = Worker::connect("redis://127.0.0.1:6379", "votes").await?.concurrency(8);
//! let stop = tokio::signal::ctrl_c();
//! worker
//!     .serve(
//!         |request| async move {
//!             match request.method.as_str() {
//!                 "cast_vote" => Ok(serde_json::json!({"accepted": true})),
//!                 _ => Err(RpcFailure::new(1404, "unknown method")),
//!             }
//!         },
//!         async move {
//!             let _ = stop.await;
//!         },
//!     )
//!     .await
//! # }
//! ```

use std::{future::Future, sync::Arc, time::Duration};

use redis::{
    aio::{ConnectionManager, ConnectionManagerConfig},
    RedisError, Value,
};
use serde_json::Value as Json;
use switchboard_protocol::redis as keys;
use tokio::{sync::Semaphore, task::JoinSet};

/// Why a worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Redis refused a command or cannot be reached at start.
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
}

/// One request, as the gateway wrote it into the stream (see `docs/redis.md`, "RPC").
#[derive(Debug, Clone, PartialEq)]
pub struct RpcRequest {
    /// The stream entry id (what `sb_rpc_reply` acknowledges).
    pub entry: String,
    /// The request id, unique in the cluster.
    pub id: String,
    /// The RPC method.
    pub method: String,
    /// The request payload.
    pub data: Json,
    /// The calling connection's id.
    pub client: String,
    /// The calling user (empty when anonymous).
    pub user: String,
    /// The connection's `info` claim.
    pub info: Option<Json>,
    /// The client's idempotency key: the same key means the same call, retried.
    pub idempotency_key: Option<String>,
    /// The node holding the connection.
    pub node: String,
    /// When the caller stops waiting, Unix milliseconds.
    pub deadline_ms: u64,
}

/// An application error to answer with: the client gets this code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcFailure {
    /// In `1000..=2999` (other values are replaced by 1000, since the gateway would refuse
    /// them as malformed).
    pub code: u16,
    /// Shown to the client.
    pub message: String,
}

impl RpcFailure {
    /// A failure with `code` (1000–2999) and `message`.
    pub fn new(code: u16, message: impl Into<String>) -> RpcFailure {
        RpcFailure { code, message: message.into() }
    }
}

/// What a handler returns.
pub type RpcAnswer = Result<Json, RpcFailure>;

/// Serves one RPC route's stream.
pub struct Worker {
    /// For `XREADGROUP ... BLOCK`, which holds its connection while it waits.
    reads: ConnectionManager,
    /// For answers and claims.
    commands: ConnectionManager,
    stream: String,
    group: String,
    consumer: String,
    concurrency: usize,
    claim_after: Duration,
    block: Duration,
}

impl Worker {
    /// Connects to Redis for the route whose `stream` setting is `stream`, in consumer group
    /// `workers` with a random consumer name, 16 requests at a time.
    ///
    /// # Errors
    /// [`WorkerError::Redis`] when Redis cannot be reached.
    pub async fn connect(url: &str, stream: &str) -> Result<Worker, WorkerError> {
        let client = redis::Client::open(url)?;
        let block = Duration::from_secs(1);
        let reads_config =
            ConnectionManagerConfig::new().set_response_timeout(Some(block + Duration::from_secs(5)));
        let reads = client.get_connection_manager_with_config(reads_config).await?;
        let commands = client.get_connection_manager().await?;
        let consumer = format!("worker-{}-{:08x}", std::process::id(), rand::random::<u32>());
        Ok(Worker {
            reads,
            commands,
            stream: keys::rpc_stream(stream),
            group: "workers".into(),
            consumer,
            concurrency: 16,
            claim_after: Duration::from_secs(5),
            block,
        })
    }

    /// Reads through this consumer group (the route's `group` setting).
    #[must_use]
    pub fn group(mut self, group: impl Into<String>) -> Worker {
        self.group = group.into();
        self
    }

    /// Names this consumer (unique per worker; shows in `XINFO CONSUMERS`).
    #[must_use]
    pub fn consumer(mut self, consumer: impl Into<String>) -> Worker {
        self.consumer = consumer.into();
        self
    }

    /// Handles at most this many requests at once.
    #[must_use]
    pub fn concurrency(mut self, concurrency: usize) -> Worker {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Claims other workers' requests once they have been pending this long: set it
    /// above the slowest normal handling time and below the route's timeout.
    #[must_use]
    pub fn claim_after(mut self, idle: Duration) -> Worker {
        self.claim_after = idle.max(Duration::from_millis(1));
        self
    }

    /// Serves requests with `handler` until `stop` resolves, then stops reading and
    /// returns once the requests in hand are answered (graceful stop).
    ///
    /// # Errors
    /// [`WorkerError::Redis`] when the consumer group cannot be created.
    pub async fn serve<H, F, S>(mut self, handler: H, stop: S) -> Result<(), WorkerError>
    where
        H: Fn(RpcRequest) -> F + Send + Sync + 'static,
        F: Future<Output = RpcAnswer> + Send + 'static,
        S: Future<Output = ()> + Send,
    {
        self.ensure_group().await?;
        let handler = Arc::new(handler);
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let mut running = JoinSet::new();
        let mut last_claim = tokio::time::Instant::now();
        tokio::pin!(stop);
        loop {
            while running.try_join_next().is_some() {}
            let free = slots.available_permits();
            let next = async {
                if free == 0 {
                    // Wait for a slot before reading more than we can take.
                    drop(slots.clone().acquire_owned().await);
                    return Ok(Vec::new());
                }
                if last_claim.elapsed() >= self.claim_after {
                    last_claim = tokio::time::Instant::now();
                    let claimed = self.claim(free).await?;
                    if !claimed.is_empty() {
                        return Ok(claimed);
                    }
                }
                self.read(free).await
            };
            let requests = tokio::select! {
                () = &mut stop => break,
                requests = next => requests,
            };
            let requests = match requests {
                Ok(requests) => requests,
                Err(error) if error.code() == Some("NOGROUP") => {
                    // The stream or the group is gone (e.g. Redis was wiped): recreate it.
                    self.ensure_group().await?;
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, stream = %self.stream, "rpc worker cannot read; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            for request in requests {
                let Ok(permit) = slots.clone().acquire_owned().await else { break };
                let (handler, mut commands) = (handler.clone(), self.commands.clone());
                let (stream, group) = (self.stream.clone(), self.group.clone());
                running.spawn(async move {
                    let _permit = permit;
                    let entry = request.entry.clone();
                    let answer = if request.deadline_ms < now_ms() {
                        // The caller has had its timeout error: acknowledge, don't handle.
                        Err(RpcFailure::new(1000, "expired before a worker took it"))
                    } else {
                        handler(request).await
                    };
                    if let Err(error) = reply(&mut commands, &stream, &group, &entry, &answer).await {
                        tracing::warn!(%error, %entry, "cannot answer an rpc request; another worker will claim it");
                    }
                });
            }
        }
        while running.join_next().await.is_some() {}
        Ok(())
    }

    async fn ensure_group(&mut self) -> Result<(), WorkerError> {
        let created: Result<Value, RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(&self.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.commands)
            .await;
        match created {
            Err(error) if error.code() != Some("BUSYGROUP") => Err(error.into()),
            _ => Ok(()),
        }
    }

    /// New requests for this consumer, waiting up to `block` for some.
    async fn read(&mut self, count: usize) -> Result<Vec<RpcRequest>, RedisError> {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(self.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">")
            .query_async(&mut self.reads)
            .await?;
        // [[stream, [[id, [field, value, ...]], ...]]] or nil.
        let Value::Array(streams) = reply else { return Ok(Vec::new()) };
        Ok(streams
            .into_iter()
            .filter_map(|stream| match stream {
                Value::Array(mut parts) if parts.len() == 2 => parts.pop(),
                _ => None,
            })
            .flat_map(entries)
            .collect())
    }

    /// Requests other consumers have held for longer than `claim_after`.
    async fn claim(&mut self, count: usize) -> Result<Vec<RpcRequest>, RedisError> {
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(self.claim_after.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.commands)
            .await?;
        // [next cursor, [entries], [deleted ids]]
        match reply {
            Value::Array(mut parts) if parts.len() >= 2 => Ok(entries(parts.swap_remove(1))),
            _ => Ok(Vec::new()),
        }
    }
}

/// Answers one request through `sb_rpc_reply`.
async fn reply(
    commands: &mut ConnectionManager,
    stream: &str,
    group: &str,
    entry: &str,
    answer: &RpcAnswer,
) -> Result<String, RedisError> {
    let body = match answer {
        Ok(result) => serde_json::json!({ "result": result }),
        Err(failure) => {
            let code = if (1000..=2999).contains(&failure.code) { failure.code } else { 1000 };
            serde_json::json!({ "error": { "code": code, "message": failure.message } })
        }
    };
    redis::cmd("FCALL")
        .arg("sb_rpc_reply")
        .arg(1)
        .arg(stream)
        .arg(group)
        .arg(entry)
        .arg(body.to_string())
        .query_async(commands)
        .await
}

/// Parses `[[id, [field, value, ...]], ...]`; entries without the required fields (or
/// trimmed ones, which come back as nil) are skipped.
fn entries(list: Value) -> Vec<RpcRequest> {
    let Value::Array(items) = list else { return Vec::new() };
    items.into_iter().filter_map(entry).collect()
}

fn entry(item: Value) -> Option<RpcRequest> {
    let Value::Array(mut parts) = item else { return None };
    if parts.len() != 2 {
        return None;
    }
    let fields = parts.pop()?;
    let id = text(parts.pop()?)?;
    let Value::Array(fields) = fields else { return None };
    let mut map = std::collections::HashMap::new();
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        map.insert(text(name)?, text(value)?);
    }
    let json = |text: Option<String>| text.and_then(|t| serde_json::from_str::<Json>(&t).ok());
    Some(RpcRequest {
        entry: id,
        id: map.remove("id")?,
        method: map.remove("method")?,
        data: json(map.remove("data")).unwrap_or(Json::Null),
        client: map.remove("client").unwrap_or_default(),
        user: map.remove("user").unwrap_or_default(),
        info: json(map.remove("info")),
        idempotency_key: map.remove("idempotency_key"),
        node: map.remove("node").unwrap_or_default(),
        deadline_ms: map.remove("deadline").and_then(|d| d.parse().ok()).unwrap_or(u64::MAX),
    })
}

fn text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        _ => None,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
