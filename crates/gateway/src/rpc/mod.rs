//! The `rpc` command: a client calls a backend method and gets the backend's answer.
//!
//! [`Rpc`] picks the first configured route whose method or prefix matches, sends the
//! request there (a Redis stream read by the backend's workers, or an HTTP endpoint),
//! waits at most the route's timeout, and turns what comes back into the result or an
//! error with a code from the protocol table: 119 `no_route`, 118 `timeout`, 115
//! `unavailable`, 116 `payload_too_large`, the backend's own code (1000–2999) with its
//! message, or 100 `internal` for a malformed answer. Sessions run each call in its own
//! task, so a slow backend never holds up the connection's other commands.

pub mod answer;
pub mod http;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use switchboard_protocol::{payload, Code};

use crate::{
    broker::{unix_millis, Broker, RpcEntry},
    config::{RpcConfig, RpcRoute},
    metrics::Metrics,
};

/// Why an `rpc` failed; each variant maps to one protocol code.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// No route matches the method.
    #[error("no backend serves the method `{0}`")]
    NoRoute(String),
    /// The request's `data` is too large or too deep.
    #[error("{0}")]
    TooLarge(String),
    /// The backend did not answer in time.
    #[error("the backend did not answer within {0} ms")]
    Timeout(u64),
    /// The request could not be delivered (Redis down, endpoint unreachable, HTTP error).
    #[error("the backend is unavailable: {0}")]
    Unavailable(String),
    /// The backend answered with its own error.
    #[error("{message}")]
    Backend {
        /// The backend's code, in [`Code::APPLICATION`].
        code: Code,
        /// The backend's message.
        message: String,
    },
    /// The backend's answer is not one (see [`answer`]).
    #[error("the backend sent a malformed reply: {0}")]
    BadReply(String),
}

impl RpcError {
    /// The protocol code sent to the client.
    pub fn code(&self) -> Code {
        match self {
            RpcError::NoRoute(_) => Code::NoRoute,
            RpcError::TooLarge(_) => Code::PayloadTooLarge,
            RpcError::Timeout(_) => Code::Timeout,
            RpcError::Unavailable(_) => Code::Unavailable,
            RpcError::Backend { code, .. } => *code,
            RpcError::BadReply(_) => Code::Internal,
        }
    }

    /// The `kind` label of `switchboard_rpc_errors_total`.
    fn kind(&self) -> &'static str {
        match self {
            RpcError::NoRoute(_) => "no_route",
            RpcError::TooLarge(_) => "too_large",
            RpcError::Timeout(_) => "timeout",
            RpcError::Unavailable(_) => "unavailable",
            RpcError::Backend { .. } => "backend",
            RpcError::BadReply(_) => "bad_reply",
        }
    }
}

/// Why the RPC routes could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("rpc.routes[{route}]: cannot read secret_file {path}: {source}")]
pub struct RouteSetupError {
    route: usize,
    path: String,
    source: std::io::Error,
}

/// One call, as the session hands it over.
#[derive(Debug, Clone)]
pub struct Call {
    /// The backend method.
    pub method: String,
    /// The request payload.
    pub data: Value,
    /// The client's idempotency key, passed through.
    pub idempotency_key: Option<String>,
    /// The calling connection.
    pub client: String,
    /// The calling user (empty when anonymous).
    pub user: String,
    /// The connection's `info` claim.
    pub info: Option<Value>,
}

/// A configured route, ready to use.
struct Route {
    config: RpcRoute,
    /// Metric label: `stream:<name>` or `http:<url>`.
    label: String,
    timeout: Duration,
    secret: Option<String>,
}

/// The node's RPC router.
pub struct Rpc {
    routes: Vec<Route>,
    http: http::HttpClient,
    broker: Arc<dyn Broker>,
    metrics: Arc<Metrics>,
    node_id: String,
    max_payload_bytes: usize,
    max_nesting_depth: usize,
    next: AtomicU64,
}

impl Rpc {
    /// Builds the router (reading secret files now, so a missing one stops the start).
    ///
    /// # Errors
    /// [`RouteSetupError`] when a `secret_file` cannot be read.
    pub fn new(
        config: &RpcConfig,
        limits: (usize, usize),
        broker: Arc<dyn Broker>,
        metrics: Arc<Metrics>,
        node_id: String,
    ) -> Result<Rpc, RouteSetupError> {
        let mut routes = Vec::with_capacity(config.routes.len());
        for (n, route) in config.routes.iter().enumerate() {
            let secret = match &route.secret_file {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .map_err(|source| RouteSetupError {
                            route: n,
                            path: path.display().to_string(),
                            source,
                        })?
                        .trim()
                        .to_string(),
                ),
                None => route.secret.clone(),
            };
            let label = match (&route.stream, &route.url) {
                (Some(stream), _) => format!("stream:{stream}"),
                (None, Some(url)) => format!("http:{url}"),
                (None, None) => format!("route:{n}"),
            };
            let timeout = Duration::from_millis(route.timeout_ms.unwrap_or(config.timeout_ms));
            routes.push(Route { config: route.clone(), label, timeout, secret });
        }
        let (max_payload_bytes, max_nesting_depth) = limits;
        Ok(Rpc {
            routes,
            http: http::HttpClient::default(),
            broker,
            metrics,
            node_id,
            max_payload_bytes,
            max_nesting_depth,
            next: AtomicU64::new(1),
        })
    }

    /// Routes `call` to its backend and returns the backend's result.
    ///
    /// # Errors
    /// [`RpcError`], each kind counted per route.
    pub async fn call(&self, call: Call) -> Result<Value, RpcError> {
        let Some(route) = self.routes.iter().find(|r| r.config.matches(&call.method)) else {
            return Err(RpcError::NoRoute(call.method));
        };
        let label = route.label.as_str();
        self.metrics.rpc_requests.with_label_values(&[label]).inc();
        let pending = self.metrics.rpc_pending.with_label_values(&[label]);
        pending.inc();
        let started = Instant::now();
        let outcome = self.send(route, call).await;
        pending.dec();
        self.metrics.rpc_duration.with_label_values(&[label]).observe(started.elapsed().as_secs_f64());
        if let Err(error) = &outcome {
            self.metrics.rpc_errors.with_label_values(&[label, error.kind()]).inc();
            match error {
                RpcError::BadReply(why) => tracing::warn!(route = label, %why, "malformed rpc reply"),
                RpcError::Unavailable(why) => tracing::warn!(route = label, %why, "rpc backend unavailable"),
                _ => tracing::debug!(route = label, %error, "rpc failed"),
            }
        }
        outcome
    }

    async fn send(&self, route: &Route, call: Call) -> Result<Value, RpcError> {
        let data = call.data.to_string();
        if data.len() > self.max_payload_bytes {
            return Err(RpcError::TooLarge(format!(
                "`data` is larger than {} bytes",
                self.max_payload_bytes
            )));
        }
        payload::check_depth(&data, self.max_nesting_depth).map_err(|e| RpcError::TooLarge(e.to_string()))?;
        let id = format!("{}-r{}", self.node_id, self.next.fetch_add(1, Ordering::Relaxed));
        let timeout_ms = route.timeout.as_millis() as u64;
        let deadline_ms = unix_millis() + timeout_ms;
        let answer = match (&route.config.stream, &route.config.url) {
            (Some(stream), _) => {
                let entry = RpcEntry {
                    id,
                    method: call.method,
                    data,
                    client: call.client,
                    user: call.user,
                    info: call.info.map(|info| info.to_string()),
                    idempotency_key: call.idempotency_key,
                    deadline_ms,
                };
                self.broker
                    .rpc(stream, route.config.group(), entry, route.timeout)
                    .await
                    .map_err(|error| RpcError::Unavailable(error.to_string()))?
                    .ok_or(RpcError::Timeout(timeout_ms))?
            }
            (None, Some(url)) => {
                let body = serde_json::json!({
                    "id": id,
                    "method": call.method,
                    "data": call.data,
                    "client": call.client,
                    "user": call.user,
                    "info": call.info,
                    "idempotency_key": call.idempotency_key,
                    "node": self.node_id,
                    "deadline_ms": deadline_ms,
                });
                let post = self.http.post(url, route.secret.as_deref(), body.to_string().into_bytes());
                tokio::time::timeout(route.timeout, post)
                    .await
                    .map_err(|_| RpcError::Timeout(timeout_ms))??
            }
            (None, None) => return Err(RpcError::NoRoute(call.method)),
        };
        answer::parse(&answer)
    }
}
