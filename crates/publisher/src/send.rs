//! Sending prepared publishes: one pipeline (plus one `WAIT` when some are held, and a
//! second pipeline committing those, see [`crate::replicated`]). On a Redis Cluster a
//! pipeline may only hold commands of one slot, so the publishes are grouped by slot and
//! the groups sent at once: each group goes to the primary that owns its slot.

use std::collections::HashMap;

use redis::cluster_routing::Slot;
use switchboard_protocol::redis as keys;

use crate::{link::Link, replicated, PublishError, PublishOptions, Published};

/// One publish, ready to send.
pub(crate) struct Prepared {
    pub(crate) command: redis::Cmd,
    pub(crate) hold: Option<replicated::Hold>,
}

type Item<'a> = (&'a str, &'a PublishOptions, Result<Prepared, PublishError>);

/// Sends `items`; results in input order.
///
/// # Errors
/// The first connection failure of a pipeline: the whole call fails then.
pub(crate) async fn execute(
    connection: &Link,
    items: Vec<Item<'_>>,
) -> Result<Vec<Result<Published, PublishError>>, PublishError> {
    let sent: Vec<usize> = (0..items.len()).filter(|i| items[*i].2.is_ok()).collect();
    let groups: Vec<Vec<usize>> = if connection.is_cluster() {
        let mut by_slot: HashMap<Slot, Vec<usize>> = HashMap::new();
        for index in sent {
            by_slot.entry(Slot::for_key(keys::stream(items[index].0))).or_default().push(index);
        }
        by_slot.into_values().collect()
    } else {
        vec![sent]
    };
    let outcomes =
        futures_util::future::join_all(groups.iter().map(|group| send_group(connection, &items, group)))
            .await;
    let mut results: Vec<Option<Result<Published, PublishError>>> = (0..items.len()).map(|_| None).collect();
    for outcome in outcomes {
        for (index, result) in outcome? {
            results[index] = Some(result);
        }
    }
    Ok(items
        .into_iter()
        .zip(results)
        .map(|((_, _, prepared), result)| match prepared {
            Err(error) => Err(error),
            Ok(_) => result.unwrap_or_else(|| unreachable!("every sent item has a result")),
        })
        .collect())
}

/// One pipeline of `group` (indexes into `items`), then its commits.
async fn send_group(
    connection: &Link,
    items: &[Item<'_>],
    group: &[usize],
) -> Result<Vec<(usize, Result<Published, PublishError>)>, PublishError> {
    if group.is_empty() {
        return Ok(Vec::new());
    }
    let prepared = |index: usize| items[index].2.as_ref().ok();
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for index in group {
        if let Some(prepared) = prepared(*index) {
            pipe.add_command(prepared.command.clone());
        }
    }
    let wait =
        replicated::wait_command(group.iter().filter_map(|i| prepared(*i).and_then(|p| p.hold.as_ref())));
    if let Some((command, _)) = &wait {
        pipe.add_command(command.clone());
    }
    let mut replies: Vec<redis::RedisResult<redis::Value>> =
        pipe.query_async(&mut connection.clone()).await?;
    let acknowledged = match wait {
        Some(_) => replies.pop().and_then(Result::ok).and_then(|v| redis::from_redis_value::<i64>(v).ok()),
        None => None,
    };
    let mut commits = redis::pipe();
    commits.ignore_errors();
    let mut committing = Vec::new();
    let mut results = Vec::with_capacity(group.len());
    for (index, reply) in group.iter().copied().zip(replies) {
        let (channel_name, options, _) = &items[index];
        let hold = prepared(index).and_then(|p| p.hold.as_ref());
        let result = match (reply.map_err(PublishError::from), hold) {
            (Err(error), _) => Err(error),
            (Ok(reply), None) => parse_reply(channel_name, options, reply),
            (Ok(reply), Some(hold)) => match replicated::parse_held(channel_name, reply) {
                Ok((published, Some(envelope))) => {
                    replicated::commit_command(hold, &published, envelope, acknowledged.unwrap_or(0)).map(
                        |command| {
                            commits.add_command(command);
                            committing.push(results.len());
                            published
                        },
                    )
                }
                other => other.map(|(published, _)| published),
            },
        };
        results.push((index, result));
    }
    if !committing.is_empty() {
        let replies: Vec<redis::RedisResult<redis::Value>> =
            commits.query_async(&mut connection.clone()).await?;
        for (position, reply) in committing.into_iter().zip(replies) {
            if let Err(error) = reply {
                results[position].1 = Err(error.into());
            }
        }
    }
    Ok(results)
}

fn parse_reply(
    channel_name: &str,
    options: &PublishOptions,
    reply: redis::Value,
) -> Result<Published, PublishError> {
    if options.live_only {
        return Ok(Published {
            channel: channel_name.to_string(),
            offset: None,
            epoch: None,
            duplicate: false,
        });
    }
    let (offset, epoch, duplicate): (u64, String, u8) =
        redis::from_redis_value(reply).map_err(|e| PublishError::UnexpectedReply(e.to_string()))?;
    Ok(Published {
        channel: channel_name.to_string(),
        offset: Some(offset),
        epoch: Some(epoch),
        duplicate: duplicate == 1,
    })
}
