//! Runtime state that outlives a snapshot: a server's passive counters,
//! connection counts, byte totals and admin override, a pool's all-down
//! latch and counters, and the registry that gives a server back its state
//! when a reload removes it and a later one adds it again. Data only: no
//! I/O, no logging; `pool/` decides with it, the status view reads it.

pub mod pool;
pub mod snapshot;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;

use crate::fail::FailReason;
use crate::health::passive::Passive;
use crate::wire::closing::Closing;

/// Runtime state of one server address in one pool, kept across reloads.
#[derive(Debug, Default)]
pub struct ServerState {
    pub passive: Mutex<Passive>,
    /// A node of the swarm (its source, shown while it is listed and after,
    /// while its connections last).
    pub from_swarm: std::sync::atomic::AtomicBool,
    /// Connections open or being opened to this server.
    pub active: AtomicU32,
    pub connections: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Failed connects by reason, indexed by `FailReason as usize`.
    pub failures: [AtomicU64; 6],
    /// Bytes from the server to clients.
    pub bytes_received: AtomicU64,
    /// Bytes from clients to the server.
    pub bytes_sent: AtomicU64,
    pub passive_ejections: AtomicU64,
    /// A runtime override of the configured state (0 = none), set by the
    /// admin endpoints; it lasts until the process restarts.
    pub override_state: AtomicU8,
    /// When a passive ejection, re-admission or override last changed it,
    /// Unix seconds (0: never).
    pub changed_at: AtomicU64,
    /// When it last came back from a passive ejection or from being set
    /// down or drained by the admin API: where its slow start counts from.
    /// (Its check's comeback is the check's.)
    back_at: Mutex<Option<Instant>>,
    /// Orders to close its open sessions (`on_server_down = "close"`).
    pub closing: Closing,
}

impl ServerState {
    pub fn failures_by(&self, r: FailReason) -> u64 {
        self.failures[r as usize].load(Relaxed)
    }

    /// Notes that its state changed now (for the page's "for 42 s").
    pub fn touch(&self) {
        self.changed_at.store(crate::events::history::now() as u64, Relaxed);
    }

    /// It came back now: its slow start begins.
    pub fn came_back(&self, now: Instant) {
        *self.back_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
    }

    pub fn back_at(&self) -> Option<Instant> {
        *self.back_at.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn passive(&self) -> MutexGuard<'_, Passive> {
        // A poisoned lock only means a panic elsewhere while holding it; the
        // counters inside are still meaningful.
        self.passive.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every server state of one load balancer, held weakly and keyed by
/// (pool, name, address), so a server that a reload removed and a later one
/// adds again gets back the state its still-open connections count in
/// (least_conn sees them), and the status can show removed servers while
/// connections to them last. An entry goes when its last holder does.
#[derive(Debug, Default)]
pub struct States {
    all: Mutex<Vec<Kept>>,
}

#[derive(Debug)]
struct Kept {
    pool: Arc<str>,
    name: Arc<str>,
    addr: SocketAddr,
    /// Which of the servers listed with the same address.
    nth: u32,
    state: std::sync::Weak<ServerState>,
}

/// A server no snapshot lists any more, with connections still open to it.
#[derive(Debug, Clone)]
pub struct Removed {
    pub pool: Arc<str>,
    pub name: Arc<str>,
    pub addr: SocketAddr,
    pub state: Arc<ServerState>,
}

impl States {
    /// The state of `name` at `addr` in `pool`: the one that exists, or a
    /// new one.
    pub fn get(&self, pool: &Arc<str>, name: &Arc<str>, addr: SocketAddr, nth: u32) -> Arc<ServerState> {
        let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        let found = all.iter().find(|k| k.addr == addr && k.name == *name && k.pool == *pool && k.nth == nth);
        if let Some(s) = found.and_then(|k| k.state.upgrade()) {
            return s;
        }
        all.retain(|k| k.state.strong_count() > 0);
        let state = Arc::new(ServerState::default());
        all.push(Kept { pool: pool.clone(), name: name.clone(), addr, nth, state: Arc::downgrade(&state) });
        state
    }

    /// Servers with open connections that `listed` does not name (each
    /// `(pool, name, addr)` it does).
    pub fn removed(&self, listed: impl Fn(&str, &str, SocketAddr, u32) -> bool) -> Vec<Removed> {
        let all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        all.iter()
            .filter(|k| !listed(&k.pool, &k.name, k.addr, k.nth))
            .filter_map(|k| {
                let state = k.state.upgrade()?;
                (state.active.load(Relaxed) > 0).then(|| Removed {
                    pool: k.pool.clone(),
                    name: k.name.clone(),
                    addr: k.addr,
                    state,
                })
            })
            .collect()
    }
}

/// Pool-wide state kept across reloads.
#[derive(Debug, Default)]
pub struct PoolState {
    /// Latched while no server of the pool is eligible (failing open or
    /// rejecting), so each episode is logged once.
    pub all_down: AtomicBool,
    pub fail_open_picks: AtomicU64,
    pub no_server: AtomicU64,
}
