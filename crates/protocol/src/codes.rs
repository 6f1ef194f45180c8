//! The one table of error and disconnect codes.
//!
//! Every error reply, `disconnect` push and WebSocket close frame uses a [`Code`] from this
//! table, so a client needs exactly one `match` to decide what to do:
//!
//! * `100..=199`: errors answered to one command; the connection stays open.
//! * `1000..=2999`: application errors a backend answered to an `rpc` (or a hook) with its
//!   own code and message, passed through unchanged; the connection stays open.
//! * `3000..=3499`: the server closes the connection and the client **should reconnect**
//!   (after the advised delay, with backoff).
//! * `3500..=3999`: the server closes the connection and the client **must not reconnect**
//!   without changing something (token, code, configuration).
//!
//! The 3000–3999 range is the WebSocket range reserved for libraries and frameworks, so the
//! same number is used as the close code of the close frame.

use serde::{Deserialize, Serialize};

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $num:literal, $slug:literal;)*) => {
        /// An error or disconnect code; see the module docs for the ranges.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $($(#[$doc])* $name,)*
            /// An application error passed through from a backend (an `rpc` or a hook
            /// answered with its own code), always in [`Code::APPLICATION`].
            Application(u16),
        }

        impl Code {
            /// Every code, in table order.
            pub const ALL: &'static [Code] = &[$(Code::$name,)*];

            /// The numeric value sent on the wire.
            pub const fn as_u16(self) -> u16 {
                match self { $(Code::$name => $num,)* Code::Application(value) => value }
            }

            /// A short snake_case name, used in logs and metric labels.
            pub const fn slug(self) -> &'static str {
                match self { $(Code::$name => $slug,)* Code::Application(_) => "application" }
            }

            /// The code with this numeric value, if it is in the table.
            pub fn from_u16(value: u16) -> Option<Code> {
                match value {
                    $($num => Some(Code::$name),)*
                    1000..=2999 => Some(Code::Application(value)),
                    _ => None,
                }
            }
        }
    };
}

codes! {
    /// Unexpected server-side failure while handling a command; retrying may succeed.
    Internal = 100, "internal";
    /// The command needs a connected (authenticated) session: send `connect` first.
    NotConnected = 101, "not_connected";
    /// `connect` was sent twice on one connection.
    AlreadyConnected = 102, "already_connected";
    /// The frame decoded but a field is missing, mistyped or out of range.
    BadRequest = 103, "bad_request";
    /// The `method` is not one this server knows.
    MethodNotFound = 104, "method_not_found";
    /// The channel name breaks the grammar or the maximum length.
    InvalidChannel = 105, "invalid_channel";
    /// The channel's namespace is not configured.
    UnknownNamespace = 106, "unknown_namespace";
    /// The user is not allowed to do this in this channel (including client publishing in a
    /// namespace that does not allow it).
    PermissionDenied = 107, "permission_denied";
    /// The connection is already subscribed to this channel.
    AlreadySubscribed = 108, "already_subscribed";
    /// The connection is not subscribed to this channel.
    NotSubscribed = 109, "not_subscribed";
    /// A configured per-connection limit (such as the number of subscriptions) is reached.
    LimitExceeded = 110, "limit_exceeded";
    /// Too many commands: the per-connection rate limit was hit; retry later.
    TooManyRequests = 111, "too_many_requests";
    /// The feature (presence or history) is disabled for this namespace.
    NotAvailable = 112, "not_available";
    /// The token (connection, refresh or subscription token) is invalid.
    InvalidToken = 113, "invalid_token";
    /// The token has expired.
    TokenExpired = 114, "token_expired";
    /// The broker (e.g. Redis) is temporarily unreachable; retry later.
    Unavailable = 115, "unavailable";
    /// The payload is larger than the configured limit.
    PayloadTooLarge = 116, "payload_too_large";
    /// A `history` position cannot be served exactly (other epoch, or trimmed).
    UnrecoverablePosition = 117, "unrecoverable_position";
    /// The backend did not answer an `rpc` (or a hook) before the deadline. Retrying may
    /// succeed; send the same idempotency key so that the backend can tell a retry.
    Timeout = 118, "timeout";
    /// No backend route serves this `rpc` method.
    NoRoute = 119, "no_route";

    /// The node is shutting down or restarting; reconnect after the advised delay.
    Shutdown = 3000, "shutdown";
    /// The client did not read its messages fast enough and its queue overflowed.
    SlowConsumer = 3001, "slow_consumer";
    /// No pong (or any frame) arrived within the heartbeat timeout.
    HeartbeatTimeout = 3002, "heartbeat_timeout";
    /// `connect` did not arrive within the authentication timeout.
    AuthTimeout = 3003, "auth_timeout";
    /// The connection token expired and was not refreshed in time: reconnect with a new one.
    ConnectionExpired = 3004, "connection_expired";
    /// The node is at its connection limit; another node may accept the connection.
    NodeFull = 3005, "node_full";
    /// An internal server error ended the connection.
    ServerError = 3006, "server_error";

    /// The frame could not be decoded (malformed JSON/MessagePack, wrong frame type).
    ProtocolError = 3500, "protocol_error";
    /// The connection token is invalid, forged, wrongly signed or of the wrong algorithm.
    Unauthorized = 3501, "unauthorized";
    /// A frame exceeded the configured maximum message size.
    MessageTooLarge = 3502, "message_too_large";
    /// The user has too many connections open.
    TooManyConnections = 3503, "too_many_connections";
    /// An operator disconnected this user or connection.
    ForceDisconnect = 3504, "force_disconnect";
}

impl Code {
    /// The range of [`Code::Application`]: codes a backend chooses for its own errors.
    pub const APPLICATION: std::ops::RangeInclusive<u16> = 1000..=2999;

    /// Whether this code closes the connection (as opposed to failing one command).
    pub const fn is_disconnect(self) -> bool {
        self.as_u16() >= 3000
    }

    /// Whether a client should reconnect after a disconnect with this code.
    pub const fn should_reconnect(self) -> bool {
        let value = self.as_u16();
        value >= 3000 && value < 3500
    }

    /// Whether a command that failed with this code may succeed if retried unchanged.
    pub const fn is_temporary(self) -> bool {
        matches!(self, Code::Internal | Code::TooManyRequests | Code::Unavailable | Code::Timeout)
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u16(self.as_u16())
    }
}

impl<'de> Deserialize<'de> for Code {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = u16::deserialize(deserializer)?;
        Code::from_u16(value).ok_or_else(|| serde::de::Error::custom(format!("unknown code {value}")))
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.slug(), self.as_u16())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            assert!(seen.insert(code.as_u16()), "duplicate {code}");
            assert_eq!(Code::from_u16(code.as_u16()), Some(*code));
        }
    }

    #[test]
    fn ranges_classify_reconnect() {
        assert!(!Code::BadRequest.is_disconnect());
        assert!(Code::SlowConsumer.should_reconnect());
        assert!(Code::Shutdown.should_reconnect());
        assert!(!Code::Unauthorized.should_reconnect());
        assert!(Code::Unauthorized.is_disconnect());
        assert!(Code::Unavailable.is_temporary());
        assert!(!Code::PermissionDenied.is_temporary());
        assert!(Code::Timeout.is_temporary());
    }

    #[test]
    fn application_codes_pass_through_in_their_range_only() {
        assert_eq!(Code::from_u16(1000), Some(Code::Application(1000)));
        assert_eq!(Code::from_u16(2999).map(Code::as_u16), Some(2999));
        assert_eq!(Code::from_u16(999), None);
        assert_eq!(Code::from_u16(3007), None);
        assert!(!Code::Application(1042).is_disconnect());
        assert!(!Code::Application(1042).is_temporary());
        assert_eq!(Code::Application(1042).slug(), "application");
    }
}
