//! Hot reload never cuts a connection, keeps what stays, and rejects a bad
//! config whole; shutdown lets connections finish.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use common::standin::{Manager, TestCa};
use common::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One or two listeners on port 0 (kept across reloads as the first and
/// second listener bound to 127.0.0.1:0) for pool "p" with `servers`.
fn config(listeners: usize, servers: &[SocketAddr], extra: &str) -> String {
    let mut s = String::from("[admin]\nlisten = \"127.0.0.1:0\"\n");
    for _ in 0..listeners {
        s.push_str("[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n");
    }
    let list: Vec<String> = servers.iter().map(|a| format!("\"{a}\"")).collect();
    s.push_str(&format!("[pool.p]\nservers = [{}]\n{extra}\n", list.join(", ")));
    s
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// A stream that sends a counter line every 100 ms through an echo server
/// and checks every line comes back, in order, none missing.
async fn counter_stream(addr: SocketAddr, stop: Arc<AtomicBool>) -> Result<u64, String> {
    let s = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let (r, mut w) = s.into_split();
    let mut lines = BufReader::new(r).lines();
    let mut n = 0u64;
    while !stop.load(Relaxed) {
        w.write_all(format!("{n}\n").as_bytes()).await.map_err(|e| format!("write {n}: {e}"))?;
        let line = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .map_err(|_| format!("no echo of {n}"))?
            .map_err(|e| format!("read {n}: {e}"))?
            .ok_or_else(|| format!("cut after {n}"))?;
        if line != n.to_string() {
            return Err(format!("expected {n}, got {line}"));
        }
        n += 1;
        // Not synchronisation: the stream's pace, a line every 100 ms.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.shutdown().await.map_err(|e| format!("shutdown: {e}"))?;
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_cut_no_stream_and_fail_no_connect() {
    let (a, b) = (Echo::start().await, Echo::start().await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    // "big": two listeners, servers a and b; "small": one listener, server a.
    let big = config(2, &[a.addr, b.addr], "");
    let small = config(1, &[a.addr], "");
    write(&path, &big);
    let lb = start_lb_file(&path).await;
    let (l1, l2) = (lb.listener_addrs()[0], lb.listener_addrs()[1]);

    // 50 long-lived streams, half through the listener that will go away;
    // round robin puts some on b, the server that will go away.
    let stop = Arc::new(AtomicBool::new(false));
    let mut streams = Vec::new();
    for i in 0..50 {
        let addr = if i % 2 == 0 { l1 } else { l2 };
        streams.push(tokio::spawn(counter_stream(addr, stop.clone())));
    }
    eventually("streams open", || a.count() + b.count() >= 50).await;

    // A steady stream of new connections to the listener that stays:
    // about 300 a second, bounded to 20 s.
    let failed = Arc::new(AtomicU64::new(0));
    let made = Arc::new(AtomicU64::new(0));
    let load_stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (failed, made, load_stop) = (failed.clone(), made.clone(), load_stop.clone());
        tokio::spawn(async move {
            let start = std::time::Instant::now();
            let mut tick = tokio::time::interval(Duration::from_micros(3333));
            let mut clients = Vec::new();
            while !load_stop.load(Relaxed) && start.elapsed() < Duration::from_secs(20) {
                tick.tick().await;
                let (failed, made) = (failed.clone(), made.clone());
                clients.push(tokio::spawn(async move {
                    match tokio::time::timeout(DEADLINE, round_trip(l1)).await {
                        Ok(Ok(())) => made.fetch_add(1, Relaxed),
                        _ => failed.fetch_add(1, Relaxed),
                    };
                }));
            }
            clients
        })
    };

    for i in 0..20 {
        write(&path, if i % 2 == 0 { &small } else { &big });
        lb.reload().await.unwrap_or_else(|e| panic!("reload {i}: {e}"));
        // Not synchronisation: spreads the reloads over the load.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    load_stop.store(true, Relaxed);
    // Every client the load started has finished (each bounded by its own
    // deadline), so a failure still in flight is counted too.
    let clients = load.await.unwrap();
    let started = clients.len() as u64;
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(made.load(Relaxed) + failed.load(Relaxed), started, "every client counted");
    stop.store(true, Relaxed);
    for (i, s) in streams.into_iter().enumerate() {
        let sent = within("stream", s).await.unwrap().unwrap_or_else(|e| panic!("stream {i}: {e}"));
        assert!(sent >= 20, "stream {i} ran through the reloads: {sent} lines");
    }
    assert_eq!(failed.load(Relaxed), 0, "failed connects ({} made)", made.load(Relaxed));
    assert!(made.load(Relaxed) >= 300, "load ran: {}", made.load(Relaxed));
    let st = lb.reload_status();
    assert_eq!((st.successes, st.failures), (20, 0));
}

#[tokio::test]
async fn after_a_reload_new_clients_reach_the_added_server_and_never_the_removed_one() {
    let (a, b) = (Echo::start().await, Echo::start().await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    write(&path, &config(1, &[a.addr], ""));
    let lb = start_lb_file(&path).await;
    let addr = lb.listener_addrs()[0];
    // A stream to a, open across both reloads.
    let mut held = TcpStream::connect(addr).await.unwrap();
    echo_once(&mut held).await.unwrap();

    write(&path, &config(1, &[b.addr], ""));
    lb.reload().await.unwrap();
    let a0 = a.count();
    for _ in 0..20 {
        round_trip(addr).await.unwrap();
    }
    assert_eq!(a.count(), a0, "the removed server gets no new client");
    assert_eq!(b.count(), 20, "the added server gets them all");
    echo_once(&mut held).await.expect("the removed server's connection goes on");
    assert_eq!(lb.listener_addrs(), [addr], "same socket");
}

#[tokio::test]
async fn health_and_passive_state_survive_a_reload_that_does_not_touch_the_server() {
    let ca = TestCa::new("test CA").unwrap();
    let m1 = Manager::start("manager-01", loopback(), &ca).await.unwrap();
    let m2 = Manager::start("manager-02", loopback(), &ca).await.unwrap();
    let m3 = Manager::start("manager-03", loopback(), &ca).await.unwrap();
    m2.set_healthy(false);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    let check = "[pool.p.health]\ninterval = \"100ms\"\ntimeout = \"1s\"\nrise = 2\nfall = 2\n";
    write(&path, &config(1, &[m1.addr, m2.addr], check));
    let lb = start_lb_file(&path).await;
    eventually("m2 down", || server(&lb, m2.addr).check.is_some_and(|c| c.state == "down")).await;
    let probes_before = server(&lb, m2.addr).check.unwrap().probes;

    // Add a server; m2 is untouched and must stay down, with the same check.
    write(&path, &config(1, &[m1.addr, m2.addr, m3.addr], check));
    lb.reload().await.unwrap();
    let c = server(&lb, m2.addr).check.unwrap();
    assert_eq!(c.state, "down", "no flap back to up or unknown");
    assert!(c.probes >= probes_before, "the same check goes on");
    assert_eq!(server(&lb, m3.addr).check.unwrap().state, "up", "the added server was probed before the swap");
}

#[tokio::test]
async fn passive_ejection_survives_a_reload() {
    let a = Echo::start().await;
    let refusing = refusing_addr();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    let keys = "max_fails = 1\nfail_timeout = \"1h\"";
    write(&path, &config(1, &[a.addr, refusing], keys));
    let lb = start_lb_file(&path).await;
    for _ in 0..4 {
        round_trip(lb.listener_addrs()[0]).await.unwrap();
    }
    assert!(server(&lb, refusing).ejected);
    write(&path, &config(1, &[a.addr, refusing], &format!("{keys}\nconnect_timeout = \"2s\"")));
    lb.reload().await.unwrap();
    assert!(server(&lb, refusing).ejected, "still ejected after the reload");
}

#[tokio::test]
async fn a_bad_config_is_rejected_whole_and_the_old_one_keeps_serving() {
    let a = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    let good = config(1, &[a.addr], "");
    write(&path, &good);
    let lb = start_lb_file(&path).await;
    let addr = lb.listener_addrs()[0];
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let in_use = format!("{good}[[listener]]\nbind = \"{}\"\npool = \"p\"\n", taken.local_addr().unwrap());
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("syntax error", Some(format!("{good}[pool.q\n")), "lb.toml:"),
        ("unknown key", Some(format!("{good}surprise = 1\n")), "pool.p.surprise: unknown field"),
        ("port in use", Some(in_use), "listener[1].bind: cannot listen on"),
        ("missing file", None, "cannot read the config file"),
        ("empty file", Some(String::new()), "the config is empty"),
        ("half-written file", Some(good[..good.len() / 2].to_owned()), "lb.toml:"),
    ];
    for (i, (name, text, want)) in cases.into_iter().enumerate() {
        match &text {
            Some(t) => write(&path, t),
            None => std::fs::remove_file(&path).unwrap(),
        }
        let err = lb.reload().await.expect_err(name).to_string();
        assert!(err.contains(want), "{name}: {err}");
        let st = lb.reload_status();
        assert_eq!((st.failures, st.successes, st.last_ok), (i as u64 + 1, 0, Some(false)), "{name}");
        assert!(st.last_error.unwrap().contains(want), "{name}");
        assert_eq!(st.generation, 1, "{name}: nothing changed");
        round_trip(addr).await.unwrap_or_else(|e| panic!("{name}: old config stopped serving: {e}"));
        assert_eq!(lb.listener_addrs(), [addr], "{name}: no listener added or lost");
    }
    write(&path, &good);
    assert_eq!(lb.reload().await.unwrap(), 2);
    assert_eq!(lb.reload_status().last_error, None);
}

/// The binary on `path`, with its first listener's address.
async fn binary(path: &Path) -> (Proc, SocketAddr) {
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("--config").arg(path).env("RUST_LOG", "info");
    let p = Proc::spawn(cmd, false);
    let addr = p.listener_addr().await;
    (p, addr)
}

/// Waits for the `n`th line containing `needle`.
async fn nth_line(p: &Proc, needle: &str, n: usize) {
    eventually(&format!("{n} x {needle:?}"), || p.text().matches(needle).count() >= n).await;
}

#[tokio::test]
async fn replacing_the_file_by_rename_reloads_it() {
    let (a, b) = (Echo::start().await, Echo::start().await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    write(&path, &config(1, &[a.addr], ""));
    let (lb, addr) = binary(&path).await;
    round_trip(addr).await.unwrap();
    // As editors save: a new file, renamed over the old one.
    let tmp = dir.path().join(".lb.toml.swp");
    write(&tmp, &config(1, &[b.addr], ""));
    std::fs::rename(&tmp, &path).unwrap();
    nth_line(&lb, "config reloaded", 1).await;
    let b0 = b.count();
    for _ in 0..5 {
        round_trip(addr).await.unwrap();
    }
    assert_eq!(b.count(), b0 + 5);
}

#[tokio::test]
async fn a_configmap_symlink_swap_reloads_it() {
    let (a, b) = (Echo::start().await, Echo::start().await);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Kubernetes' layout: lb.toml -> ..data/lb.toml, ..data -> ..v1
    std::fs::create_dir(d.join("..v1")).unwrap();
    write(&d.join("..v1/lb.toml"), &config(1, &[a.addr], ""));
    std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/lb.toml", d.join("lb.toml")).unwrap();
    let (lb, addr) = binary(&d.join("lb.toml")).await;
    round_trip(addr).await.unwrap();
    std::fs::create_dir(d.join("..v2")).unwrap();
    write(&d.join("..v2/lb.toml"), &config(1, &[b.addr], ""));
    std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    nth_line(&lb, "config reloaded", 1).await;
    let b0 = b.count();
    round_trip(addr).await.unwrap();
    assert_eq!(b.count(), b0 + 1);
}

#[tokio::test]
async fn sighup_reloads_and_a_half_written_file_waits_for_the_complete_one() {
    let (a, b) = (Echo::start().await, Echo::start().await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    let first = config(1, &[a.addr], "");
    write(&path, &first);
    let (lb, addr) = binary(&path).await;
    lb.signal("HUP");
    nth_line(&lb, "SIGHUP: reloading", 1).await;
    nth_line(&lb, "config reloaded", 1).await;

    let next = config(1, &[b.addr], "");
    write(&path, &next[..next.len() - 12]);
    nth_line(&lb, "config reload rejected", 1).await;
    round_trip(addr).await.expect("the old config still serves");
    assert_eq!(b.count(), 0);
    write(&path, &next);
    nth_line(&lb, "config reloaded", 2).await;
    round_trip(addr).await.unwrap();
    assert_eq!(b.count(), 1);
}

#[tokio::test]
async fn sigterm_lets_open_connections_run_until_shutdown_timeout_then_closes_them() {
    let a = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    write(&path, &format!("[defaults]\nshutdown_timeout = \"1s\"\n{}", config(1, &[a.addr], "")));
    let (mut lb, addr) = binary(&path).await;
    let mut open = Vec::new();
    for _ in 0..10 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        echo_once(&mut s).await.unwrap();
        open.push(s);
    }
    lb.signal("TERM");
    lb.wait_for_line("SIGTERM").await;
    eventually_async("refused after SIGTERM", || async { TcpStream::connect(addr).await.is_err() }).await;
    for s in &mut open {
        echo_once(s).await.expect("open connections still pass bytes");
    }
    // At shutdown_timeout the rest are closed and the process exits 0.
    for s in &mut open {
        assert!(within("closed at shutdown_timeout", closed(s)).await);
    }
    assert_eq!(lb.exit_code().await, Some(0));
    assert!(lb.text().contains("grace period over"));
}

#[tokio::test]
async fn a_second_signal_stops_at_once() {
    let a = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    write(&path, &format!("[defaults]\nshutdown_timeout = \"1h\"\n{}", config(1, &[a.addr], "")));
    let (mut lb, addr) = binary(&path).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    echo_once(&mut s).await.unwrap();
    lb.signal("TERM");
    lb.wait_for_line("waiting for open connections").await;
    lb.signal("INT");
    // Not an hour: the second signal ends it, and the connection with it.
    assert_eq!(lb.exit_code().await, Some(0));
    assert!(within("closed", closed(&mut s)).await);
    assert!(lb.text().contains("second signal"));
}

/// A reload that leaves a pool's servers as they are keeps its round robin
/// going: 30 reloads, each followed by one client, spread 10/10/10 (nginx,
/// and ucp-lb before, sent all 30 to the first server).
#[tokio::test]
async fn round_robin_goes_on_across_reloads() {
    let echos = [Echo::start().await, Echo::start().await, Echo::start().await];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    write(&path, &config(1, &echos.iter().map(|e| e.addr).collect::<Vec<_>>(), ""));
    let lb = start_lb_file(&path).await;
    let addr = lb.listener_addrs()[0];
    for i in 0..30 {
        lb.reload().await.unwrap_or_else(|e| panic!("reload {i}: {e}"));
        round_trip(addr).await.unwrap();
    }
    let counts: Vec<usize> = echos.iter().map(|e| e.count()).collect();
    assert_eq!(counts, [10, 10, 10]);
}

/// Three connections open through a pool and its listener, both then
/// removed by a reload: they stay counted (the listener and the pool shown
/// as removed, in /status and /metrics alike) and keep passing bytes. The
/// pool added back with a second server: least_conn sees the three on the
/// first and sends new clients to the second. When they close, nothing is
/// left counted.
#[tokio::test]
async fn connections_stay_counted_when_their_pool_is_removed_and_count_again_when_it_is_back() {
    let (e1, e2, e3) = (Echo::start().await, Echo::start().await, Echo::start().await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    let with_p = |servers: &[SocketAddr]| {
        let list: Vec<String> = servers.iter().map(|a| format!("\"{a}\"")).collect();
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\
             [[listener]]\nbind = \"127.0.0.1:0\"\npool = \"q\"\n[pool.q]\nservers = [\"{}\"]\n\
             [[listener]]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n[pool.p]\nbalance = \"least_conn\"\nservers = [{}]\n",
            e3.addr,
            list.join(", ")
        )
    };
    let without_p = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"q\"\n[pool.q]\nservers = [\"{}\"]\n",
        e3.addr
    );
    write(&path, &with_p(&[e1.addr]));
    let lb = start_lb_file(&path).await;
    let admin = lb.admin_addr().unwrap();
    let l1 = lb.listener_addrs()[1];
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(l1).await.unwrap();
        echo_once(&mut c).await.unwrap();
        held.push(c);
    }
    let metric = |text: &str, pool: &str, addr: SocketAddr| {
        let series = format!("ucp_lb_server_active_connections{{pool=\"{pool}\",server=\"{addr}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(series.as_str())).map(str::to_owned)
    };

    write(&path, &without_p);
    lb.reload().await.unwrap();
    let view = lb.lb.view();
    let removed_listener = view.listeners.iter().find(|l| l.local == l1).expect("the removed listener is shown");
    assert!(removed_listener.removed && removed_listener.active == 3, "{removed_listener:?}");
    let p = view.pools.iter().find(|p| p.name == "p").expect("the removed pool is shown");
    assert!(p.removed && p.servers.len() == 1 && p.servers[0].removed && p.servers[0].active == 3, "{p:?}");
    let metrics = http_raw(admin, "GET", "/metrics", None).await;
    assert_eq!(metric(&metrics, "p", e1.addr).as_deref(), Some("3"), "/metrics counts them too");
    for c in &mut held {
        echo_once(c).await.expect("still passing bytes");
    }

    write(&path, &with_p(&[e1.addr, e2.addr]));
    lb.reload().await.unwrap();
    let l1 = lb.listener_addrs()[1];
    assert_eq!(server(&lb, e1.addr).active, 3, "the server back in its pool has its open connections");
    let (c1, c2) = (e1.count(), e2.count());
    for _ in 0..3 {
        round_trip(l1).await.unwrap();
    }
    assert_eq!((e1.count() - c1, e2.count() - c2), (0, 3), "least_conn saw the three open on the first server");

    drop(held);
    eventually("nothing left counted", || {
        let v = lb.lb.view();
        v.listeners.iter().all(|l| !l.removed) && v.pools.iter().all(|p| p.servers.iter().all(|s| s.active == 0))
    })
    .await;
}
