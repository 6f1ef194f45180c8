//! `permessage-deflate` (RFC 7692), opt-in with `[compression]`: which offers the node
//! accepts, and compressing a server frame.
//!
//! **No context takeover, either way.** The node answers every accepted offer with
//! `server_no_context_takeover; client_no_context_takeover`, so each message is
//! compressed on its own, by both sides. That costs some ratio on small messages (they
//! are not compressed anyway, see `threshold_bytes`) and buys two things the hot path
//! needs:
//! * a publication is compressed **once** per wire format and the same bytes go to every
//!   subscriber that negotiated the extension, like uncompressed frames (a per-connection
//!   sliding window would mean one compression per subscriber);
//! * a connection holds **no** compressor or decompressor state (a zlib window is 32 KiB):
//!   one of each per worker thread serves every connection.
//!
//! Only publication pushes of at least `threshold_bytes` are compressed; replies, other
//! pushes and smaller publications go uncompressed, which the extension allows message by
//! message (RSV1 clear). What the client sends compressed is inflated by `inflate`.

use std::cell::RefCell;

use axum::http::{header, HeaderMap};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::frame::{OpCode, WireFrame, HEADROOM};

/// The extension's answer in the `101` response.
pub(crate) const ACCEPTED: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// [`ACCEPTED`] for an offer that asked for `server_max_window_bits=15`, which must be
/// echoed (RFC 7692 §7.1.2.1).
pub(crate) const ACCEPTED_WITH_WINDOW: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=15";

/// The deflate block end that a sync flush leaves and the extension strips (§7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// A connection's compression, as negotiated: `Copy`, 8 bytes, kept in its outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deflate {
    /// Publication frames with a payload at least this long are compressed.
    pub threshold: u32,
    /// zlib level, 0 (store) to 9 (best).
    pub level: u8,
}

/// The response header for the first acceptable `permessage-deflate` offer in the
/// request's `Sec-WebSocket-Extensions`, or `None` when there is none (the connection
/// then goes uncompressed; nothing is refused).
///
/// An offer is acceptable when each of its parameters is one the node can honour:
/// `server_no_context_takeover`, `client_no_context_takeover`, `client_max_window_bits`
/// (any window: the node inflates with the largest), and `server_max_window_bits` only
/// as 15 (the compressor's window is fixed). Repeated or unknown parameters make the offer
/// unacceptable, as §7 requires.
pub(crate) fn accept(headers: &HeaderMap) -> Option<&'static str> {
    headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(accept_offer)
}

/// One offer (`name; param; param=value`), see [`accept`].
fn accept_offer(offer: &str) -> Option<&'static str> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen: Vec<String> = Vec::new();
    let mut window_echo = false;
    for parameter in parts {
        let (name, value) = match parameter.split_once('=') {
            Some((name, value)) => (name.trim().to_ascii_lowercase(), Some(value.trim().trim_matches('"'))),
            None => (parameter.to_ascii_lowercase(), None),
        };
        if seen.contains(&name) {
            return None;
        }
        let valid = match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => true,
            ("client_max_window_bits", None) => true,
            ("client_max_window_bits", Some(bits)) => {
                bits.parse::<u8>().is_ok_and(|bits| (8..=15).contains(&bits))
            }
            ("server_max_window_bits", Some("15")) => {
                window_echo = true;
                true
            }
            _ => false,
        };
        if !valid {
            return None;
        }
        seen.push(name);
    }
    Some(if window_echo { ACCEPTED_WITH_WINDOW } else { ACCEPTED })
}

thread_local! {
    /// This worker's compressor, reset before each message, and the level it was made for.
    static COMPRESSOR: RefCell<Option<(u8, Compress)>> = const { RefCell::new(None) };
    /// This worker's decompressor, reset before each message.
    static DECOMPRESSOR: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// `frame` compressed as one message (RSV1 set), when `deflate` says its payload is long
/// enough and compressing makes it shorter; `None` means send it as it is. Only text and
/// binary frames are ever compressed.
pub fn compress_frame(frame: &WireFrame, deflate: Deflate) -> Option<WireFrame> {
    let payload = frame.payload();
    let opcode = frame.data_opcode()?;
    if payload.len() < deflate.threshold as usize {
        return None;
    }
    let mut buffer = Vec::with_capacity(HEADROOM + payload.len() / 2 + 64);
    buffer.resize(HEADROOM, 0);
    let compressed = COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        let compressor = match &mut *cell {
            Some((level, compressor)) if *level == deflate.level => compressor,
            slot => {
                let fresh = Compress::new(Compression::new(u32::from(deflate.level)), false);
                &mut slot.insert((deflate.level, fresh)).1
            }
        };
        compressor.reset();
        deflate_into(compressor, payload, &mut buffer)
    });
    if !compressed || buffer.len() - HEADROOM >= payload.len() {
        return None;
    }
    Some(WireFrame::from_headroom_compressed(opcode, buffer))
}

/// Deflates all of `input` with a sync flush onto the end of `out`, without the flush's
/// trailing `00 00 ff ff`; false if zlib failed.
fn deflate_into(compressor: &mut Compress, input: &[u8], out: &mut Vec<u8>) -> bool {
    let start = compressor.total_in();
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(256));
        }
        let consumed = (compressor.total_in() - start) as usize;
        if compressor.compress_vec(&input[consumed..], out, FlushCompress::Sync).is_err() {
            return false;
        }
        // Done once all input went in and the flush left room to spare (zlib fills the
        // output completely when it has more to write).
        if (compressor.total_in() - start) as usize == input.len() && out.capacity() > out.len() {
            break;
        }
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    true
}

/// Why a client's compressed message could not be inflated.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum InflateError {
    /// Inflated, it would exceed `limits.max_message_bytes` (a message grows, up to about
    /// a thousand times, when inflated: the limit applies to the result).
    #[error("message larger than {0} bytes once inflated")]
    TooLarge(usize),
    /// Not valid deflate data.
    #[error("invalid permessage-deflate data: {0}")]
    Corrupt(String),
}

/// Inflates one whole message (the payloads of its frames, concatenated) into at most
/// `limit` bytes.
///
/// # Errors
/// [`InflateError`] when the data is not deflate or inflates past `limit`.
pub fn inflate_message(compressed: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    let mut input = Vec::with_capacity(compressed.len() + TAIL.len());
    input.extend_from_slice(compressed);
    input.extend_from_slice(&TAIL);
    DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        let decompressor = cell.get_or_insert_with(|| Decompress::new(false));
        decompressor.reset(false);
        let start = decompressor.total_in();
        let mut out = Vec::with_capacity((compressed.len() * 4).max(256).min(limit.saturating_add(1)));
        loop {
            if out.len() > limit {
                return Err(InflateError::TooLarge(limit));
            }
            if out.len() == out.capacity() {
                // Never past `limit + 1`: one byte more than allowed is proof enough.
                out.reserve(out.capacity().max(256).min(limit + 1 - out.len()));
            }
            let (before_in, before_out) = (decompressor.total_in(), decompressor.total_out());
            let consumed = (before_in - start) as usize;
            let status = decompressor
                .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
                .map_err(|error| InflateError::Corrupt(error.to_string()))?;
            let all_in = (decompressor.total_in() - start) as usize == input.len();
            match status {
                // A final block ends the message (what may follow, the tail, is ignored).
                Status::StreamEnd => break,
                _ if all_in && out.len() < out.capacity() => break,
                // No progress with room left (the loop's top refused a full buffer).
                _ if decompressor.total_in() == before_in && decompressor.total_out() == before_out => {
                    return Err(InflateError::Corrupt("truncated deflate data".into()));
                }
                _ => {}
            }
        }
        if out.len() > limit {
            return Err(InflateError::TooLarge(limit));
        }
        Ok(out)
    })
}

/// Whether a frame's first byte says it is a text or binary frame (the only ones a
/// message starts with that can be compressed).
pub(crate) fn is_data(opcode: u8) -> bool {
    opcode == OpCode::Text as u8 || opcode == OpCode::Binary as u8
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn offer(value: &str) -> Option<&'static str> {
        let mut headers = HeaderMap::new();
        headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_str(value).expect("header"));
        accept(&headers)
    }

    #[test]
    fn browsers_offers_are_accepted_without_context_takeover() {
        // Chromium, Firefox and Node's `ws`.
        assert_eq!(offer("permessage-deflate; client_max_window_bits"), Some(ACCEPTED));
        assert_eq!(offer("permessage-deflate"), Some(ACCEPTED));
        assert_eq!(
            offer("permessage-deflate; client_max_window_bits=15; server_no_context_takeover"),
            Some(ACCEPTED)
        );
        assert_eq!(offer("permessage-deflate; server_max_window_bits=15"), Some(ACCEPTED_WITH_WINDOW));
    }

    #[test]
    fn offers_the_node_cannot_honour_are_skipped() {
        assert_eq!(offer("permessage-deflate; server_max_window_bits=10"), None, "a smaller window");
        assert_eq!(offer("permessage-deflate; client_max_window_bits=7"), None, "out of range");
        assert_eq!(offer("permessage-deflate; server_no_context_takeover; server_no_context_takeover"), None);
        assert_eq!(offer("permessage-deflate; unknown"), None);
        assert_eq!(offer("x-webkit-deflate-frame"), None);
        // The first acceptable offer wins.
        assert_eq!(offer("permessage-deflate; server_max_window_bits=9, permessage-deflate"), Some(ACCEPTED));
        assert_eq!(accept(&HeaderMap::new()), None);
    }

    #[test]
    fn a_large_frame_round_trips_and_a_small_one_is_left_alone() {
        let deflate = Deflate { threshold: 512, level: 1 };
        let json = format!("{{\"push\":\"publication\",\"data\":\"{}\"}}", "abc".repeat(400));
        let frame = WireFrame::new(OpCode::Text, json.as_bytes());
        let compressed = compress_frame(&frame, deflate).expect("compressed");
        assert_eq!(compressed.bytes()[0], 0x80 | 0x40 | OpCode::Text as u8, "FIN, RSV1, text");
        assert!(compressed.payload().len() < json.len() / 4, "{} bytes", compressed.payload().len());
        assert_eq!(inflate_message(compressed.payload(), 65_536).expect("inflate"), json.as_bytes());

        let small = WireFrame::new(OpCode::Text, b"{\"push\":\"publication\"}");
        assert_eq!(compress_frame(&small, deflate), None, "below the threshold");
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let random: Vec<u8> = (0..2000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        assert_eq!(compress_frame(&WireFrame::new(OpCode::Binary, &random), deflate), None, "would grow");
        assert_eq!(compress_frame(&WireFrame::ping(), Deflate { threshold: 0, level: 1 }), None);
    }

    #[test]
    fn inflating_is_bounded_and_refuses_garbage() {
        let zeros = vec![0u8; 100_000];
        let frame = WireFrame::new(OpCode::Binary, &zeros);
        let compressed = compress_frame(&frame, Deflate { threshold: 1, level: 6 }).expect("compressed");
        assert!(compressed.payload().len() < 1000);
        assert_eq!(inflate_message(compressed.payload(), 65_536), Err(InflateError::TooLarge(65_536)));
        assert_eq!(inflate_message(compressed.payload(), 100_000).expect("fits").len(), 100_000);
        assert!(matches!(inflate_message(&[0xff, 0xff, 0xff, 0xff], 1000), Err(InflateError::Corrupt(_))));
        assert_eq!(inflate_message(&[], 10).expect("empty message"), b"");
    }
}
