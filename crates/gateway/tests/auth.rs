//! The authentication matrix: algorithms, forged and confused tokens, claims, timeouts,
//! refresh, subscription tokens.

#![allow(clippy::unwrap_used, missing_docs)]

mod fixture;

use std::time::Duration;

use fixture::{config, token, token_with, TestServer};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use switchboard_gateway::auth::{self, Claims};
use switchboard_protocol::{push::Push, Code, Encoding};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue};

fn key(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn claims(user: &str) -> Claims {
    Claims { sub: Some(user.into()), exp: Some(auth::unix_now() + 600), ..Claims::default() }
}

/// Connects with `token` and expects an error reply with `reply_code`, then a close with
/// `close_code`.
async fn refused(server: &TestServer, token: &str, reply_code: Code, close_code: Code) {
    let mut client = server.open(Encoding::Json).await;
    let error = client.err("connect", json!({"token": token})).await;
    assert_eq!(error.code, reply_code, "{}", error.message);
    let (disconnect, closed) = client.closed().await;
    assert_eq!(disconnect.unwrap().code, close_code);
    assert_eq!(closed.code(), Some(close_code.as_u16()));
}

#[tokio::test]
async fn hs256_matrix() {
    let server = TestServer::start(config()).await;
    server.connect("ok", Encoding::Json).await;
    let expired = token_with(Claims { exp: Some(auth::unix_now() - 120), ..claims("u") });
    refused(&server, &expired, Code::TokenExpired, Code::ConnectionExpired).await;
    let forged = auth::mint("HS256", b"not-the-secret", &claims("u")).unwrap();
    refused(&server, &forged, Code::InvalidToken, Code::Unauthorized).await;
    let hs384 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS384),
        &claims("u"),
        &EncodingKey::from_secret(fixture::SECRET.as_bytes()),
    )
    .unwrap();
    refused(&server, &hs384, Code::InvalidToken, Code::Unauthorized).await;
    // {"alg":"none"} with an empty signature.
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1In0.";
    refused(&server, none, Code::InvalidToken, Code::Unauthorized).await;
    refused(&server, "garbage", Code::InvalidToken, Code::Unauthorized).await;
    let no_sub = token_with(Claims { sub: None, ..claims("u") });
    refused(&server, &no_sub, Code::InvalidToken, Code::Unauthorized).await;
    let not_yet = token_with(Claims { nbf: Some(auth::unix_now() + 600), ..claims("u") });
    refused(&server, &not_yet, Code::InvalidToken, Code::Unauthorized).await;
    let bad_sub = token_with(claims("has space"));
    refused(&server, &bad_sub, Code::InvalidToken, Code::Unauthorized).await;

    let mut client = server.open(Encoding::Json).await;
    let error = client.err("connect", json!({})).await;
    assert_eq!(error.code, Code::InvalidToken);

    let metrics = server.http_get("/metrics").await.1;
    assert!(metrics.contains("switchboard_auth_failures_total{reason=\"bad_signature\"} 1"), "{metrics}");
    assert!(metrics.contains("switchboard_auth_failures_total{reason=\"expired\"} 1"), "{metrics}");
    assert!(metrics.contains("switchboard_auth_failures_total{reason=\"wrong_algorithm\"} 1"), "{metrics}");
    server.shutdown().await;
}

#[tokio::test]
async fn authorization_header_is_accepted() {
    let server = TestServer::start(config()).await;
    let mut request = server.url().into_client_request().unwrap();
    let bearer = format!("Bearer {}", token("hdr"));
    request.headers_mut().insert("Authorization", HeaderValue::from_str(&bearer).unwrap());
    let mut client = fixture::Client::open(request, Encoding::Json).await;
    assert_eq!(client.ok("connect", json!({})).await["user"], "hdr");
    server.shutdown().await;
}

async fn asymmetric(algorithm: &str, private: &str, public: &str) {
    let mut config = config();
    config.auth.algorithm = algorithm.into();
    config.auth.hmac_secret = None;
    config.auth.public_key_pem = Some(String::from_utf8(key(public)).unwrap());
    let server = TestServer::start(config).await;
    let good = auth::mint(algorithm, &key(private), &claims("asym")).unwrap();
    let mut client = server.open(Encoding::Json).await;
    assert_eq!(client.ok("connect", json!({"token": good})).await["user"], "asym");
    // Key confusion: an HS256 token whose secret is the public key.
    let confused = auth::mint("HS256", &key(public), &claims("asym")).unwrap();
    refused(&server, &confused, Code::InvalidToken, Code::Unauthorized).await;
    server.shutdown().await;
}

#[tokio::test]
async fn rs256_accepts_its_key_and_refuses_key_confusion() {
    asymmetric("RS256", "rsa_private.pem", "rsa_public.pem").await;
}

#[tokio::test]
async fn es256_accepts_its_key_and_refuses_key_confusion() {
    asymmetric("ES256", "ec_private.pem", "ec_public.pem").await;
}

#[tokio::test]
async fn eddsa_accepts_its_key_and_refuses_key_confusion() {
    asymmetric("EdDSA", "ed_private.pem", "ed_public.pem").await;
}

#[tokio::test]
async fn issuer_and_audience_are_enforced() {
    let mut config = config();
    config.auth.issuer = Some("https://auth.example".into());
    config.auth.audience = Some("switchboard".into());
    let server = TestServer::start(config).await;
    let good = token_with(Claims {
        iss: Some("https://auth.example".into()),
        aud: Some(json!("switchboard")),
        ..claims("u")
    });
    server.open(Encoding::Json).await.ok("connect", json!({"token": good})).await;
    let wrong_iss =
        token_with(Claims { iss: Some("evil".into()), aud: Some(json!("switchboard")), ..claims("u") });
    refused(&server, &wrong_iss, Code::InvalidToken, Code::Unauthorized).await;
    let missing = token_with(claims("u"));
    refused(&server, &missing, Code::InvalidToken, Code::Unauthorized).await;
    let aud_array = token_with(Claims {
        iss: Some("https://auth.example".into()),
        aud: Some(serde_json::json!(["other", "switchboard"])),
        ..claims("u")
    });
    server.open(Encoding::Json).await.ok("connect", json!({"token": aud_array})).await;
    let wrong_aud = token_with(Claims {
        iss: Some("https://auth.example".into()),
        aud: Some(json!("other")),
        ..claims("u")
    });
    refused(&server, &wrong_aud, Code::InvalidToken, Code::Unauthorized).await;
    server.shutdown().await;
}

#[tokio::test]
async fn anonymous_only_when_enabled() {
    let mut config = config();
    config.auth.allow_anonymous = true;
    let server = TestServer::start(config).await;
    let mut client = server.open(Encoding::Json).await;
    let connected = client.ok("connect", json!({})).await;
    assert_eq!(connected["user"], "");
    assert_eq!(connected["subscriptions"], json!([]));
    client.ok("subscribe", json!({"channel": "open:lobby"})).await;
    let error = client.err("subscribe", json!({"channel": "news"})).await;
    assert_eq!(error.code, Code::PermissionDenied);
    server.shutdown().await;
}

#[tokio::test]
async fn commands_before_connect_are_refused_and_auth_times_out() {
    // The refusal on a node with the default 10 s authentication timeout, so that the
    // reply cannot race the close on a slow machine.
    let server = TestServer::start(config()).await;
    let mut client = server.open(Encoding::Json).await;
    assert_eq!(client.err("subscribe", json!({"channel": "news"})).await.code, Code::NotConnected);
    assert_eq!(client.err("ping", serde_json::Value::Null).await.code, Code::NotConnected);
    server.shutdown().await;

    let mut config = config();
    config.auth.auth_timeout_ms = 300;
    let server = TestServer::start(config).await;
    let mut client = server.open(Encoding::Json).await;
    let (disconnect, closed) = client.closed().await;
    assert_eq!(disconnect.unwrap().code, Code::AuthTimeout);
    assert_eq!(closed.code(), Some(Code::AuthTimeout.as_u16()));
    server.shutdown().await;
}

#[tokio::test]
async fn subscription_tokens_and_channels_claim() {
    let server = TestServer::start(config()).await;
    let mut client = server.connect("u1", Encoding::Json).await;
    let denied = client.err("subscribe", json!({"channel": "private:deal-9"})).await;
    assert_eq!(denied.code, Code::PermissionDenied);
    let other_channel = token_with(Claims { channel: Some("private:deal-8".into()), ..claims("u1") });
    let error = client.err("subscribe", json!({"channel": "private:deal-9", "token": other_channel})).await;
    assert_eq!(error.code, Code::InvalidToken);
    let other_user = token_with(Claims { channel: Some("private:deal-9".into()), ..claims("u2") });
    let error = client.err("subscribe", json!({"channel": "private:deal-9", "token": other_user})).await;
    assert_eq!(error.code, Code::InvalidToken);
    // Expired beyond the leeway (5 s): 114, and the connection stays open.
    let expired = token_with(Claims {
        channel: Some("private:deal-9".into()),
        exp: Some(auth::unix_now() - 60),
        ..claims("u1")
    });
    let error = client.err("subscribe", json!({"channel": "private:deal-9", "token": expired})).await;
    assert_eq!(error.code, Code::TokenExpired);
    assert!(!error.temporary);
    client.ok("ping", serde_json::Value::Null).await;
    let good = token_with(Claims { channel: Some("private:deal-9".into()), ..claims("u1") });
    client.ok("subscribe", json!({"channel": "private:deal-9", "token": good})).await;

    let granted = token_with(Claims { channels: Some(vec!["private:vault-*".into()]), ..claims("u3") });
    let mut holder = server.open(Encoding::Json).await;
    holder.ok("connect", json!({"token": granted})).await;
    holder.ok("subscribe", json!({"channel": "private:vault-1"})).await;
    assert_eq!(
        holder.err("subscribe", json!({"channel": "private:other"})).await.code,
        Code::PermissionDenied
    );
    // The channels claim never opens another user's personal channel.
    let sneaky = token_with(Claims { channels: Some(vec!["user:*".into()]), ..claims("u4") });
    let mut sneak = server.open(Encoding::Json).await;
    sneak.ok("connect", json!({"token": sneaky})).await;
    assert_eq!(sneak.err("subscribe", json!({"channel": "user:u1"})).await.code, Code::PermissionDenied);
    server.shutdown().await;
}

#[tokio::test]
async fn refresh_push_before_expiry_and_disconnect_after_grace() {
    let mut config = config();
    config.auth.refresh_ahead_secs = 2;
    config.auth.expired_grace_secs = 1;
    config.auth.leeway_secs = 0;
    let server = TestServer::start(config).await;
    let short = token_with(Claims { exp: Some(auth::unix_now() + 3), ..claims("r") });
    let mut client = server.open(Encoding::Json).await;
    client.ok("connect", json!({"token": short})).await;
    match client.push().await {
        Push::Refresh(refresh) => assert!(refresh.expires_at > 0),
        other => panic!("expected refresh push, got {other:?}"),
    }
    // Refreshing with another user's token is refused.
    let error = client.err("refresh", json!({"token": token("someone-else")})).await;
    assert_eq!(error.code, Code::InvalidToken);
    let (disconnect, closed) = tokio::time::timeout(Duration::from_secs(8), client.closed()).await.unwrap();
    assert_eq!(disconnect.unwrap().code, Code::ConnectionExpired);
    assert_eq!(closed.code(), Some(Code::ConnectionExpired.as_u16()));

    // A refreshed connection stays open past the first token's expiry.
    let short = token_with(Claims { exp: Some(auth::unix_now() + 3), ..claims("r2") });
    let mut client = server.open(Encoding::Json).await;
    client.ok("connect", json!({"token": short})).await;
    assert!(matches!(client.push().await, Push::Refresh(_)));
    client.ok("refresh", json!({"token": token("r2")})).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    client.ok("ping", serde_json::Value::Null).await;
    server.shutdown().await;
}
