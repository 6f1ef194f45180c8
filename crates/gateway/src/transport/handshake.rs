//! The WebSocket opening handshake (RFC 6455 §4.2) on an HTTP/1.1 request.
//!
//! Checks what the RFC requires of the request, builds the `101 Switching Protocols`
//! response, and, once hyper has sent it, recovers the TCP socket under the upgrade
//! (with any bytes the client already sent after its request).

use axum::{
    extract::Request,
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    response::Response,
};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why an upgrade request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    /// Not a GET.
    #[error("a WebSocket upgrade must be a GET request")]
    MethodNotGet,
    /// A header the handshake requires is missing or wrong.
    #[error("not a valid WebSocket upgrade: {0}")]
    Invalid(&'static str),
    /// The connection cannot be upgraded (not served by the node's HTTP/1 server).
    #[error("this connection cannot be upgraded")]
    NotUpgradable,
}

impl HandshakeError {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            HandshakeError::MethodNotGet => StatusCode::METHOD_NOT_ALLOWED,
            HandshakeError::Invalid(_) => StatusCode::BAD_REQUEST,
            HandshakeError::NotUpgradable => StatusCode::UPGRADE_REQUIRED,
        }
    }
}

/// An accepted upgrade request, not answered yet.
#[derive(Debug)]
pub(crate) struct Upgrade {
    accept: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

/// The socket after the handshake.
#[derive(Debug)]
pub(crate) struct Upgraded {
    /// The connection's TCP socket.
    pub stream: TcpStream,
    /// Bytes the client sent after its request that the HTTP server already read.
    pub prefix: Bytes,
}

impl Upgrade {
    /// Checks `request` and takes its upgrade handle.
    ///
    /// # Errors
    /// [`HandshakeError`] for a request that is not a valid WebSocket upgrade.
    pub(crate) fn accept(request: &mut Request) -> Result<Upgrade, HandshakeError> {
        if request.method() != Method::GET {
            return Err(HandshakeError::MethodNotGet);
        }
        let headers = request.headers();
        if !header_has_token(headers, &header::CONNECTION, "upgrade") {
            return Err(HandshakeError::Invalid("`Connection` must include `upgrade`"));
        }
        if !header_has_token(headers, &header::UPGRADE, "websocket") {
            return Err(HandshakeError::Invalid("`Upgrade` must be `websocket`"));
        }
        if headers.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
            return Err(HandshakeError::Invalid("`Sec-WebSocket-Version` must be 13"));
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or(HandshakeError::Invalid("`Sec-WebSocket-Key` is missing"))?;
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let accept = HeaderValue::from_str(&accept).map_err(|_| HandshakeError::NotUpgradable)?;
        let on_upgrade = request
            .extensions_mut()
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or(HandshakeError::NotUpgradable)?;
        Ok(Upgrade { accept, on_upgrade })
    }

    /// The `101` response, echoing `protocol` when one was selected and answering with
    /// `extensions` when one was accepted, and the future of the upgraded socket (it
    /// resolves once the response went out).
    pub(crate) fn respond(
        self,
        protocol: Option<&'static str>,
        extensions: Option<&'static str>,
    ) -> (Response, impl std::future::Future<Output = Result<Upgraded, UpgradeFailed>>) {
        let mut response = Response::new(axum::body::Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, self.accept);
        if let Some(protocol) = protocol {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
        }
        if let Some(extensions) = extensions {
            headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_static(extensions));
        }
        let on_upgrade = self.on_upgrade;
        let upgraded = async move {
            let upgraded = on_upgrade.await.map_err(UpgradeFailed::Hyper)?;
            let parts = upgraded.downcast::<TokioIo<TcpStream>>().map_err(|_| UpgradeFailed::NotTcp)?;
            Ok(Upgraded { stream: parts.io.into_inner(), prefix: parts.read_buf })
        };
        (response, upgraded)
    }
}

/// Why the socket could not be recovered after a `101`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpgradeFailed {
    /// hyper could not complete the upgrade (the client went away).
    #[error("upgrade failed: {0}")]
    Hyper(hyper::Error),
    /// The connection was not a plain TCP socket served by the node's accept loop.
    #[error("the upgraded connection is not a TCP socket")]
    NotTcp,
}

/// Whether the comma-separated header `name` has `token` (case-insensitive).
fn header_has_token(headers: &HeaderMap, name: &header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|part| part.trim().eq_ignore_ascii_case(token))
}
