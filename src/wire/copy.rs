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
//! the burst goes through a pooled pipe with `splice(2)` (`splice.rs`), so
//! its bytes never enter user space. Measured (benches/run.sh, 2026-11-30,
//! three rounds on each topology, beside nginx and HAProxy): one stream
//! spliced moved 1.19-1.36 x the bytes of the buffer at 0.44 x its CPU per
//! GiB, on loopback and between network namespaces; eight streams, which
//! spliced already, 0.92-0.95 x. (Until then only bursts that shared the
//! proxy with another spliced: an earlier machine had measured a lone
//! stream 10-20 % slower through pipes; `UCP_LB_SPLICE=shared` keeps that
//! rule, for measuring.) Small messages always stay on the buffer.
//!
//! EOF on one side is passed on as a half-close (`shutdown(SHUT_WR)`) while
//! the other direction keeps flowing, and the half-closed side is still
//! watched for errors, so a peer that goes after its FIN (a reset, a
//! keepalive timeout) ends the connection; an error on either side ends
//! both, and the caller closes the other socket abortively (an RST), so a
//! truncated transfer never looks complete.

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::task::Poll;
use std::time::Duration;

use socket2::SockRef;
use tokio::io::{Interest, Ready};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::Keepalive;
use crate::wire::closing::{self, Closing};
use crate::wire::conns::{Conns, Registration};
use crate::wire::splice::{self, Burst, BurstError};

// 32 KiB: on loopback (MTU 64 KiB) a 64 KiB write leaves a 53-byte tail
// segment each time; one stream through the LB measured 11 Gbit/s with
// 64 KiB, 15.1 with 16 KiB, 15.5 with 32 KiB and 14.7 with 256 KiB
// (iperf3, proxy pinned to one core).
const BUF_SIZE: usize = 32 * 1024;
/// Free buffers kept per worker thread; more are freed.
const POOL_MAX: usize = 32;

// Empty buffers kept by each worker thread: per thread (not per balancer)
// because the threads are the runtime's, shared by whatever runs on them; a
// pooled buffer holds no byte of any connection (a buffer only ever carries
// `buf[..n]` of the read that just filled it), so no state passes through.
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
    Error {
        side: Side,
        kind: io::ErrorKind,
    },
    /// Stopped with no bytes in hand, to move to the process that took
    /// ([`Conns::stop_into`]); the sockets are still open.
    Moving,
    /// Its server went down and its pool closes such sessions
    /// ([`crate::wire::closing`]).
    ServerDown,
}

impl End {
    pub fn as_str(&self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::IdleTimeout => "idle timeout",
            End::Error { side: Side::Client, .. } => "client error",
            End::Error { side: Side::Server, .. } => "server error",
            End::Moving => "moved",
            End::ServerDown => "server down",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub to_server: u64,
    pub to_client: u64,
    /// The side that closed (sent its FIN) first, if either did.
    pub first_closed: Option<Side>,
    pub end: End,
    /// Each side has sent its FIN, passed on to the other (what a moved
    /// connection carries).
    pub client_done: bool,
    pub server_done: bool,
}

/// What a connection's balancer and pool ask of it besides passing bytes:
/// the balancer's shared connection state (stop requests, counters), its
/// idle timeout, the server socket's keepalive to set once it has lived
/// past [`crate::wire::conns::LATE`] (`None`: none, or set already), and its server's
/// close orders. References only: each is a field of every connection's
/// future for its life.
#[derive(Clone, Copy)]
pub struct Policy<'a> {
    pub conns: &'a Conns,
    pub idle: Option<&'a Duration>,
    pub late_keepalive: Option<&'a Keepalive>,
    pub closing: Option<&'a Closing>,
}

/// Where a connection moved from another process resumes: its byte
/// counts, and which sides had already closed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resume {
    pub to_server: u64,
    pub to_client: u64,
    pub client_done: bool,
    pub server_done: bool,
    pub first_closed: Option<Side>,
    /// Its place among its server's close orders, taken when it moved in
    /// ([`Closing::place`]).
    pub closing_place: Option<u32>,
}

impl Resume {
    /// A connection that starts here: nothing moved yet, nothing closed.
    const FRESH: Resume = Resume {
        to_server: 0,
        to_client: 0,
        client_done: false,
        server_done: false,
        first_closed: None,
        closing_place: None,
    };
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
            crate::timer::sleep_until(deadline).await;
        }
    }
}

struct PipeError {
    side: Side,
    err: io::Error,
}

/// Byte totals are added to the server's counters whenever a direction has
/// drained what it could read, and within a long burst every this many
/// bytes, so a `docker push` lasting an hour shows in /metrics as it goes.
const FLUSH_BYTES: u64 = 1 << 20;

/// Waits for an error on a half-closed connection's finished side.
type ErrorWatch<'a> = Pin<Box<dyn Future<Output = io::Result<Ready>> + Send + 'a>>;

/// Where a connection's bytes are counted: (client to server, server to
/// client).
pub type Totals<'a> = (&'a AtomicU64, &'a AtomicU64);

/// One direction's byte count: its own total, and how much of it the
/// server's shared counter has.
struct Meter<'a> {
    moved: AtomicU64,
    flushed: AtomicU64,
    shared: &'a AtomicU64,
}

impl Meter<'_> {
    /// Counting from `so_far` (bytes the shared counter has already).
    fn new(shared: &AtomicU64, so_far: u64) -> Meter<'_> {
        Meter { moved: AtomicU64::new(so_far), flushed: AtomicU64::new(so_far), shared }
    }

    fn add(&self, n: usize) {
        let moved = self.moved.fetch_add(n as u64, Relaxed) + n as u64;
        if moved - self.flushed.load(Relaxed) >= FLUSH_BYTES {
            self.flush();
        }
    }

    fn flush(&self) {
        let moved = self.moved.load(Relaxed);
        let flushed = self.flushed.swap(moved, Relaxed);
        if moved != flushed {
            self.shared.fetch_add(moved - flushed, Relaxed);
        }
    }
}

/// Copies both ways until both sides have closed, an error or the idle
/// timeout.
///
/// The future waits on its two sockets only (and the idle timer, when one is
/// configured): each wake polls nothing shared with other connections, so
/// the per-byte path takes no lock. Shutdown does not reach in here: at the
/// end of the grace period the process ends, and that closes what is left.
///
/// (A plain function returning an `async move` block: an `async fn` would
/// keep a second copy of its arguments for the connection's whole life.)
///
/// `load` is the connection's place in its server's count of open
/// connections: it is let go as soon as the server has closed its side
/// (its FIN), as nginx ends the session then (`proxy_half_close off`), so
/// `least_conn` stops counting a server's finished connection while the
/// client still holds its half open.
///
/// Once [`Conns::stopping`], each direction stops where it holds no
/// bytes, and the connection ends as [`End::Moving`] with both sockets
/// open; `resume` starts one moved here from another process.
///
/// `policy.closing`: its server's close orders; a standing order that
/// covers it ends it as [`End::ServerDown`] at its slot.
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub fn bidirectional<'a, L: Send + 'a>(
    client: &'a TcpStream,
    server: &'a TcpStream,
    policy: Policy<'a>,
    totals: Totals<'a>,
    mut load: Option<L>,
    resume: Option<&'a Resume>,
) -> impl Future<Output = Outcome> + Send + 'a {
    // (Every argument is a field of every connection's future for its whole
    // life: references and options of references, 8 bytes each, where a
    // value would be 16 or more.)
    async move {
        let Policy { conns, idle, late_keepalive, closing } = policy;
        // A reference, as the argument: a copy would take 32 bytes of every
        // connection's future for its life.
        let resume = resume.unwrap_or(&Resume::FRESH);
        if resume.server_done {
            load = None;
        }
        // Only with an idle timeout, and boxed: without one (the default) a
        // connection keeps no clock.
        let clock = idle.map(|_| Box::new(Activity { start: Instant::now(), last: AtomicU64::new(0) }));
        let activity = clock.as_deref();
        let up = Direction::new(client, server, Side::Client, Meter::new(totals.0, resume.to_server), activity, conns);
        let down =
            Direction::new(server, client, Side::Server, Meter::new(totals.1, resume.to_client), activity, conns);
        let (up_pipe, down_pipe) = (std::pin::pin!(up.pipe()), std::pin::pin!(down.pipe()));
        // Everything the poll below changes is made here and moved into its
        // closure, which is then the one place it is kept: bound as locals
        // of the connection's future instead, each would take room there
        // as well as a reference in the closure.
        let (end, first_closed, done) = {
            let mut both = Both {
                client,
                server,
                dirs: [&up, &down],
                // Client to server first, each with whether it has passed
                // its EOF on.
                pipes: [(up_pipe, resume.client_done), (down_pipe, resume.server_done)],
                first_closed: resume.first_closed,
                // A connection moved here half-closed watches its finished
                // side from the start.
                gone: match (resume.client_done, resume.server_done) {
                    (true, false) => Some((Side::Client, Box::pin(client.ready(Interest::ERROR)))),
                    (false, true) => Some((Side::Server, Box::pin(server.ready(Interest::ERROR)))),
                    _ => None,
                },
                registration: None,
                closing: closing.map(|c| c.watch_from(resume.closing_place.unwrap_or_else(|| c.place()))),
                // Boxed, and only when there is an idle timeout: the default
                // (none) costs a connection nothing.
                idle_expired: activity.zip(idle).map(|(c, d)| Box::pin(c.expired(*d))),
                late_keepalive,
                load: &mut load,
            };
            // Polled by hand rather than with select!, whose state would sit
            // in every connection's future.
            std::future::poll_fn(move |cx| {
                both.poll(cx).map(|end| (end, both.first_closed, [both.pipes[0].1, both.pipes[1].1]))
            })
        }
        .await;
        up.meter.flush();
        down.meter.flush();
        Outcome {
            to_server: up.meter.moved.load(Relaxed),
            to_client: down.meter.moved.load(Relaxed),
            first_closed,
            end,
            client_done: done[0],
            server_done: done[1],
        }
    }
}

/// Both directions of a connection as [`bidirectional`] polls them, with
/// what watches them besides (a finished side's errors, the idle timer,
/// close orders, the late keepalive).
struct Both<'a, 'p, P, I, L> {
    client: &'a TcpStream,
    server: &'a TcpStream,
    /// Both directions (their stop points, the balancer's connections).
    dirs: [&'p Direction<'a>; 2],
    pipes: [(Pin<&'p mut P>, bool); 2],
    first_closed: Option<Side>,
    /// Once one direction has passed its EOF on, nothing reads its source
    /// any more, so a peer that then goes (a reset, a keepalive timeout)
    /// would never be noticed while the other direction stays quiet: its
    /// socket is watched for an error from then on. Boxed, and only for
    /// half-closed connections.
    gone: Option<(Side, ErrorWatch<'a>)>,
    /// This connection's waker, for a stop request or close order to reach
    /// it while idle, and for its late wake.
    /// (Left by `Drop`, which has the registry: a registration holding
    /// its own reference would cost every connection a pointer.)
    registration: Option<Registration>,
    closing: Option<closing::Watch<'a>>,
    idle_expired: Option<Pin<Box<I>>>,
    /// The server socket's keepalive, until it is set (once the connection
    /// has lived past [`crate::wire::conns::LATE`]; the registry wakes it then, so it
    /// holds no timer for it).
    late_keepalive: Option<&'a Keepalive>,
    load: &'p mut Option<L>,
}

impl<P, I, L> Drop for Both<'_, '_, P, I, L> {
    fn drop(&mut self) {
        if let Some(r) = self.registration.take() {
            self.dirs[0].conns.unregister(r);
        }
    }
}

impl<'a, P, I, L> Both<'a, '_, P, I, L>
where
    P: Future<Output = Result<(), PipeError>>,
    I: Future<Output = ()>,
{
    fn sock(&self, s: Side) -> &'a TcpStream {
        if s == Side::Client { self.client } else { self.server }
    }

    fn poll(&mut self, cx: &mut std::task::Context<'_>) -> Poll<End> {
        let conns = self.dirs[0].conns;
        if self.registration.is_none() {
            self.registration = Some(conns.register(cx.waker()));
        }
        if let Some(end) = self.poll_pipes(cx) {
            return Poll::Ready(end);
        }
        if self.pipes.iter().all(|p| p.1) {
            return Poll::Ready(End::Closed);
        }
        // Both directions stopped without bytes in hand (or finished): the
        // sockets are the whole connection now.
        if conns.stopping() && (0..2).all(|i| self.pipes[i].1 || self.dirs[i].parked.load(Relaxed)) {
            return Poll::Ready(End::Moving);
        }
        if let Some(end) = self.poll_watches(cx) {
            return Poll::Ready(end);
        }
        if self.late_keepalive.is_some() && self.registration.as_ref().is_some_and(|r| conns.late(r)) {
            // Idle dead peers are found by keepalive (by default 60 s, then
            // 10 s x 6). The client socket inherits it from the listener;
            // the server socket gets it here, on connections that last:
            // four syscalls saved on every short one. Its timer counts from
            // the last segment, so setting it late changes nothing while
            // `idle` is at least conns::LATEST (shorter ones are set at
            // connect).
            let _ = crate::wire::net::set_keepalive(SockRef::from(self.server), self.late_keepalive.take());
        }
        Poll::Pending
    }

    /// Polls both directions; an end if one broke the connection.
    fn poll_pipes(&mut self, cx: &mut std::task::Context<'_>) -> Option<End> {
        for i in 0..2 {
            let (pipe, done) = &mut self.pipes[i];
            if *done {
                continue;
            }
            match pipe.as_mut().poll(cx) {
                Poll::Ready(Ok(())) => {
                    *done = true;
                    let s = if i == 0 { Side::Client } else { Side::Server };
                    if let Some(end) = self.eof(s, self.pipes[1 - i].1) {
                        return Some(end);
                    }
                }
                Poll::Ready(Err(PipeError { side, err })) => return Some(End::Error { side, kind: err.kind() }),
                Poll::Pending => {}
            }
        }
        None
    }

    /// Side `s` has sent its FIN; `other_done`: the other one had already.
    fn eof(&mut self, s: Side, other_done: bool) -> Option<End> {
        self.first_closed.get_or_insert(s);
        // The server has closed its side: the connection no longer counts
        // against it, before the client can see the FIN and come back.
        if s == Side::Server {
            *self.load = None;
        }
        if other_done {
            // The second EOF: the caller closes both sockets, which sends
            // the FIN; nothing is left unread on either.
            return None;
        }
        // The first EOF: passed on as a half-close while the other
        // direction goes on.
        let other = if s == Side::Client { Side::Server } else { Side::Client };
        if let Err(e) = SockRef::from(self.sock(other)).shutdown(Shutdown::Write)
            && e.kind() != io::ErrorKind::NotConnected
        {
            return Some(End::Error { side: other, kind: e.kind() });
        }
        self.gone = Some((s, Box::pin(self.sock(s).ready(Interest::ERROR))));
        None
    }

    /// A finished side gone, the idle timeout, a close order.
    fn poll_watches(&mut self, cx: &mut std::task::Context<'_>) -> Option<End> {
        if let Some((s, watch)) = self.gone.as_mut()
            && let Poll::Ready(r) = watch.as_mut().poll(cx)
        {
            let s = *s;
            let kind = match r {
                Err(e) => e.kind(),
                Ok(_) => self.sock(s).take_error().ok().flatten().map_or(io::ErrorKind::ConnectionReset, |e| e.kind()),
            };
            return Some(End::Error { side: s, kind });
        }
        if let Some(Poll::Ready(())) = self.idle_expired.as_mut().map(|t| t.as_mut().poll(cx)) {
            return Some(End::IdleTimeout);
        }
        if let Some(Poll::Ready(())) = self.closing.as_mut().map(|w| w.poll(cx)) {
            return Some(End::ServerDown);
        }
        None
    }
}

/// One direction of a connection: what [`Direction::pipe`] needs, kept in
/// one place so its future holds a single reference.
struct Direction<'a> {
    src: &'a TcpStream,
    dst: &'a TcpStream,
    src_side: Side,
    dst_side: Side,
    meter: Meter<'a>,
    activity: Option<&'a Activity>,
    /// Waiting for its source with nothing in hand: where a connection
    /// may stop and move.
    parked: AtomicBool,
    /// In a bulk transfer (its last wake read at least a full buffer), and
    /// so counted in [`Conns::bulk`] until it leaves that state or ends.
    /// When it splices, the next wake starts in the pipe instead of copying
    /// its first 32 KiB through user space.
    /// Here rather than in the pipe's future: a field of the direction
    /// costs an idle connection one byte, a guard in the future a pointer.
    bulk: AtomicBool,
    conns: &'a Conns,
}

impl Drop for Direction<'_> {
    fn drop(&mut self) {
        self.set_bulk(false);
    }
}

impl<'a> Direction<'a> {
    fn new(
        src: &'a TcpStream,
        dst: &'a TcpStream,
        src_side: Side,
        meter: Meter<'a>,
        activity: Option<&'a Activity>,
        conns: &'a Conns,
    ) -> Direction<'a> {
        let dst_side = if src_side == Side::Client { Side::Server } else { Side::Client };
        Direction {
            src,
            dst,
            src_side,
            dst_side,
            meter,
            activity,
            parked: AtomicBool::new(false),
            bulk: AtomicBool::new(false),
            conns,
        }
    }

    fn set_bulk(&self, on: bool) {
        if self.bulk.swap(on, Relaxed) != on {
            if on {
                self.conns.bulk.fetch_add(1, Relaxed);
            } else {
                self.conns.bulk.fetch_sub(1, Relaxed);
            }
        }
    }

    /// Whether this direction's next burst goes through a pipe.
    fn splice(&self) -> bool {
        self.bulk.load(Relaxed) && (!self.conns.splice_shared_only || self.conns.bulk.load(Relaxed) > 1)
    }

    fn read_err(&self, err: io::Error) -> PipeError {
        PipeError { side: self.src_side, err }
    }

    fn write_err(&self, err: io::Error) -> PipeError {
        PipeError { side: self.dst_side, err }
    }

    fn count(&self, n: usize) {
        self.meter.add(n);
        if let Some(a) = self.activity {
            a.touch();
        }
    }

    /// This direction's source has closed: done. The half-close is passed
    /// on by [`bidirectional`], which first lets go of what the end changes
    /// (the server's count).
    fn eof(&self) -> Result<(), PipeError> {
        Ok(())
    }

    /// Waits for its source to be readable. Both directions are polled at
    /// every wake: a direction skipped while "waiting" could stall for
    /// good, since a pending `poll_read_ready` for want of cooperative
    /// budget leaves no waker in the socket's slot (found with
    /// `workers = 2`).
    fn wait_readable(&self) -> impl Future<Output = io::Result<()>> + Send + '_ {
        std::future::poll_fn(move |cx| self.src.poll_read_ready(cx))
    }

    #[allow(clippy::manual_async_fn)] // on purpose: an async fn would store `self` twice
    fn pipe(&self) -> impl Future<Output = Result<(), PipeError>> + Send + '_ {
        async move {
            let (src, dst) = (self.src, self.dst);
            loop {
                // Everything read so far is written: the server's totals get
                // it before the wait, which may be long.
                self.meter.flush();
                self.parked.store(true, Relaxed);
                if self.conns.stopping() {
                    // Stopped: the next bytes stay in the kernel for the
                    // process that takes the socket over, unless the
                    // request is withdrawn (the registry wakes this task).
                    std::future::poll_fn(|_| if self.conns.stopping() { Poll::Pending } else { Poll::Ready(()) }).await;
                }
                // poll_read_ready keeps the waker in the socket's own reader
                // slot; `TcpStream::readable()` would put a 152-byte waiter in this
                // future, which an idle connection carries for its whole life.
                self.wait_readable().await.map_err(|e| self.read_err(e))?;
                if self.conns.stopping() {
                    continue;
                }
                self.parked.store(false, Relaxed);
                if self.splice() {
                    match Box::pin(splice::burst(src, dst, self.conns, |n| self.count(n))).await {
                        Ok(Burst::Drained(n)) => {
                            self.set_bulk(n >= BUF_SIZE);
                            continue;
                        }
                        Ok(Burst::Eof(_)) => return self.eof(),
                        Ok(Burst::NoPipe) => self.set_bulk(false),
                        Err(BurstError::Read(e)) => return Err(self.read_err(e)),
                        Err(BurstError::Write(e)) => return Err(self.write_err(e)),
                    }
                }
                // Taken only now that there is something to read: an idle
                // connection holds no buffer.
                let mut buf = Buf::take();
                let mut first = true;
                loop {
                    let was_first = std::mem::replace(&mut first, false);
                    // The read's and the write's results are taken apart
                    // before the write's wait: a `Result` held across it
                    // (16 bytes each) would be in every direction's future.
                    let n = match read_clearing(src, buf.bytes()) {
                        Ok(0) => return self.eof(),
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(self.read_err(e)),
                    };
                    // Most writes go out at once; only a full socket
                    // needs to wait, and that wait's state is boxed,
                    // so an idle connection's future does not carry it.
                    let m = try_write_all(dst, &buf.bytes()[..n]).map_err(|e| self.write_err(e))?;
                    if m < n {
                        Box::pin(write_waiting(dst, &buf.bytes()[m..n])).await.map_err(|e| self.write_err(e))?
                    }
                    self.count(n);
                    if self.conns.stopping() {
                        // Everything read is written: stop here.
                        break;
                    }
                    if n < BUF_SIZE {
                        if was_first {
                            // A wake that brought less than a buffer.
                            self.set_bulk(false);
                        }
                        // The short read cleared the readiness: a
                        // read now would only find that out again.
                        break;
                    }
                    // A full buffer: a bulk transfer. Beside another,
                    // the rest of this burst goes through a pipe, never
                    // through user space.
                    self.set_bulk(true);
                    if !self.splice() {
                        continue;
                    }
                    drop(buf);
                    // Boxed: its state exists only during a burst, and
                    // an idle connection's future stays small.
                    match Box::pin(splice::burst(src, dst, self.conns, |n| self.count(n))).await {
                        Ok(Burst::Drained(n)) => {
                            self.set_bulk(n >= BUF_SIZE);
                            break;
                        }
                        Ok(Burst::Eof(_)) => return self.eof(),
                        Ok(Burst::NoPipe) => buf = Buf::take(),
                        Err(BurstError::Read(e)) => return Err(self.read_err(e)),
                        Err(BurstError::Write(e)) => return Err(self.write_err(e)),
                    }
                }
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

/// Writes as much of `data` as `dst` takes now; returns how much.
fn try_write_all(dst: &TcpStream, data: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < data.len() {
        match send(dst, &data[done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// `TcpStream::try_write` without libc's `send`: the syscall itself
/// (rustix), as [`read_clearing`] reads. glibc's wrapper makes every call a
/// thread cancellation point, two bookkeeping calls around the syscall
/// that a process without thread cancellation never needs. MSG_NOSIGNAL,
/// as the standard library sends: a peer gone gives EPIPE, never SIGPIPE.
fn send(dst: &TcpStream, data: &[u8]) -> io::Result<usize> {
    dst.try_io(Interest::WRITABLE, || {
        rustix::net::send(dst, data, rustix::net::SendFlags::NOSIGNAL).map_err(io::Error::from)
    })
}

/// Writes all of `data` to `dst`, waiting for room as needed.
pub(crate) async fn write_waiting(dst: &TcpStream, mut data: &[u8]) -> io::Result<()> {
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
