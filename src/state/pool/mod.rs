//! A pool's servers, who is eligible, and which one a new client gets.
//!
//! No I/O and no metrics: `pick` answers with an index, and the record
//! functions return transitions for the caller to log and count. Runtime
//! state that must outlive a reload (passive counters, connection counts)
//! lives in `state.rs` ([`ServerState`]), shared by `Arc` between the
//! snapshots that keep the same server; the balancer's own state (hash
//! ring; round-robin weights, shared while the servers stay the same)
//! belongs to the pool.
//!
//! This file keeps the servers, their eligibility and `pick`'s whole-pool
//! rules (backups, fail open, the retry's tried servers); each balancing
//! method has a file of its own: `round_robin.rs` (smooth weighted, also
//! the others' fallback), `least_conn.rs`, `random_two.rs` and `hash.rs`
//! (map-based and consistent); `mask.rs` is the set of candidates.

mod hash;
mod least_conn;
mod mask;
mod random_two;
mod round_robin;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::state::{PoolState, ServerState};

use crate::config::{AdminState, AllDown, Balance, Settings};
use crate::events::changes::Changes;
use crate::events::history::History;
use crate::fail::FailReason;
use crate::health::check::Check;
use crate::health::passive::Transition;

use hash::Ring;
use mask::Mask;
use round_robin::RrWeight;

#[derive(Debug)]
pub struct Server {
    /// The address as configured (`manager-01:443`).
    pub name: Arc<str>,
    /// The `name` given in the config (`manager-01`), if any: shown
    /// instead of the address as configured. A repeated address without a
    /// name is shown with `#2`, `#3`.
    pub alias: Option<Arc<str>>,
    /// Which of the servers listed with the same address (0: the first).
    pub nth: u32,
    /// One address that name resolved to.
    pub addr: SocketAddr,
    pub weight: u32,
    /// `backup = true` in lb.toml.
    pub backup: bool,
    /// Under its pool's `prefer`: whether it has the label (`None`: the
    /// pool prefers none). One that has not waits as a backup.
    pub preferred: Option<bool>,
    /// Its labels (a swarm node's, or lb.toml's), for the status.
    pub labels: Arc<std::collections::BTreeMap<String, String>>,
    pub max_conns: u32,
    pub config_state: AdminState,
    /// How long its weight takes to grow back after it was down (zero:
    /// at once): its own `slow_start`, else its pool's.
    pub slow_start: Duration,
    /// Listed in lb.toml, or a node of the swarm.
    pub source: crate::config::ServerSource,
    pub state: Arc<ServerState>,
    /// The active check, shared with every pool probing the same target.
    pub check: Option<Arc<Check>>,
}

/// Internal weights are the configured ones times this, so a server
/// warming up can have a tenth of a weight of 1. Every quantity of the
/// round robin is scaled alike, so without slow start it picks exactly
/// as nginx does with the configured weights.
const SCALE: i64 = 1000;

/// Where slow start begins: a tenth of the weight (per mille).
pub const WARM_FLOOR: u32 = 100;

impl Server {
    /// Up by the active check, or not checked at all.
    pub fn check_up(&self) -> bool {
        self.check.as_ref().is_none_or(|c| c.is_up())
    }

    pub fn admin_state(&self) -> AdminState {
        self.admin_override().unwrap_or(self.config_state)
    }

    /// The state an admin set (`POST /servers/NAME/enable|drain|down`),
    /// which wins over the config's and the swarm's; `None`: it follows them.
    pub fn admin_override(&self) -> Option<AdminState> {
        match self.state.override_state.load(Relaxed) {
            1 => Some(AdminState::Up),
            2 => Some(AdminState::Drain),
            3 => Some(AdminState::Down),
            _ => None,
        }
    }

    /// When it last came back from down: its check passing again after
    /// failing, a passive ejection ending with a successful connect, or the
    /// admin API enabling it; `None` if it never did in this process's
    /// memory (at first start, it is not warming).
    pub fn back_at(&self) -> Option<Instant> {
        let own = self.state.back_at();
        let check = self.check.as_ref().and_then(|c| c.back_at());
        own.max(check)
    }

    /// While it warms up after coming back (slow start), the share of its
    /// weight it has now, per mille (from [`WARM_FLOOR`] to 999); `None`
    /// once it has all of it, or without slow start.
    pub fn warmth(&self, now: Instant) -> Option<u32> {
        if self.slow_start.is_zero() {
            return None;
        }
        let since = now.saturating_duration_since(self.back_at()?);
        if since >= self.slow_start {
            return None;
        }
        let grown = u128::from(1000 - WARM_FLOOR) * since.as_nanos() / self.slow_start.as_nanos();
        Some(WARM_FLOOR + grown as u32)
    }

    /// Its weight now, in [`SCALE`] units: all of it, or its warmth's share
    /// (at least one unit).
    fn weight_now(&self, now: Instant) -> i64 {
        let full = i64::from(self.weight) * SCALE;
        match self.warmth(now) {
            None => full,
            Some(w) => (full * i64::from(w) / 1000).max(1),
        }
    }

    /// Its `max_conns` now (0: no limit): scaled while it warms up, at
    /// least 1.
    pub fn max_conns_now(&self, now: Instant) -> u32 {
        // No limit: nothing to scale (and no warmth to read, on every
        // eligibility test of every pick).
        if self.max_conns == 0 {
            return 0;
        }
        match self.warmth(now) {
            None => self.max_conns,
            Some(w) => (u64::from(self.max_conns) * u64::from(w)).div_ceil(1000).max(1) as u32,
        }
    }

    fn under_max_conns(&self, now: Instant) -> bool {
        let limit = self.max_conns_now(now);
        limit == 0 || self.state.active.load(Relaxed) < limit
    }

    /// Takes clients only when no other server is eligible: set `backup`,
    /// or outside its pool's preferred zone (nginx's backup semantics).
    pub fn standby(&self) -> bool {
        self.backup || self.preferred == Some(false)
    }

    /// How people know it: the name given in the config, else the address
    /// as configured.
    pub fn shown(&self) -> &str {
        self.alias.as_deref().unwrap_or(&self.name)
    }

    /// `name (addr)`, or just the address when the name is an IP.
    pub fn label(&self) -> String {
        server_label(self.shown(), self.addr)
    }
}

/// How a server is named in logs and metrics: `name (addr)`, or just the
/// address when the name is an IP.
pub fn server_label(name: &str, addr: SocketAddr) -> String {
    if *name == *addr.to_string() { name.to_owned() } else { format!("{name} ({addr})") }
}

/// The server chosen for a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub idx: usize,
    /// Chosen although nothing was eligible (`all_down = "fail_open"`).
    pub fail_open: bool,
}

pub struct Pool {
    pub name: Arc<str>,
    pub settings: Settings,
    pub servers: Vec<Server>,
    pub state: Arc<PoolState>,
    /// Told by whoever changes what this pool's servers are (the callers
    /// of `connect_failed` and `connected` on a transition), so the pool's
    /// all-down state is followed without traffic and the page has it.
    pub history: Arc<History>,
    /// Wakes the balancer's watcher (a passive ejection or re-admission).
    pub changes: Arc<Changes>,
    /// One primary server and no backup: nginx never ejects it passively,
    /// since there is nowhere else to go.
    single: bool,
    /// Smooth weighted round robin's state, one per server; shared with
    /// the next snapshot's pool when its servers are the same, so a reload
    /// does not send the next client back to the first server.
    rr: Arc<Mutex<Vec<RrWeight>>>,
    ring: Ring,
}

impl Pool {
    pub fn new(
        name: Arc<str>,
        settings: Settings,
        servers: Vec<Server>,
        state: Arc<PoolState>,
        (history, changes): (Arc<History>, Arc<Changes>),
    ) -> Pool {
        let primaries = servers.iter().filter(|s| !s.backup).count();
        let single = primaries == 1 && servers.len() == 1;
        let ring = if settings.balance == Balance::SourceHash { Ring::new(&servers) } else { Ring::default() };
        let rr = servers.iter().map(|s| RrWeight { current: 0, effective: i64::from(s.weight) * SCALE }).collect();
        Pool { name, settings, servers, state, history, changes, single, rr: Arc::new(Mutex::new(rr)), ring }
    }

    /// Goes on from where `old` (the same pool in the snapshot before) is in
    /// its round robin, when both list the same servers with the same
    /// weights: a reload or a DNS refresh that changes nothing here keeps
    /// the rotation going (nginx restarts it; 30 reloads each followed by
    /// one client would send all 30 to the first server).
    pub fn keep_position(&mut self, old: &Pool) {
        let same = |a: &Server, b: &Server| {
            a.name == b.name && a.addr == b.addr && a.weight == b.weight && a.standby() == b.standby()
        };
        if self.servers.len() == old.servers.len() && self.servers.iter().zip(&old.servers).all(|(a, b)| same(a, b)) {
            self.rr = old.rr.clone();
        }
    }

    /// Eligible for a new client: up, passing its active check, not
    /// ejected, under `max_conns`.
    pub fn eligible(&self, idx: usize, now: Instant) -> bool {
        let s = &self.servers[idx];
        s.admin_state() == AdminState::Up && s.check_up() && s.under_max_conns(now) && !self.ejected(idx, now)
    }

    /// Could take clients if it had room: up, passing its check, not
    /// ejected (`max_conns` aside: a full server is busy, not down).
    pub fn available(&self, idx: usize, now: Instant) -> bool {
        let s = &self.servers[idx];
        s.admin_state() == AdminState::Up && s.check_up() && !self.ejected(idx, now)
    }

    /// No server of the pool is available: it fails open or rejects.
    pub fn all_down(&self, now: Instant) -> bool {
        !(0..self.servers.len()).any(|i| self.available(i, now))
    }

    /// The next moment a server's eligibility changes with time alone (a
    /// passive ejection ending), if any.
    pub fn next_change(&self, now: Instant) -> Option<Instant> {
        if self.single {
            return None;
        }
        let (max_fails, fail_timeout) = (self.settings.max_fails, self.settings.fail_timeout);
        self.servers.iter().filter_map(|s| s.state.passive().ejected_until(now, max_fails, fail_timeout)).min()
    }

    /// Skipped by passive ejection now.
    pub fn ejected(&self, idx: usize, now: Instant) -> bool {
        !self.single
            && self.servers[idx].state.passive().ejected(now, self.settings.max_fails, self.settings.fail_timeout)
    }

    /// Picks a server for a client from `client`, skipping those in `tried`.
    ///
    /// Primary servers first; backups (and, under `prefer`, the servers
    /// outside the zone) only when no primary is eligible. When
    /// nothing at all is eligible, `all_down` decides: fail open over every
    /// server not set `down`, or `None`. `None` also when every eligible
    /// server has been tried.
    pub fn pick(&self, now: Instant, client: IpAddr, tried: &[usize]) -> Option<Pick> {
        let n = self.servers.len();
        let mut primary = Mask::new(n);
        let mut backup = Mask::new(n);
        let mut any_eligible = false;
        for i in 0..n {
            if !self.eligible(i, now) {
                continue;
            }
            any_eligible = true;
            if tried.contains(&i) {
                continue;
            }
            if self.servers[i].standby() { backup.set(i) } else { primary.set(i) }
        }
        let (mask, fail_open) = if !primary.is_empty() {
            (primary, false)
        } else if !backup.is_empty() {
            (backup, false)
        } else if any_eligible || self.settings.all_down == AllDown::Reject {
            return None;
        } else {
            let mut open = Mask::new(n);
            for (i, s) in self.servers.iter().enumerate() {
                if s.admin_state() != AdminState::Down && s.under_max_conns(now) && !tried.contains(&i) {
                    open.set(i);
                }
            }
            if open.is_empty() {
                return None;
            }
            (open, true)
        };
        // Slow start: a warming server counts with part of its weight in
        // the round robin, least_conn and random_two. The hashes keep each
        // client on its server (moving clients off a warming server and back
        // would break the stickiness they are chosen for): there only its
        // max_conns grows back.
        let idx = match self.settings.balance {
            Balance::RoundRobin => self.round_robin(&mask, now),
            Balance::LeastConn => self.least_conn(&mask, now),
            Balance::RandomTwo => self.random_two(&mask, now),
            Balance::SourceHash => self.source_hash(&mask, client, now),
            Balance::SourceHashMap => self.source_hash_map(&mask, client, now),
        }?;
        if !self.single {
            self.servers[idx].state.passive().picked(now, self.settings.fail_timeout);
        }
        Some(Pick { idx, fail_open })
    }

    /// Records a failed connect; `Some(Ejected)` when it took the server out.
    pub fn connect_failed(&self, idx: usize, now: Instant, reason: FailReason) -> Option<Transition> {
        let s = &self.servers[idx].state;
        s.connect_failures.fetch_add(1, Relaxed);
        s.failures[reason as usize].fetch_add(1, Relaxed);
        let t = s.passive().failed(now, self.settings.max_fails);
        // nginx lowers a failing server's effective weight by weight/max_fails;
        // each pick gives one back.
        if let Some(drop) = self.servers[idx].weight.checked_div(self.settings.max_fails) {
            let mut rr = self.rr.lock().unwrap_or_else(|p| p.into_inner());
            rr[idx].effective = (rr[idx].effective - i64::from(drop) * SCALE).max(0);
        }
        let t = t.filter(|_| !self.single);
        if t.is_some() {
            s.passive_ejections.fetch_add(1, Relaxed);
        }
        t
    }

    /// Records a successful connect; `Some(Readmitted)` when it brought an
    /// ejected server back (which starts its slow start).
    pub fn connected(&self, idx: usize, now: Instant) -> Option<Transition> {
        let s = &self.servers[idx].state;
        s.connections.fetch_add(1, Relaxed);
        let t = s.passive().connected(self.settings.max_fails).filter(|_| !self.single);
        if t.is_some() {
            s.came_back(now);
        }
        t
    }

    /// Sets the all-down latch; `true` when that changed it, so the caller
    /// logs each episode once.
    pub fn set_all_down(&self, on: bool) -> bool {
        self.state.all_down.load(Relaxed) != on && self.state.all_down.swap(on, Relaxed) != on
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn server(name: &str, weight: u32, backup: bool) -> Server {
        let addr: SocketAddr = name.parse().unwrap();
        Server {
            name: name.into(),
            alias: None,
            nth: 0,
            addr,
            weight,
            backup,
            preferred: None,
            labels: Arc::default(),
            max_conns: 0,
            config_state: AdminState::Up,
            slow_start: Duration::ZERO,
            source: Default::default(),
            state: Arc::default(),
            check: None,
        }
    }

    pub(super) fn pool(balance: Balance, servers: Vec<Server>) -> Pool {
        let settings = Settings { balance, ..Settings::default() };
        Pool::new("p".into(), settings, servers, Arc::default(), Default::default())
    }

    pub(super) fn client() -> IpAddr {
        "192.0.2.7".parse().unwrap()
    }

    #[test]
    fn backups_only_when_no_primary_is_eligible() {
        let p = pool(Balance::RoundRobin, vec![server("10.0.0.1:1", 1, false), server("10.0.0.2:1", 1, true)]);
        let now = Instant::now();
        for _ in 0..5 {
            assert_eq!(p.pick(now, client(), &[]).unwrap().idx, 0);
        }
        p.servers[0].state.override_state.store(3, Relaxed);
        assert_eq!(p.pick(now, client(), &[]), Some(Pick { idx: 1, fail_open: false }));
    }

    #[test]
    fn servers_outside_the_preferred_zone_wait_as_backups() {
        let mut servers: Vec<Server> = (1..=4).map(|i| server(&format!("10.0.0.{i}:1"), 1, false)).collect();
        for (s, preferred) in servers.iter_mut().zip([Some(true), Some(false), Some(true), Some(false)]) {
            s.preferred = preferred;
        }
        servers[2].backup = true;
        let p = pool(Balance::RoundRobin, servers);
        let now = Instant::now();
        let picks: Vec<usize> = (0..4).map(|_| p.pick(now, client(), &[]).unwrap().idx).collect();
        assert_eq!(picks, [0, 0, 0, 0], "the one preferred primary takes every client");
        p.servers[0].state.override_state.store(3, Relaxed);
        // None preferred eligible: the others and the configured backup
        // share the clients, as nginx's backups do.
        let mut picks: Vec<usize> = (0..6).map(|_| p.pick(now, client(), &[]).unwrap().idx).collect();
        picks.sort();
        assert_eq!(picks, [1, 1, 2, 2, 3, 3]);
        assert!(p.servers[1].standby() && !p.servers[0].standby());
    }

    #[test]
    fn tried_servers_are_skipped_and_then_none() {
        let p = pool(Balance::RoundRobin, vec![server("10.0.0.1:1", 1, false), server("10.0.0.2:1", 1, false)]);
        let now = Instant::now();
        assert_eq!(p.pick(now, client(), &[0]).unwrap().idx, 1);
        assert_eq!(p.pick(now, client(), &[0, 1]), None);
    }

    #[test]
    fn fail_open_over_servers_not_down_when_nothing_is_eligible() {
        let mut servers = vec![server("10.0.0.1:1", 1, false), server("10.0.0.2:1", 1, false)];
        servers[1].config_state = AdminState::Down;
        let p = pool(Balance::RoundRobin, servers);
        let now = Instant::now();
        p.connect_failed(0, now, FailReason::Refused);
        assert_eq!(p.connect_failed(0, now, FailReason::Refused), Some(Transition::Ejected));
        assert_eq!(p.pick(now, client(), &[]), Some(Pick { idx: 0, fail_open: true }));
        let mut reject =
            pool(Balance::RoundRobin, vec![server("10.0.0.1:1", 1, false), server("10.0.0.2:1", 1, false)]);
        reject.settings.all_down = AllDown::Reject;
        for i in 0..2 {
            reject.connect_failed(i, now, FailReason::Refused);
            reject.connect_failed(i, now, FailReason::Refused);
        }
        assert_eq!(reject.pick(now, client(), &[]), None);
    }

    #[test]
    fn single_server_pool_is_never_ejected() {
        let p = pool(Balance::RoundRobin, vec![server("10.0.0.1:1", 1, false)]);
        let now = Instant::now();
        for _ in 0..5 {
            assert_eq!(p.connect_failed(0, now, FailReason::Refused), None);
        }
        assert_eq!(p.pick(now, client(), &[]), Some(Pick { idx: 0, fail_open: false }));
    }

    #[test]
    fn ejected_server_gets_one_trial_after_fail_timeout() {
        let p = pool(Balance::RoundRobin, vec![server("10.0.0.1:1", 1, false), server("10.0.0.2:1", 1, false)]);
        let t0 = Instant::now();
        p.connect_failed(0, t0, FailReason::Refused);
        p.connect_failed(0, t0, FailReason::Refused);
        for _ in 0..4 {
            assert_eq!(p.pick(t0 + Duration::from_secs(29), client(), &[]).unwrap().idx, 1);
        }
        let t1 = t0 + Duration::from_secs(30);
        let picks: Vec<usize> = (0..4).map(|_| p.pick(t1, client(), &[]).unwrap().idx).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 1, "one trial: {picks:?}");
        assert_eq!(p.connected(0, t1), Some(Transition::Readmitted));
    }

    #[tokio::test(start_paused = true)]
    async fn a_warming_server_has_part_of_its_max_conns_and_keeps_its_hashed_clients() {
        let mut servers = vec![server("10.0.0.1:443", 1, false), server("10.0.0.2:443", 1, false)];
        for s in &mut servers {
            s.max_conns = 10;
            s.slow_start = Duration::from_secs(10);
        }
        let p = pool(Balance::SourceHash, servers);
        let clients: Vec<IpAddr> = (0..200u8).map(|i| IpAddr::from([10, 1, 0, i])).collect();
        let now = Instant::now();
        let before: Vec<usize> = clients.iter().map(|&c| p.pick(now, c, &[]).unwrap().idx).collect();
        p.servers[1].state.came_back(now);
        assert_eq!(p.servers[1].max_conns_now(now), 1, "a tenth of 10");
        assert_eq!(p.servers[1].max_conns_now(now + Duration::from_secs(5)), 6, "55 % of 10, rounded up");
        assert_eq!(p.servers[1].max_conns_now(now + Duration::from_secs(10)), 10, "all of it after the window");
        assert_eq!(p.servers[0].max_conns_now(now), 10, "the other is not warming");
        // The hash keeps every client where it was: slow start changes
        // only how many the warming server may hold.
        let warming: Vec<usize> = clients.iter().map(|&c| p.pick(now, c, &[]).unwrap().idx).collect();
        assert_eq!(before, warming);
        p.servers[1].state.active.store(1, Relaxed);
        assert!(!p.eligible(1, now), "full at 1 of its 10 while at a tenth");
        assert!(p.eligible(1, now + Duration::from_secs(5)), "room again as it warms");
    }
}
