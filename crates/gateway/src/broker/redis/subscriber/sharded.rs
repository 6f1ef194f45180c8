//! Subscriptions on a Redis Cluster: sharded pub/sub.
//!
//! A live channel `sb:{<channel>}:live` hashes to the slot of the channel's keys (the
//! hash tag), and `SPUBLISH` delivers only to subscribers on the primary owning that slot:
//! a publication travels inside its shard, where classic pub/sub would copy every message
//! to every node of the cluster. The price is bookkeeping here:
//!
//! * One `SSUBSCRIBE` takes channels of **one slot**, so subscribes and unsubscribes are
//!   grouped by slot.
//! * When a slot **moves** (resharding, a failover), its primary drops the shard
//!   subscriptions with a server-side `SUNSUBSCRIBE`, which fred does not report. So the
//!   interest task remembers which primary owned each slot when it subscribed, and a
//!   watcher re-reads the cluster's slot map every [`WATCH_INTERVAL`]: channels of a slot
//!   whose owner changed are subscribed again (at the new owner) and caught up from their
//!   streams, as after a reconnect. No stored publication is lost; live delivery of
//!   those channels pauses until the next check (their ephemeral publications and
//!   join/leave events of that window are lost).

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use fred::{
    clients::SubscriberClient,
    prelude::*,
    types::{cluster::ClusterRouting, config::Server},
};
use tokio::sync::mpsc;

use super::Op;

/// How often the watcher re-reads the slot map.
pub(super) const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// The hash slot of a pub/sub channel name.
pub(super) fn slot(name: &str) -> u16 {
    fred::util::redis_keyslot(name.as_bytes())
}

/// Pub/sub `names` grouped by slot, for one `SSUBSCRIBE`/`SUNSUBSCRIBE` each.
pub(super) fn by_slot(names: impl Iterator<Item = String>) -> BTreeMap<u16, Vec<String>> {
    let mut groups: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for name in names {
        groups.entry(slot(&name)).or_default().push(name);
    }
    groups
}

/// The primary that owns `slot` in fred's current view.
pub(super) fn owner(client: &SubscriberClient, slot: u16) -> Option<Server> {
    client.cached_cluster_state().and_then(|state| state.get_server(slot).cloned())
}

/// Slots of `owners` whose primary differs in `state`.
pub(super) fn moved(owners: &HashMap<u16, Server>, state: &ClusterRouting) -> Vec<u16> {
    owners
        .iter()
        .filter(|(slot, owner)| state.get_server(**slot) != Some(*owner))
        .map(|(slot, _)| *slot)
        .collect()
}

/// Re-reads the slot map every [`WATCH_INTERVAL`] and hands it to the interest task.
pub(super) fn spawn_watcher(client: SubscriberClient, ops: mpsc::Sender<Op>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(error) = client.sync_cluster().await {
                tracing::debug!(%error, "cannot read the cluster's slot map");
                continue;
            }
            let Some(state) = client.cached_cluster_state() else { continue };
            if ops.send(Op::SlotMap(state)).await.is_err() {
                return;
            }
        }
    });
}
