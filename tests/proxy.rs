//! The byte path through a running LB: integrity, half-close, reset, idle
//! timeout, max_connections.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BULK: usize = 64 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_64_mib_each_way_arrives_unchanged() {
    let backend = TcpListener::bind(loopback()).await.unwrap();
    let baddr = backend.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (s, _) = backend.accept().await.unwrap();
        send_and_receive(s, 0xfeed, BULK).await
    });
    let lb = start_lb(&one_pool(&[baddr], "")).await;
    let client = TcpStream::connect(lb.listener_addrs()[0]).await.unwrap();
    let (c_sent, c_got, c_n) = within("client transfer", send_and_receive(client, 0xbeef, BULK)).await;
    let (s_sent, s_got, s_n) = within("server transfer", server).await.unwrap();
    assert_eq!((c_n, s_n), (BULK, BULK));
    assert_eq!(c_sent, s_got, "client to server");
    assert_eq!(s_sent, c_got, "server to client");
    let st = server_status(&lb, baddr).await;
    assert_eq!((st.bytes_sent, st.bytes_received), (BULK as u64, BULK as u64));
}

async fn server_status(lb: &ucp_lb::Running, addr: SocketAddr) -> ucp_lb::view::ServerStatus {
    eventually("connection finished", || server(lb, addr).active == 0).await;
    server(lb, addr)
}

#[tokio::test]
async fn half_close_is_passed_on() {
    let backend = TcpListener::bind(loopback()).await.unwrap();
    let baddr = backend.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = backend.accept().await.unwrap();
        let mut got = Vec::new();
        // Read to EOF: only the client's FIN, passed on, ends this.
        s.read_to_end(&mut got).await.unwrap();
        // The other direction still works after the client's half-close.
        s.write_all(b"world").await.unwrap();
        s.shutdown().await.unwrap();
        got
    });
    let lb = start_lb(&one_pool(&[baddr], "")).await;
    let mut c = TcpStream::connect(lb.listener_addrs()[0]).await.unwrap();
    c.write_all(b"hello").await.unwrap();
    c.shutdown().await.unwrap();
    let mut reply = Vec::new();
    within("reply after half-close", c.read_to_end(&mut reply)).await.unwrap();
    assert_eq!(reply, b"world");
    assert_eq!(within("server", server).await.unwrap(), b"hello");
}

#[tokio::test]
async fn upstream_reset_closes_the_client() {
    let backend = TcpListener::bind(loopback()).await.unwrap();
    let baddr = backend.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = backend.accept().await.unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        s.write_all(&b).await.unwrap();
        // Linger 0: close sends RST.
        socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
        drop(s);
    });
    let lb = start_lb(&one_pool(&[baddr], "")).await;
    let mut c = TcpStream::connect(lb.listener_addrs()[0]).await.unwrap();
    echo_once(&mut c).await.unwrap();
    assert!(within("client closed after upstream RST", closed(&mut c)).await);
}

#[tokio::test]
async fn idle_timeout_closes_a_quiet_connection_and_activity_keeps_it() {
    let echo = Echo::start().await;
    let lb = start_lb(&one_pool(&[echo.addr], "idle_timeout = \"1s\"")).await;
    let mut c = TcpStream::connect(lb.listener_addrs()[0]).await.unwrap();
    // Bytes every 200 ms for 2 s: more than the timeout in all, never 1 s quiet.
    for _ in 0..10 {
        echo_once(&mut c).await.unwrap();
        // Not synchronisation: the pause between bytes is what the test is
        // about (activity below the idle timeout keeps the connection).
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    echo_once(&mut c).await.expect("still open while bytes flow");
    assert!(within("idle connection closed", closed(&mut c)).await);
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_none_keeps_a_quiet_connection_open_for_an_hour() {
    let echo = Echo::start().await;
    let none = start_lb(&one_pool(&[echo.addr], "idle_timeout = \"none\"")).await;
    let short = start_lb(&one_pool(&[echo.addr], "idle_timeout = \"30m\"")).await;
    let mut a = TcpStream::connect(none.listener_addrs()[0]).await.unwrap();
    let mut b = TcpStream::connect(short.listener_addrs()[0]).await.unwrap();
    echo_once(&mut a).await.unwrap();
    echo_once(&mut b).await.unwrap();
    // Paused clock: the hour passes at once, and every timer in it fires.
    tokio::time::advance(Duration::from_secs(3600)).await;
    echo_once(&mut a).await.expect("no idle timeout: still open after an hour");
    assert!(closed(&mut b).await, "the 30m idle timeout closed the other one");
}

#[tokio::test]
async fn max_connections_closes_excess_clients_at_once() {
    let echo = Echo::start().await;
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"p\"\nmax_connections = 2\n[pool.p]\nservers = [\"{}\"]\n",
        echo.addr
    );
    let lb = start_lb(&toml).await;
    let addr = lb.listener_addrs()[0];
    let mut first = TcpStream::connect(addr).await.unwrap();
    let mut second = TcpStream::connect(addr).await.unwrap();
    echo_once(&mut first).await.unwrap();
    echo_once(&mut second).await.unwrap();
    let mut third = TcpStream::connect(addr).await.unwrap();
    assert!(within("third client closed", closed(&mut third)).await);
    assert_eq!(echo.count(), 2, "the excess client never reached a server");
    let l = &lb.listeners()[0];
    assert_eq!(l.rejected_max_connections.load(std::sync::atomic::Ordering::Relaxed), 1);
    drop(first);
    eventually("a place frees up", || l.active.load(std::sync::atomic::Ordering::Relaxed) == 1).await;
    round_trip(addr).await.expect("served again once under the limit");
}

#[tokio::test]
async fn clients_never_see_each_others_bytes() {
    // Many concurrent clients, each with its own pattern, through pooled
    // buffers: every byte each one gets back is its own.
    let echo = Echo::start().await;
    let lb = start_lb(&one_pool(&[echo.addr], "")).await;
    let addr = lb.listener_addrs()[0];
    let mut tasks = Vec::new();
    for id in 0..50u8 {
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let data: Vec<u8> = (0..200_000u32).map(|i| id ^ (i as u8)).collect();
            let (mut r, mut w) = s.split();
            let send = async {
                for c in data.chunks(7919) {
                    w.write_all(c).await.unwrap();
                }
                w.shutdown().await.unwrap();
            };
            let mut back = Vec::new();
            let recv = r.read_to_end(&mut back);
            let (_, got) = tokio::join!(send, recv);
            got.unwrap();
            assert!(back == data, "client {id} got bytes that were not its own");
        }));
    }
    for t in tasks {
        within("client", t).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn bytes_of_a_long_connection_are_counted_before_it_ends() {
    let echo = Echo::start().await;
    let lb = start_lb(&one_pool(&[echo.addr], "")).await;
    let mut c = TcpStream::connect(lb.listener_addrs()[0]).await.unwrap();
    for _ in 0..25 {
        echo_once(&mut c).await.unwrap();
    }
    // Counted each time a direction has written all it read, not at the end.
    eventually("bytes counted while the connection is open", || {
        let st = server(&lb, echo.addr);
        (st.bytes_sent, st.bytes_received) == (100, 100)
    })
    .await;
    echo_once(&mut c).await.unwrap();
    drop(c);
    eventually("the last bytes counted", || server(&lb, echo.addr).bytes_sent == 104).await;
    // Nothing counted twice at the end.
    let st = server(&lb, echo.addr);
    assert_eq!((st.bytes_sent, st.bytes_received), (104, 104));
}

/// Writes to a slow reader (`slow_echo`) come out partial again and again;
/// 8 MiB each way must arrive unchanged. One transfer alone: the buffer
/// path (tests/splice.rs has the splice path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_writes_to_a_slow_reader_lose_nothing() {
    each_way_through_lb(slow_echo().await, 7, 8 << 20, "8 MiB through a slow reader").await;
}

/// nginx's usual dual-stack pair, `listen P; listen [::]:P;`: both bind
/// (the IPv6 one takes IPv6 only, IPV6_V6ONLY), and each serves its own
/// family. Skipped where this machine has no IPv6 loopback; under CI=true
/// it fails only if ::1 exists and a bind fails.
#[tokio::test]
async fn an_ipv4_and_an_ipv6_wildcard_listener_bind_the_same_port() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback here");
        return;
    }
    let echo = Echo::start().await;
    // A port free on both families, held until just before ucp-lb binds.
    let port = {
        let v6 = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
        v6.set_only_v6(false).unwrap();
        v6.bind(&"[::]:0".parse::<SocketAddr>().unwrap().into()).unwrap();
        v6.local_addr().unwrap().as_socket().unwrap().port()
    };
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nbind = \"0.0.0.0:{port}\"\npool = \"p\"\n\
         [[listener]]\nbind = \"[::]:{port}\"\npool = \"p\"\n[pool.p]\nservers = [\"{}\"]\n",
        echo.addr
    );
    let config = ucp_lb::config::parse(&toml, "dual.toml").unwrap();
    assert!(config.warnings.is_empty(), "a pair: no IPv6-only warning: {:?}", config.warnings);
    let lb = ucp_lb::start(config).await.unwrap_or_else(|e| panic!("both listeners bind: {e}"));
    round_trip(format!("127.0.0.1:{port}").parse().unwrap()).await.unwrap();
    round_trip(format!("[::1]:{port}").parse().unwrap()).await.unwrap();
    assert_eq!(
        lb.listeners().iter().map(|l| l.accepted.load(std::sync::atomic::Ordering::Relaxed)).collect::<Vec<_>>(),
        [1, 1]
    );
    // Alone, the IPv6 listener is said to serve IPv6 only.
    let alone =
        ucp_lb::config::parse(&toml.replacen(&format!("bind = \"0.0.0.0:{port}\""), "bind = \"127.0.0.1:0\"", 1), "x")
            .unwrap();
    assert!(alone.warnings.iter().any(|w| w.to_string().contains("serves IPv6 clients only")), "{:?}", alone.warnings);
}

/// Keepalive finds dead peers on idle connections: the client socket has it
/// from its first moment (inherited from the listener), the server socket
/// once the connection has lived 10 to 15 s (the registry's late wake, no
/// timer per connection), not before.
#[tokio::test]
async fn keepalive_is_set_on_the_client_socket_at_once_and_on_the_server_socket_by_the_late_wake() {
    let echo = Echo::start().await;
    let lb = start_lb(&one_pool(&[echo.addr], "")).await;
    let listener = lb.listener_addrs()[0];
    let mut c = TcpStream::connect(listener).await.unwrap();
    echo_once(&mut c).await.unwrap();
    let timer = |local| tcp_entry(local, echo.addr).map(|e| e.timer);
    assert_eq!(
        tcp_entry(Some(listener), c.local_addr().unwrap()).map(|e| e.timer),
        Some(2),
        "client socket: keepalive timer"
    );
    assert_eq!(timer(None), Some(0), "server socket: no keepalive on a young connection");
    // When exactly the late wake comes is the registry's logic, tested
    // there with a paused clock; here, that it reaches the socket.
    eventually_within("server socket keepalive timer", LATE_WAKE_DEADLINE, || timer(None) == Some(2)).await;
    // The connection still carries bytes after its late wake.
    echo_once(&mut c).await.unwrap();
}
