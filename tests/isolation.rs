//! Two load balancers in one process do not see each other: each has its
//! own connections, byte-path counters, access-log writer and stop
//! request (nothing of that lives in a process static).

mod common;

use std::sync::atomic::Ordering::Relaxed;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

async fn lb_logging_to(echo: std::net::SocketAddr, log: &std::path::Path) -> ucp_lb::Running {
    let toml = one_pool(&[echo], "").replacen(
        "[[listener]]\n",
        &format!("[[listener]]\naccess_log = \"{}\"\n", log.display()),
        1,
    );
    start_lb(&toml).await
}

/// A connection through `lb` that has passed one byte each way.
async fn open_through(lb: &ucp_lb::Running) -> TcpStream {
    let mut s = TcpStream::connect(lb.listener_addrs()[0]).await.unwrap();
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    within("the echo of one byte", s.read_exact(&mut b)).await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_balancers_in_one_process_see_only_their_own_connections_counters_and_stop() {
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let a = lb_logging_to(echo.addr, &dir.path().join("a.log")).await;
    let b = lb_logging_to(echo.addr, &dir.path().join("b.log")).await;

    // Connections: two through A, one through B.
    let a1 = open_through(&a).await;
    let a2 = open_through(&a).await;
    let mut b1 = open_through(&b).await;
    eventually("A holds its two connections", || a.conns().open() == 2).await;
    eventually("B holds its one", || b.conns().open() == 1).await;

    // Counters: a bulk transfer through A only goes through A's pipes.
    each_way_through_lb_of(&a, 4 << 20).await;
    assert!(a.conns().splice_bursts.load(Relaxed) > 0, "A's bulk transfer went through no pipe");
    assert_eq!(b.conns().splice_bursts.load(Relaxed), 0, "B counted A's splice bursts");

    // Access log: A's closed connections are written by A's writer only.
    drop(a2);
    eventually("A wrote the lines of its two closed connections", || a.conns().access_log.written() == 2).await;
    assert_eq!(b.conns().access_log.written(), 0, "B's writer wrote A's lines");

    // The stop request: A's open connection stops and is handed over; B's
    // goes on passing bytes and is not asked to stop.
    let (tx, mut rx) = mpsc::unbounded_channel();
    a.conns().stop_into(tx);
    let parked = within("A's connection handed over", rx.recv()).await.expect("A's sink closed");
    assert_eq!(parked.moved.peer, a1.local_addr().unwrap(), "the connection handed over is A's");
    assert!(!b.conns().stopping(), "B saw A's stop request");
    b1.write_all(b"y").await.unwrap();
    let mut got = [0u8; 1];
    within("B's connection still echoes", b1.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got, b"y");
    assert_eq!(b.conns().open(), 1, "B's connection was touched by A's stop");
    assert!(rx.try_recv().is_err(), "B's connection reached A's sink");
}

/// `len` bytes each way through `lb` on a connection of its own, closed at
/// the end.
async fn each_way_through_lb_of(lb: &ucp_lb::Running, len: usize) {
    let s = TcpStream::connect(lb.listener_addrs()[0]).await.unwrap();
    let (sent, got, n) = within("a bulk transfer", send_and_receive(s, 9, len)).await;
    assert_eq!(n, len);
    assert_eq!(got, sent);
}
