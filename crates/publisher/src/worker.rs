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

use redis::RedisError;
use serde_json::Value as Json;
use switchboard_protocol::redis as keys;
use tokio::{sync::Semaphore, task::JoinSet};

use crate::{
    group::{GroupReader, RawEntry},
    RedisOptions,
};

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
    reader: GroupReader,
    concurrency: usize,
}

impl Worker {
    /// Connects to Redis for the route whose `stream` setting is `stream`, in consumer group
    /// `workers` with a random consumer name, 16 requests at a time.
    ///
    /// # Errors
    /// [`WorkerError::Redis`] when Redis cannot be reached.
    pub async fn connect(url: &str, stream: &str) -> Result<Worker, WorkerError> {
        Worker::connect_with(&RedisOptions::new(url), stream).await
    }

    /// [`Worker::connect`] with TLS options.
    ///
    /// # Errors
    /// As [`Worker::connect`]; also a TLS file that cannot be read.
    pub async fn connect_with(options: &RedisOptions, stream: &str) -> Result<Worker, WorkerError> {
        let consumer = format!("worker-{}-{:08x}", std::process::id(), rand::random::<u32>());
        let reader = GroupReader::connect(options, keys::rpc_stream(stream), "workers", consumer).await?;
        Ok(Worker { reader, concurrency: 16 })
    }

    /// Reads through this consumer group (the route's `group` setting).
    #[must_use]
    pub fn group(mut self, group: impl Into<String>) -> Worker {
        self.reader.group = group.into();
        self
    }

    /// Names this consumer (unique per worker; shows in `XINFO CONSUMERS`).
    #[must_use]
    pub fn consumer(mut self, consumer: impl Into<String>) -> Worker {
        self.reader.consumer = consumer.into();
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
        self.reader.claim_after = idle.max(Duration::from_millis(1));
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
        self.reader.ensure_group().await?;
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
                if last_claim.elapsed() >= self.reader.claim_after {
                    last_claim = tokio::time::Instant::now();
                    let claimed = self.reader.claim(free).await?;
                    if !claimed.is_empty() {
                        return Ok(claimed);
                    }
                }
                self.reader.read(free).await
            };
            let requests = tokio::select! {
                () = &mut stop => break,
                requests = next => requests,
            };
            let requests = match requests {
                Ok(entries) => entries.into_iter().filter_map(request).collect::<Vec<_>>(),
                Err(error) if error.code() == Some("NOGROUP") => {
                    // The stream or the group is gone (e.g. Redis was wiped): recreate it.
                    self.reader.ensure_group().await?;
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, stream = %self.reader.stream, "rpc worker cannot read; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            for request in requests {
                let Ok(permit) = slots.clone().acquire_owned().await else { break };
                let (handler, mut commands) = (handler.clone(), self.reader.commands.clone());
                let (stream, group) = (self.reader.stream.clone(), self.reader.group.clone());
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
}

/// Answers one request through `sb_rpc_reply`.
async fn reply(
    commands: &mut crate::link::Link,
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

/// The request in a stream entry; entries without the required fields are skipped.
fn request(entry: RawEntry) -> Option<RpcRequest> {
    let RawEntry { id, fields: mut map } = entry;
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

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
