//! `rpc` through a Redis stream route on a cluster: real Redis, gateway processes of the
//! built binary, real WebSocket clients, workers of the publisher crate.

#![allow(clippy::unwrap_used, missing_docs)]

mod fixture;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use fixture::{cluster::start_nodes, cluster::SERIAL, connect_url};
use serde_json::json;
use switchboard_protocol::{Code, Encoding};
use switchboard_publisher::worker::{RpcFailure, RpcRequest, Worker};
use switchboard_testkit::{Persistence, RedisServer};
use tokio::sync::oneshot;

/// Starts a worker of the `votes` route in the background; returns its stop switch and
/// its task.
async fn spawn_worker<H, F>(
    redis: &RedisServer,
    stream: &str,
    claim_after: Duration,
    handler: H,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>)
where
    H: Fn(RpcRequest) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = Result<serde_json::Value, RpcFailure>> + Send + 'static,
{
    let worker = Worker::connect(&redis.url(), stream).await.unwrap().concurrency(8).claim_after(claim_after);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        worker
            .serve(handler, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (stop, task)
}

fn echo(request: RpcRequest) -> Result<serde_json::Value, RpcFailure> {
    match request.method.as_str() {
        "votes.fail" => Err(RpcFailure::new(1403, "already voted")),
        _ => Ok(json!({
            "method": request.method,
            "user": request.user,
            "data": request.data,
            "node": request.node,
            "key": request.idempotency_key,
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_round_trips_on_every_node_with_backend_errors_passed_through() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let nodes = start_nodes(&redis, 3);
    let (stop, worker) =
        spawn_worker(&redis, "votes", Duration::from_secs(5), |r| async move { echo(r) }).await;

    for (n, node) in nodes.iter().enumerate() {
        for encoding in [Encoding::Json, Encoding::MsgPack] {
            let mut client = connect_url(&node.ws_url(), &format!("voter{n}"), encoding).await;
            let connected = client.ok("ping", json!({})).await;
            assert_eq!(connected, json!({}));
            let params = json!({"method": "votes.cast", "data": {"proposal": 7, "choice": "for"}, "idempotency_key": "k1"});
            let result = client.ok("rpc", params).await;
            assert_eq!(result["data"]["user"], format!("voter{n}"));
            assert_eq!(result["data"]["data"], json!({"proposal": 7, "choice": "for"}));
            assert_eq!(result["data"]["method"], "votes.cast");
            assert_eq!(result["data"]["key"], "k1");
            let error = client.err("rpc", json!({"method": "votes.fail", "data": null})).await;
            assert_eq!(
                (error.code, error.message.as_str(), error.temporary),
                (Code::Application(1403), "already voted", false)
            );
        }
    }
    // Every request was answered and deleted: the stream holds nothing.
    assert_eq!(redis.cli(&["XLEN", "sb:rpc:{votes}"]).trim(), "0");

    let mut client = connect_url(&nodes[0].ws_url(), "u", Encoding::Json).await;
    let error = client.err("rpc", json!({"method": "unrouted", "data": 1})).await;
    assert_eq!(error.code, Code::NoRoute);
    let big = "x".repeat(40_000);
    let error = client.err("rpc", json!({"method": "votes.cast", "data": big})).await;
    assert_eq!(error.code, Code::PayloadTooLarge);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), worker).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workers_requests_are_claimed_and_answered_once() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let nodes = start_nodes(&redis, 2);
    // The first worker takes requests and never answers: it stands for a worker that was
    // killed holding them (its entries stay pending in the group).
    let taken = Arc::new(AtomicUsize::new(0));
    let seen = taken.clone();
    let (_stuck_stop, stuck) = spawn_worker(&redis, "votes", Duration::from_secs(60), move |_request| {
        seen.fetch_add(1, Ordering::SeqCst);
        std::future::pending()
    })
    .await;
    let mut clients = Vec::new();
    for n in 0..4 {
        let mut client = connect_url(&nodes[n % 2].ws_url(), &format!("c{n}"), Encoding::Json).await;
        let id = client.send("rpc", json!({"method": "votes.cast", "data": {"n": n}})).await;
        clients.push((client, id));
    }
    fixture::eventually("the stuck worker holds every request", || {
        let taken = taken.clone();
        async move { taken.load(Ordering::SeqCst) == 4 }
    })
    .await;
    stuck.abort();
    // A second worker claims them once they have been idle for 300 ms.
    let answered = Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    let (stop, worker) = spawn_worker(&redis, "votes", Duration::from_millis(300), move |request| {
        count.fetch_add(1, Ordering::SeqCst);
        async move { echo(request) }
    })
    .await;
    for (n, (client, id)) in clients.iter_mut().enumerate() {
        let reply = client.reply(*id).await;
        assert_eq!(reply.result.unwrap()["data"]["data"], json!({"n": n}), "{:?}", reply.error);
        client.silent_for(Duration::from_millis(300)).await;
    }
    assert_eq!(answered.load(Ordering::SeqCst), 4);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), worker).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_workers_the_client_gets_a_timeout_and_a_late_answer_is_dropped() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let nodes = start_nodes(&redis, 1);
    let mut client = connect_url(&nodes[0].ws_url(), "impatient", Encoding::Json).await;
    let started = std::time::Instant::now();
    let error = client.err("rpc", json!({"method": "slow", "data": {}})).await;
    assert_eq!((error.code, error.temporary), (Code::Timeout, true));
    assert!(started.elapsed() >= Duration::from_millis(900), "answered before the deadline");
    // The connection is still fine.
    client.ok("ping", json!({})).await;
    // A worker that starts now finds the expired request and acknowledges it without
    // calling its handler; nothing reaches the client.
    let handled = Arc::new(AtomicUsize::new(0));
    let count = handled.clone();
    let (stop, worker) = spawn_worker(&redis, "slow", Duration::from_secs(5), move |request| {
        count.fetch_add(1, Ordering::SeqCst);
        async move { echo(request) }
    })
    .await;
    fixture::eventually("the expired request is acknowledged", || {
        let redis_len = redis.cli(&["XLEN", "sb:rpc:{slow}"]);
        async move { redis_len.trim() == "0" }
    })
    .await;
    client.silent_for(Duration::from_millis(300)).await;
    assert_eq!(handled.load(Ordering::SeqCst), 0);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), worker).await.unwrap().unwrap();
}
