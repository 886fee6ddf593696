//! Graceful shutdown: stop accepting, let connections finish up to
//! `shutdown_timeout`, then close what is left.
//!
//! Connections do not watch anything for shutdown (a token polled on every
//! wake would put a lock shared by all connections on the byte path): at
//! the end of the grace period the caller returns from the runtime, and
//! dropping it (or the process ending) closes every connection still open.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

#[derive(Clone, Default)]
pub struct Shutdown {
    /// Cancelled at the first signal: /healthz says "stopping" while the
    /// stop grace runs (listeners still accept).
    pub stopping: CancellationToken,
    pub stop_accepting: CancellationToken,
    /// Cancelled when a successor (`ucp-lb --upgrade`) has taken the
    /// listeners over: the admin server stops accepting too.
    pub handed_over: CancellationToken,
    /// Every connection task.
    pub tracker: TaskTracker,
}

impl Shutdown {
    /// Stops accepting and waits up to `grace` for open connections. Those
    /// still open after it are closed when the runtime is dropped.
    pub async fn run(&self, grace: Duration) {
        self.stopping.cancel();
        self.stop_accepting.cancel();
        self.tracker.close();
        let open = self.tracker.len();
        if open > 0 {
            info!(open, grace_s = grace.as_secs_f64(), "stopped accepting; waiting for open connections");
        }
        if crate::timer::timeout(grace, self.tracker.wait()).await.is_err() {
            info!(open = self.tracker.len(), "grace period over: closing the remaining connections");
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
