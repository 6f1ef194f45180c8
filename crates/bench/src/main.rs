//! `switchboard-bench`: run one scenario and print a table and a final JSON line.

use clap::{Parser, Subcommand};
use switchboard_bench::{raise_file_limit, scenarios, stats::report};

#[derive(Parser)]
#[command(name = "switchboard-bench", version, about = "Load generator for Switchboard gateways")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// N subscribers in one channel, publishers at a rate: deliveries/s, latency, loss.
    Fanout(scenarios::fanout::Fanout),
    /// Personal channels plus groups of 10: a chat or notification workload.
    Rooms(scenarios::rooms::Rooms),
    /// Idle connections with one subscription: gateway RSS per connection.
    Idle(scenarios::idle::Idle),
    /// New authenticated connections per second.
    Connect(scenarios::connect::Connect),
    /// Kill a node under load: recovery time, loss and duplicates.
    Failover(scenarios::failover::Failover),
    /// What the kernel alone charges here per delivery and per connection (no gateway).
    Floor(scenarios::floor::Floor),
    /// Redis's own CPU per `FCALL sb_publish`, pipelined over many channels.
    RedisPublish(scenarios::redis_publish::RedisPublish),
    /// Redis's own CPU per publication with cross-node fan-out: one server, or a Redis
    /// Cluster with sharded or classic pub/sub.
    RedisShards(scenarios::redis_shards::RedisShards),
    /// Round trips through an RPC route (stream workers or an HTTP endpoint).
    Rpc(scenarios::rpc::Rpc),
    /// Churn for a while: gateway RSS, descriptors, tasks and Redis keys before and after.
    Soak(scenarios::soak::Soak),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    raise_file_limit();
    let (name, result) = match Cli::parse().scenario {
        Scenario::Fanout(s) => ("fanout", scenarios::fanout::run(s).await?),
        Scenario::Rooms(s) => ("rooms", scenarios::rooms::run(s).await?),
        Scenario::Idle(s) => ("idle", scenarios::idle::run(s).await?),
        Scenario::Connect(s) => ("connect", scenarios::connect::run(s).await?),
        Scenario::Failover(s) => ("failover", scenarios::failover::run(s).await?),
        Scenario::Floor(s) => ("floor", scenarios::floor::run(s).await?),
        Scenario::Soak(s) => ("soak", scenarios::soak::run(s).await?),
        Scenario::Rpc(s) => ("rpc", scenarios::rpc::run(s).await?),
        Scenario::RedisPublish(s) => ("redis-publish", scenarios::redis_publish::run(s).await?),
        Scenario::RedisShards(s) => ("redis-shards", scenarios::redis_shards::run(s).await?),
    };
    report(name, &result);
    Ok(())
}
