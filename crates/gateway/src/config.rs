//! Gateway configuration: one plain struct tree with defaults.
//!
//! Sources are layered, later ones winning: built-in defaults, a TOML file, environment
//! variables `SWITCHBOARD_<SECTION>__<FIELD>` (e.g. `SWITCHBOARD_AUTH__HMAC_SECRET`), then
//! command-line flags. Layering is done by `figment`, so no field needs hand-written
//! override code. Every field documents its unit and default; `docs/operations.md` mirrors
//! these comments and `switchboard config` prints the effective result.
//!
//! This module only describes and loads configuration; it must not act on it.

mod compression;
mod lifecycle;
mod rpc;
mod socketio;

use std::{net::SocketAddr, path::Path};

use figment::{
    providers::{Env, Format, Serialized, Toml},
    Figment,
};
use serde::{Deserialize, Serialize};

pub use compression::CompressionConfig;
pub use lifecycle::LifecycleConfig;
pub use rpc::{RpcConfig, RpcRoute};
pub use socketio::{
    EventAction, SocketIoConfig, SocketIoEventRule, SocketIoNamespace, MAX_SOCKETIO_NAMESPACES,
};

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or a value has the wrong type.
    #[error("invalid configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    /// Values are individually fine but inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole gateway configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node: listen address, identity, shutdown.
    pub node: NodeConfig,
    /// Where publications, history and presence live.
    pub broker: BrokerConfig,
    /// Token verification.
    pub auth: AuthConfig,
    /// WebSocket heartbeat.
    pub heartbeat: HeartbeatConfig,
    /// Per-node, per-user and per-connection limits.
    pub limits: LimitsConfig,
    /// Logging.
    pub log: LogConfig,
    /// The HTTP server API for backends.
    pub api: ApiConfig,
    /// Where clients' `rpc` calls go.
    pub rpc: RpcConfig,
    /// The lifecycle stream for backends.
    pub lifecycle: LifecycleConfig,
    /// The Socket.IO endpoint.
    pub socketio: SocketIoConfig,
    /// WebSocket compression (`permessage-deflate`).
    pub compression: CompressionConfig,
    /// Channel namespaces; a channel `ns:rest` uses namespace `ns`, a bare name uses `""`.
    pub namespaces: Vec<NamespaceConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node: NodeConfig::default(),
            broker: BrokerConfig::default(),
            auth: AuthConfig::default(),
            heartbeat: HeartbeatConfig::default(),
            limits: LimitsConfig::default(),
            log: LogConfig::default(),
            api: ApiConfig::default(),
            rpc: RpcConfig::default(),
            lifecycle: LifecycleConfig::default(),
            socketio: SocketIoConfig::default(),
            compression: CompressionConfig::default(),
            namespaces: NamespaceConfig::defaults(),
        }
    }
}

/// Node identity, listener and shutdown behaviour.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Address the HTTP/WebSocket listener binds. Default `0.0.0.0:8000`.
    pub listen: SocketAddr,
    /// Node name shown in replies and metrics. Default: a random id chosen at start.
    pub name: Option<String>,
    /// `host:port` at which other nodes reach this node's HTTP listener, published in
    /// the cluster registry: a Socket.IO polling request (or upgrade) for a session of
    /// this node that reaches another node is forwarded here. Default: the listen
    /// address, unless it is unspecified (`0.0.0.0`), in which case such requests are
    /// refused (set it, e.g. to the pod IP, or make the load balancer sticky).
    pub advertise_address: Option<String>,
    /// Longest a graceful shutdown may take before the process exits anyway, in
    /// milliseconds. Default 10000.
    pub shutdown_timeout_ms: u64,
    /// Upper bound of the random reconnect delay advised to clients on shutdown, in
    /// milliseconds; each client gets a uniformly jittered value in `[0, this]` so that
    /// they do not all reconnect at once. Default 5000.
    pub shutdown_reconnect_jitter_ms: u64,
    /// Run jemalloc's background thread, which returns freed memory to the OS within
    /// seconds (dirty pages decay on a timer instead of on the next allocation). Costs one
    /// mostly sleeping thread. Default true.
    pub allocator_background_thread: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8000)),
            name: None,
            advertise_address: None,
            shutdown_timeout_ms: 10_000,
            shutdown_reconnect_jitter_ms: 5_000,
            allocator_background_thread: true,
        }
    }
}

/// Broker selection and cluster timing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// `memory://` for the embedded single-node broker, or `redis://[user:password@]host:port[/db]`
    /// (`rediss://` for TLS) of a Redis >= 7 shared by a cluster of nodes, or
    /// `redis-sentinel://[user:password@]sentinel:port[/db]?sentinelServiceName=<name>&node=<sentinel:port>…`
    /// (`rediss-sentinel://` for TLS) to find the primary through Redis Sentinel, or
    /// `redis-cluster://[user:password@]host:port?node=<host:port>…` (`rediss-cluster://`)
    /// for a Redis Cluster, with sharded pub/sub. Default `memory://`.
    pub url: String,
    /// Redis ACL user, overriding the URL's. Default: the URL's (or `default`).
    pub username: Option<String>,
    /// Redis password, overriding the URL's. Default: the URL's (or none).
    pub password: Option<String>,
    /// Path of a file holding the Redis password (one trailing newline ignored), used when
    /// `password` is not set; suits Kubernetes and Docker secrets. Default: none.
    pub password_file: Option<String>,
    /// `rediss://`: PEM file of the CA certificates to trust (a private CA). Default: the
    /// system's trust store.
    pub tls_ca_file: Option<String>,
    /// `rediss://`: PEM client certificate (chain) for servers that require one
    /// (`tls-auth-clients yes`); needs `tls_key_file`. Default: none.
    pub tls_cert_file: Option<String>,
    /// `rediss://`: PEM private key of `tls_cert_file`. Default: none.
    pub tls_key_file: Option<String>,
    /// `rediss://`: the name the server's certificate must carry, when it is not the URL's
    /// host (e.g. connecting by IP address). Default: the URL's host.
    pub tls_server_name: Option<String>,
    /// How long a channel's stream metadata (epoch and last offset) outlives its last
    /// publication, in seconds; after that the next publication starts a new epoch.
    /// Never shorter than the namespace's history TTL. Default 86400.
    pub stream_meta_ttl_secs: u64,
    /// Redis: a presence entry not refreshed for this long is expired and its leave event
    /// emitted (this is how a crashed node's clients disappear), in seconds. Default 30.
    pub presence_ttl_secs: u64,
    /// Redis: interval of the pub/sub round-trip probe, in milliseconds. Default 1000.
    pub probe_interval_ms: u64,
    /// Redis: the node is not ready when no probe came back for this long, and its
    /// pub/sub connection is re-established, in milliseconds. Default 5000.
    pub probe_timeout_ms: u64,
    /// Redis: a command that gets no answer within this time fails with 115
    /// `unavailable`, in milliseconds. Default 3000.
    pub command_timeout_ms: u64,
    /// Redis: how long one attempt to connect (TCP, TLS, `HELLO`/`AUTH`) may take before
    /// it is retried, in milliseconds. Default 2000.
    pub connect_timeout_ms: u64,
    /// Redis: interval of the node registry heartbeat, in milliseconds. Default 2000.
    pub node_heartbeat_ms: u64,
    /// Redis: idempotency keys of HTTP, publisher and client publishes are remembered this long, in
    /// seconds. Default 300.
    pub idempotency_ttl_secs: u64,
    /// How long the stream metadata (epoch) that a read (`subscribe`, `history`) creates
    /// for a channel that was never published to is kept, in seconds. Reads must not leave
    /// lasting state behind; a subscriber that reconnects after this, with nothing
    /// published meanwhile, is told `recovered: false`. Default 600.
    pub unpublished_stream_ttl_secs: u64,
    /// Redis with replicas: a publication is acknowledged, delivered and shown to readers
    /// only once this many replicas hold it (`WAIT`), so that a failover to a replica
    /// never loses or reassigns a delivered offset. 0 turns it off. Default 0.
    pub ack_replicas: u32,
    /// How long a publish waits for `ack_replicas` replicas before it fails with 115
    /// `unavailable` (retry with the same idempotency key), in milliseconds. Must be
    /// below `command_timeout_ms`. Default 1000.
    pub ack_replicas_timeout_ms: u64,
    /// Connections a node holds publications through when `ack_replicas` > 0: `WAIT`
    /// blocks its connection, so a node's held publishes run this many at a time.
    /// Default 4.
    pub ack_replicas_connections: u32,
}

impl BrokerConfig {
    /// Whether the broker is Redis (`redis://`, `rediss://`, or either through Sentinel).
    pub fn is_redis(&self) -> bool {
        [
            "redis://",
            "rediss://",
            "redis-sentinel://",
            "rediss-sentinel://",
            "redis-cluster://",
            "rediss-cluster://",
        ]
        .iter()
        .any(|scheme| self.url.starts_with(scheme))
    }

    /// Whether the URL connects with TLS (`rediss://`, `rediss-sentinel://`, `rediss-cluster://`).
    pub fn is_tls(&self) -> bool {
        self.url.starts_with("rediss")
    }

    /// Whether the URL names a Redis Cluster (`redis-cluster://`, `rediss-cluster://`).
    pub fn is_cluster(&self) -> bool {
        self.url.starts_with("redis-cluster://") || self.url.starts_with("rediss-cluster://")
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            url: "memory://".into(),
            username: None,
            password: None,
            password_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_server_name: None,
            stream_meta_ttl_secs: 86_400,
            presence_ttl_secs: 30,
            probe_interval_ms: 1_000,
            probe_timeout_ms: 5_000,
            command_timeout_ms: 3_000,
            connect_timeout_ms: 2_000,
            node_heartbeat_ms: 2_000,
            idempotency_ttl_secs: 300,
            unpublished_stream_ttl_secs: 600,
            ack_replicas: 0,
            ack_replicas_timeout_ms: 1_000,
            ack_replicas_connections: 4,
        }
    }
}

/// JWT verification.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The one accepted signing algorithm: `HS256`, `RS256`, `ES256` or `EdDSA`. Tokens whose
    /// header names another algorithm are refused. Default `HS256`.
    pub algorithm: String,
    /// Shared secret for `HS256`. Default: none (required for `HS256`, unless
    /// `hmac_secret_file` is set). Environment values are parsed (digits become a number),
    /// so prefer `hmac_secret_file` for secrets that are not plain text.
    pub hmac_secret: Option<String>,
    /// Path of a file holding the `HS256` secret (one trailing newline is ignored), used
    /// when `hmac_secret` is not set; suits Kubernetes and Docker secrets. Default: none.
    pub hmac_secret_file: Option<String>,
    /// PEM public key for `RS256`, `ES256` or `EdDSA`, inline. Default: none.
    pub public_key_pem: Option<String>,
    /// Path of a PEM public key file, used when `public_key_pem` is not set. Default: none.
    pub public_key_file: Option<String>,
    /// Required `iss` claim, if set. Default: not checked.
    pub issuer: Option<String>,
    /// Required `aud` claim, if set. Default: not checked.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds. Default 5.
    pub leeway_secs: u64,
    /// Accept `connect` without a token; such connections have an empty user id. Default false.
    pub allow_anonymous: bool,
    /// A connection that has not sent a valid `connect` by then is closed, in milliseconds.
    /// Default 10000.
    pub auth_timeout_ms: u64,
    /// How long before the token's `exp` the server sends a `refresh` push, in seconds.
    /// Default 60.
    pub refresh_ahead_secs: u64,
    /// How long after `exp` an unrefreshed connection stays open, in seconds. Default 30.
    pub expired_grace_secs: u64,
    /// Authenticate a `connect` that carries no token by asking the backend: the RPC
    /// method `sb.connect`, routed by `[[rpc.routes]]`, answers the user, info, expiry
    /// and channels to subscribe. A `connect` with a token is verified as a JWT, without
    /// the hook. Default false.
    pub connect_hook: bool,
    /// Request headers of the WebSocket upgrade passed to the connect hook (lower case),
    /// e.g. the session cookie. Default `["cookie", "origin", "user-agent"]`.
    pub connect_hook_headers: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            algorithm: "HS256".into(),
            hmac_secret: None,
            hmac_secret_file: None,
            public_key_pem: None,
            public_key_file: None,
            issuer: None,
            audience: None,
            leeway_secs: 5,
            allow_anonymous: false,
            auth_timeout_ms: 10_000,
            refresh_ahead_secs: 60,
            expired_grace_secs: 30,
            connect_hook: false,
            connect_hook_headers: vec!["cookie".into(), "origin".into(), "user-agent".into()],
        }
    }
}

/// WebSocket heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// Interval between server pings, in milliseconds. Default 25000.
    pub ping_interval_ms: u64,
    /// A connection from which nothing (pong or any frame) arrived for
    /// `ping_interval_ms + pong_timeout_ms` is closed, in milliseconds. Default 10000.
    pub pong_timeout_ms: u64,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig { ping_interval_ms: 25_000, pong_timeout_ms: 10_000 }
    }
}

/// Limits. Each one, when hit, produces the code named in its comment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest incoming WebSocket message, in bytes; larger closes with 3502
    /// `message_too_large`. Default 65536.
    pub max_message_bytes: usize,
    /// Largest publication payload (`data`, as JSON), in bytes; larger is answered with 116
    /// `payload_too_large`. Default 32768.
    pub max_payload_bytes: usize,
    /// Subscriptions per connection, including the personal channel; more is answered
    /// with 110 `limit_exceeded`. Default 256.
    pub max_subscriptions_per_connection: usize,
    /// Connections per node; more are closed with 3005 `node_full`. Default 100000.
    pub max_connections: usize,
    /// Connections per user on this node; more are closed with 3503
    /// `too_many_connections`. 0 disables the limit. Default 100.
    pub max_connections_per_user: usize,
    /// Sustained commands per second per connection (token bucket refill rate); more are
    /// answered with 111 `too_many_requests`. Default 100.
    pub commands_per_second: u32,
    /// Token bucket size: commands a connection may send in a burst. Default 200.
    pub command_burst: u32,
    /// Bytes queued for one connection before it is closed with 3001 `slow_consumer`.
    /// Default 1048576 (1 MiB).
    pub outbound_queue_bytes: usize,
    /// Frames queued for one connection before it is closed with 3001 `slow_consumer`.
    /// Default 4096.
    pub outbound_queue_frames: usize,
    /// How long a large reply (history) or a recovery burst may wait for room in the
    /// outbound queue, and how long a full socket may go without draining one byte, before
    /// the connection is closed with 3001 `slow_consumer`, in milliseconds. Default 10000.
    pub outbound_wait_ms: u64,
    /// Publication frames this node may have queued for its sockets and not yet written
    /// before publishes through it (WebSocket and HTTP API) wait for the backlog to drain,
    /// at most `outbound_wait_ms`: a node publishing faster than it can write slows its
    /// publishers down instead of closing its subscribers as slow consumers. Default 262144.
    pub fanout_backlog_frames: usize,
    /// While the node is behind on its fan-out (a flusher round took at least 1 ms, its
    /// writes carried a quarter more frames than writes, and frames are waiting again),
    /// each flusher starts its next round this long after the previous one began, so every
    /// socket gets that window's publications in one write; a node that keeps up writes at
    /// once. 0 disables it. In milliseconds. Default 10.
    pub write_coalesce_ms: u64,
    /// Allowed `Origin` header values for browser connections; `*` allows any. Requests
    /// without an `Origin` header (non-browser clients) are always allowed. A refused
    /// origin gets HTTP 403. Default `["*"]`.
    pub allowed_origins: Vec<String>,
    /// Longest channel name, in bytes; longer is answered with 105 `invalid_channel`.
    /// Default 255.
    pub max_channel_length: usize,
    /// Most publications one `history` call returns. Default 1000.
    pub max_history_limit: u32,
    /// Per-connection WebSocket read buffer, in bytes; allocated for every connection, so
    /// it dominates idle memory. Larger frames still arrive (the buffer grows while
    /// reading them). Default 1024.
    pub read_buffer_bytes: usize,
    /// Deepest nesting of a publication's `data` (`[[1]]` is 2 levels); deeper is answered
    /// with 103 `bad_request` on every path (WebSocket, HTTP API). At most 100. Default 64.
    pub max_nesting_depth: usize,
    /// How long a new TCP connection may take to send its HTTP request headers (the
    /// WebSocket upgrade or an API call), in milliseconds; slower connections are dropped.
    /// Default 10000.
    pub handshake_timeout_ms: u64,
    /// TCP connections that have not (yet) become WebSockets, HTTP API and metrics
    /// connections included; more are closed at once. Default 1024.
    pub max_pending_handshakes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_bytes: 65_536,
            max_payload_bytes: 32_768,
            max_subscriptions_per_connection: 256,
            max_connections: 100_000,
            max_connections_per_user: 100,
            commands_per_second: 100,
            command_burst: 200,
            outbound_queue_bytes: 1 << 20,
            outbound_queue_frames: 4096,
            fanout_backlog_frames: 262_144,
            write_coalesce_ms: 10,
            outbound_wait_ms: 10_000,
            allowed_origins: vec!["*".into()],
            max_channel_length: 255,
            max_history_limit: 1000,
            read_buffer_bytes: 1024,
            max_nesting_depth: switchboard_protocol::payload::DEFAULT_MAX_NESTING_DEPTH,
            handshake_timeout_ms: 10_000,
            max_pending_handshakes: 1024,
        }
    }
}

/// The HTTP server API under `/api/v1`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Accepted API keys, sent as `X-API-Key: <key>` or `Authorization: Bearer <key>`;
    /// compared in constant time. Empty disables the API (every call answers 401).
    /// Default: empty.
    pub keys: Vec<String>,
    /// Largest request body, in bytes; larger is answered with 413. Default 65536.
    pub max_body_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig { keys: Vec::new(), max_body_bytes: 65_536 }
    }
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`. Default `text`.
    pub format: String,
    /// A `tracing` filter such as `info` or `switchboard_gateway=debug`; `RUST_LOG`
    /// overrides it. Default `info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: "text".into(), level: "info".into() }
    }
}

/// Who may subscribe to a namespace's channels.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SubscribePolicy {
    /// Any connection, anonymous ones included.
    Any,
    /// Any connection with a user id.
    Authenticated,
    /// Only the user whose id is the part after `namespace:` (personal channels).
    Owner,
    /// Only holders of a subscription token for the channel, or of a connection token
    /// whose `channels` claim matches it.
    Token,
}

/// Rules for one channel namespace.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceConfig {
    /// Namespace name (`""` is the default namespace of names without a colon).
    pub name: String,
    /// Who may subscribe. Default `authenticated`.
    pub subscribe: SubscribePolicy,
    /// Whether clients may publish (when they may also subscribe). Default false.
    pub publish: bool,
    /// Whether presence is tracked and queryable. Default true.
    pub presence: bool,
    /// Whether join/leave pushes are sent to subscribers. Default false.
    pub join_leave: bool,
    /// Publications retained per channel for history and recovery; 0 keeps none.
    /// Default 100.
    pub history_size: usize,
    /// How long a publication is retained, in seconds. Default 300.
    pub history_ttl_secs: u64,
    /// Ask a backend before every subscription (after the subscribe policy allowed it):
    /// the gateway calls the RPC method `sb.subscribe`, routed like any `rpc`, which
    /// allows (optionally returning initial data) or denies with its own error. Default
    /// false.
    pub subscribe_hook: bool,
    /// Send every client publication to a backend before it is broadcast: the gateway
    /// calls the RPC method `sb.publish`, which accepts it, rewrites its `data` or `event`,
    /// or rejects it with its own error. Default false.
    pub publish_hook: bool,
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        NamespaceConfig {
            name: String::new(),
            subscribe: SubscribePolicy::Authenticated,
            publish: false,
            presence: true,
            join_leave: false,
            history_size: 100,
            history_ttl_secs: 300,
            subscribe_hook: false,
            publish_hook: false,
        }
    }
}

impl NamespaceConfig {
    /// The namespace of personal channels `user:<id>`, always present.
    pub const PERSONAL: &'static str = "user";

    /// The built-in namespaces: the default one, `user` (personal channels, one day of
    /// history so offline devices catch up) and `chat` (client publish, presence,
    /// join/leave). Configuring `namespaces` replaces this list; `user` is added back with
    /// these settings if missing.
    pub fn defaults() -> Vec<NamespaceConfig> {
        vec![
            NamespaceConfig::default(),
            Self::personal(),
            NamespaceConfig {
                name: "chat".into(),
                publish: true,
                join_leave: true,
                history_size: 50,
                ..NamespaceConfig::default()
            },
        ]
    }

    fn personal() -> NamespaceConfig {
        NamespaceConfig {
            name: Self::PERSONAL.into(),
            subscribe: SubscribePolicy::Owner,
            presence: false,
            history_size: 1000,
            history_ttl_secs: 86_400,
            ..NamespaceConfig::default()
        }
    }
}

/// Methods starting with this are the server's own (hooks): clients cannot call them.
pub const HOOK_PREFIX: &str = "sb.";
/// The RPC method of the connect hook.
pub const CONNECT_HOOK: &str = "sb.connect";
/// The RPC method of namespaces' subscribe hooks.
pub const SUBSCRIBE_HOOK: &str = "sb.subscribe";
/// The RPC method of namespaces' publish hooks.
pub const PUBLISH_HOOK: &str = "sb.publish";

/// The development HMAC secret used by `--dev`. Never use it in production.
pub const DEV_SECRET: &str = "switchboard-dev-secret-do-not-use-in-production";

impl Config {
    /// Loads defaults, then `file` (if any), then `SWITCHBOARD_*` environment variables,
    /// then `overrides` (command-line flags, already shaped like the config), and checks
    /// the result.
    ///
    /// # Errors
    /// [`ConfigError`] when a source is unreadable, a value mistyped, or values conflict.
    pub fn load(file: Option<&Path>, overrides: serde_json::Value) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Invalid(format!("{} does not exist", file.display())));
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment
            // Only SWITCHBOARD_<SECTION>__<KEY>: other SWITCHBOARD_* variables (SWITCHBOARD_CONFIG_FILE,
            // Kubernetes service links such as SWITCHBOARD_SERVICE_HOST) are not configuration keys.
            .merge(Env::prefixed("SWITCHBOARD_").filter(|key| key.as_str().contains("__")).split("__"))
            .merge(Serialized::defaults(overrides));
        let mut config: Config = figment.extract().map_err(Box::new)?;
        config.normalize()?;
        Ok(config)
    }

    /// Ensures the personal namespace exists and checks cross-field consistency.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the offending field.
    pub fn normalize(&mut self) -> Result<(), ConfigError> {
        if !self.namespaces.iter().any(|ns| ns.name == NamespaceConfig::PERSONAL) {
            self.namespaces.push(NamespaceConfig::personal());
        }
        let mut names = std::collections::HashSet::new();
        for ns in &self.namespaces {
            if !names.insert(ns.name.as_str()) {
                return Err(ConfigError::Invalid(format!("namespace `{}` is defined twice", ns.name)));
            }
            if ns.name.contains(':') {
                return Err(ConfigError::Invalid(format!("namespace `{}` contains `:`", ns.name)));
            }
        }
        if self.limits.outbound_queue_frames == 0 || self.limits.outbound_queue_bytes == 0 {
            return Err(ConfigError::Invalid("limits.outbound_queue_* must be positive".into()));
        }
        if self.limits.commands_per_second == 0 || self.limits.command_burst == 0 {
            return Err(ConfigError::Invalid(
                "limits.commands_per_second and command_burst must be positive".into(),
            ));
        }
        let ceiling = switchboard_protocol::payload::MAX_NESTING_CEILING;
        if self.limits.max_nesting_depth > ceiling {
            return Err(ConfigError::Invalid(format!("limits.max_nesting_depth must be at most {ceiling}")));
        }
        if self.limits.outbound_queue_bytes < self.limits.max_payload_bytes {
            // A publication must fit in the budget (a larger frame passes only through an
            // otherwise empty queue).
            return Err(ConfigError::Invalid(
                "limits.outbound_queue_bytes must be at least limits.max_payload_bytes".into(),
            ));
        }
        if self.limits.max_pending_handshakes == 0 || self.limits.handshake_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "limits.max_pending_handshakes and handshake_timeout_ms must be positive".into(),
            ));
        }
        if self.heartbeat.ping_interval_ms == 0 {
            return Err(ConfigError::Invalid("heartbeat.ping_interval_ms must be positive".into()));
        }
        if self.broker.ack_replicas > 0 {
            if !self.broker.is_redis() {
                return Err(ConfigError::Invalid("broker.ack_replicas needs a Redis broker".into()));
            }
            if self.broker.ack_replicas_timeout_ms == 0
                || self.broker.ack_replicas_timeout_ms >= self.broker.command_timeout_ms
            {
                return Err(ConfigError::Invalid(
                    "broker.ack_replicas_timeout_ms must be positive and below broker.command_timeout_ms"
                        .into(),
                ));
            }
        }
        self.rpc.validate(self.broker.is_redis())?;
        self.lifecycle.validate(self.broker.is_redis())?;
        self.socketio.validate()?;
        self.compression.validate()?;
        if self.auth.connect_hook && !self.rpc.routes.iter().any(|route| route.matches(CONNECT_HOOK)) {
            return Err(ConfigError::Invalid(format!(
                "auth.connect_hook is on but no rpc route serves `{CONNECT_HOOK}`"
            )));
        }
        for ns in &self.namespaces {
            for (enabled, method) in [(ns.subscribe_hook, SUBSCRIBE_HOOK), (ns.publish_hook, PUBLISH_HOOK)] {
                if enabled && !self.rpc.routes.iter().any(|route| route.matches(method)) {
                    return Err(ConfigError::Invalid(format!(
                        "namespace `{}` has a hook but no rpc route serves `{method}`",
                        ns.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// The effective configuration as TOML, for `switchboard config`.
    ///
    /// # Errors
    /// When serialization fails (it does not for valid configurations).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string_pretty(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_include_personal_namespace() {
        let config = Config::load(None, serde_json::json!({})).expect("defaults load");
        assert!(config.namespaces.iter().any(|ns| ns.name == "user"));
        assert!(config.to_toml().expect("toml").contains("[auth]"));
    }

    #[test]
    fn file_then_overrides() {
        let dir = std::env::temp_dir().join(format!("sb-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("c.toml");
        std::fs::write(&file, "[auth]\nhmac_secret = \"s\"\n[limits]\nmax_connections = 7\n").expect("write");
        let config =
            Config::load(Some(&file), serde_json::json!({"limits": {"max_connections": 9}})).expect("load");
        assert_eq!(config.auth.hmac_secret.as_deref(), Some("s"));
        assert_eq!(config.limits.max_connections, 9);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let dir = std::env::temp_dir().join(format!("sb-config-u-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("c.toml");
        std::fs::write(&file, "[limits]\nmax_conections = 7\n").expect("write");
        let err = Config::load(Some(&file), serde_json::json!({})).expect_err("typo");
        assert!(err.to_string().contains("max_conections"), "{err}");
    }
}
