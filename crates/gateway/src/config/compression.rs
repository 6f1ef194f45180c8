//! Configuration of WebSocket compression (`permessage-deflate`, RFC 7692).
//!
//! Off by default: compression trades CPU for bytes, and most real-time payloads (a vote
//! count, a typing indicator) are too small to shrink. Turn it on for channels that carry
//! large JSON (portfolio snapshots, order books) to clients on slow links. Only
//! publications of at least `threshold_bytes` are compressed, once per wire format and
//! shared by every subscriber that negotiated it (see `transport::deflate`).

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::transport::deflate::Deflate;

/// The `[compression]` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CompressionConfig {
    /// Accept a client's `permessage-deflate` offer on `/ws` and on Socket.IO's WebSocket
    /// transport (browsers make one on every connection). Default false.
    pub enabled: bool,
    /// Publication frames whose payload is at least this many bytes are sent compressed;
    /// smaller ones, replies and other pushes go as they are. Default 1024.
    pub threshold_bytes: u32,
    /// zlib compression level, 1 (fastest) to 9 (smallest). Default 1.
    pub level: u8,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig { enabled: false, threshold_bytes: 1024, level: 1 }
    }
}

impl CompressionConfig {
    /// What a connection that negotiated the extension gets; `None` when disabled.
    pub fn deflate(&self) -> Option<Deflate> {
        self.enabled.then_some(Deflate { threshold: self.threshold_bytes, level: self.level })
    }

    /// For a WebSocket upgrade request: the connection's compression and the extension
    /// header to answer with, when enabled and the client made an acceptable offer.
    pub(crate) fn negotiate(&self, headers: &axum::http::HeaderMap) -> Option<(Deflate, &'static str)> {
        let deflate = self.deflate()?;
        crate::transport::deflate::accept(headers).map(|answer| (deflate, answer))
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=9).contains(&self.level) {
            return Err(ConfigError::Invalid("compression.level must be between 1 and 9".into()));
        }
        Ok(())
    }
}
