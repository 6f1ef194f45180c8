//! Every command in both encodings against a real node over TCP.

#![allow(clippy::unwrap_used, missing_docs)]

mod fixture;

use fixture::{config, TestServer};
use serde_json::json;
use switchboard_protocol::{push::Push, Code, Encoding};

async fn every_command(encoding: Encoding) {
    let server = TestServer::start(config()).await;
    let mut alice = server.open(encoding).await;
    let connected = alice.ok("connect", json!({"token": fixture::token("alice")})).await;
    assert_eq!(connected["user"], "alice");
    assert_eq!(connected["node"], server.node.id.as_str());
    assert_eq!(connected["subscriptions"][0]["channel"], "user:alice");
    assert!(connected["expires_at"].as_u64().is_some());

    assert_eq!(alice.ok("ping", serde_json::Value::Null).await, json!({}));

    let subscribed = alice.ok("subscribe", json!({"channel": "chat:lobby"})).await;
    assert_eq!(subscribed["channel"], "chat:lobby");
    match alice.push().await {
        Push::Join(join) => assert_eq!(join.client.client, connected["client"].as_str().unwrap(), "own join"),
        other => panic!("expected own join, got {other:?}"),
    }
    assert_eq!(subscribed["offset"], 0);
    let epoch = subscribed["epoch"].as_str().unwrap().to_string();

    let mut bob = server.connect("bob", encoding).await;
    bob.ok("subscribe", json!({"channel": "chat:lobby"})).await;
    match alice.push().await {
        Push::Join(join) => assert_eq!(join.client.user, "bob"),
        other => panic!("expected join, got {other:?}"),
    }

    let published = bob
        .ok(
            "publish",
            json!({"channel": "chat:lobby", "event": "msg", "data": {"text": "hi", "n": [1, 2.5, null]}}),
        )
        .await;
    assert_eq!(published, json!({"offset": 1, "epoch": epoch}));
    let publication = alice.publication().await;
    assert_eq!(publication.channel, "chat:lobby");
    assert_eq!(publication.offset, Some(1));
    assert_eq!(publication.epoch, None, "the subscribe reply told the epoch (protocol §5.1.1)");
    assert_eq!(publication.event.as_deref(), Some("msg"));
    assert_eq!(publication.data, json!({"text": "hi", "n": [1, 2.5, null]}));
    assert_eq!(publication.from.as_ref().unwrap().user, "bob");
    assert!(publication.ts > 0);

    let typing =
        bob.ok("publish", json!({"channel": "chat:lobby", "data": "typing", "ephemeral": true})).await;
    assert_eq!(typing, json!({}));
    let publication = alice.publication().await;
    assert_eq!((publication.offset, publication.epoch), (None, None));

    let presence = alice.ok("presence", json!({"channel": "chat:lobby"})).await;
    let mut users: Vec<&str> =
        presence["clients"].as_array().unwrap().iter().map(|c| c["user"].as_str().unwrap()).collect();
    users.sort_unstable();
    assert_eq!(users, ["alice", "bob"]);
    assert_eq!(
        alice.ok("presence_stats", json!({"channel": "chat:lobby"})).await,
        json!({"clients": 2, "users": 2})
    );

    let history = alice.ok("history", json!({"channel": "chat:lobby"})).await;
    assert_eq!(history["offset"], 1);
    assert_eq!(history["publications"].as_array().unwrap().len(), 1, "ephemeral is not stored");
    assert_eq!(history["publications"][0]["data"]["text"], "hi");

    let refreshed = alice.ok("refresh", json!({"token": fixture::token("alice")})).await;
    assert!(refreshed["expires_at"].as_u64().is_some());

    assert_eq!(bob.ok("unsubscribe", json!({"channel": "chat:lobby"})).await, json!({}));
    match alice.push().await {
        Push::Leave(leave) => assert_eq!(leave.client.user, "bob"),
        other => panic!("expected leave, got {other:?}"),
    }
    assert_eq!(
        alice.ok("presence_stats", json!({"channel": "chat:lobby"})).await,
        json!({"clients": 1, "users": 1})
    );
    server.shutdown().await;
}

#[tokio::test]
async fn every_command_in_json() {
    every_command(Encoding::Json).await;
}

#[tokio::test]
async fn every_command_in_msgpack() {
    every_command(Encoding::MsgPack).await;
}

#[tokio::test]
async fn json_and_msgpack_subscribers_receive_the_same_publication() {
    let server = TestServer::start(config()).await;
    let mut json_client = server.connect("j", Encoding::Json).await;
    let mut msgpack_client = server.connect("m", Encoding::MsgPack).await;
    json_client.ok("subscribe", json!({"channel": "news"})).await;
    msgpack_client.ok("subscribe", json!({"channel": "news"})).await;
    let mut publisher = server.connect("p", Encoding::Json).await;
    publisher.ok("subscribe", json!({"channel": "open:x"})).await;
    // `news` is in the default namespace, which does not allow client publishing...
    let refused = publisher.err("publish", json!({"channel": "news", "data": 1})).await;
    assert_eq!(refused.code, Code::PermissionDenied);
    // ...so publish through the broker, as a backend would.
    server.backend_publish("news", "tally", json!({"votes": 42, "quorum": 0.61})).await;
    let a = json_client.publication().await;
    let b = msgpack_client.publication().await;
    assert_eq!(a, b);
    assert_eq!(a.data, json!({"votes": 42, "quorum": 0.61}));
    server.shutdown().await;
}

#[tokio::test]
async fn personal_channel_reaches_every_device_of_one_user_only() {
    let server = TestServer::start(config()).await;
    let mut phone = server.connect("u42", Encoding::Json).await;
    let mut laptop = server.connect("u42", Encoding::MsgPack).await;
    let mut other = server.connect("u7", Encoding::Json).await;
    let denied = other.err("subscribe", json!({"channel": "user:u42"})).await;
    assert_eq!(denied.code, Code::PermissionDenied);
    server
        .backend_publish("user:u42", "notification", json!({"priority": "high", "text": "KYC approved"}))
        .await;
    assert_eq!(phone.publication().await.data["text"], "KYC approved");
    assert_eq!(laptop.publication().await.data["text"], "KYC approved");
    other.silent_for(std::time::Duration::from_millis(200)).await;
    server.shutdown().await;
}

#[tokio::test]
async fn params_may_be_omitted_or_empty() {
    let server = TestServer::start(config()).await;
    let mut client = server.connect("u1", Encoding::Json).await;
    for frame in [
        json!({"id": 100, "method": "ping"}),
        json!({"id": 101, "method": "ping", "params": {}}),
        json!({"id": 102, "method": "ping", "params": null}),
    ] {
        let id = frame["id"].as_u64().unwrap();
        client.send_value(&frame).await;
        assert_eq!(client.reply(id).await.result, Some(json!({})));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn first_offered_subprotocol_wins() {
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue};
    let server = TestServer::start(config()).await;
    for (offer, expected) in [
        ("switchboard.v1.msgpack, switchboard.v1.json", Encoding::MsgPack),
        ("switchboard.v1.json, switchboard.v1.msgpack", Encoding::Json),
        ("other, switchboard.v1.msgpack", Encoding::MsgPack),
    ] {
        let mut request = server.url().into_client_request().unwrap();
        request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(offer));
        let (ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
        assert_eq!(response.headers()["sec-websocket-protocol"], expected.subprotocol());
        drop(ws);
    }
    server.shutdown().await;
}
