//! Command handlers of a session: one method per protocol method.
//!
//! Each handler checks what the protocol requires (connected, channel valid, namespace
//! rule, permission, limits) in that order, so the first failing rule names the error.
//! Handlers queue their own success reply because `subscribe` must queue the reply
//! *before* the recovered publications and before switching the subscription live.

use std::sync::Arc;

use switchboard_protocol::{
    command::{
        AckParams, ChannelParams, ConnectParams, HistoryParams, PublishParams, RefreshParams,
        SubscribeParams, MAX_IDEMPOTENCY_KEY_LEN,
    },
    push::Push,
    reply::{
        ConnectResult, Empty, PresenceResult, PresenceStatsResult, PublishResult, RefreshResult,
        SubscribeResult,
    },
    ClientInfo, Code, Command, CommandBody, StreamPosition,
};

use super::{Identity, Session};
use crate::{
    auth::AuthError,
    broker::{LifecycleEvent, NewPublication, Since},
    channel::{personal_channel, Namespace},
    config::SubscribePolicy,
    error::CommandError,
    hub::{history_reply, publication_frame, Epoch},
    rpc::RpcError,
    subscriptions::{Joining, Member, Resume},
};

impl Session {
    /// Handles one decoded command.
    pub(super) async fn handle(&mut self, command: Command) {
        let id = command.id;
        let outcome = match command.body {
            CommandBody::Connect(params) => self.connect(id, params).await,
            _ if self.identity.is_none() => {
                Err(CommandError::refused(Code::NotConnected, "send `connect` first"))
            }
            CommandBody::Subscribe(params) => self.subscribe(id, params).await,
            CommandBody::Unsubscribe(params) => self.unsubscribe(id, params).await,
            CommandBody::Publish(params) => self.publish(id, params).await,
            CommandBody::Presence(params) => self.presence(id, params).await,
            CommandBody::PresenceStats(params) => self.presence_stats(id, params).await,
            CommandBody::History(params) => self.history(id, params).await,
            CommandBody::Refresh(params) => self.refresh(id, params),
            CommandBody::Ack(params) => self.ack(id, params).await,
            CommandBody::Rpc(params) => self.rpc(id, params),
            CommandBody::Ping(_) => {
                self.reply(id, Empty {});
                Ok(())
            }
        };
        if let Err(error) = outcome {
            self.reply_error(id, &error);
        }
    }

    pub(super) fn identity(&self) -> &Identity {
        // `handle` refuses every command but `connect` before `connect` succeeded.
        self.identity.as_ref().unwrap_or_else(|| unreachable!("checked in handle"))
    }

    pub(super) fn client_info(&self) -> ClientInfo {
        let identity = self.identity();
        ClientInfo {
            client: self.client_id.clone(),
            user: identity.user.clone(),
            info: identity.claims.info.clone(),
        }
    }

    async fn connect(&mut self, id: u64, params: ConnectParams) -> Result<(), CommandError> {
        if self.identity.is_some() {
            return Err(CommandError::refused(Code::AlreadyConnected, "already connected"));
        }
        let mut hooked = Vec::new();
        let claims = match params.token.or_else(|| self.bearer.take()) {
            Some(token) => match self.node.verifier.verify_connection(&token) {
                Ok(claims) => claims,
                Err(error) => return self.refuse_connect(id, error),
            },
            None if self.node.config.auth.connect_hook => match self.connect_hook(params.data).await {
                Ok(admitted) => {
                    hooked = admitted.channels;
                    admitted.claims
                }
                Err(error) => return self.refuse_by_hook(id, error),
            },
            None if self.node.config.auth.allow_anonymous => Default::default(),
            None => {
                return self
                    .refuse_connect(id, AuthError::Claim("no token in connect or Authorization header"))
            }
        };
        self.hook_context = None;
        let user = claims.sub.clone().unwrap_or_default();
        let personal = (!user.is_empty()).then(|| personal_channel(&user));
        if let Some(channel) = &personal {
            if self.node.rules.resolve(channel).is_err() {
                let error = AuthError::Claim("`sub` has characters not allowed in channel names");
                return self.refuse_connect(id, error);
            }
            if !self.node.try_add_user_connection(&user) {
                let message = "too many connections for this user";
                self.reply_error(id, &CommandError::refused(Code::LimitExceeded, message));
                self.close(Code::TooManyConnections, message, None, true);
                return Ok(());
            }
        }
        tracing::Span::current().record("user", user.as_str());
        self.identity = Some(Identity { user, expires_at: claims.exp, claims, refresh_sent: false });
        if let Err(error) = self.record_connect().await {
            // A connection the backends would never hear of: refuse it, and retry.
            self.reply_error(id, &error);
            self.close(Code::ServerError, "cannot record the connection", None, true);
            return Ok(());
        }
        // The server's own subscriptions: the personal channel, then the hook's channels.
        let mut wanted: Vec<(String, Option<StreamPosition>)> = Vec::new();
        if let Some(channel) = personal {
            wanted.push((channel, params.recover));
        }
        let mut positions = params.channels.unwrap_or_default();
        for channel in hooked {
            if !wanted.iter().any(|(known, _)| *known == channel) {
                let position = positions.remove(&channel);
                wanted.push((channel, position));
            }
        }
        let mut joinings = Vec::with_capacity(wanted.len());
        for (channel, position) in wanted {
            match self.join_server_side(&channel, position).await {
                Ok(joining) => joinings.push(joining),
                Err(error) => {
                    // Without one of them the connection would silently miss messages:
                    // refuse it (nothing stays joined) and let the client retry.
                    for joining in &joinings {
                        let client = self.client_info();
                        self.node
                            .subscriptions
                            .leave(&joining.channel, &joining.namespace, self.conn, &client)
                            .await;
                    }
                    self.reply_error(id, &error);
                    self.close(Code::ServerError, "cannot subscribe the connection's channels", None, true);
                    return Ok(());
                }
            }
        }
        let identity = self.identity();
        let result = ConnectResult {
            client: self.client_id.clone(),
            user: identity.user.clone(),
            node: self.node.id.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            ping_interval_ms: self.node.config.heartbeat.ping_interval_ms,
            expires_at: identity.expires_at,
            subscriptions: joinings.iter().map(|j| j.result.clone()).collect(),
        };
        self.reply(id, result);
        for joining in joinings {
            self.go_live(joining).await;
        }
        Ok(())
    }

    /// Records the connect in the lifecycle stream, when it is enabled.
    async fn record_connect(&self) -> Result<(), CommandError> {
        if !self.node.config.lifecycle.enabled {
            return Ok(());
        }
        let identity = self.identity();
        let event = LifecycleEvent::Connect {
            client: &self.client_id,
            user: &identity.user,
            info: identity.claims.info.as_ref(),
        };
        Ok(self.node.broker.lifecycle(event).await?)
    }

    /// Answers a `connect` the connect hook refused, and closes the connection: the
    /// backend's own denial closes with 3501 (do not reconnect as is), a hook that failed
    /// or timed out with 3006 (try again).
    fn refuse_by_hook(&self, id: u64, error: RpcError) -> Result<(), CommandError> {
        let close = match error {
            RpcError::Backend { .. } => Code::Unauthorized,
            _ => Code::ServerError,
        };
        let reason = error.to_string();
        self.node.metrics.auth_failures.with_label_values(&["connect_hook"]).inc();
        self.reply_error(id, &CommandError::Hook(error));
        self.close(close, &reason, None, true);
        Ok(())
    }

    /// Answers a refused `connect`, counts the failure and closes the connection: 3004
    /// (reconnect with a fresh token) for an expired token, 3501 otherwise.
    fn refuse_connect(&self, id: u64, error: AuthError) -> Result<(), CommandError> {
        self.count_auth_failure(&error);
        let code =
            if matches!(error, AuthError::Expired) { Code::ConnectionExpired } else { Code::Unauthorized };
        let reason = error.to_string();
        self.reply_error(id, &CommandError::Auth(error));
        self.close(code, &reason, None, true);
        Ok(())
    }

    fn count_auth_failure(&self, error: &AuthError) {
        self.node.metrics.auth_failures.with_label_values(&[error.reason()]).inc();
    }

    async fn subscribe(&mut self, id: u64, params: SubscribeParams) -> Result<(), CommandError> {
        let namespace = self.node.rules.resolve(&params.channel)?.clone();
        if self.subscriptions.contains_key(&params.channel) {
            return Err(CommandError::refused(Code::AlreadySubscribed, "already subscribed"));
        }
        let max = self.node.config.limits.max_subscriptions_per_connection;
        if self.subscriptions.len() >= max {
            return Err(CommandError::refused(
                Code::LimitExceeded,
                format!("at most {max} subscriptions per connection"),
            ));
        }
        self.authorize(&params.channel, &namespace, params.token.as_deref())?;
        let initial = match namespace.config.subscribe_hook {
            true => self.subscribe_hook(&params.channel, params.data).await?,
            false => None,
        };
        let joining = self.join(&params.channel, &namespace, params.recover.into()).await?;
        self.reply(id, SubscribeResult { data: initial, ..joining.result.clone() });
        self.go_live(joining).await;
        Ok(())
    }

    /// Checks that this connection may subscribe to `channel`.
    fn authorize(
        &self,
        channel: &str,
        namespace: &Namespace,
        token: Option<&str>,
    ) -> Result<(), CommandError> {
        let identity = self.identity();
        if namespace.policy_allows(&identity.user, channel) {
            return Ok(());
        }
        if namespace.config.subscribe == SubscribePolicy::Owner {
            return Err(CommandError::refused(
                Code::PermissionDenied,
                "this channel belongs to another user",
            ));
        }
        if identity.claims.grants_channel(channel) {
            return Ok(());
        }
        if let Some(token) = token {
            self.node
                .verifier
                .verify_subscription(token, &identity.user, channel)
                .inspect_err(|error| self.count_auth_failure(error))?;
            return Ok(());
        }
        Err(CommandError::refused(Code::PermissionDenied, "not allowed to subscribe to this channel"))
    }

    /// Checks that this connection may read or publish in `channel`: it is subscribed, or
    /// it could subscribe without a subscription token.
    fn authorize_access(&self, channel: &str, namespace: &Namespace) -> Result<(), CommandError> {
        if self.subscriptions.contains_key(channel) {
            return Ok(());
        }
        if namespace.config.subscribe_hook {
            // Only the hook knows who may be here, and it answers subscriptions.
            return Err(CommandError::refused(
                Code::PermissionDenied,
                "subscribe first: this namespace's subscribe hook decides who may access it",
            ));
        }
        self.authorize(channel, namespace, None)
    }

    /// Joins a channel the server subscribes the connection to itself (personal channel,
    /// connect hook, operator), without authorisation: from the client's own position
    /// when it has one; otherwise the personal channel starts with offline delivery from
    /// the user's acknowledged position, any other channel from now.
    pub(super) async fn join_server_side(
        &mut self,
        channel: &str,
        position: Option<StreamPosition>,
    ) -> Result<Joining, CommandError> {
        let namespace = self.node.rules.resolve(channel)?.clone();
        let personal = personal_channel(&self.identity().user) == channel;
        let resume = match position {
            Some(position) => Resume::Recover(position),
            None if personal => Resume::Pending,
            None => Resume::Live,
        };
        self.join(channel, &namespace, resume).await
    }

    /// Carries out an operator's server-side subscribe (HTTP API or publisher crate): a
    /// `subscribe` push, then the recovered publications. A connection already subscribed
    /// is left as it is; one at its subscription limit, or a join the broker fails, is
    /// logged and counted, and the connection goes on without it.
    pub(super) async fn subscribe_by_server(&mut self, channel: String, recover: Option<StreamPosition>) {
        if self.identity.is_none() || self.subscriptions.contains_key(&channel) {
            return;
        }
        let max = self.node.config.limits.max_subscriptions_per_connection;
        let outcome = if self.subscriptions.len() >= max {
            Err(CommandError::refused(
                Code::LimitExceeded,
                format!("at most {max} subscriptions per connection"),
            ))
        } else {
            self.join_server_side(&channel, recover).await
        };
        match outcome {
            Ok(joining) => {
                self.push(&Push::<()>::Subscribe(joining.result.clone()));
                self.go_live(joining).await;
            }
            Err(error) => {
                let code = error.code();
                self.node.metrics.command_errors.with_label_values(&[code.slug()]).inc();
                tracing::warn!(%channel, %error, "server-side subscribe failed");
            }
        }
    }

    /// Starts a subscription through the node's lifecycle (buffering until [`go_live`]).
    ///
    /// [`go_live`]: Session::go_live
    async fn join(
        &self,
        channel: &str,
        namespace: &Arc<Namespace>,
        resume: Resume,
    ) -> Result<Joining, CommandError> {
        let client = self.client_info();
        let recovery = self.socketio.recovery.as_ref().map(|r| (r.rooms.clone(), r.rooms.slot(channel)));
        let member =
            Member { conn: self.conn, outbox: &self.outbox, wire: self.wire, recovery, client: &client };
        self.node.subscriptions.join(channel, namespace, &member, resume).await
    }

    /// Queues the missed publications and switches the subscription live (presence and
    /// the join event were recorded by the join).
    ///
    /// The reply just told the client the stream's epoch, so recovered publications leave
    /// it out (they are read from that stream); the hub goes on from the epoch told.
    pub(super) async fn go_live(&mut self, joining: Joining) {
        let mut told = joining.result.epoch.as_str();
        let recovery = self.socketio.recovery.as_ref().map(|r| {
            r.rooms.joined(&joining.channel, &joining.result.epoch, joining.result.offset);
            (r.rooms.clone(), r.rooms.slot(&joining.channel))
        });
        for publication in &joining.missed {
            let epoch = Epoch::against(publication.epoch.as_deref(), told);
            if let (Epoch::Carry, Some(carried)) = (epoch, publication.epoch.as_deref()) {
                told = carried;
            }
            match publication_frame(publication, self.wire, epoch) {
                // A recoverable Socket.IO connection: the frame carries the position
                // vector, queued under the rooms' lock (the missed publications must fit
                // the queue: `limits.outbound_queue_frames`).
                Ok(message) if recovery.is_some() => {
                    let Some((rooms, slot)) = &recovery else { break };
                    let offset = publication.offset.unwrap_or(0);
                    if !rooms.deliver(*slot, offset, &message, |frame| self.outbox.push(frame, None)) {
                        break;
                    }
                }
                Ok(message) => {
                    if !self.outbox.push_waiting(message, self.outbound_wait()).await {
                        break;
                    }
                }
                Err(error) => {
                    // Even the placeholder failed: the client would see a gap, so it must
                    // not go on as if recovered.
                    let channel = &joining.channel;
                    tracing::error!(%error, %channel, "cannot encode a recovered publication");
                    self.close(Code::ServerError, "cannot encode a recovered publication", None, true);
                    break;
                }
            }
        }
        let told = told.to_string();
        self.node.subscriptions.go_live(&joining, self.conn, &told);
        self.record_channel_event(&joining.channel, true).await;
        self.subscriptions.insert(joining.channel, joining.namespace);
        self.store_recovery().await;
    }

    async fn unsubscribe(&mut self, id: u64, params: ChannelParams) -> Result<(), CommandError> {
        self.node.rules.resolve(&params.channel)?;
        if !self.subscriptions.contains_key(&params.channel) {
            return Err(CommandError::refused(Code::NotSubscribed, "not subscribed"));
        }
        if self.identity().user.as_str() != "" && params.channel == personal_channel(&self.identity().user) {
            // It carries notifications and operator commands for this connection.
            return Err(CommandError::refused(Code::PermissionDenied, "the personal channel cannot be left"));
        }
        self.leave(&params.channel).await;
        self.reply(id, Empty {});
        self.record_channel_event(&params.channel, false).await;
        Ok(())
    }

    /// Removes a subscription everywhere: hub, broker interest, presence (with a leave event).
    pub(super) async fn leave(&mut self, channel: &str) {
        let Some(namespace) = self.subscriptions.remove(channel) else {
            return;
        };
        let client = self.client_info();
        self.node.subscriptions.leave(channel, &namespace, self.conn, &client).await;
        if let Some(recovery) = &self.socketio.recovery {
            recovery.rooms.left(channel);
            self.store_recovery().await;
        }
    }

    async fn publish(&mut self, id: u64, params: PublishParams) -> Result<(), CommandError> {
        check_idempotency_key(params.idempotency_key.as_deref())?;
        let namespace = self.node.rules.resolve(&params.channel)?.clone();
        if !namespace.config.publish {
            return Err(CommandError::refused(
                Code::PermissionDenied,
                "client publishing is disabled in this namespace",
            ));
        }
        self.authorize_access(&params.channel, &namespace)?;
        let mut params = params;
        if namespace.config.publish_hook {
            self.publish_hook(&mut params).await?;
        }
        let data =
            serde_json::value::to_raw_value(&params.data).map_err(switchboard_protocol::CodecError::from)?;
        // Scoped by user, so one user's keys can never suppress another's (or a backend's)
        // publications.
        let idempotency_key = (!params.ephemeral)
            .then_some(params.idempotency_key)
            .flatten()
            .map(|key| format!("u:{}:{key}", self.identity().user));
        let publication = NewPublication {
            event: params.event,
            data,
            from: Some(self.client_info()),
            ephemeral: params.ephemeral,
            idempotency_key,
        };
        let position = self.node.publish(&params.channel, publication).await?;
        let (offset, epoch) = position.map(|p| (p.offset, p.epoch)).unzip();
        self.reply(id, PublishResult { offset, epoch });
        Ok(())
    }

    async fn presence(&mut self, id: u64, params: ChannelParams) -> Result<(), CommandError> {
        self.presence_channel(&params.channel)?;
        let clients = self.node.broker.presence(&params.channel).await?;
        self.reply(id, PresenceResult { clients });
        Ok(())
    }

    async fn presence_stats(&mut self, id: u64, params: ChannelParams) -> Result<(), CommandError> {
        self.presence_channel(&params.channel)?;
        let stats = self.node.broker.presence_stats(&params.channel).await?;
        self.reply(id, PresenceStatsResult { clients: stats.clients, users: stats.users });
        Ok(())
    }

    fn presence_channel(&self, channel: &str) -> Result<(), CommandError> {
        let namespace = self.node.rules.resolve(channel)?;
        if !namespace.config.presence {
            return Err(CommandError::refused(Code::NotAvailable, "presence is disabled in this namespace"));
        }
        self.authorize_access(channel, namespace)
    }

    async fn history(&mut self, id: u64, params: HistoryParams) -> Result<(), CommandError> {
        let namespace = self.node.rules.resolve(&params.channel)?.clone();
        if namespace.config.history_size == 0 {
            return Err(CommandError::refused(Code::NotAvailable, "history is disabled in this namespace"));
        }
        self.authorize_access(&params.channel, &namespace)?;
        let max = self.node.config.limits.max_history_limit;
        let limit = params.limit.unwrap_or(max).min(max) as usize;
        let since = params.since.map_or(Since::Latest, Since::After);
        // A reply must fit in the connection's outbound budget: the broker stops reading
        // at half of it (payloads and events; envelopes and `from` add the rest), and a
        // reply that still comes out larger is cut further. Either way `more` tells the
        // client to continue after the last publication it got.
        let budget = self.node.config.limits.outbound_queue_bytes;
        let mut page =
            self.node.broker.history(&params.channel, since, limit, budget / 2, namespace.stream).await?;
        let mut more = page.truncated;
        let message = loop {
            let Some(message) = history_reply(id, &page, more, self.wire)? else {
                // A Socket.IO `history` event that asked for no ack.
                return Ok(());
            };
            let size = message.len();
            if size <= budget || page.publications.len() <= 1 {
                break message;
            }
            let keep = (page.publications.len() * budget / size).min(page.publications.len() - 1);
            page.publications.truncate(keep.max(1));
            more = true;
        };
        self.outbox.push_waiting(message, self.outbound_wait()).await;
        Ok(())
    }

    async fn ack(&mut self, id: u64, params: AckParams) -> Result<(), CommandError> {
        let namespace = self.node.rules.resolve(&params.channel)?.clone();
        if self.identity().user.is_empty() {
            return Err(CommandError::refused(
                Code::NotAvailable,
                "anonymous connections cannot acknowledge",
            ));
        }
        self.authorize_access(&params.channel, &namespace)?;
        let position = StreamPosition { offset: params.offset, epoch: params.epoch };
        self.node.broker.ack(&params.channel, &self.identity().user, position).await?;
        self.reply(id, Empty {});
        Ok(())
    }

    fn refresh(&mut self, id: u64, params: RefreshParams) -> Result<(), CommandError> {
        let claims = self
            .node
            .verifier
            .verify_connection(&params.token)
            .inspect_err(|error| self.count_auth_failure(error))?;
        let identity = self.identity.as_mut().unwrap_or_else(|| unreachable!("checked in handle"));
        if identity.user.is_empty() {
            return Err(CommandError::refused(
                Code::NotAvailable,
                "anonymous connections have no token to refresh",
            ));
        }
        if claims.sub.as_deref() != Some(identity.user.as_str()) {
            return Err(CommandError::Auth(AuthError::Claim("refresh token is for another user")));
        }
        identity.expires_at = claims.exp;
        identity.refresh_sent = false;
        identity.claims = claims;
        let expires_at = identity.expires_at;
        self.reply(id, RefreshResult { expires_at });
        Ok(())
    }
}

/// Refuses an idempotency key longer than the protocol allows (it becomes part of a
/// Redis key, and is passed to backends).
pub(super) fn check_idempotency_key(key: Option<&str>) -> Result<(), CommandError> {
    match key {
        Some(key) if key.len() > MAX_IDEMPOTENCY_KEY_LEN || key.is_empty() => Err(CommandError::refused(
            Code::BadRequest,
            format!("idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes"),
        )),
        _ => Ok(()),
    }
}
