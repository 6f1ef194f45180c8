//! The `switchboard-bench` binary itself: argument parsing, the human table and the final
//! JSON line that docs/BENCHMARKS.md figures are read from, and a clean error (no panic)
//! when a node is unreachable. The scenarios' measurements against real gateway processes
//! are smoke-tested in crates/gateway/tests/bench_smoke.rs.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::{Command, Output};

use serde_json::Value;

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchboard-bench")).args(args).output().expect("bench runs")
}

#[test]
fn floor_prints_a_flattened_table_and_a_final_json_line() {
    let output =
        bench(&["floor", "--sockets", "20", "--rounds", "2", "--connections", "20", "--frame-bytes", "190"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"scenario: floor"), "{stdout}");
    assert!(
        lines.iter().any(|line| line.trim_start().starts_with("delivery.cpu_us_per_delivery ")),
        "nested figures get rows of their own: {stdout}"
    );
    let last: Value = serde_json::from_str(lines.last().unwrap()).expect("the last line is JSON");
    assert_eq!(last["scenario"], "floor");
    assert!(last["delivery"]["cpu_us_per_delivery"].as_f64().unwrap() > 0.0, "{last}");
    assert_eq!(last["delivery"]["sockets"], 20);
}

#[test]
fn an_unreachable_node_is_an_error_not_a_panic() {
    // Bind then release a port, so nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("ws://127.0.0.1:{port}/ws");
    let output = bench(&["connect", "--url", &url, "--connections", "3", "--concurrency", "1"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && !stderr.contains("panicked"), "{stderr}");
    // Every attempt fails, is counted, and the first reason is reported.
    let last: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!((last["succeeded"].as_u64(), last["failed"].as_u64()), (Some(0), Some(3)), "{last}");
    assert!(last["first_error"].as_str().unwrap().contains("refused"), "{last}");
}

#[test]
fn bad_arguments_are_refused_naming_the_flag() {
    let output = bench(&["fanout", "--subscribers", "many"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid value 'many' for '--subscribers"), "{stderr}");
}
