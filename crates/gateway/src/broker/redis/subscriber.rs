//! The node's pub/sub side: which Redis channels it listens to, and turning what arrives
//! into ordered, gap-free channel events for the hub.
//!
//! * **Interest.** One task owns the per-channel subscriber counts. It takes requests in
//!   batches, issues one `SUBSCRIBE`/`UNSUBSCRIBE` per batch for the channels whose count
//!   crossed zero, and answers each waiting subscriber once Redis confirmed. A node thus
//!   holds exactly one Redis subscription per channel with local subscribers, and no
//!   pattern subscription.
//! * **Reader.** One task reads every pub/sub message in arrival order (per-channel order
//!   without a task per message). It keeps the last offset seen per channel: a jump is
//!   filled from the stream before delivering, a repeat is dropped.
//! * **Resync.** After the pub/sub connection comes back (or the reader lagged), the
//!   interest task resubscribes everything and the reader catches every channel up from
//!   its last offset through the stream.
//! * **Probe.** The node publishes to its own probe channel; if the probe stops coming
//!   back, the connection is silently dead: the node reports not ready and reconnects.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use fred::{clients::SubscriberClient, prelude::*};
use tokio::sync::{broadcast::error::RecvError, mpsc, oneshot};

use super::{wire, RedisShared};
use crate::broker::{BrokerError, ChannelEvent, Publication};
use switchboard_protocol::redis as keys;

enum Op {
    Subscribe(String, oneshot::Sender<Result<(), BrokerError>>),
    Unsubscribe(String),
    Resync,
}

enum ReaderCommand {
    CatchUp(Vec<String>),
    Forget(Vec<String>),
    /// The stream position right after the node subscribed a channel: where catching up
    /// starts if the connection breaks before any publication arrived.
    Baseline(Vec<(String, Arc<str>, u64)>),
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
        tokio::spawn(interest_loop(client.clone(), ops_rx, reader_tx, shared.clone(), probe_channel.clone()));
        tokio::spawn(
            Reader {
                shared: shared.clone(),
                positions: HashMap::new(),
                probe_channel: probe_channel.clone(),
                probe_seen_ms: probe_seen_ms.clone(),
                started,
            }
            .run(client.message_rx(), reader_rx),
        );
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
    probe_channel: String,
) {
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut subscribed: HashSet<String> = HashSet::new();
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
        let mut resync = false;
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
                Op::Resync => resync = true,
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
        let mut fresh = Vec::new();
        for chunk in to_subscribe.chunks(512) {
            let names: Vec<String> = chunk.iter().map(|c| live_name(c, &probe_channel)).collect();
            match client.subscribe(names).await {
                Ok(()) => {
                    fresh.extend(
                        chunk.iter().filter(|c| **c != probe_channel && !subscribed.contains(*c)).cloned(),
                    );
                    subscribed.extend(chunk.iter().cloned());
                }
                Err(error) => {
                    failure = Some(error.to_string());
                    break;
                }
            }
        }
        if !fresh.is_empty() {
            // Read before answering the waiters: every local subscriber then reads its own
            // history later, so nothing at or before the baseline is missing for it.
            let reads = fresh.iter().map(|channel| shared.position(channel));
            let baselines: Vec<(String, Arc<str>, u64)> = futures_util::future::join_all(reads)
                .await
                .into_iter()
                .zip(fresh)
                .filter_map(|(position, channel)| match position {
                    Ok((epoch, top)) => Some((channel, epoch, top)),
                    Err(error) => {
                        tracing::warn!(%error, %channel, "cannot read the baseline position");
                        None
                    }
                })
                .collect();
            if reader.send(ReaderCommand::Baseline(baselines)).await.is_err() {
                return;
            }
        }
        if resync {
            retry_resync = failure.is_some();
            if failure.is_none() {
                shared.metrics.broker_resyncs.inc();
                let channels: Vec<String> = counts.keys().filter(|c| **c != probe_channel).cloned().collect();
                if reader.send(ReaderCommand::CatchUp(channels)).await.is_err() {
                    return;
                }
            }
        }
        if !to_unsubscribe.is_empty() {
            let names: Vec<String> = to_unsubscribe.iter().map(|c| live_name(c, &probe_channel)).collect();
            if let Err(error) = client.unsubscribe(names).await {
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

/// The Redis pub/sub channel for a Switchboard channel (the probe channel is used as is).
fn live_name(channel: &str, probe_channel: &str) -> String {
    if channel == probe_channel {
        channel.to_string()
    } else {
        keys::live(channel)
    }
}

struct Reader {
    shared: Arc<RedisShared>,
    positions: HashMap<Arc<str>, (Arc<str>, u64)>,
    probe_channel: String,
    probe_seen_ms: Arc<AtomicU64>,
    started: Instant,
}

impl Reader {
    async fn run(
        mut self,
        mut messages: tokio::sync::broadcast::Receiver<fred::types::Message>,
        mut commands: mpsc::Receiver<ReaderCommand>,
    ) {
        loop {
            tokio::select! {
                message = messages.recv() => match message {
                    Ok(message) => self.on_message(&message).await,
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "pub/sub reader lagged: catching every channel up");
                        let channels: Vec<String> = self.positions.keys().map(|c| c.to_string()).collect();
                        self.catch_up(channels).await;
                    }
                    Err(RecvError::Closed) => return,
                },
                command = commands.recv() => match command {
                    Some(ReaderCommand::CatchUp(channels)) => self.catch_up(channels).await,
                    Some(ReaderCommand::Baseline(baselines)) => {
                        for (channel, epoch, top) in baselines {
                            self.positions.entry(Arc::from(channel)).or_insert((epoch, top));
                        }
                    }
                    Some(ReaderCommand::Forget(channels)) => {
                        for channel in channels {
                            self.positions.remove(channel.as_str());
                        }
                    }
                    None => return,
                },
            }
        }
    }

    async fn on_message(&mut self, message: &fred::types::Message) {
        if *message.channel == *self.probe_channel {
            self.probe_seen_ms.store(self.started.elapsed().as_millis().max(1) as u64, Ordering::Release);
            return;
        }
        let Some(channel) = keys::channel_of_live(&message.channel) else { return };
        let channel: Arc<str> = Arc::from(channel);
        let Some(payload) = message.value.as_bytes() else {
            self.shared.metrics.broker_invalid_messages.inc();
            return;
        };
        match wire::decode_live(&channel, payload) {
            Ok(ChannelEvent::Publication(publication)) => self.on_publication(channel, publication).await,
            Ok(event) => self.shared.sink.deliver(&channel, event),
            Err(error) => {
                self.shared.metrics.broker_invalid_messages.inc();
                tracing::warn!(%error, %channel, "dropping an undecodable live message");
            }
        }
    }

    /// Delivers a publication in offset order: fills a gap from the stream first and
    /// drops a publication already delivered.
    async fn on_publication(&mut self, channel: Arc<str>, publication: Publication) {
        let (Some(offset), Some(epoch)) = (publication.offset, publication.epoch.clone()) else {
            // Ephemeral: no position to keep.
            self.shared.sink.deliver(&channel, ChannelEvent::Publication(publication));
            return;
        };
        if let Some((last_epoch, last)) = self.positions.get(&channel) {
            if *last_epoch == epoch {
                if offset <= *last {
                    self.shared.metrics.broker_duplicates.inc();
                    return;
                }
                if offset > last + 1 {
                    self.shared.metrics.broker_gap_fills.inc();
                    let from = *last;
                    self.fill(&channel, &epoch, from, Some(offset - 1)).await;
                }
            }
        }
        self.positions.insert(channel.clone(), (epoch, offset));
        self.shared.sink.deliver(&channel, ChannelEvent::Publication(publication));
    }

    /// Delivers stored publications of `channel` after `from` (up to `until`) that the
    /// reader has not delivered yet.
    async fn fill(&mut self, channel: &Arc<str>, epoch: &Arc<str>, from: u64, until: Option<u64>) {
        match self.shared.read_after(channel, from).await {
            Ok((stream_epoch, publications)) => {
                if *stream_epoch != **epoch {
                    return;
                }
                for publication in publications {
                    let Some(offset) = publication.offset else { continue };
                    if until.is_some_and(|until| offset > until) {
                        break;
                    }
                    self.positions.insert(channel.clone(), (epoch.clone(), offset));
                    self.shared.sink.deliver(channel, ChannelEvent::Publication(publication));
                }
            }
            Err(error) => tracing::warn!(%error, %channel, "cannot fill a gap from the stream"),
        }
    }

    async fn catch_up(&mut self, channels: Vec<String>) {
        for channel in channels {
            let channel: Arc<str> = Arc::from(channel);
            let Some((epoch, last)) = self.positions.get(&channel).cloned() else { continue };
            match self.shared.read_after(&channel, last).await {
                Ok((stream_epoch, publications)) if stream_epoch == epoch => {
                    for publication in publications {
                        if let Some(offset) = publication.offset {
                            self.positions.insert(channel.clone(), (epoch.clone(), offset));
                        }
                        self.shared.sink.deliver(&channel, ChannelEvent::Publication(publication));
                    }
                }
                Ok((stream_epoch, _)) => {
                    // The stream was lost and restarted: what it holds now is all new.
                    tracing::warn!(%channel, old = %epoch, new = %stream_epoch, "stream epoch changed");
                    self.positions.insert(channel.clone(), (stream_epoch, 0));
                    let publications = match self.shared.read_after(&channel, 0).await {
                        Ok((_, publications)) => publications,
                        Err(error) => {
                            tracing::warn!(%error, %channel, "cannot read the new stream");
                            continue;
                        }
                    };
                    for publication in publications {
                        if let (Some(offset), Some(epoch)) = (publication.offset, publication.epoch.clone()) {
                            self.positions.insert(channel.clone(), (epoch, offset));
                        }
                        self.shared.sink.deliver(&channel, ChannelEvent::Publication(publication));
                    }
                }
                Err(error) => tracing::warn!(%error, %channel, "cannot catch up from the stream"),
            }
        }
    }
}
