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
//! A shard never waits on a socket. A connection whose socket is full, or that is
//! closing, is handed to its own writer task (`session::writer`).

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{backlog::Backlog, lock, Outgoing, Shared};

/// Connections a shard writes before it lets other tasks of its worker run.
const YIELD_EVERY: usize = 64;

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
    /// `backlog` when it is working.
    async fn run(self: Arc<Shard>, stop: CancellationToken, backlog: Arc<Backlog>) {
        let mut round: Vec<Arc<Shared>> = Vec::new();
        let mut batch: Vec<Outgoing> = Vec::with_capacity(super::write::MAX_IOVECS);
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                () = stop.cancelled() => return,
            }
            backlog.shard_busy();
            loop {
                std::mem::swap(&mut *lock(&self.listed), &mut round);
                if round.is_empty() {
                    backlog.shard_idle();
                    break;
                }
                for (index, connection) in round.drain(..).enumerate() {
                    self.flush(connection, &mut batch);
                    if index % YIELD_EVERY == YIELD_EVERY - 1 {
                        tokio::task::yield_now().await;
                    }
                }
                // Give back a large list's memory after a burst.
                if round.capacity() > 4096 {
                    round = Vec::new();
                }
            }
        }
    }

    /// One write of one connection, and who owns it next.
    fn flush(&self, connection: Arc<Shared>, batch: &mut Vec<Outgoing>) {
        let Some(socket) = connection.socket.get() else { return };
        if connection.control.is_closing() {
            return connection.hand_to_task();
        }
        // Frames that arrived during the write wait for the next round.
        let progress = socket.write_some(&connection, batch);
        connection.after_write(progress);
    }
}

/// A node's flusher shards.
#[derive(Debug)]
pub struct Flushers {
    shards: Vec<Arc<Shard>>,
    _stop: DropGuard,
}

impl Flushers {
    /// Starts `count` shards (at least one) on the current runtime.
    pub fn start(count: usize, backlog: &Arc<Backlog>) -> Flushers {
        let shards: Vec<Arc<Shard>> = (0..count.max(1)).map(|_| Arc::new(Shard::default())).collect();
        let stop = CancellationToken::new();
        for shard in &shards {
            tokio::spawn(shard.clone().run(stop.clone(), backlog.clone()));
        }
        Flushers { shards, _stop: stop.drop_guard() }
    }

    /// The shard of connection `id`.
    pub fn shard_of(&self, id: u64) -> Arc<Shard> {
        self.shards[(id % self.shards.len() as u64) as usize].clone()
    }
}
