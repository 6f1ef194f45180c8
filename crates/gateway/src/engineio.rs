//! The HTTP side of the Socket.IO endpoint `/socket.io/` (docs/socketio.md): Engine.IO v4
//! handshakes over WebSocket and HTTP long-polling, polls and posts of polling sessions,
//! and the upgrade of a polling session to a WebSocket.
//!
//! A polling session lives on the node that opened it, and its id names that node
//! (`<node>-<n>`). A poll, post or upgrade for another node's session is forwarded to the
//! address that node advertises in the cluster registry (`node.advertise_address`), so the
//! load balancer needs no stickiness: polls and posts are proxied, an upgrade is relayed
//! byte for byte. A forwarded request is marked, and never forwarded again.
//!
//! Refusals use Engine.IO's error bodies, `{"code": n, "message": …}` with status 400,
//! which its clients know (0 transport unknown, 1 session id unknown, 3 bad request,
//! 5 unsupported protocol version). Polling answers carry CORS headers for the
//! configured origins (`limits.allowed_origins`), so a page on another origin can poll.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use axum::{
    body::Body,
    extract::{ConnectInfo, Query, Request, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
    Json,
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    http::{check_origin, upgrade_context, HttpError},
    node::Node,
    session,
    transport::{
        handshake::Upgrade,
        inbound::inbound,
        polling::{PollingError, PollingSession},
    },
    wire::{SioNamespace, Wire},
};

/// Engine.IO's error codes.
#[derive(Debug, Clone, Copy)]
enum EngineError {
    TransportUnknown = 0,
    SessionUnknown = 1,
    BadRequest = 3,
    UnsupportedVersion = 5,
}

fn engine_error(code: EngineError, message: &str) -> Response {
    let body = serde_json::json!({ "code": code as u8, "message": message });
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// Every request to `/socket.io/`.
pub(crate) async fn endpoint(
    State(node): State<Arc<Node>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Result<Response, HttpError> {
    if !node.config.socketio.enabled {
        return Err(HttpError::NotFound);
    }
    let origin = check_origin(&node, request.headers())?;
    if request.method() == Method::OPTIONS {
        return Ok(with_cors(StatusCode::NO_CONTENT.into_response(), origin.as_ref(), true));
    }
    if query.get("EIO").map(String::as_str) != Some("4") {
        return Ok(engine_error(EngineError::UnsupportedVersion, "Unsupported protocol version"));
    }
    let sid = query.get("sid").cloned();
    if let Some(owner) = sid.as_deref().and_then(|sid| foreign_owner(&node, sid)) {
        if request.headers().contains_key(FORWARDED) {
            return Ok(unknown_session());
        }
        return Ok(forward(&node, owner, request).await);
    }
    let response = match (query.get("transport").map(String::as_str), sid, request.method().clone()) {
        (Some("websocket"), None, Method::GET) => {
            let wire = Wire::SocketIo(SioNamespace::ROOT);
            return crate::http::upgrade(node, remote, request, wire, None);
        }
        (Some("websocket"), Some(sid), Method::GET) => upgrade_polling(&node, &sid, request)?,
        (Some("polling"), None, Method::GET) => {
            if node.is_draining() {
                return Err(HttpError::Draining);
            }
            let (bearer, hook_context) = upgrade_context(&node, request.headers(), remote);
            let polling = session::start_polling(node.clone(), bearer, hook_context, remote);
            poll(&node, &polling).await
        }
        (Some("polling"), Some(sid), Method::GET) => match node.polling.get(&sid) {
            Some(polling) => poll(&node, &polling).await,
            None => unknown_session(),
        },
        (Some("polling"), Some(sid), Method::POST) => match node.polling.get(&sid) {
            Some(polling) => post(&node, &polling, request).await,
            None => unknown_session(),
        },
        (Some("polling"), None, _) => engine_error(EngineError::BadRequest, "a POST needs a session id"),
        (Some("websocket" | "polling"), _, _) => {
            engine_error(EngineError::BadRequest, "Bad handshake method")
        }
        _ => engine_error(EngineError::TransportUnknown, "Transport unknown"),
    };
    Ok(with_cors(response, origin.as_ref(), false))
}

/// Marks a request forwarded by another node.
const FORWARDED: &str = "x-switchboard-forwarded";

/// The node that holds session `sid`, when it is not this one (`<node>-<n>`; node names
/// may contain `-`, connection numbers do not).
fn foreign_owner<'a>(node: &Node, sid: &'a str) -> Option<&'a str> {
    let (owner, number) = sid.rsplit_once('-')?;
    let well_formed = !owner.is_empty() && !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit());
    (well_formed && owner != node.id && node.polling.get(sid).is_none()).then_some(owner)
}

/// Forwards a request for another node's session to that node.
async fn forward(node: &Arc<Node>, owner: &str, request: Request) -> Response {
    let address = match node.broker.node_address(owner).await {
        Ok(Some(address)) => address,
        Ok(None) => return unknown_session(),
        Err(error) => {
            tracing::debug!(%error, %owner, "cannot look up a node's address");
            return unknown_session();
        }
    };
    node.metrics.socketio_forwarded.inc();
    if request.headers().contains_key(header::UPGRADE) {
        return relay_upgrade(node, address, request);
    }
    match proxy(node, &address, request).await {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(%error, %owner, %address, "cannot forward a polling request");
            unknown_session()
        }
    }
}

/// The HTTP client forwarding polling requests (connections are pooled per node).
fn client() -> &'static hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
> {
    static CLIENT: std::sync::OnceLock<
        hyper_util::client::legacy::Client<
            hyper_util::client::legacy::connect::HttpConnector,
            http_body_util::Full<bytes::Bytes>,
        >,
    > = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector)
    })
}

/// Sends a poll or post on to `address` and returns its answer as it is.
async fn proxy(node: &Node, address: &str, request: Request) -> Result<Response, String> {
    let (parts, body) = request.into_parts();
    let limit = node.config.limits.max_message_bytes;
    let Ok(body) = axum::body::to_bytes(body, limit).await else {
        let body = serde_json::json!({
            "code": EngineError::BadRequest as u8,
            "message": format!("the body is larger than maxPayload ({limit} bytes)"),
        });
        return Ok((StatusCode::PAYLOAD_TOO_LARGE, Json(body)).into_response());
    };
    let path = parts.uri.path_and_query().map_or("/socket.io/", |p| p.as_str());
    let mut forwarded = hyper::Request::builder()
        .method(parts.method.clone())
        .uri(format!("http://{address}{path}"))
        .body(http_body_util::Full::new(body))
        .map_err(|e| e.to_string())?;
    for name in
        [header::CONTENT_TYPE, header::ORIGIN, header::AUTHORIZATION, header::COOKIE, header::USER_AGENT]
    {
        if let Some(value) = parts.headers.get(&name) {
            forwarded.headers_mut().insert(name, value.clone());
        }
    }
    forwarded.headers_mut().insert(FORWARDED, HeaderValue::from_static("1"));
    let response = client().request(forwarded).await.map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// Relays a WebSocket upgrade for another node's session: the client's socket and one to
/// the owner are joined byte for byte once the owner accepted the upgrade.
fn relay_upgrade(node: &Arc<Node>, address: String, mut request: Request) -> Response {
    let mut head = format!("GET {} HTTP/1.1\r\n", request.uri().path_and_query().map_or("/", |p| p.as_str()));
    for (name, value) in request.headers() {
        // The client gets this node's `101`, which accepts no extension: the owner must
        // not be offered one either (its frames would be compressed for a client that
        // does not expect it).
        if name == header::SEC_WEBSOCKET_EXTENSIONS {
            continue;
        }
        if let Ok(value) = value.to_str() {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str(&format!("{FORWARDED}: 1\r\n\r\n"));
    let upgrade = match Upgrade::accept(&mut request) {
        Ok(upgrade) => upgrade,
        Err(error) => return HttpError::from(error).into_response(),
    };
    let (response, upgraded) = upgrade.respond(None, None);
    let shutdown = node.shutdown.clone();
    node.sessions.spawn(async move {
        let relayed = async {
            let client = upgraded.await.map_err(|e| e.to_string())?;
            let mut owner = tokio::net::TcpStream::connect(&address).await.map_err(|e| e.to_string())?;
            owner.set_nodelay(true).map_err(|e| e.to_string())?;
            owner.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
            // The owner's `101` (the same accept key: it is derived from the client's key,
            // which the client already got from this node) is not passed on.
            let mut answer = Vec::new();
            let mut byte = [0u8; 1];
            while !answer.ends_with(b"\r\n\r\n") {
                if answer.len() > 8192 || owner.read(&mut byte).await.map_err(|e| e.to_string())? == 0 {
                    return Err("the owner did not accept the upgrade".to_string());
                }
                answer.push(byte[0]);
            }
            if !answer.starts_with(b"HTTP/1.1 101") {
                return Err(format!(
                    "the owner answered {}",
                    String::from_utf8_lossy(&answer).lines().next().unwrap_or("")
                ));
            }
            let mut client_stream = client.stream;
            owner.write_all(&client.prefix).await.map_err(|e| e.to_string())?;
            tokio::select! {
                copied = tokio::io::copy_bidirectional(&mut client_stream, &mut owner) => {
                    copied.map(|_| ()).map_err(|e| e.to_string())
                }
                () = shutdown.cancelled() => Ok(()),
            }
        };
        if let Err(error) = relayed.await {
            tracing::debug!(%error, "Engine.IO upgrade relay ended");
        }
    });
    response
}

fn unknown_session() -> Response {
    engine_error(EngineError::SessionUnknown, "Session ID unknown")
}

/// A poll: the queued packets, or a wait for the next one.
async fn poll(node: &Node, polling: &PollingSession) -> Response {
    let config = &node.config;
    let limits = (config.socketio.polling_max_packets, config.limits.max_message_bytes);
    match polling.poll(limits.0, limits.1, &node.metrics).await {
        Ok(payload) => text_response(payload),
        Err(error) => polling_error(error),
    }
}

/// A post: the packets of the body, to the session.
async fn post(node: &Node, polling: &PollingSession, request: Request) -> Response {
    let limit = node.config.limits.max_message_bytes;
    let body = match axum::body::to_bytes(request.into_body(), limit).await {
        Ok(body) => body,
        Err(_) => {
            let body = serde_json::json!({
                "code": EngineError::BadRequest as u8,
                "message": format!("the body is larger than maxPayload ({limit} bytes)"),
            });
            return (StatusCode::PAYLOAD_TOO_LARGE, Json(body)).into_response();
        }
    };
    let Ok(body) = std::str::from_utf8(&body) else {
        return engine_error(EngineError::BadRequest, "the body is not UTF-8 text");
    };
    match polling.post(body).await {
        Ok(()) => text_response("ok".to_string()),
        Err(error) => polling_error(error),
    }
}

fn polling_error(error: PollingError) -> Response {
    match error {
        PollingError::UnknownSession => unknown_session(),
        PollingError::Overlap | PollingError::Upgraded => {
            engine_error(EngineError::BadRequest, &error.to_string())
        }
    }
}

fn text_response(body: String) -> Response {
    let mut response = Response::new(Body::from(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=UTF-8"));
    response
}

/// The upgrade of polling session `sid` to a WebSocket: the probe runs on the new socket,
/// then the session moves to it.
fn upgrade_polling(node: &Arc<Node>, sid: &str, mut request: Request) -> Result<Response, HttpError> {
    let Some(polling) = node.polling.get(sid) else {
        return Ok(unknown_session());
    };
    let negotiated = node.config.compression.negotiate(request.headers());
    let upgrade = Upgrade::accept(&mut request)?;
    let (response, upgraded) = upgrade.respond(None, negotiated.map(|(_, answer)| answer));
    let deflate = negotiated.map(|(deflate, _)| deflate);
    let config = session::read_config(node);
    let inflate = deflate.map(|_| node.config.limits.max_message_bytes);
    tokio::spawn(async move {
        match upgraded.await {
            Ok(socket) => {
                let (read, write) = socket.stream.into_split();
                let inbound = inbound(read, &socket.prefix, polling.outbox().clone(), config, inflate).await;
                polling.upgrade(inbound, write, deflate).await;
            }
            Err(error) => tracing::debug!(%error, "Engine.IO upgrade did not complete"),
        }
    });
    Ok(response)
}

/// Adds the CORS headers of an allowed `origin` (a preflight also gets methods and
/// headers).
fn with_cors(mut response: Response, origin: Option<&HeaderValue>, preflight: bool) -> Response {
    let Some(origin) = origin else { return response };
    let headers: &mut HeaderMap = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    if preflight {
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("content-type, authorization"),
        );
        headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    }
    response
}
