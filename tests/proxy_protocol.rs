//! PROXY protocol listeners on the real binary: HAProxy in front sending
//! `send-proxy-v2` and `send-proxy`, clients bound to their own loopback
//! addresses; the address the access log, `access` rules and per-client
//! limits see; headers from sources not trusted; clients without a valid
//! header closed and counted by reason; a reload changing whom to trust.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use common::nginx::free_addrs;
use common::{Echo, Proc, closed, echo_once, eventually_some_async, external_tool, http_raw, within};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

const LOG: &str = "$remote_addr:$remote_port $realip_remote_addr $proxy_protocol_addr:$proxy_protocol_port $proxy_protocol_server_addr:$proxy_protocol_server_port $end";

/// A client connected to `to` from `from` (any port).
async fn from(from: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{from}:0").parse().unwrap()).unwrap();
    within("connect", s.connect(to)).await.unwrap()
}

/// ucp-lb on `toml`, written to `dir`, its admin address.
async fn lb(dir: &Path, toml: &str) -> (Proc, SocketAddr) {
    let path = dir.join("lb.toml");
    std::fs::write(&path, toml).unwrap();
    let p = Proc::lb(&path);
    let admin = p.admin_addr().await;
    (p, admin)
}

async fn status(admin: SocketAddr) -> serde_json::Value {
    let raw = http_raw(admin, "GET", "/status", None).await;
    let body = raw.split_once("\r\n\r\n").map_or("", |b| b.1);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {raw}"))
}

/// The `/status` PROXY protocol block of the listener on `local`.
async fn pp_status(admin: SocketAddr, local: SocketAddr) -> serde_json::Value {
    let st = status(admin).await;
    let l = st["listeners"].as_array().unwrap().iter().find(|l| l["local"] == local.to_string()).cloned();
    l.unwrap_or_else(|| panic!("no listener {local} in {st}"))["proxy_protocol"].clone()
}

/// Waits for an access-log line containing `needle`.
async fn logged(log: &Path, needle: &str) -> String {
    eventually_some_async(&format!("a log line with {needle:?}"), || async {
        std::fs::read_to_string(log).ok()?.lines().find(|l| l.contains(needle)).map(str::to_owned)
    })
    .await
}

/// A listener section: PROXY protocol on, `extra` keys.
fn listener(bind: SocketAddr, log: &Path, extra: &str) -> String {
    format!(
        "[[listener]]\nbind = \"{bind}\"\npool = \"p\"\nproxy_protocol = true\naccess_log = \"{}\"\naccess_log_format = \"{LOG}\"\n{extra}\n",
        log.display()
    )
}

fn config(listeners: &str, echo: SocketAddr) -> String {
    format!("[admin]\nlisten = \"127.0.0.1:0\"\n{listeners}\n[pool.p]\nservers = [\"{echo}\"]\n")
}

fn v2_inet(src: [u8; 4], sport: u16, tlv_bytes: usize) -> Vec<u8> {
    let mut body = vec![src[0], src[1], src[2], src[3], 127, 0, 0, 1];
    body.extend_from_slice(&sport.to_be_bytes());
    body.extend_from_slice(&443u16.to_be_bytes());
    if tlv_bytes > 0 {
        body.push(0xE0);
        body.extend_from_slice(&(tlv_bytes as u16).to_be_bytes());
        body.extend(std::iter::repeat_n(7u8, tlv_bytes));
    }
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11".to_vec();
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&body);
    h
}

async fn haproxy(dir: &Path, bin: &Path, fronts: &[(SocketAddr, SocketAddr, &str)]) -> Proc {
    let mut cfg = "global\n  maxconn 200\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n".to_owned();
    for (i, (front, to, send)) in fronts.iter().enumerate() {
        cfg +=
            &format!("frontend f{i}\n  bind {front}\n  default_backend b{i}\nbackend b{i}\n  server lb {to} {send}\n");
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("-db").arg("-f").arg(&path);
    let p = Proc::spawn(cmd, false);
    for (front, _, _) in fronts {
        eventually_some_async("haproxy listening", || async { TcpStream::connect(front).await.ok() }).await;
    }
    p
}

#[tokio::test]
async fn behind_haproxy_the_real_address_is_the_client_s_for_rules_limits_and_the_log() {
    let Some(bin) = external_tool(&["/usr/sbin/haproxy", "/usr/bin/haproxy", "/usr/local/sbin/haproxy"], "haproxy")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start().await;
    let [lb_addr, v2, v1] = free_addrs();
    let log = dir.path().join("access.log");
    // HAProxy connects from 127.0.0.1, which the rules let in; the real
    // client 127.0.0.66 is denied, and each real address may hold one
    // connection.
    let keys =
        "real_ip_from = [\"127.0.0.1\"]\naccess = [\"deny 127.0.0.66\", \"allow all\"]\nmax_connections_per_client = 1";
    let (_lb, admin) = lb(dir.path(), &config(&listener(lb_addr, &log, keys), echo.addr)).await;
    let _haproxy = haproxy(dir.path(), &bin, &[(v2, lb_addr, "send-proxy-v2"), (v1, lb_addr, "send-proxy")]).await;

    let mut c = from("127.0.0.77", v2).await;
    within("echo through haproxy v2", echo_once(&mut c)).await.unwrap();
    let port = c.local_addr().unwrap().port();
    drop(c);
    let line = logged(&log, &format!("127.0.0.77:{port} ")).await;
    assert!(
        line.starts_with(&format!("127.0.0.77:{port} 127.0.0.1 127.0.0.77:{port} 127.0.0.1:{} ", v2.port())),
        "{line}"
    );

    let mut c = from("127.0.0.79", v1).await;
    within("echo through haproxy v1", echo_once(&mut c)).await.unwrap();
    drop(c);
    let line = logged(&log, "127.0.0.79:").await;
    assert!(line.contains(" 127.0.0.1 127.0.0.79:"), "{line}");

    // Denied on the real address although HAProxy's is allowed.
    let mut c = from("127.0.0.66", v2).await;
    assert!(within("denied client closed", closed(&mut c)).await);
    let line = logged(&log, "127.0.0.66:").await;
    assert!(line.ends_with(" denied"), "{line}");

    // One connection per real address: a second from .77 is refused while
    // .78, behind the same HAProxy address, gets through.
    let mut held = from("127.0.0.77", v2).await;
    within("first of .77", echo_once(&mut held)).await.unwrap();
    let mut second = from("127.0.0.77", v2).await;
    assert!(within("second of .77 closed", closed(&mut second)).await);
    logged(&log, " max_connections_per_client").await;
    let mut other = from("127.0.0.78", v2).await;
    within(".78 beside .77", echo_once(&mut other)).await.unwrap();
    drop((held, other));

    let pp = pp_status(admin, lb_addr).await;
    let count = |v: &str, c: &str| {
        pp["headers"].as_array().unwrap().iter().find(|h| h["version"] == v && h["command"] == c).unwrap()["count"]
            .as_u64()
            .unwrap()
    };
    assert!(count("v2", "proxy") >= 4 && count("v1", "proxy") >= 1, "{pp}");
    assert_eq!(pp["untrusted"], 0, "{pp}");
    let metrics = http_raw(admin, "GET", "/metrics", None).await;
    let want =
        format!("ucp_lb_proxy_protocol_headers_total{{listener=\"{lb_addr}\",version=\"v1\",command=\"proxy\"}}");
    assert!(metrics.contains(&want), "{want} not in /metrics:\n{metrics}");
}

#[tokio::test]
async fn headers_are_read_in_pieces_and_bad_ones_closed_and_counted_by_reason() {
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start().await;
    let [trusted, untrusted] = free_addrs();
    let log = dir.path().join("access.log");
    let listeners = listener(trusted, &log, "real_ip_from = [\"127.0.0.0/8\"]\nproxy_protocol_timeout = \"300ms\"")
        + &listener(untrusted, &log, "real_ip_from = [\"10.0.0.0/8\"]");
    let (_lb, admin) = lb(dir.path(), &config(&listeners, echo.addr)).await;

    // A v2 header one byte per write, the client's bytes right behind it.
    let mut c = TcpStream::connect(trusted).await.unwrap();
    c.set_nodelay(true).unwrap();
    for b in v2_inet([192, 0, 2, 7], 4242, 0) {
        c.write_all(&[b]).await.unwrap();
        tokio::task::yield_now().await;
    }
    within("echo after a split header", echo_once(&mut c)).await.unwrap();
    drop(c);
    assert!(logged(&log, "192.0.2.7:4242 ").await.contains(" 127.0.0.1 192.0.2.7:4242 "));

    // A v1 header from a source not trusted: read, the address not moved.
    let mut c = TcpStream::connect(untrusted).await.unwrap();
    c.write_all(b"PROXY TCP4 192.0.2.9 127.0.0.1 5555 443\r\n").await.unwrap();
    within("echo after an untrusted header", echo_once(&mut c)).await.unwrap();
    let port = c.local_addr().unwrap().port();
    drop(c);
    let line = logged(&log, "192.0.2.9:5555").await;
    assert!(line.starts_with(&format!("127.0.0.1:{port} 127.0.0.1 192.0.2.9:5555 ")), "{line}");
    assert_eq!(pp_status(admin, untrusted).await["untrusted"], 1);

    // No header, garbage, a header that never ends, one of 10 KB.
    let refused: [(&str, Vec<u8>); 4] = [
        ("missing", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec()),
        ("broken", b"PROXY TCP4 not-an-address 127.0.0.1 1 2\r\n".to_vec()),
        ("timeout", b"PROXY TCP4 192.0.2.7 ".to_vec()),
        ("too_large", v2_inet([192, 0, 2, 7], 1, 10_000)),
    ];
    for (reason, bytes) in refused {
        let mut c = TcpStream::connect(trusted).await.unwrap();
        // The server may close before taking every byte (too_large is
        // judged from the first 16): a failed write is fine.
        let _ = c.write_all(&bytes).await;
        assert!(within(reason, closed(&mut c)).await, "{reason}: not closed");
        logged(&log, &format!("proxy_protocol_{reason}")).await;
        assert_eq!(pp_status(admin, trusted).await["refused"][reason], 1, "{reason}");
    }
    let metrics = http_raw(admin, "GET", "/metrics", None).await;
    let want = format!("ucp_lb_proxy_protocol_refused_total{{listener=\"{trusted}\",reason=\"too_large\"}} 1");
    assert!(metrics.contains(&want), "{want} not in /metrics");
    assert_eq!(echo.count(), 2, "no refused client reached the server");
}

#[tokio::test]
async fn a_reload_changes_whom_new_connections_believe() {
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start().await;
    let [bind] = free_addrs();
    let log = dir.path().join("access.log");
    let (lb, admin) = lb(dir.path(), &config(&listener(bind, &log, "real_ip_from = [\"127.0.0.1\"]"), echo.addr)).await;
    let mut first = TcpStream::connect(bind).await.unwrap();
    first.write_all(b"PROXY TCP4 192.0.2.1 127.0.0.1 1111 443\r\n").await.unwrap();
    within("trusted", echo_once(&mut first)).await.unwrap();
    drop(first);
    logged(&log, "192.0.2.1:1111 127.0.0.1 ").await;
    let mut before = TcpStream::connect(bind).await.unwrap();
    before.write_all(b"PROXY TCP4 192.0.2.3 127.0.0.1 3333 443\r\n").await.unwrap();
    within("trusted, kept open", echo_once(&mut before)).await.unwrap();

    std::fs::write(dir.path().join("lb.toml"), config(&listener(bind, &log, ""), echo.addr)).unwrap();
    lb.signal("HUP");
    eventually_some_async("reloaded", || async { (status(admin).await["reload"]["successes"] == 1).then_some(()) })
        .await;
    let mut after = TcpStream::connect(bind).await.unwrap();
    after.write_all(b"PROXY TCP4 192.0.2.2 127.0.0.1 2222 443\r\n").await.unwrap();
    within("not trusted now", echo_once(&mut after)).await.unwrap();
    let port = after.local_addr().unwrap().port();
    drop(after);
    let line = logged(&log, "192.0.2.2:2222").await;
    assert!(line.starts_with(&format!("127.0.0.1:{port} ")), "{line}");
    // The connection from before the reload goes on with the address it had.
    within("still open", echo_once(&mut before)).await.unwrap();
    drop(before);
    logged(&log, "192.0.2.3:3333 127.0.0.1 ").await;
}

/// An upgrade: a connection that has sent its header moves with its real
/// address; one still sending its header when the upgrade comes is
/// finished by the old process (within proxy_protocol_timeout), then
/// moves too, its real address and the peer with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_moves_real_addresses_and_lets_a_header_in_flight_finish() {
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start().await;
    let [bind] = free_addrs();
    let log = dir.path().join("access.log");
    let keys = "real_ip_from = [\"127.0.0.1\"]\nproxy_protocol_timeout = \"30s\"";
    let text = config(&listener(bind, &log, keys), echo.addr).replace(
        "[admin]\n",
        &format!("[admin]\ncontrol_socket = \"{}\"\n", dir.path().join("control.sock").display()),
    );
    let (mut old, admin) = lb(dir.path(), &text).await;
    old.wait_for_line("control socket up").await;
    let mut whole = TcpStream::connect(bind).await.unwrap();
    whole.write_all(b"PROXY TCP4 192.0.2.10 127.0.0.1 1010 443\r\n").await.unwrap();
    within("before the upgrade", echo_once(&mut whole)).await.unwrap();
    let mut halfway = TcpStream::connect(bind).await.unwrap();
    halfway.write_all(b"PROXY TCP4 192.0.2.11 127.0.0.1").await.unwrap();
    eventually_some_async("two open", || async {
        (status(admin).await["listeners"][0]["active"].as_u64() == Some(2)).then_some(())
    })
    .await;

    let mut cmd = Command::new(common::BIN);
    cmd.arg("--config").arg(dir.path().join("lb.toml")).arg("--upgrade").env("RUST_LOG", "info");
    let new = Proc::spawn(cmd, false);
    new.wait_for_line("control socket up").await;
    halfway.write_all(b" 1111 443\r\n").await.unwrap();
    within("the header finished after the upgrade", echo_once(&mut halfway)).await.unwrap();
    assert_eq!(old.exit_code().await, Some(0), "{}", old.text());
    // The old process is gone: both are served by the new one now.
    within("whole, moved", echo_once(&mut whole)).await.unwrap();
    within("halfway, moved", echo_once(&mut halfway)).await.unwrap();
    drop((whole, halfway));
    for (real, port) in [("192.0.2.10", 1010), ("192.0.2.11", 1111)] {
        let line = logged(&log, &format!("{real}:{port} ")).await;
        assert!(line.starts_with(&format!("{real}:{port} 127.0.0.1 {real}:{port} 127.0.0.1:443 ")), "{line}");
    }
    let text = old.text();
    assert!(text.contains("cut=0"), "nothing cut: {text}");
    drop(new);
}

/// A routed listener behind an outer balancer: the header is consumed and
/// the ClientHello right behind it (same segment) is read whole, routed
/// by its name and reaches the server unchanged.
#[tokio::test]
async fn a_routed_listener_reads_the_hello_behind_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start().await;
    let [bind] = free_addrs();
    let log = dir.path().join("access.log");
    let keys = "real_ip_from = [\"127.0.0.1\"]\nroutes = { \"a.test\" = \"p\" }";
    let (_lb, admin) = lb(dir.path(), &config(&listener(bind, &log, keys), echo.addr)).await;
    let ca = common::standin::TestCa::new("proxy protocol CA").unwrap();
    let tls = common::tls::client_config(&ca);
    let mut conn = rustls::ClientConnection::new(tls, "a.test".try_into().unwrap()).unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    let mut c = TcpStream::connect(bind).await.unwrap();
    c.write_all(&[v2_inet([192, 0, 2, 20], 2020, 40), hello.clone()].concat()).await.unwrap();
    let mut back = vec![0u8; hello.len()];
    within("the hello echoed", tokio::io::AsyncReadExt::read_exact(&mut c, &mut back)).await.unwrap();
    assert!(back == hello, "the server got the hello unchanged, and no header");
    drop(c);
    logged(&log, "192.0.2.20:2020 127.0.0.1 ").await;
    let st = status(admin).await;
    let routes = st["listeners"][0]["routes"].as_array().unwrap().clone();
    assert!(routes.iter().any(|r| r["name"] == "a.test" && r["connections"] == 1), "{routes:?}");
}

/// `source_hash` picks by the real address: one real address goes to one
/// server however often it comes, and real addresses behind one outer
/// balancer spread over the pool.
#[tokio::test]
async fn hash_balancing_keys_on_the_real_address() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Echo::start().await, Echo::start().await);
    let [bind] = free_addrs();
    let log = dir.path().join("access.log");
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nbind = \"{bind}\"\npool = \"p\"\nproxy_protocol = true\n\
         real_ip_from = [\"127.0.0.1\"]\naccess_log = \"{}\"\naccess_log_format = \"$remote_addr $upstream_addr\"\n\
         [pool.p]\nbalance = \"source_hash\"\nservers = [\"{}\", \"{}\"]\n",
        log.display(),
        a.addr,
        b.addr
    );
    let (_lb, _admin) = lb(dir.path(), &text).await;
    for round in 0..2u16 {
        for i in 1..=16u8 {
            let mut c = TcpStream::connect(bind).await.unwrap();
            c.write_all(&v2_inet([192, 0, 2, i], 1000 + round, 0)).await.unwrap();
            within("echo", echo_once(&mut c)).await.unwrap();
        }
    }
    let mut seen: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = Default::default();
    let lines = eventually_some_async("32 lines", || async {
        let text = std::fs::read_to_string(&log).ok()?;
        (text.lines().count() == 32).then_some(text)
    })
    .await;
    for line in lines.lines() {
        let (client, server) = line.split_once(' ').unwrap();
        seen.entry(client.to_owned()).or_default().insert(server.to_owned());
    }
    assert_eq!(seen.len(), 16, "{lines}");
    assert!(seen.values().all(|s| s.len() == 1), "one server per real address: {seen:?}");
    assert!(a.count() > 0 && b.count() > 0, "16 real addresses over both servers: {} and {}", a.count(), b.count());
}
