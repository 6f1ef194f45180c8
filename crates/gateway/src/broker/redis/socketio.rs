//! Recoverable Socket.IO sessions' rooms in Redis (`sb:sio:<pid>`, docs/redis.md): one
//! JSON string per session with the recovery window as TTL, readable by every node.

use std::time::Duration;

use fred::prelude::*;
use switchboard_protocol::redis as keys;

use super::RedisShared;
use crate::broker::BrokerError;

/// Stores `record` under `pid` for `ttl`.
pub(super) async fn store(
    shared: &RedisShared,
    pid: &str,
    record: &str,
    ttl: Duration,
) -> Result<(), BrokerError> {
    shared.connected()?;
    let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
    let _: () = shared
        .client
        .set(keys::socketio_session(pid), record, Some(Expiration::PX(ttl)), None, false)
        .await?;
    Ok(())
}

/// The record of `pid`, unless it expired.
pub(super) async fn load(shared: &RedisShared, pid: &str) -> Result<Option<String>, BrokerError> {
    shared.connected()?;
    Ok(shared.client.get(keys::socketio_session(pid)).await?)
}

/// Forgets `pid`.
pub(super) async fn delete(shared: &RedisShared, pid: &str) -> Result<(), BrokerError> {
    shared.connected()?;
    let _: i64 = shared.client.del(keys::socketio_session(pid)).await?;
    Ok(())
}
