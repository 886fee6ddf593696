//! Following the swarm: the refresh loop that reads the node list every
//! `[cluster] refresh`, and the merge of a new list into the pools, as a
//! reload-like change of their server lists: the snapshot is rebuilt by
//! its one writer (`lifecycle.rs`, through the `apply` it hands the loop),
//! so a server that stays keeps its state, a node that joins is probed
//! before its first client and warms up under slow start, and one that
//! leaves is shown as removed while its connections last. A failed
//! refresh changes nothing but the status: the last good list stays in
//! force as long as it takes.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::cluster::{Failure, Node, Reason, client, select};
use crate::state::snapshot::{Shared, Snapshot};

/// How often a config without `[cluster] api` is looked at again (a reload
/// may add it).
const IDLE: Duration = Duration::from_secs(1);

/// Reads the swarm for ever (cancel by dropping), following reloads: each
/// round reads the current snapshot's `[cluster]` and the bundle in force.
/// A list that differs from the one in force goes to `apply`.
pub async fn refresh_loop<F, A>(shared: Arc<Shared>, apply: A)
where
    A: Fn(String, Vec<Node>) -> F,
    F: Future<Output = ()>,
{
    loop {
        let cfg = shared.snapshot.load().config.cluster.clone();
        if !cfg.enabled() {
            tokio::time::sleep(IDLE).await;
            continue;
        }
        let next = Instant::now() + cfg.refresh;
        refresh(&shared, &cfg.api, &apply).await;
        // A node event reads at once (a burst of them: one read more).
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = shared.own.cluster.woken() => {}
        }
    }
}

/// Follows the node events of the first endpoint that streams them, for
/// ever (cancel by dropping): each asks the refresh loop for a read now,
/// so a join or a drain is followed within a round trip, and polling every
/// `refresh` stays the fallback. A stream that ends or fails is tried again
/// after one `refresh`.
pub async fn events_loop(shared: Arc<Shared>) {
    loop {
        let cfg = shared.snapshot.load().config.cluster.clone();
        let cluster = &shared.own.cluster;
        let Some(tls) = cluster.tls().filter(|_| cfg.enabled()) else {
            tokio::time::sleep(IDLE).await;
            continue;
        };
        for hp in &cfg.api {
            let endpoint = hp.to_string();
            let wake = || {
                // The first bytes say the stream is up (the API sends its
                // head, then events as they come).
                cluster.wake();
            };
            cluster.set_watching(Some(endpoint.clone()));
            let why = client::watch_events(hp, &tls, &wake).await;
            cluster.set_watching(None);
            debug!(%endpoint, reason = why.reason.as_str(), error = %why.message, "cluster: node events not followed");
        }
        tokio::time::sleep(cfg.refresh).await;
    }
}

/// One refresh; see [`refresh_loop`].
pub async fn refresh<F, A>(shared: &Shared, api: &[crate::config::HostPort], apply: &A)
where
    A: Fn(String, Vec<Node>) -> F,
    F: Future<Output = ()>,
{
    let cluster = &shared.own.cluster;
    let got = match cluster.tls() {
        Some(tls) => client::fetch(api, &tls).await,
        None => Err(Failure { reason: Reason::Bundle, message: "no client bundle could be read".into() }),
    };
    match got {
        Ok((endpoint, nodes)) => {
            let st = cluster.status();
            if st.last_error.is_some() {
                info!(%endpoint, nodes = nodes.len(), "cluster: node list read again");
                shared.own.history.record("cluster read", None, None, format!("node list read again from {endpoint}"));
            }
            if cluster.nodes().as_deref() == Some(&nodes) {
                cluster.succeeded(endpoint, nodes, now());
            } else {
                apply(endpoint, nodes).await;
            }
        }
        Err(f) => {
            let kept = cluster.nodes().map(|n| n.len());
            // Warned once per episode and reason (counted and shown every time):
            // an API down for an hour is one line, not 360.
            if cluster.failed(&f) {
                let detail = format!("{}; the last good list stays", crate::health::check::printable(&f.message));
                shared.own.history.record("cluster read failed", None, None, detail);
                warn!(reason = f.reason.as_str(), error = %f.message, ?kept, "cluster: node list not read, the last good list stays");
            } else {
                debug!(reason = f.reason.as_str(), error = %f.message, ?kept, "cluster: node list still not read");
            }
        }
    }
}

/// The read before the first snapshot, so that a pool of nodes only has
/// its servers from its first client on. Bounded by one endpoint's timeout
/// in all; a failure is counted and logged, and the start goes on (with
/// the static servers: a down cluster never stops a start).
pub async fn first_read(own: &crate::state::snapshot::Owners, cfg: &crate::config::ClusterConfig) {
    let Some(tls) = own.cluster.tls().filter(|_| cfg.enabled()) else { return };
    let got = match tokio::time::timeout(client::ENDPOINT_TIMEOUT, client::fetch(&cfg.api, &tls)).await {
        Ok(r) => r,
        Err(_) => Err(Failure { reason: Reason::Timeout, message: "no endpoint answered in time".into() }),
    };
    match got {
        Ok((endpoint, nodes)) => {
            info!(%endpoint, nodes = nodes.len(), "cluster: node list read");
            own.cluster.succeeded(endpoint, nodes, now());
        }
        Err(f) => {
            own.cluster.failed(&f);
            own.history.record("cluster read failed", None, None, crate::health::check::printable(&f.message));
            warn!(reason = f.reason.as_str(), error = %f.message, "cluster: node list not read at start: starting with the static servers, and trying again every refresh");
        }
    }
}

fn now() -> u64 {
    crate::events::history::now() as u64
}

/// Puts `nodes` in force and builds the snapshot from it (the caller holds
/// the writer's lock and stores it); logs and records what changed in each
/// pool, and starts the slow start of servers that come back.
pub fn merge(shared: &Shared, cur: &Snapshot, endpoint: String, nodes: Vec<Node>) -> Snapshot {
    let own = &shared.own;
    let before = own.cluster.nodes();
    let mut changes = Vec::new();
    for pc in cur.config.pools.iter().filter(|p| p.nodes.is_some()) {
        let was = before.as_deref().map(|b| select::servers(pc, b)).unwrap_or_default();
        let is = select::servers(pc, &nodes);
        changes.push((pc.name.clone(), select::changes(&was, &is)));
    }
    own.cluster.succeeded(endpoint, nodes, now());
    let next =
        Snapshot::build(cur.generation + 1, cur.config.clone(), cur.resolved.clone(), cur.tls.clone(), Some(cur), own);
    let at = Instant::now();
    for (pool, list) in changes {
        for c in list {
            info!(pool = %pool, server = %c.name, address = %c.address, change = c.what, "cluster: {}", c.text);
            own.history.record(c.what, Some(&pool), Some(&c.name), c.text.clone());
            let Some(p) = next.pool(&pool) else { continue };
            let addr = c.address.to_string();
            for s in p.servers.iter().filter(|s| c.back && *s.name == *addr && !s.slow_start.is_zero()) {
                s.state.came_back(at);
            }
        }
    }
    next
}
