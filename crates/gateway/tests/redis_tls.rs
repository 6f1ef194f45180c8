//! Redis as managed services run it: TLS with a private CA, and an ACL user with only the
//! permissions docs/operations.md lists for gateways. Real `redis-server` with a TLS port,
//! gateway processes of the built binary.

#![allow(clippy::unwrap_used, missing_docs)]

mod fixture;

use std::{path::Path, process::Command};

use fixture::{
    cluster::{API_KEY, BIN, SERIAL},
    connect_url,
};
use serde_json::json;
use switchboard_protocol::Encoding;
use switchboard_testkit::{Gateway, RedisServer, TlsFiles};

/// The ACL of a gateway, exactly as docs/operations.md ("Redis TLS and ACL") gives it.
const GATEWAY_ACL: &[&str] = &["on", "~sb:*", "&sb:*", "+@all", "-@dangerous", "+info"];

fn node_env<'a>(url: &'a str, ca: &'a str, password_file: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("SWITCHBOARD_AUTH__HMAC_SECRET", fixture::SECRET),
        ("SWITCHBOARD_API__KEYS", "[\"cluster-key\"]"),
        ("SWITCHBOARD_BROKER__URL", url),
        ("SWITCHBOARD_BROKER__TLS_CA_FILE", ca),
        ("SWITCHBOARD_BROKER__USERNAME", "gateway"),
        ("SWITCHBOARD_BROKER__PASSWORD_FILE", password_file),
        ("SWITCHBOARD_LIFECYCLE__ENABLED", "true"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_work_over_tls_with_an_acl_user_and_refuse_a_wrong_ca_or_password() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let files = TlsFiles::generate(dir.path());
    let redis = RedisServer::start_tls(&files);
    let mut acl = vec!["ACL", "SETUSER", "gateway", ">s3cret-pass"];
    acl.extend(GATEWAY_ACL);
    assert_eq!(redis.cli(&acl).trim(), "OK");
    let password_file = dir.path().join("redis-password");
    std::fs::write(&password_file, "s3cret-pass\n").unwrap();
    let (url, ca, password) =
        (redis.tls_url(), files.ca.display().to_string(), password_file.display().to_string());

    // Two nodes over TLS as the ACL user: the whole path works (join, publish through the
    // API of the other node, history, presence, lifecycle).
    let nodes: Vec<Gateway> =
        (0..2).map(|_| Gateway::start(Path::new(BIN), &[], &node_env(&url, &ca, &password))).collect();
    let mut alice = connect_url(&nodes[0].ws_url(), "alice", Encoding::Json).await;
    alice.ok("subscribe", json!({"channel": "tls-news"})).await;
    let addr = nodes[1].addr();
    let (status, body) = tokio::task::spawn_blocking(move || {
        let body = json!({"channel": "tls-news", "data": {"n": 1}}).to_string();
        switchboard_testkit::http(
            addr,
            "POST",
            "/api/v1/publish",
            &[("X-API-Key", API_KEY)],
            Some(body.as_bytes()),
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(alice.publication().await.data, json!({"n": 1}));
    // A backend through the publisher crate, over TLS as the same ACL user.
    let port = url.rsplit(':').next().unwrap();
    let options =
        switchboard_publisher::RedisOptions::new(format!("rediss://gateway:s3cret-pass@127.0.0.1:{port}"))
            .ca_file(files.ca.display().to_string());
    let publisher = switchboard_publisher::Publisher::connect_with(&options).await.unwrap();
    publisher.publish("tls-news", &json!({"n": 2}), &Default::default()).await.unwrap();
    assert_eq!(alice.publication().await.data, json!({"n": 2}));
    let history = alice.ok("history", json!({"channel": "tls-news"})).await;
    assert_eq!(history["publications"].as_array().unwrap().len(), 2);
    alice.ok("presence", json!({"channel": "tls-news"})).await;
    fixture::eventually("the connect is in the lifecycle stream", || async {
        redis.cli(&["XLEN", "sb:{lifecycle}:events"]).trim() != "0"
    })
    .await;
    for node in &nodes {
        let logs = node.drain_logs().join("\n");
        assert!(!logs.contains("NOPERM"), "the documented ACL is not enough: {logs}");
    }

    // A CA that did not sign the server's certificate: never ready, and the log says why.
    let other = tempfile::tempdir().unwrap();
    let wrong_ca = TlsFiles::generate(other.path()).ca.display().to_string();
    let untrusting =
        Gateway::start_listening(Path::new(BIN), "127.0.0.1:0", &[], &node_env(&url, &wrong_ca, &password));
    fixture::eventually("the certificate error is logged", || async {
        untrusting.drain_logs().iter().any(|line| line.contains("InvalidCertificate"))
    })
    .await;
    assert_eq!(untrusting.get("/readyz").0, 503);

    // A wrong password stops the node at start with Redis's refusal.
    let wrong = dir.path().join("wrong-password");
    std::fs::write(&wrong, "nope").unwrap();
    let wrong = wrong.display().to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["--listen", "127.0.0.1:0"])
            .envs(node_env(&url, &ca, &wrong))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("redis refused the credentials") && stderr.contains("WRONGPASS"), "{stderr}");
}
