//! Validation: the raw mirror of lb.toml (`raw.rs`) into a typed
//! [`Config`], with every problem found (file, line, column, key, what was
//! expected) and every warning. This file walks the tables in order and
//! holds the checks of single values; `admin.rs`, `listeners.rs`,
//! `pools.rs` and `health.rs` validate their tables.

mod admin;
mod cluster;
mod health;
mod listeners;
mod pools;

use std::ops::Range;
use std::time::Duration;

use super::raw::{self, RawConfig, S};
use super::*;

pub(super) struct Validator<'a> {
    pub(super) source: &'a str,
    pub(super) lines: &'a LineIndex<'a>,
    pub(super) errors: Vec<ConfigError>,
    pub(super) warnings: Vec<ConfigError>,
}

impl Validator<'_> {
    fn err(&mut self, span: Option<Range<usize>>, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            source: self.source.to_owned(),
            pos: span.map(|s| self.lines.pos(s.start)),
            key: key.into(),
            message: message.into(),
        });
    }

    fn warn(&mut self, span: Option<Range<usize>>, key: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(ConfigError {
            source: self.source.to_owned(),
            pos: span.map(|s| self.lines.pos(s.start)),
            key: key.into(),
            message: message.into(),
        });
    }

    /// The whole config: every table, every problem.
    pub(super) fn config(&mut self, raw: &RawConfig) -> Config {
        let workers = raw.workers.as_ref().and_then(|w| {
            let n = *w.get_ref();
            if (1..=1024).contains(&n) {
                Some(n as usize)
            } else {
                self.err(Some(w.span()), "workers", format!("expected an integer from 1 to 1024, found {n}"));
                None
            }
        });
        let base = Settings::default();
        let defaults = match &raw.defaults {
            Some(d) => self.settings(d.settings(), &base, "defaults"),
            None => base,
        };
        let pools = self.pools(raw, &defaults);
        let limits = self.shared_limits(raw);
        let cluster = self.cluster(raw, &pools);
        let (listeners, binds) = self.listeners(raw);
        if raw.pool.is_empty() {
            self.err(None, "pool", "at least one [pool.NAME] is needed");
        }
        let admin = self.admin(raw, &binds);
        self.unused_pools(raw);
        self.v6_only(&binds);
        self.admin_exposed(raw, &admin);
        let stop_grace = self.duration(raw.stop_grace.as_ref(), "defaults.stop_grace".into(), true).flatten();
        Config {
            source: self.source.to_owned(),
            path: None,
            workers,
            admin,
            defaults,
            stop_grace: stop_grace.unwrap_or_default(),
            listeners,
            pools,
            limits,
            cluster,
            fingerprint: 0,
            warnings: Vec::new(),
        }
    }

    fn int(&mut self, v: &S<i64>, key: &str, min: i64, max: i64, note: &str) -> Option<u32> {
        let n = *v.get_ref();
        if n < min || n > max {
            let range = if max == u32::MAX as i64 {
                format!("an integer >= {min}")
            } else {
                format!("an integer from {min} to {max}")
            };
            self.err(Some(v.span()), key, format!("expected {range}{note}, found {n}"));
            None
        } else {
            Some(n as u32)
        }
    }

    fn duration(&mut self, v: Option<&S<String>>, key: String, may_be_off: bool) -> Option<Option<Duration>> {
        let v = v?;
        match parse_duration(v.get_ref()) {
            Ok(None) if !may_be_off => {
                self.err(Some(v.span()), key, format!("must be longer than 0, found \"{}\"", v.get_ref()));
                None
            }
            // A timer finer than that is not meant: probes or timeouts would
            // fire back to back.
            Ok(Some(d)) if d < Duration::from_millis(1) => {
                self.err(Some(v.span()), key, format!("must be at least 1ms, found \"{}\"", v.get_ref()));
                None
            }
            Ok(d) => Some(d),
            Err(m) => {
                self.err(Some(v.span()), key, m);
                None
            }
        }
    }

    /// A keepalive key, over the defaults: whole seconds, as the kernel
    /// takes them (TCP_KEEPIDLE and TCP_KEEPINTVL 1 to 32767 s, TCP_KEEPCNT
    /// 1 to 127).
    fn keepalive(&mut self, v: &S<raw::RawKeepalive>, key: &str) -> Option<Keepalive> {
        let raw::RawKeepalive::On { idle, interval, count } = v.get_ref() else { return None };
        let mut out = Keepalive::DEFAULT;
        for (name, raw, into) in [("idle", idle, &mut out.idle), ("interval", interval, &mut out.interval)] {
            let Some(raw) = raw else { continue };
            let Some(Some(d)) = self.duration(Some(raw), format!("{key}.{name}"), false) else { continue };
            if d.subsec_nanos() != 0 || !(1..=32767).contains(&d.as_secs()) {
                self.err(
                    Some(raw.span()),
                    format!("{key}.{name}"),
                    format!(
                        "expected whole seconds from 1s to 32767s (the kernel's unit and range), found \"{}\"",
                        raw.get_ref()
                    ),
                );
                continue;
            }
            *into = d;
        }
        if let Some(c) = count
            && let Some(n) = self.int(c, &format!("{key}.count"), 1, 127, "")
        {
            out.count = n;
        }
        Some(out)
    }
}
