//! Cluster-mode promises of docs/operations.md ("During a Redis outage") and docs/redis.md
//! (§6, §7) that need Redis in a particular state: stopped, frozen, full, or holding a
//! stream the live channel disagrees with. Every check asserts the answer (codes, order,
//! counters), never how long it took.

#![allow(clippy::unwrap_used, missing_docs)]

mod fixture;

use fixture::{
    cluster::{redis_cli_publish, start_node_at, API_KEY, SERIAL},
    connect_url, eventually, Client,
};
use serde_json::{json, Value};
use switchboard_protocol::{push::Push, Code, Encoding};
use switchboard_testkit::{Gateway, Persistence, RedisServer};

/// One node that also accepts anonymous connections.
fn node(redis: &RedisServer, extra_env: &[(&str, &str)]) -> Gateway {
    let mut env = vec![("SWITCHBOARD_AUTH__ALLOW_ANONYMOUS", "true")];
    env.extend_from_slice(extra_env);
    start_node_at(redis, "127.0.0.1:0", &env)
}

async fn api_post(node: &Gateway, path: &'static str, body: Value) -> (u16, Value) {
    let addr = node.addr();
    tokio::task::spawn_blocking(move || {
        let body = body.to_string();
        let (status, text) =
            switchboard_testkit::http(addr, "POST", path, &[("X-API-Key", API_KEY)], Some(body.as_bytes()));
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    })
    .await
    .unwrap()
}

async fn readyz(node: &Gateway) -> u16 {
    let addr = node.addr();
    tokio::task::spawn_blocking(move || switchboard_testkit::http_get(addr, "/readyz").0).await.unwrap()
}

async fn metric(node: &Gateway, name: &'static str) -> f64 {
    let addr = node.addr();
    tokio::task::spawn_blocking(move || {
        let body = switchboard_testkit::http_get(addr, "/metrics").1;
        body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
    })
    .await
    .unwrap()
}

fn assert_unavailable(what: &str, error: &switchboard_protocol::ErrorBody) {
    assert_eq!(error.code, Code::Unavailable, "{what}: {}", error.message);
    assert!(error.temporary, "{what}: 115 is temporary");
}

async fn open(url: &str) -> Client {
    let request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    Client::open(request, Encoding::Json).await
}

/// The outage matrix of docs/operations.md with Redis stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_answers_every_command_as_documented() {
    let _serial = SERIAL.lock().await;
    let mut redis = RedisServer::start(Persistence::None);
    let node = node(&redis, &[]);
    let mut client = connect_url(&node.ws_url(), "u1", Encoding::Json).await;
    client.ok("subscribe", json!({"channel": "chat:outage"})).await;
    let epoch = client.ok("history", json!({"channel": "chat:outage", "limit": 0})).await["epoch"].clone();
    redis.stop();
    eventually("/readyz answers 503 without Redis", || async { readyz(&node).await == 503 }).await;

    // Commands that need Redis: 115, temporary; the connection stays open.
    let channel = json!({"channel": "chat:outage"});
    for (method, params) in [
        ("publish", json!({"channel": "chat:outage", "data": 1})),
        ("subscribe", json!({"channel": "chat:other"})),
        ("presence", channel.clone()),
        ("presence_stats", channel.clone()),
        ("history", json!({"channel": "chat:outage", "limit": 10})),
        ("ack", json!({"channel": "user:u1", "offset": 1, "epoch": epoch})),
    ] {
        assert_unavailable(method, &client.err(method, params).await);
    }
    // `unsubscribe` still succeeds, and `ping` answers.
    client.ok("unsubscribe", channel.clone()).await;
    client.ok("ping", Value::Null).await;

    // An authenticated connect fails with 115, then 3006 with reconnect advised.
    let mut late = open(&node.ws_url()).await;
    let error = late.err("connect", json!({"token": fixture::token("u2")})).await;
    assert_unavailable("connect", &error);
    let (disconnect, closed) = late.closed().await;
    let disconnect = disconnect.expect("a disconnect push before the close");
    assert_eq!((disconnect.code, disconnect.reconnect), (Code::ServerError, true));
    assert_eq!(closed.code(), Some(Code::ServerError.as_u16()));

    // An anonymous connect succeeds.
    let mut anonymous = open(&node.ws_url()).await;
    let connected = anonymous.ok("connect", json!({})).await;
    assert_eq!((connected["user"].clone(), connected["subscriptions"].clone()), (json!(""), json!([])));
    anonymous.ok("ping", Value::Null).await;

    // The HTTP API answers 503 unavailable for calls that need Redis.
    let (status, body) =
        api_post(&node, "/api/v1/publish", json!({"channel": "chat:outage", "data": 1})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("unavailable")), "{body}");

    // Redis back: the unsubscribe held, the rest works again.
    redis.restart();
    node.wait_ready();
    let mut witness = connect_url(&node.ws_url(), "w", Encoding::Json).await;
    witness.ok("subscribe", channel.clone()).await;
    witness.ok("publish", json!({"channel": "chat:outage", "data": "back"})).await;
    assert_eq!(witness.publication().await.data, json!("back"));
    let (pushes, _) = client.call_ordered("ping", Value::Null).await;
    assert!(
        !pushes.iter().any(|p| matches!(p, Push::Publication(p) if p.channel == "chat:outage")),
        "the unsubscribe made during the outage did not hold: {pushes:?}"
    );
}

/// `broker.command_timeout_ms`: a Redis that keeps its connections but answers nothing
/// (SIGSTOP) gets commands answered with 115, not a hang; SIGCONT brings it all back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_times_commands_out_as_unavailable() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let node = node(&redis, &[("SWITCHBOARD_BROKER__COMMAND_TIMEOUT_MS", "500")]);
    let mut client = connect_url(&node.ws_url(), "u1", Encoding::Json).await;
    client.ok("subscribe", json!({"channel": "chat:frozen"})).await;
    client.ok("publish", json!({"channel": "chat:frozen", "data": 1})).await;
    assert_eq!(client.publication().await.offset, Some(1));

    redis.pause();
    assert_unavailable("publish", &client.err("publish", json!({"channel": "chat:frozen", "data": 2})).await);
    assert_unavailable(
        "history",
        &client.err("history", json!({"channel": "chat:frozen", "limit": 5})).await,
    );
    client.ok("ping", Value::Null).await;
    redis.resume();

    node.wait_ready();
    // A timed-out publish may still have been applied (docs/redis.md §6), so the next
    // offset is 2 or 3; either way it is delivered, in order.
    let offset = client.ok("publish", json!({"channel": "chat:frozen", "data": 3})).await["offset"].as_u64();
    let mut last = 1;
    loop {
        let publication = client.publication().await;
        assert_eq!(publication.offset, Some(last + 1), "gap or duplicate after the freeze");
        last += 1;
        if publication.offset == offset {
            break;
        }
    }
}

/// A full Redis (`maxmemory` reached, `noeviction`) refuses the functions: clients get
/// 115 and the HTTP API 503; with room again, publishing resumes without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_refuses_publications_as_unavailable() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let node = node(&redis, &[]);
    let mut client = connect_url(&node.ws_url(), "u1", Encoding::Json).await;
    client.ok("subscribe", json!({"channel": "chat:full"})).await;
    client.ok("publish", json!({"channel": "chat:full", "data": 1})).await;
    assert_eq!(client.publication().await.offset, Some(1));

    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    redis.cli(&["CONFIG", "SET", "maxmemory", "1"]);
    assert_unavailable("publish", &client.err("publish", json!({"channel": "chat:full", "data": 2})).await);
    let (status, body) = api_post(&node, "/api/v1/publish", json!({"channel": "chat:full", "data": 2})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("unavailable")), "{body}");
    client.ok("ping", Value::Null).await;

    redis.cli(&["CONFIG", "SET", "maxmemory", "0"]);
    let reply = client.ok("publish", json!({"channel": "chat:full", "data": 3})).await;
    assert_eq!(reply["offset"], 2, "refused publications took no offset");
    let publication = client.publication().await;
    assert_eq!((publication.offset, publication.data), (Some(2), json!(3)));
}

/// docs/redis.md §6: a live publication beyond the next offset is preceded by the missing
/// ones read from the stream (`switchboard_broker_gap_fills_total`); one at or below the
/// last delivered offset is dropped (`switchboard_broker_duplicates_total`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_gaps_are_filled_from_the_stream_and_duplicates_dropped() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let node = node(&redis, &[]);
    let mut client = connect_url(&node.ws_url(), "u1", Encoding::Json).await;
    client.ok("subscribe", json!({"channel": "chat:gap"})).await;
    let reply = redis_cli_publish(&redis, "chat:gap", &json!({"data": 1}), 1000);
    let epoch = reply.lines().nth(1).unwrap().to_string();
    assert_eq!(client.publication().await.offset, Some(1));
    assert_eq!(metric(&node, "switchboard_broker_gap_fills_total").await, 0.0);

    // Offset 2 goes into the stream only, as if its live envelope was lost.
    let now_ms = {
        let time = redis.cli(&["TIME"]);
        let mut parts = time.lines().map(|l| l.trim().parse::<u64>().unwrap());
        parts.next().unwrap() * 1000 + parts.next().unwrap() / 1000
    };
    assert_eq!(redis.cli(&["HINCRBY", "sb:{chat:gap}:meta", "offset", "1"]), "2");
    let body = json!({"data": 2}).to_string();
    redis.cli(&["XADD", "sb:{chat:gap}:stream", "2-0", "t", &now_ms.to_string(), "b", &body]);
    redis_cli_publish(&redis, "chat:gap", &json!({"data": 3}), 1000);
    for expected in [2, 3] {
        let publication = client.publication().await;
        assert_eq!((publication.offset, publication.data), (Some(expected), json!(expected)));
    }
    assert_eq!(metric(&node, "switchboard_broker_gap_fills_total").await, 1.0);

    // A second live envelope for offset 2 is dropped.
    let duplicate = json!({"o": 2, "e": epoch, "t": now_ms, "b": {"data": "again"}}).to_string();
    assert_eq!(redis.cli(&["PUBLISH", "sb:{chat:gap}:live", &duplicate]), "1");
    eventually("the duplicate is counted", || async {
        metric(&node, "switchboard_broker_duplicates_total").await >= 1.0
    })
    .await;
    redis_cli_publish(&redis, "chat:gap", &json!({"data": 4}), 1000);
    let publication = client.publication().await;
    assert_eq!((publication.offset, publication.data), (Some(4), json!(4)), "the duplicate was delivered");
    assert_eq!(metric(&node, "switchboard_broker_duplicates_total").await, 1.0);
}

/// Offline delivery (docs/redis.md §7) against Redis: acks only move forward within an
/// epoch, an ack in another epoch replaces the stored one (and makes the next connect
/// `recovered: false`), anonymous connections cannot ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_in_redis_move_forward_and_foreign_epochs_replace_them() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let node = node(&redis, &[]);
    for n in 1..=5 {
        let (status, body) = api_post(&node, "/api/v1/users/publish", json!({"user": "o1", "data": n})).await;
        assert_eq!(status, 200, "{body}");
    }
    let url = node.ws_url();
    let (subscription, offsets) = fixture::connect_offline(&url, "o1").await;
    assert_eq!((subscription["recovered"].clone(), subscription["missed"].clone()), (json!(true), json!(5)));
    assert_eq!(offsets, [1, 2, 3, 4, 5]);
    let epoch = subscription["epoch"].as_str().unwrap().to_string();
    fixture::offline_ack_edges(&url, "o1", &epoch).await;

    let mut anonymous = open(&url).await;
    anonymous.ok("connect", json!({})).await;
    let error = anonymous.err("ack", json!({"channel": "chat:x", "offset": 1, "epoch": epoch})).await;
    assert_eq!(error.code, Code::NotAvailable);
}

/// `INFO commandstats` counters of `redis`, by command (`fcall`, `subscribe`, ...).
fn command_calls(redis: &RedisServer) -> std::collections::HashMap<String, u64> {
    redis
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.split(',').find_map(|s| s.strip_prefix("calls="))?.parse().ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

/// docs/redis.md §6: a subscribe costs one Redis round trip, `FCALL sb_join` (position,
/// presence, join event), plus the node's `SUBSCRIBE`, which a batch of subscriptions
/// shares. Counted by Redis itself. (Commands run inside a function are counted under
/// their own names too, so only FCALL and SUBSCRIBE tell the client's round trips.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_subscribe_costs_one_function_call() {
    const SUBSCRIPTIONS: u64 = 40;
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    // Presence refreshes would be function calls too: none within this test.
    let node = node(&redis, &[("SWITCHBOARD_BROKER__PRESENCE_TTL_SECS", "3000")]);
    let mut clients = Vec::new();
    for n in 0..SUBSCRIPTIONS {
        // Each connect joins the user's personal channel: counted before `before`.
        clients.push(connect_url(&node.ws_url(), &format!("cost{n}"), Encoding::Json).await);
    }
    let before = command_calls(&redis);
    let subscribes = clients.iter_mut().enumerate().map(|(n, client)| async move {
        // `chat`: presence and join/leave on, the most a subscription does.
        client.ok("subscribe", json!({"channel": format!("chat:cost-{n}")})).await
    });
    futures_util::future::join_all(subscribes).await;
    let after = command_calls(&redis);
    let delta = |name: &str| after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0);
    println!("{SUBSCRIPTIONS} fresh subscribes: {} FCALL, {} SUBSCRIBE", delta("fcall"), delta("subscribe"));
    assert_eq!(delta("fcall"), SUBSCRIPTIONS, "one sb_join per subscribe");
    assert!((1..=SUBSCRIPTIONS).contains(&delta("subscribe")), "SUBSCRIBEs are one per batch at most");
}

/// docs/redis.md §6, "Reads off the reader": a gap fill whose stream read fails is
/// retried until it succeeds (here Redis refuses `XRANGE` to the node until the ACL is
/// restored), while other channels keep flowing; then the filled publication and the
/// held one arrive in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_gap_fill_is_retried_while_other_channels_flow() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let node = node(&redis, &[]);
    let mut client = connect_url(&node.ws_url(), "u1", Encoding::Json).await;
    client.ok("subscribe", json!({"channel": "chat:held"})).await;
    client.ok("subscribe", json!({"channel": "chat:flowing"})).await;
    redis_cli_publish(&redis, "chat:held", &json!({"data": 1}), 1000);
    assert_eq!(client.publication().await.offset, Some(1));

    // The stream read of the gap fill (XRANGE inside sb_history) is refused from now on.
    redis.cli(&["ACL", "SETUSER", "default", "-xrange"]);
    let now_ms = {
        let time = redis.cli(&["TIME"]);
        let mut parts = time.lines().map(|l| l.trim().parse::<u64>().unwrap());
        parts.next().unwrap() * 1000 + parts.next().unwrap() / 1000
    };
    // Offset 2 goes into the stream only, as if its live envelope was lost.
    assert_eq!(redis.cli(&["HINCRBY", "sb:{chat:held}:meta", "offset", "1"]), "2");
    let body = json!({"data": 2}).to_string();
    redis.cli(&["XADD", "sb:{chat:held}:stream", "2-0", "t", &now_ms.to_string(), "b", &body]);
    redis_cli_publish(&redis, "chat:held", &json!({"data": 3}), 1000);
    eventually("the failed gap fill is retried", || async {
        metric(&node, "switchboard_broker_stream_read_retries_total").await >= 1.0
    })
    .await;

    // Another channel is not held up by the one waiting for its stream.
    redis_cli_publish(&redis, "chat:flowing", &json!({"data": "meanwhile"}), 1000);
    let publication = client.publication().await;
    assert_eq!((publication.channel.as_str(), publication.data), ("chat:flowing", json!("meanwhile")));

    redis.cli(&["ACL", "SETUSER", "default", "+xrange"]);
    for expected in [2, 3] {
        let publication = client.publication().await;
        assert_eq!(
            (publication.channel.as_str(), publication.offset, publication.data),
            ("chat:held", Some(expected), json!(expected))
        );
    }
    redis_cli_publish(&redis, "chat:held", &json!({"data": 4}), 1000);
    let publication = client.publication().await;
    assert_eq!((publication.offset, publication.data), (Some(4), json!(4)), "no duplicate, no gap");
    assert_eq!(metric(&node, "switchboard_broker_gap_fills_total").await, 1.0);
    assert_eq!(metric(&node, "switchboard_broker_duplicates_total").await, 0.0);
}
