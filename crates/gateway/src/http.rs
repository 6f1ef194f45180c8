//! The HTTP surface of a node: the WebSocket endpoints (native `/ws`, Socket.IO
//! `/socket.io/`), health, readiness and metrics.
//!
//! Errors are JSON bodies `{"error": {"code": "...", "message": "..."}}` with a 4xx/5xx
//! status. This module decides whether an upgrade is allowed (origin, draining) and which
//! encoding the connection uses; the session module owns the connection afterwards.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{any, get},
    Json, Router,
};
use switchboard_protocol::Encoding;

use crate::{
    node::Node,
    session,
    transport::handshake::{HandshakeError, Upgrade},
    wire::Wire,
};

/// Why an HTTP request was refused.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The browser `Origin` is not in `limits.allowed_origins`.
    #[error("origin `{0}` is not allowed")]
    OriginNotAllowed(String),
    /// The node is shutting down.
    #[error("node is shutting down")]
    Draining,
    /// No such route.
    #[error("no route for this path")]
    NotFound,
    /// Not a valid WebSocket upgrade request.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
}

impl HttpError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            HttpError::OriginNotAllowed(_) => (StatusCode::FORBIDDEN, "origin_not_allowed"),
            HttpError::Draining => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
            HttpError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            HttpError::Handshake(error) => (error.status(), "bad_upgrade"),
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = serde_json::json!({"error": {"code": code, "message": self.to_string()}});
        (status, Json(body)).into_response()
    }
}

/// The node's router.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/ws", get(websocket))
        .route("/socket.io", any(crate::engineio::endpoint))
        .route("/socket.io/", any(crate::engineio::endpoint))
        .route("/healthz", get(|| async { Json(serde_json::json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::api::router(node.clone()))
        .fallback(|| async { HttpError::NotFound })
        .with_state(node)
}

async fn readyz(State(node): State<Arc<Node>>) -> Response {
    let ready = node.is_ready();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({
        "ready": ready,
        "draining": node.is_draining(),
        "broker": node.broker.is_ready(),
    });
    (status, Json(body)).into_response()
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    ([(header::CONTENT_TYPE, content_type)], node.metrics.render()).into_response()
}

async fn websocket(
    State(node): State<Arc<Node>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    request: Request,
) -> Result<Response, HttpError> {
    let offered = select_encoding(request.headers());
    let wire = Wire::Native(offered.unwrap_or(Encoding::Json));
    upgrade(node, remote, request, wire, offered.map(Encoding::subprotocol))
}

/// Checks an upgrade request (draining, origin, WebSocket handshake) and starts the
/// session once the `101` went out.
pub(crate) fn upgrade(
    node: Arc<Node>,
    remote: SocketAddr,
    mut request: Request,
    wire: Wire,
    protocol: Option<&'static str>,
) -> Result<Response, HttpError> {
    if node.is_draining() {
        return Err(HttpError::Draining);
    }
    check_origin(&node, request.headers())?;
    let (bearer, hook_context) = upgrade_context(&node, request.headers(), remote);
    let negotiated = node.config.compression.negotiate(request.headers());
    let upgrade = Upgrade::accept(&mut request)?;
    let (response, upgraded) = upgrade.respond(protocol, negotiated.map(|(_, answer)| answer));
    let deflate = negotiated.map(|(deflate, _)| deflate);
    let tracker = node.sessions.clone();
    tokio::spawn(tracker.track_future(async move {
        match upgraded.await {
            Ok(socket) => session::run(node, socket, wire, deflate, bearer, hook_context, remote).await,
            Err(error) => tracing::debug!(%error, %remote, "WebSocket upgrade did not complete"),
        }
    }));
    Ok(response)
}

/// The request's `Origin` when the configuration allows it (`limits.allowed_origins`);
/// `None` when the request has none (not a browser).
///
/// # Errors
/// [`HttpError::OriginNotAllowed`] for any other origin.
pub(crate) fn check_origin(node: &Node, headers: &HeaderMap) -> Result<Option<HeaderValue>, HttpError> {
    let Some(value) = headers.get(header::ORIGIN) else { return Ok(None) };
    let origin = value.to_str().unwrap_or_default();
    let allowed = &node.config.limits.allowed_origins;
    if allowed.iter().any(|a| a == "*" || a == origin) {
        Ok(Some(value.clone()))
    } else {
        Err(HttpError::OriginNotAllowed(origin.to_string()))
    }
}

/// What a new connection takes from its HTTP request: the `Authorization: Bearer` token,
/// and the connect hook's context when the hook is on.
pub(crate) fn upgrade_context(
    node: &Node,
    headers: &HeaderMap,
    remote: SocketAddr,
) -> (Option<String>, Option<Box<serde_json::Value>>) {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_string());
    let hook_context =
        node.config.auth.connect_hook.then(|| Box::new(connect_hook_context(node, headers, remote)));
    (bearer, hook_context)
}

/// What the connect hook is told about the upgrade request: the configured headers
/// (absent ones left out) and the client's address.
fn connect_hook_context(node: &Node, headers: &HeaderMap, remote: SocketAddr) -> serde_json::Value {
    let mut passed = serde_json::Map::new();
    for name in &node.config.auth.connect_hook_headers {
        if let Some(value) = headers.get(name.as_str()).and_then(|v| v.to_str().ok()) {
            passed.insert(name.clone(), value.into());
        }
    }
    serde_json::json!({ "headers": passed, "remote": remote.ip().to_string() })
}

/// The first Switchboard subprotocol the client offers in `Sec-WebSocket-Protocol`, in
/// the client's order (it is echoed back; JSON is used when none is offered).
fn select_encoding(headers: &HeaderMap) -> Option<Encoding> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(Encoding::from_subprotocol)
}
