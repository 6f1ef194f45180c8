//! Server-to-client WebSocket frames, encoded once and shared.
//!
//! A frame the server sends is never masked (RFC 6455 §5.1), so its bytes are the same
//! for every client: a publication's frame, header and payload in one buffer, is encoded
//! once per wire format and every subscriber's socket is handed the same [`Bytes`]. A
//! write then needs no framing per connection and one `iovec` per frame.
//!
//! Payloads are serialized after [`HEADROOM`] spare bytes, and the header is written
//! into the end of that room, so a frame costs no copy of its payload.

use bytes::Bytes;

/// Spare bytes in front of a payload: the largest header (2 + 8 length bytes).
pub const HEADROOM: usize = 10;

/// The first header byte's "compressed" bit under `permessage-deflate`.
pub const RSV1: u8 = 0x40;

/// The frame types the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// UTF-8 text (JSON connections).
    Text = 0x1,
    /// Binary (MessagePack connections).
    Binary = 0x2,
    /// Close, with a code and a reason.
    Close = 0x8,
    /// Ping (heartbeat).
    Ping = 0x9,
}

/// One complete frame as it goes on the wire (FIN set, unmasked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireFrame {
    bytes: Bytes,
    header: u8,
}

impl WireFrame {
    /// A frame of `payload`, which starts after [`HEADROOM`] spare bytes of `buffer`.
    ///
    /// # Panics
    /// If `buffer` is shorter than [`HEADROOM`] (a bug in the caller).
    pub fn from_headroom(opcode: OpCode, buffer: Vec<u8>) -> WireFrame {
        WireFrame::framed(opcode, buffer, 0)
    }

    fn framed(opcode: OpCode, mut buffer: Vec<u8>, flags: u8) -> WireFrame {
        let length = buffer.len() - HEADROOM;
        let mut header = header(opcode, length);
        header[0] |= flags;
        let start = HEADROOM - header.len();
        buffer[start..HEADROOM].copy_from_slice(&header);
        WireFrame { bytes: Bytes::from(buffer).slice(start..), header: header.len() as u8 }
    }

    /// [`WireFrame::from_headroom`] for a payload compressed with `permessage-deflate`
    /// (RSV1 set: see `deflate`).
    ///
    /// # Panics
    /// If `buffer` is shorter than [`HEADROOM`] (a bug in the caller).
    pub fn from_headroom_compressed(opcode: OpCode, buffer: Vec<u8>) -> WireFrame {
        WireFrame::framed(opcode, buffer, RSV1)
    }

    /// A frame of `payload` (copied once, behind its header).
    pub fn new(opcode: OpCode, payload: &[u8]) -> WireFrame {
        let mut buffer = Vec::with_capacity(HEADROOM + payload.len());
        buffer.resize(HEADROOM, 0);
        buffer.extend_from_slice(payload);
        WireFrame::from_headroom(opcode, buffer)
    }

    /// An empty ping.
    pub fn ping() -> WireFrame {
        WireFrame::new(OpCode::Ping, &[])
    }

    /// A close frame with `code` and `reason` (cut to the 123 bytes a control frame allows,
    /// at a character boundary).
    pub fn close(code: u16, reason: &str) -> WireFrame {
        let reason = truncate(reason, 123);
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(reason.as_bytes());
        WireFrame::new(OpCode::Close, &payload)
    }

    /// Bytes that are already one or more complete frames (the WebSocket library's own
    /// replies, such as pongs).
    pub fn raw(bytes: Bytes) -> WireFrame {
        WireFrame { bytes, header: 0 }
    }

    /// The whole frame.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Its size on the wire.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether it has no bytes at all (never for a built frame).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The payload without the header.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[usize::from(self.header)..]
    }

    /// The payload without the header, sharing the frame's buffer.
    pub fn into_payload(self) -> Bytes {
        self.bytes.slice(usize::from(self.header)..)
    }

    /// The opcode of a text or binary frame; `None` for control frames and raw bytes.
    pub fn data_opcode(&self) -> Option<OpCode> {
        match self.bytes.first() {
            Some(first) if self.header > 0 && first & 0x0F == OpCode::Text as u8 => Some(OpCode::Text),
            Some(first) if self.header > 0 && first & 0x0F == OpCode::Binary as u8 => Some(OpCode::Binary),
            _ => None,
        }
    }

    /// Whether this is a text frame.
    pub fn is_text(&self) -> bool {
        self.header > 0 && self.bytes[0] & 0x0F == OpCode::Text as u8
    }

    /// Whether this is a close frame.
    pub fn is_close(&self) -> bool {
        self.header > 0 && self.bytes[0] & 0x0F == OpCode::Close as u8
    }

    /// Whether this is a binary frame (MessagePack).
    pub fn is_binary(&self) -> bool {
        self.header > 0 && self.bytes[0] & 0x0F == OpCode::Binary as u8
    }
}

fn header(opcode: OpCode, length: usize) -> Vec<u8> {
    let first = 0x80 | opcode as u8;
    match length {
        0..=125 => vec![first, length as u8],
        126..=0xFFFF => {
            let mut header = vec![first, 126];
            header.extend_from_slice(&(length as u16).to_be_bytes());
            header
        }
        _ => {
            let mut header = vec![first, 127];
            header.extend_from_slice(&(length as u64).to_be_bytes());
            header
        }
    }
}

/// `text` cut to at most `max` bytes at a character boundary.
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

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use tungstenite::protocol::frame::FrameHeader;

    use super::*;

    /// Every length class parses back with tungstenite's own header parser.
    #[test]
    fn headers_parse_back() {
        for length in [0, 1, 125, 126, 300, 0xFFFF, 0x1_0000, 200_000] {
            let frame = WireFrame::new(OpCode::Binary, &vec![7u8; length]);
            let mut cursor = Cursor::new(frame.bytes().to_vec());
            let (header, parsed) = FrameHeader::parse(&mut cursor).expect("parse").expect("complete");
            assert_eq!(parsed as usize, length);
            assert!(header.is_final && header.mask.is_none());
            assert_eq!(frame.payload().len(), length);
            assert_eq!(frame.len(), cursor.position() as usize + length);
        }
    }

    #[test]
    fn close_reasons_are_cut_at_a_character_boundary() {
        let frame = WireFrame::close(3001, &"é".repeat(100));
        assert_eq!(&frame.payload()[..2], &3001u16.to_be_bytes());
        assert_eq!(frame.payload().len(), 2 + 122);
        assert!(std::str::from_utf8(&frame.payload()[2..]).is_ok());
    }
}
