//! The connection task behind a [`crate::Client`]: one WebSocket at a time, reconnecting
//! with backoff, resubscribing every channel from its last position.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use rand::{rngs::StdRng, SeedableRng};
use serde_json::{json, Value};
use switchboard_protocol::{
    codec::{self, ServerFrame},
    push::{Disconnect, Push},
    reply::{ConnectResult, SubscribeResult},
    Code, Encoding, ErrorBody, StreamPosition,
};
use tokio::{
    net::TcpStream,
    sync::{mpsc, oneshot, watch},
};
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, http::HeaderValue, protocol::WebSocketConfig, Message},
    MaybeTlsStream, WebSocketStream,
};

use crate::{ClientConfig, ClientError, ConnectionState, Event, Request, TokenProvider};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A connection that stayed up this long resets the backoff; one that fails sooner (say a
/// resubscribe refused as temporarily unavailable right after connecting) keeps backing
/// off, so a node that accepts and then fails is not retried in a tight loop.
const STABLE_AFTER: Duration = Duration::from_secs(10);

struct Channel {
    events: mpsc::Sender<Event>,
    position: Option<StreamPosition>,
    /// The epoch this connection was last told for the channel (subscribe result or a
    /// publication that carried one): the server leaves it out of publications in it,
    /// and the driver puts it back before the application sees them.
    epoch: Option<String>,
    /// Supplies a subscription token for every (re)subscribe, when the channel needs one.
    token: Option<TokenProvider>,
    /// Subscribed by the server (connect hook, a backend's subscribe): not resubscribed
    /// by the client; the next connect says whether it still is.
    server: bool,
}

enum Pending {
    Call(oneshot::Sender<Result<Value, ClientError>>),
    /// A `publish` or `rpc` of the offline outbox: sent again on the next connection when
    /// this one ends before the reply (it carries an idempotency key).
    Queued(Queued),
    Done(oneshot::Sender<Result<(), ClientError>>),
    Subscribe {
        channel: String,
        reply: Option<oneshot::Sender<Result<(), ClientError>>>,
    },
    Ignore,
}

/// How a connection ended.
enum Ended {
    /// Stop for good.
    Closed { code: Option<Code>, reason: String },
    /// Reconnect after a delay (at least `advised`).
    Lost { code: Option<Code>, reason: String, advised: Option<Duration> },
}

/// A `publish` or `rpc` waiting for a connection.
pub(crate) struct Queued {
    pub(crate) method: &'static str,
    pub(crate) params: Value,
    pub(crate) reply: oneshot::Sender<Result<Value, ClientError>>,
}

pub(crate) struct Driver {
    config: ClientConfig,
    /// Calls made while disconnected (or in flight when the connection was lost), sent
    /// in order after the next connect; at most `config.offline_queue`.
    outbox: VecDeque<Queued>,
    requests: mpsc::Receiver<Request>,
    state: watch::Sender<ConnectionState>,
    personal: Channel,
    personal_name: Option<String>,
    /// Shared with the application's personal [`crate::Subscription`], named on first connect.
    personal_channel: Arc<OnceLock<String>>,
    channels: HashMap<String, Channel>,
    /// Where subscriptions the server made go, for the application to take.
    server_subscriptions: mpsc::Sender<crate::Subscription>,
    waiting: Vec<(String, oneshot::Sender<Result<(), ClientError>>)>,
    attempt: u32,
    url: usize,
    rng: StdRng,
}

impl Driver {
    pub(crate) fn new(
        config: ClientConfig,
        requests: mpsc::Receiver<Request>,
        state: watch::Sender<ConnectionState>,
        personal: mpsc::Sender<Event>,
        personal_channel: Arc<OnceLock<String>>,
        server_subscriptions: mpsc::Sender<crate::Subscription>,
    ) -> Driver {
        Driver {
            config,
            outbox: VecDeque::new(),
            requests,
            state,
            personal: Channel { events: personal, position: None, epoch: None, token: None, server: true },
            personal_name: None,
            personal_channel,
            channels: HashMap::new(),
            server_subscriptions,
            waiting: Vec::new(),
            attempt: 0,
            url: 0,
            rng: StdRng::from_os_rng(),
        }
    }

    pub(crate) async fn run(mut self) {
        loop {
            match self.session().await {
                Ended::Closed { code, reason } => return self.finish(code, reason),
                Ended::Lost { code, reason, advised } => {
                    tracing::debug!(?code, %reason, "connection lost");
                    self.state.send_replace(ConnectionState::Disconnected { code, reason });
                    let delay = self.config.backoff.delay(self.attempt, advised, &mut self.rng);
                    self.attempt = self.attempt.saturating_add(1);
                    self.url = self.url.wrapping_add(1);
                    let sleep = tokio::time::sleep(delay);
                    tokio::pin!(sleep);
                    loop {
                        tokio::select! {
                            () = &mut sleep => break,
                            request = self.requests.recv() => match request {
                                None | Some(Request::Close) => {
                                    return self.finish(None, "closed by the application".into());
                                }
                                Some(request) => self.offline(request),
                            },
                        }
                    }
                }
            }
        }
    }

    fn finish(mut self, code: Option<Code>, reason: String) {
        for (_, reply) in self.waiting.drain(..) {
            let _ = reply.send(Err(ClientError::Closed));
        }
        for queued in self.outbox.drain(..) {
            let _ = queued.reply.send(Err(ClientError::Closed));
        }
        self.state.send_replace(ConnectionState::Closed { code, reason });
    }

    /// A request while disconnected: subscriptions wait for the next connection, calls fail.
    fn offline(&mut self, request: Request) {
        match request {
            Request::Subscribe { channel, events, token, reply } => {
                let state = Channel { events, position: None, epoch: None, token, server: false };
                self.channels.insert(channel.clone(), state);
                self.waiting.push((channel, reply));
            }
            Request::Unsubscribe { channel, reply } => {
                self.channels.remove(&channel);
                let _ = reply.send(Ok(()));
            }
            Request::Call { reply, .. } => {
                let _ = reply.send(Err(ClientError::NotConnected));
            }
            Request::Queued(queued) => self.enqueue(queued),
            Request::Close => {}
        }
    }

    /// Keeps a `publish` or `rpc` for the next connection, or refuses it when the outbox
    /// is full.
    fn enqueue(&mut self, queued: Queued) {
        if self.outbox.len() >= self.config.offline_queue {
            let _ = queued.reply.send(Err(ClientError::OutboxFull));
        } else {
            self.outbox.push_back(queued);
        }
    }

    async fn session(&mut self) -> Ended {
        let Some(url) = self.config.urls.get(self.url % self.config.urls.len().max(1)).cloned() else {
            return Ended::Closed { code: None, reason: "no server URL configured".into() };
        };
        self.state.send_replace(ConnectionState::Connecting);
        let lost = |reason: String| Ended::Lost { code: None, reason, advised: None };
        let mut request = match url.as_str().into_client_request() {
            Ok(request) => request,
            Err(error) => return Ended::Closed { code: None, reason: format!("bad url {url}: {error}") },
        };
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(self.config.encoding.subprotocol()));
        let timeout = self.config.request_timeout;
        // A 16 KiB read buffer instead of tungstenite's 128 KiB, which it zero-fills before
        // every read; and no Nagle delay on commands.
        let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
        let connecting = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
        let mut socket = match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok((socket, _))) => socket,
            Ok(Err(error)) => return lost(format!("cannot connect to {url}: {error}")),
            Err(_) => return lost(format!("cannot connect to {url}: no handshake within {timeout:?}")),
        };
        let token = match (self.config.token)().await {
            Ok(token) => token,
            Err(error) => return lost(format!("token provider failed: {error}")),
        };
        let mut connection =
            Connection { encoding: self.config.encoding, next_id: 1, pending: HashMap::new() };
        // What a server told the previous connection does not hold for this one.
        self.personal.epoch = None;
        self.channels.values_mut().for_each(|channel| channel.epoch = None);
        let mut params = json!({ "token": token });
        if let Some(position) = &self.personal.position {
            params["recover"] = json!(position);
        }
        // Where the server's own channels (a connect hook's) were: it recovers them.
        let server_positions: serde_json::Map<String, Value> = self
            .channels
            .iter()
            .filter(|(_, channel)| channel.server)
            .filter_map(|(name, channel)| Some((name.clone(), json!(channel.position.as_ref()?))))
            .collect();
        if !server_positions.is_empty() {
            params["channels"] = Value::Object(server_positions);
        }
        let connect_id = match connection.send(&mut socket, "connect", params).await {
            Ok(id) => id,
            Err(error) => return lost(error),
        };
        connection.pending.insert(connect_id, Pending::Ignore);
        // A node that refuses (full, draining) says so with a disconnect push before closing:
        // its code and advice decide what happens next, even if the close frame is lost.
        let mut notice = None;
        let result = loop {
            match read(&mut socket, self.config.encoding, Some(timeout)).await {
                Incoming::Frame(ServerFrame::Reply(reply)) if reply.id == connect_id => {
                    connection.pending.remove(&connect_id);
                    match (reply.result, reply.error) {
                        (Some(result), None) => match serde_json::from_value::<ConnectResult>(result) {
                            Ok(result) => break result,
                            Err(error) => return lost(format!("bad connect result: {error}")),
                        },
                        (_, Some(error)) => return connect_refused(error),
                        _ => return lost("empty connect reply".into()),
                    }
                }
                Incoming::Frame(ServerFrame::Push(Push::Disconnect(disconnect))) => notice = Some(disconnect),
                Incoming::Frame(_) => continue,
                Incoming::Ended(ended) => return with_notice(ended, notice),
            }
        };
        let connected_at = Instant::now();
        let silence = (result.ping_interval_ms > 0).then(|| {
            Duration::from_millis(result.ping_interval_ms.saturating_mul(2)) + Duration::from_secs(1)
        });
        self.state.send_replace(ConnectionState::Connected {
            client: result.client.clone(),
            node: result.node.clone(),
        });
        let personal_name = (!result.user.is_empty()).then(|| format!("user:{}", result.user));
        let mut still_server: Vec<String> = Vec::new();
        for subscribed in result.subscriptions {
            if Some(&subscribed.channel) == personal_name.as_ref() {
                self.personal_name = Some(subscribed.channel.clone());
                let _ = self.personal_channel.set(subscribed.channel.clone());
                apply_subscribed(&mut self.personal, &subscribed).await;
            } else {
                still_server.push(subscribed.channel.clone());
                self.server_subscribed(&subscribed).await;
            }
        }
        // Server channels this connection no longer has (a backend's subscribe lasts one
        // connection; a connect hook may name others now): their streams end.
        let gone: Vec<String> = self
            .channels
            .iter()
            .filter(|(name, channel)| channel.server && !still_server.contains(name))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some(channel) = self.channels.remove(&name) {
                let reason = "the server did not subscribe this connection again".to_string();
                let _ = channel.events.send(Event::Unsubscribed { reason }).await;
            }
        }
        // Resubscribe every channel from its position; new subscriptions made while
        // disconnected get their reply when their subscribe is answered.
        let mut waiting: HashMap<String, oneshot::Sender<Result<(), ClientError>>> =
            self.waiting.drain(..).collect();
        let channels: Vec<(String, Option<StreamPosition>, Option<TokenProvider>)> = self
            .channels
            .iter()
            .filter(|(_, channel)| !channel.server)
            .map(|(name, channel)| (name.clone(), channel.position.clone(), channel.token.clone()))
            .collect();
        for (channel, position, token) in channels {
            let mut params = json!({ "channel": channel });
            if let Some(position) = position {
                params["recover"] = json!(position);
            }
            if let Some(token) = token {
                // Without it the server refuses (107), which ends this subscription with a reason.
                match token().await {
                    Ok(token) => params["token"] = json!(token),
                    Err(error) => tracing::warn!(%channel, %error, "subscription token provider failed"),
                }
            }
            match connection.send(&mut socket, "subscribe", params).await {
                Ok(id) => {
                    let reply = waiting.remove(&channel);
                    connection.pending.insert(id, Pending::Subscribe { channel, reply });
                }
                Err(error) => return lost(error),
            }
        }
        // Then what was queued while disconnected, in order; calls whose caller gave up
        // (timed out) are dropped.
        while let Some(queued) = self.outbox.pop_front() {
            if queued.reply.is_closed() {
                continue;
            }
            match connection.send(&mut socket, queued.method, queued.params.clone()).await {
                Ok(id) => drop(connection.pending.insert(id, Pending::Queued(queued))),
                Err(error) => {
                    self.outbox.push_front(queued);
                    return lost(error);
                }
            }
        }
        let ended = self.serve(&mut socket, &mut connection, silence).await;
        if connected_at.elapsed() >= STABLE_AFTER {
            self.attempt = 0;
        }
        // Unanswered outbox calls go back to the front of the outbox, oldest first.
        let mut unanswered: Vec<(u64, Queued)> = Vec::new();
        for (id, pending) in connection.pending.drain() {
            match pending {
                Pending::Queued(queued) => unanswered.push((id, queued)),
                Pending::Call(reply) => drop(reply.send(Err(ClientError::NotConnected))),
                Pending::Done(reply) => drop(reply.send(Err(ClientError::NotConnected))),
                Pending::Subscribe { channel, reply: Some(reply) } => self.waiting.push((channel, reply)),
                Pending::Subscribe { .. } | Pending::Ignore => {}
            }
        }
        unanswered.sort_by_key(|(id, _)| std::cmp::Reverse(*id));
        for (_, queued) in unanswered {
            self.outbox.push_front(queued);
        }
        while self.outbox.len() > self.config.offline_queue {
            if let Some(queued) = self.outbox.pop_back() {
                let _ = queued.reply.send(Err(ClientError::OutboxFull));
            }
        }
        ended
    }

    /// Serves one connection until it ends. `silence` is how long the server may send
    /// nothing (it pings every `ping_interval_ms`) before the connection counts as lost.
    async fn serve(
        &mut self,
        socket: &mut Socket,
        connection: &mut Connection,
        silence: Option<Duration>,
    ) -> Ended {
        let mut notice = None;
        loop {
            tokio::select! {
                incoming = read(socket, self.config.encoding, silence) => match incoming {
                    Incoming::Frame(ServerFrame::Reply(reply)) => {
                        if let Some(ended) = self.on_reply(connection, reply).await {
                            return ended;
                        }
                    }
                    Incoming::Frame(ServerFrame::Push(push)) => {
                        if let Some(ended) = self.on_push(socket, connection, push, &mut notice).await {
                            return ended;
                        }
                    }
                    Incoming::Ended(ended) => return with_notice(ended, notice.take()),
                },
                request = self.requests.recv() => match request {
                    None | Some(Request::Close) => {
                        let _ = socket.close(None).await;
                        return Ended::Closed { code: None, reason: "closed by the application".into() };
                    }
                    Some(request) => {
                        if let Err(error) = self.on_request(socket, connection, request).await {
                            return Ended::Lost { code: None, reason: error, advised: None };
                        }
                    }
                },
            }
        }
    }

    async fn on_request(
        &mut self,
        socket: &mut Socket,
        connection: &mut Connection,
        request: Request,
    ) -> Result<(), String> {
        match request {
            Request::Subscribe { channel, events, token, reply } => {
                if self.channels.get(&channel).is_some_and(|existing| existing.events.is_closed()) {
                    // The application gave up on an earlier subscription (a subscribe call
                    // that timed out, a dropped stream): leave it and start afresh.
                    self.drop_channel(socket, connection, &channel).await;
                }
                if self.channels.contains_key(&channel) {
                    let error = ErrorBody::new(Code::AlreadySubscribed, "already subscribed");
                    let _ = reply.send(Err(ClientError::Server(error)));
                    return Ok(());
                }
                let mut params = json!({ "channel": channel });
                if let Some(token) = &token {
                    match token().await {
                        Ok(token) => params["token"] = json!(token),
                        Err(error) => {
                            let _ = reply.send(Err(ClientError::Token(error)));
                            return Ok(());
                        }
                    }
                }
                self.channels.insert(
                    channel.clone(),
                    Channel { events, position: None, epoch: None, token, server: false },
                );
                let id = connection.send(socket, "subscribe", params).await?;
                connection.pending.insert(id, Pending::Subscribe { channel, reply: Some(reply) });
            }
            Request::Unsubscribe { channel, reply } => {
                self.channels.remove(&channel);
                let id = connection.send(socket, "unsubscribe", json!({ "channel": channel })).await?;
                connection.pending.insert(id, Pending::Done(reply));
            }
            Request::Call { method, params, reply } => {
                let id = connection.send(socket, method, params).await?;
                connection.pending.insert(id, Pending::Call(reply));
            }
            Request::Queued(queued) => {
                match connection.send(socket, queued.method, queued.params.clone()).await {
                    Ok(id) => drop(connection.pending.insert(id, Pending::Queued(queued))),
                    Err(error) => {
                        self.enqueue(queued);
                        return Err(error);
                    }
                }
            }
            Request::Close => {}
        }
        Ok(())
    }

    async fn on_reply(
        &mut self,
        connection: &mut Connection,
        reply: switchboard_protocol::Reply<Value>,
    ) -> Option<Ended> {
        let pending = connection.pending.remove(&reply.id)?;
        let outcome = match (reply.result, reply.error) {
            (_, Some(error)) => Err(error),
            (result, None) => Ok(result.unwrap_or(Value::Null)),
        };
        match pending {
            Pending::Call(tx) => drop(tx.send(outcome.map_err(ClientError::Server))),
            // Answered, successfully or not: a refusal is the caller's to handle (a
            // temporary one, e.g. 118, is retried by calling again with the same key).
            Pending::Queued(queued) => drop(queued.reply.send(outcome.map_err(ClientError::Server))),
            Pending::Done(tx) => drop(tx.send(outcome.map(|_| ()).map_err(ClientError::Server))),
            Pending::Ignore => {}
            Pending::Subscribe { channel, reply } => match outcome {
                Ok(result) => {
                    if let (Some(state), Ok(result)) =
                        (self.channels.get_mut(&channel), serde_json::from_value::<SubscribeResult>(result))
                    {
                        apply_subscribed(state, &result).await;
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(()));
                    }
                }
                // A temporary failure (broker down) is retried with the whole connection.
                Err(error) if error.code.is_temporary() => {
                    if let Some(reply) = reply {
                        self.waiting.push((channel, reply));
                    }
                    return Some(Ended::Lost {
                        code: Some(error.code),
                        reason: error.message,
                        advised: None,
                    });
                }
                Err(error) => {
                    let removed = self.channels.remove(&channel);
                    match reply {
                        Some(reply) => drop(reply.send(Err(ClientError::Server(error)))),
                        // A resubscribe refused for good (access revoked, token refused):
                        // the application learns why its stream ends.
                        None => {
                            if let Some(removed) = removed {
                                let reason = format!("resubscribe refused: {} {}", error.code, error.message);
                                let _ = removed.events.send(Event::Unsubscribed { reason }).await;
                            }
                        }
                    }
                }
            },
        }
        None
    }

    async fn on_push(
        &mut self,
        socket: &mut Socket,
        connection: &mut Connection,
        push: Push<Value>,
        notice: &mut Option<Disconnect>,
    ) -> Option<Ended> {
        match push {
            Push::Publication(mut publication) => {
                let name = publication.channel.clone();
                let channel = self.channel_mut(&name)?;
                if publication.apply_known_epoch(&mut channel.epoch) {
                    tracing::debug!(channel = %name, epoch = ?channel.epoch, "the stream was reset");
                }
                if let (Some(offset), Some(epoch)) = (publication.offset, publication.epoch.clone()) {
                    channel.position = Some(StreamPosition { offset, epoch });
                }
                if channel.events.send(Event::Publication(publication)).await.is_err() {
                    self.drop_channel(socket, connection, &name).await;
                }
            }
            Push::Join(join) => self.forward(&join.channel, Event::Join(join.client)).await,
            Push::Leave(leave) => self.forward(&leave.channel, Event::Leave(leave.client)).await,
            Push::Unsubscribe(unsubscribed) => {
                if let Some(channel) = self.channels.remove(&unsubscribed.channel) {
                    let _ = channel.events.send(Event::Unsubscribed { reason: unsubscribed.reason }).await;
                }
            }
            Push::Refresh(_) => match (self.config.token)().await {
                Ok(token) => {
                    if let Ok(id) = connection.send(socket, "refresh", json!({ "token": token })).await {
                        connection.pending.insert(id, Pending::Ignore);
                    }
                }
                Err(error) => tracing::warn!(%error, "token provider failed on refresh"),
            },
            Push::Disconnect(disconnect) => *notice = Some(disconnect),
            Push::Subscribe(subscribed) => self.server_subscribed(&subscribed).await,
        }
        None
    }

    /// A channel the server subscribed this connection to: known ones (a reconnect) go
    /// on from the result; new ones become a [`crate::Subscription`] for the application
    /// ([`crate::Client::next_server_subscription`]), or are left when it does not want
    /// them.
    async fn server_subscribed(&mut self, result: &SubscribeResult) {
        if let Some(channel) = self.channels.get_mut(&result.channel) {
            return apply_subscribed(channel, result).await;
        }
        let (events, receiver) = mpsc::channel(self.config.subscription_buffer.max(1));
        let subscription = crate::Subscription {
            channel: Arc::new(OnceLock::from(result.channel.clone())),
            events: receiver,
        };
        if self.server_subscriptions.try_send(subscription).is_err() {
            // Nobody takes them (or too many untaken): the events would only pile up.
            tracing::debug!(channel = %result.channel, "server subscription not taken by the application");
            return;
        }
        let mut channel = Channel { events, position: None, epoch: None, token: None, server: true };
        apply_subscribed(&mut channel, result).await;
        self.channels.insert(result.channel.clone(), channel);
    }

    fn channel_mut(&mut self, name: &str) -> Option<&mut Channel> {
        if self.personal_name.as_deref() == Some(name) {
            return Some(&mut self.personal);
        }
        self.channels.get_mut(name)
    }

    async fn forward(&mut self, name: &str, event: Event) {
        if let Some(channel) = self.channel_mut(name) {
            let _ = channel.events.send(event).await;
        }
    }

    /// The application dropped a subscription: leave the channel.
    async fn drop_channel(&mut self, socket: &mut Socket, connection: &mut Connection, name: &str) {
        if self.channels.remove(name).is_some() {
            if let Ok(id) = connection.send(socket, "unsubscribe", json!({ "channel": name })).await {
                connection.pending.insert(id, Pending::Ignore);
            }
        }
    }
}

/// Updates a channel after a subscribe reply and tells the application.
async fn apply_subscribed(channel: &mut Channel, result: &SubscribeResult) {
    channel.epoch = Some(result.epoch.clone());
    if result.recovered != Some(true) {
        // Fresh or not recoverable: publications continue after the current top.
        channel.position = Some(StreamPosition { offset: result.offset, epoch: result.epoch.clone() });
    }
    let event =
        Event::Subscribed { epoch: result.epoch.clone(), offset: result.offset, recovered: result.recovered };
    let _ = channel.events.send(event).await;
}

/// Applies the server's `disconnect` push to how the socket then ended: its advice is the
/// reconnect floor, and when the close frame never arrived (the protocol allows that) its
/// code and `reconnect` flag still decide.
fn with_notice(ended: Ended, notice: Option<Disconnect>) -> Ended {
    let Some(notice) = notice else { return ended };
    match ended {
        Ended::Lost { code: None, .. } if !notice.reconnect => {
            Ended::Closed { code: Some(notice.code), reason: notice.reason }
        }
        Ended::Lost { code: None, advised: None, .. } => Ended::Lost {
            code: Some(notice.code),
            reason: notice.reason,
            advised: notice.reconnect_after_ms.map(Duration::from_millis),
        },
        Ended::Lost { code, reason, advised: None } => {
            Ended::Lost { code, reason, advised: notice.reconnect_after_ms.map(Duration::from_millis) }
        }
        ended => ended,
    }
}

/// Close codes 3500–3999 mean "do not reconnect", known to this client or not.
fn forbids_reconnect(code: u16) -> bool {
    (3500..=3999).contains(&code)
}

fn connect_refused(error: ErrorBody) -> Ended {
    match error.code {
        // Expired: the provider is asked for a new token on the next attempt. Temporary
        // (115, 100, 111, and 118 from a connect hook that timed out): try again.
        code if code == Code::TokenExpired || code.is_temporary() => {
            Ended::Lost { code: Some(code), reason: error.message, advised: None }
        }
        code => Ended::Closed { code: Some(code), reason: error.message },
    }
}

struct Connection {
    encoding: Encoding,
    next_id: u64,
    pending: HashMap<u64, Pending>,
}

impl Connection {
    async fn send(&mut self, socket: &mut Socket, method: &str, params: Value) -> Result<u64, String> {
        let id = self.next_id;
        self.next_id += 1;
        let frame = json!({"id": id, "method": method, "params": params});
        let bytes = codec::encode(self.encoding, &frame).map_err(|e| e.to_string())?;
        let message = match self.encoding {
            Encoding::Json => Message::Text(String::from_utf8_lossy(&bytes).into_owned().into()),
            Encoding::MsgPack => Message::Binary(bytes),
        };
        socket.send(message).await.map_err(|e| e.to_string())?;
        Ok(id)
    }
}

enum Incoming {
    Frame(ServerFrame),
    Ended(Ended),
}

/// The next frame from the server; `silence` bounds the wait (every frame, pings
/// included, counts).
async fn read(socket: &mut Socket, encoding: Encoding, silence: Option<Duration>) -> Incoming {
    loop {
        let next = match silence {
            Some(limit) => match tokio::time::timeout(limit, socket.next()).await {
                Ok(next) => next,
                Err(_) => {
                    return Incoming::Ended(Ended::Lost {
                        code: None,
                        reason: format!("nothing from the server for {limit:?}"),
                        advised: None,
                    })
                }
            },
            None => socket.next().await,
        };
        let message = match next {
            None => {
                return Incoming::Ended(Ended::Lost {
                    code: None,
                    reason: "connection closed".into(),
                    advised: None,
                })
            }
            Some(Err(error)) => {
                return Incoming::Ended(Ended::Lost { code: None, reason: error.to_string(), advised: None });
            }
            Some(Ok(message)) => message,
        };
        let bytes = match &message {
            Message::Text(text) => text.as_bytes(),
            Message::Binary(bytes) => bytes.as_ref(),
            Message::Close(frame) => {
                let raw = frame.as_ref().map(|f| u16::from(f.code));
                let code = raw.and_then(Code::from_u16);
                let reason = frame.as_ref().map(|f| f.reason.to_string()).unwrap_or_default();
                return Incoming::Ended(if raw.is_some_and(forbids_reconnect) {
                    Ended::Closed { code, reason }
                } else {
                    Ended::Lost { code, reason, advised: None }
                });
            }
            _ => continue,
        };
        match codec::decode_server_frame(encoding, bytes) {
            Ok(frame) => return Incoming::Frame(frame),
            Err(error) => tracing::warn!(%error, "undecodable frame from the server"),
        }
    }
}
