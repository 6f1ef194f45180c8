//! Server pushes: frames the server sends without a command asking for them.
//!
//! A push is `{"push": "<kind>", ...fields}` and never carries an `id`, which is how a
//! client tells it apart from a reply.
//!
//! A `publication` push leaves out the `epoch` the connection already knows for its
//! channel, to keep the most frequent frame small; [`Publication::apply_known_epoch`] is
//! the client side of that rule.

use serde::{Deserialize, Serialize};

use crate::{ClientInfo, Code};

/// Every push, generic over the publication payload type `D` (the gateway serializes
/// borrowed raw JSON; clients decode into `serde_json::Value`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "push", rename_all = "snake_case")]
pub enum Push<D> {
    /// A message published to a channel this connection is subscribed to.
    Publication(Publication<D>),
    /// A connection joined a channel with join/leave events enabled.
    Join(ChannelClient),
    /// A connection left a channel with join/leave events enabled.
    Leave(ChannelClient),
    /// The server subscribed this connection to a channel (e.g. by an operator).
    Subscribe(crate::reply::SubscribeResult),
    /// The server unsubscribed this connection from a channel.
    Unsubscribe(Unsubscribed),
    /// The connection token expires soon: send `refresh` with a new token.
    Refresh(RefreshNeeded),
    /// The server is about to close the connection; the close frame carries the same code.
    Disconnect(Disconnect),
}

/// A publication as delivered to subscribers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Publication<D> {
    /// Channel it was published to.
    pub channel: String,
    /// Contiguous offset within the epoch; absent for ephemeral publications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Stream epoch. Absent for ephemeral publications, and also whenever it equals the
    /// epoch this connection was last told for the channel (a subscribe result, or an
    /// earlier publication push): see [`Publication::apply_known_epoch`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// Application event name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// Payload.
    pub data: D,
    /// Server time of publication, Unix milliseconds.
    pub ts: u64,
    /// The publishing connection, when a client published it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<ClientInfo>,
    /// Present only when this publication could not be encoded for this connection's wire
    /// format: `data` is then `null` and the offset is still delivered, so the client sees
    /// no gap and knows what it lost (see `docs/protocol.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::ErrorBody>,
}

impl<D> Publication<D> {
    /// The client's half of the epoch rule (docs/protocol.md §5.1.1), for a publication
    /// push received on a connection whose last told epoch for this channel is `known`
    /// (set from every subscribe result of the channel on this connection):
    ///
    /// - a publication with an offset and no epoch is in `known`: it is filled in;
    /// - one that carries an epoch replaces `known` (the stream was reset); this returns
    ///   `true` when that epoch differs from what was known, which the application must
    ///   treat like `recovered: false`;
    /// - an ephemeral publication (no offset) changes nothing.
    ///
    /// A publication without an epoch while nothing is known (never expected from a
    /// server) is left without one.
    pub fn apply_known_epoch(&mut self, known: &mut Option<String>) -> bool {
        if self.offset.is_none() {
            return false;
        }
        match &self.epoch {
            None => {
                self.epoch.clone_from(known);
                false
            }
            Some(epoch) if known.as_deref() == Some(epoch.as_str()) => false,
            Some(epoch) => {
                *known = Some(epoch.clone());
                true
            }
        }
    }
}

/// A join or leave event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelClient {
    /// The channel.
    pub channel: String,
    /// The connection that joined or left.
    pub client: ClientInfo,
}

/// Body of a server-side `unsubscribe` push.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unsubscribed {
    /// The channel left.
    pub channel: String,
    /// Why.
    pub reason: String,
}

/// Body of a `refresh` push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshNeeded {
    /// When the current token expires (Unix seconds).
    pub expires_at: u64,
}

/// Body of a `disconnect` push.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Disconnect {
    /// Code from the table in [`crate::codes`]; also the close frame's code.
    pub code: Code,
    /// Human-readable reason.
    pub reason: String,
    /// Whether the client should reconnect.
    pub reconnect: bool,
    /// Suggested delay before reconnecting, in milliseconds (jittered by the server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconnect_after_ms: Option<u64>,
}

impl Disconnect {
    /// A disconnect for `code` with the reconnect flag taken from the code's range.
    pub fn new(code: Code, reason: impl Into<String>) -> Self {
        Disconnect {
            code,
            reason: reason.into(),
            reconnect: code.should_reconnect(),
            reconnect_after_ms: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(offset: Option<u64>, epoch: Option<&str>) -> Publication<()> {
        Publication {
            channel: "c".into(),
            offset,
            epoch: epoch.map(str::to_string),
            event: None,
            data: (),
            ts: 0,
            from: None,
            error: None,
        }
    }

    #[test]
    fn the_known_epoch_fills_publications_without_one_and_follows_a_carried_one() {
        let mut known = Some("e1".to_string());
        let mut same = publication(Some(4), None);
        assert!(!same.apply_known_epoch(&mut known));
        assert_eq!(same.epoch.as_deref(), Some("e1"));

        let mut reset = publication(Some(1), Some("e2"));
        assert!(reset.apply_known_epoch(&mut known), "a new epoch is reported");
        assert_eq!(known.as_deref(), Some("e2"));
        let mut after = publication(Some(2), None);
        assert!(!after.apply_known_epoch(&mut known));
        assert_eq!(after.epoch.as_deref(), Some("e2"));

        let mut repeated = publication(Some(3), Some("e2"));
        assert!(!repeated.apply_known_epoch(&mut known), "the known epoch, carried again");

        let mut ephemeral = publication(None, None);
        assert!(!ephemeral.apply_known_epoch(&mut known));
        assert_eq!(ephemeral.epoch, None);
    }
}
