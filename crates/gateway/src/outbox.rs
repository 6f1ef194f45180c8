//! The bounded outbound queue of one connection, and how a connection is told to close.
//!
//! Every frame for a client (replies, pushes, publications) goes through its [`Outbox`].
//! The queue is bounded twice, by frames and by bytes. When either bound would be
//! exceeded the policy is explicit: the connection is closed with `slow_consumer` (3001,
//! reconnect), the frame is not queued, and the caller is never blocked. That keeps one
//! slow reader from delaying everybody else in a fan-out or growing memory without bound.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

use axum::extract::ws::Message;
use switchboard_protocol::Code;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One frame waiting to be written.
#[derive(Debug)]
pub struct Outgoing {
    /// The WebSocket message (its payload is shared `Bytes`, so cloning is cheap).
    pub message: Message,
    /// Bytes counted against the queue limit.
    pub size: usize,
    /// When this node received the publication, for the publish-to-write histogram.
    pub received_at: Option<Instant>,
}

/// Why and how a connection is being closed.
#[derive(Debug, Clone)]
pub struct CloseRequest {
    /// The code sent in the `disconnect` push and the close frame.
    pub code: Code,
    /// Human-readable reason.
    pub reason: String,
    /// Advised reconnect delay, in milliseconds.
    pub reconnect_after_ms: Option<u64>,
    /// Whether frames already queued are written before the close (graceful shutdown)
    /// or dropped (slow consumer, protocol violation).
    pub flush_queue: bool,
}

/// Close signalling shared by a connection's reader, writer and every outbox handle.
#[derive(Debug, Default)]
pub struct ConnControl {
    cancel: CancellationToken,
    request: Mutex<Option<CloseRequest>>,
}

impl ConnControl {
    /// Asks the connection to close. The first request wins; later ones are ignored.
    pub fn close(&self, request: CloseRequest) {
        let mut slot = self.request.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.is_none() {
            *slot = Some(request);
            self.cancel.cancel();
        }
    }

    /// Resolves when a close was requested.
    pub async fn closed(&self) {
        self.cancel.cancelled().await;
    }

    /// Ends the connection without a close request: the transport is already gone.
    pub fn terminate(&self) {
        self.cancel.cancel();
    }

    /// Whether a close was requested.
    pub fn is_closing(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The close request, once one was made.
    pub fn request(&self) -> Option<CloseRequest> {
        self.request.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

/// A cheap, cloneable handle that queues frames for one connection.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Outgoing>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    control: Arc<ConnControl>,
}

/// The receiving half, owned by the connection's writer.
#[derive(Debug)]
pub struct OutboxReceiver {
    rx: mpsc::Receiver<Outgoing>,
    shared: Arc<Shared>,
}

/// Creates a connection's outbox bounded by `max_frames` and `max_bytes`.
pub fn outbox(max_frames: usize, max_bytes: usize, control: Arc<ConnControl>) -> (Outbox, OutboxReceiver) {
    let (tx, rx) = mpsc::channel(max_frames);
    let shared = Arc::new(Shared { queued_bytes: AtomicUsize::new(0), max_bytes, control });
    (Outbox { tx, shared: shared.clone() }, OutboxReceiver { rx, shared })
}

impl Outbox {
    /// Queues a frame without waiting. Returns `false` when the frame was not queued: the
    /// queue overflowed (the connection is then being closed as a slow consumer) or the
    /// connection is already gone.
    pub fn push(&self, message: Message, received_at: Option<Instant>) -> bool {
        if self.shared.control.is_closing() {
            return false;
        }
        let size = message_size(&message);
        let before = self.shared.queued_bytes.fetch_add(size, Ordering::Relaxed);
        if before + size > self.shared.max_bytes {
            self.shared.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            self.close_as_slow_consumer();
            return false;
        }
        match self.tx.try_send(Outgoing { message, size, received_at }) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared.queued_bytes.fetch_sub(size, Ordering::Relaxed);
                self.close_as_slow_consumer();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// The connection's close signalling.
    pub fn control(&self) -> &Arc<ConnControl> {
        &self.shared.control
    }

    /// Closes the connection as a slow consumer (3001).
    pub fn close_as_slow_consumer(&self) {
        self.shared.control.close(CloseRequest {
            code: Code::SlowConsumer,
            reason: "outbound queue overflow: the client reads too slowly".into(),
            reconnect_after_ms: None,
            flush_queue: false,
        });
    }
}

impl OutboxReceiver {
    /// Receives up to `limit` queued frames into `buf`; returns 0 when every sender is gone.
    pub async fn recv_many(&mut self, buf: &mut Vec<Outgoing>, limit: usize) -> usize {
        self.rx.recv_many(buf, limit).await
    }

    /// Takes a frame that is already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Outgoing> {
        self.rx.try_recv().ok()
    }

    /// Releases the byte budget of frames that were written (or dropped).
    pub fn release(&self, bytes: usize) {
        self.shared.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// Bytes a message counts for against the queue limit.
pub fn message_size(message: &Message) -> usize {
    match message {
        Message::Text(text) => text.len(),
        Message::Binary(bytes) | Message::Ping(bytes) | Message::Pong(bytes) => bytes.len(),
        Message::Close(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_by_bytes_closes_as_slow_consumer() {
        let control = Arc::new(ConnControl::default());
        let (outbox, _rx) = outbox(10, 8, control.clone());
        assert!(outbox.push(Message::Text("12345".into()), None));
        assert!(!outbox.push(Message::Text("12345".into()), None));
        assert!(control.is_closing());
        assert_eq!(control.request().map(|r| r.code), Some(Code::SlowConsumer));
    }

    #[test]
    fn overflow_by_frames_closes_as_slow_consumer() {
        let control = Arc::new(ConnControl::default());
        let (outbox, mut rx) = outbox(1, 1000, control.clone());
        assert!(outbox.push(Message::Text("a".into()), None));
        assert!(!outbox.push(Message::Text("b".into()), None));
        assert_eq!(control.request().map(|r| r.code), Some(Code::SlowConsumer));
        let first = rx.try_recv().expect("first frame stays queued");
        rx.release(first.size);
    }

    #[test]
    fn first_close_request_wins() {
        let control = ConnControl::default();
        let request =
            |code| CloseRequest { code, reason: String::new(), reconnect_after_ms: None, flush_queue: true };
        control.close(request(Code::Shutdown));
        control.close(request(Code::SlowConsumer));
        assert_eq!(control.request().map(|r| r.code), Some(Code::Shutdown));
    }
}
