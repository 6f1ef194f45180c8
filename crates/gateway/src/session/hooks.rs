//! Namespace hooks: a backend decides on a subscription (`subscribe_hook`) or on a client
//! publication (`publish_hook`) before it happens. A hook is an internal `rpc` call of the
//! method `sb.subscribe` or `sb.publish`, routed by `[[rpc.routes]]` like any other, so a
//! backend serves hooks with the same workers or endpoint as its RPC methods.
//!
//! A hook that denies (its own error, passed through to the client), fails or times out
//! (115, 118, 100) stops the command before anything happened: no subscription, no
//! presence, no publication.

use serde_json::{json, Value};
use switchboard_protocol::command::PublishParams;

use super::Session;
use crate::{
    config::{PUBLISH_HOOK, SUBSCRIBE_HOOK},
    error::CommandError,
    rpc::{Call, RpcError},
};

impl Session {
    /// Asks the subscribe hook; returns the initial data it answered, if any.
    pub(super) async fn subscribe_hook(
        &self,
        channel: &str,
        data: Option<Value>,
    ) -> Result<Option<Value>, CommandError> {
        let answer = self.hook(SUBSCRIBE_HOOK, json!({ "channel": channel, "data": data })).await?;
        match answer {
            Value::Null => Ok(None),
            Value::Object(mut fields) => Ok(fields.remove("data").filter(|data| !data.is_null())),
            _ => Err(bad_answer("the subscribe hook must answer an object or null")),
        }
    }

    /// Asks the publish hook; applies the `data` and `event` it answered, if any.
    pub(super) async fn publish_hook(&self, params: &mut PublishParams) -> Result<(), CommandError> {
        let request = json!({ "channel": params.channel, "event": params.event, "data": params.data });
        let answer = self.hook(PUBLISH_HOOK, request).await?;
        let mut fields = match answer {
            Value::Null => return Ok(()),
            Value::Object(fields) => fields,
            _ => return Err(bad_answer("the publish hook must answer an object or null")),
        };
        if let Some(data) = fields.remove("data") {
            params.data = data;
        }
        match fields.remove("event") {
            None => {}
            Some(Value::Null) => params.event = None,
            Some(Value::String(event)) => params.event = Some(event),
            Some(_) => return Err(bad_answer("the publish hook's `event` must be a string or null")),
        }
        Ok(())
    }

    async fn hook(&self, method: &str, data: Value) -> Result<Value, CommandError> {
        let identity = self.identity();
        let call = Call {
            method: method.to_string(),
            data,
            idempotency_key: None,
            client: self.client_id.clone(),
            user: identity.user.clone(),
            info: identity.claims.info.clone(),
        };
        Ok(self.node.rpc.call(call).await?)
    }
}

fn bad_answer(why: &str) -> CommandError {
    tracing::warn!(%why, "malformed hook answer");
    CommandError::Hook(RpcError::BadReply(why.into()))
}
