//! Validation: the raw mirror of lb.toml (`raw.rs`) into a typed
//! [`Config`], with every problem found (file, line, column, key, what was
//! expected) and every warning.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::raw::{self, RawConfig, RawServer, S, SettingsRef};
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

        let mut pools = Vec::new();
        for (name, pool) in &raw.pool {
            let key = format!("pool.{name}");
            if !valid_name(name) {
                self.err(Some(pool.span()), key.clone(), "a pool name may hold only letters, digits, '_' and '-'");
            }
            let pool_ref = pool.get_ref();
            let settings = self.settings(pool_ref.settings(), &defaults, &key);
            let servers = self.servers(pool, &key);
            let health = match &pool_ref.health {
                Some(h) => self.health(h, &format!("{key}.health")),
                None => None,
            };
            let from_defaults = raw.defaults.as_ref().map(|d| d.settings().set());
            let origins = pool_ref
                .settings()
                .set()
                .iter()
                .enumerate()
                .map(|(i, &(key, in_pool))| {
                    let in_defaults = from_defaults.is_some_and(|d| d[i].1);
                    (
                        key,
                        if in_pool {
                            Origin::Pool
                        } else if in_defaults {
                            Origin::Defaults
                        } else {
                            Origin::Default
                        },
                    )
                })
                .collect();
            self.failure_keys(pool_ref, &settings, &servers, health.is_some(), &key);
            pools.push(PoolConfig { name: Arc::from(name.as_str()), settings, origins, servers, health });
        }

        // `[defaults]`'s client_keepalive, checked once, under its own key,
        // for every listener without its own.
        let default_client_keepalive = match &raw.client_keepalive {
            Some(v) => self.keepalive(v, "defaults.client_keepalive"),
            None => Some(Keepalive::DEFAULT),
        };
        let mut listeners: Vec<ListenerConfig> = Vec::new();
        let mut bind_spans: Vec<(SocketAddr, Range<usize>)> = Vec::new();
        if raw.listener.is_empty() {
            self.err(None, "listener", "at least one [[listener]] is needed");
        }
        for (i, l) in raw.listener.iter().enumerate() {
            let key = format!("listener[{i}]");
            let lr = l.get_ref();
            let bind = match &lr.bind {
                None => {
                    self.err(Some(l.span()), format!("{key}.bind"), r#"missing key: expected bind = "address:port""#);
                    None
                }
                Some(b) => match b.get_ref().parse::<SocketAddr>() {
                    Ok(a) => {
                        if let Some((_, first)) = bind_spans.iter().find(|(x, _)| *x == a && a.port() != 0) {
                            let p = self.lines.pos(first.start);
                            self.err(
                                Some(b.span()),
                                format!("{key}.bind"),
                                format!("{a} is already bound by the listener at line {}", p.line),
                            );
                        }
                        bind_spans.push((a, b.span()));
                        Some(a)
                    }
                    Err(_) => {
                        self.err(
                            Some(b.span()),
                            format!("{key}.bind"),
                            format!(
                                r#"expected an IP address and port like "0.0.0.0:443" or "[::]:443", found "{}""#,
                                b.get_ref()
                            ),
                        );
                        None
                    }
                },
            };
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
            let preread_timeout =
                match self.duration(lr.preread_timeout.as_ref(), format!("{key}.preread_timeout"), false) {
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
            let max_connections = self.limit(lr.max_connections.as_ref(), &key, "max_connections");
            let access_log = self.access_log(
                lr.access_log.as_ref().or(raw.access_log.as_ref()),
                lr.access_log_format.as_ref().or(raw.access_log_format.as_ref()),
                &key,
            );
            let access = self.access(lr.access.as_ref(), &key);
            let per_client = Limits {
                open: self.limit(lr.max_connections_per_client.as_ref(), &key, "max_connections_per_client"),
                rate: self.limit(lr.max_connection_rate_per_client.as_ref(), &key, "max_connection_rate_per_client"),
            };
            let client_keepalive = match &lr.client_keepalive {
                Some(v) => self.keepalive(v, &format!("{key}.client_keepalive")),
                None => default_client_keepalive,
            };
            if let (Some(bind), Some(pool)) = (bind, pool) {
                listeners.push(ListenerConfig {
                    bind,
                    pool,
                    routes,
                    preread_timeout,
                    max_connections,
                    access_log,
                    access,
                    per_client,
                    client_keepalive,
                });
            }
        }
        if raw.pool.is_empty() {
            self.err(None, "pool", "at least one [pool.NAME] is needed");
        }

        let mut admin = AdminConfig::default();
        if let Some(a) = &raw.admin {
            let a = a.get_ref();
            if let Some(l) = &a.listen {
                match l.get_ref().parse::<SocketAddr>() {
                    Ok(addr) => admin.listen = addr,
                    Err(_) => self.err(
                        Some(l.span()),
                        "admin.listen",
                        format!("expected an IP address and port like \"127.0.0.1:9900\", found \"{}\"", l.get_ref()),
                    ),
                }
            }
            if let Some(t) = &a.token_file {
                admin.token_file = Some(PathBuf::from(t.get_ref()));
                admin.token_file_pos = self.lines.pos(t.span().start);
            }
            if let Some(s) = &a.status_needs_token {
                admin.status_needs_token = *s.get_ref();
                if admin.status_needs_token && admin.token_file.is_none() {
                    self.err(Some(s.span()), "admin.status_needs_token", "needs a token_file to take the token from");
                }
            }
        }
        if let Some(c) = raw.admin.as_ref().and_then(|a| a.get_ref().control_socket.as_ref()) {
            match ControlSocket::parse(c.get_ref()) {
                Ok(v) => admin.control_socket = v,
                Err(m) => self.err(Some(c.span()), "admin.control_socket", m),
            }
        }
        if listeners.iter().any(|l| l.bind == admin.listen && admin.listen.port() != 0) {
            self.err(
                None,
                "admin.listen",
                format!("{} is also a traffic listener: the admin port never carries traffic", admin.listen),
            );
        }

        // An IPv6 wildcard listener takes IPv6 only (IPV6_V6ONLY, as nginx):
        // alone on its port, IPv4 clients are not served there.
        for (i, (bind, span)) in bind_spans.iter().enumerate() {
            let v4_too = bind_spans.iter().any(|(o, _)| o.is_ipv4() && o.port() == bind.port());
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

        // GET endpoints answer anyone unless status_needs_token: say so
        // whenever they can be reached from beyond this host.
        if !admin.listen.ip().is_loopback() && !admin.status_needs_token {
            let span = raw.admin.as_ref().and_then(|a| a.get_ref().listen.as_ref()).map(|l| l.span());
            let message = if admin.token_file.is_none() {
                format!(
                    "{} is beyond loopback without a token_file: status and metrics are readable by anyone who reaches this port (POST endpoints stay off)",
                    admin.listen
                )
            } else {
                format!(
                    "{} is beyond loopback: /status, the page and /metrics are readable by anyone who reaches this port (the token guards POST only); set status_needs_token = true to require it for them too",
                    admin.listen
                )
            };
            self.warn(span, "admin.listen", message);
        }

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
            fingerprint: 0,
            warnings: Vec::new(),
        }
    }

    /// A listener's access log from its keys (or `[defaults]`'s): where,
    /// and in which format; `None` when off or not set.
    fn access_log(&mut self, to: Option<&S<String>>, format: Option<&S<String>>, key: &str) -> Option<Arc<AccessLog>> {
        let format = match format {
            None => LogFormat::Text,
            Some(f) => match f.get_ref().as_str() {
                "json" => LogFormat::Json,
                "text" => LogFormat::Text,
                t => {
                    let unknown: Vec<&str> =
                        template_variables(t).into_iter().filter(|v| !LOG_VARIABLES.contains(v)).collect();
                    if !t.contains('$') || !unknown.is_empty() {
                        let known = LOG_VARIABLES.iter().map(|v| format!("${v}")).collect::<Vec<_>>().join(" ");
                        self.err(
                            Some(f.span()),
                            format!("{key}.access_log_format"),
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
        let to = match to?.get_ref().as_str() {
            "off" | "" => return None,
            "stdout" => LogTo::Stdout,
            "stderr" => LogTo::Stderr,
            path => LogTo::File(PathBuf::from(path)),
        };
        Some(Arc::new(AccessLog { to, format }))
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

    fn settings(&mut self, r: SettingsRef<'_>, base: &Settings, table: &str) -> Settings {
        let mut s = base.clone();
        let k = |name: &str| format!("{table}.{name}");
        if let Some(b) = r.balance {
            match b.get_ref().as_str() {
                "round_robin" => s.balance = Balance::RoundRobin,
                "least_conn" => s.balance = Balance::LeastConn,
                "random_two" => s.balance = Balance::RandomTwo,
                "source_hash" => s.balance = Balance::SourceHash,
                "source_hash_map" => s.balance = Balance::SourceHashMap,
                other => self.err(
                    Some(b.span()),
                    k("balance"),
                    format!(
                        "expected one of \"round_robin\", \"least_conn\", \"random_two\", \"source_hash\", \"source_hash_map\", found \"{other}\""
                    ),
                ),
            }
        }
        if let Some(Some(d)) = self.duration(r.connect_timeout, k("connect_timeout"), false) {
            s.connect_timeout = d;
        }
        if let Some(d) = self.duration(r.idle_timeout, k("idle_timeout"), true) {
            s.idle_timeout = d;
        }
        if let Some(m) = r.max_fails
            && let Some(n) = self.int(m, &k("max_fails"), 0, 1_000_000, " (0 switches passive ejection off)")
        {
            s.max_fails = n;
        }
        if let Some(Some(d)) = self.duration(r.fail_timeout, k("fail_timeout"), false) {
            s.fail_timeout = d;
        }
        if let Some(v) = r.retries {
            match v.get_ref() {
                toml::Value::Integer(n) if (0..=1000).contains(n) => s.retries = Retries::Count(*n as u32),
                toml::Value::String(a) if a == "all" => s.retries = Retries::All,
                other => self.err(
                    Some(v.span()),
                    k("retries"),
                    format!("expected an integer from 0 to 1000 or \"all\", found {other}"),
                ),
            }
        }
        if let Some(a) = r.all_down {
            match a.get_ref().as_str() {
                "fail_open" => s.all_down = AllDown::FailOpen,
                "reject" => s.all_down = AllDown::Reject,
                other => self.err(
                    Some(a.span()),
                    k("all_down"),
                    format!("expected \"fail_open\" or \"reject\", found \"{other}\""),
                ),
            }
        }
        if let Some(Some(d)) = self.duration(r.resolve_interval, k("resolve_interval"), false) {
            s.resolve_interval = d;
        }
        if let Some(Some(d)) = self.duration(r.shutdown_timeout, k("shutdown_timeout"), false) {
            s.shutdown_timeout = d;
        }
        if let Some(d) = self.duration(r.slow_start, k("slow_start"), true) {
            s.slow_start = d.unwrap_or_default();
        }
        if let Some(a) = r.on_server_down {
            match a.get_ref().as_str() {
                "keep" => s.on_server_down = OnServerDown::Keep,
                "close" => s.on_server_down = OnServerDown::Close,
                other => self.err(
                    Some(a.span()),
                    k("on_server_down"),
                    format!("expected \"keep\" or \"close\", found \"{other}\""),
                ),
            }
        }
        if let Some(d) = self.duration(r.close_spread, k("close_spread"), true) {
            s.close_spread = d.unwrap_or_default();
        }
        if let Some(v) = r.server_keepalive {
            s.server_keepalive = self.keepalive(v, &k("server_keepalive"));
        }
        s
    }

    /// Warns of `slow_start` and `on_server_down` where they can change
    /// little.
    fn failure_keys(
        &mut self,
        pool: &raw::RawPool,
        settings: &Settings,
        servers: &[ServerConfig],
        checked: bool,
        key: &str,
    ) {
        let hashed = matches!(settings.balance, Balance::SourceHash | Balance::SourceHashMap);
        let warming =
            !settings.slow_start.is_zero() || servers.iter().any(|s| s.slow_start.is_some_and(|d| !d.is_zero()));
        if hashed && warming && servers.iter().all(|s| s.max_conns == 0) {
            self.warn(
                pool.settings.slow_start.as_ref().map(|v| v.span()),
                format!("{key}.slow_start"),
                format!(
                    "changes nothing here: {} keeps each client on its server, so slow start only scales max_conns, and no server has one",
                    settings.balance.as_str()
                ),
            );
        }
        if settings.on_server_down == OnServerDown::Close && !checked {
            self.warn(
                pool.settings.on_server_down.as_ref().map(|v| v.span()),
                format!("{key}.on_server_down"),
                "the pool has no active check: only servers set down by the admin API have their sessions closed",
            );
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

    fn health(&mut self, h: &S<raw::RawHealth>, key: &str) -> Option<HealthConfig> {
        let r = h.get_ref();
        let k = |name: &str| format!("{key}.{name}");
        let mut c = HealthConfig::default();
        if let Some(kind) = &r.kind {
            c.kind = match kind.get_ref().as_str() {
                "https" => CheckKind::Https,
                "http" => CheckKind::Http,
                "tcp" => CheckKind::Tcp,
                "none" => return None,
                other => {
                    self.err(
                        Some(kind.span()),
                        k("kind"),
                        format!("expected \"https\", \"http\", \"tcp\" or \"none\", found \"{other}\""),
                    );
                    CheckKind::Https
                }
            };
        }
        if let Some(p) = &r.path {
            let path = p.get_ref();
            if !path.starts_with('/') || path.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
                self.err(
                    Some(p.span()),
                    k("path"),
                    format!("expected a path starting with '/' and without spaces, found \"{path}\""),
                );
            } else {
                c.path = path.clone();
            }
        }
        if let Some(Some(d)) = self.duration(r.interval.as_ref(), k("interval"), false) {
            c.interval = d;
        }
        if let Some(Some(d)) = self.duration(r.timeout.as_ref(), k("timeout"), false) {
            c.timeout = d;
        }
        if c.interval < c.timeout {
            let span = r.interval.as_ref().or(r.timeout.as_ref()).map(|s| s.span()).unwrap_or(h.span());
            self.warn(
                Some(span),
                k("interval"),
                format!(
                    "interval {} is shorter than timeout {}: a slow probe runs into the next one, and probes then run back to back",
                    format_duration(c.interval),
                    format_duration(c.timeout)
                ),
            );
        }
        if let Some(v) = &r.rise
            && let Some(n) = self.int(v, &k("rise"), 1, 1000, "")
        {
            c.rise = n;
        }
        if let Some(v) = &r.fall
            && let Some(n) = self.int(v, &k("fall"), 1, 1000, "")
        {
            c.fall = n;
        }
        if let Some(list) = &r.expect_status {
            let mut out = Vec::new();
            for v in list.get_ref() {
                match parse_status(v.get_ref()) {
                    Some(m) => out.push(m),
                    None => self.err(
                        Some(v.span()),
                        k("expect_status"),
                        format!("expected a status from 100 to 599 or a class like \"2xx\", found {}", v.get_ref()),
                    ),
                }
            }
            if list.get_ref().is_empty() {
                self.err(Some(list.span()), k("expect_status"), "expected at least one status");
            }
            c.expect_status = out;
        }
        if let Some(b) = &r.expect_body {
            if b.get_ref().is_empty() {
                self.err(Some(b.span()), k("expect_body"), "expected a non-empty string");
            }
            c.expect_body = Some(b.get_ref().clone());
        }
        if let Some(t) = &r.expect_json {
            for (field, value) in t.get_ref() {
                match toml_to_json(value) {
                    Some(j) => c.expect_json.push((field.clone(), j)),
                    None => self.err(
                        Some(t.span()),
                        k(&format!("expect_json.{field}")),
                        "expected a string, number or boolean",
                    ),
                }
            }
        }
        for (slot, v, name) in [(&mut c.sni, &r.sni, "sni"), (&mut c.host, &r.host, "host")] {
            if let Some(v) = v {
                let s = v.get_ref();
                if s.is_empty() || s.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
                    self.err(Some(v.span()), k(name), format!("expected a host name, found \"{s}\""));
                } else {
                    *slot = Some(s.clone());
                }
            }
        }
        if let Some(f) = &r.ca_file {
            c.ca_file = Some(PathBuf::from(f.get_ref()));
            c.ca_file_pos = self.lines.pos(f.span().start);
        }
        if let Some(p) = &r.port {
            c.port = self.int(p, &k("port"), 1, 65535, "").map(|n| n as u16);
        }
        if c.kind == CheckKind::Tcp && (c.expect_body.is_some() || !c.expect_json.is_empty()) {
            self.err(Some(h.span()), key.to_owned(), "expect_body and expect_json need kind = \"http\" or \"https\"");
        }
        if c.kind != CheckKind::Https && (c.ca_file.is_some() || c.sni.is_some()) {
            self.err(Some(h.span()), key.to_owned(), "ca_file and sni need kind = \"https\"");
        }
        Some(c)
    }

    fn servers(&mut self, pool: &S<raw::RawPool>, key: &str) -> Vec<ServerConfig> {
        let Some(list) = &pool.get_ref().servers else {
            self.err(
                Some(pool.span()),
                format!("{key}.servers"),
                "missing key: a pool needs servers = [\"host:port\", ...]",
            );
            return Vec::new();
        };
        if list.get_ref().is_empty() {
            self.err(Some(list.span()), format!("{key}.servers"), "a pool needs at least one server");
        }
        let mut out: Vec<ServerConfig> = Vec::new();
        for (i, entry) in list.get_ref().iter().enumerate() {
            let skey = format!("{key}.servers[{i}]");
            let r: &RawServer = entry.get_ref();
            let Some(addr) = &r.address else {
                self.err(
                    Some(entry.span()),
                    format!("{skey}.address"),
                    r#"missing key: expected address = "host:port""#,
                );
                continue;
            };
            // A bare string entry has no span of its own: point at the entry.
            let addr_span = if addr.span().is_empty() { entry.span() } else { addr.span() };
            let address = match parse_host_port(addr.get_ref()) {
                Ok(a) => a,
                Err(m) => {
                    self.err(Some(addr_span), skey, m);
                    continue;
                }
            };
            let weight = match &r.weight {
                Some(w) => self.int(w, &format!("{skey}.weight"), 1, 1000, "").unwrap_or(1),
                None => 1,
            };
            let max_conns = match &r.max_conns {
                Some(m) => self.int(m, &format!("{skey}.max_conns"), 0, u32::MAX as i64, " (0: no limit)").unwrap_or(0),
                None => 0,
            };
            let state = match &r.state {
                None => AdminState::Up,
                Some(st) => match st.get_ref().as_str() {
                    "up" => AdminState::Up,
                    "drain" => AdminState::Drain,
                    "down" => AdminState::Down,
                    other => {
                        self.err(
                            Some(st.span()),
                            format!("{skey}.state"),
                            format!("expected \"up\", \"drain\" or \"down\", found \"{other}\""),
                        );
                        AdminState::Up
                    }
                },
            };
            // The same address twice is two peers, as in nginx (two names
            // resolving to one address, say): each its own state, the later
            // ones shown with "#2", "#3".
            let nth = out.iter().filter(|s| s.address == address).count() as u32;
            let name = r.name.as_ref().and_then(|n| {
                let s = n.get_ref();
                if s.is_empty() || s.chars().count() > 64 || s.chars().any(char::is_control) {
                    self.err(
                        Some(n.span()),
                        format!("{skey}.name"),
                        format!("expected a name of 1 to 64 printable characters, found {s:?}"),
                    );
                    None
                } else {
                    Some(s.clone())
                }
            });
            out.push(ServerConfig {
                address,
                nth,
                name,
                weight,
                backup: r.backup.as_ref().is_some_and(|b| *b.get_ref()),
                max_conns,
                state,
                slow_start: self
                    .duration(r.slow_start.as_ref(), format!("{skey}.slow_start"), true)
                    .map(Option::unwrap_or_default),
                pos: self.lines.pos(addr_span.start),
            });
        }
        out
    }
}

fn parse_status(v: &toml::Value) -> Option<StatusMatch> {
    match v {
        toml::Value::Integer(n) if (100..=599).contains(n) => Some(StatusMatch::Code(*n as u16)),
        toml::Value::String(s) => {
            let b = s.as_bytes();
            (b.len() == 3 && (b'1'..=b'5').contains(&b[0]) && s[1..].eq_ignore_ascii_case("xx"))
                .then(|| StatusMatch::Class(u16::from(b[0] - b'0')))
        }
        _ => None,
    }
}

fn toml_to_json(v: &toml::Value) -> Option<serde_json::Value> {
    match v {
        toml::Value::String(s) => Some(serde_json::Value::String(s.clone())),
        toml::Value::Integer(n) => Some(serde_json::Value::from(*n)),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map(serde_json::Value::Number),
        toml::Value::Boolean(b) => Some(serde_json::Value::Bool(*b)),
        _ => None,
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}
