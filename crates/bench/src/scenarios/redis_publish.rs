//! `redis-publish`: what one publication costs Redis itself: `FCALL sb_publish`
//! pipelined in batches over many channels, Redis's own CPU time (`INFO cpu`) before and
//! after, divided by the publications. One Redis core is the ceiling of a cluster's
//! publications per second (before any fan-out), so this is the number that says where
//! one Redis saturates (docs/redis.md §3.1, docs/BENCHMARKS.md).
//!
//! Runs the function as services call it (the body decoded and checked in Lua) and as
//! gateways and the publisher crate call it (`checked`), on the same channels; with
//! `--hold`, also as `broker.ack_replicas` has them do it (`checked+hold`, one `WAIT` per
//! batch, then `sb_commit` of each), docs/redis.md §4.11.

use clap::Args;
use serde_json::{json, Value};
use switchboard_protocol::redis as keys;

/// Settings of the redis-publish scenario.
#[derive(Debug, Clone, Args)]
pub struct RedisPublish {
    /// The Redis to measure (a dedicated one: its whole CPU time is counted).
    #[arg(long)]
    pub redis: String,
    /// Distinct channels, used round-robin.
    #[arg(long, default_value_t = 1000)]
    pub channels: usize,
    /// Publications per variant (after a warm-up of the same size).
    #[arg(long, default_value_t = 100_000)]
    pub publications: usize,
    /// Calls per pipeline.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Bytes of `data` in each body.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// History size passed to the function (streams trimmed to it).
    #[arg(long, default_value_t = 100)]
    pub history: u32,
    /// Also measure held publishing: `WAIT <hold>` replicas per batch, then `sb_commit`
    /// (the Redis needs that many replicas). 0: skip.
    #[arg(long, default_value_t = 0)]
    pub hold: u32,
}

/// How a variant calls the function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Unchecked,
    Checked,
    Held,
}

/// Runs the scenario.
///
/// # Errors
/// When Redis cannot be reached or refuses the library.
pub async fn run(settings: RedisPublish) -> anyhow::Result<Value> {
    let client = redis::Client::open(settings.redis.as_str())?;
    let mut connection = client.get_multiplexed_async_connection_with_config(&patient()).await?;
    let _: () = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(keys::LIBRARY)
        .query_async(&mut connection)
        .await?;
    let body = json!({"event": "bench", "data": {"p": "x".repeat(settings.payload)}}).to_string();
    let mut results = serde_json::Map::new();
    let mut variants = vec![("unchecked", Variant::Unchecked), ("checked", Variant::Checked)];
    if settings.hold > 0 {
        variants.push(("held", Variant::Held));
    }
    for (label, variant) in variants {
        // A warm-up pass fills the streams to their trimmed size, as in steady state.
        publish_all(&mut connection, &settings, &body, variant).await?;
        let before = redis_cpu(&mut connection).await?;
        let started = std::time::Instant::now();
        publish_all(&mut connection, &settings, &body, variant).await?;
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = redis_cpu(&mut connection).await? - before;
        let per = cpu * 1e6 / settings.publications as f64;
        results.insert(
            label.into(),
            json!({
                "redis_cpu_us_per_publication": (per * 10.0).round() / 10.0,
                "publications_per_second": (settings.publications as f64 / elapsed).round(),
                "one_core_ceiling_per_second": if per > 0.0 { (1e6 / per).round() } else { 0.0 },
            }),
        );
    }
    Ok(json!({
        "channels": settings.channels,
        "publications": settings.publications,
        "batch": settings.batch,
        "payload": settings.payload,
        "history": settings.history,
        "results": results,
    }))
}

async fn publish_all(
    connection: &mut redis::aio::MultiplexedConnection,
    settings: &RedisPublish,
    body: &str,
    variant: Variant,
) -> anyhow::Result<()> {
    let mut sent = 0;
    let channel_of = |n: usize| format!("bench:redis-{}", n % settings.channels.max(1));
    while sent < settings.publications {
        let mut pipeline = redis::pipe();
        let batch: Vec<usize> = (sent..(sent + settings.batch).min(settings.publications)).collect();
        for &n in &batch {
            let channel = channel_of(n);
            let call = channel_call(&mut pipeline, "sb_publish", &channel)
                .arg(body)
                .arg(settings.history)
                .arg(300_000)
                .arg(86_400_000);
            match variant {
                Variant::Unchecked => call.ignore(),
                Variant::Checked => call.arg(300_000).arg("checked").ignore(),
                Variant::Held => call.arg(300_000).arg("checked+hold"),
            };
        }
        if variant == Variant::Held {
            pipeline.cmd("WAIT").arg(settings.hold).arg(1000);
            let mut replies: Vec<redis::Value> = pipeline.query_async(connection).await?;
            let acknowledged: i64 = redis::from_redis_value(replies.pop().unwrap_or(redis::Value::Nil))?;
            anyhow::ensure!(acknowledged >= i64::from(settings.hold), "{acknowledged} replicas acknowledged");
            let mut commits = redis::pipe();
            for (&n, reply) in batch.iter().zip(replies) {
                let channel = channel_of(n);
                let (offset, epoch, _, envelope): (u64, String, u8, String) = redis::from_redis_value(reply)?;
                channel_call(&mut commits, "sb_commit", &channel)
                    .arg(epoch)
                    .arg(offset)
                    .arg(envelope)
                    .ignore();
            }
            let _: () = commits.query_async(connection).await?;
        } else {
            let _: () = pipeline.query_async(connection).await?;
        }
        sent += settings.batch;
    }
    Ok(())
}

/// Appends `FCALL <function> 2 <stream> <meta> <live>` for `channel` to `pipeline` (the
/// keys and first argument every channel Function takes, docs/redis.md); the caller adds
/// the rest.
fn channel_call<'a>(
    pipeline: &'a mut redis::Pipeline,
    function: &str,
    channel: &str,
) -> &'a mut redis::Pipeline {
    pipeline
        .cmd("FCALL")
        .arg(function)
        .arg(2)
        .arg(keys::stream(channel))
        .arg(keys::meta(channel))
        .arg(keys::live(channel))
}

/// Redis's CPU seconds so far (user + system).
pub(crate) async fn redis_cpu(connection: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<f64> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(connection).await?;
    let field = |name: &str| {
        info.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':')?.trim().parse::<f64>().ok())
    };
    Ok(field("used_cpu_user").unwrap_or(0.0) + field("used_cpu_sys").unwrap_or(0.0))
}

/// A connection config whose commands may wait 10 s: a pipeline of 100 calls, or a
/// `WAIT` of up to 1 s with `--hold`, can outlast the redis crate's default 500 ms on a
/// loaded machine.
pub(crate) fn patient() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new().set_response_timeout(Some(std::time::Duration::from_secs(10)))
}
