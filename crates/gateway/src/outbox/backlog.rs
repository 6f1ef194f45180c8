//! The node's fan-out backlog: publication frames queued for sockets and not yet written.
//!
//! Queuing a frame costs a fraction of what writing it does, so without a bound a node
//! publishing as fast as it can (two local publishers on the embedded broker) fills every
//! subscriber's queue faster than the flushers empty them, and well-behaved clients end
//! up closed as slow consumers because of the *server's* pace. When the backlog is over
//! `limits.fanout_backlog_frames`, [`Backlog::room`] makes publishers wait (up to a bound)
//! until the flushers caught up: the publish path slows down, no subscriber is dropped.
//!
//! The hub counts a fan-out before queuing it and takes back what it did not queue, and
//! frames leave the count when written or dropped, so the count is never below the truth.
//! Frames waiting for clients whose sockets are full count too (until written, or dropped
//! when `limits.outbound_wait_ms` closes such a client), but they are not the flushers'
//! lag: publishers wait only while a flusher is actually working, so a few stuck clients
//! cannot hold every publisher back.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use tokio::sync::Notify;

/// Fan-out frames waiting to be written on this node.
#[derive(Debug)]
pub struct Backlog {
    frames: AtomicUsize,
    limit: usize,
    /// Flusher shards in the middle of a round.
    busy_shards: AtomicUsize,
    drained: Notify,
}

impl Backlog {
    /// A backlog that holds publishers back above `limit` frames.
    pub fn new(limit: usize) -> Backlog {
        Backlog {
            frames: AtomicUsize::new(0),
            limit: limit.max(1),
            busy_shards: AtomicUsize::new(0),
            drained: Notify::new(),
        }
    }

    /// Counts `frames` about to be queued.
    pub fn add(&self, frames: usize) {
        if frames > 0 {
            self.frames.fetch_add(frames, Ordering::Relaxed);
        }
    }

    /// Forgets `frames` written, dropped or never queued; wakes waiting publishers when
    /// the backlog goes under the limit.
    pub fn remove(&self, frames: usize) {
        if frames == 0 {
            return;
        }
        let before = self
            .frames
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(frames)))
            .unwrap_or_else(|n| n);
        if before >= self.limit && before.saturating_sub(frames) < self.limit {
            self.drained.notify_waiters();
        }
    }

    /// Frames counted now.
    pub fn frames(&self) -> usize {
        self.frames.load(Ordering::Acquire)
    }

    /// A flusher shard starts writing its listed connections.
    pub fn shard_busy(&self) {
        self.busy_shards.fetch_add(1, Ordering::AcqRel);
    }

    /// A flusher shard has nothing listed any more.
    pub fn shard_idle(&self) {
        if self.busy_shards.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drained.notify_waiters();
        }
    }

    /// Whether a publisher should wait: over the limit while the flushers work.
    fn behind(&self) -> bool {
        self.frames() >= self.limit && self.busy_shards.load(Ordering::Acquire) > 0
    }

    /// Waits until the backlog is under the limit, at most `patience`. Returns whether it
    /// had to wait.
    pub async fn room(&self, patience: Duration) -> bool {
        if !self.behind() {
            return false;
        }
        let wait = async {
            loop {
                let drained = self.drained.notified();
                tokio::pin!(drained);
                drained.as_mut().enable();
                if !self.behind() {
                    return;
                }
                drained.await;
            }
        };
        // Past the bound the publication goes ahead: the per-connection budgets still
        // bound memory.
        let _ = tokio::time::timeout(patience, wait).await;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn publishers_wait_until_the_flushers_catch_up() {
        let backlog = std::sync::Arc::new(Backlog::new(10));
        backlog.shard_busy();
        backlog.add(5);
        assert!(!backlog.room(Duration::from_secs(1)).await, "under the limit: no wait");
        backlog.add(10);
        let waiting = {
            let backlog = backlog.clone();
            tokio::spawn(async move { backlog.room(Duration::from_secs(60)).await })
        };
        tokio::task::yield_now().await;
        backlog.remove(6);
        assert!(waiting.await.expect("join"), "it waited, and was woken under the limit");
        backlog.remove(100);
        assert_eq!(backlog.frames(), 0, "never below zero");
        backlog.add(20);
        assert!(backlog.room(Duration::from_secs(1)).await, "gives up after its patience");
        // Over the limit with idle flushers: the frames wait for full sockets, not for
        // the flushers, and must not hold publishers back.
        let waiting = {
            let backlog = backlog.clone();
            tokio::spawn(async move { backlog.room(Duration::from_secs(60)).await })
        };
        tokio::task::yield_now().await;
        backlog.shard_idle();
        assert!(waiting.await.expect("join"), "woken when the flushers went idle");
        assert!(!backlog.room(Duration::from_secs(60)).await, "no wait while they are idle");
    }
}
