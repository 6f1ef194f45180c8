//! Limits on publication payloads that every input path applies the same way.
//!
//! A payload that one path accepts must be deliverable in every wire format and readable
//! from history. The one property that differs between decoders is nesting depth:
//! `serde_json` refuses input nested deeper than 128 levels, MessagePack decoders allow
//! more, and Lua's cjson 1 000. A publication nested 200 levels deep used to be accepted
//! from MessagePack and then fail to re-encode for every other reader. So every path
//! measures `data`'s depth with [`json_depth`] on the JSON text it stores and refuses a
//! payload deeper than its configured limit, which can never exceed [`MAX_NESTING_CEILING`].
//! The Redis Functions library enforces the ceiling itself for services that call it
//! directly (see `docs/redis.md`).

/// Default maximum nesting depth of a publication's `data` (gateway and publisher crate).
pub const DEFAULT_MAX_NESTING_DEPTH: usize = 64;

/// The highest nesting depth any configuration may allow. Every JSON document the gateway
/// parses around a payload (a command frame, a Redis envelope around a body around the
/// payload) stays well within `serde_json`'s fixed limit of 128 levels.
pub const MAX_NESTING_CEILING: usize = 100;

/// The nesting depth of a JSON text: 0 for a scalar, 1 for `[]` or `{"a":1}`, 2 for
/// `[[1]]`, and so on. Brackets inside strings do not count. The text is assumed to be
/// valid JSON (a payload that was already parsed); on other input the result is
/// meaningless but the function still returns.
pub fn json_depth(text: &str) -> usize {
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in text.as_bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`data` is nested {depth} levels deep; at most {max} are allowed")]
pub struct TooDeep {
    /// The payload's depth.
    pub depth: usize,
    /// The limit it broke.
    pub max: usize,
}

/// Checks that the JSON text `data` is nested at most `max` levels deep.
///
/// # Errors
/// [`TooDeep`] when it is nested deeper.
pub fn check_depth(data: &str, max: usize) -> Result<(), TooDeep> {
    match json_depth(data) {
        depth if depth > max => Err(TooDeep { depth, max }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn measures_depth() {
        assert_eq!(json_depth("1"), 0);
        assert_eq!(json_depth(r#""[[[""#), 0, "brackets in strings do not count");
        assert_eq!(json_depth(r#"{"a":"\"[","b":[{}]}"#), 3);
        assert_eq!(json_depth(&nested(200)), 200);
        assert_eq!(json_depth("[[1],[2],[[3]]]"), 3);
    }

    #[test]
    fn checks_the_limit() {
        assert!(check_depth(&nested(64), 64).is_ok());
        assert_eq!(check_depth(&nested(65), 64), Err(TooDeep { depth: 65, max: 64 }));
    }

    #[test]
    fn the_ceiling_fits_inside_serde_jsons_limit() {
        // A body {"data": ...} inside an envelope {"b": ...} inside a command frame.
        let framed = format!(r#"{{"b":{{"data":{}}}}}"#, nested(MAX_NESTING_CEILING));
        assert!(serde_json::from_str::<serde_json::Value>(&framed).is_ok());
    }
}
