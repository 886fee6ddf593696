//! The change signal of one load balancer: whoever changes what the
//! watcher follows (a check's result, a passive ejection or re-admission,
//! an admin override, a new snapshot) says so here, and the watcher
//! (`watch.rs`) wakes. Separate from the event history, which only
//! remembers: not every change is an event, and not every event a change.
//!
//! A leaf.

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Changes(Notify);

impl Changes {
    /// Wakes the watcher.
    pub fn notify(&self) {
        // notify_one keeps a permit when nobody waits: nothing is missed.
        self.0.notify_one();
    }

    /// Resolves at the next change (or at once if one came since the last
    /// wait).
    pub async fn changed(&self) {
        self.0.notified().await;
    }
}
