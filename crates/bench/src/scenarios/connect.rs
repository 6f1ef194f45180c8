//! `connect`: how many new authenticated connections per second a node accepts: TCP and
//! WebSocket handshakes, JWT verification, the personal-channel subscription and the
//! `connect` reply, with K attempts in flight.

use std::sync::Arc;

use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::{lean, stats::total_cpu, target::Target};

/// Settings of the connect scenario.
#[derive(Debug, Clone, Args)]
pub struct Connect {
    #[command(flatten)]
    /// The nodes.
    pub target: Target,
    /// Connections to establish (each is closed after its `connect` reply).
    #[arg(long, default_value_t = 5000)]
    pub connections: usize,
    /// Attempts in flight.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
}

/// Runs the scenario.
///
/// # Errors
/// When tokens cannot be minted.
pub async fn run(settings: Connect) -> anyhow::Result<Value> {
    let tokens = settings.target.tokens();
    let minted: Vec<String> =
        (0..settings.connections).map(|n| tokens.mint(&format!("c{n}"))).collect::<Result<_, _>>()?;
    let gate = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    let cpu_before = total_cpu(&settings.target.pids);
    let started = std::time::Instant::now();
    let mut attempts = Vec::with_capacity(settings.connections);
    for (n, token) in minted.into_iter().enumerate() {
        let (url, source, gate) =
            (settings.target.url(n).to_string(), settings.target.source(n), gate.clone());
        attempts.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let begun = std::time::Instant::now();
            let socket = lean::open(&url, source, &token).await?;
            let took = begun.elapsed();
            drop(socket);
            anyhow::Ok(took)
        }));
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut failures = 0u64;
    for attempt in attempts {
        match attempt.await? {
            Ok(took) => latency.record(took.as_micros().max(1) as u64)?,
            Err(_) => failures += 1,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let succeeded = settings.connections as u64 - failures;
    let cpu = total_cpu(&settings.target.pids) - cpu_before;
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    Ok(json!({
        "connections": settings.connections,
        "concurrency": settings.concurrency,
        "succeeded": succeeded,
        "failed": failures,
        "seconds": (elapsed * 1000.0).round() / 1000.0,
        "connections_per_second": (succeeded as f64 / elapsed).round(),
        "connect_latency": {"p50_ms": ms(0.5), "p99_ms": ms(0.99), "max_ms": latency.max() as f64 / 1000.0},
        "gateway_cpu_seconds": (cpu * 1000.0).round() / 1000.0,
    }))
}
