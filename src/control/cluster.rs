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
            crate::timer::sleep(IDLE).await;
            continue;
        }
        let started = Instant::now();
        refresh(&shared, &cfg.api, &apply).await;
        // A node event reads at once, but not sooner than `floor` after
        // the last read: a storm of events (each a TLS connection and two
        // requests otherwise) is one read per floor, the events arriving
        // meanwhile followed by the read after it.
        tokio::select! {
            _ = crate::timer::sleep_until(started + cfg.refresh) => {}
            _ = shared.own.cluster.woken() => crate::timer::sleep_until(started + floor(cfg.refresh)).await,
        }
    }
}

/// The least time between two reads asked by node events.
pub fn floor(refresh: Duration) -> Duration {
    refresh.min(EVENT_FLOOR)
}

/// See [`floor`].
const EVENT_FLOOR: Duration = Duration::from_secs(1);

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
            crate::timer::sleep(IDLE).await;
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
        crate::timer::sleep(cfg.refresh).await;
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
        Ok((endpoint, (nodes, skipped))) => {
            left_out(&shared.own, &skipped);
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
            let kept = cluster.nodes().map_or_else(|| "none".to_owned(), |n| n.len().to_string());
            // Warned once per episode and reason (counted and shown every time):
            // an API down for an hour is one line, not 360.
            if cluster.failed(&f) {
                let detail = format!("{}; the last good list stays", crate::health::check::printable(&f.message));
                shared.own.history.record("cluster read failed", None, None, detail);
                warn!(reason = f.reason.as_str(), error = %f.message, %kept, "cluster: node list not read, the last good list stays");
            } else {
                debug!(reason = f.reason.as_str(), error = %f.message, %kept, "cluster: node list still not read");
            }
        }
    }
}

/// Warns of the nodes a read left out for want of an address, once per
/// node (again only after a read that had it back); a ready one is also
/// an event, as a pool may have wanted it.
fn left_out(own: &crate::state::snapshot::Owners, skipped: &[crate::cluster::Skipped]) {
    for s in own.cluster.newly_skipped(skipped) {
        let state = if s.ready { "ready" } else { "not ready" };
        warn!(node = %s.name, id = %s.id, state, error = %s.why, "cluster: node left out of the list: no address");
        if s.ready {
            own.history.record("node left out", None, Some(&s.name), format!("{} left out: {}", s.name, s.why));
        }
    }
}

/// The read before the first snapshot, so that a pool of nodes only has
/// its servers from its first client on. Bounded by one endpoint's timeout
/// in all; a failure is counted and logged, and the start goes on (with
/// the static servers: a down cluster never stops a start).
pub async fn first_read(own: &crate::state::snapshot::Owners, cfg: &crate::config::ClusterConfig) {
    let Some(tls) = own.cluster.tls().filter(|_| cfg.enabled()) else { return };
    let got = match crate::timer::timeout(client::ENDPOINT_TIMEOUT, client::fetch(&cfg.api, &tls)).await {
        Ok(r) => r,
        Err(_) => Err(Failure { reason: Reason::Timeout, message: "no endpoint answered in time".into() }),
    };
    match got {
        Ok((endpoint, (nodes, skipped))) => {
            left_out(own, &skipped);
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
        let was = before.as_deref().map(|b| select::servers(pc, b, &cur.resolved)).unwrap_or_default();
        let is = select::servers(pc, &nodes, &cur.resolved);
        changes.push((pc.name.clone(), select::changes(&was, &is)));
    }
    own.cluster.succeeded(endpoint, nodes, now());
    let next =
        Snapshot::build(cur.generation + 1, cur.config.clone(), cur.resolved.clone(), cur.tls.clone(), Some(cur), own);
    let at = Instant::now();
    for (pool, list) in changes {
        let Some(p) = next.pool(&pool) else { continue };
        let summed = list.len() > SUMMARY;
        for c in &list {
            let addr = c.address.to_string();
            let mut servers = p.servers.iter().filter(|s| *s.name == *addr).peekable();
            let overridden = servers.peek().and_then(|s| s.admin_override());
            for s in servers.filter(|s| c.back && !s.slow_start.is_zero()) {
                s.state.came_back(at);
            }
            if summed {
                continue;
            }
            let text = match overridden {
                Some(o) if c.what != "left" => {
                    format!("{}; an admin override ({}) keeps it {}", c.text, verb(o), kept(o))
                }
                _ => c.text.clone(),
            };
            info!(pool = %pool, server = %c.name, address = %c.address, change = c.what, "cluster: {text}");
            own.history.record(c.what, Some(&pool), Some(&c.name), text);
        }
        if summed {
            summary(own, &pool, &list);
        }
    }
    next
}

/// Past this many changes of one pool in one read, they are told in one
/// line and one event per kind: a list that flaps between 5000 nodes and 3
/// must not flood the log, nor flush the history.
const SUMMARY: usize = 10;

/// The names shown in a summary line.
const NAMED: usize = 3;

fn summary(own: &crate::state::snapshot::Owners, pool: &str, list: &[select::Change]) {
    let mut kinds: Vec<&'static str> = list.iter().map(|c| c.what).collect();
    kinds.sort_unstable();
    kinds.dedup();
    for what in kinds {
        let names: Vec<&str> = list.iter().filter(|c| c.what == what).map(|c| c.name.as_str()).collect();
        let done = match what {
            "joined" => format!("joined pool {pool}"),
            "left" => format!("left pool {pool}"),
            "active" => format!("are active again in the swarm (pool {pool})"),
            "drained" => format!("drained in the swarm (pool {pool})"),
            _ => format!("are down in the swarm (pool {pool})"),
        };
        let nodes = if names.len() == 1 { "node" } else { "nodes" };
        let mut text = format!("{} {nodes} {done}: {}", names.len(), names[..names.len().min(NAMED)].join(", "));
        if names.len() > NAMED {
            text += &format!(", … and {} more", names.len() - NAMED);
        }
        info!(pool = %pool, change = what, count = names.len(), "cluster: {text}");
        own.history.record(what, Some(pool), None, text);
    }
}

/// "enable", "drain", "down": the admin endpoint that set `s`.
fn verb(s: crate::config::AdminState) -> &'static str {
    match s {
        crate::config::AdminState::Up => "enable",
        crate::config::AdminState::Drain => "drain",
        crate::config::AdminState::Down => "down",
    }
}

fn kept(s: crate::config::AdminState) -> &'static str {
    match s {
        crate::config::AdminState::Up => "in",
        crate::config::AdminState::Drain => "drained",
        crate::config::AdminState::Down => "down",
    }
}
