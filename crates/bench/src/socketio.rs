//! Lean Socket.IO connections: raw Engine.IO v4 over a WebSocket, the protocol k6-style
//! load generators speak (docs/socketio.md). The same scenario then runs against
//! Switchboard's `/socket.io/` endpoint and against a Node.js Socket.IO server
//! (`crates/bench/peers/socketio`), with one load generator for both.
//!
//! The scenario's events follow the conventions both servers implement: `subscribe`
//! (a room name, acked) and `publish` (`{channel, data}`, acked, the payload emitted to
//! the room). Socket.IO events carry no offsets, so bench payloads carry their own
//! sequence: `w` (the publisher) and `n` (1, 2, … per publisher), from which a reader
//! counts losses, duplicates and reordering as it does with offsets.

use std::net::IpAddr;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::{net::TcpStream, sync::oneshot};
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, Message},
    WebSocketStream,
};

use crate::{
    lean::{self, EXCHANGE_TIMEOUT},
    reader::{self, Expected, Step},
    stats::Deliveries,
};

/// A Socket.IO connection (Engine.IO over a WebSocket).
pub type Socket = WebSocketStream<TcpStream>;

/// The Engine.IO WebSocket URL of a server given as `ws://host:port[/anything]`.
pub fn endpoint(url: &str) -> String {
    let authority = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = authority.split('/').next().unwrap_or(authority);
    format!("ws://{authority}/socket.io/?EIO=4&transport=websocket")
}

/// Opens a Socket.IO connection to the server at `url` from `source` and connects to
/// the root namespace with `token` (`auth: {token}`).
///
/// # Errors
/// Connection or handshake failure, or a refused CONNECT.
pub async fn open(url: &str, source: Option<IpAddr>, token: &str) -> anyhow::Result<Socket> {
    let mut socket = lean::handshake(endpoint(url).into_client_request()?, source).await?;
    let open = next_text(&mut socket).await?;
    if !open.starts_with("0{") {
        bail!("expected an Engine.IO open packet, got {open}");
    }
    socket.send(Message::Text(format!("40{}", json!({ "token": token })).into())).await?;
    let reply = next_text(&mut socket).await?;
    if !reply.starts_with("40") {
        bail!("CONNECT refused: {reply}");
    }
    Ok(socket)
}

/// The next text frame, answering Engine.IO pings on the way.
async fn next_text(socket: &mut Socket) -> anyhow::Result<String> {
    loop {
        let message = tokio::time::timeout(EXCHANGE_TIMEOUT, socket.next())
            .await
            .with_context(|| format!("nothing received in {EXCHANGE_TIMEOUT:?}"))?
            .context("socket closed")??;
        match message {
            Message::Text(text) if text.as_str() == "2" => socket.send(Message::Text("3".into())).await?,
            Message::Text(text) => return Ok(text.to_string()),
            _ => {}
        }
    }
}

/// Joins `room` with the `subscribe` event and waits for its ack.
///
/// # Errors
/// When the server refuses or the socket closes.
pub async fn subscribe(socket: &mut Socket, room: &str) -> anyhow::Result<()> {
    socket.send(Message::Text(format!("420{}", json!(["subscribe", room])).into())).await?;
    loop {
        let text = next_text(socket).await?;
        if let Some(ack) = text.strip_prefix("430") {
            if ack.contains("\"error\"") {
                bail!("subscribe refused: {ack}");
            }
            return Ok(());
        }
    }
}

/// The `publish` event of publication `n` of publisher `w`, asking for ack `ack`.
pub fn publish_frame(ack: u64, channel: &str, size: usize, w: usize, n: u64) -> Message {
    let mut data = lean::payload(size);
    data["w"] = json!(w);
    data["n"] = json!(n);
    Message::Text(format!("42{ack}{}", json!(["publish", {"channel": channel, "data": data}])).into())
}

/// The ack id of a frame, if it is an ack (`43<id>[…]`).
pub fn ack_id(text: &str) -> Option<u64> {
    let rest = text.strip_prefix("43")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    rest[..digits].parse().ok()
}

/// An event as bench publishers send it: its name (not needed), then the payload.
#[derive(Debug, Deserialize)]
struct Event(serde::de::IgnoredAny, Payload);

#[derive(Debug, Deserialize)]
struct Payload {
    t: u64,
    w: usize,
    n: u64,
}

/// Reads events until every publisher's last sequence number (told by `end` once
/// publishing stopped, keyed by the publisher's index) arrived, or nothing came for 5 s.
///
/// # Errors
/// When answering a ping fails.
pub async fn read(
    socket: Socket,
    publishers: usize,
    end: oneshot::Receiver<Expected>,
) -> anyhow::Result<Deliveries> {
    let keys = (0..publishers).map(|w| w.to_string()).collect();
    reader::read_with(socket, keys, vec![0; publishers], end, |message| {
        let Message::Text(text) = message else { return Step::Skip };
        if text.as_str() == "2" {
            return Step::Answer(Message::Text("3".into()));
        }
        match text.strip_prefix("42").map(serde_json::from_str::<Event>) {
            Some(Ok(Event(_, payload))) => {
                Step::Record { key: payload.w, position: payload.n, sent: payload.t }
            }
            _ => Step::Skip,
        }
    })
    .await
}

/// The JSON an ack carries, if any.
pub fn ack_value(text: &str) -> Option<Value> {
    let rest = text.strip_prefix("43")?;
    let start = rest.find('[')?;
    serde_json::from_str::<Vec<Value>>(&rest[start..]).ok()?.into_iter().next()
}
