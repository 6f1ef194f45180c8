//! The channel name grammar, shared by the gateway and publishers.
//!
//! A channel is `namespace:rest` or a bare name in the default namespace `""`. Names use
//! ASCII letters, digits and `_-.:@=,/`, so they are safe as Redis key parts (no braces:
//! the whole name is a Redis Cluster hash tag), in URLs and in logs.

/// Characters allowed in channel names besides ASCII letters and digits.
pub const ALLOWED_PUNCTUATION: &str = "_-.:@=,/";

/// The default maximum channel name length, in bytes.
pub const DEFAULT_MAX_LENGTH: usize = 255;

/// The namespace of personal channels `user:<id>`.
pub const PERSONAL_NAMESPACE: &str = "user";

/// Checks `channel` against the grammar and returns its namespace.
///
/// # Errors
/// A short explanation of what is wrong with the name.
pub fn namespace_of(channel: &str, max_length: usize) -> Result<&str, &'static str> {
    if channel.is_empty() {
        return Err("empty");
    }
    if channel.len() > max_length {
        return Err("too long");
    }
    if !channel.bytes().all(|b| b.is_ascii_alphanumeric() || ALLOWED_PUNCTUATION.as_bytes().contains(&b)) {
        return Err("only ASCII letters, digits and _-.:@=,/ are allowed");
    }
    if channel.ends_with(':') {
        return Err("nothing after the namespace");
    }
    if channel.starts_with(':') {
        return Err("empty namespace before `:`");
    }
    Ok(channel.split_once(':').map_or("", |(namespace, _)| namespace))
}

/// The personal channel of `user`.
pub fn personal(user: &str) -> String {
    format!("{PERSONAL_NAMESPACE}:{user}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar() {
        assert_eq!(namespace_of("news", 32), Ok(""));
        assert_eq!(namespace_of("chat:room-1", 32), Ok("chat"));
        assert_eq!(namespace_of("dao:proposal:7", 32), Ok("dao"));
        for bad in ["", "a b", "chat:", ":news", "x{y}", "é"] {
            assert!(namespace_of(bad, 32).is_err(), "{bad}");
        }
        assert!(namespace_of(&"x".repeat(33), 32).is_err());
    }
}
