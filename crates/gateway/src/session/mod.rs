//! One WebSocket connection: a reader loop (this module) and a writer task (`writer`).
//!
//! The reader decodes commands and answers them through the connection's outbox, one
//! command at a time, so replies come back in command order. It also runs the
//! connection's timers: the authentication deadline, heartbeat pings and their timeout,
//! and token expiry (a `refresh` push before `exp`, a disconnect after the grace period).
//! On exit it leaves every channel through the node's subscription lifecycle (hub,
//! broker interest, presence) and removes the connection from the node's counters.

mod commands;
mod hooks;
mod rpc;
mod socketio;
mod writer;

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use futures_util::StreamExt;
use rand::Rng;
use switchboard_protocol::{
    codec,
    push::{Push, RefreshNeeded, Unsubscribed},
    Code, Encoding, ErrorBody,
};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, protocol::WebSocketConfig, Message};
use tracing::Instrument;

use crate::{
    auth::{unix_now, Claims},
    broker::LifecycleEvent,
    channel::{personal_channel, Namespace},
    error::CommandError,
    hub::ConnId,
    node::Node,
    outbox::{self, CloseRequest, ConnControl, Outbox, SessionCommand},
    ratelimit::TokenBucket,
    transport::{
        deflate::{Deflate, InflateError},
        frame::WireFrame,
        handshake::Upgraded,
        inbound::{inbound, Inbound},
        polling::{Handoff, PollingInput, PollingSession},
    },
    wire::Wire,
};

/// Serves one upgraded WebSocket until it closes.
pub(crate) async fn run(
    node: Arc<Node>,
    socket: Upgraded,
    wire: Wire,
    deflate: Option<Deflate>,
    bearer: Option<String>,
    hook_context: Option<Box<serde_json::Value>>,
    remote: SocketAddr,
) {
    let conn = node.next_conn_id();
    let client_id = format!("{}-{conn}", node.id);
    let span = connection_span(&client_id, remote, wire);
    async move {
        let control = Arc::new(ConnControl::default());
        let limits = &node.config.limits;
        let Upgraded { stream, prefix } = socket;
        let (read, write) = stream.into_split();
        let (outbox, socket_writer) = outbox::connect(
            limits.outbound_queue_frames,
            limits.outbound_queue_bytes,
            control.clone(),
            sink(&node, conn, write),
            deflate,
        );
        let inflate = deflate.map(|_| limits.max_message_bytes);
        let stream = inbound(read, &prefix, outbox.clone(), read_config(&node), inflate).await;
        // Even empty, it can share the HTTP server's whole read buffer: not for the
        // connection's lifetime.
        drop(prefix);
        let stall_timeout = Duration::from_millis(limits.outbound_wait_ms);
        let writer = tokio::spawn(writer::run(socket_writer, control.clone(), wire, stall_timeout));
        let connection = Connection { conn, client_id, wire, outbox, control, bearer, hook_context };
        serve(node, connection, Input::WebSocket(stream), Some(writer), None).await;
    }
    .instrument(span)
    .await;
}

/// Starts a Socket.IO session on HTTP long-polling (its first poll gets the Engine.IO
/// open packet) and registers it with the node; it ends like any session, and its
/// closing packets wait for one last poll.
pub(crate) fn start_polling(
    node: Arc<Node>,
    bearer: Option<String>,
    hook_context: Option<Box<serde_json::Value>>,
    remote: SocketAddr,
) -> Arc<PollingSession> {
    let conn = node.next_conn_id();
    let client_id = format!("{}-{conn}", node.id);
    let wire = Wire::SocketIo(crate::wire::SioNamespace::ROOT);
    let span = connection_span(&client_id, remote, wire);
    let control = Arc::new(ConnControl::default());
    let limits = &node.config.limits;
    let (outbox, receiver) = outbox::detached(
        limits.outbound_queue_frames,
        limits.outbound_queue_bytes,
        control.clone(),
        node.backlog.clone(),
    );
    let (polling, input) = PollingSession::new(client_id.clone(), outbox.clone(), receiver);
    node.polling.insert(polling.clone());
    let connection = Connection { conn, client_id, wire, outbox, control, bearer, hook_context };
    let tracker = node.sessions.clone();
    let session = polling.clone();
    tokio::spawn(
        tracker.track_future(
            async move {
                let sid = session.sid.clone();
                serve(node.clone(), connection, Input::Polling(input), None, Some(session)).await;
                node.polling.remove(&sid);
            }
            .instrument(span),
        ),
    );
    polling
}

/// A debug span: at info level every connection would carry ~0.7 KiB of span data.
fn connection_span(client_id: &str, remote: SocketAddr, wire: Wire) -> tracing::Span {
    tracing::debug_span!("conn", conn = %client_id, %remote, wire = wire.name(), user = tracing::field::Empty)
}

/// Where a connection's outbox writes once it has a socket.
fn sink(node: &Node, conn: ConnId, write: tokio::net::tcp::OwnedWriteHalf) -> outbox::Sink {
    outbox::Sink {
        stream: write,
        shard: node.flushers.shard_of(conn),
        metrics: node.metrics.clone(),
        backlog: node.backlog.clone(),
    }
}

/// What a session starts from, whatever its transport.
struct Connection {
    conn: ConnId,
    client_id: String,
    wire: Wire,
    outbox: Outbox,
    control: Arc<ConnControl>,
    bearer: Option<String>,
    hook_context: Option<Box<serde_json::Value>>,
}

/// Runs a connection's session until it ends, then its close sequence: the writer task
/// writes the closing frames to a WebSocket; a polling connection queues them for its
/// last poll.
async fn serve(
    node: Arc<Node>,
    connection: Connection,
    mut input: Input,
    writer: Option<tokio::task::JoinHandle<()>>,
    polling: Option<Arc<PollingSession>>,
) {
    let Connection { conn, client_id, wire, outbox, control, bearer, hook_context } = connection;
    let metrics = node.metrics.clone();
    metrics.connections_total.inc();
    let mut writer = writer;
    if node.try_add_connection() {
        metrics.connections.inc();
        let by_protocol = metrics.protocol_connections.with_label_values(&[wire.name()]);
        by_protocol.inc();
        let mut session =
            Session::new(node.clone(), conn, client_id, wire, outbox.clone(), control.clone(), bearer);
        session.hook_context = hook_context;
        session.polling = polling.clone();
        if let Wire::SocketIo(_) = wire {
            session.socketio_open(polling.is_some());
        }
        session.read_loop(&mut input).await;
        // Boxed, like every command below: an idle connection's task then holds only the
        // read loop's small state, not the largest command's (see docs/BENCHMARKS.md).
        Box::pin(session.cleanup()).await;
        writer = writer.or(session.writer.take());
        metrics.connections.dec();
        by_protocol.dec();
        node.remove_connection();
    } else {
        control.close(CloseRequest {
            code: Code::NodeFull,
            reason: "node is at its connection limit".into(),
            reconnect_after_ms: Some(jitter(&node)),
            flush_queue: false,
        });
    }
    let request = control.request();
    if let Some(request) = &request {
        metrics.disconnects.with_label_values(&[request.code.slug()]).inc();
        if request.code == Code::SlowConsumer {
            metrics.slow_consumers.inc();
        }
        tracing::debug!(code = %request.code, reason = %request.reason, "closing");
    }
    let grace = Duration::from_millis(node.config.node.shutdown_timeout_ms);
    // Boxed too: the close sequence's timers and a polling client's upgrade hand-off
    // would otherwise size every connection's task, idle ones included (0.35 KiB per
    // connection when this block was added inline; docs/BENCHMARKS.md).
    Box::pin(async move {
        match (writer, polling) {
            (Some(writer), _) => {
                if tokio::time::timeout(grace, writer).await.is_err() {
                    tracing::warn!("writer did not finish in time");
                }
            }
            (None, Some(polling)) => {
                // Still polling: the closing packets go to the client's next poll.
                if let Some(request) = &request {
                    if !request.flush_queue {
                        outbox.discard();
                    }
                    for frame in writer::final_frames(writer::closing_wire(wire, &control), request) {
                        outbox.push_final(frame);
                    }
                    // The client may be upgrading right now (it stopped polling after the
                    // probe): then the closing packets go out on its new WebSocket.
                    let upgraded = async {
                        match &mut input {
                            Input::Polling(polling) if !polling.handoff.is_terminated() => {
                                (&mut polling.handoff).await.ok()
                            }
                            _ => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        () = polling.drained() => {}
                        handoff = upgraded => {
                            if let Some(Handoff { inbound, write, .. }) = handoff {
                                drop(inbound);
                                writer::flush_and_close(outbox.attach(sink(&node, conn, write), None)).await;
                            }
                        }
                        () = tokio::time::sleep(grace) => tracing::debug!("closing packets not polled in time"),
                    }
                }
            }
            (None, None) => {}
        }
    })
    .await;
}

/// Why a compressed message could not be read, when that is what `error` is.
fn inflate_failure(error: &std::io::Error) -> Option<&InflateError> {
    error.get_ref().and_then(|inner| inner.downcast_ref::<InflateError>())
}

/// The WebSocket library's limits for what the client sends.
pub(crate) fn read_config(node: &Node) -> WebSocketConfig {
    let limits = &node.config.limits;
    WebSocketConfig::default()
        .max_message_size(Some(limits.max_message_bytes))
        .max_frame_size(Some(limits.max_message_bytes))
        .read_buffer_size(limits.read_buffer_bytes)
        // It writes only pongs and close replies, through the outbox.
        .write_buffer_size(0)
}

/// A random delay in `[0, shutdown_reconnect_jitter_ms]`, advised to reconnecting clients.
fn jitter(node: &Node) -> u64 {
    rand::rng().random_range(0..=node.config.node.shutdown_reconnect_jitter_ms)
}

/// The authenticated identity of a connection.
pub(crate) struct Identity {
    user: String,
    claims: Claims,
    expires_at: Option<u64>,
    refresh_sent: bool,
}

/// State of one connection, owned by its reader task.
pub(crate) struct Session {
    node: Arc<Node>,
    conn: ConnId,
    client_id: String,
    wire: Wire,
    outbox: Outbox,
    control: Arc<ConnControl>,
    bearer: Option<String>,
    /// Socket.IO only: binary frames still to skip (the attachments of a refused binary
    /// packet).
    socketio: socketio::State,
    /// A long-polling connection's transport, until it upgrades to a WebSocket.
    polling: Option<Arc<PollingSession>>,
    /// The writer task of a polling connection that upgraded.
    writer: Option<tokio::task::JoinHandle<()>>,
    /// The upgrade's headers and address for the connect hook (only when it is on),
    /// dropped at `connect`.
    hook_context: Option<Box<serde_json::Value>>,
    identity: Option<Identity>,
    subscriptions: HashMap<String, Arc<Namespace>>,
    /// Whether the client ended the connection with a close frame (rather than vanishing).
    client_closed: bool,
    /// Bounds the `rpc` calls waiting at once; created on the first call.
    rpc_gate: Option<Arc<tokio::sync::Semaphore>>,
    bucket: TokenBucket,
    started: Instant,
    last_seen: Instant,
    next_ping: Instant,
}

impl Session {
    fn new(
        node: Arc<Node>,
        conn: ConnId,
        client_id: String,
        wire: Wire,
        outbox: Outbox,
        control: Arc<ConnControl>,
        bearer: Option<String>,
    ) -> Session {
        let now = Instant::now();
        let limits = &node.config.limits;
        let bucket = TokenBucket::new(limits.commands_per_second, limits.command_burst);
        let mut session = Session {
            node,
            conn,
            client_id,
            wire,
            outbox,
            control,
            bearer,
            socketio: socketio::State::default(),
            polling: None,
            writer: None,
            hook_context: None,
            identity: None,
            subscriptions: HashMap::new(),
            client_closed: false,
            rpc_gate: None,
            bucket,
            started: now,
            last_seen: now,
            next_ping: now,
        };
        session.next_ping = now + session.ping_interval();
        session
    }

    /// Reads `input` (held by the caller: moved in here, its 300 bytes would be kept twice
    /// in every idle connection's task) until the connection ends.
    async fn read_loop(&mut self, input: &mut Input) {
        let node = self.node.clone();
        let control = self.control.clone();
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                biased;
                () = control.closed() => break,
                () = node.shutdown.cancelled() => {
                    self.close(Code::Shutdown, "node is shutting down", Some(jitter(&node)), true);
                }
                incoming = std::future::poll_fn(|cx| input.poll_next(cx)) => match incoming {
                    Incoming::Ended => break,
                    Incoming::Message(Ok(message)) => self.on_message(message).await,
                    Incoming::Message(Err(error)) => self.on_read_error(&error),
                    Incoming::Upgrade(handoff) => *input = self.upgrade(handoff),
                },
                () = tokio::time::sleep_until(deadline) => self.on_timer(),
                command = control.next_command() => Box::pin(self.on_command(command)).await,
            }
        }
        // If the client went away first, stop the writer too.
        control.terminate();
    }

    /// Moves a polling connection to the WebSocket it upgraded to: the outbox writes to
    /// the socket from now on (what is queued first), through the flushers and a writer
    /// task like any WebSocket connection's.
    fn upgrade(&mut self, handoff: Box<Handoff>) -> Input {
        let Handoff { inbound, write, deflate } = *handoff;
        let writer = self.outbox.attach(sink(&self.node, self.conn, write), deflate);
        let stall_timeout = Duration::from_millis(self.node.config.limits.outbound_wait_ms);
        self.writer = Some(tokio::spawn(writer::run(writer, self.control.clone(), self.wire, stall_timeout)));
        if let Some(polling) = self.polling.take() {
            self.node.polling.remove(&polling.sid);
        }
        tracing::debug!("upgraded from polling to WebSocket");
        Input::WebSocket(inbound)
    }

    /// Carries out a request from outside the connection (an operator, via the hub).
    async fn on_command(&mut self, command: SessionCommand) {
        match command {
            SessionCommand::Subscribe { channel, recover } => {
                self.subscribe_by_server(channel, recover).await
            }
            SessionCommand::Unsubscribe { channel, reason } => {
                if self.subscriptions.contains_key(&channel) {
                    self.leave(&channel).await;
                    self.record_channel_event(&channel, false).await;
                    self.push(&Push::<()>::Unsubscribe(Unsubscribed { channel, reason }));
                }
            }
        }
    }

    /// Maps a read error to a close: too large (3502), not valid WebSocket or UTF-8 (3500),
    /// or a transport failure (no close frame: the peer is gone).
    fn on_read_error(&self, error: &tungstenite::Error) {
        match error {
            tungstenite::Error::Capacity(_) => {
                let limit = self.node.config.limits.max_message_bytes;
                self.close(Code::MessageTooLarge, &format!("message larger than {limit} bytes"), None, false);
            }
            tungstenite::Error::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake) => {
                // The peer vanished (closed its socket without a close frame): nobody to
                // tell about a protocol error.
                tracing::debug!("connection reset without a closing handshake");
                self.control.terminate();
            }
            tungstenite::Error::Io(io) if inflate_failure(io).is_some() => match inflate_failure(io) {
                Some(InflateError::TooLarge(limit)) => {
                    self.close(
                        Code::MessageTooLarge,
                        &format!("message larger than {limit} bytes"),
                        None,
                        false,
                    );
                }
                _ => self.close(Code::ProtocolError, &io.to_string(), None, false),
            },
            tungstenite::Error::Utf8(_) => {
                self.close(Code::ProtocolError, "text frame is not valid UTF-8", None, false);
            }
            tungstenite::Error::Protocol(violation) => {
                let reason = format!("WebSocket protocol violation: {violation}");
                self.close(Code::ProtocolError, &reason, None, false);
            }
            _ => {
                tracing::debug!(%error, "read failed");
                self.control.terminate();
            }
        }
    }

    async fn on_message(&mut self, message: Message) {
        self.last_seen = Instant::now();
        let encoding = match self.wire {
            Wire::Native(encoding) => encoding,
            Wire::SocketIo(_) => return self.on_socketio_message(message).await,
        };
        let frame = match (&message, encoding) {
            (Message::Text(text), Encoding::Json) => text.as_bytes(),
            (Message::Binary(bytes), Encoding::MsgPack) => bytes.as_ref(),
            (Message::Text(_), Encoding::MsgPack) => {
                return self.close(
                    Code::ProtocolError,
                    "text frame on a MessagePack connection",
                    None,
                    false,
                );
            }
            (Message::Binary(_), Encoding::Json) => {
                return self.close(Code::ProtocolError, "binary frame on a JSON connection", None, false);
            }
            (Message::Close(_), _) => {
                self.client_closed = true;
                return self.control.terminate();
            }
            (Message::Ping(_) | Message::Pong(_) | Message::Frame(_), _) => return,
        };
        self.node.metrics.messages_in.inc();
        self.node.metrics.bytes_in.inc_by(frame.len() as u64);
        match codec::decode_command(encoding, frame) {
            Ok(command) => {
                let id = command.id;
                if !self.bucket.try_take() {
                    let error = CommandError::refused(Code::TooManyRequests, "command rate limit exceeded");
                    return self.reply_error(id, &error);
                }
                Box::pin(self.handle(command)).await;
            }
            Err(error) => match error.id {
                Some(id) => self.reply_error(id, &CommandError::refused(error.code, error.message)),
                None => self.close(error.code, &error.message, None, false),
            },
        }
    }

    /// The earliest timer this connection is waiting for.
    fn next_deadline(&self) -> Instant {
        let mut deadline = self.next_ping.min(self.last_seen + self.silence_limit());
        if let Some(at) = self.socketio.recovery.as_ref().and_then(|r| r.refresh_at) {
            deadline = deadline.min(at);
        }
        match &self.identity {
            None => deadline = deadline.min(self.started + self.auth_timeout()),
            Some(identity) => {
                if let Some(at) = self.refresh_at(identity) {
                    deadline = deadline.min(at);
                }
                if let Some(at) = self.expire_at(identity) {
                    deadline = deadline.min(at);
                }
            }
        }
        deadline
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        self.refresh_recovery(now);
        if self.identity.is_none() && now >= self.started + self.auth_timeout() {
            return self.close(Code::AuthTimeout, "no connect command within the auth timeout", None, false);
        }
        if let Some(identity) = &self.identity {
            if self.expire_at(identity).is_some_and(|at| now >= at) {
                return self.close(
                    Code::ConnectionExpired,
                    "token expired and was not refreshed",
                    None,
                    false,
                );
            }
            if let (Some(at), Some(expires_at)) = (self.refresh_at(identity), identity.expires_at) {
                if now >= at {
                    self.push(&Push::<()>::Refresh(RefreshNeeded { expires_at }));
                    if let Some(identity) = &mut self.identity {
                        identity.refresh_sent = true;
                    }
                }
            }
        }
        if now.duration_since(self.last_seen) >= self.silence_limit() {
            return self.close(Code::HeartbeatTimeout, "no pong within the heartbeat timeout", None, false);
        }
        if now >= self.next_ping {
            let ping = match self.wire {
                Wire::Native(_) => WireFrame::ping(),
                // Browsers cannot see WebSocket pings: Engine.IO pings in a text frame.
                Wire::SocketIo(_) => crate::wire::text("2"),
            };
            self.outbox.push(ping, None);
            self.next_ping = now + self.ping_interval();
        }
    }

    fn ping_interval(&self) -> Duration {
        Duration::from_millis(match self.wire {
            Wire::Native(_) => self.node.config.heartbeat.ping_interval_ms,
            Wire::SocketIo(_) => self.node.config.socketio.ping_interval_ms,
        })
    }

    /// How long the client may stay silent (no pong, no frame) before it is closed.
    fn silence_limit(&self) -> Duration {
        let timeout = match self.wire {
            Wire::Native(_) => self.node.config.heartbeat.pong_timeout_ms,
            Wire::SocketIo(_) => self.node.config.socketio.ping_timeout_ms,
        };
        self.ping_interval().saturating_add(Duration::from_millis(timeout))
    }

    fn auth_timeout(&self) -> Duration {
        Duration::from_millis(self.node.config.auth.auth_timeout_ms)
    }

    /// When to send the `refresh` push (once per token).
    fn refresh_at(&self, identity: &Identity) -> Option<Instant> {
        let expires_at = identity.expires_at.filter(|_| !identity.refresh_sent)?;
        let at = expires_at.saturating_sub(self.node.config.auth.refresh_ahead_secs);
        Some(instant_at(at))
    }

    /// When an unrefreshed connection is closed.
    fn expire_at(&self, identity: &Identity) -> Option<Instant> {
        let expires_at = identity.expires_at?;
        Some(instant_at(expires_at.saturating_add(self.node.config.auth.expired_grace_secs)))
    }

    fn close(&self, code: Code, reason: &str, reconnect_after_ms: Option<u64>, flush_queue: bool) {
        self.control.close(CloseRequest {
            code,
            reason: reason.to_string(),
            reconnect_after_ms,
            flush_queue,
        });
    }

    /// Queues a push for this connection.
    fn push<D: serde::Serialize>(&self, push: &Push<D>) {
        match self.wire.push(push) {
            Ok(frame) => {
                self.outbox.push_now(frame);
            }
            Err(error) => tracing::error!(%error, "cannot encode push"),
        }
    }

    /// Queues a successful reply (nothing for a Socket.IO event that wants no ack).
    fn reply<R: serde::Serialize>(&mut self, id: u64, result: R) {
        if id == crate::wire::CONNECT_ID {
            if let (Wire::SocketIo(ns), Some(recovery)) = (self.wire, self.socketio.recovery.as_mut()) {
                return socketio::connect_reply(&self.outbox, &self.client_id, ns, recovery, &result);
            }
        }
        match self.wire.reply(id, &result) {
            Ok(Some(frame)) => {
                self.outbox.push_now(frame);
            }
            Ok(None) => {}
            Err(error) => self.reply_error(id, &CommandError::Codec(error)),
        }
    }

    fn outbound_wait(&self) -> Duration {
        Duration::from_millis(self.node.config.limits.outbound_wait_ms)
    }

    /// Queues an error reply and counts it.
    fn reply_error(&self, id: u64, error: &CommandError) {
        let code = error.code();
        self.node.metrics.command_errors.with_label_values(&[code.slug()]).inc();
        tracing::debug!(%code, %error, "command failed");
        match self.wire.error(id, &ErrorBody::new(code, error.to_string())) {
            Ok(frame) => {
                self.outbox.push_now(frame);
            }
            Err(error) => tracing::error!(%error, "cannot encode an error reply"),
        }
    }

    async fn cleanup(&mut self) {
        // A recoverable session's stored rooms stay as they are (the client may come back
        // within the window), unless the client left on purpose.
        if let Some(recovery) = self.socketio.recovery.take() {
            if self.client_closed {
                if let Err(error) = self.node.broker.delete_socketio_session(&recovery.pid).await {
                    tracing::debug!(%error, "cannot forget a Socket.IO session");
                }
            }
        }
        let channels: Vec<String> = self.subscriptions.keys().cloned().collect();
        for channel in channels {
            self.leave(&channel).await;
        }
        if let Some(identity) = &self.identity {
            self.node.remove_user_connection(&identity.user);
            if self.node.config.lifecycle.enabled {
                let (code, reason) = match self.control.request() {
                    Some(request) => (request.code.as_u16(), request.reason),
                    None if self.client_closed => (1000, "client closed".to_string()),
                    None => (1006, "connection lost".to_string()),
                };
                let event = LifecycleEvent::Disconnect { client: &self.client_id, code, reason: &reason };
                // Never fails: the broker retries it until Redis takes it.
                let _ = self.node.broker.lifecycle(event).await;
            }
        }
    }

    /// Records a subscribe or unsubscribe in the lifecycle stream, when it is enabled
    /// (the personal channel is implied by connect). Best effort: a failure is logged.
    async fn record_channel_event(&self, channel: &str, subscribed: bool) {
        if !self.node.config.lifecycle.enabled || self.identity.is_none() {
            return;
        }
        let user = self.identity().user.as_str();
        if personal_channel(user) == channel {
            return;
        }
        let client = self.client_id.as_str();
        let event = match subscribed {
            true => LifecycleEvent::Subscribe { client, user, channel },
            false => LifecycleEvent::Unsubscribe { client, user, channel },
        };
        if let Err(error) = self.node.broker.lifecycle(event).await {
            tracing::warn!(%error, %channel, "lifecycle event not recorded");
        }
    }
}

/// Where a connection's messages come from.
// The WebSocket variant is nearly every connection's: boxing it would cost them an
// allocation to save polling connections a few hundred bytes.
#[allow(clippy::large_enum_variant)]
enum Input {
    /// WebSocket frames.
    WebSocket(Inbound),
    /// Packets of HTTP long-polling `POST`s, until an upgrade hands over a WebSocket.
    Polling(PollingInput),
}

/// What [`Input::next`] got.
enum Incoming {
    /// A message (or a read error).
    Message(Result<Message, tungstenite::Error>),
    /// The client upgraded from polling to this WebSocket.
    Upgrade(Box<Handoff>),
    /// The transport ended.
    Ended,
}

impl Input {
    /// Polled in place rather than an `async fn`, whose state would sit in every idle
    /// connection's task (see "idle memory" in docs/BENCHMARKS.md).
    fn poll_next(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Incoming> {
        use std::{future::Future, task::Poll};
        match self {
            Input::WebSocket(stream) => stream.poll_next_unpin(cx).map(|message| match message {
                Some(message) => Incoming::Message(message),
                None => Incoming::Ended,
            }),
            // Packets first: those posted before the upgrade precede the WebSocket's.
            Input::Polling(polling) => {
                if let Poll::Ready(packet) = polling.packets.poll_recv(cx) {
                    return Poll::Ready(
                        packet.map_or(Incoming::Ended, |message| Incoming::Message(Ok(message))),
                    );
                }
                if polling.handoff.is_terminated() {
                    return Poll::Pending;
                }
                std::pin::Pin::new(&mut polling.handoff).poll(cx).map(|handoff| match handoff {
                    Ok(handoff) => Incoming::Upgrade(Box::new(handoff)),
                    // The polling session is gone: so is the client.
                    Err(_) => Incoming::Ended,
                })
            }
        }
    }
}

/// Converts a Unix time in seconds into a (tokio) instant.
fn instant_at(unix_secs: u64) -> Instant {
    let now_unix = unix_now();
    let now = Instant::now();
    if unix_secs >= now_unix {
        // A century is "never" for a connection; the cap also keeps the addition in range.
        let ahead = Duration::from_secs((unix_secs - now_unix).min(100 * 365 * 86_400));
        now.checked_add(ahead).unwrap_or(now)
    } else {
        now.checked_sub(Duration::from_secs(now_unix - unix_secs)).unwrap_or(now)
    }
}
