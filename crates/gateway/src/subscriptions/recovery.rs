//! Where a new subscription starts, and what a join's read means for the client: the
//! `recovered`/`missed` of the subscribe reply and the publications replayed before the
//! subscription goes live. Pure functions of the broker's answer, so both brokers (and
//! the unit tests) share one definition of "recovered" (docs/protocol.md §6).

use switchboard_protocol::{reply::SubscribeResult, StreamPosition};

use crate::broker::{JoinFrom, Joined, Publication};

/// Where a new subscription starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    /// From now: no missed publications.
    Live,
    /// Exactly after this position, or `recovered: false` with nothing replayed.
    Recover(StreamPosition),
    /// Offline delivery (the personal channel at connect): everything retained after the
    /// user's acknowledged position (all that is retained when there is none), with
    /// `recovered` telling whether that is complete.
    Pending,
}

impl From<Option<StreamPosition>> for Resume {
    fn from(position: Option<StreamPosition>) -> Resume {
        position.map_or(Resume::Live, Resume::Recover)
    }
}

impl Resume {
    /// What the broker must read for this start; `user` is the connection's user.
    pub(super) fn read(&self, user: &str) -> JoinFrom {
        match self {
            Resume::Live => JoinFrom::Now,
            Resume::Recover(position) => JoinFrom::After(position.clone()),
            Resume::Pending => JoinFrom::Acked(user.to_string()),
        }
    }

    /// The subscribe reply and the publications to replay, from what the join read.
    pub(super) fn outcome(self, channel: &str, joined: Joined) -> (SubscribeResult, Vec<Publication>) {
        let Joined { page, acked } = joined;
        let (epoch, top) = (page.epoch.to_string(), page.top);
        let result = |recovered, missed| SubscribeResult {
            channel: channel.to_string(),
            epoch: epoch.clone(),
            offset: top,
            recovered,
            missed,
            data: None,
        };
        match self {
            Resume::Live => (result(None, None), Vec::new()),
            Resume::Recover(position) => {
                let from = position.offset;
                // Exact: same epoch, not ahead of the stream (a rolled-back Redis), and
                // every publication after the position still retained.
                let exact = position.epoch == epoch
                    && from <= top
                    && page.publications.len() as u64 == top - from
                    && page.publications.first().is_none_or(|p| p.offset == Some(from + 1));
                if exact {
                    let missed = page.publications.len() as u64;
                    (result(Some(true), Some(missed)), page.publications)
                } else {
                    (result(Some(false), None), Vec::new())
                }
            }
            Resume::Pending => {
                // An acknowledged position of another epoch says nothing about this one.
                let foreign = acked.as_ref().is_some_and(|p| p.epoch != epoch);
                let after = acked.filter(|_| !foreign).map_or(0, |p| p.offset);
                let pending: Vec<Publication> =
                    page.publications.into_iter().filter(|p| p.offset.is_some_and(|o| o > after)).collect();
                let first = pending.first().and_then(|p| p.offset).unwrap_or(top + 1);
                let complete = !foreign && first == after + 1;
                let missed = Some(pending.len() as u64);
                (result(Some(complete), missed), pending)
            }
        }
    }
}
