//! `rpc`: round trips per second and their latency through an RPC route: clients call
//! `rpc` over their WebSocket, the gateway routes each call to a backend, the backend's
//! answer comes back to the client.
//!
//! With `--redis`, the scenario runs the backend itself: `--workers` Rust workers
//! (`switchboard_publisher::worker`, each handling up to `--worker-concurrency` calls at
//! once) on the stream route `bench` (method prefix `bench.`). With `--http-listen`, it
//! serves the HTTP route instead (method prefix `http.`), one endpoint answering every
//! call. The gateways need `crates/bench/bench-rpc.toml`. Each client keeps one call in
//! flight; latency is from the client's send to its reply. The bench process's CPU
//! includes the backend's (workers or endpoint) as well as the clients'.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use axum::{routing::post, Json, Router};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use switchboard_publisher::worker::Worker;
use tokio::sync::watch;

use crate::{
    lean,
    stats::{cpu_seconds, total_cpu},
    target::Target,
};

/// Settings of the rpc scenario.
#[derive(Debug, Clone, Args)]
pub struct Rpc {
    #[command(flatten)]
    /// The nodes.
    pub target: Target,
    /// Redis URL: serve the stream route with `--workers` workers.
    #[arg(long, conflicts_with = "http_listen")]
    pub redis: Option<String>,
    /// Serve the HTTP route on this address (the gateways' bench-rpc.toml points at
    /// 127.0.0.1:18099).
    #[arg(long)]
    pub http_listen: Option<SocketAddr>,
    /// Stream route workers.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Calls each worker handles at once.
    #[arg(long, default_value_t = 16)]
    pub worker_concurrency: usize,
    /// Clients, each with one call in flight.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Calls in all.
    #[arg(long, default_value_t = 20_000)]
    pub calls: usize,
    /// Bytes of padding in each call's data (echoed back).
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
}

/// Runs the scenario.
///
/// # Errors
/// When the backend cannot start, a client cannot connect, or a call fails.
pub async fn run(settings: Rpc) -> anyhow::Result<Value> {
    let (stop, stopped) = watch::channel(false);
    let (method, backend) = match (&settings.redis, settings.http_listen) {
        (Some(redis), None) => {
            let mut workers = Vec::new();
            for n in 0..settings.workers.max(1) {
                let worker = Worker::connect(redis, "bench")
                    .await?
                    .consumer(format!("bench-{n}"))
                    .concurrency(settings.worker_concurrency);
                let mut stopped = stopped.clone();
                workers.push(tokio::spawn(worker.serve(
                    |request| async move { Ok(request.data) },
                    async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    },
                )));
            }
            (
                "bench.echo",
                format!("stream, {} worker(s) x {}", settings.workers, settings.worker_concurrency),
            )
        }
        (None, Some(listen)) => {
            let listener = tokio::net::TcpListener::bind(listen).await.context("binding the HTTP route")?;
            let app = Router::new().route(
                "/rpc",
                post(|Json(call): Json<Value>| async move { Json(json!({ "result": call["data"] })) }),
            );
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                let shutdown = async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                };
                axum::serve(listener, app).with_graceful_shutdown(shutdown).await
            });
            ("http.echo", format!("http, {listen}"))
        }
        _ => anyhow::bail!("give --redis (stream route) or --http-listen (HTTP route)"),
    };

    let tokens = settings.target.tokens();
    let encoding = settings.target.encoding;
    let mut sockets = Vec::new();
    for n in 0..settings.clients {
        let token = tokens.mint(&format!("r{n}"))?;
        sockets.push(lean::open(settings.target.url(n), settings.target.source(n), &token, encoding).await?);
    }
    // Warm up: one call each (pooled HTTP connections, the workers' first reads).
    let padding = "x".repeat(settings.payload_bytes);
    for socket in &mut sockets {
        lean::send(socket, encoding, 2, "rpc", json!({"method": method, "data": {"p": padding}})).await?;
        let reply = lean::reply(socket, encoding, 2).await?;
        anyhow::ensure!(reply.get("result").is_some(), "warm-up call failed: {reply}");
    }

    let per_client = settings.calls.div_ceil(settings.clients.max(1));
    let cpu_before = total_cpu(&settings.target.pids);
    let own_before = cpu_seconds(std::process::id()).unwrap_or(0.0);
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for mut socket in sockets {
        let padding = padding.clone();
        tasks.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut errors = 0u64;
            for call in 0..per_client as u64 {
                let id = call + 3;
                let begun = std::time::Instant::now();
                lean::send(
                    &mut socket,
                    encoding,
                    id,
                    "rpc",
                    json!({"method": method, "data": {"p": padding}}),
                )
                .await?;
                let reply = lean::reply(&mut socket, encoding, id).await?;
                if reply.get("result").is_some() {
                    latency.record(begun.elapsed().as_micros().max(1) as u64)?;
                } else {
                    errors += 1;
                }
            }
            anyhow::Ok((latency, errors))
        }));
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0u64;
    for task in tasks {
        let (histogram, failed) = task.await??;
        latency.add(&histogram)?;
        errors += failed;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = total_cpu(&settings.target.pids) - cpu_before;
    let own = cpu_seconds(std::process::id()).unwrap_or(0.0) - own_before;
    let _ = stop.send(true);
    // Let the workers finish their reads and stop cleanly.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answered = latency.len();
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    let per_call = |seconds: f64| if answered > 0 { (seconds * 1e6 / answered as f64).round() } else { 0.0 };
    Ok(json!({
        "route": backend,
        "clients": settings.clients,
        "calls": answered + errors,
        "errors": errors,
        "seconds": (elapsed * 1000.0).round() / 1000.0,
        "round_trips_per_second": (answered as f64 / elapsed).round(),
        "latency": {"p50_ms": ms(0.5), "p99_ms": ms(0.99), "max_ms": latency.max() as f64 / 1000.0},
        "gateway_cpu_us_per_call": per_call(cpu),
        "bench_process_cpu_us_per_call": per_call(own),
    }))
}
