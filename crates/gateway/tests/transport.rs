//! The WebSocket transport the gateway owns below the session: the upgrade handshake
//! (refusals are JSON), bytes a client sends before the `101` arrived, the library's
//! pongs joining the outbox, and server frames of every header length.

#![allow(clippy::unwrap_used, missing_docs)]

mod fixture;

use std::net::SocketAddr;

use fixture::{masked_frame, token, RawFrame, RawSocket, TestServer};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `request` as is and returns the status and JSON body of the answer.
async fn http(addr: SocketAddr, request: &str) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(fixture::WAIT, stream.read_to_end(&mut answer)).await.expect("answer").unwrap();
    let answer = String::from_utf8_lossy(&answer).to_string();
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn requests_that_are_not_valid_upgrades_get_a_json_refusal() {
    let server = TestServer::start(fixture::config()).await;
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let cases = [
        ("no upgrade headers", String::new()),
        (
            "no websocket upgrade",
            format!("Connection: Upgrade\r\nUpgrade: h2c\r\nSec-WebSocket-Version: 13\r\n{key}"),
        ),
        (
            "version 8",
            format!("Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\n{key}"),
        ),
        ("no key", "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n".to_string()),
    ];
    for (case, headers) in cases {
        let request = format!("GET /ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n");
        let (status, body) = http(server.addr, &request).await;
        assert_eq!(status, 400, "{case}: {body}");
        assert_eq!(body["error"]["code"], "bad_upgrade", "{case}: {body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{case}: {body}");
    }
    // `Connection` may list several tokens, in any case.
    let mut socket = RawSocket::open(server.addr).await;
    socket.send_text(&json!({"id": 1, "method": "ping"}).to_string()).await;
    assert_eq!(socket.read_frame().await.expect("reply").opcode, RawFrame::TEXT);
}

/// A client may send its first frames right behind the upgrade request, before it saw
/// the `101`: the HTTP server has read them already, and the session must get them.
#[tokio::test]
async fn frames_sent_with_the_upgrade_request_are_not_lost() {
    let server = TestServer::start(fixture::config()).await;
    let connect = json!({"id": 1, "method": "connect", "params": {"token": token("early")}}).to_string();
    let subscribe = json!({"id": 2, "method": "subscribe", "params": {"channel": "news"}}).to_string();
    let mut early = masked_frame(RawFrame::TEXT, connect.as_bytes());
    early.extend(masked_frame(RawFrame::TEXT, subscribe.as_bytes()));
    let mut socket = RawSocket::open_sending(server.addr, &early).await;
    for id in [1, 2] {
        let frame = socket.read_frame().await.expect("reply");
        let reply: Value = serde_json::from_slice(&frame.payload).unwrap();
        assert_eq!(reply["id"], id, "{reply}");
        assert!(reply["result"].is_object(), "{reply}");
    }
}

/// Pongs are written by the WebSocket library on the read side; they go through the
/// connection's outbox, between whole frames, and echo the ping's payload.
#[tokio::test]
async fn pings_are_answered_with_their_payload() {
    let server = TestServer::start(fixture::config()).await;
    let mut socket = RawSocket::connect(server.addr, "pinger").await;
    socket.send_frame(RawFrame::PING, b"are you there").await;
    socket.send_text(&json!({"id": 2, "method": "ping"}).to_string()).await;
    let mut pong = None;
    let mut reply = None;
    while pong.is_none() || reply.is_none() {
        let frame = socket.read_frame().await.expect("frame");
        match frame.opcode {
            RawFrame::PONG => pong = Some(frame.payload),
            RawFrame::TEXT => reply = Some(serde_json::from_slice::<Value>(&frame.payload).unwrap()),
            _ => {}
        }
    }
    assert_eq!(pong.as_deref(), Some(&b"are you there"[..]));
    assert_eq!(reply.expect("reply")["id"], 2);
}

/// Server frames with a 7-bit, 16-bit and 64-bit length, shared by two subscribers,
/// arrive whole and in order.
#[tokio::test]
async fn frames_of_every_header_length_arrive_whole() {
    let mut config = fixture::config();
    config.limits.max_payload_bytes = 200_000;
    config.limits.max_message_bytes = 300_000;
    let server = TestServer::start(config).await;
    let mut subscribers = Vec::new();
    for user in ["a", "b"] {
        let mut socket = RawSocket::connect(server.addr, user).await;
        socket
            .send_text(&json!({"id": 2, "method": "subscribe", "params": {"channel": "news"}}).to_string())
            .await;
        let reply = socket.read_frame().await.expect("subscribe reply");
        assert!(String::from_utf8_lossy(&reply.payload).contains("\"result\""));
        subscribers.push(socket);
    }
    let sizes = [10, 1_000, 100_000];
    for size in sizes {
        server.backend_publish("news", "sized", json!("x".repeat(size))).await;
    }
    for socket in &mut subscribers {
        for size in sizes {
            let frame = socket.read_frame().await.expect("publication");
            let push: Value = serde_json::from_slice(&frame.payload).unwrap();
            assert_eq!(push["data"].as_str().map(str::len), Some(size), "{}", push["offset"]);
        }
    }
}

/// The fan-out backlog holds publishers back only while the flushers are behind: frames
/// waiting for a client that stopped reading (its socket full, its budget large enough to
/// keep them) must not. Were they to, each publish below would wait `outbound_wait_ms`
/// (two minutes) and miss the fixture's reply deadline.
#[tokio::test]
async fn a_client_that_stopped_reading_does_not_hold_publishers_back() {
    let mut config = fixture::config();
    config.limits.fanout_backlog_frames = 4;
    config.limits.outbound_wait_ms = 120_000;
    config.limits.outbound_queue_bytes = 64 << 20;
    config.limits.outbound_queue_frames = 100_000;
    let server = TestServer::start(config).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let mut stuck = RawSocket::from_stream(stream).await;
    stuck
        .send_text(&json!({"id": 1, "method": "connect", "params": {"token": token("stuck")}}).to_string())
        .await;
    stuck
        .send_text(&json!({"id": 2, "method": "subscribe", "params": {"channel": "nohist:feed"}}).to_string())
        .await;
    let mut reader = server.connect("reader", switchboard_protocol::Encoding::Json).await;
    reader.ok("subscribe", json!({"channel": "nohist:feed"})).await;
    let mut publisher = server.connect("publisher", switchboard_protocol::Encoding::Json).await;
    let pad = "x".repeat(30_000);
    for n in 0..200 {
        // Not read by `stuck`: after a few hundred KiB its socket is full and the rest of
        // its frames wait in its queue.
        let reply =
            publisher.call("publish", json!({"channel": "nohist:feed", "data": {"n": n, "pad": pad}})).await;
        assert!(reply.error.is_none(), "publish {n}: {:?}", reply.error);
    }
    for n in 0..200 {
        assert_eq!(reader.publication().await.data["n"], n);
    }
    assert!(server.node.backlog.frames() > 4, "the stuck client's frames are still queued");
    drop(stuck);
}
