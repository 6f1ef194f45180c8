//! RPC over a Redis stream: the node adds each request to the route's stream, a backend
//! worker reads it through the route's consumer group, and `sb_rpc_reply` (one Function
//! call) acknowledges the entry and publishes the answer on this node's reply channel.
//!
//! The waiter is registered before the `XADD`, so a reply can never arrive unexpected;
//! a reply for a request nobody waits for any more (its deadline passed) is dropped and
//! counted. Replies travel over pub/sub rather than a per-node stream because
//! `PUBLISH` needs no key: the Function touches only the request stream's slot, which
//! keeps it callable on a Redis Cluster. A reply published while this node's pub/sub
//! connection is down is lost, and the client gets the timeout error it would get from
//! a dead worker (explicit, temporary, safe to retry with its idempotency key).

use std::{collections::HashSet, sync::Mutex, time::Duration};

use dashmap::DashMap;
use fred::{
    prelude::*,
    types::streams::{XCap, XCapKind, XCapTrim, XID},
};
use tokio::sync::oneshot;

use super::RedisShared;
use crate::broker::{BrokerError, RpcEntry};
use switchboard_protocol::redis as keys;

/// Requests of this node waiting for their reply, by request id.
#[derive(Default)]
pub(super) struct RpcWaiters {
    waiting: DashMap<String, oneshot::Sender<String>>,
    /// Streams whose consumer group this node has made sure exists.
    groups: Mutex<HashSet<(String, String)>>,
}

impl RedisShared {
    /// Hands a reply published on this node's reply channel to its waiter.
    pub(super) fn complete_rpc(&self, payload: &[u8]) {
        let text = String::from_utf8_lossy(payload);
        let Some((request, reply)) = text.split_once('\n') else {
            self.metrics.broker_invalid_messages.inc();
            return;
        };
        match self.rpc.waiting.remove(request) {
            // The waiter may have timed out between the lookup and now: same as late.
            Some((_, waiter)) => {
                if waiter.send(reply.to_string()).is_err() {
                    self.metrics.rpc_late_replies.inc();
                }
            }
            None => self.metrics.rpc_late_replies.inc(),
        }
    }

    /// Sends `entry` into the stream route and waits up to `timeout` for its reply.
    /// `Ok(None)` is a timeout.
    pub(super) async fn rpc(
        &self,
        stream: &str,
        group: &str,
        entry: RpcEntry,
        timeout: Duration,
    ) -> Result<Option<String>, BrokerError> {
        let key = keys::rpc_stream(stream);
        self.ensure_group(&key, group).await?;
        let (tx, rx) = oneshot::channel();
        let request = entry.id.clone();
        self.rpc.waiting.insert(request.clone(), tx);
        let _forget = Forget { waiters: &self.rpc.waiting, request: &request };
        let mut fields = vec![
            ("id", entry.id),
            ("method", entry.method),
            ("data", entry.data),
            ("client", entry.client),
            ("user", entry.user),
            ("node", self.node_id.clone()),
            ("reply_to", keys::rpc_replies(&self.node_id)),
            ("deadline", entry.deadline_ms.to_string()),
        ];
        if let Some(info) = entry.info {
            fields.push(("info", info));
        }
        if let Some(key) = entry.idempotency_key {
            fields.push(("idempotency_key", key));
        }
        let cap = XCap::try_from((XCapKind::MaxLen, XCapTrim::AlmostExact, self.rpc_max_len as i64))?;
        let _: Value = self.client.xadd(&key, false, cap, XID::Auto, fields).await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(Some(reply)),
            Ok(Err(_)) | Err(_) => Ok(None),
        }
    }

    /// Creates the route's consumer group (from the stream's start, so requests added
    /// before any worker existed are served) unless this node already did.
    async fn ensure_group(&self, key: &str, group: &str) -> Result<(), BrokerError> {
        let name = (key.to_string(), group.to_string());
        if self.rpc.groups.lock().is_ok_and(|groups| groups.contains(&name)) {
            return Ok(());
        }
        let created: Result<Value, _> = self.client.xgroup_create(key, group, "0", true).await;
        match created {
            Ok(_) => {}
            Err(error) if error.details().starts_with("BUSYGROUP") => {}
            Err(error) => return Err(error.into()),
        }
        if let Ok(mut groups) = self.rpc.groups.lock() {
            groups.insert(name);
        }
        Ok(())
    }
}

/// Removes a request's waiter however the wait ends (reply, timeout, cancelled caller).
struct Forget<'a> {
    waiters: &'a DashMap<String, oneshot::Sender<String>>,
    request: &'a str,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.waiters.remove(self.request);
    }
}
