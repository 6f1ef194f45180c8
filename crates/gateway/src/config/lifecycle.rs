//! Configuration of the lifecycle stream: connection events for backends.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The `[lifecycle]` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LifecycleConfig {
    /// Record every connection's connect and disconnect (and, with `subscriptions`, its
    /// subscribes and unsubscribes) in the Redis stream `sb:{lifecycle}:events`, for
    /// backends to consume with a consumer group. Redis broker only. Default false.
    pub enabled: bool,
    /// Also record `subscribe` and `unsubscribe` events (client commands, connect hook
    /// and server-side subscribes; not the personal channel). Default true.
    pub subscriptions: bool,
    /// The stream is trimmed to about this many entries (`XADD MAXLEN ~`). Default 100000.
    pub stream_max_len: u64,
    /// A node not heard of for this long, in milliseconds, is dead: another node records
    /// the disconnect of each of its connections (code 1006). It beats every third of it.
    /// Default 15000.
    pub node_ttl_ms: u64,
    /// Disconnect events that could not be written (Redis unreachable) wait for a retry,
    /// at most this many; more are dropped and counted (the connection is then recorded
    /// as disconnected only when the node dies or restarts). Default 100000.
    pub max_pending_disconnects: usize,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            enabled: false,
            subscriptions: true,
            stream_max_len: 100_000,
            node_ttl_ms: 15_000,
            max_pending_disconnects: 100_000,
        }
    }
}

impl LifecycleConfig {
    /// Checks the section; `clustered` tells whether the broker is Redis.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the offending key.
    pub fn validate(&self, clustered: bool) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        if !clustered {
            return Err(ConfigError::Invalid("lifecycle.enabled needs the Redis broker (broker.url)".into()));
        }
        if self.node_ttl_ms < 300 {
            return Err(ConfigError::Invalid("lifecycle.node_ttl_ms must be at least 300".into()));
        }
        if self.stream_max_len == 0 {
            return Err(ConfigError::Invalid("lifecycle.stream_max_len must be positive".into()));
        }
        Ok(())
    }
}
