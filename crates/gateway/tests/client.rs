//! The Rust client against real gateway nodes: reconnect, backoff, recovery across a node
//! kill, `recovered: false` surfaced, and "don't reconnect" codes honoured.

#![allow(clippy::unwrap_used, missing_docs)]

mod fixture;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use fixture::{cluster::start_nodes, cluster::SERIAL, config, connect_url, TestServer};
use serde_json::json;
use switchboard_client::{
    static_token, Backoff, Client, ClientConfig, ConnectionState, Event, Subscription, TokenProvider,
};
use switchboard_gateway::auth::{unix_now, Claims};
use switchboard_protocol::{Code, Encoding, StreamPosition};
use switchboard_testkit::{Persistence, RedisServer};

fn client_config(urls: Vec<String>, user: &str, encoding: Encoding) -> ClientConfig {
    let mut config = ClientConfig::new(urls[0].clone(), static_token(fixture::token(user)));
    config.urls = urls;
    config.encoding = encoding;
    config.backoff = Backoff { base: Duration::from_millis(50), max: Duration::from_millis(500) };
    config
}

/// The next event other than join/leave.
async fn next(subscription: &mut Subscription) -> Event {
    loop {
        let event = tokio::time::timeout(fixture::WAIT, subscription.next())
            .await
            .expect("event in time")
            .expect("subscription open");
        if !matches!(event, Event::Join(_) | Event::Leave(_)) {
            return event;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_recovers_every_publication_across_a_node_kill() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let mut nodes = start_nodes(&redis, 3);
    let urls = vec![nodes[0].ws_url(), nodes[1].ws_url()];
    let mut clients = Vec::new();
    for (i, encoding) in [Encoding::Json, Encoding::MsgPack].into_iter().enumerate() {
        let (client, _personal) = Client::connect(client_config(urls.clone(), &format!("c{i}"), encoding));
        client.wait_connected().await.unwrap();
        let mut subscription = client.subscribe("chat:sdk").await.unwrap();
        assert!(matches!(next(&mut subscription).await, Event::Subscribed { recovered: None, .. }));
        clients.push((client, subscription));
    }
    let total = 300u64;
    let publisher_url = nodes[2].ws_url();
    let publisher = tokio::spawn(async move {
        let mut publisher = connect_url(&publisher_url, "pub", Encoding::Json).await;
        for n in 1..=total {
            publisher.ok("publish", json!({"channel": "chat:sdk", "data": n})).await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let mut received: Vec<Vec<u64>> = vec![Vec::new(); clients.len()];
    for (i, (_, subscription)) in clients.iter_mut().enumerate() {
        while received[i].len() < 30 {
            if let Event::Publication(p) = next(subscription).await {
                received[i].push(p.offset.unwrap());
            }
        }
    }
    nodes[0].kill9();
    for (i, (_, subscription)) in clients.iter_mut().enumerate() {
        let mut resubscribed = 0;
        while received[i].last() != Some(&total) {
            match next(subscription).await {
                Event::Publication(p) => received[i].push(p.offset.unwrap()),
                Event::Subscribed { recovered, .. } => {
                    assert_eq!(recovered, Some(true));
                    resubscribed += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(resubscribed >= 1, "client {i} was on the killed node and must have resubscribed");
        assert_eq!(
            received[i],
            (1..=total).collect::<Vec<_>>(),
            "client {i}: complete, ordered, no duplicates"
        );
    }
    assert!(matches!(&*clients[0].0.state().borrow(), ConnectionState::Connected { .. }));
    publisher.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_surfaces_recovered_false_when_the_stream_is_gone() {
    let mut first = TestServer::start(config()).await;
    let second = TestServer::start(config()).await;
    let (client, _personal) =
        Client::connect(client_config(vec![first.url(), second.url()], "u1", Encoding::Json));
    client.wait_connected().await.unwrap();
    let mut subscription = client.subscribe("open:state").await.unwrap();
    next(&mut subscription).await;
    client.publish("open:state", None, json!(1), false).await.unwrap();
    assert!(matches!(next(&mut subscription).await, Event::Publication(_)));
    // The first node drains (3000 shutdown, reconnect); the second has other epochs.
    first.begin_shutdown();
    match next(&mut subscription).await {
        Event::Subscribed { recovered, offset, .. } => assert_eq!((recovered, offset), (Some(false), 0)),
        other => panic!("expected a resubscribe, got {other:?}"),
    }
    client.publish("open:state", None, json!(2), false).await.unwrap();
    match next(&mut subscription).await {
        Event::Publication(p) => assert_eq!((p.offset, p.data), (Some(1), json!(2))),
        other => panic!("{other:?}"),
    }
    first.stopped().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_stops_on_a_do_not_reconnect_code() {
    let mut config = config();
    config.limits.max_connections_per_user = 1;
    let server = TestServer::start(config).await;
    let _holder = server.connect("solo", Encoding::Json).await;
    let (client, _personal) = Client::connect(client_config(vec![server.url()], "solo", Encoding::Json));
    let mut state = client.state();
    let closed = tokio::time::timeout(fixture::WAIT, async {
        loop {
            if let ConnectionState::Closed { code, .. } = &*state.borrow_and_update() {
                return *code;
            }
            state.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    assert_eq!(closed, Some(Code::LimitExceeded));
    assert!(client.wait_connected().await.is_err());
    server.shutdown().await;
}

/// A full node answers every attempt with `3005 node_full` and a reconnect delay drawn
/// from `[0, node.shutdown_reconnect_jitter_ms]`. The client's own backoff here is 25–50
/// ms, so without the advice seven retries take at most 350 ms plus connection time; with
/// it, each waits a uniform 0–1000 ms, and seven of those sum to under 500 ms with
/// probability 0.5^7/7! ≈ 1.6e-6. A slow machine only makes the retries slower, so it can
/// hide a client that ignores the advice, never fail one that honours it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_backs_off_as_a_full_node_advises_and_connects_once_there_is_room() {
    let mut config = config();
    config.limits.max_connections = 1;
    config.node.shutdown_reconnect_jitter_ms = 1000;
    let server = TestServer::start(config).await;
    let holder = server.connect("holder", Encoding::Json).await;
    let mut client_config = client_config(vec![server.url()], "late", Encoding::Json);
    client_config.backoff = Backoff { base: Duration::from_millis(25), max: Duration::from_millis(50) };
    let refused = || {
        let node = server.node.clone();
        move || {
            let node = node.clone();
            async move { node.metrics.disconnects.with_label_values(&["node_full"]).get() }
        }
    };
    let (client, _personal) = Client::connect(client_config);
    let count = refused();
    fixture::eventually("a first refusal", || {
        let count = count();
        async move { count.await >= 1 }
    })
    .await;
    let first = tokio::time::Instant::now();
    let count = refused();
    fixture::eventually("eight refusals", || {
        let count = count();
        async move { count.await >= 8 }
    })
    .await;
    let seven_retries = first.elapsed();
    assert!(
        seven_retries >= Duration::from_millis(500),
        "seven retries in {seven_retries:?}: advice ignored"
    );
    assert!(matches!(
        &*client.state().borrow(),
        ConnectionState::Disconnected { code: Some(Code::NodeFull), .. } | ConnectionState::Connecting
    ));
    drop(holder);
    tokio::time::timeout(fixture::PATIENCE, client.wait_connected()).await.unwrap().unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reads_a_subscription_as_a_stream_and_pages_history() {
    use futures_util::StreamExt;
    use switchboard_client::StreamPosition;

    let server = TestServer::start(config()).await;
    let (client, _personal) = Client::connect(client_config(vec![server.url()], "pager", Encoding::Json));
    client.wait_connected().await.unwrap();
    let mut subscription = client.subscribe("chat:paged").await.unwrap();
    for n in 1..=5 {
        client.publish("chat:paged", None, json!(n), false).await.unwrap();
    }
    let mut data = Vec::new();
    while data.len() < 5 {
        let event = tokio::time::timeout(fixture::WAIT, StreamExt::next(&mut subscription)).await.unwrap();
        if let Some(Event::Publication(publication)) = event {
            data.push(publication.data.as_u64().unwrap());
        }
    }
    assert_eq!(data, [1, 2, 3, 4, 5]);
    let epoch = client.history("chat:paged", 0).await.unwrap()["epoch"].as_str().unwrap().to_string();
    let page = client.history_since("chat:paged", &StreamPosition { offset: 2, epoch }, 2).await.unwrap();
    let offsets: Vec<u64> =
        page["publications"].as_array().unwrap().iter().map(|p| p["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, [3, 4]);
    let stale = StreamPosition { offset: 2, epoch: "not-the-epoch".into() };
    let refused = client.history_since("chat:paged", &stale, 2).await.unwrap_err();
    assert!(
        matches!(&refused, switchboard_client::ClientError::Server(e) if e.code == Code::UnrecoverablePosition),
        "{refused}"
    );
    client.close().await;
    server.shutdown().await;
}

/// A `token` namespace needs a subscription token on every subscribe, including the
/// resubscribe after a reconnect: the provider is asked again each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_asks_for_a_fresh_subscription_token_on_every_subscribe() {
    use switchboard_client::ClientError;

    let first = TestServer::start(config()).await;
    let second = TestServer::start(config()).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let provider: TokenProvider = {
        let calls = calls.clone();
        Arc::new(move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let claims = Claims {
                sub: Some("deal-reader".into()),
                exp: Some(unix_now() + 3600),
                channel: Some("private:deal-9".into()),
                ..Claims::default()
            };
            Box::pin(async move { Ok(fixture::token_with(claims)) })
        })
    };
    let urls = vec![first.url(), second.url()];
    let (client, _personal) = Client::connect(client_config(urls, "deal-reader", Encoding::Json));
    client.wait_connected().await.unwrap();
    let refused = client.subscribe("private:deal-9").await.err();
    assert!(
        matches!(&refused, Some(ClientError::Server(e)) if e.code == Code::PermissionDenied),
        "{refused:?}"
    );
    let mut subscription = client.subscribe_with_token("private:deal-9", provider).await.unwrap();
    assert!(matches!(next(&mut subscription).await, Event::Subscribed { .. }));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    first.shutdown().await;
    assert!(matches!(next(&mut subscription).await, Event::Subscribed { .. }));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    client.close().await;
    second.shutdown().await;
}

/// The connection-token provider is asked at connect, again when the server pushes
/// `refresh` (and the refreshed token keeps the connection open past the first token's
/// expiry), and again at the reconnect after a node goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_asks_for_a_fresh_connection_token_on_refresh_and_on_reconnect() {
    // The first token expires 8 s after it is minted and the server asks for a refresh
    // 6 s before that: the refresh has about 6 s to go through, plenty on a slow machine.
    let mut short_lived = config();
    short_lived.auth.refresh_ahead_secs = 6;
    short_lived.auth.expired_grace_secs = 0;
    short_lived.auth.leeway_secs = 0;
    let first = TestServer::start(short_lived.clone()).await;
    let second = TestServer::start(short_lived).await;
    let first_expiry = unix_now() + 8;
    let calls = Arc::new(AtomicUsize::new(0));
    let provider: TokenProvider = {
        let calls = calls.clone();
        Arc::new(move || {
            // The first token expires soon; every later one lasts an hour.
            let exp =
                if calls.fetch_add(1, Ordering::SeqCst) == 0 { first_expiry } else { unix_now() + 3600 };
            let claims = Claims { sub: Some("refresher".into()), exp: Some(exp), ..Claims::default() };
            Box::pin(async move { Ok(fixture::token_with(claims)) })
        })
    };
    let mut config = client_config(vec![first.url(), second.url()], "refresher", Encoding::Json);
    config.token = provider;
    let (client, _personal) = Client::connect(config);
    client.wait_connected().await.unwrap();
    let ConnectionState::Connected { node: first_node, .. } = client.state().borrow().clone() else {
        panic!("not connected")
    };
    let mut state = client.state();
    state.borrow_and_update();
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    fixture::eventually("the refresh push asked the provider again", || {
        let calls = calls.clone();
        async move { calls.load(Ordering::SeqCst) >= 2 }
    })
    .await;
    // Past the first token's expiry (grace 0) by the wall clock the server uses: had the
    // refresh not been applied, the server would have closed the connection by then.
    fixture::eventually("the first token's expiry passes", || async { unix_now() > first_expiry + 1 }).await;
    client.call("ping", serde_json::Value::Null).await.unwrap();
    assert!(!state.has_changed().unwrap(), "connection changed: {:?}", *state.borrow());
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    first.shutdown().await;
    tokio::time::timeout(fixture::WAIT, async {
        loop {
            state.changed().await.unwrap();
            if let ConnectionState::Connected { node, .. } = &*state.borrow_and_update() {
                if *node != first_node {
                    return;
                }
            }
        }
    })
    .await
    .expect("reconnected to the second node");
    assert_eq!(calls.load(Ordering::SeqCst), 3, "a reconnect asks for a fresh token");
    client.close().await;
    second.shutdown().await;
}

/// Join and leave events, presence, and acknowledgements through the SDK: a second device
/// of the same user gets only what the first did not acknowledge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sees_join_leave_presence_and_acknowledges_notifications() {
    let server = TestServer::start(config()).await;
    let url = vec![server.url()];

    let (alice, _) = Client::connect(client_config(url.clone(), "alice", Encoding::Json));
    let mut room = alice.subscribe("open:room").await.unwrap();
    assert!(matches!(room.next().await, Some(Event::Subscribed { .. })));
    let own_join = tokio::time::timeout(fixture::WAIT, room.next()).await.unwrap();
    assert!(matches!(&own_join, Some(Event::Join(info)) if info.user == "alice"), "{own_join:?}");

    let (bob, _) = Client::connect(client_config(url.clone(), "bob", Encoding::MsgPack));
    let _bob_room = bob.subscribe("open:room").await.unwrap();
    let join = tokio::time::timeout(fixture::WAIT, room.next()).await.unwrap();
    let Some(Event::Join(bob_info)) = join else { panic!("expected bob's join, got {join:?}") };
    assert_eq!(bob_info.user, "bob");
    let presence = alice.presence("open:room").await.unwrap().to_string();
    assert!(presence.contains("\"alice\"") && presence.contains("\"bob\""), "{presence}");
    bob.close().await;
    let leave = tokio::time::timeout(fixture::WAIT, room.next()).await.unwrap();
    assert_eq!(leave, Some(Event::Leave(bob_info)));

    for n in 1..=3 {
        server.backend_publish("user:carol", "notification", json!({"n": n})).await;
    }
    let (phone, mut bell) = Client::connect(client_config(url.clone(), "carol", Encoding::Json));
    let mut offsets = Vec::new();
    let mut second = None;
    while offsets.len() < 3 {
        match next(&mut bell).await {
            Event::Publication(p) => {
                offsets.push(p.offset.unwrap());
                if p.offset == Some(2) {
                    second = Some(StreamPosition { offset: 2, epoch: p.epoch.clone().unwrap() });
                }
            }
            Event::Subscribed { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(offsets, [1, 2, 3]);
    assert_eq!(bell.channel(), "user:carol");
    phone.ack("user:carol", &second.unwrap()).await.unwrap();
    phone.close().await;

    // Another device, no position of its own: only the unacknowledged notification.
    let (laptop, mut bell) = Client::connect(client_config(url, "carol", Encoding::Json));
    match next(&mut bell).await {
        Event::Subscribed { offset, recovered, .. } => assert_eq!((offset, recovered), (3, Some(true))),
        other => panic!("expected the personal subscribe, got {other:?}"),
    }
    match next(&mut bell).await {
        Event::Publication(p) => assert_eq!((p.offset, p.data), (Some(3), json!({"n": 3}))),
        other => panic!("expected offset 3, got {other:?}"),
    }
    laptop.close().await;
    alice.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_made_while_the_gateway_is_down_land_once_after_it_is_back() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let listen = format!("127.0.0.1:{}", switchboard_testkit::free_port());
    let mut node = fixture::cluster::start_node_at(&redis, &listen, &[]);
    let watcher_node = fixture::cluster::start_node(&redis);
    let mut watcher = connect_url(&watcher_node.ws_url(), "watcher", Encoding::Json).await;
    watcher.ok("subscribe", json!({"channel": "chat:votes"})).await;

    let mut config = client_config(vec![node.ws_url()], "voter", Encoding::Json);
    config.request_timeout = Duration::from_secs(60);
    let (client, _personal) = Client::connect(config);
    client.wait_connected().await.unwrap();
    assert!(node.terminate());
    let mut state = client.state();
    state.wait_for(|s| matches!(s, ConnectionState::Disconnected { .. })).await.unwrap();

    // Made while down: they wait in the outbox (an ephemeral one is refused at once).
    let client = Arc::new(client);
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(
                async move { client.publish("chat:votes", Some("vote"), json!({"n": i}), false).await },
            )
        })
        .collect();
    let typing = client.publish("chat:votes", Some("typing"), json!(true), true).await;
    assert!(matches!(typing, Err(switchboard_client::ClientError::NotConnected)), "{typing:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let node = fixture::cluster::start_node_at(&redis, &listen, &[]);
    let mut offsets = Vec::new();
    for call in calls {
        let published = call.await.unwrap().unwrap();
        offsets.push(published["offset"].as_u64().unwrap());
    }
    offsets.sort_unstable();
    assert_eq!(offsets, [1, 2, 3]);
    // Each landed exactly once.
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(watcher.publication().await.data["n"].as_u64().unwrap());
    }
    seen.sort_unstable();
    assert_eq!(seen, [0, 1, 2]);
    watcher.silent_for(Duration::from_millis(500)).await;

    // What makes a resend safe: the same key from the same user is published once (the
    // retry answers the first position); another user's identical key is theirs.
    let mut voter = connect_url(&node.ws_url(), "voter", Encoding::Json).await;
    let params = json!({"channel": "chat:votes", "data": "again", "idempotency_key": "k-1"});
    let first = voter.ok("publish", params.clone()).await;
    assert_eq!(voter.ok("publish", params.clone()).await, first);
    let mut other = connect_url(&node.ws_url(), "other", Encoding::Json).await;
    assert_ne!(other.ok("publish", params).await, first);
    assert_eq!(watcher.publication().await.offset, Some(4));
    assert_eq!(watcher.publication().await.offset, Some(5));
    watcher.silent_for(Duration::from_millis(300)).await;
    let long = json!({"channel": "chat:votes", "data": 1, "idempotency_key": "k".repeat(129)});
    assert_eq!(voter.err("publish", long).await.code, Code::BadRequest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_a_backend_makes_reach_the_application_and_end_with_the_connection() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let mut nodes = start_nodes(&redis, 2);
    let (client, _personal) =
        Client::connect(client_config(vec![nodes[0].ws_url(), nodes[1].ws_url()], "u9", Encoding::Json));
    client.wait_connected().await.unwrap();
    let publisher = switchboard_publisher::Publisher::connect(&redis.url()).await.unwrap();
    assert!(publisher.subscribe_user("u9", "dao:alerts-u9", None).await.unwrap());
    let mut alerts =
        tokio::time::timeout(fixture::WAIT, client.next_server_subscription()).await.unwrap().unwrap();
    assert_eq!(alerts.channel(), "dao:alerts-u9");
    assert!(matches!(next(&mut alerts).await, Event::Subscribed { recovered: None, .. }));
    let options = switchboard_publisher::PublishOptions::event("alert");
    publisher.publish("dao:alerts-u9", &json!("margin call"), &options).await.unwrap();
    match next(&mut alerts).await {
        Event::Publication(publication) => assert_eq!(publication.data, json!("margin call")),
        other => panic!("{other:?}"),
    }
    // A backend's subscription lasts one connection: after the node is lost, the client
    // reconnects to the other node and the stream ends, saying why.
    nodes[0].kill9();
    match next(&mut alerts).await {
        Event::Unsubscribed { reason } => assert!(reason.contains("did not subscribe"), "{reason}"),
        other => panic!("{other:?}"),
    }
    client.wait_connected().await.unwrap();
}
