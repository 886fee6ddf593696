//! The mirror of lb.toml: what the file says, nothing more, and every
//! problem of shape (an unknown key, a value of the wrong type) at once.
//!
//! The file is parsed into toml's spanned document tree and read by hand,
//! not by serde: serde's derive stops at the first wrong type or unknown
//! key, so a file with several mistakes would need a run for each. Here a
//! key with a wrong type is reported (at its value, with what was expected)
//! and left unset, an unknown key is reported at its name, and reading goes
//! on. No defaults are applied (every key is an `Option`), so validation in
//! `config/validate.rs` can tell "unset" from "set to the default"; values
//! keep their spans, so a later check can still point at line and column.
//! Which keys each table takes comes from their declaration (`keys.rs`).

use std::collections::BTreeMap;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::keys;

pub type S<T> = Spanned<T>;

const REAL_IP_FROM: &str = r#"a list like ["10.0.0.0/8", "192.0.2.7"]"#;

/// A listener's `routes`: (server name, pool name) pairs with their spans,
/// in the file's order.
pub type RawRoutes = S<Vec<(S<String>, S<String>)>>;

#[derive(Debug, Default)]
pub struct RawConfig {
    pub workers: Option<S<i64>>,
    pub admin: Option<S<RawAdmin>>,
    pub defaults: Option<RawSettings>,
    /// `[defaults]`'s `access_log` and `access_log_format`, which every
    /// listener inherits (pools do not have them).
    pub access_log: Option<S<String>>,
    pub access_log_format: Option<S<String>>,
    /// `[defaults]`'s `stop_grace` (process-wide, like shutdown_timeout).
    pub stop_grace: Option<S<String>>,
    /// `[defaults]`'s `client_keepalive`, which every listener inherits.
    pub client_keepalive: Option<S<RawKeepalive>>,
    /// `[defaults]`'s `max_pending_hellos`, which every routed listener
    /// inherits.
    pub max_pending_hellos: Option<S<i64>>,
    /// `[defaults]`'s `real_ip_from` and `proxy_protocol_timeout`, which
    /// every PROXY protocol listener inherits.
    pub real_ip_from: Option<S<Vec<S<String>>>>,
    pub proxy_protocol_timeout: Option<S<String>>,
    pub listener: Vec<S<RawListener>>,
    pub pool: BTreeMap<String, S<RawPool>>,
    /// `[limit.NAME]`: per-client limits listeners share by name.
    pub limit: BTreeMap<String, S<RawLimit>>,
    pub cluster: Option<S<RawCluster>>,
}

/// `[cluster]`: the swarm that fills pools.
#[derive(Debug, Default)]
pub struct RawCluster {
    pub api: Option<S<Vec<S<String>>>>,
    pub bundle: Option<S<String>>,
    pub refresh: Option<S<String>>,
}

/// A pool's `nodes = { role = "manager", port = 443 }`.
#[derive(Debug, Default)]
pub struct RawNodes {
    pub role: Option<S<String>>,
    pub label: Option<S<String>>,
    pub port: Option<S<i64>>,
}

/// A `[limit.NAME]` table.
#[derive(Debug, Default)]
pub struct RawLimit {
    pub max_connections_per_client: Option<S<i64>>,
    pub max_connection_rate_per_client: Option<S<i64>>,
}

#[derive(Debug, Default)]
pub struct RawAdmin {
    pub listen: Option<S<String>>,
    pub token_file: Option<S<String>>,
    pub status_needs_token: Option<S<bool>>,
    pub control_socket: Option<S<String>>,
}

#[derive(Debug, Default)]
pub struct RawListener {
    pub bind: Option<S<String>>,
    pub pool: Option<S<String>>,
    pub max_connections: Option<S<i64>>,
    pub access_log: Option<S<String>>,
    pub access_log_format: Option<S<String>>,
    pub access: Option<S<Vec<S<String>>>>,
    pub max_connections_per_client: Option<S<i64>>,
    pub max_connection_rate_per_client: Option<S<i64>>,
    /// `limit = "NAME"`: the shared `[limit.NAME]` it counts clients in.
    pub limit: Option<S<String>>,
    /// `routes = { "server.name" = "pool", ... }`, in the file's order.
    pub routes: Option<RawRoutes>,
    pub preread_timeout: Option<S<String>>,
    pub max_pending_hellos: Option<S<i64>>,
    pub client_keepalive: Option<S<RawKeepalive>>,
    pub proxy_protocol: Option<S<bool>>,
    pub real_ip_from: Option<S<Vec<S<String>>>>,
    pub proxy_protocol_timeout: Option<S<String>>,
    pub proxy_protocol_max_header: Option<S<i64>>,
}

/// `client_keepalive` / `server_keepalive`: `false` (off), `true` (the
/// defaults), or `{ idle = "60s", interval = "10s", count = 6 }` with any
/// of the three left to its default.
#[derive(Debug)]
pub enum RawKeepalive {
    Off,
    On { idle: Option<S<String>>, interval: Option<S<String>>, count: Option<S<i64>> },
}

/// The `[defaults]` keys: the table `[defaults]` itself, and any of them in
/// a `[pool.NAME]` table, for that pool only.
#[derive(Debug, Default)]
pub struct RawSettings {
    pub balance: Option<S<String>>,
    pub connect_timeout: Option<S<String>>,
    pub idle_timeout: Option<S<String>>,
    pub max_fails: Option<S<i64>>,
    pub fail_timeout: Option<S<String>>,
    pub retries: Option<S<toml::Value>>,
    pub all_down: Option<S<String>>,
    pub resolve_interval: Option<S<String>>,
    pub shutdown_timeout: Option<S<String>>,
    pub slow_start: Option<S<String>>,
    pub on_server_down: Option<S<String>>,
    pub close_spread: Option<S<String>>,
    pub server_keepalive: Option<S<RawKeepalive>>,
    pub send_proxy_protocol: Option<S<String>>,
}

/// `[pool.NAME]`: its servers, its check, and any `[defaults]` key.
#[derive(Debug, Default)]
pub struct RawPool {
    pub servers: Option<S<Vec<S<RawServer>>>>,
    pub health: Option<S<RawHealth>>,
    pub nodes: Option<S<RawNodes>>,
    /// `prefer = { label = "zone", value = "dc1" }`.
    pub prefer: Option<S<RawPrefer>>,
    pub settings: RawSettings,
}

/// A pool's `prefer` table.
#[derive(Debug, Default)]
pub struct RawPrefer {
    pub label: Option<S<String>>,
    pub value: Option<S<String>>,
}

/// `[pool.NAME.health]`: the active check of every server of the pool.
#[derive(Debug, Default)]
pub struct RawHealth {
    pub kind: Option<S<String>>,
    pub path: Option<S<String>>,
    pub interval: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub rise: Option<S<i64>>,
    pub fall: Option<S<i64>>,
    pub expect_status: Option<S<Vec<S<toml::Value>>>>,
    pub expect_body: Option<S<String>>,
    pub expect_json: Option<S<toml::Table>>,
    pub sni: Option<S<String>>,
    pub host: Option<S<String>>,
    pub ca_file: Option<S<String>>,
    pub port: Option<S<i64>>,
    pub client_cert: Option<S<String>>,
    pub client_key: Option<S<String>>,
    pub client_bundle: Option<S<bool>>,
}

/// A server entry: `"host:port"` or `{ address = "host:port", weight = 1, ... }`.
#[derive(Debug, Default)]
pub struct RawServer {
    pub address: Option<S<String>>,
    pub weight: Option<S<i64>>,
    pub backup: Option<S<bool>>,
    pub max_conns: Option<S<i64>>,
    pub state: Option<S<String>>,
    pub name: Option<S<String>>,
    pub slow_start: Option<S<String>>,
    /// `labels = { zone = "dc1" }`: the values as written (strings
    /// expected).
    pub labels: Option<S<toml::Table>>,
}

/// A problem of shape: where, which key, what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawError {
    pub span: Range<usize>,
    pub key: String,
    pub message: String,
}

/// Reads lb.toml `text`: what it says and every problem of shape, or the
/// TOML syntax error that stops reading.
pub fn read(text: &str) -> Result<(RawConfig, Vec<RawError>), toml::de::Error> {
    let root = DeTable::parse(text)?;
    let mut r = Reader { text, errors: Vec::new() };
    let t = root.get_ref();
    r.known_keys(t, "", &keys::names(""));
    let mut raw = RawConfig { workers: r.int(t, "", "workers"), ..RawConfig::default() };
    if let Some((span, a)) = r.table(t, "", "admin") {
        r.known_keys(a, "admin", &keys::names("admin"));
        let admin = RawAdmin {
            listen: r.string(a, "admin", "listen"),
            token_file: r.string(a, "admin", "token_file"),
            status_needs_token: r.bool(a, "admin", "status_needs_token"),
            control_socket: r.string(a, "admin", "control_socket"),
        };
        raw.admin = Some(Spanned::new(span, admin));
    }
    if let Some((_, d)) = r.table(t, "", "defaults") {
        r.known_keys(d, "defaults", &keys::names("defaults"));
        raw.defaults = Some(r.settings(d, "defaults"));
        raw.access_log = r.string(d, "defaults", "access_log");
        raw.access_log_format = r.string(d, "defaults", "access_log_format");
        raw.stop_grace = r.string(d, "defaults", "stop_grace");
        raw.client_keepalive = r.keepalive(d, "defaults", "client_keepalive");
        raw.max_pending_hellos = r.int(d, "defaults", "max_pending_hellos");
        raw.real_ip_from = r.strings(d, "defaults", "real_ip_from", REAL_IP_FROM);
        raw.proxy_protocol_timeout = r.string(d, "defaults", "proxy_protocol_timeout");
    }
    if let Some(v) = field(t, "listener") {
        match v.get_ref() {
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let key = format!("listener[{i}]");
                    let Some(l) = r.as_table(item, &key, "a [[listener]] table") else { continue };
                    r.known_keys(l, &key, &keys::names("listener[]"));
                    let listener = RawListener {
                        bind: r.string(l, &key, "bind"),
                        pool: r.string(l, &key, "pool"),
                        max_connections: r.int(l, &key, "max_connections"),
                        access_log: r.string(l, &key, "access_log"),
                        access_log_format: r.string(l, &key, "access_log_format"),
                        access: r.strings(l, &key, "access", r#"a list like ["allow 10.0.0.0/8", "deny all"]"#),
                        max_connections_per_client: r.int(l, &key, "max_connections_per_client"),
                        max_connection_rate_per_client: r.int(l, &key, "max_connection_rate_per_client"),
                        limit: r.string(l, &key, "limit"),
                        routes: r.routes(l, &key),
                        preread_timeout: r.string(l, &key, "preread_timeout"),
                        max_pending_hellos: r.int(l, &key, "max_pending_hellos"),
                        client_keepalive: r.keepalive(l, &key, "client_keepalive"),
                        proxy_protocol: r.bool(l, &key, "proxy_protocol"),
                        real_ip_from: r.strings(l, &key, "real_ip_from", REAL_IP_FROM),
                        proxy_protocol_timeout: r.string(l, &key, "proxy_protocol_timeout"),
                        proxy_protocol_max_header: r.int(l, &key, "proxy_protocol_max_header"),
                    };
                    raw.listener.push(Spanned::new(item.span(), listener));
                }
            }
            _ => r.wrong_type(v, "listener", "[[listener]] tables"),
        }
    }
    if let Some((_, pools)) = r.table(t, "", "pool") {
        for (name, p) in pools.iter() {
            let key = format!("pool.{}", name.get_ref());
            let Some(pt) = r.as_table(p, &key, "a [pool.NAME] table") else { continue };
            r.known_keys(pt, &key, &keys::names("pool.*"));
            let pool = RawPool {
                servers: r.servers(pt, &key),
                health: r.health(pt, &key),
                nodes: r.nodes(pt, &key),
                prefer: r.prefer(pt, &key),
                settings: r.settings(pt, &key),
            };
            raw.pool.insert(name.get_ref().to_string(), Spanned::new(p.span(), pool));
        }
    }
    if let Some((span, c)) = r.table(t, "", "cluster") {
        r.known_keys(c, "cluster", &keys::names("cluster"));
        let cluster = RawCluster {
            api: r.strings(c, "cluster", "api", r#"a list like ["manager-01:443", "manager-02:443"]"#),
            bundle: r.string(c, "cluster", "bundle"),
            refresh: r.string(c, "cluster", "refresh"),
        };
        raw.cluster = Some(Spanned::new(span, cluster));
    }
    if let Some((_, limits)) = r.table(t, "", "limit") {
        for (name, l) in limits.iter() {
            let key = format!("limit.{}", name.get_ref());
            let Some(lt) = r.as_table(l, &key, "a [limit.NAME] table") else { continue };
            r.known_keys(lt, &key, &keys::names("limit.*"));
            let limit = RawLimit {
                max_connections_per_client: r.int(lt, &key, "max_connections_per_client"),
                max_connection_rate_per_client: r.int(lt, &key, "max_connection_rate_per_client"),
            };
            raw.limit.insert(name.get_ref().to_string(), Spanned::new(l.span(), limit));
        }
    }
    r.errors.sort_by_key(|e| e.span.start);
    Ok((raw, r.errors))
}

type Value<'i> = Spanned<DeValue<'i>>;

/// The value of `key` in `t`.
fn field<'a, 'i>(t: &'a DeTable<'i>, key: &str) -> Option<&'a Value<'i>> {
    t.iter().find(|(k, _)| k.get_ref() == key).map(|(_, v)| v)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

struct Reader<'t> {
    text: &'t str,
    errors: Vec<RawError>,
}

impl Reader<'_> {
    fn error(&mut self, span: Range<usize>, key: String, message: String) {
        self.errors.push(RawError { span, key, message });
    }

    /// Reports every key of `t` that is not in `known`, at the key.
    fn known_keys(&mut self, t: &DeTable<'_>, path: &str, known: &[&str]) {
        for (k, _) in t.iter() {
            let name = k.get_ref();
            if !known.contains(&name.as_ref()) {
                let expected = known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
                self.error(k.span(), join(path, name), format!("unknown field `{name}`, expected one of {expected}"));
            }
        }
    }

    /// "invalid type: string "two", expected an integer", at the value.
    fn wrong_type(&mut self, v: &Value<'_>, key: &str, expected: &str) {
        let shown: String = self.text.get(v.span()).unwrap_or("").chars().take(40).collect();
        let found = v.get_ref().type_str();
        let message = match v.get_ref() {
            DeValue::Integer(_) | DeValue::Float(_) if expected.contains("duration") => {
                format!(
                    "expected a duration with a unit, found the number {shown}: write it as \"{shown}s\" (or ms, m, h, d)"
                )
            }
            _ => format!("invalid type: {found} {shown}, expected {expected}"),
        };
        self.error(v.span(), key.to_owned(), message);
    }

    fn string(&mut self, t: &DeTable<'_>, path: &str, key: &str) -> Option<S<String>> {
        let v = field(t, key)?;
        match v.get_ref() {
            DeValue::String(s) => Some(Spanned::new(v.span(), s.to_string())),
            _ => {
                let expected = if keys::is_duration(key) { "a duration like \"5s\"" } else { "a string" };
                self.wrong_type(v, &join(path, key), expected);
                None
            }
        }
    }

    /// A list of strings; an entry of another type is reported at the
    /// entry and left out.
    fn strings(&mut self, t: &DeTable<'_>, path: &str, key: &str, expected: &str) -> Option<S<Vec<S<String>>>> {
        let v = field(t, key)?;
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong_type(v, &join(path, key), expected);
            return None;
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.get_ref() {
                DeValue::String(s) => out.push(Spanned::new(item.span(), s.to_string())),
                _ => self.wrong_type(item, &format!("{}[{i}]", join(path, key)), "a string"),
            }
        }
        Some(Spanned::new(v.span(), out))
    }

    /// `routes`: a table of server names to pool names.
    fn routes(&mut self, t: &DeTable<'_>, path: &str) -> Option<RawRoutes> {
        let key = join(path, "routes");
        let v = field(t, "routes")?;
        let table = self.as_table(v, &key, r#"a table like { "ucp.example.com" = "ucp" }"#)?;
        let mut out = Vec::new();
        for (name, pool) in table.iter() {
            match pool.get_ref() {
                DeValue::String(p) => out.push((
                    Spanned::new(name.span(), name.get_ref().to_string()),
                    Spanned::new(pool.span(), p.to_string()),
                )),
                _ => self.wrong_type(pool, &format!("{key}.\"{}\"", name.get_ref()), "a pool name"),
            }
        }
        Some(Spanned::new(v.span(), out))
    }

    fn int(&mut self, t: &DeTable<'_>, path: &str, key: &str) -> Option<S<i64>> {
        let v = field(t, key)?;
        match v.get_ref() {
            DeValue::Integer(n) => match i64::from_str_radix(n.as_str(), n.radix()) {
                Ok(n) => Some(Spanned::new(v.span(), n)),
                Err(_) => {
                    self.error(v.span(), join(path, key), format!("integer {n} is out of range"));
                    None
                }
            },
            _ => {
                self.wrong_type(v, &join(path, key), "an integer");
                None
            }
        }
    }

    fn bool(&mut self, t: &DeTable<'_>, path: &str, key: &str) -> Option<S<bool>> {
        let v = field(t, key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(Spanned::new(v.span(), *b)),
            _ => {
                self.wrong_type(v, &join(path, key), "true or false");
                None
            }
        }
    }

    /// Any value, as toml's own `Value` (checked by validation).
    fn value(&mut self, t: &DeTable<'_>, key: &str) -> Option<S<toml::Value>> {
        let v = field(t, key)?;
        Some(Spanned::new(v.span(), to_value(v.get_ref())))
    }

    fn as_table<'a, 'i>(&mut self, v: &'a Value<'i>, key: &str, expected: &str) -> Option<&'a DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => {
                self.wrong_type(v, key, expected);
                None
            }
        }
    }

    fn table<'a, 'i>(&mut self, t: &'a DeTable<'i>, path: &str, key: &str) -> Option<(Range<usize>, &'a DeTable<'i>)> {
        let v = field(t, key)?;
        self.as_table(v, &join(path, key), "a table").map(|t| (v.span(), t))
    }

    fn settings(&mut self, t: &DeTable<'_>, path: &str) -> RawSettings {
        RawSettings {
            balance: self.string(t, path, "balance"),
            connect_timeout: self.string(t, path, "connect_timeout"),
            idle_timeout: self.string(t, path, "idle_timeout"),
            max_fails: self.int(t, path, "max_fails"),
            fail_timeout: self.string(t, path, "fail_timeout"),
            retries: self.value(t, "retries"),
            all_down: self.string(t, path, "all_down"),
            resolve_interval: self.string(t, path, "resolve_interval"),
            shutdown_timeout: self.string(t, path, "shutdown_timeout"),
            slow_start: self.string(t, path, "slow_start"),
            on_server_down: self.string(t, path, "on_server_down"),
            close_spread: self.string(t, path, "close_spread"),
            server_keepalive: self.keepalive(t, path, "server_keepalive"),
            send_proxy_protocol: self.string(t, path, "send_proxy_protocol"),
        }
    }

    /// A keepalive key: `false`, `true` or a table of `idle`, `interval`
    /// and `count`.
    fn keepalive(&mut self, t: &DeTable<'_>, path: &str, key: &str) -> Option<S<RawKeepalive>> {
        let v = field(t, key)?;
        let full = join(path, key);
        let raw = match v.get_ref() {
            DeValue::Boolean(false) => RawKeepalive::Off,
            DeValue::Boolean(true) => RawKeepalive::On { idle: None, interval: None, count: None },
            DeValue::Table(kt) => {
                // Every keepalive key takes the keys of `[defaults]`'s.
                self.known_keys(kt, &full, &keys::names(&format!("defaults.{key}")));
                RawKeepalive::On {
                    idle: self.string(kt, &full, "idle"),
                    interval: self.string(kt, &full, "interval"),
                    count: self.int(kt, &full, "count"),
                }
            }
            _ => {
                self.wrong_type(
                    v,
                    &full,
                    r#"false, true or a table like { idle = "60s", interval = "10s", count = 6 }"#,
                );
                return None;
            }
        };
        Some(Spanned::new(v.span(), raw))
    }

    fn servers(&mut self, t: &DeTable<'_>, path: &str) -> Option<S<Vec<S<RawServer>>>> {
        let key = join(path, "servers");
        let v = field(t, "servers")?;
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong_type(v, &key, "a list of servers");
            return None;
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let skey = format!("{key}[{i}]");
            let server = match item.get_ref() {
                // The span of a bare string is the span of the whole entry.
                DeValue::String(s) => {
                    RawServer { address: Some(Spanned::new(item.span(), s.to_string())), ..RawServer::default() }
                }
                DeValue::Table(st) => {
                    self.known_keys(st, &skey, &keys::names("pool.*.servers[]"));
                    RawServer {
                        address: self.string(st, &skey, "address"),
                        weight: self.int(st, &skey, "weight"),
                        backup: self.bool(st, &skey, "backup"),
                        max_conns: self.int(st, &skey, "max_conns"),
                        state: self.string(st, &skey, "state"),
                        name: self.string(st, &skey, "name"),
                        slow_start: self.string(st, &skey, "slow_start"),
                        labels: self.free_table(st, &skey, "labels", r#"a table like { zone = "dc1" }"#),
                    }
                }
                _ => {
                    self.wrong_type(item, &skey, r#"a server "host:port" or a table { address = "host:port", ... }"#);
                    continue;
                }
            };
            out.push(Spanned::new(item.span(), server));
        }
        Some(Spanned::new(v.span(), out))
    }

    /// A pool's `nodes`: a table of `role` or `label`, and `port`.
    fn nodes(&mut self, t: &DeTable<'_>, path: &str) -> Option<S<RawNodes>> {
        let key = join(path, "nodes");
        let v = field(t, "nodes")?;
        let n = self.as_table(v, &key, r#"a table like { role = "manager", port = 443 }"#)?;
        self.known_keys(n, &key, &keys::names("pool.*.nodes"));
        let raw = RawNodes {
            role: self.string(n, &key, "role"),
            label: self.string(n, &key, "label"),
            port: self.int(n, &key, "port"),
        };
        Some(Spanned::new(v.span(), raw))
    }

    fn health(&mut self, t: &DeTable<'_>, path: &str) -> Option<S<RawHealth>> {
        let key = join(path, "health");
        let v = field(t, "health")?;
        let h = self.as_table(v, &key, "a table")?;
        self.known_keys(h, &key, &keys::names("pool.*.health"));
        let expect_status = field(h, "expect_status").and_then(|s| match s.get_ref() {
            DeValue::Array(items) => Some(Spanned::new(
                s.span(),
                items.iter().map(|i| Spanned::new(i.span(), to_value(i.get_ref()))).collect(),
            )),
            _ => {
                self.wrong_type(s, &join(&key, "expect_status"), "a list like [200] or [\"2xx\"]");
                None
            }
        });
        let expect_json = self.free_table(h, &key, "expect_json", "a table like { Healthy = true }");
        let raw = RawHealth {
            kind: self.string(h, &key, "kind"),
            path: self.string(h, &key, "path"),
            interval: self.string(h, &key, "interval"),
            timeout: self.string(h, &key, "timeout"),
            rise: self.int(h, &key, "rise"),
            fall: self.int(h, &key, "fall"),
            expect_status,
            expect_body: self.string(h, &key, "expect_body"),
            expect_json,
            sni: self.string(h, &key, "sni"),
            host: self.string(h, &key, "host"),
            ca_file: self.string(h, &key, "ca_file"),
            port: self.int(h, &key, "port"),
            client_cert: self.string(h, &key, "client_cert"),
            client_key: self.string(h, &key, "client_key"),
            client_bundle: self.bool(h, &key, "client_bundle"),
        };
        Some(Spanned::new(v.span(), raw))
    }

    /// A table of any keys (`expect_json`, a server's `labels`), whose
    /// values validation checks.
    fn free_table(&mut self, t: &DeTable<'_>, path: &str, key: &str, expected: &str) -> Option<S<toml::Table>> {
        let v = field(t, key)?;
        match to_value(v.get_ref()) {
            toml::Value::Table(table) => Some(Spanned::new(v.span(), table)),
            _ => {
                self.wrong_type(v, &join(path, key), expected);
                None
            }
        }
    }

    fn prefer(&mut self, t: &DeTable<'_>, path: &str) -> Option<S<RawPrefer>> {
        let key = join(path, "prefer");
        let v = field(t, "prefer")?;
        let p = self.as_table(v, &key, r#"a table like { label = "zone", value = "dc1" }"#)?;
        self.known_keys(p, &key, &keys::names("pool.*.prefer"));
        let raw = RawPrefer { label: self.string(p, &key, "label"), value: self.string(p, &key, "value") };
        Some(Spanned::new(v.span(), raw))
    }
}

/// A value of the document tree as toml's own `Value`.
fn to_value(v: &DeValue<'_>) -> toml::Value {
    match v {
        DeValue::String(s) => toml::Value::String(s.to_string()),
        DeValue::Integer(n) => match i64::from_str_radix(n.as_str(), n.radix()) {
            Ok(n) => toml::Value::Integer(n),
            // Out of range for TOML's integers: kept as written, so a check
            // that wants an integer rejects it with the text.
            Err(_) => toml::Value::String(n.to_string()),
        },
        DeValue::Float(f) => toml::Value::Float(f.as_str().parse().unwrap_or(f64::NAN)),
        DeValue::Boolean(b) => toml::Value::Boolean(*b),
        DeValue::Datetime(d) => toml::Value::Datetime(*d),
        DeValue::Array(a) => toml::Value::Array(a.iter().map(|i| to_value(i.get_ref())).collect()),
        DeValue::Table(t) => {
            toml::Value::Table(t.iter().map(|(k, v)| (k.get_ref().to_string(), to_value(v.get_ref()))).collect())
        }
    }
}

impl RawSettings {
    /// The keys, borrowed, so defaults and pools are validated by the same code.
    pub fn settings(&self) -> SettingsRef<'_> {
        SettingsRef {
            balance: self.balance.as_ref(),
            connect_timeout: self.connect_timeout.as_ref(),
            idle_timeout: self.idle_timeout.as_ref(),
            max_fails: self.max_fails.as_ref(),
            fail_timeout: self.fail_timeout.as_ref(),
            retries: self.retries.as_ref(),
            all_down: self.all_down.as_ref(),
            resolve_interval: self.resolve_interval.as_ref(),
            shutdown_timeout: self.shutdown_timeout.as_ref(),
            slow_start: self.slow_start.as_ref(),
            on_server_down: self.on_server_down.as_ref(),
            close_spread: self.close_spread.as_ref(),
            server_keepalive: self.server_keepalive.as_ref(),
            send_proxy_protocol: self.send_proxy_protocol.as_ref(),
        }
    }
}

impl RawPool {
    pub fn settings(&self) -> SettingsRef<'_> {
        self.settings.settings()
    }
}

impl SettingsRef<'_> {
    /// Each key's name and whether this table sets it.
    pub fn set(&self) -> [(&'static str, bool); 14] {
        [
            ("balance", self.balance.is_some()),
            ("connect_timeout", self.connect_timeout.is_some()),
            ("idle_timeout", self.idle_timeout.is_some()),
            ("max_fails", self.max_fails.is_some()),
            ("fail_timeout", self.fail_timeout.is_some()),
            ("retries", self.retries.is_some()),
            ("all_down", self.all_down.is_some()),
            ("resolve_interval", self.resolve_interval.is_some()),
            ("shutdown_timeout", self.shutdown_timeout.is_some()),
            ("slow_start", self.slow_start.is_some()),
            ("on_server_down", self.on_server_down.is_some()),
            ("close_spread", self.close_spread.is_some()),
            ("server_keepalive", self.server_keepalive.is_some()),
            ("send_proxy_protocol", self.send_proxy_protocol.is_some()),
        ]
    }
}

/// The `[defaults]` keys of one table, borrowed.
#[derive(Debug, Default, Clone, Copy)]
pub struct SettingsRef<'a> {
    pub balance: Option<&'a S<String>>,
    pub connect_timeout: Option<&'a S<String>>,
    pub idle_timeout: Option<&'a S<String>>,
    pub max_fails: Option<&'a S<i64>>,
    pub fail_timeout: Option<&'a S<String>>,
    pub retries: Option<&'a S<toml::Value>>,
    pub all_down: Option<&'a S<String>>,
    pub resolve_interval: Option<&'a S<String>>,
    pub shutdown_timeout: Option<&'a S<String>>,
    pub slow_start: Option<&'a S<String>>,
    pub on_server_down: Option<&'a S<String>>,
    pub close_spread: Option<&'a S<String>>,
    pub server_keepalive: Option<&'a S<RawKeepalive>>,
    pub send_proxy_protocol: Option<&'a S<String>>,
}
