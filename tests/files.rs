//! Nothing on the file system can stop or fool the balancer: a FIFO, a
//! device or an oversized file where lb.toml or the token file was is
//! refused by name while clients are served and /healthz answers; a bad
//! edit reverted clears the reload-failure gauge.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use common::*;

fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

async fn status(admin: SocketAddr) -> serde_json::Value {
    serde_json::from_str(body(&http_raw(admin, "GET", "/status", None).await)).expect("/status is JSON")
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Replaces `path` by `make(tmp)` through a rename, as editors and
/// ConfigMaps replace files.
fn swap_in(path: &Path, make: impl FnOnce(&Path)) {
    let tmp = path.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    make(&tmp);
    std::fs::rename(&tmp, path).unwrap();
}

fn fifo(p: &Path) {
    rustix::fs::mkfifoat(rustix::fs::CWD, p, rustix::fs::Mode::from_raw_mode(0o644)).unwrap();
}

/// Waits until the last reload failed with a message holding `says`.
async fn refused(admin: SocketAddr, says: &str) {
    eventually_async(&format!("a reload refused with {says:?}"), || async {
        let st = status(admin).await;
        st["reload"]["last_ok"] == false && st["reload"]["last_error"].as_str().is_some_and(|e| e.contains(says))
    })
    .await;
}

struct Traffic {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    /// /healthz answers (each a 200 within the test deadline).
    healthz: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Clients through `addr` and /healthz polled on `admin`, until stopped.
fn traffic(addr: SocketAddr, admin: SocketAddr) -> Traffic {
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed, healthz) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    {
        let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Relaxed) {
                match tokio::time::timeout(DEADLINE, round_trip(addr)).await {
                    Ok(Ok(())) => served.fetch_add(1, Relaxed),
                    _ => failed.fetch_add(1, Relaxed),
                };
                // Not synchronisation: paces the client load.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    {
        let (stop, healthz) = (stop.clone(), healthz.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Relaxed) {
                // A blocked process never answers: the deadline catches it.
                let answer = within("/healthz answers", http_raw(admin, "GET", "/healthz", None)).await;
                assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
                healthz.fetch_add(1, Relaxed);
                // Not synchronisation: paces the /healthz polling.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    Traffic { stop, served, failed, healthz, tasks }
}

impl Traffic {
    async fn end(self) -> (u64, u64, u64) {
        self.stop.store(true, Relaxed);
        for t in self.tasks {
            within("traffic stops", t).await.unwrap();
        }
        (self.served.load(Relaxed), self.failed.load(Relaxed), self.healthz.load(Relaxed))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_a_device_or_a_huge_file_in_place_of_lb_toml_is_refused_while_traffic_flows() {
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    let good = one_pool(&[echo.addr], "");
    std::fs::write(&path, &good).unwrap();
    let mut lb = Proc::lb(&path);
    let (addr, admin) = (lb.listener_addr().await, lb.admin_addr().await);
    round_trip(addr).await.unwrap();
    let pid = lb.child.id();
    let (rss0, fds0) = (rss_kib(pid), fds(pid));
    let load = traffic(addr, admin);

    // A FIFO nobody writes: reading it would block for ever.
    swap_in(&path, fifo);
    refused(admin, "is a FIFO (named pipe), not a regular file").await;
    // /dev/zero: reading it would never end.
    swap_in(&path, |p| std::os::unix::fs::symlink("/dev/zero", p).unwrap());
    refused(admin, "is a character device, not a regular file").await;
    // 2 MiB of valid TOML (comments): refused by size, nothing read past 1 MiB.
    swap_in(&path, |p| std::fs::write(p, format!("{good}{}", "# padding padding padding\n".repeat(80_000))).unwrap());
    refused(admin, "is larger than 1024 KiB").await;

    let (served, failed, healthz) = load.end().await;
    let (rss1, fds1) = (rss_kib(pid), fds(pid));
    eprintln!(
        "FIFO, /dev/zero and 2 MiB in place of lb.toml: {served} clients served, {failed} failed; /healthz answered {healthz} times; \
         RSS {rss0} -> {rss1} KiB, descriptors {fds0} -> {fds1}"
    );
    assert_eq!(failed, 0, "no client missed");
    assert!(served > 0 && healthz > 0, "clients and /healthz were served meanwhile");
    round_trip(addr).await.unwrap();
    lb.signal("TERM");
    assert_eq!(lb.exit_code().await, Some(0), "SIGTERM still stops it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_or_dev_zero_as_token_file_is_refused_and_changes_nothing() {
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    std::fs::write(&path, one_pool(&[echo.addr], "")).unwrap();
    let mut lb = Proc::lb(&path);
    let (addr, admin) = (lb.listener_addr().await, lb.admin_addr().await);
    let load = traffic(addr, admin);
    let token: PathBuf = dir.path().join("token");
    fifo(&token);
    std::fs::write(&path, with_admin(&one_pool(&[echo.addr], ""), Some(&token))).unwrap();
    refused(admin, "is a FIFO (named pipe), not a regular file").await;
    std::fs::write(&path, with_admin(&one_pool(&[echo.addr], ""), Some(Path::new("/dev/zero")))).unwrap();
    refused(admin, "/dev/zero is a character device").await;
    let (served, failed, healthz) = load.end().await;
    assert_eq!(failed, 0);
    assert!(served > 0 && healthz > 0, "clients and /healthz were served meanwhile");
    // Still no token: POSTs stay off.
    assert!(http_raw(admin, "POST", "/reload", Some("x")).await.starts_with("HTTP/1.1 403"));
    lb.signal("TERM");
    assert_eq!(lb.exit_code().await, Some(0));
}

/// A bad edit rejected (gauge 0), then the exact running text restored: the
/// file and the running config agree, so the failure is cleared (gauge 1).
#[tokio::test]
async fn reverting_a_bad_edit_clears_the_reload_failure() {
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    let good = one_pool(&[echo.addr], "");
    std::fs::write(&path, &good).unwrap();
    let lb = Proc::lb(&path);
    let admin = lb.admin_addr().await;
    lb.wait_for_line("listening bind=").await;
    let gauge = || async move {
        let m = http_raw(admin, "GET", "/metrics", None).await;
        m.lines().find(|l| l.starts_with("ucp_lb_config_last_reload_successful ")).map(|l| l.ends_with(" 1"))
    };
    assert_eq!(gauge().await, Some(true));
    std::fs::write(&path, format!("{good}\nbalance = \"fastest\"\n")).unwrap();
    eventually_async("the bad edit rejected", || async { gauge().await == Some(false) }).await;
    std::fs::write(&path, &good).unwrap();
    eventually_async("the failure cleared", || async { gauge().await == Some(true) }).await;
    let st = status(admin).await;
    assert_eq!(st["reload"]["last_error"], serde_json::Value::Null);
    assert_eq!(st["reload"]["failures"], 1, "the failure stays counted");
    lb.wait_for_line("matches the running config again").await;
}
