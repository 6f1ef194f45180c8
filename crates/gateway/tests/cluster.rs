//! Cluster mode over Redis: real `redis-server` processes on free ports and several
//! gateway processes of the built binary, with real WebSocket clients.

#![allow(clippy::unwrap_used, missing_docs)]

mod fixture;

use std::{collections::HashMap, time::Duration};

use fixture::{connect_url, Client};
use serde_json::{json, Value};
use switchboard_protocol::{push::Push, Code, Encoding};
use switchboard_testkit::{Persistence, RedisServer};

use fixture::cluster::{redis_cli_publish, start_nodes, SERIAL};

/// Reads publications of `channel` until `count` arrived; asserts offsets are exactly
/// `first..first+count` (order, no gap, no duplicate) and returns the data values.
async fn expect_sequence(client: &mut Client, first: u64, count: u64) -> Vec<Value> {
    let mut data = Vec::new();
    for expected in first..first + count {
        let publication = client.publication().await;
        assert_eq!(publication.offset, Some(expected), "out of order or gap");
        data.push(publication.data);
    }
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_deliver_every_publication_in_order_exactly_once() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let nodes = start_nodes(&redis, 3);
    let mut subscribers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for encoding in [Encoding::Json, Encoding::MsgPack] {
            let mut client = connect_url(&node.ws_url(), &format!("sub{i}"), encoding).await;
            let reply = client.ok("subscribe", json!({"channel": "chat:room"})).await;
            assert_eq!(reply["offset"], 0);
            subscribers.push(client);
        }
    }
    let per_publisher = 40u64;
    let mut publishers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let url = node.ws_url();
        publishers.push(tokio::spawn(async move {
            let mut publisher = connect_url(&url, &format!("pub{i}"), Encoding::Json).await;
            for n in 0..per_publisher {
                publisher.ok("publish", json!({"channel": "chat:room", "data": {"from": i, "n": n}})).await;
            }
        }));
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let total = per_publisher * 3;
    let mut reference: Option<Vec<Value>> = None;
    for subscriber in &mut subscribers {
        let data = expect_sequence(subscriber, 1, total).await;
        // Every publisher's own messages keep their order within the channel order.
        for i in 0..3 {
            let ns: Vec<u64> =
                data.iter().filter(|d| d["from"] == i).map(|d| d["n"].as_u64().unwrap()).collect();
            assert_eq!(ns, (0..per_publisher).collect::<Vec<_>>());
        }
        match &reference {
            None => reference = Some(data),
            Some(reference) => assert_eq!(&data, reference, "every subscriber sees one order"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_by_interest_only_subscribed_nodes_receive_a_channel() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let nodes = start_nodes(&redis, 2);
    let live = "sb:{chat:interest}:live";
    let numsub =
        |redis: &RedisServer| redis.cli(&["PUBSUB", "NUMSUB", live]).lines().nth(1).unwrap().to_string();
    assert_eq!(numsub(&redis), "0");
    let mut a = connect_url(&nodes[0].ws_url(), "a", Encoding::Json).await;
    let mut a2 = connect_url(&nodes[0].ws_url(), "a2", Encoding::Json).await;
    a.ok("subscribe", json!({"channel": "chat:interest"})).await;
    a2.ok("subscribe", json!({"channel": "chat:interest"})).await;
    assert_eq!(
        numsub(&redis),
        "1",
        "one Redis subscription per node, whatever the number of local subscribers"
    );
    // No pattern subscriptions anywhere.
    assert_eq!(redis.cli(&["PUBSUB", "NUMPAT"]), "0");
    let mut b = connect_url(&nodes[1].ws_url(), "b", Encoding::Json).await;
    b.ok("publish", json!({"channel": "chat:interest", "data": 1})).await;
    assert_eq!(a.publication().await.data, json!(1));
    // Node B has only its personal-channel subscription for `b` and its probe.
    let channels = redis.cli(&["PUBSUB", "CHANNELS", "sb:*"]);
    assert!(channels.contains(live) && channels.contains("sb:{user:b}:live"), "{channels}");
    a.ok("unsubscribe", json!({"channel": "chat:interest"})).await;
    assert_eq!(numsub(&redis), "1");
    a2.ok("unsubscribe", json!({"channel": "chat:interest"})).await;
    fixture::eventually("the node drops its subscription without local subscribers", || async {
        numsub(&redis) == "0"
    })
    .await;
}

/// A subscriber that follows the protocol's reconnect rule: remember the last position,
/// reconnect to another node, resubscribe with `recover`.
struct Follower {
    user: String,
    channel: String,
    client: Client,
    position: Option<(u64, String)>,
    received: Vec<u64>,
}

impl Follower {
    async fn new(url: &str, user: &str, channel: &str) -> Follower {
        let mut client = connect_url(url, user, Encoding::Json).await;
        let reply = client.ok("subscribe", json!({"channel": channel})).await;
        let position =
            Some((reply["offset"].as_u64().unwrap(), reply["epoch"].as_str().unwrap().to_string()));
        Follower { user: user.into(), channel: channel.into(), client, position, received: Vec::new() }
    }

    /// Reads until `last` was received, reconnecting to `fallback` when the node dies.
    async fn follow_until(&mut self, last: u64, fallback: &str) -> usize {
        let mut reconnects = 0;
        while self.received.last() != Some(&last) {
            match tokio::time::timeout(fixture::WAIT, futures_util::StreamExt::next(&mut self.client.ws))
                .await
            {
                Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text)))) => {
                    let frame: Value = serde_json::from_str(&text).unwrap();
                    if frame["push"] == "publication" && frame["channel"] == self.channel.as_str() {
                        let offset = frame["offset"].as_u64().unwrap();
                        self.received.push(offset);
                        // Protocol §5.1.1: no `epoch` means the one this connection was told.
                        let epoch = match frame["epoch"].as_str() {
                            Some(epoch) => epoch.to_string(),
                            None => self.position.take().unwrap().1,
                        };
                        self.position = Some((offset, epoch));
                    }
                }
                Ok(Some(Ok(_))) => {}
                Ok(None | Some(Err(_))) => {
                    reconnects += 1;
                    eprintln!("{} reconnects after {:?}", self.user, self.received.last());
                    self.client = connect_url(fallback, &self.user, Encoding::Json).await;
                    let (offset, epoch) = self.position.clone().unwrap();
                    let reply = self
                        .client
                        .ok(
                            "subscribe",
                            json!({"channel": self.channel, "recover": {"offset": offset, "epoch": epoch}}),
                        )
                        .await;
                    assert_eq!(reply["recovered"], true, "{reply}");
                    eprintln!("{} resubscribed: {reply}", self.user);
                }
                Err(_) => panic!("{} stalled at {:?}", self.user, self.received.last()),
            }
        }
        reconnects
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_killed_mid_stream_clients_resume_on_another_node() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let mut nodes = start_nodes(&redis, 3);
    let victim_url = nodes[0].ws_url();
    let fallback = nodes[1].ws_url();
    let total = 300u64;
    let mut followers = Vec::new();
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    for i in 0..4 {
        let mut follower = Follower::new(&victim_url, &format!("f{i}"), "chat:failover").await;
        let fallback = fallback.clone();
        let progress = progress.clone();
        followers.push(tokio::spawn(async move {
            // Follow the first 50, report, then follow to the end across the kill.
            follower.follow_until(50, &fallback).await;
            progress.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let reconnects = follower.follow_until(total, &fallback).await;
            (follower.user.clone(), follower.received, reconnects)
        }));
    }
    let publisher_url = nodes[2].ws_url();
    let publisher = tokio::spawn(async move {
        let mut publisher = connect_url(&publisher_url, "pub", Encoding::Json).await;
        for n in 1..=total {
            publisher.ok("publish", json!({"channel": "chat:failover", "data": n})).await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    fixture::eventually("every follower received the first 50", || async {
        progress.load(std::sync::atomic::Ordering::SeqCst) >= 4
    })
    .await;
    nodes[0].kill9();
    for follower in followers {
        let (user, received, reconnects) = follower.await.unwrap();
        assert_eq!(received, (1..=total).collect::<Vec<_>>(), "{user}: complete, ordered, no duplicates");
        assert_eq!(reconnects, 1, "{user}");
    }
    publisher.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_with_persistence_loses_no_acknowledged_publication() {
    let _serial = SERIAL.lock().await;
    let mut redis = RedisServer::start(Persistence::AppendOnly);
    let nodes = start_nodes(&redis, 2);
    let mut subscriber = connect_url(&nodes[0].ws_url(), "s", Encoding::Json).await;
    subscriber.ok("subscribe", json!({"channel": "chat:durable"})).await;
    let mut publisher = connect_url(&nodes[1].ws_url(), "p", Encoding::Json).await;
    let mut acknowledged = Vec::new();
    let mut unavailable = 0;
    for n in 0..200u64 {
        if n == 60 {
            redis.restart();
        }
        let reply = publisher.call("publish", json!({"channel": "chat:durable", "data": n})).await;
        match (reply.result, reply.error) {
            (Some(result), None) => acknowledged.push((result["offset"].as_u64().unwrap(), n)),
            (None, Some(error)) => {
                assert_eq!(error.code, Code::Unavailable, "{}", error.message);
                assert!(error.temporary);
                unavailable += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("{other:?}"),
        }
    }
    let last = acknowledged.last().unwrap().0;
    let mut received = HashMap::new();
    while received.len() < acknowledged.len() {
        let publication = subscriber.publication().await;
        // A publication carries an epoch only when it is not the one the subscribe told.
        assert_eq!(publication.epoch, None, "persistence keeps the epoch");
        let offset = publication.offset.unwrap();
        assert!(received.insert(offset, publication.data).is_none(), "duplicate offset {offset}");
        if offset == last {
            break;
        }
    }
    for (offset, n) in &acknowledged {
        assert_eq!(
            received.get(offset),
            Some(&json!(n)),
            "acknowledged publication {n} at offset {offset} lost"
        );
    }
    let mut offsets: Vec<u64> = received.keys().copied().collect();
    offsets.sort_unstable();
    assert_eq!(offsets, (1..=last).collect::<Vec<_>>(), "contiguous offsets");
    eprintln!("{} acknowledged, {unavailable} refused as unavailable during the restart", acknowledged.len());
    assert!(
        nodes[0].metric("switchboard_broker_resyncs_total").unwrap_or(0.0) >= 1.0,
        "the subscriber resynced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_redis_gives_recovered_false_and_a_new_epoch() {
    let _serial = SERIAL.lock().await;
    let mut redis = RedisServer::start(Persistence::None);
    let nodes = start_nodes(&redis, 1);
    let mut client = connect_url(&nodes[0].ws_url(), "s", Encoding::Json).await;
    let subscribed = client.ok("subscribe", json!({"channel": "chat:wipe"})).await;
    let old_epoch = subscribed["epoch"].as_str().unwrap().to_string();
    client.ok("publish", json!({"channel": "chat:wipe", "data": 1})).await;
    let first = client.publication().await;
    assert_eq!((first.offset, first.epoch), (Some(1), None), "in the epoch the subscribe told");
    redis.restart_wiped();
    nodes[0].wait_ready();
    // Readiness came back: the node reconnected and resubscribed.
    let mut fresh = connect_url(&nodes[0].ws_url(), "s2", Encoding::Json).await;
    let reply = fresh
        .ok("subscribe", json!({"channel": "chat:wipe", "recover": {"offset": 1, "epoch": old_epoch}}))
        .await;
    assert_eq!(reply["recovered"], false);
    assert_ne!(reply["epoch"], old_epoch.as_str());
    // Live traffic continues on the new epoch for clients that stayed connected: the
    // first publication of it carries the epoch (protocol §5.1.1), the next ones do not.
    fresh.ok("publish", json!({"channel": "chat:wipe", "data": 2})).await;
    let next = client.publication().await;
    assert_eq!(next.data, json!(2));
    assert_eq!(next.epoch.as_deref(), reply["epoch"].as_str());
    fresh.ok("publish", json!({"channel": "chat:wipe", "data": 3})).await;
    let after = client.publication().await;
    assert_eq!((after.data, after.epoch), (json!(3), None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_clients_and_answers_unavailable() {
    let _serial = SERIAL.lock().await;
    let mut redis = RedisServer::start(Persistence::AppendOnly);
    let nodes = start_nodes(&redis, 1);
    let mut client = connect_url(&nodes[0].ws_url(), "s", Encoding::Json).await;
    client.ok("subscribe", json!({"channel": "chat:outage"})).await;
    redis.stop();
    fixture::eventually("readiness turns red without Redis", || async { nodes[0].get("/readyz").0 == 503 })
        .await;
    let error = client.err("publish", json!({"channel": "chat:outage", "data": 1})).await;
    assert_eq!(error.code, Code::Unavailable);
    assert!(error.temporary);
    let error = client.err("subscribe", json!({"channel": "chat:other"})).await;
    assert_eq!(error.code, Code::Unavailable);
    client.ok("ping", Value::Null).await;
    redis.restart();
    nodes[0].wait_ready();
    client.ok("publish", json!({"channel": "chat:outage", "data": 2})).await;
    assert_eq!(client.publication().await.data, json!(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_spans_nodes_and_expires_after_a_node_is_killed() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let mut nodes = start_nodes(&redis, 3);
    let mut watcher = connect_url(&nodes[2].ws_url(), "watcher", Encoding::Json).await;
    watcher.ok("subscribe", json!({"channel": "chat:presence"})).await;
    let mut doomed = connect_url(&nodes[0].ws_url(), "doomed", Encoding::Json).await;
    doomed.ok("subscribe", json!({"channel": "chat:presence"})).await;
    let mut stays = connect_url(&nodes[1].ws_url(), "stays", Encoding::Json).await;
    stays.ok("subscribe", json!({"channel": "chat:presence"})).await;
    let stats = watcher.ok("presence_stats", json!({"channel": "chat:presence"})).await;
    assert_eq!(stats, json!({"clients": 3, "users": 3}));
    let presence = watcher.ok("presence", json!({"channel": "chat:presence"})).await;
    assert_eq!(presence["clients"].as_array().unwrap().len(), 3);
    nodes[0].kill9();
    // Within the presence TTL (3 s) the dead node's client disappears with a leave event.
    let leave = loop {
        match watcher.push().await {
            Push::Leave(leave) => break leave,
            _ => continue,
        }
    };
    assert_eq!(leave.client.user, "doomed");
    let stats = watcher.ok("presence_stats", json!({"channel": "chat:presence"})).await;
    assert_eq!(stats, json!({"clients": 2, "users": 2}));
    drop(doomed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_user_gets_pending_notifications_on_a_fresh_device() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let nodes = start_nodes(&redis, 2);
    // A backend publishes with the documented one-call contract while the user is away.
    for n in 1..=3 {
        let body = json!({"event": "notification", "data": {"n": n, "priority": "high"}});
        redis_cli_publish(&redis, "user:u9", &body, 1000);
    }
    let mut phone = connect_url(&nodes[0].ws_url(), "u9", Encoding::Json).await;
    // The connect reply was consumed by connect_url; pending publications follow it.
    let data = expect_sequence(&mut phone, 1, 3).await;
    assert_eq!(data[2]["n"], 3);
    let epoch = phone.ok("history", json!({"channel": "user:u9", "limit": 0})).await["epoch"].clone();
    phone.ok("ack", json!({"channel": "user:u9", "offset": 2, "epoch": epoch})).await;
    // A new device (on another node, no stored offset) gets what was not acknowledged.
    let mut laptop = fixture::Client::open(
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(nodes[1].ws_url())
            .unwrap(),
        Encoding::Json,
    )
    .await;
    let connected = laptop.ok("connect", json!({"token": fixture::token("u9")})).await;
    assert_eq!(connected["subscriptions"][0]["recovered"], true);
    assert_eq!(connected["subscriptions"][0]["missed"], 1);
    expect_sequence(&mut laptop, 3, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_publish_reaches_clients_on_every_node() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let nodes = start_nodes(&redis, 3);
    let mut clients = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut client = connect_url(&node.ws_url(), &format!("c{i}"), Encoding::MsgPack).await;
        client.ok("subscribe", json!({"channel": "news"})).await;
        clients.push(client);
    }
    let body = json!({"event": "tally", "data": {"proposal": 7, "yes": 1200, "quorum": 0.42}});
    let reply = redis_cli_publish(&redis, "news", &body, 100);
    assert!(reply.starts_with('1'), "{reply}");
    for client in &mut clients {
        let publication = client.publication().await;
        assert_eq!(publication.offset, Some(1));
        assert_eq!(publication.event.as_deref(), Some("tally"));
        assert_eq!(publication.data["yes"], 1200);
    }
    // A body that breaks the contract is refused by Redis, not delivered.
    let refused = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &redis.port().to_string(),
            "FCALL",
            "sb_publish",
            "2",
            "sb:{news}:stream",
            "sb:{news}:meta",
        ])
        .args(["sb:{news}:live", "{\"nodata\":1}", "100", "300000", "86400000"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&refused.stdout).contains("data"));
    fixture::eventually("the registry shows three nodes", || async {
        nodes[0].metric("switchboard_cluster_nodes") == Some(3.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_marks_the_node_not_ready_while_pub_sub_is_stuck() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let nodes = start_nodes(&redis, 1);
    let mut client = connect_url(&nodes[0].ws_url(), "s", Encoding::Json).await;
    client.ok("subscribe", json!({"channel": "chat:probe"})).await;
    // Stall every write, PUBLISH included, while the TCP connections stay up: to the node
    // this looks exactly like a pub/sub subscription that silently stopped delivering.
    // The pause outlasts any wait below; it is lifted once the node noticed.
    redis.cli(&["CLIENT", "PAUSE", "60000", "WRITE"]);
    fixture::eventually("readiness turns red while probes do not come back", || async {
        nodes[0].get("/readyz").0 == 503
    })
    .await;
    redis.cli(&["CLIENT", "UNPAUSE"]);
    nodes[0].wait_ready();
    client.ok("publish", json!({"channel": "chat:probe", "data": "after"})).await;
    assert_eq!(client.publication().await.data, json!("after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_acts_on_a_user_connected_to_another_node() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let nodes = start_nodes(&redis, 2);
    let mut phone = connect_url(&nodes[1].ws_url(), "u5", Encoding::Json).await;
    phone.ok("subscribe", json!({"channel": "chat:deal"})).await;
    let api = |path: &'static str, body: Value| {
        let addr = nodes[0].addr();
        let key = fixture::cluster::API_KEY;
        tokio::task::spawn_blocking(move || {
            let body = body.to_string();
            switchboard_testkit::http(addr, "POST", path, &[("X-API-Key", key)], Some(body.as_bytes()))
        })
    };
    let (status, body) = api("/api/v1/users/publish", json!({"user": "u5", "data": {"n": 1}})).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(phone.publication().await.channel, "user:u5");
    let (status, _) =
        api("/api/v1/users/unsubscribe", json!({"user": "u5", "channel": "chat:deal"})).await.unwrap();
    assert_eq!(status, 202);
    loop {
        match phone.push().await {
            Push::Unsubscribe(unsubscribed) => break assert_eq!(unsubscribed.channel, "chat:deal"),
            Push::Join(_) => continue,
            other => panic!("{other:?}"),
        }
    }
    let (status, _) = api("/api/v1/users/disconnect", json!({"user": "u5"})).await.unwrap();
    assert_eq!(status, 202);
    let (disconnect, _) = phone.closed().await;
    assert_eq!(disconnect.unwrap().code, Code::ForceDisconnect);
    // Once the node has dropped the user's personal channel, nobody holds the user.
    fixture::eventually("no node holds u5 any more", || async {
        let (status, body) = api("/api/v1/users/disconnect", json!({"user": "u5"})).await.unwrap();
        assert!(status == 202 || status == 404, "{status}: {body}");
        status == 404
    })
    .await;
    let channels = switchboard_testkit::http(
        nodes[0].addr(),
        "GET",
        "/api/v1/info",
        &[("X-API-Key", fixture::cluster::API_KEY)],
        None,
    );
    let info: Value = serde_json::from_str(&channels.1).unwrap();
    assert_eq!(info["broker"], "redis");
}

/// The next `subscribe` push, skipping join/leave events.
async fn subscribe_push(client: &mut Client) -> switchboard_protocol::reply::SubscribeResult {
    loop {
        match client.push().await {
            Push::Subscribe(result) => return result,
            Push::Join(_) | Push::Leave(_) => continue,
            other => panic!("expected a subscribe push, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_subscribes_every_connection_of_a_user_on_every_node() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let nodes = start_nodes(&redis, 2);
    let mut phone = connect_url(&nodes[0].ws_url(), "u7", Encoding::Json).await;
    let mut laptop = connect_url(&nodes[1].ws_url(), "u7", Encoding::MsgPack).await;
    let mut other = connect_url(&nodes[1].ws_url(), "u8", Encoding::Json).await;
    let publisher = switchboard_publisher::Publisher::connect(&redis.url()).await.unwrap();
    let tick = switchboard_publisher::PublishOptions::event("tick");
    // Two publications the user's devices saw the first of, before the backend attached them.
    let first = publisher.publish("dao:portfolio-u7", &json!({"n": 1}), &tick).await.unwrap();
    publisher.publish("dao:portfolio-u7", &json!({"n": 2}), &tick).await.unwrap();
    let epoch = first.epoch.unwrap();

    // Through the HTTP API of a node that holds neither connection of the user...
    let body = json!({"user": "u7", "channel": "dao:portfolio-u7", "recover": {"offset": 1, "epoch": epoch}});
    let addr = nodes[0].addr();
    let (status, response) = tokio::task::spawn_blocking(move || {
        let key = [("X-API-Key", fixture::cluster::API_KEY)];
        switchboard_testkit::http(
            addr,
            "POST",
            "/api/v1/users/subscribe",
            &key,
            Some(body.to_string().as_bytes()),
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 202, "{response}");
    for device in [&mut phone, &mut laptop] {
        let subscribed = subscribe_push(device).await;
        assert_eq!((subscribed.channel.as_str(), subscribed.recovered), ("dao:portfolio-u7", Some(true)));
        assert_eq!(device.publication().await.data, json!({"n": 2}));
    }
    publisher.publish("dao:portfolio-u7", &json!({"n": 3}), &tick).await.unwrap();
    for device in [&mut phone, &mut laptop] {
        assert_eq!(device.publication().await.data, json!({"n": 3}));
    }
    // ...and through the publisher crate, straight into Redis; a second subscribe of the
    // same channel changes nothing.
    assert!(publisher.subscribe_user("u7", "dao:alerts-u7", None).await.unwrap());
    assert!(publisher.subscribe_user("u7", "dao:portfolio-u7", None).await.unwrap());
    for device in [&mut phone, &mut laptop] {
        let subscribed = subscribe_push(device).await;
        assert_eq!((subscribed.channel.as_str(), subscribed.recovered), ("dao:alerts-u7", None));
    }
    publisher.publish("dao:alerts-u7", &json!("margin"), &tick).await.unwrap();
    for device in [&mut phone, &mut laptop] {
        assert_eq!(device.publication().await.data, json!("margin"));
        device.silent_for(Duration::from_millis(300)).await;
    }
    other.silent_for(Duration::from_millis(100)).await;
    // The same operator commands from the crate, and an unknown user.
    assert!(publisher.unsubscribe_user("u7", "dao:alerts-u7", "plan changed").await.unwrap());
    loop {
        match phone.push().await {
            Push::Unsubscribe(unsubscribed) => break assert_eq!(unsubscribed.reason, "plan changed"),
            // The laptop leaves the same channel (were join/leave events on).
            Push::Join(_) | Push::Leave(_) => continue,
            other => panic!("{other:?}"),
        }
    }
    assert!(!publisher.subscribe_user("nobody", "dao:x", None).await.unwrap());
    assert!(publisher.disconnect_user("u8", "bye").await.unwrap());
    assert_eq!(other.closed().await.0.unwrap().code, Code::ForceDisconnect);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_during_a_pub_sub_reconnect_are_caught_up() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let nodes = start_nodes(&redis, 1);
    let mut client = connect_url(&nodes[0].ws_url(), "s", Encoding::Json).await;
    // A channel that has seen no publication yet: the node knows its position only from
    // the baseline it read when it subscribed.
    client.ok("subscribe", json!({"channel": "chat:gap"})).await;
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    for n in 1..=3 {
        redis_cli_publish(&redis, "chat:gap", &json!({"data": n}), 1000);
    }
    let data = expect_sequence(&mut client, 1, 3).await;
    assert_eq!(data, vec![json!(1), json!(2), json!(3)]);
    assert!(nodes[0].metric("switchboard_broker_resyncs_total").unwrap_or(0.0) >= 1.0);
}
