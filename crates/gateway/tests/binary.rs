//! The `switchboard` binary as a user runs it: print config, mint a token, serve, answer
//! health and metrics, and drain on SIGTERM.

#![allow(clippy::unwrap_used, missing_docs)]

mod fixture;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::json;
use switchboard_protocol::{Code, Encoding};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// Starts the binary on a free port and waits for its "listening" log line.
fn spawn_node(args: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(BIN)
        .args(["--dev", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent {
                let Ok(record) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
                if let Some(address) = record["fields"]["address"].as_str() {
                    tx.send(address.parse::<SocketAddr>().unwrap()).unwrap();
                    sent = true;
                }
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(20)).expect("node reports its address");
    (child, addr)
}

#[test]
fn config_command_prints_effective_toml() {
    let output = Command::new(BIN)
        .args(["config", "--listen", "127.0.0.1:9999"])
        .env("SWITCHBOARD_LIMITS__MAX_CONNECTIONS", "1234")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let config: toml::Value = toml::from_str(&String::from_utf8(output.stdout).unwrap()).unwrap();
    assert_eq!(config["node"]["listen"].as_str(), Some("127.0.0.1:9999"));
    assert_eq!(config["limits"]["max_connections"].as_integer(), Some(1234));
}

#[test]
fn config_file_from_env_and_unrelated_variables() {
    let dir = std::env::temp_dir().join(format!("sb-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.toml");
    std::fs::write(&file, "[limits]\nmax_connections = 55\n").unwrap();
    let output = Command::new(BIN)
        .arg("config")
        .env("SWITCHBOARD_CONFIG_FILE", &file)
        // What Kubernetes injects for a Service named `switchboard`: not configuration.
        .env("SWITCHBOARD_SERVICE_HOST", "10.0.0.1")
        .env("SWITCHBOARD_PORT", "tcp://10.0.0.1:80")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let config: toml::Value = toml::from_str(&String::from_utf8(output.stdout).unwrap()).unwrap();
    assert_eq!(config["limits"]["max_connections"].as_integer(), Some(55));
}

#[test]
fn bad_config_is_a_clear_error() {
    let output = Command::new(BIN)
        .args(["config"])
        .env("SWITCHBOARD_LIMITS__MAX_CONNECTIONS", "many")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.to_lowercase().contains("max_connections"), "{stderr}");
    let output = Command::new(BIN).args(["serve", "--listen", "127.0.0.1:0"]).output().unwrap();
    assert!(!output.status.success(), "no secret configured and no --dev");
    assert!(String::from_utf8_lossy(&output.stderr).contains("hmac_secret"));
}

#[tokio::test]
async fn serves_mints_and_drains_on_sigterm() {
    let (mut child, addr) = spawn_node(&[]);
    let (status, body) = fixture::http_get(addr, "/healthz").await;
    assert_eq!((status, body.contains("ok")), (200, true));
    let (status, body) = fixture::http_get(addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");

    let token = Command::new(BIN)
        .args(["token", "--dev", "--user", "u42", "--info", r#"{"name":"Ann"}"#])
        .output()
        .unwrap();
    assert!(token.status.success());
    let token = String::from_utf8(token.stdout).unwrap().trim().to_string();
    let request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{addr}/ws"
    ))
    .unwrap();
    let mut client = fixture::Client::open(request, Encoding::Json).await;
    let connected = client.ok("connect", json!({"token": token})).await;
    assert_eq!(connected["user"], "u42");
    client.ok("subscribe", json!({"channel": "chat:lobby"})).await;
    client.ok("publish", json!({"channel": "chat:lobby", "data": {"text": "hello"}})).await;
    assert_eq!(client.publication().await.data["text"], "hello");

    let (status, metrics) = fixture::http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_metrics_parse(&metrics);
    assert!(metrics.contains("switchboard_connections 1"), "{metrics}");
    assert!(metrics.contains("switchboard_subscriptions 2"), "{metrics}");

    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let (disconnect, closed) = client.closed().await;
    assert_eq!(disconnect.unwrap().code, Code::Shutdown);
    assert_eq!(closed.code(), Some(Code::Shutdown.as_u16()));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "node did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
}

/// Checks the Prometheus text format line by line: comments, or `name{labels} value`.
fn assert_metrics_parse(text: &str) {
    let mut samples = 0;
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix('#') {
            assert!(comment.starts_with(" HELP ") || comment.starts_with(" TYPE "), "bad comment: {line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample: {line}"));
        value.parse::<f64>().unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(name.starts_with("switchboard_"), "unexpected metric {name}");
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "bad name {name}");
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "bad labels: {line}"
            );
        }
        samples += 1;
    }
    assert!(samples > 10, "too few samples:\n{text}");
}
