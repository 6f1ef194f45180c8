//! What travels through Redis: the publication body stored in streams and the envelopes
//! published on a channel's live pub/sub channel. `docs/redis.md` specifies both.
//!
//! * Body (stream field `b`, and inside publication envelopes): a JSON object
//!   `{"data": <any JSON>, "event": "<name>"?, "from": <client info>?}`.
//! * Live envelopes:
//!   - `{"o": offset, "e": "epoch", "t": ts_ms, "b": body}`: a stored publication (written
//!     only by the `sb_publish` function);
//!   - `{"t": ts_ms, "b": body}`: an ephemeral publication;
//!   - `{"j": client info}` / `{"l": client info}`: join / leave.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use switchboard_protocol::ClientInfo;

use crate::broker::{ChannelEvent, Control, Publication};

/// A publication body as decoded.
#[derive(Debug, Deserialize)]
struct Body<'a> {
    #[serde(default, borrow)]
    event: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default)]
    from: Option<ClientInfo>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default)]
    o: Option<u64>,
    #[serde(default, borrow)]
    e: Option<&'a str>,
    #[serde(default)]
    t: Option<u64>,
    #[serde(default, borrow)]
    b: Option<&'a RawValue>,
    #[serde(default)]
    j: Option<ClientInfo>,
    #[serde(default)]
    l: Option<ClientInfo>,
    #[serde(default)]
    c: Option<Control>,
}

/// Why a live message could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Not JSON of the expected shape.
    #[error("malformed live message: {0}")]
    Json(#[from] serde_json::Error),
    /// None of the known envelope kinds.
    #[error("unknown live message kind")]
    Unknown,
}

/// Encodes a body.
///
/// # Errors
/// Never in practice (all parts are valid JSON already).
pub fn body(
    event: Option<&str>,
    data: &RawValue,
    from: Option<&ClientInfo>,
) -> Result<String, serde_json::Error> {
    switchboard_protocol::redis::Body { event, data, from }.to_json()
}

/// An ephemeral publication envelope.
///
/// # Errors
/// Never in practice.
pub fn ephemeral(ts: u64, body: &str) -> Result<String, serde_json::Error> {
    let body: &RawValue = serde_json::from_str(body)?;
    serde_json::to_string(&serde_json::json!({"t": ts, "b": body}))
}

/// A join or leave envelope.
///
/// # Errors
/// Never in practice.
pub fn presence_event(join: bool, client: &ClientInfo) -> Result<String, serde_json::Error> {
    let key = if join { "j" } else { "l" };
    serde_json::to_string(&serde_json::json!({ key: client }))
}

/// An operator command envelope, published on a user's personal live channel.
///
/// # Errors
/// Never in practice.
pub fn control(control: &Control) -> Result<String, serde_json::Error> {
    serde_json::to_string(&serde_json::json!({ "c": control }))
}

/// Decodes a stored or ephemeral publication from its parts.
///
/// # Errors
/// [`WireError`] when the body is not a valid body object.
pub fn publication(
    channel: &Arc<str>,
    position: Option<(u64, Arc<str>)>,
    ts: u64,
    body: &str,
) -> Result<Publication, WireError> {
    let body: Body<'_> = serde_json::from_str(body)?;
    let (offset, epoch) = position.unzip();
    Ok(Publication {
        channel: channel.clone(),
        offset,
        epoch,
        event: body.event.map(|e| e.into_owned()),
        data: body.data.to_owned(),
        ts,
        from: body.from,
    })
}

/// Decodes a live message of `channel`.
///
/// # Errors
/// [`WireError`] for malformed or unknown messages.
pub fn decode_live(channel: &Arc<str>, message: &[u8]) -> Result<ChannelEvent, WireError> {
    let envelope: Envelope<'_> = serde_json::from_slice(message)?;
    match envelope {
        Envelope { j: Some(client), .. } => Ok(ChannelEvent::Join(client)),
        Envelope { l: Some(client), .. } => Ok(ChannelEvent::Leave(client)),
        Envelope { c: Some(control), .. } => Ok(ChannelEvent::Control(control)),
        Envelope { b: Some(body), o, e, t, .. } => {
            let position = match (o, e) {
                (Some(offset), Some(epoch)) => Some((offset, Arc::from(epoch))),
                _ => None,
            };
            let ts = t.unwrap_or_else(crate::broker::unix_millis);
            Ok(ChannelEvent::Publication(publication(channel, position, ts, body.get())?))
        }
        _ => Err(WireError::Unknown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_envelope() {
        let channel: Arc<str> = Arc::from("news");
        let stored = br#"{"o":7,"e":"ab","t":5,"b":{"data":{"x":1},"event":"tally"}}"#;
        match decode_live(&channel, stored).expect("stored") {
            ChannelEvent::Publication(p) => {
                assert_eq!((p.offset, p.epoch.as_deref(), p.ts), (Some(7), Some("ab"), 5));
                assert_eq!(p.data.get(), r#"{"x":1}"#);
                assert_eq!(p.event.as_deref(), Some("tally"));
            }
            other => panic!("{other:?}"),
        }
        let body = body(None, &RawValue::from_string("[1]".into()).expect("raw"), None).expect("body");
        let live = ephemeral(9, &body).expect("ephemeral");
        assert!(
            matches!(decode_live(&channel, live.as_bytes()), Ok(ChannelEvent::Publication(p)) if p.offset.is_none())
        );
        let client = ClientInfo { client: "c".into(), user: "u".into(), info: None };
        let join = presence_event(true, &client).expect("join");
        assert!(matches!(decode_live(&channel, join.as_bytes()), Ok(ChannelEvent::Join(c)) if c.user == "u"));
        assert!(decode_live(&channel, b"{}").is_err());
        assert!(decode_live(&channel, br#"{"b":{"nodata":1}}"#).is_err());
    }
}
