//! Flusher shards: the tasks that write queued frames to their connections' sockets.
//!
//! A node runs one shard per runtime worker; a connection belongs to one shard for its
//! life. Queuing a frame for an idle connection puts the connection in its shard's list
//! and wakes the shard only if the list was empty, so a publication to a thousand
//! connections costs a wake-up per shard, not per connection. The shard writes each
//! listed connection with one non-blocking `writev`. When the fan-out runs faster than
//! the shard, frames wait in the queues and each `writev` carries several: the load
//! itself sets how much is coalesced, with no timer and no delay when the node is idle.
//!
//! **Coalescing under load** (`limits.write_coalesce_ms`). Lag alone gave 4.5 frames per
//! write in a burst to 1 000 subscribers, and the kernel's per-call work was still
//! three quarters of the node's CPU. So when a round took at least `BUSY_ROUND` (a
//! fan-out to a few hundred sockets), found publications piling up (a quarter more frames
//! than writes) and frames are already waiting again, the next round starts only
//! `write_coalesce_ms` after the previous one began: each socket then gets every
//! publication of that window in one call. A shard woken from idle writes at once, short
//! rounds (a chat message to a few sockets) never wait, and neither does the rest of one
//! publication's fan-out, so the delay applies only while the node is behind, where
//! frames wait in queues anyway.
//!
//! A shard never waits on a socket. A connection whose socket is full, or that is
//! closing, is handed to its own writer task (`session::writer`).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{backlog::Backlog, lock, Outgoing, Shared};

/// Connections a shard writes before it lets other tasks of its worker run.
const YIELD_EVERY: usize = 64;

/// A round at least this long is a large fan-out: if frames are waiting when it ends, the
/// next round is delayed to coalesce (tokio's timers have millisecond resolution, so a
/// shorter wait could not be honoured anyway).
const BUSY_ROUND: Duration = Duration::from_millis(1);

/// One flusher: the connections waiting to be written, and the task's wake-up.
#[derive(Debug, Default)]
pub struct Shard {
    listed: Mutex<Vec<Arc<Shared>>>,
    wake: Notify,
}

impl Shard {
    /// Lists a connection whose queue has frames and no writer.
    pub(super) fn schedule(&self, connection: Arc<Shared>) {
        let first = {
            let mut listed = lock(&self.listed);
            listed.push(connection);
            listed.len() == 1
        };
        if first {
            self.wake.notify_one();
        }
    }

    /// Writes listed connections until `stop` fires (the node is dropped), telling
    /// `backlog` when it is working; busy rounds start at least `coalesce` apart.
    async fn run(self: Arc<Shard>, stop: CancellationToken, backlog: Arc<Backlog>, coalesce: Duration) {
        let mut round: Vec<Arc<Shared>> = Vec::new();
        let mut batch: Vec<Outgoing> = Vec::with_capacity(super::write::MAX_IOVECS);
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                () = stop.cancelled() => return,
            }
            backlog.shard_busy();
            let mut previous: Option<Round> = None;
            loop {
                let waiting = !lock(&self.listed).is_empty();
                if let Some(at) = next_round_at(previous, waiting, coalesce) {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = stop.cancelled() => return,
                    }
                }
                let mut this = Round { began: Instant::now(), took: Duration::ZERO, writes: 0, frames: 0 };
                std::mem::swap(&mut *lock(&self.listed), &mut round);
                if round.is_empty() {
                    backlog.shard_idle();
                    break;
                }
                this.writes = round.len();
                for (index, connection) in round.drain(..).enumerate() {
                    this.frames += self.flush(connection, &mut batch);
                    if index % YIELD_EVERY == YIELD_EVERY - 1 {
                        tokio::task::yield_now().await;
                    }
                }
                // Give back a large list's memory after a burst.
                if round.capacity() > 4096 {
                    round = Vec::new();
                }
                this.took = this.began.elapsed();
                previous = Some(this);
            }
        }
    }

    /// One write of one connection, and who owns it next. Returns the frames written.
    fn flush(&self, connection: Arc<Shared>, batch: &mut Vec<Outgoing>) -> usize {
        let Some(socket) = connection.socket.get() else { return 0 };
        if connection.control.is_closing() {
            connection.hand_to_task();
            return 0;
        }
        // Frames that arrived during the write wait for the next round.
        let (progress, frames) = socket.write_counted(&connection, batch);
        connection.after_write(progress);
        frames
    }
}

/// What one round of a shard did.
#[derive(Debug, Clone, Copy)]
struct Round {
    began: Instant,
    took: Duration,
    /// Connections written (one `writev` each).
    writes: usize,
    /// Frames those writes completed.
    frames: usize,
}

impl Round {
    /// A large fan-out that found the node behind: long enough to be a few hundred
    /// sockets, and a quarter more frames than writes, i.e. publications were already
    /// piling up in the queues. One publication fanned out over two rounds (the hub still
    /// queuing while the shard writes) is one frame per write, and is never held back.
    fn behind(&self) -> bool {
        self.took >= BUSY_ROUND && self.frames * 4 >= self.writes * 5
    }
}

/// When a shard's next round may start, given the previous round of this wake-up, whether
/// connections are waiting, and `coalesce`: `None` for at once. Only a round that found
/// the node behind, followed by waiting frames, delays the next one.
fn next_round_at(previous: Option<Round>, waiting: bool, coalesce: Duration) -> Option<Instant> {
    let round = previous?;
    (waiting && round.behind() && !coalesce.is_zero()).then(|| round.began + coalesce)
}

/// A node's flusher shards.
#[derive(Debug)]
pub struct Flushers {
    shards: Vec<Arc<Shard>>,
    _stop: DropGuard,
}

impl Flushers {
    /// Starts `count` shards (at least one) on the current runtime, whose busy rounds
    /// start at least `coalesce` apart (zero: never delayed).
    pub fn start(count: usize, backlog: &Arc<Backlog>, coalesce: Duration) -> Flushers {
        let shards: Vec<Arc<Shard>> = (0..count.max(1)).map(|_| Arc::new(Shard::default())).collect();
        let stop = CancellationToken::new();
        for shard in &shards {
            tokio::spawn(shard.clone().run(stop.clone(), backlog.clone(), coalesce));
        }
        Flushers { shards, _stop: stop.drop_guard() }
    }

    /// The shard of connection `id`.
    pub fn shard_of(&self, id: u64) -> Arc<Shard> {
        self.shards[(id % self.shards.len() as u64) as usize].clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COALESCE: Duration = Duration::from_millis(10);

    fn round(took: Duration, writes: usize, frames: usize) -> Round {
        Round { began: Instant::now(), took, writes, frames }
    }

    #[test]
    fn a_shard_woken_from_idle_writes_at_once() {
        assert_eq!(next_round_at(None, true, COALESCE), None);
    }

    #[test]
    fn a_busy_round_that_found_frames_piling_up_delays_the_next_until_the_window_ends() {
        let behind = round(BUSY_ROUND * 3, 400, 1800);
        assert_eq!(next_round_at(Some(behind), true, COALESCE), Some(behind.began + COALESCE));
        let quarter_more = round(BUSY_ROUND, 400, 500);
        assert_eq!(next_round_at(Some(quarter_more), true, COALESCE), Some(quarter_more.began + COALESCE));
    }

    #[test]
    fn one_publication_spread_over_two_rounds_is_not_held_back() {
        // 250 sockets, one frame each, while the hub still queues the rest of the fan-out.
        assert_eq!(next_round_at(Some(round(BUSY_ROUND * 2, 250, 250)), true, COALESCE), None);
        assert_eq!(next_round_at(Some(round(BUSY_ROUND * 2, 400, 499)), true, COALESCE), None);
    }

    #[test]
    fn short_rounds_idle_queues_and_a_zero_setting_never_wait() {
        let short = BUSY_ROUND - Duration::from_micros(1);
        assert_eq!(next_round_at(Some(round(short, 10, 40)), true, COALESCE), None, "a few sockets");
        assert_eq!(
            next_round_at(Some(round(BUSY_ROUND, 400, 1800)), false, COALESCE),
            None,
            "nothing waiting"
        );
        assert_eq!(next_round_at(Some(round(BUSY_ROUND, 400, 1800)), true, Duration::ZERO), None, "disabled");
    }
}
