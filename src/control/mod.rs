//! The control plane of one balancer: the one pipeline of check, start and
//! reload, and the snapshot's one writer (`lifecycle`); what triggers a
//! reload (`reload`: SIGHUP, a change of the file); names re-resolved
//! (`resolve`); the swarm's node list followed (`cluster`); the watcher that reacts to state changes (`watch`); the
//! admin token (`token`); and the binary upgrade (`upgrade/`), whose
//! byte-path side is only `wire::conns`' stop request.

pub mod cluster;
pub mod lifecycle;
pub mod reload;
pub mod resolve;
pub mod token;
pub mod upgrade;
pub mod watch;
