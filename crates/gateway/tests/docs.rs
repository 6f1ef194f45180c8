//! Keeps `docs/operations.md` true: every configuration key and every metric is documented.

#![allow(clippy::unwrap_used, missing_docs)]

use switchboard_gateway::{config::Config, metrics::Metrics};

fn operations_md() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/operations.md")).unwrap()
}

#[test]
fn every_config_key_is_documented() {
    let doc = operations_md();
    let config: toml::Value = toml::from_str(&Config::default().to_toml().unwrap()).unwrap();
    let mut missing = Vec::new();
    for (section, table) in config.as_table().unwrap() {
        let keys: Vec<String> = match table {
            toml::Value::Table(t) => t.keys().cloned().collect(),
            toml::Value::Array(items) => {
                items.iter().flat_map(|i| i.as_table().unwrap().keys().cloned()).collect()
            }
            _ => continue,
        };
        for key in keys {
            let name = format!("`{section}.{key}`");
            if !doc.contains(&name) {
                missing.push(name);
            }
        }
    }
    // Optional keys are absent from the default TOML; check them by name.
    for name in [
        "node.name",
        "auth.hmac_secret",
        "auth.hmac_secret_file",
        "auth.public_key_pem",
        "auth.public_key_file",
        "auth.issuer",
        "auth.audience",
    ] {
        if !doc.contains(&format!("`{name}`")) {
            missing.push(name.to_string());
        }
    }
    assert!(missing.is_empty(), "undocumented config keys in docs/operations.md: {missing:?}");
}

#[test]
fn every_metric_is_documented() {
    let doc = operations_md();
    let metrics = Metrics::new();
    let missing: Vec<String> = metrics
        .registry()
        .gather()
        .iter()
        .map(|family| family.name().to_string())
        .filter(|name| !doc.contains(&format!("`{name}")))
        .collect();
    assert!(missing.is_empty(), "undocumented metrics in docs/operations.md: {missing:?}");
}

#[test]
fn every_redis_key_and_function_is_documented() {
    use switchboard_protocol::redis as keys;
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/redis.md")).unwrap();
    let channel = "<channel>";
    let names = [
        keys::stream(channel),
        keys::meta(channel),
        keys::live(channel),
        keys::idempotency(channel, "<key>"),
        keys::presence(channel),
        keys::presence_expiry(channel),
        keys::presence_users(channel),
        keys::acks(channel),
        keys::probe("<node>"),
        keys::NODES.to_string(),
        keys::NODES_SEEN.to_string(),
        keys::NAMESPACES.to_string(),
    ];
    for name in names {
        assert!(doc.contains(&format!("`{name}`")), "docs/redis.md does not list `{name}`");
    }
    for line in keys::LIBRARY.lines().filter(|l| l.contains("register_function")) {
        let function = line.split('\'').nth(1).unwrap();
        assert!(doc.contains(&format!("`{function}`")), "docs/redis.md does not document `{function}`");
    }
}
