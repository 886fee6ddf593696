//! The byte path: both directions of one connection, unchanged and unbuffered.
//!
//! Each direction waits for its socket to become readable and only then
//! takes a 32 KiB buffer from a per-thread pool; it gives the buffer back as
//! soon as the socket is drained and everything read was written. An idle
//! connection therefore holds no buffer at all, and nothing is allocated per
//! read. (`tokio::io::copy_bidirectional` keeps two 8 KiB buffers for a
//! connection's whole life.) A buffer only ever carries `buf[..n]` of the
//! read that just filled it, so nothing of one client can reach another.
//!
//! A read that fills the whole buffer means a bulk transfer: the rest of
//! that burst goes through a pooled pipe with `splice(2)` (`splice.rs`), so
//! its bytes never enter user space; small messages stay on the buffer.
//!
//! EOF on one side is passed on as a half-close (`shutdown(SHUT_WR)`) while
//! the other direction keeps flowing; an error on either side ends both,
//! and the caller closes the other socket.

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::splice::{self, Burst, BurstError};

// 32 KiB: on loopback (MTU 64 KiB) a 64 KiB write leaves a 53-byte tail
// segment each time; one stream through the LB measured 11 Gbit/s with
// 64 KiB, 15.1 with 16 KiB, 15.5 with 32 KiB and 14.7 with 256 KiB
// (iperf3, proxy pinned to one core).
const BUF_SIZE: usize = 32 * 1024;
/// Free buffers kept per worker thread; more are freed.
const POOL_MAX: usize = 32;

thread_local! {
    static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A pooled buffer, returned to the current thread's pool on drop.
struct Buf(Option<Box<[u8]>>);

impl Buf {
    fn take() -> Buf {
        let b = FREE.try_with(|f| f.borrow_mut().pop()).ok().flatten();
        Buf(Some(b.unwrap_or_else(|| vec![0u8; BUF_SIZE].into_boxed_slice())))
    }

    fn bytes(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().unwrap_or_default()
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            // At thread exit the pool may already be gone: then just free it.
            let _ = FREE.try_with(|f| {
                let mut f = f.borrow_mut();
                if f.len() < POOL_MAX {
                    f.push(b);
                }
            });
        }
    }
}

/// Which socket an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides closed their write half.
    Closed,
    IdleTimeout,
    /// The shutdown grace period ran out.
    Shutdown,
    Error {
        side: Side,
        kind: io::ErrorKind,
    },
}

impl End {
    pub fn as_str(&self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::IdleTimeout => "idle timeout",
            End::Shutdown => "shutdown",
            End::Error { side: Side::Client, .. } => "client error",
            End::Error { side: Side::Server, .. } => "server error",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub to_server: u64,
    pub to_client: u64,
    pub end: End,
}

/// When bytes last moved, for the idle timeout; nanoseconds since `start`.
struct Activity {
    start: Instant,
    last: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last.store(self.start.elapsed().as_nanos() as u64, Relaxed);
    }

    async fn expired(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_nanos(self.last.load(Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

struct PipeError {
    side: Side,
    err: io::Error,
}

/// Copies both ways until both sides have closed, an error, the idle timeout
/// or `force_close`.
/// Byte totals are added to the server's counters this often while a
/// connection lives, so a `docker push` lasting an hour shows in /metrics
/// before it ends.
const FLUSH_EVERY: Duration = Duration::from_secs(10);

/// Where a connection's bytes are counted: (client to server, server to
/// client), added every [`FLUSH_EVERY`] and at the end.
pub type Totals<'a> = (&'a AtomicU64, &'a AtomicU64);

pub async fn bidirectional(
    client: &TcpStream,
    server: &TcpStream,
    idle: Option<Duration>,
    force_close: &CancellationToken,
    totals: Totals<'_>,
) -> Outcome {
    let activity = Activity { start: Instant::now(), last: AtomicU64::new(0) };
    let track = idle.map(|_| &activity);
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let half_closed = AtomicBool::new(false);
    let mut flushed = (0u64, 0u64);
    let mut flush = || {
        let (u, d) = (up.load(Relaxed), down.load(Relaxed));
        totals.0.fetch_add(u - flushed.0, Relaxed);
        totals.1.fetch_add(d - flushed.1, Relaxed);
        flushed = (u, d);
    };
    let end = {
        let both = async {
            tokio::try_join!(
                pipe(client, server, Side::Client, Side::Server, &up, track, &half_closed),
                pipe(server, client, Side::Server, Side::Client, &down, track, &half_closed),
            )
        };
        // Boxed when there is an idle timeout: the default (none) then
        // costs a connection nothing.
        let idle_expired = async {
            match idle {
                Some(d) => Box::pin(activity.expired(d)).await,
                None => std::future::pending().await,
            }
        };
        let mut both = std::pin::pin!(both);
        let mut idle_expired = std::pin::pin!(idle_expired);
        let mut tick = tokio::time::interval_at(Instant::now() + FLUSH_EVERY, FLUSH_EVERY);
        let mut keepalive_set = false;
        loop {
            tokio::select! {
                r = &mut both => break match r {
                    Ok(_) => End::Closed,
                    Err(PipeError { side, err }) => End::Error { side, kind: err.kind() },
                },
                _ = &mut idle_expired => break End::IdleTimeout,
                _ = force_close.cancelled() => break End::Shutdown,
                _ = tick.tick() => {
                    flush();
                    if !keepalive_set {
                        // Idle dead peers are found by keepalive (60 s, then
                        // 10 s x 6). The client socket inherits it from the
                        // listener; the server socket gets it here, on
                        // connections that last: four syscalls saved on every
                        // short one. Its timer counts from the last segment,
                        // so setting it late changes nothing.
                        keepalive_set = true;
                        let _ = SockRef::from(server).set_tcp_keepalive(&crate::proxy::keepalive());
                    }
                }
            }
        }
    };
    flush();
    Outcome { to_server: up.load(Relaxed), to_client: down.load(Relaxed), end }
}

async fn pipe(
    src: &TcpStream,
    dst: &TcpStream,
    src_side: Side,
    dst_side: Side,
    moved: &AtomicU64,
    activity: Option<&Activity>,
    half_closed: &AtomicBool,
) -> Result<(), PipeError> {
    let read_err = |err| PipeError { side: src_side, err };
    let write_err = |err| PipeError { side: dst_side, err };
    let count = |n: usize| {
        moved.fetch_add(n as u64, Relaxed);
        if let Some(a) = activity {
            a.touch();
        }
    };
    // Pass the half-close on; the other direction goes on. After the
    // second EOF both directions are done and the caller closes both
    // sockets now, which sends the FIN (nothing is left unread on either):
    // no shutdown then.
    let eof = || {
        if half_closed.swap(true, Relaxed) {
            return Ok(());
        }
        match SockRef::from(dst).shutdown(Shutdown::Write) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(write_err(e)),
            _ => Ok(()),
        }
    };
    loop {
        src.readable().await.map_err(read_err)?;
        // Taken only now that there is something to read: an idle
        // connection holds no buffer.
        let mut buf = Buf::take();
        loop {
            match read_clearing(src, buf.bytes()) {
                Ok(0) => return eof(),
                Ok(n) => {
                    write_all(dst, &buf.bytes()[..n]).await.map_err(write_err)?;
                    count(n);
                    if n < BUF_SIZE {
                        continue;
                    }
                    // A full buffer: a bulk transfer. The rest of this
                    // burst goes through a pipe, never through user space.
                    drop(buf);
                    // Boxed: its state exists only during a burst, and an idle
                    // connection's future stays small.
                    match Box::pin(splice::burst(src, dst, count)).await {
                        Ok(Burst::Drained(_)) => break,
                        Ok(Burst::Eof(_)) => return eof(),
                        Ok(Burst::NoPipe) => buf = Buf::take(),
                        Err(BurstError::Read(e)) => return Err(read_err(e)),
                        Err(BurstError::Write(e)) => return Err(write_err(e)),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_err(e)),
            }
        }
    }
}

/// Reads what `src` has into `buf`. A short read (less than `buf` holds)
/// means the socket was drained, so its read readiness is cleared right
/// there, as nginx does with edge-triggered epoll: the next read waits for
/// a new event instead of costing a recvfrom that ends in EAGAIN (one
/// syscall less per message each way). Nothing is missed: bytes that came
/// after the read bring a new event, and tokio then keeps the readiness;
/// a FIN leaves "read closed" set, which is never cleared, so the next wait
/// returns at once and the read gives 0.
fn read_clearing(src: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut short = None;
    let len = buf.len();
    let r = src.try_io(Interest::READABLE, || {
        let n = rustix::io::read(src, &mut *buf).map_err(io::Error::from)?;
        if n > 0 && n < len {
            short = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match (r, short) {
        (Err(e), Some(n)) if e.kind() == io::ErrorKind::WouldBlock => Ok(n),
        (r, _) => r,
    }
}

async fn write_all(dst: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    // Most writes go out at once; only a full socket needs to wait, and
    // that wait's state is boxed, so an idle connection's future does not
    // carry it.
    loop {
        match dst.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) if n == data.len() => return Ok(()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Box::pin(write_waiting(dst, data)).await,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

async fn write_waiting(dst: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        dst.writable().await?;
        match dst.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
