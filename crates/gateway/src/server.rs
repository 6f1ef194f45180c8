//! Serving a node: bind, accept, and shut down gracefully.
//!
//! [`run`] takes a bound listener and a shutdown future (the mini-redis shape), so tests
//! bind `127.0.0.1:0` and the binary binds the configured address. Shutdown order: the
//! node stops being ready and refuses new WebSockets, every session is told to close with
//! `shutdown` and a jittered reconnect delay after flushing its queue, and once every
//! session ended (or `node.shutdown_timeout_ms` passed) the HTTP server stops.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use axum::serve::ListenerExt;
use tokio::net::TcpListener;

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
    let app = crate::http::router(node.clone()).into_make_service_with_connect_info::<SocketAddr>();
    // Frames are small and latency-bound: send each write at once instead of letting
    // Nagle hold it back until the previous segment is acknowledged.
    let listener = listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
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
    axum::serve(listener, app).with_graceful_shutdown(drained).await?;
    tracing::info!("stopped");
    Ok(())
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
