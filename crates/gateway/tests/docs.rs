//! Keeps `docs/operations.md` true: every configuration key and every metric is documented.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;

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
        "node.advertise_address",
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

/// The metrics table of docs/operations.md as (name, label names, type), e.g.
/// `switchboard_auth_failures_total{reason}` → ("switchboard_auth_failures_total",
/// ["reason"], "counter").
fn documented_metrics(doc: &str) -> BTreeMap<String, (Vec<String>, String)> {
    let section = doc.split_once("\n## Metrics\n").expect("a Metrics section").1;
    let section = section.split("\n## ").next().unwrap();
    let mut metrics = BTreeMap::new();
    for row in section.lines().filter(|l| l.starts_with("| `switchboard_")) {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        let cell = cells[0].trim_matches('`');
        let (name, labels) = match cell.split_once('{') {
            Some((name, labels)) => {
                (name, labels.trim_end_matches('}').split(',').map(|l| l.trim().to_string()).collect())
            }
            None => (cell, Vec::new()),
        };
        let previous = metrics.insert(name.to_string(), (labels, cells[1].to_string()));
        assert!(previous.is_none(), "{name} is documented twice");
    }
    metrics
}

/// Every metric the gateway registers is in the table with its exact name, type and
/// labels, and every metric in the table exists.
#[test]
fn every_metric_is_documented() {
    let doc = operations_md();
    let documented = documented_metrics(&doc);
    let metrics = Metrics::new();
    // Labelled families have no series until a label value is used, and unused families
    // are not exposed at all: give each one a series so that it is checked too. (A new
    // labelled family that is neither documented nor listed here would escape; the
    // reverse check below catches a documented one that is not listed.)
    metrics.auth_failures.with_label_values(&["x"]);
    metrics.command_errors.with_label_values(&["x"]);
    metrics.disconnects.with_label_values(&["x"]);
    metrics.cluster_node_connections.with_label_values(&["x"]);
    metrics.handshakes_dropped.with_label_values(&["x"]);
    metrics.rpc_requests.with_label_values(&["x"]);
    metrics.rpc_errors.with_label_values(&["x", "y"]);
    metrics.rpc_duration.with_label_values(&["x"]);
    metrics.rpc_pending.with_label_values(&["x"]);
    metrics.protocol_connections.with_label_values(&["x"]);
    let mut registered = BTreeMap::new();
    let rendered = metrics.render();
    for line in rendered.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            registered.insert(name.to_string(), (Vec::<String>::new(), kind.to_string()));
        }
    }
    for line in rendered.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, rest)) = line.split_once('{') else { continue };
        let Some((labels, _)) = rest.split_once('}') else { continue };
        let names: Vec<String> = labels
            .split(',')
            .filter_map(|pair| pair.split_once('=').map(|(n, _)| n.to_string()))
            .filter(|name| name != "le") // histogram buckets
            .collect();
        // A histogram's series are `<name>_bucket`, `<name>_sum` and `<name>_count`.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| series.strip_suffix(suffix).filter(|base| registered.contains_key(*base)))
            .unwrap_or(series);
        if let Some((labels, _)) = registered.get_mut(family) {
            *labels = names;
            labels.sort();
        }
    }
    let mut problems = Vec::new();
    for (name, (labels, kind)) in &registered {
        match documented.get(name) {
            None => problems.push(format!("{name} is not in the metrics table")),
            Some((doc_labels, doc_kind)) => {
                let mut doc_labels = doc_labels.clone();
                doc_labels.sort();
                if &doc_labels != labels {
                    problems.push(format!("{name}: labels {labels:?} documented as {doc_labels:?}"));
                }
                if doc_kind != kind {
                    problems.push(format!("{name}: a {kind} documented as a {doc_kind}"));
                }
            }
        }
    }
    for name in documented.keys().filter(|name| !registered.contains_key(*name)) {
        problems.push(format!("{name} is documented but not registered"));
    }
    assert!(problems.is_empty(), "docs/operations.md metrics table: {problems:#?}");
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
        keys::socketio_session("<pid>"),
        keys::rpc_stream("<route>"),
        keys::rpc_replies("<node>"),
        keys::NODES.to_string(),
        keys::NODES_SEEN.to_string(),
        keys::NAMESPACES.to_string(),
        keys::LIFECYCLE_EVENTS.to_string(),
        keys::LIFECYCLE_NODES.to_string(),
        keys::lifecycle_connections("<node>"),
        keys::lifecycle_alive("<node>"),
    ];
    for name in names {
        assert!(doc.contains(&format!("`{name}`")), "docs/redis.md does not list `{name}`");
    }
    for line in keys::LIBRARY.lines().filter(|l| l.contains("register_function")) {
        let function = line.split('\'').nth(1).unwrap();
        assert!(doc.contains(&format!("`{function}`")), "docs/redis.md does not document `{function}`");
    }
}
