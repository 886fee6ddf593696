//! Pools that follow the swarm: reading the node list from UCP (or any
//! Docker Engine API over TLS) with a client bundle (`client`), the
//! answer's schema, read strictly (`nodes`), and what it makes of a pool's
//! servers (`select`, pure). [`Cluster`] is what one balancer holds of it:
//! the last good list, the bundle's TLS config and how the refreshes went.
//! The refresh loop and the merge into the snapshot are `control`'s
//! (`control/cluster.rs`); the snapshot builds pools from [`Cluster::nodes`].

pub mod client;
pub mod nodes;
pub mod select;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use serde::{Deserialize, Serialize};

pub use client::{Failure, Reason};
pub use nodes::{Node, Skipped};

/// How the refreshes went, for `/status`, the page and `/metrics`; it
/// moves with an upgrade.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The endpoint that gave the list in force.
    pub endpoint: Option<String>,
    /// Unix seconds of the last successful refresh.
    pub last_success: Option<u64>,
    /// Unix seconds when the list in force was read (kept across an
    /// upgrade: its age goes on).
    pub list_at: Option<u64>,
    /// The last refresh's error, cleared by a success.
    pub last_error: Option<String>,
    pub refreshes: u64,
    /// Failed refreshes, by reason ([`Reason::as_str`]).
    pub failures: BTreeMap<String, u64>,
    /// The endpoint whose node events are followed now (each asks for a
    /// refresh at once); `None`: polling only.
    #[serde(default)]
    pub watching: Option<String>,
    /// The reason of the last failure ([`Reason::as_str`]).
    #[serde(default)]
    pub last_reason: Option<String>,
}

/// What one balancer holds of the swarm.
#[derive(Default)]
pub struct Cluster {
    nodes: ArcSwapOption<Vec<Node>>,
    tls: ArcSwapOption<rustls::ClientConfig>,
    status: Mutex<Status>,
    /// A node event arrived: refresh now.
    wake: tokio::sync::Notify,
    /// The IDs of the nodes the last list left out (no address): each is
    /// warned of once, not at every refresh.
    skipped: Mutex<BTreeSet<String>>,
}

impl Cluster {
    /// The last good node list; `None` before the first.
    pub fn nodes(&self) -> Option<Arc<Vec<Node>>> {
        self.nodes.load_full()
    }

    /// The bundle's TLS config in force.
    pub fn tls(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.tls.load_full()
    }

    /// Puts a bundle's TLS config in force (start, reload).
    pub fn set_tls(&self, tls: Option<Arc<rustls::ClientConfig>>) {
        self.tls.store(tls);
    }

    pub fn status(&self) -> Status {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A list read from `endpoint` at unix second `now` is in force.
    pub fn succeeded(&self, endpoint: String, nodes: Vec<Node>, now: u64) {
        self.nodes.store(Some(Arc::new(nodes)));
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        st.endpoint = Some(endpoint);
        st.last_success = Some(now);
        st.list_at = Some(now);
        st.last_error = None;
        st.refreshes += 1;
    }

    /// A refresh failed: the list in force stays. Returns whether this is
    /// news: the first failure after a success, or another reason than
    /// the last one's (500, then refused).
    pub fn failed(&self, f: &Failure) -> bool {
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let reason = f.reason.as_str();
        let first = st.last_error.is_none() || st.last_reason.as_deref() != Some(reason);
        st.last_reason = Some(reason.to_owned());
        st.last_error = Some(f.message.clone());
        *st.failures.entry(f.reason.as_str().to_owned()).or_default() += 1;
        first
    }

    /// The nodes of `skipped` (those the last read left out) not left out
    /// by the read before: the ones to warn of.
    pub fn newly_skipped<'a>(&self, skipped: &'a [Skipped]) -> Vec<&'a Skipped> {
        let mut seen = self.skipped.lock().unwrap_or_else(|p| p.into_inner());
        let new = skipped.iter().filter(|s| !seen.contains(&s.id)).collect();
        *seen = skipped.iter().map(|s| s.id.clone()).collect();
        new
    }

    /// Asks the refresh loop for a read now (a node event came).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits for [`Cluster::wake`].
    pub async fn woken(&self) {
        self.wake.notified().await
    }

    /// The endpoint whose events are followed now, if any.
    pub fn set_watching(&self, endpoint: Option<String>) {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).watching = endpoint;
    }

    /// The list and status a process taking over was handed.
    pub fn restore(&self, nodes: Option<Vec<Node>>, status: Status) {
        self.nodes.store(nodes.map(Arc::new));
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = status;
    }
}
