//! The gateway nodes a scenario talks to.

use std::net::IpAddr;

use clap::Args;
use switchboard_protocol::Encoding;

use crate::lean::{sources, Tokens};

/// Where the gateway nodes are and how to authenticate.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// WebSocket URL of a node; repeat for several nodes (clients are spread round-robin).
    #[arg(long = "url", required = true)]
    pub urls: Vec<String>,
    /// The nodes' `auth.hmac_secret` (crates/bench/bench.toml uses `bench-secret`).
    #[arg(long, default_value = "bench-secret")]
    pub secret: String,
    /// Connect from 127.0.0.1 ..= 127.0.0.N, for more than ~28k connections per node.
    #[arg(long, default_value_t = 1)]
    pub sources: u8,
    /// Gateway process ids, for CPU seconds and RSS (read from /proc).
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
    /// Wire format of the measured connections (subscribers, idle and connect clients):
    /// json or msgpack. Publishers always speak JSON.
    #[arg(long, default_value = "json", value_parser = parse_encoding)]
    pub encoding: Encoding,
}

fn parse_encoding(value: &str) -> Result<Encoding, String> {
    match value {
        "json" => Ok(Encoding::Json),
        "msgpack" => Ok(Encoding::MsgPack),
        other => Err(format!("unknown encoding {other:?}: json or msgpack")),
    }
}

impl Target {
    /// The URL for client number `n`.
    pub fn url(&self, n: usize) -> &str {
        &self.urls[n % self.urls.len()]
    }

    /// The source address for client number `n`.
    pub fn source(&self, n: usize) -> Option<IpAddr> {
        let all = sources(self.sources);
        (self.sources > 1).then(|| all[n % all.len()])
    }

    /// A token minter for the target's secret.
    pub fn tokens(&self) -> Tokens {
        Tokens::new(&self.secret)
    }
}
