//! Where the publisher's Redis is and how to reach it: the URL (`redis://`, or
//! `rediss://` for TLS, with `user:password@` for an ACL user; or the sentinels that name
//! the primary, `redis-sentinel://`, in the gateways' format) and, for TLS with a private
//! CA or a client certificate, the PEM files; the connect and command timeouts. Shared by [`crate::Publisher`], the RPC
//! [`crate::worker::Worker`] and the [`crate::lifecycle::LifecycleConsumer`].

use std::time::Duration;

use redis::{
    aio::ConnectionManagerConfig,
    cluster::{ClusterClient, ClusterClientBuilder},
    sentinel::{SentinelClientBuilder, SentinelServerType},
    ClientTlsConfig, ConnectionAddr, RedisError, TlsCertificates,
};

use crate::link::{Link, Source};
// The redis crate's TLS uses rustls's process default provider: the `ring` feature of
// this dependency is what makes one available (no other provider is compiled in).
use rustls as _;

/// How long connecting may take unless [`RedisOptions::connect_timeout`] says otherwise
/// (the gateways' value).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a command may wait for its answer unless [`RedisOptions::command_timeout`]
/// says otherwise (the gateways' `broker.command_timeout_ms` default). It must exceed the
/// gateways' `broker.ack_replicas_timeout_ms`, which publishes wait in `WAIT`.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(3);

/// How to connect to Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    url: String,
    ca_file: Option<String>,
    client_cert: Option<(String, String)>,
    connect_timeout: Duration,
    command_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> RedisOptions {
        RedisOptions {
            url: String::new(),
            ca_file: None,
            client_cert: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
        }
    }
}

impl RedisOptions {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://…` for TLS with the
    /// system's trust store; or, through Sentinel,
    /// `redis-sentinel://[user:password@]sentinel:port[/db]?sentinelServiceName=<name>&node=<sentinel:port>…`
    /// (`rediss-sentinel://` for TLS; `sentinelUsername` and `sentinelPassword` for
    /// sentinels that require them), the format of the gateways' `broker.url`.
    pub fn new(url: impl Into<String>) -> RedisOptions {
        RedisOptions { url: url.into(), ..RedisOptions::default() }
    }

    /// `rediss://`: trust only the CA certificates of this PEM file (a private CA).
    #[must_use]
    pub fn ca_file(mut self, path: impl Into<String>) -> RedisOptions {
        self.ca_file = Some(path.into());
        self
    }

    /// `rediss://`: present this client certificate (PEM chain and key), for servers
    /// with `tls-auth-clients yes`.
    #[must_use]
    pub fn client_cert(mut self, cert_file: impl Into<String>, key_file: impl Into<String>) -> RedisOptions {
        self.client_cert = Some((cert_file.into(), key_file.into()));
        self
    }

    /// How long connecting may take ([`DEFAULT_CONNECT_TIMEOUT`] otherwise).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> RedisOptions {
        self.connect_timeout = timeout;
        self
    }

    /// How long a command may wait for its answer before it fails as a connection error
    /// (retryable; [`DEFAULT_COMMAND_TIMEOUT`] otherwise).
    #[must_use]
    pub fn command_timeout(mut self, timeout: Duration) -> RedisOptions {
        self.command_timeout = timeout;
        self
    }

    /// A connection (to the primary, through Sentinel), whose commands may wait
    /// `response_timeout` (default: the command timeout) for their answers.
    ///
    /// # Errors
    /// A malformed URL, a PEM file that cannot be read, or no connection.
    pub(crate) async fn link(&self, response_timeout: Option<Duration>) -> Result<Link, RedisError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(response_timeout.unwrap_or(self.command_timeout)));
        let source = match self.url.split_once("://") {
            Some(("redis-sentinel" | "rediss-sentinel", _)) => Source::Sentinel(self.sentinel()?),
            Some(("redis-cluster" | "rediss-cluster", _)) => Source::Cluster(self.cluster()?),
            _ => Source::Direct(self.client()?),
        };
        Link::connect(source, config).await
    }

    /// The `redis` crate's client for one server.
    fn client(&self) -> Result<redis::Client, RedisError> {
        match self.certificates()? {
            None => redis::Client::open(self.url.as_str()),
            Some(certificates) => redis::Client::build_with_tls(self.url.as_str(), certificates),
        }
    }

    fn certificates(&self) -> Result<Option<TlsCertificates>, RedisError> {
        if self.ca_file.is_none() && self.client_cert.is_none() {
            return Ok(None);
        }
        let read = |path: &str| {
            std::fs::read(path).map_err(|error| {
                RedisError::from((redis::ErrorKind::Io, "cannot read a TLS file", format!("{path}: {error}")))
            })
        };
        let root_cert = self.ca_file.as_deref().map(read).transpose()?;
        let client_tls = match &self.client_cert {
            Some((cert, key)) => Some(ClientTlsConfig { client_cert: read(cert)?, client_key: read(key)? }),
            None => None,
        };
        Ok(Some(TlsCertificates { client_tls, root_cert }))
    }

    /// A cluster client for a `redis-cluster://host:port?node=host:port…` URL (the
    /// gateways' format; `rediss-cluster://` for TLS): every listed node is a seed.
    fn cluster(&self) -> Result<ClusterClient, RedisError> {
        let invalid =
            |why: String| RedisError::from((redis::ErrorKind::InvalidClientConfig, "bad cluster URL", why));
        let url = url::Url::parse(&self.url).map_err(|error| invalid(error.to_string()))?;
        let scheme = if url.scheme() == "rediss-cluster" { "rediss" } else { "redis" };
        let auth = match (url.username(), url.password()) {
            ("", None) => String::new(),
            (user, password) => format!("{user}:{}@", password.unwrap_or_default()),
        };
        let host = url.host_str().ok_or_else(|| invalid("no host".into()))?;
        let mut seeds = vec![format!("{scheme}://{auth}{host}:{}", url.port().unwrap_or(6379))];
        for (name, value) in url.query_pairs() {
            match name.as_ref() {
                "node" => seeds.push(format!("{scheme}://{auth}{value}")),
                other => return Err(invalid(format!("unknown parameter `{other}`"))),
            }
        }
        let mut builder = ClusterClientBuilder::new(seeds)
            .connection_timeout(self.connect_timeout)
            .response_timeout(self.command_timeout);
        if let Some(certificates) = self.certificates()? {
            builder = builder.certs(certificates);
        }
        builder.build()
    }

    /// A Sentinel client for a `redis-sentinel://` or `rediss-sentinel://` URL.
    fn sentinel(&self) -> Result<redis::sentinel::SentinelClient, RedisError> {
        let invalid =
            |why: String| RedisError::from((redis::ErrorKind::InvalidClientConfig, "bad sentinel URL", why));
        let url = url::Url::parse(&self.url).map_err(|error| invalid(error.to_string()))?;
        let tls = url.scheme() == "rediss-sentinel";
        let address = |host: String, port: u16| match tls {
            true => ConnectionAddr::TcpTls { host, port, insecure: false, tls_params: None },
            false => ConnectionAddr::Tcp(host, port),
        };
        let host = url.host_str().ok_or_else(|| invalid("no sentinel host".into()))?;
        let mut sentinels = vec![address(host.to_string(), url.port().unwrap_or(26379))];
        let (mut service, mut sentinel_user, mut sentinel_password) = (None, None, None);
        for (name, value) in url.query_pairs() {
            match name.as_ref() {
                "sentinelServiceName" => service = Some(value.to_string()),
                "sentinelUsername" => sentinel_user = Some(value.to_string()),
                "sentinelPassword" => sentinel_password = Some(value.to_string()),
                "node" => {
                    let (host, port) = value.rsplit_once(':').unwrap_or((&value, "26379"));
                    let port = port.parse().map_err(|_| invalid(format!("bad node `{value}`")))?;
                    sentinels.push(address(host.to_string(), port));
                }
                other => return Err(invalid(format!("unknown parameter `{other}`"))),
            }
        }
        let service = service.ok_or_else(|| invalid("sentinelServiceName is required".into()))?;
        let mut builder = SentinelClientBuilder::new(sentinels, service, SentinelServerType::Master)?;
        let decode = |text: &str| {
            url::form_urlencoded::parse(format!("v={text}").as_bytes()).next().map(|(_, v)| v.to_string())
        };
        if !url.username().is_empty() {
            builder = builder.set_client_to_redis_username(decode(url.username()).unwrap_or_default());
        }
        if let Some(password) = url.password().and_then(decode) {
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some(db) = url.path().trim_start_matches('/').split('/').next().filter(|db| !db.is_empty()) {
            builder =
                builder.set_client_to_redis_db(db.parse().map_err(|_| invalid(format!("bad db `{db}`")))?);
        }
        if let Some(user) = sentinel_user {
            builder = builder.set_client_to_sentinel_username(user);
        }
        if let Some(password) = sentinel_password {
            builder = builder.set_client_to_sentinel_password(password);
        }
        if tls {
            builder = builder
                .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
            if let Some(certificates) = self.certificates()? {
                builder = builder
                    .set_client_to_redis_certificates(certificates.clone())
                    .set_client_to_sentinel_certificates(certificates);
            }
        }
        builder.build()
    }
}

impl From<&str> for RedisOptions {
    fn from(url: &str) -> RedisOptions {
        RedisOptions::new(url)
    }
}
