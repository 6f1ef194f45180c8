//! Socket.IO clients on a session (docs/socketio.md): Engine.IO packets in, and each
//! Socket.IO packet mapped onto what a native client would send.
//!
//! A CONNECT is the native `connect` (its `auth` gives the token, or the connect hook's
//! data); an event is a native command: a built-in (`subscribe`, `publish`, …), what a
//! `[[socketio.events]]` rule says, or else an `rpc` named after the event. The
//! command then runs through the same handlers as a native one, with the same checks,
//! limits and errors, and its reply goes back as the event's ack (see `crate::wire`).
//! Rooms are channels, with the namespace's prefix.

use serde_json::Value;
use switchboard_protocol::{
    command::{ConnectParams, PublishParams, RpcParams},
    socketio::{self, EnginePacket, SocketIoError, SocketKind, SocketPacket},
    Code, Command, CommandBody, StreamPosition,
};
use tokio_tungstenite::tungstenite::Message;

use super::Session;
use crate::{
    channel::personal_channel,
    config::EventAction,
    error::CommandError,
    outbox::Outbox,
    sio_recovery::{Record, Recovery},
    wire::{self, command_id, SioNamespace, Wire, CONNECT_ID},
};

/// Native methods a Socket.IO client may call by emitting an event of the same name
/// (`socketio.builtin_events`).
pub(crate) const BUILTIN_EVENTS: [&str; 7] =
    ["subscribe", "unsubscribe", "publish", "presence", "presence_stats", "history", "refresh"];

/// Built-ins whose argument may be just the room's name.
const ROOM_EVENTS: [&str; 5] = ["subscribe", "unsubscribe", "presence", "presence_stats", "history"];

/// What a session keeps for Socket.IO.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Binary frames still to skip: the attachments of a refused binary packet.
    skip_binary: u32,
    /// A recoverable session's id and rooms (namespaces with `recovery`).
    pub(super) recovery: Option<Box<Recovery>>,
}

/// The reply to the CONNECT of a recoverable session: `40{sid, pid}`; while a recovery
/// runs it is held back, noting only whether the channels it joined recovered.
pub(super) fn connect_reply<R: serde::Serialize>(
    outbox: &Outbox,
    sid: &str,
    namespace: SioNamespace,
    recovery: &mut Recovery,
    result: &R,
) {
    if recovery.hold_reply {
        let result = serde_json::to_value(result).unwrap_or_default();
        let recovered = result["subscriptions"]
            .as_array()
            .is_none_or(|joined| joined.iter().all(|s| s["recovered"] != Value::Bool(false)));
        recovery.held_recovered = Some(recovered);
        return;
    }
    outbox.push_now(wire::text(socketio::connect_frame(namespace.name, sid, Some(&recovery.pid))));
}

impl Session {
    /// Sends the Engine.IO open packet, the first frame of a Socket.IO connection; a
    /// polling connection is offered the upgrade to a WebSocket.
    pub(super) fn socketio_open(&self, polling: bool) {
        let config = &self.node.config;
        let upgrades: &[&str] = if polling { &["websocket"] } else { &[] };
        let open = serde_json::json!({
            "sid": self.client_id,
            "upgrades": upgrades,
            "pingInterval": config.socketio.ping_interval_ms,
            "pingTimeout": config.socketio.ping_timeout_ms,
            "maxPayload": config.limits.max_message_bytes,
        });
        self.outbox.push_now(wire::text(EnginePacket::Open(&open.to_string()).encode()));
    }

    /// Handles one WebSocket message of a Socket.IO connection.
    pub(super) async fn on_socketio_message(&mut self, message: Message) {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) if self.socketio.skip_binary > 0 => {
                self.socketio.skip_binary -= 1;
                return;
            }
            Message::Binary(_) => {
                return self.close(Code::ProtocolError, "binary frame outside a binary packet", None, false);
            }
            Message::Close(_) => {
                self.client_closed = true;
                return self.control.terminate();
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return,
        };
        self.node.metrics.messages_in.inc();
        self.node.metrics.bytes_in.inc_by(text.len() as u64);
        match EnginePacket::decode(text.as_str()) {
            Ok(EnginePacket::Message(packet)) => Box::pin(self.on_socket_packet(packet)).await,
            Ok(EnginePacket::Ping(data)) => {
                self.outbox.push_now(wire::text(EnginePacket::Pong(data).encode()));
            }
            Ok(EnginePacket::Pong(_) | EnginePacket::Noop) => {}
            Ok(EnginePacket::Close) => {
                self.client_closed = true;
                self.control.terminate();
            }
            // The upgrade itself is completed by the polling transport (`5` on the new
            // WebSocket); one arriving later changes nothing.
            Ok(EnginePacket::Upgrade) if self.writer.is_some() => {}
            Ok(EnginePacket::Upgrade) => {
                self.close(Code::ProtocolError, "Engine.IO upgrade on a WebSocket session", None, false);
            }
            Ok(EnginePacket::Open(_)) => {
                self.close(Code::ProtocolError, "clients do not send Engine.IO open packets", None, false);
            }
            Err(error) => self.close(Code::ProtocolError, &error.to_string(), None, false),
        }
    }

    async fn on_socket_packet(&mut self, text: &str) {
        let packet = match SocketPacket::decode(text) {
            Ok(packet) => packet,
            Err(SocketIoError::Binary) => return self.refuse_binary(text),
            Err(error) => return self.close(Code::ProtocolError, &error.to_string(), None, false),
        };
        match packet.kind {
            SocketKind::Connect => self.socketio_connect(packet).await,
            SocketKind::Event => self.socketio_event(packet).await,
            SocketKind::Disconnect if self.in_namespace(packet.namespace) => {
                // One namespace per connection: leaving it ends the connection.
                self.client_closed = true;
                self.control.terminate();
            }
            // Leaving a namespace the client is not in changes nothing.
            SocketKind::Disconnect => {}
            // The node never asks for acks.
            SocketKind::Ack => tracing::debug!("Socket.IO ack for an event the node never sent"),
            SocketKind::ConnectError => {
                self.close(Code::ProtocolError, "clients do not send CONNECT_ERROR packets", None, false);
            }
        }
    }

    /// Whether the client connected to `namespace`.
    fn in_namespace(&self, namespace: &str) -> bool {
        self.identity.is_some() && matches!(self.wire, Wire::SocketIo(ns) if ns.name == namespace)
    }

    async fn socketio_connect(&mut self, packet: SocketPacket<'_>) {
        let config = &self.node.config.socketio;
        let Some((index, namespace)) = config.namespace(packet.namespace) else {
            // socket.io's own answer: the client gives up on that namespace.
            let refusal = socketio::connect_error_frame(packet.namespace, "Invalid namespace", None);
            self.outbox.push_now(wire::text(refusal));
            return;
        };
        let namespace = SioNamespace::new(index, &namespace.name);
        if self.identity.is_some() {
            let message = "already connected: one Socket.IO namespace per connection (docs/socketio.md)";
            let data = serde_json::json!({ "code": Code::AlreadyConnected });
            let refusal = socketio::connect_error_frame(namespace.name, message, Some(&data));
            self.outbox.push_now(wire::text(refusal));
            return;
        }
        if !self.bucket.try_take() {
            self.wire = Wire::SocketIo(namespace);
            let error = CommandError::refused(Code::TooManyRequests, "command rate limit exceeded");
            return self.reply_error(CONNECT_ID, &error);
        }
        self.wire = Wire::SocketIo(namespace);
        self.control.set_socketio_namespace(namespace);
        let mut auth = match packet.data {
            Some(Value::Object(auth)) => auth,
            _ => serde_json::Map::new(),
        };
        let token = match auth.remove("token") {
            None | Some(Value::Null) => None,
            Some(Value::String(token)) => Some(token),
            Some(_) => {
                let error = CommandError::refused(Code::BadRequest, "`auth.token` must be a string");
                self.reply_error(CONNECT_ID, &error);
                return self.close(Code::Unauthorized, "`auth.token` must be a string", None, true);
            }
        };
        let recoverable = config.namespaces.get(index).is_some_and(|ns| ns.recovery);
        let resume = match (auth.remove("pid"), auth.remove("offset")) {
            (Some(Value::String(pid)), Some(Value::String(offset))) if recoverable => Some((pid, offset)),
            _ => None,
        };
        let data = (!auth.is_empty()).then_some(Value::Object(auth));
        let params = ConnectParams { token, recover: None, data, channels: None };
        match (recoverable, resume) {
            (false, _) => self.handle(Command { id: CONNECT_ID, body: CommandBody::Connect(params) }).await,
            (true, None) => {
                self.socketio.recovery = Some(Box::new(Recovery::new()));
                self.handle(Command { id: CONNECT_ID, body: CommandBody::Connect(params) }).await;
                self.schedule_refresh();
            }
            (true, Some((pid, offset))) => Box::pin(self.socketio_recover(params, pid, offset)).await,
        }
    }

    /// A CONNECT with the `pid` and `offset` of an earlier connection: resumes every room
    /// it was in from the client's position there, sending what it missed before the `40`
    /// that names the same `pid` (`socket.recovered` true). When anything is missing (the
    /// session expired, another user's, a position no longer in a room's history) the
    /// client gets a new `pid` and only its personal channel (`recovered` false).
    async fn socketio_recover(&mut self, mut params: ConnectParams, pid: String, offset: String) {
        let stored = match self.node.broker.load_socketio_session(&pid).await {
            Ok(stored) => stored,
            Err(error) => {
                tracing::debug!(%error, "cannot read a Socket.IO session");
                None
            }
        };
        let record: Option<Record> = stored.and_then(|json| serde_json::from_str(&json).ok());
        let positions = record.as_ref().and_then(|record| record.positions(&offset));
        let personal = record.as_ref().map(|record| personal_channel(&record.user));
        params.recover = positions
            .iter()
            .flatten()
            .find(|(channel, _)| Some(channel) == personal.as_ref())
            .map(|(_, position)| position.clone());
        let mut recovery = Recovery::resuming(pid);
        recovery.hold_reply = true;
        self.socketio.recovery = Some(Box::new(recovery));
        self.handle(Command { id: CONNECT_ID, body: CommandBody::Connect(params) }).await;
        let personal_recovered = self.socketio.recovery.as_mut().and_then(|recovery| {
            recovery.hold_reply = false;
            recovery.held_recovered.take()
        });
        let Some(identity) = &self.identity else {
            // Refused: the CONNECT_ERROR went out.
            return;
        };
        let same_user = record.as_ref().is_some_and(|record| record.user == identity.user);
        let mut recovered = personal_recovered == Some(true) && same_user && positions.is_some();
        let mut joinings = Vec::new();
        if recovered {
            let rooms: Vec<(String, StreamPosition)> = positions
                .into_iter()
                .flatten()
                .filter(|(channel, _)| Some(channel) != personal.as_ref())
                .collect();
            for (channel, position) in rooms {
                match self.join_server_side(&channel, Some(position)).await {
                    Ok(joining) => {
                        let resumed = joining.result.recovered == Some(true);
                        joinings.push(joining);
                        if !resumed {
                            recovered = false;
                            break;
                        }
                    }
                    Err(error) => {
                        tracing::debug!(%error, %channel, "a room of a Socket.IO session cannot be resumed");
                        recovered = false;
                        break;
                    }
                }
            }
        }
        if recovered {
            for joining in joinings {
                self.go_live(joining).await;
            }
        } else {
            let client = self.client_info();
            for joining in joinings {
                self.node.subscriptions.leave(&joining.channel, &joining.namespace, self.conn, &client).await;
            }
            // A new session: the rooms left above never became active in its room list.
            if let Some(recovery) = self.socketio.recovery.as_mut() {
                **recovery = Recovery { rooms: recovery.rooms.clone(), ..Recovery::new() };
            }
        }
        self.store_recovery().await;
        self.schedule_refresh();
        if let (Wire::SocketIo(ns), Some(recovery)) = (self.wire, &self.socketio.recovery) {
            let reply = socketio::connect_frame(ns.name, &self.client_id, Some(&recovery.pid));
            self.outbox.push_now(wire::text(reply));
        }
    }

    /// Stores a recoverable session's rooms (with the recovery window as TTL).
    pub(super) async fn store_recovery(&self) {
        let (Some(recovery), Some(identity)) = (&self.socketio.recovery, &self.identity) else { return };
        if recovery.hold_reply {
            return;
        }
        let record = recovery.rooms.record(&identity.user);
        let Ok(json) = serde_json::to_string(&record) else { return };
        let ttl = std::time::Duration::from_millis(self.node.config.socketio.recovery_window_ms);
        if let Err(error) = self.node.broker.store_socketio_session(&recovery.pid, &json, ttl).await {
            tracing::warn!(%error, "cannot store a Socket.IO session's rooms: it may not be recoverable");
        }
    }

    /// Refreshes the stored rooms' TTL every third of the window while connected, so
    /// that they outlive the connection by at least two thirds of it.
    fn schedule_refresh(&mut self) {
        let every = std::time::Duration::from_millis(self.node.config.socketio.recovery_window_ms / 3 + 1);
        if let Some(recovery) = self.socketio.recovery.as_mut() {
            recovery.refresh_at = Some(tokio::time::Instant::now() + every);
        }
    }

    /// The refresh, when due (from the session's timer).
    pub(super) fn refresh_recovery(&mut self, now: tokio::time::Instant) {
        let due = self.socketio.recovery.as_ref().and_then(|r| r.refresh_at).is_some_and(|at| now >= at);
        if !due {
            return;
        }
        self.schedule_refresh();
        let (Some(recovery), Some(identity)) = (&self.socketio.recovery, &self.identity) else { return };
        let Ok(json) = serde_json::to_string(&recovery.rooms.record(&identity.user)) else { return };
        let (node, pid) = (self.node.clone(), recovery.pid.clone());
        let ttl = std::time::Duration::from_millis(node.config.socketio.recovery_window_ms);
        tokio::spawn(async move {
            if let Err(error) = node.broker.store_socketio_session(&pid, &json, ttl).await {
                tracing::debug!(%error, "cannot refresh a Socket.IO session's rooms");
            }
        });
    }

    async fn socketio_event(&mut self, packet: SocketPacket<'_>) {
        let id = command_id(packet.ack_id);
        if !self.in_namespace(packet.namespace) {
            let error = CommandError::refused(
                Code::NotConnected,
                format!("not connected to namespace `{}`: send CONNECT first", packet.namespace),
            );
            return self.reply_error(id, &error);
        }
        if !self.bucket.try_take() {
            let error = CommandError::refused(Code::TooManyRequests, "command rate limit exceeded");
            return self.reply_error(id, &error);
        }
        let Some(Value::Array(mut items)) = packet.data else {
            unreachable!("SocketPacket::decode checks that an event is a non-empty array")
        };
        let name = match items.remove(0) {
            Value::String(name) => name,
            other => other.to_string(),
        };
        let argument = match items.len() {
            0 => Value::Null,
            1 => items.pop().unwrap_or(Value::Null),
            _ => Value::Array(items),
        };
        match self.event_command(&name, argument) {
            Ok(body) => Box::pin(self.handle(Command { id, body })).await,
            Err(error) => self.reply_error(id, &error),
        }
    }

    /// The native command an event stands for.
    fn event_command(&self, name: &str, argument: Value) -> Result<CommandBody, CommandError> {
        let config = &self.node.config.socketio;
        let prefix = match self.wire {
            Wire::SocketIo(ns) => {
                config.namespaces.get(usize::from(ns.index)).map_or("", |ns| ns.prefix.as_str())
            }
            Wire::Native(_) => "",
        };
        let bad = |message: String| CommandError::refused(Code::BadRequest, message);
        if let Some(rule) = config.rule(name) {
            return match (rule.action, &rule.channel) {
                (EventAction::Rpc, _) => Ok(CommandBody::Rpc(RpcParams {
                    method: rule.method.clone().unwrap_or_else(|| name.to_string()),
                    data: argument,
                    idempotency_key: None,
                })),
                (EventAction::Publish, Some(channel)) => Ok(CommandBody::Publish(PublishParams {
                    channel: channel.clone(),
                    event: Some(name.to_string()),
                    data: argument,
                    ephemeral: false,
                    idempotency_key: None,
                })),
                (EventAction::Publish, None) => {
                    let mut params = argument;
                    if let Some(params) = params.as_object_mut() {
                        params.entry("event").or_insert_with(|| Value::String(name.to_string()));
                    }
                    let mut params: PublishParams = serde_json::from_value(params)
                        .map_err(|e| bad(format!("`{name}` takes {{\"channel\", \"data\"}}: {e}")))?;
                    params.channel.insert_str(0, prefix);
                    Ok(CommandBody::Publish(params))
                }
            };
        }
        if config.builtin_events && BUILTIN_EVENTS.contains(&name) {
            let mut params = match argument {
                Value::String(room) if ROOM_EVENTS.contains(&name) => serde_json::json!({ "channel": room }),
                Value::Null => Value::Object(Default::default()),
                other => other,
            };
            if !params.is_object() {
                return Err(bad(format!("the argument of `{name}` must be an object (or a room name)")));
            }
            if let Some(Value::String(channel)) = params.get_mut("channel") {
                channel.insert_str(0, prefix);
            }
            let command = serde_json::json!({ "method": name, "params": params });
            return serde_json::from_value(command).map_err(|e| bad(format!("bad `{name}` argument: {e}")));
        }
        Ok(CommandBody::Rpc(RpcParams { method: name.to_string(), data: argument, idempotency_key: None }))
    }

    /// Refuses a binary packet (attachments are not supported): its ack, or an
    /// `sb:error` event, says so, and its attachment frames are skipped.
    fn refuse_binary(&mut self, text: &str) {
        let header = socketio::binary_header(text);
        self.socketio.skip_binary = self.socketio.skip_binary.saturating_add(header.attachments);
        let error = CommandError::refused(
            Code::BadRequest,
            "binary attachments are not supported: send JSON (e.g. base64 strings), see docs/socketio.md",
        );
        self.reply_error(command_id(header.ack_id), &error);
    }
}
