//! Every benchmark scenario at a tiny size against real gateway processes, so the load
//! generator cannot rot. Figures come from docs/BENCHMARKS.md runs, not from here.

#![allow(clippy::unwrap_used, missing_docs)]

mod fixture;

use std::path::Path;

use fixture::cluster::{BIN, SERIAL};
use switchboard_bench::{scenarios, target::Target};
use switchboard_protocol::Encoding;
use switchboard_testkit::{Gateway, Persistence, RedisServer};

const BENCH_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/bench.toml");

fn node(redis: Option<&RedisServer>) -> Gateway {
    let mut args = vec!["--config", BENCH_CONFIG];
    let url = redis.map(RedisServer::url);
    if let Some(url) = &url {
        args.extend(["--broker", url.as_str()]);
    }
    Gateway::start(Path::new(BIN), &args, &[])
}

/// A per-unit CPU figure must be the scenario's own CPU seconds divided as documented
/// (not just any number): `per_unit ≈ cpu_seconds × scale / units`, within the rounding
/// of both figures (`cpu_seconds` to 0.001 s, the figure to `rounding`).
fn assert_cpu_figure(
    report: &serde_json::Value,
    field: &str,
    (cpu_seconds, scale, units): (f64, f64, u64),
    rounding: f64,
) {
    let figure = report[field].as_f64().unwrap_or_else(|| panic!("{field} is not a number: {report}"));
    assert!(figure >= 0.0 && figure.is_finite(), "{field}: {report}");
    let expected = cpu_seconds * scale / units as f64;
    let slack = 0.0005 * scale / units as f64 + rounding;
    assert!((figure - expected).abs() <= slack, "{field} {figure} is not {expected} ± {slack}: {report}");
}

fn target(nodes: &[Gateway]) -> Target {
    Target {
        urls: nodes.iter().map(Gateway::ws_url).collect(),
        secret: "bench-secret".into(),
        sources: 2,
        pids: nodes.iter().filter_map(Gateway::pid).collect(),
        encoding: Encoding::Json,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_rooms_idle_and_connect_run_on_one_node() {
    let _serial = SERIAL.lock().await;
    let nodes = vec![node(None)];
    // CPU is read from /proc at 10 ms resolution and a pid that cannot be read counts as
    // zero, so one scenario may show 0; all of them together cannot.
    let (mut gateway_cpu, mut own_cpu) = (0.0, 0.0);
    // Native JSON, native MessagePack, and Socket.IO (raw Engine.IO over WebSocket).
    for (encoding, socketio) in [(Encoding::Json, false), (Encoding::MsgPack, false), (Encoding::Json, true)]
    {
        let label = if socketio { "socketio" } else { encoding.name() };
        let fanout = scenarios::fanout::run(scenarios::fanout::Fanout {
            target: Target { encoding, ..target(&nodes) },
            subscribers: 20,
            publishers: 2,
            rate: 200,
            duration: 0.5,
            payload: 100,
            channel: format!("bench:smoke-{label}"),
            connect_concurrency: 8,
            window: 64,
            api: None,
            api_key: String::new(),
            socketio,
        })
        .await
        .unwrap();
        assert_eq!(fanout["encoding"], label);
        assert!(fanout["published"].as_u64().unwrap() > 0, "{fanout}");
        assert_eq!(fanout["deliveries"].as_u64(), fanout["published"].as_u64().map(|p| p * 20), "{fanout}");
        assert_eq!(
            (fanout["missing"].as_u64(), fanout["duplicates"].as_u64(), fanout["out_of_order"].as_u64()),
            (Some(0), Some(0), Some(0)),
            "{fanout}"
        );
        let latency = &fanout["latency"];
        let quantiles: Vec<f64> =
            ["p50_ms", "p90_ms", "p99_ms", "max_ms"].iter().map(|q| latency[q].as_f64().unwrap()).collect();
        assert!(quantiles.windows(2).all(|w| w[0] <= w[1]) && quantiles[0] > 0.0, "{latency}");
        let cpu = fanout["gateway_cpu_seconds"].as_f64().unwrap();
        let deliveries = fanout["deliveries"].as_u64().unwrap();
        assert_cpu_figure(&fanout, "cpu_seconds_per_million_deliveries", (cpu, 1e6, deliveries), 0.001);
        gateway_cpu += cpu;
    }

    let rooms = scenarios::rooms::run(scenarios::rooms::Rooms {
        target: target(&nodes),
        clients: 30,
        group_rate: 50,
        personal_rate: 20,
        duration: 0.5,
        api: Some(nodes[0].addr().to_string()),
        api_key: "bench-key".into(),
        payload: 64,
    })
    .await
    .unwrap();
    assert!(rooms["deliveries"].as_u64().unwrap() > 0, "{rooms}");
    assert_eq!(
        (rooms["missing"].as_u64(), rooms["duplicates"].as_u64(), rooms["out_of_order"].as_u64()),
        (Some(0), Some(0), Some(0)),
        "{rooms}"
    );
    assert!(rooms["latency"]["p99_ms"].as_f64().unwrap() > 0.0, "{rooms}");
    let cpu = rooms["gateway_cpu_seconds"].as_f64().unwrap();
    let deliveries = rooms["deliveries"].as_u64().unwrap();
    assert_cpu_figure(&rooms, "cpu_seconds_per_million_deliveries", (cpu, 1e6, deliveries), 0.001);
    gateway_cpu += cpu;

    let idle = scenarios::idle::run(scenarios::idle::Idle {
        target: target(&nodes),
        connections: 200,
        channels: 10,
        hold: 0.2,
        connect_concurrency: 32,
    })
    .await
    .unwrap();
    // RSS read from /proc/<pid>/status of the node, before and after; the difference may
    // be small or zero here (the allocator reuses what earlier scenarios freed), so the
    // per-connection figure is checked against the two readings, and that every
    // connection stayed open.
    let before = idle["gateway_rss_before_bytes"].as_u64().unwrap();
    let after = idle["gateway_rss_after_bytes"].as_u64().unwrap();
    assert!(before > 1_000_000 && after > 1_000_000, "{idle}");
    let per_connection = (after.saturating_sub(before) as f64 / 200.0).round();
    assert_eq!(idle["rss_bytes_per_connection"].as_f64(), Some(per_connection), "{idle}");
    assert_eq!(
        (idle["connections"].as_u64(), idle["closed_by_server"].as_u64()),
        (Some(200), Some(0)),
        "{idle}"
    );

    // Held connections also subscribe to a channel each; the last run speaks Socket.IO.
    for (churn, socketio) in [(false, false), (true, false), (false, true)] {
        let connect = scenarios::connect::run(scenarios::connect::Connect {
            target: target(&nodes),
            connections: 200,
            concurrency: 16,
            churn,
            subscribe: !churn,
            socketio,
        })
        .await
        .unwrap();
        assert_eq!(connect["succeeded"], 200, "{connect}");
        assert!(connect["connections_per_second"].as_f64().unwrap() > 0.0);
        let cpu = connect["gateway_cpu_seconds"].as_f64().unwrap();
        assert_cpu_figure(&connect, "gateway_cpu_us_per_connection", (cpu, 1e6, 200), 1.0);
        gateway_cpu += cpu;
        let own = connect["load_generator_cpu_us_per_connection"].as_f64().unwrap();
        assert!(own >= 0.0 && own.is_finite(), "{connect}");
        own_cpu += own;
        assert_eq!(connect["churn"], churn, "{connect}");
        assert_eq!(connect["protocol"], if socketio { "socketio" } else { "json" }, "{connect}");
    }
    assert!(gateway_cpu > 0.0, "no gateway CPU measured over every scenario: wrong pid?");
    assert!(own_cpu > 0.0, "no load-generator CPU measured over 400 connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_and_failover_run_on_a_redis_cluster() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let mut nodes = vec![node(Some(&redis)), node(Some(&redis)), node(Some(&redis))];
    let fanout = scenarios::fanout::run(scenarios::fanout::Fanout {
        target: target(&nodes),
        subscribers: 30,
        publishers: 1,
        rate: 100,
        duration: 0.5,
        payload: 100,
        channel: "bench:cluster".into(),
        connect_concurrency: 8,
        window: 1,
        api: None,
        api_key: String::new(),
        socketio: false,
    })
    .await
    .unwrap();
    assert_eq!((fanout["missing"].as_u64(), fanout["duplicates"].as_u64()), (Some(0), Some(0)), "{fanout}");

    let victim = nodes[0].pid().unwrap();
    let failover = scenarios::failover::run(scenarios::failover::Failover {
        target: target(&nodes),
        subscribers: 12,
        rate: 50,
        // Generous: clients must reconnect and catch up before the run ends, and a loaded
        // machine is slower at that, not wrong.
        duration: 6.0,
        kill_after: 0.8,
        kill_pid: victim,
        channel: "bench:failover".into(),
    })
    .await
    .unwrap();
    nodes[0].kill9();
    assert_eq!(
        (failover["lost"].as_u64(), failover["duplicates"].as_u64(), failover["out_of_order"].as_u64()),
        (Some(0), Some(0), Some(0)),
        "{failover}"
    );
    assert!(failover["deliveries"].as_u64().unwrap() > 0, "{failover}");
    // Every client of the killed node came back and caught up within the run; how fast is
    // a measurement (docs/BENCHMARKS.md), not a pass condition here.
    assert_eq!(failover["disconnected_clients"], 4, "{failover}");
    assert_eq!(failover["reconnected_clients"], 4, "{failover}");
    let recovery = failover["recovery_max_s"].as_f64().unwrap();
    assert!(recovery > 0.0 && recovery < 6.0 - 0.8, "caught up after the kill, within the run: {failover}");
    let fraction = failover["reconnected_within_5s_fraction"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&fraction), "{failover}");
    assert_eq!(failover["not_recovered"], 0, "{failover}");
}

/// The kernel floor needs no gateway; it must still report both costs, with each way of
/// writing a delivery.
#[tokio::test]
async fn floor_measures_delivery_and_connection_costs() {
    use scenarios::floor::Syscall;
    for syscall in [Syscall::Write, Syscall::Writev, Syscall::Sendmsg] {
        let floor = scenarios::floor::run(scenarios::floor::Floor {
            sockets: 50,
            frame_bytes: 190,
            rounds: 4,
            connections: 50,
            fanout_to: 10_000,
            syscall,
        })
        .await
        .unwrap();
        assert!(floor["delivery"]["cpu_us_per_delivery"].as_f64().unwrap() > 0.0, "{floor}");
        assert!(floor["connection"]["cpu_us_per_connection"].as_f64().unwrap() > 0.0, "{floor}");
        assert_eq!(floor["delivery"]["syscall"], format!("{syscall:?}").to_lowercase(), "{floor}");
    }
}

/// The soak scenario against one node over Redis: lifetimes complete, malformed frames
/// are sent, and every figure (RSS, descriptors, tasks, Redis keys) is sampled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_runs_and_samples_every_figure() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let nodes = vec![node(Some(&redis))];
    nodes[0].wait_ready();
    let soak = scenarios::soak::run(scenarios::soak::Soak {
        target: target(&nodes),
        duration: 2.0,
        workers: 2,
        channels: 4,
        settle: 0.5,
        sample_every: 0.5,
        redis_url: Some(redis.url()),
    })
    .await
    .unwrap();
    assert_eq!(soak["errors"], 0, "{soak}");
    assert!(soak["cycles"].as_u64().unwrap() >= 10, "{soak}");
    assert!(soak["bad_frames"].as_u64().unwrap() >= 1, "{soak}");
    for at in ["start", "peak", "end"] {
        assert!(soak[at]["gateway_rss_mib"].as_f64().unwrap() > 0.0, "{soak}");
        assert!(soak[at]["gateway_open_fds"].as_u64().unwrap() > 0, "{soak}");
        assert!(soak[at]["gateway_tasks"].as_u64().unwrap() > 0, "{soak}");
        assert!(soak[at]["redis_keys"].as_u64().is_some(), "{soak}");
    }
    assert!(soak["peak"]["redis_keys"].as_u64() > soak["start"]["redis_keys"].as_u64(), "{soak}");
    assert!(!soak["samples"].as_array().unwrap().is_empty(), "{soak}");
}

/// The rpc scenario through both routes: stream workers run by the bench, and the HTTP
/// endpoint it serves (on a free port instead of bench-rpc.toml's 18099).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_runs_through_the_stream_and_http_routes() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let port = switchboard_testkit::free_port();
    let config = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/bench-rpc.toml"))
        .unwrap()
        .replace("127.0.0.1:18099", &format!("127.0.0.1:{port}"));
    let path = std::env::temp_dir().join(format!("switchboard-bench-rpc-{}.toml", std::process::id()));
    std::fs::write(&path, config).unwrap();
    let url = redis.url();
    let node = Gateway::start(Path::new(BIN), &["--config", path.to_str().unwrap(), "--broker", &url], &[]);
    let settings = |redis: Option<String>, http_listen| scenarios::rpc::Rpc {
        target: target(std::slice::from_ref(&node)),
        redis,
        http_listen,
        workers: 2,
        worker_concurrency: 4,
        clients: 4,
        calls: 200,
        payload_bytes: 50,
    };
    for (redis, http) in
        [(Some(url.clone()), None), (None, Some(format!("127.0.0.1:{port}").parse().unwrap()))]
    {
        let report = scenarios::rpc::run(settings(redis, http)).await.unwrap();
        assert_eq!((report["calls"].as_u64(), report["errors"].as_u64()), (Some(200), Some(0)), "{report}");
        assert!(report["round_trips_per_second"].as_f64().unwrap() > 0.0, "{report}");
        assert!(report["latency"]["p50_ms"].as_f64().unwrap() > 0.0, "{report}");
    }
    // Every request was answered and deleted: nothing waits in the stream.
    assert_eq!(redis.cli(&["XLEN", "sb:rpc:{bench}"]).trim(), "0");
}

/// The redis-publish scenario: Redis's own CPU per publication, both ways of calling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_publish_measures_redis_cpu_per_publication() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let replica = RedisServer::start_replica_of(&redis);
    fixture::eventually("the replica is online", || async { redis.replicas() == 1 }).await;
    let report = scenarios::redis_publish::run(scenarios::redis_publish::RedisPublish {
        redis: redis.url(),
        channels: 10,
        publications: 2_000,
        batch: 50,
        payload: 20,
        history: 30,
        hold: 1,
    })
    .await
    .unwrap();
    drop(replica);
    for variant in ["unchecked", "checked", "held"] {
        let result = &report["results"][variant];
        assert!(result["redis_cpu_us_per_publication"].as_f64().is_some_and(|us| us >= 0.0), "{report}");
        assert!(result["publications_per_second"].as_f64().unwrap() > 0.0, "{report}");
    }
    // 12 000 publications over 10 channels, every stream trimmed to the history size;
    // the held ones were all committed.
    assert_eq!(redis.cli(&["XLEN", "sb:{bench:redis-3}:stream"]).trim(), "30");
    assert_eq!(redis.cli(&["HGET", "sb:{bench:redis-3}:meta", "offset"]).trim(), "1200");
    assert_eq!(redis.cli(&["HGET", "sb:{bench:redis-3}:meta", "c"]).trim(), "1200");
}

/// The redis-shards scenario on a 3-primary cluster, sharded and classic: every
/// delivery arrives, and each primary reports its CPU per publication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_shards_measures_each_primary() {
    use scenarios::redis_shards::{PubSub, RedisShards};
    let _serial = SERIAL.lock().await;
    let cluster = switchboard_testkit::cluster::RedisCluster::start(3, 0);
    for (pubsub, store) in [(PubSub::Sharded, true), (PubSub::Sharded, false), (PubSub::Classic, false)] {
        let report = scenarios::redis_shards::run(RedisShards {
            redis: cluster.url(),
            pubsub,
            store,
            nodes: 2,
            channels: 30,
            publications: 3_000,
            batch: 50,
            payload: 20,
        })
        .await
        .unwrap();
        assert_eq!(report["servers"], 3, "{report}");
        assert_eq!(
            (report["deliveries"].as_u64(), report["lost"].as_u64()),
            (Some(6_000), Some(0)),
            "{report}"
        );
        assert!(report["busiest_server_us_per_publication"].as_f64().is_some_and(|us| us > 0.0), "{report}");
    }
}
