//! Engine.IO's HTTP long-polling transport (docs/socketio.md), and its upgrade to a
//! WebSocket.
//!
//! A polling connection is a session like any other; only its transport differs. Its
//! outbox has no socket: a `GET` takes what is queued (or waits until something is: the
//! session's Engine.IO ping ends an idle poll), and a `POST` hands the packets of its body
//! to the session as if they had come in WebSocket frames. At most one `GET` and one
//! `POST` may be in flight; an overlapping one closes the session, as Engine.IO requires.
//!
//! The upgrade: the client opens a WebSocket naming the session (`sid`), sends `2probe`
//! (answered `3probe` on that socket), then `5`. From the probe on, a waiting `GET` is
//! answered with a `noop` so the client stops polling; at `5` the socket is handed to the
//! session, whose outbox then writes to it like any WebSocket connection's.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use dashmap::DashMap;
use switchboard_protocol::{socketio, Code};
use tokio::{
    io::AsyncWriteExt,
    net::tcp::OwnedWriteHalf,
    sync::{mpsc, oneshot},
};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::{deflate::Deflate, inbound::Inbound};
use crate::outbox::{CloseRequest, ConnControl, Outbox, OutboxReceiver};

/// Packets of `POST` bodies waiting for the session, at most.
const PACKET_QUEUE: usize = 64;
/// How long the WebSocket upgrade's probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The WebSocket a polling session upgrades to.
pub(crate) struct Handoff {
    /// Its incoming messages.
    pub inbound: Inbound,
    /// Its sending half (the session's outbox writes to it from now on).
    pub write: OwnedWriteHalf,
    /// What the WebSocket negotiated: `permessage-deflate`, or nothing.
    pub deflate: Option<Deflate>,
}

/// Why a poll or a post was refused; the HTTP layer maps each to Engine.IO's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PollingError {
    /// No such session on this node (or it ended).
    #[error("Session ID unknown")]
    UnknownSession,
    /// A second `GET` (or `POST`) while one is in flight: the session is closed.
    #[error("overlapping request: the session is closed")]
    Overlap,
    /// The session moved to a WebSocket: polling is over.
    #[error("the session was upgraded to a WebSocket")]
    Upgraded,
}

/// One long-polling connection, shared by its session and the HTTP handlers.
pub(crate) struct PollingSession {
    /// The Engine.IO session id (the connection's client id).
    pub sid: String,
    packets: mpsc::Sender<Message>,
    receiver: tokio::sync::Mutex<OutboxReceiver>,
    posting: tokio::sync::Mutex<()>,
    outbox: Outbox,
    handoff: Mutex<Option<oneshot::Sender<Handoff>>>,
    /// Cancelled once a WebSocket probe succeeded: polls answer `noop` from then on.
    upgrading: CancellationToken,
    /// Set once the socket was handed to the session: polling is over.
    upgraded: std::sync::atomic::AtomicBool,
}

/// What the session keeps of its polling transport.
pub(crate) struct PollingInput {
    /// Packets of `POST` bodies.
    pub packets: mpsc::Receiver<Message>,
    /// The WebSocket, once the client upgraded.
    pub handoff: oneshot::Receiver<Handoff>,
}

impl PollingSession {
    /// A polling session over `outbox` (whose frames stay queued for `receiver`).
    pub(crate) fn new(
        sid: String,
        outbox: Outbox,
        receiver: OutboxReceiver,
    ) -> (Arc<PollingSession>, PollingInput) {
        let (packets, packets_rx) = mpsc::channel(PACKET_QUEUE);
        let (handoff, handoff_rx) = oneshot::channel();
        let session = Arc::new(PollingSession {
            sid,
            packets,
            receiver: tokio::sync::Mutex::new(receiver),
            posting: tokio::sync::Mutex::new(()),
            outbox,
            handoff: Mutex::new(Some(handoff)),
            upgrading: CancellationToken::new(),
            upgraded: Default::default(),
        });
        (session, PollingInput { packets: packets_rx, handoff: handoff_rx })
    }

    fn control(&self) -> &Arc<ConnControl> {
        self.outbox.control()
    }

    /// Closes the session for a protocol violation of its transport.
    fn violate(&self, reason: &str) {
        self.control().close(CloseRequest {
            code: Code::ProtocolError,
            reason: reason.to_string(),
            reconnect_after_ms: None,
            flush_queue: false,
        });
    }

    /// A `GET`: the packets queued for the client, at most `max_packets` and about
    /// `max_bytes`, joined as an Engine.IO payload; waits until there is one. Answers
    /// `6` (noop) when the session is upgrading, and ends with `1` (close) when the
    /// session closed.
    ///
    /// # Errors
    /// [`PollingError`]: an overlapping `GET`, or an upgraded session.
    pub(crate) async fn poll(
        &self,
        max_packets: usize,
        max_bytes: usize,
        metrics: &crate::metrics::Metrics,
    ) -> Result<String, PollingError> {
        let Ok(receiver) = self.receiver.try_lock() else {
            self.violate("overlapping GET requests");
            return Err(PollingError::Overlap);
        };
        if self.is_upgraded() {
            return Err(PollingError::Upgraded);
        }
        tokio::select! {
            () = receiver.queued() => {}
            () = self.upgrading.cancelled() => return Ok(socketio::EnginePacket::Noop.encode()),
        }
        let mut frames = Vec::new();
        let mut packets: Vec<String> = Vec::new();
        let mut bytes = 0;
        while packets.len() < max_packets && bytes < max_bytes {
            if receiver.take_sent(&mut frames, 1) == 0 {
                break;
            }
            for outgoing in frames.drain(..) {
                let frame = &outgoing.frame;
                if frame.is_close() {
                    packets.push(socketio::EnginePacket::Close.encode());
                } else if frame.is_text() {
                    let text = String::from_utf8_lossy(frame.payload()).into_owned();
                    bytes += text.len();
                    packets.push(text);
                }
                // Other frames (WebSocket control frames) mean nothing over HTTP.
            }
        }
        let payload = socketio::join_payload(packets.iter().map(String::as_str));
        metrics.messages_out.inc_by(packets.len() as u64);
        metrics.bytes_out.inc_by(payload.len() as u64);
        Ok(payload)
    }

    /// A `POST`: hands the packets of `body` to the session, in order.
    ///
    /// # Errors
    /// [`PollingError`]: an overlapping `POST`, an upgraded or ended session.
    pub(crate) async fn post(&self, body: &str) -> Result<(), PollingError> {
        let Ok(_posting) = self.posting.try_lock() else {
            self.violate("overlapping POST requests");
            return Err(PollingError::Overlap);
        };
        // During the probe the client still posts (it finishes its writes before it
        // sends `5`); only a completed upgrade ends polling.
        if self.is_upgraded() {
            return Err(PollingError::Upgraded);
        }
        for packet in socketio::split_payload(body) {
            // Binary packets (`b<base64>`) only carry attachments, which are refused:
            // the session needs to know that one came, not its bytes.
            let message = match packet.strip_prefix('b') {
                Some(_) => Message::Binary(Default::default()),
                None => Message::Text(packet.into()),
            };
            if self.packets.send(message).await.is_err() {
                return Err(PollingError::UnknownSession);
            }
        }
        Ok(())
    }

    /// Runs the upgrade's probe on a new WebSocket and, when the client completes it with
    /// `5`, hands the socket to the session. A failed probe leaves the session polling.
    pub(crate) async fn upgrade(
        &self,
        mut inbound: Inbound,
        mut write: OwnedWriteHalf,
        deflate: Option<Deflate>,
    ) {
        if next_text(&mut inbound).await.as_deref() != Some("2probe") {
            tracing::debug!(sid = %self.sid, "WebSocket upgrade without a probe");
            return;
        }
        let answer = crate::wire::text(socketio::EnginePacket::Pong("probe").encode());
        if write.write_all(answer.bytes()).await.is_err() {
            return;
        }
        // The client stops polling once its waiting GET is answered.
        self.upgrading.cancel();
        if next_text(&mut inbound).await.as_deref() != Some("5") {
            self.violate("the WebSocket upgrade was not completed");
            return;
        }
        let handoff = self.handoff.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.upgraded.store(true, std::sync::atomic::Ordering::Release);
        if let Some(handoff) = handoff {
            let _ = handoff.send(Handoff { inbound, write, deflate });
        }
    }

    fn is_upgraded(&self) -> bool {
        self.upgraded.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The session's outbox (for the WebSocket library's own writes during the probe).
    pub(crate) fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Resolves once a poll took every queued frame.
    pub(crate) async fn drained(&self) {
        while !self.outbox.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The next message of a WebSocket being upgraded, if it is a text frame that comes in time.
async fn next_text(inbound: &mut Inbound) -> Option<tokio_tungstenite::tungstenite::Utf8Bytes> {
    use futures_util::StreamExt;
    match tokio::time::timeout(PROBE_TIMEOUT, inbound.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => Some(text),
        _ => None,
    }
}

/// The node's polling sessions, by session id.
#[derive(Default)]
pub struct PollingSessions {
    sessions: DashMap<String, Arc<PollingSession>>,
}

impl PollingSessions {
    pub(crate) fn insert(&self, session: Arc<PollingSession>) {
        self.sessions.insert(session.sid.clone(), session);
    }

    pub(crate) fn get(&self, sid: &str) -> Option<Arc<PollingSession>> {
        self.sessions.get(sid).map(|entry| entry.clone())
    }

    pub(crate) fn remove(&self, sid: &str) {
        self.sessions.remove(sid);
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}
