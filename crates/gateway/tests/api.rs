//! The HTTP server API: every route, authentication, and its 4xx answers.

#![allow(clippy::unwrap_used, missing_docs)]

mod fixture;

use std::collections::BTreeSet;

use fixture::{config, TestServer};
use serde_json::{json, Value};
use switchboard_gateway::api::ROUTES;
use switchboard_protocol::{push::Push, Code, Encoding};

const KEY: &str = "test-api-key";

async fn start() -> TestServer {
    let mut config = config();
    config.api.keys = vec!["another-key".into(), KEY.into()];
    config.api.max_body_bytes = 8 * 1024;
    config.limits.max_payload_bytes = 2 * 1024;
    TestServer::start(config).await
}

/// Calls the API; returns status and parsed JSON body.
async fn call(
    server: &TestServer,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let addr = server.addr;
    let (method, path, key) = (method.to_string(), path.to_string(), key.map(str::to_string));
    let body = body.map(|b| b.to_string().into_bytes());
    tokio::task::spawn_blocking(move || {
        let header = key.map(|k| ("X-API-Key", k));
        let headers: Vec<(&str, &str)> = header.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let (status, text) = switchboard_testkit::http(addr, &method, &path, &headers, body.as_deref());
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    })
    .await
    .unwrap()
}

async fn raw(server: &TestServer, path: &str, headers: Vec<(String, String)>, body: Vec<u8>) -> (u16, Value) {
    let addr = server.addr;
    let path = path.to_string();
    tokio::task::spawn_blocking(move || {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let (status, text) = switchboard_testkit::http(addr, "POST", &path, &headers, Some(&body));
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_routes_reach_subscribers() {
    let server = start().await;
    let mut client = server.connect("u42", Encoding::Json).await;
    client.ok("subscribe", json!({"channel": "news"})).await;
    client.ok("subscribe", json!({"channel": "open:x"})).await;

    let (status, body) = call(
        &server,
        "POST",
        "/api/v1/publish",
        Some(KEY),
        Some(json!({"channel": "news", "event": "tally", "data": {"yes": 1}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["offset"], 1);
    let publication = client.publication().await;
    assert_eq!((publication.event.as_deref(), publication.data["yes"].clone()), (Some("tally"), json!(1)));
    assert!(publication.from.is_none());

    // Idempotent retry: same offset, delivered once.
    let request = json!({"channel": "news", "data": {"yes": 2}, "idempotency_key": "k1"});
    let (status, first) = call(&server, "POST", "/api/v1/publish", Some(KEY), Some(request.clone())).await;
    assert_eq!(status, 200, "{first}");
    let (status, second) = call(&server, "POST", "/api/v1/publish", Some(KEY), Some(request)).await;
    assert_eq!(status, 200, "{second}");
    assert!(first["offset"].as_u64().is_some(), "{first}");
    assert_eq!(first["offset"], second["offset"]);
    assert_eq!(client.publication().await.data["yes"], 2);

    let (status, body) = call(
        &server,
        "POST",
        "/api/v1/broadcast",
        Some(KEY),
        Some(json!({"channels": ["news", "open:x", "nope:y"], "data": 3})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["results"][0]["offset"], 3);
    assert_eq!(body["results"][2]["error"]["code"], "unknown_namespace");
    let mut got: Vec<String> = vec![client.publication().await.channel, client.publication().await.channel];
    got.sort();
    assert_eq!(got, ["news", "open:x"]);

    let (status, _) = call(
        &server,
        "POST",
        "/api/v1/users/publish",
        Some(KEY),
        Some(json!({"user": "u42", "event": "notification", "data": {"text": "hi"}})),
    )
    .await;
    assert_eq!(status, 200);
    let publication = client.publication().await;
    assert_eq!(publication.channel, "user:u42");

    let (status, body) = call(
        &server,
        "POST",
        "/api/v1/publish",
        Some(KEY),
        Some(json!({"channel": "open:x", "data": "typing", "live_only": true})),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.get("offset").is_none());
    assert_eq!(client.publication().await.offset, None);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_routes() {
    let server = start().await;
    let mut client = server.connect("u1", Encoding::Json).await;
    client.ok("subscribe", json!({"channel": "open:room"})).await;
    client.ok("publish", json!({"channel": "open:room", "data": {"n": 1}})).await;

    let (status, body) = call(&server, "GET", "/api/v1/presence?channel=open:room", Some(KEY), None).await;
    assert_eq!(status, 200);
    assert_eq!(body["clients"][0]["user"], "u1");
    let (_, body) = call(&server, "GET", "/api/v1/presence_stats?channel=open:room", Some(KEY), None).await;
    assert_eq!(body, json!({"clients": 1, "users": 1}));
    let (status, body) =
        call(&server, "GET", "/api/v1/history?channel=open:room&limit=10", Some(KEY), None).await;
    assert_eq!(status, 200);
    assert_eq!(body["publications"][0]["data"]["n"], 1);
    let epoch = body["epoch"].as_str().unwrap().to_string();
    // Unlike a WebSocket history reply, every publication keeps its epoch over HTTP.
    assert_eq!(body["publications"][0]["epoch"], epoch.as_str());
    let (status, body) = call(
        &server,
        "GET",
        &format!("/api/v1/history?channel=open:room&since_offset=1&since_epoch={epoch}"),
        Some(KEY),
        None,
    )
    .await;
    assert_eq!((status, body["publications"].as_array().unwrap().len()), (200, 0));
    let (status, body) = call(
        &server,
        "GET",
        "/api/v1/history?channel=open:room&since_offset=1&since_epoch=other",
        Some(KEY),
        None,
    )
    .await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("unrecoverable_position")));
    let (_, body) = call(&server, "GET", "/api/v1/channels", Some(KEY), None).await;
    let channels: BTreeSet<&str> =
        body["channels"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(channels, BTreeSet::from(["open:room", "user:u1"]));
    let (status, body) = call(&server, "GET", "/api/v1/info", Some(KEY), None).await;
    assert_eq!(status, 200);
    assert_eq!(body["node"], server.node.id.as_str());
    assert_eq!(body["connections"], 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_routes_disconnect_and_unsubscribe() {
    let server = start().await;
    let mut phone = server.connect("u7", Encoding::Json).await;
    phone.ok("subscribe", json!({"channel": "open:deal"})).await;
    let (status, _) = call(
        &server,
        "POST",
        "/api/v1/users/unsubscribe",
        Some(KEY),
        Some(json!({"user": "u7", "channel": "open:deal"})),
    )
    .await;
    assert_eq!(status, 202);
    loop {
        match phone.push().await {
            Push::Join(_) => continue,
            Push::Unsubscribe(unsubscribed) => break assert_eq!(unsubscribed.channel, "open:deal"),
            other => panic!("expected unsubscribe push, got {other:?}"),
        }
    }
    assert_eq!(phone.err("unsubscribe", json!({"channel": "open:deal"})).await.code, Code::NotSubscribed);
    let (status, _) = call(
        &server,
        "POST",
        "/api/v1/users/disconnect",
        Some(KEY),
        Some(json!({"user": "u7", "reason": "account closed"})),
    )
    .await;
    assert_eq!(status, 202);
    let (disconnect, closed) = phone.closed().await;
    let disconnect = disconnect.unwrap();
    assert_eq!(
        (disconnect.code, disconnect.reason.as_str(), disconnect.reconnect),
        (Code::ForceDisconnect, "account closed", false)
    );
    assert_eq!(closed.code(), Some(Code::ForceDisconnect.as_u16()));
    let (status, body) =
        call(&server, "POST", "/api/v1/users/disconnect", Some(KEY), Some(json!({"user": "nobody"}))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("unknown_user")));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_and_bad_input() {
    let server = start().await;
    let publish_body = json!({"channel": "news", "data": 1});
    let publish = Some(publish_body.clone());
    let (status, body) = call(&server, "POST", "/api/v1/publish", None, publish.clone()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")));
    let (status, _) = call(&server, "POST", "/api/v1/publish", Some("test-api-kez"), publish.clone()).await;
    assert_eq!(status, 401);
    let (status, _) = call(&server, "GET", "/api/v1/info", Some("x"), None).await;
    assert_eq!(status, 401);
    let bearer = vec![("Authorization".to_string(), format!("Bearer {KEY}"))];
    let (status, _) = raw(&server, "/api/v1/publish", bearer, publish_body.to_string().into_bytes()).await;
    assert_eq!(status, 200);

    let cases = [
        ("/api/v1/publish", json!({"channel": "bad channel", "data": 1}), 400, "invalid_channel"),
        ("/api/v1/publish", json!({"channel": "nope:x", "data": 1}), 400, "unknown_namespace"),
        ("/api/v1/publish", json!({"channel": "news"}), 400, "bad_request"),
        ("/api/v1/publish", json!({"channel": "news", "data": 1, "extra": true}), 400, "bad_request"),
        ("/api/v1/publish", json!({"channel": "news", "data": "x".repeat(3000)}), 413, "payload_too_large"),
        ("/api/v1/broadcast", json!({"channels": [], "data": 1}), 400, "bad_request"),
        ("/api/v1/users/publish", json!({"user": "has space", "data": 1}), 400, "invalid_channel"),
        ("/api/v1/users/unsubscribe", json!({"user": "nobody", "channel": "news"}), 404, "unknown_user"),
        ("/api/v1/users/subscribe", json!({"user": "nobody", "channel": "news"}), 404, "unknown_user"),
        ("/api/v1/users/subscribe", json!({"user": "u", "channel": "nope:x"}), 400, "unknown_namespace"),
        (
            "/api/v1/users/subscribe",
            json!({"user": "u", "channel": "news", "recover": {"offset": -1}}),
            400,
            "bad_request",
        ),
    ];
    for (path, body, status, code) in cases {
        let (got, answer) = call(&server, "POST", path, Some(KEY), Some(body.clone())).await;
        assert_eq!((got, answer["error"]["code"].as_str()), (status, Some(code)), "{path} {body}: {answer}");
        assert!(answer["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let key = vec![("X-API-Key".to_string(), KEY.to_string())];
    let (status, body) = raw(&server, "/api/v1/publish", key.clone(), b"{not json".to_vec()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("bad_request")));
    let big = json!({"channel": "news", "data": "x".repeat(10_000)}).to_string().into_bytes();
    let (status, body) = raw(&server, "/api/v1/publish", key, big).await;
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("body_too_large")));
    let (status, body) = call(&server, "GET", "/api/v1/presence", Some(KEY), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("bad_request")));
    let (status, body) = call(&server, "GET", "/api/v1/presence?channel=nohist:x", Some(KEY), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("not_available")));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_is_disabled_without_keys() {
    let server = TestServer::start(config()).await;
    let (status, body) = call(&server, "GET", "/api/v1/info", Some("anything"), None).await;
    assert_eq!(status, 401);
    assert!(body["error"]["message"].as_str().unwrap().contains("api.keys"));
    server.shutdown().await;
}

/// The routes of the real router, read from its source: every `.route("<path>",
/// <method>(…)…)` in src/http.rs and src/api.rs, as (METHOD, path). axum cannot list a
/// router's routes, and a hand-kept list drifts; the source cannot.
fn routes_in_source() -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for file in ["http.rs", "api.rs"] {
        let path = format!("{}/src/{file}", env!("CARGO_MANIFEST_DIR"));
        let source = std::fs::read_to_string(&path).unwrap();
        for call in source.split(".route(").skip(1) {
            let call = call.trim_start();
            let path = call.strip_prefix('"').and_then(|rest| rest.split_once('"')).map(|(p, _)| p);
            let path =
                path.unwrap_or_else(|| panic!("{file}: a route whose path is not a literal: {call:.60}"));
            let handlers = call.split_once(',').unwrap().1;
            // The method router: `get(…)`, possibly chained as `get(…).post(…)`.
            let mut methods = Vec::new();
            let mut rest = handlers.trim_start();
            loop {
                let name: String = rest.chars().take_while(|c| c.is_ascii_lowercase()).collect();
                assert!(
                    ["get", "post", "put", "patch", "delete", "any"].contains(&name.as_str()),
                    "{file}: route {path} uses `{name}`; teach this test about it"
                );
                methods.push(name.to_uppercase());
                // Skip the balanced parentheses of this handler.
                let mut depth = 0;
                let mut end = 0;
                for (i, c) in rest.char_indices().skip(name.len()) {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                rest = &rest[end..];
                match rest.trim_start().strip_prefix('.') {
                    Some(chained) if !chained.starts_with("route") => rest = chained,
                    _ => break,
                }
            }
            for method in methods {
                routes.insert((method, path.to_string()));
            }
        }
    }
    routes
}

/// The OpenAPI document lists exactly the API routes of the router (read from its
/// source), `ROUTES` is the same list, and a live server answers each as documented: every
/// documented route is routed (401 without a key, not 404/405), and no other method is
/// served on a documented path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_matches_the_routes() {
    let server = start().await;
    let (status, served) = call(&server, "GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(status, 200);
    let mut documented = BTreeSet::new();
    for (path, operations) in served["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let in_source = routes_in_source();
    for expected in [("GET", "/ws"), ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")] {
        assert!(
            in_source.contains(&(expected.0.into(), expected.1.into())),
            "the source scan misses {expected:?}"
        );
    }
    let api_routes: BTreeSet<(String, String)> =
        in_source.into_iter().filter(|(_, path)| path.starts_with("/api/")).collect();
    assert_eq!(documented, api_routes, "docs/openapi.json against the router's routes");
    let listed: BTreeSet<(String, String)> =
        ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(listed, api_routes, "api::ROUTES against the router's routes");

    for (method, path) in &documented {
        let body = (method == "POST").then(|| json!({}));
        let (status, answer) = call(&server, method, path, None, body).await;
        let expected = if path == "/api/v1/openapi.json" { 200 } else { 401 };
        assert_eq!(status, expected, "{method} {path}: {answer}");
        for other in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            if documented.contains(&(other.to_string(), path.clone())) {
                continue;
            }
            let body = (other != "GET").then(|| json!({}));
            let (status, answer) = call(&server, other, path, Some(KEY), body).await;
            assert_eq!(status, 405, "{other} {path} is served but not documented: {answer}");
        }
    }
    let (status, _) = call(&server, "GET", "/api/v1/no-such-route", Some(KEY), None).await;
    assert_eq!(status, 404);
    server.shutdown().await;
}
