//! The wire format of a connection: the native protocol in JSON or MessagePack, or
//! Socket.IO (docs/socketio.md).
//!
//! Sessions, channels and delivery are the same for every connection; only the frames
//! differ. This module turns the session's replies and pushes into the frames of a
//! connection's format, so command handlers stay format-blind: a native reply is a
//! `{"id", "result"}` frame, a Socket.IO reply is the ack of the event that asked (or
//! nothing when the event asked for none). Publications are encoded once per format by
//! the hub; a Socket.IO format names its namespace, which is part of the frame.

use std::{
    collections::HashSet,
    sync::{Mutex, OnceLock},
};

use serde::Serialize;
use serde_json::Value;
use switchboard_protocol::{
    codec::{self, CodecError},
    push::Push,
    socketio, Code, Encoding, ErrorBody, Reply,
};

use crate::{
    hub::to_frame,
    transport::frame::{OpCode, WireFrame},
};

/// A Socket.IO namespace a connection joined: its position in `socketio.namespaces`
/// (which frame variant a publication uses) and its name (which the frames carry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SioNamespace {
    /// Index in the node's configured namespaces.
    pub index: u8,
    /// The namespace, e.g. `/` or `/admin`.
    pub name: &'static str,
}

impl SioNamespace {
    /// The root namespace `/`, index 0 (a connection's namespace before its CONNECT).
    pub const ROOT: SioNamespace = SioNamespace { index: 0, name: "/" };

    /// A namespace from the configuration; its name is interned, so building nodes again
    /// (tests) does not grow memory.
    pub fn new(index: usize, name: &str) -> SioNamespace {
        static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
        let mut names = NAMES.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        let name = match names.get(name) {
            Some(interned) => *interned,
            None => {
                let interned: &'static str = Box::leak(name.to_string().into_boxed_str());
                names.insert(interned);
                interned
            }
        };
        SioNamespace { index: u8::try_from(index).unwrap_or(u8::MAX), name }
    }
}

/// How a connection's frames are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// The native protocol (docs/protocol.md).
    Native(Encoding),
    /// Engine.IO v4 / Socket.IO v5 in the given namespace.
    SocketIo(SioNamespace),
}

impl From<Encoding> for Wire {
    fn from(encoding: Encoding) -> Wire {
        Wire::Native(encoding)
    }
}

/// A Socket.IO reply id meaning "the event asked for no ack".
pub const NO_ACK: u64 = 0;
/// The Socket.IO reply id of the CONNECT packet (answered with `40` or `44`).
pub const CONNECT_ID: u64 = u64::MAX;
/// The event carrying errors of Socket.IO events that asked for no ack.
pub const ERROR_EVENT: &str = "sb:error";

/// The command id of a Socket.IO event with ack id `ack` (0 when none was asked for).
pub fn command_id(ack: Option<u64>) -> u64 {
    ack.map_or(NO_ACK, |ack| ack.saturating_add(1).min(CONNECT_ID - 1))
}

impl Wire {
    /// A short name for logs and the `protocol` metric label.
    pub const fn name(self) -> &'static str {
        match self {
            Wire::Native(encoding) => encoding.name(),
            Wire::SocketIo(_) => "socketio",
        }
    }

    /// The frame of a successful reply to command `id`; `None` when nothing is sent (a
    /// Socket.IO event that asked for no ack).
    ///
    /// # Errors
    /// [`CodecError`] when `result` cannot be encoded.
    pub fn reply<R: Serialize>(self, id: u64, result: &R) -> Result<Option<WireFrame>, CodecError> {
        match self {
            Wire::Native(encoding) => {
                let bytes = codec::encode(encoding, &Reply { id, result: Some(result), error: None })?;
                Ok(Some(to_frame(encoding, &bytes)))
            }
            Wire::SocketIo(ns) => match id {
                NO_ACK => Ok(None),
                CONNECT_ID => {
                    let result = serde_json::to_value(result)?;
                    let sid = result.get("client").and_then(Value::as_str).unwrap_or_default();
                    Ok(Some(text(socketio::connect_frame(ns.name, sid, None))))
                }
                _ => Ok(Some(text(socketio::ack_frame(ns.name, id - 1, &[serde_json::to_value(result)?])))),
            },
        }
    }

    /// The frame of an error reply to command `id`. Socket.IO: a refused CONNECT is a
    /// `CONNECT_ERROR` whose `data` has the code; an event's error is its ack
    /// `[{"error": {code, message}}]`, or an `sb:error` event when it asked for no ack.
    ///
    /// # Errors
    /// [`CodecError`] when the reply cannot be encoded.
    pub fn error(self, id: u64, body: &ErrorBody) -> Result<WireFrame, CodecError> {
        match self {
            Wire::Native(encoding) => {
                let reply: Reply<()> = Reply { id, result: None, error: Some(body.clone()) };
                Ok(to_frame(encoding, &codec::encode(encoding, &reply)?))
            }
            Wire::SocketIo(ns) => {
                let error = serde_json::to_value(body)?;
                Ok(text(match id {
                    CONNECT_ID => {
                        let data = serde_json::json!({ "code": body.code });
                        socketio::connect_error_frame(ns.name, &body.message, Some(&data))
                    }
                    NO_ACK => event(ns, ERROR_EVENT, &error)?,
                    _ => socketio::ack_frame(ns.name, id - 1, &[serde_json::json!({ "error": error })]),
                }))
            }
        }
    }

    /// The frame of a push. Socket.IO: a publication is the event it names (`message`
    /// without one), the others are `sb:<kind>` events with the push's fields.
    ///
    /// # Errors
    /// [`CodecError`] when the push cannot be encoded (or names a reserved event).
    pub fn push<D: Serialize>(self, push: &Push<D>) -> Result<WireFrame, CodecError> {
        match self {
            Wire::Native(encoding) => Ok(to_frame(encoding, &codec::encode(encoding, push)?)),
            Wire::SocketIo(ns) => {
                let (name, body) = match push {
                    Push::Publication(publication) => {
                        let name = publication.event.as_deref().unwrap_or(MESSAGE_EVENT);
                        return Ok(text(event(ns, name, &publication.data)?));
                    }
                    Push::Join(body) => ("sb:join", serde_json::to_value(body)?),
                    Push::Leave(body) => ("sb:leave", serde_json::to_value(body)?),
                    Push::Subscribe(body) => ("sb:subscribe", serde_json::to_value(body)?),
                    Push::Unsubscribe(body) => ("sb:unsubscribe", serde_json::to_value(body)?),
                    Push::Refresh(body) => ("sb:refresh", serde_json::to_value(body)?),
                    Push::Disconnect(body) => ("sb:disconnect", serde_json::to_value(body)?),
                };
                Ok(text(event(ns, name, &body)?))
            }
        }
    }
}

/// The event of a publication that names none (Socket.IO's `send()` convention).
pub const MESSAGE_EVENT: &str = "message";

/// A text frame of a Socket.IO (Engine.IO) packet.
pub fn text(packet: impl AsRef<str>) -> WireFrame {
    WireFrame::new(OpCode::Text, packet.as_ref().as_bytes())
}

/// `42[<name>,<data>]` in `ns`.
fn event<D: Serialize + ?Sized>(ns: SioNamespace, name: &str, data: &D) -> Result<String, CodecError> {
    let data = serde_json::value::to_raw_value(data)?;
    socketio::event_frame(ns.name, name, &data, None)
        .map_err(|error| CodecError::Json(serde::ser::Error::custom(error)))
}

/// The Socket.IO error body of `code` (for frames built outside a reply).
pub fn error_body(code: Code, message: impl Into<String>) -> ErrorBody {
    ErrorBody::new(code, message.into())
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use switchboard_protocol::push::RefreshNeeded;

    use super::*;

    fn payload(frame: &WireFrame) -> String {
        String::from_utf8(frame.payload().to_vec()).expect("utf-8")
    }

    #[test]
    fn socketio_replies_are_acks_connects_or_nothing() {
        let wire = Wire::SocketIo(SioNamespace::new(1, "/admin"));
        assert_eq!(wire.reply(NO_ACK, &json!({"ok": 1})).expect("reply"), None);
        let ack = wire.reply(command_id(Some(7)), &json!({"ok": 1})).expect("reply").expect("frame");
        assert_eq!(payload(&ack), r#"43/admin,7[{"ok":1}]"#);
        let connect = wire.reply(CONNECT_ID, &json!({"client": "n1-4", "user": "u"})).expect("reply");
        assert_eq!(payload(&connect.expect("frame")), r#"40/admin,{"sid":"n1-4"}"#);
    }

    #[test]
    fn socketio_errors_name_their_code() {
        let wire = Wire::SocketIo(SioNamespace::ROOT);
        let body = error_body(Code::Unauthorized, "bad token");
        let refused = payload(&wire.error(CONNECT_ID, &body).expect("frame"));
        assert_eq!(refused, r#"44{"data":{"code":3501},"message":"bad token"}"#);
        let acked = payload(&wire.error(command_id(Some(0)), &body).expect("frame"));
        assert!(acked.starts_with(r#"430[{"error":{"code":"#), "{acked}");
        let unacked = payload(&wire.error(NO_ACK, &body).expect("frame"));
        assert!(unacked.starts_with(r#"42["sb:error",{"code":"#), "{unacked}");
    }

    #[test]
    fn socketio_pushes_are_events() {
        let wire = Wire::SocketIo(SioNamespace::ROOT);
        let push: Push<()> = Push::Refresh(RefreshNeeded { expires_at: 5 });
        assert_eq!(payload(&wire.push(&push).expect("frame")), r#"42["sb:refresh",{"expires_at":5}]"#);
        assert_eq!(command_id(None), NO_ACK);
        assert_eq!(command_id(Some(u64::MAX)), CONNECT_ID - 1);
    }
}
