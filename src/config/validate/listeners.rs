//! `[[listener]]` tables: where each listens, where its clients go, who
//! may connect, and its access log.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use super::*;

/// Each listener's index, bind address and where it is written.
pub(super) type Binds = Vec<(usize, SocketAddr, Range<usize>)>;

/// Whether the kernel refuses `b` a port `a` holds (both listening, with
/// SO_REUSEADDR, as `traffic::listener::bind` sets it): the same port, and
/// the same address or a wildcard of its family. A listener's IPv6 socket
/// is IPv6-only (IPV6_V6ONLY), so it never meets an IPv4 one; `dual`: `b`
/// is the admin socket, which is not IPv6-only (Linux's default,
/// net.ipv6.bindv6only = 0), so its `[::]` takes IPv4 too. Port 0 is any
/// free port: no overlap.
pub(super) fn overlaps(a: SocketAddr, b: SocketAddr, dual: bool) -> bool {
    use std::net::IpAddr;
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let ai = a.ip();
    let bi = match b.ip() {
        IpAddr::V6(v6) if dual => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None if v6.is_unspecified() => return true,
            None => b.ip(),
        },
        ip => ip,
    };
    ai.is_ipv4() == bi.is_ipv4() && (ai == bi || ai.is_unspecified() || bi.is_unspecified())
}

impl Validator<'_> {
    /// Every listener (those with a bind address and a pool), and where
    /// each binds.
    pub(super) fn listeners(&mut self, raw: &RawConfig) -> (Vec<ListenerConfig>, Binds) {
        // `[defaults]`'s client_keepalive, checked once, under its own key,
        // for every listener without its own.
        let default_client_keepalive = match &raw.client_keepalive {
            Some(v) => self.keepalive(v, "defaults.client_keepalive"),
            None => Some(Keepalive::DEFAULT),
        };
        let default_pending = raw.max_pending_hellos.as_ref();
        let default_pending = default_pending
            .and_then(|v| self.int(v, "defaults.max_pending_hellos", 1, u32::MAX as i64, ""))
            .unwrap_or(MAX_PENDING_HELLOS);
        // `[defaults]`' PROXY protocol keys, checked once, under their own keys.
        let pp_defaults = ProxyProtocol {
            real_ip_from: self.sources(raw.real_ip_from.as_ref(), "defaults.real_ip_from"),
            timeout: match self.duration(
                raw.proxy_protocol_timeout.as_ref(),
                "defaults.proxy_protocol_timeout".into(),
                false,
            ) {
                Some(Some(d)) => d,
                _ => PROXY_PROTOCOL_TIMEOUT,
            },
            max_header: PROXY_PROTOCOL_MAX_HEADER,
        };
        let mut listeners: Vec<ListenerConfig> = Vec::new();
        let mut binds: Binds = Vec::new();
        if raw.listener.is_empty() {
            self.err(None, "listener", "at least one [[listener]] is needed");
        }
        for (i, l) in raw.listener.iter().enumerate() {
            let defaults = (default_client_keepalive, default_pending, &pp_defaults);
            if let Some(c) = self.listener(i, l, raw, defaults, &mut binds) {
                listeners.push(c);
            }
        }
        self.mixed_formats(&listeners);
        (listeners, binds)
    }

    fn listener(
        &mut self,
        i: usize,
        l: &S<raw::RawListener>,
        raw: &RawConfig,
        (default_client_keepalive, default_pending, pp_defaults): (Option<Keepalive>, u32, &ProxyProtocol),
        binds: &mut Binds,
    ) -> Option<ListenerConfig> {
        let key = format!("listener[{i}]");
        let lr = l.get_ref();
        let bind = self.bind(l, &key, i, binds);
        let routes = self.routes(lr.routes.as_ref(), raw, &key);
        // A routed listener may leave `pool` out: clients no route takes
        // are then closed. `Some(None)`: no pool, and that is fine.
        let pool = match &lr.pool {
            None if lr.routes.is_some() => Some(None),
            None => {
                self.err(Some(l.span()), format!("{key}.pool"), r#"missing key: expected pool = "NAME""#);
                None
            }
            Some(p) => self.pool_ref(p, raw, format!("{key}.pool")).map(Some),
        };
        let preread_timeout = match self.duration(lr.preread_timeout.as_ref(), format!("{key}.preread_timeout"), false)
        {
            Some(Some(d)) => d,
            _ => PREREAD_TIMEOUT,
        };
        if lr.preread_timeout.is_some() && lr.routes.is_none() {
            self.warn(
                lr.preread_timeout.as_ref().map(|t| t.span()),
                format!("{key}.preread_timeout"),
                "has no effect without routes (nothing is read before connecting)",
            );
        }
        let max_pending_hellos = match &lr.max_pending_hellos {
            Some(v) => {
                if lr.routes.is_none() {
                    self.warn(
                        Some(v.span()),
                        format!("{key}.max_pending_hellos"),
                        "has no effect without routes (nothing is read before connecting)",
                    );
                }
                self.int(v, &format!("{key}.max_pending_hellos"), 1, u32::MAX as i64, "").unwrap_or(default_pending)
            }
            None => default_pending,
        };
        let max_connections = self.limit(lr.max_connections.as_ref(), &key, "max_connections");
        let access_log = self.access_log(
            lr.access_log.as_ref().or(raw.access_log.as_ref()),
            lr.access_log_format.as_ref().or(raw.access_log_format.as_ref()),
            if lr.access_log.is_some() { format!("{key}.access_log") } else { "defaults.access_log".into() },
            if lr.access_log_format.is_some() {
                format!("{key}.access_log_format")
            } else {
                "defaults.access_log_format".into()
            },
        );
        let access = self.access(lr.access.as_ref(), &key);
        let (per_client, limit) = self.per_client(lr, raw, &key);
        let client_keepalive = match &lr.client_keepalive {
            Some(v) => self.keepalive(v, &format!("{key}.client_keepalive")),
            None => default_client_keepalive,
        };
        let proxy_protocol = self.proxy_protocol(lr, &key, pp_defaults);
        Some(ListenerConfig {
            bind: bind?,
            pool: pool?,
            routes,
            preread_timeout,
            max_pending_hellos,
            max_connections,
            access_log,
            access,
            per_client,
            limit,
            client_keepalive,
            proxy_protocol,
        })
    }

    /// A listener's PROXY protocol keys: `proxy_protocol = true` and what
    /// goes with it (its own, else `[defaults]`'); those keys without it
    /// are said to do nothing.
    fn proxy_protocol(&mut self, lr: &raw::RawListener, key: &str, defaults: &ProxyProtocol) -> Option<ProxyProtocol> {
        let on = lr.proxy_protocol.as_ref().is_some_and(|v| *v.get_ref());
        let real_ip_from = match &lr.real_ip_from {
            Some(v) => self.sources(Some(v), &format!("{key}.real_ip_from")),
            None => defaults.real_ip_from.clone(),
        };
        let timeout =
            match self.duration(lr.proxy_protocol_timeout.as_ref(), format!("{key}.proxy_protocol_timeout"), false) {
                Some(Some(d)) => d,
                _ => defaults.timeout,
            };
        let max_header = match &lr.proxy_protocol_max_header {
            Some(v) => self
                .int(v, &format!("{key}.proxy_protocol_max_header"), 232, 65_551, "")
                .map_or(defaults.max_header, |n| n as usize),
            None => defaults.max_header,
        };
        if !on {
            let spans = [
                ("real_ip_from", lr.real_ip_from.as_ref().map(|v| v.span())),
                ("proxy_protocol_timeout", lr.proxy_protocol_timeout.as_ref().map(|v| v.span())),
                ("proxy_protocol_max_header", lr.proxy_protocol_max_header.as_ref().map(|v| v.span())),
            ];
            for (name, span) in spans {
                if let Some(span) = span {
                    self.warn(
                        Some(span),
                        format!("{key}.{name}"),
                        "has no effect without proxy_protocol = true (no header is read)",
                    );
                }
            }
            return None;
        }
        Some(ProxyProtocol { real_ip_from, timeout, max_header })
    }

    /// A `real_ip_from` list: addresses and prefixes, each checked.
    fn sources(&mut self, list: Option<&S<Vec<S<String>>>>, key: &str) -> Vec<ipnet::IpNet> {
        let Some(list) = list else { return Vec::new() };
        let mut out = Vec::new();
        for (j, entry) in list.get_ref().iter().enumerate() {
            match rules::parse_source(entry.get_ref()) {
                Ok(n) => out.push(n),
                Err(e) => self.err(Some(entry.span()), format!("{key}[{j}]"), e),
            }
        }
        out
    }

    /// A listener's per-client limits: its own keys, else those of the
    /// `[limit.NAME]` its `limit` names (which must exist). Its own
    /// `max_connections_per_client` is its threshold over the shared
    /// counts (nginx's `limit_conn ZONE N` in each server); the rate is
    /// the limit's (one bucket per client, one rate).
    fn per_client(&mut self, lr: &raw::RawListener, raw: &RawConfig, key: &str) -> (Limits, Option<Arc<str>>) {
        let own = Limits {
            open: self.limit(lr.max_connections_per_client.as_ref(), key, "max_connections_per_client"),
            rate: self.limit(lr.max_connection_rate_per_client.as_ref(), key, "max_connection_rate_per_client"),
        };
        let Some(name) = &lr.limit else { return (own, None) };
        if let Some(r) = &lr.max_connection_rate_per_client {
            self.err(
                Some(r.span()),
                format!("{key}.max_connection_rate_per_client"),
                format!(
                    "beside limit = \"{0}\": the listeners naming a limit share one bucket per client, at one rate: set it in [limit.{0}]",
                    name.get_ref()
                ),
            );
        }
        let Some(l) = raw.limit.get(name.get_ref()) else {
            let known: Vec<&str> = raw.limit.keys().map(String::as_str).collect();
            self.err(
                Some(name.span()),
                format!("{key}.limit"),
                format!(
                    "no limit named \"{}\" (defined: {}): add a [limit.{}] table",
                    name.get_ref(),
                    if known.is_empty() { "none".to_owned() } else { known.join(", ") },
                    name.get_ref()
                ),
            );
            return (own, None);
        };
        // Checked (and its errors said) once, by `shared_limits`.
        let quiet = |v: Option<&S<i64>>| v.and_then(|m| u32::try_from(*m.get_ref()).ok()).unwrap_or(0);
        let l = l.get_ref();
        let open = if lr.max_connections_per_client.is_some() {
            own.open
        } else {
            quiet(l.max_connections_per_client.as_ref())
        };
        let shared = Limits { open, rate: quiet(l.max_connection_rate_per_client.as_ref()) };
        (shared, Some(Arc::from(name.get_ref().as_str())))
    }

    /// Every `[limit.NAME]`: a name as a pool's, its values checked once;
    /// one no listener names is said.
    pub(super) fn shared_limits(&mut self, raw: &RawConfig) -> Vec<(Arc<str>, Limits)> {
        let mut out = Vec::new();
        for (name, l) in &raw.limit {
            let key = format!("limit.{name}");
            if !super::pools::valid_name(name) {
                self.err(Some(l.span()), key.clone(), "a limit name may hold only letters, digits, '_' and '-'");
            }
            let lr = l.get_ref();
            let open = self.limit(lr.max_connections_per_client.as_ref(), &key, "max_connections_per_client");
            let rate = self.limit(lr.max_connection_rate_per_client.as_ref(), &key, "max_connection_rate_per_client");
            out.push((Arc::<str>::from(name.as_str()), Limits { open, rate }));
            if !raw.listener.iter().any(|li| li.get_ref().limit.as_ref().is_some_and(|n| n.get_ref() == name)) {
                self.warn(
                    Some(l.span()),
                    key,
                    "no listener names this limit: set limit = \"NAME\" in the listeners it is for, or remove it",
                );
            }
        }
        out
    }

    /// Two listeners writing one file in two formats: its lines mix, and
    /// no one parser reads it. Said once per file.
    fn mixed_formats(&mut self, listeners: &[ListenerConfig]) {
        let logs: Vec<(usize, &AccessLog)> =
            listeners.iter().enumerate().filter_map(|(i, l)| Some((i, l.access_log.as_deref()?))).collect();
        for (n, (i, a)) in logs.iter().enumerate() {
            let LogTo::File(path) = &a.to else { continue };
            if logs[..n].iter().any(|(_, o)| o.to == a.to) {
                continue;
            }
            if let Some((j, b)) = logs[n + 1..].iter().find(|(_, b)| b.to == a.to && b.format != a.format) {
                self.warnings.push(ConfigError {
                    source: self.source.to_owned(),
                    pos: Some(b.pos),
                    key: b.key.clone(),
                    message: format!(
                        "listener[{j}] writes {} in another access_log_format than listener[{i}]: the lines of both mix in one file",
                        path.display(),
                    ),
                });
            }
        }
    }

    /// A listener's `bind`: an address and port the kernel lets it take
    /// beside the listeners before it.
    fn bind(&mut self, l: &S<raw::RawListener>, key: &str, index: usize, binds: &mut Binds) -> Option<SocketAddr> {
        let Some(b) = &l.get_ref().bind else {
            self.err(Some(l.span()), format!("{key}.bind"), r#"missing key: expected bind = "address:port""#);
            return None;
        };
        let a = match parse_listen(b.get_ref(), r#""0.0.0.0:443" or "[::]:443""#) {
            Ok(a) => a,
            Err(m) => {
                self.err(Some(b.span()), format!("{key}.bind"), m);
                return None;
            }
        };
        if let SocketAddr::V6(v6) = a
            && let Some(v4) = v6.ip().to_ipv4_mapped()
        {
            // An IPv6 listener is IPv6-only, and the kernel refuses such a
            // socket an IPv4-mapped address (EINVAL).
            self.err(
                Some(b.span()),
                format!("{key}.bind"),
                format!(
                    "{a} is an IPv4 address written as IPv6, which an IPv6-only socket cannot bind: write \"{v4}:{}\"",
                    a.port()
                ),
            );
        }
        if let Some((j, first, span)) = binds.iter().find(|(_, x, _)| overlaps(*x, a, false)) {
            let line = self.lines.pos(span.start).line;
            let message = if *first == a {
                format!(
                    "{a} is already bound by the listener at line {line} (listener[{j}]): a port is bound once per address; remove one"
                )
            } else {
                let (wild, other) = if first.ip().is_unspecified() { (*first, a) } else { (a, *first) };
                format!(
                    "{a} overlaps {first} of the listener at line {line} (listener[{j}]): {} takes port {} on every {} address, {} included, so the start would fail to bind (address in use); keep the wildcard alone, or list each address instead of it",
                    wild.ip(),
                    a.port(),
                    if a.is_ipv4() { "IPv4" } else { "IPv6" },
                    other.ip(),
                )
            };
            self.err(Some(b.span()), format!("{key}.bind"), message);
        }
        binds.push((index, a, b.span()));
        Some(a)
    }

    /// An IPv6 wildcard listener takes IPv6 only (IPV6_V6ONLY, as nginx):
    /// alone on its port, IPv4 clients are not served there.
    pub(super) fn v6_only(&mut self, binds: &Binds) {
        for (i, bind, span) in binds {
            let v4_too = binds.iter().any(|(_, o, _)| o.is_ipv4() && o.port() == bind.port());
            if bind.ip() == std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) && bind.port() != 0 && !v4_too {
                self.warn(
                    Some(span.clone()),
                    format!("listener[{i}].bind"),
                    format!(
                        "{} serves IPv6 clients only (IPV6_V6ONLY, as nginx); add a listener on 0.0.0.0:{} for IPv4",
                        bind,
                        bind.port()
                    ),
                );
            }
        }
    }

    /// A listener's access log from its keys (or `[defaults]`'s): where,
    /// and in which format; `None` when off or not set.
    fn access_log(
        &mut self,
        to: Option<&S<String>>,
        format: Option<&S<String>>,
        to_key: String,
        format_key: String,
    ) -> Option<Arc<AccessLog>> {
        let format = match format {
            None => LogFormat::Text,
            Some(f) => match f.get_ref().as_str() {
                "json" => LogFormat::Json,
                "text" => LogFormat::Text,
                t => {
                    let unknown: Vec<&str> =
                        template_variables(t).into_iter().filter(|v| !LOG_VARIABLES.contains(v)).collect();
                    // `[defaults]`' format is said once, under its own key.
                    let said = self.errors.iter().any(|e| e.key == format_key);
                    if (!t.contains('$') || !unknown.is_empty()) && !said {
                        let known = LOG_VARIABLES.iter().map(|v| format!("${v}")).collect::<Vec<_>>().join(" ");
                        self.err(
                            Some(f.span()),
                            format_key.clone(),
                            format!(
                                "expected \"json\", \"text\" or a template of variables; unknown: {}; known: {known}",
                                if unknown.is_empty() { "(no variable)".to_owned() } else { unknown.join(", ") }
                            ),
                        );
                    }
                    LogFormat::Template(t.to_owned())
                }
            },
        };
        let to = to?;
        let pos = self.lines.pos(to.span().start);
        let to = match to.get_ref().as_str() {
            "off" | "" => return None,
            "stdout" => LogTo::Stdout,
            "stderr" => LogTo::Stderr,
            path => LogTo::File(PathBuf::from(path)),
        };
        Some(Arc::new(AccessLog { to, format, key: to_key, pos }))
    }

    /// A pool named where a listener sends clients: it must exist.
    fn pool_ref(&mut self, p: &S<String>, raw: &RawConfig, key: String) -> Option<Arc<str>> {
        if raw.pool.contains_key(p.get_ref()) {
            return Some(Arc::<str>::from(p.get_ref().as_str()));
        }
        let known: Vec<&str> = raw.pool.keys().map(String::as_str).collect();
        self.err(
            Some(p.span()),
            key,
            format!(
                "no pool named \"{}\" (defined: {})",
                p.get_ref(),
                if known.is_empty() { "none".to_owned() } else { known.join(", ") }
            ),
        );
        None
    }

    /// A listener's `routes`: each name a server name or `*.` wildcard
    /// (once, case-insensitively), each pool defined.
    fn routes(&mut self, list: Option<&raw::RawRoutes>, raw: &RawConfig, key: &str) -> Vec<(Pattern, Arc<str>)> {
        let Some(list) = list else { return Vec::new() };
        if list.get_ref().is_empty() {
            self.err(Some(list.span()), format!("{key}.routes"), "no routes: name at least one, or leave the key out");
        }
        let mut out: Vec<(Pattern, Arc<str>)> = Vec::new();
        for (name, pool) in list.get_ref() {
            let at = format!("{key}.routes.\"{}\"", name.get_ref());
            let pattern = match Pattern::parse(name.get_ref()) {
                Ok(p) => p,
                Err(m) => {
                    self.err(Some(name.span()), at, m);
                    continue;
                }
            };
            if out.iter().any(|(p, _)| *p == pattern) {
                self.err(
                    Some(name.span()),
                    at.clone(),
                    format!("{pattern} is routed twice (names compare without case)"),
                );
                continue;
            }
            if let Some(pool) = self.pool_ref(pool, raw, at) {
                out.push((pattern, pool));
            }
        }
        out
    }

    /// A listener's `access` rules, with warnings for rules that can never
    /// decide (after a rule for `all`) and for a list that lets everyone in
    /// (only `allow` rules: a client none matches is let in, as in nginx).
    fn access(&mut self, list: Option<&S<Vec<S<String>>>>, key: &str) -> Vec<Rule> {
        let Some(list) = list else { return Vec::new() };
        let mut rules = Vec::new();
        let mut all_at: Option<usize> = None;
        for (j, entry) in list.get_ref().iter().enumerate() {
            let at = format!("{key}.access[{j}]");
            match Rule::parse(entry.get_ref()) {
                Ok(r) => {
                    if let Some(a) = all_at {
                        self.warn(
                            Some(entry.span()),
                            at,
                            format!("never applies: access[{a}] matches every client before it"),
                        );
                    } else if r.net.is_none() {
                        all_at = Some(j);
                    }
                    rules.push(r);
                }
                Err(m) => self.err(Some(entry.span()), at, m),
            }
        }
        if !rules.is_empty() && rules.iter().all(|r| r.allow) {
            self.warn(
                Some(list.span()),
                format!("{key}.access"),
                "only allow rules: a client no rule matches is let in, so this admits everyone; end with \"deny all\"",
            );
        }
        rules
    }

    /// A listener's limit `name`: at least 1 when set; 0 (no limit) when
    /// unset or wrong (the error is reported).
    fn limit(&mut self, v: Option<&S<i64>>, listener: &str, name: &str) -> u32 {
        v.and_then(|m| self.int(m, &format!("{listener}.{name}"), 1, u32::MAX as i64, "")).unwrap_or(0)
    }
}
