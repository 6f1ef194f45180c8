//! Bad input of every class gets a specific error or close code, never a panic, and never
//! disturbs other connections.

#![allow(clippy::unwrap_used, missing_docs)]

mod fixture;

use std::time::Duration;

use fixture::{config, TestServer};
use serde_json::json;
use switchboard_protocol::{Code, Encoding};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue, Message};

/// Sends `message` on a fresh connected client and expects a close with `code`, while a
/// bystander in the same channel keeps receiving publications.
async fn closes_with(server: &TestServer, encoding: Encoding, message: Message, code: Code) {
    let mut bystander = server.connect("bystander", Encoding::Json).await;
    bystander.ok("subscribe", json!({"channel": "open:room"})).await;
    let mut offender = server.connect("offender", encoding).await;
    offender.send_raw(message).await;
    let (disconnect, closed) = offender.closed().await;
    let disconnect = disconnect.expect("disconnect push");
    assert_eq!(disconnect.code, code, "{}", disconnect.reason);
    assert!(!disconnect.reconnect);
    assert_eq!(closed.code(), Some(code.as_u16()));
    let mut publisher = server.connect("publisher", Encoding::Json).await;
    publisher.ok("publish", json!({"channel": "open:room", "data": "still here"})).await;
    assert_eq!(bystander.publication().await.data, json!("still here"));
}

#[tokio::test]
async fn undecodable_frames_close_with_protocol_error() {
    let server = TestServer::start(config()).await;
    closes_with(&server, Encoding::Json, Message::Text("{not json".into()), Code::ProtocolError).await;
    closes_with(&server, Encoding::Json, Message::Text("[1,2]".into()), Code::ProtocolError).await;
    closes_with(&server, Encoding::Json, Message::Text(r#"{"method":"ping"}"#.into()), Code::ProtocolError)
        .await;
    closes_with(
        &server,
        Encoding::Json,
        Message::Text(r#"{"id":-1,"method":"ping"}"#.into()),
        Code::ProtocolError,
    )
    .await;
    closes_with(&server, Encoding::Json, Message::Binary(vec![1, 2, 3].into()), Code::ProtocolError).await;
    closes_with(&server, Encoding::MsgPack, Message::Binary(vec![0xc1].into()), Code::ProtocolError).await;
    closes_with(&server, Encoding::MsgPack, Message::Text("{}".into()), Code::ProtocolError).await;
    // A MessagePack value JSON cannot represent (binary data).
    let bin = rmp_serde::to_vec_named(&json!({"id": 1, "method": "publish"})).unwrap();
    let mut with_bin = bin.clone();
    with_bin[0] += 1; // one more map entry
    with_bin.extend_from_slice(&[0xa4, b'd', b'a', b't', b'a', 0xc4, 0x01, 0x00]);
    closes_with(&server, Encoding::MsgPack, Message::Binary(with_bin.into()), Code::ProtocolError).await;
    server.shutdown().await;
}

#[tokio::test]
async fn oversized_frames_close_with_message_too_large() {
    let mut config = config();
    config.limits.max_message_bytes = 1024;
    let server = TestServer::start(config).await;
    let big = format!(r#"{{"id":1,"method":"ping","pad":"{}"}}"#, "x".repeat(2048));
    closes_with(&server, Encoding::Json, Message::Text(big.into()), Code::MessageTooLarge).await;
    server.shutdown().await;
}

#[tokio::test]
async fn answerable_mistakes_get_error_replies_and_the_connection_stays() {
    let server = TestServer::start(config()).await;
    for encoding in [Encoding::Json, Encoding::MsgPack] {
        let mut c = server.connect("u1", encoding).await;
        let cases = [
            ("fly", json!({}), Code::MethodNotFound),
            ("subscribe", json!({}), Code::BadRequest),
            ("subscribe", json!({"channel": 5}), Code::BadRequest),
            ("publish", json!({"channel": "open:x"}), Code::BadRequest),
            ("subscribe", json!({"channel": ""}), Code::InvalidChannel),
            ("subscribe", json!({"channel": "bad channel"}), Code::InvalidChannel),
            ("subscribe", json!({"channel": "x".repeat(300)}), Code::InvalidChannel),
            ("subscribe", json!({"channel": "nope:x"}), Code::UnknownNamespace),
            ("subscribe", json!({"channel": "user:someone-else"}), Code::PermissionDenied),
            ("publish", json!({"channel": "news", "data": 1}), Code::PermissionDenied),
            ("publish", json!({"channel": "open:x", "data": "x".repeat(40_000)}), Code::PayloadTooLarge),
            ("unsubscribe", json!({"channel": "open:x"}), Code::NotSubscribed),
            ("unsubscribe", json!({"channel": "user:u1"}), Code::PermissionDenied),
            ("history", json!({"channel": "nohist:x"}), Code::NotAvailable),
            ("presence", json!({"channel": "nohist:x"}), Code::NotAvailable),
            ("presence_stats", json!({"channel": "user:u1"}), Code::NotAvailable),
            (
                "history",
                json!({"channel": "open:x", "since": {"offset": 5, "epoch": "nope"}}),
                Code::UnrecoverablePosition,
            ),
            ("connect", json!({"token": fixture::token("u1")}), Code::AlreadyConnected),
            ("refresh", json!({"token": "garbage"}), Code::InvalidToken),
        ];
        for (method, params, code) in cases {
            let error = c.err(method, params.clone()).await;
            assert_eq!(error.code, code, "{method} {params}: {}", error.message);
            assert!(!error.message.is_empty());
        }
        c.ok("subscribe", json!({"channel": "open:x"})).await;
        assert_eq!(c.err("subscribe", json!({"channel": "open:x"})).await.code, Code::AlreadySubscribed);
        c.ok("ping", serde_json::Value::Null).await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn subscription_limit() {
    let mut config = config();
    config.limits.max_subscriptions_per_connection = 3;
    let server = TestServer::start(config).await;
    let mut c = server.connect("u1", Encoding::Json).await; // user:u1 is the first
    c.ok("subscribe", json!({"channel": "open:a"})).await;
    c.ok("subscribe", json!({"channel": "open:b"})).await;
    let error = c.err("subscribe", json!({"channel": "open:c"})).await;
    assert_eq!(error.code, Code::LimitExceeded);
    server.shutdown().await;
}

#[tokio::test]
async fn rate_limit_answers_too_many_requests_then_recovers() {
    let mut config = config();
    config.limits.commands_per_second = 5;
    config.limits.command_burst = 5;
    let server = TestServer::start(config).await;
    let mut c = server.connect("u1", Encoding::Json).await; // connect took one token
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(c.send("ping", serde_json::Value::Null).await);
    }
    let mut limited = 0;
    for id in ids {
        let reply = c.reply(id).await;
        if let Some(error) = reply.error {
            assert_eq!(error.code, Code::TooManyRequests);
            assert!(error.temporary);
            limited += 1;
        }
    }
    assert!(limited >= 5, "expected most of the burst over the limit, got {limited}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    c.ok("ping", serde_json::Value::Null).await;
    server.shutdown().await;
}

#[tokio::test]
async fn connection_limits_per_node_and_per_user() {
    let mut config = config();
    config.limits.max_connections = 2;
    config.limits.max_connections_per_user = 1;
    let server = TestServer::start(config).await;
    let _first = server.connect("u1", Encoding::Json).await;
    let mut second = server.open(Encoding::Json).await;
    let error = second.err("connect", json!({"token": fixture::token("u1")})).await;
    assert_eq!(error.code, Code::LimitExceeded);
    let (disconnect, _) = second.closed().await;
    assert_eq!(disconnect.unwrap().code, Code::TooManyConnections);
    let _third = server.connect("u2", Encoding::Json).await;
    let mut fourth = server.open(Encoding::Json).await;
    let (disconnect, closed) = fourth.closed().await;
    let disconnect = disconnect.unwrap();
    assert_eq!(disconnect.code, Code::NodeFull);
    assert!(disconnect.reconnect);
    assert_eq!(closed.code(), Some(Code::NodeFull.as_u16()));
    server.shutdown().await;
}

#[tokio::test]
async fn http_errors_are_json() {
    let mut config = config();
    config.limits.allowed_origins = vec!["https://app.example".into()];
    let server = TestServer::start(config).await;
    let mut request = server.url().into_client_request().unwrap();
    request.headers_mut().insert("Origin", HeaderValue::from_static("https://evil.example"));
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
            let body: serde_json::Value =
                serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "origin_not_allowed");
        }
        other => panic!("expected 403, got {other:?}"),
    }
    let mut request = server.url().into_client_request().unwrap();
    request.headers_mut().insert("Origin", HeaderValue::from_static("https://app.example"));
    let mut allowed = fixture::Client::open(request, Encoding::Json).await;
    allowed.ok("connect", json!({"token": fixture::token("u1")})).await;
    let (status, body) = server.http_get("/nope").await;
    assert_eq!(status, 404);
    assert!(body.contains("not_found"));
    server.shutdown().await;
}
