//! What the `upstream` and `server` blocks of `stream {}` become: the
//! pools and listeners built so far, nginx's defaults where they differ
//! from ucp-lb's, and the warnings. The blocks are read by `upstream.rs`
//! and `server.rs`, with `routes.rs` (routing by a `map`), `admission.rs`
//! (`allow`, `deny`, `limit_conn`), `realip.rs` (a PROXY header read:
//! `set_real_ip_from`, `proxy_protocol_timeout`) and `logs.rs`
//! (`log_format`, `access_log`); `write.rs` writes the result.

use std::collections::BTreeMap;
use std::time::Duration;

use super::ConvertError;
use super::read::Directive;

/// The first `$var` or `${var}` in `s`: a template placeholder (Ansible,
/// Helm, envsubst) that was never filled in.
pub(super) fn unfilled(s: &str) -> Option<String> {
    let i = s.find('$')?;
    let rest = &s[i..];
    let end = match rest.strip_prefix("${") {
        Some(r) => r.find('}').map_or(rest.len(), |j| j + 3),
        None => 1 + rest[1..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len() - 1),
    };
    Some(rest[..end].to_owned())
}

/// The first `<...>` in `s`: a placeholder of a documentation example
/// (`<DTR_REPLICA_1_IP>`) that was pasted as it is.
pub(super) fn placeholder(s: &str) -> Option<&str> {
    let i = s.find('<')?;
    let j = s[i..].find('>')?;
    Some(&s[i..i + j + 1])
}

/// nginx's defaults where they differ from ucp-lb's.
pub(super) const NGINX_MAX_FAILS: u32 = 1;
pub(super) const NGINX_FAIL_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const NGINX_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
pub(super) const NGINX_PROXY_TIMEOUT: Duration = Duration::from_secs(600);
/// Written out on a PROXY listener without one: ucp-lb's own may differ.
pub(super) const NGINX_PROXY_PROTOCOL_TIMEOUT: &str = "30s";

/// The per-`server {}` proxy settings, which ucp-lb keeps per pool.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct Proxy {
    pub(super) connect_timeout: Option<Duration>,
    /// `Some(None)`: switched off.
    pub(super) idle_timeout: Option<Option<Duration>>,
    pub(super) next_upstream: Option<bool>,
    pub(super) tries: Option<u32>,
    /// `proxy_socket_keepalive`.
    pub(super) socket_keepalive: Option<bool>,
    /// `proxy_protocol on|off`: nginx sends v1.
    pub(super) send_proxy_protocol: Option<bool>,
}

impl Proxy {
    pub(super) fn or(&self, parent: &Proxy) -> Proxy {
        Proxy {
            connect_timeout: self.connect_timeout.or(parent.connect_timeout),
            idle_timeout: self.idle_timeout.or(parent.idle_timeout),
            next_upstream: self.next_upstream.or(parent.next_upstream),
            tries: self.tries.or(parent.tries),
            socket_keepalive: self.socket_keepalive.or(parent.socket_keepalive),
            send_proxy_protocol: self.send_proxy_protocol.or(parent.send_proxy_protocol),
        }
    }

    pub(super) fn retries(&self) -> String {
        match (self.next_upstream.unwrap_or(true), self.tries.unwrap_or(0)) {
            (false, _) => "0".into(),
            (true, 0) => "\"all\"".into(),
            (true, n) => (n - 1).to_string(),
        }
    }
}

#[derive(Debug)]
pub(super) struct Server {
    pub(super) address: String,
    pub(super) weight: u32,
    pub(super) max_fails: u32,
    pub(super) fail_timeout: Duration,
    pub(super) backup: bool,
    pub(super) down: bool,
    pub(super) max_conns: u32,
    /// `slow_start=`.
    pub(super) slow_start: Option<Duration>,
    pub(super) comments: Vec<String>,
    /// Parameters that were not carried over, already warned about.
    pub(super) dropped: Vec<String>,
}

impl Server {
    /// A server line with nginx's defaults.
    pub(super) fn new(address: &str, comments: Vec<String>) -> Server {
        Server {
            address: address.to_owned(),
            weight: 1,
            max_fails: NGINX_MAX_FAILS,
            fail_timeout: NGINX_FAIL_TIMEOUT,
            backup: false,
            down: false,
            max_conns: 0,
            slow_start: None,
            comments,
            dropped: Vec::new(),
        }
    }
}

#[derive(Debug)]
pub(super) struct Pool {
    pub(super) name: String,
    /// `upstream NAME` as written, or the `proxy_pass` target.
    pub(super) origin: String,
    pub(super) at: String,
    pub(super) comments: Vec<String>,
    pub(super) balance: &'static str,
    pub(super) servers: Vec<Server>,
    /// Comment lines for the pool table (directives not carried over).
    pub(super) notes: Vec<String>,
    /// From the first `server {}` proxying to it; None if none does.
    pub(super) proxy: Option<Proxy>,
    pub(super) used_at: String,
    /// A `[pool.X.health]` body carried from nginx Plus `health_check`,
    /// and where that was.
    pub(super) health: Option<(String, String)>,
}

#[derive(Debug, Clone)]
pub(super) struct Listener {
    pub(super) bind: String,
    pub(super) access_log: Option<AccessLog>,
    /// The `listen` directive's file:line.
    pub(super) at: String,
    /// None: a routed listener whose map has no default (nginx closes
    /// those clients too).
    pub(super) pool: Option<String>,
    /// `ssl_preread` with `map $ssl_preread_server_name`: (name pattern,
    /// pool), in the map's order.
    pub(super) routes: Vec<(String, String)>,
    pub(super) preread_timeout: Option<String>,
    pub(super) comments: Vec<String>,
    pub(super) notes: Vec<String>,
    /// `allow`/`deny` as ucp-lb `access` rules, in order.
    pub(super) access: Vec<String>,
    /// `limit_conn` on a zone keyed by the client address.
    pub(super) per_client: Option<u32>,
    /// Those `limit_conn`s: (zone, connections), each zone once.
    pub(super) zones: Vec<(String, u32)>,
    /// `listen ... so_keepalive=`, as the TOML value of `client_keepalive`.
    pub(super) keepalive: Option<String>,
    /// `listen ... proxy_protocol`: a PROXY header is required.
    pub(super) proxy_protocol: bool,
    /// With it, `set_real_ip_from` (the sources whose header is believed)
    /// and `proxy_protocol_timeout`, as they apply to its server {}.
    pub(super) real_ip_from: Vec<String>,
    pub(super) proxy_protocol_timeout: Option<String>,
}

/// `set_real_ip_from` and `proxy_protocol_timeout` of one level (stream
/// or server): a server {} that sets one keeps its own, else it inherits
/// the stream level's (as nginx merges them).
#[derive(Debug, Default, Clone)]
pub(super) struct Accept {
    pub(super) real_ip_from: Option<Vec<String>>,
    pub(super) timeout: Option<String>,
    /// Where each was set (for a note when no listener reads a header).
    pub(super) at: Vec<String>,
}

/// `allow`, `deny` and `limit_conn` of one level (stream or server): nginx
/// inherits each list from the stream level only when a server has none.
#[derive(Debug, Default, Clone)]
pub(super) struct Admission {
    pub(super) access: Option<Vec<String>>,
    /// (zone, connections, the directive's place).
    pub(super) limits: Option<Vec<(String, u32, String)>>,
}

#[derive(Default)]
pub(super) struct Converter {
    /// Hard errors: the input is wrong; all are reported, nothing printed.
    pub(super) errors: Vec<ConvertError>,
    /// Listeners that could not be carried: errors at the top of stderr
    /// and of the output.
    pub(super) lost: Vec<String>,
    /// Directives that make no difference in ucp-lb: `name (file:line,
    /// why)`, said together in one line.
    pub(super) ignored: Vec<String>,
    /// Notes for stderr that are not warnings.
    pub(super) notes: Vec<String>,
    /// `resolver valid=` as `resolve_interval`.
    pub(super) resolve_interval: Option<String>,
    /// Upstreams whose block had an error: a `proxy_pass` to one is not
    /// reported again.
    pub(super) failed_upstreams: Vec<String>,
    /// nginx Plus `match` blocks by name.
    pub(super) matches: BTreeMap<String, Directive>,
    /// Those a `health_check` named.
    pub(super) used_matches: BTreeMap<String, Directive>,
    pub(super) warnings: Vec<String>,
    pub(super) pools: Vec<Pool>,
    pub(super) listeners: Vec<Listener>,
    /// Lines for the head of the file: stream-level directives not carried.
    pub(super) head_notes: Vec<String>,
    /// `log_format` templates by name, as ucp-lb templates.
    pub(super) log_formats: BTreeMap<String, String>,
    /// The stream-level `access_log`, which server blocks inherit.
    pub(super) stream_log: Option<AccessLog>,
    /// `limit_conn_zone`s by name: the key they count by.
    pub(super) limit_zones: BTreeMap<String, String>,
    /// Stream-level `map`s by the variable they set: the variable they
    /// read, and the directive.
    pub(super) maps: BTreeMap<String, (String, Directive)>,
    /// The stream level's `set_real_ip_from` and `proxy_protocol_timeout`.
    pub(super) stream_accept: Accept,
}

/// A server block's `access_log`, carried.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum AccessLog {
    Off,
    To { path: String, template: Option<String> },
}

impl Converter {
    /// Keeps the error of `r`, if any, to report it with the others.
    /// An error with no message stops its directive only: it was reported
    /// already.
    pub(super) fn keep<T>(&mut self, r: Result<T, ConvertError>) -> Option<T> {
        r.map_err(|e| {
            if !e.msg.is_empty() {
                self.errors.push(e)
            }
        })
        .ok()
    }

    /// A directive that makes no difference in ucp-lb: named in the one
    /// line of those ignored, and kept as a comment (returned).
    pub(super) fn ignore(&mut self, d: &Directive, why: &str) -> String {
        self.ignored.push(format!("{} ({}, {why})", d.text().trim_end_matches(';'), d.at()));
        format!("nginx: {}  ({}): ignored, {why}", d.text(), d.at())
    }

    /// A listener that cannot be carried: an error at the top of stderr
    /// and of the output, naming the listener; the comment is returned.
    pub(super) fn lose_listener(&mut self, d: &Directive, what: &str, why: &str) -> String {
        self.lost.push(format!("{}: {}: the listener {what} is not carried over: {why}", d.at(), d.text()));
        format!("nginx: {}  ({}): MISSING LISTENER {what}: {why}", d.text(), d.at())
    }

    /// Directives that make no difference, wherever they stand: the
    /// comment line if `d` is one.
    pub(super) fn no_difference(&mut self, d: &Directive) -> Option<String> {
        let first = d.args.first().map(String::as_str);
        let why = match (d.name.as_str(), first) {
            ("tcp_nodelay", Some("on")) => "ucp-lb always sets TCP_NODELAY",
            ("zone", _) => "ucp-lb's workers share server state",
            ("proxy_next_upstream_timeout", Some("0")) => "nginx's default: no limit, as in ucp-lb",
            ("resolver_timeout", _) => "ucp-lb uses the system resolver's timeouts",
            ("variables_hash_max_size" | "variables_hash_bucket_size", _) => "ucp-lb has no nginx variables table",
            ("proxy_half_close", Some("on")) => {
                return Some(self.half_close(d, "ucp-lb always passes a half-close on, as nginx does with it on"));
            }
            ("proxy_half_close", Some("off")) => {
                return Some(self.half_close(
                    d,
                    "nginx's default; ucp-lb always passes a half-close on (see the head of this file)",
                ));
            }
            _ => return None,
        };
        Some(self.ignore(d, why))
    }

    fn half_close(&mut self, d: &Directive, why: &str) -> String {
        self.notes.push(format!("{}: {}: nothing to write: {why}", d.at(), d.text()));
        format!("nginx: {}  ({}): nothing to write: {why}", d.text(), d.at())
    }

    /// A stream-level directive other than `upstream`, `server`, `map`,
    /// `match`, `log_format`, `limit_conn_zone` and `access_log`.
    pub(super) fn stream_directive(
        &mut self,
        d: &Directive,
        proxy: &mut Proxy,
        admission: &mut Admission,
    ) -> Result<(), ConvertError> {
        if self.proxy_directive(d, proxy)? || self.admission_directive(d, admission)? {
            return Ok(());
        }
        let mut accept = std::mem::take(&mut self.stream_accept);
        let read = self.accept_directive(d, &mut accept);
        self.stream_accept = accept;
        if read? {
            return Ok(());
        }
        let n = match d.name.as_str() {
            "resolver" => self.resolver(d)?,
            _ => match self.no_difference(d) {
                Some(n) => n,
                None => self.not_carried(d, "no ucp-lb equivalent"),
            },
        };
        self.head_notes.push(n);
        Ok(())
    }

    /// `resolver ADDRESS... [valid=TIME] [ipv6=off] [status_zone=]`:
    /// `valid` is how long nginx keeps an answer, ucp-lb's
    /// `resolve_interval`; the addresses have no equivalent (ucp-lb asks
    /// the system's resolver), said once.
    fn resolver(&mut self, d: &Directive) -> Result<String, ConvertError> {
        let mut addrs = Vec::new();
        let mut other = Vec::new();
        for a in &d.args {
            if let Some(v) = a.strip_prefix("valid=") {
                let t = parse_format_duration(v).map_err(|e| d.err(format!("resolver valid={v}: {e}")))?;
                self.resolve_interval = Some(crate::config::format_duration(t));
            } else if a.contains('=') {
                other.push(a.as_str());
            } else {
                addrs.push(a.as_str());
            }
        }
        let mut what = match &self.resolve_interval {
            Some(t) => format!("valid= carried as resolve_interval = \"{t}\""),
            None => "no valid=: nginx re-resolves at each answer's TTL, ucp-lb every resolve_interval (30s)".into(),
        };
        if !addrs.is_empty() {
            what.push_str(&format!(
                "; the resolver address {} has no ucp-lb equivalent: ucp-lb asks the system's resolver (/etc/resolv.conf)",
                addrs.join(" ")
            ));
        }
        if !other.is_empty() {
            what.push_str(&format!("; not carried over: {}", other.join(" ")));
        }
        Ok(self.warn(d, what))
    }

    /// Records a directive that was not carried over: a warning, and the
    /// comment line returned for the output.
    pub(super) fn not_carried(&mut self, d: &Directive, why: &str) -> String {
        self.warnings.push(format!("{}: {}: not carried over: {why}", d.at(), d.text()));
        format!("nginx: {}  ({}): not carried over: {why}", d.text(), d.at())
    }

    pub(super) fn warn(&mut self, d: &Directive, what: String) -> String {
        self.warnings.push(format!("{}: {}: {what}", d.at(), d.text()));
        format!("nginx: {}  ({}): {what}", d.text(), d.at())
    }
}

/// nginx time: `30s`, `10m`, `1h30m`, `500ms`; a bare number is seconds.
pub(super) fn parse_format_duration(v: &str) -> Result<Duration, String> {
    let bad = || format!("expected an nginx time like 30s, 10m or 500ms, found \"{v}\"");
    let mut total = Duration::ZERO;
    let mut rest = v;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = match rest.as_bytes() {
            [b'm', b's', ..] => (Duration::from_millis(1), 2),
            [b's', ..] => (Duration::from_secs(1), 1),
            [b'm', ..] => (Duration::from_secs(60), 1),
            [b'h', ..] => (Duration::from_secs(3600), 1),
            [b'd', ..] => (Duration::from_secs(86400), 1),
            [b'w', ..] => (Duration::from_secs(7 * 86400), 1),
            [] => (Duration::from_secs(1), 0),
            _ => return Err(bad()),
        };
        rest = &rest[len..];
        total += unit.checked_mul(u32::try_from(n).map_err(|_| bad())?).ok_or_else(bad)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_times() {
        assert_eq!(parse_format_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_format_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_format_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_format_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_format_duration("5x").is_err());
        assert!(parse_format_duration("").is_err());
        assert!(parse_format_duration("s").is_err());
    }
}
