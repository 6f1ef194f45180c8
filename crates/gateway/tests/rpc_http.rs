//! `rpc` through an HTTP route, on one node with the embedded broker (the `--dev` setup):
//! a real endpoint on a local port, real WebSocket clients.

#![allow(clippy::unwrap_used, missing_docs)]

mod fixture;

use std::time::Duration;

use axum::{http::HeaderMap, routing::post, Json, Router};
use fixture::{config, TestServer};
use serde_json::{json, Value};
use switchboard_gateway::config::RpcRoute;
use switchboard_protocol::{Code, Encoding};

/// The backend: checks the shared secret, then answers by method.
async fn backend(headers: HeaderMap, Json(request): Json<Value>) -> (axum::http::StatusCode, String) {
    use axum::http::StatusCode;
    if headers.get("x-switchboard-secret").and_then(|v| v.to_str().ok()) != Some("s3cret") {
        return (StatusCode::FORBIDDEN, "bad secret".into());
    }
    let answer = match request["method"].as_str().unwrap_or_default() {
        "echo" => {
            json!({"result": {"user": request["user"], "data": request["data"], "client": request["client"]}})
        }
        "deny" => json!({"error": {"code": 1401, "message": "not a member"}}),
        "garbled" => return (StatusCode::OK, "{not json".into()),
        "wrong_code" => json!({"error": {"code": 3001, "message": "pretends to be the server"}}),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            json!({"result": null})
        }
        "crash" => return (StatusCode::INTERNAL_SERVER_ERROR, "boom".into()),
        _ => json!({"result": null}),
    };
    (StatusCode::OK, answer.to_string())
}

async fn start_backend() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, Router::new().route("/rpc", post(backend))).await.unwrap();
    });
    addr
}

async fn server(backend: std::net::SocketAddr) -> TestServer {
    let mut config = config();
    config.rpc.routes = vec![
        RpcRoute {
            prefix: Some("wrong_secret.".into()),
            url: Some(format!("http://{backend}/rpc")),
            secret: Some("guess".into()),
            ..RpcRoute::default()
        },
        RpcRoute {
            method: Some("down".into()),
            // Nothing listens on the discard port here.
            url: Some("http://127.0.0.1:9/rpc".into()),
            ..RpcRoute::default()
        },
        RpcRoute {
            prefix: Some(String::new()),
            url: Some(format!("http://{backend}/rpc")),
            secret: Some("s3cret".into()),
            timeout_ms: Some(500),
            ..RpcRoute::default()
        },
    ];
    TestServer::start(config).await
}

#[tokio::test]
async fn http_route_answers_and_passes_backend_errors_through() {
    let server = server(start_backend().await).await;
    for encoding in [Encoding::Json, Encoding::MsgPack] {
        let mut client = server.connect("ann", encoding).await;
        let result = client.ok("rpc", json!({"method": "echo", "data": {"text": "hi"}})).await;
        assert_eq!(result["data"]["user"], "ann");
        assert_eq!(result["data"]["data"], json!({"text": "hi"}));
        let error = client.err("rpc", json!({"method": "deny"})).await;
        assert_eq!((error.code, error.message.as_str()), (Code::Application(1401), "not a member"));
    }
}

#[tokio::test]
async fn failures_are_specific_errors_and_the_connection_survives() {
    let server = server(start_backend().await).await;
    let mut client = server.connect("bob", Encoding::Json).await;
    for (method, code) in [
        ("garbled", Code::Internal),
        ("wrong_code", Code::Internal),
        ("slow", Code::Timeout),
        ("crash", Code::Unavailable),
        ("down", Code::Unavailable),
        ("wrong_secret.x", Code::Unavailable),
    ] {
        let error = client.err("rpc", json!({"method": method, "data": 1})).await;
        assert_eq!(error.code, code, "{method}: {error:?}");
        if code == Code::Internal {
            assert!(error.message.contains("malformed"), "{}", error.message);
        }
    }
    let error = client.err("rpc", json!({"data": 1})).await;
    assert_eq!(error.code, Code::BadRequest);
    client.ok("ping", json!({})).await;
    let metrics = server.http_get("/metrics").await.1;
    assert!(metrics.contains("switchboard_rpc_errors_total{kind=\"timeout\""), "{metrics}");
}

#[tokio::test]
async fn a_slow_rpc_does_not_hold_up_the_connections_other_commands() {
    let server = server(start_backend().await).await;
    let mut client = server.connect("cy", Encoding::Json).await;
    let slow = client.send("rpc", json!({"method": "slow", "data": null})).await;
    let ping = client.send("ping", json!({})).await;
    // The ping is answered while the rpc still waits for its backend.
    let first = client.frame().await;
    match first {
        switchboard_protocol::codec::ServerFrame::Reply(reply) => assert_eq!(reply.id, ping),
        other => panic!("expected the ping's reply first, got {other:?}"),
    }
    assert_eq!(client.reply(slow).await.error.unwrap().code, Code::Timeout);
}

#[tokio::test]
async fn calls_waiting_at_once_are_bounded_per_connection() {
    let backend = start_backend().await;
    let mut config = config();
    config.rpc.max_in_flight_per_connection = 2;
    config.rpc.routes = vec![RpcRoute {
        prefix: Some(String::new()),
        url: Some(format!("http://{backend}/rpc")),
        secret: Some("s3cret".into()),
        timeout_ms: Some(1000),
        ..RpcRoute::default()
    }];
    let server = TestServer::start(config).await;
    let mut client = server.connect("dee", Encoding::Json).await;
    let a = client.send("rpc", json!({"method": "slow"})).await;
    let b = client.send("rpc", json!({"method": "slow"})).await;
    let error = client.err("rpc", json!({"method": "echo"})).await;
    assert_eq!(error.code, Code::LimitExceeded);
    assert_eq!(client.reply(a).await.error.unwrap().code, Code::Timeout);
    assert_eq!(client.reply(b).await.error.unwrap().code, Code::Timeout);
    // The slots are free again.
    client.ok("rpc", json!({"method": "echo", "data": 2})).await;
}

#[tokio::test]
async fn stream_routes_need_redis_and_bad_routes_stop_the_start() {
    let mut config = config();
    config.rpc.routes =
        vec![RpcRoute { method: Some("x".into()), stream: Some("s".into()), ..RpcRoute::default() }];
    let error = config.normalize().unwrap_err().to_string();
    assert!(error.contains("Redis broker"), "{error}");
    let mut config = fixture::config();
    config.rpc.routes = vec![RpcRoute {
        method: Some("x".into()),
        url: Some("http://127.0.0.1:9/".into()),
        secret_file: Some("/nonexistent/secret".into()),
        ..RpcRoute::default()
    }];
    let error = switchboard_gateway::node::Node::new(config).err().unwrap().to_string();
    assert!(error.contains("secret_file"), "{error}");
}
