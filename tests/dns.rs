//! Host names: every address a name resolves to is a server, answers are
//! followed every `resolve_interval`, and a failed lookup keeps the last good
//! addresses. The LB runs in its own mount namespace with a hosts file the
//! test rewrites (the C library's real resolver reads it; nothing is mocked).
//! Needs root and `unshare`: skipped without them, except under CI=true.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use common::*;
use tokio::net::{TcpListener, TcpStream};

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

/// Starts ucp-lb in its own mount namespace, where `hosts` and `resolv`
/// are bind-mounted over /etc/hosts and /etc/resolv.conf (rewriting the
/// files in place changes what the C library's resolver answers).
fn lb_in_mount_ns(hosts: &Path, resolv: &Path, cfg: &Path) -> Proc {
    let script =
        "mount --bind \"$1\" /etc/hosts && mount --bind \"$2\" /etc/resolv.conf && exec \"$0\" --config \"$3\"";
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "sh", "-c", script, BIN]).arg(hosts).arg(resolv).arg(cfg).env("RUST_LOG", "info");
    Proc::spawn(cmd, false)
}

/// A temporary directory with a hosts file, a resolv.conf whose only name
/// server refuses (names not in the hosts file fail fast) and a config path.
fn name_files(hosts_text: &str) -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&hosts, hosts_text).unwrap();
    std::fs::write(&resolv, "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n").unwrap();
    let cfg = dir.path().join("lb.toml");
    (dir, hosts, resolv, cfg)
}

fn with_server(server: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n[pool.p]\nservers = [\"{server}\"]\nresolve_interval = \"100ms\"\n"
    )
}

#[tokio::test]
async fn name_answers_are_followed_and_a_failed_lookup_keeps_the_last_ones() {
    if !namespaces_work() {
        return;
    }
    // Two backends on one port, at two loopback addresses.
    // (Another test's socket may hold the port on 127.0.0.3: then another.)
    let (a, b, port) = 'pair: {
        for _ in 0..50 {
            let a = TcpListener::bind("127.0.0.2:0").await.unwrap();
            let port = a.local_addr().unwrap().port();
            if let Ok(b) = TcpListener::bind(("127.0.0.3", port)).await {
                break 'pair (a, b, port);
            }
        }
        panic!("no port free on both 127.0.0.2 and 127.0.0.3 in 50 tries");
    };
    let (a, b) = (Echo::on(a), Echo::on(b));

    let (_dir, hosts, resolv, cfg) = name_files("127.0.0.2 mgr-a\n");
    // Start without any name: the name comes with a reload, and must get
    // its own re-resolution schedule at once.
    std::fs::write(&cfg, with_server(&format!("127.0.0.2:{port}"))).unwrap();
    let lb = lb_in_mount_ns(&hosts, &resolv, &cfg);
    let text = || lb.text();
    let addr = lb.listener_addr().await;

    round_trip(addr).await.unwrap();
    std::fs::write(&cfg, with_server(&format!("mgr-a:{port}"))).unwrap();
    eventually("reloaded", || text().contains("config reloaded")).await;
    for _ in 0..5 {
        round_trip(addr).await.unwrap();
    }
    assert_eq!((a.count(), b.count()), (6, 0));

    // The name moves: new clients follow it.
    std::fs::write(&hosts, "127.0.0.3 mgr-a\n").unwrap();
    eventually_async("new address used", || async {
        round_trip(addr).await.unwrap();
        b.count() > 0
    })
    .await;
    let a_then = a.count();
    for _ in 0..5 {
        round_trip(addr).await.unwrap();
    }
    assert_eq!(a.count(), a_then, "the old address gets no new clients");

    // Two addresses: both are servers.
    std::fs::write(&hosts, "127.0.0.2 mgr-a\n127.0.0.3 mgr-a\n").unwrap();
    eventually_async("second address used", || async {
        round_trip(addr).await.unwrap();
        a.count() > a_then
    })
    .await;

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

/// Under load: clients connect all the time and long streams stay open while
/// the name's answers change twelve times. Every short connection is served,
/// new clients go only to the current answers (once the change is seen), and
/// a stream to an address that left the answers is not cut.
#[tokio::test]
async fn answers_changing_under_load_lose_no_client_and_cut_no_stream() {
    if !namespaces_work() {
        return;
    }
    let first = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = first.local_addr().unwrap().port();
    let mut echoes = vec![Echo::on(first)];
    for ip in ["127.0.0.3", "127.0.0.4"] {
        echoes.push(Echo::on(TcpListener::bind((ip, port)).await.unwrap()));
    }
    let ip = |i: usize| format!("127.0.0.{}", i + 2);
    let hosts_for = |set: &[usize]| set.iter().map(|&i| format!("{} mgr\n", ip(i))).collect::<String>();

    let (_dir, hosts, resolv, cfg) = name_files(&hosts_for(&[0]));
    std::fs::write(&cfg, with_server(&format!("mgr:{port}"))).unwrap();
    let lb = lb_in_mount_ns(&hosts, &resolv, &cfg);
    let addr = lb.listener_addr().await;

    // Long streams, opened now (all to 127.0.0.2), echoing until the end.
    let stop = Arc::new(AtomicBool::new(false));
    let mut streams = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        echo_once(&mut s).await.unwrap();
        let stop = stop.clone();
        streams.push(tokio::spawn(async move {
            let mut echoes = 0u64;
            while !stop.load(Relaxed) {
                echo_once(&mut s).await?;
                echoes += 1;
                // Not synchronisation: the stream's pace.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok::<u64, std::io::Error>(echoes)
        }));
    }
    // Short connections: 4 clients, one round trip every 4 ms each.
    let failed = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, failed) = (stop.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let mut took = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(4));
            while !stop.load(Relaxed) {
                tick.tick().await;
                let t = Instant::now();
                match tokio::time::timeout(DEADLINE, round_trip(addr)).await {
                    Ok(Ok(())) => took.push(t.elapsed()),
                    _ => {
                        failed.fetch_add(1, Relaxed);
                    }
                }
            }
            took
        }));
    }

    let answers: [&[usize]; 12] =
        [&[1], &[0, 2], &[2], &[0, 1, 2], &[1], &[0], &[1, 2], &[2], &[0, 1], &[0], &[2, 0], &[1]];
    let moves = |t: &str| t.matches("server name resolves to new addresses").count();
    let started = Instant::now();
    for set in answers {
        let seen = moves(&lb.text());
        std::fs::write(&hosts, hosts_for(set)).unwrap();
        eventually("the LB sees the new answers", || moves(&lb.text()) > seen).await;
        // Every address of the answer gets 20 new clients (by then no
        // connect chosen before the change is still on its way) ...
        let at: Vec<usize> = echoes.iter().map(Echo::count).collect();
        eventually("every current address used", || set.iter().all(|&i| echoes[i].count() >= at[i] + 20)).await;
        // ... and from then on the others get none.
        let others: Vec<usize> = (0..3).filter(|i| !set.contains(i)).collect();
        let before: Vec<usize> = others.iter().map(|&i| echoes[i].count()).collect();
        let at: Vec<usize> = echoes.iter().map(Echo::count).collect();
        eventually("more clients served", || set.iter().all(|&i| echoes[i].count() >= at[i] + 20)).await;
        let after: Vec<usize> = others.iter().map(|&i| echoes[i].count()).collect();
        assert_eq!(before, after, "addresses {others:?} left the answers {set:?} but still got new clients");
    }
    let elapsed = started.elapsed();
    stop.store(true, Relaxed);
    let mut took = Vec::new();
    for c in clients {
        took.extend(within("client stops", c).await.unwrap());
    }
    let mut stream_echoes = 0;
    for s in streams {
        stream_echoes += within("stream stops", s).await.unwrap().expect("a long stream was cut by a name change");
    }
    took.sort();
    let pct = |p: f64| took[((took.len() - 1) as f64 * p) as usize];
    eprintln!(
        "12 answer changes in {:.1} s under load: {} short connections served, {} failed \
         (round trip p50 {:?}, p99 {:?}); 4 streams echoed {stream_echoes} times, none cut",
        elapsed.as_secs_f64(),
        took.len(),
        failed.load(Relaxed),
        pct(0.5),
        pct(0.99),
    );
    assert_eq!(failed.load(Relaxed), 0, "short connections failed while the answers changed");
    assert!(took.len() >= 12 * 40, "too few clients to call it load: {}", took.len());
}
