//! Delivery semantics on the embedded broker: order, recovery without gaps or duplicates,
//! explicit `recovered: false`, slow consumers, heartbeat, graceful shutdown.

#![allow(clippy::unwrap_used, missing_docs)]

mod fixture;

use std::time::Duration;

use fixture::{config, Client, TestServer};
use futures_util::StreamExt;
use serde_json::json;
use switchboard_protocol::{Code, Encoding};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

async fn publish_n(client: &mut Client, channel: &str, range: std::ops::RangeInclusive<u64>) {
    for n in range {
        client.ok("publish", json!({"channel": channel, "data": {"n": n}})).await;
    }
}

async fn expect_offsets(client: &mut Client, range: std::ops::RangeInclusive<u64>) {
    for expected in range {
        let publication = client.publication().await;
        assert_eq!(publication.offset, Some(expected));
        assert_eq!(publication.data["n"], expected);
    }
}

#[tokio::test]
async fn recovery_is_gap_free_across_a_reconnect() {
    let server = TestServer::start(config()).await;
    let mut publisher = server.connect("pub", Encoding::Json).await;
    for encoding in [Encoding::Json, Encoding::MsgPack] {
        let channel = format!("open:{}", encoding.name());
        let mut client = server.connect("sub", encoding).await;
        let epoch = client.ok("subscribe", json!({"channel": channel})).await["epoch"].clone();
        publish_n(&mut publisher, &channel, 1..=3).await;
        expect_offsets(&mut client, 1..=3).await;
        drop(client);
        publish_n(&mut publisher, &channel, 4..=8).await;
        let mut client = server.connect("sub", encoding).await;
        let reply = client
            .ok("subscribe", json!({"channel": channel, "recover": {"offset": 3, "epoch": epoch}}))
            .await;
        assert_eq!(reply["recovered"], true);
        assert_eq!(reply["missed"], 5);
        assert_eq!(reply["offset"], 8);
        expect_offsets(&mut client, 4..=8).await;
        publish_n(&mut publisher, &channel, 9..=9).await;
        expect_offsets(&mut client, 9..=9).await;
        // Recovering from the newest position replays nothing.
        let mut again = server.connect("sub", encoding).await;
        let reply = again
            .ok("subscribe", json!({"channel": channel, "recover": {"offset": 9, "epoch": epoch}}))
            .await;
        assert_eq!((reply["recovered"].clone(), reply["missed"].clone()), (json!(true), json!(0)));
        publish_n(&mut publisher, &channel, 10..=10).await;
        expect_offsets(&mut again, 10..=10).await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn recovery_while_publishing_has_no_gap_and_no_duplicate() {
    let mut config = config();
    config.namespaces.iter_mut().find(|ns| ns.name == "open").unwrap().history_size = 1000;
    config.limits.commands_per_second = 100_000;
    config.limits.command_burst = 100_000;
    let server = TestServer::start(config).await;
    let mut first = server.connect("sub", Encoding::Json).await;
    let epoch = first.ok("subscribe", json!({"channel": "open:race"})).await["epoch"].clone();
    let mut publisher = server.connect("pub", Encoding::Json).await;
    publish_n(&mut publisher, "open:race", 1..=20).await;
    expect_offsets(&mut first, 1..=20).await;
    drop(first);
    let background = tokio::spawn(async move {
        publish_n(&mut publisher, "open:race", 21..=400).await;
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut client = server.connect("sub", Encoding::Json).await;
    let reply = client
        .ok("subscribe", json!({"channel": "open:race", "recover": {"offset": 20, "epoch": epoch}}))
        .await;
    assert_eq!(reply["recovered"], true);
    background.await.unwrap();
    expect_offsets(&mut client, 21..=400).await;
    client.silent_for(Duration::from_millis(200)).await;
    server.shutdown().await;
}

#[tokio::test]
async fn not_recovered_when_trimmed_or_epoch_changed() {
    let server = TestServer::start(config()).await; // open: history_size 10
    let mut publisher = server.connect("pub", Encoding::Json).await;
    let mut client = server.connect("sub", Encoding::Json).await;
    let epoch = client.ok("subscribe", json!({"channel": "open:t"})).await["epoch"].clone();
    publish_n(&mut publisher, "open:t", 1..=3).await;
    expect_offsets(&mut client, 1..=3).await;
    drop(client);
    publish_n(&mut publisher, "open:t", 4..=20).await;
    let mut client = server.connect("sub", Encoding::Json).await;
    let reply =
        client.ok("subscribe", json!({"channel": "open:t", "recover": {"offset": 3, "epoch": epoch}})).await;
    assert_eq!(reply["recovered"], false, "offsets 4..=10 were trimmed");
    assert_eq!(reply["offset"], 20);
    assert!(reply.get("missed").is_none());
    publish_n(&mut publisher, "open:t", 21..=21).await;
    expect_offsets(&mut client, 21..=21).await;
    server.shutdown().await;

    // A restarted single node has new epochs: positions from before cannot be trusted.
    let server = TestServer::start(config()).await;
    let mut client = server.connect("sub", Encoding::Json).await;
    let reply =
        client.ok("subscribe", json!({"channel": "open:t", "recover": {"offset": 20, "epoch": epoch}})).await;
    assert_eq!(reply["recovered"], false);
    assert_ne!(reply["epoch"], epoch);
    server.shutdown().await;
}

#[tokio::test]
async fn personal_channel_recovers_at_connect() {
    let server = TestServer::start(config()).await;
    let mut device = server.open(Encoding::Json).await;
    let connected = device.ok("connect", json!({"token": fixture::token("u9")})).await;
    let epoch = connected["subscriptions"][0]["epoch"].as_str().unwrap().to_string();
    server.backend_publish("user:u9", "notification", json!({"n": 1})).await;
    let first = device.publication().await;
    assert_eq!((first.offset, first.epoch), (Some(1), None), "the connect reply told the epoch");
    drop(device);
    for n in 2..=4 {
        server.backend_publish("user:u9", "notification", json!({"n": n})).await;
    }
    let mut device = server.open(Encoding::Json).await;
    let connected = device
        .ok("connect", json!({"token": fixture::token("u9"), "recover": {"offset": 1, "epoch": epoch}}))
        .await;
    assert_eq!(connected["subscriptions"][0]["recovered"], true);
    assert_eq!(connected["subscriptions"][0]["missed"], 3);
    expect_offsets(&mut device, 2..=4).await;
    server.shutdown().await;
}

#[tokio::test]
async fn slow_consumer_is_disconnected_and_others_keep_receiving() {
    let mut config = config();
    config.limits.outbound_queue_bytes = 64 * 1024;
    config.limits.max_payload_bytes = 64 * 1024;
    config.limits.max_message_bytes = 128 * 1024;
    config.limits.commands_per_second = 100_000;
    config.limits.command_burst = 100_000;
    let server = TestServer::start(config).await;
    let mut fast = server.connect("fast", Encoding::Json).await;
    fast.ok("subscribe", json!({"channel": "open:feed"})).await;
    let mut slow = server.connect("slow", Encoding::Json).await;
    slow.ok("subscribe", json!({"channel": "open:feed"})).await;
    let mut publisher = server.connect("pub", Encoding::Json).await;
    let payload = "x".repeat(16 * 1024);
    let total = 1500u64; // ~24 MiB: more than loopback socket buffers plus the queue
    let fast_reader = tokio::spawn(async move {
        for expected in 1..=total {
            let publication = fast.publication().await;
            assert_eq!(publication.offset, Some(expected));
        }
    });
    // The slow client reads nothing until the server has decided to close it, then reads
    // at once: the server gives its final disconnect push and close frame 2 s to be
    // written, which a client that starts reading then leaves ample time for.
    let node = server.node.clone();
    let slow_reader = tokio::spawn(async move {
        fixture::eventually("the slow consumer is closed", || {
            let node = node.clone();
            async move { node.metrics.slow_consumers.get() >= 1 }
        })
        .await;
        slow.closed().await
    });
    for n in 1..=total {
        publisher.ok("publish", json!({"channel": "open:feed", "data": {"n": n, "pad": payload}})).await;
    }
    tokio::time::timeout(Duration::from_secs(60), fast_reader).await.unwrap().unwrap();
    let (disconnect, closed) =
        tokio::time::timeout(Duration::from_secs(60), slow_reader).await.unwrap().unwrap();
    let disconnect = disconnect.expect("a disconnect push before the close");
    assert_eq!((disconnect.code, disconnect.reconnect), (Code::SlowConsumer, true));
    assert_eq!(closed.code(), Some(Code::SlowConsumer.as_u16()));
    let metrics = server.http_get("/metrics").await.1;
    assert!(metrics.contains("switchboard_slow_consumer_disconnects_total 1"), "{metrics}");
    assert!(metrics.contains("switchboard_disconnects_total{code=\"slow_consumer\"} 1"), "{metrics}");
    server.shutdown().await;
}

#[tokio::test]
async fn heartbeat_closes_silent_connections_and_keeps_live_ones() {
    let mut config = config();
    config.heartbeat.ping_interval_ms = 200;
    config.heartbeat.pong_timeout_ms = 300;
    let server = TestServer::start(config).await;
    // `silent` never writes anything, so it never answers a ping; being a raw socket, it
    // can read the server's close afterwards without provoking a reset.
    let mut silent = fixture::RawSocket::connect(server.addr, "silent").await;
    let mut live = server.connect("live", Encoding::Json).await;
    // `live` reads (and so answers pings automatically) until it saw three pings: 600 ms
    // of pings at least, past the 500 ms after which a silent connection is closed.
    let mut pings = 0;
    while pings < 3 {
        let message = tokio::time::timeout(fixture::WAIT, live.ws.next()).await.expect("a ping in time");
        match message {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("expected server pings, got {other:?}"),
        }
    }
    live.ok("ping", serde_json::Value::Null).await;
    let (disconnect, code) = silent.closed().await;
    assert_eq!(disconnect.expect("a disconnect push").code, Code::HeartbeatTimeout);
    assert_eq!(code, Some(Code::HeartbeatTimeout.as_u16()));
    let metrics = server.http_get("/metrics").await.1;
    assert!(metrics.contains("switchboard_disconnects_total{code=\"heartbeat_timeout\"} 1"), "{metrics}");
    server.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_flushes_queues_then_advises_reconnect() {
    let mut server = TestServer::start(config()).await;
    let mut client = server.connect("sub", Encoding::Json).await;
    client.ok("subscribe", json!({"channel": "open:s"})).await;
    let mut publisher = server.connect("pub", Encoding::Json).await;
    let ids: Vec<u64> = {
        let mut ids = Vec::new();
        for n in 1..=100 {
            ids.push(publisher.send("publish", json!({"channel": "open:s", "data": {"n": n}})).await);
        }
        ids
    };
    publisher.reply(*ids.last().unwrap()).await;
    server.begin_shutdown();
    expect_offsets(&mut client, 1..=100).await;
    let (disconnect, closed) = client.closed().await;
    let disconnect = disconnect.unwrap();
    assert_eq!(disconnect.code, Code::Shutdown);
    assert!(disconnect.reconnect);
    assert!(disconnect.reconnect_after_ms.unwrap() <= 1_000);
    assert_eq!(closed.code(), Some(Code::Shutdown.as_u16()));
    assert!(!server.node.is_ready());
    server.stopped().await;
}

/// Protocol §1.3: while a node drains, an upgrade is refused with HTTP 503 `draining`,
/// before the `Origin` check, and `/readyz` says so.
#[tokio::test]
async fn a_draining_node_refuses_upgrades_with_503() {
    let mut config = config();
    config.limits.allowed_origins = vec!["https://app.example".into()];
    let server = TestServer::start(config).await;
    let mut client = server.connect("held", Encoding::Json).await;
    // The drain as a shutdown starts it, with the listener still serving HTTP.
    server.node.begin_shutdown();
    let (status, body) = fixture::refused_upgrade(&server.url()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("draining")), "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    let mut from_elsewhere = server.url().into_client_request().unwrap();
    from_elsewhere.headers_mut().insert("Origin", "https://evil.example".parse().unwrap());
    let refused = tokio_tungstenite::connect_async(from_elsewhere).await.err();
    match refused {
        Some(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("expected 503, got {other:?}"),
    }
    let (status, body) = server.http_get("/readyz").await;
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, body["ready"].clone(), body["draining"].clone()), (503, json!(false), json!(true)));
    // The connection that was there is told to go.
    let (disconnect, _) = client.closed().await;
    assert_eq!(disconnect.unwrap().code, Code::Shutdown);
    server.shutdown().await;
}
