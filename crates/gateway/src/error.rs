//! Errors of command handling, and their mapping to protocol codes in one place.

use switchboard_protocol::{codec::CodecError, Code};

use crate::{auth::AuthError, broker::BrokerError, channel::ChannelError, rpc::RpcError};

/// Why a command failed. Each variant maps to exactly one protocol [`Code`].
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Bad channel name or unknown namespace.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// Token refused.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Broker failure.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// A frame could not be encoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A backend hook denied the command, failed or timed out.
    #[error(transparent)]
    Hook(#[from] RpcError),
    /// A rule refused the command; the code says which rule.
    #[error("{message}")]
    Refused {
        /// The protocol code.
        code: Code,
        /// Human-readable explanation.
        message: String,
    },
}

impl CommandError {
    /// A refusal with `code`.
    pub fn refused(code: Code, message: impl Into<String>) -> CommandError {
        CommandError::Refused { code, message: message.into() }
    }

    /// The protocol code of this error.
    pub fn code(&self) -> Code {
        match self {
            CommandError::Channel(ChannelError::Invalid { .. }) => Code::InvalidChannel,
            CommandError::Channel(ChannelError::UnknownNamespace(_)) => Code::UnknownNamespace,
            CommandError::Auth(AuthError::Expired) => Code::TokenExpired,
            CommandError::Auth(_) => Code::InvalidToken,
            CommandError::Broker(BrokerError::Unavailable(_)) => Code::Unavailable,
            CommandError::Broker(BrokerError::PositionLost { .. }) => Code::UnrecoverablePosition,
            CommandError::Codec(_) => Code::Internal,
            CommandError::Hook(error) => error.code(),
            CommandError::Refused { code, .. } => *code,
        }
    }
}
