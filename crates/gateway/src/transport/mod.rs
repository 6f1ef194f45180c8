//! The WebSocket transport below the session: the upgrade handshake, server frames, and
//! the socket a connection reads and writes.
//!
//! The gateway owns the upgraded TCP socket itself instead of a WebSocket library's
//! stream, because the hot path writes to many sockets from few tasks (see `outbox`'s
//! flusher shards): a write must be a non-blocking `writev` of already framed bytes,
//! callable from any task, with no per-connection lock held across an `.await`.
//! Reading stays with `tokio-tungstenite` (client frames are masked, may be fragmented
//! and interleaved with control frames: no reason to hand-write that), on a read-only
//! view of the socket whose few writes (pongs) join the connection's outbox.
//! Socket.IO clients may also come over HTTP long-polling (`polling`) and upgrade to a
//! WebSocket later. `permessage-deflate`, when enabled, compresses shared publication
//! frames once (`deflate`) and inflates what clients compress below the library
//! (`inflate`).

pub mod deflate;
pub mod frame;
pub(crate) mod handshake;
pub(crate) mod inbound;
mod inflate;
pub mod polling;
