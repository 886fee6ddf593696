//! Graceful shutdown: stop accepting, let connections finish up to
//! `shutdown_timeout`, then close what is left.
//!
//! Two tokens, because the copy loop must not watch the first: a reload or
//! SIGTERM never cuts a connection; only the end of the grace period does.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

#[derive(Clone, Default)]
pub struct Shutdown {
    pub stop_accepting: CancellationToken,
    pub force_close: CancellationToken,
    /// Every connection task.
    pub tracker: TaskTracker,
}

impl Shutdown {
    /// Stops accepting, waits up to `grace` for open connections, then cuts
    /// the rest and waits for them to go.
    pub async fn run(&self, grace: Duration) {
        self.stop_accepting.cancel();
        self.tracker.close();
        let open = self.tracker.len();
        if open > 0 {
            info!(open, grace_s = grace.as_secs_f64(), "stopped accepting; waiting for open connections");
        }
        if tokio::time::timeout(grace, self.tracker.wait()).await.is_err() {
            info!(open = self.tracker.len(), "grace period over: closing the remaining connections");
            self.force_close.cancel();
            self.tracker.wait().await;
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn on_signals() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => info!("SIGTERM: shutting down"),
                    _ = int.recv() => info!("SIGINT: shutting down"),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
