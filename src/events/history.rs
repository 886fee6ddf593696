//! What happened, for an operator who opens the page after an incident:
//! the last 100 state changes of the whole balancer (checks, ejections,
//! overrides, reloads, pools losing and regaining their servers) and, per
//! pool, open and new connections over the last 15 minutes. Both move to
//! the process that takes over in an upgrade ([`History::export_events`],
//! [`History::import_events`] and the same for samples).
//!
//! Every event goes through [`History::record`]. A leaf: the callers
//! (checks, connections, the admin API, reloads, the watcher) say what
//! happened, and wake the watcher themselves where state changed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// State changes kept.
pub const EVENTS: usize = 100;
/// Traffic samples kept per pool: 15 minutes, one every 10 s.
pub const SAMPLES: usize = 90;
/// How often the traffic of each pool is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// Unix time in seconds, as an operator reads it.
pub fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// One state change.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Unix seconds.
    pub at: f64,
    /// One of [`KINDS`]: `server down`, `server up`, `ejected`,
    /// `readmitted`, `drain`, `enable`, `down`, `reload`, `reload failed`,
    /// `pool all down`, `pool has a server again`, `closing sessions`,
    /// `handed over`, `took over`, `upgrade resumed`.
    pub what: &'static str,
    pub pool: Option<String>,
    /// The server (its label), or the check's target for a check shared by
    /// several pools.
    pub server: Option<String>,
    /// Why, in an operator's words ("status 500", "3 failed connects").
    pub detail: String,
}

/// One sample of a pool's traffic.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    /// Unix seconds.
    pub at: f64,
    /// Connections open then.
    pub open: u64,
    /// Connections made since the process started (per-second rates come
    /// from two samples).
    pub total: u64,
}

/// Every kind of event ([`Event::what`]): a carried event of another kind
/// (a newer process's) is kept as [`OTHER`].
pub const KINDS: &[&str] = &[
    "server down",
    "server up",
    "ejected",
    "readmitted",
    "drain",
    "enable",
    "down",
    "reload",
    "reload failed",
    "pool all down",
    "pool has a server again",
    "closing sessions",
    "handed over",
    "took over",
    "upgrade resumed",
];
/// The most of each text of an event that is carried.
pub const CARRIED_TEXT: usize = 4096;
/// What a carried event of a kind this process does not know is shown as.
pub const OTHER: &str = "event";

/// An event as it travels to the process taking over (`ucp-lb --upgrade`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Carried {
    pub at: f64,
    pub what: String,
    pub pool: Option<String>,
    pub server: Option<String>,
    pub detail: String,
}

/// The memory of one load balancer: its events and traffic samples. (The
/// change signal is [`crate::events::changes::Changes`].)
#[derive(Debug, Default)]
pub struct History {
    events: Mutex<VecDeque<Event>>,
    samples: Mutex<BTreeMap<String, VecDeque<Sample>>>,
}

impl History {
    /// Keeps `event` (the oldest beyond [`EVENTS`] go).
    pub fn record(&self, what: &'static str, pool: Option<&str>, server: Option<&str>, detail: impl Into<String>) {
        let e = Event {
            at: now(),
            what,
            pool: pool.map(str::to_owned),
            server: server.map(str::to_owned),
            detail: detail.into(),
        };
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if events.len() == EVENTS {
            events.pop_front();
        }
        events.push_back(e);
    }

    /// The kept events, newest first.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).iter().rev().cloned().collect()
    }

    /// Adds one sample of `pool`'s traffic; pools not sampled for 15
    /// minutes (removed by a reload) are forgotten by `forget_others`.
    pub fn sample(&self, pool: &str, open: u64, total: u64) {
        let mut all = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let ring = all.entry(pool.to_owned()).or_default();
        if ring.len() == SAMPLES {
            ring.pop_front();
        }
        ring.push_back(Sample { at: now(), open, total });
    }

    /// Forgets the samples of pools not in `keep`.
    pub fn forget_others(&self, keep: &[&str]) {
        self.samples.lock().unwrap_or_else(|p| p.into_inner()).retain(|k, _| keep.contains(&k.as_str()));
    }

    /// The kept events, oldest first, to carry to a successor (each text
    /// cut to [`CARRIED_TEXT`] bytes, so every event fits a message).
    pub fn export_events(&self) -> Vec<Carried> {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let cut = |s: &str| {
            let mut end = s.len().min(CARRIED_TEXT);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s[..end].to_owned()
        };
        events
            .iter()
            .map(|e| Carried {
                at: e.at,
                what: e.what.to_owned(),
                pool: e.pool.as_deref().map(cut),
                server: e.server.as_deref().map(cut),
                detail: cut(&e.detail),
            })
            .collect()
    }

    /// Every pool's samples, oldest first, to carry to a successor.
    pub fn export_samples(&self) -> Vec<(String, Vec<Sample>)> {
        let all = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        all.iter().map(|(k, r)| (k.clone(), r.iter().copied().collect())).collect()
    }

    /// Puts events carried from the process before this one ahead of this
    /// one's own (oldest first, as exported), within [`EVENTS`].
    pub fn import_events(&self, carried: Vec<Carried>) {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let mine: Vec<Event> = events.drain(..).collect();
        for c in carried {
            let what = KINDS.iter().copied().find(|k| *k == c.what).unwrap_or(OTHER);
            events.push_back(Event { at: c.at, what, pool: c.pool, server: c.server, detail: c.detail });
        }
        events.extend(mine);
        while events.len() > EVENTS {
            events.pop_front();
        }
    }

    /// Puts `pool`'s samples carried from the process before this one ahead
    /// of this one's own, within [`SAMPLES`].
    pub fn import_samples(&self, pool: &str, carried: Vec<Sample>) {
        let mut all = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let ring = all.entry(pool.to_owned()).or_default();
        let mine: Vec<Sample> = ring.drain(..).collect();
        ring.extend(carried);
        ring.extend(mine);
        while ring.len() > SAMPLES {
            ring.pop_front();
        }
    }

    /// `pool`'s samples, oldest first.
    pub fn samples(&self, pool: &str) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(pool)
            .map(|r| r.iter().copied().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_hundred_events_are_kept_newest_first() {
        let h = History::default();
        for i in 0..150 {
            h.record("server down", Some("p"), Some("s"), format!("{i}"));
        }
        let e = h.events();
        assert_eq!(e.len(), EVENTS);
        assert_eq!((e[0].detail.as_str(), e[99].detail.as_str()), ("149", "50"));
    }

    #[test]
    fn samples_are_bounded_per_pool() {
        let h = History::default();
        for i in 0..200 {
            h.sample("p", i, i);
        }
        let s = h.samples("p");
        assert_eq!((s.len(), s[0].open, s[SAMPLES - 1].open), (SAMPLES, 110, 199));
        h.forget_others(&[]);
        assert!(h.samples("p").is_empty());
    }

    #[test]
    fn events_and_samples_carry_ahead_of_the_successors_own() {
        let old = History::default();
        for i in 0..120 {
            old.record("reload", None, None, format!("{i}"));
        }
        old.record("closing sessions", Some("p"), Some("s"), "é".repeat(CARRIED_TEXT));
        for i in 0..SAMPLES as u64 {
            old.sample("p", i, i);
        }
        let new = History::default();
        new.record("took over", None, None, "mine");
        new.sample("p", 1000, 1000);
        let wire = serde_json::to_string(&old.export_events()).unwrap();
        new.import_events(serde_json::from_str(&wire).unwrap());
        for (pool, s) in old.export_samples() {
            new.import_samples(&pool, s);
        }
        let e = new.events();
        assert_eq!(e.len(), EVENTS);
        assert_eq!((e[0].what, e[1].what, e[2].detail.as_str()), ("took over", "closing sessions", "119"));
        assert_eq!(e[1].detail.len(), CARRIED_TEXT, "cut at a character boundary");
        let s = new.samples("p");
        assert_eq!((s.len(), s[0].open, s[SAMPLES - 1].open), (SAMPLES, 1, 1000));
        let mut odd = old.export_events();
        odd[0].what = "something newer".into();
        let fresh = History::default();
        fresh.import_events(odd);
        assert_eq!(fresh.events().last().map(|e| e.what), Some(OTHER));
    }
}
