//! The `rpc` command. Each call runs in its own task, so that a backend taking seconds
//! never holds up the connection's other commands (or its pings); its reply is queued
//! whenever it comes, matched by the command id. A connection may have at most
//! `rpc.max_in_flight_per_connection` calls waiting; a closed connection abandons its
//! calls (a stream route's late reply is then dropped and counted).

use std::sync::Arc;

use switchboard_protocol::{codec::CodecError, command::RpcParams, reply::RpcResult, Code, ErrorBody};
use tokio::sync::Semaphore;

use super::Session;
use crate::{config::HOOK_PREFIX, error::CommandError, rpc::Call, transport::frame::WireFrame, wire::Wire};

impl Session {
    pub(super) fn rpc(&mut self, id: u64, params: RpcParams) -> Result<(), CommandError> {
        super::commands::check_idempotency_key(params.idempotency_key.as_deref())?;
        if params.method.starts_with(HOOK_PREFIX) {
            // Hooks reach the same backends as methods: a client must not be able to
            // forge one (a stored but never broadcast message, a connect with made-up
            // headers).
            return Err(CommandError::refused(
                Code::PermissionDenied,
                format!("methods starting with `{HOOK_PREFIX}` are the server's own hooks"),
            ));
        }
        let max = self.node.config.rpc.max_in_flight_per_connection;
        // Created on the first call: most connections never make one.
        let gate = self.rpc_gate.get_or_insert_with(|| Arc::new(Semaphore::new(max))).clone();
        let Ok(permit) = gate.try_acquire_owned() else {
            return Err(CommandError::refused(
                Code::LimitExceeded,
                format!("at most {max} rpc calls may wait at once on one connection"),
            ));
        };
        let identity = self.identity();
        let call = Call {
            method: params.method,
            data: params.data,
            idempotency_key: params.idempotency_key,
            client: self.client_id.clone(),
            user: identity.user.clone(),
            info: identity.claims.info.clone(),
        };
        let (node, outbox, control, wire) =
            (self.node.clone(), self.outbox.clone(), self.control.clone(), self.wire);
        tokio::spawn(async move {
            let _permit = permit;
            let outcome = tokio::select! {
                () = control.closed() => return,
                outcome = node.rpc.call(call) => outcome,
            };
            let encoded = match outcome {
                Ok(data) => encode_result(wire, id, data),
                Err(error) => {
                    let code = error.code();
                    node.metrics.command_errors.with_label_values(&[code.slug()]).inc();
                    wire.error(id, &ErrorBody::new(code, error.to_string())).map(Some)
                }
            };
            let frame = encoded.or_else(|error| {
                tracing::error!(%error, "cannot encode an rpc reply");
                let body = ErrorBody::new(Code::Internal, format!("the reply cannot be encoded: {error}"));
                wire.error(id, &body).map(Some)
            });
            match frame {
                Ok(Some(frame)) => {
                    // A full queue closes the connection (slow consumer) itself.
                    outbox.push_now(frame);
                }
                Ok(None) => {}
                Err(error) => tracing::error!(%error, "cannot encode an rpc error reply"),
            }
        });
        Ok(())
    }
}

/// The reply to a successful call: `{"result": {"data": …}}` natively, the answer itself
/// as the Socket.IO ack (nothing when the event asked for no ack).
fn encode_result(wire: Wire, id: u64, data: serde_json::Value) -> Result<Option<WireFrame>, CodecError> {
    match wire {
        Wire::Native(_) => wire.reply(id, &RpcResult { data }),
        Wire::SocketIo(_) => wire.reply(id, &data),
    }
}
