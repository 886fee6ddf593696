//! The running configuration as one immutable [`Snapshot`], swapped whole.
//!
//! A connection loads the snapshot once and keeps that `Arc` for its life, so
//! it sees one consistent config across reloads (`load_full`, not `load`:
//! arc-swap's guards are for short use, and a `kubectl --watch` connection
//! can last days). Building a snapshot reuses the [`ServerState`] of every
//! `(pool, address)` that stays, so health and counters carry over, and the
//! server list and its state share one `Arc`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::time::Instant;

use crate::config::{Config, HostPort, ListenerConfig};
use crate::health::Health;
use crate::pool::{Pool, PoolState, Server};
use crate::resolve::Resolved;

pub struct Snapshot {
    pub generation: u64,
    pub config: Arc<Config>,
    pub resolved: Arc<Resolved>,
    pub pools: Vec<Arc<Pool>>,
}

impl Snapshot {
    /// Builds the snapshot of `config`; `health` gives each checked server
    /// its (possibly shared, possibly existing) check.
    pub fn build(
        generation: u64,
        config: Arc<Config>,
        resolved: Arc<Resolved>,
        prev: Option<&Snapshot>,
        health: &Health,
    ) -> Snapshot {
        let mut pools = Vec::with_capacity(config.pools.len());
        for pc in &config.pools {
            let old = prev.and_then(|p| p.pool(&pc.name));
            let mut servers = Vec::new();
            for sc in &pc.servers {
                let name: Arc<str> = Arc::from(sc.address.to_string());
                for &addr in resolved.get(&sc.address).map(Vec::as_slice).unwrap_or_default() {
                    let check = pc.health.as_ref().and_then(|h| health.check_for(h, &sc.address, addr));
                    if let Some(c) = &check {
                        let label = crate::pool::server_label(&name, addr);
                        c.observe_for(format!("{}|{label}", pc.name), || {
                            health.metrics.check_duration(&pc.name, &label)
                        });
                    }
                    let state = old
                        .and_then(|p| p.servers.iter().find(|s| s.addr == addr && s.name == name))
                        .map(|s| s.state.clone())
                        .unwrap_or_default();
                    servers.push(Server {
                        name: name.clone(),
                        addr,
                        weight: sc.weight,
                        backup: sc.backup,
                        max_conns: sc.max_conns,
                        config_state: sc.state,
                        state,
                        check,
                    });
                }
            }
            let state = old.map(|p| p.state.clone()).unwrap_or_else(|| Arc::new(PoolState::default()));
            pools.push(Arc::new(Pool::new(pc.name.clone(), pc.settings.clone(), servers, state)));
        }
        Snapshot { generation, config, resolved, pools }
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

    pub fn status(&self, now: Instant) -> Vec<PoolStatus> {
        self.pools
            .iter()
            .map(|p| PoolStatus {
                name: p.name.to_string(),
                all_down: p.state.all_down.load(Relaxed),
                fail_open_picks: p.state.fail_open_picks.load(Relaxed),
                no_server: p.state.no_server.load(Relaxed),
                servers: p
                    .servers
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        let st = &s.state;
                        ServerStatus {
                            name: s.name.to_string(),
                            addr: s.addr,
                            state: s.admin_state().as_str(),
                            weight: s.weight,
                            backup: s.backup,
                            eligible: p.eligible(i, now),
                            ejected: p.ejected(i, now),
                            fails: st.passive().fails(),
                            active: st.active.load(Relaxed),
                            connections: st.connections.load(Relaxed),
                            connect_failures: st.connect_failures.load(Relaxed),
                            bytes_received: st.bytes_received.load(Relaxed),
                            bytes_sent: st.bytes_sent.load(Relaxed),
                            passive_ejections: st.passive_ejections.load(Relaxed),
                            check: s.check.as_ref().map(|c| CheckStatus {
                                target: c.target.label.clone(),
                                state: c.state().as_str(),
                                reason: c.reason(),
                                probes: c.probes.load(Relaxed),
                                cert_not_after: Some(c.cert_not_after.load(Relaxed)).filter(|&t| t != 0),
                            }),
                        }
                    })
                    .collect(),
            })
            .collect()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolStatus {
    pub name: String,
    pub all_down: bool,
    pub fail_open_picks: u64,
    pub no_server: u64,
    pub servers: Vec<ServerStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerStatus {
    pub name: String,
    pub addr: SocketAddr,
    pub state: &'static str,
    pub weight: u32,
    pub backup: bool,
    pub eligible: bool,
    pub ejected: bool,
    pub fails: u32,
    pub active: u32,
    pub connections: u64,
    pub connect_failures: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub passive_ejections: u64,
    /// `None` when the pool has no active check.
    pub check: Option<CheckStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckStatus {
    pub target: String,
    /// `up`, `down` or `unknown` (no result yet).
    pub state: &'static str,
    /// Why the last probe failed; `None` after a success.
    pub reason: Option<String>,
    pub probes: u64,
    /// The server certificate's notAfter, Unix seconds.
    pub cert_not_after: Option<i64>,
}

/// What every task shares: the current snapshot, and the lock that keeps
/// its writers (reload, re-resolution) one at a time.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub health: Arc<Health>,
    /// Held by whoever builds the next snapshot (reload, re-resolution), so
    /// neither overwrites the other's work.
    pub writer: tokio::sync::Mutex<()>,
    /// Wakes the re-resolution loop after a reload, so names it added get
    /// their own schedule at once.
    pub config_changed: tokio::sync::Notify,
}

impl Shared {
    pub fn new(snapshot: Snapshot, health: Arc<Health>) -> Shared {
        Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            health,
            writer: tokio::sync::Mutex::new(()),
            config_changed: tokio::sync::Notify::new(),
        }
    }

    /// Applies new addresses for some names, keeping everything else.
    pub async fn update_resolved(&self, updates: Vec<(HostPort, Vec<SocketAddr>)>) {
        let _w = self.writer.lock().await;
        let cur = self.snapshot.load_full();
        let mut resolved: HashMap<HostPort, Vec<SocketAddr>> = (*cur.resolved).clone();
        for (hp, addrs) in updates {
            resolved.insert(hp, addrs);
        }
        let next =
            Snapshot::build(cur.generation + 1, cur.config.clone(), Arc::new(resolved), Some(&cur), &self.health);
        self.snapshot.store(Arc::new(next));
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
        let h = Health::default();
        let one = Snapshot::build(1, cfg.clone(), resolved(443, &["10.0.0.1:443"]), None, &h);
        one.pools[0].servers[0].state.connections.store(7, Relaxed);
        let two = Snapshot::build(2, cfg, resolved(443, &["10.0.0.1:443", "10.0.0.2:443"]), Some(&one), &h);
        let servers = &two.pools[0].servers;
        assert_eq!(servers.len(), 2, "every address is a server");
        assert!(Arc::ptr_eq(&servers[0].state, &one.pools[0].servers[0].state));
        assert_eq!(servers[1].state.connections.load(Relaxed), 0, "a new address starts afresh");
        assert!(Arc::ptr_eq(&two.pools[0].state, &one.pools[0].state), "pool state carries over");
    }
}
