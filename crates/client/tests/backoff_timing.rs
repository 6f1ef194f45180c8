//! The reconnect loop's timing, in paused time: the real client against a port nobody
//! listens on, every delay read off the virtual clock between the `Disconnected` state and
//! the next `Connecting`. (The unit tests in src/backoff.rs check the delay function; this
//! checks that the connection task actually sleeps it, attempt after attempt.)

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use switchboard_client::{static_token, Backoff, Client, ClientConfig, ConnectionState};
use tokio::time::Instant;

/// A loopback address that refuses connections: bound for a moment, then released.
fn refusing_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("ws://{}/ws", listener.local_addr().unwrap())
}

/// Delays of at least a minute: a delay rounds to whole milliseconds and one of zero ends
/// without yielding, so the state watcher could miss its `Disconnected`; with a 60 s base
/// the chance of a zero draw is below 1 in 60 000 per attempt.
const BACKOFF: Backoff = Backoff { base: Duration::from_secs(60), max: Duration::from_secs(3600) };
const ATTEMPTS: usize = 12;

#[tokio::test(start_paused = true)]
async fn refused_reconnects_wait_jittered_exponential_delays() {
    let mut config = ClientConfig::new(refusing_url(), static_token("t"));
    config.backoff = BACKOFF;
    let (client, _personal) = Client::connect(config);
    let mut state = client.state();

    // (attempt index, virtual delay) for each Disconnected -> Connecting pair.
    let mut delays: Vec<(usize, Duration)> = Vec::new();
    let mut lost: Option<(usize, Instant)> = None;
    let mut disconnects = 0;
    while delays.len() < ATTEMPTS {
        state.changed().await.unwrap();
        let now = Instant::now();
        match &*state.borrow_and_update() {
            ConnectionState::Disconnected { reason, .. } => {
                assert!(reason.contains("cannot connect"), "{reason}");
                lost = Some((disconnects, now));
                disconnects += 1;
            }
            ConnectionState::Connecting => {
                if let Some((attempt, since)) = lost.take() {
                    delays.push((attempt, now - since));
                }
            }
            other => panic!("unexpected state {other:?}"),
        }
    }
    client.close().await;

    for &(attempt, delay) in &delays {
        let ceiling = BACKOFF.ceiling(attempt as u32);
        assert!(delay <= ceiling, "attempt {attempt}: waited {delay:?}, ceiling {ceiling:?}");
    }
    // Full jitter: delays spread over the window instead of sitting at its top (all twelve
    // in the upper half has probability 2^-12).
    assert!(
        delays.iter().any(|&(attempt, delay)| delay < BACKOFF.ceiling(attempt as u32) / 2),
        "no delay in the lower half of its window: {delays:?}"
    );
    // Growing: the last four delays, drawn under the 1 h cap, exceed the third attempt's
    // whole window (240 s) unless all four fall in its first 6.7 % (probability ~1e-6); a
    // backoff that stays at its base fails this.
    let late: Duration = delays[ATTEMPTS - 4..].iter().map(|&(_, delay)| delay).sum();
    assert!(late > BACKOFF.ceiling(2), "late delays {late:?} do not grow: {delays:?}");
}
