//! The HTTP route: each RPC is one JSON `POST` to the route's URL, with the shared secret
//! in `X-Switchboard-Secret`; the response body is the answer (see `answer`).
//!
//! Plain `http://` only: the endpoint is a service inside the deployment, and TLS to it is
//! a sidecar's job (documented). Connections are pooled by hyper's client.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};

use super::RpcError;

/// Largest response body read from an endpoint (an answer is at most a payload).
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// A pooled HTTP/1 client shared by every HTTP route.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        HttpClient { client: Client::builder(TokioExecutor::new()).build(connector) }
    }
}

impl HttpClient {
    /// Posts `body` to `url` and returns the response body as text; a non-2xx status or a
    /// transport failure is [`RpcError::Unavailable`]. The caller applies the deadline.
    pub async fn post(&self, url: &str, secret: Option<&str>, body: Vec<u8>) -> Result<String, RpcError> {
        let mut request = hyper::Request::post(url).header("content-type", "application/json");
        if let Some(secret) = secret {
            request = request.header("x-switchboard-secret", secret);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|error| RpcError::Unavailable(format!("bad request to {url}: {error}")))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|error| RpcError::Unavailable(format!("{url}: {error}")))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|error| RpcError::Unavailable(format!("{url}: reading the response: {error}")))?
            .to_bytes();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(RpcError::Unavailable(format!("{url} answered HTTP {status}: {text}")));
        }
        String::from_utf8(body.to_vec()).map_err(|_| RpcError::BadReply("the response is not UTF-8".into()))
    }
}
