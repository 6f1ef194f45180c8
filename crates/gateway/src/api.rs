//! The HTTP server API for backends, under `/api/v1`.
//!
//! Backends publish, broadcast, reach one user, read presence and history, and act on a
//! user's connections (disconnect, unsubscribe) wherever in the cluster they are. Every
//! call but the OpenAPI document needs an API key (`X-API-Key` or `Authorization:
//! Bearer`), compared in constant time. Bodies are JSON with a size limit; every failure
//! is a 4xx/5xx with `{"error": {"code", "message"}}`.
//!
//! [`ROUTES`] is the list of routes; a test checks it against `docs/openapi.json`, which
//! is also served at `/api/v1/openapi.json`.

use std::sync::Arc;

use axum::{
    extract::{
        rejection::{JsonRejection, QueryRejection},
        DefaultBodyLimit, Query, Request, State,
    },
    http::{header, HeaderMap, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use switchboard_protocol::{channel::personal, reply::HistoryResult, ClientInfo, Code, StreamPosition};

use crate::{
    broker::{BrokerError, Control, NewPublication, Since},
    channel::ChannelError,
    error::CommandError,
    hub::{wire_publication, Epoch},
    node::Node,
};

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// Every route of the API as (method, path).
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/publish"),
    ("POST", "/api/v1/broadcast"),
    ("POST", "/api/v1/users/publish"),
    ("POST", "/api/v1/users/disconnect"),
    ("POST", "/api/v1/users/subscribe"),
    ("POST", "/api/v1/users/unsubscribe"),
    ("GET", "/api/v1/presence"),
    ("GET", "/api/v1/presence_stats"),
    ("GET", "/api/v1/history"),
    ("GET", "/api/v1/channels"),
    ("GET", "/api/v1/info"),
    ("GET", "/api/v1/openapi.json"),
];

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing or wrong API key, or the API is disabled.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The body or query could not be parsed.
    #[error("{0}")]
    Malformed(String),
    /// A command-level refusal (bad channel, payload too large, broker down, ...).
    #[error(transparent)]
    Command(#[from] CommandError),
    /// No node holds a connection of the user.
    #[error("user `{0}` has no connection on any node")]
    UnknownUser(String),
    /// The body exceeded `api.max_body_bytes`.
    #[error("request body is larger than the limit")]
    BodyTooLarge,
}

impl From<ChannelError> for ApiError {
    fn from(error: ChannelError) -> Self {
        ApiError::Command(error.into())
    }
}

impl From<BrokerError> for ApiError {
    fn from(error: BrokerError) -> Self {
        ApiError::Command(error.into())
    }
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Malformed(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::UnknownUser(_) => (StatusCode::NOT_FOUND, "unknown_user"),
            ApiError::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::Command(error) => {
                let code = error.code();
                let status = match code {
                    Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                    Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                    Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
                    Code::PermissionDenied => StatusCode::FORBIDDEN,
                    _ => StatusCode::BAD_REQUEST,
                };
                (status, code.slug())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = serde_json::json!({"error": {"code": code, "message": self.to_string()}});
        (status, Json(body)).into_response()
    }
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    match body {
        Ok(Json(value)) => Ok(value),
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::BodyTooLarge),
        Err(rejection) => Err(ApiError::Malformed(rejection.body_text())),
    }
}

fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query.map(|Query(value)| value).map_err(|rejection| ApiError::Malformed(rejection.body_text()))
}

/// The API router (merged into the node's router).
pub fn router(node: Arc<Node>) -> Router<Arc<Node>> {
    let authenticated = Router::new()
        .route("/api/v1/publish", post(publish))
        .route("/api/v1/broadcast", post(broadcast))
        .route("/api/v1/users/publish", post(publish_to_user))
        .route("/api/v1/users/disconnect", post(disconnect_user))
        .route("/api/v1/users/subscribe", post(subscribe_user))
        .route("/api/v1/users/unsubscribe", post(unsubscribe_user))
        .route("/api/v1/presence", get(presence))
        .route("/api/v1/presence_stats", get(presence_stats))
        .route("/api/v1/history", get(history))
        .route("/api/v1/channels", get(channels))
        .route("/api/v1/info", get(info))
        .layer(DefaultBodyLimit::max(node.config.api.max_body_bytes))
        .route_layer(middleware::from_fn_with_state(node, require_api_key));
    Router::new()
        .route(
            "/api/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .merge(authenticated)
}

/// Refuses calls without a configured API key. Every configured key is compared (as a
/// SHA-256 digest, so lengths do not leak either) without an early exit.
async fn require_api_key(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let keys = &node.config.api.keys;
    if keys.is_empty() {
        return Err(ApiError::Unauthorized("the HTTP API is disabled: configure api.keys"));
    }
    let presented = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, key)| key.trim())
        })
        .ok_or(ApiError::Unauthorized("missing API key (X-API-Key header)"))?;
    let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let matched = keys.iter().fold(subtle::Choice::from(0u8), |found, key| {
        let key: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        found | key.ct_eq(&presented)
    });
    if !bool::from(matched) {
        return Err(ApiError::Unauthorized("wrong API key"));
    }
    Ok(next.run(request).await)
}

/// Body of `POST /api/v1/publish`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    channel: String,
    #[serde(default)]
    event: Option<String>,
    data: serde_json::Value,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    live_only: bool,
}

/// The result of one publish.
#[derive(Debug, Serialize)]
struct PublishResponse {
    channel: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<String>,
}

async fn publish_one(
    node: &Node,
    channel: String,
    event: Option<String>,
    data: &serde_json::Value,
    idempotency_key: Option<String>,
    live_only: bool,
) -> Result<PublishResponse, ApiError> {
    let data = serde_json::value::to_raw_value(data).map_err(|e| ApiError::Malformed(e.to_string()))?;
    let publication = NewPublication { event, data, from: None, ephemeral: live_only, idempotency_key };
    let position = node.publish(&channel, publication).await?;
    let (offset, epoch) = position.map(|p| (p.offset, p.epoch)).unzip();
    Ok(PublishResponse { channel, offset, epoch })
}

async fn publish(
    State(node): State<Arc<Node>>,
    body: Result<Json<PublishRequest>, JsonRejection>,
) -> Result<Json<PublishResponse>, ApiError> {
    let request = json_body(body)?;
    let response = publish_one(
        &node,
        request.channel,
        request.event,
        &request.data,
        request.idempotency_key,
        request.live_only,
    )
    .await?;
    Ok(Json(response))
}

/// Body of `POST /api/v1/broadcast`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastRequest {
    channels: Vec<String>,
    #[serde(default)]
    event: Option<String>,
    data: serde_json::Value,
    #[serde(default)]
    live_only: bool,
}

async fn broadcast(
    State(node): State<Arc<Node>>,
    body: Result<Json<BroadcastRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request = json_body(body)?;
    if request.channels.is_empty() {
        return Err(ApiError::Malformed("`channels` is empty".into()));
    }
    let mut results = Vec::with_capacity(request.channels.len());
    for channel in request.channels {
        let outcome = publish_one(
            &node,
            channel.clone(),
            request.event.clone(),
            &request.data,
            None,
            request.live_only,
        )
        .await;
        results.push(match outcome {
            Ok(published) => serde_json::to_value(published).unwrap_or_default(),
            Err(error) => {
                let (_, code) = error.status_and_code();
                serde_json::json!({"channel": channel, "error": {"code": code, "message": error.to_string()}})
            }
        });
    }
    Ok(Json(serde_json::json!({ "results": results })))
}

/// Body of `POST /api/v1/users/publish`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserPublishRequest {
    user: String,
    #[serde(default)]
    event: Option<String>,
    data: serde_json::Value,
    #[serde(default)]
    idempotency_key: Option<String>,
}

async fn publish_to_user(
    State(node): State<Arc<Node>>,
    body: Result<Json<UserPublishRequest>, JsonRejection>,
) -> Result<Json<PublishResponse>, ApiError> {
    let request = json_body(body)?;
    let channel = personal(&request.user);
    Ok(Json(publish_one(&node, channel, request.event, &request.data, request.idempotency_key, false).await?))
}

/// Sends an operator command to every connection of `user`, on whichever node.
async fn send_control(node: &Node, user: &str, control: Control) -> Result<(), ApiError> {
    node.rules.resolve(&personal(user))?;
    if node.broker.control(user, control).await? {
        Ok(())
    } else {
        Err(ApiError::UnknownUser(user.to_string()))
    }
}

/// Body of `POST /api/v1/users/disconnect`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectRequest {
    user: String,
    #[serde(default)]
    reason: Option<String>,
}

async fn disconnect_user(
    State(node): State<Arc<Node>>,
    body: Result<Json<DisconnectRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let request = json_body(body)?;
    let reason = request.reason.unwrap_or_else(|| "disconnected by the server".into());
    send_control(&node, &request.user, Control::Disconnect { reason }).await?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"user": request.user}))))
}

/// Body of `POST /api/v1/users/subscribe`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeRequest {
    user: String,
    channel: String,
    #[serde(default)]
    recover: Option<switchboard_protocol::StreamPosition>,
}

/// Subscribes every connection of a user, on every node, to a channel (server-side: no
/// namespace policy or hook is asked; the backend decided).
async fn subscribe_user(
    State(node): State<Arc<Node>>,
    body: Result<Json<SubscribeRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let request = json_body(body)?;
    node.rules.resolve(&request.channel)?;
    send_control(
        &node,
        &request.user,
        Control::Subscribe { channel: request.channel.clone(), recover: request.recover },
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"user": request.user, "channel": request.channel}))))
}

/// Body of `POST /api/v1/users/unsubscribe`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsubscribeRequest {
    user: String,
    channel: String,
    #[serde(default)]
    reason: Option<String>,
}

async fn unsubscribe_user(
    State(node): State<Arc<Node>>,
    body: Result<Json<UnsubscribeRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let request = json_body(body)?;
    node.rules.resolve(&request.channel)?;
    let reason = request.reason.unwrap_or_else(|| "unsubscribed by the server".into());
    send_control(&node, &request.user, Control::Unsubscribe { channel: request.channel.clone(), reason })
        .await?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"user": request.user, "channel": request.channel}))))
}

/// Query of the channel reads.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelQuery {
    channel: String,
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    since_offset: Option<u64>,
    #[serde(default)]
    since_epoch: Option<String>,
}

fn presence_enabled(node: &Node, channel: &str) -> Result<(), ApiError> {
    if node.rules.resolve(channel)?.config.presence {
        Ok(())
    } else {
        Err(CommandError::refused(Code::NotAvailable, "presence is disabled in this namespace").into())
    }
}

async fn presence(
    State(node): State<Arc<Node>>,
    params: Result<Query<ChannelQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let params = query(params)?;
    presence_enabled(&node, &params.channel)?;
    let clients: Vec<ClientInfo> = node.broker.presence(&params.channel).await?;
    Ok(Json(serde_json::json!({ "clients": clients })))
}

async fn presence_stats(
    State(node): State<Arc<Node>>,
    params: Result<Query<ChannelQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let params = query(params)?;
    presence_enabled(&node, &params.channel)?;
    let stats = node.broker.presence_stats(&params.channel).await?;
    Ok(Json(serde_json::json!({"clients": stats.clients, "users": stats.users})))
}

async fn history(
    State(node): State<Arc<Node>>,
    params: Result<Query<ChannelQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = query(params)?;
    let namespace = node.rules.resolve(&params.channel)?;
    if namespace.config.history_size == 0 {
        return Err(CommandError::refused(Code::NotAvailable, "history is disabled in this namespace").into());
    }
    let max = node.config.limits.max_history_limit;
    let limit = params.limit.unwrap_or(max).min(max) as usize;
    let since = match (params.since_offset, params.since_epoch) {
        (Some(offset), Some(epoch)) => Since::After(StreamPosition { offset, epoch }),
        (None, None) => Since::Latest,
        _ => return Err(ApiError::Malformed("give both since_offset and since_epoch, or neither".into())),
    };
    // Paged like the WebSocket `history`: at most half the outbound budget of payloads per
    // response, `more: true` when the rest must be asked for with `since_*`.
    let budget = node.config.limits.outbound_queue_bytes / 2;
    let page = node.broker.history(&params.channel, since, limit, budget, namespace.stream).await?;
    // Unlike a WebSocket `history` reply, each publication keeps its epoch: a backend
    // stores or forwards them one by one, and one response is not a connection that
    // learnt the epoch before (docs/openapi.json, `Publication`).
    let publications =
        page.publications.iter().map(|p| wire_publication(p, &*p.data, Epoch::Carry)).collect();
    let result =
        HistoryResult { epoch: page.epoch.to_string(), offset: page.top, publications, more: page.truncated };
    Ok(Json(result).into_response())
}

async fn channels(State(node): State<Arc<Node>>) -> Result<Json<serde_json::Value>, ApiError> {
    let channels = node.broker.active_channels().await?;
    Ok(Json(serde_json::json!({ "channels": channels })))
}

async fn info(State(node): State<Arc<Node>>) -> Result<Json<serde_json::Value>, ApiError> {
    let nodes = node.broker.nodes().await?;
    let broker = node.config.broker.url.split("://").next().unwrap_or("memory");
    Ok(Json(serde_json::json!({
        "node": node.id,
        "version": env!("CARGO_PKG_VERSION"),
        "broker": broker,
        "ready": node.is_ready(),
        "connections": node.metrics.connections.get(),
        "subscriptions": node.metrics.subscriptions.get(),
        "channels": node.metrics.channels.get(),
        "nodes": nodes,
    })))
}
