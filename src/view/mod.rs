//! The one status view: what every listener, pool and server is now,
//! computed at read time from the snapshot and the state cells (checks,
//! passive counters, admin overrides, connection counts).
//!
//! `/status` (JSON), the status page and `/metrics` are three renderings of
//! [`View`]; none of them computes a fact of its own, so they cannot drift
//! apart. What reacts to changes of the same facts is the watcher
//! (`watch.rs`).

pub mod cluster;
pub mod page;
pub mod prom;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use serde::Serialize;
use tokio::time::Instant;

use crate::config::{AdminState, AllDown};
use crate::events::history::{Event, Sample};
use crate::fail::FailReason;
use crate::state::pool::Pool;
use crate::state::snapshot::{Owners, Snapshot};
use crate::state::{ServerState, States};
use crate::traffic::listener::ListenerState;

/// The outcome of the last reload and the running totals (carried to the
/// process that takes over, so an upgrade does not reset them).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct ReloadStatus {
    /// Generation of the running snapshot.
    pub generation: u64,
    pub successes: u64,
    pub failures: u64,
    /// Unix seconds of the last attempt, if any.
    pub last_attempt: Option<u64>,
    pub last_ok: Option<bool>,
    /// The error of the last attempt when it failed (file:line:col: key: ...).
    pub last_error: Option<String>,
}

/// Where the process is in its life.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phase {
    /// Listeners accept (after the first probes).
    pub ready: bool,
    /// A stop has begun: /healthz says so, listeners may still accept
    /// (the stop grace).
    pub stopping: bool,
    /// Shutdown has begun.
    pub shutting_down: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct View {
    pub version: &'static str,
    /// A stop has begun (the stop grace, then the shutdown).
    pub stopping: bool,
    /// Commit, build date, compiler and target of this binary.
    pub build: crate::build_info::BuildInfo,
    pub ready: bool,
    pub shutting_down: bool,
    pub config_source: String,
    pub generation: u64,
    pub reload: ReloadStatus,
    pub listeners: Vec<ListenerStatus>,
    pub pools: Vec<PoolStatus>,
    /// The last state changes of the whole balancer, newest first.
    pub events: Vec<Event>,
    /// Access log lines written and not written, in this process, and
    /// each destination's state.
    pub access_log: AccessLogStatus,
    /// This process: its start, whom it took over from, the upgrade's
    /// connection moves.
    pub process: ProcessStatus,
    /// The swarm's node list (`[cluster]`); `None` without one.
    pub cluster: Option<cluster::ClusterStatus>,
}

/// This process and its upgrades (`ucp-lb --upgrade`).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcessStatus {
    pub pid: u32,
    /// Unix seconds.
    pub started_at: u64,
    /// The process it took over from, if it did.
    pub took_over_from: Option<u32>,
    /// That process is still moving its connections here.
    pub previous_draining: bool,
    /// Connections it still holds, as it last said.
    pub previous_holds: u64,
    /// Connections moved here from it.
    pub moved_in: u64,
    /// Connections it could not move and cut at its `shutdown_timeout`
    /// (a client that stopped reading mid-transfer, say).
    pub previous_cut: u64,
    /// While this process hands over to a new one: that one's pid (until
    /// the new one has confirmed the whole hand-over, this one keeps its
    /// sockets and can go back).
    pub handing_over_to: Option<u32>,
    /// Hand-overs that broke off after the new process said `go` (it died,
    /// stalled or crashed), after which this process took its listeners
    /// and its connections back.
    pub upgrades_resumed: u64,
    /// Unix seconds of the last of them.
    pub last_resumed_at: Option<u64>,
    /// Connections that had moved to a process that then died (or were in
    /// flight to it), at those hand-overs: lost.
    pub lost_in_resumed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AccessLogStatus {
    pub written: u64,
    /// Not written, whatever the reason (the sum of each destination's
    /// `dropped_queue_full` and `lost`).
    pub dropped: u64,
    /// Each file (or stdout, stderr) lines were sent to, in the order of
    /// first use.
    pub destinations: Vec<AccessLogDestination>,
}

/// One access-log destination: is it being written, and if not, why.
#[derive(Debug, Clone, Serialize)]
pub struct AccessLogDestination {
    /// The file's path as opened, or "stdout", "stderr".
    pub log: String,
    /// "ok"; "failing" (cannot be opened or written: `reason`,
    /// `last_error`); "stalled" (blocked in one write for over a second:
    /// `blocked_s`); "closed" (no longer named by the config: only lines
    /// of connections accepted before the reload that dropped it come here).
    pub state: &'static str,
    /// Named by the running config.
    pub configured: bool,
    pub written: u64,
    /// Dropped because its queue was full (its writer behind or blocked).
    pub dropped_queue_full: u64,
    /// Lost because it could not be opened or written, by reason
    /// (`missing_directory`, `not_regular_file`, `permission_denied`,
    /// `read_only`, `no_space`, `io_error`).
    pub lost: std::collections::BTreeMap<&'static str, u64>,
    /// Why it is failing now.
    pub reason: Option<&'static str>,
    pub last_error: Option<String>,
    /// Unix seconds: since when it fails.
    pub failing_since: Option<u64>,
    /// How long its writer has been in one write or open, when it is.
    pub blocked_s: Option<f64>,
}

impl AccessLogStatus {
    fn of(w: &crate::wire::access_log::Writer) -> AccessLogStatus {
        let destinations = w
            .destinations()
            .into_iter()
            .map(|d| {
                let state = if d.failure.is_some() {
                    "failing"
                } else if d.stalled {
                    "stalled"
                } else if !d.configured {
                    "closed"
                } else {
                    "ok"
                };
                AccessLogDestination {
                    log: d.name,
                    state,
                    configured: d.configured,
                    written: d.written,
                    dropped_queue_full: d.queue_full,
                    lost: d.failed.iter().map(|(r, n)| (r.as_str(), *n)).collect(),
                    reason: d.failure.as_ref().map(|f| f.reason.as_str()),
                    last_error: d.failure.as_ref().map(|f| f.message.clone()),
                    failing_since: d.failure.as_ref().map(|f| f.since),
                    blocked_s: d.blocked_for.map(|b| (b.as_secs_f64() * 10.0).round() / 10.0),
                }
            })
            .collect();
        AccessLogStatus { written: w.written(), dropped: w.dropped(), destinations }
    }

    /// Destinations the config names that are not being written now.
    pub fn failing(&self) -> impl Iterator<Item = &AccessLogDestination> {
        self.destinations.iter().filter(|d| d.configured && d.state != "ok")
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ListenerStatus {
    /// Closed by a reload; shown while connections it accepted are open.
    pub removed: bool,
    pub bind: SocketAddr,
    pub local: SocketAddr,
    pub pool: Option<String>,
    pub active: u64,
    pub accepted: u64,
    pub rejected_max_connections: u64,
    pub rejected_fd_limit: u64,
    pub rejected_no_pool: u64,
    /// Refused by its `access` rules.
    pub rejected_access: u64,
    /// Refused by `max_connections_per_client`.
    pub rejected_per_client: u64,
    /// Refused by `max_connection_rate_per_client`.
    pub rejected_client_rate: u64,
    /// Client addresses it keeps count of now (those with connections
    /// open, or whose rate bucket is refilling); 0 without per-client
    /// limits.
    pub clients: usize,
    /// Its `access` rules, in order, as they apply now.
    pub access: Vec<String>,
    pub max_connections_per_client: u32,
    pub max_connection_rate_per_client: u32,
    /// Routed by TLS server name: each route (and `""`, the pool for the
    /// rest) with the clients it sent on.
    pub routes: Vec<RouteStatus>,
    /// Routed listeners: clients closed without a ClientHello, by why
    /// (`hello_timeout`, `hello_too_large`, `hello_closed`), with no route
    /// and no pool for the rest, and clients that did not speak TLS.
    pub rejected_hello_timeout: u64,
    pub rejected_hello_too_large: u64,
    pub rejected_hello_closed: u64,
    pub rejected_no_route: u64,
    pub not_tls: u64,
    /// Routed listeners: clients waiting for their ClientHello now, at
    /// most `max_pending_hellos`; those closed at once beyond it.
    pub pending_hellos: u64,
    pub max_pending_hellos: u32,
    pub rejected_pending_hellos: u64,
    /// PROXY protocol: what it expects now and what it counted; `None`
    /// for a listener that never read a header.
    pub proxy_protocol: Option<ProxyProtocolStatus>,
}

/// A PROXY protocol listener (`proxy_protocol = true`, now or before a
/// reload): its trusted sources and counts.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyProtocolStatus {
    /// A header is required now (false: a reload turned it off; counts kept).
    pub on: bool,
    /// Sources whose header's address is believed.
    pub real_ip_from: Vec<String>,
    pub timeout_ms: u64,
    pub max_header: usize,
    /// Headers read, by version and command.
    pub headers: Vec<HeaderCount>,
    /// Clients closed without a valid header, by reason (`missing`,
    /// `broken`, `too_large`, `timeout`, `closed`).
    pub refused: std::collections::BTreeMap<&'static str, u64>,
    /// Headers from a source not trusted: read, their address not believed.
    pub untrusted: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HeaderCount {
    pub version: &'static str,
    pub command: &'static str,
    pub count: u64,
}

impl ProxyProtocolStatus {
    fn of(l: &crate::traffic::listener::ListenerState, cfg: Option<&crate::config::ListenerConfig>) -> Option<Self> {
        let t = l.proxy_protocol.tally();
        let pp = cfg.and_then(|c| c.proxy_protocol.as_ref());
        let counted = t.headers.iter().flatten().any(|&n| n > 0) || t.total_refused() > 0;
        if pp.is_none() && !counted {
            return None;
        }
        Some(ProxyProtocolStatus {
            on: pp.is_some(),
            real_ip_from: pp.map(|p| p.real_ip_from.iter().map(ToString::to_string).collect()).unwrap_or_default(),
            timeout_ms: pp.map_or(0, |p| p.timeout.as_millis() as u64),
            max_header: pp.map_or(0, |p| p.max_header),
            headers: t
                .headers()
                .map(|(v, c, count)| HeaderCount { version: v.as_str(), command: c.as_str(), count })
                .collect(),
            refused: t.refused().map(|(f, n)| (f.as_str(), n)).collect(),
            untrusted: t.untrusted,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteStatus {
    /// The server name pattern; `""` for clients no route takes.
    pub name: String,
    pub pool: Option<String>,
    pub connections: u64,
    /// Of those, the clients its pool could not take (no server eligible,
    /// or every connect failed).
    pub refused: u64,
}

/// A routed listener's routes as configured now, then any it counted
/// that a reload removed, with the clients each sent on.
fn routes(
    l: &crate::traffic::listener::ListenerState,
    cfg: Option<&crate::config::ListenerConfig>,
) -> Vec<RouteStatus> {
    let counted = l.routed.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let Some(cfg) = cfg.filter(|c| !c.routes.is_empty()) else { return Vec::new() };
    let mut out: Vec<RouteStatus> = cfg
        .routes
        .iter()
        .map(|(p, pool)| (p.to_string(), Some(pool.to_string())))
        .chain(std::iter::once((String::new(), cfg.pool.as_ref().map(|p| p.to_string()))))
        .map(|(name, pool)| {
            let c = counted.get(&name).copied().unwrap_or_default();
            RouteStatus { name, pool, connections: c.connections, refused: c.refused }
        })
        .collect();
    for (name, c) in counted {
        if !out.iter().any(|r| r.name == name) {
            out.push(RouteStatus { name, pool: None, connections: c.connections, refused: c.refused });
        }
    }
    out
}

impl ListenerStatus {
    /// Clients closed at once, by reason, as `/metrics` labels them.
    pub fn refusals(&self) -> [(&'static str, u64); 11] {
        [
            ("max_pending_hellos", self.rejected_pending_hellos),
            ("hello_timeout", self.rejected_hello_timeout),
            ("hello_too_large", self.rejected_hello_too_large),
            ("hello_closed", self.rejected_hello_closed),
            ("no_route", self.rejected_no_route),
            ("denied", self.rejected_access),
            ("max_connections_per_client", self.rejected_per_client),
            ("max_connection_rate_per_client", self.rejected_client_rate),
            ("max_connections", self.rejected_max_connections),
            ("fd_limit", self.rejected_fd_limit),
            ("no_pool", self.rejected_no_pool),
        ]
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolStatus {
    pub name: String,
    /// No longer configured; shown while connections to its servers are open.
    pub removed: bool,
    /// No server is available (up, passing its check, not ejected).
    pub all_down: bool,
    /// `all_down` and the pool fails open over the servers not set down.
    pub fail_open: bool,
    /// `all_down` and the pool closes new clients.
    pub rejecting: bool,
    /// Servers that would take a new client now.
    pub eligible: usize,
    /// Open and new connections over the last 15 minutes, oldest first.
    pub traffic: Vec<Sample>,
    pub fail_open_picks: u64,
    pub no_server: u64,
    /// Servers it takes from the swarm's node list.
    pub cluster_nodes: usize,
    /// Its `prefer`, as `label=value`: the servers with it take every
    /// client while one is eligible.
    pub prefer: Option<String>,
    pub servers: Vec<ServerStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerStatus {
    pub name: String,
    /// No longer in its pool; shown while connections to it are open.
    pub removed: bool,
    /// `name (addr)`, or the address when the name is one: how logs and
    /// metrics name the server.
    pub label: String,
    pub addr: SocketAddr,
    /// Where it came from: "static" (lb.toml) or "cluster" (the swarm).
    pub source: &'static str,
    pub state: &'static str,
    pub weight: u32,
    pub backup: bool,
    /// Under its pool's `prefer`: whether it has the label (one that has
    /// not takes clients only when no preferred server is eligible);
    /// `None` when the pool prefers none.
    pub preferred: Option<bool>,
    pub labels: BTreeMap<String, String>,
    pub eligible: bool,
    pub ejected: bool,
    pub fails: u32,
    pub active: u32,
    pub connections: u64,
    pub connect_failures: u64,
    /// Failed connects by reason (`refused`, `timeout`, ...).
    pub connect_failures_by_reason: BTreeMap<&'static str, u64>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub passive_ejections: u64,
    /// When an ejection, re-admission or override last changed it, Unix
    /// seconds.
    pub changed_at: Option<u64>,
    /// While it warms up after coming back (slow start): how far along.
    pub warming: Option<Warming>,
    /// Its open sessions are being closed (it went down, and its pool says
    /// `on_server_down = "close"`).
    pub closing_sessions: bool,
    /// Sessions closed because it went down.
    pub sessions_closed: u64,
    /// Its state in words: "in", "out: status 500 for 42 s", "draining, 3
    /// open", ...
    pub phrase: String,
    /// An admin's override, which wins over lb.toml and the swarm:
    /// "enable", "drain" or "down"; `None`: it follows them.
    pub admin_override: Option<&'static str>,
    /// For a node of the swarm, what the swarm says of it ("active",
    /// "drain" or "down"), whatever an override makes of it; `None` for a
    /// static server.
    pub swarm: Option<&'static str>,
    /// For a node down in the swarm: its Status.State, and Status.Message.
    pub swarm_reason: Option<String>,
    /// `None` when the pool has no active check.
    pub check: Option<CheckStatus>,
}

/// A server in its slow start.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Warming {
    /// The share of its weight it has now, per cent (10 to 99).
    pub percent: u32,
    /// Its weight now (configured weight times the share).
    pub weight_now: f64,
    /// Its `max_conns` now (0: no limit).
    pub max_conns_now: u32,
    /// Milliseconds until it has all of its weight.
    pub left_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckStatus {
    pub target: String,
    /// `up`, `down` or `unknown` (no result yet).
    pub state: &'static str,
    /// Why the last probe failed; `None` after a success.
    pub reason: Option<String>,
    pub probes: u64,
    /// Times the check took the server out.
    pub downs: u64,
    /// When its state last changed, Unix seconds.
    pub since: Option<u64>,
    /// The server certificate's notAfter, Unix seconds.
    pub cert_not_after: Option<i64>,
}

/// Reasons a connect is counted under, in the order they are shown.
pub const FAIL_REASONS: [FailReason; 6] = [
    FailReason::Refused,
    FailReason::Timeout,
    FailReason::Reset,
    FailReason::Unreachable,
    FailReason::Local,
    FailReason::Other,
];

/// The whole view now: the snapshot's listeners, pools and servers, and
/// those a reload removed while connections to them are open (marked
/// `removed`), so every open connection is counted somewhere.
pub fn view(
    snap: &Snapshot,
    own: &Owners,
    listeners: &[Arc<ListenerState>],
    draining: &[Arc<ListenerState>],
    reload: ReloadStatus,
    phase: Phase,
) -> View {
    let now = Instant::now();
    let mut pools = pools(snap, now);
    add_removed(&mut pools, snap, &own.states);
    let wall = crate::events::history::now() as u64;
    let nodes = own.cluster.nodes();
    for p in &mut pools {
        p.traffic = own.history.samples(&p.name);
        for s in &mut p.servers {
            if s.swarm == Some("down") {
                let n = nodes.as_deref().and_then(|n| n.iter().find(|n| n.name == s.name));
                s.swarm_reason = n.map(|n| {
                    if n.message.is_empty() {
                        n.state.as_str().to_owned()
                    } else {
                        format!("{}, {}", n.state.as_str(), n.message)
                    }
                });
            }
            s.phrase = phrase(s, wall);
        }
    }
    View {
        version: env!("CARGO_PKG_VERSION"),
        build: crate::build_info::BUILD,
        stopping: phase.stopping,
        ready: phase.ready,
        shutting_down: phase.shutting_down,
        config_source: snap.config.source.clone(),
        generation: snap.generation,
        reload,
        listeners: listeners
            .iter()
            .map(|l| (l, false))
            .chain(draining.iter().map(|l| (l, true)))
            .map(|(l, removed)| {
                let cfg = if removed { None } else { snap.listener(l.bind, l.nth) };
                let per_client = cfg.map(|c| c.per_client).unwrap_or_default();
                ListenerStatus {
                    removed,
                    bind: l.bind,
                    local: l.local,
                    pool: cfg.and_then(|c| c.pool.as_ref()).map(|p| p.to_string()),
                    active: l.active.load(Relaxed),
                    accepted: l.accepted.load(Relaxed),
                    rejected_max_connections: l.rejected_max_connections.load(Relaxed),
                    rejected_fd_limit: l.rejected_fd_limit.load(Relaxed),
                    rejected_no_pool: l.rejected_no_pool.load(Relaxed),
                    rejected_access: l.rejected_access.load(Relaxed),
                    rejected_per_client: l.rejected_per_client.load(Relaxed),
                    rejected_client_rate: l.rejected_client_rate.load(Relaxed),
                    clients: l.clients.len(per_client.rate, std::time::Instant::now()),
                    access: cfg.map(|c| c.access.iter().map(ToString::to_string).collect()).unwrap_or_default(),
                    max_connections_per_client: per_client.open,
                    max_connection_rate_per_client: per_client.rate,
                    routes: routes(l, cfg),
                    rejected_hello_timeout: l.rejected_hello_timeout.load(Relaxed),
                    rejected_hello_too_large: l.rejected_hello_too_large.load(Relaxed),
                    rejected_hello_closed: l.rejected_hello_closed.load(Relaxed),
                    rejected_no_route: l.rejected_no_route.load(Relaxed),
                    not_tls: l.not_tls.load(Relaxed),
                    pending_hellos: l.pending_hellos.load(Relaxed),
                    max_pending_hellos: cfg.filter(|c| !c.routes.is_empty()).map_or(0, |c| c.max_pending_hellos),
                    rejected_pending_hellos: l.rejected_pending_hellos.load(Relaxed),
                    proxy_protocol: ProxyProtocolStatus::of(l, cfg),
                }
            })
            .collect(),
        pools,
        events: named(own.history.events(), snap),
        access_log: AccessLogStatus::of(&own.conns.access_log),
        process: ProcessStatus { pid: std::process::id(), ..Default::default() },
        cluster: None,
    }
}

/// Events of checks name their target (a check is shared by the pools that
/// probe the same server the same way): name the servers behind it as the
/// page does, "manager-02 (ucp, ucp_kube)".
fn named(mut events: Vec<Event>, snap: &Snapshot) -> Vec<Event> {
    for e in events.iter_mut().filter(|e| e.pool.is_none()) {
        let Some(target) = e.server.as_deref() else { continue };
        let mut who: Vec<(String, String)> = Vec::new();
        for p in &snap.pools {
            for s in p.servers.iter().filter(|s| s.check.as_ref().is_some_and(|c| c.label == target)) {
                who.push((p.name.to_string(), s.label()));
            }
        }
        if let Some((_, label)) = who.first() {
            let pools: Vec<&str> = who.iter().map(|(p, _)| p.as_str()).collect();
            e.pool = Some(pools.join(", "));
            e.server = Some(label.clone());
        }
    }
    events
}

/// A duration as people say it: "42 s", "3 min", "2 h 5 min", "4 d".
fn human(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        3600..86400 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} d", secs / 86400),
    }
}

/// A server's state in one phrase, with how long it has been so where that
/// is known: what the page shows first.
fn phrase(s: &ServerStatus, now: u64) -> String {
    let lasting =
        |since: Option<u64>| since.map(|t| format!(" for {}", human(now.saturating_sub(t)))).unwrap_or_default();
    if s.removed {
        return format!("removed by a reload, {} open", s.active);
    }
    // What the swarm did is said as such; "set" is an admin's or lb.toml's.
    let by_swarm = s.swarm.is_some() && s.admin_override.is_none();
    match (s.state, by_swarm) {
        ("drain", false) => return format!("draining, {} open", s.active),
        ("drain", true) => return format!("drained in the swarm, {} open", s.active),
        ("down", false) => return format!("out: set down{}", lasting(s.changed_at)),
        ("down", true) => {
            let why = s.swarm_reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
            return format!("out: down in the swarm{why}{}", lasting(s.changed_at));
        }
        _ => {}
    }
    if let Some(c) = &s.check {
        match c.state {
            "down" => return format!("out: {}{}", c.reason.as_deref().unwrap_or("check failed"), lasting(c.since)),
            "unknown" => return "waiting for its first check".into(),
            _ => {}
        }
    }
    if s.ejected {
        return format!("out: ejected after {} failed connects{}", s.fails, lasting(s.changed_at));
    }
    if !s.eligible {
        return format!("full: {} open (max_conns)", s.active);
    }
    if let Some(w) = &s.warming {
        return format!("warming, {} %", w.percent);
    }
    match (s.backup, s.preferred) {
        (true, _) => "in (backup)".into(),
        (false, Some(true)) => "in (preferred)".into(),
        (false, Some(false)) => "in (backup: not preferred)".into(),
        (false, None) => "in".into(),
    }
}

/// Adds the servers no pool of `snap` lists that still have connections
/// open, under their pool (a pool no longer configured is added, marked).
fn add_removed(pools: &mut Vec<PoolStatus>, snap: &Snapshot, states: &States) {
    let listed = |pool: &str, name: &str, addr: SocketAddr, nth: u32| {
        snap.pool(pool).is_some_and(|p| p.servers.iter().any(|s| &*s.name == name && s.addr == addr && s.nth == nth))
    };
    for r in states.removed(listed) {
        let server = ServerStatus { removed: true, ..counted(&r.name, r.addr, &r.state) };
        match pools.iter_mut().find(|p| p.name == *r.pool) {
            Some(p) => p.servers.push(server),
            None => pools.push(PoolStatus {
                name: r.pool.to_string(),
                removed: true,
                all_down: false,
                fail_open: false,
                rejecting: false,
                eligible: 0,
                traffic: Vec::new(),
                fail_open_picks: 0,
                no_server: 0,
                cluster_nodes: 0,
                prefer: None,
                servers: vec![server],
            }),
        }
    }
}

/// Every pool of `snap` at `now`.
pub fn pools(snap: &Snapshot, now: Instant) -> Vec<PoolStatus> {
    let prefer = |name: &str| snap.config.pool(name)?.prefer.as_ref().map(|p| format!("{}={}", p.label, p.value));
    snap.pools.iter().map(|p| PoolStatus { prefer: prefer(&p.name), ..pool(p, now) }).collect()
}

fn pool(p: &Pool, now: Instant) -> PoolStatus {
    let servers: Vec<ServerStatus> = (0..p.servers.len()).map(|i| server(p, i, now)).collect();
    let all_down = p.all_down(now);
    PoolStatus {
        name: p.name.to_string(),
        removed: false,
        all_down,
        fail_open: all_down && p.settings.all_down == AllDown::FailOpen,
        rejecting: all_down && p.settings.all_down == AllDown::Reject,
        eligible: servers.iter().filter(|s| s.eligible).count(),
        traffic: Vec::new(),
        fail_open_picks: p.state.fail_open_picks.load(Relaxed),
        no_server: p.state.no_server.load(Relaxed),
        cluster_nodes: servers.iter().filter(|s| s.source == "cluster").count(),
        prefer: None,
        servers,
    }
}

fn server(p: &Pool, i: usize, now: Instant) -> ServerStatus {
    let s = &p.servers[i];
    let warming = s.warmth(now).map(|w| Warming {
        percent: w / 10,
        weight_now: f64::from(s.weight) * f64::from(w) / 1000.0,
        max_conns_now: s.max_conns_now(now),
        left_ms: s.back_at().map_or(0, |b| (b + s.slow_start).saturating_duration_since(now).as_millis() as u64),
    });
    ServerStatus {
        warming,
        state: s.admin_state().as_str(),
        admin_override: s.admin_override().map(|o| match o {
            AdminState::Up => "enable",
            AdminState::Drain => "drain",
            AdminState::Down => "down",
        }),
        swarm: (s.source == crate::config::ServerSource::Cluster).then_some(match s.config_state {
            AdminState::Up => "active",
            AdminState::Drain => "drain",
            AdminState::Down => "down",
        }),
        weight: s.weight,
        backup: s.backup,
        preferred: s.preferred,
        labels: (*s.labels).clone(),
        eligible: p.eligible(i, now),
        ejected: p.ejected(i, now),
        check: s.check.as_ref().map(|c| CheckStatus {
            target: c.label.clone(),
            state: c.state().as_str(),
            reason: c.reason(),
            probes: c.probes.load(Relaxed),
            downs: c.downs.load(Relaxed),
            since: c.since(),
            cert_not_after: Some(c.cert_not_after.load(Relaxed)).filter(|&t| t != 0),
        }),
        ..counted(s.shown(), s.addr, &s.state)
    }
}

/// What a server's own state says (its counters), for a server in a pool
/// and for one a reload removed alike; what depends on the pool is left as
/// for a removed server.
fn counted(name: &str, addr: SocketAddr, st: &ServerState) -> ServerStatus {
    ServerStatus {
        name: name.to_owned(),
        removed: false,
        label: crate::state::pool::server_label(name, addr),
        addr,
        source: if st.from_swarm.load(Relaxed) { "cluster" } else { "static" },
        state: "removed",
        weight: 0,
        backup: false,
        preferred: None,
        labels: BTreeMap::new(),
        eligible: false,
        ejected: false,
        fails: st.passive().fails(),
        active: st.active.load(Relaxed),
        connections: st.connections.load(Relaxed),
        connect_failures: st.connect_failures.load(Relaxed),
        connect_failures_by_reason: FAIL_REASONS.iter().map(|&r| (r.as_str(), st.failures_by(r))).collect(),
        bytes_received: st.bytes_received.load(Relaxed),
        bytes_sent: st.bytes_sent.load(Relaxed),
        passive_ejections: st.passive_ejections.load(Relaxed),
        changed_at: Some(st.changed_at.load(Relaxed)).filter(|&t| t != 0),
        warming: None,
        closing_sessions: st.closing.standing() && st.active.load(Relaxed) > 0,
        sessions_closed: st.closing.closed.load(Relaxed),
        phrase: String::new(),
        admin_override: None,
        swarm: None,
        swarm_reason: None,
        check: None,
    }
}
