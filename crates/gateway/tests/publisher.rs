//! The publisher crate against a three-node cluster: real Redis, real gateway processes,
//! real WebSocket subscribers on every node.

#![allow(clippy::unwrap_used, missing_docs)]

mod fixture;

use fixture::{cluster::start_nodes, cluster::SERIAL, connect_url, Client};
use serde::Serialize;
use serde_json::json;
use switchboard_protocol::Encoding;
use switchboard_publisher::{DomainEvent, Outgoing, PublishError, PublishOptions, Publisher};
use switchboard_testkit::{Gateway, Persistence, RedisServer};

async fn subscribers(nodes: &[Gateway], channel: &str) -> Vec<Client> {
    let mut clients = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut client = connect_url(&node.ws_url(), &format!("s{i}"), Encoding::Json).await;
        client.ok("subscribe", json!({"channel": channel})).await;
        clients.push(client);
    }
    clients
}

#[derive(Serialize)]
struct VoteCast {
    proposal: u32,
    yes: u64,
    no: u64,
    quorum_progress: f64,
}

impl DomainEvent for VoteCast {
    const EVENT: &'static str = "vote";

    fn channel(&self) -> String {
        format!("dao:proposal-{}", self.proposal)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_reaches_every_node_and_retries_are_delivered_once() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let nodes = start_nodes(&redis, 3);
    let publisher = Publisher::connect(&redis.url()).await.unwrap();
    let mut clients = subscribers(&nodes, "dao:proposal-7").await;

    let first = publisher
        .publish_event(&VoteCast { proposal: 7, yes: 10, no: 2, quorum_progress: 0.4 })
        .await
        .unwrap();
    assert_eq!(first.offset, Some(1));
    // A retried publish with the same idempotency key is stored and delivered once.
    let options = PublishOptions::event("vote").idempotent("vote-8812");
    let data = json!({"yes": 11, "no": 2, "quorum_progress": 0.45});
    let a = publisher.publish("dao:proposal-7", &data, &options).await.unwrap();
    let b = publisher.publish("dao:proposal-7", &data, &options).await.unwrap();
    assert_eq!((a.offset, a.duplicate), (Some(2), false));
    assert_eq!((b.offset, b.epoch.clone(), b.duplicate), (Some(2), a.epoch.clone(), true));
    publisher
        .publish("dao:proposal-7", &json!({"closed": true}), &PublishOptions::event("closed"))
        .await
        .unwrap();
    for client in &mut clients {
        let events: Vec<(Option<u64>, Option<String>)> = {
            let mut events = Vec::new();
            for _ in 0..3 {
                let publication = client.publication().await;
                events.push((publication.offset, publication.event));
            }
            events
        };
        assert_eq!(
            events,
            vec![
                (Some(1), Some("vote".into())),
                (Some(2), Some("vote".into())),
                (Some(3), Some("closed".into()))
            ]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_broadcast_batch_and_errors() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let nodes = start_nodes(&redis, 2);
    let publisher = Publisher::connect(&redis.url()).await.unwrap();
    let mut phone = connect_url(&nodes[0].ws_url(), "u42", Encoding::Json).await;
    let mut laptop = connect_url(&nodes[1].ws_url(), "u42", Encoding::MsgPack).await;
    let notification = json!({"priority": "high", "text": "Vault 12 LTV 82%"});
    publisher.publish_to_user("u42", &notification, &PublishOptions::event("risk_alert")).await.unwrap();
    assert_eq!(phone.publication().await.data, notification);
    assert_eq!(laptop.publication().await.data, notification);

    let mut a = subscribers(&nodes[..1], "dao:a").await;
    let mut b = subscribers(&nodes[1..], "dao:b").await;
    let results = publisher
        .broadcast(&["dao:a", "dao:b", "nope:c"], &json!({"consensus": 0.67}), &PublishOptions::default())
        .await
        .unwrap();
    assert!(results[0].is_ok() && results[1].is_ok());
    assert!(matches!(results[2], Err(PublishError::UnknownNamespace(_))));
    assert_eq!(a[0].publication().await.data["consensus"], 0.67);
    assert_eq!(b[0].publication().await.data["consensus"], 0.67);

    let batch: Vec<Outgoing> = (1..=50)
        .map(|n| Outgoing {
            channel: "dao:a".into(),
            data: json!({"n": n}),
            options: PublishOptions::default(),
        })
        .collect();
    let results = publisher.publish_batch(batch).await.unwrap();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 50);
    for n in 1..=50 {
        assert_eq!(a[0].publication().await.data["n"], n);
    }
    assert!(matches!(
        publisher.publish("bad channel", &1, &PublishOptions::default()).await,
        Err(PublishError::InvalidChannel { .. })
    ));
    let live =
        publisher.publish("dao:b", &json!("typing"), &PublishOptions::default().live_only()).await.unwrap();
    assert_eq!(live.offset, None);
    assert_eq!(b[0].publication().await.offset, None);
}
