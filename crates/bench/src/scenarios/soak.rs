//! `soak`: churn for a while and show that the node gives back what it took.
//!
//! Workers loop until the duration ends: open an authenticated connection, subscribe to a
//! shared channel and to one that is never published to, publish, read history of a
//! never-published channel, then either leave cleanly or send a malformed frame (which
//! the server answers by closing with 3500). Gateway RSS, open file descriptors and live
//! tasks (from each node's `/metrics`) and, given `--redis-url`, the Redis key count are
//! sampled before, during and after a settling pause: a leak shows as an end figure above
//! the start, independent of how fast this machine is.

use std::{
    io::{Read, Write},
    net::{TcpStream, ToSocketAddrs},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::{lean, stats::rss_bytes, target::Target};

/// Settings of the soak scenario.
#[derive(Debug, Clone, Args)]
pub struct Soak {
    #[command(flatten)]
    /// The nodes (give `--pid` for each, or RSS and descriptors cannot be read).
    pub target: Target,
    /// How long to churn, in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Connections churning at once.
    #[arg(long, default_value_t = 32)]
    pub workers: usize,
    /// Shared channels the connections subscribe and publish to.
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// Pause after the churn before the end figures, in seconds (memory is returned to
    /// the OS in the background, and unpublished streams expire).
    #[arg(long, default_value_t = 15.0)]
    pub settle: f64,
    /// Sample interval during the churn, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub sample_every: f64,
    /// The cluster's Redis (`redis://host:port`), to count its keys with `redis-cli`.
    #[arg(long)]
    pub redis_url: Option<String>,
}

#[derive(Default)]
struct Counts {
    cycles: AtomicU64,
    bad_frames: AtomicU64,
    errors: AtomicU64,
}

/// Runs the scenario.
///
/// # Errors
/// When a node cannot be sampled.
pub async fn run(settings: Soak) -> anyhow::Result<Value> {
    let start = sample(&settings).await?;
    let counts = Arc::new(Counts::default());
    let deadline = Instant::now() + Duration::from_secs_f64(settings.duration);
    let mut workers = Vec::with_capacity(settings.workers);
    for worker in 0..settings.workers.max(1) {
        let (settings, counts) = (settings.clone(), counts.clone());
        workers.push(tokio::spawn(async move { churn(worker, &settings, &counts, deadline).await }));
    }
    let mut peak = start.clone();
    let mut series = Vec::new();
    let mut first_error = None;
    let began = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs_f64(settings.sample_every.max(0.5))).await;
        let now = sample(&settings).await?;
        peak = peak.max_with(&now);
        let mut point = now.to_json();
        point["at_seconds"] = json!(began.elapsed().as_secs());
        point["cycles"] = json!(counts.cycles.load(Ordering::Relaxed));
        series.push(point);
    }
    for worker in workers {
        if let Err(error) = worker.await? {
            first_error.get_or_insert_with(|| format!("{error:#}"));
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(settings.settle)).await;
    let end = sample(&settings).await?;
    let cycles = counts.cycles.load(Ordering::Relaxed);
    Ok(json!({
        "duration_seconds": settings.duration,
        "workers": settings.workers,
        "cycles": cycles,
        "cycles_per_second": (cycles as f64 / settings.duration.max(0.001)).round(),
        "bad_frames": counts.bad_frames.load(Ordering::Relaxed),
        "errors": counts.errors.load(Ordering::Relaxed),
        "first_error": first_error,
        "start": start.to_json(),
        "peak": peak.to_json(),
        "end": end.to_json(),
        "samples": series,
    }))
}

/// One worker's loop of connection lifetimes.
async fn churn(worker: usize, settings: &Soak, counts: &Counts, deadline: Instant) -> anyhow::Result<()> {
    let tokens = settings.target.tokens();
    let encoding = settings.target.encoding;
    let mut cycle = 0usize;
    while Instant::now() < deadline {
        cycle += 1;
        let n = worker + cycle * settings.workers;
        let outcome = async {
            let token = tokens.mint(&format!("soak{}", n % 1000))?;
            let mut socket =
                lean::open(settings.target.url(n), settings.target.source(n), &token, encoding).await?;
            let shared = format!("bench:soak-{}", n % settings.channels.max(1));
            lean::subscribe(&mut socket, encoding, 2, &shared).await?;
            lean::subscribe(&mut socket, encoding, 3, &format!("bench:unread-{n}")).await?;
            lean::send(&mut socket, encoding, 4, "publish", json!({"channel": shared, "data": {"n": n}}))
                .await?;
            lean::reply(&mut socket, encoding, 4).await?;
            let history = json!({"channel": format!("bench:never-{n}"), "limit": 1});
            lean::send(&mut socket, encoding, 5, "history", history).await?;
            lean::reply(&mut socket, encoding, 5).await?;
            if n.is_multiple_of(10) {
                // Malformed on purpose: the server closes with 3500 protocol_error.
                socket.send(Message::Binary(vec![0xc1, 0x00].into())).await?;
                counts.bad_frames.fetch_add(1, Ordering::Relaxed);
                while let Ok(Some(Ok(_))) = tokio::time::timeout(lean::EXCHANGE_TIMEOUT, socket.next()).await
                {
                }
            } else {
                lean::send(&mut socket, encoding, 6, "unsubscribe", json!({"channel": shared})).await?;
                lean::reply(&mut socket, encoding, 6).await?;
                socket.close(None).await?;
            }
            anyhow::Ok(())
        }
        .await;
        match outcome {
            Ok(()) => counts.cycles.fetch_add(1, Ordering::Relaxed),
            Err(error) => {
                if counts.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    return Err(error);
                }
                0
            }
        };
    }
    Ok(())
}

/// What the nodes and Redis hold at one moment.
#[derive(Debug, Clone, Default)]
struct Sample {
    rss_bytes: u64,
    open_fds: u64,
    tasks: u64,
    redis_keys: Option<u64>,
}

impl Sample {
    fn max_with(&self, other: &Sample) -> Sample {
        Sample {
            rss_bytes: self.rss_bytes.max(other.rss_bytes),
            open_fds: self.open_fds.max(other.open_fds),
            tasks: self.tasks.max(other.tasks),
            redis_keys: self.redis_keys.max(other.redis_keys),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "gateway_rss_mib": (self.rss_bytes as f64 / 1048576.0 * 10.0).round() / 10.0,
            "gateway_open_fds": self.open_fds,
            "gateway_tasks": self.tasks,
            "redis_keys": self.redis_keys,
        })
    }
}

async fn sample(settings: &Soak) -> anyhow::Result<Sample> {
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || {
        let pids = &settings.target.pids;
        let mut tasks = 0;
        for url in &settings.target.urls {
            tasks += metric(url, "switchboard_runtime_tasks")? as u64;
        }
        let redis_keys = match &settings.redis_url {
            Some(url) => Some(redis_keys(url)?),
            None => None,
        };
        anyhow::Ok(Sample {
            rss_bytes: pids.iter().filter_map(|pid| rss_bytes(*pid)).sum(),
            open_fds: pids
                .iter()
                .filter_map(|pid| std::fs::read_dir(format!("/proc/{pid}/fd")).ok())
                .map(|d| d.count() as u64)
                .sum(),
            tasks,
            redis_keys,
        })
    })
    .await?
}

/// An unlabelled metric of the node serving WebSocket URL `ws_url`.
fn metric(ws_url: &str, name: &str) -> anyhow::Result<f64> {
    let authority = ws_url.trim_start_matches("ws://").split('/').next().context("bad url")?;
    let address = authority.to_socket_addrs()?.next().context("cannot resolve")?;
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .with_context(|| format!("no {name} in {ws_url}'s metrics"))
}

fn redis_keys(url: &str) -> anyhow::Result<u64> {
    let output = std::process::Command::new("redis-cli").args(["-u", url, "DBSIZE"]).output()?;
    String::from_utf8(output.stdout)?.trim().parse().context("DBSIZE")
}
