//! Passive ejection: nginx's `max_fails` / `fail_timeout`, as a pure state
//! machine that takes `now` (no I/O, no metrics, no logging).
//!
//! It follows `ngx_stream_upstream_round_robin.c`: a failed connect adds one
//! to `fails` and stamps `accessed` and `checked`. While `fails >= max_fails`
//! and `checked` is less than `fail_timeout` ago, the server is skipped. Once
//! that has passed, the next pick lets one client try it and stamps `checked`
//! again, so only one client per `fail_timeout` pays for a server still
//! broken. A successful connect that follows such a pick resets the count;
//! a success in between leaves it, so this is not a sliding window.

use tokio::time::Instant;

/// What a call changed, for the caller to log and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The count reached `max_fails`: the server is skipped from now on.
    Ejected,
    /// A trial connect after `fail_timeout` succeeded: back in rotation.
    Readmitted,
}

#[derive(Debug, Default, Clone)]
pub struct Passive {
    fails: u32,
    /// Time of the last failure.
    accessed: Option<Instant>,
    /// Time of the last failure or of the last trial pick after `fail_timeout`.
    checked: Option<Instant>,
}

impl Passive {
    pub fn fails(&self) -> u32 {
        self.fails
    }

    /// The state as another process can take it: the count, and how long
    /// ago the last failure and the last check were.
    pub fn carried(&self, now: Instant) -> (u32, Option<std::time::Duration>, Option<std::time::Duration>) {
        let ago = |t: Option<Instant>| t.map(|t| now.saturating_duration_since(t));
        (self.fails, ago(self.accessed), ago(self.checked))
    }

    /// The state another process carried: an ejection goes on for what was
    /// left of it.
    pub fn restored(
        now: Instant,
        fails: u32,
        accessed_ago: Option<std::time::Duration>,
        checked_ago: Option<std::time::Duration>,
    ) -> Passive {
        // (Both processes count from the same boot: a time the old one
        // saw is always representable here.)
        let at = |ago: Option<std::time::Duration>| ago.map(|a| now.checked_sub(a).unwrap_or(now));
        Passive { fails, accessed: at(accessed_ago), checked: at(checked_ago) }
    }

    /// Whether the server is skipped now.
    pub fn ejected(&self, now: Instant, max_fails: u32, fail_timeout: std::time::Duration) -> bool {
        max_fails > 0
            && self.fails >= max_fails
            && self.checked.is_some_and(|c| now.saturating_duration_since(c) < fail_timeout)
    }

    /// When the server stops being skipped, if it is skipped at `now`: the
    /// moment a state that changes with time alone changes, for whoever
    /// follows pool state without traffic.
    pub fn ejected_until(&self, now: Instant, max_fails: u32, fail_timeout: std::time::Duration) -> Option<Instant> {
        self.ejected(now, max_fails, fail_timeout).then(|| self.checked.map(|c| c + fail_timeout)).flatten()
    }

    /// The server was picked for a client: once `fail_timeout` has passed
    /// since the last check, this pick is the trial, and restarts the wait for
    /// everyone else.
    pub fn picked(&mut self, now: Instant, fail_timeout: std::time::Duration) {
        if self.checked.is_none_or(|c| now.saturating_duration_since(c) >= fail_timeout) {
            self.checked = Some(now);
        }
    }

    pub fn failed(&mut self, now: Instant, max_fails: u32) -> Option<Transition> {
        self.fails = self.fails.saturating_add(1);
        self.accessed = Some(now);
        self.checked = Some(now);
        (max_fails > 0 && self.fails == max_fails).then_some(Transition::Ejected)
    }

    pub fn connected(&mut self, max_fails: u32) -> Option<Transition> {
        // `accessed < checked`: a trial pick came after the last failure.
        let trial = match (self.accessed, self.checked) {
            (None, _) => true,
            (Some(a), Some(c)) => a < c,
            (Some(_), None) => false,
        };
        if !trial || self.fails == 0 {
            return None;
        }
        let was_out = max_fails > 0 && self.fails >= max_fails;
        self.fails = 0;
        was_out.then_some(Transition::Readmitted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn ejected_after_max_fails_until_fail_timeout() {
        let t0 = Instant::now();
        let mut p = Passive::default();
        assert_eq!(p.failed(t0, 2), None);
        assert!(!p.ejected(t0, 2, secs(30)));
        assert_eq!(p.failed(t0 + secs(1), 2), Some(Transition::Ejected));
        assert!(p.ejected(t0 + secs(30), 2, secs(30)));
        assert!(!p.ejected(t0 + secs(31), 2, secs(30)));
        assert_eq!(p.ejected_until(t0 + secs(2), 2, secs(30)), Some(t0 + secs(31)));
        assert_eq!(p.ejected_until(t0 + secs(31), 2, secs(30)), None);
    }

    #[test]
    fn one_trial_per_fail_timeout() {
        let t0 = Instant::now();
        let mut p = Passive::default();
        p.failed(t0, 2);
        p.failed(t0, 2);
        let t1 = t0 + secs(30);
        assert!(!p.ejected(t1, 2, secs(30)));
        p.picked(t1, secs(30));
        // The trial is under way: nobody else is sent there meanwhile.
        assert!(p.ejected(t1 + secs(1), 2, secs(30)));
        // It fails again: out for another fail_timeout, no second "ejected".
        assert_eq!(p.failed(t1 + secs(1), 2), None);
        assert!(p.ejected(t1 + secs(30), 2, secs(30)));
        let t2 = t1 + secs(31);
        p.picked(t2, secs(30));
        assert_eq!(p.connected(2), Some(Transition::Readmitted));
        assert_eq!(p.fails(), 0);
        assert!(!p.ejected(t2, 2, secs(30)));
    }

    #[test]
    fn success_within_fail_timeout_keeps_the_count() {
        let t0 = Instant::now();
        let mut p = Passive::default();
        p.failed(t0, 2);
        p.picked(t0 + secs(5), secs(30));
        assert_eq!(p.connected(2), None);
        assert_eq!(p.fails(), 1);
        assert_eq!(p.failed(t0 + secs(10), 2), Some(Transition::Ejected));
    }

    #[test]
    fn success_after_fail_timeout_resets_the_count() {
        let t0 = Instant::now();
        let mut p = Passive::default();
        p.failed(t0, 2);
        p.picked(t0 + secs(40), secs(30));
        assert_eq!(p.connected(2), None);
        assert_eq!(p.fails(), 0);
        assert_eq!(p.failed(t0 + secs(41), 2), None);
    }

    #[test]
    fn max_fails_zero_never_ejects() {
        let t0 = Instant::now();
        let mut p = Passive::default();
        for _ in 0..10 {
            assert_eq!(p.failed(t0, 0), None);
        }
        assert!(!p.ejected(t0, 0, secs(30)));
    }
}
