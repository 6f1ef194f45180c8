//! Token verification: connection tokens and channel subscription tokens (JWT).
//!
//! The accepted algorithm is pinned by configuration. `jsonwebtoken` refuses any token
//! whose header names a different algorithm, which rules out `alg: none` and HMAC/RSA key
//! confusion. Verification is pure CPU work on the session task; nothing here does I/O
//! after start-up (a public key file is read once in [`Verifier::from_config`]).

use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::AuthConfig;

/// Why a token or the auth configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token's `exp` has passed (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// Signature, algorithm, claims or format are wrong.
    #[error("invalid token: {}", describe(.0))]
    Invalid(#[source] jsonwebtoken::errors::Error),
    /// A required claim is missing or does not match.
    #[error("invalid token: {0}")]
    Claim(&'static str),
    /// The configured algorithm or key is unusable.
    #[error("auth configuration: {0}")]
    Config(String),
    /// A key could not be parsed.
    #[error("auth configuration: bad key: {0}")]
    Key(#[source] jsonwebtoken::errors::Error),
}

impl From<jsonwebtoken::errors::Error> for AuthError {
    fn from(err: jsonwebtoken::errors::Error) -> Self {
        match err.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid(err),
        }
    }
}

/// A human-readable explanation of a `jsonwebtoken` error.
fn describe(error: &jsonwebtoken::errors::Error) -> String {
    match error.kind() {
        ErrorKind::InvalidSignature => "signature does not verify".into(),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "signed with an algorithm other than the configured one".into()
        }
        ErrorKind::ImmatureSignature => "not valid yet (nbf)".into(),
        ErrorKind::InvalidIssuer => "wrong issuer (iss)".into(),
        ErrorKind::InvalidAudience => "wrong audience (aud)".into(),
        ErrorKind::InvalidToken => "not a JWT".into(),
        _ => format!("malformed ({error})"),
    }
}

impl AuthError {
    /// A short label for the `auth_failures_total` metric.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Expired => "expired",
            AuthError::Invalid(err) => match err.kind() {
                ErrorKind::InvalidSignature => "bad_signature",
                ErrorKind::InvalidAlgorithm => "wrong_algorithm",
                ErrorKind::ImmatureSignature => "not_yet_valid",
                ErrorKind::InvalidIssuer => "wrong_issuer",
                ErrorKind::InvalidAudience => "wrong_audience",
                _ => "malformed",
            },
            AuthError::Claim(_) => "claims",
            AuthError::Config(_) | AuthError::Key(_) => "config",
        }
    }
}

/// Claims Switchboard reads from a token. Unknown claims are ignored.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// User id. Required in connection tokens; in subscription tokens it must match the
    /// connection's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Expiry, Unix seconds. Optional: a token without `exp` never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Not-before, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience: a string or an array of strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
    /// Arbitrary user info shown in presence and join/leave events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
    /// Connection tokens: channels this connection may subscribe to regardless of the
    /// namespace policy (exact names, or prefixes ending in `*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    /// Subscription tokens: the one channel this token grants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

impl Claims {
    /// Whether the `channels` claim grants `channel`.
    pub fn grants_channel(&self, channel: &str) -> bool {
        self.channels.iter().flatten().any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => channel.starts_with(prefix),
            None => pattern == channel,
        })
    }
}

/// Verifies tokens with the configured algorithm and key.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("algorithm", &self.validation.algorithms).finish()
    }
}

/// The configured HS256 secret: `hmac_secret`, or the contents of `hmac_secret_file`.
///
/// # Errors
/// [`AuthError::Config`] when the file cannot be read.
pub fn hmac_secret(config: &AuthConfig) -> Result<Option<String>, AuthError> {
    match (&config.hmac_secret, &config.hmac_secret_file) {
        (Some(secret), _) => Ok(Some(secret.clone())),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|text| Some(text.trim_end_matches(['\n', '\r']).to_string()))
            .map_err(|e| AuthError::Config(format!("cannot read {path}: {e}"))),
        (None, None) => Ok(None),
    }
}

/// Parses an algorithm name accepted by Switchboard.
///
/// # Errors
/// [`AuthError::Config`] for names other than HS256, RS256, ES256 and EdDSA.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, AuthError> {
    match name {
        "HS256" => Ok(Algorithm::HS256),
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        "EdDSA" => Ok(Algorithm::EdDSA),
        other => Err(AuthError::Config(format!(
            "algorithm `{other}` is not supported (use HS256, RS256, ES256 or EdDSA)"
        ))),
    }
}

impl Verifier {
    /// Builds a verifier from configuration.
    ///
    /// # Errors
    /// [`AuthError::Config`] or [`AuthError::Key`] when the algorithm or key is unusable.
    pub fn from_config(config: &AuthConfig) -> Result<Verifier, AuthError> {
        let algorithm = parse_algorithm(&config.algorithm)?;
        let key = if algorithm == Algorithm::HS256 {
            let secret = hmac_secret(config)?.filter(|s| !s.is_empty()).ok_or_else(|| {
                AuthError::Config(
                    "HS256 needs auth.hmac_secret or auth.hmac_secret_file (or SWITCHBOARD_AUTH__HMAC_SECRET, or --dev)"
                        .into(),
                )
            })?;
            DecodingKey::from_secret(secret.as_bytes())
        } else {
            let pem = match (&config.public_key_pem, &config.public_key_file) {
                (Some(pem), _) => pem.clone(),
                (None, Some(path)) => std::fs::read_to_string(path)
                    .map_err(|e| AuthError::Config(format!("cannot read {path}: {e}")))?,
                (None, None) => {
                    return Err(AuthError::Config(format!(
                        "{} needs auth.public_key_pem or auth.public_key_file",
                        config.algorithm
                    )))
                }
            };
            let pem = pem.as_bytes();
            match algorithm {
                Algorithm::RS256 => DecodingKey::from_rsa_pem(pem),
                Algorithm::ES256 => DecodingKey::from_ec_pem(pem),
                _ => DecodingKey::from_ed_pem(pem),
            }
            .map_err(AuthError::Key)?
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = config.leeway_secs;
        validation.validate_nbf = true;
        validation.required_spec_claims.clear();
        match &config.issuer {
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                validation.required_spec_claims.insert("iss".into());
            }
            None => validation.iss = None,
        }
        match &config.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        Ok(Verifier { key, validation })
    }

    /// Verifies a connection token and returns its claims.
    ///
    /// # Errors
    /// [`AuthError`] when the token is expired, forged, of another algorithm, or lacks `sub`.
    pub fn verify_connection(&self, token: &str) -> Result<Claims, AuthError> {
        let claims = self.verify(token)?;
        if claims.sub.as_deref().is_none_or(str::is_empty) {
            return Err(AuthError::Claim("connection token needs a non-empty `sub`"));
        }
        Ok(claims)
    }

    /// Verifies a subscription token for `channel` held by `user`.
    ///
    /// # Errors
    /// [`AuthError`] when the token is invalid or names another channel or user.
    pub fn verify_subscription(&self, token: &str, user: &str, channel: &str) -> Result<Claims, AuthError> {
        let claims = self.verify(token)?;
        if claims.channel.as_deref() != Some(channel) {
            return Err(AuthError::Claim("subscription token is for another channel"));
        }
        if claims.sub.as_deref().unwrap_or("") != user {
            return Err(AuthError::Claim("subscription token is for another user"));
        }
        Ok(claims)
    }

    fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        Ok(jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)?.claims)
    }
}

/// Signs claims; used by `switchboard token` and by tests.
///
/// # Errors
/// [`AuthError`] when the algorithm is unsupported or the key cannot be parsed.
pub fn mint(algorithm: &str, key_material: &[u8], claims: &Claims) -> Result<String, AuthError> {
    let algorithm = parse_algorithm(algorithm)?;
    let key = match algorithm {
        Algorithm::HS256 => EncodingKey::from_secret(key_material),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(key_material).map_err(AuthError::Key)?,
        Algorithm::ES256 => EncodingKey::from_ec_pem(key_material).map_err(AuthError::Key)?,
        _ => EncodingKey::from_ed_pem(key_material).map_err(AuthError::Key)?,
    };
    jsonwebtoken::encode(&Header::new(algorithm), claims, &key).map_err(AuthError::Key)
}

/// Current Unix time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs_config() -> AuthConfig {
        AuthConfig { hmac_secret: Some("secret".into()), ..AuthConfig::default() }
    }

    fn claims(sub: &str, exp_in: i64) -> Claims {
        Claims { sub: Some(sub.into()), exp: Some((unix_now() as i64 + exp_in) as u64), ..Claims::default() }
    }

    #[test]
    fn accepts_valid_and_rejects_expired_and_forged() {
        let verifier = Verifier::from_config(&hs_config()).expect("verifier");
        let good = mint("HS256", b"secret", &claims("u1", 60)).expect("mint");
        assert_eq!(verifier.verify_connection(&good).expect("valid").sub.as_deref(), Some("u1"));
        let expired = mint("HS256", b"secret", &claims("u1", -60)).expect("mint");
        assert!(matches!(verifier.verify_connection(&expired), Err(AuthError::Expired)));
        let forged = mint("HS256", b"other", &claims("u1", 60)).expect("mint");
        assert_eq!(verifier.verify_connection(&forged).expect_err("forged").reason(), "bad_signature");
    }

    #[test]
    fn rejects_alg_none_and_missing_sub() {
        let verifier = Verifier::from_config(&hs_config()).expect("verifier");
        // header {"alg":"none","typ":"JWT"} . {"sub":"u1"} . (empty signature)
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1MSJ9.";
        assert!(verifier.verify_connection(none).is_err());
        let no_sub = mint("HS256", b"secret", &Claims::default()).expect("mint");
        assert!(matches!(verifier.verify_connection(&no_sub), Err(AuthError::Claim(_))));
    }

    #[test]
    fn secret_can_come_from_a_file() {
        let path = std::env::temp_dir().join(format!("sb-secret-{}", std::process::id()));
        std::fs::write(&path, "12345\n").expect("write");
        let config =
            AuthConfig { hmac_secret_file: Some(path.display().to_string()), ..AuthConfig::default() };
        let verifier = Verifier::from_config(&config).expect("verifier");
        let token = mint("HS256", b"12345", &claims("u1", 60)).expect("mint");
        assert!(verifier.verify_connection(&token).is_ok());
        let missing =
            AuthConfig { hmac_secret_file: Some("/nonexistent/secret".into()), ..AuthConfig::default() };
        assert!(matches!(Verifier::from_config(&missing), Err(AuthError::Config(_))));
    }

    #[test]
    fn channels_claim_supports_prefixes() {
        let claims = Claims { channels: Some(vec!["news".into(), "dao:*".into()]), ..Claims::default() };
        assert!(claims.grants_channel("news"));
        assert!(claims.grants_channel("dao:proposal-7"));
        assert!(!claims.grants_channel("newsroom"));
    }
}
