//! The byte path through a running LB: integrity, half-close, reset, idle
//! timeout, max_connections.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BULK: usize = 64 << 20;

/// Deterministic pseudo-random bytes, so both ends can be checked.
fn fill(seed: u64, buf: &mut [u8]) -> u64 {
    let mut x = seed;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    x
}

/// Sends `len` bytes and reads to EOF at once; returns (sent, received)
/// digests and the count received.
async fn send_and_receive(s: TcpStream, seed: u64, len: usize) -> ([u8; 32], [u8; 32], usize) {
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut x = seed;
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len());
            x = fill(x, &mut buf[..n]);
            h.update(&buf[..n]);
            w.write_all(&buf[..n]).await.unwrap();
            left -= n;
        }
        w.shutdown().await.unwrap();
        <[u8; 32]>::from(h.finalize())
    });
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        got += n;
    }
    (writer.await.unwrap(), h.finalize().into(), got)
}

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

async fn server_status(lb: &ucp_lb::Running, addr: SocketAddr) -> ucp_lb::snapshot::ServerStatus {
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
    tokio::time::sleep(Duration::from_secs(3600)).await;
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
    eventually_paused(|| {
        let st = server(&lb, echo.addr);
        (st.bytes_sent, st.bytes_received) == (100, 100)
    })
    .await;
    echo_once(&mut c).await.unwrap();
    drop(c);
    eventually_paused(|| server(&lb, echo.addr).bytes_sent == 104).await;
    // Nothing counted twice at the end.
    let st = server(&lb, echo.addr);
    assert_eq!((st.bytes_sent, st.bytes_received), (104, 104));
}

/// `eventually` for the paused clock: each sleep lets the other tasks run.
async fn eventually_paused(mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition never held");
}

/// Two listeners on one LB (so one thread's pools): `reset` goes to a
/// server that resets mid-stream, `clean` to an echo server.
async fn lb_with_resetting_and_echo_pools(resetter: SocketAddr, echo: SocketAddr) -> ucp_lb::Running {
    start_lb(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[listener]]\nbind = \"127.0.0.1:0\"\npool = \"reset\"\n[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"clean\"\n\
         [pool.reset]\nservers = [\"{resetter}\"]\n[pool.clean]\nservers = [\"{echo}\"]\n"
    ))
    .await
}

/// Bulk transfers go through pooled pipes (splice) while more than one runs.
/// A transfer that dies with bytes still in a pipe (the server resets
/// mid-stream while the client keeps sending) must not hand those bytes to
/// the next connection that takes a pipe from the pool. A second bulk
/// transfer runs beside each poisoned one, so that it splices.
/// Current-thread runtime: the LB's tasks, and so its per-thread pools, are
/// all on this one thread.
#[tokio::test]
async fn pooled_pipes_never_carry_bytes_from_one_connection_to_the_next() {
    const POISON: u8 = 0xEE;
    let resetter = scripted(|mut s: TcpStream| async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < 300 * 1024 {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
        socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
    })
    .await;
    let echo = Echo::start().await;
    let lb = lb_with_resetting_and_echo_pools(resetter, echo.addr).await;
    let (reset_addr, clean_addr) = (lb.listener_addrs()[0], lb.listener_addrs()[1]);
    let discarded = ucp_lb::splice::discarded();
    for round in 0..5u64 {
        let beside = TcpStream::connect(clean_addr).await.unwrap();
        let beside = tokio::spawn(send_and_receive(beside, round + 100, 16 << 20));
        // Poison: 4 MiB of 0xEE towards a server that resets after 300 KiB.
        let mut s = TcpStream::connect(reset_addr).await.unwrap();
        let poison = vec![POISON; 256 * 1024];
        for _ in 0..16 {
            if s.write_all(&poison).await.is_err() {
                break;
            }
        }
        assert!(within("poisoned client closed", closed(&mut s)).await);
        let (sent, got, _) = within("transfer beside", beside).await.unwrap();
        assert_eq!(got, sent, "round {round}: the transfer beside the poisoned one");
        // Clean: 1 MiB each way through the echo server, byte for byte.
        for i in 0..4 {
            let mut data = vec![0u8; 1 << 20];
            fill(round * 10 + i + 1, &mut data);
            data.iter_mut().filter(|b| **b == POISON).for_each(|b| *b = 0);
            let mut s = TcpStream::connect(clean_addr).await.unwrap();
            let (mut r, mut w) = s.split();
            let send = async {
                w.write_all(&data).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let mut back = Vec::new();
            let (_, got) = within("clean transfer", async { tokio::join!(send, r.read_to_end(&mut back)) }).await;
            got.unwrap();
            assert_eq!(back.len(), data.len(), "round {round}: length");
            assert!(!back.contains(&POISON), "round {round}: bytes of the reset connection leaked into this one");
            assert!(back == data, "round {round}: content differs");
        }
    }
    assert!(ucp_lb::splice::discarded() > discarded, "no poisoned pipe was discarded: the test did not splice");
}

/// A server behind a 64 KiB receive buffer that takes 1000 bytes at a time:
/// splices out of a pipe (64 KiB each) and buffered writes come out partial
/// again and again. 8 MiB each way must arrive unchanged, for two clients at
/// once (two bulk transfers, so they splice) and for one alone (buffer). (Below the
/// loopback MSS, a receive buffer stalls any sender on zero-window probes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_writes_to_a_slow_reader_lose_nothing() {
    let slow = scripted(|s: TcpStream| async move {
        let _ = socket2::SockRef::from(&s).set_recv_buffer_size(64 * 1024);
        let (mut r, mut w) = s.into_split();
        let mut buf = [0u8; 1000];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if w.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = w.shutdown().await;
    })
    .await;
    let lb = start_lb(&one_pool(&[slow], "")).await;
    const N: usize = 8 << 20;
    let bursts = ucp_lb::splice::bursts();
    let two = (0..2u64).map(|i| {
        let addr = lb.listener_addrs()[0];
        tokio::spawn(async move { send_and_receive(TcpStream::connect(addr).await.unwrap(), 7 + i, N).await })
    });
    for t in two.collect::<Vec<_>>() {
        let (sent, got, n) = within("8 MiB through a slow reader, two at once", t).await.unwrap();
        assert_eq!(n, N);
        assert_eq!(got, sent);
    }
    assert!(ucp_lb::splice::bursts() > bursts, "two bulk transfers at once did not splice");
    let s = TcpStream::connect(lb.listener_addrs()[0]).await.unwrap();
    let (sent, got, n) = within("8 MiB through a slow reader", send_and_receive(s, 9, N)).await;
    assert_eq!(n, N);
    assert_eq!(got, sent);
}
