//! The holes a hostile tester found (issue 11), each kept closed by a test: payloads that
//! cannot be re-encoded, per-connection memory, state left by reads, slowloris, and
//! commands waiting on a Redis that is known to be down.

#![allow(clippy::unwrap_used, missing_docs)]

mod fixture;

use std::{
    io::{Read, Write},
    net::TcpStream as StdTcpStream,
    path::Path,
    time::{Duration, Instant},
};

use fixture::{cluster, config, TestServer, WAIT};
use futures_util::SinkExt;
use serde_json::{json, Value};
use switchboard_gateway::config::NamespaceConfig;
use switchboard_protocol::{Code, Encoding};
use switchboard_testkit::{Gateway, Persistence, RedisServer};
use tokio_tungstenite::tungstenite::Message;

/// `levels` arrays around a number: `[[1]]` is 2 levels.
fn nested(levels: usize) -> Value {
    let mut value = json!(1);
    for _ in 0..levels {
        value = json!([value]);
    }
    value
}

#[tokio::test]
async fn one_nesting_limit_on_every_path_and_accepted_payloads_reach_every_format() {
    let mut config = config();
    config.api.keys = vec!["k".into()];
    let server = TestServer::start(config).await;
    let mut json_sub = server.connect("j", Encoding::Json).await;
    let mut packed_sub = server.connect("m", Encoding::MsgPack).await;
    for sub in [&mut json_sub, &mut packed_sub] {
        sub.ok("subscribe", json!({"channel": "open:deep"})).await;
    }
    for encoding in Encoding::ALL {
        let mut publisher = server.connect("p", encoding).await;
        let error = publisher.err("publish", json!({"channel": "open:deep", "data": nested(65)})).await;
        assert_eq!(error.code, Code::BadRequest, "{encoding:?}: {}", error.message);
        assert!(error.message.contains("nested"), "{}", error.message);
        publisher.ok("publish", json!({"channel": "open:deep", "data": nested(64)})).await;
        // Deeper than any decoder allows: a protocol error, the same in both encodings.
        publisher.send("publish", json!({"channel": "open:deep", "data": nested(200)})).await;
        let (_, closed) = publisher.closed().await;
        assert_eq!(closed.code(), Some(Code::ProtocolError.as_u16()), "{encoding:?}");
    }
    let addr = server.addr;
    let body = serde_json::to_vec(&json!({"channel": "open:deep", "data": nested(65)})).unwrap();
    let (status, response) = tokio::task::spawn_blocking(move || {
        switchboard_testkit::http(addr, "POST", "/api/v1/publish", &[("X-API-Key", "k")], Some(&body))
    })
    .await
    .unwrap();
    assert_eq!(status, 400, "{response}");
    assert!(response.contains("nested"), "{response}");
    // What was accepted reaches both formats, live and from history.
    for sub in [&mut json_sub, &mut packed_sub] {
        for offset in 1..=2 {
            let publication = sub.publication().await;
            assert_eq!(publication.offset, Some(offset));
            assert_eq!(publication.data, nested(64));
            assert!(publication.error.is_none());
        }
        let history = sub.ok("history", json!({"channel": "open:deep"})).await;
        assert_eq!(history["publications"].as_array().unwrap().len(), 2);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn history_is_paged_to_the_outbound_budget() {
    let mut config = config();
    config.limits.outbound_queue_bytes = 64 * 1024;
    config.limits.max_payload_bytes = 8 * 1024;
    config.limits.commands_per_second = 10_000;
    config.limits.command_burst = 10_000;
    config.namespaces.push(NamespaceConfig {
        name: "big".into(),
        publish: true,
        history_size: 100,
        ..NamespaceConfig::default()
    });
    let server = TestServer::start(config).await;
    let mut client = server.connect("u1", Encoding::Json).await;
    let pad = "x".repeat(6000);
    for n in 1..=40 {
        client.ok("publish", json!({"channel": "big:log", "data": {"n": n, "pad": pad}})).await;
    }
    let mut seen = Vec::new();
    let mut since = None;
    for _ in 0..40 {
        let mut params = json!({"channel": "big:log", "limit": 40});
        if let Some(position) = since.take() {
            params["since"] = position;
        }
        let id = client.send("history", params).await;
        let reply = client.reply(id).await;
        let page = reply.result.expect("history");
        let size = serde_json::to_vec(&json!({"id": id, "result": page})).unwrap().len();
        assert!(size <= 64 * 1024, "a reply of {size} bytes is over the outbound budget");
        let publications = page["publications"].as_array().unwrap();
        seen.extend(publications.iter().map(|p| p["offset"].as_u64().unwrap()));
        if page["more"] != json!(true) {
            break;
        }
        let last = publications.last().unwrap();
        // Publications in a history reply are in the result's epoch (protocol §4.7).
        assert_eq!(last.get("epoch"), None);
        since = Some(json!({"offset": last["offset"], "epoch": page["epoch"]}));
    }
    assert_eq!(seen, (1..=40).collect::<Vec<u64>>(), "every publication once, in order, over several pages");
    server.shutdown().await;
}

/// A node process with a `big` namespace keeping 1000 publications, and the given
/// environment on top of permissive rate limits.
fn node_with_big_history(broker: &str, env: &[(&str, &str)]) -> Gateway {
    let path = std::env::temp_dir().join(format!("switchboard-hardening-{}.toml", std::process::id()));
    let namespaces = "[[namespaces]]\nname = \"\"\n\n[[namespaces]]\nname = \"big\"\npublish = true\nhistory_size = 1000\n";
    std::fs::write(&path, namespaces).unwrap();
    let mut all = vec![
        ("SWITCHBOARD_AUTH__HMAC_SECRET", fixture::SECRET),
        ("SWITCHBOARD_LIMITS__COMMANDS_PER_SECOND", "1000000"),
        ("SWITCHBOARD_LIMITS__COMMAND_BURST", "1000000"),
    ];
    all.extend_from_slice(env);
    let args = ["--broker", broker, "--config", path.to_str().unwrap()];
    Gateway::start(Path::new(cluster::BIN), &args, &all)
}

/// [`node_with_big_history`], started and ready, from async code.
async fn started(broker: String, env: Vec<(&'static str, &'static str)>) -> Gateway {
    tokio::task::spawn_blocking(move || {
        let node = node_with_big_history(&broker, &env);
        node.wait_ready();
        node
    })
    .await
    .unwrap()
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    kib * 1024
}

/// Eight connections with small receive buffers ask for 30 MB of history ten times each
/// and never read. Each must be closed as a slow consumer, and the node must not hold
/// more than the outbound budget (1 MiB) plus a small constant for each.
#[tokio::test]
async fn connections_that_stop_reading_are_closed_and_cost_at_most_their_budget() {
    let _serial = cluster::SERIAL.lock().await;
    let node = started("memory://".into(), vec![("SWITCHBOARD_LIMITS__OUTBOUND_WAIT_MS", "2000")]).await;
    let pid = node.pid().expect("pid");
    let mut publisher = fixture::connect_url(&node.ws_url(), "pub", Encoding::Json).await;
    let pad = "x".repeat(30_000);
    let mut ids = Vec::new();
    for n in 0..1000 {
        ids.push(
            publisher.send("publish", json!({"channel": "big:feed", "data": {"n": n, "pad": pad}})).await,
        );
    }
    for id in ids {
        assert!(publisher.reply(id).await.error.is_none());
    }
    let baseline = rss_bytes(pid);
    let mut silent = Vec::new();
    for n in 0..8 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(node.addr()).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(node.ws_url(), stream).await.unwrap();
        let token = fixture::token(&format!("silent{n}"));
        let connect = json!({"id": 1, "method": "connect", "params": {"token": token}});
        ws.send(Message::Text(connect.to_string().into())).await.unwrap();
        for id in 2..12 {
            let history =
                json!({"id": id, "method": "history", "params": {"channel": "big:feed", "limit": 1000}});
            ws.send(Message::Text(history.to_string().into())).await.unwrap();
        }
        silent.push(ws);
    }
    let closed_as_slow = || node.metric("switchboard_slow_consumer_disconnects_total").unwrap_or(0.0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut peak = baseline;
    while closed_as_slow() < 8.0 {
        assert!(Instant::now() < deadline, "only {} of 8 closed as slow consumers", closed_as_slow());
        peak = peak.max(rss_bytes(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let growth = peak.saturating_sub(baseline);
    println!("RSS: baseline {} MiB, peak {} MiB, growth {} KiB", baseline >> 20, peak >> 20, growth >> 10);
    let bound = 8 * (1024 * 1024 + 4 * 1024 * 1024);
    assert!(growth < bound, "RSS grew by {} MiB for 8 non-reading connections", growth >> 20);
    // The publisher, which reads, is unaffected.
    publisher.ok("ping", Value::Null).await;
    drop(silent);
}

/// `history` of 100 000 distinct channels never published to, spread over `readers` (the
/// node serves each connection's commands in order; several keep both cores busy), 1 000
/// in flight per connection. Names are `big:never-<tag>-…`. Returns the connections.
async fn read_100_000_never_published_channels(
    readers: Vec<fixture::Client>,
    tag: &str,
) -> Vec<fixture::Client> {
    let per_reader = 100_000 / readers.len();
    let mut tasks = Vec::new();
    for (reader, mut connection) in readers.into_iter().enumerate() {
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            for batch in 0..per_reader.div_ceil(1000) {
                let mut ids = Vec::new();
                for n in 0..1000 {
                    let channel = format!("big:never-{tag}-{reader}-{batch}-{n}");
                    ids.push(connection.send("history", json!({"channel": channel, "limit": 0})).await);
                }
                for id in ids {
                    assert!(connection.reply(id).await.error.is_none());
                }
            }
            connection
        }));
    }
    let mut done = Vec::new();
    for task in tasks {
        done.push(task.await.unwrap());
    }
    done
}

/// Reading 100 000 channels that were never published to leaves nothing in Redis once
/// `broker.unpublished_stream_ttl_secs` passed.
#[tokio::test]
async fn reads_of_unpublished_channels_leave_no_lasting_state_in_redis() {
    let _serial = cluster::SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let node = started(redis.url(), vec![("SWITCHBOARD_BROKER__UNPUBLISHED_STREAM_TTL_SECS", "1")]).await;
    let mut client = fixture::connect_url(&node.ws_url(), "reader", Encoding::Json).await;
    client.ok("publish", json!({"channel": "big:kept", "data": 1})).await;
    let dbsize = || redis.cli(&["DBSIZE"]).trim().parse::<u64>().unwrap();
    let used_memory = || {
        let info = redis.cli(&["INFO", "memory"]);
        info.lines().find_map(|l| l.strip_prefix("used_memory:")).unwrap().trim().parse::<u64>().unwrap()
    };
    let (keys_before, memory_before) = (dbsize(), used_memory());
    let mut readers = Vec::new();
    for reader in 0..4 {
        readers.push(fixture::connect_url(&node.ws_url(), &format!("reader{reader}"), Encoding::Json).await);
    }
    read_100_000_never_published_channels(readers, "r").await;
    // A fresh connection: the first one sat unread through the reads, past its heartbeat.
    let mut client = fixture::connect_url(&node.ws_url(), "reader", Encoding::Json).await;
    client.ok("subscribe", json!({"channel": "big:never-sub"})).await;
    client.ok("unsubscribe", json!({"channel": "big:never-sub"})).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while dbsize() > keys_before {
        assert!(Instant::now() < deadline, "{} keys left of {keys_before}", dbsize());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let grown = used_memory().saturating_sub(memory_before);
    assert!(grown < 1024 * 1024, "Redis kept {grown} bytes after the reads expired");
    // The published channel kept its stream and epoch.
    let history = client.ok("history", json!({"channel": "big:kept"})).await;
    assert_eq!(history["publications"].as_array().unwrap().len(), 1);
}

/// The same with the embedded broker: 100 000 reads of never-published channels leave no
/// stream behind once the sweeper ran (`switchboard_memory_streams` back at its baseline),
/// and a second round of reads leaves RSS where the first left it (what the allocator
/// keeps for reuse is not state that grows).
#[tokio::test]
async fn reads_of_unpublished_channels_leave_no_lasting_state_in_the_memory_broker() {
    let _serial = cluster::SERIAL.lock().await;
    let node =
        started("memory://".into(), vec![("SWITCHBOARD_BROKER__UNPUBLISHED_STREAM_TTL_SECS", "1")]).await;
    let pid = node.pid().expect("pid");
    let mut readers = Vec::new();
    for reader in 0..4 {
        readers.push(fixture::connect_url(&node.ws_url(), &format!("reader{reader}"), Encoding::Json).await);
    }
    readers[0].ok("publish", json!({"channel": "big:kept", "data": 1})).await;
    let streams = || node.metric("switchboard_memory_streams").unwrap_or(-1.0);
    let swept_to = |count: f64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        async move {
            // The sweeper runs every 10 s: wait for a sweep after the reads' TTL passed.
            tokio::time::sleep(Duration::from_secs(2)).await;
            while streams() != count {
                assert!(Instant::now() < deadline, "{} streams left, {count} expected", streams());
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    // Only the published channel remains (the readers' personal channels were only read).
    let baseline_streams = 1.0;
    swept_to(baseline_streams).await;
    let mut residual = Vec::new();
    for round in 0..2 {
        readers = read_100_000_never_published_channels(readers, &round.to_string()).await;
        swept_to(baseline_streams).await;
        // Let the allocator's background thread return what it will.
        tokio::time::sleep(Duration::from_secs(12)).await;
        residual.push(rss_bytes(pid));
        // Keep the readers' connections alive across the pause (heartbeat).
        for connection in &mut readers {
            connection.ok("ping", Value::Null).await;
        }
    }
    println!("RSS after each round of 100 000 reads: {} KiB, {} KiB", residual[0] >> 10, residual[1] >> 10);
    assert!(
        residual[1] <= residual[0] + 1024 * 1024,
        "RSS grew from {} KiB to {} KiB across two rounds of reads",
        residual[0] >> 10,
        residual[1] >> 10
    );
    let history = readers[0].ok("history", json!({"channel": "big:kept"})).await;
    assert_eq!(history["publications"].as_array().unwrap().len(), 1);
}

/// Deeper bodies than the gateways can re-encode are refused by the Redis Function for
/// every caller, and what it accepts reaches MessagePack subscribers and history.
#[tokio::test]
async fn the_redis_function_refuses_bodies_nested_past_the_ceiling() {
    let _serial = cluster::SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let node = started(redis.url(), Vec::new()).await;
    let mut subscriber = fixture::connect_url(&node.ws_url(), "m", Encoding::MsgPack).await;
    subscriber.ok("subscribe", json!({"channel": "big:raw"})).await;
    let refused = cluster::redis_cli_publish(&redis, "big:raw", &json!({"data": nested(110)}), 1000);
    assert!(refused.contains("nested at most"), "{refused}");
    let accepted = cluster::redis_cli_publish(&redis, "big:raw", &json!({"data": nested(100)}), 1000);
    assert!(!accepted.contains("ERR"), "{accepted}");
    let publication = subscriber.publication().await;
    assert_eq!((publication.offset, publication.data), (Some(1), nested(100)));
    let history = subscriber.ok("history", json!({"channel": "big:raw"})).await;
    assert_eq!(history["publications"][0]["data"], nested(100));
}

/// While Redis is known to be down, commands are answered with 115 at once, not after
/// `broker.command_timeout_ms` (set to a minute here, far past the test's reply wait).
#[tokio::test]
async fn commands_fail_fast_while_redis_is_down() {
    let _serial = cluster::SERIAL.lock().await;
    let mut redis = RedisServer::start(Persistence::None);
    let node = started(redis.url(), vec![("SWITCHBOARD_BROKER__COMMAND_TIMEOUT_MS", "60000")]).await;
    let mut client = fixture::connect_url(&node.ws_url(), "u1", Encoding::Json).await;
    redis.stop();
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.get("/readyz").0 != 503 {
        assert!(Instant::now() < deadline, "node stayed ready without Redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (method, params) in [
        ("publish", json!({"channel": "big:x", "data": 1})),
        ("subscribe", json!({"channel": "big:y"})),
        ("history", json!({"channel": "big:x"})),
    ] {
        // The fixture gives up on a reply after `WAIT` (10 s), far below the 60 s command
        // timeout: a command that waited for Redis fails here as "no frame in time".
        let error = client.err(method, params).await;
        assert_eq!(error.code, Code::Unavailable, "{method}: {}", error.message);
    }
}

/// Slowloris: connections that never finish their request headers are dropped after
/// `limits.handshake_timeout_ms`, and beyond `limits.max_pending_handshakes` new ones are
/// closed at once; legitimate clients get in once the slow ones are gone.
#[tokio::test]
async fn half_open_upgrades_are_bounded_in_number_and_time() {
    let mut config = config();
    config.limits.max_pending_handshakes = 8;
    config.limits.handshake_timeout_ms = 60_000;
    let server = TestServer::start(config).await;
    let addr = server.addr;
    let partial = b"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n";
    let node = server.node.clone();
    let held = tokio::task::spawn_blocking(move || {
        let mut held = Vec::new();
        for _ in 0..8 {
            let mut socket = StdTcpStream::connect(addr).unwrap();
            socket.write_all(partial).unwrap();
            held.push(socket);
        }
        let wait = Instant::now() + WAIT;
        while node.metrics.pending_handshakes.get() < 8 {
            assert!(Instant::now() < wait, "the slow connections were not accepted");
            std::thread::sleep(Duration::from_millis(10));
        }
        // The pending slots are taken: the next connection is closed at once, long
        // before the minute-long header timeout.
        let mut extra = StdTcpStream::connect(addr).unwrap();
        extra.set_read_timeout(Some(WAIT)).unwrap();
        let _ = extra.write_all(partial);
        match extra.read(&mut [0u8; 64]) {
            Ok(0) => {}
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("a connection over the limit was not closed: {other:?}"),
        }
        held
    })
    .await
    .unwrap();
    let dropped = server.node.metrics.handshakes_dropped.with_label_values(&["limit"]).get();
    assert!(dropped >= 1, "no connection was refused over the limit");
    assert_eq!(server.node.metrics.pending_handshakes.get(), 8);
    drop(held);
    let deadline = Instant::now() + WAIT;
    while server.node.metrics.pending_handshakes.get() > 0 {
        assert!(Instant::now() < deadline, "closed connections still count as pending");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut client = server.connect("u1", Encoding::Json).await;
    client.ok("ping", Value::Null).await;
    server.shutdown().await;

    // A short header timeout drops connections that stall in their headers.
    let mut config = fixture::config();
    config.limits.handshake_timeout_ms = 300;
    let server = TestServer::start(config).await;
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        for _ in 0..3 {
            let mut socket = StdTcpStream::connect(addr).unwrap();
            socket.write_all(partial).unwrap();
            socket.set_read_timeout(Some(WAIT)).unwrap();
            let mut response = Vec::new();
            let ended = socket.read_to_end(&mut response);
            assert!(ended.is_ok(), "a stalled handshake was not dropped: {ended:?}");
        }
    })
    .await
    .unwrap();
    assert_eq!(server.node.metrics.handshakes_dropped.with_label_values(&["timeout"]).get(), 3);
    server.shutdown().await;
}
