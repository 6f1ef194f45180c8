//! An async Rust client for Switchboard.
//!
//! [`Client::connect`] starts a background task that holds one WebSocket, authenticates
//! with a token from a callback (called again on every reconnect and refresh), and
//! reconnects with exponential backoff and full jitter ([`Backoff`]), honouring the
//! server's reconnect advice and stopping for good on "don't reconnect" codes.
//!
//! Every subscription remembers the position of the last publication it delivered. After
//! a reconnect (to any node) it resubscribes with that position, so the application sees
//! every publication exactly once and in order; when the server cannot recover, the
//! subscription yields [`Event::Subscribed`] with `recovered: Some(false)` and the
//! application refetches its state. The server leaves a publication's `epoch` out when
//! the connection already knows it; the client puts it back, so every [`Publication`]
//! with an offset the application sees has its epoch.
//!
//! The connection is judged by what the server says: its `disconnect` push decides whether
//! and when to reconnect even if the close frame never arrives, codes 3500–3999 stop the
//! client whether or not it knows them, a node that refuses with advice (`3005 node_full`,
//! `3000 shutdown`) is not retried before the advised delay, and a server that sends
//! nothing — not even its pings — for twice its `ping_interval_ms` plus a second is
//! treated as gone. The backoff resets only after a connection stayed up for 10 s, so a
//! node that accepts and then fails at once is not retried in a tight loop.
//!
//! `publish` and `rpc` made while disconnected wait in a bounded offline outbox
//! ([`ClientConfig::offline_queue`]) and are sent, in order, right after the next
//! connect; so are those whose connection was lost before their reply. Each carries an
//! idempotency key (a random one unless the application gives its own), so a publication
//! sent twice is published once and a backend can tell a retried `rpc` from a new one.
//! A call still waits at most [`ClientConfig::request_timeout`] in all.
//!
//! Events are delivered through a bounded queue per subscription. A subscription that
//! is not read applies backpressure to the whole connection (the server may then close
//! it as a slow consumer, and recovery fills the gap on reconnect): read your
//! subscriptions.

mod backoff;
mod driver;

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

pub use backoff::Backoff;
use serde_json::Value;
pub use switchboard_protocol::{
    push::Publication as WirePublication, ClientInfo, Code, Encoding, ErrorBody, StreamPosition,
};
use tokio::sync::{mpsc, oneshot, watch};

/// A publication as the application receives it: `epoch` is present whenever `offset`
/// is, even when the server left it out of the frame.
pub type Publication = WirePublication<Value>;

/// Why a client call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("server error {}: {}", .0.code, .0.message)]
    Server(ErrorBody),
    /// The call needs a live connection and there is none right now.
    #[error("not connected")]
    NotConnected,
    /// The client was closed, or the server said not to reconnect.
    #[error("client closed")]
    Closed,
    /// No reply in time.
    #[error("no reply within the request timeout")]
    Timeout,
    /// The subscription token provider failed.
    #[error("token provider failed: {0}")]
    Token(String),
    /// The command could not be encoded.
    #[error("cannot encode the command: {0}")]
    Encode(String),
    /// Disconnected, and the offline outbox is full.
    #[error("disconnected and the offline outbox is full")]
    OutboxFull,
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The channel is (re)subscribed. `recovered` is `Some(false)` when publications were
    /// missed and cannot be replayed: refetch the state. Publications that follow carry
    /// offsets after `offset`.
    Subscribed {
        /// Stream epoch.
        epoch: String,
        /// Offset of the newest publication at subscribe time.
        offset: u64,
        /// Whether missed publications follow (`Some(true)`), could not be recovered
        /// (`Some(false)`), or no recovery was asked (`None`, first subscribe).
        recovered: Option<bool>,
    },
    /// A publication.
    Publication(Publication),
    /// Someone joined (join/leave namespaces).
    Join(ClientInfo),
    /// Someone left.
    Leave(ClientInfo),
    /// The server unsubscribed this connection; the subscription ends.
    Unsubscribed {
        /// Why.
        reason: String,
    },
}

/// The connection's state, observable with [`Client::state`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Opening a WebSocket and authenticating.
    Connecting,
    /// Connected and authenticated.
    Connected {
        /// Connection id.
        client: String,
        /// Node id.
        node: String,
    },
    /// Lost; reconnecting after a backoff delay.
    Disconnected {
        /// The server's code, when it said one.
        code: Option<Code>,
        /// Why.
        reason: String,
    },
    /// Stopped for good (closed by the application, or a "don't reconnect" code).
    Closed {
        /// The server's code, when it said one.
        code: Option<Code>,
        /// Why.
        reason: String,
    },
}

/// Supplies a fresh connection token, at every (re)connect and when the server asks for
/// a refresh.
pub type TokenProvider =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> + Send + Sync>;

/// A token provider that always returns the same token.
pub fn static_token(token: impl Into<String>) -> TokenProvider {
    let token: String = token.into();
    Arc::new(move || {
        let token = token.clone();
        Box::pin(async move { Ok(token) })
    })
}

/// Client settings.
#[derive(Clone)]
pub struct ClientConfig {
    /// WebSocket URLs (`ws://host/ws`); tried in turn on reconnect. Usually one load
    /// balancer URL.
    pub urls: Vec<String>,
    /// Wire encoding.
    pub encoding: Encoding,
    /// Token source.
    pub token: TokenProvider,
    /// Reconnect delays.
    pub backoff: Backoff,
    /// Events queued per subscription before the connection waits for the reader.
    pub subscription_buffer: usize,
    /// How long a call waits for its reply (offline time in the outbox included).
    pub request_timeout: Duration,
    /// `publish` and `rpc` calls kept while disconnected, for the next connection; more
    /// fail with [`ClientError::OutboxFull`]. 0 makes them fail with
    /// [`ClientError::NotConnected`] at once.
    pub offline_queue: usize,
}

impl ClientConfig {
    /// Settings with defaults for one URL.
    pub fn new(url: impl Into<String>, token: TokenProvider) -> ClientConfig {
        ClientConfig {
            urls: vec![url.into()],
            encoding: Encoding::Json,
            token,
            backoff: Backoff::default(),
            subscription_buffer: 1024,
            request_timeout: Duration::from_secs(10),
            offline_queue: 64,
        }
    }
}

pub(crate) enum Request {
    Subscribe {
        channel: String,
        events: mpsc::Sender<Event>,
        token: Option<TokenProvider>,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    Unsubscribe {
        channel: String,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    Call {
        method: &'static str,
        params: Value,
        reply: oneshot::Sender<Result<Value, ClientError>>,
    },
    /// A call that waits in the offline outbox when there is no connection.
    Queued(driver::Queued),
    Close,
}

/// A subscription's events, in order.
pub struct Subscription {
    /// Set at creation, except for the personal channel, whose name (`user:<sub>`) the
    /// server announces in the first connect reply.
    channel: Arc<OnceLock<String>>,
    events: mpsc::Receiver<Event>,
}

impl Subscription {
    /// The channel. For the personal subscription returned by [`Client::connect`] this is
    /// empty until the first connection is established, then `user:<sub>`.
    pub fn channel(&self) -> &str {
        self.channel.get().map_or("", String::as_str)
    }

    /// The next event; `None` when the subscription ended.
    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }
}

/// A subscription is also a [`futures_util::Stream`] of its events, for combinators.
impl futures_util::Stream for Subscription {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.events.poll_recv(cx)
    }
}

/// A handle to the connection task. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    requests: mpsc::Sender<Request>,
    state: watch::Receiver<ConnectionState>,
    timeout: Duration,
    buffer: usize,
    server: Arc<tokio::sync::Mutex<mpsc::Receiver<Subscription>>>,
}

/// Server-made subscriptions waiting for [`Client::next_server_subscription`]; more are
/// left (not subscribed to by the client) rather than piling up events.
const SERVER_SUBSCRIPTIONS_QUEUED: usize = 64;

impl Client {
    /// Starts connecting in the background. The returned subscription is the personal
    /// channel `user:<id>` the server subscribes every connection to.
    pub fn connect(config: ClientConfig) -> (Client, Subscription) {
        let (requests, requests_rx) = mpsc::channel(256);
        let (state_tx, state) = watch::channel(ConnectionState::Connecting);
        let (timeout, buffer) = (config.request_timeout, config.subscription_buffer.max(1));
        let (personal_tx, personal_rx) = mpsc::channel(buffer);
        let personal_channel = Arc::new(OnceLock::new());
        let (server_tx, server_rx) = mpsc::channel(SERVER_SUBSCRIPTIONS_QUEUED);
        let driver = driver::Driver::new(
            config,
            requests_rx,
            state_tx,
            personal_tx,
            personal_channel.clone(),
            server_tx,
        );
        tokio::spawn(driver.run());
        let personal = Subscription { channel: personal_channel, events: personal_rx };
        let server = Arc::new(tokio::sync::Mutex::new(server_rx));
        (Client { requests, state, timeout, buffer, server }, personal)
    }

    /// The next subscription the server made for this connection: a channel the connect
    /// hook named, or one a backend subscribed the user to (`POST /api/v1/users/subscribe`,
    /// the publisher crate's `subscribe_user`). Like every subscription it must be read;
    /// one dropped is left. The server's subscriptions last one connection: after a
    /// reconnect the ones the server does not make again end with
    /// [`Event::Unsubscribed`], while a connect hook's come back and recover. `None` once
    /// the client stopped.
    pub async fn next_server_subscription(&self) -> Option<Subscription> {
        self.server.lock().await.recv().await
    }

    /// Connection state changes.
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.state.clone()
    }

    /// Waits until connected (or closed).
    ///
    /// # Errors
    /// [`ClientError::Closed`] when the client stopped for good.
    pub async fn wait_connected(&self) -> Result<(), ClientError> {
        let mut state = self.state.clone();
        loop {
            match &*state.borrow_and_update() {
                ConnectionState::Connected { .. } => return Ok(()),
                ConnectionState::Closed { .. } => return Err(ClientError::Closed),
                _ => {}
            }
            state.changed().await.map_err(|_| ClientError::Closed)?;
        }
    }

    /// Subscribes to `channel`. The subscription survives reconnects and recovers what
    /// was missed.
    ///
    /// # Errors
    /// The server's refusal, or [`ClientError::Closed`].
    pub async fn subscribe(&self, channel: &str) -> Result<Subscription, ClientError> {
        self.subscribe_inner(channel, None).await
    }

    /// Subscribes to a channel that needs a subscription token (a `token` namespace, or
    /// one the connection token's claims do not cover). `token` is called for the first
    /// subscribe and again for every resubscribe after a reconnect, so it can mint a fresh
    /// token each time (from your backend, which decides who may read the channel).
    ///
    /// # Errors
    /// The server's refusal (`113 invalid_token`, `107 permission_denied`),
    /// [`ClientError::Token`] when `token` fails, or [`ClientError::Closed`].
    pub async fn subscribe_with_token(
        &self,
        channel: &str,
        token: TokenProvider,
    ) -> Result<Subscription, ClientError> {
        self.subscribe_inner(channel, Some(token)).await
    }

    async fn subscribe_inner(
        &self,
        channel: &str,
        token: Option<TokenProvider>,
    ) -> Result<Subscription, ClientError> {
        let (events_tx, events) = mpsc::channel(self.buffer);
        let (reply, answer) = oneshot::channel();
        let request = Request::Subscribe { channel: channel.to_string(), events: events_tx, token, reply };
        self.send(request, answer).await?;
        Ok(Subscription { channel: Arc::new(OnceLock::from(channel.to_string())), events })
    }

    /// Leaves `channel`.
    ///
    /// # Errors
    /// As [`Client::subscribe`].
    pub async fn unsubscribe(&self, channel: &str) -> Result<(), ClientError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Unsubscribe { channel: channel.to_string(), reply }, answer).await
    }

    /// Publishes `data` to `channel` (where the namespace allows client publishing).
    /// While disconnected it waits in the offline outbox (ephemeral publications, which
    /// are worthless later, fail with [`ClientError::NotConnected`] instead). A stored
    /// publication carries a random idempotency key, so a resend after a lost connection
    /// is published once.
    ///
    /// # Errors
    /// The server's refusal, [`ClientError::OutboxFull`], or a timeout.
    pub async fn publish(
        &self,
        channel: &str,
        event: Option<&str>,
        data: Value,
        ephemeral: bool,
    ) -> Result<Value, ClientError> {
        let mut params = serde_json::json!({"channel": channel, "data": data, "ephemeral": ephemeral});
        if let Some(event) = event {
            params["event"] = Value::String(event.into());
        }
        if ephemeral {
            return self.call("publish", params).await;
        }
        params["idempotency_key"] = Value::String(random_key());
        self.queued("publish", params).await
    }

    /// Connections present in `channel`.
    ///
    /// # Errors
    /// As [`Client::publish`].
    pub async fn presence(&self, channel: &str) -> Result<Value, ClientError> {
        self.call("presence", serde_json::json!({ "channel": channel })).await
    }

    /// Connection and user counts of `channel`.
    ///
    /// # Errors
    /// As [`Client::publish`].
    pub async fn presence_stats(&self, channel: &str) -> Result<Value, ClientError> {
        self.call("presence_stats", serde_json::json!({ "channel": channel })).await
    }

    /// The newest `limit` publications of `channel`.
    ///
    /// # Errors
    /// As [`Client::publish`].
    pub async fn history(&self, channel: &str, limit: u32) -> Result<Value, ClientError> {
        self.call("history", serde_json::json!({"channel": channel, "limit": limit})).await
    }

    /// Publications after `since`, oldest first, at most `limit`: page forward by passing
    /// the last returned position.
    ///
    /// # Errors
    /// As [`Client::publish`]; `117 unrecoverable_position` when the position cannot be
    /// served exactly (another epoch, or trimmed).
    pub async fn history_since(
        &self,
        channel: &str,
        since: &StreamPosition,
        limit: u32,
    ) -> Result<Value, ClientError> {
        self.call("history", serde_json::json!({"channel": channel, "limit": limit, "since": since})).await
    }

    /// Acknowledges having processed `channel` up to `position` (offline delivery).
    ///
    /// # Errors
    /// As [`Client::publish`].
    pub async fn ack(&self, channel: &str, position: &StreamPosition) -> Result<(), ClientError> {
        let params =
            serde_json::json!({"channel": channel, "offset": position.offset, "epoch": position.epoch});
        self.call("ack", params).await.map(|_| ())
    }

    /// Calls the backend method `method` with `data` (the `rpc` command) and returns the
    /// backend's result. A backend's own error comes back as [`ClientError::Server`] with
    /// its code (1000–2999) and message; 118 `timeout` and 115 `unavailable` are
    /// temporary. Keep the client's request timeout above the route's timeout.
    ///
    /// # Errors
    /// As [`Client::publish`].
    pub async fn rpc(&self, method: &str, data: Value) -> Result<Value, ClientError> {
        self.rpc_with_key(method, data, None).await
    }

    /// [`Client::rpc`] with an idempotency key passed to the backend, so that a retried
    /// call (same key) is recognised there and not carried out twice. Without one, the
    /// client makes a random key, which covers its own resends after a lost connection;
    /// pass your own (e.g. `vote-<proposal>-<user>`) to cover the application's retries.
    ///
    /// # Errors
    /// As [`Client::publish`].
    pub async fn rpc_with_key(
        &self,
        method: &str,
        data: Value,
        idempotency_key: Option<&str>,
    ) -> Result<Value, ClientError> {
        let key = idempotency_key.map_or_else(random_key, str::to_string);
        let params = serde_json::json!({"method": method, "data": data, "idempotency_key": key});
        let mut result = self.queued("rpc", params).await?;
        Ok(result.get_mut("data").map(Value::take).unwrap_or(Value::Null))
    }

    /// Any command by method name; returns the raw result.
    ///
    /// # Errors
    /// As [`Client::publish`].
    pub async fn call(&self, method: &'static str, params: Value) -> Result<Value, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Call { method, params, reply }, answer).await
    }

    /// A call that waits in the offline outbox while disconnected.
    async fn queued(&self, method: &'static str, params: Value) -> Result<Value, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Queued(driver::Queued { method, params, reply }), answer).await
    }

    /// Closes the connection for good.
    pub async fn close(&self) {
        // Fails only when the task already stopped, which is the goal.
        let _ = self.requests.send(Request::Close).await;
    }

    async fn send<T>(
        &self,
        request: Request,
        answer: oneshot::Receiver<Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        self.requests.send(request).await.map_err(|_| ClientError::Closed)?;
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout),
        }
    }
}

/// A random idempotency key: 128 bits, hex.
fn random_key() -> String {
    format!("{:032x}", rand::random::<u128>())
}
