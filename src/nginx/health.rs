//! nginx Plus `health_check` (and `health_check_timeout`, and the `match`
//! block it names) as a pool's `[pool.X.health]`: what maps is carried,
//! what does not is said.

use super::ConvertError;
use super::convert::{Converter, parse_format_duration};
use super::read::Directive;
use crate::config::format_duration;

/// nginx Plus's defaults: `interval=5s fails=1 passes=1`, and
/// `health_check_timeout 5s`.
const NGINX_HEALTH: (&str, u32, u32, &str) = ("5s", 1, 1, "5s");

impl Converter {
    /// Gives pool `idx` the check of `health_check` directive `d`.
    pub(super) fn health_check(
        &mut self,
        idx: usize,
        d: &Directive,
        timeout: Option<&Directive>,
        notes: &mut Vec<String>,
    ) -> Result<(), ConvertError> {
        let (mut interval, mut fall, mut rise, mut time) =
            (NGINX_HEALTH.0.to_owned(), NGINX_HEALTH.1, NGINX_HEALTH.2, NGINX_HEALTH.3.to_owned());
        let time_of = |d: &Directive, v: &str| {
            parse_format_duration(v).map(format_duration).map_err(|e| d.err(format!("{}: {e}", d.name)))
        };
        if let Some(t) = timeout {
            let [v] = t.args.as_slice() else { return Err(t.err("health_check_timeout takes one time")) };
            time = time_of(t, v)?;
        }
        let mut port = None;
        let mut kind = vec!["kind = \"tcp\"".to_owned()];
        let mut dropped = Vec::new();
        for a in &d.args {
            let (k, v) = a.split_once('=').unwrap_or((a, ""));
            let num = || {
                v.parse::<u32>().map_err(|_| d.err(format!("health_check {k}: expected a whole number, found \"{v}\"")))
            };
            match k {
                "interval" => interval = time_of(d, v)?,
                "fails" => fall = num()?.max(1),
                "passes" => rise = num()?.max(1),
                "port" => port = Some(num()?),
                "match" => match self.matches.remove(v).or_else(|| self.used_matches.get(v).cloned()) {
                    Some(m) => match self.use_match(v, m.clone()) {
                        Some(lines) => kind = lines,
                        None => dropped.push(format!(
                            "match={v} ({}: only a GET and an expected status map onto ucp-lb's http check; a TCP connect check used)",
                            m.at()
                        )),
                    },
                    None => return Err(d.err(format!("health_check match={v}: no match block named {v}"))),
                },
                "udp" => {
                    let n = self.not_carried(d, "ucp-lb balances TCP only");
                    notes.push(n);
                    return Ok(());
                }
                // What nginx Plus does with a check between reloads and
                // at start: ucp-lb probes at once and checks from the start.
                "mandatory" | "persistent" | "jitter" => {}
                _ => dropped.push(a.clone()),
            }
        }
        let mut body = kind;
        body.push(format!("interval = \"{interval}\""));
        body.push(format!("timeout = \"{time}\""));
        body.push(format!("rise = {rise}  # nginx passes="));
        body.push(format!("fall = {fall}  # nginx fails="));
        if let Some(p) = port {
            body.push(format!("port = {p}"));
        }
        let body = body.join("\n") + "\n";
        if !dropped.is_empty() {
            let n = self.warn(
                d,
                format!("carried as [pool.{}.health]; not carried over: {}", self.pools[idx].name, dropped.join(", ")),
            );
            notes.push(n);
        }
        match &self.pools[idx].health {
            None => self.pools[idx].health = Some((body, d.at())),
            Some((first, at)) if *first != body => {
                let n = self.warn(d, format!("another check than the one at {at} for the same pool; ucp-lb checks a pool one way: the first is used"));
                notes.push(n);
            }
            Some(_) => {}
        }
        Ok(())
    }
}

impl Converter {
    /// A `match` block named by a `health_check`: moved to those used, as
    /// the lines of an http check if it maps onto one.
    fn use_match(&mut self, name: &str, m: Directive) -> Option<Vec<String>> {
        let lines = http_match(&m);
        self.used_matches.insert(name.to_owned(), m);
        lines
    }

    /// The `match` blocks no `health_check` names: said, not dropped
    /// silently.
    pub(super) fn unused_matches(&mut self) {
        for m in std::mem::take(&mut self.matches).into_values() {
            let n = self.not_carried(&m, "no health_check names it");
            self.head_notes.push(n);
        }
    }
}

/// A `match` block of the form `send "GET PATH HTTP/1.x..."; expect ~
/// "200"` (or `"HTTP/1.1 200 OK"` and the like) as the lines of an http
/// check; None if it has anything else.
fn http_match(m: &Directive) -> Option<Vec<String>> {
    let mut path = None;
    let mut status = None;
    for x in m.block.as_deref().unwrap_or_default() {
        match (x.name.as_str(), x.args.as_slice()) {
            ("send", [s]) => {
                let rest = s.strip_prefix("GET ")?;
                let (p, proto) = rest.split_once(' ')?;
                if !proto.starts_with("HTTP/1.") || !p.starts_with('/') {
                    return None;
                }
                path = Some(p.to_owned());
            }
            ("expect", [e]) | ("expect", [_, e]) => {
                let regex = x.args.len() == 2;
                if regex && x.args[0] != "~" {
                    return None;
                }
                status = Some(status_of(e, regex)?);
            }
            _ => return None,
        }
    }
    let (path, status) = (path?, status?);
    Some(vec![
        "kind = \"http\"".into(),
        format!("path = {}", toml::Value::String(path)),
        format!("expect_status = [{status}]"),
    ])
}

/// The status an `expect` asks for, if it asks for nothing else.
fn status_of(e: &str, regex: bool) -> Option<u16> {
    let mut s = e;
    if regex {
        s = s.strip_prefix('^').unwrap_or(s);
    }
    for proto in ["HTTP/1.1 ", "HTTP/1.0 ", "HTTP/1\\.1 ", "HTTP/1\\.0 ", "HTTP/1\\.[01] ", "HTTP/1.[01] "] {
        if let Some(r) = s.strip_prefix(proto) {
            s = r;
            break;
        }
    }
    let code = s.strip_suffix(" OK").unwrap_or(s);
    let n: u16 = code.parse().ok()?;
    (100..600).contains(&n).then_some(n)
}
