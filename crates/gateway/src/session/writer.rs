//! The writing half of a connection.
//!
//! The writer owns the socket's sink. It takes everything queued in the outbox at once,
//! `feed`s it and flushes once per batch, so a burst of publications costs one syscall
//! rather than one per frame. A batch keeps its outbound budget until the flush is done,
//! and a batch that cannot be written within `limits.outbound_wait_ms` (the client stopped
//! reading) closes the connection as a slow consumer. On close it writes a `disconnect` push and a close frame
//! carrying the same code; whether queued frames go out first depends on the request
//! (yes for a graceful shutdown, no for a slow consumer).

use std::{sync::Arc, time::Duration};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{stream::SplitSink, SinkExt};
use switchboard_protocol::{codec, push::Disconnect, push::Push, Encoding};

use crate::{
    hub::to_message,
    metrics::Metrics,
    outbox::{CloseRequest, ConnControl, OutboxReceiver, Outgoing},
};

const BATCH: usize = 256;

/// How long the final disconnect push and close frame may take to write.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs until the connection closes.
pub(crate) async fn run(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: OutboxReceiver,
    control: Arc<ConnControl>,
    encoding: Encoding,
    metrics: Arc<Metrics>,
    stall_timeout: Duration,
) {
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            biased;
            // Waits until frames are queued; the loop ends through `control.closed()`.
            _ = rx.recv_many(&mut batch, BATCH) => {
                let written = tokio::select! {
                    result = write_within(stall_timeout, write_batch(&mut sink, &mut batch, &rx, &metrics)) => {
                        result.unwrap_or_else(|| {
                            control.close_as_slow_consumer();
                            Err(())
                        })
                    }
                    () = abandoned(&control) => Err(()),
                };
                if written.is_err() {
                    break;
                }
            }
            () = control.closed() => break,
        }
    }
    for outgoing in batch.drain(..) {
        rx.release(outgoing.size);
    }
    let Some(request) = control.request() else {
        // The transport ended (client closed or write failed): nothing left to say.
        control.terminate();
        return;
    };
    let finish = async {
        if request.flush_queue {
            while let Some(outgoing) = rx.try_recv() {
                batch.push(outgoing);
            }
            write_batch(&mut sink, &mut batch, &rx, &metrics).await?;
        }
        send_disconnect(&mut sink, encoding, &request).await
    };
    if tokio::time::timeout(CLOSE_WRITE_TIMEOUT, finish).await.is_err() {
        tracing::debug!("close frame not written in time");
    }
}

/// Runs `write`, giving up (`None`) after `limit`. The timer is armed only when the write
/// does not complete on its first poll: at the rates real apps run, almost every batch is
/// one frame that the socket takes at once, and a timer per delivery would add a timer
/// insertion and removal to every write.
async fn write_within<F: std::future::Future>(limit: Duration, write: F) -> Option<F::Output> {
    let mut write = std::pin::pin!(write);
    if let std::task::Poll::Ready(output) = futures_util::poll!(write.as_mut()) {
        return Some(output);
    }
    tokio::time::timeout(limit, write).await.ok()
}

/// Resolves when the connection is closing *without* flushing its queue, which means a
/// blocked write should be abandoned.
async fn abandoned(control: &ConnControl) {
    control.closed().await;
    if control.request().is_some_and(|r| r.flush_queue) {
        std::future::pending::<()>().await;
    }
}

async fn write_batch(
    sink: &mut SplitSink<WebSocket, Message>,
    batch: &mut Vec<Outgoing>,
    rx: &OutboxReceiver,
    metrics: &Metrics,
) -> Result<(), ()> {
    if batch.is_empty() {
        return Ok(());
    }
    // The whole batch's budget is held until the flush: until then its bytes sit in the
    // WebSocket library's write buffer. Given back however the write ends (dropped on a
    // timeout or a close included), so the budget never leaks.
    struct Held<'a>(&'a OutboxReceiver, usize);
    impl Drop for Held<'_> {
        fn drop(&mut self) {
            self.0.release(self.1);
        }
    }
    let count = batch.len();
    let held = Held(rx, batch.iter().map(|outgoing| outgoing.size).sum());
    for outgoing in batch.drain(..) {
        if let Some(received_at) = outgoing.received_at {
            metrics.publish_to_write.observe(received_at.elapsed().as_secs_f64());
        }
        sink.feed(outgoing.message).await.map_err(|error| tracing::debug!(%error, "write failed"))?;
    }
    sink.flush().await.map_err(|error| tracing::debug!(%error, "flush failed"))?;
    metrics.messages_out.inc_by(count as u64);
    metrics.bytes_out.inc_by(held.1 as u64);
    Ok(())
}

async fn send_disconnect(
    sink: &mut SplitSink<WebSocket, Message>,
    encoding: Encoding,
    request: &CloseRequest,
) -> Result<(), ()> {
    let mut push = Disconnect::new(request.code, request.reason.clone());
    push.reconnect_after_ms = request.reconnect_after_ms;
    let frame: Push<()> = Push::Disconnect(push);
    if let Ok(message) = codec::encode(encoding, &frame).and_then(|b| to_message(encoding, b)) {
        sink.feed(message).await.map_err(|_| ())?;
    }
    let close = CloseFrame { code: request.code.as_u16(), reason: truncate(&request.reason, 120).into() };
    sink.send(Message::Close(Some(close))).await.map_err(|_| ())?;
    sink.close().await.map_err(|_| ())
}

/// Close frame reasons are limited to 123 bytes; cut at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
