//! Configuration of the Socket.IO endpoint (`/socket.io/`, docs/socketio.md).
//!
//! Socket.IO clients reach the same sessions, channels and delivery as native ones; this
//! section only says how the Socket.IO world maps onto them: heartbeat timing (Engine.IO
//! sends its own pings), which Socket.IO namespaces exist and the channel prefix each
//! maps to, and where a client's `emit(name, …)` goes.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// At most this many Socket.IO namespaces: a publication's Socket.IO frame names the
/// namespace, so each one is a frame variant the node may encode per publication.
pub const MAX_SOCKETIO_NAMESPACES: usize = 4;

/// The `[socketio]` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SocketIoConfig {
    /// Serve Engine.IO v4 / Socket.IO v5 clients on `/socket.io/`. Default true.
    pub enabled: bool,
    /// Engine.IO `pingInterval`: the node sends a ping this often, in milliseconds.
    /// Default 25000 (Socket.IO's).
    pub ping_interval_ms: u64,
    /// Engine.IO `pingTimeout`: a client that does not answer a ping (or send anything)
    /// within this many milliseconds after it is closed. Default 20000 (Socket.IO's).
    pub ping_timeout_ms: u64,
    /// HTTP long-polling: packets in one poll's answer, at most. Default 16, the most
    /// python-socketio accepts (it disconnects on more).
    pub polling_max_packets: usize,
    /// Socket.IO namespaces clients may connect to, each mapped to a channel prefix
    /// (`[[socketio.namespaces]]`). Default: `/` with no prefix.
    pub namespaces: Vec<SocketIoNamespace>,
    /// Whether the built-in events `subscribe`, `unsubscribe`, `publish`, `presence`,
    /// `presence_stats`, `history` and `refresh` run the native command of that name.
    /// Default true.
    pub builtin_events: bool,
    /// Where other events go, tried in order (`[[socketio.events]]`); an event no rule
    /// matches is an `rpc` call with the event's name as the method.
    pub events: Vec<SocketIoEventRule>,
    /// How long a recoverable session's rooms are kept after its connection is gone, in
    /// milliseconds (namespaces with `recovery`). Default 120000 (Socket.IO's).
    pub recovery_window_ms: u64,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        SocketIoConfig {
            enabled: true,
            ping_interval_ms: 25_000,
            ping_timeout_ms: 20_000,
            polling_max_packets: 16,
            namespaces: vec![SocketIoNamespace { name: "/".into(), prefix: String::new(), recovery: false }],
            builtin_events: true,
            events: vec![],
            recovery_window_ms: 120_000,
        }
    }
}

/// One `[[socketio.namespaces]]` entry.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SocketIoNamespace {
    /// The Socket.IO namespace, `/` or `/name`.
    pub name: String,
    /// Prepended to every room (channel) a client of this namespace names: with
    /// `prefix = "admin:"`, `emit("subscribe", "alerts")` joins channel `admin:alerts`.
    pub prefix: String,
    /// Connection state recovery (socket.io-client ≥ 4.6 with `connectionStateRecovery`):
    /// events carry the client's position in every room as their last argument, and a
    /// client reconnecting to any node within `socketio.recovery_window_ms` gets its rooms
    /// back and every missed event. Off by default, as in Socket.IO: the extra argument
    /// reaches handlers (python-socketio's fixed-arity ones fail on it). Default false.
    pub recovery: bool,
}

/// What a matched event does.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EventAction {
    /// An `rpc` call; the ack carries the backend's answer.
    #[default]
    Rpc,
    /// A publication into a channel (the namespace's publish rules apply).
    Publish,
}

/// One `[[socketio.events]]` entry: which events, and where they go.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SocketIoEventRule {
    /// Matches exactly this event name.
    pub event: Option<String>,
    /// Matches every event name starting with this.
    pub prefix: Option<String>,
    /// `rpc` (default) or `publish`.
    pub action: EventAction,
    /// `rpc`: the method called. Default: the event's name.
    pub method: Option<String>,
    /// `publish`: the channel (the namespace's prefix is not added); the event's argument
    /// is the payload. Without it the argument must be `{"channel": …, "data": …}` and
    /// the channel is a room of the namespace.
    pub channel: Option<String>,
}

impl SocketIoEventRule {
    /// Whether this rule serves `event`.
    pub fn matches(&self, event: &str) -> bool {
        match (&self.event, &self.prefix) {
            (Some(exact), _) => exact == event,
            (None, Some(prefix)) => event.starts_with(prefix.as_str()),
            (None, None) => false,
        }
    }
}

impl SocketIoConfig {
    /// The namespace a Socket.IO client named, with its index.
    pub fn namespace(&self, name: &str) -> Option<(usize, &SocketIoNamespace)> {
        self.namespaces.iter().enumerate().find(|(_, ns)| ns.name == name)
    }

    /// The first rule that serves `event`.
    pub fn rule(&self, event: &str) -> Option<&SocketIoEventRule> {
        self.events.iter().find(|rule| rule.matches(event))
    }

    /// Checks the section.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |what: String| Err(ConfigError::Invalid(format!("socketio.{what}")));
        if self.ping_interval_ms == 0
            || self.ping_timeout_ms == 0
            || self.polling_max_packets == 0
            || self.recovery_window_ms == 0
        {
            return invalid(
                "ping_interval_ms, ping_timeout_ms, polling_max_packets and recovery_window_ms must be positive"
                    .into(),
            );
        }
        if self.namespaces.is_empty() || self.namespaces.len() > MAX_SOCKETIO_NAMESPACES {
            return invalid(format!("namespaces: between 1 and {MAX_SOCKETIO_NAMESPACES} namespaces"));
        }
        for (n, ns) in self.namespaces.iter().enumerate() {
            let well_formed = ns.name == "/"
                || (ns.name.starts_with('/')
                    && ns.name.len() <= 64
                    && ns.name[1..]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')));
            if !well_formed {
                return invalid(format!(
                    "namespaces[{n}]: `name` must be `/` or `/` followed by letters, digits, `_-.`"
                ));
            }
            if self.namespaces[..n].iter().any(|other| other.name == ns.name) {
                return invalid(format!("namespaces[{n}]: `{}` is defined twice", ns.name));
            }
        }
        for (n, rule) in self.events.iter().enumerate() {
            if rule.event.is_some() == rule.prefix.is_some() {
                return invalid(format!("events[{n}]: set exactly one of `event` and `prefix`"));
            }
            match rule.action {
                EventAction::Rpc if rule.channel.is_some() => {
                    return invalid(format!("events[{n}]: `channel` is for `action = \"publish\"`"));
                }
                EventAction::Publish if rule.method.is_some() => {
                    return invalid(format!("events[{n}]: `method` is for `action = \"rpc\"`"));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_name_the_root_namespace() {
        let config = SocketIoConfig::default();
        config.validate().expect("valid");
        assert_eq!(config.namespace("/").map(|(i, ns)| (i, ns.prefix.as_str())), Some((0, "")));
        assert!(config.namespace("/admin").is_none());
    }

    #[test]
    fn invalid_sections_are_named() {
        let mut config = SocketIoConfig::default();
        config.namespaces.push(SocketIoNamespace {
            name: "admin".into(),
            prefix: "a:".into(),
            recovery: false,
        });
        assert!(config.validate().expect_err("invalid").to_string().contains("namespaces[1]"));
        let mut config = SocketIoConfig::default();
        config.events.push(SocketIoEventRule { action: EventAction::Publish, ..Default::default() });
        assert!(config.validate().expect_err("invalid").to_string().contains("events[0]"));
        config.events[0].event = Some("typing".into());
        config.validate().expect("a publish rule with an event");
        config.events[0].method = Some("x".into());
        assert!(config.validate().is_err());
    }

    #[test]
    fn rules_match_by_name_or_prefix() {
        let rule = SocketIoEventRule { prefix: Some("chat.".into()), ..Default::default() };
        assert!(rule.matches("chat.send"));
        assert!(!rule.matches("dao.vote"));
    }
}
