//! Decoding a JSON command in one pass over its bytes.
//!
//! The generic path (a `serde_json::Value` of the whole frame, checked, then converted
//! into a [`Command`]) builds the payload's tree twice: profiled, a 1.3 kB `publish` took
//! 36 µs, of which the first tree alone was 17. Here the envelope is read with its
//! fields borrowed as raw JSON (a syntax check that allocates nothing), and `params` is
//! parsed once, straight into the method's own type. The answers are the generic path's:
//! the same codes for the same faults (the unit and property tests of `codec` hold both
//! encodings to that).

use serde::Deserialize;
use serde_json::{error::Category, value::RawValue};

use super::CommandDecodeError;
use crate::{command::CommandBody, Code, Command};

/// A command's top-level fields, unparsed. `null` reads as absent, as in the generic path
/// for `params` (for `id` and `method` the answer is the same either way).
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<&'a RawValue>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
}

/// [`super::decode_command`] for JSON.
pub(super) fn decode(frame: &[u8]) -> Result<Command, CommandDecodeError> {
    // A derived struct would also accept an array (positional fields): refuse it first.
    if frame.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'{') {
        return Err(match serde_json::from_slice::<serde::de::IgnoredAny>(frame) {
            Err(e) => CommandDecodeError::protocol(format!("malformed JSON: {e}")),
            Ok(_) => CommandDecodeError::protocol("a command must be an object/map"),
        });
    }
    let envelope: Envelope<'_> = serde_json::from_slice(frame)
        .map_err(|e| CommandDecodeError::protocol(format!("malformed JSON: {e}")))?;
    let id = match envelope.id {
        Some(id) => serde_json::from_str::<u64>(id.get())
            .map_err(|_| CommandDecodeError::protocol("`id` must be a non-negative integer"))?,
        None => return Err(CommandDecodeError::protocol("missing `id`")),
    };
    let answer = |code: Code, message: String| CommandDecodeError { id: Some(id), code, message };
    let params = match envelope.params {
        None => "{}",
        Some(params) if params.get().starts_with('{') => params.get(),
        // serde would accept a sequence for a struct (positional fields); the protocol
        // names every parameter, so a client relying on order is refused, not guessed at.
        Some(_) => return Err(answer(Code::BadRequest, "`params` must be an object/map".into())),
    };
    let method = match envelope.method {
        None => return Err(answer(Code::BadRequest, "missing `method`".into())),
        Some(method) => serde_json::from_str::<std::borrow::Cow<'_, str>>(method.get())
            .map_err(|_| answer(Code::BadRequest, "`method` must be a string".into()))?,
    };
    let Some(body) = body(&method, params) else {
        return Err(answer(Code::MethodNotFound, format!("unknown method `{method}`")));
    };
    let body = body.map_err(|e| match e.classify() {
        // The envelope's syntax check does not count nesting; the typed parse does, and a
        // frame nested too deep is a protocol error in both encodings.
        Category::Syntax | Category::Eof | Category::Io => {
            CommandDecodeError::protocol(format!("malformed JSON: {e}"))
        }
        Category::Data => answer(Code::BadRequest, format!("bad params: {e}")),
    })?;
    Ok(Command { id, body })
}

/// `params` parsed as the parameters of `method`; `None` when `method` is not one of
/// [`super::METHODS`].
fn body(method: &str, params: &str) -> Option<serde_json::Result<CommandBody>> {
    use serde_json::from_str;
    Some(match method {
        "connect" => from_str(params).map(CommandBody::Connect),
        "subscribe" => from_str(params).map(CommandBody::Subscribe),
        "unsubscribe" => from_str(params).map(CommandBody::Unsubscribe),
        "publish" => from_str(params).map(CommandBody::Publish),
        "presence" => from_str(params).map(CommandBody::Presence),
        "presence_stats" => from_str(params).map(CommandBody::PresenceStats),
        "history" => from_str(params).map(CommandBody::History),
        "refresh" => from_str(params).map(CommandBody::Refresh),
        "ack" => from_str(params).map(CommandBody::Ack),
        "ping" => from_str(params).map(CommandBody::Ping),
        "rpc" => from_str(params).map(CommandBody::Rpc),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    /// Every method of the protocol has a parameters type here (a method added to
    /// `METHODS` and not here would be refused on JSON connections only).
    #[test]
    fn every_method_is_known() {
        for method in super::super::METHODS {
            assert!(super::body(method, "{}").is_some(), "{method}");
        }
        assert!(super::body("fly", "{}").is_none());
    }
}
