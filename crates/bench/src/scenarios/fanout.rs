//! `fanout`: N subscribers of one channel spread over the nodes, publishers at a target
//! rate (or as fast as they can): deliveries/s, end-to-end latency, loss, duplicates.
//! With `--socketio` every connection speaks Socket.IO instead (see `crate::socketio`),
//! against Switchboard's `/socket.io/` or a Node.js Socket.IO server alike.

use std::{collections::HashMap, sync::Arc, time::Duration};

use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard_protocol::Encoding;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    lean, reader, socketio,
    stats::{cpu_per_million, total_cpu, Deliveries},
    target::Target,
};

/// Settings of the fan-out scenario.
#[derive(Debug, Clone, Args)]
pub struct Fanout {
    #[command(flatten)]
    /// The nodes.
    pub target: Target,
    /// Subscribers.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Publishing connections.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Publications per second over all publishers; 0 publishes as fast as possible.
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
    /// How long publishers publish, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Channel (its namespace must allow client publishing).
    #[arg(long, default_value = "bench:fanout")]
    pub channel: String,
    /// Connections opened at once while setting up.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Publishes a publisher may have waiting for their reply; 1 is a backend that sends
    /// the next publication only once the previous one was answered.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Publish through this node's HTTP API (`host:port`) instead of a WebSocket: each
    /// publisher sends one `POST /api/v1/publish` at a time (a new connection each, like a
    /// backend without keep-alive), and the result reports the replies' latency.
    #[arg(long)]
    pub api: Option<String>,
    /// The API key for `--api` (crates/bench/bench.toml uses `bench-key`).
    #[arg(long, default_value = "bench-key")]
    pub api_key: String,
    /// Subscribers and publishers speak Socket.IO (raw Engine.IO v4 over WebSocket, the
    /// `subscribe` and `publish` events) to `/socket.io/` of each `--url`'s host.
    #[arg(long)]
    pub socketio: bool,
}

/// Runs the scenario and returns its JSON result.
///
/// # Errors
/// When setting up connections fails.
pub async fn run(settings: Fanout) -> anyhow::Result<Value> {
    let tokens = settings.target.tokens();
    let encoding = settings.target.encoding;
    let gate = Arc::new(Semaphore::new(settings.connect_concurrency.max(1)));
    let mut setups = Vec::with_capacity(settings.subscribers);
    for n in 0..settings.subscribers {
        let (url, source, token) =
            (settings.target.url(n).to_string(), settings.target.source(n), tokens.mint(&format!("s{n}"))?);
        let (gate, channel, sio) = (gate.clone(), settings.channel.clone(), settings.socketio);
        setups.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            if sio {
                let mut socket = socketio::open(&url, source, &token).await?;
                socketio::subscribe(&mut socket, &channel).await?;
                return anyhow::Ok((socket, 0));
            }
            let mut socket = lean::open(&url, source, &token, encoding).await?;
            let top = lean::subscribe(&mut socket, encoding, 2, &channel).await?;
            anyhow::Ok((socket, top))
        }));
    }
    let mut subscribers = Vec::with_capacity(setups.len());
    for setup in setups {
        subscribers.push(setup.await??);
    }
    // Readers run until told how many publications to expect, then until they have them
    // (or stall).
    let (ends, readers): (Vec<_>, Vec<_>) = subscribers
        .into_iter()
        .map(|(socket, top)| {
            let (end, told) = reader::end_signal();
            if settings.socketio {
                return (end, tokio::spawn(socketio::read(socket, settings.publishers.max(1), told)));
            }
            let start = HashMap::from([(settings.channel.clone(), top)]);
            (end, tokio::spawn(reader::read(socket, start, told)))
        })
        .unzip();

    let cpu_before = total_cpu(&settings.target.pids);
    let started = std::time::Instant::now();
    let publishers: Vec<_> = (0..settings.publishers.max(1))
        .map(|p| {
            let settings = settings.clone();
            let token = tokens.mint(&format!("p{p}"));
            tokio::spawn(async move {
                match &settings.api {
                    Some(api) => publish_http(&settings, api).await,
                    None if settings.socketio => {
                        publish_socketio(settings, p, token?).await.map(|count| (count, count, Vec::new()))
                    }
                    None => publish(settings, p, token?).await.map(|(count, top)| (count, top, Vec::new())),
                }
            })
        })
        .collect();
    let mut published = 0;
    let mut last_offset = 0;
    let mut last_sequence = HashMap::new();
    let mut api_latency = hdrhistogram::Histogram::<u64>::new(3)?;
    for (index, publisher) in publishers.into_iter().enumerate() {
        let (count, top, latencies) = publisher.await??;
        published += count;
        last_offset = last_offset.max(top);
        last_sequence.insert(index.to_string(), count);
        for micros in latencies {
            api_latency.record(micros)?;
        }
    }
    let publish_seconds = started.elapsed().as_secs_f64();
    let expected = Arc::new(match settings.socketio {
        true => last_sequence,
        false => HashMap::from([(settings.channel.clone(), last_offset)]),
    });
    for end in ends {
        let _ = end.send(expected.clone());
    }
    let mut total = Deliveries::default();
    for reader in readers {
        total.merge(&reader.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = total_cpu(&settings.target.pids) - cpu_before;
    let deliveries_per_second = total.received as f64 / elapsed;
    Ok(json!({
        "nodes": settings.target.urls.len(),
        "encoding": if settings.socketio { "socketio" } else { encoding.name() },
        "subscribers": settings.subscribers,
        "publishers": settings.publishers,
        "target_rate": settings.rate,
        "payload_bytes": settings.payload,
        "published": published,
        "publish_seconds": round(publish_seconds),
        "publications_per_second": round(published as f64 / publish_seconds),
        "deliveries": total.received,
        "deliveries_per_second": round(deliveries_per_second),
        "latency": total.latency_json(),
        "api_reply_latency": settings.api.as_ref().map(|_| {
            let ms = |q: f64| api_latency.value_at_quantile(q) as f64 / 1000.0;
            json!({"p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99), "max_ms": api_latency.max() as f64 / 1000.0})
        }),
        "missing": total.missing,
        "duplicates": total.duplicates,
        "out_of_order": total.out_of_order,
        "gateway_cpu_seconds": round(cpu),
        "cpu_seconds_per_million_deliveries": cpu_per_million(cpu, total.received),
    }))
}

fn round(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// Publishes for the configured duration; returns how many and the last offset.
async fn publish(settings: Fanout, index: usize, token: String) -> anyhow::Result<(u64, u64)> {
    let url = settings.target.url(settings.subscribers + index).to_string();
    let socket = lean::open(&url, settings.target.source(index), &token, Encoding::Json).await?;
    let (mut sink, mut stream) = socket.split();
    // At most this many publishes wait for their reply, so the publisher neither stalls
    // on round trips nor floods the server's queue.
    let window_size = settings.window.max(1);
    let window = Arc::new(Semaphore::new(window_size));
    let replies = {
        let window = window.clone();
        tokio::spawn(async move {
            // However this task ends, a publisher waiting for the window must not wait forever.
            let _close = CloseOnDrop(window.clone());
            let mut last_offset = 0;
            while let Some(Ok(message)) = stream.next().await {
                if let Message::Text(text) = message {
                    if let Ok(frame) = serde_json::from_str::<Value>(&text) {
                        if frame.get("id").is_some() {
                            if let Some(error) = frame.get("error") {
                                anyhow::bail!("publish refused: {error}");
                            }
                            last_offset = last_offset.max(frame["result"]["offset"].as_u64().unwrap_or(0));
                            window.add_permits(1);
                        }
                    }
                }
            }
            Ok(last_offset)
        })
    };
    let mut pace = Pace::new(&settings);
    let mut count = 0u64;
    while pace.tick().await {
        let Ok(permit) = window.acquire().await else {
            // The reply reader ended early: its error (a refused publish) is the reason.
            replies.await??;
            anyhow::bail!("the publisher's connection closed");
        };
        permit.forget();
        count += 1;
        let params = json!({"channel": settings.channel, "data": lean::payload(settings.payload)});
        lean::send(&mut sink, Encoding::Json, count + 1, "publish", params).await?;
    }
    // Wait for the last replies, then close.
    if window.acquire_many(window_size as u32).await.is_err() {
        replies.await??;
        anyhow::bail!("the publisher's connection closed before the last replies");
    }
    sink.close().await?;
    let last_offset = replies.await??;
    Ok((count, last_offset))
}

/// Publishes with Socket.IO `publish` events for the configured duration, at most
/// `window` waiting for their ack; returns how many.
async fn publish_socketio(settings: Fanout, index: usize, token: String) -> anyhow::Result<u64> {
    let url = settings.target.url(settings.subscribers + index).to_string();
    let socket = socketio::open(&url, settings.target.source(index), &token).await?;
    let (mut sink, mut stream) = socket.split();
    let window_size = settings.window.max(1);
    let window = Arc::new(Semaphore::new(window_size));
    // Pings owed by the writer (one answer per ping; a few at most between two publishes).
    let (pongs, mut pings) = tokio::sync::mpsc::channel::<()>(16);
    let acks = {
        let window = window.clone();
        tokio::spawn(async move {
            let _close = CloseOnDrop(window.clone());
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else { continue };
                if text.as_str() == "2" {
                    let _ = pongs.try_send(());
                } else if socketio::ack_id(&text).is_some() {
                    if let Some(error) = socketio::ack_value(&text).and_then(|v| v.get("error").cloned()) {
                        anyhow::bail!("publish refused: {error}");
                    }
                    window.add_permits(1);
                }
            }
            anyhow::Ok(())
        })
    };
    let mut pace = Pace::new(&settings);
    let mut count = 0u64;
    while pace.tick().await {
        while pings.try_recv().is_ok() {
            sink.send(Message::Text("3".into())).await?;
        }
        let Ok(permit) = window.acquire().await else {
            acks.await??;
            anyhow::bail!("the publisher's connection closed");
        };
        permit.forget();
        count += 1;
        sink.send(socketio::publish_frame(count, &settings.channel, settings.payload, index, count)).await?;
    }
    if window.acquire_many(window_size as u32).await.is_err() {
        acks.await??;
        anyhow::bail!("the publisher's connection closed before the last acks");
    }
    sink.close().await?;
    acks.abort();
    Ok(count)
}

/// Publishes through the HTTP API, one request at a time; returns how many, the last
/// offset and each reply's latency in microseconds.
async fn publish_http(settings: &Fanout, api: &str) -> anyhow::Result<(u64, u64, Vec<u64>)> {
    let mut pace = Pace::new(settings);
    let (mut count, mut last_offset, mut latencies) = (0, 0, Vec::new());
    while pace.tick().await {
        let body = json!({"channel": settings.channel, "data": lean::payload(settings.payload)}).to_string();
        let sent = std::time::Instant::now();
        let response = lean::post(api, "/api/v1/publish", &settings.api_key, &body).await?;
        latencies.push(sent.elapsed().as_micros() as u64);
        let offset = response["offset"].as_u64().ok_or_else(|| anyhow::anyhow!("API refused: {response}"))?;
        last_offset = last_offset.max(offset);
        count += 1;
    }
    Ok((count, last_offset, latencies))
}

/// A publisher's pace: its share of `--rate` (or as fast as it can) for `--duration`.
struct Pace {
    interval: Option<Duration>,
    deadline: tokio::time::Instant,
    next: tokio::time::Instant,
}

impl Pace {
    fn new(settings: &Fanout) -> Pace {
        let per_publisher = settings.rate as f64 / settings.publishers.max(1) as f64;
        let now = tokio::time::Instant::now();
        Pace {
            interval: (per_publisher > 0.0).then(|| Duration::from_secs_f64(1.0 / per_publisher)),
            deadline: now + Duration::from_secs_f64(settings.duration),
            next: now,
        }
    }

    /// Waits for the next publication's turn; `false` once the duration is over.
    async fn tick(&mut self) -> bool {
        if tokio::time::Instant::now() >= self.deadline {
            return false;
        }
        if let Some(interval) = self.interval {
            tokio::time::sleep_until(self.next).await;
            self.next += interval;
        }
        true
    }
}

/// Closes the publish window when the reply reader ends, so the publisher stops instead
/// of waiting for permits that will never come back.
struct CloseOnDrop(Arc<Semaphore>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}
