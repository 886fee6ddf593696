//! The access log: one line per finished connection saying why it ended;
//! reopened on SIGUSR1 without losing a line; a path that cannot be written
//! refused by `check` and start with its key and reason; a file that
//! becomes unwritable (a FIFO in its place) shown in /status and /metrics
//! by reason, without blocking, and written again after SIGUSR1; a reload
//! that changes the path writes to the new one; a stalled destination
//! (stdout into a full pipe) stops neither traffic nor another listener's
//! log.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    lines(path).iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

/// A server that writes a greeting and closes at once, and one that
/// resets every connection after a byte.
async fn closing_server() -> SocketAddr {
    scripted(|mut s| async move {
        let _ = s.write_all(b"bye").await;
    })
    .await
}

async fn resetting_server() -> SocketAddr {
    scripted(|mut s| async move {
        let mut b = [0u8; 1];
        let _ = s.read(&mut b).await;
        let _ = SockRef::from(&s).set_linger(Some(Duration::ZERO));
    })
    .await
}

/// Every way a connection can end, once each, in a JSON access log: the
/// code, the words, the server and the bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_way_a_connection_ends_is_logged_once_with_its_code() {
    let echo = Echo::start().await;
    let (closing, resetting, refusing) = (closing_server().await, resetting_server().await, refusing_addr());
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let listener =
        |pool: &str, extra: &str| format!("[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"{pool}\"\n{extra}");
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[defaults]\naccess_log = \"{}\"\naccess_log_format = \"json\"\n\
         {}{}{}{}{}{}{}\
         [pool.echo]\nservers = [\"{}\"]\n[pool.quiet]\nservers = [\"{}\"]\nidle_timeout = \"200ms\"\n\
         [pool.closing]\nservers = [\"{closing}\"]\n[pool.resetting]\nservers = [\"{resetting}\"]\n\
         [pool.dead]\nservers = [\"{refusing}\"]\n[pool.none]\nservers = [{{ address = \"{}\", state = \"down\" }}]\nall_down = \"reject\"\n\
         [pool.one]\nservers = [\"{}\"]\n",
        log.display(),
        listener("echo", ""),
        listener("quiet", ""),
        listener("closing", ""),
        listener("resetting", ""),
        listener("dead", ""),
        listener("none", ""),
        listener("one", "max_connections = 1\n"),
        echo.addr,
        echo.addr,
        echo.addr,
        echo.addr,
    );
    let lb = start_lb(&toml).await;
    let at = lb.listener_addrs();
    // client_closed: the client sends, half-closes, and the echo follows.
    let mut c = TcpStream::connect(at[0]).await.unwrap();
    c.write_all(b"ping").await.unwrap();
    c.shutdown().await.unwrap();
    let mut back = Vec::new();
    within("echo", c.read_to_end(&mut back)).await.unwrap();
    drop(c);
    // idle_timeout
    let mut c = TcpStream::connect(at[1]).await.unwrap();
    assert!(within("idle close", closed(&mut c)).await);
    // server_closed
    let mut c = TcpStream::connect(at[2]).await.unwrap();
    let mut bye = Vec::new();
    within("greeting", c.read_to_end(&mut bye)).await.unwrap();
    drop(c);
    // server_reset
    let mut c = TcpStream::connect(at[3]).await.unwrap();
    c.write_all(b"x").await.unwrap();
    let mut buf = [0u8; 8];
    let _ = within("reset", c.read(&mut buf)).await;
    drop(c);
    // connect_failed, no_server: closed at once.
    for a in [at[4], at[5]] {
        let mut c = TcpStream::connect(a).await.unwrap();
        assert!(within("closed at once", closed(&mut c)).await);
    }
    // max_connections: one held, the next closed at once.
    let mut held = TcpStream::connect(at[6]).await.unwrap();
    echo_once(&mut held).await.unwrap();
    let mut c = TcpStream::connect(at[6]).await.unwrap();
    assert!(within("over the limit", closed(&mut c)).await);
    // client_reset: the held one resets.
    SockRef::from(&held).set_linger(Some(Duration::ZERO)).unwrap();
    drop(held);

    let want = [
        "client_closed",
        "idle_timeout",
        "server_closed",
        "server_reset",
        "connect_failed",
        "no_server",
        "max_connections",
        "client_reset",
    ];
    eventually("a line for each", || json_lines(&log).len() >= want.len()).await;
    let got = json_lines(&log);
    let codes: Vec<&str> = got.iter().filter_map(|l| l["end"].as_str()).collect();
    for code in want {
        assert_eq!(codes.iter().filter(|c| **c == code).count(), 1, "{code} once: {codes:?}");
    }
    let line = |code: &str| got.iter().find(|l| l["end"] == code).unwrap().clone();
    let ok = line("client_closed");
    assert_eq!((ok["pool"].as_str(), ok["server"].as_str()), (Some("echo"), Some(echo.addr.to_string().as_str())));
    assert_eq!(
        (ok["bytes_from_client"].as_u64(), ok["bytes_to_client"].as_u64(), ok["status"].as_u64()),
        (Some(4), Some(4), Some(200))
    );
    let failed = line("connect_failed");
    assert_eq!(failed["end_words"], "connect failed on every server tried (1)");
    assert_eq!(
        (failed["status"].as_u64(), failed["tried"][0].as_str()),
        (Some(502), Some(refusing.to_string().as_str()))
    );
    assert_eq!(line("no_server")["status"], 502);
    assert_eq!(line("max_connections")["status"], 503);
    assert_eq!(line("server_closed")["bytes_to_client"], 3);
}

/// logrotate's way: the file is moved, SIGUSR1 sent; the lines before are
/// in the moved file, the lines after in a new one at the path, none lost.
/// A connection still open when the shutdown grace ends is logged as cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_file_and_no_line_is_lost() {
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let path = dir.path().join("lb.toml");
    std::fs::write(
        &path,
        one_pool(&[echo.addr], "").replacen(
            "[[listener]]\n",
            &format!("[defaults]\nshutdown_timeout = \"200ms\"\n[[listener]]\naccess_log = \"{}\"\n", log.display()),
            1,
        ),
    )
    .unwrap();
    let mut lb = Proc::lb(&path);
    let addr = lb.listener_addr().await;
    for _ in 0..50 {
        round_trip(addr).await.unwrap();
    }
    eventually("50 lines", || lines(&log).len() == 50).await;
    let moved = dir.path().join("access.log.1");
    std::fs::rename(&log, &moved).unwrap();
    lb.signal("USR1");
    lb.wait_for_line("SIGUSR1: reopening").await;
    for _ in 0..50 {
        round_trip(addr).await.unwrap();
    }
    eventually("50 lines in the new file", || lines(&log).len() == 50).await;
    assert_eq!(lines(&moved).len(), 50, "the moved file kept its lines and got no more");
    assert!(lines(&log).iter().all(|l| l.contains(" client_closed ")), "{:?}", lines(&log));
    // One connection held open through SIGTERM: cut at the grace's end.
    let mut held = TcpStream::connect(addr).await.unwrap();
    echo_once(&mut held).await.unwrap();
    lb.signal("TERM");
    assert_eq!(lb.exit_code().await, Some(0));
    let last = lines(&log);
    assert_eq!(last.len(), 51, "{last:?}");
    assert!(last[50].contains(" shutdown ") && last[50].contains("end of the shutdown grace"), "{}", last[50]);
}

/// `[[listener]]` with `keys` for pool "p" (from `one_pool`), in a file
/// lb.toml in `dir`.
fn config_with(dir: &Path, servers: &[SocketAddr], listener_keys: &str) -> std::path::PathBuf {
    let path = dir.join("lb.toml");
    let toml = one_pool(servers, "").replacen("[[listener]]\n", &format!("[[listener]]\n{listener_keys}"), 1);
    std::fs::write(&path, toml).unwrap();
    path
}

/// A server address for configs that are never started.
fn nowhere() -> SocketAddr {
    "127.0.0.1:9".parse().unwrap()
}

fn mkfifo(path: &Path) {
    rustix::fs::mkfifoat(rustix::fs::CWD, path, rustix::fs::Mode::from_raw_mode(0o644)).unwrap();
}

/// The /status JSON of the admin endpoint at `admin`.
async fn status(admin: SocketAddr) -> serde_json::Value {
    let text = http_raw(admin, "GET", "/status", None).await;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

/// The access-log destination named `log` in a /status.
fn destination(st: &serde_json::Value, log: &str) -> serde_json::Value {
    st["access_log"]["destinations"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["log"].as_str().is_some_and(|l| l.ends_with(log))))
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// The value of the /metrics series that starts with `prefix`.
async fn metric(admin: SocketAddr, prefix: &str) -> Option<f64> {
    let m = http_raw(admin, "GET", "/metrics", None).await;
    m.lines().find_map(|l| l.strip_prefix(prefix)).and_then(|v| v.trim().parse().ok())
}

/// `check` refuses every access-log path that cannot be written, naming
/// the file, line, column, the key and the reason; start refuses the same
/// at once (a FIFO never blocks it). The keys of `[defaults]` are named
/// as such.
#[test]
fn check_and_start_refuse_a_log_that_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let (fifo, a_dir) = (dir.path().join("access.fifo"), dir.path().join("logs"));
    mkfifo(&fifo);
    std::fs::create_dir(&a_dir).unwrap();
    let cases: [(&str, String, &str); 5] = [
        ("access.fifo", "listener[0].access_log", "is a FIFO (named pipe), not a regular file"),
        ("logs", "listener[0].access_log", "is a directory, not a regular file"),
        ("nowhere/access.log", "listener[0].access_log", "nowhere does not exist"),
        ("/proc/version", "listener[0].access_log", "is on /proc (procfs), a kernel interface"),
        ("[defaults]", "defaults.access_log", "nowhere does not exist"),
    ]
    .map(|(p, k, m)| (p, k.to_owned(), m));
    for (path, key, want) in &cases {
        let cfg = if *path == "[defaults]" {
            let p = config_with(dir.path(), &[nowhere()], "");
            let text = std::fs::read_to_string(&p).unwrap();
            std::fs::write(&p, format!("[defaults]\naccess_log = \"nowhere/a.log\"\n{text}")).unwrap();
            p
        } else {
            config_with(dir.path(), &[nowhere()], &format!("access_log = \"{path}\"\n"))
        };
        let out = Command::new(BIN).arg("check").arg("--config").arg(&cfg).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "check of {path}: {err}");
        let line = if *path == "[defaults]" { 2 } else { 4 };
        let at = format!("lb.toml:{line}:14: {key}: cannot write the access log: ");
        assert!(err.contains(&at) && err.contains(want), "check of {path}: want {at}...{want}, got:\n{err}");
        let started = Instant::now();
        let out = Command::new(BIN).arg("--config").arg(&cfg).stdin(Stdio::null()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "start with {path}: {err}");
        eprintln!("{path}: refused by check and start ({:.2} s): {}", started.elapsed().as_secs_f64(), err.trim());
    }
}

/// A read-only directory (a container's config mount): refused with
/// "read-only file system" and what to do. As root (who may write any
/// mode), a read-only bind mount in a mount namespace of its own; else a
/// directory of mode 0555.
#[test]
fn a_read_only_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let cfg = config_with(&ro, &[nowhere()], "access_log = \"access.log\"\n");
    let root = rustix::process::geteuid().is_root();
    let out = if root {
        let Some(unshare) = external_tool(&["/usr/bin/unshare", "/bin/unshare"], "unshare") else { return };
        let script =
            "mount --bind \"$1\" \"$1\" && mount -o remount,bind,ro \"$1\" && exec \"$2\" check --config \"$3\"";
        Command::new(unshare).args(["-m", "sh", "-c", script, "sh"]).arg(&ro).arg(BIN).arg(&cfg).output().unwrap()
    } else {
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        Command::new(BIN).arg("check").arg("--config").arg(&cfg).output().unwrap()
    };
    let err = String::from_utf8_lossy(&out.stderr);
    let want =
        if root { "read-only file system (in a container, mount a writable volume" } else { "permission denied" };
    assert!(out.status.code() == Some(1) && err.contains("listener[0].access_log") && err.contains(want), "{err}");
    eprintln!("read-only directory: {}", err.trim());
}

/// Finding 4: the access log turns into a FIFO at run time (moved away,
/// `mkfifo` in its place). SIGUSR1 does not block on it: it is refused,
/// shown failing in /status with its reason, lines are counted lost by
/// reason in /metrics, clients are served. A regular file in its place and
/// SIGUSR1 again: the next clients' lines are in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_in_place_of_the_log_is_refused_and_a_file_after_it_gets_the_lines() {
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let cfg = config_with(dir.path(), &[echo.addr], "access_log = \"access.log\"\n");
    let lb = Proc::lb(&cfg);
    let (addr, admin) = (lb.listener_addr().await, lb.admin_addr().await);
    round_trip(addr).await.unwrap();
    eventually("the first line, in a file ucp-lb made", || lines(&log).len() == 1).await;
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & !0o640, 0, "made with mode 0640 (less the umask): {mode:o}");

    std::fs::rename(&log, dir.path().join("access.log.1")).unwrap();
    mkfifo(&log);
    lb.signal("USR1");
    let failing = eventually_some_async("the FIFO refused in /status", || async {
        Some(destination(&status(admin).await, "access.log")).filter(|d| d["state"] == "failing")
    })
    .await;
    assert_eq!(failing["reason"], "not_regular_file", "{failing}");
    assert!(failing["last_error"].as_str().unwrap_or("").contains("is a FIFO (named pipe)"), "{failing}");
    let page = http_raw(admin, "GET", "/", None).await;
    assert!(page.contains("<h2 id=access-log>") && page.contains("is a FIFO (named pipe)"), "the page shows it");
    for _ in 0..20 {
        within("a round trip while the log is refused", round_trip(addr)).await.unwrap();
    }
    let lost = format!(
        "ucp_lb_access_log_lines_total{{log=\"{}\",result=\"dropped\",reason=\"not_regular_file\"}} ",
        log.display()
    );
    let found = poll_for(DEADLINE, || async { (metric(admin, &lost).await == Some(20.0)).then_some(()) }).await;
    let m = http_raw(admin, "GET", "/metrics", None).await;
    assert!(
        found.is_some(),
        "20 lines lost by reason, in:\n{}",
        m.lines().filter(|l| l.contains("access_log")).collect::<Vec<_>>().join("\n")
    );
    let writable = format!("ucp_lb_access_log_writable{{log=\"{}\"}} ", log.display());
    assert_eq!(metric(admin, &writable).await, Some(0.0));
    lb.wait_for_line("access log: cannot write").await;
    let said = lb.text().matches("access log: cannot write").count();
    assert_eq!(said, 1, "said once for the episode, not per line:\n{}", lb.text());

    std::fs::remove_file(&log).unwrap();
    std::fs::write(&log, "").unwrap();
    lb.signal("USR1");
    let signalled = Instant::now();
    // The next clients, one after another, until one's line is in the new
    // file (each a round trip: no sleep).
    let mut clients = 0;
    while lines(&log).is_empty() {
        assert!(signalled.elapsed() < DEADLINE, "no line in the new file {DEADLINE:?} after SIGUSR1");
        within("a round trip after SIGUSR1", round_trip(addr)).await.unwrap();
        clients += 1;
    }
    let took = signalled.elapsed();
    eprintln!(
        "FIFO then file: the new file had its first line {:.3} s after SIGUSR1 ({clients} clients)",
        took.as_secs_f64()
    );
    assert!(lines(&log).iter().all(|l| l.contains(" client_closed ")), "{:?}", lines(&log));
    let ok = destination(&status(admin).await, "access.log");
    assert_eq!(ok["state"], "ok", "{ok}");
    assert_eq!(metric(admin, &writable).await, Some(1.0));
    lb.wait_for_line("access log: writing again").await;
}

/// A reload that changes `access_log` closes the old file and writes the
/// next lines to the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_path_writes_to_the_new_one() {
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let cfg = config_with(dir.path(), &[echo.addr], "access_log = \"a.log\"\n");
    let lb = Proc::lb(&cfg);
    let (addr, admin) = (lb.listener_addr().await, lb.admin_addr().await);
    for _ in 0..5 {
        round_trip(addr).await.unwrap();
    }
    eventually("5 lines in a.log", || lines(&a).len() == 5).await;
    let holds = |p: &Path| {
        std::fs::read_dir(format!("/proc/{}/fd", lb.child.id()))
            .map(|d| d.filter_map(Result::ok).any(|f| std::fs::read_link(f.path()).is_ok_and(|t| t == p)))
            .unwrap_or(false)
    };
    assert!(holds(&a), "a.log is open");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("a.log", "b.log");
    std::fs::write(&cfg, text).unwrap();
    lb.signal("HUP");
    eventually_async("generation 2", || async { status(admin).await["generation"] == 2 }).await;
    eventually("a.log closed", || !holds(&a)).await;
    for _ in 0..5 {
        round_trip(addr).await.unwrap();
    }
    eventually("5 lines in b.log", || lines(&b).len() == 5).await;
    assert_eq!(lines(&a).len(), 5, "a.log got nothing more");
    let st = status(admin).await;
    assert_eq!(
        (destination(&st, "b.log")["state"].as_str(), destination(&st, "a.log")["state"].as_str()),
        (Some("ok"), Some("closed"))
    );
}

/// Listener A logs to stdout, a pipe nobody reads (as a stuck log
/// collector would be); listener B to a file. Once the pipe is full, A's
/// writer blocks: /status says "stalled", A's clients are served, A's
/// lines past its queue are dropped and counted as `queue_full`, and B's
/// lines reach B's file all the while. (A's lines wait in its queue,
/// 4,096, and in the batch its writer holds, up to 1,024: 6,000 more
/// clients overflow them.) SIGUSR1 then gives A's log a new thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_log_stops_neither_traffic_nor_another_listeners_log() {
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let b_log = dir.path().join("b.log");
    let cfg = dir.path().join("lb.toml");
    let listener = |log: &str| format!("[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = \"{log}\"\n");
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}{}[pool.p]\nservers = [\"{}\"]\n",
        listener("stdout"),
        listener("b.log"),
        echo.addr
    );
    std::fs::write(&cfg, toml).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // Held, never read: the pipe fills (64 KiB) and stdout blocks.
    let _stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let lb = Proc { child, lines: Default::default() };
    let sink = lb.lines.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let admin = lb.admin_addr().await;
    let st = eventually_some_async("listeners", || async {
        let st = status(admin).await;
        (st["listeners"].as_array().map_or(0, Vec::len) == 2).then_some(st)
    })
    .await;
    let addrs: Vec<SocketAddr> =
        st["listeners"].as_array().unwrap().iter().map(|l| l["local"].as_str().unwrap().parse().unwrap()).collect();
    let (a, b) = (addrs[0], addrs[1]);
    // Enough lines to fill the pipe (600 at about 170 bytes a line > 64 KiB).
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        tasks.push(tokio::spawn(async move {
            for _ in 0..150 {
                within("a round trip on A", round_trip(a)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stalled = eventually_some_async("stdout stalled in /status", || async {
        Some(destination(&status(admin).await, "stdout")).filter(|d| d["state"] == "stalled")
    })
    .await;
    eprintln!("stdout into a full pipe: stalled after {:.1} s: {stalled}", started.elapsed().as_secs_f64());
    for _ in 0..50 {
        within("a round trip on B", round_trip(b)).await.unwrap();
    }
    eventually("B's 50 lines in its file while A's log is stalled", || lines(&b_log).len() == 50).await;
    // Past A's queue (4,096): dropped and counted, clients served.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        tasks.push(tokio::spawn(async move {
            for _ in 0..1_500 {
                within("a round trip on A while its log is stalled", round_trip(a)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let full = "ucp_lb_access_log_lines_total{log=\"stdout\",result=\"dropped\",reason=\"queue_full\"} ";
    eventually_async("A's lines past its queue dropped", || async { metric(admin, full).await.unwrap_or(0.0) >= 1.0 })
        .await;
    eprintln!(
        "stalled stdout: of A's 6,600 lines, {} dropped (queue_full); B wrote {} lines meanwhile; stdout: {}",
        metric(admin, full).await.unwrap_or(0.0),
        lines(&b_log).len(),
        destination(&status(admin).await, "stdout")
    );
    lb.wait_for_line("its writer is behind or blocked").await;
    assert_eq!(metric(admin, "ucp_lb_access_log_writable{log=\"stdout\"} ").await, Some(0.0));
    // SIGUSR1 gives the blocked destination a new thread (the blocked one
    // ends when its write returns).
    lb.signal("USR1");
    lb.wait_for_line("a new thread takes over").await;
    within("a round trip after SIGUSR1", round_trip(a)).await.unwrap();
}

/// `[defaults]`' bad access_log_format is one error under its own key, not
/// one per listener; two listeners writing one file in two formats get a
/// warning.
#[test]
fn defaults_are_reported_once_and_mixed_formats_are_warned() {
    let listener = "[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n";
    let pool = "[pool.p]\nservers = [\"127.0.0.1:9\"]\n";
    let bad = format!("[defaults]\naccess_log = \"a.log\"\naccess_log_format = \"$nope\"\n{listener}{listener}{pool}");
    let errors = ucp_lb::config::parse(&bad, "lb.toml").unwrap_err().to_string();
    assert_eq!(errors.matches("access_log_format").count(), 1, "{errors}");
    assert!(errors.starts_with("lb.toml:3:21: defaults.access_log_format: "), "{errors}");
    let mixed = format!("[defaults]\naccess_log = \"a.log\"\n{listener}{listener}access_log_format = \"json\"\n{pool}");
    let config = ucp_lb::config::parse(&mixed, "lb.toml").unwrap();
    let warnings: Vec<String> = config.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        warnings.iter().any(|w| w.contains("listener[1] writes a.log in another access_log_format than listener[0]")),
        "{warnings:?}"
    );
}
