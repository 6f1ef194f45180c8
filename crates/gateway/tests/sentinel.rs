//! Redis Sentinel: a primary, two replicas and three sentinels as real processes; gateway
//! nodes find the primary through the sentinels (`redis-sentinel://`) and publish with
//! `broker.ack_replicas = 1`. The primary is killed (SIGKILL) while a client publishes:
//! every subscriber, on both nodes, must end with every acknowledged publication, in
//! order, once each, in the same epoch, and a client that was away recovers across the
//! failover.

#![allow(clippy::unwrap_used, missing_docs)]

mod fixture;

use std::{collections::HashMap, time::Duration};

use fixture::{
    cluster::{publish_until_acknowledged, start_node_with_url, SERIAL},
    connect_url, Client,
};
use serde_json::{json, Value};
use switchboard_protocol::{push::Push, Code, Encoding};
use switchboard_testkit::{
    sentinel::{Sentinel, SERVICE},
    RedisServer,
};

const CHANNEL: &str = "chat:failover";

/// Reads `client`'s publications of the channel up to offset `last`: asserts offsets
/// `first..=last` in order, once each, in the subscribe's epoch; returns offset -> data.
async fn read_through(client: &mut Client, first: u64, last: u64) -> HashMap<u64, Value> {
    let mut received = HashMap::new();
    for expected in first..=last {
        let publication = client.publication().await;
        assert_eq!(publication.channel, CHANNEL);
        assert_eq!(publication.offset, Some(expected), "order, no gap, no duplicate");
        assert_eq!(publication.epoch, None, "the failover keeps the epoch");
        received.insert(expected, publication.data);
    }
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_loses_no_acknowledged_publication() {
    let _serial = SERIAL.lock().await;
    let mut primary = RedisServer::start(switchboard_testkit::Persistence::None);
    let replicas = [RedisServer::start_replica_of(&primary), RedisServer::start_replica_of(&primary)];
    fixture::eventually("both replicas are connected", || async { primary.replicas() == 2 }).await;
    let sentinels: Vec<Sentinel> = (0..3).map(|_| Sentinel::start(&primary, 2)).collect();
    fixture::eventually("the sentinels know the replicas and each other", || async {
        sentinels.iter().all(|sentinel| sentinel.ready_for_failover(2, 2))
    })
    .await;

    let url = format!(
        "redis-sentinel://127.0.0.1:{}/0?sentinelServiceName={SERVICE}&node=127.0.0.1:{}&node=127.0.0.1:{}",
        sentinels[0].port(),
        sentinels[1].port(),
        sentinels[2].port()
    );
    let env = [("SWITCHBOARD_BROKER__ACK_REPLICAS", "1")];
    let nodes =
        [start_node_with_url(&url, "127.0.0.1:0", &env), start_node_with_url(&url, "127.0.0.1:0", &env)];
    let mut subscribers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut subscriber = connect_url(&node.ws_url(), &format!("s{i}"), Encoding::Json).await;
        let reply = subscriber.ok("subscribe", json!({"channel": CHANNEL})).await;
        assert_eq!(reply["offset"], 0);
        subscribers.push(subscriber);
    }
    let mut away = connect_url(&nodes[0].ws_url(), "away", Encoding::Json).await;
    let subscribed = away.ok("subscribe", json!({"channel": CHANNEL})).await;
    let epoch = subscribed["epoch"].as_str().unwrap().to_string();
    let mut publisher = connect_url(&nodes[1].ws_url(), "p", Encoding::Json).await;

    let total = 120u64;
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    let mut away_position = 0;
    for n in 1..=total {
        if n == 30 {
            // The away client leaves at offset 29's position, before the failover.
            away_position = acknowledged.last().map_or(0, |(offset, _)| *offset);
            drop(away);
            away = connect_url(&nodes[1].ws_url(), "away", Encoding::Json).await;
        }
        if n == 40 {
            let old = primary.port();
            primary.kill();
            eprintln!("killed the primary on port {old}");
        }
        let (offset, attempts) = publish_until_acknowledged(&mut publisher, CHANNEL, n).await;
        refused += attempts;
        acknowledged.push((offset, n));
    }
    let new_primary = sentinels[0].primary_port().unwrap();
    assert!(replicas.iter().any(|replica| replica.port() == new_primary), "a replica was promoted");
    eprintln!("{total} acknowledged, {refused} attempts refused as unavailable during the failover");

    // Every attempt was retried with its key until acknowledged, so the acknowledged
    // publications are exactly 1..=total at offsets 1..=total.
    let expected: Vec<(u64, u64)> = (1..=total).map(|n| (n, n)).collect();
    assert_eq!(acknowledged, expected, "one offset per publication, in order");
    for subscriber in &mut subscribers {
        let received = read_through(subscriber, 1, total).await;
        for (offset, n) in &acknowledged {
            assert_eq!(received[offset], json!(n), "acknowledged publication {n} at offset {offset}");
        }
    }

    // The away client recovers across the failover, on the other node.
    let recovered = away
        .ok("subscribe", json!({"channel": CHANNEL, "recover": {"offset": away_position, "epoch": epoch}}))
        .await;
    assert_eq!(recovered["recovered"], true, "{recovered}");
    let received = read_through(&mut away, away_position + 1, total).await;
    assert_eq!(received.len() as u64, total - away_position);
}

/// What `broker.ack_replicas` promises, without a failover: a publication no replica
/// acknowledged in time is refused as unavailable and neither delivered nor shown by
/// `history` or a recovery; retried with its key it is committed once; without a retry
/// the channel's next acknowledged publication brings it along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_no_replica_acknowledged_is_held() {
    let _serial = SERIAL.lock().await;
    let primary = RedisServer::start(switchboard_testkit::Persistence::None);
    let replica = RedisServer::start_replica_of(&primary);
    fixture::eventually("the replica is connected", || async { primary.replicas() == 1 }).await;
    let env =
        [("SWITCHBOARD_BROKER__ACK_REPLICAS", "1"), ("SWITCHBOARD_BROKER__ACK_REPLICAS_TIMEOUT_MS", "2000")];
    let node = start_node_with_url(&primary.url(), "127.0.0.1:0", &env);
    let mut subscriber = connect_url(&node.ws_url(), "s", Encoding::Json).await;
    let epoch = subscriber.ok("subscribe", json!({"channel": CHANNEL})).await["epoch"].clone();
    let mut publisher = connect_url(&node.ws_url(), "p", Encoding::Json).await;
    let publish = |n: u64, key: Option<&str>| {
        let mut params = json!({"channel": CHANNEL, "data": n});
        if let Some(key) = key {
            params["idempotency_key"] = json!(key);
        }
        params
    };
    assert_eq!(publisher.ok("publish", publish(1, None)).await["offset"], 1);
    assert_eq!(subscriber.publication().await.offset, Some(1));

    replica.pause();
    let error = publisher.err("publish", publish(2, Some("k2"))).await;
    assert_eq!(error.code, Code::Unavailable, "{}", error.message);
    assert!(error.message.contains("0 of 1 replicas within 2000 ms"), "{}", error.message);
    assert_eq!(node.metric("switchboard_broker_replica_wait_failures_total"), Some(1.0));
    let history = publisher.ok("history", json!({"channel": CHANNEL})).await;
    assert_eq!(history["offset"], 1, "the held publication is not visible: {history}");
    assert_eq!(history["publications"].as_array().unwrap().len(), 1);
    let mut late = connect_url(&node.ws_url(), "late", Encoding::Json).await;
    let recovered =
        late.ok("subscribe", json!({"channel": CHANNEL, "recover": {"offset": 0, "epoch": epoch}})).await;
    assert_eq!((recovered["recovered"].clone(), recovered["offset"].clone()), (json!(true), json!(1)));
    assert_eq!(late.publication().await.offset, Some(1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (pushes, _) = subscriber.call_ordered("ping", Value::Null).await;
    let publications = pushes.iter().filter(|push| matches!(push, Push::Publication(_))).count();
    assert_eq!(publications, 0, "nothing held is delivered: {pushes:?}");

    replica.resume();
    assert_eq!(publisher.ok("publish", publish(2, Some("k2"))).await["offset"], 2, "the retry commits it");
    let second = subscriber.publication().await;
    assert_eq!((second.offset, second.data), (Some(2), json!(2)));
    assert_eq!(late.publication().await.offset, Some(2));

    // Unacknowledged and not retried: the next commit makes it visible, in order.
    replica.pause();
    publisher.err("publish", publish(3, None)).await;
    replica.resume();
    assert_eq!(publisher.ok("publish", publish(4, None)).await["offset"], 4);
    for client in [&mut subscriber, &mut late] {
        let third = client.publication().await;
        let fourth = client.publication().await;
        assert_eq!((third.offset, third.data), (Some(3), json!(3)));
        assert_eq!((fourth.offset, fourth.data), (Some(4), json!(4)));
    }
}
