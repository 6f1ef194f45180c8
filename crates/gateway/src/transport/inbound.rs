//! The reading half of a connection: `tokio-tungstenite` on the socket's read half.
//!
//! The WebSocket library writes a few frames of its own (pongs to the client's pings,
//! the reply to a close). They must not interleave with the flushers' writes, so the
//! read half's writes go into the connection's outbox as already framed bytes, like
//! every other frame.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::tcp::OwnedReadHalf,
};
use tokio_tungstenite::{
    tungstenite::protocol::{Role, WebSocketConfig},
    WebSocketStream,
};

use super::frame::WireFrame;
use crate::outbox::Outbox;

/// The stream of a connection's incoming messages.
pub(crate) type Inbound = WebSocketStream<ReadSide>;

/// A read half whose writes join the outbox.
#[derive(Debug)]
pub(crate) struct ReadSide {
    read: OwnedReadHalf,
    outbox: Outbox,
}

/// Starts reading WebSocket messages from `read`, `prefix` first.
pub(crate) async fn inbound(
    read: OwnedReadHalf,
    prefix: &[u8],
    outbox: Outbox,
    config: WebSocketConfig,
) -> Inbound {
    let side = ReadSide { read, outbox };
    if prefix.is_empty() {
        WebSocketStream::from_raw_socket(side, Role::Server, Some(config)).await
    } else {
        WebSocketStream::from_partially_read(side, prefix.to_vec(), Role::Server, Some(config)).await
    }
}

impl AsyncRead for ReadSide {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for ReadSide {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        // Whole frames (the library writes its buffer in one call). A full or closing
        // outbox drops the pong: the connection is being closed anyway.
        self.outbox.push(WireFrame::raw(bytes::Bytes::copy_from_slice(buf)), None);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
