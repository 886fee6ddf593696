//! Who may connect to a listener, and how much one client may hold: the
//! checks made at accept, before anything else (nothing is read, nothing
//! is connected, no pool is chosen for a client they refuse).
//!
//! - [`permitted`]: the listener's `access` rules (nginx's `allow` and
//!   `deny`), in order, the first that matches deciding; a client no rule
//!   matches is let in, as nginx does. The rules and the limits are
//!   values of the config (`config/rules.rs`), which parses them.
//! - [`Clients`]: per client address, its open connections (nginx's
//!   `limit_conn` over `$binary_remote_addr`) and a token bucket of new
//!   connections per second. The table holds only clients that have a
//!   connection open or whose bucket is still refilling: the last
//!   connection of a client without a rate limit removes its entry as it
//!   closes; entries of a rate limit leave once their bucket is full again,
//!   swept at most once a second by the next admission and by every read of
//!   the table's size. So the table is bounded by the open connections
//!   plus the clients of the last second or so.
//! - [`Table`]: which [`Clients`] a listener counts in: its own, or the one
//!   of the `[limit.NAME]` it names, shared with every listener naming it
//!   (nginx's `limit_conn_zone`, which several servers may name). The
//!   shared ones are held by name in [`Limits`] (one per balancer),
//!   kept across reloads while the name stays.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::Config;
pub use crate::config::{Limits, Rule};

/// The address a client is known by: an IPv4 client seen on an IPv6
/// socket (`::ffff:10.0.0.1`) is its IPv4 address, for rules and limits.
pub fn client_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Whether `rules` let `ip` in: the first rule that matches decides; none
/// matching lets it in.
pub fn permitted(rules: &[Rule], ip: IpAddr) -> bool {
    let ip = client_ip(ip);
    rules.iter().find(|r| r.matches(ip)).is_none_or(|r| r.allow)
}

/// Why a client was refused by [`Clients::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// It holds `max_connections_per_client` already.
    Open,
    /// It used up its new connections for now.
    Rate,
}

#[derive(Debug)]
struct Client {
    open: u32,
    /// Tokens left, and when they were last refilled (rate limit only).
    tokens: f64,
    at: Instant,
}

const SHARDS: usize = 16;

/// The clients of one listener that have connections open or a bucket
/// refilling.
#[derive(Debug)]
pub struct Clients {
    shards: [Mutex<HashMap<IpAddr, Client>>; SHARDS],
    hasher: RandomState,
    /// When the table was last swept, in ms since `epoch`.
    swept_ms: AtomicU64,
    epoch: Instant,
}

impl Default for Clients {
    fn default() -> Self {
        Clients {
            shards: Default::default(),
            hasher: RandomState::new(),
            swept_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

/// Refills `c`'s bucket to `now` at `rate` per second; whether it is full.
fn refill(c: &mut Client, rate: u32, now: Instant) -> bool {
    let rate = f64::from(rate);
    c.tokens = (c.tokens + now.saturating_duration_since(c.at).as_secs_f64() * rate).min(rate);
    c.at = now;
    c.tokens >= rate
}

impl Clients {
    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, Client>> {
        &self.shards[(self.hasher.hash_one(ip) as usize) % SHARDS]
    }

    /// Counts a new connection of `ip` against `limits` at `now`: admitted
    /// (then [`Clients::release`] when it closes) or refused (nothing to
    /// release).
    pub fn admit(&self, ip: IpAddr, limits: Limits, now: Instant) -> Result<(), Refused> {
        self.sweep_if_due(limits.rate, now);
        let mut shard = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        let c = match shard.entry(ip) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => v.insert(Client { open: 0, tokens: f64::from(limits.rate), at: now }),
        };
        if limits.open > 0 && c.open >= limits.open {
            return Err(Refused::Open);
        }
        if limits.rate > 0 {
            refill(c, limits.rate, now);
            if c.tokens < 1.0 {
                return Err(Refused::Rate);
            }
            c.tokens -= 1.0;
        }
        c.open += 1;
        Ok(())
    }

    /// Counts a connection of `ip` that is open already (moved here from
    /// the process this one took over from): never refused.
    pub fn adopt(&self, ip: IpAddr, rate: u32, now: Instant) {
        let mut shard = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        shard.entry(ip).or_insert(Client { open: 0, tokens: f64::from(rate), at: now }).open += 1;
    }

    /// A connection of `ip` closed; its entry goes when nothing keeps it.
    pub fn release(&self, ip: IpAddr, rate: u32, now: Instant) {
        let mut shard = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        if let Entry::Occupied(mut o) = shard.entry(ip) {
            let c = o.get_mut();
            c.open = c.open.saturating_sub(1);
            if c.open == 0 && (rate == 0 || refill(c, rate, now)) {
                o.remove();
            }
        }
    }

    /// Removes entries with nothing open whose bucket is full again.
    pub fn sweep(&self, rate: u32, now: Instant) {
        self.swept_ms.store(now.saturating_duration_since(self.epoch).as_millis() as u64, Relaxed);
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            shard.retain(|_, c| c.open > 0 || (rate > 0 && !refill(c, rate, now)));
        }
    }

    fn sweep_if_due(&self, rate: u32, now: Instant) {
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let last = self.swept_ms.load(Relaxed);
        if ms >= last + 1000 && self.swept_ms.compare_exchange(last, ms, Relaxed, Relaxed).is_ok() {
            self.sweep(rate, now);
        }
    }

    /// Client addresses in the table (after a sweep, so a client that has
    /// gone is not counted).
    pub fn len(&self, rate: u32, now: Instant) -> usize {
        self.sweep(rate, now);
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len()).sum()
    }

    /// Open connections of `ip`.
    pub fn open(&self, ip: IpAddr) -> u32 {
        self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner()).get(&ip).map_or(0, |c| c.open)
    }
}

/// The table of clients a listener counts in: its own until it names a
/// shared limit, and its own again once it no longer does.
#[derive(Debug)]
pub struct Table {
    own: Arc<Clients>,
    current: Mutex<Arc<Clients>>,
}

impl Default for Table {
    fn default() -> Self {
        let own = Arc::new(Clients::default());
        Table { current: Mutex::new(own.clone()), own }
    }
}

impl Table {
    /// The table new connections are counted in now (a connection is
    /// released in the one it was counted in).
    pub fn get(&self) -> Arc<Clients> {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Counts in `shared` from now on; `None`: in the listener's own.
    pub fn share(&self, shared: Option<Arc<Clients>>) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = shared.unwrap_or_else(|| self.own.clone());
    }

    /// Client addresses in the table counted in now.
    pub fn len(&self, rate: u32, now: Instant) -> usize {
        self.get().len(rate, now)
    }
}

/// The shared tables of the `[limit.NAME]`s, by name: one per balancer,
/// each kept while a config names it.
#[derive(Debug, Default)]
pub struct Shared(Mutex<HashMap<Arc<str>, Arc<Clients>>>);

impl Shared {
    /// The table of the limit `name`, made on first use.
    pub fn table(&self, name: &Arc<str>) -> Arc<Clients> {
        let mut by_name = self.0.lock().unwrap_or_else(|p| p.into_inner());
        by_name.entry(name.clone()).or_default().clone()
    }

    /// Drops the tables of limits `config`'s listeners no longer name
    /// (connections counted there release into it still; it goes with the
    /// last of them).
    pub fn keep(&self, config: &Config) {
        let mut by_name = self.0.lock().unwrap_or_else(|p| p.into_inner());
        by_name.retain(|name, _| config.listeners.iter().any(|l| l.limit.as_ref() == Some(name)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rules(list: &[&str]) -> Vec<Rule> {
        list.iter().map(|r| Rule::parse(r).unwrap()).collect()
    }

    #[test]
    fn the_first_matching_rule_decides_and_no_match_lets_in() {
        let r = rules(&["deny 127.0.0.3", "allow 127.0.0.0/29", "allow 2001:db8::/32", "deny all"]);
        assert!(permitted(&r, "127.0.0.2".parse().unwrap()));
        assert!(!permitted(&r, "127.0.0.3".parse().unwrap()));
        assert!(!permitted(&r, "127.0.0.9".parse().unwrap()));
        assert!(permitted(&r, "2001:db8:1::5".parse().unwrap()));
        assert!(!permitted(&r, "2001:db9::5".parse().unwrap()));
        // An IPv4 client on an IPv6 socket is its IPv4 address.
        assert!(permitted(&r, "::ffff:127.0.0.2".parse().unwrap()));
        assert!(!permitted(&r, "::ffff:127.0.0.3".parse().unwrap()));
        assert!(permitted(&rules(&["deny 10.0.0.0/8"]), "127.0.0.1".parse().unwrap()));
        assert!(permitted(&[], "127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn open_connections_per_client_are_capped_and_leave_no_entry() {
        let c = Clients::default();
        let now = Instant::now();
        let lim = Limits { open: 2, rate: 0 };
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        assert_eq!(c.admit(a, lim, now), Ok(()));
        assert_eq!(c.admit(a, lim, now), Ok(()));
        assert_eq!(c.admit(a, lim, now), Err(Refused::Open));
        assert_eq!(c.admit(b, lim, now), Ok(()));
        assert_eq!(c.open(a), 2);
        c.release(a, 0, now);
        assert_eq!(c.admit(a, lim, now), Ok(()));
        for ip in [a, a, b] {
            c.release(ip, 0, now);
        }
        assert_eq!(c.len(0, now), 0);
    }

    #[test]
    fn new_connections_per_second_refill_and_the_entry_leaves_once_full() {
        let c = Clients::default();
        let t0 = Instant::now();
        let lim = Limits { open: 0, rate: 4 };
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..4 {
            assert_eq!(c.admit(a, lim, t0), Ok(()));
        }
        assert_eq!(c.admit(a, lim, t0), Err(Refused::Rate));
        // A quarter of a second later, one more token.
        let t1 = t0 + Duration::from_millis(260);
        assert_eq!(c.admit(a, lim, t1), Ok(()));
        assert_eq!(c.admit(a, lim, t1), Err(Refused::Rate));
        for _ in 0..5 {
            c.release(a, 4, t1);
        }
        // Closed, but its bucket is empty: it stays until refilled.
        assert_eq!(c.len(4, t1), 1);
        assert_eq!(c.len(4, t1 + Duration::from_secs(1)), 0);
    }

    #[test]
    fn listeners_naming_one_limit_count_in_one_table() {
        let shared = Shared::default();
        let (a, b) = (Table::default(), Table::default());
        let name: Arc<str> = Arc::from("ucp");
        a.share(Some(shared.table(&name)));
        b.share(Some(shared.table(&name)));
        let (now, lim, ip) = (Instant::now(), Limits { open: 2, rate: 0 }, "127.0.0.2".parse().unwrap());
        assert_eq!(a.get().admit(ip, lim, now), Ok(()));
        assert_eq!(a.get().admit(ip, lim, now), Ok(()));
        assert_eq!(b.get().admit(ip, lim, now), Err(Refused::Open));
        assert_eq!(b.len(0, now), 1);
        // Back to its own table: empty.
        b.share(None);
        assert_eq!(b.get().admit(ip, lim, now), Ok(()));
        assert_eq!(a.get().open(ip), 2);
    }
}
