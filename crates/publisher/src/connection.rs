//! Where the publisher's Redis is and how to reach it: the URL (`redis://`, or
//! `rediss://` for TLS, with `user:password@` for an ACL user) and, for TLS with a
//! private CA or a client certificate, the PEM files. Shared by [`crate::Publisher`],
//! the RPC [`crate::worker::Worker`] and the [`crate::lifecycle::LifecycleConsumer`].

use redis::{ClientTlsConfig, RedisError, TlsCertificates};
// The redis crate's TLS uses rustls's process default provider: the `ring` feature of
// this dependency is what makes one available (no other provider is compiled in).
use rustls as _;

/// How to connect to Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisOptions {
    url: String,
    ca_file: Option<String>,
    client_cert: Option<(String, String)>,
}

impl RedisOptions {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://…` for TLS with the
    /// system's trust store.
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

    /// The `redis` crate's client for these options.
    ///
    /// # Errors
    /// A malformed URL, or a PEM file that cannot be read.
    pub(crate) fn client(&self) -> Result<redis::Client, RedisError> {
        if self.ca_file.is_none() && self.client_cert.is_none() {
            return redis::Client::open(self.url.as_str());
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
        redis::Client::build_with_tls(self.url.as_str(), TlsCertificates { client_tls, root_cert })
    }
}

impl From<&str> for RedisOptions {
    fn from(url: &str) -> RedisOptions {
        RedisOptions::new(url)
    }
}
