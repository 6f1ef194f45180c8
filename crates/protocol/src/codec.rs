//! JSON and MessagePack codecs for frames.
//!
//! Both encodings carry the same messages: MessagePack maps use the same field names as
//! the JSON objects (structs are encoded as maps, never as positional arrays), so a
//! message can be described once in `docs/protocol.md` for both.
//!
//! Decoding a command happens in two steps so that every failure gets the most specific
//! answer: bytes that are not JSON/MessagePack at all, or that lack a usable `id`, are a
//! protocol error (the connection is closed, because nothing can be answered); a frame
//! with an id but an unknown method or bad parameters gets an error reply for that id.
//! JSON commands take a one-pass path (`json_command`) with the same answers.

mod json_command;

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use crate::{push::Push, reply::Reply, Code, Command};

/// The wire encoding of a connection, chosen with `Sec-WebSocket-Protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// UTF-8 JSON in WebSocket text frames (the default).
    Json,
    /// MessagePack in WebSocket binary frames.
    MsgPack,
}

impl Encoding {
    /// Both encodings, in a fixed order usable as an array index via [`Encoding::index`].
    pub const ALL: [Encoding; 2] = [Encoding::Json, Encoding::MsgPack];

    /// A dense index (0 for JSON, 1 for MessagePack) for per-encoding caches.
    pub const fn index(self) -> usize {
        match self {
            Encoding::Json => 0,
            Encoding::MsgPack => 1,
        }
    }

    /// The encoding selected by a `Sec-WebSocket-Protocol` value, if it names one.
    pub fn from_subprotocol(value: &str) -> Option<Encoding> {
        match value.trim() {
            crate::SUBPROTOCOL_JSON => Some(Encoding::Json),
            crate::SUBPROTOCOL_MSGPACK => Some(Encoding::MsgPack),
            _ => None,
        }
    }

    /// The `Sec-WebSocket-Protocol` value for this encoding.
    pub const fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Json => crate::SUBPROTOCOL_JSON,
            Encoding::MsgPack => crate::SUBPROTOCOL_MSGPACK,
        }
    }

    /// A short name for logs and labels.
    pub const fn name(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::MsgPack => "msgpack",
        }
    }
}

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// JSON syntax or shape error.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// MessagePack syntax or shape error.
    #[error("invalid MessagePack: {0}")]
    MsgPackDecode(#[from] rmp_serde::decode::Error),
    /// MessagePack encoding failure.
    #[error("cannot encode MessagePack: {0}")]
    MsgPackEncode(#[from] rmp_serde::encode::Error),
}

/// A command that could not be decoded, with what the server should answer.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CommandDecodeError {
    /// The command id, when one could be read; `None` means no reply is possible and the
    /// connection must be closed with [`Code::ProtocolError`].
    pub id: Option<u64>,
    /// The code to answer (or close) with.
    pub code: Code,
    /// Human-readable explanation.
    pub message: String,
}

impl CommandDecodeError {
    fn protocol(message: impl Into<String>) -> Self {
        CommandDecodeError { id: None, code: Code::ProtocolError, message: message.into() }
    }
}

/// Every method of protocol v1, as it appears in a command's `method` field.
pub const METHODS: &[&str] = &[
    "connect",
    "subscribe",
    "unsubscribe",
    "publish",
    "presence",
    "presence_stats",
    "history",
    "refresh",
    "ack",
    "ping",
    "rpc",
];

/// Decodes one client command frame.
///
/// # Errors
/// A [`CommandDecodeError`] saying whether the failure can be answered (it has an id) and
/// with which code.
pub fn decode_command(encoding: Encoding, frame: &[u8]) -> Result<Command, CommandDecodeError> {
    match encoding {
        Encoding::Json => json_command::decode(frame),
        Encoding::MsgPack => decode_msgpack_value(frame)
            .map_err(|e| CommandDecodeError::protocol(format!("malformed MessagePack: {e}")))
            .and_then(decode_value),
    }
}

/// The generic path: a decoded frame checked field by field, then converted.
fn decode_value(mut value: serde_json::Value) -> Result<Command, CommandDecodeError> {
    let Some(object) = value.as_object_mut() else {
        return Err(CommandDecodeError::protocol("a command must be an object/map"));
    };
    let id = match object.get("id") {
        Some(id) => {
            id.as_u64().ok_or_else(|| CommandDecodeError::protocol("`id` must be a non-negative integer"))?
        }
        None => return Err(CommandDecodeError::protocol("missing `id`")),
    };
    let answer = |code: Code, message: String| CommandDecodeError { id: Some(id), code, message };
    match object.get("params") {
        None | Some(serde_json::Value::Null) => {
            object.insert("params".into(), serde_json::Value::Object(Default::default()));
        }
        Some(serde_json::Value::Object(_)) => {}
        // serde would accept a sequence for a struct (positional fields); the protocol
        // names every parameter, so a client relying on order is refused, not guessed at.
        Some(_) => return Err(answer(Code::BadRequest, "`params` must be an object/map".into())),
    }
    match object.get("method").map(|m| m.as_str()) {
        None => return Err(answer(Code::BadRequest, "missing `method`".into())),
        Some(None) => return Err(answer(Code::BadRequest, "`method` must be a string".into())),
        Some(Some(method)) if !METHODS.contains(&method) => {
            return Err(answer(Code::MethodNotFound, format!("unknown method `{method}`")));
        }
        Some(Some(_)) => {}
    }
    serde_json::from_value(value).map_err(|e| answer(Code::BadRequest, format!("bad params: {e}")))
}

/// Deepest nesting a MessagePack frame may have, the same as `serde_json`'s fixed limit so
/// that both encodings refuse the same frames (rmp-serde would allow 1 024 levels).
const MSGPACK_MAX_DEPTH: usize = 128;

fn decode_msgpack_value<T: DeserializeOwned>(frame: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(frame);
    deserializer.set_max_depth(MSGPACK_MAX_DEPTH);
    T::deserialize(&mut deserializer)
}

/// Encodes any frame (reply, push or command) in `encoding`.
///
/// # Errors
/// [`CodecError`] when a value cannot be represented (e.g. a map with non-string keys).
pub fn encode<T: Serialize + ?Sized>(encoding: Encoding, frame: &T) -> Result<Bytes, CodecError> {
    Ok(match encoding {
        Encoding::Json => Bytes::from(serde_json::to_vec(frame)?),
        Encoding::MsgPack => Bytes::from(rmp_serde::to_vec_named(frame)?),
    })
}

/// Decodes any frame in `encoding` into `T`.
///
/// # Errors
/// [`CodecError`] when the bytes are malformed or do not match `T`.
pub fn decode<T: DeserializeOwned>(encoding: Encoding, frame: &[u8]) -> Result<T, CodecError> {
    Ok(match encoding {
        Encoding::Json => serde_json::from_slice(frame)?,
        Encoding::MsgPack => decode_msgpack_value(frame)?,
    })
}

/// A server frame as a client sees it: a reply to one of its commands, or a push.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerFrame {
    /// A reply; `result` is left untyped because its shape depends on the method.
    Reply(Reply<serde_json::Value>),
    /// A push.
    Push(Push<serde_json::Value>),
}

/// Decodes a frame sent by the server.
///
/// # Errors
/// [`CodecError`] when the bytes are malformed or are neither a reply nor a push.
pub fn decode_server_frame(encoding: Encoding, frame: &[u8]) -> Result<ServerFrame, CodecError> {
    let value: serde_json::Value = decode(encoding, frame)?;
    if value.get("push").is_some() {
        Ok(ServerFrame::Push(serde_json::from_value(value)?))
    } else {
        Ok(ServerFrame::Reply(serde_json::from_value(value)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{CommandBody, SubscribeParams};
    use crate::StreamPosition;

    #[test]
    fn decodes_subscribe_in_both_encodings() {
        let json = br#"{"id":7,"method":"subscribe","params":{"channel":"chat:1","recover":{"offset":3,"epoch":"e"}}}"#;
        let cmd = decode_command(Encoding::Json, json).expect("json");
        let expected = Command {
            id: 7,
            body: CommandBody::Subscribe(SubscribeParams {
                channel: "chat:1".into(),
                recover: Some(StreamPosition { offset: 3, epoch: "e".into() }),
                token: None,
                data: None,
            }),
        };
        assert_eq!(cmd, expected);
        let packed = encode(Encoding::MsgPack, &expected).expect("encode");
        assert_eq!(decode_command(Encoding::MsgPack, &packed).expect("msgpack"), expected);
    }

    #[test]
    fn ping_needs_no_params() {
        for frame in [
            &br#"{"id":1,"method":"ping"}"#[..],
            br#"{"id":1,"method":"ping","params":null}"#,
            br#"{"id":1,"method":"ping","params":{}}"#,
        ] {
            let cmd = decode_command(Encoding::Json, frame).expect("ping");
            assert_eq!(cmd.body, CommandBody::Ping(Default::default()));
        }
    }

    #[test]
    fn classifies_failures() {
        let e = decode_command(Encoding::Json, b"{not json").expect_err("syntax");
        assert_eq!((e.id, e.code), (None, Code::ProtocolError));
        let e = decode_command(Encoding::Json, br#"{"method":"ping"}"#).expect_err("no id");
        assert_eq!((e.id, e.code), (None, Code::ProtocolError));
        let e = decode_command(Encoding::Json, br#"{"id":2,"method":"fly"}"#).expect_err("method");
        assert_eq!((e.id, e.code), (Some(2), Code::MethodNotFound));
        let e = decode_command(Encoding::Json, br#"{"id":3,"method":"subscribe","params":{}}"#)
            .expect_err("params");
        assert_eq!((e.id, e.code), (Some(3), Code::BadRequest));
        assert!(e.message.contains("channel"), "{}", e.message);
        let e = decode_command(Encoding::MsgPack, &[0xc1]).expect_err("msgpack");
        assert_eq!(e.code, Code::ProtocolError);
    }

    /// The one-pass JSON path answers every fault as the generic (MessagePack) path does.
    #[test]
    fn json_faults_get_the_generic_answers() {
        let frames = [
            r#"[1, "ping"]"#,
            r#""ping""#,
            r#"{"id": null, "method": "ping"}"#,
            r#"{"id": -1, "method": "ping"}"#,
            r#"{"id": 1.5, "method": "ping"}"#,
            r#"{"id": "7", "method": "ping"}"#,
            r#"{"id": 7}"#,
            r#"{"id": 7, "method": 3}"#,
            r#"{"id": 7, "method": "fly"}"#,
            r#"{"id": 7, "method": "ping", "params": 5}"#,
            r#"{"id": 7, "method": "publish", "params": {"channel": "c"}}"#,
            r#"{"id": 7, "method": "publish", "params": {"channel": 5, "data": 1}}"#,
            r#"{"id": 7, "method": "ack", "params": {"channel": "c", "offset": -2, "epoch": "e"}}"#,
            r#"{"id": 7, "method": "ping", "params": {"unknown": true}, "extra": [1]}"#,
            r#"{"id": 7, "method": "rpc", "params": {"method": "vote"}}"#,
        ];
        for frame in frames {
            let value: serde_json::Value = serde_json::from_str(frame).expect("valid JSON");
            let packed = rmp_serde::to_vec_named(&value).expect("msgpack");
            let json = decode_command(Encoding::Json, frame.as_bytes());
            let generic = decode_command(Encoding::MsgPack, &packed);
            match (&json, &generic) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{frame}"),
                (Err(a), Err(b)) => assert_eq!((a.id, a.code), (b.id, b.code), "{frame}: {a} / {b}"),
                _ => panic!("{frame}: {json:?} against {generic:?}"),
            }
        }
        let e = decode_command(Encoding::Json, br#"{"id":1,"id":2,"method":"ping"}"#).expect_err("twice");
        assert_eq!((e.id, e.code), (None, Code::ProtocolError), "a repeated field is malformed");
    }

    #[test]
    fn positional_params_are_refused_in_both_encodings() {
        let frame = serde_json::json!({"id": 4, "method": "subscribe", "params": ["chat:x"]});
        for encoding in Encoding::ALL {
            let bytes = encode(encoding, &frame).expect("encode");
            let e = decode_command(encoding, &bytes).expect_err("positional");
            assert_eq!((e.id, e.code), (Some(4), Code::BadRequest), "{encoding:?}");
            assert!(e.message.contains("params"), "{}", e.message);
        }
    }

    #[test]
    fn both_encodings_refuse_the_same_nesting() {
        let nested = |levels: usize| {
            let mut value = serde_json::json!(1);
            for _ in 0..levels {
                value = serde_json::json!([value]);
            }
            serde_json::json!({"id": 1, "method": "publish", "params": {"channel": "c", "data": value}})
        };
        for encoding in Encoding::ALL {
            let ok = encode(encoding, &nested(100)).expect("encode");
            assert!(decode_command(encoding, &ok).is_ok(), "{encoding:?}");
        }
        let json = serde_json::to_vec(&nested(200)).expect("json");
        let packed = rmp_serde::to_vec_named(&nested(200)).expect("msgpack");
        for (encoding, bytes) in [(Encoding::Json, json), (Encoding::MsgPack, packed)] {
            let e = decode_command(encoding, &bytes).expect_err("too deep");
            assert_eq!(e.code, Code::ProtocolError, "{encoding:?}");
        }
    }

    #[test]
    fn server_frames_round_trip() {
        let push: Push<serde_json::Value> =
            Push::Disconnect(crate::push::Disconnect::new(Code::Shutdown, "bye"));
        for encoding in Encoding::ALL {
            let bytes = encode(encoding, &push).expect("encode");
            assert_eq!(
                decode_server_frame(encoding, &bytes).expect("decode"),
                ServerFrame::Push(push.clone())
            );
        }
    }
}
