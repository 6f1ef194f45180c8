//! The connection task behind a [`crate::Client`]: one WebSocket at a time, reconnecting
//! with backoff, resubscribing every channel from its last position.

use std::{collections::HashMap, time::Duration};

use futures_util::{SinkExt, StreamExt};
use rand::{rngs::StdRng, SeedableRng};
use serde_json::{json, Value};
use switchboard_protocol::{
    codec::{self, ServerFrame},
    push::Push,
    reply::{ConnectResult, SubscribeResult},
    Code, Encoding, ErrorBody, StreamPosition,
};
use tokio::{
    net::TcpStream,
    sync::{mpsc, oneshot, watch},
};
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, http::HeaderValue, Message},
    MaybeTlsStream, WebSocketStream,
};

use crate::{ClientConfig, ClientError, ConnectionState, Event, Request};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Channel {
    events: mpsc::Sender<Event>,
    position: Option<StreamPosition>,
}

enum Pending {
    Call(oneshot::Sender<Result<Value, ClientError>>),
    Done(oneshot::Sender<Result<(), ClientError>>),
    Subscribe { channel: String, reply: Option<oneshot::Sender<Result<(), ClientError>>> },
    Ignore,
}

/// How a connection ended.
enum Ended {
    /// Stop for good.
    Closed { code: Option<Code>, reason: String },
    /// Reconnect after a delay (at least `advised`).
    Lost { code: Option<Code>, reason: String, advised: Option<Duration> },
}

pub(crate) struct Driver {
    config: ClientConfig,
    requests: mpsc::Receiver<Request>,
    state: watch::Sender<ConnectionState>,
    personal: Channel,
    personal_name: Option<String>,
    channels: HashMap<String, Channel>,
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
    ) -> Driver {
        Driver {
            config,
            requests,
            state,
            personal: Channel { events: personal, position: None },
            personal_name: None,
            channels: HashMap::new(),
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
        self.state.send_replace(ConnectionState::Closed { code, reason });
    }

    /// A request while disconnected: subscriptions wait for the next connection, calls fail.
    fn offline(&mut self, request: Request) {
        match request {
            Request::Subscribe { channel, events, reply } => {
                self.channels.insert(channel.clone(), Channel { events, position: None });
                self.waiting.push((channel, reply));
            }
            Request::Unsubscribe { channel, reply } => {
                self.channels.remove(&channel);
                let _ = reply.send(Ok(()));
            }
            Request::Call { reply, .. } => {
                let _ = reply.send(Err(ClientError::NotConnected));
            }
            Request::Close => {}
        }
    }

    async fn session(&mut self) -> Ended {
        let url = self.config.urls[self.url % self.config.urls.len().max(1)].clone();
        self.state.send_replace(ConnectionState::Connecting);
        let lost = |reason: String| Ended::Lost { code: None, reason, advised: None };
        let mut request = match url.as_str().into_client_request() {
            Ok(request) => request,
            Err(error) => return Ended::Closed { code: None, reason: format!("bad url {url}: {error}") },
        };
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(self.config.encoding.subprotocol()));
        let mut socket = match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _)) => socket,
            Err(error) => return lost(format!("cannot connect to {url}: {error}")),
        };
        let token = match (self.config.token)().await {
            Ok(token) => token,
            Err(error) => return lost(format!("token provider failed: {error}")),
        };
        let mut connection =
            Connection { encoding: self.config.encoding, next_id: 1, pending: HashMap::new() };
        let mut params = json!({ "token": token });
        if let Some(position) = &self.personal.position {
            params["recover"] = json!(position);
        }
        let connect_id = match connection.send(&mut socket, "connect", params).await {
            Ok(id) => id,
            Err(error) => return lost(error),
        };
        connection.pending.insert(connect_id, Pending::Ignore);
        let result = loop {
            match read(&mut socket, self.config.encoding).await {
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
                Incoming::Frame(_) => continue,
                Incoming::Ended(ended) => return ended,
            }
        };
        self.attempt = 0;
        self.state.send_replace(ConnectionState::Connected {
            client: result.client.clone(),
            node: result.node.clone(),
        });
        if let Some(personal) = result.subscriptions.into_iter().next() {
            self.personal_name = Some(personal.channel.clone());
            apply_subscribed(&mut self.personal, &personal).await;
        }
        // Resubscribe every channel from its position; new subscriptions made while
        // disconnected get their reply when their subscribe is answered.
        let mut waiting: HashMap<String, oneshot::Sender<Result<(), ClientError>>> =
            self.waiting.drain(..).collect();
        let channels: Vec<(String, Option<StreamPosition>)> =
            self.channels.iter().map(|(name, channel)| (name.clone(), channel.position.clone())).collect();
        for (channel, position) in channels {
            let mut params = json!({ "channel": channel });
            if let Some(position) = position {
                params["recover"] = json!(position);
            }
            match connection.send(&mut socket, "subscribe", params).await {
                Ok(id) => {
                    let reply = waiting.remove(&channel);
                    connection.pending.insert(id, Pending::Subscribe { channel, reply });
                }
                Err(error) => return lost(error),
            }
        }
        let ended = self.serve(&mut socket, &mut connection).await;
        for (_, pending) in connection.pending.drain() {
            match pending {
                Pending::Call(reply) => drop(reply.send(Err(ClientError::NotConnected))),
                Pending::Done(reply) => drop(reply.send(Err(ClientError::NotConnected))),
                Pending::Subscribe { channel, reply: Some(reply) } => self.waiting.push((channel, reply)),
                Pending::Subscribe { .. } | Pending::Ignore => {}
            }
        }
        ended
    }

    async fn serve(&mut self, socket: &mut Socket, connection: &mut Connection) -> Ended {
        let mut advised = None;
        loop {
            tokio::select! {
                incoming = read(socket, self.config.encoding) => match incoming {
                    Incoming::Frame(ServerFrame::Reply(reply)) => {
                        if let Some(ended) = self.on_reply(connection, reply).await {
                            return ended;
                        }
                    }
                    Incoming::Frame(ServerFrame::Push(push)) => {
                        if let Some(ended) = self.on_push(socket, connection, push, &mut advised).await {
                            return ended;
                        }
                    }
                    Incoming::Ended(Ended::Lost { code, reason, advised: None }) => {
                        return Ended::Lost { code, reason, advised: advised.take() };
                    }
                    Incoming::Ended(ended) => return ended,
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
            Request::Subscribe { channel, events, reply } => {
                if self.channels.contains_key(&channel) {
                    let error = ErrorBody::new(Code::AlreadySubscribed, "already subscribed");
                    let _ = reply.send(Err(ClientError::Server(error)));
                    return Ok(());
                }
                self.channels.insert(channel.clone(), Channel { events, position: None });
                let id = connection.send(socket, "subscribe", json!({ "channel": channel })).await?;
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
                    self.channels.remove(&channel);
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(ClientError::Server(error)));
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
        advised: &mut Option<Duration>,
    ) -> Option<Ended> {
        match push {
            Push::Publication(publication) => {
                let name = publication.channel.clone();
                let channel = self.channel_mut(&name)?;
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
            Push::Disconnect(disconnect) => {
                *advised = disconnect.reconnect_after_ms.map(Duration::from_millis);
            }
            Push::Subscribe(_) => {}
        }
        None
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
    if result.recovered != Some(true) {
        // Fresh or not recoverable: publications continue after the current top.
        channel.position = Some(StreamPosition { offset: result.offset, epoch: result.epoch.clone() });
    }
    let event =
        Event::Subscribed { epoch: result.epoch.clone(), offset: result.offset, recovered: result.recovered };
    let _ = channel.events.send(event).await;
}

fn connect_refused(error: ErrorBody) -> Ended {
    match error.code {
        // Expired: the provider is asked for a new token on the next attempt.
        Code::TokenExpired | Code::Unavailable | Code::Internal | Code::TooManyRequests => {
            Ended::Lost { code: Some(error.code), reason: error.message, advised: None }
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

async fn read(socket: &mut Socket, encoding: Encoding) -> Incoming {
    loop {
        let message = match socket.next().await {
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
                let code = frame.as_ref().and_then(|f| Code::from_u16(u16::from(f.code)));
                let reason = frame.as_ref().map(|f| f.reason.to_string()).unwrap_or_default();
                return Incoming::Ended(match code {
                    Some(code) if !code.should_reconnect() => Ended::Closed { code: Some(code), reason },
                    code => Ended::Lost { code, reason, advised: None },
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
