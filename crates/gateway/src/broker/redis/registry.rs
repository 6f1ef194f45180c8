//! The node registry: every node heartbeats its stats into Redis, and reads everybody's,
//! so each node's metrics show the cluster's size and per-node load. The heartbeat also
//! declares the node's namespaces again, so a wiped Redis has them back within one beat.

use std::{sync::Arc, time::Duration};

use fred::prelude::*;

use super::RedisShared;
use crate::broker::BrokerError;
use switchboard_protocol::redis as keys;

/// Starts the heartbeat task.
pub(super) fn spawn(shared: Arc<RedisShared>) {
    tokio::spawn(async move {
        let interval = Duration::from_millis(shared.config.node_heartbeat_ms.max(100));
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shared.beat_now.notified() => {}
            }
            if let Err(error) = heartbeat(&shared, interval).await {
                tracing::debug!(%error, "node heartbeat failed");
            }
            // A wiped Redis (FLUSHALL with nodes connected) loses `sb:namespaces`, which
            // publishers need; every heartbeat writes it again (one small HSET).
            if let Err(error) = shared.declare_namespaces().await {
                tracing::debug!(%error, "cannot declare namespaces");
            }
        }
    });
}

async fn heartbeat(shared: &RedisShared, interval: Duration) -> Result<(), Error> {
    let now = crate::broker::unix_millis();
    let mut stats = serde_json::json!({
        "connections": shared.metrics.connections.get(),
        "subscriptions": shared.metrics.subscriptions.get(),
        "channels": shared.metrics.channels.get(),
        "version": env!("CARGO_PKG_VERSION"),
        "seen_ms": now,
    });
    if let Some(address) = shared.node_address.get() {
        // Where other nodes forward Socket.IO polling requests for this node's sessions.
        stats["address"] = serde_json::Value::String(address.clone());
    }
    let _: () = shared.client.hset(keys::NODES, (shared.node_id.as_str(), stats.to_string())).await?;
    let _: () = shared
        .client
        .zadd(keys::NODES_SEEN, None, None, false, false, (now as f64, shared.node_id.as_str()))
        .await?;
    let stale_before = now.saturating_sub(interval.as_millis() as u64 * 3);
    let stale: Vec<String> =
        shared.client.zrangebyscore(keys::NODES_SEEN, "-inf", stale_before as f64, false, None).await?;
    if !stale.is_empty() {
        let _: () = shared.client.zrem(keys::NODES_SEEN, stale.clone()).await?;
        let _: () = shared.client.hdel(keys::NODES, stale).await?;
    }
    let nodes: std::collections::HashMap<String, String> = shared.client.hgetall(keys::NODES).await?;
    shared.metrics.cluster_nodes.set(nodes.len() as i64);
    shared.metrics.cluster_node_connections.reset();
    for (node, stats) in nodes {
        let connections = serde_json::from_str::<serde_json::Value>(&stats)
            .ok()
            .and_then(|s| s["connections"].as_i64())
            .unwrap_or(0);
        shared.metrics.cluster_node_connections.with_label_values(&[&node]).set(connections);
    }
    Ok(())
}

/// The cluster's nodes with their stats, as the registry has them, sorted by id.
pub(super) async fn nodes(shared: &RedisShared) -> Result<Vec<serde_json::Value>, BrokerError> {
    shared.connected()?;
    let nodes: std::collections::HashMap<String, String> = shared.client.hgetall(keys::NODES).await?;
    let mut nodes: Vec<serde_json::Value> = nodes
        .into_iter()
        .map(|(id, stats)| {
            let mut stats: serde_json::Value = serde_json::from_str(&stats).unwrap_or_default();
            stats["node"] = serde_json::Value::String(id);
            stats
        })
        .collect();
    nodes.sort_by(|a, b| a["node"].as_str().cmp(&b["node"].as_str()));
    Ok(nodes)
}

/// The HTTP address `node` advertised with its heartbeat, if it is registered.
pub(super) async fn node_address(shared: &RedisShared, node: &str) -> Result<Option<String>, BrokerError> {
    shared.connected()?;
    let stats: Option<String> = shared.client.hget(keys::NODES, node).await?;
    let stats: Option<serde_json::Value> = stats.and_then(|stats| serde_json::from_str(&stats).ok());
    Ok(stats.and_then(|stats| stats["address"].as_str().map(str::to_string)))
}
