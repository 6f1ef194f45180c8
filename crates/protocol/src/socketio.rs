//! Engine.IO v4 and Socket.IO v5 framing, for the Socket.IO compatibility endpoint
//! (issue 16; research in `docs/design/socketio-v4-research.md`). Pure functions, no I/O:
//! the gateway owns sessions, transports and delivery, so that a publication can be
//! encoded once as a Socket.IO event and its bytes shared by every Socket.IO subscriber,
//! as for the native protocol.
//!
//! Engine.IO packets are `<type digit><data>`; over HTTP long-polling several are joined
//! with `\x1e`. Socket.IO packets ride in Engine.IO `message` packets as
//! `<type>[<attachments>-][<namespace>,][<ack id>][<JSON>]`, the namespace only when it is
//! not `/`. Binary attachments are not supported: such packets are refused with
//! [`SocketIoError::Binary`].

use serde_json::{value::RawValue, Value};

/// The Engine.IO packet separator in a long-polling payload.
pub const POLLING_SEPARATOR: char = '\u{1e}';

/// Event names a Socket.IO client refuses (it throws and closes): never send one.
pub const RESERVED_EVENTS: [&str; 6] =
    ["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"];

/// Why a frame is not a valid Engine.IO or Socket.IO packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SocketIoError {
    /// Empty, or an unknown packet type.
    #[error("unknown {layer} packet type `{found}`")]
    UnknownType {
        /// `Engine.IO` or `Socket.IO`.
        layer: &'static str,
        /// What was found.
        found: String,
    },
    /// The packet's payload is not what its type requires.
    #[error("invalid {kind} packet: {why}")]
    InvalidPayload {
        /// The packet type.
        kind: &'static str,
        /// What is wrong.
        why: String,
    },
    /// Binary attachments (`BINARY_EVENT`, `BINARY_ACK`) are not supported.
    #[error("binary attachments are not supported")]
    Binary,
}

/// An Engine.IO v4 packet (text form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnginePacket<'a> {
    /// `0` + handshake JSON (server to client).
    Open(&'a str),
    /// `1`: close the session.
    Close,
    /// `2`, or `2probe` during the WebSocket upgrade.
    Ping(&'a str),
    /// `3`, or `3probe`.
    Pong(&'a str),
    /// `4` + data: a Socket.IO packet.
    Message(&'a str),
    /// `5`: the client switched to the WebSocket.
    Upgrade,
    /// `6`: nothing (ends a held polling request during an upgrade).
    Noop,
}

impl<'a> EnginePacket<'a> {
    /// Decodes one packet.
    ///
    /// # Errors
    /// [`SocketIoError::UnknownType`] for an empty frame or an unknown type digit, and
    /// [`SocketIoError::Binary`] for a `b<base64>` packet.
    pub fn decode(frame: &'a str) -> Result<EnginePacket<'a>, SocketIoError> {
        let mut chars = frame.chars();
        let kind = chars.next();
        let data = chars.as_str();
        match kind {
            Some('0') => Ok(EnginePacket::Open(data)),
            Some('1') => Ok(EnginePacket::Close),
            Some('2') => Ok(EnginePacket::Ping(data)),
            Some('3') => Ok(EnginePacket::Pong(data)),
            Some('4') => Ok(EnginePacket::Message(data)),
            Some('5') => Ok(EnginePacket::Upgrade),
            Some('6') => Ok(EnginePacket::Noop),
            Some('b') => Err(SocketIoError::Binary),
            other => Err(SocketIoError::UnknownType {
                layer: "Engine.IO",
                found: other.map(String::from).unwrap_or_default(),
            }),
        }
    }

    /// The packet's text form.
    pub fn encode(&self) -> String {
        let (kind, data) = match self {
            EnginePacket::Open(data) => ('0', *data),
            EnginePacket::Close => ('1', ""),
            EnginePacket::Ping(data) => ('2', *data),
            EnginePacket::Pong(data) => ('3', *data),
            EnginePacket::Message(data) => ('4', *data),
            EnginePacket::Upgrade => ('5', ""),
            EnginePacket::Noop => ('6', ""),
        };
        let mut text = String::with_capacity(1 + data.len());
        text.push(kind);
        text.push_str(data);
        text
    }
}

/// Splits a long-polling request body into its packets.
pub fn split_payload(body: &str) -> impl Iterator<Item = &str> {
    body.split(POLLING_SEPARATOR)
}

/// Joins encoded packets into a long-polling response body.
pub fn join_payload<'a>(packets: impl IntoIterator<Item = &'a str>) -> String {
    let mut body = String::new();
    for (n, packet) in packets.into_iter().enumerate() {
        if n > 0 {
            body.push(POLLING_SEPARATOR);
        }
        body.push_str(packet);
    }
    body
}

/// The Socket.IO packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// `0`: connect to a namespace (client: with its `auth` object).
    Connect,
    /// `1`: leave a namespace.
    Disconnect,
    /// `2`: an event, `["name", args…]`.
    Event,
    /// `3`: the answer to an event that asked for one.
    Ack,
    /// `4`: a refused connect, `{"message": …}`.
    ConnectError,
}

impl SocketKind {
    fn name(self) -> &'static str {
        match self {
            SocketKind::Connect => "CONNECT",
            SocketKind::Disconnect => "DISCONNECT",
            SocketKind::Event => "EVENT",
            SocketKind::Ack => "ACK",
            SocketKind::ConnectError => "CONNECT_ERROR",
        }
    }
}

/// A decoded Socket.IO packet (the payload of an Engine.IO `message`).
#[derive(Debug, Clone, PartialEq)]
pub struct SocketPacket<'a> {
    /// Its type.
    pub kind: SocketKind,
    /// Its namespace, `/` when none was given.
    pub namespace: &'a str,
    /// The acknowledgement id of an event that asks for one, or of an ack.
    pub ack_id: Option<u64>,
    /// The JSON payload, checked for the type.
    pub data: Option<Value>,
}

impl<'a> SocketPacket<'a> {
    /// Decodes and checks a Socket.IO packet as socket.io-parser does: the payload must
    /// suit the type (CONNECT an object or nothing, DISCONNECT nothing, EVENT a non-empty
    /// array starting with a string or number name that is not reserved, ACK an array,
    /// CONNECT_ERROR a string or an object).
    ///
    /// # Errors
    /// [`SocketIoError`] saying what is wrong; binary types are [`SocketIoError::Binary`].
    pub fn decode(text: &'a str) -> Result<SocketPacket<'a>, SocketIoError> {
        let mut rest = text;
        let kind = match rest.as_bytes().first() {
            Some(b'0') => SocketKind::Connect,
            Some(b'1') => SocketKind::Disconnect,
            Some(b'2') => SocketKind::Event,
            Some(b'3') => SocketKind::Ack,
            Some(b'4') => SocketKind::ConnectError,
            Some(b'5' | b'6') => return Err(SocketIoError::Binary),
            _ => {
                let found = rest.chars().next().map(String::from).unwrap_or_default();
                return Err(SocketIoError::UnknownType { layer: "Socket.IO", found });
            }
        };
        rest = &rest[1..];
        let mut namespace = "/";
        if rest.starts_with('/') {
            let end = rest.find(',').unwrap_or(rest.len());
            namespace = &rest[..end];
            rest = rest.get(end + 1..).unwrap_or("");
        }
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let ack_id = match digits {
            0 => None,
            _ => Some(rest[..digits].parse::<u64>().map_err(|_| invalid(kind, "ack id out of range"))?),
        };
        rest = &rest[digits..];
        let data = if rest.is_empty() {
            None
        } else {
            Some(
                serde_json::from_str::<Value>(rest)
                    .map_err(|error| invalid(kind, &format!("payload: {error}")))?,
            )
        };
        check_payload(kind, data.as_ref())?;
        Ok(SocketPacket { kind, namespace, ack_id, data })
    }
}

/// What the header of a binary packet (`5<n>-[<nsp>,][<ack id>]…` or `6…`) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BinaryHeader {
    /// How many binary attachment frames follow the packet.
    pub attachments: u32,
    /// The event's ack id, when it asked for one.
    pub ack_id: Option<u64>,
}

/// Reads the header of a binary packet, so that a server refusing attachments can answer
/// its ack and skip its attachment frames. A malformed header reads as no attachments.
pub fn binary_header(text: &str) -> BinaryHeader {
    let rest = text.get(1..).unwrap_or("");
    let Some((count, mut rest)) = rest.split_once('-') else {
        return BinaryHeader::default();
    };
    let attachments = count.parse().unwrap_or(0);
    if rest.starts_with('/') {
        rest = rest.split_once(',').map_or("", |(_, after)| after);
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    BinaryHeader { attachments, ack_id: rest[..digits].parse().ok() }
}

fn check_payload(kind: SocketKind, data: Option<&Value>) -> Result<(), SocketIoError> {
    let ok = match (kind, data) {
        (SocketKind::Connect, None | Some(Value::Object(_))) => true,
        (SocketKind::Disconnect, None) => true,
        (SocketKind::Ack, Some(Value::Array(_))) => true,
        (SocketKind::ConnectError, Some(Value::String(_) | Value::Object(_))) => true,
        (SocketKind::Event, Some(Value::Array(items))) => match items.first() {
            Some(Value::String(name)) => !RESERVED_EVENTS.contains(&name.as_str()),
            Some(Value::Number(_)) => true,
            _ => false,
        },
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        let why = match kind {
            SocketKind::Connect => "the payload must be an object or absent",
            SocketKind::Disconnect => "there must be no payload",
            SocketKind::Event => {
                "the payload must be an array starting with an event name that is not reserved"
            }
            SocketKind::Ack => "the payload must be an array",
            SocketKind::ConnectError => "the payload must be a string or an object",
        };
        Err(invalid(kind, why))
    }
}

fn invalid(kind: SocketKind, why: &str) -> SocketIoError {
    SocketIoError::InvalidPayload { kind: kind.name(), why: why.to_string() }
}

/// `<namespace>,` when the namespace is not `/`, else nothing.
fn namespace_prefix(namespace: &str) -> String {
    if namespace == "/" {
        String::new()
    } else {
        format!("{namespace},")
    }
}

/// The Engine.IO `message` frame of an event: `42[<name>,<data>(,"<offset>")]`, sent
/// as is to every subscriber (with `offset`, a client that does connection state
/// recovery remembers it; python-socketio handlers would see it as an extra argument).
///
/// # Errors
/// A reserved event name (clients would throw and close).
pub fn event_frame(
    namespace: &str,
    name: &str,
    data: &RawValue,
    offset: Option<&str>,
) -> Result<String, SocketIoError> {
    if RESERVED_EVENTS.contains(&name) {
        return Err(invalid(SocketKind::Event, &format!("`{name}` is a reserved event name")));
    }
    let name = Value::String(name.to_string());
    let mut frame = format!("42{}[{name},{}", namespace_prefix(namespace), data.get());
    if let Some(offset) = offset {
        frame.push(',');
        frame.push_str(&Value::String(offset.to_string()).to_string());
    }
    frame.push(']');
    Ok(frame)
}

/// The Engine.IO `message` frame answering event `ack_id`: `43<id>[<args>]`.
pub fn ack_frame(namespace: &str, ack_id: u64, args: &[Value]) -> String {
    format!("43{}{ack_id}{}", namespace_prefix(namespace), Value::Array(args.to_vec()))
}

/// The frame accepting a CONNECT: `40{"sid":…}` (with `"pid"` when the session can be
/// recovered later).
pub fn connect_frame(namespace: &str, sid: &str, pid: Option<&str>) -> String {
    let mut reply = serde_json::json!({ "sid": sid });
    if let Some(pid) = pid {
        reply["pid"] = Value::String(pid.to_string());
    }
    format!("40{}{reply}", namespace_prefix(namespace))
}

/// The frame leaving a namespace (`41`): a Socket.IO client that gets it does not
/// reconnect ("io server disconnect").
pub fn disconnect_frame(namespace: &str) -> String {
    format!("41{}", namespace_prefix(namespace))
}

/// The frame refusing a CONNECT: `44{"message":…}`, with `data` when given.
pub fn connect_error_frame(namespace: &str, message: &str, data: Option<&Value>) -> String {
    let mut error = serde_json::json!({ "message": message });
    if let Some(data) = data {
        error["data"] = data.clone();
    }
    format!("44{}{error}", namespace_prefix(namespace))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn engine_packets_round_trip_and_polling_payloads_split() {
        for frame in ["0{\"sid\":\"n1-x\"}", "1", "2", "2probe", "3probe", "4hello", "5", "6"] {
            assert_eq!(EnginePacket::decode(frame).expect("valid").encode(), frame);
        }
        assert_eq!(EnginePacket::decode("2probe"), Ok(EnginePacket::Ping("probe")));
        assert_eq!(EnginePacket::decode("bAQID"), Err(SocketIoError::Binary));
        assert!(matches!(EnginePacket::decode(""), Err(SocketIoError::UnknownType { .. })));
        assert!(matches!(EnginePacket::decode("9"), Err(SocketIoError::UnknownType { .. })));
        let body = join_payload(["4hello", "2", "4world"]);
        assert_eq!(body, "4hello\u{1e}2\u{1e}4world");
        assert_eq!(split_payload(&body).collect::<Vec<_>>(), ["4hello", "2", "4world"]);
    }

    #[test]
    fn socket_packets_decode_like_socket_io_parser() {
        let connect =
            SocketPacket::decode("0{\"token\":\"t\",\"pid\":\"p\",\"offset\":\"o\"}").expect("valid");
        assert_eq!((connect.kind, connect.namespace), (SocketKind::Connect, "/"));
        assert_eq!(connect.data, Some(json!({"token": "t", "pid": "p", "offset": "o"})));
        assert_eq!(SocketPacket::decode("0").expect("no auth").data, None);
        let admin = SocketPacket::decode("0/admin,").expect("namespace, no payload");
        assert_eq!((admin.namespace, admin.data), ("/admin", None));
        let event = SocketPacket::decode("2/admin,12[\"vote\",{\"choice\":\"for\"}]").expect("valid");
        assert_eq!((event.kind, event.namespace, event.ack_id), (SocketKind::Event, "/admin", Some(12)));
        assert_eq!(event.data, Some(json!(["vote", {"choice": "for"}])));
        let ack = SocketPacket::decode("312[\"ok\"]").expect("valid");
        assert_eq!((ack.kind, ack.ack_id), (SocketKind::Ack, Some(12)));
        assert_eq!(SocketPacket::decode("1").expect("valid").kind, SocketKind::Disconnect);
    }

    #[test]
    fn malformed_socket_packets_are_refused_with_a_reason() {
        for (frame, expected) in [
            ("0abc", "payload"),
            ("2{}", "array starting with an event name"),
            ("2[]", "array starting with an event name"),
            ("2[\"connect\"]", "not reserved"),
            ("2abc[\"x\"]", "payload"),
            ("3{}", "must be an array"),
            ("1{}", "no payload"),
            ("4[1]", "string or an object"),
            ("099999999999999999999999[]", "ack id"),
        ] {
            let error = SocketPacket::decode(frame).expect_err(frame).to_string();
            assert!(error.contains(expected), "{frame}: {error}");
        }
        assert_eq!(
            SocketPacket::decode("51-[\"x\",{\"_placeholder\":true,\"num\":0}]"),
            Err(SocketIoError::Binary)
        );
        assert!(matches!(SocketPacket::decode("7"), Err(SocketIoError::UnknownType { .. })));
        assert!(matches!(SocketPacket::decode(""), Err(SocketIoError::UnknownType { .. })));
    }

    #[test]
    fn frames_are_encoded_as_clients_expect() {
        let data = RawValue::from_string("{\"for\":3}".into()).expect("json");
        assert_eq!(event_frame("/", "tally", &data, None).expect("ok"), "42[\"tally\",{\"for\":3}]");
        assert_eq!(
            event_frame("/admin", "tally", &data, Some("c/e/7")).expect("ok"),
            "42/admin,[\"tally\",{\"for\":3},\"c/e/7\"]"
        );
        assert!(event_frame("/", "disconnect", &data, None).is_err());
        assert_eq!(ack_frame("/", 5, &[json!("pong")]), "435[\"pong\"]");
        assert_eq!(connect_frame("/", "s1", None), "40{\"sid\":\"s1\"}");
        assert_eq!(connect_frame("/admin", "s1", Some("p1")), "40/admin,{\"pid\":\"p1\",\"sid\":\"s1\"}");
        assert_eq!(connect_error_frame("/", "Not authorized", None), "44{\"message\":\"Not authorized\"}");
        // Every encoded frame decodes again (the Socket.IO part after the Engine.IO `4`).
        for frame in [event_frame("/", "tally", &data, Some("o")).expect("ok"), ack_frame("/x", 1, &[])] {
            SocketPacket::decode(&frame[1..]).expect("round trip");
        }
    }

    #[test]
    fn binary_headers_give_attachments_and_ack() {
        let header = binary_header(r#"52-/admin,7["upload",{"_placeholder":true,"num":0}]"#);
        assert_eq!(header, BinaryHeader { attachments: 2, ack_id: Some(7) });
        assert_eq!(binary_header(r#"51-["x"]"#), BinaryHeader { attachments: 1, ack_id: None });
        assert_eq!(binary_header("5garbage"), BinaryHeader::default());
    }
}
