//! The `cluster` object of the status view: which endpoint gave the list
//! in force, when, how old it is, the last error, and the failures by
//! reason (`/metrics`' `ucp_lb_cluster_refresh_failures_total`).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::cluster::Reason;
use crate::state::snapshot::{Owners, Snapshot};

#[derive(Debug, Clone, Serialize, Default)]
pub struct ClusterStatus {
    /// `[cluster] api`, as configured.
    pub api: Vec<String>,
    /// The endpoint the list in force came from.
    pub endpoint: Option<String>,
    /// Unix seconds of the last successful refresh.
    pub last_success: Option<u64>,
    /// The last refresh's error; `None` once one succeeds.
    pub last_error: Option<String>,
    /// Seconds since the list in force was read; `None` before the first
    /// (then `age_s` counts from the process's start: see `never_read_s`).
    pub age_s: Option<u64>,
    /// No list read yet: seconds since the process started trying.
    pub never_read_s: Option<u64>,
    /// Nodes in the list in force.
    pub nodes: usize,
    pub refreshes: u64,
    /// Failed refreshes by reason, every reason listed.
    pub failures: BTreeMap<&'static str, u64>,
    /// The endpoint whose node events are followed (each read at once);
    /// `None`: polling every `refresh` only.
    pub events_from: Option<String>,
}

const REASONS: [Reason; 7] =
    [Reason::Connect, Reason::Timeout, Reason::Tls, Reason::Status, Reason::Invalid, Reason::TooLarge, Reason::Bundle];

/// The cluster's status now (`now` and `started_at`: Unix seconds); `None`
/// when the config reads no cluster.
pub fn status(snap: &Snapshot, own: &Owners, now: u64, started_at: u64) -> Option<ClusterStatus> {
    let cfg = &snap.config.cluster;
    if !cfg.enabled() {
        return None;
    }
    let st = own.cluster.status();
    Some(ClusterStatus {
        api: cfg.api.iter().map(ToString::to_string).collect(),
        endpoint: st.endpoint,
        last_success: st.last_success,
        last_error: st.last_error,
        age_s: st.list_at.map(|t| now.saturating_sub(t)),
        never_read_s: st.list_at.is_none().then(|| now.saturating_sub(started_at)),
        nodes: own.cluster.nodes().map_or(0, |n| n.len()),
        refreshes: st.refreshes,
        events_from: st.watching.clone(),
        failures: REASONS.iter().map(|r| (r.as_str(), st.failures.get(r.as_str()).copied().unwrap_or(0))).collect(),
    })
}
