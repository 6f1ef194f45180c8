//! `connect`: how many new authenticated connections per second a node accepts: TCP and
//! WebSocket handshakes, JWT verification, the personal-channel subscription and the
//! `connect` reply, with K attempts in flight.
//!
//! By default every connection stays open until all are established, as in a reconnect
//! storm after a node loss (clients come to stay); the rate and the gateway CPU are taken
//! before they are closed. `--churn` closes each one as soon as it is accepted, which
//! adds the cost of tearing connections down to the figures. `--socketio` connects with
//! Socket.IO instead (an Engine.IO WebSocket and a CONNECT with the token; with
//! `--subscribe`, the `subscribe` event).

use std::sync::Arc;

use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::{
    lean, socketio,
    stats::{cpu_seconds, total_cpu},
    target::Target,
};

/// Settings of the connect scenario.
#[derive(Debug, Clone, Args)]
pub struct Connect {
    #[command(flatten)]
    /// The nodes.
    pub target: Target,
    /// Connections to establish (held open, so at most ~19 000 per process here).
    #[arg(long, default_value_t = 5000)]
    pub connections: usize,
    /// Attempts in flight.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    /// Close each connection right after its `connect` reply instead of holding it.
    #[arg(long)]
    pub churn: bool,
    /// After `connect`, subscribe each connection to a channel of its own
    /// (`bench:connect-<n>`), and time both together: what a fresh subscribe costs.
    #[arg(long)]
    pub subscribe: bool,
    /// Connect with Socket.IO to `/socket.io/` of each `--url`'s host.
    #[arg(long)]
    pub socketio: bool,
}

/// Runs the scenario.
///
/// # Errors
/// When tokens cannot be minted.
pub async fn run(settings: Connect) -> anyhow::Result<Value> {
    let tokens = settings.target.tokens();
    let encoding = settings.target.encoding;
    let minted: Vec<String> =
        (0..settings.connections).map(|n| tokens.mint(&format!("c{n}"))).collect::<Result<_, _>>()?;
    let gate = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    let cpu_before = total_cpu(&settings.target.pids);
    let own_before = cpu_seconds(std::process::id()).unwrap_or(0.0);
    let started = std::time::Instant::now();
    let mut attempts = Vec::with_capacity(settings.connections);
    for (n, token) in minted.into_iter().enumerate() {
        let (url, source, gate, churn, subscribe, sio) = (
            settings.target.url(n).to_string(),
            settings.target.source(n),
            gate.clone(),
            settings.churn,
            settings.subscribe,
            settings.socketio,
        );
        attempts.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let begun = std::time::Instant::now();
            let channel = format!("bench:connect-{n}");
            let socket = if sio {
                let mut socket = socketio::open(&url, source, &token).await?;
                if subscribe {
                    socketio::subscribe(&mut socket, &channel).await?;
                }
                socket
            } else {
                let mut socket = lean::open(&url, source, &token, encoding).await?;
                if subscribe {
                    lean::subscribe(&mut socket, encoding, 2, &channel).await?;
                }
                socket
            };
            let took = begun.elapsed();
            let held = (!churn).then_some(socket);
            anyhow::Ok((took, held))
        }));
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut failures = 0u64;
    let mut first_error: Option<String> = None;
    let mut held = Vec::new();
    for attempt in attempts {
        match attempt.await? {
            Ok((took, socket)) => {
                latency.record(took.as_micros().max(1) as u64)?;
                held.extend(socket);
            }
            Err(error) => {
                failures += 1;
                first_error.get_or_insert_with(|| format!("{error:#}"));
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let succeeded = settings.connections as u64 - failures;
    let cpu = total_cpu(&settings.target.pids) - cpu_before;
    let own = cpu_seconds(std::process::id()).unwrap_or(0.0) - own_before;
    drop(held);
    let per_connection =
        |seconds: f64| if succeeded > 0 { (seconds * 1e6 / succeeded as f64).round() } else { 0.0 };
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    Ok(json!({
        "connections": settings.connections,
        "concurrency": settings.concurrency,
        "churn": settings.churn,
        "subscribe": settings.subscribe,
        "protocol": if settings.socketio { "socketio" } else { encoding.name() },
        "succeeded": succeeded,
        "failed": failures,
        "first_error": first_error,
        "seconds": (elapsed * 1000.0).round() / 1000.0,
        "connections_per_second": (succeeded as f64 / elapsed).round(),
        "connect_latency": {"p50_ms": ms(0.5), "p99_ms": ms(0.99), "max_ms": latency.max() as f64 / 1000.0},
        "gateway_cpu_seconds": (cpu * 1000.0).round() / 1000.0,
        "gateway_cpu_us_per_connection": per_connection(cpu),
        "load_generator_cpu_us_per_connection": per_connection(own),
    }))
}
