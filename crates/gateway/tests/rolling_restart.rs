//! The compose topology without Docker: Redis, three gateway processes and HAProxy with
//! the repository's own deploy/haproxy.cfg; clients connect only through the load
//! balancer. While a publisher runs, every node is restarted in turn with SIGTERM
//! (graceful drain), then one is killed with SIGKILL. Every client must end with the
//! complete sequence of its channel: no loss, no duplicate, in order.

#![allow(clippy::unwrap_used, missing_docs)]

mod fixture;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use fixture::cluster::{start_node_at, SERIAL};
use serde_json::json;
use switchboard_client::{static_token, Backoff, Client, ClientConfig, ConnectionState, Event};
use switchboard_protocol::{Code, Encoding};
use switchboard_publisher::{PublishOptions, Publisher};
use switchboard_testkit::{free_port, Gateway, Haproxy, Persistence, RedisServer};

const CHANNELS: [&str; 3] = ["chat:roll-0", "chat:roll-1", "chat:roll-2"];
const CLIENTS: usize = 24;
/// Plain protocol clients per drained node that record the advised reconnect delay.
const OBSERVERS: usize = 6;
const JITTER_ENV: [(&str, &str); 1] = [("SWITCHBOARD_NODE__SHUTDOWN_RECONNECT_JITTER_MS", "1000")];

fn haproxy_config() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/haproxy.cfg")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_and_a_kill_behind_haproxy_lose_nothing() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let listens: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let start = |i: usize| start_node_at(&redis, &listens[i], &JITTER_ENV);
    let mut nodes: Vec<Gateway> = (0..3).map(start).collect();
    let proxy = Haproxy::start(&haproxy_config(), [nodes[0].addr(), nodes[1].addr(), nodes[2].addr()]);

    // Clients, each following one channel through the load balancer.
    let began = Instant::now();
    let reconnects: Arc<Mutex<Vec<Duration>>> = Arc::new(Mutex::new(Vec::new()));
    let (done_tx, done_rx) = tokio::sync::watch::channel(None::<[u64; 3]>);
    let mut readers = Vec::new();
    for n in 0..CLIENTS {
        let mut config = ClientConfig::new(proxy.ws_url(), static_token(fixture::token(&format!("roll{n}"))));
        config.backoff = Backoff { base: Duration::from_millis(100), max: Duration::from_secs(2) };
        let (client, _personal) = Client::connect(config);
        client.wait_connected().await.unwrap();
        let channel_index = n % CHANNELS.len();
        let mut subscription = client.subscribe(CHANNELS[channel_index]).await.unwrap();
        let mut state = client.state();
        let log = reconnects.clone();
        tokio::spawn(async move {
            let mut was_connected = true;
            while state.changed().await.is_ok() {
                let connected = matches!(&*state.borrow_and_update(), ConnectionState::Connected { .. });
                if connected && !was_connected {
                    log.lock().unwrap().push(began.elapsed());
                }
                was_connected = connected;
            }
        });
        let mut done = done_rx.clone();
        readers.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            let mut not_recovered = 0;
            loop {
                if let Some(last) = *done.borrow() {
                    if offsets.last().copied().unwrap_or(0) >= last[channel_index] {
                        break;
                    }
                }
                let event = tokio::select! {
                    event = tokio::time::timeout(Duration::from_secs(15), subscription.next()) => event,
                    _ = done.changed() => continue,
                };
                match event {
                    Ok(Some(Event::Publication(publication))) => offsets.push(publication.offset.unwrap()),
                    Ok(Some(Event::Subscribed { recovered: Some(false), .. })) => not_recovered += 1,
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            drop(client);
            (channel_index, offsets, not_recovered)
        }));
    }

    // A backend publishes steadily, through Redis, while nodes come and go.
    let publisher = Publisher::connect(&redis.url()).await.unwrap();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let publishing = tokio::spawn(async move {
        let mut last = [0u64; 3];
        let mut n = 0u64;
        while !*stop_rx.borrow_and_update() {
            let index = (n % 3) as usize;
            let published = publisher
                .publish(CHANNELS[index], &json!({"n": n}), &PublishOptions::default())
                .await
                .unwrap();
            last[index] = published.offset.unwrap();
            n += 1;
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
        last
    });

    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut restarts = Vec::new();
    let mut advised: Vec<Vec<u64>> = Vec::new();
    for (i, node) in nodes.iter_mut().enumerate() {
        // Observers connected straight to the node read the reconnect delay it advises.
        let mut observers = Vec::new();
        for k in 0..OBSERVERS {
            observers
                .push(fixture::connect_url(&node.ws_url(), &format!("obs{i}-{k}"), Encoding::Json).await);
        }
        restarts.push(began.elapsed());
        let address = node.addr();
        assert!(node.terminate(), "node {address} did not exit cleanly on SIGTERM");
        let mut delays = Vec::new();
        for observer in &mut observers {
            let (disconnect, _) = observer.closed().await;
            let disconnect = disconnect.expect("a drained node says goodbye");
            assert_eq!((disconnect.code, disconnect.reconnect), (Code::Shutdown, true));
            delays.push(disconnect.reconnect_after_ms.expect("3000 shutdown carries reconnect_after_ms"));
        }
        advised.push(delays);
        *node = start(i);
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    restarts.push(began.elapsed());
    nodes[1].kill9();
    nodes[1] = start(1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop_tx.send_replace(true);
    let last = publishing.await.unwrap();
    done_tx.send_replace(Some(last));

    for reader in readers {
        let (channel, offsets, not_recovered) = reader.await.unwrap();
        assert_eq!(not_recovered, 0, "{}: recovery failed", CHANNELS[channel]);
        assert_eq!(
            offsets,
            (1..=last[channel]).collect::<Vec<_>>(),
            "{}: complete, ordered, no duplicates",
            CHANNELS[channel]
        );
    }

    // A drained node advises jittered delays, so its clients do not all come back at one
    // instant: the advised values (drawn by the node, uniform in [0, 1000] ms) must spread.
    // When the clients actually arrived depends on the machine's load, so it is printed,
    // not asserted. With 3 × OBSERVERS uniform draws, all in three or fewer of the eleven
    // 100 ms buckets has probability about 1e-8.
    eprintln!("advised reconnect delays per drain (ms): {advised:?}");
    let mut buckets = std::collections::BTreeSet::new();
    for (i, delays) in advised.iter().enumerate() {
        assert!(delays.iter().all(|d| *d <= 1000), "drain {i}: beyond the configured jitter: {delays:?}");
        assert!(delays.iter().any(|d| *d != delays[0]), "drain {i}: one delay for everyone: {delays:?}");
        buckets.extend(delays.iter().map(|d| d / 100));
    }
    assert!(buckets.len() >= 4, "advised delays bunched together: {advised:?}");

    let reconnects = reconnects.lock().unwrap().clone();
    eprintln!("restarts at {restarts:?}; {} reconnections", reconnects.len());
    for (i, at) in restarts.iter().enumerate() {
        let next = restarts.get(i + 1).copied().unwrap_or(Duration::MAX);
        let mut arrivals = std::collections::BTreeMap::new();
        for r in reconnects.iter().filter(|r| *r >= at && *r < &next) {
            *arrivals.entry((*r - *at).as_millis() / 100 * 100).or_insert(0) += 1;
        }
        eprintln!("after restart {i}: reconnections by 100 ms bucket: {arrivals:?}");
    }
    assert!(reconnects.len() >= CLIENTS, "every client moved at least once: {}", reconnects.len());
}
