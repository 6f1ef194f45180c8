//! The Redis connection settings of `[broker]`: URL (one server, or the sentinels that
//! know the primary), ACL credentials (also from a file, for Kubernetes and Docker
//! secrets) and TLS (`rediss://`: a private CA, a client certificate, the server name to
//! verify), turned into a fred configuration.
//!
//! A bad file (missing, not PEM, a key that does not match) fails the node's start with
//! the path in the message, rather than a TLS error at every reconnect.

use std::path::Path;

use fred::{
    prelude::Config,
    rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName},
    },
    types::config::{ServerConfig, TlsConfig, TlsConnector, TlsHostMapping},
};

use crate::{broker::BrokerError, config::BrokerConfig};

/// The fred configuration for `config`'s Redis.
///
/// # Errors
/// [`BrokerError::Unavailable`] naming the bad URL, file or setting.
pub(super) fn redis_config(config: &BrokerConfig) -> Result<Config, BrokerError> {
    // An empty value is no value (compose passes unset variables as "").
    let set = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
    let config = &BrokerConfig {
        username: set(&config.username),
        password: set(&config.password),
        password_file: set(&config.password_file),
        tls_ca_file: set(&config.tls_ca_file),
        tls_cert_file: set(&config.tls_cert_file),
        tls_key_file: set(&config.tls_key_file),
        tls_server_name: set(&config.tls_server_name),
        ..config.clone()
    };
    let mut redis = Config::from_url(&config.url)?;
    if let Some(username) = &config.username {
        redis.username = Some(username.clone());
    }
    match (&config.password, &config.password_file) {
        (Some(password), _) => redis.password = Some(password.clone()),
        (None, Some(path)) => redis.password = Some(read_secret(path)?),
        (None, None) => {}
    }
    let tls_settings =
        config.tls_ca_file.is_some() || config.tls_cert_file.is_some() || config.tls_server_name.is_some();
    if tls_settings && !config.is_tls() {
        return Err(invalid("broker.tls_* settings need a rediss:// or rediss-sentinel:// URL"));
    }
    if config.is_tls() {
        redis.tls = Some(TlsConfig { connector: connector(config)?, hostnames: TlsHostMapping::None });
        if let Some(name) = &config.tls_server_name {
            ServerName::try_from(name.clone()).map_err(|_| {
                invalid(&format!("broker.tls_server_name `{name}` is not a DNS name or IP address"))
            })?;
            // The name checked against the server's certificate, instead of the URL's host.
            // Sentinel reports the primary by address, so the override cannot apply there.
            match &mut redis.server {
                ServerConfig::Centralized { server } => server.tls_server_name = Some(name.as_str().into()),
                _ => return Err(invalid("broker.tls_server_name works with rediss:// URLs only")),
            }
        }
    }
    Ok(redis)
}

/// A rustls client: the CA file's certificates (or the system's), with the client
/// certificate when one is configured.
fn connector(config: &BrokerConfig) -> Result<TlsConnector, BrokerError> {
    let mut roots = rustls::RootCertStore::empty();
    match &config.tls_ca_file {
        Some(path) => {
            let certificates = read_certificates(path)?;
            let (added, _) = roots.add_parsable_certificates(certificates);
            if added == 0 {
                return Err(invalid(&format!("broker.tls_ca_file {path}: no usable CA certificate")));
            }
        }
        None => {
            for certificate in fred::rustls_native_certs::load_native_certs().certs {
                // A system store with one unusable entry must not stop the node.
                let _ = roots.add(certificate);
            }
        }
    }
    // The one crypto provider built in (ring, through fred's `enable-rustls-ring`).
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let client = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => {
            let chain = read_certificates(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|error| invalid(&format!("broker.tls_key_file {key}: {error}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|error| invalid(&format!("broker.tls_cert_file/tls_key_file: {error}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(invalid("broker.tls_cert_file and broker.tls_key_file go together")),
    };
    Ok(TlsConnector::from(client))
}

fn read_certificates(path: &str) -> Result<Vec<CertificateDer<'static>>, BrokerError> {
    let certificates: Result<Vec<_>, _> =
        CertificateDer::pem_file_iter(path).map_err(|error| invalid(&format!("{path}: {error}")))?.collect();
    let certificates = certificates.map_err(|error| invalid(&format!("{path}: {error}")))?;
    if certificates.is_empty() {
        return Err(invalid(&format!("{path}: no PEM certificate")));
    }
    Ok(certificates)
}

fn read_secret(path: &str) -> Result<String, BrokerError> {
    let text = std::fs::read_to_string(Path::new(path))
        .map_err(|error| invalid(&format!("broker.password_file {path}: {error}")))?;
    Ok(text.strip_suffix('\n').unwrap_or(&text).to_string())
}

fn invalid(message: &str) -> BrokerError {
    BrokerError::Unavailable(message.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_values_are_unset_and_tls_settings_need_rediss() {
        let config = BrokerConfig {
            url: "redis://u:p@127.0.0.1:6390/2".into(),
            username: Some(String::new()),
            password_file: Some(String::new()),
            tls_ca_file: Some(String::new()),
            ..BrokerConfig::default()
        };
        let redis = redis_config(&config).expect("empty values are ignored");
        assert_eq!((redis.username.as_deref(), redis.password.as_deref()), (Some("u"), Some("p")));
        assert!(redis.tls.is_none());

        let config = BrokerConfig { tls_ca_file: Some("/ca.pem".into()), ..config };
        let error = redis_config(&config).expect_err("TLS files on redis://").to_string();
        assert!(error.contains("rediss://"), "{error}");

        let config = BrokerConfig {
            url: "rediss://127.0.0.1:6390".into(),
            tls_ca_file: Some("/no/such/ca.pem".into()),
            ..config
        };
        let error = redis_config(&config).expect_err("missing CA file").to_string();
        assert!(error.contains("/no/such/ca.pem"), "{error}");
    }

    #[test]
    fn sentinel_urls_list_the_sentinels_and_the_service() {
        let config = BrokerConfig {
            url: "redis-sentinel://127.0.0.1:26379/0?sentinelServiceName=primary&node=127.0.0.1:26380".into(),
            password: Some("secret".into()),
            ..BrokerConfig::default()
        };
        let redis = redis_config(&config).expect("a sentinel URL");
        let ServerConfig::Sentinel { hosts, service_name, .. } = &redis.server else {
            panic!("not a sentinel configuration: {:?}", redis.server);
        };
        assert_eq!(service_name, "primary");
        let mut ports: Vec<u16> = hosts.iter().map(|host| host.port).collect();
        ports.sort_unstable();
        assert_eq!(ports, [26379, 26380]);
        assert_eq!(redis.password.as_deref(), Some("secret"));

        let config = BrokerConfig { tls_server_name: Some("redis.internal".into()), ..config };
        let error = redis_config(&config).expect_err("server name over sentinel").to_string();
        assert!(error.contains("rediss"), "{error}");
        let config = BrokerConfig { url: config.url.replace("redis-", "rediss-"), ..config };
        let error = redis_config(&config).expect_err("server name over sentinel").to_string();
        assert!(error.contains("rediss:// URLs only"), "{error}");
    }
}
