//! `idle`: C idle authenticated connections with one subscription each; gateway RSS per
//! connection, from `/proc/<pid>/status` of every node.
//!
//! Idle does not mean dead: every connection keeps reading, so it answers the server's
//! pings and stays open however long the setup takes. Connections the server closed
//! anyway are counted (`closed_by_server`), since they would flatter the figure.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use clap::Args;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};

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
    let encoding = settings.target.encoding;
    let gate = Arc::new(Semaphore::new(settings.connect_concurrency.max(1)));
    let started = std::time::Instant::now();
    let (stop, stopped) = watch::channel(false);
    let closed = Arc::new(AtomicUsize::new(0));
    let mut setups = Vec::with_capacity(settings.connections);
    for n in 0..settings.connections {
        let (url, source, token) =
            (settings.target.url(n).to_string(), settings.target.source(n), tokens.mint(&format!("i{n}"))?);
        let channel = format!("bench:idle-{}", n % settings.channels.max(1));
        let (gate, stopped, closed) = (gate.clone(), stopped.clone(), closed.clone());
        setups.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await?;
            let mut socket = lean::open(&url, source, &token, encoding).await?;
            lean::subscribe(&mut socket, encoding, 2, &channel).await?;
            drop(permit);
            anyhow::Ok(tokio::spawn(hold(socket, stopped, closed)))
        }));
    }
    let mut holders = Vec::with_capacity(setups.len());
    for setup in setups {
        holders.push(setup.await??);
    }
    let setup_seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(settings.hold)).await;
    let after = rss(&settings.target.pids);
    let per_connection = after.saturating_sub(before) as f64 / settings.connections.max(1) as f64;
    let closed_by_server = closed.load(Ordering::Relaxed);
    stop.send_replace(true);
    for holder in holders {
        holder.await?;
    }
    Ok(json!({
        "connections": settings.connections,
        "channels": settings.channels,
        "nodes": settings.target.urls.len(),
        "setup_seconds": (setup_seconds * 1000.0).round() / 1000.0,
        "gateway_rss_before_bytes": before,
        "gateway_rss_after_bytes": after,
        "rss_bytes_per_connection": per_connection.round(),
        "rss_kib_per_connection": (per_connection / 1024.0 * 100.0).round() / 100.0,
        "closed_by_server": closed_by_server,
    }))
}

/// Holds one connection open, reading (which answers pings) until told to stop; counts it
/// in `closed` if the server ends it first.
async fn hold(mut socket: lean::Socket, mut stop: watch::Receiver<bool>, closed: Arc<AtomicUsize>) {
    loop {
        tokio::select! {
            message = socket.next() => match message {
                Some(Ok(_)) => continue,
                _ => {
                    closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
            _ = stop.changed() => return,
        }
    }
}
