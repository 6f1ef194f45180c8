//! `switchboard-publish`: publish events into a Switchboard cluster from scripts and cron
//! jobs, one from flags or many as JSON lines on stdin. Prints one JSON line per publish.

use std::io::BufRead;

use anyhow::Context;
use clap::Parser;
use serde::Deserialize;
use switchboard_publisher::{PublishOptions, Publisher};

#[derive(Parser)]
#[command(
    name = "switchboard-publish",
    version,
    about = "Publish events into a Switchboard cluster through Redis"
)]
struct Cli {
    /// Redis URL of the cluster.
    #[arg(long, env = "SWITCHBOARD_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Channel to publish to.
    #[arg(long, conflicts_with_all = ["user", "stdin"])]
    channel: Option<String>,
    /// Publish to this user's personal channel `user:<id>`.
    #[arg(long, conflicts_with = "stdin")]
    user: Option<String>,
    /// Event name.
    #[arg(long)]
    event: Option<String>,
    /// Payload (JSON).
    #[arg(long, required_unless_present = "stdin")]
    data: Option<String>,
    /// Idempotency key: a retried publish with the same key is delivered once.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Deliver live only: no offset, not stored.
    #[arg(long)]
    live_only: bool,
    /// Read JSON lines from stdin: {"channel" or "user", "data", "event"?, "idempotency_key"?, "live_only"?}.
    #[arg(long)]
    stdin: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    channel: Option<String>,
    user: Option<String>,
    event: Option<String>,
    data: serde_json::Value,
    idempotency_key: Option<String>,
    #[serde(default)]
    live_only: bool,
}

impl Line {
    fn target(&self) -> anyhow::Result<String> {
        match (&self.channel, &self.user) {
            (Some(channel), None) => Ok(channel.clone()),
            (None, Some(user)) => Ok(switchboard_protocol::channel::personal(user)),
            _ => anyhow::bail!("give exactly one of `channel` and `user`"),
        }
    }

    fn options(&self) -> PublishOptions {
        PublishOptions {
            event: self.event.clone(),
            idempotency_key: self.idempotency_key.clone(),
            live_only: self.live_only,
        }
    }
}

async fn publish_line(publisher: &Publisher, line: &Line) -> anyhow::Result<serde_json::Value> {
    let published = publisher.publish(&line.target()?, &line.data, &line.options()).await?;
    Ok(serde_json::to_value(published)?)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let publisher =
        Publisher::connect(&cli.redis).await.with_context(|| format!("cannot use {}", cli.redis))?;
    if !cli.stdin {
        let line = Line {
            channel: cli.channel,
            user: cli.user,
            event: cli.event,
            data: serde_json::from_str(cli.data.as_deref().unwrap_or("null"))
                .context("--data must be JSON")?,
            idempotency_key: cli.idempotency_key,
            live_only: cli.live_only,
        };
        println!("{}", publish_line(&publisher, &line).await?);
        return Ok(());
    }
    let mut failures = 0;
    for (number, text) in std::io::stdin().lock().lines().enumerate() {
        let text = text.context("cannot read stdin")?;
        if text.trim().is_empty() {
            continue;
        }
        let outcome = match serde_json::from_str::<Line>(&text) {
            Ok(line) => publish_line(&publisher, &line).await,
            Err(error) => Err(error.into()),
        };
        match outcome {
            Ok(result) => println!("{result}"),
            Err(error) => {
                failures += 1;
                println!("{}", serde_json::json!({"line": number + 1, "error": format!("{error:#}")}));
            }
        }
    }
    if failures > 0 {
        anyhow::bail!("{failures} line(s) failed");
    }
    Ok(())
}
