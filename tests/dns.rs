//! Host names: every address a name resolves to is a server, answers are
//! followed every `resolve_interval`, and a failed lookup keeps the last good
//! addresses. The LB runs in its own mount namespace with a hosts file the
//! test rewrites (the C library's real resolver reads it; nothing is mocked).
//! Needs root and `unshare`: skipped without them, except under CI=true.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use common::*;
use tokio::net::TcpListener;

fn namespaces_work() -> bool {
    let ok = Command::new("unshare")
        .args(["-m", "sh", "-c", "mount --bind /etc/hostname /etc/hostname"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "unshare -m must work under CI=true (root)");
        eprintln!("skipped: needs root and unshare -m");
    }
    ok
}

struct Lb {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Drop for Lb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn name_answers_are_followed_and_a_failed_lookup_keeps_the_last_ones() {
    if !namespaces_work() {
        return;
    }
    // Two backends on one port, at two loopback addresses.
    let a = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = a.local_addr().unwrap().port();
    let b = TcpListener::bind(("127.0.0.3", port)).await.unwrap();
    let (a, b) = (Echo::on(a), Echo::on(b));

    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&hosts, "127.0.0.2 mgr-a\n").unwrap();
    // Names not in the hosts file fail fast: the only name server refuses.
    std::fs::write(&resolv, "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n").unwrap();
    let cfg = dir.path().join("lb.toml");
    let with_server = |server: &str| {
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n[pool.p]\nservers = [\"{server}\"]\nresolve_interval = \"100ms\"\n"
        )
    };
    // Start without any name: the name comes with a reload, and must get
    // its own re-resolution schedule at once.
    std::fs::write(&cfg, with_server(&format!("127.0.0.2:{port}"))).unwrap();
    let script =
        "mount --bind \"$1\" /etc/hosts && mount --bind \"$2\" /etc/resolv.conf && exec \"$0\" --config \"$3\"";
    let mut child = Command::new("unshare")
        .args(["-m", "sh", "-c", script, env!("CARGO_BIN_EXE_ucp-lb")])
        .arg(&hosts)
        .arg(&resolv)
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    let lb = Lb { child, log };
    let text = || lb.log.lock().unwrap().clone();
    eventually("listening", || text().contains("listening bind=")).await;
    let line = text().lines().find(|l| l.contains("listening bind=")).unwrap().to_owned();
    let at = line.find("local=").unwrap() + 6;
    let addr: SocketAddr = line[at..].split_whitespace().next().unwrap().parse().unwrap();

    round_trip(addr).await.unwrap();
    std::fs::write(&cfg, with_server(&format!("mgr-a:{port}"))).unwrap();
    eventually("reloaded", || text().contains("config reloaded")).await;
    for _ in 0..5 {
        round_trip(addr).await.unwrap();
    }
    assert_eq!((a.count(), b.count()), (6, 0));

    // The name moves: new clients follow it.
    std::fs::write(&hosts, "127.0.0.3 mgr-a\n").unwrap();
    let start = std::time::Instant::now();
    while b.count() == 0 {
        assert!(start.elapsed() < DEADLINE, "new address never used");
        round_trip(addr).await.unwrap();
    }
    let a_then = a.count();
    for _ in 0..5 {
        round_trip(addr).await.unwrap();
    }
    assert_eq!(a.count(), a_then, "the old address gets no new clients");

    // Two addresses: both are servers.
    std::fs::write(&hosts, "127.0.0.2 mgr-a\n127.0.0.3 mgr-a\n").unwrap();
    let start = std::time::Instant::now();
    while a.count() == a_then {
        assert!(start.elapsed() < DEADLINE, "second address never used");
        round_trip(addr).await.unwrap();
    }

    // The name disappears: the lookup fails, the last addresses stay.
    std::fs::write(&hosts, "127.0.0.9 someone-else\n").unwrap();
    eventually("failed lookup logged", || text().contains("cannot resolve server name, keeping the last addresses"))
        .await;
    let (a0, b0) = (a.count(), b.count());
    for _ in 0..10 {
        round_trip(addr).await.expect("still served by the last good addresses");
    }
    assert!(a.count() > a0 && b.count() > b0, "both last addresses still used");
}
