//! The running configuration as one immutable [`Snapshot`], swapped whole.
//!
//! A connection loads the snapshot once and keeps that `Arc` for its life, so
//! it sees one consistent config across reloads (`load_full`, not `load`:
//! arc-swap's guards are for short use, and a `kubectl --watch` connection
//! can last days). Building a snapshot reuses the [`ServerState`](crate::state::ServerState) of every
//! `(pool, address)` that stays, so health and counters carry over, and the
//! server list and its state share one `Arc`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use arc_swap::ArcSwap;

use crate::cluster::Cluster;
use crate::config::{AdminState, Config, HostPort, ListenerConfig, ServerConfig};
use crate::events::changes::Changes;
use crate::events::history::History;
use crate::health::{Health, TlsConfigs};
use crate::metrics::Metrics;
use crate::state::pool::{Pool, Server};
use crate::state::{PoolState, States};
use crate::wire::conns::Conns;

/// The addresses of every `host:port` of a config, sorted and deduplicated.
pub type Resolved = HashMap<HostPort, Vec<SocketAddr>>;

pub struct Snapshot {
    pub generation: u64,
    pub config: Arc<Config>,
    pub resolved: Arc<Resolved>,
    /// The TLS configs of its HTTPS checks, kept for rebuilds after a
    /// change of DNS answers.
    pub tls: Arc<TlsConfigs>,
    pub pools: Vec<Arc<Pool>>,
    /// The balancer's connections (the same in every snapshot it builds):
    /// each connection reaches them through the snapshot it holds.
    pub conns: Arc<Conns>,
}

/// What one load balancer owns for its whole life, beside its snapshots:
/// made at its start, handed to every snapshot it builds. Nothing here is
/// shared with another balancer in the same process.
#[derive(Default)]
pub struct Owners {
    /// Its probes, shared between its pools.
    pub health: Health,
    /// Every server state, for snapshots to come and for the status of
    /// servers removed with connections open.
    pub states: States,
    /// Its events and traffic samples.
    pub history: Arc<History>,
    /// Its metric handles and their upkeep.
    pub metrics: Arc<Metrics>,
    /// The signal that wakes its watcher.
    pub changes: Arc<Changes>,
    /// Its open connections, their stop request and the byte path's
    /// counters.
    pub conns: Arc<Conns>,
    /// What it knows of the swarm: the last good node list that pools'
    /// `nodes` take, and how its refreshes went.
    pub cluster: Arc<Cluster>,
}

impl Owners {
    /// A balancer's owners; `splice_shared_only` as [`Conns::new`].
    pub fn new(splice_shared_only: bool) -> Owners {
        Owners { conns: Arc::new(Conns::new(splice_shared_only)), ..Owners::default() }
    }
}

impl Snapshot {
    /// Builds the snapshot of `config`; `own.health` gives each checked
    /// server its (possibly shared, possibly existing) check. A pool's
    /// servers are the ones it lists, then the nodes of `own.cluster`'s
    /// list it takes.
    pub fn build(
        generation: u64,
        config: Arc<Config>,
        resolved: Arc<Resolved>,
        tls: Arc<TlsConfigs>,
        prev: Option<&Snapshot>,
        own: &Owners,
    ) -> Snapshot {
        let (health, states) = (&own.health, &own.states);
        let mut pools = Vec::with_capacity(config.pools.len());
        for pc in &config.pools {
            let old = prev.and_then(|p| p.pool(&pc.name));
            let mut servers = Vec::new();
            let nodes = own.cluster.nodes();
            let discovered =
                nodes.as_deref().map(|n| crate::cluster::select::servers(pc, n, &resolved)).unwrap_or_default();
            for sc in pc.servers.iter().chain(&discovered) {
                let name: Arc<str> = Arc::from(sc.address.to_string());
                // Shown instead of the address as written: the name given,
                // or "#2", "#3" for a repeated address.
                let alias: Option<Arc<str>> = match (&sc.name, sc.nth) {
                    (Some(n), _) => Some(Arc::from(n.as_str())),
                    (None, 0) => None,
                    (None, n) => Some(Arc::from(format!("{name} #{}", n + 1))),
                };
                let labels = Arc::new(sc.labels.clone());
                for addr in addresses(&resolved, sc) {
                    let check = pc
                        .health
                        .as_ref()
                        .and_then(|h| health.check_for(h, (&sc.address, addr), &tls, &own.history, &own.changes));
                    if let Some(c) = &check {
                        let label = crate::state::pool::server_label(alias.as_deref().unwrap_or(&name), addr);
                        c.observe_for(format!("{}|{label}", pc.name), || own.metrics.check_duration(&pc.name, &label));
                    }
                    // The state that exists (kept by this pool, or by open
                    // connections to a server removed and now back), or new.
                    let state = states.get(&pc.name, &name, addr, sc.nth);
                    state.from_swarm.store(sc.source == crate::config::ServerSource::Cluster, Relaxed);
                    servers.push(Server {
                        name: name.clone(),
                        alias: alias.clone(),
                        nth: sc.nth,
                        addr,
                        weight: sc.weight,
                        backup: sc.backup,
                        preferred: pc.prefer.as_ref().map(|p| p.matches(&sc.labels)),
                        labels: labels.clone(),
                        max_conns: sc.max_conns,
                        config_state: sc.state,
                        slow_start: sc.slow_start.unwrap_or(pc.settings.slow_start),
                        source: sc.source,
                        state,
                        check,
                    });
                }
            }
            let state = old.map(|p| p.state.clone()).unwrap_or_else(|| Arc::new(PoolState::default()));
            let feed = (own.history.clone(), own.changes.clone());
            let mut pool = Pool::new(pc.name.clone(), pc.settings.clone(), servers, state, feed);
            if let Some(o) = old {
                pool.keep_position(o);
            }
            pools.push(Arc::new(pool));
        }
        Snapshot { generation, config, resolved, tls, pools, conns: own.conns.clone() }
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| &*p.name == name)
    }

    pub fn pool_index(&self, name: &str) -> Option<usize> {
        self.pools.iter().position(|p| &*p.name == name)
    }

    /// The `nth` listener bound to `bind` (several may say port 0).
    pub fn listener(&self, bind: SocketAddr, nth: usize) -> Option<&ListenerConfig> {
        self.config.listeners.iter().filter(|l| l.bind == bind).nth(nth)
    }

    /// Overrides the state of `server` (its configured name, one of its
    /// addresses, or its label) in `pool` until the process restarts.
    /// Returns how many addresses it applied to; `None` when there is no
    /// such pool.
    pub fn set_override(&self, pool: &str, server: &str, state: AdminState) -> Option<usize> {
        self.override_to(pool, server, Some(state))
    }

    /// Clears the override of `server` in `pool`: it follows lb.toml, or
    /// the swarm for a node, again. As [`Snapshot::set_override`].
    pub fn follow(&self, pool: &str, server: &str) -> Option<usize> {
        self.override_to(pool, server, None)
    }

    fn override_to(&self, pool: &str, server: &str, state: Option<AdminState>) -> Option<usize> {
        let p = self.pool(pool)?;
        let code = match state {
            None => 0,
            Some(AdminState::Up) => 1,
            Some(AdminState::Drain) => 2,
            Some(AdminState::Down) => 3,
        };
        let mut n = 0;
        for s in &p.servers {
            if &*s.name == server || s.shown() == server || s.addr.to_string() == server || s.label() == server {
                // Up again after being set down or drained: it warms up again.
                if state.unwrap_or(s.config_state) == AdminState::Up && s.admin_state() != AdminState::Up {
                    s.state.came_back(tokio::time::Instant::now());
                }
                s.state.override_state.store(code, Relaxed);
                s.state.touch();
                n += 1;
            }
        }
        Some(n)
    }
}

/// The addresses of `sc`: what its name resolved to, or, for a node of
/// the swarm, the address the swarm gave.
fn addresses(resolved: &Resolved, sc: &ServerConfig) -> Vec<SocketAddr> {
    match resolved.get(&sc.address) {
        Some(a) => a.clone(),
        None => sc.address.host.parse().map(|ip| vec![SocketAddr::new(ip, sc.address.port)]).unwrap_or_default(),
    }
}

/// What every task of one balancer shares: the current snapshot, what the
/// balancer owns besides, and the lock that keeps the snapshot's writer
/// (`lifecycle.rs`: a reload, a re-resolution) one at a time.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub own: Owners,
    /// Held by whoever builds the next snapshot, so that no two builds
    /// overwrite each other's work.
    pub writer: tokio::sync::Mutex<()>,
    /// Wakes the re-resolution loop after a reload, so names it added get
    /// their own schedule at once.
    pub config_changed: tokio::sync::Notify,
}

impl Shared {
    pub fn new(snapshot: Snapshot, own: Owners) -> Shared {
        Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            own,
            writer: tokio::sync::Mutex::new(()),
            config_changed: tokio::sync::Notify::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn resolved(port: u16, addrs: &[&str]) -> Arc<Resolved> {
        let hp = HostPort { host: "mgr".into(), port };
        Arc::new([(hp, addrs.iter().map(|a| a.parse().unwrap()).collect())].into_iter().collect())
    }

    #[test]
    fn a_rebuild_keeps_the_state_of_addresses_that_stay() {
        let cfg = Arc::new(
            parse("[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n[pool.p]\nservers = [\"mgr:443\"]\n", "t")
                .unwrap(),
        );
        let own = Owners::default();
        let tls = Arc::new(TlsConfigs::new());
        let one = Snapshot::build(1, cfg.clone(), resolved(443, &["10.0.0.1:443"]), tls.clone(), None, &own);
        one.pools[0].servers[0].state.connections.store(7, Relaxed);
        let two = Snapshot::build(2, cfg, resolved(443, &["10.0.0.1:443", "10.0.0.2:443"]), tls, Some(&one), &own);
        let servers = &two.pools[0].servers;
        assert_eq!(servers.len(), 2, "every address is a server");
        assert!(Arc::ptr_eq(&servers[0].state, &one.pools[0].servers[0].state));
        assert_eq!(servers[1].state.connections.load(Relaxed), 0, "a new address starts afresh");
        assert!(Arc::ptr_eq(&two.pools[0].state, &one.pools[0].state), "pool state carries over");
    }
}
