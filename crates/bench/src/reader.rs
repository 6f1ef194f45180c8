//! Reading publications on a lean connection until every channel reached its expected
//! offset (known once publishing stopped) or nothing arrived for 5 s.
//!
//! The reader is on the measured path — it shares the machine with the gateway — so each
//! message costs it one frame decode and nothing shared: the end-of-run signal is a
//! per-reader one-shot rather than a watch every reader would lock on every poll, and
//! the stall check is one timer re-armed at most every 5 s instead of a timeout per
//! message.

use std::{collections::HashMap, pin::pin, sync::Arc, time::Duration};

use futures_util::{SinkExt, StreamExt};
use tokio::{sync::oneshot, time::Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    lean::{self, Frame},
    stats::Deliveries,
};

/// The last offset to expect per channel, sent to each reader when publishing is over.
pub type Expected = Arc<HashMap<String, u64>>;

/// How long a reader waits with nothing arriving before it gives up (once the expected
/// offsets are known) or checks again (before).
const STALL: Duration = Duration::from_secs(5);

/// Creates the end-of-run signal of one reader.
pub fn end_signal() -> (oneshot::Sender<Expected>, oneshot::Receiver<Expected>) {
    oneshot::channel()
}

/// What a reader makes of one message.
pub enum Step {
    /// Nothing to record.
    Skip,
    /// A delivery: position `position` of sequence `key` (an index into the reader's
    /// keys), sent at `sent` (µs since the Unix epoch).
    Record {
        /// The sequence (channel or publisher).
        key: usize,
        /// Its offset or sequence number.
        position: u64,
        /// When it was sent.
        sent: u64,
    },
    /// Answer with this message (a Socket.IO ping).
    Answer(Message),
}

/// Reads `socket`, whose channels start at the offsets in `last`, recording deliveries.
///
/// # Errors
/// None in practice; the signature leaves room for decoding failures.
pub async fn read(
    socket: lean::Socket,
    last: HashMap<String, u64>,
    end: oneshot::Receiver<Expected>,
) -> anyhow::Result<Deliveries> {
    let (keys, start): (Vec<String>, Vec<u64>) = last.into_iter().unzip();
    let channels = keys.clone();
    read_with(socket, keys, start, end, move |message| {
        let frame = match message {
            Message::Text(text) => serde_json::from_str::<Frame<'_>>(text).ok(),
            Message::Binary(bytes) => rmp_serde::from_slice::<Frame<'_>>(bytes).ok(),
            _ => None,
        };
        match frame {
            Some(Frame {
                push: Some("publication"),
                channel: Some(channel),
                offset: Some(offset),
                data: Some(stamp),
                ..
            }) => match channels.iter().position(|known| known == channel) {
                Some(key) => Step::Record { key, position: offset, sent: stamp.t },
                None => Step::Skip,
            },
            _ => Step::Skip,
        }
    })
    .await
}

/// The reading loop of every scenario: sequence `keys[i]` starts at `start[i]`; `decode`
/// says what each message is. Runs until every sequence reached the position `end`
/// tells (once publishing stopped), or nothing arrived for 5 s.
///
/// # Errors
/// When an answer cannot be sent.
pub async fn read_with(
    mut socket: lean::Socket,
    keys: Vec<String>,
    mut last: Vec<u64>,
    end: oneshot::Receiver<Expected>,
    mut decode: impl FnMut(&Message) -> Step,
) -> anyhow::Result<Deliveries> {
    let mut deliveries = Deliveries::default();
    let done = |last: &[u64], expected: &HashMap<String, u64>| {
        keys.iter().zip(last).all(|(key, at)| expected.get(key).is_none_or(|until| at >= until))
    };
    let mut end = pin!(end);
    let mut expected: Option<Expected> = None;
    let mut stall = pin!(tokio::time::sleep(STALL));
    let mut last_received = Instant::now();
    loop {
        if expected.as_ref().is_some_and(|expected| done(&last, expected)) {
            break;
        }
        let message = tokio::select! {
            message = socket.next() => message,
            told = &mut end, if expected.is_none() => {
                // A dropped sender means the run was abandoned: stop at once.
                expected = Some(told.unwrap_or_default());
                continue;
            }
            () = &mut stall => {
                if last_received.elapsed() >= STALL && expected.is_some() {
                    break;
                }
                let quiet = last_received.elapsed() >= STALL;
                stall.as_mut().reset(if quiet { Instant::now() } else { last_received } + STALL);
                continue;
            }
        };
        let Some(Ok(message)) = message else { break };
        last_received = Instant::now();
        match decode(&message) {
            Step::Skip => {}
            Step::Record { key, position, sent } => {
                if let Some(at) = last.get_mut(key) {
                    deliveries.record(at, position, sent, lean::now_micros());
                }
            }
            Step::Answer(answer) => socket.send(answer).await?,
        }
    }
    if let Some(expected) = &expected {
        for (key, at) in keys.iter().zip(&last) {
            deliveries.missing += expected.get(key).map_or(0, |until| until.saturating_sub(*at));
        }
    }
    Ok(deliveries)
}
