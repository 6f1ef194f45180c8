//! Switchboard's load generator. Each scenario is a function returning a JSON result,
//! used by the `switchboard-bench` binary and by smoke tests. Every run is bounded in
//! count and time, and targets the node URLs it is given (loopback in our setups).

pub mod lean;
pub mod reader;
pub mod scenarios;
pub mod socketio;
pub mod stats;
pub mod target;

/// Raises this process's open-file limit to its hard limit (tens of thousands of
/// sockets need it).
pub fn raise_file_limit() {
    if let Err(error) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("cannot raise the open-file limit: {error}");
    }
}
