//! Turning server names into addresses: once at load, then again every
//! `resolve_interval`.
//!
//! Every address a name resolves to becomes a server. At load a name that
//! does not resolve is a config error (as in nginx: better to refuse to start
//! than to start without a manager). Later, a failed lookup keeps the last
//! good addresses and is logged; an answer that changes the set rebuilds the
//! snapshot, keeping the state of addresses that stay.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::{Config, ConfigError, ConfigErrors, HostPort};
use crate::state::snapshot::{Resolved, Shared};

pub async fn lookup(hp: &HostPort) -> std::io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = hp.host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, hp.port)]);
    }
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((hp.host.as_str(), hp.port)).await?.collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"));
    }
    Ok(addrs)
}

/// Resolves every server of `config`; any name that fails is an error at the
/// place the config names it.
pub async fn resolve_all(config: &Config) -> Result<Resolved, ConfigErrors> {
    let mut out = Resolved::new();
    let mut errors = Vec::new();
    for pool in &config.pools {
        for (i, s) in pool.servers.iter().enumerate() {
            if out.contains_key(&s.address) {
                continue;
            }
            match lookup(&s.address).await {
                Ok(a) => {
                    out.insert(s.address.clone(), a);
                }
                Err(e) => errors.push(ConfigError {
                    source: config.source.clone(),
                    pos: Some(s.pos),
                    key: format!("pool.{}.servers[{i}]", pool.name),
                    message: format!("cannot resolve \"{}\": {e}", s.address.host),
                }),
            }
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(ConfigErrors(errors)) }
}

/// Names that need re-resolving (not IP literals), each with the shortest
/// `resolve_interval` of the pools that use it.
fn names(config: &Config) -> Vec<(HostPort, Duration)> {
    let mut out: Vec<(HostPort, Duration)> = Vec::new();
    for pool in &config.pools {
        for s in &pool.servers {
            if s.address.host.parse::<IpAddr>().is_ok() {
                continue;
            }
            let every = pool.settings.resolve_interval;
            match out.iter_mut().find(|(hp, _)| *hp == s.address) {
                Some((_, d)) => *d = (*d).min(every),
                None => out.push((s.address.clone(), every)),
            }
        }
    }
    out
}

/// New addresses for some names.
pub type Updates = Vec<(HostPort, Vec<SocketAddr>)>;

/// Re-resolves the names of the running config for ever; cancel by dropping.
/// Follows reloads: each round reads the current snapshot. New answers go
/// to `apply` (the snapshot's one writer, `lifecycle.rs`).
pub async fn refresh_loop<F, A>(shared: Arc<Shared>, apply: A)
where
    A: Fn(Updates) -> F,
    F: Future<Output = ()>,
{
    let mut due: HashMap<HostPort, Instant> = HashMap::new();
    loop {
        let snap = shared.snapshot.load_full();
        let now = Instant::now();
        let wanted = names(&snap.config);
        due.retain(|hp, _| wanted.iter().any(|(w, _)| w == hp));
        let mut next = now + Duration::from_secs(3600);
        let mut updates: Updates = Vec::new();
        for (hp, every) in &wanted {
            let at = *due.entry(hp.clone()).or_insert(now + *every);
            if at > now {
                next = next.min(at);
                continue;
            }
            due.insert(hp.clone(), now + *every);
            next = next.min(now + *every);
            match lookup(hp).await {
                Ok(addrs) => {
                    if snap.resolved.get(hp) != Some(&addrs) {
                        info!(server = %hp, ?addrs, "server name resolves to new addresses");
                        updates.push((hp.clone(), addrs));
                    }
                }
                Err(e) => {
                    let kept = snap.resolved.get(hp).map(Vec::len).unwrap_or(0);
                    warn!(server = %hp, error = %e, kept, "cannot resolve server name, keeping the last addresses");
                }
            }
        }
        if !updates.is_empty() {
            apply(updates).await;
        }
        tokio::select! {
            _ = crate::timer::sleep_until(next) => {}
            _ = shared.config_changed.notified() => {}
        }
    }
}
