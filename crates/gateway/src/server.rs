//! Serving a node: bind, accept, and shut down gracefully.
//!
//! [`run`] takes a bound listener and a shutdown future (the mini-redis shape), so tests
//! bind `127.0.0.1:0` and the binary binds the configured address.
//!
//! The accept loop is ours rather than `axum::serve` because a public gateway must bound
//! what a connection costs before it authenticates: request headers must arrive within
//! `limits.handshake_timeout_ms` (a slowloris client is dropped), and at most
//! `limits.max_pending_handshakes` connections may be plain HTTP at once (a permit held
//! until the connection closes or becomes a WebSocket); over that, new ones are closed at
//! once, so half-open upgrades cannot exhaust file descriptors. Shutdown order: the
//! node stops being ready and refuses new WebSockets, every session is told to close with
//! `shutdown` and a jittered reconnect delay after flushing its queue, and once every
//! session ended (or `node.shutdown_timeout_ms` passed) the HTTP server stops.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{config::Config, node::Node};

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The node could not be built from the configuration.
    #[error(transparent)]
    Node(#[from] crate::node::NodeError),
    /// The listener failed.
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
    /// The broker refused the node at start (e.g. wrong Redis credentials).
    #[error("broker: {0}")]
    Broker(#[from] crate::broker::BrokerError),
}

/// Serves one node on `listener` until `shutdown` resolves, then drains.
///
/// # Errors
/// [`ServeError`] when the configuration is unusable or the listener fails.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let node = Node::new(config)?;
    // Wrong Redis credentials are a configuration error: stop now, with Redis's answer,
    // rather than run forever not ready.
    node.broker.check_credentials().await?;
    serve(listener, node, shutdown).await
}

/// Serves an already built node (tests use this to inspect the node).
///
/// # Errors
/// [`ServeError::Io`] when the listener fails.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let address = listener.local_addr()?;
    tracing::info!(%address, node = %node.id, broker = %node.config.broker.url, "switchboard listening");
    let advertised = node.config.node.advertise_address.clone();
    if let Some(advertised) =
        advertised.or_else(|| (!address.ip().is_unspecified()).then(|| address.to_string()))
    {
        node.broker.advertise(advertised);
    }
    let router = crate::http::router(node.clone());
    let drained = {
        let node = node.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: draining connections");
            node.begin_shutdown();
            node.sessions.close();
            let timeout = Duration::from_millis(node.config.node.shutdown_timeout_ms);
            if tokio::time::timeout(timeout, node.sessions.wait()).await.is_err() {
                tracing::warn!(
                    remaining = node.sessions.len(),
                    "shutdown timeout: closing remaining connections"
                );
            }
        }
    };
    tokio::pin!(drained);
    let limits = &node.config.limits;
    let pending = Arc::new(Semaphore::new(limits.max_pending_handshakes));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(Duration::from_millis(limits.handshake_timeout_ms));
    let connections = TaskTracker::new();
    let stop = CancellationToken::new();
    loop {
        let (stream, remote) = tokio::select! {
            () = &mut drained => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: the listener itself is fine, so wait and retry
                    // rather than stop serving every other client.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            node.metrics.handshakes_dropped.with_label_values(&["limit"]).inc();
            tracing::debug!(%remote, "too many pending handshakes: closing a new connection");
            continue;
        };
        // Frames are small and latency-bound: send each write at once instead of letting
        // Nagle hold it back until the previous segment is acknowledged.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let connection = serve_connection(&http, router.clone(), stream, remote, stop.clone());
        connections.spawn(handshake(connection, permit, node.metrics.clone()));
    }
    // Sessions are gone: in-flight HTTP requests finish, idle keep-alive connections
    // close, within a short bound.
    stop.cancel();
    connections.close();
    if tokio::time::timeout(Duration::from_secs(2), connections.wait()).await.is_err() {
        tracing::debug!("HTTP connections still open at shutdown");
    }
    tracing::info!("stopped");
    Ok(())
}

/// One accepted TCP connection served as HTTP/1 with upgrades; it resolves once the
/// connection closed or became a WebSocket (the session then runs on its own task). When
/// `stop` fires (the node drained its sessions), an in-flight request is finished and
/// the connection closed.
fn serve_connection(
    http: &hyper::server::conn::http1::Builder,
    router: axum::Router,
    stream: TcpStream,
    remote: SocketAddr,
    stop: CancellationToken,
) -> impl Future<Output = Result<(), hyper::Error>> + Send {
    let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(ConnectInfo(remote));
        let mut router = router.clone();
        async move { tower_service::Service::call(&mut router, request).await }
    });
    let connection = http.serve_connection(TokioIo::new(stream), service).with_upgrades();
    async move {
        tokio::pin!(connection);
        tokio::select! {
            outcome = connection.as_mut() => outcome,
            () = stop.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        }
    }
}

/// Holds a pending-handshake permit while `connection` is plain HTTP, and counts
/// connections dropped for sending their headers too slowly (slowloris).
async fn handshake(
    connection: impl Future<Output = Result<(), hyper::Error>>,
    permit: OwnedSemaphorePermit,
    metrics: Arc<crate::metrics::Metrics>,
) {
    metrics.pending_handshakes.inc();
    if let Err(error) = connection.await {
        if error.is_timeout() {
            metrics.handshakes_dropped.with_label_values(&["timeout"]).inc();
        }
        tracing::debug!(%error, "HTTP connection ended with an error");
    }
    metrics.pending_handshakes.dec();
    drop(permit);
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
}
