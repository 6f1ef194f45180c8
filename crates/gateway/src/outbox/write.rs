//! Non-blocking writes of a connection's queue to its socket.
//!
//! A write takes up to [`MAX_IOVECS`] queued frames out of the queue, hands them to one
//! `writev` (frames are complete WebSocket frames, so each is one `iovec`), gives back the
//! byte permits of every frame the socket took in full and puts the rest back at the
//! front of the queue, in order, the first one marked with how much of it was written.
//! It never waits: whoever owns the socket (see `Owner`) decides what to do when the
//! socket is full.

use std::{
    io::{ErrorKind, IoSlice},
    sync::Arc,
};

use tokio::net::tcp::OwnedWriteHalf;

use super::{backlog::Backlog, lock, shard::Shard, Outgoing, Shared, Sink};
use crate::metrics::Metrics;

/// Frames handed to one `writev` at most (well under every platform's `IOV_MAX`).
pub(super) const MAX_IOVECS: usize = 64;

/// What a non-blocking write achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// Everything taken from the queue was written (the queue may have new frames).
    Drained,
    /// The socket took less than it was offered: wait until it is writable.
    Blocked,
    /// The socket failed: the peer is gone.
    Failed,
}

/// The writing side of a connection's socket.
pub(crate) struct SocketWriter {
    pub(super) stream: OwnedWriteHalf,
    pub(super) shard: Arc<Shard>,
    pub(super) backlog: Arc<Backlog>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for SocketWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketWriter").field("stream", &self.stream).finish_non_exhaustive()
    }
}

impl SocketWriter {
    pub(super) fn new(sink: Sink) -> SocketWriter {
        SocketWriter { stream: sink.stream, shard: sink.shard, backlog: sink.backlog, metrics: sink.metrics }
    }

    /// One non-blocking `writev` of the frames at the front of `shared`'s queue; `batch`
    /// is scratch space, empty on return. The caller must own the socket.
    pub(crate) fn write_some(&self, shared: &Shared, batch: &mut Vec<Outgoing>) -> Progress {
        self.write_counted(shared, batch).0
    }

    /// [`SocketWriter::write_some`], with the number of frames the write completed.
    pub(crate) fn write_counted(&self, shared: &Shared, batch: &mut Vec<Outgoing>) -> (Progress, usize) {
        {
            let mut state = lock(&shared.state);
            let count = state.queue.len().min(MAX_IOVECS);
            batch.extend(state.queue.drain(..count));
        }
        if batch.is_empty() {
            return (Progress::Drained, 0);
        }
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        for (slice, outgoing) in slices.iter_mut().zip(batch.iter()) {
            *slice = IoSlice::new(&outgoing.frame.bytes()[outgoing.written..]);
        }
        let mut written = match self.stream.try_write_vectored(&slices[..batch.len()]) {
            Ok(written) => written,
            Err(error) if error.kind() == ErrorKind::WouldBlock => 0,
            Err(error) => {
                tracing::debug!(%error, "write failed");
                let (held, fanned_out) = batch.drain(..).fold((0, 0), |(bytes, frames), o| {
                    (bytes + o.size, frames + usize::from(o.received_at.is_some()))
                });
                shared.budget.add_permits(held);
                self.backlog.remove(fanned_out);
                return (Progress::Failed, 0);
            }
        };
        let mut done = 0;
        // One clock read per `writev`, not per frame.
        let now = std::time::Instant::now();
        let (mut bytes, mut released, mut fanned_out) = (0, 0, 0);
        for outgoing in batch.iter_mut() {
            let left = outgoing.frame.len() - outgoing.written;
            if written < left {
                outgoing.written += written;
                break;
            }
            written -= left;
            done += 1;
            bytes += outgoing.frame.len();
            released += outgoing.size;
            if let Some(received_at) = outgoing.received_at {
                self.metrics
                    .publish_to_write
                    .observe(now.saturating_duration_since(received_at).as_secs_f64());
                fanned_out += 1;
            }
        }
        if done > 0 {
            shared.budget.add_permits(released);
            shared.room.notify_waiters();
            self.backlog.remove(fanned_out);
            self.metrics.messages_out.inc_by(done as u64);
            self.metrics.socket_writes.inc();
            self.metrics.bytes_out.inc_by(bytes as u64);
        }
        if done == batch.len() {
            batch.clear();
            let mut state = lock(&shared.state);
            if state.queue.is_empty() && state.queue.capacity() > 1 {
                // Keep room for one frame (the common case at moderate rates: no
                // allocation per message) and give a burst's memory back.
                state.queue.shrink_to(1);
            }
            return (Progress::Drained, done);
        }
        let mut state = lock(&shared.state);
        for outgoing in batch.drain(done..).rev() {
            state.queue.push_front(outgoing);
        }
        batch.clear();
        (Progress::Blocked, done)
    }

    /// Shuts the socket's sending side (FIN after the last frame).
    pub(super) fn shutdown(&self) {
        if let Err(error) = socket2::SockRef::from(self.stream.as_ref()).shutdown(std::net::Shutdown::Write) {
            tracing::debug!(%error, "shutdown failed");
        }
    }
}
