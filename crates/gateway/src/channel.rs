//! Channel names and the namespace rules that apply to them.
//!
//! A channel is `namespace:rest` or a bare name in the default namespace `""`. Names use a
//! conservative character set so that they are safe as Redis key parts, in URLs and in
//! logs. This module decides *which rules apply*; the session decides what to do.

use std::{collections::HashMap, sync::Arc, time::Duration};

use crate::config::{NamespaceConfig, SubscribePolicy};

/// Why a channel name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChannelError {
    /// The name is empty, too long, or has a forbidden character.
    #[error("invalid channel name `{name}`: {why}")]
    Invalid {
        /// The offending name (truncated for logs).
        name: String,
        /// What is wrong.
        why: &'static str,
    },
    /// The namespace is not configured.
    #[error("unknown namespace `{0}`")]
    UnknownNamespace(String),
}

/// Resolved namespace rules, shared by every session.
#[derive(Debug)]
pub struct ChannelRules {
    namespaces: HashMap<String, Arc<Namespace>>,
    max_length: usize,
}

/// One namespace's rules in the form the hot path wants.
#[derive(Debug)]
pub struct Namespace {
    /// The configuration it came from.
    pub config: NamespaceConfig,
    /// History retention used by the broker.
    pub stream: StreamOptions,
}

/// Per-channel stream retention handed to the broker on publish and history calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOptions {
    /// Publications retained.
    pub history_size: usize,
    /// Age after which a publication is dropped.
    pub history_ttl: Duration,
}

impl ChannelRules {
    /// Builds the rules from validated namespace configs.
    pub fn new(namespaces: &[NamespaceConfig], max_length: usize) -> ChannelRules {
        let namespaces = namespaces
            .iter()
            .map(|config| {
                let stream = StreamOptions {
                    history_size: config.history_size,
                    history_ttl: Duration::from_secs(config.history_ttl_secs),
                };
                (config.name.clone(), Arc::new(Namespace { config: config.clone(), stream }))
            })
            .collect();
        ChannelRules { namespaces, max_length }
    }

    /// Every configured namespace.
    pub fn namespaces(&self) -> impl Iterator<Item = &Arc<Namespace>> {
        self.namespaces.values()
    }

    /// Checks `channel` and returns its namespace.
    ///
    /// # Errors
    /// [`ChannelError`] for a malformed name or an unknown namespace.
    pub fn resolve(&self, channel: &str) -> Result<&Arc<Namespace>, ChannelError> {
        let namespace = switchboard_protocol::channel::namespace_of(channel, self.max_length)
            .map_err(|why| ChannelError::Invalid { name: channel.chars().take(64).collect(), why })?;
        self.namespaces.get(namespace).ok_or_else(|| ChannelError::UnknownNamespace(namespace.to_string()))
    }
}

/// The personal channel of `user`.
pub fn personal_channel(user: &str) -> String {
    switchboard_protocol::channel::personal(user)
}

impl Namespace {
    /// Whether `policy` lets a connection of `user` into `channel`, before tokens are
    /// considered. `Owner` requires the part after the namespace to equal the user id.
    pub fn policy_allows(&self, user: &str, channel: &str) -> bool {
        match self.config.subscribe {
            SubscribePolicy::Any => true,
            SubscribePolicy::Authenticated => !user.is_empty(),
            SubscribePolicy::Owner => {
                !user.is_empty() && channel.split_once(':').is_some_and(|(_, owner)| owner == user)
            }
            SubscribePolicy::Token => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> ChannelRules {
        ChannelRules::new(&NamespaceConfig::defaults(), 32)
    }

    #[test]
    fn resolves_namespaces() {
        let rules = rules();
        assert_eq!(rules.resolve("news").expect("default").config.name, "");
        assert_eq!(rules.resolve("chat:room-1").expect("chat").config.name, "chat");
        assert_eq!(rules.resolve("nope:x").expect_err("ns"), ChannelError::UnknownNamespace("nope".into()));
        assert!(matches!(rules.resolve(""), Err(ChannelError::Invalid { .. })));
        assert!(matches!(rules.resolve("a b"), Err(ChannelError::Invalid { .. })));
        assert!(matches!(rules.resolve("chat:"), Err(ChannelError::Invalid { .. })));
        assert!(matches!(rules.resolve(":news"), Err(ChannelError::Invalid { .. })));
        assert!(matches!(rules.resolve(&"x".repeat(33)), Err(ChannelError::Invalid { .. })));
    }

    #[test]
    fn owner_policy_matches_only_own_channel() {
        let rules = rules();
        let personal = rules.resolve("user:u1").expect("user ns");
        assert!(personal.policy_allows("u1", "user:u1"));
        assert!(!personal.policy_allows("u2", "user:u1"));
        assert!(!personal.policy_allows("", "user:"));
    }
}
