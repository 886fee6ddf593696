//! Active checks against stand-in UCP managers and DTR replicas (real HTTPS,
//! certificates made at test time) and against scripted HTTP servers.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::standin::{Flavor, Manager, TestCa, https_get};
use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use ucp_lb::config::{CheckKind, StatusMatch};
use ucp_lb::health::probe::ProbeTarget;

const FAST: &str = "interval = \"100ms\"\ntimeout = \"1s\"\nrise = 2\nfall = 2";

async fn managers(ca: &TestCa, n: usize) -> Vec<Manager> {
    let mut v = Vec::new();
    for i in 1..=n {
        v.push(Manager::start(&format!("manager-0{i}"), loopback(), ca).await.unwrap());
    }
    v
}

fn pool_with_check(servers: &[SocketAddr], pool_keys: &str, health: &str) -> String {
    format!("{}\n[pool.p.health]\n{health}\n", one_pool(servers, pool_keys))
}

/// `n` HTTPS clients through `lb`; how many each manager answered.
async fn spread(connector: &TlsConnector, lb: SocketAddr, n: usize, ms: &[Manager]) -> Vec<usize> {
    let mut counts = vec![0; ms.len()];
    for _ in 0..n {
        let (status, by) = within("client", https_get(connector, lb, "/")).await.expect("client served");
        assert_eq!(status, 200);
        let i = ms.iter().position(|m| m.name == by).expect("a known manager answered");
        counts[i] += 1;
    }
    counts
}

fn check_state(lb: &ucp_lb::Running, addr: SocketAddr) -> (String, Option<String>) {
    let c = server(lb, addr).check.expect("checked");
    (c.state.to_owned(), c.reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_answering_500_gets_no_new_clients_until_it_recovers() {
    let ca = TestCa::new("test CA").unwrap();
    let ms = managers(&ca, 3).await;
    let addrs: Vec<SocketAddr> = ms.iter().map(|m| m.addr).collect();
    let lb = start_lb(&pool_with_check(&addrs, "", FAST)).await;
    let addr = lb.listener_addrs()[0];
    let connector = ca.connector().unwrap();
    assert!(spread(&connector, addr, 30, &ms).await.iter().all(|&c| c == 10));

    // UCP broken on manager-02: TCP and TLS still up, /_ping answers 500.
    ms[1].set_healthy(false);
    eventually("manager-02 down", || check_state(&lb, ms[1].addr).0 == "down").await;
    assert_eq!(check_state(&lb, ms[1].addr).1.as_deref(), Some("status 500"));
    let counts = spread(&connector, addr, 300, &ms).await;
    assert_eq!(counts[1], 0, "no new client reaches the failing manager: {counts:?}");
    assert_eq!(counts[0] + counts[2], 300);

    ms[1].set_healthy(true);
    eventually("manager-02 up", || check_state(&lb, ms[1].addr).0 == "up").await;
    let counts = spread(&connector, addr, 30, &ms).await;
    assert_eq!(counts[1], 10, "back in rotation: {counts:?}");
}

#[tokio::test]
async fn a_server_failing_from_the_start_never_gets_a_client() {
    let ca = TestCa::new("test CA").unwrap();
    let ms = managers(&ca, 2).await;
    ms[0].set_healthy(false);
    let addrs: Vec<SocketAddr> = ms.iter().map(|m| m.addr).collect();
    // A long interval: only the first probe, before any client, can decide.
    let lb = start_lb(&pool_with_check(&addrs, "", "interval = \"1h\"\ntimeout = \"1s\"")).await;
    let connector = ca.connector().unwrap();
    let counts = spread(&connector, lb.listener_addrs()[0], 20, &ms).await;
    assert_eq!(counts, [0, 20]);
}

#[tokio::test]
async fn dtr_replica_reporting_healthy_false_with_status_200_is_down() {
    let ca = TestCa::new("test CA").unwrap();
    let ok = Manager::start_as(Flavor::Dtr, "dtr-01", loopback(), &ca).await.unwrap();
    let bad = Manager::start_as(Flavor::Dtr, "dtr-02", loopback(), &ca).await.unwrap();
    bad.set_healthy(false);
    let health = format!("{FAST}\npath = \"/health\"\nexpect_json = {{ Healthy = true }}");
    let lb = start_lb(&pool_with_check(&[ok.addr, bad.addr], "", &health)).await;
    eventually("both probed", || check_state(&lb, bad.addr).0 != "unknown").await;
    assert_eq!(check_state(&lb, ok.addr), ("up".to_owned(), None));
    let (state, reason) = check_state(&lb, bad.addr);
    assert_eq!(state, "down");
    assert_eq!(reason.as_deref(), Some("body: Healthy is false (Error: rethinkdb: cannot reach the replica set)"));
    assert!(bad.pings.load(Relaxed) >= 1);
}

#[tokio::test]
async fn with_ca_file_a_certificate_from_another_ca_fails_the_check() {
    let ours = TestCa::new("cluster CA").unwrap();
    let theirs = TestCa::new("another CA").unwrap();
    let good = Manager::start("manager-01", loopback(), &ours).await.unwrap();
    let impostor = Manager::start("manager-02", loopback(), &theirs).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ours.pem).unwrap();
    let health = format!("{FAST}\nca_file = \"{}\"", ca_file.display());
    let lb = start_lb(&pool_with_check(&[good.addr, impostor.addr], "", &health)).await;
    eventually("probed", || check_state(&lb, impostor.addr).0 != "unknown").await;
    assert_eq!(check_state(&lb, good.addr).0, "up");
    assert_eq!(
        check_state(&lb, impostor.addr),
        ("down".to_owned(), Some("TLS: certificate signed by an unknown authority".to_owned()))
    );
    // The probe saw the certificate's expiry (rcgen's default: year 4096).
    let expiry = server(&lb, good.addr).check.unwrap().cert_not_after.unwrap();
    assert!(expiry > 4_000_000_000, "{expiry}");
}

#[tokio::test]
async fn the_6443_pool_follows_the_443_probe_and_pools_share_probes() {
    let ca = TestCa::new("test CA").unwrap();
    // Three managers on 127.0.0.11-13, the same "443" port on each, and a
    // "6443" echo beside each: the kube pool is probed on the 443 port.
    // The port comes from 127.0.0.11:0; on .12 and .13 another test's
    // socket may hold it already (tests run side by side and some bind
    // many 127.0.0.x addresses), so a taken port is given up for another.
    let (ms, port) = 'managers: {
        for _ in 0..50 {
            let first = Manager::start("manager-01", "127.0.0.11:0".parse().unwrap(), &ca).await.unwrap();
            let port = first.addr.port();
            let mut ms = vec![first];
            for i in 2..=3 {
                let bind: SocketAddr = format!("127.0.0.1{i}:{port}").parse().unwrap();
                match Manager::start(&format!("manager-0{i}"), bind, &ca).await {
                    Ok(m) => ms.push(m),
                    Err(_) => break,
                }
            }
            if ms.len() == 3 {
                break 'managers (ms, port);
            }
        }
        panic!("no port free on 127.0.0.11-13 in 50 tries");
    };
    let (kube, kport) = 'kube: {
        for _ in 0..50 {
            let first = tokio::net::TcpListener::bind("127.0.0.11:0").await.unwrap();
            let kport = first.local_addr().unwrap().port();
            let mut ls = vec![first];
            for i in 2..=3 {
                match tokio::net::TcpListener::bind(format!("127.0.0.1{i}:{kport}")).await {
                    Ok(l) => ls.push(l),
                    Err(_) => break,
                }
            }
            if ls.len() == 3 {
                break 'kube (ls.into_iter().map(Echo::on).collect::<Vec<_>>(), kport);
            }
        }
        panic!("no port free on 127.0.0.11-13 in 50 tries");
    };
    let list = |p: u16| (1..=3).map(|i| format!("\"127.0.0.1{i}:{p}\"")).collect::<Vec<_>>().join(", ");
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"ucp\"\n[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"ucp_kube\"\n\
         [pool.ucp]\nservers = [{}]\n[pool.ucp.health]\n{FAST}\n\
         [pool.ucp_kube]\nservers = [{}]\n[pool.ucp_kube.health]\n{FAST}\nport = {port}\n",
        list(port),
        list(kport)
    );
    let lb = start_lb(&toml).await;
    assert_eq!(lb.probe_count(), 3, "one probe per manager, not per pool");

    ms[1].set_healthy(false);
    let kube2: SocketAddr = format!("127.0.0.12:{kport}").parse().unwrap();
    eventually("kube server of manager-02 down", || check_state(&lb, kube2).0 == "down").await;
    assert_eq!(check_state(&lb, ms[1].addr).0, "down", "443 and 6443 go down together");
    let kube_lb = lb.listener_addrs()[1];
    let before = kube[1].count();
    for _ in 0..30 {
        round_trip(kube_lb).await.unwrap();
    }
    assert_eq!(kube[1].count(), before, "no kube client to the broken manager");

    // Every /_ping each manager received is one probe of its single check.
    let probes = server(&lb, ms[0].addr).check.unwrap().probes;
    let pings = ms[0].pings.load(Relaxed);
    assert!(pings.abs_diff(probes) <= 1, "pings {pings}, probes {probes}: one probe per interval");
}

async fn all_failing(mode: &str) -> (bool, ucp_lb::Running) {
    let ca = TestCa::new("test CA").unwrap();
    let ms = managers(&ca, 2).await;
    for m in &ms {
        m.set_healthy(false);
    }
    let addrs: Vec<SocketAddr> = ms.iter().map(|m| m.addr).collect();
    let lb = start_lb(&pool_with_check(&addrs, &format!("all_down = \"{mode}\""), FAST)).await;
    eventually("both down", || ms.iter().all(|m| check_state(&lb, m.addr).0 == "down")).await;
    let served = https_get(&ca.connector().unwrap(), lb.listener_addrs()[0], "/").await.is_ok();
    (served, lb)
}

#[tokio::test]
async fn every_check_failing_fails_open_when_asked() {
    let (served, lb) = all_failing("fail_open").await;
    assert!(served, "fail_open still routes to the servers");
    assert!(lb.status()[0].all_down && lb.status()[0].fail_open_picks >= 1);
}

#[tokio::test]
async fn every_check_failing_rejects_when_asked() {
    let (served, lb) = all_failing("reject").await;
    assert!(!served, "reject closes the client");
    assert!(lb.status()[0].all_down);
}

fn target(addr: SocketAddr) -> ProbeTarget {
    ProbeTarget {
        addr,
        kind: CheckKind::Http,
        path: "/_ping".into(),
        host: "manager-01".into(),
        server_name: "manager-01".to_owned().try_into().unwrap(),
        tls: None,
        expect_status: vec![StatusMatch::Code(200)],
        expect_body: None,
        expect_json: Vec::new(),
        timeout: Duration::from_millis(300),
        interval: Duration::from_secs(1),
        rise: 1,
        fall: 1,
        proxy_protocol: None,
        label: "test".into(),
    }
}

/// A server answering every request with `reply`, then closing.
async fn replying(reply: &'static [u8]) -> SocketAddr {
    scripted(move |mut s: TcpStream| async move {
        read_request(&mut s).await;
        let _ = s.write_all(reply).await;
    })
    .await
}

#[tokio::test]
async fn probe_outcomes_and_reasons() {
    let refused = refusing_addr();
    // These two hold their connection open and quiet for good: a probe
    // that did not give up at its timeout would hang past the deadline.
    let silent = scripted(|mut s: TcpStream| async move {
        read_request(&mut s).await;
        std::future::pending::<()>().await;
    })
    .await;
    let slow_body = scripted(|mut s: TcpStream| async move {
        read_request(&mut s).await;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nOK").await;
        std::future::pending::<()>().await;
    })
    .await;
    let huge = scripted(|mut s: TcpStream| async move {
        read_request(&mut s).await;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10485760\r\n\r\nhealthy").await;
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..160 {
            if s.write_all(&chunk).await.is_err() {
                return;
            }
        }
    })
    .await;
    let garbage = replying(b"SSH-2.0-OpenSSH_9.2\r\n").await;
    let redirect = replying(b"HTTP/1.1 302 Found\r\nLocation: /login\r\nContent-Length: 0\r\n\r\n").await;
    let http10 = replying(b"HTTP/1.0 200 OK\r\n\r\nhealthy and close-delimited").await;
    let chunked = replying(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\nhealthy\r\n0\r\n\r\n").await;
    let no_content = replying(b"HTTP/1.1 204 No Content\r\n\r\n").await;
    // What UCP tells its admin, and bodies a reason must tame.
    let told =
        replying(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 29\r\n\r\nmanager-02: etcd: unhealthy\r\n")
            .await;
    let forged = replying(b"HTTP/1.1 503 x\r\nContent-Length: 15\r\n\r\nline\nINFO x\x1b[2J").await;
    let long_reply: &'static str =
        Box::leak(format!("HTTP/1.1 500 x\r\nContent-Length: 4000\r\n\r\n{}", "y".repeat(4000)).into_boxed_str());
    let long = replying(long_reply.as_bytes()).await;
    let long_reason = format!("status 500: \"{}\"…", "y".repeat(512));
    let half_told = scripted(|mut s: TcpStream| async move {
        read_request(&mut s).await;
        let _ = s.write_all(b"HTTP/1.1 500 x\r\nContent-Length: 100\r\n\r\netcd: unhe").await;
        std::future::pending::<()>().await;
    })
    .await;
    let host_seen = Arc::new(std::sync::Mutex::new(String::new()));
    let seen = host_seen.clone();
    let echo_host = scripted(move |mut s: TcpStream| {
        let seen = seen.clone();
        async move {
            *seen.lock().unwrap() = read_request(&mut s).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK").await;
        }
    })
    .await;

    let body = |addr, want: &str| ProbeTarget { expect_body: Some(want.to_owned()), ..target(addr) };
    let cases: Vec<(&str, ProbeTarget, Option<&str>)> = vec![
        ("refused", target(refused), Some("connect refused")),
        ("accept then silence", target(silent), Some("timeout after 300ms (response)")),
        ("slow body, body expected", body(slow_body, "OK then more"), Some("timeout after 300ms (body)")),
        ("slow body, status is enough", target(slow_body), None),
        ("10 MiB body: 64 KiB read", body(huge, "healthy"), None),
        ("garbage", target(garbage), Some("not an HTTP response")),
        ("302 redirect", target(redirect), Some("status 302")),
        ("HTTP/1.0 close-delimited", body(http10, "close-delimited"), None),
        ("chunked", body(chunked, "healthy"), None),
        ("body mismatch", body(chunked, "Healthy"), Some("body: no \"Healthy\" in it")),
        ("204 against 2xx", ProbeTarget { expect_status: vec![StatusMatch::Class(2)], ..target(no_content) }, None),
        ("204 against 200", target(no_content), Some("status 204")),
        ("Host header", target(echo_host), None),
        ("500 naming the component", target(told), Some(r#"status 500: "manager-02: etcd: unhealthy""#)),
        ("a body that would forge a line", target(forged), Some(r#"status 503: "line\nINFO x\u{1b}[2J""#)),
        ("500 with a long body: 512 bytes", target(long), Some(long_reason.as_str())),
        ("500 then silence: what came in time", target(half_told), Some(r#"status 500: "etcd: unhe"…"#)),
    ];
    let mut wrong = Vec::new();
    for (name, t, want) in &cases {
        // Ended by its own timeout whatever the server does: the deadline
        // only catches a probe that hangs.
        let out = within(name, ucp_lb::health::probe::probe(t)).await;
        let ok = match (want, &out.failure) {
            (None, None) => true,
            // A status's reason whole, the others by their start.
            (Some(w), Some(got)) if w.starts_with("status 5") => got == w,
            (Some(w), Some(got)) => got.starts_with(w),
            _ => false,
        };
        if !ok {
            wrong.push(format!("{name}: expected {want:?}, got {:?}", out.failure));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let req = host_seen.lock().unwrap().clone();
    assert!(req.starts_with("GET /_ping HTTP/1.1\r\n"), "{req}");
    assert!(req.to_ascii_lowercase().contains("\r\nhost: manager-01\r\n"), "{req}");
}

/// A manager process that goes away (its port refuses) and comes back on the
/// same port: its check goes down on the refused probes, clients go to the
/// others meanwhile without one failing, and the check re-admits it after
/// `rise` good probes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_manager_is_readmitted_by_its_checks() {
    let ca = TestCa::new("test CA").unwrap();
    let mut ms = managers(&ca, 2).await;
    let addrs: Vec<SocketAddr> = ms.iter().map(|m| m.addr).collect();
    let lb = start_lb(&pool_with_check(&addrs, "", FAST)).await;
    let addr = lb.listener_addrs()[0];
    let connector = ca.connector().unwrap();
    eventually("both up", || addrs.iter().all(|&a| check_state(&lb, a).0 == "up")).await;

    // manager-02 stops: its listener is closed, connects are refused.
    let stopped = ms.pop().unwrap();
    drop(stopped);
    let t = std::time::Instant::now();
    eventually("manager-02 down", || check_state(&lb, addrs[1]).0 == "down").await;
    let down_after = t.elapsed();
    let reason = check_state(&lb, addrs[1]).1.unwrap_or_default();
    assert!(reason.contains("refused"), "reason: {reason}");
    assert_eq!(spread(&connector, addr, 20, &ms).await, vec![20], "every client served by manager-01");

    // It comes back on the same address.
    ms.push(Manager::start("manager-02", addrs[1], &ca).await.unwrap());
    let t = std::time::Instant::now();
    eventually("manager-02 up again", || check_state(&lb, addrs[1]).0 == "up").await;
    let up_after = t.elapsed();
    let counts = spread(&connector, addr, 30, &ms).await;
    assert_eq!(counts, vec![15, 15], "back in rotation");
    eprintln!(
        "restart: check down {} ms after the stop (reason {reason:?}), up {} ms after the restart \
         (interval 100 ms, rise 2, fall 2); 20 clients during the outage, none failed",
        down_after.as_millis(),
        up_after.as_millis()
    );
}
