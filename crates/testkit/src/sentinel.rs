//! Redis Sentinel processes (`redis-server <config> --sentinel`) watching a test primary,
//! for failover tests.
//!
//! Sentinels rewrite their configuration file, so each gets one of its own in a
//! temporary directory. Timings are short (a primary is down after 1 s without an answer)
//! so that a failover completes within a few seconds on a loaded machine.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{free_port, kill_and_reap, redis_cli, RedisServer, STARTUP};

/// The service name the sentinels monitor.
pub const SERVICE: &str = "sbprimary";

/// One sentinel process.
pub struct Sentinel {
    port: u16,
    _dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Sentinel {
    /// Starts a sentinel monitoring `primary` as [`SERVICE`] with a quorum of `quorum`,
    /// and waits until it answers `PING`.
    ///
    /// # Panics
    /// When the sentinel cannot be started in time.
    #[allow(clippy::expect_used)]
    pub fn start(primary: &RedisServer, quorum: u32) -> Sentinel {
        let dir = tempfile::tempdir().expect("temporary directory");
        let port = free_port();
        let config = format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\n\
             sentinel monitor {SERVICE} 127.0.0.1 {primary} {quorum}\n\
             sentinel down-after-milliseconds {SERVICE} 1000\n\
             sentinel failover-timeout {SERVICE} 10000\n\
             sentinel parallel-syncs {SERVICE} 2\n",
            dir = dir.path().display(),
            primary = primary.port(),
        );
        let path = dir.path().join("sentinel.conf");
        std::fs::write(&path, config).expect("write the sentinel configuration");
        let child = Command::new("redis-server")
            .arg(&path)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        let sentinel = Sentinel { port, _dir: dir, child: Some(child) };
        let deadline = Instant::now() + STARTUP;
        while !sentinel.answers() {
            assert!(Instant::now() < deadline, "sentinel on port {port} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        sentinel
    }

    fn answers(&self) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && std::panic::catch_unwind(|| redis_cli(self.port, &["PING"])).is_ok_and(|pong| pong == "PONG")
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs `redis-cli` against this sentinel.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
    }

    /// The port of the primary this sentinel currently names.
    pub fn primary_port(&self) -> Option<u16> {
        let reply = self.cli(&["SENTINEL", "get-master-addr-by-name", SERVICE]);
        reply.lines().nth(1).and_then(|port| port.trim().parse().ok())
    }

    /// Whether this sentinel knows `replicas` replicas and `peers` other sentinels, and
    /// a quorum could authorize a failover: what a failover test waits for first.
    pub fn ready_for_failover(&self, replicas: usize, peers: usize) -> bool {
        let count = |kind: &str| {
            self.cli(&["SENTINEL", kind, SERVICE]).lines().filter(|line| line.trim() == "name").count()
        };
        count("replicas") >= replicas
            && count("sentinels") >= peers
            && self.cli(&["SENTINEL", "ckquorum", SERVICE]).starts_with("OK")
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }
}
