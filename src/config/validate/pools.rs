//! `[pool.NAME]` tables: the `[defaults]` keys over `[defaults]`, where
//! each came from, the servers, and warnings of keys that change little.

use std::sync::Arc;

use super::*;
use crate::config::raw::{RawServer, SettingsRef};

impl Validator<'_> {
    /// Every pool, in the file's order (the order the page and `/status`
    /// show them in).
    pub(super) fn pools(&mut self, raw: &RawConfig, defaults: &Settings) -> Vec<PoolConfig> {
        let mut in_file: Vec<_> = raw.pool.iter().collect();
        in_file.sort_by_key(|(_, pool)| pool.span().start);
        in_file.into_iter().map(|(name, pool)| self.pool(name, pool, raw, defaults)).collect()
    }

    /// A pool no listener sends clients to, by `pool` or a route: its
    /// servers are checked but never used; a listener probably names
    /// another pool by mistake.
    pub(super) fn unused_pools(&mut self, raw: &RawConfig) {
        for (name, pool) in &raw.pool {
            let used = raw.listener.iter().any(|l| {
                let l = l.get_ref();
                l.pool.as_ref().is_some_and(|p| p.get_ref() == name)
                    || l.routes.as_ref().is_some_and(|r| r.get_ref().iter().any(|(_, p)| p.get_ref() == name))
            });
            if !used {
                self.warn(
                    Some(pool.span()),
                    format!("pool.{name}"),
                    "no listener or route sends clients to this pool: name it in a listener's pool or routes, or remove it",
                );
            }
        }
    }

    fn pool(&mut self, name: &str, pool: &S<raw::RawPool>, raw: &RawConfig, defaults: &Settings) -> PoolConfig {
        let key = format!("pool.{name}");
        if !valid_name(name) {
            self.err(Some(pool.span()), key.clone(), "a pool name may hold only letters, digits, '_' and '-'");
        }
        let pool_ref = pool.get_ref();
        let settings = self.settings(pool_ref.settings(), defaults, &key);
        let nodes = pool_ref.nodes.as_ref().and_then(|n| self.nodes(n, &format!("{key}.nodes")));
        let servers = self.servers(pool, &key, pool_ref.nodes.is_some());
        let mut health = match &pool_ref.health {
            Some(h) => {
                self.health(h, &format!("{key}.health"), raw.cluster.as_ref().and_then(|c| c.get_ref().bundle.as_ref()))
            }
            None => None,
        };
        if let Some(h) = health.as_mut() {
            h.proxy_protocol = settings.send_proxy_protocol;
        }
        let origins = origins(raw, pool_ref);
        self.failure_keys(pool_ref, &settings, &servers, health.is_some(), &key);
        self.proxy_to_ucp(raw, pool_ref, &settings, (&servers, nodes.as_ref()), health.as_ref(), &key);
        let prefer = pool_ref.prefer.as_ref().and_then(|p| self.prefer(p, (&servers, nodes.is_some()), &key));
        PoolConfig { name: Arc::from(name), settings, origins, servers, nodes, health, prefer }
    }

    pub(super) fn settings(&mut self, r: SettingsRef<'_>, base: &Settings, table: &str) -> Settings {
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
        if let Some(v) = r.send_proxy_protocol {
            match v.get_ref().as_str() {
                "off" => s.send_proxy_protocol = None,
                "v1" => s.send_proxy_protocol = Some(crate::proxy_send::Version::V1),
                "v2" => s.send_proxy_protocol = Some(crate::proxy_send::Version::V2),
                other => self.err(
                    Some(v.span()),
                    k("send_proxy_protocol"),
                    format!("expected \"v1\", \"v2\" or \"off\", found \"{other}\""),
                ),
            }
        }
        s
    }

    /// Warns of `slow_start`, `on_server_down` and `shutdown_timeout` where
    /// they change little or nothing.
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
        if let Some(v) = &pool.settings.shutdown_timeout {
            self.warn(
                Some(v.span()),
                format!("{key}.shutdown_timeout"),
                "changes nothing here: the grace period after SIGTERM is the process's, set in [defaults]",
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

    /// Warns of a PROXY header sent where UCP or a Kubernetes API server
    /// would get it: servers on 443 or 6443, or the UCP/DTR `/_ping`
    /// check. Neither parses the header (kubernetes #76928): every
    /// connection would fail its TLS handshake. A warning, not an error:
    /// an nginx or HAProxy that reads it may listen there.
    fn proxy_to_ucp(
        &mut self,
        raw: &RawConfig,
        pool: &raw::RawPool,
        settings: &Settings,
        (servers, nodes): (&[ServerConfig], Option<&NodeSelector>),
        health: Option<&HealthConfig>,
        key: &str,
    ) {
        let Some(v) = settings.send_proxy_protocol else { return };
        let mut ports = servers.iter().map(|s| s.address.port).chain(nodes.map(|n| n.port));
        let port = ports.find(|p| [443, 6443].contains(p));
        let ping = health.is_some_and(|h| h.kind != CheckKind::Tcp && h.path == "/_ping");
        let why = match (port, ping) {
            (Some(p), _) => format!("its servers are on port {p}"),
            (None, true) => "its check is UCP's and DTR's /_ping".to_owned(),
            (None, false) => return,
        };
        let at = pool
            .settings
            .send_proxy_protocol
            .as_ref()
            .or_else(|| raw.defaults.as_ref().and_then(|d| d.send_proxy_protocol.as_ref()))
            .map(|s| s.span());
        self.warn(
            at,
            format!("{key}.send_proxy_protocol"),
            format!(
                "sends a PROXY {} header, and {why}: if these are UCP managers, DTR replicas or Kubernetes API servers, every connection will fail, as they cannot parse one (kubernetes #76928); if an nginx or HAProxy that reads it listens there (listen ... proxy_protocol, accept-proxy), this is as intended",
                v.as_str()
            ),
        );
    }

    /// The pool's `servers`: required, and not empty, unless it has `nodes`.
    fn servers(&mut self, pool: &S<raw::RawPool>, key: &str, has_nodes: bool) -> Vec<ServerConfig> {
        let Some(list) = &pool.get_ref().servers else {
            if has_nodes {
                return Vec::new();
            }
            self.err(
                Some(pool.span()),
                format!("{key}.servers"),
                "missing key: a pool needs servers = [\"host:port\", ...]",
            );
            return Vec::new();
        };
        if list.get_ref().is_empty() && !has_nodes {
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
                labels: r.labels.as_ref().map(|l| self.labels(l, &skey)).unwrap_or_default(),
                source: ServerSource::Static,
            });
        }
        self.server_names(list.get_ref(), &out, key);
        out
    }

    /// A static server's `labels`: names and values as swarm node labels
    /// are, non-empty strings.
    fn labels(&mut self, l: &S<toml::Table>, skey: &str) -> std::collections::BTreeMap<String, String> {
        let mut out = std::collections::BTreeMap::new();
        for (name, v) in l.get_ref() {
            match v {
                toml::Value::String(s) if !name.is_empty() && !s.is_empty() => {
                    out.insert(name.clone(), s.clone());
                }
                _ => self.err(
                    Some(l.span()),
                    format!("{skey}.labels.{name}"),
                    format!("expected a label name with a non-empty string value, found {v}"),
                ),
            }
        }
        out
    }

    /// `prefer = { label, value }`: both needed. A label no server carries
    /// is legal (the swarm may add it), but with only static servers every
    /// one is then a backup, which is worth a warning.
    /// A pool's `prefer`; warned of when no static server carries its label
    /// and the pool takes no nodes (whose labels only the swarm knows).
    fn prefer(
        &mut self,
        p: &S<raw::RawPrefer>,
        (servers, nodes): (&[ServerConfig], bool),
        key: &str,
    ) -> Option<Prefer> {
        let r = p.get_ref();
        let (Some(label), Some(value)) = (&r.label, &r.value) else {
            self.err(
                Some(p.span()),
                format!("{key}.prefer"),
                r#"expected both label and value: { label = "zone", value = "dc1" }"#,
            );
            return None;
        };
        let prefer = Prefer { label: label.get_ref().clone(), value: value.get_ref().clone() };
        if prefer.label.is_empty() || prefer.value.is_empty() {
            self.err(Some(p.span()), format!("{key}.prefer"), "expected a non-empty label and value");
            return None;
        }
        if !nodes && !servers.is_empty() && !servers.iter().any(|s| prefer.matches(&s.labels)) {
            self.warn(
                Some(p.span()),
                format!("{key}.prefer"),
                format!(
                    "no server has the label {}={}: none is preferred, and every one takes clients as before",
                    prefer.label, prefer.value
                ),
            );
        }
        Some(prefer)
    }

    /// The admin API finds a server by its name or its address: a name
    /// two servers share, or one that is another server's address, would
    /// drain (enable, set down) both.
    fn server_names(&mut self, list: &[S<RawServer>], servers: &[ServerConfig], key: &str) {
        for (i, entry) in list.iter().enumerate() {
            let Some(n) = &entry.get_ref().name else { continue };
            let name = n.get_ref();
            let same_name =
                list[..i].iter().position(|e| e.get_ref().name.as_ref().is_some_and(|m| m.get_ref() == name));
            let own = entry.get_ref().address.as_ref().is_some_and(|a| a.get_ref() == name);
            let same_address = servers.iter().find(|s| !own && s.address.to_string() == *name);
            let message = match (same_name, same_address) {
                (Some(j), _) => format!(
                    "servers[{j}] has the name \"{name}\" too: /drain, /enable and /down by name would act on both; give each server its own name"
                ),
                (None, Some(s)) => format!(
                    "\"{name}\" is the address of the server at line {}: /drain, /enable and /down by it would act on both; give this server another name",
                    s.pos.line
                ),
                (None, None) => continue,
            };
            self.err(Some(n.span()), format!("{key}.servers[{i}].name"), message);
        }
    }
}

/// Where each `[defaults]` key of a pool came from: the pool's table,
/// `[defaults]`, or ucp-lb's default.
fn origins(raw: &RawConfig, pool: &raw::RawPool) -> std::collections::BTreeMap<&'static str, Origin> {
    let from_defaults = raw.defaults.as_ref().map(|d| d.settings().set());
    pool.settings()
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
        .collect()
}

pub(super) fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}
