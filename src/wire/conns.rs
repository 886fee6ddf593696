//! What the open connections of one load balancer share: the registry of
//! their wakers, the request to stop and be handed on (and where stopped
//! ones go), the coarse clock of their late wake, the byte path's counters
//! (bulk transfers, splice bursts) and the access-log writer.
//!
//! One [`Conns`] per balancer, made at its start and kept by every snapshot
//! it builds, so each connection reaches it through the snapshot it already
//! holds: two balancers in one process (a test binary, an embedder) never
//! see each other's connections, counters or stop request.
//!
//! The byte path knows only "stop where you hold no bytes, and hand me your
//! two sockets": a pass-through connection holds no protocol state, so
//! once both directions have stopped, the two descriptors and the counters
//! are the whole connection. Who takes the [`Parked`] connections (an
//! upgrade moves them to a new process) is not this module's business.
//!
//! Cost to a connection that never moves: one registration (a lock on one
//! of 16 shards, at its first poll and at its end) and, per read, a load of
//! one flag that nothing writes until a stop is requested.
//!
//! The same registry gives connections that last a second wake, once: the
//! byte path sets its server socket's keepalive only on connections that
//! live past [`LATE`] (most end long before, and four syscalls on each
//! would be wasted), and [`Conns::sweep`] wakes those that pass it, so that
//! no connection holds a timer of its own for it.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::Waker;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::wire::access_log;

const SHARDS: usize = 16;

/// The coarse clock of the late wake: one tick.
const TICK: Duration = Duration::from_secs(5);
/// How long a connection lives before its late wake: between this and one
/// tick more. (Ticks: a connection registered during tick `b` is late from
/// tick `b + 3`, when it has lived more than 10 s and at most 15 s.)
pub const LATE: Duration = Duration::from_secs(10);
/// The latest a connection's late wake comes: a server keepalive `idle`
/// shorter than this is set at connect instead.
pub const LATEST: Duration = Duration::from_secs(LATE.as_secs() + TICK.as_secs());
const LATE_TICKS: u32 = (LATE.as_secs() / TICK.as_secs()) as u32 + 1;
/// A slot's registration tick once its late wake is done.
const WOKEN: u32 = u32::MAX;

/// The shared state of one balancer's connections.
pub struct Conns {
    /// Set once, when the balancer has handed its connections on: every
    /// connection stops at its next point without bytes in hand.
    stopping: AtomicBool,
    /// Where stopped connections go.
    sink: Mutex<Option<mpsc::UnboundedSender<Parked>>>,
    /// The wakers of every connection in its copy phase, so an idle one
    /// (which nothing else wakes) sees a request at once.
    wakers: [Mutex<Slab>; SHARDS],
    next: AtomicUsize,
    /// Ticks of [`TICK`] since `born`, advanced by [`Conns::sweep`].
    ticks: AtomicU32,
    born: Instant,
    /// Directions now in a bulk transfer (their last wake read at least a
    /// full buffer). Changed only when a direction enters or leaves that
    /// state, never per read.
    pub bulk: AtomicUsize,
    /// `UCP_LB_SPLICE=shared`: splice only bursts that share the proxy
    /// with another bulk transfer (the rule before 2026-11-30), so the
    /// bench can compare it with the default.
    pub splice_shared_only: bool,
    /// Bursts that got a pipe.
    pub splice_bursts: AtomicU64,
    /// Pipes closed instead of pooled because a transfer ended with bytes
    /// in them.
    pub splice_discarded: AtomicU64,
    /// The access log's writer (its thread starts with the first line).
    pub access_log: access_log::Writer,
}

struct Slab {
    /// Each connection's waker and the tick it registered in.
    slots: Vec<Option<(Waker, u32)>>,
    free: Vec<usize>,
}

impl Conns {
    pub fn new(splice_shared_only: bool) -> Conns {
        Conns {
            stopping: AtomicBool::new(false),
            sink: Mutex::new(None),
            wakers: std::array::from_fn(|_| Mutex::new(Slab { slots: Vec::new(), free: Vec::new() })),
            next: AtomicUsize::new(0),
            ticks: AtomicU32::new(0),
            born: Instant::now(),
            bulk: AtomicUsize::new(0),
            splice_shared_only,
            splice_bursts: AtomicU64::new(0),
            splice_discarded: AtomicU64::new(0),
            access_log: access_log::Writer::default(),
        }
    }

    /// Whether connections are to stop and be handed on.
    #[inline]
    pub fn stopping(&self) -> bool {
        self.stopping.load(Relaxed)
    }

    /// Registers the waker of a connection's task; the connection gives
    /// the registration back with [`Conns::unregister`] when it ends.
    pub fn register(&self, waker: &Waker) -> Registration {
        let shard = self.next.fetch_add(1, Relaxed) % SHARDS;
        let born = self.ticks.load(Relaxed);
        let mut s = self.wakers[shard].lock().unwrap_or_else(|p| p.into_inner());
        let entry = Some((waker.clone(), born));
        let slot = match s.free.pop() {
            Some(i) => {
                s.slots[i] = entry;
                i
            }
            None => {
                s.slots.push(entry);
                s.slots.len() - 1
            }
        };
        Registration { shard: shard as u16, slot: slot as u32, born }
    }

    /// Takes a connection's waker out of the registry.
    pub fn unregister(&self, r: Registration) {
        let mut s = self.wakers[r.shard as usize].lock().unwrap_or_else(|p| p.into_inner());
        let i = r.slot as usize;
        if let Some(w) = s.slots.get_mut(i) {
            *w = None;
            s.free.push(i);
        }
    }

    /// Whether the connection of `r` has lived past [`LATE`] (one relaxed
    /// load).
    #[inline]
    pub fn late(&self, r: &Registration) -> bool {
        late_at(r.born, self.ticks.load(Relaxed))
    }

    /// How many connections are registered (in their copy phase).
    pub fn open(&self) -> usize {
        self.wakers.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).slots.iter().flatten().count()).sum()
    }

    /// Advances the coarse clock every tick (5 s) and wakes, once each,
    /// the connections that have just lived past [`LATE`]. One per
    /// balancer, for its life (cancel by dropping).
    pub async fn sweep(&self) {
        let mut every = crate::timer::interval_at(Instant::now() + TICK, TICK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.tick(Instant::now());
        }
    }

    /// Brings the clock to `now` and wakes the connections now late.
    fn tick(&self, now: Instant) {
        let ticks = u32::try_from(now.duration_since(self.born).as_secs() / TICK.as_secs()).unwrap_or(WOKEN - 1);
        let ticks = self.ticks.fetch_max(ticks, Relaxed).max(ticks);
        for shard in &self.wakers {
            let mut s = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (w, born) in s.slots.iter_mut().flatten() {
                if *born != WOKEN && late_at(*born, ticks) {
                    *born = WOKEN;
                    w.wake_by_ref();
                }
            }
        }
    }

    /// Wakes every connection in its copy phase, to see a change it polls
    /// for (a close order of its server, a stop request).
    pub fn wake_all(&self) {
        for shard in &self.wakers {
            let s = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (w, _) in s.slots.iter().flatten() {
                w.wake_by_ref();
            }
        }
    }

    /// Asks every connection to stop where it holds no bytes and to go to
    /// `sink`. Withdrawn by [`Conns::withdraw`] (a hand-over that broke
    /// off); a later request replaces `sink`.
    pub fn stop_into(&self, sink: mpsc::UnboundedSender<Parked>) {
        *self.sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(sink);
        self.stopping.store(true, Relaxed);
        self.wake_all();
    }

    /// Withdraws the request to stop: every connection still copying goes
    /// on where it stopped (its bytes waited in the kernel). One that had
    /// already stopped whole, or stops in the race with this, still goes
    /// to the sink, which is kept: whoever holds its receiving end takes
    /// those back ([`Parked`] has all a connection is).
    pub fn withdraw(&self) {
        self.stopping.store(false, Relaxed);
        self.wake_all();
    }

    /// Hands a stopped connection on; gives it back when nothing takes
    /// connections (the caller then closes it).
    pub fn park(&self, p: Parked) -> Result<(), Box<Parked>> {
        let sink = self.sink.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match sink {
            Some(tx) => tx.send(p).map_err(|e| Box::new(e.0)),
            None => Err(Box::new(p)),
        }
    }
}

impl Default for Conns {
    fn default() -> Conns {
        Conns::new(false)
    }
}

/// Whether a connection registered in tick `born` is past [`LATE`] at tick
/// `now`.
fn late_at(born: u32, now: u32) -> bool {
    now >= born.saturating_add(LATE_TICKS)
}

/// A connection's place in the registry, until [`Conns::unregister`]. No
/// reference to the registry: every connection keeps one of these for its
/// life, and its owner has the registry at hand.
#[derive(Debug)]
pub struct Registration {
    shard: u16,
    slot: u32,
    born: u32,
}

/// A connection stopped with no bytes in hand: its sockets and what it is.
pub struct Parked {
    pub client: TcpStream,
    pub server: TcpStream,
    pub moved: Moved,
}

/// What goes with a stopped connection's descriptors to where it resumes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Moved {
    /// The client's address.
    pub peer: SocketAddr,
    /// The address the client connected to (the listener's).
    pub listener: SocketAddr,
    pub pool: String,
    pub server: SocketAddr,
    /// Bytes so far, client to server and server to client.
    pub to_server: u64,
    pub to_client: u64,
    /// The client has sent its FIN, passed on to the server (half-closed).
    pub client_done: bool,
    /// The server has sent its FIN, passed on to the client.
    pub server_done: bool,
    /// The server closed first (for the access log's end).
    pub server_first: bool,
    /// How long the connection has been open, milliseconds.
    pub age_ms: u64,
    /// The connection writes an access log line at its end.
    pub logged: bool,
    /// How long its upstream connect took, microseconds, when logged.
    pub connect_us: Option<u64>,
    /// Its connecting peer and what its PROXY header said, when logged
    /// (`peer` is the address it goes on with; absent from a predecessor
    /// older than the PROXY protocol).
    #[serde(default)]
    pub via: Option<crate::wire::proxy_header::Via>,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    use super::*;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Relaxed);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Relaxed);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_woken_once_between_ten_and_fifteen_seconds_of_life() {
        let conns = Conns::new(false);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        // Registered 3 s into the balancer's life (tick 0).
        tokio::time::advance(Duration::from_secs(3)).await;
        let reg = conns.register(&waker);
        let born = Instant::now();
        let mut woken_at = None;
        for _ in 0..40 {
            tokio::time::advance(Duration::from_secs(1)).await;
            conns.tick(Instant::now());
            if count.0.load(Relaxed) > 0 && woken_at.is_none() {
                woken_at = Some(born.elapsed());
                assert!(conns.late(&reg), "woken, so late");
            }
            if woken_at.is_none() {
                assert!(!conns.late(&reg), "late before its wake, at {:?}", born.elapsed());
            }
        }
        let at = woken_at.expect("never woken");
        assert!(at > LATE && at <= LATEST, "woken after {at:?}, not between {LATE:?} and {LATEST:?}");
        assert_eq!(count.0.load(Relaxed), 1, "woken more than once");
        conns.unregister(reg);
        assert_eq!(conns.open(), 0);
    }

    #[test]
    fn a_stopped_connection_goes_to_the_sink_of_its_own_balancer_only() {
        let (a, b) = (Conns::new(false), Conns::new(false));
        let (tx, _rx) = mpsc::unbounded_channel();
        a.stop_into(tx);
        assert!(a.stopping() && !b.stopping());
        a.withdraw();
        assert!(!a.stopping(), "withdrawn");
    }
}
