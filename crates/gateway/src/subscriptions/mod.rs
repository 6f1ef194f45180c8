//! The subscription lifecycle, owned by the node: everything that happens between "this
//! connection may subscribe to this channel" and "it is live", and again when it leaves.
//!
//! Joining, in this order:
//! 1. register the connection in the [`Hub`] as *buffering*, so that no live event of the
//!    channel is lost while its position is read;
//! 2. one [`Broker::join`]: broker interest, the stream read [`Resume`] asks for,
//!    presence and the join event (one Redis round trip, see docs/redis.md `sb_join`);
//! 3. the caller queues its reply and the missed publications ([`Joining`]), then
//!    [`Subscriptions::go_live`] replays what the hub buffered after the position the
//!    client was given, and switches to live delivery (gap-free, duplicate-free).
//!
//! Leaving undoes it: hub, broker interest, presence, leave event ([`Broker::leave`]).
//!
//! Why a module of its own: the sequence used to be spread over the session, the hub and
//! the broker, which made it hard to optimise (five Redis round trips per fresh
//! subscribe) and impossible to unit-test without a WebSocket. It owns the *sequence*;
//! protocol concerns (authorisation, limits, replies, pushing frames through the outbox,
//! which channels a connection holds) stay in the session, and channel storage in the
//! broker. It must not encode frames or know about commands.

mod recovery;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use switchboard_protocol::{reply::SubscribeResult, ClientInfo, Code};

pub use recovery::Resume;

use crate::{
    broker::{Broker, JoinRequest, Publication},
    channel::Namespace,
    error::CommandError,
    hub::{ConnId, Hub},
    outbox::Outbox,
    wire::Wire,
};

/// The node's subscription lifecycle: see the module docs.
pub struct Subscriptions {
    hub: Arc<Hub>,
    broker: Arc<dyn Broker>,
}

/// The connection a subscription belongs to.
pub struct Member<'a> {
    /// The connection.
    pub conn: ConnId,
    /// Its outbound queue (the hub delivers into it).
    pub outbox: &'a Outbox,
    /// Its wire format.
    pub wire: Wire,
    /// A recoverable Socket.IO connection's rooms and the channel's slot in them.
    pub recovery: Option<(Arc<crate::sio_recovery::SioRooms>, usize)>,
    /// Who it is, as presence and join/leave events show it.
    pub client: &'a ClientInfo,
}

/// A subscription whose position has been read but that is not live yet: the caller
/// sends `result` and `missed`, then calls [`Subscriptions::go_live`].
#[derive(Debug)]
pub struct Joining {
    /// The channel.
    pub channel: String,
    /// Its namespace, resolved once by the caller.
    pub namespace: Arc<Namespace>,
    /// The subscribe reply.
    pub result: SubscribeResult,
    /// Publications to replay after the reply, oldest first.
    pub missed: Vec<Publication>,
}

impl Subscriptions {
    /// The lifecycle over `hub` and `broker`.
    pub fn new(hub: Arc<Hub>, broker: Arc<dyn Broker>) -> Subscriptions {
        Subscriptions { hub, broker }
    }

    /// Registers `member` in `channel` (buffering), and has the broker register interest,
    /// read the position (and missed publications) as `resume` asks, record presence and
    /// emit the join event, as `namespace` enables them.
    ///
    /// # Errors
    /// [`Code::AlreadySubscribed`] when the connection already is; a broker failure
    /// (nothing is left registered then).
    pub async fn join(
        &self,
        channel: &str,
        namespace: &Arc<Namespace>,
        member: &Member<'_>,
        resume: Resume,
    ) -> Result<Joining, CommandError> {
        let (outbox, recovery) = (member.outbox.clone(), member.recovery.clone());
        if !self.hub.subscribe_recoverable(channel, member.conn, outbox, member.wire, recovery) {
            return Err(CommandError::refused(Code::AlreadySubscribed, "already subscribed"));
        }
        let config = &namespace.config;
        let stream = namespace.stream;
        let request = JoinRequest {
            from: resume.read(&member.client.user),
            limit: stream.history_size,
            presence: config.presence.then(|| member.client.clone()),
            join_event: config.join_leave.then(|| member.client.clone()),
            stream,
        };
        match self.broker.join(channel, request).await {
            Ok(joined) => {
                let (result, missed) = resume.outcome(channel, joined);
                Ok(Joining { channel: channel.to_string(), namespace: namespace.clone(), result, missed })
            }
            Err(error) => {
                self.hub.unsubscribe(channel, member.conn);
                Err(error.into())
            }
        }
    }

    /// Replays what the hub buffered after the position `joining` gave the client, and
    /// switches the subscription to live delivery.
    pub fn go_live(&self, joining: &Joining, conn: ConnId, told_epoch: &str) {
        self.hub.go_live(&joining.channel, conn, Some((told_epoch, joining.result.offset)));
    }

    /// Ends `client`'s subscription of `channel` on connection `conn`: hub, broker
    /// interest, presence and the leave event. Failures past the hub are logged: the
    /// connection is gone from the channel either way. Returns whether it was subscribed
    /// (nothing is done otherwise).
    pub async fn leave(
        &self,
        channel: &str,
        namespace: &Namespace,
        conn: ConnId,
        client: &ClientInfo,
    ) -> bool {
        if !self.hub.unsubscribe(channel, conn) {
            return false;
        }
        let config = &namespace.config;
        if let Err(error) = self.broker.leave(channel, client, config.presence, config.join_leave).await {
            tracing::warn!(%error, %channel, "cannot remove presence or emit leave");
        }
        true
    }
}
