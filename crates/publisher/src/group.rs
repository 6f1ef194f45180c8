//! Reading a Redis stream through a consumer group, as the RPC [`Worker`] and the
//! [`LifecycleConsumer`] do: create the group from the stream's start (`MKSTREAM`), read
//! new entries with a blocking `XREADGROUP`, and take over entries other consumers have
//! held too long (`XAUTOCLAIM`). Entries come back as their id and fields.
//!
//! [`Worker`]: crate::worker::Worker
//! [`LifecycleConsumer`]: crate::lifecycle::LifecycleConsumer

use std::{collections::HashMap, time::Duration};

use redis::{RedisError, Value};

use crate::{link::Link, RedisOptions};

/// One stream entry: its id and fields (non-text fields are left out).
pub(crate) struct RawEntry {
    pub(crate) id: String,
    pub(crate) fields: HashMap<String, String>,
}

/// A consumer of one stream in one group.
pub(crate) struct GroupReader {
    /// For `XREADGROUP ... BLOCK`, which holds its connection while it waits.
    reads: Link,
    /// For everything else: claims, acknowledgements, answers.
    pub(crate) commands: Link,
    pub(crate) stream: String,
    pub(crate) group: String,
    pub(crate) consumer: String,
    pub(crate) claim_after: Duration,
    block: Duration,
}

impl GroupReader {
    /// Connects twice (one connection blocks in reads), as consumer `consumer`
    /// of `group` on `stream`.
    pub(crate) async fn connect(
        options: &RedisOptions,
        stream: String,
        group: &str,
        consumer: String,
    ) -> Result<GroupReader, RedisError> {
        let block = Duration::from_secs(1);
        let reads = options.link(Some(block + Duration::from_secs(5))).await?;
        let commands = options.link(None).await?;
        Ok(GroupReader {
            reads,
            commands,
            stream,
            group: group.to_string(),
            consumer,
            claim_after: Duration::from_secs(5),
            block,
        })
    }

    /// Creates the group from the start of the stream, so entries added before any
    /// consumer existed are read too; an existing group is kept.
    pub(crate) async fn ensure_group(&mut self) -> Result<(), RedisError> {
        let created: Result<Value, RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(&self.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.commands)
            .await;
        match created {
            Err(error) if error.code() != Some("BUSYGROUP") => Err(error),
            _ => Ok(()),
        }
    }

    /// New entries for this consumer, waiting up to a second for some.
    pub(crate) async fn read(&mut self, count: usize) -> Result<Vec<RawEntry>, RedisError> {
        self.read_from(count, ">").await
    }

    /// Entries after `id`: `>` for new ones (waiting up to a second), `0` for this
    /// consumer's own pending ones (read before, not acknowledged).
    pub(crate) async fn read_from(&mut self, count: usize, id: &str) -> Result<Vec<RawEntry>, RedisError> {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(self.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(id)
            .query_async(&mut self.reads)
            .await?;
        // [[stream, [[id, [field, value, ...]], ...]]] or nil.
        let Value::Array(streams) = reply else { return Ok(Vec::new()) };
        Ok(streams
            .into_iter()
            .filter_map(|stream| match stream {
                Value::Array(mut parts) if parts.len() == 2 => parts.pop(),
                _ => None,
            })
            .flat_map(entries)
            .collect())
    }

    /// Entries other consumers have held for longer than `claim_after`.
    pub(crate) async fn claim(&mut self, count: usize) -> Result<Vec<RawEntry>, RedisError> {
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(self.claim_after.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.commands)
            .await?;
        // [next cursor, [entries], [deleted ids]]
        match reply {
            Value::Array(mut parts) if parts.len() >= 2 => Ok(entries(parts.swap_remove(1))),
            _ => Ok(Vec::new()),
        }
    }

    /// Acknowledges one entry.
    pub(crate) async fn ack(&mut self, id: &str) -> Result<(), RedisError> {
        redis::cmd("XACK").arg(&self.stream).arg(&self.group).arg(id).query_async(&mut self.commands).await
    }
}

/// Parses `[[id, [field, value, ...]], ...]`; trimmed entries (nil) are skipped.
fn entries(list: Value) -> Vec<RawEntry> {
    let Value::Array(items) = list else { return Vec::new() };
    items.into_iter().filter_map(entry).collect()
}

fn entry(item: Value) -> Option<RawEntry> {
    let Value::Array(mut parts) = item else { return None };
    if parts.len() != 2 {
        return None;
    }
    let fields = parts.pop()?;
    let id = text(parts.pop()?)?;
    let Value::Array(fields) = fields else { return None };
    let mut map = HashMap::new();
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        if let (Some(name), Some(value)) = (text(name), text(value)) {
            map.insert(name, value);
        }
    }
    Some(RawEntry { id, fields: map })
}

fn text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        _ => None,
    }
}
