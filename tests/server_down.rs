//! `on_server_down = "close"`: the open sessions of a server that fails its
//! check are closed, spread over `close_spread`, and their clients come
//! back through the servers that are up; with `keep` (the default) they go
//! on, as in nginx.
//!
//! Three echo servers on addresses of their own in 127.0.0.0/8, each with
//! an HTTP health endpoint on one shared port (the pool's `health.port`)
//! that the test turns from 200 to 500. Their echo port keeps accepting
//! throughout, so only ucp-lb's marking keeps clients away from the failed
//! one.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use ucp_lb::config::AdminState;

const SESSIONS: usize = 300;
const INTERVAL: Duration = Duration::from_millis(500);
const SPREAD: Duration = Duration::from_secs(3);

/// A backend: an echo server and a health endpoint answering 200 while
/// `healthy`.
struct Backend {
    echo: Echo,
    healthy: Arc<AtomicBool>,
    _health: tokio::task::JoinHandle<()>,
}

/// Three backends on 127.77.N.1..3 with the same health port (bound on
/// the first, then taken on the others; a few tries if another process
/// holds it on one of them).
async fn backends() -> (Vec<Backend>, u16) {
    let net = 1 + (std::process::id() % 200) as u8;
    'again: for attempt in 0..20u8 {
        let ip = |i: u8| IpAddr::V4(Ipv4Addr::new(127, 77, net.wrapping_add(attempt), i));
        let first = TcpListener::bind(SocketAddr::new(ip(1), 0)).await.unwrap();
        let port = first.local_addr().unwrap().port();
        let mut health = vec![first];
        for i in 2..=3 {
            match TcpListener::bind(SocketAddr::new(ip(i), port)).await {
                Ok(l) => health.push(l),
                Err(_) => continue 'again,
            }
        }
        let mut out = Vec::new();
        for (i, h) in health.into_iter().enumerate() {
            let echo = Echo::on(TcpListener::bind(SocketAddr::new(ip(i as u8 + 1), 0)).await.unwrap());
            let healthy = Arc::new(AtomicBool::new(true));
            let flag = healthy.clone();
            let task = tokio::spawn(async move {
                loop {
                    let Ok((mut s, _)) = h.accept().await else { continue };
                    let ok = flag.load(Relaxed);
                    tokio::spawn(async move {
                        let mut buf = [0u8; 1024];
                        let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
                        let status = if ok { "200 OK" } else { "500 Internal Server Error" };
                        let reply = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                        let _ = s.write_all(reply.as_bytes()).await;
                    });
                }
            });
            out.push(Backend { echo, healthy, _health: task });
        }
        return (out, port);
    }
    panic!("no health port free on all three addresses");
}

fn config(bs: &[Backend], port: u16, pool_keys: &str, log: &std::path::Path) -> String {
    let servers: Vec<String> = bs.iter().map(|b| format!("\"{}\"", b.echo.addr)).collect();
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[defaults]\naccess_log = \"{}\"\naccess_log_format = \"json\"\n\
         [[listener]]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         [pool.p]\nservers = [{}]\n{pool_keys}\n\
         [pool.p.health]\nkind = \"http\"\npath = \"/\"\nport = {port}\ninterval = \"{}ms\"\nrise = 1\nfall = 1\n",
        log.display(),
        servers.join(", "),
        INTERVAL.as_millis()
    )
}

/// What became of one session.
struct Session {
    /// The LB closed it.
    closed: bool,
    /// Its client's new connection was served (echoed).
    reconnected: bool,
}

/// Sessions followed after their server started failing.
struct Run {
    sessions: Vec<tokio::task::JoinHandle<Session>>,
    /// How many of them have seen their close so far.
    closes_seen: Arc<AtomicUsize>,
    bs: Vec<Backend>,
    lb: ucp_lb::Running,
    dir: tempfile::TempDir,
}

impl Run {
    async fn sessions(&mut self) -> Vec<Session> {
        let mut out = Vec::new();
        for t in self.sessions.drain(..) {
            out.push(t.await.unwrap());
        }
        out
    }
}

/// Opens [`SESSIONS`] sessions, all through backend 0 (the others
/// drained meanwhile), turns backend 0's health to 500 and follows every
/// session for `watch`.
async fn run(pool_keys: &str, watch: Duration) -> Run {
    let (bs, port) = backends().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let lb = start_lb(&config(&bs, port, pool_keys, &log)).await;
    eventually("all three up", || bs.iter().all(|b| server(&lb, b.echo.addr).eligible)).await;
    for b in &bs[1..] {
        lb.lb.set_override("p", &b.echo.addr.to_string(), AdminState::Drain);
    }
    let addr = lb.listener_addrs()[0];
    let mut streams = Vec::new();
    for _ in 0..SESSIONS {
        let mut s = TcpStream::connect(addr).await.unwrap();
        echo_once(&mut s).await.unwrap();
        streams.push(s);
    }
    assert_eq!(bs[0].echo.count(), SESSIONS, "every session through backend 0");
    for b in &bs[1..] {
        lb.lb.set_override("p", &b.echo.addr.to_string(), AdminState::Up);
    }

    bs[0].healthy.store(false, Relaxed);
    let closes_seen = Arc::new(AtomicUsize::new(0));
    let sessions = streams
        .into_iter()
        .map(|mut s| {
            let seen = closes_seen.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                let ended = tokio::time::timeout(watch, async {
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                })
                .await;
                let Ok(()) = ended else { return Session { closed: false, reconnected: false } };
                seen.fetch_add(1, Relaxed);
                let mut again = TcpStream::connect(addr).await.unwrap();
                let reconnected = within("reconnection", echo_once(&mut again)).await.is_ok();
                Session { closed: true, reconnected }
            })
        })
        .collect();
    Run { sessions, closes_seen, bs, lb, dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_a_failed_server_are_closed_spread_out_and_come_back_elsewhere() {
    let keys = format!("on_server_down = \"close\"\nclose_spread = \"{}s\"", SPREAD.as_secs());
    // The check's interval, the spread, and the test deadline: only a
    // close that never comes runs out of it. When each close comes (one
    // every SPREAD / SESSIONS, the last within SPREAD) is the close
    // order's logic, proved on a paused clock in src/closing.rs.
    let mut r = run(&keys, INTERVAL + SPREAD + DEADLINE).await;
    let failed = r.bs[0].echo.addr;
    // Spread, not at once: when a client sees the first close, most of
    // the sessions are still open (at once, all 300 would be gone before
    // this test's next look; spread, one more goes every 10 ms).
    eventually("a first session closed", || r.closes_seen.load(Relaxed) > 0).await;
    let closed_then = server(&r.lb, failed).sessions_closed;
    assert!(
        closed_then < SESSIONS as u64 / 2,
        "{closed_then} of {SESSIONS} closed when the first client saw its close"
    );
    let sessions = r.sessions().await;
    let (bs, lb) = (&r.bs, &r.lb);
    assert_eq!(sessions.iter().filter(|s| s.closed).count(), SESSIONS, "every session closed");
    assert!(sessions.iter().all(|s| s.reconnected), "every client served again");
    assert_eq!(bs[0].echo.count(), SESSIONS, "no reconnection reached the failed server");
    assert_eq!(bs[1].echo.count() + bs[2].echo.count(), SESSIONS, "the others took them all");

    let s = server(lb, failed);
    assert_eq!(s.sessions_closed, SESSIONS as u64);
    let metrics = http_raw(lb.admin_addr().unwrap(), "GET", "/metrics", None).await;
    let want = format!(
        "ucp_lb_server_closed_sessions_total{{pool=\"p\",server=\"{failed}\",reason=\"server_down\"}} {SESSIONS}"
    );
    assert!(metrics.contains(&want), "{want} in\n{metrics}");
    let log = r.dir.path().join("access.log");
    eventually_async("access log lines", || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().filter(|l| l.contains("\"end\":\"server_down\"")).count() == SESSIONS
    })
    .await;
    r.lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keep_sessions_of_a_failed_server_go_on() {
    // Watched quiet on purpose, past the time `close` would have taken.
    let watch = SPREAD + INTERVAL + Duration::from_secs(1);
    let mut r = run("", watch).await;
    let sessions = r.sessions().await;
    let failed = r.bs[0].echo.addr;
    assert_eq!(server(&r.lb, failed).check.unwrap().state, "down", "it did fail its check");
    let closed = sessions.iter().filter(|s| s.closed).count();
    assert_eq!(closed, 0, "keep: no session closed");
    assert_eq!(server(&r.lb, failed).sessions_closed, 0);
    r.lb.shutdown().await;
}

/// `n` sessions through `lb`, each echoed once.
async fn open(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::new();
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await.unwrap();
        echo_once(&mut s).await.unwrap();
        out.push(s);
    }
    out
}

/// Waits `span` for the LB to close the first session (with
/// `close_spread = "0s"` it closes all at once): true when it did not.
async fn none_closed_within(streams: &mut [TcpStream], span: Duration) -> bool {
    let mut buf = [0u8; 16];
    tokio::time::timeout(span, streams[0].read(&mut buf)).await.is_err()
}

/// Whether each session is still served.
async fn still_served(streams: &mut [TcpStream]) -> usize {
    let mut n = 0;
    for s in streams {
        if tokio::time::timeout(Duration::from_secs(2), echo_once(s)).await.is_ok_and(|r| r.is_ok()) {
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_while_the_pool_fails_open_nor_on_drain_but_on_admin_down() {
    let (bs, port) = backends().await;
    let dir = tempfile::tempdir().unwrap();
    let keys = "on_server_down = \"close\"\nclose_spread = \"0s\"\nall_down = \"fail_open\"";
    let lb = start_lb(&config(&bs[..2], port, keys, &dir.path().join("access.log"))).await;
    let (a, b) = (bs[0].echo.addr, bs[1].echo.addr);
    eventually("both up", || server(&lb, a).eligible && server(&lb, b).eligible).await;
    lb.lb.set_override("p", &b.to_string(), AdminState::Drain);
    let addr = lb.listener_addrs()[0];
    let mut streams = open(addr, 30).await;
    assert_eq!(bs[0].echo.count(), 30);

    // Drain: meant to let sessions finish.
    lb.lb.set_override("p", &a.to_string(), AdminState::Drain);
    lb.lb.set_override("p", &b.to_string(), AdminState::Up);
    assert!(none_closed_within(&mut streams, INTERVAL * 2).await, "drain closes nothing");
    assert_eq!(still_served(&mut streams).await, 30);
    lb.lb.set_override("p", &a.to_string(), AdminState::Up);

    // Both fail their checks, B first: when A goes down the pool has no
    // other server, fails open, and A's sessions stay. (A first would be
    // closed at once, while B could still take them.)
    bs[1].healthy.store(false, Relaxed);
    eventually("B down", || !server(&lb, b).eligible).await;
    bs[0].healthy.store(false, Relaxed);
    eventually("pool all down", || lb.status()[0].fail_open).await;
    assert!(none_closed_within(&mut streams, INTERVAL * 2).await, "failing open closes nothing");
    assert_eq!(still_served(&mut streams).await, 30);
    assert_eq!(server(&lb, a).sessions_closed, 0);

    // B passes again: now A's sessions have somewhere to go.
    bs[1].healthy.store(true, Relaxed);
    eventually("A's sessions closed", || server(&lb, a).sessions_closed == 30).await;
    assert_eq!(still_served(&mut streams).await, 0);

    // Set down by the admin API (its check passing): closed too.
    bs[0].healthy.store(true, Relaxed);
    eventually("A up", || server(&lb, a).eligible).await;
    lb.lb.set_override("p", &b.to_string(), AdminState::Drain);
    let mut streams = open(addr, 10).await;
    lb.lb.set_override("p", &b.to_string(), AdminState::Up);
    lb.lb.set_override("p", &a.to_string(), AdminState::Down);
    eventually("closed on admin down", || server(&lb, a).sessions_closed == 40).await;
    assert_eq!(still_served(&mut streams).await, 0);
    lb.shutdown().await;
}
