//! `idle`: C idle authenticated connections with one subscription each; gateway RSS per
//! connection, from `/proc/<pid>/status` of every node.

use std::{sync::Arc, time::Duration};

use clap::Args;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::{lean, stats::rss_bytes, target::Target};

/// Settings of the idle scenario.
#[derive(Debug, Clone, Args)]
pub struct Idle {
    #[command(flatten)]
    /// The nodes (give `--pid` for each, or RSS cannot be read).
    pub target: Target,
    /// Connections to hold.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Distinct channels the connections subscribe to.
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// How long to hold them after the last one connected, in seconds.
    #[arg(long, default_value_t = 3.0)]
    pub hold: f64,
    /// Connections opened at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
}

/// Runs the scenario.
///
/// # Errors
/// When a connection cannot be set up.
pub async fn run(settings: Idle) -> anyhow::Result<Value> {
    let rss = |pids: &[u32]| pids.iter().filter_map(|pid| rss_bytes(*pid)).sum::<u64>();
    let before = rss(&settings.target.pids);
    let tokens = settings.target.tokens();
    let gate = Arc::new(Semaphore::new(settings.connect_concurrency.max(1)));
    let started = std::time::Instant::now();
    let mut setups = Vec::with_capacity(settings.connections);
    for n in 0..settings.connections {
        let (url, source, token) =
            (settings.target.url(n).to_string(), settings.target.source(n), tokens.mint(&format!("i{n}"))?);
        let channel = format!("bench:idle-{}", n % settings.channels.max(1));
        let gate = gate.clone();
        setups.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let mut socket = lean::open(&url, source, &token).await?;
            lean::subscribe(&mut socket, 2, &channel).await?;
            anyhow::Ok(socket)
        }));
    }
    let mut sockets = Vec::with_capacity(setups.len());
    for setup in setups {
        sockets.push(setup.await??);
    }
    let setup_seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(settings.hold)).await;
    let after = rss(&settings.target.pids);
    let per_connection = after.saturating_sub(before) as f64 / settings.connections.max(1) as f64;
    drop(sockets);
    Ok(json!({
        "connections": settings.connections,
        "channels": settings.channels,
        "nodes": settings.target.urls.len(),
        "setup_seconds": (setup_seconds * 1000.0).round() / 1000.0,
        "gateway_rss_before_bytes": before,
        "gateway_rss_after_bytes": after,
        "rss_bytes_per_connection": per_connection.round(),
        "rss_kib_per_connection": (per_connection / 1024.0 * 100.0).round() / 100.0,
    }))
}
