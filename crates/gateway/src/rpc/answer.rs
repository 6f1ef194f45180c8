//! A backend's answer to an RPC, the same on every route: `{"result": <any JSON>}` or
//! `{"error": {"code": <1000..=2999>, "message": "..."}}`, exactly one of the two.
//!
//! Anything else is the backend's bug: the caller gets 100 `internal` saying the reply was
//! malformed, the node logs what was wrong, and nothing else happens.

use serde_json::Value;
use switchboard_protocol::Code;

use super::RpcError;

/// Reads an answer into the result to return or the error to pass through.
///
/// # Errors
/// [`RpcError::Backend`] for the backend's own error, [`RpcError::BadReply`] for anything
/// that is not an answer.
pub fn parse(text: &str) -> Result<Value, RpcError> {
    let bad = |why: &str| Err(RpcError::BadReply(why.to_string()));
    let Ok(Value::Object(mut answer)) = serde_json::from_str::<Value>(text) else {
        return bad("not a JSON object");
    };
    if answer.len() != 1 {
        return bad("expected exactly one of `result` and `error`");
    }
    if let Some(result) = answer.remove("result") {
        return Ok(result);
    }
    let Some(Value::Object(error)) = answer.remove("error") else {
        return bad("expected exactly one of `result` and `error`, `error` being an object");
    };
    let code = error.get("code").and_then(Value::as_u64).and_then(|c| u16::try_from(c).ok());
    let Some(code) = code.filter(|c| Code::APPLICATION.contains(c)) else {
        return bad("`error.code` must be an integer in 1000..=2999");
    };
    let Some(Value::String(message)) = error.get("message") else {
        return bad("`error.message` must be a string");
    };
    Err(RpcError::Backend { code: Code::Application(code), message: message.clone() })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn results_and_errors() {
        assert_eq!(parse(r#"{"result":{"tally":3}}"#).expect("result"), json!({"tally": 3}));
        assert_eq!(parse(r#"{"result":null}"#).expect("null result"), Value::Null);
        match parse(r#"{"error":{"code":1403,"message":"already voted"}}"#) {
            Err(RpcError::Backend { code, message }) => {
                assert_eq!((code.as_u16(), message.as_str()), (1403, "already voted"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_answers_are_bad_replies() {
        for text in [
            "nope",
            "[1]",
            "{}",
            r#"{"result":1,"error":{}}"#,
            r#"{"error":"x"}"#,
            r#"{"error":{"code":404,"message":"x"}}"#,
            r#"{"error":{"code":1404}}"#,
            r#"{"error":{"code":"1404","message":"x"}}"#,
            r#"{"data":1}"#,
        ] {
            assert!(matches!(parse(text), Err(RpcError::BadReply(_))), "{text}");
        }
    }
}
