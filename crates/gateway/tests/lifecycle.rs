//! The lifecycle stream on a cluster of gateway processes: every connect has exactly one
//! disconnect, whether the client closed, the node shut down, or the node was killed
//! with -9 (then another node records it), and subscribes are recorded.

#![allow(clippy::unwrap_used, missing_docs)]

mod fixture;

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use fixture::{
    cluster::{start_node_at, SERIAL},
    connect_url, eventually, Client,
};
use fred::prelude::*;
use serde_json::json;
use switchboard_protocol::Encoding;
use switchboard_testkit::{Gateway, Persistence, RedisServer};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const LIFECYCLE: &[(&str, &str)] =
    &[("SWITCHBOARD_LIFECYCLE__ENABLED", "true"), ("SWITCHBOARD_LIFECYCLE__NODE_TTL_MS", "1500")];

fn start_lifecycle_nodes(redis: &RedisServer, count: usize) -> Vec<Gateway> {
    (0..count).map(|_| start_node_at(redis, "127.0.0.1:0", LIFECYCLE)).collect()
}

/// One stream entry's fields.
type Entry = HashMap<String, String>;

async fn events(redis: &RedisServer) -> Vec<Entry> {
    let client = Builder::from_config(Config::from_url(&redis.url()).unwrap()).build().unwrap();
    client.init().await.unwrap();
    let entries: Vec<(String, Entry)> = client.xrange("sb:{lifecycle}:events", "-", "+", None).await.unwrap();
    client.quit().await.unwrap();
    entries.into_iter().map(|(_, fields)| fields).collect()
}

fn count(events: &[Entry], kind: &str) -> usize {
    events.iter().filter(|e| e["event"] == kind).count()
}

async fn connect_many(node: &Gateway, users: std::ops::Range<usize>) -> Vec<Client> {
    let mut clients = Vec::new();
    for i in users {
        clients.push(connect_url(&node.ws_url(), &format!("u{i}"), Encoding::Json).await);
    }
    clients
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connect_has_exactly_one_disconnect_even_when_a_node_is_killed() {
    let _serial = SERIAL.lock().await;
    // 1 000 client sockets in this process, beside the nodes' own.
    let _ = rlimit::increase_nofile_limit(8192);
    let redis = RedisServer::start(Persistence::None);
    let mut nodes = start_lifecycle_nodes(&redis, 3);
    let mut clients = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        clients.push(connect_many(node, n * 334..((n + 1) * 334).min(1000)).await);
    }
    // Subscribes (some left again) on every node.
    for (n, group) in clients.iter_mut().enumerate() {
        for (i, client) in group.iter_mut().enumerate().take(20) {
            let channel = format!("chat:room-{n}-{i}");
            client.ok("subscribe", json!({"channel": channel})).await;
            if i % 2 == 0 {
                client.ok("unsubscribe", json!({"channel": channel})).await;
            }
        }
    }
    eventually("every connect is recorded", || async { count(&events(&redis).await, "connect") == 1000 })
        .await;

    // Clients on node 0 close (half with a close frame, half vanish); node 1 shuts down
    // gracefully; node 2 is killed.
    for (i, mut client) in clients.remove(0).into_iter().enumerate() {
        if i % 2 == 0 {
            client.send_raw(tokio_tungstenite::tungstenite::Message::Close(None)).await;
        }
    }
    assert!(nodes[1].terminate(), "node 1 exits cleanly");
    nodes[2].kill9();
    eventually("every disconnect is recorded, the killed node's by the survivor", || async {
        count(&events(&redis).await, "disconnect") >= 1000
    })
    .await;
    // Give any duplicate a chance to show up before counting exactly.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(clients);

    let events = events(&redis).await;
    let mut connects: HashMap<&str, &Entry> = HashMap::new();
    let mut disconnects: HashMap<&str, &Entry> = HashMap::new();
    let mut order: HashMap<&str, Vec<&str>> = HashMap::new();
    for event in &events {
        let client = event["client"].as_str();
        order.entry(client).or_default().push(event["event"].as_str());
        let seen = match event["event"].as_str() {
            "connect" => &mut connects,
            "disconnect" => &mut disconnects,
            _ => continue,
        };
        assert!(seen.insert(client, event).is_none(), "two {} events of {client}", event["event"]);
    }
    assert_eq!(connects.len(), 1000);
    let connected: HashSet<&str> = connects.keys().copied().collect();
    let disconnected: HashSet<&str> = disconnects.keys().copied().collect();
    assert_eq!(connected, disconnected, "every connect has exactly one disconnect");
    for (client, kinds) in &order {
        assert_eq!(kinds.first(), Some(&"connect"), "{client}: {kinds:?}");
        assert_eq!(kinds.last(), Some(&"disconnect"), "{client}: {kinds:?}");
    }
    // Who recorded what, and why: the client closed (1000) or vanished (1006), the node
    // shut down (3000), the node died (1006 "node lost", recorded by the survivor).
    let node_of = |client: &str| connects[client]["node"].clone();
    let node_ids: Vec<String> = {
        let mut ids: Vec<String> = connects.values().map(|c| c["node"].clone()).collect();
        ids.sort();
        ids.dedup();
        ids
    };
    assert_eq!(node_ids.len(), 3);
    let survivor_id = connects.values().find(|c| c["user"] == "u0").unwrap()["node"].clone();
    let mut codes_by_node: HashMap<String, HashSet<String>> = HashMap::new();
    for (client, disconnect) in &disconnects {
        assert_eq!(disconnect["user"], connects[client]["user"]);
        codes_by_node.entry(node_of(client)).or_default().insert(disconnect["code"].clone());
        if disconnect["reason"] == "node lost" {
            assert_eq!(disconnect["code"], "1006");
            assert_eq!(disconnect["reaped_by"], survivor_id, "the only node left reaped it");
        }
    }
    let mut codes: Vec<Vec<String>> =
        codes_by_node.values().map(|c| c.iter().cloned().collect()).collect::<Vec<_>>();
    codes.sort();
    for codes in &mut codes {
        codes.sort();
    }
    codes.sort();
    assert_eq!(codes, [vec!["1000", "1006"], vec!["1006"], vec!["3000"]]);
    let lost = disconnects.values().filter(|d| d["reason"] == "node lost").count();
    assert_eq!(lost, 332, "the killed node's connections");
    assert_eq!(nodes[0].metric("switchboard_lifecycle_reaped_total"), Some(332.0));
    // Subscribes and explicit unsubscribes, 20 and 10 per node; the personal channel is
    // implied by the connect.
    assert_eq!(count(&events, "subscribe"), 60);
    assert_eq!(count(&events, "unsubscribe"), 30);
    assert!(events.iter().all(|e| !e.get("channel").is_some_and(|c| c.starts_with("user:"))));
    // A backend's view through the publisher crate's consumer: the same events, in the
    // same order, and nobody online at the end.
    let online = consumed_online_users(&redis, events.len()).await;
    assert!(online.is_empty(), "still online: {online:?}");
    // Nothing is left registered: the killed node's hash was reaped.
    for id in &node_ids {
        assert_eq!(redis.cli(&["HLEN", &format!("sb:{{lifecycle}}:conns:{id}")]).trim(), "0", "{id}");
    }
}

/// Replays the stream through a consumer group as a presence backend would (a set of
/// connections per user), until `expected` events were handled; returns who is online.
async fn consumed_online_users(redis: &RedisServer, expected: usize) -> HashMap<String, HashSet<String>> {
    use switchboard_publisher::lifecycle::{LifecycleConsumer, LifecycleKind};
    let online = std::sync::Arc::new(std::sync::Mutex::new(HashMap::<String, HashSet<String>>::new()));
    let handled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let consumer = LifecycleConsumer::connect(&redis.url(), "presence-db").await.unwrap();
    let (online_in, handled_in) = (online.clone(), handled.clone());
    let handler = move |event: switchboard_publisher::lifecycle::LifecycleEvent| {
        let (online, handled) = (online_in.clone(), handled_in.clone());
        async move {
            let mut online = online.lock().unwrap();
            match event.kind {
                LifecycleKind::Connect => {
                    online.entry(event.user).or_default().insert(event.client);
                }
                LifecycleKind::Disconnect => {
                    let connections = online.entry(event.user.clone()).or_default();
                    assert!(connections.remove(&event.client), "disconnect without connect: {event:?}");
                    if connections.is_empty() {
                        online.remove(&event.user);
                    }
                }
                LifecycleKind::Subscribe | LifecycleKind::Unsubscribe => assert!(event.channel.is_some()),
            }
            handled.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<(), std::convert::Infallible>(())
        }
    };
    let done = handled.clone();
    let stop = async move {
        while done.load(std::sync::atomic::Ordering::SeqCst) < expected {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), consumer.serve(handler, stop)).await.unwrap().unwrap();
    let online = online.lock().unwrap().clone();
    online
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_while_redis_is_down_is_recorded_once_it_is_back() {
    let _serial = SERIAL.lock().await;
    let mut redis = RedisServer::start(Persistence::AppendOnly);
    let nodes = start_lifecycle_nodes(&redis, 1);
    let mut client = connect_url(&nodes[0].ws_url(), "ann", Encoding::Json).await;
    client.ok("ping", serde_json::Value::Null).await;
    eventually("the connect is recorded", || async { count(&events(&redis).await, "connect") == 1 }).await;
    redis.kill();
    drop(client);
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart();
    nodes[0].wait_ready();
    eventually("the disconnect is recorded after the outage", || async {
        count(&events(&redis).await, "disconnect") == 1
    })
    .await;
    assert_eq!(nodes[0].metric("switchboard_lifecycle_pending_disconnects"), Some(0.0));
    // A connection that cannot be recorded is refused rather than kept unseen: with
    // Redis gone, connect answers 115 and closes with 3006.
    redis.kill();
    let request = nodes[0].ws_url().into_client_request().unwrap();
    let mut refused = Client::open(request, Encoding::Json).await;
    let error = refused.err("connect", json!({"token": fixture::token("bob")})).await;
    assert_eq!(error.code, switchboard_protocol::Code::Unavailable);
    assert_eq!(refused.closed().await.1.code(), Some(3006));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_was_frozen_past_its_ttl_records_its_connections_again() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let nodes = start_lifecycle_nodes(&redis, 2);
    let mut kept = connect_url(&nodes[0].ws_url(), "kept", Encoding::Json).await;
    let mut other = connect_url(&nodes[1].ws_url(), "other", Encoding::Json).await;
    eventually("both connects are recorded", || async { count(&events(&redis).await, "connect") == 2 }).await;
    // Frozen past the TTL, node 0 looks dead: node 1 records its connection as lost...
    let pid = nodes[0].pid().unwrap().to_string();
    std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    eventually("the frozen node's connection is recorded as lost", || async {
        events(&redis).await.iter().any(|e| e["event"] == "disconnect" && e["user"] == "kept")
    })
    .await;
    std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    // ...and once it runs again, the connection, still open, is recorded again.
    eventually("the connection is recorded again", || async {
        events(&redis).await.iter().any(|e| e["event"] == "connect" && e.contains_key("resumed"))
    })
    .await;
    kept.ok("ping", serde_json::Value::Null).await;
    assert_eq!(nodes[0].metric("switchboard_lifecycle_resumed_total"), Some(1.0));
    kept.send_raw(tokio_tungstenite::tungstenite::Message::Close(None)).await;
    other.send_raw(tokio_tungstenite::tungstenite::Message::Close(None)).await;
    eventually("both final disconnects are recorded", || async {
        count(&events(&redis).await, "disconnect") == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let kinds: Vec<String> = events(&redis)
        .await
        .iter()
        .filter(|e| e["user"] == "kept")
        .map(|e| format!("{} {}", e["event"], e.get("code").map_or("", String::as_str)))
        .collect();
    assert_eq!(kinds, ["connect ", "disconnect 1006", "connect ", "disconnect 1000"]);
    assert_eq!(count(&events(&redis).await, "connect"), 3);
}
