//! The reading half of a connection: `tokio-tungstenite` on the socket's read half.
//!
//! The WebSocket library writes a few frames of its own (pongs to the client's pings,
//! the reply to a close). They must not interleave with the flushers' writes, so the
//! read half's writes go into the connection's outbox as already framed bytes, like
//! every other frame. On a connection that negotiated `permessage-deflate`, the bytes
//! read pass through an [`Inflater`] first.

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

use super::{frame::WireFrame, inflate::Inflater};
use crate::outbox::Outbox;

/// The stream of a connection's incoming messages.
pub(crate) type Inbound = WebSocketStream<ReadSide>;

/// Bytes read from the socket at once on a compressed connection (on the stack).
const RAW_READ_BYTES: usize = 4096;

/// A read half whose writes join the outbox.
#[derive(Debug)]
pub(crate) struct ReadSide {
    read: OwnedReadHalf,
    outbox: Outbox,
    /// Set when the connection negotiated `permessage-deflate`.
    inflater: Option<Box<Inflater>>,
}

/// Starts reading WebSocket messages from `read`, `prefix` first; `inflate` is
/// `Some(limits.max_message_bytes)` on a connection that negotiated `permessage-deflate`.
pub(crate) async fn inbound(
    read: OwnedReadHalf,
    prefix: &[u8],
    outbox: Outbox,
    config: WebSocketConfig,
    inflate: Option<usize>,
) -> Inbound {
    if let Some(limit) = inflate {
        // The prefix may hold compressed frames too.
        let mut inflater = Box::new(Inflater::new(limit));
        inflater.feed(prefix);
        let side = ReadSide { read, outbox, inflater: Some(inflater) };
        return WebSocketStream::from_raw_socket(side, Role::Server, Some(config)).await;
    }
    let side = ReadSide { read, outbox, inflater: None };
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
        let side = &mut *self;
        let Some(inflater) = side.inflater.as_mut() else {
            return Pin::new(&mut side.read).poll_read(cx, buf);
        };
        loop {
            if inflater.has_output() {
                let taken = inflater.take(buf.initialize_unfilled());
                buf.advance(taken);
                return Poll::Ready(Ok(()));
            }
            if let Some(error) = inflater.failure() {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, error.clone())));
            }
            let mut raw = [0u8; RAW_READ_BYTES];
            let mut raw = ReadBuf::new(&mut raw);
            std::task::ready!(Pin::new(&mut side.read).poll_read(cx, &mut raw))?;
            if raw.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            inflater.feed(raw.filled());
        }
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
