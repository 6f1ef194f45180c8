//! Hooks through an HTTP route, on one node: the backend decides who a token-less
//! connection is (connect hook), on subscriptions (membership, initial data) and on
//! client publications (store, stamp, reject) before they happen.

#![allow(clippy::unwrap_used, missing_docs)]

mod fixture;

use std::time::Duration;

use axum::{routing::post, Json, Router};
use fixture::{config, Client, TestServer};
use serde_json::{json, Value};
use switchboard_gateway::config::{NamespaceConfig, RpcRoute};
use switchboard_protocol::{Code, Encoding, Push};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue};

async fn backend(Json(request): Json<Value>) -> String {
    let (method, user, data) =
        (request["method"].as_str().unwrap(), request["user"].as_str().unwrap(), &request["data"]);
    if method == "sb.connect" {
        return connect_hook(data).await.to_string();
    }
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
            assert_eq!(data["ephemeral"], false, "{data}");
            if let Some(key) = data["idempotency_key"].as_str() {
                stored["key"] = json!(key);
            }
            json!({"result": {"data": stored, "event": "stored"}})
        }
        _ => json!({"error": {"code": 1404, "message": "unknown"}}),
    };
    answer.to_string()
}

/// The connect hook: a session cookie, or a session id sent in `connect.data`.
async fn connect_hook(request: &Value) -> Value {
    let cookie = request["headers"]["cookie"].as_str().unwrap_or_default();
    let session = request["data"]["session"].as_str().unwrap_or_default();
    assert_eq!(request["remote"], "127.0.0.1");
    match (cookie, session) {
        ("sid=ann-session", _) | (_, "ann-session") => json!({"result": {
            "user": "ann",
            "info": {"name": "Ann"},
            "channels": ["club:open", "open:portfolio-ann"],
        }}),
        (_, "anonymous") => json!({"result": {"user": ""}}),
        (_, "expired") => json!({"error": {"code": 1401, "message": "session expired"}}),
        (_, "slow") => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            json!({"result": {"user": "late"}})
        }
        (_, "garbled") => json!({"result": {"user": 5}}),
        (_, "bad-channel") => json!({"result": {"user": "ann", "channels": ["nope:x"]}}),
        _ => json!({"error": {"code": 1400, "message": "no session"}}),
    }
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
    config.auth.connect_hook = true;
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

#[tokio::test]
async fn the_connect_hook_admits_a_cookie_or_session_and_subscribes_its_channels() {
    let server = server().await;
    // A publication the connection missed before it connected, to recover at connect.
    let mut ann = server.connect("ann", Encoding::Json).await;
    ann.ok("subscribe", json!({"channel": "open:portfolio-ann"})).await;
    let first = ann.ok("publish", json!({"channel": "open:portfolio-ann", "data": 1})).await;
    let epoch = first["epoch"].clone();
    ann.ok("publish", json!({"channel": "open:portfolio-ann", "data": 2})).await;

    // The cookie of the upgrade request, no token anywhere.
    let mut request = server.url().into_client_request().unwrap();
    request.headers_mut().insert("Cookie", HeaderValue::from_static("sid=ann-session"));
    let mut by_cookie = Client::open(request, Encoding::Json).await;
    let connected = by_cookie
        .ok("connect", json!({"channels": {"open:portfolio-ann": {"offset": 1, "epoch": epoch}}}))
        .await;
    assert_eq!(connected["user"], "ann");
    let channels: Vec<&str> = connected["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["channel"].as_str().unwrap())
        .collect();
    assert_eq!(channels, ["user:ann", "club:open", "open:portfolio-ann"]);
    assert_eq!(connected["subscriptions"][2]["recovered"], true);
    let missed = by_cookie.publication().await;
    assert_eq!((missed.offset, missed.data), (Some(2), json!(2)));
    // Live, and the hook's `info` is the connection's identity in presence.
    ann.ok("subscribe", json!({"channel": "club:open"})).await;
    ann.ok("publish", json!({"channel": "club:open", "data": {"text": "hi"}})).await;
    assert_eq!(by_cookie.publication().await.data, json!({"text": "hi", "id": 42}));
    let presence = by_cookie.ok("presence", json!({"channel": "club:open"})).await;
    let infos: Vec<&Value> = presence["clients"].as_array().unwrap().iter().map(|c| &c["info"]).collect();
    assert!(infos.contains(&&json!({"name": "Ann"})), "{presence}");

    // A session id in `connect.data`; an empty user is an anonymous connection.
    let mut by_data = server.open(Encoding::MsgPack).await;
    assert_eq!(by_data.ok("connect", json!({"data": {"session": "ann-session"}})).await["user"], "ann");
    let mut anonymous = server.open(Encoding::Json).await;
    let connected = anonymous.ok("connect", json!({"data": {"session": "anonymous"}})).await;
    assert_eq!(
        (connected["user"].as_str(), connected["subscriptions"].as_array().unwrap().len()),
        (Some(""), 0)
    );
    // A token still works, without the hook.
    server.connect("bob", Encoding::Json).await.ok("ping", Value::Null).await;
}

#[tokio::test]
async fn a_connect_hook_that_denies_fails_or_answers_garbage_refuses_the_connection() {
    let server = server().await;
    let cases = [
        ("expired", Code::Application(1401), Some(3501)),
        ("slow", Code::Timeout, Some(3006)),
        ("garbled", Code::Internal, Some(3006)),
        ("bad-channel", Code::Internal, Some(3006)),
    ];
    for (session, code, close) in cases {
        let mut client = server.open(Encoding::Json).await;
        let error = client.err("connect", json!({"data": {"session": session}})).await;
        assert_eq!(error.code, code, "{session}: {}", error.message);
        assert_eq!(client.closed().await.1.code(), close, "{session}");
    }
    let metrics = server.http_get("/metrics").await.1;
    assert!(metrics.contains(r#"switchboard_auth_failures_total{reason="connect_hook"} 4"#), "{metrics}");
}

#[tokio::test]
async fn the_connect_hook_needs_a_route() {
    let mut config = config();
    config.auth.connect_hook = true;
    let error = config.normalize().unwrap_err().to_string();
    assert!(error.contains("sb.connect"), "{error}");
}

#[tokio::test]
async fn clients_cannot_call_the_hooks_and_the_publish_hook_sees_the_idempotency_key() {
    let server = server().await;
    let mut ann = server.connect("ann", Encoding::Json).await;
    for method in ["sb.publish", "sb.subscribe", "sb.connect", "sb.anything"] {
        let forged = json!({"method": method, "data": {"channel": "club:members", "data": {"text": "x"}}});
        let error = ann.err("rpc", forged).await;
        assert_eq!(error.code, Code::PermissionDenied, "{method}: {}", error.message);
    }
    ann.ok("subscribe", json!({"channel": "club:members"})).await;
    let params = json!({"channel": "club:members", "data": {"text": "hi"}, "idempotency_key": "m-1"});
    ann.ok("publish", params).await;
    assert_eq!(ann.publication().await.data, json!({"text": "hi", "id": 42, "key": "m-1"}));
}

/// Socket.IO clients go through the same connect hook: the CONNECT's `auth` object is
/// the hook's `data`, a denial is a CONNECT_ERROR carrying the backend's code.
#[tokio::test]
async fn the_connect_hook_serves_socketio_clients_with_their_auth_object() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let server = server().await;
    async fn first_reply(server: &TestServer, connect: &str) -> String {
        let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.addr);
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut texts: Vec<String> = Vec::new();
        while texts.len() < 2 {
            if texts.len() == 1 && texts[0] != "sent" {
                assert!(texts[0].starts_with("0{"), "{texts:?}");
                ws.send(Message::Text(connect.into())).await.unwrap();
                texts[0] = "sent".into();
            }
            match tokio::time::timeout(fixture::WAIT, ws.next()).await.expect("a frame in time") {
                Some(Ok(Message::Text(text))) => texts.push(text.to_string()),
                other => panic!("expected a text frame: {other:?}"),
            }
        }
        texts.pop().unwrap()
    }
    let admitted = first_reply(&server, r#"40{"session":"ann-session"}"#).await;
    assert!(admitted.starts_with(r#"40{"sid":""#), "{admitted}");
    let denied = first_reply(&server, r#"40{"session":"expired"}"#).await;
    assert!(denied.starts_with(r#"44{"data":{"code":1401}"#), "{denied}");
}
