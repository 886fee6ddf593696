//! Security: files others can write are refused, the admin token never
//! leaks, the admin endpoints stay on loopback unless told otherwise, and a
//! flood on the admin port does not touch the traffic.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test]
async fn world_writable_config_and_token_files_are_refused_and_change_nothing() {
    let (a, b) = (Echo::start().await, Echo::start().await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    std::fs::write(&path, one_pool(&[a.addr], "")).unwrap();

    chmod(&path, 0o666);
    let err = ucp_lb::config::load(&path).unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()) && err.contains("writable by every user (mode 0666)"), "{err}");
    assert!(err.contains("chmod o-w"), "says how to fix it: {err}");
    chmod(&path, 0o644);
    let lb = start_lb_file(&path).await;
    round_trip(lb.listener_addrs()[0]).await.unwrap();

    // A reload from a file made world-writable is refused: still server a.
    std::fs::write(&path, one_pool(&[b.addr], "")).unwrap();
    chmod(&path, 0o646);
    let err = lb.reload().await.unwrap_err().to_string();
    assert!(err.contains("writable by every user"), "{err}");
    let a0 = a.count();
    round_trip(lb.listener_addrs()[0]).await.unwrap();
    assert_eq!((a.count(), b.count()), (a0 + 1, 0), "the running config is unchanged");
    chmod(&path, 0o640);
    lb.reload().await.unwrap();
    round_trip(lb.listener_addrs()[0]).await.unwrap();
    assert_eq!(b.count(), 1, "reloaded once the file is safe");

    // The admin token file, the same.
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    chmod(&token, 0o662);
    let toml = with_admin(&one_pool(&[a.addr], ""), Some(&token));
    let cfg = ucp_lb::config::parse(&toml, "lb.toml").unwrap();
    let err = ucp_lb::start(cfg).await.err().expect("refused").to_string();
    assert!(err.contains("admin.token_file") && err.contains("writable by every user (mode 0662)"), "{err}");
}

#[tokio::test]
async fn the_admin_token_never_appears_in_logs_status_metrics_or_the_page() {
    const TOKEN: &str = "tok-7d1e5c0a9b-secret";
    const WRONG: &str = "tok-guess-4f2b91-wrong";
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    write_secret(&token, &format!("{TOKEN}\n"));
    let cfg = dir.path().join("lb.toml");
    std::fs::write(&cfg, with_admin(&one_pool(&[echo.addr], ""), Some(&token))).unwrap();
    let mut cmd = Command::new(common::BIN);
    // Everything, at every level.
    cmd.arg("--config").arg(&cfg).env("RUST_LOG", "trace");
    let mut lb = Proc::spawn(cmd, false);
    let addr = lb.listener_addr().await;
    let admin = lb.admin_addr().await;
    round_trip(addr).await.unwrap();
    let mut answers = Vec::new();
    for (method, path, tok) in [
        ("POST", "/reload", Some(TOKEN)),
        ("POST", "/reload", Some(WRONG)),
        ("POST", "/pools/p/servers/nope/drain", Some(TOKEN)),
        ("GET", "/status", Some(TOKEN)),
        ("GET", "/status", None),
        ("GET", "/metrics", None),
        ("GET", "/", None),
        ("GET", "/healthz", None),
    ] {
        answers.push(http_raw(admin, method, path, tok).await);
    }
    assert!(answers[0].starts_with("HTTP/1.1 200"), "the token works: {}", answers[0]);
    assert!(answers[1].starts_with("HTTP/1.1 401"), "{}", answers[1]);
    lb.wait_for_line("config reloaded").await;
    lb.signal("TERM");
    assert_eq!(lb.exit_code().await, Some(0));
    let logs = lb.text();
    assert!(logs.lines().count() > 10, "trace logging was on: {logs}");
    for secret in [TOKEN, WRONG] {
        assert!(!logs.contains(secret), "a token in the log:\n{logs}");
        for a in &answers {
            assert!(!a.contains(secret), "a token in an answer:\n{a}");
        }
    }
}

#[tokio::test]
async fn admin_listens_on_loopback_by_default_and_warns_when_open_without_a_token() {
    let echo = Echo::start().await;
    let cfg =
        ucp_lb::config::parse(&one_pool(&[echo.addr], "").replace("[admin]\nlisten = \"127.0.0.1:0\"\n", ""), "x")
            .unwrap();
    assert!(cfg.admin.listen.ip().is_loopback(), "default admin listen: {}", cfg.admin.listen);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    // Port 0: a port picked beforehand could be taken by another test's
    // connection before ucp-lb binds it.
    let toml = one_pool(&[echo.addr], "").replace("listen = \"127.0.0.1:0\"", "listen = \"0.0.0.0:0\"");
    assert!(toml.contains("0.0.0.0"), "{toml}");
    std::fs::write(&path, toml).unwrap();
    let mut lb = Proc::lb(&path);
    let line = lb.wait_for_line("beyond loopback").await;
    assert!(line.contains("WARN") && line.contains("without a token_file"), "{line}");
    lb.signal("TERM");
    assert_eq!(lb.exit_code().await, Some(0));
}

/// 200 slow clients and 50 oversized requests on the admin port while a
/// client keeps passing traffic: every round trip completes and /healthz
/// still answers; the admin connections are closed, not kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_admin_port_does_not_touch_the_traffic() {
    let echo = Echo::start().await;
    let lb = start_lb(&one_pool(&[echo.addr], "")).await;
    let (admin, addr) = (lb.admin_addr().unwrap(), lb.listener_addrs()[0]);
    let mut slow = Vec::new();
    for _ in 0..200 {
        if let Ok(mut s) = TcpStream::connect(admin).await {
            let _ = s.write_all(b"GET /status HTTP/1.1\r\nX-Slow: ").await;
            slow.push(s);
        }
    }
    let big = tokio::spawn(async move {
        let header = format!("GET /metrics HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n", "a".repeat(1 << 20));
        let mut refused = 0;
        for _ in 0..50 {
            let Ok(mut s) = TcpStream::connect(admin).await else { continue };
            // The server may close before all of it is sent.
            let _ = s.write_all(header.as_bytes()).await;
            let mut buf = Vec::new();
            let _ = within("oversized request answered or closed", s.read_to_end(&mut buf)).await;
            let text = String::from_utf8_lossy(&buf);
            if !text.starts_with("HTTP/1.1 200") {
                refused += 1;
            }
        }
        refused
    });
    let mut c = TcpStream::connect(addr).await.unwrap();
    for _ in 0..500 {
        within("round trip during the flood", echo_once(&mut c)).await.unwrap();
    }
    assert_eq!(within("oversized requests", big).await.unwrap(), 50, "no oversized request was served");
    assert!(http_raw(admin, "GET", "/healthz", None).await.starts_with("HTTP/1.1 200"));
    drop(slow);
}

/// Rotating the admin token: rewrite `token_file` and reload; the old token
/// is refused from then on. A token file that turns bad rejects the reload
/// whole, and the token in force stays.
#[tokio::test]
async fn a_reload_puts_a_rewritten_token_file_in_force() {
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "first-token\n").unwrap();
    chmod(&token, 0o600);
    let path = dir.path().join("lb.toml");
    std::fs::write(&path, with_admin(&one_pool(&[echo.addr], ""), Some(&token))).unwrap();
    let lb = start_lb_file(&path).await;
    let admin = lb.admin_addr().unwrap();
    // Authorised: 404 (no such server); refused: 401.
    let drain = |tok: &'static str| async move {
        let answer = http_raw(admin, "POST", "/pools/p/servers/nope/drain", Some(tok)).await;
        answer.lines().next().unwrap_or("").to_owned()
    };
    assert!(drain("first-token").await.starts_with("HTTP/1.1 404"));

    std::fs::write(&token, "second-token\n").unwrap();
    lb.reload().await.unwrap();
    assert!(drain("first-token").await.starts_with("HTTP/1.1 401"), "the old token still works after the reload");
    assert!(drain("second-token").await.starts_with("HTTP/1.1 404"));

    for (content, mode, why) in [("\n", 0o600, "holds no token"), ("third-token\n", 0o602, "writable by every user")] {
        std::fs::write(&token, content).unwrap();
        chmod(&token, mode);
        let err = lb.reload().await.unwrap_err().to_string();
        assert!(err.contains("admin.token_file") && err.contains(why), "{err}");
        assert!(drain("second-token").await.starts_with("HTTP/1.1 404"), "a rejected reload changed the token");
        assert!(drain("third-token").await.starts_with("HTTP/1.1 401"));
    }
    round_trip(lb.listener_addrs()[0]).await.expect("traffic untouched");
}

/// A connect flood on the admin port from one address (127.0.0.2, as fast
/// as one thread can connect, for 3 s, holding up to 200 at a time) while
/// the health check asks /healthz from another (127.0.0.1) every 20 ms:
/// every health check is answered 200. The flood's connections never send
/// a request head, so they take at most 16 places and only ever evict each
/// other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_flood_from_one_address_never_starves_the_health_check() {
    let echo = Echo::start().await;
    let lb = start_lb(&one_pool(&[echo.addr], "")).await;
    let admin = lb.admin_addr().unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (start, mut made) = (std::time::Instant::now(), 0u64);
            let mut held = std::collections::VecDeque::new();
            let from: std::net::SocketAddr = "127.0.0.2:0".parse().unwrap();
            while !stop.load(Relaxed) && start.elapsed() < Duration::from_secs(3) {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
                if s.bind(&from.into()).is_err()
                    || s.connect_timeout(&admin.into(), Duration::from_millis(200)).is_err()
                {
                    continue;
                }
                made += 1;
                held.push_back(s);
                if held.len() > 200 {
                    held.pop_front();
                }
            }
            made
        })
    };
    let mut failed = Vec::new();
    for i in 0..140 {
        let answer = within("/healthz during the flood", http_raw(admin, "GET", "/healthz", None)).await;
        if !answer.starts_with("HTTP/1.1 200") {
            failed.push((i, answer.lines().next().unwrap_or("(closed)").to_owned()));
        }
        // Not synchronisation: paces the /healthz requests over the flood.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Relaxed);
    let made = flood.join().unwrap();
    eprintln!(
        "connect flood from 127.0.0.2: {made} connections; /healthz from 127.0.0.1: {} of 140 failed",
        failed.len()
    );
    assert!(made > 1_000, "the flood ran: {made}");
    assert!(failed.is_empty(), "health checks failed: {failed:?}");
}

/// DNS rebinding: a page of another origin whose name now points at
/// 127.0.0.1 sends its own name as Host. The loopback admin port answers
/// 421 to that, and as ever to its own address and localhost.
#[tokio::test]
async fn the_loopback_admin_port_answers_only_its_own_names() {
    let echo = Echo::start().await;
    let lb = start_lb(&one_pool(&[echo.addr], "")).await;
    let admin = lb.admin_addr().unwrap();
    let get = |host: String| async move {
        let mut s = TcpStream::connect(admin).await.unwrap();
        let req = format!("GET /status HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        within("answer", s.read_to_end(&mut buf)).await.unwrap();
        String::from_utf8_lossy(&buf).lines().next().unwrap_or("").to_owned()
    };
    assert!(get("attacker.example".into()).await.starts_with("HTTP/1.1 421"));
    assert!(get(format!("attacker.example:{}", admin.port())).await.starts_with("HTTP/1.1 421"));
    assert!(get(admin.to_string()).await.starts_with("HTTP/1.1 200"));
    assert!(get(format!("localhost:{}", admin.port())).await.starts_with("HTTP/1.1 200"));
}

/// `status_needs_token = true`: /status, the page and /metrics (GET or
/// HEAD) need the token like the POST endpoints; /healthz never does (keepalived and the
/// container's health check ask it without one).
#[tokio::test]
async fn status_needs_token_guards_the_read_endpoints_but_not_healthz() {
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    write_secret(&token, "read-token-0123456789\n");
    let toml = with_admin(&one_pool(&[echo.addr], ""), Some(&token)).replacen(
        "[admin]\n",
        "[admin]\nstatus_needs_token = true\n",
        1,
    );
    let lb = start_lb(&toml).await;
    let admin = lb.admin_addr().unwrap();
    // HEAD (GET without the body) follows the same rules.
    for (method, path) in ["/status", "/", "/metrics"].into_iter().flat_map(|p| [("GET", p), ("HEAD", p)]) {
        let what = format!("{method} {path}");
        assert!(http_raw(admin, method, path, None).await.starts_with("HTTP/1.1 401"), "{what} without the token");
        assert!(http_raw(admin, method, path, Some("wrong")).await.starts_with("HTTP/1.1 401"), "{what} wrong token");
        let ok = http_raw(admin, method, path, Some("read-token-0123456789")).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{what} with the token: {ok}");
    }
    assert!(http_raw(admin, "GET", "/healthz", None).await.starts_with("HTTP/1.1 200"));
    assert!(http_raw(admin, "HEAD", "/healthz", None).await.starts_with("HTTP/1.1 200"));
    // The scheme's case does not matter (RFC 9110).
    let mut s = TcpStream::connect(admin).await.unwrap();
    let req = format!(
        "GET /status HTTP/1.1\r\nHost: {admin}\r\nAuthorization: bearer read-token-0123456789\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    within("answer", s.read_to_end(&mut buf)).await.unwrap();
    assert!(buf.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf));
    let err = ucp_lb::config::parse(
        &one_pool(&[echo.addr], "").replacen("[admin]\n", "[admin]\nstatus_needs_token = true\n", 1),
        "x",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("admin.status_needs_token: needs a token_file"), "{err}");
}
