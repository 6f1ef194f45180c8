//! Reading publications on a lean connection until every channel reached its expected
//! offset (known once publishing stopped) or nothing arrived for 5 s.
//!
//! The reader is on the measured path — it shares the machine with the gateway — so each
//! message costs it one frame decode and nothing shared: the end-of-run signal is a
//! per-reader one-shot rather than a watch every reader would lock on every poll, and
//! the stall check is one timer re-armed at most every 5 s instead of a timeout per
//! message.

use std::{collections::HashMap, pin::pin, sync::Arc, time::Duration};

use futures_util::StreamExt;
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

/// Reads `socket`, whose channels start at the offsets in `last`, recording deliveries.
///
/// # Errors
/// None in practice; the signature leaves room for decoding failures.
pub async fn read(
    mut socket: lean::Socket,
    mut last: HashMap<String, u64>,
    end: oneshot::Receiver<Expected>,
) -> anyhow::Result<Deliveries> {
    let mut deliveries = Deliveries::default();
    let done = |last: &HashMap<String, u64>, expected: &HashMap<String, u64>| {
        last.iter().all(|(channel, offset)| expected.get(channel).is_none_or(|until| offset >= until))
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
        let frame = match &message {
            Message::Text(text) => serde_json::from_str::<Frame<'_>>(text).ok(),
            Message::Binary(bytes) => rmp_serde::from_slice::<Frame<'_>>(bytes).ok(),
            _ => None,
        };
        let Some(frame) = frame else { continue };
        if let (Some("publication"), Some(channel), Some(offset), Some(stamp)) =
            (frame.push, frame.channel, frame.offset, frame.data)
        {
            if let Some(position) = last.get_mut(channel) {
                deliveries.record(position, offset, stamp.t, lean::now_micros());
            }
        }
    }
    if let Some(expected) = &expected {
        for (channel, offset) in &last {
            deliveries.missing += expected.get(channel).map_or(0, |until| until.saturating_sub(*offset));
        }
    }
    Ok(deliveries)
}
