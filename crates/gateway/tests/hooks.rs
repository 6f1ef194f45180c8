//! Namespace hooks through an HTTP route, on one node: the backend decides on
//! subscriptions (membership, initial data) and on client publications (store, stamp,
//! reject) before they happen.

#![allow(clippy::unwrap_used, missing_docs)]

mod fixture;

use std::time::Duration;

use axum::{routing::post, Json, Router};
use fixture::{config, TestServer};
use serde_json::{json, Value};
use switchboard_gateway::config::{NamespaceConfig, RpcRoute};
use switchboard_protocol::{Code, Encoding, Push};

async fn backend(Json(request): Json<Value>) -> String {
    let (method, user, data) =
        (request["method"].as_str().unwrap(), request["user"].as_str().unwrap(), &request["data"]);
    let answer = match (method, data["channel"].as_str().unwrap_or_default()) {
        ("sb.subscribe", "club:members") if user == "ann" => {
            json!({"result": {"data": {"welcome": "hi ann"}}})
        }
        ("sb.subscribe", "club:members") => json!({"error": {"code": 1403, "message": "not a member"}}),
        ("sb.subscribe", "club:slow") => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            json!({"result": null})
        }
        ("sb.subscribe", "club:garbled") => json!({"result": 5}),
        ("sb.subscribe", _) => json!({"result": null}),
        ("sb.publish", _) if data["data"]["text"] == "badword" => {
            json!({"error": {"code": 1422, "message": "rejected by moderation"}})
        }
        ("sb.publish", _) => {
            let mut stored = data["data"].clone();
            stored["id"] = json!(42);
            json!({"result": {"data": stored, "event": "stored"}})
        }
        _ => json!({"error": {"code": 1404, "message": "unknown"}}),
    };
    answer.to_string()
}

async fn server() -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, Router::new().route("/hooks", post(backend))).await.unwrap();
    });
    let mut config = config();
    config.namespaces.push(NamespaceConfig {
        name: "club".into(),
        publish: true,
        subscribe_hook: true,
        publish_hook: true,
        ..NamespaceConfig::default()
    });
    config.rpc.routes = vec![RpcRoute {
        prefix: Some("sb.".into()),
        url: Some(format!("http://{addr}/hooks")),
        timeout_ms: Some(1000),
        ..RpcRoute::default()
    }];
    TestServer::start(config).await
}

#[tokio::test]
async fn the_subscribe_hook_admits_members_with_initial_data_and_denies_others() {
    let server = server().await;
    let mut ann = server.connect("ann", Encoding::Json).await;
    let result = ann.ok("subscribe", json!({"channel": "club:members"})).await;
    assert_eq!(result["data"], json!({"welcome": "hi ann"}));

    let mut bob = server.connect("bob", Encoding::MsgPack).await;
    let error = bob.err("subscribe", json!({"channel": "club:members"})).await;
    assert_eq!((error.code, error.message.as_str()), (Code::Application(1403), "not a member"));
    // Denied means nothing happened: not subscribed, and no side door through publish,
    // presence or history, which need the hook's admission too.
    assert_eq!(bob.err("unsubscribe", json!({"channel": "club:members"})).await.code, Code::NotSubscribed);
    let error = bob.err("publish", json!({"channel": "club:members", "data": {"text": "hi"}})).await;
    assert_eq!(error.code, Code::PermissionDenied);
    assert_eq!(bob.err("history", json!({"channel": "club:members"})).await.code, Code::PermissionDenied);
    ann.silent_for(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_failing_subscribe_hook_denies_with_a_temporary_error_and_leaves_nothing() {
    let server = server().await;
    let mut ann = server.connect("ann", Encoding::Json).await;
    let error = ann.err("subscribe", json!({"channel": "club:slow"})).await;
    assert_eq!((error.code, error.temporary), (Code::Timeout, true));
    assert_eq!(ann.err("unsubscribe", json!({"channel": "club:slow"})).await.code, Code::NotSubscribed);
    let error = ann.err("subscribe", json!({"channel": "club:garbled"})).await;
    assert_eq!(error.code, Code::Internal);
    assert!(error.message.contains("malformed"), "{}", error.message);
    // The connection is unharmed.
    ann.ok("subscribe", json!({"channel": "club:open"})).await;
}

#[tokio::test]
async fn the_publish_hook_rewrites_or_rejects_before_anyone_sees_it() {
    let server = server().await;
    let mut ann = server.connect("ann", Encoding::Json).await;
    ann.ok("subscribe", json!({"channel": "club:members"})).await;
    let mut carl = server.connect("carl", Encoding::Json).await;
    carl.ok("subscribe", json!({"channel": "club:open"})).await;

    let published = ann
        .ok("publish", json!({"channel": "club:members", "event": "msg", "data": {"text": "hello"}}))
        .await;
    assert_eq!(published["offset"], 1);
    let publication = ann.publication().await;
    assert_eq!(publication.event.as_deref(), Some("stored"));
    assert_eq!(publication.data, json!({"text": "hello", "id": 42}));

    let error = ann.err("publish", json!({"channel": "club:members", "data": {"text": "badword"}})).await;
    assert_eq!((error.code, error.message.as_str()), (Code::Application(1422), "rejected by moderation"));
    ann.silent_for(Duration::from_millis(200)).await;
    // Nothing was stored either: history holds the one accepted publication.
    let history = ann.ok("history", json!({"channel": "club:members"})).await;
    assert_eq!(history["publications"].as_array().unwrap().len(), 1);
    match carl.call("publish", json!({"channel": "club:open", "data": {"text": "x"}})).await.result {
        Some(_) => assert!(matches!(carl.push().await, Push::Publication(_))),
        None => panic!("carl's publish failed"),
    }
}

#[tokio::test]
async fn a_hook_without_a_route_is_a_configuration_error() {
    let mut config = config();
    config.namespaces.push(NamespaceConfig {
        name: "x".into(),
        publish_hook: true,
        ..NamespaceConfig::default()
    });
    let error = config.normalize().unwrap_err().to_string();
    assert!(error.contains("sb.publish"), "{error}");
}
