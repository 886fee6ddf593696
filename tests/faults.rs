//! Faults and hostile peers: what a client sees when a server or another
//! client misbehaves. Each test prints what it measured (`cargo test --test
//! faults -- --nocapture`); docs/behaviour.md's "Failure behaviour" quotes them.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use common::*;
use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// No progress for this long means the writer is blocked: the window is
/// full from one end to the other. (A stall on a loaded machine only makes
/// the figure smaller; the assertions are upper bounds.)
const STALLED: Duration = Duration::from_millis(500);
/// Far above what the kernel buffers of the whole path can hold.
const UNBOUNDED: usize = 64 << 20;

/// Writes `chunk` until a write makes no progress for STALLED; returns the
/// bytes written.
async fn write_until_blocked(s: &mut TcpStream) -> usize {
    let chunk = vec![0x5a; 64 * 1024];
    let mut sent = 0;
    while let Ok(r) = tokio::time::timeout(STALLED, s.write(&chunk)).await {
        sent += r.expect("the write fails only if the path breaks");
        assert!(sent < UNBOUNDED, "{sent} bytes went in without the other end reading: no back-pressure");
    }
    sent
}

/// What the LB itself holds of one direction at most: one pipe of 256 KiB
/// (src/splice.rs, `PIPE_CAP`), or its 32 KiB buffer, which is written out
/// before a splice starts.
const LB_HOLDS: usize = 256 << 10;
/// A socket queue may take one more segment (64 KiB on loopback) once it
/// reaches its limit before it refuses more.
const SEGMENT: usize = 64 << 10;
/// What the test asks for its own two ends (the kernel doubles it).
const TEST_BUFFER: u32 = 128 << 10;

/// Each socket's buffer limit as the kernel reports it (getsockopt): twice
/// what was asked, bookkeeping included, so the bytes it queues stay below
/// it; the LB's own sockets grow theirs by autotuning, and are read after
/// the writes stopped, when they are at their largest.
fn send_buffer(fd: &impl std::os::fd::AsFd) -> usize {
    SockRef::from(fd).send_buffer_size().unwrap()
}

fn recv_buffer(fd: &impl std::os::fd::AsFd) -> usize {
    SockRef::from(fd).recv_buffer_size().unwrap()
}

/// The most the four sockets of a path (writer, the LB's two, reader) and
/// the LB between them can hold while the reader reads nothing: written
/// bytes beyond it would be buffered somewhere they should not be.
fn path_bound(buffers: [usize; 4]) -> usize {
    buffers.iter().sum::<usize>() + 4 * SEGMENT + LB_HOLDS
}

/// A listener on loopback whose accepted sockets get `TEST_BUFFER` as
/// their receive and send buffers (inherited from it).
fn small_listener() -> TcpListener {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.set_recv_buffer_size(TEST_BUFFER).unwrap();
    s.set_send_buffer_size(TEST_BUFFER).unwrap();
    s.bind(loopback()).unwrap();
    s.listen(16).unwrap()
}

/// A client of `addr` with `TEST_BUFFER` as its receive and send buffers.
async fn small_client(addr: SocketAddr) -> TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.set_recv_buffer_size(TEST_BUFFER).unwrap();
    s.set_send_buffer_size(TEST_BUFFER).unwrap();
    s.connect(addr).await.unwrap()
}

#[tokio::test]
async fn a_server_that_never_reads_pushes_back_on_the_client() {
    let listener = small_listener();
    let addr = listener.local_addr().unwrap();
    let (held_tx, held) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        // Held open, never read, until the test ends.
        let _ = held_tx.send(s);
    });
    let lb = start_lb(&one_pool(&[addr], "")).await;
    let lb_addr = lb.listener_addrs()[0];
    let mut c = small_client(lb_addr).await;
    let sent = within("writes stop", write_until_blocked(&mut c)).await;
    let server_side = within("the server's socket", held).await.unwrap();
    let (lb_client, lb_server) = lb_sockets(&c, lb_addr, addr);
    let buffers = [send_buffer(&c), recv_buffer(&lb_client), send_buffer(&lb_server), recv_buffer(&server_side)];
    let bound = path_bound(buffers);
    eprintln!(
        "server never reads: the client wrote {} KiB, then its writes blocked (buffers {buffers:?}, bound {} KiB)",
        sent >> 10,
        bound >> 10
    );
    assert!(sent <= bound, "{sent} bytes went in, more than the path holds ({bound}): the LB buffers without bound");
}

#[tokio::test]
async fn a_client_that_never_reads_pushes_back_on_the_server() {
    let listener = small_listener();
    let addr = listener.local_addr().unwrap();
    let (done_tx, done) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let n = write_until_blocked(&mut s).await;
        // The socket goes with the count, held open until the test ends.
        let _ = done_tx.send((n, s));
    });
    let lb = start_lb(&one_pool(&[addr], "")).await;
    let lb_addr = lb.listener_addrs()[0];
    let c = small_client(lb_addr).await;
    let (written, server_side) = within("the server's writes stop", done).await.unwrap();
    let (lb_client, lb_server) = lb_sockets(&c, lb_addr, addr);
    let buffers = [send_buffer(&server_side), recv_buffer(&lb_server), send_buffer(&lb_client), recv_buffer(&c)];
    let bound = path_bound(buffers);
    eprintln!(
        "client never reads: the server wrote {} KiB, then its writes blocked (buffers {buffers:?}, bound {} KiB)",
        written >> 10,
        bound >> 10
    );
    assert!(
        written <= bound,
        "{written} bytes went in, more than the path holds ({bound}): the LB buffers without bound"
    );
}

/// 500 clients that reset at once and 500 that send garbage and leave:
/// nothing stays open in the LB, and the next client is served.
#[tokio::test]
async fn resets_and_garbage_from_clients_leave_nothing_behind() {
    let echo = Echo::start().await;
    let lb = start_lb(&one_pool(&[echo.addr], "")).await;
    let addr = lb.listener_addrs()[0];
    for _ in 0..500 {
        let s = TcpStream::connect(addr).await.unwrap();
        SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
        drop(s); // RST
    }
    for i in 0..500u32 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let garbage: Vec<u8> =
            (0..1024u32).map(|j| (j.wrapping_mul(2_654_435_761).wrapping_add(i) >> 7) as u8).collect();
        let _ = s.write_all(&garbage).await;
        if i.is_multiple_of(2) {
            SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
        }
    }
    eventually("every connection gone from the LB", || {
        lb.listeners()[0].active.load(Relaxed) == 0 && server(&lb, echo.addr).active == 0
    })
    .await;
    let l = &lb.listeners()[0];
    eprintln!(
        "1000 hostile clients: accepted {}, open afterwards {}; the next client is served",
        l.accepted.load(Relaxed),
        l.active.load(Relaxed)
    );
    round_trip(addr).await.unwrap();
}

/// A server that resets every other connection right after accepting it:
/// each client either gets its own bytes back or a close, never a hang or
/// someone else's bytes, and the LB keeps serving.
#[tokio::test]
async fn a_server_resetting_half_its_connections_affects_only_those() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut n = 0u64;
        while let Ok((s, _)) = listener.accept().await {
            n += 1;
            if n.is_multiple_of(2) {
                SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
                drop(s);
                continue;
            }
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let lb = start_lb(&one_pool(&[addr], "")).await;
    let lb_addr = lb.listener_addrs()[0];
    let (mut ok, mut closed) = (0, 0);
    // One client at a time, so the server's n-th connection is client n-1's:
    // the server resets the connections of clients 1, 3, 5, ... and echoes
    // for clients 0, 2, 4, ...
    for i in 0..200u32 {
        let mut c = TcpStream::connect(lb_addr).await.unwrap();
        let msg = i.to_be_bytes();
        let _ = c.write_all(&msg).await;
        let mut back = [0u8; 4];
        match within("an answer or a close", c.read_exact(&mut back)).await {
            Ok(_) => {
                assert_eq!(back, msg, "client {i} got bytes that were not its own");
                assert_eq!(i % 2, 0, "client {i}: its connection was reset by the server, yet it was answered");
                ok += 1;
            }
            Err(_) => {
                assert_eq!(i % 2, 1, "client {i}: the server echoes on its connection, yet it was closed");
                closed += 1;
            }
        }
    }
    assert_eq!((ok, closed), (100, 100));
    eprintln!("server resets every other connection: {ok} of 200 clients served, {closed} closed, none hung");
}

/// 200 round trips on `c`: (p50, p99) in µs.
async fn round_trips(c: &mut TcpStream) -> (f64, f64) {
    let mut times = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        within("round trip", echo_once(c)).await.unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    (times[100], times[198])
}

/// Thousands of connections that send nothing (slowloris) while a normal
/// client keeps doing round trips: every round trip is answered (each
/// within the test deadline) and every idle connection stays open through
/// the LB. How long the round trips take is printed, not asserted: the
/// benchmark (benches/l4.rs, ping-pong with idle connections held) measures
/// it beside nginx and HAProxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_client_is_answered_while_thousands_of_idle_connections_are_held() {
    // This process holds four descriptors per idle connection (client, the
    // LB's two, the echo server's): as many as its limit allows, at most 4,000.
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum.unwrap_or(20_000);
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit { current: Some(hard), maximum: Some(hard) },
    );
    let n = ((hard.saturating_sub(1_000)) / 4).min(4_000) as usize;
    let echo = Echo::start().await;
    let lb = start_lb(&one_pool(&[echo.addr], "")).await;
    let addr = lb.listener_addrs()[0];
    let mut c = TcpStream::connect(addr).await.unwrap();
    let before = round_trips(&mut c).await;
    let mut idle = Vec::with_capacity(n);
    for _ in 0..n {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    eventually("every idle client connected through", || server(&lb, echo.addr).active as usize > n).await;
    let during = round_trips(&mut c).await;
    eprintln!(
        "{n} idle connections: a normal client's round trip p50/p99 {:.0}/{:.0} µs before, {:.0}/{:.0} µs with them open",
        before.0, before.1, during.0, during.1
    );
    // Still all there: none was dropped to make room.
    assert_eq!(lb.listeners()[0].active.load(Relaxed) as usize, n + 1, "the idle clients and the normal one");
    assert_eq!(server(&lb, echo.addr).active as usize, n + 1);
    for s in &idle {
        let mut one = [0u8; 1];
        assert!(
            s.try_read(&mut one).is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
            "an idle client was closed"
        );
    }
    drop(idle);
}

/// A server that dies in the middle of a transfer: the client sees the
/// connection end (no hang), and the next client goes elsewhere.
#[tokio::test]
async fn a_server_dying_mid_stream_ends_the_client_connection_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dying: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let _ = s.read_exact(&mut buf).await;
        // Dies with bytes unread: the kernel resets the connection.
        drop(s);
        drop(listener);
    });
    let other = Echo::start().await;
    let lb = start_lb(&one_pool(&[dying, other.addr], "")).await;
    let addr = lb.listener_addrs()[0];
    // Round robin: the first client goes to the dying server.
    let c = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = c.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..64 {
            if w.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let t = Instant::now();
    let mut buf = [0u8; 1024];
    let end = within("the client sees the end", async {
        loop {
            match r.read(&mut buf).await {
                Ok(0) => return "closed",
                Err(_) => return "reset",
                Ok(_) => {}
            }
        }
    })
    .await;
    eprintln!(
        "server died mid-stream: the client saw the connection {end} {:.1} ms later",
        t.elapsed().as_secs_f64() * 1e3
    );
    let _ = writer.await;
    round_trip(addr).await.unwrap();
}

/// A server that is up 150 ms, down 150 ms, twelve times, behind an active
/// check and passive ejection, while clients keep connecting: the LB's
/// listener never closes or moves, no client hangs, the only failures are
/// connections the server's own closing listener reset, and afterwards
/// nothing is left over (no connection counted open, no descriptor held,
/// the pool still has its two servers). The LB runs as its own process, so
/// its descriptors are counted apart from this test binary's, where other
/// tests open thousands at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_server_does_not_flap_the_listener_or_leak_state() {
    let stable = Echo::start().await;
    let flapping = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let flap_addr = flapping.local_addr().unwrap();
    drop(flapping);
    let toml = format!(
        "{}\n[pool.p.health]\nkind = \"tcp\"\ninterval = \"50ms\"\ntimeout = \"1s\"\nrise = 1\nfall = 1\n",
        one_pool(&[stable.addr, flap_addr], "max_fails = 1\nfail_timeout = \"100ms\"\nretries = 1")
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    std::fs::write(&path, toml).unwrap();
    let lb = Proc::lb(&path);
    let (addr, admin) = (lb.listener_addr().await, lb.admin_addr().await);
    let pid = lb.child.id();
    let fds = move || std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    let status = || async move {
        let answer = http_raw(admin, "GET", "/status", None).await;
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
        serde_json::from_str::<serde_json::Value>(&body).expect("/status is JSON")
    };
    // Once a client is served the accept loop holds its spare descriptor.
    round_trip(addr).await.unwrap();
    let fds_before = fds();

    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Relaxed) {
                // A hang would fail the test through `within` below.
                match round_trip(addr).await {
                    Ok(()) => served.fetch_add(1, Relaxed),
                    Err(_) => failed.fetch_add(1, Relaxed),
                };
                // Not synchronisation: paces the client load.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    // The flaps: each "up" is a new listener on the same address; "down"
    // closes it (what the server's process ending does).
    let (downs, mut served_by_flapper) = (12u64, 0usize);
    for _ in 0..downs {
        let l = eventually_some_async("rebind", || async { TcpListener::bind(flap_addr).await.ok() }).await;
        let echo = Echo::on(l);
        // Not synchronisation: the flaps' rhythm (150 ms up, 150 ms down)
        // is the fault this test injects.
        tokio::time::sleep(Duration::from_millis(150)).await;
        served_by_flapper += echo.count();
        drop(echo);
        // Not synchronisation: the "down" half of the flap.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    stop.store(true, Relaxed);
    for c in clients {
        within("clients stop", c).await.unwrap();
    }
    let (served, failed) = (served.load(Relaxed), failed.load(Relaxed));
    let st = status().await;
    let listener = &st["listeners"][0];
    eprintln!(
        "{downs} flaps: {served} clients served ({served_by_flapper} of them by the flapping server while up), \
         {failed} failed (a closing listener resets its backlog); LB listener {} accepted {} and rejected {}",
        listener["local"], listener["accepted"], listener["rejected_max_connections"]
    );
    assert_eq!(st["listeners"].as_array().map(Vec::len), Some(1));
    assert_eq!(listener["local"], addr.to_string(), "the listener stayed where it was");
    assert_eq!(listener["accepted"], served + failed + 1, "every client was accepted by the LB");
    assert!(served_by_flapper > 0, "the flapping server was used while up");
    // Four clients, each with at most one connection on its way: at most
    // four can sit in the backlog that a closing listener resets.
    assert!(failed <= 4 * downs, "{failed} failed: more than the closing listener can reset");

    // Afterwards: nothing counted open, no descriptor left, same servers.
    eventually_async("no connection counted open", || async move { status().await["listeners"][0]["active"] == 0 })
        .await;
    eventually("the LB's descriptors back", || fds() <= fds_before).await;
    let st = status().await;
    let servers = st["pools"][0]["servers"].as_array().cloned().unwrap_or_default();
    let addrs: Vec<String> = servers.iter().map(|s| s["addr"].as_str().unwrap_or("").to_owned()).collect();
    assert_eq!(addrs, vec![stable.addr.to_string(), flap_addr.to_string()]);
    assert!(servers.iter().all(|s| s["active"] == 0), "no connection counted open to a server");
}

/// Reads until the stream ends: the bytes, and how it ended (`Ok` for a
/// clean EOF, the error kind for a reset).
async fn read_to_end_or_error(s: &mut TcpStream) -> (usize, Result<(), std::io::ErrorKind>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0;
    loop {
        match s.read(&mut buf).await {
            Ok(0) => return (n, Ok(())),
            Ok(m) => n += m,
            Err(e) => return (n, Err(e.kind())),
        }
    }
}

/// A server that sends 1 MiB and then resets: the client reads what came
/// and then a reset, never a clean end of stream (which would make the
/// truncated transfer look complete). And a server that sends 1 MiB and
/// closes normally: the client reads all of it and a clean end. Five times
/// each.
#[tokio::test]
async fn an_upstream_reset_reaches_the_client_as_a_reset_and_a_fin_as_a_fin() {
    for reset in [true, false] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = s.write_all(&vec![9u8; 1 << 20]).await;
                    if reset {
                        SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
                    } else {
                        let _ = s.shutdown().await;
                        // Holds its end until the client has read everything.
                        let mut rest = Vec::new();
                        let _ = s.read_to_end(&mut rest).await;
                    }
                });
            }
        });
        let lb = start_lb(&one_pool(&[addr], "")).await;
        for run in 0..5 {
            let mut c = TcpStream::connect(lb.listener_addrs()[0]).await.unwrap();
            let (n, end) = within("the end of the stream", read_to_end_or_error(&mut c)).await;
            if reset {
                assert_eq!(end, Err(std::io::ErrorKind::ConnectionReset), "run {run}: {n} bytes, then a clean EOF");
                assert!(n <= 1 << 20);
            } else {
                assert_eq!((n, end), (1 << 20, Ok(())), "run {run}: a FIN passed on as a FIN, after every byte");
            }
        }
    }
}

/// A client that sends a few bytes, half-closes, and then resets, in front
/// of a server that reads to the end and then holds its connection open,
/// never writing: the LB notices the reset on the half-closed side, ends the
/// connection (its counts go back to zero, the server's side is reset)
/// instead of holding both sockets for as long as the server lives.
#[tokio::test]
async fn a_client_gone_after_its_half_close_is_released() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (held_tx, held) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        // Handed to the test, which holds it open.
        let _ = held_tx.send((got, s));
    });
    let lb = start_lb(&one_pool(&[addr], "")).await;
    let mut c = TcpStream::connect(lb.listener_addrs()[0]).await.unwrap();
    c.write_all(b"hello").await.unwrap();
    c.shutdown().await.unwrap();
    let (got, upstream) = within("the server sees the half-close", held).await.unwrap();
    assert_eq!(got, b"hello");
    assert_eq!(lb.listeners()[0].active.load(Relaxed), 1);
    // The client goes: a reset after its FIN.
    SockRef::from(&c).set_linger(Some(Duration::ZERO)).unwrap();
    drop(c);
    eventually("the connection released", || {
        lb.listeners()[0].active.load(Relaxed) == 0 && server(&lb, addr).active == 0
    })
    .await;
    // The server's side was closed abortively: a write soon fails.
    eventually("a write to the released connection fails (the LB no longer holds the server's side)", || {
        upstream.try_write(b"x").is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock)
    })
    .await;
}
