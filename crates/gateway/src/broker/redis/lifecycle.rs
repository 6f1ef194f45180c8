//! The lifecycle stream: every connection's connect and disconnect (and subscribes) in
//! `sb:{lifecycle}:events`, for backends that track who is online or audit logins.
//!
//! The promise is *one disconnect per connect*, even when a node dies. Each node
//! registers its connections in its own hash `sb:{lifecycle}:conns:<node>` (in the same
//! Function call that records the connect) and keeps an alive key that expires
//! `node_ttl_ms` after its last beat. A disconnect is recorded only by removing the
//! connection from that hash, atomically, so it happens at most once whoever does it:
//! the node itself when the connection ends, or, once the node's alive key expired,
//! whichever node reaps it first (`sb_lifecycle_reap`). A node whose alive key expired
//! while it was still running (cut off from Redis for longer than the TTL) was reaped:
//! its next beat says so, and it records its live connections as connected again
//! (`resumed`), so that the stream stays paired.
//!
//! Disconnects that cannot be written (Redis unreachable) wait in a bounded queue and
//! are retried on every beat; the script makes a retry of a write that did land a no-op.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use dashmap::DashMap;
use fred::{
    prelude::*,
    types::streams::{XCap, XCapKind, XCapTrim, XID},
};
use switchboard_protocol::redis as keys;
use tokio::sync::{watch, Notify};

use super::RedisShared;
use crate::{
    broker::{BrokerError, LifecycleEvent},
    config::LifecycleConfig,
};

/// Connections reaped per Function call (each a stream entry).
const REAP_BATCH: usize = 500;

/// What a re-registration needs to know of a live connection.
struct Registered {
    user: String,
    info: String,
}

/// A disconnect waiting to be written.
struct PendingDisconnect {
    client: String,
    code: u16,
    reason: String,
}

/// The node's side of the lifecycle stream.
pub(super) struct Lifecycle {
    config: LifecycleConfig,
    /// This process's value of the alive key: a node restarted under the same name finds
    /// its previous life's key and is not alive until its first beat (which first reaps
    /// the previous life's connections).
    life: String,
    /// This node's connections recorded as connected (or being recorded).
    registered: DashMap<String, Registered>,
    pending: Mutex<VecDeque<PendingDisconnect>>,
    /// Asks the beat task for a beat now (a connect found the node not alive).
    beat_now: Notify,
    /// Counts the beats that found the node alive (or made it so).
    alive: watch::Sender<u64>,
}

impl Lifecycle {
    pub(super) fn new(config: LifecycleConfig) -> Lifecycle {
        Lifecycle {
            config,
            life: format!("{:016x}", rand::random::<u64>()),
            registered: DashMap::new(),
            pending: Mutex::new(VecDeque::new()),
            beat_now: Notify::new(),
            alive: watch::Sender::new(0),
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// Records `event`: see [`crate::broker::Broker::lifecycle`].
    pub(super) async fn record(
        &self,
        shared: &RedisShared,
        event: LifecycleEvent<'_>,
    ) -> Result<(), BrokerError> {
        match event {
            LifecycleEvent::Connect { client, user, info } => {
                let info = info.map(ToString::to_string).unwrap_or_default();
                self.registered.insert(client.to_string(), Registered { user: user.to_string(), info });
                let outcome = self.connect(shared, client).await;
                if outcome.is_err() {
                    // The call may have landed: make sure the disconnect follows it.
                    self.registered.remove(client);
                    self.queue(
                        shared,
                        PendingDisconnect {
                            client: client.to_string(),
                            code: 3006,
                            reason: "connect could not be recorded".into(),
                        },
                    );
                }
                outcome
            }
            LifecycleEvent::Disconnect { client, code, reason } => {
                if self.registered.remove(client).is_some() {
                    let pending =
                        PendingDisconnect { client: client.to_string(), code, reason: reason.to_string() };
                    if let Err(error) = self.disconnect(shared, &pending).await {
                        tracing::debug!(%error, client, "disconnect not recorded yet: retried on the next beat");
                        self.queue(shared, pending);
                    }
                }
                Ok(())
            }
            LifecycleEvent::Subscribe { client, user, channel } => {
                self.channel_event(shared, "subscribe", client, user, channel).await
            }
            LifecycleEvent::Unsubscribe { client, user, channel } => {
                self.channel_event(shared, "unsubscribe", client, user, channel).await
            }
        }
    }

    /// Records one connect; when the node is not alive (before its first beat, or
    /// reaped), has the beat task make it alive first, then tries once more.
    async fn connect(&self, shared: &RedisShared, client: &str) -> Result<(), BrokerError> {
        let mut alive = self.alive.subscribe();
        if self.connect_call(shared, client, false).await? {
            return Ok(());
        }
        alive.mark_unchanged();
        self.beat_now.notify_one();
        let wait = Duration::from_millis(shared.config.command_timeout_ms.max(1000));
        if tokio::time::timeout(wait, alive.changed()).await.is_err() {
            return Err(BrokerError::Unavailable("the node is not alive in the lifecycle registry".into()));
        }
        // Record it now (the Function skips a connection the beat already recorded again).
        if self.connect_call(shared, client, false).await? {
            Ok(())
        } else {
            Err(BrokerError::Unavailable("the node is not alive in the lifecycle registry".into()))
        }
    }

    /// One `sb_lifecycle_connect`; false when the node is not alive.
    async fn connect_call(
        &self,
        shared: &RedisShared,
        client: &str,
        resumed: bool,
    ) -> Result<bool, BrokerError> {
        let Some((user, info)) = self.registered.get(client).map(|r| (r.user.clone(), r.info.clone())) else {
            // Disconnected meanwhile: nothing to record.
            return Ok(true);
        };
        let node = shared.node_id.as_str();
        let args = vec![
            self.config.stream_max_len.to_string(),
            node.to_string(),
            client.to_string(),
            user,
            info,
            if resumed { "1" } else { "" }.to_string(),
            self.life.clone(),
        ];
        let recorded = shared.fcall("sb_lifecycle_connect", self.keys(node), args).await?;
        Ok(recorded.as_i64() == Some(1))
    }

    async fn disconnect(&self, shared: &RedisShared, pending: &PendingDisconnect) -> Result<(), BrokerError> {
        let node = shared.node_id.as_str();
        let args = vec![
            self.config.stream_max_len.to_string(),
            node.to_string(),
            pending.client.clone(),
            pending.code.to_string(),
            pending.reason.clone(),
        ];
        shared.fcall("sb_lifecycle_disconnect", self.keys(node), args).await?;
        Ok(())
    }

    async fn channel_event(
        &self,
        shared: &RedisShared,
        event: &str,
        client: &str,
        user: &str,
        channel: &str,
    ) -> Result<(), BrokerError> {
        if !self.config.subscriptions {
            return Ok(());
        }
        let fields = vec![
            ("event", event),
            ("client", client),
            ("user", user),
            ("node", shared.node_id.as_str()),
            ("channel", channel),
        ];
        let trim =
            XCap::try_from((XCapKind::MaxLen, XCapTrim::AlmostExact, self.config.stream_max_len as i64))?;
        let _: Value = shared.client.xadd(keys::LIFECYCLE_EVENTS, false, trim, XID::Auto, fields).await?;
        Ok(())
    }

    fn queue(&self, shared: &RedisShared, pending: PendingDisconnect) {
        let mut queue = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if queue.len() >= self.config.max_pending_disconnects {
            tracing::warn!(client = %pending.client, "lifecycle disconnect dropped: too many waiting");
            shared.metrics.lifecycle_dropped_disconnects.inc();
            return;
        }
        queue.push_back(pending);
        shared.metrics.lifecycle_pending_disconnects.set(queue.len() as i64);
    }

    fn keys(&self, node: &str) -> Vec<String> {
        vec![
            keys::LIFECYCLE_EVENTS.to_string(),
            keys::lifecycle_connections(node),
            keys::lifecycle_alive(node),
            keys::LIFECYCLE_NODES.to_string(),
        ]
    }
}

/// Starts the beat task: reaps this node's previous life, then beats every third of the
/// TTL (or when a connect asks), retries waiting disconnects and reaps dead nodes.
pub(super) fn spawn(shared: Arc<RedisShared>) {
    if !shared.lifecycle.enabled() {
        return;
    }
    tokio::spawn(async move {
        let lifecycle = &shared.lifecycle;
        let ttl = lifecycle.config.node_ttl_ms;
        let mut tick = tokio::time::interval(Duration::from_millis(ttl / 3));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A node restarted under the same name finds its previous life's connections
        // still registered: they are gone, record their disconnects first.
        let mut own_past_reaped = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = lifecycle.beat_now.notified() => {}
            }
            if !own_past_reaped {
                match reap(&shared, &shared.node_id, true).await {
                    Ok(_) => own_past_reaped = true,
                    Err(error) => {
                        tracing::debug!(%error, "cannot reap this node's previous connections yet");
                        continue;
                    }
                }
            }
            if let Err(error) = beat(&shared).await {
                tracing::debug!(%error, "lifecycle beat failed");
                continue;
            }
            retry_disconnects(&shared).await;
            if let Err(error) = reap_dead_nodes(&shared).await {
                tracing::debug!(%error, "cannot reap dead nodes");
            }
        }
    });
}

/// Keeps the node alive; when it was not (first beat, or reaped while cut off), records
/// every live connection as connected again.
async fn beat(shared: &RedisShared) -> Result<(), BrokerError> {
    let lifecycle = &shared.lifecycle;
    let node = shared.node_id.as_str();
    let args = vec![node.to_string(), lifecycle.config.node_ttl_ms.to_string(), lifecycle.life.clone()];
    let was_dead = shared.fcall("sb_lifecycle_beat", lifecycle.keys(node), args).await?.as_i64() == Some(1);
    // On the first beat of this life the connections waiting in `connect` record
    // themselves; only a node that was alive before and lost it records them again.
    let was_alive_before = *lifecycle.alive.borrow() > 0;
    if was_dead && was_alive_before {
        let clients: Vec<String> = lifecycle.registered.iter().map(|r| r.key().clone()).collect();
        if !clients.is_empty() {
            tracing::warn!(
                connections = clients.len(),
                "this node was reaped from the lifecycle registry: recording its connections again"
            );
        }
        for client in clients {
            lifecycle.connect_call(shared, &client, true).await?;
            shared.metrics.lifecycle_resumed.inc();
        }
    }
    lifecycle.alive.send_modify(|beats| *beats += 1);
    Ok(())
}

async fn retry_disconnects(shared: &RedisShared) {
    let lifecycle = &shared.lifecycle;
    loop {
        let next = {
            let mut queue = lifecycle.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let next = queue.pop_front();
            shared.metrics.lifecycle_pending_disconnects.set(queue.len() as i64);
            next
        };
        let Some(pending) = next else { return };
        if let Err(error) = lifecycle.disconnect(shared, &pending).await {
            tracing::debug!(%error, "disconnect still not recorded");
            let mut queue = lifecycle.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            queue.push_front(pending);
            shared.metrics.lifecycle_pending_disconnects.set(queue.len() as i64);
            return;
        }
    }
}

async fn reap_dead_nodes(shared: &RedisShared) -> Result<(), BrokerError> {
    let nodes: Vec<String> = shared.client.smembers(keys::LIFECYCLE_NODES).await?;
    for node in nodes.iter().filter(|node| **node != shared.node_id) {
        let reaped = reap(shared, node, false).await?;
        shared.metrics.lifecycle_reaped.inc_by(reaped as u64);
        if reaped > 0 {
            tracing::info!(dead = %node, connections = reaped, "recorded the disconnects of a dead node's connections");
        }
    }
    Ok(())
}

/// Records the disconnect of every registered connection of `node` if it is dead (or
/// `force`), in batches; returns how many.
async fn reap(shared: &RedisShared, node: &str, force: bool) -> Result<usize, BrokerError> {
    let lifecycle = &shared.lifecycle;
    let mut reaped = 0;
    loop {
        let before: usize = shared.client.hlen(keys::lifecycle_connections(node)).await?;
        let args = vec![
            lifecycle.config.stream_max_len.to_string(),
            node.to_string(),
            REAP_BATCH.to_string(),
            shared.node_id.clone(),
            if force { "1" } else { "" }.to_string(),
        ];
        let left =
            shared.fcall("sb_lifecycle_reap", lifecycle.keys(node), args).await?.as_i64().unwrap_or(-1);
        if left < 0 {
            return Ok(reaped);
        }
        reaped += before.saturating_sub(left as usize);
        if left == 0 {
            return Ok(reaped);
        }
    }
}
