//! A lean protocol connection: one WebSocket, no background task, no reconnect. It is
//! what lets one process hold tens of thousands of connections; scenarios that need
//! reconnects use `switchboard-client` instead. Commands and replies go through the
//! protocol crate's codec, in JSON or MessagePack.

use std::{net::IpAddr, time::Duration};

use anyhow::{bail, Context};
use futures_util::{
    stream::{SplitSink, SplitStream},
    SinkExt, StreamExt,
};
use serde::Deserialize;
use serde_json::{json, Value};
use switchboard_protocol::{
    codec::{self, ServerFrame},
    Encoding,
};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, http::HeaderValue, protocol::WebSocketConfig, Message},
    WebSocketStream,
};

/// Read buffer of a lean connection. tungstenite zero-fills its read buffer up to this
/// size before every `read` (128 KiB by default): profiled, that memset and the page
/// faults behind it were a third of the load generator's CPU in the connect scenario.
/// 16 KiB still takes a saturated subscriber's burst of ~80 publications per read.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// A connected, authenticated WebSocket.
pub type Socket = WebSocketStream<TcpStream>;

/// Mints HS256 connection tokens for bench users.
#[derive(Clone)]
pub struct Tokens {
    key: jsonwebtoken::EncodingKey,
}

impl Tokens {
    /// Tokens signed with `secret` (the gateway's `auth.hmac_secret`).
    pub fn new(secret: &str) -> Tokens {
        Tokens { key: jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()) }
    }

    /// A one-day token for `user`.
    ///
    /// # Errors
    /// When signing fails.
    pub fn mint(&self, user: &str) -> anyhow::Result<String> {
        let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() + 86_400;
        let claims = json!({"sub": user, "exp": exp});
        Ok(jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &self.key)?)
    }
}

/// How long any one exchange may take: a TCP connect, a WebSocket handshake, a reply, an
/// HTTP call. Every run is bounded in time, even against a node that accepts and never
/// answers.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens a WebSocket to `url` from `source` (a loopback address, to spread ephemeral
/// ports over several source IPs) speaking `encoding`, and sends `connect`.
///
/// # Errors
/// Connection, handshake or authentication failure.
pub async fn open(
    url: &str,
    source: Option<IpAddr>,
    token: &str,
    encoding: Encoding,
) -> anyhow::Result<Socket> {
    let mut request = url.into_client_request()?;
    request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(encoding.subprotocol()));
    let mut socket = handshake(request, source).await?;
    send(&mut socket, encoding, 1, "connect", json!({ "token": token })).await?;
    let reply = reply(&mut socket, encoding, 1).await?;
    if reply.get("error").is_some() {
        bail!("connect refused: {reply}");
    }
    Ok(socket)
}

/// Opens a TCP connection to `request`'s host from `source` and completes its WebSocket
/// handshake, each step bounded by [`EXCHANGE_TIMEOUT`].
///
/// # Errors
/// Connection or handshake failure.
pub async fn handshake(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
    source: Option<IpAddr>,
) -> anyhow::Result<Socket> {
    let host = request.uri().host().context("url without host")?.to_string();
    let port = request.uri().port_u16().unwrap_or(80);
    let address = tokio::net::lookup_host((host.as_str(), port)).await?.next().context("cannot resolve")?;
    let socket = if address.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(source) = source {
        socket.bind((source, 0).into())?;
    }
    let stream = tokio::time::timeout(EXCHANGE_TIMEOUT, socket.connect(address))
        .await
        .with_context(|| format!("no TCP connection to {address} in {EXCHANGE_TIMEOUT:?}"))??;
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
    let handshake = tokio_tungstenite::client_async_with_config(request, stream, Some(config));
    let (socket, _) = tokio::time::timeout(EXCHANGE_TIMEOUT, handshake)
        .await
        .with_context(|| format!("no WebSocket handshake from {address} in {EXCHANGE_TIMEOUT:?}"))??;
    Ok(socket)
}

/// Sends one command in `encoding`.
///
/// # Errors
/// When the socket is closed.
pub async fn send<S>(
    socket: &mut S,
    encoding: Encoding,
    id: u64,
    method: &str,
    params: Value,
) -> anyhow::Result<()>
where
    S: SinkExt<Message> + Unpin,
    S::Error: std::error::Error + Send + Sync + 'static,
{
    let bytes = codec::encode(encoding, &json!({"id": id, "method": method, "params": params}))?;
    let message = match encoding {
        Encoding::Json => Message::Text(String::from_utf8(bytes.to_vec())?.into()),
        Encoding::MsgPack => Message::Binary(bytes),
    };
    socket.send(message).await?;
    Ok(())
}

/// A reply frame as JSON `{"id", "result"?, "error"?}`, if `message` is one.
///
/// # Errors
/// When the frame cannot be decoded.
pub fn decode_reply(encoding: Encoding, message: &Message) -> anyhow::Result<Option<Value>> {
    let bytes: &[u8] = match message {
        Message::Text(text) => text.as_bytes(),
        Message::Binary(bytes) => bytes,
        _ => return Ok(None),
    };
    let ServerFrame::Reply(reply) = codec::decode_server_frame(encoding, bytes)? else { return Ok(None) };
    let mut value = json!({ "id": reply.id });
    if let Some(result) = reply.result {
        value["result"] = result;
    }
    if let Some(error) = reply.error {
        value["error"] = serde_json::to_value(error)?;
    }
    Ok(Some(value))
}

/// Reads frames until the reply to `id`, returning it (other frames are dropped).
///
/// # Errors
/// When the socket closes first or nothing arrives for [`EXCHANGE_TIMEOUT`].
pub async fn reply(socket: &mut Socket, encoding: Encoding, id: u64) -> anyhow::Result<Value> {
    loop {
        let message = tokio::time::timeout(EXCHANGE_TIMEOUT, socket.next())
            .await
            .with_context(|| format!("no reply in {EXCHANGE_TIMEOUT:?}"))?
            .context("socket closed")??;
        if let Some(reply) = decode_reply(encoding, &message)? {
            if reply["id"] == id {
                return Ok(reply);
            }
        }
    }
}

/// Subscribes and returns the channel's current top offset.
///
/// # Errors
/// When the server refuses.
pub async fn subscribe(
    socket: &mut Socket,
    encoding: Encoding,
    id: u64,
    channel: &str,
) -> anyhow::Result<u64> {
    send(socket, encoding, id, "subscribe", json!({ "channel": channel })).await?;
    let reply = reply(socket, encoding, id).await?;
    reply["result"]["offset"].as_u64().with_context(|| format!("subscribe refused: {reply}"))
}

/// The fields of a frame a bench reader needs, decoded without building a JSON tree.
#[derive(Debug, Deserialize)]
pub struct Frame<'a> {
    /// Present on pushes.
    #[serde(default, borrow)]
    pub push: Option<&'a str>,
    /// Present on replies.
    #[serde(default)]
    pub id: Option<u64>,
    /// Publication channel.
    #[serde(default, borrow)]
    pub channel: Option<&'a str>,
    /// Publication offset.
    #[serde(default)]
    pub offset: Option<u64>,
    /// Publication payload.
    #[serde(default)]
    pub data: Option<Stamp>,
}

/// The payload bench publishers send: a send time and padding.
#[derive(Debug, Deserialize)]
pub struct Stamp {
    /// Microseconds since the Unix epoch when the publisher sent it.
    pub t: u64,
}

/// Microseconds since the Unix epoch (one clock for every process on the machine).
pub fn now_micros() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// A bench payload of about `size` bytes stamped with the current time.
pub fn payload(size: usize) -> Value {
    json!({"t": now_micros(), "p": "x".repeat(size.saturating_sub(24))})
}

/// Split halves of a socket.
pub type Halves = (SplitSink<Socket, Message>, SplitStream<Socket>);

/// The loopback source addresses to connect from: 127.0.0.1 ..= 127.0.0.N.
pub fn sources(count: u8) -> Vec<IpAddr> {
    (1..=count.max(1)).map(|n| IpAddr::from([127, 0, 0, n])).collect()
}

/// A minimal HTTP/1.1 POST of a JSON body; returns the JSON response body. Bounded by
/// [`EXCHANGE_TIMEOUT`] like every other exchange of the load generator.
pub async fn post(address: &str, path: &str, key: &str, body: &str) -> anyhow::Result<Value> {
    tokio::time::timeout(EXCHANGE_TIMEOUT, post_without_deadline(address, path, key, body))
        .await
        .map_err(|_| anyhow::anyhow!("no HTTP response from {address} in {:?}", EXCHANGE_TIMEOUT))?
}

async fn post_without_deadline(address: &str, path: &str, key: &str, body: &str) -> anyhow::Result<Value> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes()).await?;
    let mut response = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut response).await?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    Ok(serde_json::from_str(body)?)
}
