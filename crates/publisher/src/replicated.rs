//! Replicated publishing (docs/redis.md §4.11): when the gateways run with
//! `broker.ack_replicas` > 0 they declare it in every namespace's retention, and the
//! publisher holds its publications the same way they do. `sb_publish … hold` and one
//! `WAIT` go in the same pipeline (`WAIT` counts the writes of the connection it runs
//! on), then the publications enough replicas acknowledged are committed with
//! `sb_commit`, pipelined too: a batch costs one `WAIT` however many it holds.

use switchboard_protocol::redis as keys;

use crate::{PublishError, Published, Retention};

/// What committing one held publication needs.
#[derive(Debug, Clone)]
pub(crate) struct Hold {
    replicas: u32,
    timeout_ms: u64,
    stream: String,
    meta: String,
    live: String,
}

impl Hold {
    /// The hold of a publication to `channel`, when its retention asks for replicas.
    pub(crate) fn for_channel(channel: &str, retention: &Retention) -> Option<Hold> {
        (retention.ack_replicas > 0).then(|| Hold {
            replicas: retention.ack_replicas,
            timeout_ms: retention.ack_timeout_ms.max(1),
            stream: keys::stream(channel),
            meta: keys::meta(channel),
            live: keys::live(channel),
        })
    }
}

/// One `WAIT` covering every hold of a pipeline: the most replicas any asks for, the
/// longest timeout.
pub(crate) fn wait_command<'a>(holds: impl Iterator<Item = &'a Hold>) -> Option<(redis::Cmd, u32)> {
    let (replicas, timeout_ms) = holds.fold(None, |acc: Option<(u32, u64)>, hold| match acc {
        None => Some((hold.replicas, hold.timeout_ms)),
        Some((r, t)) => Some((r.max(hold.replicas), t.max(hold.timeout_ms))),
    })?;
    let mut command = redis::cmd("WAIT");
    command.arg(replicas).arg(timeout_ms);
    Some((command, replicas))
}

/// A held publish's reply: the result, and the envelope still to commit (none for a
/// duplicate of a committed publication).
pub(crate) fn parse_held(
    channel: &str,
    reply: redis::Value,
) -> Result<(Published, Option<String>), PublishError> {
    let (offset, epoch, duplicate, envelope): (u64, String, u8, Option<String>) = match reply {
        redis::Value::Array(items) if items.len() == 3 => {
            let (offset, epoch, duplicate): (u64, String, u8) =
                redis::from_redis_value(redis::Value::Array(items))
                    .map_err(|e| PublishError::UnexpectedReply(e.to_string()))?;
            (offset, epoch, duplicate, None)
        }
        other => redis::from_redis_value(other).map_err(|e| PublishError::UnexpectedReply(e.to_string()))?,
    };
    let published = Published {
        channel: channel.to_string(),
        offset: Some(offset),
        epoch: Some(epoch),
        duplicate: duplicate == 1,
    };
    Ok((published, envelope))
}

/// `sb_commit` of one held publication that enough replicas acknowledged, or the error
/// when too few did.
pub(crate) fn commit_command(
    hold: &Hold,
    published: &Published,
    envelope: String,
    acknowledged: i64,
) -> Result<redis::Cmd, PublishError> {
    if acknowledged < i64::from(hold.replicas) {
        return Err(PublishError::NotReplicated { acknowledged, wanted: hold.replicas });
    }
    let mut command = redis::cmd("FCALL");
    command
        .arg("sb_commit")
        .arg(2)
        .arg(&hold.stream)
        .arg(&hold.meta)
        .arg(&hold.live)
        .arg(published.epoch.as_deref().unwrap_or_default())
        .arg(published.offset.unwrap_or_default())
        .arg(envelope);
    Ok(command)
}
