//! Reading publications on a lean connection until every channel reached its expected
//! offset (known once publishing stopped) or nothing arrived for 5 s.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    lean::{self, Frame},
    stats::Deliveries,
};

/// The last offset to expect per channel, sent when publishing is over.
pub type Expected = watch::Receiver<Option<Arc<HashMap<String, u64>>>>;

/// Reads `socket`, whose channels start at the offsets in `last`, recording deliveries.
///
/// # Errors
/// None in practice; the signature leaves room for decoding failures.
pub async fn read(
    mut socket: lean::Socket,
    mut last: HashMap<String, u64>,
    mut expected: Expected,
) -> anyhow::Result<Deliveries> {
    let mut deliveries = Deliveries::default();
    let done = |last: &HashMap<String, u64>, expected: &HashMap<String, u64>| {
        last.iter().all(|(channel, offset)| expected.get(channel).is_none_or(|until| offset >= until))
    };
    loop {
        if let Some(expected) = expected.borrow().clone() {
            if done(&last, &expected) {
                break;
            }
        }
        let message = tokio::select! {
            message = tokio::time::timeout(Duration::from_secs(5), socket.next()) => message,
            _ = expected.changed() => continue,
        };
        let message = match message {
            Ok(Some(Ok(message))) => message,
            Ok(_) => break,
            Err(_) if expected.borrow().is_some() => break,
            Err(_) => continue,
        };
        let Message::Text(text) = message else { continue };
        let Ok(frame) = serde_json::from_str::<Frame<'_>>(&text) else { continue };
        if let (Some("publication"), Some(channel), Some(offset), Some(stamp)) =
            (frame.push, frame.channel, frame.offset, frame.data)
        {
            if let Some(position) = last.get_mut(channel) {
                deliveries.record(position, offset, stamp.t, lean::now_micros());
            }
        }
    }
    if let Some(expected) = expected.borrow().clone() {
        for (channel, offset) in &last {
            deliveries.missing += expected.get(channel).map_or(0, |until| until.saturating_sub(*offset));
        }
    }
    Ok(deliveries)
}
