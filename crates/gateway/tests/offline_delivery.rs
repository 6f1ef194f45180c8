//! Offline delivery on the personal channel with the embedded broker (protocol §3.1,
//! §4.10): acknowledgements only move forward, another epoch replaces them, trimmed
//! publications make delivery incomplete, anonymous connections cannot ack. The same
//! rules against Redis are in redis_edges.rs.

#![allow(clippy::unwrap_used, missing_docs)]

mod fixture;

use fixture::{config, connect_offline, TestServer};
use serde_json::json;
use switchboard_gateway::config::{NamespaceConfig, SubscribePolicy};
use switchboard_protocol::{Code, Encoding};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_move_forward_and_foreign_epochs_replace_them() {
    let server = TestServer::start(config()).await;
    for n in 1..=5 {
        server.backend_publish("user:o1", "notification", json!({"n": n})).await;
    }
    let (subscription, offsets) = connect_offline(&server.url(), "o1").await;
    assert_eq!((subscription["recovered"].clone(), offsets), (json!(true), vec![1, 2, 3, 4, 5]));
    let epoch = subscription["epoch"].as_str().unwrap().to_string();
    fixture::offline_ack_edges(&server.url(), "o1", &epoch).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimmed_notifications_make_offline_delivery_incomplete() {
    let mut config = config();
    config.namespaces.push(NamespaceConfig {
        name: NamespaceConfig::PERSONAL.into(),
        subscribe: SubscribePolicy::Owner,
        presence: false,
        history_size: 3,
        history_ttl_secs: 86_400,
        ..NamespaceConfig::default()
    });
    let server = TestServer::start(config).await;
    for n in 1..=6 {
        server.backend_publish("user:o2", "notification", json!({"n": n})).await;
    }
    // Never acknowledged: offsets 1..=3 are gone.
    let (subscription, offsets) = connect_offline(&server.url(), "o2").await;
    assert_eq!(subscription["recovered"], false, "{subscription}");
    assert_eq!((subscription["missed"].clone(), offsets), (json!(3), vec![4, 5, 6]));
    // Acknowledged at 1: 2 and 3 are gone.
    let epoch = subscription["epoch"].as_str().unwrap().to_string();
    let mut device = server.connect("o2", Encoding::Json).await;
    device.ok("ack", json!({"channel": "user:o2", "offset": 1, "epoch": epoch})).await;
    let (subscription, offsets) = connect_offline(&server.url(), "o2").await;
    assert_eq!((subscription["recovered"].clone(), offsets), (json!(false), vec![4, 5, 6]), "{subscription}");
    // Acknowledged at 3, right before the oldest retained: complete again.
    device.ok("ack", json!({"channel": "user:o2", "offset": 3, "epoch": epoch})).await;
    let (subscription, offsets) = connect_offline(&server.url(), "o2").await;
    assert_eq!((subscription["recovered"].clone(), offsets), (json!(true), vec![4, 5, 6]), "{subscription}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_connections_cannot_acknowledge() {
    let mut config = config();
    config.auth.allow_anonymous = true;
    let server = TestServer::start(config).await;
    let mut anonymous = server.open(Encoding::Json).await;
    anonymous.ok("connect", json!({})).await;
    let epoch = anonymous.ok("history", json!({"channel": "open:a", "limit": 0})).await["epoch"].clone();
    let error = anonymous.err("ack", json!({"channel": "open:a", "offset": 0, "epoch": epoch})).await;
    assert_eq!(error.code, Code::NotAvailable);
    server.shutdown().await;
}
