//! Replicated publishing (`broker.ack_replicas` > 0), for Redis with replicas behind
//! Sentinel or a managed failover.
//!
//! Redis replicates asynchronously: a publication the primary stored and published live
//! may be missing on the replica promoted after a crash. Its offset would then be
//! assigned again to a new publication, which nodes and clients drop as a duplicate of
//! the one they already have: an acknowledged publication lost. So a publication is
//! stored *held* (`sb_publish … hold`: invisible to readers, not published live), `WAIT`
//! confirms that enough replicas hold it, and only then `sb_commit` makes it visible and
//! publishes it. Whatever a client received is on the replicas, so a failover never
//! takes back an offset anyone saw.
//!
//! `WAIT` counts the writes of the connection it runs on and blocks that connection, so
//! held publishes have connections of their own (`broker.ack_replicas_connections`, taken
//! in turn; one publish's `sb_publish` and `WAIT` go on the same one): reads, presence and
//! joins on the command connection never queue behind a replica's acknowledgement, and
//! held publishes do not all queue behind one another. On a Redis Cluster
//! that is one connection per primary, and the `WAIT` goes to the primary that owns the
//! channel's slot, where the publication was written.

use std::sync::{
    atomic::{AtomicBool, AtomicUsize, Ordering},
    Arc,
};

use fred::prelude::*;

use super::{integer, RedisShared};
use crate::broker::BrokerError;

/// The held-publish connections and their settings.
pub(super) struct Replicated {
    lanes: Vec<Lane>,
    next: AtomicUsize,
    replicas: i64,
    timeout_ms: i64,
}

/// One held-publish connection.
struct Lane {
    client: Client,
    link_down: Arc<AtomicBool>,
}

/// What a held publish returned: the position, and the envelope to commit (none when an
/// idempotent repeat found the publication already committed).
struct Held {
    offset: u64,
    epoch: String,
    envelope: Option<String>,
}

impl Replicated {
    /// Takes the connections (connected by [`Replicated::connect`]) when `replicas` > 0.
    pub(super) fn new(clients: Vec<Client>, replicas: u32, timeout_ms: u64) -> Option<Self> {
        (replicas > 0 && !clients.is_empty()).then(|| Replicated {
            lanes: clients
                .into_iter()
                .map(|client| Lane { link_down: super::link_down(&client), client })
                .collect(),
            next: AtomicUsize::new(0),
            replicas: i64::from(replicas),
            timeout_ms: i64::try_from(timeout_ms).unwrap_or(i64::MAX),
        })
    }

    pub(super) fn connect(&self) {
        for lane in &self.lanes {
            lane.client.connect();
        }
    }

    /// Stores the publication held, waits for the replicas, commits it. `keys` and `args`
    /// are `sb_publish`'s, with the `hold` flag set.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when Redis is unreachable or too few replicas
    /// acknowledged in time; the publication is then held (not delivered) until a retry
    /// with the same idempotency key, or the channel's next publication, commits it.
    pub(super) async fn publish(
        &self,
        shared: &RedisShared,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<(u64, String), BrokerError> {
        let lane = &self.lanes[self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len()];
        if lane.link_down.load(Ordering::Acquire) || !lane.client.is_connected() {
            return Err(BrokerError::Unavailable("the connection to Redis is down".into()));
        }
        let (stream, meta, live) = (keys[0].clone(), keys[1].clone(), args[0].clone());
        let held = parse(shared.fcall_on(&lane.client, "sb_publish", keys, args).await?)?;
        let Some(envelope) = held.envelope else {
            return Ok((held.offset, held.epoch));
        };
        let acknowledged: i64 = if shared.sharded {
            let slot = fred::util::redis_keyslot(stream.as_bytes());
            let owner = lane.client.cached_cluster_state().and_then(|state| state.get_server(slot).cloned());
            let Some(owner) = owner else {
                return Err(BrokerError::Unavailable(format!("no primary known for slot {slot}")));
            };
            lane.client.with_cluster_node(owner).wait(self.replicas, self.timeout_ms).await?
        } else {
            lane.client.wait(self.replicas, self.timeout_ms).await?
        };
        if acknowledged < self.replicas {
            shared.metrics.broker_replica_wait_failures.inc();
            tracing::warn!(
                acknowledged,
                wanted = self.replicas,
                offset = held.offset,
                "publication not acknowledged by enough replicas; it stays held"
            );
            return Err(BrokerError::Unavailable(format!(
                "the publication reached {acknowledged} of {} replicas within {} ms; retry with the same idempotency key",
                self.replicas, self.timeout_ms
            )));
        }
        let args = vec![live, held.epoch.clone(), held.offset.to_string(), envelope];
        shared.fcall("sb_commit", vec![stream, meta], args).await?;
        Ok((held.offset, held.epoch))
    }
}

fn parse(reply: Value) -> Result<Held, BrokerError> {
    match reply {
        Value::Array(items) if items.len() >= 3 => {
            let offset = integer(&items[0]).ok_or_else(|| BrokerError::Unavailable("bad offset".into()))?;
            let epoch = items[1].as_string().unwrap_or_default();
            let envelope = items.get(3).and_then(Value::as_string);
            Ok(Held { offset, epoch, envelope })
        }
        other => Err(BrokerError::Unavailable(format!("unexpected sb_publish reply {other:?}"))),
    }
}
