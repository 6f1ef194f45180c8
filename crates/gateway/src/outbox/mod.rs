//! The bounded outbound queue of one connection, and who writes it to the socket.
//!
//! Every frame for a client (replies, pushes, publications) goes through its [`Outbox`].
//! The queue is bounded twice: by frames (its length) and by bytes (a semaphore of byte
//! permits given back only once a frame is *written* to the socket: a connection never
//! holds more than `limits.outbound_queue_bytes`, plus at most one frame larger than the
//! whole budget, which may pass through an otherwise empty queue).
//!
//! Two ways in, with explicit policies:
//! * [`Outbox::push`] never waits. The hub uses it for live fan-out. When either bound
//!   would be exceeded the connection is closed with `slow_consumer` (3001, reconnect),
//!   the frame is not queued, and the fan-out moves on to the next subscriber.
//! * [`Outbox::push_waiting`] waits for room, up to a timeout, then closes the same way.
//!   The session uses it for large replies (history) and recovery bursts, which are
//!   bounded by configuration but may exceed the queue: they flow as fast as the client
//!   reads instead of being refused.
//!
//! **Who writes.** A connection's queued frames are written by a *flusher* ([`shard`]):
//! one task per runtime worker serves every connection assigned to it, so a publication
//! to a thousand idle connections wakes two tasks, not a thousand, and each connection's
//! frames go out in one non-blocking `writev`. Under load the flusher falls behind the
//! fan-out and each `writev` carries several frames (coalescing without a timer). Only
//! when a socket is full does the connection's own writer task take over and wait for
//! it to drain (see `session::writer`). Exactly one party writes at a time: [`Owner`]
//! says which.

pub mod backlog;
mod control;
pub mod shard;
mod write;

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use tokio::{
    net::tcp::OwnedWriteHalf,
    sync::{Notify, Semaphore, TryAcquireError},
};

pub use control::{CloseRequest, ConnControl, SessionCommand, SESSION_COMMAND_CAPACITY};
pub(crate) use write::{Progress, SocketWriter};

use crate::{
    metrics::Metrics,
    transport::{deflate::Deflate, frame::WireFrame},
};

/// One frame waiting to be written.
#[derive(Debug)]
pub struct Outgoing {
    /// The frame (shared `Bytes`, so cloning is cheap).
    pub frame: WireFrame,
    /// Byte permits held by this frame, given back once it is written.
    pub size: usize,
    /// When this node received the publication, for the publish-to-write histogram.
    pub received_at: Option<Instant>,
    /// Bytes of the frame the socket already took (a frame written in part).
    written: usize,
}

/// Who writes a connection's queue to its socket right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// Nobody: the queue is empty (or it has no socket and nothing asked for it).
    Idle,
    /// The connection's flusher shard: it is in the shard's list or being written.
    Shard,
    /// The connection's writer task: the socket was full, or the connection closes.
    Task,
}

#[derive(Debug)]
struct State {
    queue: VecDeque<Outgoing>,
    owner: Owner,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A cheap, cloneable handle that queues frames for one connection.
#[derive(Debug, Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
}

/// The connection's queue, its bounds and its socket.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Wakes the writer task: it owns the socket now, or the connection closes.
    ready: Notify,
    /// Woken when frames left the queue (waiting pushes wait on it).
    room: Notify,
    budget: Semaphore,
    max_bytes: usize,
    max_frames: usize,
    control: Arc<ConnControl>,
    /// Unset while frames stay queued for an [`OutboxReceiver`]: in unit tests, and for
    /// an HTTP long-polling connection until it upgrades to a WebSocket.
    socket: OnceLock<SocketWriter>,
    /// The node's fan-out backlog, which queued publication frames count in (`None` in
    /// unit tests).
    backlog: Option<Arc<backlog::Backlog>>,
    /// Set when the connection negotiated `permessage-deflate`: the hub then queues
    /// large publications' compressed frames. Set once the outbox writes to that
    /// WebSocket (a polling connection gets it when it upgrades: compressed frames must
    /// never go out in a poll's answer).
    deflate: OnceLock<Deflate>,
}

/// Where a connection's frames go.
pub(crate) struct Sink {
    /// The socket's write half.
    pub stream: OwnedWriteHalf,
    /// The flusher shard that serves this connection.
    pub shard: Arc<shard::Shard>,
    /// Counters of written frames.
    pub metrics: Arc<Metrics>,
    /// The node's fan-out backlog (publication frames leave it once written or dropped).
    pub backlog: Arc<backlog::Backlog>,
}

/// Creates a connection's outbox bounded by `max_frames` frames and `max_bytes` bytes,
/// writing to `sink`.
pub(crate) fn connect(
    max_frames: usize,
    max_bytes: usize,
    control: Arc<ConnControl>,
    sink: Sink,
    deflate: Option<Deflate>,
) -> (Outbox, Writer) {
    let backlog = Some(sink.backlog.clone());
    let shared = Arc::new(Shared::new(max_frames, max_bytes, control, backlog));
    if let Some(deflate) = deflate {
        let _ = shared.deflate.set(deflate);
    }
    let _ = shared.socket.set(SocketWriter::new(sink));
    (Outbox { shared: shared.clone() }, Writer { shared })
}

/// Creates an outbox with no socket: frames stay queued for the returned receiver (unit
/// tests of the queue and the hub).
pub fn outbox(max_frames: usize, max_bytes: usize, control: Arc<ConnControl>) -> (Outbox, OutboxReceiver) {
    let shared = Arc::new(Shared::new(max_frames, max_bytes, control, None));
    (Outbox { shared: shared.clone() }, OutboxReceiver { shared })
}

/// [`outbox`] for a connection that negotiated `permessage-deflate` (hub unit tests).
#[cfg(test)]
pub(crate) fn outbox_deflated(max_frames: usize, deflate: Deflate) -> (Outbox, OutboxReceiver) {
    let shared = Arc::new(Shared::new(max_frames, 1 << 20, Arc::new(ConnControl::default()), None));
    let _ = shared.deflate.set(deflate);
    (Outbox { shared: shared.clone() }, OutboxReceiver { shared })
}

/// Creates the outbox of an HTTP long-polling connection: frames stay queued for the
/// receiver (each poll takes them) until [`Outbox::attach`] gives it a WebSocket.
pub(crate) fn detached(
    max_frames: usize,
    max_bytes: usize,
    control: Arc<ConnControl>,
    backlog: Arc<backlog::Backlog>,
) -> (Outbox, OutboxReceiver) {
    let shared = Arc::new(Shared::new(max_frames, max_bytes, control, Some(backlog)));
    (Outbox { shared: shared.clone() }, OutboxReceiver { shared })
}

impl Shared {
    fn new(
        max_frames: usize,
        max_bytes: usize,
        control: Arc<ConnControl>,
        backlog: Option<Arc<backlog::Backlog>>,
    ) -> Shared {
        let max_bytes = max_bytes.min(Semaphore::MAX_PERMITS).min(u32::MAX as usize);
        Shared {
            state: Mutex::new(State { queue: VecDeque::new(), owner: Owner::Idle }),
            ready: Notify::new(),
            room: Notify::new(),
            budget: Semaphore::new(max_bytes),
            max_bytes,
            max_frames: max_frames.max(1),
            control,
            socket: OnceLock::new(),
            backlog,
            deflate: OnceLock::new(),
        }
    }

    /// Gives the socket to the writer task and wakes it.
    fn hand_to_task(&self) {
        lock(&self.state).owner = Owner::Task;
        self.ready.notify_one();
    }

    /// After a flusher's or an inline write: a full socket goes to the writer task, a
    /// broken one too (the connection ends), and a drained one as [`Shared::settle`] says.
    fn after_write(self: &Arc<Self>, progress: Progress) {
        match progress {
            Progress::Drained => self.settle(),
            Progress::Blocked => self.hand_to_task(),
            Progress::Failed => {
                self.control.terminate();
                self.hand_to_task();
            }
        }
    }

    /// After a flusher or an inline write drained what it took: the socket goes to the
    /// writer task if the connection closes (it waits for exactly that), to nobody if the
    /// queue is empty, and back to the shard otherwise (frames arrived meanwhile).
    fn settle(self: &Arc<Self>) {
        let next = {
            let mut state = lock(&self.state);
            state.owner = if self.control.is_closing() {
                Owner::Task
            } else if state.queue.is_empty() {
                Owner::Idle
            } else {
                Owner::Shard
            };
            state.owner
        };
        match (next, self.socket.get()) {
            (Owner::Task, _) => self.ready.notify_one(),
            (Owner::Shard, Some(socket)) => socket.shard.schedule(self.clone()),
            _ => {}
        }
    }
}

impl Drop for Shared {
    /// Frames still queued when the connection is gone leave the node's backlog.
    fn drop(&mut self) {
        if let Some(backlog) = &self.backlog {
            let state = self.state.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
            backlog.remove(state.queue.iter().filter(|o| o.received_at.is_some()).count());
        }
    }
}

impl Shared {
    /// See [`Writer::discard_queue`].
    fn discard_queue(&self) {
        let (released, fanned_out) = {
            let mut state = lock(&self.state);
            let keep = usize::from(state.queue.front().is_some_and(|o| o.written > 0));
            state.queue.drain(keep..).fold((0, 0), |(bytes, frames), o| {
                (bytes + o.size, frames + usize::from(o.received_at.is_some()))
            })
        };
        self.budget.add_permits(released);
        if let Some(backlog) = &self.backlog {
            backlog.remove(fanned_out);
        }
        self.room.notify_waiters();
    }
}

/// Why a frame was not queued.
enum Refused {
    Full,
    Closing,
}

impl Outbox {
    /// The connection's `permessage-deflate`, when it negotiated it.
    pub fn deflate(&self) -> Option<Deflate> {
        self.shared.deflate.get().copied()
    }

    /// Queues a frame without waiting. Returns `false` when the frame was not queued: the
    /// queue is full (the connection is then closed as a slow consumer) or the connection
    /// is already closing.
    pub fn push(&self, frame: WireFrame, received_at: Option<Instant>) -> bool {
        self.push_with(frame, received_at, false)
    }

    /// Queues a frame like [`Outbox::push`] and, when nobody is writing, writes it at once
    /// from the calling task. For a session's replies and pushes: the session is already
    /// running, and a flusher would write the reply only after the connections listed
    /// before it (a publisher's reply behind its own publication's fan-out).
    pub fn push_now(&self, frame: WireFrame) -> bool {
        self.push_with(frame, None, true)
    }

    fn push_with(&self, frame: WireFrame, received_at: Option<Instant>, inline: bool) -> bool {
        let cost = self.cost(&frame);
        match self.shared.budget.try_acquire_many(cost as u32) {
            Ok(permits) => permits.forget(),
            Err(TryAcquireError::NoPermits) => {
                self.close_as_slow_consumer();
                return false;
            }
            Err(TryAcquireError::Closed) => return false,
        }
        match self.enqueue_as(Outgoing { frame, size: cost, received_at, written: 0 }, !inline) {
            Ok(took) => {
                if let (true, Some(socket)) = (inline && took, self.shared.socket.get()) {
                    let progress = socket.write_some(&self.shared, &mut Vec::new());
                    self.shared.after_write(progress);
                }
                true
            }
            Err((refused, outgoing)) => {
                self.shared.budget.add_permits(outgoing.size);
                if matches!(refused, Refused::Full) {
                    self.close_as_slow_consumer();
                }
                false
            }
        }
    }

    /// Queues a frame, waiting up to `timeout` for room. Returns `false` when it was not
    /// queued: the wait timed out (the connection is then closed as a slow consumer) or
    /// the connection is closing.
    pub async fn push_waiting(&self, frame: WireFrame, timeout: Duration) -> bool {
        let cost = self.cost(&frame);
        let queued = async {
            let permits = self.shared.budget.acquire_many(cost as u32).await.ok()?;
            permits.forget();
            let mut outgoing = Outgoing { frame, size: cost, received_at: None, written: 0 };
            loop {
                let room = self.shared.room.notified();
                match self.enqueue(outgoing) {
                    Ok(()) => return Some(()),
                    Err((Refused::Closing, rejected)) => {
                        self.shared.budget.add_permits(rejected.size);
                        return None;
                    }
                    Err((Refused::Full, rejected)) => {
                        // Keep the byte permits and wait until the writer takes frames.
                        outgoing = rejected;
                        room.await;
                    }
                }
            }
        };
        tokio::select! {
            biased;
            () = self.shared.control.closed() => false,
            result = tokio::time::timeout(timeout, queued) => match result {
                Ok(queued) => queued.is_some(),
                Err(_) => {
                    self.close_as_slow_consumer();
                    false
                }
            },
        }
    }

    /// Appends a frame unless the connection is closing or the frame bound is reached (a
    /// refused frame is handed back), and makes sure someone will write it: the
    /// connection's flusher shard when nobody is writing yet.
    fn enqueue(&self, outgoing: Outgoing) -> Result<(), (Refused, Outgoing)> {
        self.enqueue_as(outgoing, true).map(|_| ())
    }

    /// [`Outbox::enqueue`]; when nobody was writing, the socket goes to the shard, which
    /// is told when `schedule` (otherwise the caller writes at once). Returns whether the
    /// socket was taken for the caller's frame.
    fn enqueue_as(&self, outgoing: Outgoing, schedule: bool) -> Result<bool, (Refused, Outgoing)> {
        if self.shared.control.is_closing() {
            return Err((Refused::Closing, outgoing));
        }
        let took = {
            let mut state = lock(&self.shared.state);
            if state.queue.len() >= self.shared.max_frames {
                return Err((Refused::Full, outgoing));
            }
            state.queue.push_back(outgoing);
            let idle = state.owner == Owner::Idle;
            let socket = self.shared.socket.get();
            if idle {
                state.owner = if socket.is_some() { Owner::Shard } else { Owner::Task };
            }
            (idle, socket)
        };
        let (took, socket) = took;
        match socket {
            Some(socket) if took && schedule => socket.shard.schedule(self.shared.clone()),
            None if took => self.shared.ready.notify_one(),
            _ => {}
        }
        Ok(took && socket.is_some())
    }

    /// Gives a long-polling connection its WebSocket (after an Engine.IO upgrade): frames
    /// still queued, and every later one, go to the socket. The caller must have stopped
    /// taking frames with the [`OutboxReceiver`]; `deflate` is what the WebSocket
    /// negotiated. Returns the writer task's handle.
    pub(crate) fn attach(&self, sink: Sink, deflate: Option<Deflate>) -> Writer {
        if self.shared.socket.set(SocketWriter::new(sink)).is_err() {
            tracing::error!("a connection's outbox was given a second socket");
        }
        if let Some(deflate) = deflate {
            // After the socket: from here on nothing is taken by a poll.
            let _ = self.shared.deflate.set(deflate);
        }
        let schedule = {
            let mut state = lock(&self.shared.state);
            if state.owner != Owner::Shard {
                state.owner = if state.queue.is_empty() { Owner::Idle } else { Owner::Shard };
            }
            state.owner == Owner::Shard
        };
        if let (true, Some(socket)) = (schedule, self.shared.socket.get()) {
            socket.shard.schedule(self.shared.clone());
        }
        Writer { shared: self.shared.clone() }
    }

    /// The connection's close signalling.
    pub fn control(&self) -> &Arc<ConnControl> {
        &self.shared.control
    }

    /// Queues a frame past the closing check (the close sequence of a polling
    /// connection, whose polls take it).
    pub(crate) fn push_final(&self, frame: WireFrame) {
        lock(&self.shared.state).queue.push_back(Outgoing { frame, size: 0, received_at: None, written: 0 });
        self.shared.ready.notify_one();
    }

    /// Whether nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        lock(&self.shared.state).queue.is_empty()
    }

    /// Drops every queued frame (a polling connection's close that does not flush).
    pub(crate) fn discard(&self) {
        self.shared.discard_queue();
    }

    /// Closes the connection as a slow consumer (3001).
    pub fn close_as_slow_consumer(&self) {
        self.shared.control.close_as_slow_consumer();
    }

    /// Byte permits a frame takes: its size, capped at the whole budget so that one frame
    /// larger than the budget can still go through an otherwise empty queue.
    fn cost(&self, frame: &WireFrame) -> usize {
        frame.len().min(self.shared.max_bytes)
    }
}

/// The writer task's handle on its connection's queue and socket.
#[derive(Debug)]
pub(crate) struct Writer {
    shared: Arc<Shared>,
}

impl Writer {
    /// Waits until the writer task owns the socket (the flusher found it full, or handed
    /// it over because the connection closes).
    pub(crate) async fn owned(&self) {
        loop {
            let ready = self.shared.ready.notified();
            if lock(&self.shared.state).owner == Owner::Task {
                return;
            }
            ready.await;
        }
    }

    /// Takes the socket for the close sequence: waits until the flusher is done with it.
    pub(crate) async fn take(&self) {
        loop {
            let ready = self.shared.ready.notified();
            {
                let mut state = lock(&self.shared.state);
                if state.owner != Owner::Shard {
                    state.owner = Owner::Task;
                    return;
                }
            }
            ready.await;
        }
    }

    /// Writes without waiting while the task owns the socket; see [`SocketWriter::write_some`].
    pub(crate) fn write_some(&self, batch: &mut Vec<Outgoing>) -> Progress {
        match self.shared.socket.get() {
            Some(socket) => socket.write_some(&self.shared, batch),
            None => Progress::Failed,
        }
    }

    /// Gives the socket back: to nobody when the queue is empty, otherwise to the shard
    /// (kept when the connection closes).
    pub(crate) fn release(&self) {
        self.shared.settle();
    }

    /// Waits until the socket can take more bytes.
    ///
    /// # Errors
    /// When the socket failed.
    pub(crate) async fn writable(&self) -> std::io::Result<()> {
        match self.shared.socket.get() {
            Some(socket) => socket.stream.writable().await,
            None => std::future::pending().await,
        }
    }

    /// Drops every queued frame (a close that does not flush), except a frame the socket
    /// already took in part: it must be completed, or the close frame would land inside it.
    pub(crate) fn discard_queue(&self) {
        self.shared.discard_queue();
    }

    /// Queues the final frames (disconnect push, close frame) past the closing check.
    pub(crate) fn push_final(&self, frame: WireFrame) {
        // No byte permits: the close sequence writes a bounded number of small frames.
        lock(&self.shared.state).queue.push_back(Outgoing { frame, size: 0, received_at: None, written: 0 });
    }

    /// Whether nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        lock(&self.shared.state).queue.is_empty()
    }

    /// Sends FIN: the client sees the end of the stream after the close frame.
    pub(crate) fn shutdown(&self) {
        if let Some(socket) = self.shared.socket.get() {
            socket.shutdown();
        }
    }
}

/// The receiving half of a socket-less outbox: unit tests, and the polls of an HTTP
/// long-polling connection.
#[derive(Debug)]
pub struct OutboxReceiver {
    shared: Arc<Shared>,
}

impl OutboxReceiver {
    /// Waits for queued frames and moves up to `limit` of them into `buf`; returns how
    /// many (never 0).
    pub async fn recv_many(&mut self, buf: &mut Vec<Outgoing>, limit: usize) -> usize {
        loop {
            let ready = self.shared.ready.notified();
            let taken = self.take(buf, limit);
            if taken > 0 {
                return taken;
            }
            ready.await;
        }
    }

    /// Takes a frame that is already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Outgoing> {
        let mut taken = Vec::with_capacity(1);
        self.take(&mut taken, 1);
        taken.pop()
    }

    fn take(&self, buf: &mut Vec<Outgoing>, limit: usize) -> usize {
        let taken = {
            let mut state = lock(&self.shared.state);
            let count = state.queue.len().min(limit);
            buf.extend(state.queue.drain(..count));
            if state.queue.is_empty() {
                state.owner = Owner::Idle;
            }
            count
        };
        if taken > 0 {
            self.shared.room.notify_waiters();
        }
        taken
    }

    /// Gives back the byte permits of frames that were written (or dropped).
    pub fn release(&self, bytes: usize) {
        self.shared.budget.add_permits(bytes);
    }

    /// Takes up to `limit` queued frames without waiting, as sent: their byte permits
    /// are given back and the publications among them leave the node's fan-out backlog.
    pub(crate) fn take_sent(&self, buf: &mut Vec<Outgoing>, limit: usize) -> usize {
        let start = buf.len();
        let taken = self.take(buf, limit);
        let (bytes, fanned_out) = buf[start..].iter().fold((0, 0), |(bytes, frames), o| {
            (bytes + o.size, frames + usize::from(o.received_at.is_some()))
        });
        self.release(bytes);
        if let Some(backlog) = &self.shared.backlog {
            backlog.remove(fanned_out);
        }
        taken
    }

    /// Waits until frames are queued (or returns at once if some are).
    pub(crate) async fn queued(&self) {
        loop {
            let ready = self.shared.ready.notified();
            if !lock(&self.shared.state).queue.is_empty() {
                return;
            }
            ready.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::frame::OpCode;
    use switchboard_protocol::Code;

    fn text(payload: &str) -> WireFrame {
        WireFrame::new(OpCode::Text, payload.as_bytes())
    }

    #[test]
    fn overflow_by_bytes_closes_as_slow_consumer() {
        let control = Arc::new(ConnControl::default());
        let (outbox, _rx) = outbox(10, 8, control.clone());
        assert!(outbox.push(text("12345"), None));
        assert!(!outbox.push(text("12345"), None));
        assert!(control.is_closing());
        assert_eq!(control.request().map(|r| r.code), Some(Code::SlowConsumer));
    }

    #[test]
    fn overflow_by_frames_closes_as_slow_consumer() {
        let control = Arc::new(ConnControl::default());
        let (outbox, mut rx) = outbox(1, 1000, control.clone());
        assert!(outbox.push(text("a"), None));
        assert!(!outbox.push(text("b"), None));
        assert_eq!(control.request().map(|r| r.code), Some(Code::SlowConsumer));
        let first = rx.try_recv().expect("first frame stays queued");
        rx.release(first.size);
    }

    #[tokio::test]
    async fn waiting_push_flows_as_the_writer_drains() {
        let control = Arc::new(ConnControl::default());
        let (outbox, mut rx) = outbox(2, 10, control.clone());
        let writer = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = Vec::new();
            while got < 20 {
                rx.recv_many(&mut buf, 8).await;
                for frame in buf.drain(..) {
                    rx.release(frame.size);
                    got += 1;
                }
            }
        });
        for _ in 0..20 {
            assert!(outbox.push_waiting(text("123456"), Duration::from_secs(5)).await);
        }
        writer.await.expect("writer");
        assert!(!control.is_closing());
        // A frame larger than the whole budget still goes through.
        let (outbox, _rx) = super::outbox(2, 10, Arc::new(ConnControl::default()));
        assert!(outbox.push_waiting(text(&"x".repeat(100)), Duration::from_secs(1)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_push_times_out_as_slow_consumer() {
        let control = Arc::new(ConnControl::default());
        let (outbox, _rx) = outbox(10, 8, control.clone());
        assert!(outbox.push(text("12345678"), None));
        assert!(!outbox.push_waiting(text("1"), Duration::from_secs(1)).await);
        assert_eq!(control.request().map(|r| r.code), Some(Code::SlowConsumer));
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
