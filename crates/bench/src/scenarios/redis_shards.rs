//! `redis-shards`: what cross-node fan-out costs Redis, on one server or on a Redis
//! Cluster, with sharded or classic pub/sub: the curve that says whether adding shards
//! adds capacity (docs/BENCHMARKS.md "Redis: one server, Sentinel, Cluster").
//!
//! `--nodes` simulated gateway nodes each subscribe every channel, as gateways with
//! subscribers everywhere do (sharded: one connection per primary, `SSUBSCRIBE` per slot;
//! classic: one connection to one server, `SUBSCRIBE`). Publications go to the primary
//! owning each channel's slot: `FCALL sb_publish` (`--store`, which picks `SPUBLISH` on a
//! cluster by itself) or a bare `PUBLISH`/`SPUBLISH` of a live envelope. Every Redis's own
//! CPU time (`INFO cpu`) before and after gives its cost per publication; the busiest
//! primary's cost is the ceiling (one core per Redis): `1e6 / µs` publications per second.
//! CPU time is what Redis spent whatever else ran on the machine, so the ceiling holds on
//! a loaded 2-core machine where the measured throughput cannot.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use super::redis_publish::{patient, redis_cpu};
use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::{json, Value};
use switchboard_protocol::redis as keys;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

/// Which pub/sub the publications use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PubSub {
    /// `SPUBLISH`/`SSUBSCRIBE`: a message stays in its shard.
    Sharded,
    /// `PUBLISH`/`SUBSCRIBE`: on a cluster, every message goes to every node.
    Classic,
}

/// Settings of the redis-shards scenario.
#[derive(Debug, Clone, Args)]
pub struct RedisShards {
    /// `redis://host:port` (one server) or `redis-cluster://host:port?node=host:port…`;
    /// dedicated servers: their whole CPU time is counted.
    #[arg(long)]
    pub redis: String,
    /// Sharded or classic pub/sub (one server: both behave alike).
    #[arg(long, value_enum, default_value_t = PubSub::Sharded)]
    pub pubsub: PubSub,
    /// Publish with `FCALL sb_publish` (stored, offsets) instead of a bare publish.
    /// Needs sharded pub/sub on a cluster (the function picks `SPUBLISH` there).
    #[arg(long)]
    pub store: bool,
    /// Simulated gateway nodes, each subscribed to every channel.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Distinct channels, used round-robin.
    #[arg(long, default_value_t = 1000)]
    pub channels: usize,
    /// Publications (after a warm-up of a tenth as many).
    #[arg(long, default_value_t = 200_000)]
    pub publications: usize,
    /// Publications per pipeline per primary.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Bytes of `data` in each body.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
}

/// One primary: its address and a connection for publishing and `INFO`.
struct Primary {
    address: String,
    connection: redis::aio::MultiplexedConnection,
}

/// Runs the scenario.
///
/// # Errors
/// When Redis cannot be reached, or the settings do not fit the server.
pub async fn run(mut settings: RedisShards) -> anyhow::Result<Value> {
    let seeds = seeds(&settings.redis)?;
    let clustered = settings.redis.starts_with("redis-cluster://");
    if !clustered {
        // One server: classic pub/sub, as gateways use it there.
        settings.pubsub = PubSub::Classic;
    }
    anyhow::ensure!(
        !(clustered && settings.store && settings.pubsub == PubSub::Classic),
        "--store on a cluster publishes sharded (the function picks SPUBLISH): drop --store for classic"
    );
    let addresses = if clustered { primaries(&seeds[0]).await? } else { vec![seeds[0].clone()] };
    let mut servers = Vec::new();
    for address in &addresses {
        let client = redis::Client::open(format!("redis://{address}"))?;
        servers.push(Primary {
            address: address.clone(),
            connection: client.get_multiplexed_async_connection_with_config(&patient()).await?,
        });
    }
    if settings.store {
        for server in &mut servers {
            let _: () = redis::cmd("FUNCTION")
                .arg("LOAD")
                .arg("REPLACE")
                .arg(keys::LIBRARY)
                .query_async(&mut server.connection)
                .await?;
        }
    }
    let channels: Vec<String> = (0..settings.channels.max(1)).map(|n| format!("bench:shard-{n}")).collect();
    let owners = owners(&mut servers, &channels, clustered).await?;

    let received = Arc::new(AtomicU64::new(0));
    let mut subscribers = Vec::new();
    for node in 0..settings.nodes {
        if clustered && settings.pubsub == PubSub::Sharded {
            for (index, server) in servers.iter().enumerate() {
                let mine: Vec<&String> =
                    channels.iter().zip(&owners).filter(|(_, o)| **o == index).map(|(c, _)| c).collect();
                subscribers.push(subscribe(&server.address, &mine, true, received.clone()).await?);
            }
        } else {
            let server = &servers[node % servers.len()];
            let all: Vec<&String> = channels.iter().collect();
            subscribers.push(subscribe(&server.address, &all, false, received.clone()).await?);
        }
    }

    let body = json!({"event": "bench", "data": {"p": "x".repeat(settings.payload)}}).to_string();
    let warm_up = settings.publications / 10;
    publish(&mut servers, &channels, &owners, &settings, &body, warm_up).await?;
    settle(&received, (warm_up * settings.nodes) as u64).await;
    received.store(0, Ordering::Release);
    let mut before = Vec::new();
    for server in &mut servers {
        before.push(redis_cpu(&mut server.connection).await?);
    }
    let started = Instant::now();
    publish(&mut servers, &channels, &owners, &settings, &body, settings.publications).await?;
    let expected = (settings.publications * settings.nodes) as u64;
    let delivered = settle(&received, expected).await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut per_server = Vec::new();
    for (server, before) in servers.iter_mut().zip(before) {
        let cpu = redis_cpu(&mut server.connection).await? - before;
        per_server.push((server.address.clone(), cpu * 1e6 / settings.publications as f64));
    }
    for subscriber in subscribers {
        subscriber.abort();
    }
    let total: f64 = per_server.iter().map(|(_, us)| us).sum();
    let busiest = per_server.iter().map(|(_, us)| *us).fold(0.0, f64::max);
    let round = |x: f64| (x * 100.0).round() / 100.0;
    Ok(json!({
        "servers": per_server.len(),
        "pubsub": if settings.pubsub == PubSub::Sharded { "sharded" } else { "classic" },
        "store": settings.store,
        "nodes": settings.nodes,
        "channels": settings.channels,
        "publications": settings.publications,
        "deliveries": delivered,
        "lost": expected.saturating_sub(delivered),
        "deliveries_per_second": (delivered as f64 / elapsed).round(),
        "redis_cpu_us_per_publication": per_server.iter().map(|(a, us)| json!({"server": a, "us": round(*us)})).collect::<Vec<_>>(),
        "redis_cpu_us_per_publication_total": round(total),
        "redis_cpu_s_per_million_deliveries": round(total / settings.nodes.max(1) as f64),
        "busiest_server_us_per_publication": round(busiest),
        "ceiling_publications_per_second": if busiest > 0.0 { (1e6 / busiest).round() } else { 0.0 },
        "ceiling_deliveries_per_second": if busiest > 0.0 { (1e6 / busiest * settings.nodes as f64).round() } else { 0.0 },
    }))
}

/// `host:port` of the URL and of each `node=` parameter.
fn seeds(url: &str) -> anyhow::Result<Vec<String>> {
    let (_, rest) = url.split_once("://").context("a redis:// or redis-cluster:// URL")?;
    let (first, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut seeds = vec![first.trim_end_matches('/').to_string()];
    seeds.extend(query.split('&').filter_map(|pair| pair.strip_prefix("node=")).map(str::to_string));
    Ok(seeds)
}

/// The cluster's primaries (`host:port`), from `CLUSTER SLOTS` on `seed`.
async fn primaries(seed: &str) -> anyhow::Result<Vec<String>> {
    let mut connection = redis::Client::open(format!("redis://{seed}"))?
        .get_multiplexed_async_connection_with_config(&patient())
        .await?;
    let slots: Vec<Value> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async::<redis::Value>(&mut connection)
        .await
        .map(|value| redis_to_json(&value).as_array().cloned().unwrap_or_default())?;
    let mut addresses: Vec<String> = slots
        .iter()
        .filter_map(|range| {
            let primary = range.get(2)?;
            Some(format!("{}:{}", primary.get(0)?.as_str()?, primary.get(1)?.as_i64()?))
        })
        .collect();
    addresses.sort();
    addresses.dedup();
    Ok(addresses)
}

fn redis_to_json(value: &redis::Value) -> Value {
    match value {
        redis::Value::Array(items) => Value::Array(items.iter().map(redis_to_json).collect()),
        redis::Value::BulkString(bytes) => Value::String(String::from_utf8_lossy(bytes).into()),
        redis::Value::SimpleString(text) => Value::String(text.clone()),
        redis::Value::Int(n) => json!(n),
        _ => Value::Null,
    }
}

/// The index (into `servers`) of the primary owning each channel's live channel.
async fn owners(servers: &mut [Primary], channels: &[String], clustered: bool) -> anyhow::Result<Vec<usize>> {
    if !clustered {
        return Ok(vec![0; channels.len()]);
    }
    let mut pipeline = redis::pipe();
    for channel in channels {
        pipeline.cmd("CLUSTER").arg("KEYSLOT").arg(keys::live(channel));
    }
    let slots: Vec<u16> = pipeline.query_async(&mut servers[0].connection).await?;
    let ranges: Vec<Value> = {
        let value: redis::Value =
            redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut servers[0].connection).await?;
        redis_to_json(&value).as_array().cloned().unwrap_or_default()
    };
    let owner = |slot: u16| {
        ranges.iter().find_map(|range| {
            let (start, end) = (range.get(0)?.as_i64()?, range.get(1)?.as_i64()?);
            let primary = range.get(2)?;
            let address = format!("{}:{}", primary.get(0)?.as_str()?, primary.get(1)?.as_i64()?);
            ((start..=end).contains(&i64::from(slot)))
                .then(|| servers.iter().position(|s| s.address == address))?
        })
    };
    slots.into_iter().map(|slot| owner(slot).context("a slot without a primary")).collect()
}

/// Publishes `count` publications round-robin over `channels`, each batch of up to
/// `batch` per primary pipelined, the primaries' pipelines in parallel.
async fn publish(
    servers: &mut [Primary],
    channels: &[String],
    owners: &[usize],
    settings: &RedisShards,
    body: &str,
    count: usize,
) -> anyhow::Result<()> {
    let envelope = format!(r#"{{"t":0,"b":{body}}}"#);
    let command = match settings.pubsub {
        PubSub::Sharded => "SPUBLISH",
        PubSub::Classic => "PUBLISH",
    };
    let mut sent = 0;
    let step = settings.batch.max(1) * servers.len();
    while sent < count {
        let mut pipelines: Vec<redis::Pipeline> = servers.iter().map(|_| redis::pipe()).collect();
        for n in sent..(sent + step).min(count) {
            let index = n % channels.len();
            let (channel, pipeline) = (&channels[index], &mut pipelines[owners[index]]);
            if settings.store {
                pipeline
                    .cmd("FCALL")
                    .arg("sb_publish")
                    .arg(2)
                    .arg(keys::stream(channel))
                    .arg(keys::meta(channel))
                    .arg(keys::live(channel))
                    .arg(body)
                    .arg(100)
                    .arg(300_000)
                    .arg(86_400_000)
                    .arg(300_000)
                    .arg("checked")
                    .ignore();
            } else {
                pipeline.cmd(command).arg(keys::live(channel)).arg(&envelope).ignore();
            }
        }
        let sends = servers.iter_mut().zip(pipelines).map(|(server, pipeline)| {
            let mut connection = server.connection.clone();
            async move { pipeline.query_async::<()>(&mut connection).await }
        });
        for result in futures_util::future::join_all(sends).await {
            result?;
        }
        sent += step;
    }
    Ok(())
}

/// Waits until `expected` messages arrived, or until none arrived for 3 s; returns the
/// count.
async fn settle(received: &AtomicU64, expected: u64) -> u64 {
    let mut last = (received.load(Ordering::Acquire), Instant::now());
    loop {
        let now = received.load(Ordering::Acquire);
        if now >= expected {
            return now;
        }
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(3) {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One subscriber connection to `address`: `SSUBSCRIBE` (one command per slot) or
/// `SUBSCRIBE` of `channels`' live channels; counts the messages it receives.
async fn subscribe(
    address: &str,
    channels: &[&String],
    sharded: bool,
    received: Arc<AtomicU64>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut commands = Vec::new();
    if sharded {
        let mut by_slot: HashMap<redis::cluster_routing::Slot, Vec<String>> = HashMap::new();
        for channel in channels {
            let name = keys::live(channel);
            by_slot.entry(redis::cluster_routing::Slot::for_key(&name)).or_default().push(name);
        }
        for names in by_slot.into_values() {
            commands.extend(resp_command("SSUBSCRIBE", &names));
        }
    } else {
        let names: Vec<String> = channels.iter().map(|c| keys::live(c)).collect();
        commands.extend(resp_command("SUBSCRIBE", &names));
    }
    write.write_all(&commands).await?;
    let expected_confirmations = channels.len();
    let mut reader = BufReader::with_capacity(1 << 16, read);
    // Confirmations first, so that the caller publishes only once everyone listens.
    let mut confirmed = 0;
    while confirmed < expected_confirmations {
        let kind = read_frame(&mut reader).await?;
        if kind.as_deref() == Some("ssubscribe") || kind.as_deref() == Some("subscribe") {
            confirmed += 1;
        }
    }
    Ok(tokio::spawn(async move {
        let _keep = write;
        while let Ok(kind) = read_frame(&mut reader).await {
            if matches!(kind.as_deref(), Some("message" | "smessage")) {
                received.fetch_add(1, Ordering::AcqRel);
            }
        }
    }))
}

fn resp_command(name: &str, args: &[String]) -> Vec<u8> {
    let mut out = format!("*{}\r\n${}\r\n{name}\r\n", args.len() + 1, name.len()).into_bytes();
    for arg in args {
        out.extend(format!("${}\r\n{arg}\r\n", arg.len()).into_bytes());
    }
    out
}

/// Reads one RESP2 frame of a pub/sub connection (an array of bulk strings and
/// integers); returns its first element (the message kind).
async fn read_frame(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
) -> anyhow::Result<Option<String>> {
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    anyhow::ensure!(!line.is_empty(), "connection closed");
    let count: usize = line.trim_end().strip_prefix('*').context("an array")?.parse()?;
    let mut kind = None;
    for index in 0..count {
        line.clear();
        reader.read_line(&mut line).await?;
        if let Some(length) = line.trim_end().strip_prefix('$') {
            let mut bytes = vec![0; length.parse::<usize>()? + 2];
            reader.read_exact(&mut bytes).await?;
            if index == 0 {
                bytes.truncate(bytes.len() - 2);
                kind = Some(String::from_utf8_lossy(&bytes).into_owned());
            }
        }
    }
    Ok(kind)
}
