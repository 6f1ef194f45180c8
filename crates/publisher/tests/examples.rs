//! The examples run against a real Redis (with the namespaces a gateway would declare)
//! and store what they claim to publish.

#![allow(clippy::unwrap_used, missing_docs)]

use std::{path::PathBuf, process::Command};

use switchboard_testkit::{Persistence, RedisServer};

/// `cargo test` builds the examples next to the test binaries: target/<profile>/examples.
fn example(name: &str) -> PathBuf {
    let test_binary = std::env::current_exe().unwrap();
    test_binary.parent().unwrap().parent().unwrap().join("examples").join(name)
}

fn run(redis: &RedisServer, name: &str) -> String {
    let output = Command::new(example(name)).env("SWITCHBOARD_REDIS_URL", redis.url()).output().unwrap();
    assert!(output.status.success(), "{name}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).to_string()
}

#[test]
fn examples_publish_what_they_say() {
    let redis = RedisServer::start(Persistence::None);
    for name in ["", "user", "dao", "vault"] {
        let retention = r#"{"history_size":100,"history_ttl_ms":300000,"meta_ttl_ms":86400000}"#;
        redis.cli(&["HSET", "sb:namespaces", name, retention]);
    }
    assert!(run(&redis, "vote_cast").contains("offset Some(1)"));
    // The same vote again is a duplicate: still one entry.
    run(&redis, "vote_cast");
    assert_eq!(redis.cli(&["XLEN", "sb:{dao:proposal-42}:stream"]), "1");
    run(&redis, "consensus");
    assert_eq!(redis.cli(&["XLEN", "sb:{dao:proposal-42}:stream"]), "2");
    assert_eq!(redis.cli(&["XLEN", "sb:{dao:overview}:stream"]), "1");
    run(&redis, "notification");
    run(&redis, "vault_alert");
    assert_eq!(redis.cli(&["XLEN", "sb:{user:u42}:stream"]), "2");
    assert_eq!(redis.cli(&["XLEN", "sb:{vault:12}:stream"]), "1");
}
