//! One balancer's access-log writer: the queue connections hand their
//! lines to, and the thread that sends each on to its destination's own
//! thread (`dest.rs`).
//!
//! Why a thread per destination rather than non-blocking writes: a regular
//! file ignores `O_NONBLOCK` (a write to a hung NFS mount or a stalled disk
//! blocks whatever the flags), and stdout is a descriptor shared with
//! whoever started the process, whose flags are not ucp-lb's to change.
//! Only a thread of its own keeps one slow destination from holding up the
//! lines of the others. This thread (the dispatcher) never blocks: it only
//! `try_send`s to the destinations' bounded queues. A destination blocked
//! in one write for longer than `dest::STALL` is given a new thread at the
//! next reopen or reload (the blocked one ends when its write returns; at
//! most [`SPARE_THREADS`] are left waiting so).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::config::{AccessLog, Config, LogTo};

use super::Record;
use super::dest::{self, Worker};

pub use super::dest::State;

/// Lines waiting for the dispatcher at most; more are dropped and counted.
const QUEUE: usize = 4096;
/// Lines waiting for one destination at most.
const DEST_QUEUE: usize = 4096;
/// Threads given up on while blocked in a write, still waiting for it to
/// return, at most: past that a blocked destination keeps its thread.
const SPARE_THREADS: usize = 4;

enum Msg {
    Line(Arc<AccessLog>, Record),
    /// Look at `Shared::configure` and `Shared::reopen` (set before: a
    /// wake lost to a full queue is made up by the next line).
    Wake,
    /// Answer (by dropping the sender) once every line queued before is
    /// written.
    Flush(std::sync::mpsc::Sender<()>),
}

/// One balancer's access-log writer: the queue to its dispatcher thread
/// (started with the first message) and what each destination has done.
/// Cloned into each logged connection's [`super::Entry`]; the threads end
/// once the balancer and its connections are gone (the queue's senders
/// dropped).
#[derive(Clone, Default)]
pub struct Writer(Arc<Inner>);

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("access_log::Writer")
    }
}

#[derive(Default)]
struct Inner {
    tx: OnceLock<SyncSender<Msg>>,
    shared: Arc<Shared>,
}

struct Shared {
    /// Every destination this writer has had, in the order of first use.
    dests: Mutex<Vec<Arc<State>>>,
    /// Lines dropped before a destination was known (the dispatcher's own
    /// queue full).
    unattributed: std::sync::atomic::AtomicU64,
    /// Threads given up on, still blocked.
    spare: Arc<AtomicUsize>,
    /// The running config's destinations, when they changed (start,
    /// reload): the others are closed, these (re)opened.
    configure: Mutex<Option<Vec<LogTo>>>,
    /// Reopen every file (SIGUSR1).
    reopen: std::sync::atomic::AtomicBool,
    /// What the destinations' "busy since" counts from.
    base: Instant,
}

impl Default for Shared {
    fn default() -> Shared {
        Shared {
            dests: Mutex::default(),
            unattributed: Default::default(),
            spare: Arc::default(),
            configure: Mutex::default(),
            reopen: Default::default(),
            base: Instant::now(),
        }
    }
}

/// What one destination has done, for the status view.
#[derive(Debug, Clone)]
pub struct Destination {
    pub name: String,
    pub configured: bool,
    pub written: u64,
    pub queue_full: u64,
    /// Lost because it could not be opened or written, by reason.
    pub failed: Vec<(crate::files::Reason, u64)>,
    /// Why it is failing now, since when (Unix seconds).
    pub failure: Option<dest::Failure>,
    /// In one write or open for this long now.
    pub blocked_for: Option<Duration>,
    pub stalled: bool,
}

impl Writer {
    fn queue(&self) -> &SyncSender<Msg> {
        self.0.tx.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
            let shared = self.0.shared.clone();
            // Never blocks (it only hands lines on), so one is enough.
            let _ = std::thread::Builder::new().name("ucp-lb-access-log".into()).spawn(move || dispatch(rx, &shared));
            tx
        })
    }

    /// Queues `record` for `log`; never blocks. A line that finds the
    /// queue full is dropped and counted.
    pub fn log(&self, log: &Arc<AccessLog>, record: Record) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.queue().try_send(Msg::Line(log.clone(), record))
        {
            let dests = self.0.shared.dests.lock().unwrap_or_else(|p| p.into_inner());
            match dests.iter().find(|d| d.to == log.to) {
                Some(d) => d.drop_queue_full(),
                None => drop(self.0.shared.unattributed.fetch_add(1, Relaxed)),
            }
        }
    }

    /// Opens the access logs `config` names now (so one that cannot be
    /// written shows at once), reopens those it had, and closes the
    /// others: at start and at each reload.
    pub fn configure(&self, config: &Config) {
        let mut to: Vec<LogTo> = Vec::new();
        for l in &config.listeners {
            if let Some(log) = &l.access_log
                && !to.contains(&log.to)
            {
                to.push(log.to.clone());
            }
        }
        if to.is_empty() && self.0.tx.get().is_none() {
            return;
        }
        *self.0.shared.configure.lock().unwrap_or_else(|p| p.into_inner()) = Some(to);
        self.wake();
    }

    fn wake(&self) {
        // A full queue: the dispatcher looks at what is pending at its
        // next message anyway.
        let _ = self.queue().try_send(Msg::Wake);
    }

    /// Lines dropped or lost (queue full, or the file could not be
    /// written).
    pub fn dropped(&self) -> u64 {
        let dests = self.0.shared.dests.lock().unwrap_or_else(|p| p.into_inner());
        self.0.shared.unattributed.load(Relaxed)
            + dests.iter().map(|d| d.queue_full.load(Relaxed) + d.failed_total()).sum::<u64>()
    }

    /// Lines written.
    pub fn written(&self) -> u64 {
        let dests = self.0.shared.dests.lock().unwrap_or_else(|p| p.into_inner());
        dests.iter().map(|d| d.written.load(Relaxed)).sum()
    }

    /// Lines dropped before reaching a destination's queue.
    pub fn unattributed(&self) -> u64 {
        self.0.shared.unattributed.load(Relaxed)
    }

    /// Each destination, in the order of first use.
    pub fn destinations(&self) -> Vec<Destination> {
        let dests = self.0.shared.dests.lock().unwrap_or_else(|p| p.into_inner());
        dests
            .iter()
            .map(|d| Destination {
                name: d.name.clone(),
                configured: d.configured.load(Relaxed),
                written: d.written.load(Relaxed),
                queue_full: d.queue_full.load(Relaxed),
                failed: d.failed_by_reason(),
                failure: d.failure(),
                blocked_for: d.blocked_for(),
                stalled: d.stalled(),
            })
            .collect()
    }

    /// Closes and reopens every log file (SIGUSR1): after logrotate moved
    /// a file, new lines go to a new one at its path; a file that could not
    /// be written is tried again.
    pub fn reopen(&self) {
        if self.0.tx.get().is_some() {
            self.0.shared.reopen.store(true, Relaxed);
            self.wake();
        }
    }

    /// Waits up to `limit` for the lines queued so far to be written (at
    /// exit).
    pub fn flush(&self, limit: Duration) {
        let Some(tx) = self.0.tx.get() else { return };
        let (done, wait) = std::sync::mpsc::channel();
        if tx.try_send(Msg::Flush(done)).is_err() {
            return;
        }
        let deadline = Instant::now() + limit;
        // Every destination drops its sender once written up to here.
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match wait.recv_timeout(left) {
                Ok(()) => {}
                Err(_) => break,
            }
        }
    }
}

/// A destination as the dispatcher holds it: its queue.
struct Handle {
    tx: SyncSender<dest::Msg>,
    state: Arc<State>,
    /// Set when its thread, blocked, is given up on.
    given_up: Arc<std::sync::atomic::AtomicBool>,
}

/// The dispatcher: hands each line to its destination's queue, without
/// ever blocking.
fn dispatch(rx: Receiver<Msg>, shared: &Arc<Shared>) {
    let mut dests: HashMap<LogTo, Handle> = HashMap::new();
    // None until the first Configure: every destination counts as named.
    let mut named: Option<Vec<LogTo>> = None;
    while let Ok(msg) = rx.recv() {
        let configure = shared.configure.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(to) = configure {
            // Files no longer named are closed: their threads end once
            // their queues are written.
            dests.retain(|k, h| {
                let keep = to.contains(k);
                h.state.configured.store(keep, Relaxed);
                keep
            });
            for t in &to {
                handle(&mut dests, t, Some(&to), shared).state.configured.store(true, Relaxed);
            }
            named = Some(to);
            shared.reopen.store(true, Relaxed);
        }
        if shared.reopen.swap(false, Relaxed) {
            reopen_all(&mut dests, shared);
        }
        match msg {
            Msg::Line(log, record) => {
                let h = handle(&mut dests, &log.to, named.as_ref(), shared);
                if let Err(e) = h.tx.try_send(dest::Msg::Line(log, record)) {
                    h.state.drop_queue_full();
                    if let TrySendError::Disconnected(dest::Msg::Line(log, _)) = e {
                        // Its thread is gone (it could not start): the next
                        // line makes a new one.
                        dests.remove(&log.to);
                    }
                }
            }
            Msg::Wake => {}
            Msg::Flush(done) => {
                for h in dests.values() {
                    let _ = h.tx.try_send(dest::Msg::Flush(done.clone()));
                }
            }
        }
    }
}

/// The handle of destination `to`, made (with its thread) if need be.
fn handle<'a>(
    dests: &'a mut HashMap<LogTo, Handle>,
    to: &LogTo,
    named: Option<&Vec<LogTo>>,
    shared: &Arc<Shared>,
) -> &'a mut Handle {
    dests.entry(to.clone()).or_insert_with(|| new_handle(to, named, shared))
}

/// A destination's handle and thread, with its state (kept from an
/// earlier thread of the same destination, if there was one).
fn new_handle(to: &LogTo, named: Option<&Vec<LogTo>>, shared: &Arc<Shared>) -> Handle {
    let state = {
        let mut all = shared.dests.lock().unwrap_or_else(|p| p.into_inner());
        match all.iter().find(|d| d.to == *to) {
            Some(d) => d.clone(),
            None => {
                let d = Arc::new(State::new(to.clone(), shared.base));
                all.push(d.clone());
                d
            }
        }
    };
    state.configured.store(named.is_none_or(|n| n.contains(to)), Relaxed);
    spawn(state, shared)
}

/// A new thread for the destination of `state`, with its queue.
fn spawn(state: Arc<State>, shared: &Arc<Shared>) -> Handle {
    let (tx, rx) = std::sync::mpsc::sync_channel(DEST_QUEUE);
    let me = state.thread.fetch_add(1, Relaxed) + 1;
    state.busy_since.store(0, Relaxed);
    let given_up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = Worker::new(state.clone(), me);
    let (spare, gone) = (shared.spare.clone(), given_up.clone());
    let _ = std::thread::Builder::new().name("ucp-lb-access-log-file".into()).spawn(move || {
        worker.run(rx);
        if gone.load(Relaxed) {
            spare.fetch_sub(1, Relaxed);
        }
    });
    Handle { tx, state, given_up }
}

/// Every destination reopens its file now; one whose thread is blocked in
/// a write gets a new thread (up to [`SPARE_THREADS`] given up on).
fn reopen_all(dests: &mut HashMap<LogTo, Handle>, shared: &Arc<Shared>) {
    for h in dests.values_mut() {
        if h.state.stalled() {
            if shared.spare.load(Relaxed) >= SPARE_THREADS {
                warn!(log = %h.state.name, "access log: its writer is still blocked; {SPARE_THREADS} threads already wait on blocked writes: not replaced");
                continue;
            }
            warn!(
                log = %h.state.name,
                "access log: its writer has been blocked in one write for {:.0} s: a new thread takes over",
                h.state.blocked_for().unwrap_or_default().as_secs_f64()
            );
            shared.spare.fetch_add(1, Relaxed);
            h.given_up.store(true, Relaxed);
            *h = spawn(h.state.clone(), shared);
        }
        // Flagged first: with its queue full, the thread finds the flag
        // at its next batch.
        h.state.reopen.store(true, Relaxed);
        let _ = h.tx.try_send(dest::Msg::Wake);
    }
}
