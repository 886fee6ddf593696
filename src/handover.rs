//! Moving open connections to the process that took over (`ucp-lb
//! --upgrade`): the request every connection watches, the wakers that
//! bring idle ones to see it, and where a connection puts its two sockets
//! once it has stopped.
//!
//! A pass-through connection holds no protocol state, only its two sockets
//! and the bytes in flight in its own buffer or pipe. `copy.rs` stops a
//! direction only where it holds none (everything it read was written,
//! nothing read since: the next bytes wait in the kernel), so once both
//! directions have stopped, the two descriptors and the counters are the
//! whole connection, and the new process carries on from there.
//!
//! Cost to a connection that never moves: one registration (a lock on one
//! of 16 shards, at its first poll and at its end) and, per read, a load of
//! one flag that nothing writes until an upgrade.
//!
//! The same registry gives connections that last a second wake, once: the
//! byte path sets its server socket's keepalive only on connections that
//! live past [`LATE`] (most end long before, and four syscalls on each
//! would be wasted), and [`sweep`] wakes those that pass it, so that no
//! connection holds a timer of its own for it.
//!
//! A leaf: no I/O here beyond waking tasks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::task::Waker;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Set once, when this process has handed its listeners over: every
/// connection stops at its next point without bytes in hand.
static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Whether connections are to stop and move.
#[inline]
pub fn requested() -> bool {
    REQUESTED.load(Relaxed)
}

const SHARDS: usize = 16;

/// The wakers of every connection in its copy phase, so an idle one (which
/// nothing else wakes) sees the request at once.
static WAKERS: [Mutex<Slab>; SHARDS] = [const { Mutex::new(Slab { slots: Vec::new(), free: Vec::new() }) }; SHARDS];
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The coarse clock the late wake counts in: ticks of [`TICK`] since the
/// first [`sweep`] of this process, advanced by the sweeps.
static TICKS: AtomicU32 = AtomicU32::new(0);
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

struct Slab {
    /// Each connection's waker and the tick it registered in.
    slots: Vec<Option<(Waker, u32)>>,
    free: Vec<usize>,
}

/// A connection's place in the registry; leaves it when dropped.
pub struct Registration {
    shard: u16,
    slot: u32,
    born: u32,
}

impl Registration {
    /// Whether the connection has lived past [`LATE`] (one relaxed load).
    #[inline]
    pub fn late(&self) -> bool {
        late_at(self.born, TICKS.load(Relaxed))
    }
}

/// Whether a connection registered in tick `born` is past [`LATE`] at tick
/// `now`.
fn late_at(born: u32, now: u32) -> bool {
    now >= born.saturating_add(LATE_TICKS)
}

/// Registers the waker of a connection's task.
pub fn register(waker: &Waker) -> Registration {
    let shard = NEXT.fetch_add(1, Relaxed) % SHARDS;
    let born = TICKS.load(Relaxed);
    let mut s = WAKERS[shard].lock().unwrap_or_else(|p| p.into_inner());
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

/// Advances the coarse clock every `TICK` (5 s) and wakes, once each, the
/// connections that have just lived past [`LATE`]. One per running
/// process (several in one test process agree: the clock counts from the
/// first one's start, and a connection is woken once).
pub async fn sweep() {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    let mut every = tokio::time::interval_at(tokio::time::Instant::now() + TICK, TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let now = u32::try_from(start.elapsed().as_secs() / TICK.as_secs()).unwrap_or(WOKEN - 1);
        let now = TICKS.fetch_max(now, Relaxed).max(now);
        for shard in &WAKERS {
            let mut s = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (w, born) in s.slots.iter_mut().flatten() {
                if *born != WOKEN && late_at(*born, now) {
                    *born = WOKEN;
                    w.wake_by_ref();
                }
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut s = WAKERS[self.shard as usize].lock().unwrap_or_else(|p| p.into_inner());
        let i = self.slot as usize;
        if let Some(w) = s.slots.get_mut(i) {
            *w = None;
            s.free.push(i);
        }
    }
}

/// Wakes every connection in its copy phase, to see a change it polls for
/// (a close order of its server).
pub fn wake_all() {
    for shard in &WAKERS {
        let s = shard.lock().unwrap_or_else(|p| p.into_inner());
        for (w, _) in s.slots.iter().flatten() {
            w.wake_by_ref();
        }
    }
}

/// Asks every connection to stop where it holds no bytes and to move to
/// `sink`. Irreversible: this process is done.
pub fn request(sink: mpsc::UnboundedSender<Parked>) {
    *SINK.lock().unwrap_or_else(|p| p.into_inner()) = Some(sink);
    REQUESTED.store(true, Relaxed);
    wake_all();
}

static SINK: Mutex<Option<mpsc::UnboundedSender<Parked>>> = Mutex::new(None);

/// Hands a stopped connection over; gives it back when nothing takes
/// connections (the caller then closes it).
pub fn park(p: Parked) -> Result<(), Box<Parked>> {
    let sink = SINK.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match sink {
        Some(tx) => tx.send(p).map_err(|e| Box::new(e.0)),
        None => Err(Box::new(p)),
    }
}

/// A connection stopped with no bytes in hand: its sockets and what it is.
pub struct Parked {
    pub client: TcpStream,
    pub server: TcpStream,
    pub moved: Moved,
}

/// What goes with a moved connection's descriptors, over the control
/// socket.
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
}
