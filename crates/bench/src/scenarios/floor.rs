//! `floor`: what the kernel alone charges on this machine for the work that every
//! delivery and every new connection needs — no gateway, no WebSocket library, no async
//! runtime, no JSON, no JWT.
//!
//! Two measurements over loopback TCP, both ends in this one thread, so the figures are
//! CPU time (checked against `/proc/self/stat`):
//! * **delivery**: write one frame of a publication's size to each of N sockets, then
//!   read it at the other end of each. That is the least any server pays to fan one
//!   publication out to N connections with one `write` each, plus the least any client
//!   pays to read it. Real programs add readiness polling and wake-ups on top.
//! * **connection**: TCP connect and accept, then the two exchanges a Switchboard
//!   connection makes (upgrade request and response, `connect` command and reply) with
//!   frames of the same sizes, then close, client first, as the `connect` scenario does.
//!
//! When a target needs fewer CPU-microseconds per delivery or per connection than these
//! floors leave on the machine's cores, no server can meet it here; the `fanout` and
//! `connect` figures in docs/BENCHMARKS.md are read against these.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use clap::Args;
use serde_json::{json, Value};

use crate::stats::cpu_seconds;

/// Settings of the floor scenario.
#[derive(Debug, Clone, Args)]
pub struct Floor {
    /// Socket pairs for the delivery measurement (two descriptors each).
    #[arg(long, default_value_t = 5000)]
    pub sockets: usize,
    /// Bytes per frame: a publication with a 100-byte payload is about 190 bytes on the wire.
    #[arg(long, default_value_t = 190)]
    pub frame_bytes: usize,
    /// Fan-out rounds: one frame to every socket per round.
    #[arg(long, default_value_t = 20)]
    pub rounds: usize,
    /// Connections for the connection measurement.
    #[arg(long, default_value_t = 5000)]
    pub connections: usize,
    /// Subscribers to extrapolate one publication's fan-out time to (the fanout target's 10 000).
    #[arg(long, default_value_t = 10_000)]
    pub fanout_to: usize,
    /// The system call each delivery is written with: the gateway's flushers use
    /// `sendmsg`; `write` is the figure recorded before they did.
    #[arg(long, value_enum, default_value_t = Syscall::Write)]
    pub syscall: Syscall,
}

/// A way to put a frame on a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Syscall {
    /// `write(2)`.
    Write,
    /// `writev(2)` with one `iovec` (the file layer's vectored path).
    Writev,
    /// `sendmsg(2)` with one `iovec` (the socket layer directly).
    Sendmsg,
}

/// Writes all of `frame` to `socket` with `syscall`.
fn send(socket: &mut TcpStream, frame: &[u8], syscall: Syscall) -> std::io::Result<()> {
    let slices = [std::io::IoSlice::new(frame)];
    let written = match syscall {
        Syscall::Write => return socket.write_all(frame),
        Syscall::Writev => socket.write_vectored(&slices)?,
        Syscall::Sendmsg => socket2::SockRef::from(&*socket).send_vectored(&slices)?,
    };
    socket.write_all(&frame[written..])
}

/// Frame sizes of a Switchboard connection: upgrade request, upgrade response, `connect`
/// command (with a token), `connect` reply.
const CONNECTION_FRAMES: [usize; 4] = [240, 130, 200, 150];

/// Runs the scenario (blocking work on a blocking thread).
///
/// # Errors
/// When sockets cannot be opened (for example the open-file limit).
pub async fn run(settings: Floor) -> anyhow::Result<Value> {
    tokio::task::spawn_blocking(move || measure(&settings)).await?
}

fn measure(settings: &Floor) -> anyhow::Result<Value> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let delivery = deliveries(settings)?;
    let connection = connections(settings.connections)?;
    let per_delivery = delivery.cpu_us;
    let per_connection = connection.cpu_us;
    Ok(json!({
        "cores": cores,
        "delivery": {
            "sockets": settings.sockets,
            "frame_bytes": settings.frame_bytes,
            "syscall": format!("{:?}", settings.syscall).to_lowercase(),
            "rounds": settings.rounds,
            "write_us": round2(delivery.write_us),
            "read_us": round2(delivery.read_us),
            "cpu_us_per_delivery": round2(per_delivery),
            "max_deliveries_per_second_all_cores": (cores as f64 * 1e6 / per_delivery).round(),
            "fanout_ms_per_publication_all_cores": {
                "subscribers": settings.fanout_to,
                "ms": round2(settings.fanout_to as f64 * per_delivery / cores as f64 / 1000.0),
            },
        },
        "connection": {
            "connections": settings.connections,
            "cpu_us_per_connection": round2(per_connection),
            "max_connections_per_second_all_cores": (cores as f64 * 1e6 / per_connection).round(),
        },
    }))
}

struct Cost {
    write_us: f64,
    read_us: f64,
    cpu_us: f64,
}

fn deliveries(settings: &Floor) -> anyhow::Result<Cost> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let mut pairs = Vec::with_capacity(settings.sockets);
    for _ in 0..settings.sockets {
        pairs.push(pair(&listener, address)?);
    }
    let frame = vec![b'x'; settings.frame_bytes.max(1)];
    let mut buffer = vec![0; frame.len()];
    let (mut writing, mut reading) = (Duration::ZERO, Duration::ZERO);
    let cpu_before = own_cpu();
    for _ in 0..settings.rounds {
        let started = Instant::now();
        for (server, _) in &mut pairs {
            send(server, &frame, settings.syscall)?;
        }
        let written = Instant::now();
        for (_, client) in &mut pairs {
            client.read_exact(&mut buffer)?;
        }
        writing += written - started;
        reading += written.elapsed();
    }
    let count = (settings.sockets * settings.rounds).max(1) as f64;
    let wall_us = (writing + reading).as_secs_f64() * 1e6 / count;
    Ok(Cost {
        write_us: writing.as_secs_f64() * 1e6 / count,
        read_us: reading.as_secs_f64() * 1e6 / count,
        cpu_us: cpu_per(cpu_before, count).unwrap_or(wall_us),
    })
}

fn connections(count: usize) -> anyhow::Result<Cost> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let frames: Vec<Vec<u8>> = CONNECTION_FRAMES.iter().map(|&size| vec![b'x'; size]).collect();
    let mut buffer = vec![0; 256];
    let cpu_before = own_cpu();
    let started = Instant::now();
    for _ in 0..count {
        let (mut server, mut client) = pair(&listener, address)?;
        for (n, frame) in frames.iter().enumerate() {
            let (from, to) = if n % 2 == 0 { (&mut client, &mut server) } else { (&mut server, &mut client) };
            from.write_all(frame)?;
            to.read_exact(&mut buffer[..frame.len()])?;
        }
        drop(client);
        // The server sees the client's close, then closes its end.
        let _ = server.read(&mut buffer)?;
    }
    let wall_us = started.elapsed().as_secs_f64() * 1e6 / count.max(1) as f64;
    Ok(Cost {
        write_us: 0.0,
        read_us: 0.0,
        cpu_us: cpu_per(cpu_before, count.max(1) as f64).unwrap_or(wall_us),
    })
}

/// A connected pair (server end, client end), both with Nagle off as the gateway's are.
fn pair(listener: &TcpListener, address: SocketAddr) -> std::io::Result<(TcpStream, TcpStream)> {
    let client = TcpStream::connect(address)?;
    let (server, _) = listener.accept()?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    Ok((server, client))
}

fn own_cpu() -> Option<f64> {
    cpu_seconds(std::process::id())
}

/// CPU microseconds per item since `before`, when `/proc` is readable and the run was
/// long enough for its 10 ms ticks to mean something (otherwise wall time is used).
fn cpu_per(before: Option<f64>, items: f64) -> Option<f64> {
    let spent = own_cpu()? - before?;
    (spent >= 0.2).then(|| spent * 1e6 / items)
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}
