//! `rooms`: the shape of a chat or notification workload. Every client is in its personal
//! channel and in one group channel of 10 members; publishers post to the groups over
//! WebSocket and to the personal channels through the HTTP API.

use std::{collections::HashMap, sync::Arc, time::Duration};

use clap::Args;
use serde_json::{json, Value};
use switchboard_protocol::Encoding;
use tokio::sync::Semaphore;

use crate::{
    lean, reader,
    stats::{cpu_per_million, total_cpu, Deliveries},
    target::Target,
};

/// Settings of the rooms scenario.
#[derive(Debug, Clone, Args)]
pub struct Rooms {
    #[command(flatten)]
    /// The nodes.
    pub target: Target,
    /// Clients (groups of 10).
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Group publications per second.
    #[arg(long, default_value_t = 200)]
    pub group_rate: u64,
    /// Personal publications per second (through the HTTP API).
    #[arg(long, default_value_t = 50)]
    pub personal_rate: u64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// `host:port` of a node's HTTP API for personal publications.
    #[arg(long)]
    pub api: Option<String>,
    /// API key.
    #[arg(long, default_value = "bench-key")]
    pub api_key: String,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
}

const GROUP: usize = 10;

/// The user of client `n` in run `run`. Users are new in every run, so their personal
/// channels start empty (offset 0) even when a node or Redis is reused between runs.
fn user_id(run: u64, n: usize) -> String {
    format!("r{run}-{n}")
}

/// Runs the scenario.
///
/// # Errors
/// When setting up fails.
pub async fn run(settings: Rooms) -> anyhow::Result<Value> {
    let tokens = settings.target.tokens();
    let encoding = settings.target.encoding;
    let run = lean::now_micros();
    let gate = Arc::new(Semaphore::new(256));
    let groups = settings.clients.div_ceil(GROUP).max(1);
    let mut setups = Vec::new();
    for n in 0..settings.clients {
        let (url, source, token) =
            (settings.target.url(n).to_string(), settings.target.source(n), tokens.mint(&user_id(run, n))?);
        let gate = gate.clone();
        setups.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let mut socket = lean::open(&url, source, &token, encoding).await?;
            let room = format!("bench:room-{}", n / GROUP);
            let top = lean::subscribe(&mut socket, encoding, 2, &room).await?;
            anyhow::Ok((socket, HashMap::from([(room, top), (format!("user:{}", user_id(run, n)), 0)])))
        }));
    }
    let mut clients = Vec::new();
    for setup in setups {
        clients.push(setup.await??);
    }
    let (ends, readers): (Vec<_>, Vec<_>) = clients
        .into_iter()
        .map(|(socket, tops)| {
            let (end, told) = reader::end_signal();
            (end, tokio::spawn(reader::read(socket, tops, told)))
        })
        .unzip();
    let cpu_before = total_cpu(&settings.target.pids);
    let started = std::time::Instant::now();
    let groups_task = tokio::spawn(publish_groups(settings.clone(), groups, tokens.mint("room-publisher")?));
    let personal_task = tokio::spawn(publish_personal(settings.clone(), run));
    let (group_count, mut expected) = groups_task.await??;
    let (personal_count, personal_last) = personal_task.await??;
    expected.extend(personal_last);
    let published = group_count + personal_count;
    let expected = Arc::new(expected);
    for end in ends {
        let _ = end.send(expected.clone());
    }
    let mut total = Deliveries::default();
    for reader in readers {
        total.merge(&reader.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = total_cpu(&settings.target.pids) - cpu_before;
    Ok(json!({
        "clients": settings.clients,
        "groups": groups,
        "published": published,
        "deliveries": total.received,
        "deliveries_per_second": (total.received as f64 / elapsed).round(),
        "latency": total.latency_json(),
        "missing": total.missing,
        "duplicates": total.duplicates,
        "out_of_order": total.out_of_order,
        "gateway_cpu_seconds": (cpu * 1000.0).round() / 1000.0,
        "cpu_seconds_per_million_deliveries": cpu_per_million(cpu, total.received),
    }))
}

/// How many publications a publisher made in this run, and the last offset it got per
/// channel (group channels outlive a run, so their offsets do not start at 1).
type Published = (u64, HashMap<String, u64>);

/// Publishes round-robin into the groups.
async fn publish_groups(settings: Rooms, groups: usize, token: String) -> anyhow::Result<Published> {
    let mut socket =
        lean::open(settings.target.url(0), settings.target.source(0), &token, Encoding::Json).await?;
    let (mut count, mut last) = (0, HashMap::new());
    if settings.group_rate == 0 {
        return Ok((count, last));
    }
    let interval = Duration::from_secs_f64(1.0 / settings.group_rate as f64);
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(settings.duration);
    let mut next = tokio::time::Instant::now();
    let mut id = 1;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep_until(next).await;
        next += interval;
        id += 1;
        let room = format!("bench:room-{}", id as usize % groups);
        lean::send(
            &mut socket,
            Encoding::Json,
            id,
            "publish",
            json!({"channel": room, "data": lean::payload(settings.payload)}),
        )
        .await?;
        let reply = lean::reply(&mut socket, Encoding::Json, id).await?;
        let offset =
            reply["result"]["offset"].as_u64().ok_or_else(|| anyhow::anyhow!("publish refused: {reply}"))?;
        last.insert(room, offset);
        count += 1;
    }
    Ok((count, last))
}

/// Publishes to personal channels through the HTTP API.
async fn publish_personal(settings: Rooms, run: u64) -> anyhow::Result<Published> {
    let (mut count, mut last) = (0, HashMap::new());
    let Some(api) = settings.api.clone() else { return Ok((count, last)) };
    if settings.personal_rate == 0 {
        return Ok((count, last));
    }
    let interval = Duration::from_secs_f64(1.0 / settings.personal_rate as f64);
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(settings.duration);
    let mut next = tokio::time::Instant::now();
    let mut n = 0usize;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep_until(next).await;
        next += interval;
        let user = user_id(run, n % settings.clients.max(1));
        n += 1;
        let body = json!({"user": user, "event": "notification", "data": lean::payload(settings.payload)})
            .to_string();
        let response = lean::post(&api, "/api/v1/users/publish", &settings.api_key, &body).await?;
        let offset = response["offset"].as_u64().ok_or_else(|| anyhow::anyhow!("API refused: {response}"))?;
        last.insert(format!("user:{user}"), offset);
        count += 1;
    }
    Ok((count, last))
}
