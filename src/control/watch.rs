//! The watcher: follows one balancer's state as it changes and does what a
//! change calls for, whether or not a client arrives. It logs a pool's
//! all-down episodes once each, gives and withdraws the close orders of
//! servers that went down (`closing.rs`), and samples each pool's traffic
//! for the page. It wakes on the balancer's change signal
//! (`changes.rs`) and at the moment a passive ejection ends by itself.
//!
//! What the operator is shown is computed by the status view (`view/`), not here.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::{AdminState, AllDown, OnServerDown};
use crate::health::check::CheckState;
use crate::state::pool::Pool;
use crate::state::snapshot::Shared;
use crate::wire::conns::Conns;

/// Follows every pool of the running snapshot for ever (cancel by
/// dropping): when its last available server goes, and when the first comes
/// back, logs it once. Wakes on every change of a check, a passive
/// ejection or re-admission, an admin override and a new snapshot, and at
/// the moment a passive ejection ends by itself.
pub async fn follow(shared: Arc<Shared>) {
    let changes = shared.own.changes.clone();
    loop {
        // Every change wakes with notify_one, which keeps a permit when
        // nobody waits: a change made while the state is read wakes the
        // next round.
        let woken = changes.changed();
        let snap = shared.snapshot.load_full();
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for p in &snap.pools {
            note_all_down(p, p.all_down(now));
            order_closes(p, now, &snap.conns);
            next = match (next, p.next_change(now)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        drop(snap);
        match next {
            Some(at) => {
                tokio::select! {
                    _ = woken => {}
                    _ = crate::timer::sleep_until(at) => {}
                }
            }
            None => woken.await,
        }
    }
}

/// Gives or withdraws the close orders of `p`'s servers: the open
/// sessions of a server its check marks down or the admin API sets down
/// are closed, spread over `close_spread`, where the pool says
/// `on_server_down = "close"` and has another server to take their
/// clients (not while it fails open: they would come back to the same
/// servers). An order stands while that stays true; withdrawn (the server
/// back, the pool out of servers, the key set back to keep), the sessions
/// not closed yet go on.
fn order_closes(p: &Pool, now: Instant, conns: &Conns) {
    let elsewhere = !p.all_down(now);
    for s in &p.servers {
        let down =
            s.admin_state() == AdminState::Down || s.check.as_ref().is_some_and(|c| c.state() == CheckState::Down);
        let wanted = p.settings.on_server_down == OnServerDown::Close && down && elsewhere;
        let closing = &s.state.closing;
        if wanted && !closing.standing() {
            let open = s.state.active.load(Relaxed);
            let spread = p.settings.close_spread;
            closing.order(now, spread, open);
            if open > 0 {
                conns.wake_all();
                let detail = format!("{open} open, spread over {}", crate::config::format_duration(spread));
                p.history.record("closing sessions", Some(&p.name), Some(&s.label()), detail);
                info!(
                    pool = %p.name,
                    server = %s.label(),
                    open,
                    close_spread_s = spread.as_secs_f64(),
                    "server down: closing its open sessions (on_server_down = close)"
                );
            }
        } else if !wanted && closing.standing() {
            closing.withdraw();
        }
    }
}

/// Logs the start and the end of an all-down episode, once each, and
/// keeps them in the history.
fn note_all_down(p: &Pool, down: bool) {
    if !p.set_all_down(down) {
        return;
    }
    match (down, p.settings.all_down) {
        (true, AllDown::FailOpen) => p.history.record("pool all down", Some(&p.name), None, "failing open"),
        (true, AllDown::Reject) => p.history.record("pool all down", Some(&p.name), None, "closing new clients"),
        (false, _) => p.history.record("pool has a server again", Some(&p.name), None, ""),
    }
    match (down, p.settings.all_down) {
        (true, AllDown::FailOpen) => warn!(
            pool = %p.name,
            all_down = "fail_open",
            "no server is eligible: failing open over every server not set down"
        ),
        (true, AllDown::Reject) => {
            warn!(pool = %p.name, all_down = "reject", "no server is eligible: closing new clients")
        }
        (false, _) => info!(pool = %p.name, "a server is eligible again"),
    }
}

/// Samples every pool's traffic every [`crate::events::history::SAMPLE_EVERY`] for
/// ever (cancel by dropping): open connections and connections so far.
pub async fn sample_loop(shared: Arc<Shared>) {
    let mut tick = crate::timer::interval(crate::events::history::SAMPLE_EVERY);
    loop {
        tick.tick().await;
        let snap = shared.snapshot.load_full();
        let history = &shared.own.history;
        for p in &snap.pools {
            let open = p.servers.iter().map(|s| u64::from(s.state.active.load(Relaxed))).sum();
            let total = p.servers.iter().map(|s| s.state.connections.load(Relaxed)).sum();
            history.sample(&p.name, open, total);
        }
        let names: Vec<&str> = snap.pools.iter().map(|p| &*p.name).collect();
        history.forget_others(&names);
    }
}
