//! Hooks: a backend decides who a token-less connection is (`auth.connect_hook`), on a
//! subscription (a namespace's `subscribe_hook`) or on a client publication
//! (`publish_hook`) before it happens. A hook is an internal `rpc` call of the method
//! `sb.connect`, `sb.subscribe` or `sb.publish`, routed by `[[rpc.routes]]` like any
//! other, so a backend serves hooks with the same workers or endpoint as its RPC methods.
//!
//! A hook that denies (its own error, passed through to the client), fails or times out
//! (115, 118, 100) stops the command before anything happened: no connection, no
//! subscription, no presence, no publication.

use serde_json::{json, Value};
use switchboard_protocol::command::PublishParams;

use super::Session;
use crate::{
    auth::Claims,
    config::{CONNECT_HOOK, PUBLISH_HOOK, SUBSCRIBE_HOOK},
    error::CommandError,
    rpc::{Call, RpcError},
};

/// What the connect hook decided about a connection.
pub(super) struct Admitted {
    /// The identity, as a JWT would have carried it (`sub`, `info`, `exp`).
    pub claims: Claims,
    /// Channels to subscribe the connection to, server-side, in the hook's order.
    pub channels: Vec<String>,
}

impl Session {
    /// Asks the connect hook who this token-less connection is. The request carries the
    /// client's `connect.data` and the upgrade's configured headers and address.
    pub(super) async fn connect_hook(&mut self, data: Option<Value>) -> Result<Admitted, RpcError> {
        let mut request = self.hook_context.take().map_or_else(|| json!({}), |context| *context);
        request["data"] = data.unwrap_or(Value::Null);
        let call = Call {
            method: CONNECT_HOOK.to_string(),
            data: request,
            idempotency_key: None,
            client: self.client_id.clone(),
            user: String::new(),
            info: None,
        };
        let answer = self.node.rpc.call(call).await?;
        self.admitted(answer).inspect_err(|error| tracing::warn!(%error, "malformed connect hook answer"))
    }

    /// Checks the connect hook's answer: `{"user", "info"?, "expires_at"?, "channels"?}`.
    fn admitted(&self, answer: Value) -> Result<Admitted, RpcError> {
        let bad = |why: &str| RpcError::BadReply(format!("connect hook: {why}"));
        let Value::Object(mut fields) = answer else {
            return Err(bad("the answer must be an object with `user`"));
        };
        let user = match fields.remove("user") {
            Some(Value::String(user)) => user,
            _ => return Err(bad("`user` must be a string")),
        };
        let info = fields.remove("info").filter(|info| !info.is_null());
        let expires_at = match fields.remove("expires_at") {
            None | Some(Value::Null) => None,
            Some(Value::Number(at)) => {
                Some(at.as_u64().ok_or_else(|| bad("`expires_at` must be Unix seconds"))?)
            }
            Some(_) => return Err(bad("`expires_at` must be Unix seconds")),
        };
        let channels: Vec<String> = match fields.remove("channels") {
            None | Some(Value::Null) => Vec::new(),
            Some(channels) => {
                serde_json::from_value(channels).map_err(|_| bad("`channels` must be strings"))?
            }
        };
        if let Some(unknown) = fields.keys().next() {
            return Err(bad(&format!("unknown field `{unknown}`")));
        }
        let max = self.node.config.limits.max_subscriptions_per_connection;
        if channels.len() + 1 > max {
            return Err(bad(&format!("more channels than the {max} subscriptions a connection may hold")));
        }
        for channel in &channels {
            self.node
                .rules
                .resolve(channel)
                .map_err(|error| bad(&format!("channel `{channel}`: {error}")))?;
        }
        let sub = (!user.is_empty()).then_some(user);
        Ok(Admitted { claims: Claims { sub, exp: expires_at, info, ..Claims::default() }, channels })
    }

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
        // The key and the ephemeral flag let the backend recognise a resend (the hook
        // runs before the publication's idempotency check) and keep typing-like events
        // ephemeral.
        let request = json!({
            "channel": params.channel,
            "event": params.event,
            "data": params.data,
            "ephemeral": params.ephemeral,
            "idempotency_key": params.idempotency_key,
        });
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
