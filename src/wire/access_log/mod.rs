//! The access log: one line per finished connection, with why it ended.
//!
//! Off the byte path: a connection hands its [`Record`] to a bounded
//! channel (never blocking; a full channel counts the line as dropped).
//! The writer (`writer.rs`) sends each line on to the thread of its
//! destination (`dest.rs`: one per file, stdout or stderr), which formats
//! and writes it: a destination that blocks (a full pipe, a hung mount)
//! stalls only its own thread, whose lines are dropped and counted, while
//! the other destinations and every connection go on. Files are opened
//! like lb.toml (`files.rs`: without blocking, regular files only); one
//! that cannot be opened or written is said once in the log, shown in
//! `/status` and counted by reason, and tried again on SIGUSR1, at a
//! reload and at most once a second as lines come. `SIGUSR1` reopens every
//! file (logrotate's convention, as nginx); a reload closes the files it no
//! longer names and reopens the rest. The writer and its counters are per
//! balancer ([`Writer`]).

mod dest;
mod writer;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::civil::civil;
use crate::config::{AccessLog, LogFormat, TemplatePart, template_parts};
use crate::wire::proxy_header::Via;

pub use writer::{Destination, State, Writer};

/// Why a connection ended: a short code and words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    ClientClosed,
    ServerClosed,
    IdleTimeout,
    ClientReset,
    ServerReset,
    /// Every server tried refused or timed out (how many were tried).
    ConnectFailed(usize),
    NoServer,
    MaxConnections,
    /// Refused by the listener's `access` rules.
    Denied,
    /// Its address held `max_connections_per_client` already.
    PerClientLimit,
    /// Its address made `max_connection_rate_per_client` new connections
    /// in the last second.
    ClientRateLimit,
    /// A routed listener: the ClientHello did not come (in time, within
    /// the bound, before the client left).
    Hello(crate::wire::sni::Failed),
    /// A PROXY protocol listener: no valid header came (in time, within
    /// the bound, before the client left).
    ProxyHeader(crate::wire::proxy_header::Failed),
    /// A routed listener without a pool for clients no route takes.
    NoRoute,
    /// Still open at the end of the shutdown grace.
    Shutdown,
    /// Closed because its server went down (`on_server_down = "close"`).
    ServerDown,
}

impl End {
    pub fn code(self) -> &'static str {
        match self {
            End::ClientClosed => "client_closed",
            End::ServerClosed => "server_closed",
            End::IdleTimeout => "idle_timeout",
            End::ClientReset => "client_reset",
            End::ServerReset => "server_reset",
            End::ConnectFailed(_) => "connect_failed",
            End::NoServer => "no_server",
            End::MaxConnections => "max_connections",
            End::Denied => "denied",
            End::PerClientLimit => "max_connections_per_client",
            End::ClientRateLimit => "max_connection_rate_per_client",
            End::Hello(f) => f.as_str(),
            End::ProxyHeader(f) => f.code(),
            End::NoRoute => "no_route",
            End::Shutdown => "shutdown",
            End::ServerDown => "server_down",
        }
    }

    pub fn words(self) -> String {
        match self {
            End::ClientClosed => "the client closed first".into(),
            End::ServerClosed => "the server closed first".into(),
            End::IdleTimeout => "quiet for idle_timeout".into(),
            End::ClientReset => "the client reset or went away".into(),
            End::ServerReset => "the server reset or went away".into(),
            End::ConnectFailed(n) => format!("connect failed on every server tried ({n})"),
            End::NoServer => "no server eligible".into(),
            End::MaxConnections => "the listener was at max_connections".into(),
            End::Denied => "refused by the listener's access rules".into(),
            End::PerClientLimit => "the client's address was at max_connections_per_client".into(),
            End::ClientRateLimit => "the client's address was over max_connection_rate_per_client".into(),
            End::Hello(crate::wire::sni::Failed::Timeout) => "no complete ClientHello within preread_timeout".into(),
            End::Hello(crate::wire::sni::Failed::TooLarge) => "the ClientHello was larger than 16 KiB".into(),
            End::Hello(crate::wire::sni::Failed::Closed) => {
                "the client left before its ClientHello was complete".into()
            }
            End::Hello(crate::wire::sni::Failed::Crowded) => {
                "the listener had max_pending_hellos clients waiting for their ClientHello".into()
            }
            End::ProxyHeader(f) => f.words().into(),
            End::NoRoute => "no route for its server name, and no pool for the rest".into(),
            End::Shutdown => "still open at the end of the shutdown grace".into(),
            End::ServerDown => "closed by ucp-lb: its server went down (on_server_down = \"close\")".into(),
        }
    }

    /// nginx's stream `$status` for the same ending.
    pub fn status(self) -> u16 {
        match self {
            End::ConnectFailed(_) | End::NoServer => 502,
            End::MaxConnections | End::PerClientLimit | End::ClientRateLimit => 503,
            End::Denied => 403,
            End::Hello(crate::wire::sni::Failed::Crowded) => 503,
            End::Hello(_) | End::ProxyHeader(_) => 400,
            End::NoRoute | End::ServerDown => 502,
            _ => 200,
        }
    }
}

/// One finished connection.
#[derive(Debug, Clone)]
pub struct Record {
    /// When it ended.
    pub at: SystemTime,
    /// The client's address: a PROXY header's where believed.
    pub client: SocketAddr,
    /// A PROXY protocol listener: the connecting peer and what its header
    /// said.
    /// (Boxed: most lines have none, and a line waits in queues.)
    pub via: Option<Box<Via>>,
    /// The listener's address (nginx's `$server_addr:$server_port`).
    pub listener: SocketAddr,
    pub pool: Arc<str>,
    /// Every server tried, in order (nginx's `$upstream_addr`).
    pub tried: Vec<SocketAddr>,
    /// Bytes to the client and from it.
    pub to_client: u64,
    pub from_client: u64,
    /// From the first connect attempt to the server connection up.
    pub connect: Option<Duration>,
    /// From accept to the end.
    pub duration: Duration,
    pub end: End,
}

fn secs(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// nginx's `$time_local` (in UTC): `30/Nov/2026:01:55:28 +0000`.
fn time_local(at: SystemTime) -> String {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (y, m, d, hh, mm, ss) = civil(secs(at) as i64);
    format!("{d:02}/{}/{y}:{hh:02}:{mm:02}:{ss:02} +0000", MONTHS[(m - 1) as usize])
}

/// nginx's `$time_iso8601` (in UTC): `2026-11-30T01:55:28+00:00`.
fn time_iso8601(at: SystemTime) -> String {
    let (y, m, d, hh, mm, ss) = civil(secs(at) as i64);
    format!("{y}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}+00:00")
}

/// An `$upstream_*` variable as nginx prints it: one value per server
/// tried, `", "`-separated; `-` when no server was tried (nginx's "not
/// found"). A try that did not connect has `failed`, the one that did (the
/// last, unless every connect failed) has `connected`.
fn per_try(r: &Record, failed: &str, connected: String) -> String {
    if r.tried.is_empty() {
        return "-".into();
    }
    let last_connected = !matches!(r.end, End::ConnectFailed(_));
    let n = r.tried.len();
    let mut out = String::new();
    for i in 0..n {
        if i > 0 {
            out.push_str(", ");
        }
        if i + 1 == n && last_connected { out.push_str(&connected) } else { out.push_str(failed) }
    }
    out
}

fn header_addr(r: &Record, which: fn(&Via) -> Option<SocketAddr>, show: fn(SocketAddr) -> String) -> String {
    r.via.as_deref().and_then(which).map_or_else(|| "-".to_owned(), show)
}

/// One variable's value, as nginx prints it where nginx has it.
fn variable(name: &str, r: &Record) -> String {
    let tried = || r.tried.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ");
    match name {
        "remote_addr" => r.client.ip().to_string(),
        "remote_port" => r.client.port().to_string(),
        "server_addr" => r.listener.ip().to_string(),
        "server_port" => r.listener.port().to_string(),
        // nginx's: the connecting peer, whatever a header said.
        "realip_remote_addr" => r.via.as_ref().map_or(r.client, |v| v.peer).ip().to_string(),
        "realip_remote_port" => r.via.as_ref().map_or(r.client, |v| v.peer).port().to_string(),
        // What the header said, believed or not; `-` without one (or for
        // LOCAL and UNKNOWN), as nginx prints a variable not found.
        "proxy_protocol_addr" => header_addr(r, |v| v.source, |a| a.ip().to_string()),
        "proxy_protocol_port" => header_addr(r, |v| v.source, |a| a.port().to_string()),
        "proxy_protocol_server_addr" => header_addr(r, |v| v.destination, |a| a.ip().to_string()),
        "proxy_protocol_server_port" => header_addr(r, |v| v.destination, |a| a.port().to_string()),
        "upstream_addr" if r.tried.is_empty() => "-".into(),
        "upstream_addr" => tried(),
        "bytes_sent" => r.to_client.to_string(),
        "bytes_received" => r.from_client.to_string(),
        // Per try, as nginx: 0 for a server whose connect failed.
        "upstream_bytes_received" => per_try(r, "0", r.to_client.to_string()),
        "upstream_bytes_sent" => per_try(r, "0", r.from_client.to_string()),
        "upstream_connect_time" => per_try(r, "-", r.connect.map_or("-".into(), |d| format!("{:.3}", d.as_secs_f64()))),
        "session_time" => format!("{:.3}", r.duration.as_secs_f64()),
        "status" => r.end.status().to_string(),
        "protocol" => "TCP".into(),
        "time_local" => time_local(r.at),
        "time_iso8601" => time_iso8601(r.at),
        "msec" => format!("{:.3}", secs(r.at)),
        "pool" => r.pool.to_string(),
        "end" => r.end.code().into(),
        "end_words" => r.end.words(),
        _ => String::new(),
    }
}

/// Appends `r` formatted as `format` to `out` (one line, no newline).
pub fn format(out: &mut String, format: &LogFormat, r: &Record) {
    match format {
        LogFormat::Json => {
            let mut v = serde_json::json!({
                "time": time_iso8601(r.at),
                "client": r.client.to_string(),
                "listener": r.listener.to_string(),
                "pool": &*r.pool,
                "server": r.tried.last().map(|a| a.to_string()),
                "tried": r.tried.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "bytes_to_client": r.to_client,
                "bytes_from_client": r.from_client,
                "connect_ms": r.connect.map(|d| d.as_secs_f64() * 1e3),
                "duration_ms": r.duration.as_secs_f64() * 1e3,
                "status": r.end.status(),
                "end": r.end.code(),
                "end_words": r.end.words(),
            });
            // Behind a PROXY header only, so other lines keep their keys.
            if let Some(via) = &r.via {
                v["peer"] = via.peer.to_string().into();
                v["proxy_protocol"] = serde_json::json!({
                    "source": via.source.map(|a| a.to_string()),
                    "destination": via.destination.map(|a| a.to_string()),
                });
            }
            let _ = write!(out, "{v}");
        }
        LogFormat::Text => {
            let server = r.tried.last().map_or("-".to_owned(), |a| a.to_string());
            let _ = write!(
                out,
                "{} {} {} {} {server} {} {} sent={} received={} connect_ms={} duration_ms={:.0} {}",
                time_iso8601(r.at),
                r.client,
                r.listener,
                r.pool,
                r.end.status(),
                r.end.code(),
                r.to_client,
                r.from_client,
                r.connect.map_or("-".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e3)),
                r.duration.as_secs_f64() * 1e3,
                r.end.words(),
            );
        }
        LogFormat::Template(t) => {
            for part in template_parts(t) {
                match part {
                    TemplatePart::Text(s) => out.push_str(s),
                    TemplatePart::Var(name) => out.push_str(&variable(name, r)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            at: UNIX_EPOCH + Duration::from_secs(1_796_003_728),
            client: "127.0.0.5:40000".parse().unwrap(),
            via: None,
            listener: "127.0.0.1:443".parse().unwrap(),
            pool: "ucp".into(),
            tried: vec!["127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap()],
            to_client: 10,
            from_client: 4,
            connect: Some(Duration::from_millis(2)),
            duration: Duration::from_millis(1234),
            end: End::ServerClosed,
        }
    }

    #[test]
    fn a_template_prints_the_fields_as_nginx_names_them() {
        let mut out = String::new();
        let t = "$remote_addr:$remote_port [$time_local] $protocol $status $bytes_sent $bytes_received $session_time \"$upstream_addr\" ${end}!";
        format(&mut out, &LogFormat::Template(t.into()), &record());
        assert_eq!(
            out,
            "127.0.0.5:40000 [30/Nov/2026:01:55:28 +0000] TCP 200 10 4 1.234 \"127.0.0.1:1, 127.0.0.1:2\" server_closed!"
        );
    }

    #[test]
    fn upstream_variables_are_per_try_as_nginx_prints_them() {
        let mut out = String::new();
        let t = "$upstream_addr!$upstream_bytes_sent!$upstream_bytes_received!$upstream_connect_time";
        let mut r = record();
        format(&mut out, &LogFormat::Template(t.into()), &r);
        assert_eq!(out, "127.0.0.1:1, 127.0.0.1:2!0, 4!0, 10!-, 0.002");
        r.end = End::ConnectFailed(2);
        (r.to_client, r.from_client, r.connect) = (0, 0, None);
        out.clear();
        format(&mut out, &LogFormat::Template(t.into()), &r);
        assert_eq!(out, "127.0.0.1:1, 127.0.0.1:2!0, 0!0, 0!-, -");
        r.tried.clear();
        r.end = End::NoServer;
        out.clear();
        format(&mut out, &LogFormat::Template(t.into()), &r);
        assert_eq!(out, "-!-!-!-", "no server tried: nginx's not-found");
    }

    #[test]
    fn proxy_protocol_variables_are_nginx_s() {
        let t = "$remote_addr:$remote_port $realip_remote_addr:$realip_remote_port $proxy_protocol_addr:$proxy_protocol_port $proxy_protocol_server_addr:$proxy_protocol_server_port";
        let mut r = record();
        let mut out = String::new();
        format(&mut out, &LogFormat::Template(t.into()), &r);
        assert_eq!(out, "127.0.0.5:40000 127.0.0.5:40000 -:- -:-", "no header");
        r.via = Some(Box::new(Via {
            peer: "10.0.0.9:5555".parse().unwrap(),
            source: Some("127.0.0.5:40000".parse().unwrap()),
            destination: Some("192.0.2.1:443".parse().unwrap()),
        }));
        out.clear();
        format(&mut out, &LogFormat::Template(t.into()), &r);
        assert_eq!(out, "127.0.0.5:40000 10.0.0.9:5555 127.0.0.5:40000 192.0.2.1:443");
        out.clear();
        format(&mut out, &LogFormat::Json, &r);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!((&v["client"], &v["peer"]), (&"127.0.0.5:40000".into(), &"10.0.0.9:5555".into()));
        assert_eq!(v["proxy_protocol"]["destination"], "192.0.2.1:443");
        out.clear();
        format(&mut out, &LogFormat::Json, &record());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(v.get("peer").is_none() && v.get("proxy_protocol").is_none(), "no header, no keys: {v}");
    }

    #[test]
    fn json_lines_parse() {
        let mut out = String::new();
        format(&mut out, &LogFormat::Json, &record());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (v["end"].as_str(), v["server"].as_str(), v["status"].as_u64()),
            (Some("server_closed"), Some("127.0.0.1:2"), Some(200))
        );
        assert_eq!(v["time"], "2026-11-30T01:55:28+00:00");
    }
}

/// A connection's line in the making: filled in as the connection goes,
/// written when it ends, or, if the connection is dropped unfinished (the
/// process ending after the shutdown grace), written then as `shutdown`.
#[derive(Debug)]
pub struct Entry {
    writer: Writer,
    log: Arc<AccessLog>,
    record: Record,
    started: tokio::time::Instant,
    written: bool,
}

impl Entry {
    pub fn new(
        writer: &Writer,
        log: Arc<AccessLog>,
        client: SocketAddr,
        listener: SocketAddr,
        pool: Arc<str>,
    ) -> Entry {
        Entry {
            writer: writer.clone(),
            log,
            record: Record {
                at: SystemTime::now(),
                client,
                via: None,
                listener,
                pool,
                tried: Vec::new(),
                to_client: 0,
                from_client: 0,
                connect: None,
                duration: Duration::ZERO,
                end: End::Shutdown,
            },
            started: tokio::time::Instant::now(),
            written: false,
        }
    }

    /// The client came with a PROXY header: its connecting peer and what
    /// the header said.
    pub fn set_via(&mut self, via: Option<Via>) {
        self.record.via = via.map(Box::new);
    }

    pub fn with_via(mut self, via: Option<Via>) -> Entry {
        self.record.via = via.map(Box::new);
        self
    }

    pub fn via(&self) -> Option<Via> {
        self.record.via.as_deref().copied()
    }

    /// The pool a routed client went to, known once its hello was read.
    pub fn set_pool(&mut self, pool: Arc<str>) {
        self.record.pool = pool;
    }

    /// The servers tried, in order, and how long connecting took.
    pub fn connected(&mut self, tried: Vec<SocketAddr>, took: Option<Duration>) {
        self.record.tried = tried;
        self.record.connect = took;
    }

    /// Writes the line: the connection ended with `end` after these bytes.
    pub fn finish(mut self, end: End, to_client: u64, from_client: u64) {
        self.record.end = end;
        self.record.to_client = to_client;
        self.record.from_client = from_client;
        self.write();
    }

    /// How long since the connection was accepted.
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    /// How long its upstream connect took.
    pub fn connect_time(&self) -> Option<Duration> {
        self.record.connect
    }

    /// The connection moved to another process, which writes its line:
    /// none here.
    pub fn moved(mut self) {
        self.written = true;
    }

    /// The entry of a connection moved here from another process: open
    /// for `age`, to `server`, its connect having taken `connect`.
    pub fn resumed(mut self, server: SocketAddr, connect: Option<Duration>, age: Duration) -> Entry {
        self.record.tried = vec![server];
        self.record.connect = connect;
        self.started = tokio::time::Instant::now().checked_sub(age).unwrap_or(self.started);
        self
    }

    fn write(&mut self) {
        if self.written {
            return;
        }
        self.written = true;
        self.record.at = SystemTime::now();
        self.record.duration = self.started.elapsed();
        self.writer.log(&self.log, self.record.clone());
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        // Unfinished: cut when the process ended after the grace period.
        self.write();
    }
}

/// Every access-log file `config` names that cannot be written, as errors
/// of the key that names it (`check` and start refuse them, a reload
/// leaves the running config in force): a missing directory, a directory,
/// a FIFO, device or socket, a file of /proc, no permission, a read-only
/// file system. Nothing is made or written.
pub fn check_files(config: &crate::config::Config) -> Vec<crate::config::ConfigError> {
    let mut out: Vec<crate::config::ConfigError> = Vec::new();
    let mut seen: Vec<&std::path::Path> = Vec::new();
    for log in config.listeners.iter().filter_map(|l| l.access_log.as_deref()) {
        let crate::config::LogTo::File(path) = &log.to else { continue };
        if seen.contains(&path.as_path()) {
            continue;
        }
        seen.push(path);
        if let Err(e) = crate::files::check_append(path) {
            out.push(crate::config::ConfigError {
                source: config.source.clone(),
                pos: Some(log.pos),
                key: log.key.clone(),
                message: format!("cannot write the access log: {}", e.message),
            });
        }
    }
    out
}
