//! `/healthz` under an admin-port flood from many local addresses (issue
//! 35): connections that send half a request head and churn, from 16 and
//! then 32 addresses x 40, while `ucp-lb healthcheck` (the binary
//! keepalived and the container's HEALTHCHECK run) asks 100 times.
//!
//! The balancer is a real process, so its admin server is scheduled as in
//! production and shares nothing with the flood's threads but the cores;
//! the checker is the real sub-command with its default 3 s deadline. The
//! flood is bounded: each address runs a fixed number of rounds (open 40,
//! send half a head on each, close them all) and stops by itself, earlier
//! once the checks are done. The figures are printed (`--nocapture`).
//!
//! `a_checker_yet_to_speak_outlives_a_crowd_of_half_heads` shows the
//! failure of the issue step by step, in-process (it fails on the code
//! before issue 35: the checker was closed first).
//!
//! Larger floods, measured by hand (2x and 4x of the 32-address one, and
//! the same with half-sent `/healthz` heads):
//! `UCP_LB_FLOOD=64x40,128x40 cargo test --test admin_flood -- --ignored --nocapture`.

mod common;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use common::*;
use socket2::{Domain, Socket, Type};

/// What the flood's connections send before going quiet.
const HALF_HEAD: &[u8] = b"GET /status HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
/// The same, aimed at the health path itself.
const HALF_HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
/// Rounds each flooding address runs at most: far more than 100 checks
/// take, so the flood outlasts them; the checks' end stops it sooner.
const ROUNDS: usize = 5_000;

/// What one flood-and-check run saw.
struct Figures {
    sources: usize,
    per_source: usize,
    passed: usize,
    checks: usize,
    longest: Duration,
    failures: Vec<String>,
    /// Flood connections made (connected and sent their half head).
    made: u64,
    /// Listen queue overflows on the host meanwhile (any listener's).
    overflows: Option<u64>,
    /// Rounds completed by the address that did fewest: the flood was still
    /// running through the last check when this is below [`ROUNDS`].
    fewest_rounds: usize,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} addresses x {}: checks passed {} of {}, longest check {} ms, flood connections made {}, \
             rounds per address >= {}, listen queue overflows (host) {}",
            self.sources,
            self.per_source,
            self.passed,
            self.checks,
            self.longest.as_millis(),
            self.made,
            self.fewest_rounds,
            self.overflows.map_or("?".into(), |n| n.to_string())
        )
    }
}

/// The balancer as a process, its admin address once /healthz says 200.
async fn balancer(dir: &std::path::Path, echo: SocketAddr) -> (Proc, SocketAddr) {
    let path = dir.join("lb.toml");
    std::fs::write(&path, one_pool(&[echo], "")).unwrap();
    let lb = Proc::lb(&path);
    let admin = lb.admin_addr().await;
    eventually_async("ready", || async move { http_raw(admin, "GET", "/healthz", None).await.contains(" 200 ") }).await;
    (lb, admin)
}

/// One flooding address: rounds of `per_source` connections, each sending
/// `head` and held until the round's last is made, then all closed.
fn flood_from(
    from: IpAddr,
    admin: SocketAddr,
    per_source: usize,
    head: &[u8],
    stop: &AtomicBool,
    made: &AtomicU64,
) -> usize {
    let mut rounds = 0;
    while rounds < ROUNDS && !stop.load(Relaxed) {
        let mut held = Vec::with_capacity(per_source);
        for _ in 0..per_source {
            let Ok(s) = Socket::new(Domain::IPV4, Type::STREAM, None) else { continue };
            if s.bind(&SocketAddr::new(from, 0).into()).is_err()
                || s.connect_timeout(&admin.into(), Duration::from_millis(200)).is_err()
            {
                continue;
            }
            // A few bytes always fit in a fresh socket's buffer; the
            // server may already have closed it (then it fails: fine).
            let _ = (&s).write(head);
            made.fetch_add(1, Relaxed);
            held.push(s);
        }
        rounds += 1;
    }
    rounds
}

/// Listen queue overflows of the whole host so far (`ListenOverflows` in
/// /proc/net/netstat): each is a SYN or handshake the kernel dropped
/// because a listener's accept queue was full. None where unreadable.
fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let at = names.split_whitespace().position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// A health check that connects and sends its request `late` after (as an
/// asyncio client does a loop turn later), with a 3 s deadline: whether
/// it got 200, how long it took, what it got.
fn late_check(admin: SocketAddr, late: Duration) -> (bool, Duration, String) {
    use std::io::Read;
    let start = Instant::now();
    let deadline = Duration::from_secs(3);
    let answer = (|| -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&admin, deadline)?;
        // Not synchronisation: this client is late by design.
        std::thread::sleep(late);
        s.set_read_timeout(Some(deadline.saturating_sub(start.elapsed()).max(Duration::from_millis(1))))?;
        s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").as_bytes())?;
        let mut got = Vec::new();
        s.read_to_end(&mut got)?;
        Ok(String::from_utf8_lossy(&got).into_owned())
    })();
    let took = start.elapsed();
    match answer {
        Ok(a) if a.starts_with("HTTP/1.1 200") => (true, took, a),
        Ok(a) if a.is_empty() => (false, took, "closed without an answer".into()),
        Ok(a) => (false, took, a.lines().next().unwrap_or("").to_owned()),
        Err(e) => (false, took, e.to_string()),
    }
}

/// One health check: `ucp-lb healthcheck`, or [`late_check`] when
/// `UCP_LB_FLOOD_LATE_MS` says so (by hand only).
fn check_once(admin: SocketAddr) -> (bool, Duration, String) {
    if let Some(ms) = std::env::var("UCP_LB_FLOOD_LATE_MS").ok().and_then(|v| v.parse().ok()) {
        return late_check(admin, Duration::from_millis(ms));
    }
    cli_check(admin)
}

/// `ucp-lb healthcheck --url http://ADMIN/healthz`, once: whether it said
/// healthy, how long it took, and what it printed when not.
fn cli_check(admin: SocketAddr) -> (bool, Duration, String) {
    let start = Instant::now();
    let out = Command::new(BIN)
        .args(["healthcheck", "--url", &format!("http://{admin}/healthz")])
        .stdin(Stdio::null())
        .output()
        .expect("run ucp-lb healthcheck");
    let took = start.elapsed();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), took, said.trim().to_owned())
}

/// Floods `admin` from `sources` addresses (127.0.0.10 and up) x
/// `per_source` while `checks` health checks run one after the other.
fn flood_and_check(
    admin: SocketAddr,
    sources: usize,
    per_source: usize,
    checks: usize,
    head: &'static [u8],
) -> Figures {
    assert!(sources <= 240, "127.0.0.10 to 127.0.0.249");
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let overflows_before = listen_overflows();
    let threads: Vec<_> = (0..sources)
        .map(|i| {
            let (stop, made) = (stop.clone(), made.clone());
            let from = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + i as u8));
            std::thread::spawn(move || flood_from(from, admin, per_source, head, &stop, &made))
        })
        .collect();
    // The checks start once every address has had its first round going.
    let started = poll_blocking(DEADLINE, || (made.load(Relaxed) >= (sources * per_source) as u64).then_some(()));
    let (mut passed, mut longest, mut failures) = (0, Duration::ZERO, Vec::new());
    for i in 0..checks {
        let (ok, took, said) = check_once(admin);
        longest = longest.max(took);
        if ok {
            passed += 1;
        } else {
            failures.push(format!("check {i} after {} ms: {said}", took.as_millis()));
        }
    }
    stop.store(true, Relaxed);
    let fewest_rounds = threads.into_iter().map(|t| t.join().unwrap()).min().unwrap_or(0);
    assert!(started.is_some(), "the flood never got going");
    let overflows = listen_overflows().zip(overflows_before).map(|(a, b)| a - b);
    Figures {
        sources,
        per_source,
        passed,
        checks,
        longest,
        failures,
        made: made.load(Relaxed),
        overflows,
        fewest_rounds,
    }
}

/// The flood of issue 35 at 16 and then 32 addresses: every check healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_every_check_through_a_half_head_flood_from_32_addresses() {
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (lb, admin) = balancer(dir.path(), echo.addr).await;
    for sources in [16, 32] {
        let figures =
            tokio::task::spawn_blocking(move || flood_and_check(admin, sources, 40, 100, HALF_HEAD)).await.unwrap();
        eprintln!("half-head flood: {figures}");
        assert!(figures.fewest_rounds < ROUNDS, "the flood ended before the checks did: {figures}");
        assert!(figures.failures.is_empty(), "{figures}\n{}", figures.failures.join("\n"));
    }
    // The flood left nothing behind that keeps the admin port from serving.
    assert!(http_raw(admin, "GET", "/status", None).await.starts_with("HTTP/1.1 200"), "{}", lb.text());
}

/// By hand: 2x and 4x of the 32-address flood (`UCP_LB_FLOOD`, default
/// `64x40,128x40`), each with half-sent heads of `/status` and then of
/// `/healthz` itself; prints the figures and fails on a failed check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand"]
async fn measure_larger_floods() {
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (_lb, admin) = balancer(dir.path(), echo.addr).await;
    let spec = std::env::var("UCP_LB_FLOOD").unwrap_or_else(|_| "64x40,128x40".into());
    let mut failed = Vec::new();
    for one in spec.split(',') {
        let (s, n) = one.split_once('x').expect("UCP_LB_FLOOD: SOURCESxCONNECTIONS,...");
        let (sources, per_source): (usize, usize) = (s.trim().parse().unwrap(), n.trim().parse().unwrap());
        for (what, head) in [("half-head", HALF_HEAD), ("half-healthz", HALF_HEALTHZ)] {
            let figures = tokio::task::spawn_blocking(move || flood_and_check(admin, sources, per_source, 100, head))
                .await
                .unwrap();
            eprintln!("{what} flood: {figures}");
            if !figures.failures.is_empty() {
                failed.push(format!("{what}: {figures}\n{}", figures.failures.join("\n")));
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// Finding 3 step by step, in-process: a checker has connected and not sent
/// its request yet when 100 half-sent heads arrive from 32 other addresses,
/// and 36 of them are closed to make room (64 places for requests other
/// than /healthz). Its request then gets 200. Before issue 35 the checker,
/// the oldest connection without a whole head, was the first closed. (The
/// checker must speak within 2 s of connecting; the 100 connects take a
/// few milliseconds.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checker_yet_to_speak_outlives_a_crowd_of_half_heads() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = Echo::start().await;
    let lb = start_lb(&one_pool(&[echo.addr], "")).await;
    let admin = lb.admin_addr().unwrap();
    let mut checker = tokio::net::TcpStream::connect(admin).await.unwrap();
    let closed = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for i in 0..100u8 {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + i % 32)), 0).into()).unwrap();
        s.connect(&admin.into()).unwrap();
        s.set_nonblocking(true).unwrap();
        let mut s = tokio::net::TcpStream::from_std(s.into()).unwrap();
        s.write_all(HALF_HEAD).await.unwrap();
        let closed = closed.clone();
        readers.push(tokio::spawn(async move {
            let mut buf = [0u8; 64];
            // Closed by the server: the end of the stream, or a reset.
            if !matches!(s.read(&mut buf).await, Ok(n) if n > 0) {
                closed.fetch_add(1, Relaxed);
            }
        }));
    }
    eventually("36 half heads closed to make room", || closed.load(Relaxed) >= 36).await;
    checker.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {admin}\r\n\r\n").as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = within("the checker's answer", checker.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "the checker got {answer:?}");
    for r in readers {
        r.abort();
    }
}
