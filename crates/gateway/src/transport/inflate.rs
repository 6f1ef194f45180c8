//! The read side of `permessage-deflate`: client messages sent compressed are inflated
//! below the WebSocket library, which refuses frames with RSV1 set.
//!
//! [`Inflater`] sits between the socket and `tokio-tungstenite` on connections that
//! negotiated the extension. It passes every frame through as it is, except the frames
//! of a compressed message (a text or binary frame with RSV1, and its continuations):
//! those it collects and unmasks, inflates once the message is complete (the node asked
//! for no context takeover, so each message inflates on its own; see `deflate`), and
//! hands on as one plain frame, masked with a zero key, that the library then checks
//! like any other (size, UTF-8, interleaved control frames). Frames it does not rewrite
//! keep every flaw for the library to refuse, RSV1 on a control frame included.

use bytes::{Buf, BufMut, BytesMut};

use super::{
    deflate::{inflate_message, is_data, InflateError},
    frame::RSV1,
};

/// Rewrites one connection's incoming bytes; see the module docs.
#[derive(Debug)]
pub(crate) struct Inflater {
    /// `limits.max_message_bytes`: for a compressed message, before and after inflating.
    limit: usize,
    /// Bytes read from the socket, not rewritten yet.
    input: BytesMut,
    /// Rewritten bytes, for the WebSocket library.
    output: BytesMut,
    state: State,
    /// The compressed message being collected: its opcode and its payload so far.
    message: Option<(u8, Vec<u8>)>,
    /// Set once a message could not be inflated: the connection is closed for it.
    failed: Option<InflateError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The next bytes start a frame.
    Header,
    /// This many payload bytes of the current frame pass through as they are.
    Forward(u64),
    /// This many payload bytes of a compressed message's frame, masked with `mask` from
    /// `position` on; `fin` ends the message.
    Collect { remaining: u64, mask: [u8; 4], position: usize, fin: bool },
}

/// A frame header at the start of some bytes.
struct Header {
    /// Its length in bytes, mask key included.
    length: usize,
    /// FIN, RSV bits and opcode.
    first: u8,
    payload: u64,
    mask: Option<[u8; 4]>,
}

impl Inflater {
    /// A rewriter for messages of at most `limit` bytes (compressed and inflated).
    pub(crate) fn new(limit: usize) -> Inflater {
        Inflater {
            limit,
            input: BytesMut::new(),
            output: BytesMut::new(),
            state: State::Header,
            message: None,
            failed: None,
        }
    }

    /// Takes bytes read from the socket and rewrites what it can.
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        self.input.extend_from_slice(bytes);
        if let Err(error) = self.rewrite() {
            self.failed = Some(error);
            self.input.clear();
        }
        if self.input.is_empty() {
            // Nothing held: give the buffer back (idle connections keep no memory here).
            self.input = BytesMut::new();
        }
    }

    /// Moves rewritten bytes into `into`; returns how many.
    pub(crate) fn take(&mut self, into: &mut [u8]) -> usize {
        let count = into.len().min(self.output.len());
        into[..count].copy_from_slice(&self.output[..count]);
        self.output.advance(count);
        if self.output.is_empty() {
            self.output = BytesMut::new();
        }
        count
    }

    /// Whether rewritten bytes wait to be taken.
    pub(crate) fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// Why the connection cannot go on, once everything before the failure was taken.
    pub(crate) fn failure(&self) -> Option<&InflateError> {
        self.failed.as_ref()
    }

    fn rewrite(&mut self) -> Result<(), InflateError> {
        loop {
            match self.state {
                State::Header => {
                    let Some(header) = parse_header(&self.input) else { return Ok(()) };
                    self.start_frame(&header)?;
                }
                State::Forward(0) => self.state = State::Header,
                State::Forward(remaining) => {
                    if self.input.is_empty() {
                        return Ok(());
                    }
                    let count = usize::try_from(remaining).unwrap_or(usize::MAX).min(self.input.len());
                    self.output.extend_from_slice(&self.input[..count]);
                    self.input.advance(count);
                    self.state = State::Forward(remaining - count as u64);
                }
                State::Collect { remaining: 0, fin, .. } => {
                    self.state = State::Header;
                    if fin {
                        let (opcode, compressed) = self.message.take().unwrap_or_default();
                        let plain = inflate_message(&compressed, self.limit)?;
                        write_frame(&mut self.output, opcode, &plain);
                    }
                }
                State::Collect { remaining, mask, position, fin } => {
                    if self.input.is_empty() {
                        return Ok(());
                    }
                    let count = usize::try_from(remaining).unwrap_or(usize::MAX).min(self.input.len());
                    if let Some((_, message)) = self.message.as_mut() {
                        message.extend(
                            self.input[..count]
                                .iter()
                                .enumerate()
                                .map(|(i, byte)| byte ^ mask[(position + i) % 4]),
                        );
                    }
                    self.input.advance(count);
                    self.state = State::Collect {
                        remaining: remaining - count as u64,
                        mask,
                        position: position + count,
                        fin,
                    };
                }
            }
        }
    }

    /// Decides what happens to the frame whose `header` starts the input.
    fn start_frame(&mut self, header: &Header) -> Result<(), InflateError> {
        let opcode = header.first & 0x0F;
        let compressed = header.first & RSV1 != 0;
        let control = opcode & 0x08 != 0;
        let collecting = self.message.is_some();
        let collect = match header.mask {
            Some(_) if compressed && is_data(opcode) && !collecting => true,
            Some(_) if !compressed && opcode == 0 && collecting => true,
            _ => false,
        };
        if collecting && !collect && !control {
            return Err(InflateError::Corrupt("a new message began inside a compressed one".into()));
        }
        if !collect {
            self.output.extend_from_slice(&self.input[..header.length]);
            self.input.advance(header.length);
            self.state = State::Forward(header.payload);
            return Ok(());
        }
        let so_far = self.message.as_ref().map_or(0, |(_, message)| message.len());
        if header.payload > (self.limit - so_far.min(self.limit)) as u64 {
            return Err(InflateError::TooLarge(self.limit));
        }
        if !collecting {
            self.message = Some((opcode, Vec::with_capacity(header.payload as usize)));
        }
        self.input.advance(header.length);
        self.state = State::Collect {
            remaining: header.payload,
            mask: header.mask.unwrap_or_default(),
            position: 0,
            fin: header.first & 0x80 != 0,
        };
        Ok(())
    }
}

/// The frame header at the start of `bytes`, once all of it arrived.
fn parse_header(bytes: &[u8]) -> Option<Header> {
    let (&first, &second) = (bytes.first()?, bytes.get(1)?);
    let masked = second & 0x80 != 0;
    let extended = match second & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let length = 2 + extended + if masked { 4 } else { 0 };
    if bytes.len() < length {
        return None;
    }
    let payload = match extended {
        2 => u64::from(u16::from_be_bytes([bytes[2], bytes[3]])),
        8 => u64::from_be_bytes(bytes[2..10].try_into().ok()?),
        _ => u64::from(second & 0x7F),
    };
    let mask = if masked { Some(bytes[2 + extended..length].try_into().ok()?) } else { None };
    Some(Header { length, first, payload, mask })
}

/// Appends a final frame of `payload`, masked with a zero key (a client frame must be
/// masked; with a zero key unmasking changes nothing).
fn write_frame(output: &mut BytesMut, opcode: u8, payload: &[u8]) {
    output.reserve(14 + payload.len());
    output.put_u8(0x80 | opcode);
    match payload.len() {
        0..=125 => output.put_u8(0x80 | payload.len() as u8),
        126..=0xFFFF => {
            output.put_u8(0x80 | 126);
            output.put_u16(payload.len() as u16);
        }
        _ => {
            output.put_u8(0x80 | 127);
            output.put_u64(payload.len() as u64);
        }
    }
    output.put_slice(&[0; 4]);
    output.put_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{
        deflate::{compress_frame, Deflate},
        frame::{OpCode, WireFrame},
    };

    /// A client frame: `first` byte as given, masked with a fixed key.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = BytesMut::new();
        out.put_u8(first);
        match payload.len() {
            0..=125 => out.put_u8(0x80 | payload.len() as u8),
            _ => {
                out.put_u8(0x80 | 126);
                out.put_u16(payload.len() as u16);
            }
        }
        out.put_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, byte)| byte ^ mask[i % 4]));
        out.to_vec()
    }

    /// `text` deflated the way a client does it (no context takeover, tail stripped).
    fn deflated(text: &str) -> Vec<u8> {
        let frame = WireFrame::new(OpCode::Text, text.as_bytes());
        compress_frame(&frame, Deflate { threshold: 0, level: 6 }).expect("compressible").payload().to_vec()
    }

    /// Everything the inflater hands on, parsed back into (opcode, unmasked payload).
    fn frames(inflater: &mut Inflater) -> Vec<(u8, Vec<u8>)> {
        let mut bytes = vec![0; 1 << 20];
        let count = inflater.take(&mut bytes);
        let mut rest = &bytes[..count];
        let mut out = Vec::new();
        while let Some(header) = parse_header(rest) {
            assert_eq!(header.first & RSV1, 0, "nothing handed on is compressed");
            let end = header.length + header.payload as usize;
            let mask = header.mask.expect("client frames stay masked");
            let payload = rest[header.length..end].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
            out.push((header.first & 0x0F, payload));
            rest = &rest[end..];
        }
        assert!(rest.is_empty());
        out
    }

    #[test]
    fn a_compressed_message_arrives_as_one_plain_frame_whatever_the_reads() {
        let text =
            format!("{{\"id\":1,\"method\":\"publish\",\"params\":{{\"data\":\"{}\"}}}}", "x".repeat(3000));
        let wire = client_frame(0x80 | 0x40 | 0x1, &deflated(&text));
        for chunk in [1, 7, wire.len()] {
            let mut inflater = Inflater::new(65_536);
            for piece in wire.chunks(chunk) {
                inflater.feed(piece);
            }
            assert_eq!(frames(&mut inflater), vec![(1, text.as_bytes().to_vec())], "reads of {chunk} bytes");
            assert!(inflater.failure().is_none());
        }
    }

    #[test]
    fn fragments_and_interleaved_pings_and_plain_frames() {
        let text = "hello ".repeat(50);
        let compressed = deflated(&text);
        let (head, tail) = compressed.split_at(compressed.len() / 2);
        let mut wire = client_frame(0x40 | 0x1, head); // first fragment: RSV1, no FIN
        wire.extend(client_frame(0x80 | 0x9, b"ping")); // a ping between fragments
        wire.extend(client_frame(0x80, tail)); // the last continuation
        wire.extend(client_frame(0x81, b"{\"id\":2}")); // an uncompressed message
        let mut inflater = Inflater::new(65_536);
        inflater.feed(&wire);
        assert_eq!(
            frames(&mut inflater),
            vec![(9, b"ping".to_vec()), (1, text.as_bytes().to_vec()), (1, b"{\"id\":2}".to_vec())]
        );
    }

    #[test]
    fn oversized_and_corrupt_messages_fail_the_connection() {
        let bomb = deflated(&"a".repeat(60_000));
        let mut inflater = Inflater::new(10_000);
        inflater.feed(&client_frame(0xC1, &bomb));
        assert_eq!(inflater.failure(), Some(&InflateError::TooLarge(10_000)));

        let mut inflater = Inflater::new(100);
        inflater.feed(&client_frame(0xC1, &[7; 120]));
        assert_eq!(inflater.failure(), Some(&InflateError::TooLarge(100)), "refused before inflating");

        let mut inflater = Inflater::new(65_536);
        inflater.feed(&client_frame(0xC1, &[0xff; 40]));
        assert!(matches!(inflater.failure(), Some(InflateError::Corrupt(_))));

        let mut inflater = Inflater::new(65_536);
        inflater.feed(&client_frame(0x41, &deflated(&"abc".repeat(20))));
        inflater.feed(&client_frame(0x81, b"{}"));
        assert!(matches!(inflater.failure(), Some(InflateError::Corrupt(_))), "a new message mid-way");
    }

    #[test]
    fn frames_it_does_not_rewrite_pass_through_unchanged() {
        // RSV1 on a ping, and an unmasked compressed frame: the library refuses both.
        let mut wire = client_frame(0x80 | 0x40 | 0x9, b"x");
        wire.extend([0xC1, 0x02, 0xAB, 0xCD]);
        let mut inflater = Inflater::new(65_536);
        inflater.feed(&wire);
        let mut out = vec![0; 64];
        let count = inflater.take(&mut out);
        assert_eq!(&out[..count], &wire[..]);
        assert!(!inflater.has_output());
    }

    /// One message of a generated stream: its text, whether the client compressed it,
    /// how many fragments it is sent in, and whether a ping follows its first fragment.
    fn message() -> impl proptest::strategy::Strategy<Value = (String, bool, usize, bool)> {
        use proptest::prelude::*;
        ("[a-z ]{0,300}", any::<bool>(), 1usize..4, any::<bool>())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// Untrusted bytes in any chunks: never a panic, and the rewriter either hands
        /// bytes on or fails; it never grows past what it was fed plus the limit.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000), chunk in 1usize..64) {
            let mut inflater = Inflater::new(4096);
            for piece in bytes.chunks(chunk) {
                inflater.feed(piece);
                let mut out = vec![0; 8192];
                let _ = inflater.take(&mut out);
            }
        }

        /// Any mix of compressed and plain messages, fragmented and with pings between
        /// fragments, read in any chunks, comes out as the plain messages in order.
        #[test]
        fn generated_streams_come_out_plain(messages in proptest::collection::vec(message(), 1..8), chunk in 1usize..200) {
            let mut wire = Vec::new();
            let mut expected = Vec::new();
            for (text, compress, fragments, ping) in &messages {
                let payload = if *compress && !text.is_empty() { deflated_or_plain(text) } else { None };
                let (body, rsv1) = match &payload {
                    Some(compressed) => (compressed.clone(), 0x40),
                    None => (text.as_bytes().to_vec(), 0),
                };
                let size = body.len().div_ceil(*fragments).max(1);
                let pieces: Vec<&[u8]> = if body.is_empty() { vec![&[][..]] } else { body.chunks(size).collect() };
                for (i, piece) in pieces.iter().enumerate() {
                    let last = i + 1 == pieces.len();
                    let first_byte = if i == 0 { 0x1 | rsv1 } else { 0x0 } | if last { 0x80 } else { 0 };
                    wire.extend(client_frame(first_byte, piece));
                    if i == 0 && *ping {
                        wire.extend(client_frame(0x89, b"p"));
                    }
                }
                // A ping between fragments comes out before the message it interrupted;
                // after a one-frame message, after it.
                let message = (1, text.as_bytes().to_vec());
                match (*ping, pieces.len() > 1) {
                    (true, true) => expected.extend([(9, b"p".to_vec()), message]),
                    (true, false) => expected.extend([message, (9, b"p".to_vec())]),
                    (false, _) => expected.push(message),
                }
            }
            let mut inflater = Inflater::new(65_536);
            let mut handed_on = Vec::new();
            for piece in wire.chunks(chunk) {
                inflater.feed(piece);
                let mut out = vec![0; 1 << 17];
                let count = inflater.take(&mut out);
                handed_on.extend_from_slice(&out[..count]);
            }
            proptest::prop_assert!(inflater.failure().is_none(), "{:?}", inflater.failure());
            // Fragments of plain messages pass through as fragments: join them back.
            let mut joined: Vec<(u8, Vec<u8>)> = Vec::new();
            let mut open: Option<(u8, Vec<u8>)> = None;
            let mut rest = &handed_on[..];
            while let Some(header) = parse_header(rest) {
                proptest::prop_assert_eq!(header.first & RSV1, 0, "nothing handed on is compressed");
                let end = header.length + header.payload as usize;
                let mask = header.mask.unwrap_or_default();
                let payload: Vec<u8> = rest[header.length..end].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
                let (opcode, fin) = (header.first & 0x0F, header.first & 0x80 != 0);
                rest = &rest[end..];
                if opcode & 0x08 != 0 {
                    joined.push((opcode, payload));
                    continue;
                }
                let current = open.get_or_insert((opcode, Vec::new()));
                current.1.extend(payload);
                if fin {
                    joined.extend(open.take());
                }
            }
            proptest::prop_assert!(rest.is_empty(), "whole frames only");
            proptest::prop_assert_eq!(joined, expected);
        }
    }

    /// `text` deflated the way a client does it, if that is shorter.
    fn deflated_or_plain(text: &str) -> Option<Vec<u8>> {
        let frame = WireFrame::new(OpCode::Text, text.as_bytes());
        compress_frame(&frame, Deflate { threshold: 0, level: 6 }).map(|frame| frame.payload().to_vec())
    }
}
