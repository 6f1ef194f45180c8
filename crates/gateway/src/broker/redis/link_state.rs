//! What the broker knows about its connections' state, from fred's events: whether a
//! connection is down right now (fred keeps reporting itself connected while it
//! retries), and how the first connection went (refused credentials stop the node).

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use fred::prelude::*;
use tokio::sync::{broadcast::error::RecvError, watch};

/// A flag that is set while `client`'s connection is known to be down: fred broadcasts a
/// connection error when the socket closes (and at every failed reconnect) and a
/// reconnect event once it is back. fred's own `is_connected()` stays true while it
/// retries, so commands would otherwise wait out their timeout. Must be called before the
/// client connects, so that no event is missed.
pub(super) fn link_down(client: &impl EventInterface) -> Arc<AtomicBool> {
    let down = Arc::new(AtomicBool::new(false));
    let (mut errors, mut connects) = (client.error_rx(), client.reconnect_rx());
    let flag = down.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                // Errors first: an error broadcast before a reconnect event must not be
                // applied after it.
                biased;
                error = errors.recv() => match error {
                    Ok((error, _)) if matches!(error.kind(), ErrorKind::IO | ErrorKind::Canceled | ErrorKind::Tls | ErrorKind::Auth | ErrorKind::Sentinel) => {
                        // Logged once per outage (fred reports every failed reconnect): a
                        // wrong CA, password or address says so in the log right away.
                        if !flag.swap(true, Ordering::AcqRel) {
                            tracing::warn!(%error, "redis connection down");
                        }
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                },
                connect = connects.recv() => match connect {
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        if flag.swap(false, Ordering::AcqRel) {
                            tracing::info!("redis connection back");
                        }
                    }
                    Err(RecvError::Closed) => return,
                },
            }
        }
    });
    down
}

/// The outcome of the command client's first connection: `Ok` once connected, the error
/// when Redis refused the credentials (an address that does not answer yet is neither:
/// Redis may start after the nodes). Must be called before the client connects.
pub(super) fn first_outcome(client: &impl EventInterface) -> watch::Receiver<Option<Result<(), String>>> {
    let (tx, rx) = watch::channel(None);
    let (mut errors, mut connects) = (client.error_rx(), client.reconnect_rx());
    tokio::spawn(async move {
        let outcome = tokio::select! {
            error = async {
                loop {
                    match errors.recv().await {
                        Ok((error, _)) if matches!(error.kind(), ErrorKind::Auth) => return Some(error.to_string()),
                        Ok(_) | Err(RecvError::Lagged(_)) => continue,
                        Err(RecvError::Closed) => return None,
                    }
                }
            } => match error {
                Some(error) => Err(error),
                None => return,
            },
            connected = connects.recv() => match connected {
                Ok(_) | Err(RecvError::Lagged(_)) => Ok(()),
                Err(RecvError::Closed) => return,
            },
        };
        let _ = tx.send(Some(outcome));
    });
    rx
}
