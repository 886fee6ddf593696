//! What an active check last found: its rise/fall state machine, the
//! state it decided, why the last probe failed, and its counters.
//!
//! A leaf, free of I/O: `health.rs` runs the probes and feeds their outcomes
//! in through [`Check::record`]; `state/pool/` reads [`Check::is_up`] to decide
//! eligibility; the status view reads the rest. Every change of state wakes
//! `changed`, so whoever follows the pools (the status watcher) learns of it
//! at once, whether or not a client arrives.

use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::events::changes::Changes;
use crate::events::history::{History, now};
use tracing::{info, warn};

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

    /// Consecutive results against the current state so far.
    pub fn streak(&self) -> u32 {
        self.streak
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

/// The most of a peer's text kept in a reason, in characters.
pub const REASON_MAX: usize = 256;

/// Text that came from a peer (a JSON `Error` field, a TLS alert, a
/// malformed response) made safe to log and show: control characters
/// written as escapes, so a backend cannot forge a log line, and at most
/// [`REASON_MAX`] characters.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(REASON_MAX + 8));
    for (n, c) in text.chars().enumerate() {
        if n == REASON_MAX {
            out.push('…');
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// What a check has found, as it moves to the process that takes over
/// (`ucp-lb --upgrade`): the new process goes on from here instead of
/// starting unknown, so a server that is down stays down until `rise`
/// probes pass, counted from where the old process was.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Carried {
    /// 0 unknown, 1 up, 2 down.
    pub state: u8,
    pub streak: u32,
    pub reason: Option<String>,
    pub since: u64,
    pub probes: u64,
    pub failures: u64,
    pub downs: u64,
    pub cert_not_after: i64,
    /// How long ago it last went from down to up, milliseconds (slow
    /// start goes on from there). Absent from an older process's message.
    #[serde(default)]
    pub back_ago_ms: Option<u64>,
}

/// One shared active check's results.
#[derive(Debug)]
pub struct Check {
    /// For logs and the status: `https://10.0.0.1:443/_ping`.
    pub label: String,
    rise: u32,
    fall: u32,
    machine: Mutex<RiseFall>,
    state: AtomicU8,
    first: watch::Sender<CheckState>,
    /// Told of every change of state.
    history: Arc<History>,
    changes: Arc<Changes>,
    /// When the state last changed, Unix seconds (0: never).
    since: AtomicU64,
    /// When it last went from down to up: where the slow start of the
    /// servers it checks counts from. (Up at the first result is not a
    /// comeback.)
    back_at: Mutex<Option<Instant>>,
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
    pub fn new(label: String, rise: u32, fall: u32, history: Arc<History>, changes: Arc<Changes>) -> Check {
        Check {
            label,
            rise,
            fall,
            machine: Mutex::default(),
            state: AtomicU8::new(CheckState::Unknown as u8),
            first: watch::Sender::new(CheckState::Unknown),
            history,
            changes,
            since: AtomicU64::new(0),
            back_at: Mutex::new(None),
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

    /// When it last went from down to up, if it did.
    pub fn back_at(&self) -> Option<Instant> {
        *self.back_at.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the state last changed, Unix seconds; `None` before the first
    /// result.
    pub fn since(&self) -> Option<u64> {
        Some(self.since.load(Relaxed)).filter(|&s| s != 0)
    }

    /// What it has found, to carry to another process.
    pub fn carried(&self) -> Carried {
        let machine = self.machine.lock().unwrap_or_else(|p| p.into_inner());
        Carried {
            state: machine.state() as u8,
            streak: machine.streak(),
            reason: self.reason(),
            since: self.since.load(Relaxed),
            probes: self.probes.load(Relaxed),
            failures: self.failures.load(Relaxed),
            downs: self.downs.load(Relaxed),
            cert_not_after: self.cert_not_after.load(Relaxed),
            back_ago_ms: self.back_at().map(|t| t.elapsed().as_millis() as u64),
        }
    }

    /// Goes on from what another process found (before its own first
    /// probe; silently: nothing changed).
    pub fn restore(&self, c: &Carried) {
        let state = match c.state {
            1 => CheckState::Up,
            2 => CheckState::Down,
            _ => return,
        };
        *self.machine.lock().unwrap_or_else(|p| p.into_inner()) = RiseFall { state, streak: c.streak };
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = c.reason.as_deref().map(printable);
        self.state.store(state as u8, Relaxed);
        self.since.store(c.since, Relaxed);
        self.probes.store(c.probes, Relaxed);
        self.failures.store(c.failures, Relaxed);
        self.downs.store(c.downs, Relaxed);
        self.cert_not_after.store(c.cert_not_after, Relaxed);
        let now = Instant::now();
        *self.back_at.lock().unwrap_or_else(|p| p.into_inner()) =
            c.back_ago_ms.map(|ms| now.checked_sub(Duration::from_millis(ms)).unwrap_or(now));
        self.first.send_replace(state);
    }

    /// Waits until the first probe has decided.
    pub async fn first_result(&self) {
        let mut rx = self.first.subscribe();
        let _ = rx.wait_for(|s| *s != CheckState::Unknown).await;
    }

    /// Adds the duration histogram of one (pool, server) using this check.
    pub fn observe_for(&self, key: String, h: impl FnOnce() -> metrics::Histogram) {
        let mut obs = self.observers.lock().unwrap_or_else(|p| p.into_inner());
        if !obs.iter().any(|(k, _)| *k == key) {
            obs.push((key, h()));
        }
    }

    /// Applies one probe's outcome (`failure`: why it failed, `None` when
    /// it passed); logs a change of state once, with why.
    pub fn record(&self, failure: Option<String>, cert_not_after: Option<i64>, took: Duration) {
        self.probes.fetch_add(1, Relaxed);
        for (_, h) in self.observers.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            h.record(took.as_secs_f64());
        }
        self.last_duration_us.store(took.as_micros() as u64, Relaxed);
        if let Some(t) = cert_not_after {
            self.cert_not_after.store(t, Relaxed);
        }
        let failure = failure.map(|f| printable(&f));
        let ok = failure.is_none();
        if !ok {
            self.failures.fetch_add(1, Relaxed);
        }
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = failure.clone();
        let change = self.machine.lock().unwrap_or_else(|p| p.into_inner()).observe(ok, self.rise, self.fall);
        if let Some(new) = change {
            if new == CheckState::Down && self.state() == CheckState::Up {
                self.downs.fetch_add(1, Relaxed);
            }
            let was = self.state();
            if (was, new) == (CheckState::Down, CheckState::Up) {
                *self.back_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            }
            self.state.store(new as u8, Relaxed);
            self.since.store(now() as u64, Relaxed);
            self.first.send_replace(new);
            // A first result that is up is how every server starts: no event
            // for it, but one for everything else.
            self.changes.notify();
            match (was, new, &failure) {
                (CheckState::Unknown, CheckState::Up, _) => {}
                (_, CheckState::Down, Some(reason)) => {
                    self.history.record("server down", None, Some(&self.label), reason.clone())
                }
                _ => self.history.record("server up", None, Some(&self.label), "check passes"),
            }
            match (new, &failure) {
                (CheckState::Down, Some(reason)) => {
                    warn!(check = %self.label, %reason, fall = self.fall, "server down: active check failed")
                }
                _ => info!(check = %self.label, rise = self.rise, "server up: active check passes"),
            }
        }
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
    fn a_backend_cannot_forge_a_log_line_or_flood_the_status() {
        let c = Check::new("http://x/_ping".into(), 1, 1, Arc::default(), Arc::default());
        let forged =
            "body: Healthy is false (Error: x\n2026-01-01T00:00:00Z  INFO ucp_lb: admin token replaced\u{1b}[2J)";
        c.record(Some(forged.into()), None, Duration::ZERO);
        let r = c.reason().unwrap();
        assert!(!r.contains('\n') && !r.contains('\u{1b}'), "{r}");
        assert!(r.contains("x\\n2026-01-01") && r.contains("\\u{1b}[2J"), "{r}");
        c.record(Some("y".repeat(10_000)), None, Duration::ZERO);
        assert_eq!(c.reason().unwrap().chars().count(), REASON_MAX + 1, "capped, with an ellipsis");
    }

    #[test]
    fn a_change_of_state_is_recorded_and_a_repeat_is_not() {
        let history = Arc::new(History::default());
        let c = Check::new("tcp://x".into(), 1, 1, history.clone(), Default::default());
        c.record(Some("connect refused".into()), None, Duration::ZERO);
        assert_eq!(c.state(), CheckState::Down);
        assert!(c.since().is_some());
        c.record(Some("connect refused".into()), None, Duration::ZERO);
        let e = history.events();
        assert_eq!(e.len(), 1, "no change, no event: {e:?}");
        assert_eq!(
            (e[0].what, e[0].server.as_deref(), e[0].detail.as_str()),
            ("server down", Some("tcp://x"), "connect refused")
        );
        c.record(None, None, Duration::ZERO);
        assert_eq!(history.events()[0].what, "server up");
    }
}
