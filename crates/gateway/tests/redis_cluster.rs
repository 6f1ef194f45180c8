//! Redis Cluster: `redis-cli --cluster create` over real `redis-server` processes, gateway
//! processes of the built binary on a `redis-cluster://` URL, real WebSocket clients.
//! Live traffic is sharded pub/sub: a publication reaches only the primary owning its
//! channel's slot, yet every subscriber on every node gets every publication in order,
//! across a slot migration under traffic and a primary failover.

#![allow(clippy::unwrap_used, missing_docs)]

mod fixture;

use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use fixture::{
    cluster::{publish_until_acknowledged, start_node_with_url, SERIAL},
    connect_url, Client,
};
use serde_json::{json, Value};
use switchboard_protocol::{push::Push, Encoding};
use switchboard_testkit::{cluster::RedisCluster, Gateway};

fn start_nodes(cluster: &RedisCluster, count: usize) -> Vec<Gateway> {
    (0..count).map(|_| start_node_with_url(&cluster.url(), "127.0.0.1:0", &[])).collect()
}

/// `count` channel names whose slots cover every primary of `cluster`.
fn channels_on_every_primary(cluster: &RedisCluster, count: usize) -> Vec<String> {
    let channels: Vec<String> = (0..count).map(|i| format!("chat:room{i}")).collect();
    let owners: BTreeSet<usize> =
        channels.iter().map(|c| cluster.owner(cluster.slot(&format!("sb:{{{c}}}:live"))).unwrap()).collect();
    assert_eq!(owners.len(), cluster.primaries().len(), "the channels cover every primary");
    channels
}

/// Reads publications until every channel of `expected` reached its count; asserts each
/// channel's offsets are 1, 2, … in order, once each, and returns channel -> data.
async fn read_all(client: &mut Client, expected: &HashMap<String, u64>) -> HashMap<String, Vec<Value>> {
    let mut received: HashMap<String, Vec<Value>> = HashMap::new();
    let done = |received: &HashMap<String, Vec<Value>>| {
        expected.iter().all(|(channel, count)| received.get(channel).map_or(0, Vec::len) as u64 == *count)
    };
    while !done(&received) {
        let Push::Publication(publication) = client.push().await else { continue };
        let data = received.entry(publication.channel.clone()).or_default();
        assert_eq!(
            publication.offset,
            Some(data.len() as u64 + 1),
            "{}: in order, no gap, no duplicate",
            publication.channel
        );
        data.push(publication.data);
    }
    received
}

/// One client per node, subscribed to every channel of `channels`.
async fn subscribe_everywhere(nodes: &[Gateway], channels: &[&str]) -> Vec<Client> {
    let mut subscribers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut subscriber = connect_url(&node.ws_url(), &format!("s{i}"), Encoding::Json).await;
        for channel in channels {
            subscriber.ok("subscribe", json!({"channel": channel})).await;
        }
        subscribers.push(subscriber);
    }
    subscribers
}

/// Every subscriber got `1..=total` on `channel`, in order, once each.
async fn everyone_got(subscribers: &mut [Client], channel: &str, total: u64) {
    let expected = HashMap::from([(channel.to_string(), total)]);
    for subscriber in subscribers {
        let received = read_all(subscriber, &expected).await;
        assert_eq!(received[channel], (1..=total).map(|n| json!(n)).collect::<Vec<_>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_pubsub_delivers_across_primaries_and_nodes() {
    let _serial = SERIAL.lock().await;
    let cluster = RedisCluster::start(3, 0);
    let nodes = start_nodes(&cluster, 3);
    let channels = channels_on_every_primary(&cluster, 12);
    let names: Vec<&str> = channels.iter().map(String::as_str).collect();
    let mut subscribers = subscribe_everywhere(&nodes, &names).await;
    let mut away = connect_url(&nodes[0].ws_url(), "away", Encoding::Json).await;
    let position = away.ok("subscribe", json!({"channel": channels[0]})).await;
    drop(away);

    // Publications through every node, to every channel.
    let mut publishers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        publishers.push(connect_url(&node.ws_url(), &format!("p{i}"), Encoding::Json).await);
    }
    let rounds = 6u64;
    for n in 1..=rounds {
        for (c, channel) in channels.iter().enumerate() {
            let publisher = &mut publishers[(c + n as usize) % 3];
            let result = publisher.ok("publish", json!({"channel": channel, "data": n})).await;
            assert_eq!(result["offset"], n);
        }
    }
    let expected: HashMap<String, u64> = channels.iter().map(|c| (c.clone(), rounds)).collect();
    for subscriber in &mut subscribers {
        let received = read_all(subscriber, &expected).await;
        for channel in &channels {
            assert_eq!(received[channel], (1..=rounds).map(|n| json!(n)).collect::<Vec<_>>(), "{channel}");
        }
    }

    // Sharded: the owner has the three nodes' subscriptions; no other primary, and no
    // classic subscription anywhere, carries the channel.
    let live = format!("sb:{{{}}}:live", channels[0]);
    let owner = cluster.owner(cluster.slot(&live)).unwrap();
    for primary in cluster.primaries() {
        let sharded = cluster.nodes()[primary].cli(&["PUBSUB", "SHARDNUMSUB", &live]);
        let classic = cluster.nodes()[primary].cli(&["PUBSUB", "NUMSUB", &live]);
        let expected = if primary == owner { "3" } else { "0" };
        assert_eq!(sharded.lines().nth(1), Some(expected), "primary {primary}: {sharded}");
        assert_eq!(classic.lines().nth(1), Some("0"), "primary {primary}: {classic}");
    }

    // The HTTP API lists the channels with subscribers on any node, asking each primary.
    let bearer = format!("Bearer {}", fixture::cluster::API_KEY);
    let (status, body) = switchboard_testkit::http(
        nodes[1].addr(),
        "GET",
        "/api/v1/channels",
        &[("Authorization", bearer.as_str())],
        None,
    );
    assert_eq!(status, 200, "{body}");
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    let listed: BTreeSet<&str> =
        listed["channels"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    for channel in &channels {
        assert!(listed.contains(channel.as_str()), "{channel} missing from {listed:?}");
    }

    // Recovery on another node.
    let mut back = connect_url(&nodes[2].ws_url(), "away", Encoding::Json).await;
    let recover = json!({"offset": position["offset"], "epoch": position["epoch"]});
    let recovered = back.ok("subscribe", json!({"channel": channels[0], "recover": recover})).await;
    assert_eq!(recovered["recovered"], true, "{recovered}");
    let received = read_all(&mut back, &HashMap::from([(channels[0].clone(), rounds)])).await;
    assert_eq!(received[&channels[0]].len() as u64, rounds);
}

/// Publishes `1..=total` to `channel` from a task of its own, retrying refusals, and runs
/// `during` (blocking: a slot migration, a failover) on this thread once 30 went out, while
/// publishing goes on; returns how many attempts were refused.
async fn publish_around(mut publisher: Client, channel: &str, total: u64, during: impl FnOnce()) -> u32 {
    let sent = Arc::new(AtomicU64::new(0));
    let channel = channel.to_string();
    let counter = sent.clone();
    let publishing = tokio::spawn(async move {
        let mut refused = 0;
        for n in 1..=total {
            let (offset, attempts) = publish_until_acknowledged(&mut publisher, &channel, n).await;
            assert_eq!(offset, n, "one offset per publication, in order");
            refused += attempts;
            counter.store(n, Ordering::Release);
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        refused
    });
    fixture::eventually("30 publications went out", || async { sent.load(Ordering::Acquire) >= 30 }).await;
    tokio::task::block_in_place(during);
    assert!(sent.load(Ordering::Acquire) < total, "publishing was still going on");
    publishing.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migration_under_traffic_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let cluster = RedisCluster::start(3, 0);
    let nodes = start_nodes(&cluster, 2);
    let channel = "chat:moving";
    let slot = cluster.slot(&format!("sb:{{{channel}}}:live"));
    let from = cluster.owner(slot).unwrap();
    let to = cluster.primaries().into_iter().find(|p| *p != from).unwrap();
    let mut subscribers = subscribe_everywhere(&nodes, &[channel]).await;
    let publisher = connect_url(&nodes[1].ws_url(), "p", Encoding::Json).await;
    let total = 300;
    let refused = publish_around(publisher, channel, total, || cluster.migrate_slot(slot, to)).await;
    assert_eq!(cluster.owner(slot), Some(to), "the slot moved");
    eprintln!("{total} publications, {refused} attempts refused during the migration");
    everyone_got(&mut subscribers, channel, total).await;
    for node in &nodes {
        fixture::eventually("the node followed the slot", || async {
            node.metric("switchboard_broker_slot_moves_total").unwrap_or(0.0) >= 1.0
        })
        .await;
    }
    // The subscriptions live on the new owner now.
    let live = format!("sb:{{{channel}}}:live");
    let sharded = cluster.nodes()[to].cli(&["PUBSUB", "SHARDNUMSUB", &live]);
    assert_eq!(sharded.lines().nth(1), Some("2"), "{sharded}");
}

/// A 3-primary cluster with one replica each, two gateway nodes (`env` added), a
/// subscriber of `channel` on each and a publishing client: the setup of the failover
/// tests.
struct Shard {
    cluster: RedisCluster,
    nodes: Vec<Gateway>,
    slot: u16,
    /// The primary owning the channel's slot, and its replica.
    owner: usize,
    replica: usize,
    subscribers: Vec<Client>,
    publisher: Client,
}

impl Shard {
    async fn watch(channel: &str, env: &[(&str, &str)]) -> Shard {
        let cluster = RedisCluster::start(3, 1);
        let nodes: Vec<Gateway> =
            (0..2).map(|_| start_node_with_url(&cluster.url(), "127.0.0.1:0", env)).collect();
        let slot = cluster.slot(&format!("sb:{{{channel}}}:live"));
        let owner = cluster.owner(slot).unwrap();
        let replica = cluster.replicas_of(owner)[0];
        let subscribers = subscribe_everywhere(&nodes, &[channel]).await;
        let publisher = connect_url(&nodes[0].ws_url(), "p", Encoding::Json).await;
        Shard { cluster, nodes, slot, owner, replica, subscribers, publisher }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_failover_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let channel = "chat:failover";
    let Shard { cluster, nodes: _nodes, slot, owner: _, replica, mut subscribers, publisher } =
        Shard::watch(channel, &[]).await;
    let total = 300;
    let refused = publish_around(publisher, channel, total, || {
        // A manual failover: the replica catches up, then takes over the slots.
        cluster.nodes()[replica].cli(&["CLUSTER", "FAILOVER"]);
        cluster.wait_until("the replica took over", |cluster| cluster.owner(slot) == Some(replica));
    })
    .await;
    eprintln!("{total} publications, {refused} attempts refused during the failover");
    everyone_got(&mut subscribers, channel, total).await;
}

/// A primary SIGKILLed under traffic, with `broker.ack_replicas = 1`: its replica takes
/// over after the node timeout and holds every acknowledged publication. The killed node
/// is restarted and rejoins as the new primary's replica (until then the shard has no
/// replica, and its publications are refused as not replicated).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_loses_no_acknowledged_publication() {
    let _serial = SERIAL.lock().await;
    let channel = "chat:killed";
    let env = [("SWITCHBOARD_BROKER__ACK_REPLICAS", "1")];
    let Shard { mut cluster, nodes: _nodes, slot, owner, replica, mut subscribers, publisher } =
        Shard::watch(channel, &env).await;
    let total = 300;
    let refused = publish_around(publisher, channel, total, || {
        cluster.node_mut(owner).kill();
        cluster.wait_until("the replica took over", |cluster| cluster.owner(slot) == Some(replica));
        cluster.node_mut(owner).restart();
        cluster.wait_until("the old primary replicates the new one", |cluster| {
            cluster.nodes()[replica].replicas() == 1
        });
    })
    .await;
    eprintln!("{total} publications, {refused} attempts refused during the failover");
    everyone_got(&mut subscribers, channel, total).await;
}

/// The publisher crate on the same `redis-cluster://` URL: a batch over channels of every
/// primary (one pipeline per slot, each with its `WAIT`, since the gateways declare
/// `ack_replicas`), and an ephemeral publication (`SPUBLISH`), reach subscribers on both
/// nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_publishes_into_the_cluster() {
    use switchboard_publisher::{Outgoing, PublishOptions, Publisher};
    let _serial = SERIAL.lock().await;
    let cluster = RedisCluster::start(3, 1);
    let env = [("SWITCHBOARD_BROKER__ACK_REPLICAS", "1")];
    let nodes: Vec<Gateway> =
        (0..2).map(|_| start_node_with_url(&cluster.url(), "127.0.0.1:0", &env)).collect();
    let channels = channels_on_every_primary(&cluster, 9);
    let names: Vec<&str> = channels.iter().map(String::as_str).collect();
    let mut subscribers = subscribe_everywhere(&nodes, &names).await;
    let publisher = Publisher::connect(&cluster.url()).await.unwrap();
    for round in 1..=3u64 {
        let items = channels
            .iter()
            .map(|channel| Outgoing {
                channel: channel.clone(),
                data: json!(round),
                options: PublishOptions::default(),
            })
            .collect();
        for result in publisher.publish_batch(items).await.unwrap() {
            assert_eq!(result.unwrap().offset, Some(round));
        }
    }
    let expected: HashMap<String, u64> = channels.iter().map(|c| (c.clone(), 3)).collect();
    for subscriber in &mut subscribers {
        let received = read_all(subscriber, &expected).await;
        for channel in &channels {
            assert_eq!(received[channel], [json!(1), json!(2), json!(3)], "{channel}");
        }
    }
    let typing = PublishOptions::event("typing").live_only();
    publisher.publish(&channels[0], &true, &typing).await.unwrap();
    for subscriber in &mut subscribers {
        let publication = subscriber.publication().await;
        assert_eq!((publication.channel.as_str(), publication.offset), (channels[0].as_str(), None));
    }
}
