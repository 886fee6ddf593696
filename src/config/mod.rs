//! The typed, validated configuration, and the one way to get it.
//!
//! `parse` turns lb.toml text into a [`Config`] or into every problem found,
//! each naming file, line, column and key. `check` and reloads use the same
//! function, so they cannot disagree. This module knows nothing of sockets or
//! runtime state: host names are resolved by `resolve.rs`. Every key is
//! declared once, in `keys.rs`.

mod check;
pub mod cluster;
pub mod keys;
pub mod raw;
pub mod rules;
mod validate;
mod values;

pub use check::{CheckKind, ClientCert, HealthConfig, StatusMatch};
pub use cluster::{ClusterConfig, NodeMatch, NodeSelector, Role, ServerSource};
pub use rules::{Limits, Pattern, ProxyProtocol, Rule};
pub use values::{LineIndex, format_duration, parse_duration, parse_host_port, parse_listen};

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use validate::Validator;

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
    /// nginx's `hash $remote_addr` (HAProxy's map-based hash): the client
    /// address modulo the total weight.
    SourceHashMap,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConn => "least_conn",
            Balance::RandomTwo => "random_two",
            Balance::SourceHash => "source_hash",
            Balance::SourceHashMap => "source_hash_map",
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

/// What happens to the open sessions of a server its check marks down or
/// the admin API sets down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnServerDown {
    /// They go on until either end closes them (nginx's behaviour).
    Keep,
    /// They are closed, spread over `close_spread`, so their clients
    /// reconnect through a server that is up.
    Close,
}

impl OnServerDown {
    pub fn as_str(self) -> &'static str {
        match self {
            OnServerDown::Keep => "keep",
            OnServerDown::Close => "close",
        }
    }
}

/// TCP keepalive on one side of every connection: how long a connection
/// stays quiet before the first probe, the time between unanswered
/// probes, and how many go unanswered before the peer counts as gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
}

impl Keepalive {
    /// 60 s quiet, then a probe every 10 s, gone after 6 unanswered: a
    /// dead peer is found about two minutes after the last segment.
    pub const DEFAULT: Keepalive =
        Keepalive { idle: Duration::from_secs(60), interval: Duration::from_secs(10), count: 6 };

    /// The longest a dead peer of a quiet connection goes unnoticed.
    pub fn detects_within(&self) -> Duration {
        self.idle + self.interval * self.count
    }

    /// In words: "60s quiet, then 6 probes 10s apart (dead after 2m)", or
    /// "off".
    pub fn words(k: Option<&Keepalive>) -> String {
        match k {
            None => "off".into(),
            Some(k) => format!(
                "{} quiet, then {} probes {} apart (dead after {})",
                format_duration(k.idle),
                k.count,
                format_duration(k.interval),
                format_duration(k.detects_within())
            ),
        }
    }

    /// As lb.toml writes it: `{ idle = "60s", interval = "10s", count = 6 }`
    /// or `false`.
    pub fn toml(k: Option<&Keepalive>) -> String {
        match k {
            None => "false".into(),
            Some(k) => format!(
                "{{ idle = \"{}\", interval = \"{}\", count = {} }}",
                format_duration(k.idle),
                format_duration(k.interval),
                k.count
            ),
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
    /// After a server comes back from down, how long its weight (and
    /// `max_conns`) takes to grow from a tenth to all of it; zero: at once.
    pub slow_start: Duration,
    pub on_server_down: OnServerDown,
    /// With `on_server_down = "close"`: the time over which the sessions
    /// are closed (zero: all at once).
    pub close_spread: Duration,
    /// TCP keepalive of the sockets to servers; `None`: off.
    pub server_keepalive: Option<Keepalive>,
    /// The PROXY protocol header written to each server before the
    /// client's first byte; `None`: none (the default).
    pub send_proxy_protocol: Option<crate::proxy_send::Version>,
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
            slow_start: Duration::ZERO,
            on_server_down: OnServerDown::Keep,
            close_spread: Duration::from_secs(5),
            server_keepalive: Some(Keepalive::DEFAULT),
            send_proxy_protocol: None,
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
    /// As written, e.g. `manager-01:443`: the server's name in logs and
    /// status unless `name` is given; the hash ring is built from it.
    pub address: HostPort,
    /// How many servers before it in the pool have the same address: the
    /// same address listed twice is two peers, as in nginx.
    pub nth: u32,
    /// A name for people (`manager-01`), shown instead of the address.
    pub name: Option<String>,
    pub weight: u32,
    pub backup: bool,
    /// 0: no limit.
    pub max_conns: u32,
    pub state: AdminState,
    /// The server's own `slow_start`, over its pool's.
    pub slow_start: Option<Duration>,
    pub pos: Pos,
    /// Its labels: a swarm node's Spec.Labels, or `labels = { ... }` in
    /// lb.toml for a static server; a pool's `prefer` reads them.
    pub labels: std::collections::BTreeMap<String, String>,
    pub source: ServerSource,
}

/// A pool's `prefer = { label = "zone", value = "dc1" }`: servers carrying
/// that label with that value take every client while one is eligible;
/// the others wait as backups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefer {
    pub label: String,
    pub value: String,
}

impl Prefer {
    pub fn matches(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        labels.get(&self.label) == Some(&self.value)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: Arc<str>,
    pub settings: Settings,
    /// Where each `[defaults]` key's value came from, by key name.
    pub origins: std::collections::BTreeMap<&'static str, Origin>,
    pub servers: Vec<ServerConfig>,
    /// `nodes`: the swarm's nodes it takes besides `servers`.
    pub nodes: Option<NodeSelector>,
    /// `None`: no active check (`kind = "none"` or no `[pool.NAME.health]`).
    pub health: Option<HealthConfig>,
    pub prefer: Option<Prefer>,
}

/// Where a pool's setting came from, for `check --print`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// ucp-lb's default.
    Default,
    /// The `[defaults]` table.
    Defaults,
    /// The pool's own table.
    Pool,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Default => "default",
            Origin::Defaults => "[defaults]",
            Origin::Pool => "pool",
        }
    }
}

/// How long a routed listener waits for a client's complete ClientHello by
/// default: a TLS client sends it at once; nginx's `preread_timeout` is
/// 30 s, which lets a silent client hold a descriptor that long.
pub const PREREAD_TIMEOUT: Duration = Duration::from_secs(5);

/// How many clients a routed listener lets wait for their ClientHello by
/// default. Each holds the bytes it sent (at most 16 KiB), so this bounds
/// their memory at about 24 MiB per listener. A real client waits about a
/// round trip, so even a thousand new TLS clients a second keep a few
/// dozen waiting: 1,024 leaves room for slow links and bursts.
pub const MAX_PENDING_HELLOS: u32 = 1024;

/// How long a PROXY protocol listener waits for a client's whole header
/// by default. An outer balancer sends it at once, before or with the
/// client's first bytes (HAProxy in the connect's first segment, an AWS
/// NLB with the first data); nginx's `proxy_protocol_timeout` is 30 s,
/// which lets a silent client hold a descriptor that long, so the same
/// 5 s as `preread_timeout`.
pub const PROXY_PROTOCOL_TIMEOUT: Duration = Duration::from_secs(5);

/// A PROXY header's bytes at most by default: a v2 header with IPv6
/// addresses is 52 bytes, and the TLVs balancers add (an AWS NLB's VPC
/// endpoint id, HAProxy's SSL and unique id) a few hundred more; 4 KiB
/// leaves room and bounds what each waiting client holds.
pub const PROXY_PROTOCOL_MAX_HEADER: usize = 4096;

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub bind: SocketAddr,
    /// Where clients go; with `routes`, those no route takes (`None`:
    /// closed).
    pub pool: Option<Arc<str>>,
    /// TLS server name routes, in the file's order (empty: the listener
    /// reads nothing before connecting).
    pub routes: Vec<(Pattern, Arc<str>)>,
    /// How long a routed listener waits for a complete ClientHello.
    pub preread_timeout: Duration,
    /// How many of its clients a routed listener lets wait for their
    /// ClientHello at once (at least 1).
    pub max_pending_hellos: u32,
    /// 0: no limit.
    pub max_connections: u32,
    /// Where and how its finished connections are logged; `None`: not.
    pub access_log: Option<Arc<AccessLog>>,
    /// `access`: allow and deny rules, in order (empty: everyone).
    pub access: Vec<Rule>,
    /// `max_connections_per_client` and `max_connection_rate_per_client`:
    /// its own, else those of the `[limit.NAME]` it names.
    pub per_client: Limits,
    /// `limit = "NAME"`: its clients are counted in that limit's table,
    /// shared with every listener naming it (as one nginx
    /// `limit_conn_zone` several servers name, each with its own number);
    /// `None`: in its own.
    pub limit: Option<Arc<str>>,
    /// TCP keepalive of its clients' sockets; `None`: off.
    pub client_keepalive: Option<Keepalive>,
    /// `proxy_protocol = true`: how its clients' PROXY header is read and
    /// whose is believed; `None`: no header expected.
    pub proxy_protocol: Option<ProxyProtocol>,
}

/// An access log: one line per finished connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLog {
    pub to: LogTo,
    pub format: LogFormat,
    /// The key that set `to` (`listener[N].access_log`, or
    /// `defaults.access_log` when inherited) and where, for a message
    /// about a file that cannot be written.
    pub key: String,
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LogTo {
    Stdout,
    Stderr,
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Fields in a fixed order, space-separated, then the end in words.
    Text,
    /// nginx's `log_format` style: `$remote_addr [$time_local] ...`.
    Template(String),
}

/// The variables an access log template may use: nginx's names where
/// nginx has the field, and ucp-lb's own.
pub const LOG_VARIABLES: &[&str] = &[
    "remote_addr",
    "remote_port",
    "server_addr",
    "server_port",
    "realip_remote_addr",
    "realip_remote_port",
    "proxy_protocol_addr",
    "proxy_protocol_port",
    "proxy_protocol_server_addr",
    "proxy_protocol_server_port",
    "upstream_addr",
    "bytes_sent",
    "bytes_received",
    "upstream_bytes_sent",
    "upstream_bytes_received",
    "upstream_connect_time",
    "session_time",
    "status",
    "protocol",
    "time_local",
    "time_iso8601",
    "msec",
    "pool",
    "end",
    "end_words",
];

/// A piece of an access log template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplatePart<'a> {
    Text(&'a str),
    /// `$name` or `${name}`.
    Var(&'a str),
}

/// A template as its text and its variables, in order.
pub fn template_parts(t: &str) -> Vec<TemplatePart<'_>> {
    let mut out = Vec::new();
    let mut rest = t;
    while let Some(i) = rest.find('$') {
        if i > 0 {
            out.push(TemplatePart::Text(&rest[..i]));
        }
        rest = &rest[i + 1..];
        let (name, after) = match rest.strip_prefix('{') {
            Some(r) => r.split_once('}').unwrap_or((r, "")),
            None => {
                let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
                (&rest[..end], &rest[end..])
            }
        };
        out.push(TemplatePart::Var(name));
        rest = after;
    }
    if !rest.is_empty() {
        out.push(TemplatePart::Text(rest));
    }
    out
}

/// The variables of a template, in order.
pub fn template_variables(t: &str) -> Vec<&str> {
    template_parts(t)
        .into_iter()
        .filter_map(|p| match p {
            TemplatePart::Var(v) => Some(v),
            TemplatePart::Text(_) => None,
        })
        .collect()
}

/// `[admin]`: where /metrics, /status, /healthz and the status page listen.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Enables the POST endpoints; `None`: they answer 403.
    pub token_file: Option<PathBuf>,
    pub token_file_pos: Pos,
    /// GET /status, / and /metrics need the token too (/healthz never).
    pub status_needs_token: bool,
    /// The Unix socket a new process takes the listeners and connections
    /// over from (`ucp-lb --upgrade`).
    pub control_socket: ControlSocket,
}

/// Where the control socket is, and how firmly it was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlSocket {
    /// Not set: [`DEFAULT_CONTROL_SOCKET`]. A start that cannot make it (no
    /// right to create its directory, another instance holding it) logs a
    /// warning and runs without one: it cannot be upgraded in place.
    Default(PathBuf),
    /// Set in the file or by `UCP_LB_CONTROL_SOCKET`: a start that cannot
    /// make it fails.
    Path(PathBuf),
    /// `control_socket = ""`: none.
    Off,
}

/// Where the control socket is when nothing says otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/ucp-lb/control.sock";

impl ControlSocket {
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            ControlSocket::Default(p) | ControlSocket::Path(p) => Some(p),
            ControlSocket::Off => None,
        }
    }

    /// What the text of the key (or of the environment variable) means:
    /// an absolute path that fits a Unix socket address, or "" for none.
    pub fn parse(text: &str) -> Result<ControlSocket, String> {
        if text.is_empty() {
            return Ok(ControlSocket::Off);
        }
        let p = PathBuf::from(text);
        if !p.is_absolute() {
            return Err(format!("expected an absolute path (or \"\" for none), found \"{text}\""));
        }
        // sun_path holds 108 bytes with the terminating NUL; the socket is
        // made beside it under a name 16 bytes longer, then renamed.
        if text.len() > 90 {
            return Err(format!("a Unix socket path must be at most 90 bytes here, found {}", text.len()));
        }
        if text.ends_with('/') {
            return Err(format!("expected the socket's file name, found the directory \"{text}\""));
        }
        Ok(ControlSocket::Path(p))
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9900)),
            token_file: None,
            token_file_pos: Pos::default(),
            status_needs_token: false,
            control_socket: ControlSocket::Default(PathBuf::from(DEFAULT_CONTROL_SOCKET)),
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
    /// After SIGTERM, how long /healthz already says "stopping" while the
    /// listeners still accept (so keepalived moves the VIP first); zero:
    /// stop accepting at once.
    pub stop_grace: Duration,
    pub listeners: Vec<ListenerConfig>,
    /// In the file's order.
    pub pools: Vec<PoolConfig>,
    /// `[limit.NAME]`s, by name: the per-client limits listeners naming
    /// one take (a listener's own `max_connections_per_client` beats its).
    pub limits: Vec<(Arc<str>, Limits)>,
    pub cluster: ClusterConfig,
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

/// Reads and validates the config file at `path`: a regular file of at
/// most 1 MiB that nobody but its owner (root or ucp-lb's user) may write
/// (see `files.rs`).
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let source = path.display().to_string();
    let text = crate::files::read(path, "the config file", crate::files::CONFIG).map_err(|message| {
        ConfigErrors(vec![ConfigError { source: source.clone(), pos: None, key: String::new(), message }])
    })?;
    let mut config = parse(&text, &source)?;
    config.path = Some(path.to_path_buf());
    // Relative file names are relative to the config's directory (as nginx
    // takes them relative to its prefix), not to wherever ucp-lb was
    // started; messages about them name the path that was tried.
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let beside = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = dir.join(&*p);
        }
    };
    if let Some(t) = config.admin.token_file.as_mut() {
        beside(t);
    }
    if let Some(b) = config.cluster.bundle.as_mut() {
        beside(b);
    }
    for pool in &mut config.pools {
        if let Some(h) = pool.health.as_mut() {
            h.ca_file.iter_mut().for_each(&beside);
            if let Some(c) = h.client_cert.as_mut() {
                beside(&mut c.cert);
                beside(&mut c.key);
            }
        }
    }
    for l in &mut config.listeners {
        if let Some(log) = l.access_log.as_mut()
            && let LogTo::File(f) = &mut Arc::make_mut(log).to
        {
            beside(f);
        }
    }
    Ok(config)
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
            message: match (e.message().trim(), e.span()) {
                ("duplicate key", Some(s)) => format!("invalid TOML: {}", values::duplicate_key(text, s.start)),
                (m, _) => format!("invalid TOML: {m}"),
            },
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
