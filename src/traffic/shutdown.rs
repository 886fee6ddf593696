//! Graceful shutdown: stop accepting, let connections finish up to
//! `shutdown_timeout`, then close what is left.
//!
//! Connections do not watch anything for shutdown (a token polled on every
//! wake would put a lock shared by all connections on the byte path): at
//! the end of the grace period the caller returns from the runtime, and
//! dropping it (or the process ending) closes every connection still open.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
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

/// An accept loop's `stop`, checked at every wake with one load.
///
/// Polling the token's `cancelled()` future at each wake took two locks
/// (the token's state, then its waiter list) on every accept, about 330
/// instructions a connection (`cargo bench --bench instr`). A task of its
/// own waits on the token instead, sets `fired` and wakes the loop, whose
/// waker it was given once (a task's waker never changes).
pub struct Stopped {
    shared: Arc<StopShared>,
    /// The loop's waker has been handed over.
    registered: AtomicBool,
    /// Ends the waiting task with the loop (a loop dropped by the
    /// runtime's shutdown, not stopped).
    _watch: tokio_util::task::AbortOnDropHandle<()>,
}

#[derive(Default)]
struct StopShared {
    fired: AtomicBool,
    waker: Mutex<Option<std::task::Waker>>,
}

impl Stopped {
    pub fn watch(stop: CancellationToken) -> Stopped {
        let shared = Arc::new(StopShared::default());
        let s = shared.clone();
        let watch = tokio::spawn(async move {
            stop.cancelled().await;
            s.fired.store(true, Relaxed);
            if let Some(w) = s.waker.lock().unwrap_or_else(|p| p.into_inner()).take() {
                w.wake();
            }
        });
        Stopped { shared, registered: AtomicBool::new(false), _watch: tokio_util::task::AbortOnDropHandle::new(watch) }
    }

    /// Whether the loop is to stop; the first call hands its waker over.
    /// (The waker is stored under the lock before `fired` is read, and
    /// `fired` is set before the lock is taken to wake: either this read
    /// sees it, or the waking side finds the waker.)
    pub fn poll(&self, cx: &mut std::task::Context<'_>) -> bool {
        if !self.registered.load(Relaxed) {
            *self.shared.waker.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
            self.registered.store(true, Relaxed);
        }
        self.shared.fired.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loop waiting on something else (here: nothing) is woken by its
    /// stop, whether the token is cancelled before its first poll or
    /// while it waits.
    #[tokio::test]
    async fn a_stop_wakes_the_waiting_loop_before_or_after_its_first_poll() {
        for early in [true, false] {
            let token = CancellationToken::new();
            if early {
                token.cancel();
            }
            let stopped = Stopped::watch(token.clone());
            let waiting = tokio::spawn(async move {
                std::future::poll_fn(|cx| {
                    if stopped.poll(cx) { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
                })
                .await
            });
            tokio::task::yield_now().await;
            token.cancel();
            crate::timer::timeout(Duration::from_secs(10), waiting)
                .await
                .expect("the stop wakes the loop")
                .expect("the loop ends");
        }
    }
}
