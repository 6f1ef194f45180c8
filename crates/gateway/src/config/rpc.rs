//! Configuration of the `rpc` command: where each RPC method goes.
//!
//! A route matches a method by exact name or by prefix and sends it either into a Redis
//! stream read by the backend's workers (cluster mode) or to an HTTP endpoint. Routes are
//! tried in order; the first match wins.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The `[rpc]` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RpcConfig {
    /// How long a backend has to answer, in milliseconds, unless the route sets its own;
    /// then the client gets 118 `timeout`. Default 5000.
    pub timeout_ms: u64,
    /// RPCs one connection may have waiting at once; more are refused with 110
    /// `limit_exceeded`. Default 32.
    pub max_in_flight_per_connection: usize,
    /// Stream routes: the request stream is trimmed to about this many entries
    /// (`XADD MAXLEN ~`), so a backend with no running workers cannot make it grow without
    /// bound. Default 10000.
    pub stream_max_len: u64,
    /// The routes, tried in order (`[[rpc.routes]]`). Default none: every `rpc` is answered
    /// with 119 `no_route`.
    pub routes: Vec<RpcRoute>,
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            timeout_ms: 5_000,
            max_in_flight_per_connection: 32,
            stream_max_len: 10_000,
            routes: vec![],
        }
    }
}

/// One `[[rpc.routes]]` entry: which methods, and where they go.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RpcRoute {
    /// Matches exactly this method name.
    pub method: Option<String>,
    /// Matches every method starting with this (`""` matches every method).
    pub prefix: Option<String>,
    /// Sends requests into the Redis stream `sb:rpc:{<stream>}` (cluster mode only).
    pub stream: Option<String>,
    /// The stream's consumer group, which the gateway creates. Default `workers`.
    pub group: Option<String>,
    /// Posts requests as JSON to this `http://` URL.
    pub url: Option<String>,
    /// HTTP routes: sent as the `X-Switchboard-Secret` header, for the endpoint to check.
    pub secret: Option<String>,
    /// HTTP routes: read the secret from this file (e.g. a mounted Kubernetes secret).
    pub secret_file: Option<PathBuf>,
    /// This route's timeout, in milliseconds. Default `rpc.timeout_ms`.
    pub timeout_ms: Option<u64>,
}

impl RpcRoute {
    /// The consumer group of a stream route.
    pub fn group(&self) -> &str {
        self.group.as_deref().unwrap_or("workers")
    }

    /// Whether this route serves `method`.
    pub fn matches(&self, method: &str) -> bool {
        match (&self.method, &self.prefix) {
            (Some(exact), _) => exact == method,
            (None, Some(prefix)) => method.starts_with(prefix.as_str()),
            (None, None) => false,
        }
    }
}

/// Characters allowed in a route's stream and group names (they become Redis key parts
/// inside a hash tag, so no braces).
fn is_name(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 128
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}

impl RpcConfig {
    /// Checks every route; `clustered` says whether the broker is Redis.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the route and the problem.
    pub fn validate(&self, clustered: bool) -> Result<(), ConfigError> {
        let invalid = |n: usize, what: &str| Err(ConfigError::Invalid(format!("rpc.routes[{n}]: {what}")));
        if self.timeout_ms == 0 || self.max_in_flight_per_connection == 0 || self.stream_max_len == 0 {
            return Err(ConfigError::Invalid(
                "rpc.timeout_ms, max_in_flight_per_connection and stream_max_len must be positive".into(),
            ));
        }
        for (n, route) in self.routes.iter().enumerate() {
            if route.method.is_some() == route.prefix.is_some() {
                return invalid(n, "set exactly one of `method` and `prefix`");
            }
            match (&route.stream, &route.url) {
                (Some(stream), None) => {
                    if !clustered {
                        return invalid(
                            n,
                            "a `stream` route needs a Redis broker (broker.url = redis://...)",
                        );
                    }
                    if !is_name(stream) || !is_name(route.group()) {
                        return invalid(n, "`stream` and `group` may hold only letters, digits, `_-.:`");
                    }
                }
                (None, Some(url)) => {
                    if !url.starts_with("http://") {
                        return invalid(
                            n,
                            "`url` must be http:// (terminate TLS in front of the endpoint, e.g. a sidecar)",
                        );
                    }
                    if route.secret.is_some() && route.secret_file.is_some() {
                        return invalid(n, "set at most one of `secret` and `secret_file`");
                    }
                }
                _ => return invalid(n, "set exactly one of `stream` and `url`"),
            }
            if route.timeout_ms == Some(0) {
                return invalid(n, "`timeout_ms` must be positive");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: Option<&str>, prefix: Option<&str>) -> RpcRoute {
        RpcRoute {
            method: method.map(Into::into),
            prefix: prefix.map(Into::into),
            url: Some("http://127.0.0.1:9/rpc".into()),
            ..RpcRoute::default()
        }
    }

    #[test]
    fn routes_match_by_name_or_prefix() {
        assert!(route(Some("cast_vote"), None).matches("cast_vote"));
        assert!(!route(Some("cast_vote"), None).matches("cast_votes"));
        assert!(route(None, Some("dao.")).matches("dao.cast"));
        assert!(route(None, Some("")).matches("anything"));
    }

    #[test]
    fn invalid_routes_are_named() {
        let mut config = RpcConfig { routes: vec![route(Some("a"), Some("b"))], ..RpcConfig::default() };
        assert!(config.validate(false).expect_err("invalid").to_string().contains("rpc.routes[0]"));
        config.routes = vec![RpcRoute { stream: Some("votes".into()), url: None, ..route(Some("a"), None) }];
        assert!(config.validate(false).expect_err("invalid").to_string().contains("Redis broker"));
        assert!(config.validate(true).is_ok());
        config.routes[0].stream = Some("bad{name}".into());
        assert!(config.validate(true).is_err());
        config.routes = vec![RpcRoute { url: Some("https://x".into()), ..route(Some("a"), None) }];
        assert!(config.validate(false).expect_err("invalid").to_string().contains("http://"));
    }
}
