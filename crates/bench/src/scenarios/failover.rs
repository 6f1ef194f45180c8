//! `failover`: kill one of K nodes under load (`kill -9` of its pid) and measure how long
//! each client takes to be back and recovered, and that nothing was lost, duplicated or
//! reordered. Clients use `switchboard-client`, so this also measures the SDK's reconnect
//! path.
//!
//! "Recovered" is the moment a client that lost its connection has received every
//! publication up to the channel's top offset at its resubscribe (the `offset` of its
//! `Subscribed` event): back on a node *and* caught up, not merely resubscribed.

use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};
use switchboard_client::{static_token, Backoff, Client, ClientConfig, Event};
use switchboard_protocol::Encoding;

use crate::{
    lean,
    stats::{cpu_per_million, cpu_seconds, total_cpu},
    target::Target,
};

/// How long a subscriber may take to connect and subscribe during setup.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of the failover scenario.
#[derive(Debug, Clone, Args)]
pub struct Failover {
    #[command(flatten)]
    /// The nodes; the publisher uses the last URL, so kill another node.
    pub target: Target,
    /// Subscribers (spread over the nodes).
    #[arg(long, default_value_t = 300)]
    pub subscribers: usize,
    /// Publications per second.
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds after the start to kill the node.
    #[arg(long, default_value_t = 3.0)]
    pub kill_after: f64,
    /// Process id of the node to kill.
    #[arg(long)]
    pub kill_pid: u32,
    /// Channel.
    #[arg(long, default_value = "bench:failover")]
    pub channel: String,
}

/// Runs the scenario.
///
/// # Errors
/// When setting up fails.
pub async fn run(settings: Failover) -> anyhow::Result<Value> {
    let tokens = settings.target.tokens();
    let urls = &settings.target.urls;
    let mut readers = Vec::new();
    let (kill_tx, kill_rx) = tokio::sync::watch::channel(None::<Instant>);
    for n in 0..settings.subscribers {
        let mut rotated: Vec<String> =
            urls.iter().cycle().skip(n % urls.len()).take(urls.len()).cloned().collect();
        if rotated.is_empty() {
            rotated.push(urls[0].clone());
        }
        let mut config = ClientConfig::new(rotated[0].clone(), static_token(tokens.mint(&format!("f{n}"))?));
        config.urls = rotated;
        config.backoff = Backoff { base: Duration::from_millis(100), max: Duration::from_secs(2) };
        let (client, _personal) = Client::connect(config);
        let setup = async {
            client.wait_connected().await?;
            client.subscribe(&settings.channel).await
        };
        let mut subscription = tokio::time::timeout(SETUP_TIMEOUT, setup)
            .await
            .map_err(|_| anyhow::anyhow!("subscriber {n} not subscribed within {SETUP_TIMEOUT:?}"))??;
        let killed = kill_rx.clone();
        let mut state = client.state();
        state.borrow_and_update();
        readers.push(tokio::spawn(async move {
            let mut reader = Reader::default();
            loop {
                let event = tokio::select! {
                    event = tokio::time::timeout(Duration::from_secs(8), subscription.next()) => event,
                    // Any state change after the subscription was made means this client
                    // lost its connection (the watch may skip the `Disconnected` itself).
                    _ = state.changed(), if !reader.disconnected => {
                        reader.disconnected = true;
                        continue;
                    }
                };
                let Ok(Some(event)) = event else { break };
                match event {
                    Event::Publication(publication) => {
                        if let Some(offset) = publication.offset {
                            reader.offsets.push(offset);
                        }
                    }
                    Event::Subscribed { recovered: None, offset, .. } => {
                        reader.start.get_or_insert(offset);
                    }
                    Event::Subscribed { recovered: Some(recovered), offset, .. } => {
                        if !recovered {
                            reader.not_recovered += 1;
                        }
                        reader.catch_up_to = Some(offset);
                    }
                    _ => {}
                }
                reader.note_caught_up(*killed.borrow());
            }
            drop(client);
            reader
        }));
    }
    let publisher_url = urls[urls.len() - 1].clone();
    let mut socket =
        lean::open(&publisher_url, None, &tokens.mint("failover-publisher")?, Encoding::Json).await?;
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / settings.rate.max(1) as f64);
    let mut next = tokio::time::Instant::now();
    let (mut id, mut last_offset, mut published, mut killed) = (1u64, 0u64, 0u64, false);
    let cpu_before = total_cpu(&settings.target.pids);
    // The killed node's CPU up to the kill; its /proc entry is gone afterwards.
    let mut killed_node_cpu = 0.0;
    while started.elapsed().as_secs_f64() < settings.duration {
        if !killed && started.elapsed().as_secs_f64() >= settings.kill_after {
            if settings.target.pids.contains(&settings.kill_pid) {
                killed_node_cpu = cpu_seconds(settings.kill_pid).unwrap_or(0.0);
            }
            std::process::Command::new("kill").args(["-9", &settings.kill_pid.to_string()]).status()?;
            kill_tx.send_replace(Some(Instant::now()));
            killed = true;
        }
        tokio::time::sleep_until(next).await;
        next += interval;
        id += 1;
        lean::send(
            &mut socket,
            Encoding::Json,
            id,
            "publish",
            json!({"channel": settings.channel, "data": lean::payload(64)}),
        )
        .await?;
        let reply = lean::reply(&mut socket, Encoding::Json, id).await?;
        if let Some(offset) = reply["result"]["offset"].as_u64() {
            last_offset = offset;
            published += 1;
        }
    }
    let (mut lost, mut duplicates, mut out_of_order, mut not_recovered) = (0u64, 0u64, 0u64, 0u64);
    let (mut times, mut disconnected, mut deliveries) = (Vec::new(), 0usize, 0u64);
    for reader in readers {
        let reader = reader.await?;
        let mut seen = std::collections::HashSet::new();
        let mut highest = 0;
        for offset in &reader.offsets {
            if !seen.insert(*offset) {
                duplicates += 1;
            } else if *offset < highest {
                out_of_order += 1;
            }
            highest = highest.max(*offset);
        }
        deliveries += reader.offsets.len() as u64;
        // Publications before this client subscribed are not its to receive.
        let first = reader.start.unwrap_or(0) + 1;
        lost += (first..=last_offset).filter(|o| !seen.contains(o)).count() as u64;
        not_recovered += reader.not_recovered;
        disconnected += usize::from(reader.disconnected);
        times.extend(reader.recovered_after);
    }
    times.sort();
    let quantile = |q: f64| {
        times.get(((times.len() as f64 * q).ceil() as usize).saturating_sub(1)).map(|d| d.as_secs_f64())
    };
    let within_5s = times.iter().filter(|d| **d <= Duration::from_secs(5)).count();
    let survivors: Vec<u32> =
        settings.target.pids.iter().copied().filter(|pid| *pid != settings.kill_pid).collect();
    let cpu = total_cpu(&survivors) + killed_node_cpu - cpu_before;
    Ok(json!({
        "nodes": urls.len(),
        "subscribers": settings.subscribers,
        "published": published,
        "last_offset": last_offset,
        "disconnected_clients": disconnected,
        "reconnected_clients": times.len(),
        "recovery_p50_s": quantile(0.5),
        "recovery_p95_s": quantile(0.95),
        "recovery_max_s": times.last().map(Duration::as_secs_f64),
        // Of the clients that lost their connection; one that never came back counts against it.
        "reconnected_within_5s_fraction": (disconnected > 0).then(|| within_5s as f64 / disconnected as f64),
        "lost": lost,
        "duplicates": duplicates,
        "out_of_order": out_of_order,
        "not_recovered": not_recovered,
        "deliveries": deliveries,
        "gateway_cpu_seconds": (cpu * 1000.0).round() / 1000.0,
        "cpu_seconds_per_million_deliveries": cpu_per_million(cpu, deliveries),
    }))
}

/// What one subscriber saw.
#[derive(Default)]
struct Reader {
    /// The channel's top offset when it subscribed.
    start: Option<u64>,
    offsets: Vec<u64>,
    /// The channel's top offset at the resubscribe after the connection was lost.
    catch_up_to: Option<u64>,
    /// From the kill until caught up to `catch_up_to`.
    recovered_after: Option<Duration>,
    not_recovered: u64,
    disconnected: bool,
}

impl Reader {
    /// Records the recovery time once the resubscribed client holds every publication up
    /// to the top at its resubscribe (it already does when nothing was missed).
    fn note_caught_up(&mut self, killed_at: Option<Instant>) {
        let (Some(target), Some(killed_at), None) = (self.catch_up_to, killed_at, self.recovered_after)
        else {
            return;
        };
        if self.offsets.last().copied().unwrap_or(0) >= target {
            self.recovered_after = Some(killed_at.elapsed());
        }
    }
}
