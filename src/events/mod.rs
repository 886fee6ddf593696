//! What one balancer remembers and how it says that something changed:
//! the event history and traffic samples an operator reads after an
//! incident (`history`), and the change signal that wakes the watcher
//! (`changes`). Leaves: the callers say what happened.

pub mod changes;
pub mod history;
