//! Active health checks: one probe task per distinct target, and the
//! registry that shares probes between pools.
//!
//! Two pools probing the same address with the same check (UCP's 6443 pool
//! following the managers' 443 `/_ping`, say) share one [`Check`]: one
//! probe per interval, one state, one log line per change. A check lives as
//! long as some snapshot's server holds it; its task holds only a `Weak` and
//! ends when the last holder is gone, so servers removed later stop being
//! probed by themselves. What a check found and its rise/fall counting live
//! in `check.rs`; one probe is `probe.rs`.
//!
//! A reload that finds a check's CA or client certificate files changed
//! (a certificate rotated) keeps the check, its state and its task, and
//! hands the task the new TLS config for its next probe.

pub mod check;
pub mod passive;
pub mod probe;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::time::Instant;

use crate::config::{CheckKind, Config, ConfigError, HealthConfig, HostPort, Pos};
use crate::events::changes::Changes;
use crate::events::history::History;
use crate::health::check::Check;
use crate::health::probe::ProbeTarget;

/// A fixed offset of at most 10 % of `interval`, from a hash of the target,
/// so probes of many servers do not fire together and a test sees the same
/// schedule every run.
pub fn jitter(key: &str, interval: Duration) -> Duration {
    let span = interval.as_micros() as u64 / 10;
    if span == 0 {
        return Duration::ZERO;
    }
    Duration::from_micros(u64::from(crc32fast::hash(key.as_bytes())) % span)
}

/// Probes `target` every interval while anything holds its check.
async fn probe_loop(target: ProbeTarget, check: Weak<Check>, offset: Duration) {
    let interval = target.interval;
    let mut next = Instant::now();
    let mut first = true;
    loop {
        crate::timer::sleep_until(next).await;
        let Some(c) = check.upgrade() else { return };
        let start = Instant::now();
        let outcome = probe::probe(&target).await;
        c.record(outcome.failure, outcome.cert_not_after, start.elapsed());
        drop(c);
        next = if first { start + offset + interval } else { next + interval };
        first = false;
        // A probe that overran its interval does not queue up more.
        let now = Instant::now();
        if next < now {
            next = now + interval;
        }
    }
}

/// Which TLS client config a check uses: its `ca_file` and the client
/// certificate and key it presents.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TlsKey {
    pub ca_file: Option<PathBuf>,
    pub client: Option<(PathBuf, PathBuf)>,
}

impl TlsKey {
    pub fn of(h: &HealthConfig) -> TlsKey {
        TlsKey { ca_file: h.ca_file.clone(), client: h.client_cert.as_ref().map(|c| (c.cert.clone(), c.key.clone())) }
    }
}

/// One TLS client config and a CRC-32 of the files it was made from.
#[derive(Debug, Clone)]
pub struct ProbeTls {
    pub config: Arc<ClientConfig>,
    pub crc: u32,
}

/// The TLS client configs a config's HTTPS checks need.
pub type TlsConfigs = HashMap<TlsKey, ProbeTls>;

/// Loads every TLS config `config` needs (CA files, client certificates),
/// so a bad one is an error of the config, naming the file, found before
/// anything changes.
pub fn tls_configs(config: &Config) -> Result<TlsConfigs, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut out = TlsConfigs::new();
    for pool in &config.pools {
        let Some(h) = &pool.health else { continue };
        let key = TlsKey::of(h);
        if h.kind != CheckKind::Https || out.contains_key(&key) {
            continue;
        }
        let err = |name: &str, pos: Pos, message: String| ConfigError {
            source: config.source.clone(),
            pos: Some(pos),
            key: format!("pool.{}.health.{name}", pool.name),
            message,
        };
        let identity = match &h.client_cert {
            None => None,
            Some(c) => match tls::identity(&c.cert, &c.key) {
                Ok(id) => Some(id),
                Err(e) => {
                    let (own, message) = match e {
                        tls::IdentityError::Cert(m) => (("client_cert", c.pos), m),
                        tls::IdentityError::Key(m) => (("client_key", c.key_pos), m),
                    };
                    let (name, pos) = if c.from_bundle { ("client_bundle", c.pos) } else { own };
                    errors.push(err(name, pos, message));
                    continue;
                }
            },
        };
        match tls::client_config(h.ca_file.as_deref(), identity.as_ref()) {
            Ok((config, crc)) => {
                out.insert(key, ProbeTls { config, crc });
            }
            Err(e) => errors.push(err("ca_file", h.ca_file_pos, e.to_string())),
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

/// A probe task's TLS config, which a reload replaces when its files
/// changed, and the CRC-32 of the files it was made from.
struct TaskTls {
    config: Weak<ArcSwap<ClientConfig>>,
    crc: u32,
}

/// The probes of one load balancer, by target.
#[derive(Default)]
pub struct Health {
    checks: Mutex<HashMap<String, Running>>,
}

/// A check and, for HTTPS, its task's TLS config.
type Running = (Weak<Check>, Option<TaskTls>);

impl Health {
    /// The check of server `name` at `addr` under `h`: the existing one for
    /// the same target and settings, or a new one with its probe task. A
    /// new check records its changes in `history` and signals them on
    /// `changes` (the balancer's).
    pub fn check_for(
        &self,
        h: &HealthConfig,
        (name, addr): (&HostPort, SocketAddr),
        tls: &TlsConfigs,
        history: &Arc<History>,
        changes: &Arc<Changes>,
    ) -> Option<Arc<Check>> {
        let addr = SocketAddr::new(addr.ip(), h.port.unwrap_or(addr.port()));
        let tls_key = TlsKey::of(h);
        let probe_tls = match h.kind {
            CheckKind::Https => Some(tls.get(&tls_key)?),
            _ => None,
        };
        let target = target(h, name, addr, probe_tls.map(|t| &t.config))?;
        // Everything that makes two checks the same check.
        let key = format!(
            "{addr}|{:?}|{}|{}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{}|{}|{:?}",
            target.kind,
            target.path,
            target.host,
            target.server_name,
            tls_key,
            target.expect_status,
            target.expect_body,
            target.expect_json,
            target.timeout,
            target.interval,
            target.rise,
            target.fall,
            target.proxy_protocol,
        );
        let mut checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((c, task_tls)) = checks.get_mut(&key).and_then(|(w, t)| Some((w.upgrade()?, t))) {
            // Its files changed since the task began: the next probe
            // presents (or trusts) what they hold now.
            if let (Some(t), Some(new), Some(shown)) = (task_tls.as_mut(), probe_tls, target.tls.as_ref())
                && t.crc != new.crc
                && let Some(live) = t.config.upgrade()
            {
                live.store(shown.load_full());
                t.crc = new.crc;
            }
            return Some(c);
        }
        checks.retain(|_, (w, _)| w.strong_count() > 0);
        let check =
            Arc::new(Check::new(target.label.clone(), target.rise, target.fall, history.clone(), changes.clone()));
        let task_tls =
            probe_tls.zip(target.tls.as_ref()).map(|(p, live)| TaskTls { config: Arc::downgrade(live), crc: p.crc });
        checks.insert(key.clone(), (Arc::downgrade(&check), task_tls));
        let offset = jitter(&key, target.interval);
        tokio::spawn(probe_loop(target, Arc::downgrade(&check), offset));
        Some(check)
    }

    /// How many distinct probes are running.
    pub fn probe_count(&self) -> usize {
        self.checks.lock().unwrap_or_else(|p| p.into_inner()).values().filter(|(w, _)| w.strong_count() > 0).count()
    }
}

/// Everything one probe of server `name` at `addr` needs.
fn target(h: &HealthConfig, name: &HostPort, addr: SocketAddr, tls: Option<&Arc<ClientConfig>>) -> Option<ProbeTarget> {
    // A session store of its own per target: rustls keys resumed sessions
    // by server name, and servers named by IP address all share one name,
    // so a shared store would hand each server another's ticket and every
    // probe would pay a full handshake (measured: 22.6 % of a core for
    // 1,000 probes/s).
    let tls = tls.map(|base| {
        let mut own = (**base).clone();
        own.resumption = rustls::client::Resumption::in_memory_sessions(4);
        Arc::new(ArcSwap::from_pointee(own))
    });
    // SNI: as set, else the server's host name, else its address (an
    // IP address sends no SNI).
    let sni = h.sni.clone().unwrap_or_else(|| name.host.clone());
    let server_name =
        ServerName::try_from(sni.clone()).or_else(|_| ServerName::try_from(addr.ip().to_string())).ok()?;
    let default_port = match h.kind {
        CheckKind::Https => 443,
        _ => 80,
    };
    // Host: as set, else the SNI, else the address, with the port when
    // it is not the scheme's default (as curl sends it).
    let host = match (&h.host, &h.sni) {
        (Some(host), _) => host.clone(),
        (None, Some(sni)) => sni.clone(),
        (None, None) if addr.port() == default_port => name.host.clone(),
        (None, None) => HostPort { host: name.host.clone(), port: addr.port() }.to_string(),
    };
    let scheme = match h.kind {
        CheckKind::Https => "https",
        CheckKind::Http => "http",
        CheckKind::Tcp => "tcp",
    };
    let label = match h.kind {
        CheckKind::Tcp => format!("tcp://{addr}"),
        _ => format!("{scheme}://{addr}{}", h.path),
    };
    Some(ProbeTarget {
        addr,
        kind: h.kind,
        path: h.path.clone(),
        host,
        server_name,
        tls,
        expect_status: h.expect_status.clone(),
        expect_body: h.expect_body.clone(),
        expect_json: h.expect_json.clone(),
        timeout: h.timeout,
        interval: h.interval,
        rise: h.rise,
        fall: h.fall,
        proxy_protocol: h.proxy_protocol,
        label,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;
    use crate::health::check::CheckState;

    #[test]
    fn jitter_stays_within_a_tenth_of_the_interval_and_spreads_targets() {
        let interval = Duration::from_secs(2);
        let offsets: Vec<Duration> = (0..200).map(|i| jitter(&format!("10.0.0.{i}:443"), interval)).collect();
        assert!(offsets.iter().all(|&o| o < interval / 10));
        let distinct: std::collections::HashSet<_> = offsets.iter().collect();
        assert!(distinct.len() > 150, "targets spread: {}", distinct.len());
        assert_eq!(jitter("a", interval), jitter("a", interval), "repeatable");
    }

    #[tokio::test(start_paused = true)]
    async fn probes_fire_every_interval_after_the_offset() {
        // The schedule alone, on the paused clock: the probe itself fails at
        // once (nothing listens on port 1 of 127.0.0.1).
        let h = Health::default();
        let cfg = HealthConfig { kind: CheckKind::Tcp, interval: Duration::from_secs(2), ..HealthConfig::default() };
        let name = HostPort { host: "127.0.0.1".into(), port: 1 };
        let feed = (Arc::default(), Arc::default());
        let check =
            h.check_for(&cfg, (&name, "127.0.0.1:1".parse().unwrap()), &TlsConfigs::new(), &feed.0, &feed.1).unwrap();
        check.first_result().await;
        assert_eq!(check.probes.load(Relaxed), 1, "the first probe runs at once");
        crate::timer::sleep(Duration::from_secs(2) + Duration::from_millis(200)).await;
        assert_eq!(check.probes.load(Relaxed), 2);
        crate::timer::sleep(Duration::from_secs(10)).await;
        assert_eq!(check.probes.load(Relaxed), 7, "one every 2 s");
        assert_eq!(check.state(), CheckState::Down);
        assert_eq!(check.reason().as_deref(), Some("connect refused"));
    }
}
