//! The typed, validated configuration, and the one way to get it.
//!
//! `parse` turns lb.toml text into a [`Config`] or into every problem found,
//! each naming file, line, column and key. `check` and reloads use the same
//! function, so they cannot disagree. This module knows nothing of sockets or
//! runtime state: host names are resolved by `resolve.rs`.

pub mod raw;

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use raw::{RawConfig, RawServer, S, SettingsRef};

/// How a pool picks a server for a new client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// nginx's smooth weighted round robin.
    RoundRobin,
    /// Fewest active connections per unit of weight; ties by round robin.
    LeastConn,
    /// Two weighted random picks, the one with fewer connections wins.
    RandomTwo,
    /// nginx's `hash $remote_addr consistent`.
    SourceHash,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConn => "least_conn",
            Balance::RandomTwo => "random_two",
            Balance::SourceHash => "source_hash",
        }
    }
}

/// What a pool does when no server is eligible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllDown {
    /// Route over every server not set `down`, as if healthy.
    FailOpen,
    /// Close the client.
    Reject,
}

impl AllDown {
    pub fn as_str(self) -> &'static str {
        match self {
            AllDown::FailOpen => "fail_open",
            AllDown::Reject => "reject",
        }
    }
}

/// How many further servers a client tries after a failed connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retries {
    Count(u32),
    /// Every server of the pool, each once.
    All,
}

/// A server's administrative state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    Up,
    /// Takes no new connections; open ones go on.
    Drain,
    Down,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Up => "up",
            AdminState::Drain => "drain",
            AdminState::Down => "down",
        }
    }
}

/// The keys of `[defaults]`, resolved for one pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub balance: Balance,
    pub connect_timeout: Duration,
    /// `None`: connections may stay quiet for ever.
    pub idle_timeout: Option<Duration>,
    /// 0 switches passive ejection off.
    pub max_fails: u32,
    pub fail_timeout: Duration,
    pub retries: Retries,
    pub all_down: AllDown,
    pub resolve_interval: Duration,
    pub shutdown_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            balance: Balance::RoundRobin,
            connect_timeout: Duration::from_secs(3),
            idle_timeout: None,
            max_fails: 2,
            fail_timeout: Duration::from_secs(30),
            retries: Retries::Count(2),
            all_down: AllDown::FailOpen,
            resolve_interval: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// A position in the config file, for messages about a value found later
/// (a name that does not resolve, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// As written, e.g. `manager-01:443`: the server's name in logs and status.
    pub address: HostPort,
    pub weight: u32,
    pub backup: bool,
    /// 0: no limit.
    pub max_conns: u32,
    pub state: AdminState,
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: Arc<str>,
    pub settings: Settings,
    pub servers: Vec<ServerConfig>,
    /// `None`: no active check (`kind = "none"` or no `[pool.NAME.health]`).
    pub health: Option<HealthConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// `GET path` over TLS (the certificate is not verified unless `ca_file`).
    Https,
    /// `GET path` over plain TCP.
    Http,
    /// A TCP connect only.
    Tcp,
}

/// A status the check accepts: `200`, or a class such as `"2xx"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusMatch {
    Code(u16),
    Class(u16),
}

impl StatusMatch {
    pub fn matches(self, status: u16) -> bool {
        match self {
            StatusMatch::Code(c) => c == status,
            StatusMatch::Class(c) => status / 100 == c,
        }
    }
}

/// `[pool.NAME.health]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub kind: CheckKind,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub expect_status: Vec<StatusMatch>,
    /// The body must contain this.
    pub expect_body: Option<String>,
    /// The body must be JSON with these top-level fields equal to these values.
    pub expect_json: Vec<(String, serde_json::Value)>,
    pub sni: Option<String>,
    pub host: Option<String>,
    pub ca_file: Option<PathBuf>,
    /// Probe this port instead of the server's own.
    pub port: Option<u16>,
    /// Where `ca_file` is set, for errors reading it.
    pub ca_file_pos: Pos,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            kind: CheckKind::Https,
            path: "/_ping".into(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 2,
            expect_status: vec![StatusMatch::Code(200)],
            expect_body: None,
            expect_json: Vec::new(),
            sni: None,
            host: None,
            ca_file: None,
            port: None,
            ca_file_pos: Pos::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub bind: SocketAddr,
    pub pool: Arc<str>,
    /// 0: no limit.
    pub max_connections: u32,
}

/// `[admin]`: where /metrics, /status, /healthz and the status page listen.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Enables the POST endpoints; `None`: they answer 403.
    pub token_file: Option<PathBuf>,
    pub token_file_pos: Pos,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9900)),
            token_file: None,
            token_file_pos: Pos::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where it was read from: named in every message about it.
    pub source: String,
    pub path: Option<PathBuf>,
    pub workers: Option<usize>,
    pub admin: AdminConfig,
    pub defaults: Settings,
    pub listeners: Vec<ListenerConfig>,
    /// Sorted by name.
    pub pools: Vec<PoolConfig>,
    /// CRC-32 of the text it was parsed from: the file watch compares the
    /// file with what is running, not with what it read when it started.
    pub fingerprint: u32,
    /// What is legal but probably not meant, in file order: `check` prints
    /// these, start and reload log them.
    pub warnings: Vec<ConfigError>,
}

impl Config {
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| &*p.name == name)
    }
}

/// One problem with a config: where, which key, what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub source: String,
    pub pos: Option<Pos>,
    pub key: String,
    pub message: String,
}

/// Each error is one line, whatever the file holds: a value quoted in a
/// message (or a quoted key) may contain line breaks, which would otherwise
/// split the error or forge another one after it. Control characters are
/// written as escapes.
fn one_line(f: &mut fmt::Formatter, text: &str) -> fmt::Result {
    for c in text.chars() {
        match c {
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if c.is_control() => write!(f, "\\u{{{:x}}}", c as u32)?,
            c => fmt::Write::write_char(f, c)?,
        }
    }
    Ok(())
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        one_line(f, &self.source)?;
        if let Some(p) = self.pos {
            write!(f, ":{}:{}", p.line, p.col)?;
        }
        f.write_str(": ")?;
        if !self.key.is_empty() {
            one_line(f, &self.key)?;
            f.write_str(": ")?;
        }
        one_line(f, &self.message)
    }
}

/// Every problem found in one config, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            source: source.clone(),
            pos: None,
            key: String::new(),
            message: format!("cannot read the config file: {e}"),
        }])
    })?;
    if let Some(why) = world_writable(path) {
        return Err(ConfigErrors(vec![ConfigError {
            source: source.clone(),
            pos: None,
            key: String::new(),
            message: why,
        }]));
    }
    let mut config = parse(&text, &source)?;
    config.path = Some(path.to_path_buf());
    Ok(config)
}

/// Why `path` must not be used when every user of the host may write it
/// (the config decides where traffic goes; the token guards the admin
/// POST endpoints), else `None`. A symbolic link is followed: its target's
/// mode is what counts.
pub fn world_writable(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o002 != 0).then(|| {
        format!(
            "{} is writable by every user (mode {:04o}): refused; remove that bit with `chmod o-w {}`",
            path.display(),
            mode & 0o7777,
            path.display()
        )
    })
}

/// Validates lb.toml `text`; `source` names it in messages.
pub fn parse(text: &str, source: &str) -> Result<Config, ConfigErrors> {
    let lines = LineIndex::new(text);
    if text.trim().is_empty() {
        return Err(ConfigErrors(vec![ConfigError {
            source: source.to_owned(),
            pos: None,
            key: String::new(),
            message: "the config is empty: at least one [[listener]] and one [pool.NAME] are needed".into(),
        }]));
    }
    let (raw, shape) = raw::read(text).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            source: source.to_owned(),
            pos: e.span().map(|s| lines.pos(s.start)),
            key: String::new(),
            message: format!("invalid TOML: {}", e.message().trim()),
        }])
    })?;
    let mut v = Validator { source, lines: &lines, errors: Vec::new(), warnings: Vec::new() };
    let mut config = v.config(&raw);
    config.fingerprint = crc32fast::hash(text.as_bytes());
    v.warnings.sort_by_key(|e| e.pos.map(|p| (p.line, p.col)));
    config.warnings = v.warnings;
    // A key with a wrong type was left unset: validation's "missing key" for
    // it would only repeat the error.
    let mut errors: Vec<ConfigError> = v.errors.into_iter().filter(|e| !shape.iter().any(|s| s.key == e.key)).collect();
    errors.extend(shape.into_iter().map(|s| ConfigError {
        source: source.to_owned(),
        pos: Some(lines.pos(s.span.start)),
        key: s.key,
        message: s.message,
    }));
    if errors.is_empty() {
        Ok(config)
    } else {
        errors.sort_by_key(|e| e.pos.map(|p| (p.line, p.col)));
        Err(ConfigErrors(errors))
    }
}

/// Byte offset to line and column (both from 1; columns count characters).
pub struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { text, starts }
    }

    pub fn pos(&self, offset: usize) -> Pos {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts[line - 1];
        let col = self.text.get(start..offset).map_or(offset - start, |s| s.chars().count()) + 1;
        Pos { line, col }
    }
}

/// Parses `"500ms"`, `"5s"`, `"10m"`, `"1h"`, `"1d"`; `"0"` and `"none"` are
/// `Ok(None)` (switched off); a bare number is rejected, since a unit is easy
/// to forget and "30" could mean seconds or minutes.
pub fn parse_duration(s: &str) -> Result<Option<Duration>, String> {
    let t = s.trim();
    if t == "0" || t.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let expected = || format!(r#"expected a duration like "500ms", "5s", "10m" or "1h", found "{s}""#);
    if num.is_empty() {
        return Err(expected());
    }
    let value: f64 = num.parse().map_err(|_| expected())?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        "" => {
            return Err(format!(r#"expected a unit (ms, s, m, h or d) after the number, found "{s}""#));
        }
        _ => return Err(expected()),
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 365.0 * 86400.0 {
        return Err(format!(r#"duration "{s}" is longer than a year"#));
    }
    if secs == 0.0 {
        return Ok(None);
    }
    Ok(Some(Duration::from_secs_f64(secs)))
}

/// Formats a duration the way lb.toml writes it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0".into()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Parses `host:port`, `[v6]:port` or `v4:port`.
pub fn parse_host_port(s: &str) -> Result<HostPort, String> {
    let bad = |why: &str| format!(r#"expected "host:port", found "{s}": {why}"#);
    if let Some((scheme, rest)) = s.split_once("://") {
        let bare = rest.split('/').next().unwrap_or(rest);
        return Err(bad(&format!("a server is an address, not a URL: drop \"{scheme}://\" and write \"{bare}\"")));
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once(']').ok_or_else(|| bad("missing ']'"))?;
        let p = p.strip_prefix(':').ok_or_else(|| bad("missing port"))?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("not an IPv6 address between [ and ]"));
        }
        (h, p)
    } else {
        let (h, p) = s.rsplit_once(':').ok_or_else(|| bad("missing port"))?;
        if h.contains(':') {
            return Err(bad("write IPv6 addresses as [addr]:port"));
        }
        (h, p)
    };
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    let is_v6 = host.parse::<std::net::Ipv6Addr>().is_ok();
    let name_ok = host.starts_with(|c: char| c.is_ascii_alphanumeric())
        && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !is_v6 && !name_ok {
        return Err(bad("not a valid host name or address"));
    }
    let port: u16 = port.parse().map_err(|_| bad("port must be a number from 1 to 65535"))?;
    if port == 0 {
        return Err(bad("port must be a number from 1 to 65535"));
    }
    Ok(HostPort { host: host.to_owned(), port })
}

struct Validator<'a> {
    source: &'a str,
    lines: &'a LineIndex<'a>,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
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

    fn config(&mut self, raw: &RawConfig) -> Config {
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
            pools.push(PoolConfig { name: Arc::from(name.as_str()), settings, servers, health });
        }

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
            let pool = match &lr.pool {
                None => {
                    self.err(Some(l.span()), format!("{key}.pool"), r#"missing key: expected pool = "NAME""#);
                    None
                }
                Some(p) => {
                    if raw.pool.contains_key(p.get_ref()) {
                        Some(Arc::<str>::from(p.get_ref().as_str()))
                    } else {
                        let known: Vec<&str> = raw.pool.keys().map(String::as_str).collect();
                        self.err(
                            Some(p.span()),
                            format!("{key}.pool"),
                            format!(
                                "no pool named \"{}\" (defined: {})",
                                p.get_ref(),
                                if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                            ),
                        );
                        None
                    }
                }
            };
            let max_connections = match &lr.max_connections {
                None => 0,
                Some(m) => self.int(m, &format!("{key}.max_connections"), 1, u32::MAX as i64, "").unwrap_or(0),
            };
            if let (Some(bind), Some(pool)) = (bind, pool) {
                listeners.push(ListenerConfig { bind, pool, max_connections });
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
        }
        if listeners.iter().any(|l| l.bind == admin.listen && admin.listen.port() != 0) {
            self.err(
                None,
                "admin.listen",
                format!("{} is also a traffic listener: the admin port never carries traffic", admin.listen),
            );
        }

        if admin.token_file.is_none() && !admin.listen.ip().is_loopback() {
            let span = raw.admin.as_ref().and_then(|a| a.get_ref().listen.as_ref()).map(|l| l.span());
            self.warn(
                span,
                "admin.listen",
                format!(
                    "{} is beyond loopback without a token_file: status and metrics are readable by anyone who reaches this port (POST endpoints stay off)",
                    admin.listen
                ),
            );
        }

        Config {
            source: self.source.to_owned(),
            path: None,
            workers,
            admin,
            defaults,
            listeners,
            pools,
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

    fn settings(&mut self, r: SettingsRef<'_>, base: &Settings, table: &str) -> Settings {
        let mut s = base.clone();
        let k = |name: &str| format!("{table}.{name}");
        if let Some(b) = r.balance {
            match b.get_ref().as_str() {
                "round_robin" => s.balance = Balance::RoundRobin,
                "least_conn" => s.balance = Balance::LeastConn,
                "random_two" => s.balance = Balance::RandomTwo,
                "source_hash" => s.balance = Balance::SourceHash,
                other => self.err(
                    Some(b.span()),
                    k("balance"),
                    format!(
                        "expected one of \"round_robin\", \"least_conn\", \"random_two\", \"source_hash\", found \"{other}\""
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
        s
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
            if let Some(first) = out.iter().find(|s| s.address == address) {
                let line = first.pos.line;
                self.err(Some(addr_span), skey, format!("{address} is already listed in this pool at line {line}"));
                continue;
            }
            out.push(ServerConfig {
                address,
                weight,
                backup: r.backup.as_ref().is_some_and(|b| *b.get_ref()),
                max_conns,
                state,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_switch_off() {
        assert_eq!(parse_duration("500ms"), Ok(Some(Duration::from_millis(500))));
        assert_eq!(parse_duration("5s"), Ok(Some(Duration::from_secs(5))));
        assert_eq!(parse_duration("10m"), Ok(Some(Duration::from_secs(600))));
        assert_eq!(parse_duration("1.5h"), Ok(Some(Duration::from_secs(5400))));
        assert_eq!(parse_duration("none"), Ok(None));
        assert_eq!(parse_duration("0"), Ok(None));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn durations_format_back() {
        for s in ["500ms", "5s", "10m", "2h"] {
            assert_eq!(format_duration(parse_duration(s).unwrap().unwrap()), s);
        }
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(parse_host_port("manager-01:443").unwrap().to_string(), "manager-01:443");
        assert_eq!(parse_host_port("[::1]:6443").unwrap().to_string(), "[::1]:6443");
        assert!(parse_host_port("manager-01").is_err());
        assert!(parse_host_port("manager-01:0").is_err());
        assert!(parse_host_port("manager-01:99999").is_err());
        assert!(parse_host_port("::1:443").is_err());
        assert!(parse_host_port("bad host:443").is_err());
    }

    #[test]
    fn line_index_counts_from_one() {
        let li = LineIndex::new("ab\ncd\n");
        assert_eq!(li.pos(0), Pos { line: 1, col: 1 });
        assert_eq!(li.pos(4), Pos { line: 2, col: 2 });
    }
}
