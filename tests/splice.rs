//! The splice path of the byte path (`src/splice.rs`). The LB splices
//! every bulk burst (a read that fills the buffer); each test checks that
//! its transfer did go through a pipe.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_64_mib_each_way_arrives_unchanged_through_pipes() {
    let echo = Echo::start().await;
    let lb = each_way_through_lb(echo.addr, 3, 64 << 20, "64 MiB each way").await;
    assert!(lb.conns().splice_bursts.load(Relaxed) > 0, "nothing went through a pipe");
}

/// Splices out of a pipe into a slow reader come out partial again and
/// again; 8 MiB each way must arrive unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_splices_to_a_slow_reader_lose_nothing() {
    let lb = each_way_through_lb(slow_echo().await, 7, 8 << 20, "8 MiB through a slow reader").await;
    assert!(lb.conns().splice_bursts.load(Relaxed) > 0, "nothing went through a pipe");
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

/// A transfer that dies with bytes still in a pipe (the server resets
/// while the LB is blocked writing to it) must not hand those bytes to the
/// next connection that takes a pipe from the pool. One worker thread: the
/// LB's tasks, and so its per-thread pools, are all on it; the test body
/// runs on its own thread beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn pooled_pipes_never_carry_bytes_from_one_connection_to_the_next() {
    const POISON: u8 = 0xEE;
    let reset = Arc::new(Notify::new());
    let go = reset.clone();
    let resetter = scripted(move |mut s: TcpStream| {
        let go = go.clone();
        async move {
            // Reads 300 KiB, then nothing: the LB's writes to it back up
            // until it is told to reset.
            let _ = socket2::SockRef::from(&s).set_recv_buffer_size(64 * 1024);
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0;
            while got < 300 * 1024 {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got += n,
                }
            }
            go.notified().await;
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        }
    })
    .await;
    let echo = Echo::start().await;
    let lb = lb_with_resetting_and_echo_pools(resetter, echo.addr).await;
    let (reset_addr, clean_addr) = (lb.listener_addrs()[0], lb.listener_addrs()[1]);
    for round in 0..5u64 {
        // Poison: 0xEE towards the resetter until the writes stall (64 MiB
        // is more than all the buffers between can hold), so the LB is
        // blocked with poison in its pipe; then the server resets.
        let mut s = TcpStream::connect(reset_addr).await.unwrap();
        let poison = vec![POISON; 256 * 1024];
        for _ in 0..256 {
            match tokio::time::timeout(Duration::from_millis(500), s.write_all(&poison)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => break,
            }
        }
        reset.notify_one();
        assert!(within("poisoned client closed", closed(&mut s)).await);
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
    assert!(
        lb.conns().splice_discarded.load(Relaxed) > 0,
        "no pipe was left holding poisoned bytes: the test did not test"
    );
}
