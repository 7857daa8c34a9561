//! The signal every Osmosis binary stops on.

use tokio::signal::unix::{SignalKind, signal};

/// Resolves on SIGTERM (Kubernetes stopping a pod) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let mut terminate = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = terminate.recv() => {},
    }
}
