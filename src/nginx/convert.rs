//! The `upstream` and `server` blocks of `stream {}` as pools and
//! listeners, with nginx's defaults where they differ from ucp-lb's.

use std::collections::BTreeMap;
use std::time::Duration;

use super::ConvertError;
use super::read::Directive;
use crate::config::format_duration;

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

/// nginx's defaults where they differ from ucp-lb's.
pub(super) const NGINX_MAX_FAILS: u32 = 1;
pub(super) const NGINX_FAIL_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const NGINX_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
pub(super) const NGINX_PROXY_TIMEOUT: Duration = Duration::from_secs(600);

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
}

impl Proxy {
    pub(super) fn or(&self, parent: &Proxy) -> Proxy {
        Proxy {
            connect_timeout: self.connect_timeout.or(parent.connect_timeout),
            idle_timeout: self.idle_timeout.or(parent.idle_timeout),
            next_upstream: self.next_upstream.or(parent.next_upstream),
            tries: self.tries.or(parent.tries),
            socket_keepalive: self.socket_keepalive.or(parent.socket_keepalive),
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
}

#[derive(Debug)]
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
    /// `listen ... so_keepalive=`, as the TOML value of `client_keepalive`.
    pub(super) keepalive: Option<String>,
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
}

/// A server block's `access_log`, carried.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum AccessLog {
    Off,
    To { path: String, template: Option<String> },
}

impl Converter {
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

    pub(super) fn upstream(&mut self, d: &Directive) -> Result<(), ConvertError> {
        let [name] = d.args.as_slice() else {
            return Err(d.err("upstream takes one name"));
        };
        let mut pool = Pool {
            name: self.pool_name(name),
            origin: name.clone(),
            at: d.at(),
            comments: d.comments.clone(),
            balance: "round_robin",
            servers: Vec::new(),
            notes: Vec::new(),
            proxy: None,
            used_at: String::new(),
        };
        if pool.name != *name {
            pool.notes
                .push(format!("nginx upstream \"{name}\": renamed, pool names hold only letters, digits, _ and -"));
        }
        for x in d.block.as_deref().unwrap_or_default() {
            match x.name.as_str() {
                "server" => {
                    let s = self.server(x)?;
                    pool.servers.push(s);
                }
                "least_conn" => pool.balance = "least_conn",
                "random" => {
                    pool.balance = "random_two";
                    match x.args.first().map(String::as_str) {
                        Some("two") if x.args.get(1).is_none_or(|m| m == "least_conn") => {}
                        Some("two") => {
                            let n = self.warn(x, "random_two (which picks the one with fewer connections) used".into());
                            pool.notes.push(n);
                        }
                        _ => {
                            let n = self.warn(x, "plain random has no twin; random_two used".into());
                            pool.notes.push(n);
                        }
                    }
                }
                "hash" => match x.args.as_slice() {
                    [k, c] if k == "$remote_addr" && c == "consistent" => pool.balance = "source_hash",
                    [k] if k == "$remote_addr" => pool.balance = "source_hash_map",
                    _ => {
                        let n = self.not_carried(
                            x,
                            "only hash $remote_addr is carried (as source_hash_map, or source_hash with consistent); \
                             round_robin used",
                        );
                        pool.notes.push(n);
                    }
                },
                "zone" => pool.notes.push(format!(
                    "nginx: {}  ({}): not needed, ucp-lb's workers share server state",
                    x.text(),
                    x.at()
                )),
                _ => {
                    let n = self.not_carried(x, "no ucp-lb equivalent");
                    pool.notes.push(n);
                }
            }
        }
        if pool.servers.is_empty() {
            return Err(d.err(format!("upstream \"{name}\" has no server (nginx refuses this too)")));
        }
        self.settle_per_server_limits(d, &mut pool);
        self.pools.push(pool);
        Ok(())
    }

    /// nginx sets max_fails/fail_timeout per server, ucp-lb per pool: the
    /// value most servers have is used, with a warning for the others.
    pub(super) fn settle_per_server_limits(&mut self, d: &Directive, pool: &mut Pool) {
        let mut counts: BTreeMap<(u32, Duration), usize> = BTreeMap::new();
        for s in &pool.servers {
            *counts.entry((s.max_fails, s.fail_timeout)).or_default() += 1;
        }
        if counts.len() > 1 {
            let (&(mf, ft), _) = counts.iter().max_by_key(|(_, n)| **n).unwrap_or((&(1, NGINX_FAIL_TIMEOUT), &0));
            let odd: Vec<String> = pool
                .servers
                .iter()
                .filter(|s| (s.max_fails, s.fail_timeout) != (mf, ft))
                .map(|s| {
                    format!(
                        "{} (max_fails={} fail_timeout={})",
                        s.address,
                        s.max_fails,
                        format_duration(s.fail_timeout)
                    )
                })
                .collect();
            let n = self.warn(
                d,
                format!(
                    "ucp-lb sets max_fails and fail_timeout per pool: {mf} and {} used, also for {}",
                    format_duration(ft),
                    odd.join(", ")
                ),
            );
            pool.notes.push(n);
            for s in &mut pool.servers {
                s.max_fails = mf;
                s.fail_timeout = ft;
            }
        }
    }

    pub(super) fn server(&mut self, d: &Directive) -> Result<Server, ConvertError> {
        let Some(addr) = d.args.first() else {
            return Err(d.err("server needs an address"));
        };
        if addr.starts_with("unix:") {
            return Err(d.err("a unix: socket server cannot be carried over (ucp-lb connects over TCP only)"));
        }
        if let Some(var) = unfilled(addr) {
            return Err(d.err(format!(
                "server {addr}: {var} is a template variable that was never filled in (nginx itself would refuse it): fill it in, then convert"
            )));
        }
        if crate::config::parse_host_port(addr).is_err() {
            return Err(
                d.err(format!("expected host:port, found \"{addr}\" (nginx's stream module needs the port too)"))
            );
        }
        let mut s = Server::new(addr, d.comments.clone());
        for p in &d.args[1..] {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let num = || v.parse::<u32>().map_err(|_| d.err(format!("{k}: expected a whole number, found \"{v}\"")));
            match k {
                "weight" => s.weight = num()?.max(1),
                "max_fails" => s.max_fails = num()?,
                "max_conns" => s.max_conns = num()?,
                "fail_timeout" => {
                    s.fail_timeout = parse_format_duration(v).map_err(|e| d.err(format!("fail_timeout: {e}")))?
                }
                "backup" => s.backup = true,
                "down" => s.down = true,
                _ => {
                    self.warnings.push(format!("{}: server {addr}: parameter {p}: not carried over", d.at()));
                    s.dropped.push(p.clone());
                }
            }
        }
        Ok(s)
    }

    pub(super) fn pool_name(&self, want: &str) -> String {
        let clean: String =
            want.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
        let mut name = if clean.is_empty() { "pool".to_owned() } else { clean };
        let base = name.clone();
        let mut n = 2;
        while self.pools.iter().any(|p| p.name == name) {
            name = format!("{base}_{n}");
            n += 1;
        }
        name
    }

    /// Reads a `proxy_*` directive into `p`; false if it is not one.
    pub(super) fn proxy_directive(&mut self, d: &Directive, p: &mut Proxy) -> Result<bool, ConvertError> {
        let one = || match d.args.as_slice() {
            [a] => Ok(a.as_str()),
            _ => Err(d.err(format!("{} takes one value", d.name))),
        };
        let time = |v: &str| parse_format_duration(v).map_err(|e| d.err(format!("{}: {e}", d.name)));
        match d.name.as_str() {
            "proxy_connect_timeout" => p.connect_timeout = Some(time(one()?)?),
            "proxy_timeout" => {
                let t = time(one()?)?;
                p.idle_timeout = Some(if t.is_zero() { None } else { Some(t) });
            }
            "proxy_next_upstream" => {
                p.next_upstream = Some(match one()? {
                    "on" => true,
                    "off" => false,
                    v => return Err(d.err(format!("proxy_next_upstream: expected on or off, found \"{v}\""))),
                })
            }
            // nginx's default, and what ucp-lb does: nothing to carry, nothing to say.
            "proxy_protocol" if one()? == "off" => {}
            "proxy_socket_keepalive" => {
                p.socket_keepalive = Some(match one()? {
                    "on" => true,
                    "off" => false,
                    v => return Err(d.err(format!("proxy_socket_keepalive: expected on or off, found \"{v}\""))),
                })
            }
            "proxy_next_upstream_tries" => {
                let v = one()?;
                p.tries = Some(v.parse().map_err(|_| d.err(format!("expected a whole number, found \"{v}\"")))?);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    pub(super) fn server_block(
        &mut self,
        d: &Directive,
        stream: &Proxy,
        stream_admission: &Admission,
    ) -> Result<(), ConvertError> {
        let mut proxy = Proxy::default();
        let mut admission = Admission::default();
        let mut ssl_preread = false;
        let mut preread_timeout: Option<String> = None;
        let mut binds: Vec<(String, Option<String>, Vec<String>, String)> = Vec::new();
        let mut access_log: Option<AccessLog> = None;
        let mut target: Option<&Directive> = None;
        let mut notes = Vec::new();
        let block = d.block.as_deref().unwrap_or_default();
        for x in block {
            if self.proxy_directive(x, &mut proxy)? || self.admission_directive(x, &mut admission)? {
                continue;
            }
            match x.name.as_str() {
                "listen" => {
                    if let Some((b, keepalive)) = self.listen(x, &mut notes)? {
                        // nginx refuses a duplicate listen too ("duplicate
                        // ... address and port pair"): the input's mistake,
                        // said at its place.
                        let first = self
                            .listeners
                            .iter()
                            .map(|l| (&l.bind, l.at.clone()))
                            .chain(binds.iter().map(|(b, _, _, at)| (b, at.clone())))
                            .find(|(bound, _)| **bound == b);
                        if let Some((_, at)) = first {
                            return Err(
                                x.err(format!("listen {}: {b} is already listened on at {at}", x.args.join(" ")))
                            );
                        }
                        binds.push((b, keepalive, x.comments.clone(), x.at()));
                    }
                }
                "proxy_pass" => target = Some(x),
                "ssl_preread" => ssl_preread = x.args.first().is_some_and(|v| v == "on"),
                "preread_timeout" => {
                    let [v] = x.args.as_slice() else { return Err(x.err("preread_timeout takes one time")) };
                    let t = parse_format_duration(v).map_err(|e| x.err(format!("preread_timeout {v}: {e}")))?;
                    preread_timeout = Some(crate::config::format_duration(t));
                }
                "preread_buffer_size" => {
                    let n = self.warn(x, "ucp-lb reads a ClientHello of up to 16 KiB".into());
                    notes.push(n);
                }
                "access_log" => access_log = Some(self.access_log(x, &mut notes)?),
                "proxy_next_upstream_timeout" if x.args.first().is_some_and(|v| v == "0") => {}
                "tcp_nodelay" if x.args.first().is_some_and(|v| v == "on") => {
                    notes.push(format!("nginx: {}  ({}): ucp-lb always sets TCP_NODELAY", x.text(), x.at()));
                }
                _ => {
                    let n = self.not_carried(x, "no ucp-lb equivalent");
                    notes.push(n);
                }
            }
        }
        let Some(target) = target else {
            let n = self.not_carried(d, "a server {} without proxy_pass");
            self.head_notes.push(n);
            return Ok(());
        };
        if binds.is_empty() {
            let n = self.not_carried(d, "no listen that ucp-lb can carry");
            self.head_notes.push(n);
            return Ok(());
        }
        let [to] = target.args.as_slice() else {
            return Err(target.err("proxy_pass takes one upstream name or host:port"));
        };
        if let Some(var) = unfilled(to).filter(|v| v.starts_with("${")) {
            return Err(target.err(format!(
                "proxy_pass {to}: {var} is a template variable that was never filled in: fill it in, then convert"
            )));
        }
        let proxy = proxy.or(stream);
        let access_log = access_log.or_else(|| self.stream_log.clone());
        let (idx, routes) = if to.contains('$') {
            match self.routed_by_map(to, target, ssl_preread, &mut notes)? {
                Some(r) => r,
                None => return Ok(()),
            }
        } else {
            (Some(self.pool_for(to, target)?), Vec::new())
        };
        for i in idx.iter().copied().chain(routes.iter().map(|r| r.1)).collect::<Vec<_>>() {
            self.use_proxy(i, &proxy, d, to, &mut notes);
        }
        let pool = idx.map(|i| self.pools[i].name.clone());
        let routes: Vec<(String, String)> = routes.into_iter().map(|(n, i)| (n, self.pools[i].name.clone())).collect();
        let access = admission.access.or_else(|| stream_admission.access.clone()).unwrap_or_default();
        let per_client = self.per_client(admission.limits.or_else(|| stream_admission.limits.clone()), &mut notes);
        for (i, (bind, keepalive, mut comments, at)) in binds.into_iter().enumerate() {
            if i == 0 {
                let mut c = d.comments.clone();
                c.append(&mut comments);
                comments = c;
            }
            self.listeners.push(Listener {
                bind,
                access_log: access_log.clone(),
                at,
                pool: pool.clone(),
                comments,
                notes: if i == 0 { std::mem::take(&mut notes) } else { Vec::new() },
                routes: routes.clone(),
                preread_timeout: preread_timeout.clone(),
                access: access.clone(),
                per_client,
                keepalive,
            });
        }
        Ok(())
    }

    /// The pool `proxy_pass to` sends to: an upstream's, or a pool of its
    /// own for a `host:port`.
    fn pool_for(&mut self, to: &str, at: &Directive) -> Result<usize, ConvertError> {
        if let Some(i) = self.pools.iter().position(|p| p.origin == to) {
            return Ok(i);
        }
        if crate::config::parse_host_port(to).is_err() {
            return Err(
                at.err(format!("proxy_pass {to}: no upstream \"{to}\" and not host:port (nginx refuses this too)"))
            );
        }
        let name = self.pool_name(&format!("direct_{to}"));
        self.pools.push(Pool {
            name,
            origin: to.to_owned(),
            at: at.at(),
            comments: Vec::new(),
            balance: "round_robin",
            servers: vec![Server::new(to, Vec::new())],
            notes: vec![format!("nginx: proxy_pass {to} straight to one server ({})", at.at())],
            proxy: None,
            used_at: String::new(),
        });
        Ok(self.pools.len() - 1)
    }

    /// Gives pool `idx` the proxy_* settings of the server `d` (the first
    /// server to use a pool sets them; another that differs is said).
    fn use_proxy(&mut self, idx: usize, proxy: &Proxy, d: &Directive, to: &str, notes: &mut Vec<String>) {
        match &self.pools[idx].proxy {
            None => {
                self.pools[idx].proxy = Some(proxy.clone());
                self.pools[idx].used_at = d.at();
            }
            Some(first) if first != proxy => {
                let first_at = self.pools[idx].used_at.clone();
                let n = self.warn(
                    d,
                    format!(
                        "proxies to {to} with other proxy_* settings than the server at {first_at}; ucp-lb keeps them \
                         per pool: the first are used"
                    ),
                );
                notes.push(n);
            }
            Some(_) => {}
        }
    }

    /// `proxy_pass $var` where `$var` is a stream-level `map` of
    /// `$ssl_preread_server_name` and the server has `ssl_preread on`: the
    /// pool for the map's `default` (None without one) and a route per
    /// entry. None (said not carried) for any other variable.
    #[allow(clippy::type_complexity)]
    fn routed_by_map(
        &mut self,
        to: &str,
        target: &Directive,
        ssl_preread: bool,
        notes: &mut Vec<String>,
    ) -> Result<Option<(Option<usize>, Vec<(String, usize)>)>, ConvertError> {
        let map = self.maps.get(to).filter(|(from, _)| from == "$ssl_preread_server_name").map(|(_, d)| d.clone());
        let (Some(map), true) = (map, ssl_preread) else {
            let why = if ssl_preread {
                "proxy_pass with a variable that is not a map of $ssl_preread_server_name"
            } else {
                "proxy_pass with variables (routing by server name needs ssl_preread on)"
            };
            let n = self.not_carried(target, why);
            self.head_notes.push(n);
            return Ok(None);
        };
        let entries = map.block.as_deref().unwrap_or_default();
        let hostnames = entries.iter().any(|e| e.name == "hostnames");
        let mut default = None;
        let mut routes: Vec<(String, usize)> = Vec::new();
        for e in entries {
            let value = match (e.name.as_str(), e.args.as_slice()) {
                ("hostnames", []) => continue,
                (_, [v]) => v.clone(),
                _ => {
                    let n = self.not_carried(e, "a map entry of one key and one value was expected");
                    notes.push(n);
                    continue;
                }
            };
            if value.contains('$') {
                let n = self.not_carried(e, "a map value with variables");
                notes.push(n);
                continue;
            }
            let idx = self.pool_for(&value, e)?;
            let key = e.name.as_str();
            if key == "default" {
                default = Some(idx);
                continue;
            }
            // With `hostnames`, ".example.com" is example.com and every
            // name below it; a trailing "www.example.*" has no ucp-lb form.
            let names: Vec<String> = match key.strip_prefix('.') {
                Some(base) if hostnames => vec![base.to_owned(), format!("*.{base}")],
                _ if key.starts_with('~') || (hostnames && key.ends_with(".*")) => {
                    let n = self.not_carried(e, "regular expressions and trailing wildcards have no ucp-lb route");
                    notes.push(n);
                    continue;
                }
                _ if key.starts_with("*.") && !hostnames => {
                    let n =
                        self.not_carried(e, "a wildcard key in a map without `hostnames` matches only itself in nginx");
                    notes.push(n);
                    continue;
                }
                _ => vec![key.to_owned()],
            };
            for name in names {
                if crate::sni::Pattern::parse(&name).is_err() {
                    let n = self.not_carried(e, "not a server name ucp-lb can route");
                    notes.push(n);
                    continue;
                }
                if routes.iter().any(|(r, _)| r.eq_ignore_ascii_case(&name)) {
                    let n =
                        self.warn(e, format!("{name} again: ucp-lb compares names without case; the first is used"));
                    notes.push(n);
                    continue;
                }
                routes.push((name, idx));
            }
        }
        if routes.is_empty() {
            let n = self.not_carried(target, "the map routes no server name ucp-lb can carry");
            self.head_notes.push(n);
            return Ok(None);
        }
        notes.push(format!(
            "nginx: ssl_preread with map {} ({}): routed by TLS server name; names compare without case here",
            to,
            map.at()
        ));
        Ok(Some((default, routes)))
    }

    /// `allow`, `deny` and `limit_conn` (stream or server level) into
    /// `adm`; false when `d` is none of them.
    pub(super) fn admission_directive(&mut self, d: &Directive, adm: &mut Admission) -> Result<bool, ConvertError> {
        match d.name.as_str() {
            "allow" | "deny" => {
                let [what] = d.args.as_slice() else {
                    return Err(d.err(format!("{} takes one address, prefix or `all`", d.name)));
                };
                if what.starts_with("unix:") {
                    let n = self.not_carried(d, "ucp-lb listens on TCP only");
                    self.head_notes.push(n);
                    return Ok(true);
                }
                let rule = format!("{} {what}", d.name);
                // nginx refuses an address it cannot read too.
                crate::admission::Rule::parse(&rule).map_err(|e| d.err(e))?;
                adm.access.get_or_insert_with(Vec::new).push(rule);
            }
            "limit_conn" => {
                let [zone, n] = d.args.as_slice() else {
                    return Err(d.err("limit_conn takes a zone and a number"));
                };
                let n = n.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    d.err(format!("limit_conn {zone} {n}: the number must be a whole number above 0"))
                })?;
                adm.limits.get_or_insert_with(Vec::new).push((zone.clone(), n, d.at()));
            }
            // How refusals are logged, or counting without refusing: ucp-lb
            // always refuses and logs at debug, counting every refusal.
            "limit_conn_log_level" | "limit_conn_dry_run" => {
                let n = self.not_carried(d, "ucp-lb refuses over the limit and counts each refusal per listener");
                self.head_notes.push(n);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// `limit_conn_zone KEY zone=NAME:SIZE` at the stream level.
    pub(super) fn limit_conn_zone(&mut self, d: &Directive) -> Result<(), ConvertError> {
        let (Some(key), Some(zone)) = (d.args.first(), d.args.iter().find_map(|a| a.strip_prefix("zone="))) else {
            return Err(d.err("limit_conn_zone takes a key and zone=NAME:SIZE"));
        };
        let name = zone.split(':').next().unwrap_or(zone);
        self.limit_zones.insert(name.to_owned(), key.clone());
        Ok(())
    }

    /// The `limit_conn`s that apply to a server as one per-client limit:
    /// those on zones keyed by the client's address (the smallest wins, as
    /// each is enforced); the others are said not carried.
    fn per_client(&mut self, limits: Option<Vec<(String, u32, String)>>, notes: &mut Vec<String>) -> Option<u32> {
        let mut out: Option<u32> = None;
        for (zone, n, at) in limits.unwrap_or_default() {
            match self.limit_zones.get(&zone).map(String::as_str) {
                Some("$binary_remote_addr" | "$remote_addr") => out = Some(out.map_or(n, |o| o.min(n))),
                Some(key) => {
                    let what = format!(
                        "{at}: limit_conn {zone} {n}: counts by {key}: not carried over (ucp-lb limits per client address only)"
                    );
                    self.warnings.push(what.clone());
                    notes.push(format!("nginx: {what}"));
                }
                None => {
                    let what =
                        format!("{at}: limit_conn {zone} {n}: no limit_conn_zone named {zone}; not carried over");
                    self.warnings.push(what.clone());
                    notes.push(format!("nginx: {what}"));
                }
            }
        }
        out
    }

    /// `log_format NAME [escape=...] 'part' ...`: kept as a ucp-lb template,
    /// with the variables ucp-lb has not got written as "-" (and said).
    pub(super) fn log_format(&mut self, d: &Directive) -> Result<(), ConvertError> {
        let Some((name, rest)) = d.args.split_first() else {
            return Err(d.err("log_format needs a name and a format"));
        };
        let parts: Vec<&String> = rest.iter().filter(|a| !a.starts_with("escape=")).collect();
        let text: String = parts.iter().map(|s| s.as_str()).collect();
        let missing: Vec<&str> = crate::config::template_variables(&text)
            .into_iter()
            .filter(|v| !crate::config::LOG_VARIABLES.contains(v))
            .collect();
        let mut template = text.clone();
        for v in &missing {
            template = template.replace(&format!("${{{v}}}"), "-").replace(&format!("${v}"), "-");
        }
        if !missing.is_empty() {
            let vars = missing.iter().map(|v| format!("${v}")).collect::<Vec<_>>().join(", ");
            let n = self.warn(d, format!("log_format {name}: {vars} not carried (written as \"-\")"));
            self.head_notes.push(n);
        }
        self.log_formats.insert(name.clone(), template);
        Ok(())
    }

    /// `access_log off;` or `access_log PATH FORMAT [...];`.
    pub(super) fn access_log(&mut self, d: &Directive, notes: &mut Vec<String>) -> Result<AccessLog, ConvertError> {
        match d.args.as_slice() {
            [off] if off == "off" => Ok(AccessLog::Off),
            [path, rest @ ..] => {
                let (format, extra) = match rest.split_first() {
                    Some((f, extra)) if !f.contains('=') => (Some(f), extra),
                    _ => (None, rest),
                };
                let template = match format {
                    Some(f) => match self.log_formats.get(f) {
                        Some(t) => Some(t.clone()),
                        None => {
                            return Err(
                                d.err(format!("access_log: no log_format named \"{f}\" (nginx refuses this too)"))
                            );
                        }
                    },
                    None => None,
                };
                if !extra.is_empty() {
                    let what = extra.join(" ");
                    let n = self.warn(d, format!("access_log {what}: written line by line, not carried"));
                    notes.push(n);
                }
                Ok(AccessLog::To { path: path.clone(), template })
            }
            [] => Err(d.err("access_log needs a path or off")),
        }
    }

    /// The bind address of a `listen` and its `so_keepalive` (as the TOML
    /// value of `client_keepalive`), or None (with a note) if it cannot be
    /// carried.
    pub(super) fn listen(
        &mut self,
        d: &Directive,
        notes: &mut Vec<String>,
    ) -> Result<Option<(String, Option<String>)>, ConvertError> {
        let Some(addr) = d.args.first() else {
            return Err(d.err("listen needs an address or port"));
        };
        for p in &d.args[1..] {
            let skip_why = match p.split('=').next().unwrap_or(p) {
                "udp" => Some("ucp-lb balances TCP only"),
                "ssl" => Some("ucp-lb passes TLS through and does not terminate it"),
                "proxy_protocol" => Some("the PROXY protocol header is not read"),
                _ => None,
            };
            if let Some(why) = skip_why {
                let n = self.not_carried(d, why);
                notes.push(n);
                return Ok(None);
            }
        }
        let bind = if addr.chars().all(|c| c.is_ascii_digit()) {
            format!("0.0.0.0:{addr}")
        } else if let Some(port) = addr.strip_prefix("*:") {
            format!("0.0.0.0:{port}")
        } else if let Some(port) = addr.strip_prefix("localhost:") {
            format!("127.0.0.1:{port}")
        } else if addr.parse::<std::net::SocketAddr>().is_ok() {
            addr.clone()
        } else {
            let n = self.not_carried(d, "ucp-lb binds IP addresses (and *, localhost), not names or unix: sockets");
            notes.push(n);
            return Ok(None);
        };
        let mut keepalive = None;
        let mut extra: Vec<&str> = Vec::new();
        for a in &d.args[1..] {
            match a.strip_prefix("so_keepalive=") {
                Some(v) => keepalive = Some(self.so_keepalive(d, v, notes)?),
                None => extra.push(a),
            }
        }
        if !extra.is_empty() {
            let n = self.warn(
                d,
                format!(
                    "listening on {bind}; parameters not carried over: {} (ucp-lb sets backlog 1024 and \
                     SO_REUSEADDR itself)",
                    extra.join(" ")
                ),
            );
            notes.push(n);
        }
        Ok(Some((bind, keepalive)))
    }

    /// `so_keepalive=on|off|[keepidle]:[keepintvl]:[keepcnt]` as the TOML
    /// value of `client_keepalive`. What nginx leaves to the kernel (`on`,
    /// an empty field) takes ucp-lb's default instead, said in a note.
    fn so_keepalive(&mut self, d: &Directive, v: &str, notes: &mut Vec<String>) -> Result<String, ConvertError> {
        let kernel = "nginx leaves it to the kernel (net.ipv4.tcp_keepalive_*: 7200 s, 75 s, 9 by default); \
                      ucp-lb uses its own default (60 s, 10 s, 6)";
        match v {
            "off" => return Ok("false".into()),
            "on" => {
                notes.push(format!("nginx: so_keepalive=on  ({}): {kernel}", d.at()));
                return Ok("true".into());
            }
            _ => {}
        }
        let parts: Vec<&str> = v.split(':').collect();
        let [idle, interval, count] = parts.as_slice() else {
            return Err(d.err(format!("so_keepalive={v}: expected on, off or idle:interval:count")));
        };
        let mut fields = Vec::new();
        let mut left = Vec::new();
        for (key, raw) in [("idle", idle), ("interval", interval)] {
            if raw.is_empty() {
                left.push(key);
                continue;
            }
            let t = parse_format_duration(raw).map_err(|e| d.err(format!("so_keepalive={v}: {e}")))?;
            fields.push(format!("{key} = {}", toml::Value::String(crate::config::format_duration(t))));
        }
        if count.is_empty() {
            left.push("count");
        } else {
            let n: u32 = count.parse().map_err(|_| d.err(format!("so_keepalive={v}: expected a whole count")))?;
            fields.push(format!("count = {n}"));
        }
        if !left.is_empty() {
            notes.push(format!("nginx: so_keepalive={v}  ({}): for {}, {kernel}", d.at(), left.join(" and ")));
        }
        Ok(format!("{{ {} }}", fields.join(", ")))
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
