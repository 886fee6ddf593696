//! Active health checks: one probe task per distinct target, its rise/fall
//! state machine, and the registry that shares probes between pools.
//!
//! Two pools probing the same address with the same check (UCP's 6443 pool
//! following the managers' 443 `/_ping`, say) share one [`Check`]: one
//! probe per interval, one state, one log line per change. A check lives as
//! long as some snapshot's server holds it; its task holds only a `Weak` and
//! ends when the last holder is gone, so servers removed later stop being
//! probed by themselves. The first result decides at once (no waiting for
//! `rise` on a healthy server, no traffic to one that fails).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::{CheckKind, Config, ConfigError, ConfigErrors, HealthConfig, HostPort, StatusMatch};
use crate::probe;
use crate::tls;

/// What the last probes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckState {
    /// No result yet: not eligible.
    Unknown = 0,
    Up = 1,
    Down = 2,
}

impl CheckState {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckState::Unknown => "unknown",
            CheckState::Up => "up",
            CheckState::Down => "down",
        }
    }
}

/// rise/fall counting, pure: `observe` returns the new state when it changed.
#[derive(Debug, Clone)]
pub struct RiseFall {
    state: CheckState,
    /// Consecutive results against the current state.
    streak: u32,
}

impl Default for RiseFall {
    fn default() -> Self {
        RiseFall { state: CheckState::Unknown, streak: 0 }
    }
}

impl RiseFall {
    pub fn state(&self) -> CheckState {
        self.state
    }

    pub fn observe(&mut self, ok: bool, rise: u32, fall: u32) -> Option<CheckState> {
        let (agrees, needed, target) = match self.state {
            // The first result decides at once.
            CheckState::Unknown => (false, 1, if ok { CheckState::Up } else { CheckState::Down }),
            CheckState::Up => (ok, fall, CheckState::Down),
            CheckState::Down => (!ok, rise, CheckState::Up),
        };
        if agrees {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        if self.streak >= needed {
            self.state = target;
            self.streak = 0;
            Some(target)
        } else {
            None
        }
    }
}

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

/// Everything one probe needs, resolved.
#[derive(Debug)]
pub struct ProbeTarget {
    pub addr: SocketAddr,
    pub kind: CheckKind,
    pub path: String,
    /// The Host header.
    pub host: String,
    pub server_name: ServerName<'static>,
    pub tls: Option<Arc<ClientConfig>>,
    pub expect_status: Vec<StatusMatch>,
    pub expect_body: Option<String>,
    pub expect_json: Vec<(String, serde_json::Value)>,
    pub timeout: Duration,
    pub interval: Duration,
    pub rise: u32,
    pub fall: u32,
    /// For logs: `https://10.0.0.1:443/_ping`.
    pub label: String,
}

/// One shared active check and what it last found.
#[derive(Debug)]
pub struct Check {
    pub target: ProbeTarget,
    machine: Mutex<RiseFall>,
    state: AtomicU8,
    changed: watch::Sender<CheckState>,
    reason: Mutex<Option<String>>,
    /// The certificate's notAfter (Unix seconds), 0 when none was seen.
    pub cert_not_after: AtomicI64,
    pub probes: AtomicU64,
    pub failures: AtomicU64,
    /// Times it went from up to down: active ejections.
    pub downs: AtomicU64,
    pub last_duration_us: AtomicU64,
    /// The duration histograms of every (pool, server) using this check.
    observers: Mutex<Vec<(String, metrics::Histogram)>>,
}

impl Check {
    fn new(target: ProbeTarget) -> Check {
        Check {
            target,
            machine: Mutex::default(),
            state: AtomicU8::new(CheckState::Unknown as u8),
            changed: watch::Sender::new(CheckState::Unknown),
            reason: Mutex::new(None),
            cert_not_after: AtomicI64::new(0),
            probes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            downs: AtomicU64::new(0),
            last_duration_us: AtomicU64::new(0),
            observers: Mutex::new(Vec::new()),
        }
    }

    pub fn state(&self) -> CheckState {
        match self.state.load(Relaxed) {
            1 => CheckState::Up,
            2 => CheckState::Down,
            _ => CheckState::Unknown,
        }
    }

    pub fn is_up(&self) -> bool {
        self.state() == CheckState::Up
    }

    /// Why the last probe failed ("status 500", "timeout after 1s
    /// (response)"); `None` after a success.
    pub fn reason(&self) -> Option<String> {
        self.reason.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until the first probe has decided.
    pub async fn first_result(&self) {
        let mut rx = self.changed.subscribe();
        let _ = rx.wait_for(|s| *s != CheckState::Unknown).await;
    }

    /// Applies one probe's outcome; logs a change of state once, with why.
    /// Adds the duration histogram of one (pool, server) using this check.
    pub fn observe_for(&self, key: String, h: impl FnOnce() -> metrics::Histogram) {
        let mut obs = self.observers.lock().unwrap_or_else(|p| p.into_inner());
        if !obs.iter().any(|(k, _)| *k == key) {
            obs.push((key, h()));
        }
    }

    pub fn record(&self, outcome: probe::Outcome, took: Duration) {
        self.probes.fetch_add(1, Relaxed);
        for (_, h) in self.observers.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            h.record(took.as_secs_f64());
        }
        self.last_duration_us.store(took.as_micros() as u64, Relaxed);
        if let Some(t) = outcome.cert_not_after {
            self.cert_not_after.store(t, Relaxed);
        }
        let ok = outcome.failure.is_none();
        if !ok {
            self.failures.fetch_add(1, Relaxed);
        }
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = outcome.failure.clone();
        let t = &self.target;
        let change = self.machine.lock().unwrap_or_else(|p| p.into_inner()).observe(ok, t.rise, t.fall);
        if let Some(new) = change {
            if new == CheckState::Down && self.state() == CheckState::Up {
                self.downs.fetch_add(1, Relaxed);
            }
            self.state.store(new as u8, Relaxed);
            self.changed.send_replace(new);
            match (new, &outcome.failure) {
                (CheckState::Down, Some(reason)) => {
                    warn!(check = %t.label, %reason, fall = t.fall, "server down: active check failed")
                }
                _ => info!(check = %t.label, rise = t.rise, "server up: active check passes"),
            }
        }
    }
}

/// Probes `check` every interval while anything holds it.
async fn probe_loop(check: Weak<Check>, interval: Duration, offset: Duration) {
    let mut next = Instant::now();
    let mut first = true;
    loop {
        tokio::time::sleep_until(next).await;
        let Some(c) = check.upgrade() else { return };
        let start = Instant::now();
        let outcome = probe::probe(&c.target).await;
        c.record(outcome, start.elapsed());
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

/// The probes of the running process, by target, and their TLS configs.
#[derive(Default)]
pub struct Health {
    checks: Mutex<HashMap<String, Weak<Check>>>,
    tls: Mutex<HashMap<Option<PathBuf>, Arc<ClientConfig>>>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Health {
    /// Loads every TLS config `config` needs (CA files), so a bad one is an
    /// error of the config, before anything changes.
    pub fn prepare(&self, config: &Config) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        let mut cache = self.tls.lock().unwrap_or_else(|p| p.into_inner());
        for pool in &config.pools {
            let Some(h) = &pool.health else { continue };
            if h.kind != CheckKind::Https || cache.contains_key(&h.ca_file) {
                continue;
            }
            let made = match &h.ca_file {
                None => tls::unverified(),
                Some(path) => tls::verified(path),
            };
            match made {
                Ok(c) => {
                    cache.insert(h.ca_file.clone(), c);
                }
                Err(e) => errors.push(ConfigError {
                    source: config.source.clone(),
                    pos: Some(h.ca_file_pos),
                    key: format!("pool.{}.health.ca_file", pool.name),
                    message: e.to_string(),
                }),
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(ConfigErrors(errors)) }
    }

    /// The check of server `name` at `addr` under `h`: the existing one for
    /// the same target and settings, or a new one with its probe task.
    pub fn check_for(&self, h: &HealthConfig, name: &HostPort, addr: SocketAddr) -> Option<Arc<Check>> {
        let addr = SocketAddr::new(addr.ip(), h.port.unwrap_or(addr.port()));
        let target = self.target(h, name, addr)?;
        // Everything that makes two checks the same check.
        let key = format!(
            "{addr}|{:?}|{}|{}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{}|{}",
            target.kind,
            target.path,
            target.host,
            target.server_name,
            h.ca_file,
            target.expect_status,
            target.expect_body,
            target.expect_json,
            target.timeout,
            target.interval,
            target.rise,
            target.fall,
        );
        let mut checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = checks.get(&key).and_then(Weak::upgrade) {
            return Some(c);
        }
        checks.retain(|_, w| w.strong_count() > 0);
        let interval = target.interval;
        let check = Arc::new(Check::new(target));
        checks.insert(key.clone(), Arc::downgrade(&check));
        tokio::spawn(probe_loop(Arc::downgrade(&check), interval, jitter(&key, interval)));
        Some(check)
    }

    /// How many distinct probes are running.
    pub fn probe_count(&self) -> usize {
        self.checks.lock().unwrap_or_else(|p| p.into_inner()).values().filter(|w| w.strong_count() > 0).count()
    }

    fn target(&self, h: &HealthConfig, name: &HostPort, addr: SocketAddr) -> Option<ProbeTarget> {
        let tls = match h.kind {
            CheckKind::Https => {
                let base = self.tls.lock().unwrap_or_else(|p| p.into_inner()).get(&h.ca_file)?.clone();
                // A session store of its own per target: rustls keys resumed
                // sessions by server name, and servers named by IP address
                // all share one name, so a shared store would hand each
                // server another's ticket and every probe would pay a full
                // handshake (measured: 22.6 % of a core for 1,000 probes/s).
                let mut own = (*base).clone();
                own.resumption = rustls::client::Resumption::in_memory_sessions(4);
                Some(Arc::new(own))
            }
            _ => None,
        };
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
            label,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_result_decides_at_once() {
        let mut up = RiseFall::default();
        assert_eq!(up.observe(true, 3, 3), Some(CheckState::Up));
        let mut down = RiseFall::default();
        assert_eq!(down.observe(false, 3, 3), Some(CheckState::Down));
    }

    #[test]
    fn fall_consecutive_failures_take_it_down() {
        let mut m = RiseFall::default();
        m.observe(true, 2, 3);
        assert_eq!(m.observe(false, 2, 3), None);
        assert_eq!(m.observe(false, 2, 3), None);
        // A success in between restarts the count.
        assert_eq!(m.observe(true, 2, 3), None);
        assert_eq!(m.observe(false, 2, 3), None);
        assert_eq!(m.observe(false, 2, 3), None);
        assert_eq!(m.observe(false, 2, 3), Some(CheckState::Down));
    }

    #[test]
    fn rise_consecutive_successes_bring_it_back() {
        let mut m = RiseFall::default();
        m.observe(false, 2, 2);
        assert_eq!(m.observe(true, 2, 2), None);
        assert_eq!(m.observe(false, 2, 2), None);
        assert_eq!(m.observe(true, 2, 2), None);
        assert_eq!(m.observe(true, 2, 2), Some(CheckState::Up));
        assert_eq!(m.state(), CheckState::Up);
    }

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
        let check = h.check_for(&cfg, &name, "127.0.0.1:1".parse().unwrap()).unwrap();
        check.first_result().await;
        assert_eq!(check.probes.load(Relaxed), 1, "the first probe runs at once");
        tokio::time::sleep(Duration::from_secs(2) + Duration::from_millis(200)).await;
        assert_eq!(check.probes.load(Relaxed), 2);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(check.probes.load(Relaxed), 7, "one every 2 s");
        assert_eq!(check.state(), CheckState::Down);
        assert_eq!(check.reason().as_deref(), Some("connect refused"));
    }
}
