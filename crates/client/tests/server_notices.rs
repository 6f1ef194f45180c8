//! How the client's reconnect loop reacts to what a server says and does not say, against a
//! scripted WebSocket peer on loopback. The peer produces on demand what a real gateway
//! does only under failure: a `disconnect` push whose close frame never arrives, a server
//! that goes silent without closing. (Node-full advice and node kills are tested against
//! real gateway processes in crates/gateway/tests/client.rs.)

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
// tungstenite's handshake callback type fixes the (large) error variant.
#![allow(clippy::result_large_err)]

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard_client::{static_token, Backoff, Client, ClientConfig, Code, ConnectionState};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_tungstenite::tungstenite::{
    handshake::server::{Request, Response},
    Message,
};

/// What the scripted peer does after answering `connect`.
#[derive(Clone, Copy)]
enum Script {
    /// Sends a `disconnect` push with `code`, then drops the TCP connection without a
    /// close frame.
    NoticeThenDrop { code: u16, reconnect: bool },
    /// Sends nothing more and never closes.
    Silent,
}

/// Starts the peer; every accepted connection is reported with its time.
async fn peer(script: Script) -> (String, mpsc::Receiver<Instant>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    // Far more than a test's client reconnects; beyond it, reports are dropped.
    let (accepted, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let _ = accepted.try_send(Instant::now());
            tokio::spawn(serve(stream, script));
        }
    });
    (url, rx)
}

async fn serve(stream: tokio::net::TcpStream, script: Script) {
    // Echo the requested subprotocol, as the gateway does.
    let echo = |request: &Request, mut response: Response| {
        if let Some(protocol) = request.headers().get("Sec-WebSocket-Protocol") {
            response.headers_mut().insert("Sec-WebSocket-Protocol", protocol.clone());
        }
        Ok(response)
    };
    let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, echo).await else { return };
    let Some(Ok(Message::Text(connect))) = socket.next().await else { return };
    let id = serde_json::from_str::<Value>(&connect).unwrap()["id"].clone();
    let result = json!({"client": "c1", "user": "u1", "node": "scripted", "version": "0",
        "ping_interval_ms": 200, "subscriptions": []});
    socket.send(Message::Text(json!({"id": id, "result": result}).to_string().into())).await.unwrap();
    match script {
        Script::NoticeThenDrop { code, reconnect } => {
            let notice =
                json!({"push": "disconnect", "code": code, "reason": "scripted", "reconnect": reconnect});
            socket.send(Message::Text(notice.to_string().into())).await.unwrap();
            // Dropped without a close frame: the TCP connection just ends.
        }
        Script::Silent => {
            // Keep the socket open and say nothing (not even a ping) until the client leaves.
            while let Some(Ok(_)) = socket.next().await {}
        }
    }
}

fn config(url: String) -> ClientConfig {
    let mut config = ClientConfig::new(url, static_token("t"));
    config.backoff = Backoff { base: Duration::from_millis(20), max: Duration::from_millis(50) };
    config
}

async fn wait_for(client: &Client, done: impl Fn(&ConnectionState) -> bool) -> ConnectionState {
    let mut state = client.state();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let current = state.borrow_and_update().clone();
            if done(&current) {
                return current;
            }
            state.changed().await.unwrap();
        }
    })
    .await
    .expect("state reached in time")
}

#[tokio::test]
async fn a_do_not_reconnect_notice_stops_the_client_even_without_a_close_frame() {
    let (url, mut accepted) = peer(Script::NoticeThenDrop { code: 3504, reconnect: false }).await;
    let (client, _personal) = Client::connect(config(url));
    let state = wait_for(&client, |s| matches!(s, ConnectionState::Closed { .. })).await;
    assert_eq!(
        state,
        ConnectionState::Closed { code: Some(Code::ForceDisconnect), reason: "scripted".into() }
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    accepted.recv().await.unwrap();
    assert!(accepted.try_recv().is_err(), "the client came back after being told not to");
}

#[tokio::test]
async fn a_reconnect_notice_without_a_close_frame_keeps_its_code_and_the_client_returns() {
    let (url, mut accepted) = peer(Script::NoticeThenDrop { code: 3000, reconnect: true }).await;
    let (client, _personal) = Client::connect(config(url));
    let state = wait_for(&client, |s| matches!(s, ConnectionState::Disconnected { .. })).await;
    assert_eq!(
        state,
        ConnectionState::Disconnected { code: Some(Code::Shutdown), reason: "scripted".into() }
    );
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(5), accepted.recv()).await.unwrap().unwrap();
    }
    client.close().await;
}

/// The server pings every 200 ms; a connection that hears nothing for twice that plus a
/// second is dead, whether or not TCP noticed.
#[tokio::test]
async fn a_silent_server_is_detected_and_left() {
    let (url, mut accepted) = peer(Script::Silent).await;
    let (client, _personal) = Client::connect(config(url));
    wait_for(&client, |s| matches!(s, ConnectionState::Connected { .. })).await;
    let first = accepted.recv().await.unwrap();
    let state = wait_for(&client, |s| matches!(s, ConnectionState::Disconnected { .. })).await;
    let ConnectionState::Disconnected { reason, .. } = state else { unreachable!() };
    assert!(reason.contains("nothing from the server"), "{reason}");
    let second = tokio::time::timeout(Duration::from_secs(30), accepted.recv()).await.unwrap().unwrap();
    // Not before the silence window ran out. How much later is the machine's business:
    // that it happens at all is bounded by the timeouts above.
    let gap = second - first;
    assert!(gap >= Duration::from_millis(1400), "left after {gap:?} of silence");
    client.close().await;
}
