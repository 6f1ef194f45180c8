//! The `switchboard-publish` CLI against a real redis-server: flags, stdin JSON lines,
//! idempotency, and errors.

#![allow(clippy::unwrap_used, missing_docs)]

use std::{
    io::Write,
    process::{Command, Stdio},
};

use switchboard_testkit::{Persistence, RedisServer};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard-publish");

/// What a gateway writes at start: the namespaces' retention.
fn declare_namespaces(redis: &RedisServer) {
    for (name, size) in [("", 100), ("user", 1000), ("dao", 10)] {
        let retention =
            format!(r#"{{"history_size":{size},"history_ttl_ms":300000,"meta_ttl_ms":86400000}}"#);
        redis.cli(&["HSET", "sb:namespaces", name, &retention]);
    }
}

fn run(redis: &RedisServer, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(BIN)
        .args(["--redis", &redis.url()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    } else {
        drop(child.stdin.take());
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

#[test]
fn publishes_from_flags_and_is_idempotent() {
    let redis = RedisServer::start(Persistence::None);
    declare_namespaces(&redis);
    let (ok, stdout, stderr) =
        run(&redis, &["--channel", "dao:proposal-7", "--event", "vote", "--data", r#"{"yes":12}"#], None);
    assert!(ok, "{stderr}");
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(result["offset"], 1);
    assert_eq!(result["duplicate"], false);
    let args = ["--user", "u42", "--data", r#"{"text":"KYC approved"}"#, "--idempotency-key", "kyc-42"];
    let (ok, first, _) = run(&redis, &args, None);
    assert!(ok);
    let (ok, second, _) = run(&redis, &args, None);
    assert!(ok);
    let first: serde_json::Value = serde_json::from_str(first.trim()).unwrap();
    let second: serde_json::Value = serde_json::from_str(second.trim()).unwrap();
    assert_eq!(first["offset"], second["offset"]);
    assert_eq!(second["duplicate"], true);
    assert_eq!(redis.cli(&["XLEN", "sb:{user:u42}:stream"]), "1", "stored once");
}

#[test]
fn publishes_json_lines_from_stdin_and_reports_bad_lines() {
    let redis = RedisServer::start(Persistence::None);
    declare_namespaces(&redis);
    let input = concat!(
        r#"{"channel":"dao:p1","event":"tally","data":{"yes":1}}"#,
        "\n",
        r#"{"channel":"dao:p1","data":{"yes":2}}"#,
        "\n",
        "not json\n",
        r#"{"channel":"nope:x","data":1}"#,
        "\n",
        r#"{"user":"u1","data":{"n":1},"live_only":true}"#,
        "\n",
    );
    let (ok, stdout, _) = run(&redis, &["--stdin"], Some(input));
    assert!(!ok, "bad lines make the exit code non-zero");
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[0]["offset"], 1);
    assert_eq!(lines[1]["offset"], 2);
    assert_eq!(lines[2]["line"], 3);
    assert!(lines[3]["error"].as_str().unwrap().contains("unknown namespace"), "{}", lines[3]);
    assert!(lines[4].get("offset").is_none(), "live only has no offset");
    assert_eq!(redis.cli(&["XLEN", "sb:{dao:p1}:stream"]), "2");
}

#[test]
fn invalid_channel_and_unreachable_redis_are_clear_errors() {
    let redis = RedisServer::start(Persistence::None);
    declare_namespaces(&redis);
    let (ok, _, stderr) = run(&redis, &["--channel", "bad channel", "--data", "1"], None);
    assert!(!ok);
    assert!(stderr.contains("invalid channel"), "{stderr}");
    let output = Command::new(BIN)
        .args(["--redis", "redis://127.0.0.1:1", "--channel", "news", "--data", "1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot use"));
}
