//! A signal is never fatal: SIGHUP and SIGUSR1 at each point of a start
//! and of a take-over (while the config is read, while the first probes
//! run, while the state is handed over) leave the process alive, and a
//! SIGHUP that came during the start is applied once the balancer runs.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use common::*;
use tokio::net::TcpStream;

/// A server that accepts and never answers: an HTTP probe of it waits its
/// whole timeout, so the first probes of a start last that long.
async fn silent() -> SocketAddr {
    scripted(|s: TcpStream| async move {
        let _held = s;
        std::future::pending::<()>().await
    })
    .await
}

/// A config whose first probes last `timeout` (a silent server), with a
/// control socket in `dir` and `fail_timeout` as given (to see a reload).
fn config(dir: &Path, server: SocketAddr, fail_timeout: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"{}\"\n\
         [defaults]\nfail_timeout = \"{fail_timeout}\"\nshutdown_timeout = \"1s\"\n\
         [[listener]]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         [pool.p]\nservers = [\"{server}\"]\n\
         [pool.p.health]\nkind = \"http\"\npath = \"/_ping\"\ntimeout = \"3s\"\ninterval = \"30s\"\n",
        dir.join("ctl.sock").display()
    )
}

/// The running config's generation, from /status.
async fn generation(admin: SocketAddr) -> Option<u64> {
    let answer = http_raw(admin, "GET", "/status", None).await;
    let body = answer.split("\r\n\r\n").nth(1)?;
    serde_json::from_str::<serde_json::Value>(body).ok()?["generation"].as_u64()
}

fn alive(p: &mut Proc) -> bool {
    p.child.try_wait().unwrap().is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hup_and_usr1_while_the_first_probes_run_are_kept_and_applied_after() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    let server = silent().await;
    std::fs::write(&path, config(dir.path(), server, "30s")).unwrap();
    let mut p = Proc::lb(&path);
    // The control socket is made just before the start, whose first probes
    // then wait 3 s on the silent server.
    p.wait_for_line("control socket up").await;
    std::fs::write(&path, config(dir.path(), server, "31s")).unwrap();
    p.signal("HUP");
    p.signal("USR1");
    assert!(alive(&mut p), "killed by a signal during the start:\n{}", p.text());
    let admin = p.admin_addr().await;
    p.wait_for_line("reloading the config").await;
    eventually_some_async("the reload taken after the start", || async { generation(admin).await.filter(|&g| g >= 2) })
        .await;
    assert!(alive(&mut p), "{}", p.text());
    p.signal("TERM");
    assert_eq!(p.exit_code().await, Some(0), "{}", p.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hup_usr1_and_term_while_the_config_is_read_are_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    let echo = Echo::start().await;
    std::fs::write(&path, one_pool(&[echo.addr], "")).unwrap();
    // HUP and USR1 as soon as the process says it reads its config: it
    // lives, and serves.
    let mut p = Proc::lb(&path);
    p.wait_for_line("reading the config").await;
    for _ in 0..3 {
        p.signal("HUP");
        p.signal("USR1");
    }
    let lb = p.listener_addr().await;
    within("a client served", round_trip(lb)).await.unwrap();
    assert!(alive(&mut p), "{}", p.text());
    p.signal("TERM");
    assert_eq!(p.exit_code().await, Some(0), "{}", p.text());
    // TERM at the same point: a clean stop, exit 0, not death by signal.
    let mut p = Proc::lb(&path);
    p.wait_for_line("reading the config").await;
    p.signal("TERM");
    assert_eq!(p.exit_code().await, Some(0), "{}", p.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hup_and_usr1_during_a_take_over_leave_the_new_process_serving() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    let server = silent().await;
    std::fs::write(&path, config(dir.path(), server, "30s")).unwrap();
    let mut old = Proc::lb(&path);
    let admin = old.admin_addr().await;
    old.wait_for_line("control socket up").await;
    eventually_some_async("the old process serves", || async { generation(admin).await }).await;
    // The new process prepares its config (first probes: 3 s) after the
    // hand-over of the sockets and state: the signals land then.
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(&path).arg("--upgrade").env("RUST_LOG", "info");
    let mut new = Proc::spawn(cmd, false);
    new.wait_for_line("sockets and state received").await;
    new.signal("HUP");
    new.signal("USR1");
    assert_eq!(old.exit_code().await, Some(0), "the old process:\n{}", old.text());
    new.wait_for_line("SIGHUP: reloading the config").await;
    assert!(alive(&mut new), "{}", new.text());
    eventually_some_async("the new process answers on the admin port", || async { generation(admin).await }).await;
    new.signal("TERM");
    assert_eq!(new.exit_code().await, Some(0), "{}", new.text());
}

/// Standard error is a pipe nobody reads (a supervisor gone wrong): once
/// its buffer is full, the process log's lines are dropped, and traffic
/// goes on. (The log was written on the runtime's threads: a full pipe
/// stopped every connection.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standard_error_nobody_reads_stops_no_traffic() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    let echo = Echo::start().await;
    std::fs::write(&path, one_pool(&[echo.addr], "")).unwrap();
    // One debug line per connection: 2,000 of them are far more than a
    // pipe's 64 KiB.
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "debug")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    // Killed when dropped, whatever happens below (a panic included).
    let p = Proc { child, lines: Default::default() };
    // Read only as far as the listener's address; never again after it.
    let (addr, _unread): (SocketAddr, _) = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(stderr.read_line(&mut line).unwrap() > 0, "ended before listening");
            if let Some(at) = line.find("local=") {
                let addr = line[at + 6..].split_whitespace().next().unwrap().to_owned();
                return (addr.parse().unwrap(), stderr);
            }
        }
    })
    .await
    .unwrap();
    within("2,000 clients served while nobody reads the log", async {
        for _ in 0..2000 {
            round_trip(addr).await.unwrap();
        }
    })
    .await;
    drop(p);
}

/// `--upgrade` with no control socket configured (`control_socket = ""`)
/// has nothing it could take over from: it starts as an ordinary start,
/// so `--upgrade` can stay in a unit's command (it was refused, with a
/// message about a running process that did not exist).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_without_a_control_socket_is_an_ordinary_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    let echo = Echo::start().await;
    let toml = one_pool(&[echo.addr], "").replacen("[admin]\n", "[admin]\ncontrol_socket = \"\"\n", 1);
    std::fs::write(&path, toml).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(&path).arg("--upgrade").env("RUST_LOG", "info");
    let mut p = Proc::spawn(cmd, false);
    p.wait_for_line("no process to take over from: starting").await;
    let lb = p.listener_addr().await;
    within("a client served", round_trip(lb)).await.unwrap();
    p.signal("TERM");
    assert_eq!(p.exit_code().await, Some(0), "{}", p.text());
}
