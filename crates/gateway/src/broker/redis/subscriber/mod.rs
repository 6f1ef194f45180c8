//! The node's pub/sub side: which Redis channels it listens to, and turning what arrives
//! into ordered, gap-free channel events for the hub.
//!
//! * **Interest.** One task owns the per-channel subscriber counts. It takes requests in
//!   batches, issues one `SUBSCRIBE`/`UNSUBSCRIBE` per batch for the channels whose count
//!   crossed zero, and answers each waiting subscriber once Redis confirmed. A node thus
//!   holds exactly one Redis subscription per channel with local subscribers, and no
//!   pattern subscription.
//! * **Reader** (`reader`). One task reads every pub/sub message in arrival order, drops
//!   repeats and has gaps filled from the stream by other tasks, holding the channel's
//!   live messages meanwhile, so one slow read never stalls the other channels.
//! * **Baseline, and why SUBSCRIBE comes first.** A join (`sb_join`, one round trip) reads
//!   the channel's position only after this node's `SUBSCRIBE` of the channel was
//!   confirmed. Every publication after that read is then certain to arrive live; had the
//!   read come first, a publication between the read and the `SUBSCRIBE` would be in
//!   neither the subscriber's read nor live traffic, and the reader, knowing no position
//!   before the next live publication, would not see it as a gap. The position a join
//!   read comes back here as the channel's *baseline* (through this task, so that it is
//!   ordered with the `Forget` of an unsubscribe): where a catch-up starts if the
//!   connection breaks before any publication arrived. The node used to read it itself, in
//!   one more `sb_history` per fresh channel; now the join's own read serves.
//! * **Resync.** After the pub/sub connection comes back (or the reader lagged), the
//!   interest task resubscribes everything and the reader catches every channel up from
//!   its last offset through the stream.
//! * **Probe.** The node publishes to its own probe channel; if the probe stops coming
//!   back, the connection is silently dead: the node reports not ready and reconnects.
//! * **Redis Cluster** (`sharded`): live channels are sharded pub/sub, subscribed per
//!   slot and followed when their slot moves.

mod reader;
mod sharded;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use fred::{
    clients::SubscriberClient,
    prelude::*,
    types::{cluster::ClusterRouting, config::Server},
};
use tokio::sync::{broadcast::error::RecvError, mpsc, oneshot};

use reader::{Reader, ReaderCommand};

use super::RedisShared;
use crate::broker::BrokerError;
use switchboard_protocol::redis as keys;

enum Op {
    Subscribe(String, oneshot::Sender<Result<(), BrokerError>>),
    Unsubscribe(String),
    /// A join's read of the channel's position (see the module docs).
    Baseline(String, Arc<str>, u64),
    Resync,
    /// The cluster's current slot map (Redis Cluster only; see `sharded`).
    SlotMap(ClusterRouting),
}

/// Handle to the pub/sub side.
pub(super) struct Subscriber {
    client: SubscriberClient,
    ops: mpsc::Sender<Op>,
    started: Instant,
    probe_seen_ms: Arc<AtomicU64>,
}

impl Subscriber {
    /// Starts the interest, reader, reconnect and probe tasks.
    pub(super) fn start(client: SubscriberClient, shared: Arc<RedisShared>) -> Subscriber {
        let (ops, ops_rx) = mpsc::channel(4096);
        let (reader_tx, reader_rx) = mpsc::channel(64);
        let started = Instant::now();
        let probe_seen_ms = Arc::new(AtomicU64::new(0));
        let probe_channel = keys::probe(&shared.node_id);
        let rpc_channel = keys::rpc_replies(&shared.node_id);
        let raw = vec![probe_channel.clone(), rpc_channel.clone()];
        if shared.sharded {
            sharded::spawn_watcher(client.clone(), ops.clone());
        }
        tokio::spawn(interest_loop(client.clone(), ops_rx, reader_tx, shared.clone(), raw));
        let reader = Reader::new(shared.clone(), probe_channel.clone(), probe_seen_ms.clone(), started);
        tokio::spawn(reader.run(client.message_rx(), reader_rx));
        let mut reconnects = client.reconnect_rx();
        let resync = ops.clone();
        tokio::spawn(async move {
            loop {
                match reconnects.recv().await {
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        if resync.send(Op::Resync).await.is_err() {
                            return;
                        }
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        let subscriber = Subscriber { client, ops, started, probe_seen_ms };
        // The node's RPC replies arrive on a permanent subscription of its own.
        let (tx, _rx) = oneshot::channel();
        if let Err(error) = subscriber.ops.try_send(Op::Subscribe(rpc_channel, tx)) {
            tracing::error!(%error, "cannot subscribe the RPC reply channel");
        }
        subscriber.spawn_probe(shared, probe_channel);
        subscriber
    }

    /// Registers one local subscriber of `channel`; resolves once Redis confirmed the
    /// node's subscription.
    pub(super) async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        if !self.client.is_connected() {
            // Fail fast, as every command does while Redis is known to be down.
            return Err(BrokerError::Unavailable("the pub/sub connection to Redis is down".into()));
        }
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(Op::Subscribe(channel.to_string(), tx))
            .await
            .map_err(|_| BrokerError::Unavailable("subscriber stopped".into()))?;
        rx.await.map_err(|_| BrokerError::Unavailable("subscriber stopped".into()))?
    }

    /// Drops one local subscriber of `channel`.
    pub(super) async fn unsubscribe(&self, channel: &str) {
        // Only fails when the node is stopping, when interest no longer matters.
        let _ = self.ops.send(Op::Unsubscribe(channel.to_string())).await;
    }

    /// Hands the position a join read to the reader, as `channel`'s baseline.
    pub(super) async fn baseline(&self, channel: &str, epoch: Arc<str>, top: u64) {
        // Only fails when the node is stopping.
        let _ = self.ops.send(Op::Baseline(channel.to_string(), epoch, top)).await;
    }

    /// Whether the pub/sub connection is known to work: connected and the probe came
    /// back recently.
    pub(super) fn is_healthy(&self, timeout: Duration) -> bool {
        let seen = self.probe_seen_ms.load(Ordering::Acquire);
        let now = self.started.elapsed().as_millis() as u64;
        self.client.is_connected() && seen > 0 && now.saturating_sub(seen) < timeout.as_millis() as u64
    }

    fn spawn_probe(&self, shared: Arc<RedisShared>, probe_channel: String) {
        let client = self.client.clone();
        let started = self.started;
        let probe_seen_ms = self.probe_seen_ms.clone();
        let ops = self.ops.clone();
        tokio::spawn(async move {
            // The probe channel is a permanent subscription of this node.
            let (tx, _rx) = oneshot::channel();
            if ops.send(Op::Subscribe(probe_channel.clone(), tx)).await.is_err() {
                return;
            }
            let interval = Duration::from_millis(shared.config.probe_interval_ms);
            let timeout = Duration::from_millis(shared.config.probe_timeout_ms);
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_forced = Instant::now();
            loop {
                tick.tick().await;
                let sent: Result<i64, _> = shared.client.publish(&probe_channel, "probe").await;
                let healthy = {
                    let seen = probe_seen_ms.load(Ordering::Acquire);
                    let now = started.elapsed().as_millis() as u64;
                    seen > 0 && now.saturating_sub(seen) < timeout.as_millis() as u64
                };
                shared.metrics.broker_ready.set(i64::from(healthy && shared.client.is_connected()));
                let stale = started.elapsed() > timeout && last_forced.elapsed() > timeout;
                if !healthy && sent.is_ok() && stale {
                    tracing::warn!("pub/sub probe did not come back: reconnecting the subscriber");
                    shared.metrics.broker_probe_failures.inc();
                    last_forced = Instant::now();
                    if let Err(error) = client.force_reconnection().await {
                        tracing::warn!(%error, "cannot force the subscriber to reconnect");
                    }
                }
            }
        });
    }
}

/// Owns the subscription counts; see the module docs.
async fn interest_loop(
    client: SubscriberClient,
    mut ops: mpsc::Receiver<Op>,
    reader: mpsc::Sender<ReaderCommand>,
    shared: Arc<RedisShared>,
    raw: Vec<String>,
) {
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut subscribed: HashSet<String> = HashSet::new();
    // Redis Cluster: the primary each subscribed slot had when it was subscribed.
    let mut owners: HashMap<u16, Server> = HashMap::new();
    let mut batch = Vec::new();
    let mut retry_resync = false;
    loop {
        let received = if retry_resync {
            match tokio::time::timeout(Duration::from_millis(500), ops.recv_many(&mut batch, 1024)).await {
                Ok(received) => received,
                Err(_) => {
                    batch.push(Op::Resync);
                    1
                }
            }
        } else {
            ops.recv_many(&mut batch, 1024).await
        };
        if received == 0 {
            return;
        }
        let mut touched: HashSet<String> = HashSet::new();
        let mut waiters = Vec::new();
        let mut baselines = Vec::new();
        let mut resync = false;
        let mut slot_map = None;
        for op in batch.drain(..) {
            match op {
                Op::Subscribe(channel, tx) => {
                    *counts.entry(channel.clone()).or_default() += 1;
                    touched.insert(channel.clone());
                    waiters.push((channel, tx));
                }
                Op::Unsubscribe(channel) => {
                    if let Some(count) = counts.get_mut(&channel) {
                        *count -= 1;
                        if *count == 0 {
                            counts.remove(&channel);
                        }
                    }
                    touched.insert(channel);
                }
                Op::Baseline(channel, epoch, top) => baselines.push((channel, epoch, top)),
                Op::Resync => resync = true,
                Op::SlotMap(state) => slot_map = Some(state),
            }
        }
        let to_subscribe: Vec<String> = if resync {
            counts.keys().cloned().collect()
        } else {
            touched.iter().filter(|c| counts.contains_key(*c) && !subscribed.contains(*c)).cloned().collect()
        };
        let to_unsubscribe: Vec<String> =
            touched.iter().filter(|c| !counts.contains_key(*c) && subscribed.contains(*c)).cloned().collect();

        let mut failure = None;
        for chunk in to_subscribe.chunks(512) {
            match subscribe(&client, chunk, &raw, shared.sharded, &mut owners).await {
                Ok(()) => subscribed.extend(chunk.iter().cloned()),
                Err(error) => {
                    failure = Some(error.to_string());
                    break;
                }
            }
        }
        if let Some(state) = slot_map {
            if follow_moved_slots(&client, &state, &subscribed, &raw, &mut owners, &reader, &shared)
                .await
                .is_err()
            {
                return;
            }
        }
        // Only for channels still subscribed: a baseline after the channel's last
        // unsubscribe would outlive the `Forget` below.
        baselines.retain(|(channel, _, _)| counts.contains_key(channel));
        if !baselines.is_empty() && reader.send(ReaderCommand::Baseline(baselines)).await.is_err() {
            return;
        }
        if resync {
            retry_resync = failure.is_some();
            if failure.is_none() {
                shared.metrics.broker_resyncs.inc();
                let channels: Vec<String> = counts.keys().filter(|c| !raw.contains(c)).cloned().collect();
                if reader.send(ReaderCommand::CatchUp(channels)).await.is_err() {
                    return;
                }
            }
        }
        if !to_unsubscribe.is_empty() {
            if let Err(error) = unsubscribe(&client, &to_unsubscribe, &raw, shared.sharded).await {
                // A broken connection drops every subscription anyway; resync subscribes
                // only channels that still have local subscribers.
                tracing::debug!(%error, "unsubscribe failed");
            }
            for channel in &to_unsubscribe {
                subscribed.remove(channel);
            }
            if reader.send(ReaderCommand::Forget(to_unsubscribe)).await.is_err() {
                return;
            }
        }
        shared.metrics.broker_live_subscriptions.set(subscribed.len() as i64);
        for (channel, tx) in waiters {
            let result = match &failure {
                _ if subscribed.contains(&channel) => Ok(()),
                Some(error) => Err(BrokerError::Unavailable(error.clone())),
                None => Err(BrokerError::Unavailable("not subscribed".into())),
            };
            // The waiter may have given up (its connection closed); nothing to do then.
            let _ = tx.send(result);
        }
    }
}

/// The pub/sub names of `channels` (Switchboard names; the node's own `raw` channels as
/// they are): those for `SUBSCRIBE`, and on a Redis Cluster the live channels grouped by
/// slot, for one `SSUBSCRIBE` each.
fn route(channels: &[String], raw: &[String], sharded: bool) -> (Vec<String>, BTreeMap<u16, Vec<String>>) {
    let (classic, live): (Vec<&String>, Vec<&String>) =
        channels.iter().partition(|channel| !sharded || raw.contains(channel));
    let classic = classic.into_iter().map(|channel| live_name(channel, raw)).collect();
    (classic, sharded::by_slot(live.into_iter().map(|channel| keys::live(channel))))
}

/// Subscribes `channels` (see [`route`]), recording each subscribed slot's owner.
async fn subscribe(
    client: &SubscriberClient,
    channels: &[String],
    raw: &[String],
    sharded: bool,
    owners: &mut HashMap<u16, Server>,
) -> Result<(), fred::error::Error> {
    let (classic, by_slot) = route(channels, raw, sharded);
    if !classic.is_empty() {
        client.subscribe(classic).await?;
    }
    for (slot, names) in by_slot {
        client.ssubscribe(names).await?;
        if let Some(owner) = sharded::owner(client, slot) {
            owners.insert(slot, owner);
        }
    }
    Ok(())
}

/// The counterpart of [`subscribe`].
async fn unsubscribe(
    client: &SubscriberClient,
    channels: &[String],
    raw: &[String],
    sharded: bool,
) -> Result<(), fred::error::Error> {
    let (classic, by_slot) = route(channels, raw, sharded);
    if !classic.is_empty() {
        client.unsubscribe(classic).await?;
    }
    for names in by_slot.into_values() {
        client.sunsubscribe(names).await?;
    }
    Ok(())
}

/// Redis Cluster: subscribes again, at their new owner, the channels of every slot that
/// moved since it was subscribed, and has the reader catch them up. A failed subscribe
/// keeps the slot's old owner, so the next slot map retries it. `Err` when the reader
/// stopped.
async fn follow_moved_slots(
    client: &SubscriberClient,
    state: &ClusterRouting,
    subscribed: &HashSet<String>,
    raw: &[String],
    owners: &mut HashMap<u16, Server>,
    reader: &mpsc::Sender<ReaderCommand>,
    shared: &RedisShared,
) -> Result<(), ()> {
    let moved = sharded::moved(owners, state);
    if moved.is_empty() {
        return Ok(());
    }
    let channels: Vec<String> = subscribed
        .iter()
        .filter(|channel| !raw.contains(channel) && moved.contains(&sharded::slot(&keys::live(channel))))
        .cloned()
        .collect();
    for slot in &moved {
        if !channels.iter().any(|channel| sharded::slot(&keys::live(channel)) == *slot) {
            owners.remove(slot);
        }
    }
    if channels.is_empty() {
        return Ok(());
    }
    tracing::info!(slots = moved.len(), channels = channels.len(), "cluster slots moved: following them");
    let mut followed = Vec::new();
    for chunk in channels.chunks(512) {
        match subscribe(client, chunk, raw, true, owners).await {
            Ok(()) => followed.extend(chunk.iter().cloned()),
            Err(error) => {
                tracing::warn!(%error, "cannot subscribe channels of a moved slot; retrying at the next check");
                break;
            }
        }
    }
    shared.metrics.broker_slot_moves.inc_by(followed.len() as u64);
    if followed.is_empty() {
        return Ok(());
    }
    reader.send(ReaderCommand::CatchUp(followed)).await.map_err(|_| ())
}

/// The Redis pub/sub channel for a Switchboard channel (the node's own probe and RPC reply
/// channels, `raw`, are used as they are).
fn live_name(channel: &str, raw: &[String]) -> String {
    if raw.iter().any(|name| name == channel) {
        channel.to_string()
    } else {
        keys::live(channel)
    }
}
