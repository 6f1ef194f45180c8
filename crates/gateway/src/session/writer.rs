//! The writing task of a connection: it steps in where the flusher shards stop.
//!
//! Frames normally reach the socket through the node's flusher shards (see `outbox`),
//! without this task waking. It takes over in two cases:
//! * the socket is full (the client reads slower than frames arrive): it waits until the
//!   socket drains, writes, and hands the connection back to its shard. If not one byte
//!   can be written for `limits.outbound_wait_ms`, the client has stopped reading: the
//!   connection is closed as a slow consumer (3001), and its queued bytes, bounded by the
//!   outbound budget, are dropped;
//! * the close: it writes a `disconnect` push and a close frame carrying the same code,
//!   after the queued frames (graceful shutdown) or instead of them (slow consumer).

use std::{sync::Arc, time::Duration};

use switchboard_protocol::{push::Disconnect, push::Push};

use crate::{
    outbox::{CloseRequest, ConnControl, Outgoing, Progress, Writer},
    transport::frame::WireFrame,
    wire::Wire,
};

/// How long the final frames (and, for a graceful close, the queue) may take to write.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs until the connection closes.
pub(crate) async fn run(writer: Writer, control: Arc<ConnControl>, wire: Wire, stall_timeout: Duration) {
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            biased;
            () = control.closed() => break,
            () = writer.owned() => {
                let drained = tokio::select! {
                    result = drain(&writer, &control, &mut batch, stall_timeout) => result,
                    () = abandoned(&control) => Err(()),
                };
                if drained.is_err() {
                    break;
                }
            }
        }
    }
    let Some(request) = control.request() else {
        // The transport ended (client closed or write failed): nothing left to say.
        control.terminate();
        return;
    };
    let finish = async {
        writer.take().await;
        if !request.flush_queue {
            writer.discard_queue();
        }
        for frame in final_frames(closing_wire(wire, &control), &request) {
            writer.push_final(frame);
        }
        write_all(&writer, &mut batch).await;
        writer.shutdown();
    };
    if tokio::time::timeout(CLOSE_WRITE_TIMEOUT, finish).await.is_err() {
        tracing::debug!("close frame not written in time");
    }
}

/// Writes while the socket is full, until the queue is empty or handed back to the
/// shard; fails (and asks for the close) when the socket stalls or breaks.
async fn drain(
    writer: &Writer,
    control: &ConnControl,
    batch: &mut Vec<Outgoing>,
    stall_timeout: Duration,
) -> Result<(), ()> {
    loop {
        match writer.write_some(batch) {
            Progress::Drained => {
                writer.release();
                return Ok(());
            }
            Progress::Blocked => match tokio::time::timeout(stall_timeout, writer.writable()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::debug!(%error, "socket failed");
                    control.terminate();
                    return Err(());
                }
                Err(_) => {
                    control.close_as_slow_consumer();
                    return Err(());
                }
            },
            Progress::Failed => {
                control.terminate();
                return Err(());
            }
        }
    }
}

/// Writes what is queued (closing frames included) and shuts the socket: a polling
/// connection that closed while its client was upgrading to this socket.
pub(super) async fn flush_and_close(writer: Writer) {
    let finish = async {
        writer.take().await;
        write_all(&writer, &mut Vec::new()).await;
        writer.shutdown();
    };
    if tokio::time::timeout(CLOSE_WRITE_TIMEOUT, finish).await.is_err() {
        tracing::debug!("closing frames not written in time");
    }
}

/// Writes everything queued, waiting for the socket as needed (the close sequence).
async fn write_all(writer: &Writer, batch: &mut Vec<Outgoing>) {
    loop {
        match writer.write_some(batch) {
            Progress::Drained if writer.is_empty() => return,
            Progress::Drained => {}
            Progress::Blocked => {
                if writer.writable().await.is_err() {
                    return;
                }
            }
            Progress::Failed => return,
        }
    }
}

/// Resolves when the connection is closing *without* flushing its queue, which means a
/// blocked write should be abandoned.
async fn abandoned(control: &ConnControl) {
    control.closed().await;
    if control.request().is_some_and(|r| r.flush_queue) {
        std::future::pending::<()>().await;
    }
}

/// The format of a connection's closing frames: a Socket.IO client's namespace is the one
/// it connected to.
pub(super) fn closing_wire(wire: Wire, control: &ConnControl) -> Wire {
    match wire {
        Wire::SocketIo(root) => Wire::SocketIo(control.socketio_namespace().unwrap_or(root)),
        native => native,
    }
}

/// The `disconnect` push and the close frame for `request`. A Socket.IO client is also
/// sent a `DISCONNECT` packet when it must not reconnect ("io server disconnect"): a
/// transport that just closes makes it reconnect, which is right for a drain or a slow
/// consumer.
pub(super) fn final_frames(wire: Wire, request: &CloseRequest) -> Vec<WireFrame> {
    let mut push = Disconnect::new(request.code, request.reason.clone());
    push.reconnect_after_ms = request.reconnect_after_ms;
    let reconnect = push.reconnect;
    let frame: Push<()> = Push::Disconnect(push);
    let mut frames = Vec::with_capacity(3);
    match wire.push(&frame) {
        Ok(frame) => frames.push(frame),
        Err(error) => tracing::error!(%error, "cannot encode the disconnect push"),
    }
    if let (Wire::SocketIo(ns), false) = (wire, reconnect) {
        frames.push(crate::wire::text(switchboard_protocol::socketio::disconnect_frame(ns.name)));
    }
    frames.push(WireFrame::close(request.code.as_u16(), &request.reason));
    frames
}
