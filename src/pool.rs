//! A pool's servers, who is eligible, and which one a new client gets.
//!
//! No I/O and no metrics: `pick` answers with an index, and the record
//! functions return transitions for the caller to log and count. Runtime
//! state that must outlive a reload (passive counters, connection counts)
//! lives in `state.rs` ([`ServerState`]), shared by `Arc` between the
//! snapshots that keep the same server; the balancer's own state (hash
//! ring; round-robin weights, shared while the servers stay the same)
//! belongs to the pool.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::state::{PoolState, ServerState};

use crate::changes::Changes;
use crate::check::Check;
use crate::config::{AdminState, AllDown, Balance, Settings};
use crate::fail::FailReason;
use crate::history::History;
use crate::passive::Transition;

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
    pub backup: bool,
    pub max_conns: u32,
    pub config_state: AdminState,
    /// How long its weight takes to grow back after it was down (zero:
    /// at once): its own `slow_start`, else its pool's.
    pub slow_start: Duration,
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
        match self.state.override_state.load(Relaxed) {
            1 => AdminState::Up,
            2 => AdminState::Drain,
            3 => AdminState::Down,
            _ => self.config_state,
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
            a.name == b.name && a.addr == b.addr && a.weight == b.weight && a.backup == b.backup
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
    /// Primary servers first; backups only when no primary is eligible. When
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
            if self.servers[i].backup { backup.set(i) } else { primary.set(i) }
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

    /// nginx's smooth weighted round robin over the servers in `mask`
    /// (with each server's weight now: part of it while it warms up).
    fn round_robin(&self, mask: &Mask, now: Instant) -> Option<usize> {
        let mut rr = self.rr.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for i in mask.iter() {
            let full = self.servers[i].weight_now(now);
            let w = &mut rr[i];
            w.effective = w.effective.min(full);
            w.current += w.effective;
            total += w.effective;
            if w.effective < full {
                w.effective = (w.effective + SCALE).min(full);
            }
            if best.is_none_or(|b| rr[i].current > rr[b].current) {
                best = Some(i);
            }
        }
        let b = best?;
        rr[b].current -= total;
        Some(b)
    }

    /// Fewest active connections per unit of weight; ties go round robin.
    fn least_conn(&self, mask: &Mask, now: Instant) -> Option<usize> {
        let ratio = |i: usize| {
            let s = &self.servers[i];
            (u64::from(s.state.active.load(Relaxed)), s.weight_now(now) as u64)
        };
        let mut best: Option<(usize, (u64, u64))> = None;
        for i in mask.iter() {
            let (c, w) = ratio(i);
            if best.is_none_or(|(_, (bc, bw))| c * bw < bc * w) {
                best = Some((i, (c, w)));
            }
        }
        let (first, (bc, bw)) = best?;
        let mut ties = Mask::new(self.servers.len());
        let mut many = false;
        for i in mask.iter() {
            let (c, w) = ratio(i);
            if c * bw == bc * w {
                ties.set(i);
                many |= i != first;
            }
        }
        // As nginx: one best is taken as it is; only a tie goes through the
        // round robin (and moves its weights).
        if many { self.round_robin(&ties, now) } else { Some(first) }
    }

    /// Two weighted random picks; the one with fewer connections per weight.
    fn random_two(&self, mask: &Mask, now: Instant) -> Option<usize> {
        let first = self.weighted_random(mask, None, now)?;
        let Some(second) = self.weighted_random(mask, Some(first), now) else {
            return Some(first);
        };
        let (a, b) = (&self.servers[first], &self.servers[second]);
        let (ca, cb) = (u64::from(a.state.active.load(Relaxed)), u64::from(b.state.active.load(Relaxed)));
        let (wa, wb) = (a.weight_now(now) as u64, b.weight_now(now) as u64);
        if cb * wa < ca * wb { Some(second) } else { Some(first) }
    }

    fn weighted_random(&self, mask: &Mask, except: Option<usize>, now: Instant) -> Option<usize> {
        let weight = |i: usize| self.servers[i].weight_now(now) as u64;
        let total: u64 = mask.iter().filter(|&i| Some(i) != except).map(weight).sum();
        if total == 0 {
            return None;
        }
        let mut r = fastrand::u64(0..total);
        for i in mask.iter().filter(|&i| Some(i) != except) {
            let w = weight(i);
            if r < w {
                return Some(i);
            }
            r -= w;
        }
        None
    }

    /// nginx's `hash $remote_addr` without `consistent` (HAProxy calls it
    /// map-based): the CRC32 of the client address, folded as Cache::Memcached
    /// does, modulo the total weight of the primary servers picks one; if it
    /// cannot take the client (not eligible, or tried), the key is hashed
    /// again with the attempt number in front, up to 20 more times, then
    /// round robin. As `ngx_stream_upstream_get_hash_peer`.
    fn source_hash_map(&self, mask: &Mask, client: IpAddr, now: Instant) -> Option<usize> {
        let primaries: Vec<usize> = (0..self.servers.len()).filter(|&i| !self.servers[i].backup).collect();
        let total: u64 = primaries.iter().map(|&i| u64::from(self.servers[i].weight)).sum();
        if primaries.len() < 2 || total == 0 {
            return self.round_robin(mask, now);
        }
        let key = client.to_canonical().to_string();
        let mut hash: u32 = 0;
        for rehash in 0..=20u32 {
            let mut h = crc32fast::Hasher::new();
            if rehash > 0 {
                h.update(rehash.to_string().as_bytes());
            }
            h.update(key.as_bytes());
            hash = hash.wrapping_add((h.finalize() >> 16) & 0x7fff);
            let mut w = u64::from(hash) % total;
            let mut pick = primaries[primaries.len() - 1];
            for &i in &primaries {
                let weight = u64::from(self.servers[i].weight);
                if w < weight {
                    pick = i;
                    break;
                }
                w -= weight;
            }
            if mask.get(pick) {
                return Some(pick);
            }
        }
        self.round_robin(mask, now)
    }

    /// nginx's `hash $remote_addr consistent`: walk the ring from the client's
    /// point to the first name with an eligible address (at most 20 points,
    /// as nginx), then fall back to round robin.
    fn source_hash(&self, mask: &Mask, client: IpAddr, now: Instant) -> Option<usize> {
        if self.ring.points.is_empty() {
            return self.round_robin(mask, now);
        }
        let key = client.to_canonical().to_string();
        let hash = crc32fast::hash(key.as_bytes());
        let start = self.ring.points.partition_point(|&(h, _)| h < hash);
        let n = self.ring.points.len();
        for t in 0..20.min(n) {
            let (_, name) = self.ring.points[(start + t) % n];
            let mut same = Mask::new(self.servers.len());
            for &i in &self.ring.names[name as usize] {
                if mask.get(i) {
                    same.set(i);
                }
            }
            if !same.is_empty() {
                return self.round_robin(&same, now);
            }
        }
        self.round_robin(mask, now)
    }
}

/// One server's smooth weighted round robin state, as nginx keeps it.
#[derive(Debug, Clone, Copy)]
struct RrWeight {
    current: i64,
    /// The weight used now: lowered after failures, back up one per pick.
    effective: i64,
}

/// nginx's consistent-hash ring: 160 points per unit of weight for each
/// server name, point hashes chained through CRC32 of `host \0 port`.
#[derive(Debug, Default)]
struct Ring {
    /// (point hash, index into `names`), sorted, duplicates dropped.
    points: Vec<(u32, u32)>,
    /// Server indices behind each name (a name may resolve to several).
    names: Vec<Vec<usize>>,
}

impl Ring {
    fn new(servers: &[Server]) -> Ring {
        let mut names: Vec<(Arc<str>, Vec<usize>)> = Vec::new();
        for (i, s) in servers.iter().enumerate() {
            if s.backup {
                continue;
            }
            match names.iter_mut().find(|(n, _)| *n == s.name) {
                Some((_, v)) => v.push(i),
                None => names.push((s.name.clone(), vec![i])),
            }
        }
        let mut points = Vec::new();
        for (ni, (name, idx)) in names.iter().enumerate() {
            let (host, port) = name.rsplit_once(':').unwrap_or((name, ""));
            let mut base = crc32fast::Hasher::new();
            base.update(host.as_bytes());
            base.update(&[0]);
            base.update(port.as_bytes());
            let weight = servers[idx[0]].weight;
            let mut prev: u32 = 0;
            for _ in 0..weight * 160 {
                let mut h = base.clone();
                h.update(&prev.to_le_bytes());
                let hash = h.finalize();
                points.push((hash, ni as u32));
                prev = hash;
            }
        }
        points.sort_unstable();
        points.dedup_by_key(|p| p.0);
        Ring { points, names: names.into_iter().map(|(_, v)| v).collect() }
    }
}

/// A small set of server indices; no allocation for pools of up to 256.
enum Mask {
    Small([u64; 4]),
    Big(Vec<u64>),
}

impl Mask {
    fn new(n: usize) -> Mask {
        if n <= 256 { Mask::Small([0; 4]) } else { Mask::Big(vec![0; n.div_ceil(64)]) }
    }
    fn words(&self) -> &[u64] {
        match self {
            Mask::Small(w) => w,
            Mask::Big(v) => v,
        }
    }
    fn set(&mut self, i: usize) {
        let w = match self {
            Mask::Small(w) => &mut w[..],
            Mask::Big(v) => &mut v[..],
        };
        w[i / 64] |= 1 << (i % 64);
    }
    fn get(&self, i: usize) -> bool {
        self.words().get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    fn is_empty(&self) -> bool {
        self.words().iter().all(|&w| w == 0)
    }
    /// The indices in the set, in order. Only the set bits are visited (each
    /// found with one trailing-zeros count): a pick in a pool of three walks
    /// three bits, not 256 (callgrind had the old walk at about 2,200
    /// instructions per new connection, most of a round-robin pick).
    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words().iter().enumerate().flat_map(|(wi, &w)| {
            let mut rest = w;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let b = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                Some(wi * 64 + b)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str, weight: u32, backup: bool) -> Server {
        let addr: SocketAddr = name.parse().unwrap();
        Server {
            name: name.into(),
            alias: None,
            nth: 0,
            addr,
            weight,
            backup,
            max_conns: 0,
            config_state: AdminState::Up,
            slow_start: Duration::ZERO,
            state: Arc::default(),
            check: None,
        }
    }

    fn pool(balance: Balance, servers: Vec<Server>) -> Pool {
        let settings = Settings { balance, ..Settings::default() };
        Pool::new("p".into(), settings, servers, Arc::default(), Default::default())
    }

    fn client() -> IpAddr {
        "192.0.2.7".parse().unwrap()
    }

    #[test]
    fn smooth_round_robin_matches_nginx_sequence() {
        // nginx's documented example: weights 5, 1, 1 give a a b a c a a.
        let p = pool(
            Balance::RoundRobin,
            vec![server("10.0.0.1:1", 5, false), server("10.0.0.2:1", 1, false), server("10.0.0.3:1", 1, false)],
        );
        let now = Instant::now();
        let seq: Vec<usize> = (0..7).map(|_| p.pick(now, client(), &[]).unwrap().idx).collect();
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn the_rotation_goes_on_in_a_pool_rebuilt_with_the_same_servers() {
        let servers = || (1..=3).map(|i| server(&format!("10.0.0.{i}:1"), 1, false)).collect::<Vec<_>>();
        let now = Instant::now();
        let mut p = pool(Balance::RoundRobin, servers());
        let mut seen = Vec::new();
        for _ in 0..30 {
            let mut next = pool(Balance::RoundRobin, servers());
            next.keep_position(&p);
            p = next;
            seen.push(p.pick(now, client(), &[]).unwrap().idx);
        }
        let counts: Vec<usize> = (0..3).map(|i| seen.iter().filter(|&&s| s == i).count()).collect();
        assert_eq!(counts, [10, 10, 10], "{seen:?}");
        let mut other = pool(Balance::RoundRobin, servers().into_iter().take(2).collect());
        other.keep_position(&p);
        assert_eq!(other.pick(now, client(), &[]).unwrap().idx, 0, "other servers: a fresh rotation");
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

    #[test]
    fn least_conn_prefers_fewest_per_weight() {
        let p = pool(Balance::LeastConn, vec![server("10.0.0.1:1", 1, false), server("10.0.0.2:1", 2, false)]);
        p.servers[0].state.active.store(2, Relaxed);
        p.servers[1].state.active.store(3, Relaxed);
        // 2/1 > 3/2: the weighted server has fewer per weight.
        assert_eq!(p.pick(Instant::now(), client(), &[]).unwrap().idx, 1);
        p.servers[1].state.active.store(5, Relaxed);
        assert_eq!(p.pick(Instant::now(), client(), &[]).unwrap().idx, 0);
    }

    #[test]
    fn random_two_avoids_the_busy_server() {
        let p = pool(Balance::RandomTwo, vec![server("10.0.0.1:1", 1, false), server("10.0.0.2:1", 1, false)]);
        p.servers[0].state.active.store(10, Relaxed);
        for _ in 0..50 {
            assert_eq!(p.pick(Instant::now(), client(), &[]).unwrap().idx, 1);
        }
    }

    #[test]
    fn source_hash_is_sticky_and_moves_few_clients_when_a_server_leaves() {
        let names = ["10.0.0.1:443", "10.0.0.2:443", "10.0.0.3:443", "10.0.0.4:443"];
        let full = pool(Balance::SourceHash, names.iter().map(|n| server(n, 1, false)).collect());
        let three = pool(Balance::SourceHash, names[..3].iter().map(|n| server(n, 1, false)).collect());
        let now = Instant::now();
        let mut moved = 0;
        let mut on_removed = 0;
        for i in 0..2000u32 {
            let ip = IpAddr::from([10, 1, (i >> 8) as u8, i as u8]);
            let a = full.pick(now, ip, &[]).unwrap().idx;
            assert_eq!(full.pick(now, ip, &[]).unwrap().idx, a, "sticky");
            let b = three.pick(now, ip, &[]).unwrap().idx;
            if a == 3 {
                on_removed += 1;
            } else if a != b {
                moved += 1;
            }
        }
        assert_eq!(moved, 0, "clients of the servers that stay keep them");
        assert!((300..700).contains(&on_removed), "about a quarter on each server: {on_removed}");
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

    #[test]
    fn mask_iterates_what_was_set() {
        let mut m = Mask::new(300);
        for i in [0, 63, 64, 299] {
            m.set(i);
        }
        assert_eq!(m.iter().collect::<Vec<_>>(), [0, 63, 64, 299]);
        assert!(m.get(64) && !m.get(65));
        let mut small = Mask::new(256);
        for i in [1, 2, 130, 255] {
            small.set(i);
        }
        assert_eq!(small.iter().collect::<Vec<_>>(), [1, 2, 130, 255]);
        assert_eq!(Mask::new(3).iter().count(), 0);
    }

    /// nginx's round robin with passive ejection, written from
    /// `ngx_stream_upstream_round_robin.c` (get_peer and free_peer), as the
    /// reference for the property below. Its time is continuous (ms): where
    /// nginx compares whole seconds with `<=` / `>`, this compares with `<`
    /// / `>=`, which is what ucp-lb means by "for fail_timeout".
    #[derive(Debug, Clone)]
    struct NginxPeer {
        weight: i64,
        effective: i64,
        current: i64,
        fails: u32,
        accessed: Option<u64>,
        checked: Option<u64>,
    }

    struct NginxModel {
        peers: Vec<NginxPeer>,
        max_fails: u32,
        fail_timeout: u64,
    }

    impl NginxModel {
        fn get_peer(&mut self, now: u64) -> Option<usize> {
            let (mut best, mut total) = (None::<usize>, 0i64);
            for i in 0..self.peers.len() {
                let p = &self.peers[i];
                if self.max_fails > 0
                    && p.fails >= self.max_fails
                    && p.checked.is_some_and(|c| now - c < self.fail_timeout)
                {
                    continue;
                }
                let p = &mut self.peers[i];
                p.current += p.effective;
                total += p.effective;
                if p.effective < p.weight {
                    p.effective += 1;
                }
                if best.is_none_or(|b| self.peers[i].current > self.peers[b].current) {
                    best = Some(i);
                }
            }
            let b = best?;
            let p = &mut self.peers[b];
            p.current -= total;
            if p.checked.is_none_or(|c| now - c >= self.fail_timeout) {
                p.checked = Some(now);
            }
            Some(b)
        }

        fn free_peer(&mut self, i: usize, now: u64, failed: bool) {
            let p = &mut self.peers[i];
            if failed {
                p.fails += 1;
                p.accessed = Some(now);
                p.checked = Some(now);
                if self.max_fails > 0 {
                    p.effective = (p.effective - p.weight / i64::from(self.max_fails)).max(0);
                }
            } else if p.accessed.is_none_or(|a| p.checked.is_some_and(|c| a < c)) {
                p.fails = 0;
            }
        }
    }

    proptest::proptest! {
        /// For any weights, max_fails, fail_timeout and any run of picks
        /// with failed or successful connects at any times, ucp-lb picks
        /// the same server as nginx's round robin, skips the same ejected
        /// servers, and has none to give exactly when nginx has none
        /// (all_down = "reject", nginx's behaviour).
        #[test]
        fn round_robin_and_passive_ejection_follow_nginx(
            weights in proptest::collection::vec(1u32..6, 2..6),
            max_fails in 0u32..4,
            fail_timeout_ms in 1u64..3000,
            steps in proptest::collection::vec((0u64..1500, proptest::bool::weighted(0.3)), 1..200),
        ) {
            let servers: Vec<Server> =
                weights.iter().enumerate().map(|(i, &w)| server(&format!("10.0.0.{}:1", i + 1), w, false)).collect();
            let settings = Settings {
                balance: Balance::RoundRobin,
                max_fails,
                fail_timeout: Duration::from_millis(fail_timeout_ms),
                all_down: AllDown::Reject,
                ..Settings::default()
            };
            let p = Pool::new("p".into(), settings, servers, Arc::default(), Default::default());
            let mut model = NginxModel {
                peers: weights
                    .iter()
                    .map(|&w| NginxPeer { weight: i64::from(w), effective: i64::from(w), current: 0, fails: 0, accessed: None, checked: None })
                    .collect(),
                max_fails,
                fail_timeout: fail_timeout_ms,
            };
            let start = Instant::now();
            let mut now_ms = 0u64;
            for (advance, fails) in steps {
                now_ms += advance;
                let now = start + Duration::from_millis(now_ms);
                let want = model.get_peer(now_ms);
                let got = p.pick(now, client(), &[]).map(|pick| pick.idx);
                proptest::prop_assert_eq!(got, want, "at {} ms", now_ms);
                if let Some(i) = want {
                    model.free_peer(i, now_ms, fails);
                    if fails {
                        p.connect_failed(i, now, FailReason::Refused);
                    } else {
                        p.connected(i, now);
                    }
                }
            }
        }
    }
}
