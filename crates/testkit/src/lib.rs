//! Test support shared by the workspace's integration tests: real `redis-server` and
//! gateway processes on free loopback ports, started and stopped the way an operator
//! would, and waited for by readiness (never by sleeping a fixed time).
//!
//! Processes are killed when their handle drops, so a failing test leaves nothing behind.

pub mod cluster;
pub mod sentinel;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// How long a process may take to become ready.
pub const STARTUP: Duration = Duration::from_secs(20);

/// How long a process may take to exit after SIGTERM, and a `redis-cli` call to finish,
/// before the test fails instead of hanging.
pub const STOP: Duration = Duration::from_secs(30);

/// Waits for `child` to exit, at most `timeout`; `None` if it is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) | Err(_) => return None,
        }
    }
}

/// SIGKILL and reap: never blocks for long, as SIGKILL ends even a stopped process.
fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = wait_timeout(child, STOP);
}

/// A free TCP port on 127.0.0.1 (never 6379: the OS hands out ephemeral ports).
///
/// # Panics
/// When no port can be bound.
#[allow(clippy::expect_used)]
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// A free port whose Redis Cluster bus port (+10 000) is free and valid too.
pub fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port <= 55_535 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Persistence mode of a test Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Nothing survives a restart.
    None,
    /// Append-only file, fsync on every write: acknowledged writes survive a restart.
    AppendOnly,
}

/// A `redis-server` child process.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    persistence: Persistence,
    child: Option<Child>,
    /// With TLS: the TLS port and the server's arguments for it.
    tls: Option<(u16, Vec<String>)>,
    /// Further arguments (a replica's `--replicaof`).
    extra: Vec<String>,
}

/// PEM files of a server certificate for `127.0.0.1`/`localhost` and the CA that signed it.
pub struct TlsFiles {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The server certificate.
    pub cert: PathBuf,
    /// The server key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// Makes a CA and a server certificate for `127.0.0.1` and `localhost` in `dir`, with
    /// the `openssl` command.
    ///
    /// # Panics
    /// When `openssl` is missing or fails.
    #[allow(clippy::expect_used)]
    pub fn generate(dir: &Path) -> TlsFiles {
        let run = |args: &[&str]| {
            let status = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl is installed");
            assert!(status.success(), "openssl {args:?} failed");
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=switchboard-test-ca",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
            .expect("write ext.cnf");
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        TlsFiles { ca: dir.join("ca.crt"), cert: dir.join("server.crt"), key: dir.join("server.key") }
    }
}

impl RedisServer {
    /// Starts `redis-server` on a free port and waits until it answers `PING`.
    ///
    /// # Panics
    /// When `redis-server` is not installed or does not start in time.
    #[allow(clippy::expect_used)]
    pub fn start(persistence: Persistence) -> RedisServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut server =
            RedisServer { port: free_port(), dir, persistence, child: None, tls: None, extra: Vec::new() };
        server.spawn();
        server
    }

    /// Starts `redis-server` on `port` with further arguments (no persistence), e.g. a
    /// cluster node's.
    ///
    /// # Panics
    /// As [`RedisServer::start`].
    #[allow(clippy::expect_used)]
    pub fn start_with(port: u16, extra: Vec<String>) -> RedisServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut server =
            RedisServer { port, dir, persistence: Persistence::None, child: None, tls: None, extra };
        server.spawn();
        server
    }

    /// Starts a replica of `primary` (no persistence) and waits until it answers `PING`
    /// (not until it has synchronized: see [`RedisServer::replicas`]).
    ///
    /// # Panics
    /// As [`RedisServer::start`].
    #[allow(clippy::expect_used)]
    pub fn start_replica_of(primary: &RedisServer) -> RedisServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        let extra = vec!["--replicaof".into(), "127.0.0.1".into(), primary.port.to_string()];
        let mut server = RedisServer {
            port: free_port(),
            dir,
            persistence: Persistence::None,
            child: None,
            tls: None,
            extra,
        };
        server.spawn();
        server
    }

    /// The number of replicas that finished their first synchronization with this server
    /// (`state=online` in `INFO replication`): those that acknowledge `WAIT`.
    pub fn replicas(&self) -> usize {
        let info = self.cli(&["INFO", "replication"]);
        info.lines().filter(|line| line.starts_with("slave") && line.contains("state=online")).count()
    }

    /// Starts `redis-server` with a plain port (for `redis-cli` and readiness) and a TLS
    /// port serving `files` (client certificates not required).
    ///
    /// # Panics
    /// As [`RedisServer::start`].
    #[allow(clippy::expect_used)]
    pub fn start_tls(files: &TlsFiles) -> RedisServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        let tls_port = free_port();
        let path = |p: &Path| p.display().to_string();
        let args = vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            path(&files.cert),
            "--tls-key-file".into(),
            path(&files.key),
            "--tls-ca-cert-file".into(),
            path(&files.ca),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        let mut server = RedisServer {
            port: free_port(),
            dir,
            persistence: Persistence::None,
            child: None,
            tls: Some((tls_port, args)),
            extra: Vec::new(),
        };
        server.spawn();
        server
    }

    /// `rediss://127.0.0.1:<tls port>`, for a server started with [`RedisServer::start_tls`].
    ///
    /// # Panics
    /// When the server has no TLS port.
    pub fn tls_url(&self) -> String {
        let (port, _) = self.tls.as_ref().expect("started with start_tls");
        format!("rediss://127.0.0.1:{port}")
    }

    #[allow(clippy::expect_used)]
    fn spawn(&mut self) {
        let appendonly = if self.persistence == Persistence::AppendOnly { "yes" } else { "no" };
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", appendonly, "--appendfsync", "always"])
            // Replicas synchronize at once instead of after Redis's default 5 s wait for
            // more replicas.
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(self.tls.iter().flat_map(|(_, args)| args.iter()))
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + STARTUP;
        while !self.answers_ping() {
            assert!(Instant::now() < deadline, "redis-server on port {} did not start", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        if stream.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli` against this server and returns its stdout (see [`redis_cli`]).
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing is answered, as
    /// with a Redis stuck on a slow disk or a long fork. [`RedisServer::resume`] undoes it;
    /// dropping the server kills it either way.
    pub fn pause(&self) {
        if let Some(child) = &self.child {
            signal(child, "STOP");
        }
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        if let Some(child) = &self.child {
            signal(child, "CONT");
        }
    }

    /// Stops the server gracefully (SIGTERM): with append-only persistence, everything
    /// acknowledged is on disk.
    ///
    /// # Panics
    /// When it does not exit within [`STOP`] (it is then killed).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "CONT");
            signal(&child, "TERM");
            if wait_timeout(&mut child, STOP).is_none() {
                kill_and_reap(&mut child);
                panic!("redis-server on port {} did not exit within {STOP:?} of SIGTERM", self.port);
            }
        }
    }

    /// Kills the server at once (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }

    /// Starts the server again on the same port and directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Starts the server again on the same port with an empty data directory.
    ///
    /// # Panics
    /// When the directory cannot be replaced.
    #[allow(clippy::expect_used)]
    pub fn restart_wiped(&mut self) {
        self.kill();
        self.dir = tempfile::tempdir().expect("temporary directory");
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(child: &Child, name: &str) {
    let _ = Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status();
}

/// Runs `redis-cli -p <port>` and returns its stdout.
///
/// # Panics
/// When `redis-cli` is missing, fails, or does not finish within [`STOP`] (a stalled
/// server fails the test instead of hanging it).
#[allow(clippy::expect_used)]
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let child = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redis-cli is installed");
    let pid = child.id();
    let (tx, rx) = mpsc::channel::<std::io::Result<Output>>();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(output) = rx.recv_timeout(STOP) else {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        panic!("redis-cli {args:?} did not finish within {STOP:?}");
    };
    let output = output.expect("redis-cli ran");
    assert!(output.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A gateway node process of the built `switchboard` binary.
pub struct Gateway {
    child: Option<Child>,
    addr: SocketAddr,
    logs: mpsc::Receiver<String>,
}

impl Gateway {
    /// Starts `binary` on a free loopback port with `args` and `env`, and waits until
    /// `/readyz` answers 200.
    pub fn start(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> Gateway {
        Gateway::start_at(binary, "127.0.0.1:0", args, env)
    }

    /// Like [`Gateway::start`], listening on `listen` (to restart a node at its address).
    ///
    /// # Panics
    /// When the process does not start or become ready in time.
    pub fn start_at(binary: &Path, listen: &str, args: &[&str], env: &[(&str, &str)]) -> Gateway {
        let gateway = Gateway::start_listening(binary, listen, args, env);
        gateway.wait_ready();
        gateway
    }

    /// Starts `binary` like [`Gateway::start`] but returns once it listens, ready or not
    /// (e.g. to check that it stays not ready).
    ///
    /// # Panics
    /// When the process does not start listening in time.
    #[allow(clippy::expect_used)]
    pub fn start_listening(binary: &Path, listen: &str, args: &[&str], env: &[(&str, &str)]) -> Gateway {
        let mut child = Command::new(binary)
            .args(["--listen", listen, "--log-format", "json"])
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", std::env::var("SWITCHBOARD_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("gateway binary starts");
        let stderr = child.stderr.take().expect("stderr piped");
        let (address_tx, address_rx) = mpsc::channel();
        let (log_tx, logs) = mpsc::channel();
        std::thread::spawn(move || {
            let mut address_tx = Some(address_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(tx) = &address_tx {
                    let address = serde_json::from_str::<serde_json::Value>(&line)
                        .ok()
                        .and_then(|record| record["fields"]["address"].as_str().map(str::to_string));
                    if let Some(address) = address.and_then(|a| a.parse::<SocketAddr>().ok()) {
                        let _ = tx.send(address);
                        address_tx = None;
                    }
                }
                if std::env::var_os("SWITCHBOARD_TEST_ECHO").is_some() {
                    eprintln!("{line}");
                }
                let _ = log_tx.send(line);
            }
        });
        let addr = address_rx.recv_timeout(STARTUP).expect("gateway reports its listen address");
        Gateway { child: Some(child), addr, logs }
    }

    /// Waits until `/readyz` answers 200.
    ///
    /// # Panics
    /// When it does not within [`STARTUP`].
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + STARTUP;
        while self.get("/readyz").0 != 200 {
            assert!(Instant::now() < deadline, "gateway {} not ready in time", self.addr);
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The listen address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://<addr>/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A blocking HTTP GET; returns status and body (status 0 when unreachable).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path)
    }

    /// The value of an unlabelled metric from `/metrics`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics");
        body.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// Log lines received so far.
    pub fn drain_logs(&self) -> Vec<String> {
        self.logs.try_iter().collect()
    }

    /// SIGKILL: the node dies without any cleanup.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }

    /// SIGTERM and wait for a graceful exit; returns whether it exited successfully
    /// within [`STOP`] (a node still running then is killed, and `false` returned).
    pub fn terminate(&mut self) -> bool {
        match self.child.take() {
            Some(mut child) => {
                signal(&child, "TERM");
                match wait_timeout(&mut child, STOP) {
                    Some(status) => status.success(),
                    None => {
                        kill_and_reap(&mut child);
                        false
                    }
                }
            }
            None => false,
        }
    }
}

/// An `haproxy` process running the repository's `deploy/haproxy.cfg`.
pub struct Haproxy {
    child: Option<Child>,
    port: u16,
}

impl Haproxy {
    /// Starts haproxy with `config`, listening on a free port and balancing over the three
    /// `gateways`, and waits until it forwards `/readyz` to a ready node.
    ///
    /// # Panics
    /// When haproxy is missing or does not become ready in time.
    #[allow(clippy::expect_used)]
    pub fn start(config: &Path, gateways: [SocketAddr; 3]) -> Haproxy {
        let port = free_port();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(config)
            .env("SB_LB_BIND", format!("127.0.0.1:{port}"))
            .env("SB_GATEWAY1", gateways[0].to_string())
            .env("SB_GATEWAY2", gateways[1].to_string())
            .env("SB_GATEWAY3", gateways[2].to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy is installed (scripts/test installs it)");
        let proxy = Haproxy { child: Some(child), port };
        let deadline = Instant::now() + STARTUP;
        while http_get(proxy.addr(), "/readyz").0 != 200 {
            assert!(Instant::now() < deadline, "haproxy did not become ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        proxy
    }

    /// The public address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `ws://<addr>/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr())
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A minimal blocking HTTP/1.1 GET; status 0 when the server is unreachable.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, &[], None)
}

/// A minimal blocking HTTP/1.1 request with extra headers and an optional JSON body;
/// returns status (0 when the server is unreachable) and body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    if stream.write_all(&bytes).is_err() {
        return (0, String::new());
    }
    let mut response = String::new();
    if stream.read_to_string(&mut response).is_err() {
        return (0, String::new());
    }
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The workspace's `target` directory binary path for `name`, for crates whose tests need a
/// binary of another crate (built by `cargo build` first).
pub fn workspace_binary(name: &str) -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| manifest.join("../../target"), PathBuf::from);
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    target.join(profile).join(name)
}
