//! The client against a scripted peer that leaves `epoch` out of publications in the epoch
//! the connection was told (protocol §5.1.1), and carries it once when the stream is reset:
//! the application still sees every publication's epoch, and the positions the client
//! resubscribes with after a reconnect are in the right epoch.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
// tungstenite's handshake callback type fixes the (large) error variant.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard_client::{static_token, Backoff, Client, ClientConfig, Event, Subscription};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_tungstenite::{
    tungstenite::{
        handshake::server::{Request, Response},
        Message,
    },
    WebSocketStream,
};

type Socket = WebSocketStream<tokio::net::TcpStream>;

const WAIT: Duration = Duration::from_secs(10);

/// Accepts the next connection, echoing the requested subprotocol as the gateway does.
async fn accept(listener: &TcpListener) -> Socket {
    let echo = |request: &Request, mut response: Response| {
        if let Some(protocol) = request.headers().get("Sec-WebSocket-Protocol") {
            response.headers_mut().insert("Sec-WebSocket-Protocol", protocol.clone());
        }
        Ok(response)
    };
    let (stream, _) = listener.accept().await.unwrap();
    tokio_tungstenite::accept_hdr_async(stream, echo).await.unwrap()
}

async fn command(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, socket.next()).await.expect("a command in time");
        if let Some(Ok(Message::Text(text))) = message {
            return serde_json::from_str(&text).unwrap();
        }
        assert!(matches!(message, Some(Ok(_))), "the client went away: {message:?}");
    }
}

async fn send(socket: &mut Socket, frame: Value) {
    socket.send(Message::Text(frame.to_string().into())).await.unwrap();
}

async fn reply(socket: &mut Socket, command: &Value, result: Value) {
    send(socket, json!({"id": command["id"], "result": result})).await;
}

fn publication(channel: &str, offset: u64, epoch: Option<&str>) -> Value {
    let mut push =
        json!({"push": "publication", "channel": channel, "offset": offset, "data": offset, "ts": 1});
    if let Some(epoch) = epoch {
        push["epoch"] = json!(epoch);
    }
    push
}

/// First connection: the personal channel in epoch `p1`, `news` subscribed in `e1` at 5;
/// 6 and 7 without an epoch, then `news` is reset (1 carries `e2`, 2 does not) and the
/// connection drops. Second connection: reports the `connect` and `subscribe` commands the
/// client sent, and answers them.
async fn scripted_peer() -> (String, mpsc::Receiver<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    // Two reports in all: `connect` and `subscribe` of the second connection.
    let (report, reports) = mpsc::channel(2);
    tokio::spawn(async move {
        let connected = |epoch: &str, offset: u64| {
            json!({"client": "c1", "user": "u1", "node": "scripted", "version": "0", "ping_interval_ms": 0,
                "subscriptions": [{"channel": "user:u1", "epoch": epoch, "offset": offset}]})
        };
        let mut socket = accept(&listener).await;
        let connect = command(&mut socket).await;
        reply(&mut socket, &connect, connected("p1", 0)).await;
        let subscribe = command(&mut socket).await;
        assert_eq!(subscribe["params"]["channel"], "news");
        reply(&mut socket, &subscribe, json!({"channel": "news", "epoch": "e1", "offset": 5})).await;
        for push in [
            publication("news", 6, None),
            publication("user:u1", 1, None),
            publication("news", 7, None),
            publication("news", 1, Some("e2")),
            publication("news", 2, None),
            json!({"push": "publication", "channel": "news", "data": "ephemeral", "ts": 1}),
        ] {
            send(&mut socket, push).await;
        }
        let notice = json!({"push": "disconnect", "code": 3000, "reason": "scripted", "reconnect": true});
        send(&mut socket, notice).await;
        drop(socket);

        let mut socket = accept(&listener).await;
        let connect = command(&mut socket).await;
        report.send(connect.clone()).await.unwrap();
        reply(&mut socket, &connect, connected("p1", 1)).await;
        let subscribe = command(&mut socket).await;
        report.send(subscribe.clone()).await.unwrap();
        let result = json!({"channel": "news", "epoch": "e2", "offset": 2, "recovered": true, "missed": 0});
        reply(&mut socket, &subscribe, result).await;
        while let Some(Ok(_)) = socket.next().await {}
    });
    (url, reports)
}

/// The (offset, epoch) of the next publication of `subscription`, skipping `Subscribed`.
async fn next_position(subscription: &mut Subscription) -> (Option<u64>, Option<String>) {
    loop {
        match tokio::time::timeout(WAIT, subscription.next()).await.expect("an event in time") {
            Some(Event::Publication(p)) => return (p.offset, p.epoch),
            Some(Event::Subscribed { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn publications_get_the_epoch_they_were_left_without_and_positions_follow_a_reset() {
    let (url, mut reports) = scripted_peer().await;
    let mut config = ClientConfig::new(url, static_token("t"));
    config.backoff = Backoff { base: Duration::from_millis(10), max: Duration::from_millis(20) };
    let (client, mut personal) = Client::connect(config);
    let mut news = client.subscribe("news").await.unwrap();
    let epoch = |e: &str| Some(e.to_string());
    assert_eq!(next_position(&mut news).await, (Some(6), epoch("e1")));
    assert_eq!(next_position(&mut personal).await, (Some(1), epoch("p1")));
    assert_eq!(next_position(&mut news).await, (Some(7), epoch("e1")));
    assert_eq!(next_position(&mut news).await, (Some(1), epoch("e2")), "the reset is adopted");
    assert_eq!(next_position(&mut news).await, (Some(2), epoch("e2")));
    assert_eq!(next_position(&mut news).await, (None, None), "ephemeral: no position");

    let connect = tokio::time::timeout(WAIT, reports.recv()).await.unwrap().unwrap();
    assert_eq!(connect["params"]["recover"], json!({"offset": 1, "epoch": "p1"}));
    let subscribe = tokio::time::timeout(WAIT, reports.recv()).await.unwrap().unwrap();
    assert_eq!(subscribe["params"]["recover"], json!({"offset": 2, "epoch": "e2"}));
    client.close().await;
}
