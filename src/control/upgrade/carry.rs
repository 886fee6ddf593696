//! The runtime state that moves with an upgrade (`ucp-lb --upgrade`): per
//! server, what its active check found (state, rise/fall count, reason),
//! its passive ejection with the time it has left, its admin override and
//! its counters. The old process exports it from its snapshot; the new one
//! applies it to the snapshot it built from its own config, matching
//! servers by (pool, configured address, resolved address, repeat), so a
//! server the new config no longer lists is simply not found, and one it
//! adds starts fresh. A close order in progress moves too (its spread goes
//! on); the event history, traffic samples and reload counters travel as
//! messages of their own (`mod.rs`).

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::health::check;
use crate::health::passive::Passive;
use crate::state::snapshot::Snapshot;

/// One server's state, as it travels.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Server {
    pub pool: String,
    /// The address as configured.
    pub name: String,
    pub addr: SocketAddr,
    pub nth: u32,
    pub check: Option<check::Carried>,
    pub fails: u32,
    pub failed_ago_ms: Option<u64>,
    pub checked_ago_ms: Option<u64>,
    pub override_state: u8,
    pub changed_at: u64,
    pub connections: u64,
    pub connect_failures: u64,
    pub failures: [u64; 6],
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub passive_ejections: u64,
    /// How long ago it came back from a passive ejection or an admin
    /// override, milliseconds (its slow start goes on from there).
    #[serde(default)]
    pub back_ago_ms: Option<u64>,
    /// Sessions closed because it went down.
    #[serde(default)]
    pub sessions_closed: u64,
    /// Its close order in progress (`on_server_down = "close"`), if one
    /// stands: the spread goes on in the new process.
    #[serde(default)]
    pub closing: Option<crate::wire::closing::CarriedOrder>,
}

fn ms(d: Option<Duration>) -> Option<u64> {
    d.map(|d| d.as_millis() as u64)
}

/// Every server's state in `snap`, now.
pub fn export(snap: &Snapshot) -> Vec<Server> {
    let now = Instant::now();
    let mut out = Vec::new();
    for pool in &snap.pools {
        for s in &pool.servers {
            let st = &s.state;
            let (fails, failed, checked) = st.passive().carried(now);
            out.push(Server {
                pool: pool.name.to_string(),
                name: s.name.to_string(),
                addr: s.addr,
                nth: s.nth,
                check: s.check.as_ref().map(|c| c.carried()),
                fails,
                failed_ago_ms: ms(failed),
                checked_ago_ms: ms(checked),
                override_state: st.override_state.load(Relaxed),
                changed_at: st.changed_at.load(Relaxed),
                connections: st.connections.load(Relaxed),
                connect_failures: st.connect_failures.load(Relaxed),
                failures: std::array::from_fn(|i| st.failures[i].load(Relaxed)),
                bytes_sent: st.bytes_sent.load(Relaxed),
                bytes_received: st.bytes_received.load(Relaxed),
                passive_ejections: st.passive_ejections.load(Relaxed),
                back_ago_ms: st.back_at().map(|t| now.saturating_duration_since(t).as_millis() as u64),
                sessions_closed: st.closing.closed.load(Relaxed),
                closing: st.closing.carried(now, st.active.load(Relaxed)),
            });
        }
    }
    out
}

/// Applies `carried` to the servers of `snap` it names; returns how many
/// it found.
pub fn import(snap: &Snapshot, carried: &[Server]) -> usize {
    let now = Instant::now();
    let mut found = 0;
    for c in carried {
        let Some(pool) = snap.pool(&c.pool) else { continue };
        let Some(s) = pool.servers.iter().find(|s| s.addr == c.addr && *s.name == *c.name && s.nth == c.nth) else {
            continue;
        };
        found += 1;
        if let (Some(check), Some(carried)) = (&s.check, &c.check) {
            check.restore(carried);
        }
        let st = &s.state;
        let ago = |v: Option<u64>| v.map(Duration::from_millis);
        *st.passive() = Passive::restored(now, c.fails, ago(c.failed_ago_ms), ago(c.checked_ago_ms));
        st.override_state.store(c.override_state, Relaxed);
        st.changed_at.store(c.changed_at, Relaxed);
        st.connections.store(c.connections, Relaxed);
        st.connect_failures.store(c.connect_failures, Relaxed);
        for (a, v) in st.failures.iter().zip(c.failures) {
            a.store(v, Relaxed);
        }
        st.bytes_sent.store(c.bytes_sent, Relaxed);
        st.bytes_received.store(c.bytes_received, Relaxed);
        st.passive_ejections.store(c.passive_ejections, Relaxed);
        st.closing.closed.store(c.sessions_closed, Relaxed);
        if let Some(order) = c.closing {
            st.closing.restore(now, order);
        }
        if let Some(ms) = c.back_ago_ms {
            st.came_back(now.checked_sub(Duration::from_millis(ms)).unwrap_or(now));
        }
    }
    found
}
