//! One destination of the access log (a file, stdout or stderr): its
//! thread, which formats and writes the lines queued for it, and what it
//! has done ([`State`], read by the status view).
//!
//! A file is opened with `files::open_append` (without blocking, regular
//! files only, made mode 0640 when missing) when the writer is configured
//! (start, reload) or told to reopen (SIGUSR1), not at the first line, so a
//! path that cannot be written shows at once. Lines are written in batches,
//! one `write` per batch for a file (`O_APPEND`), one per line for stdout
//! and stderr (a pipe keeps a line of up to 4 KiB whole beside the
//! process's own log lines). A file that cannot be opened or written is
//! closed, said once in the log, counted by reason, and tried again: at
//! once on the next reopen, else at most once a second as lines come.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::config::{AccessLog, LogTo};
use crate::files::{self, Reason, Unwritable};

use super::Record;

/// A failing file is tried again at most this often while lines come.
const RETRY: Duration = Duration::from_secs(1);

/// A write (or open) taking longer than this makes the destination
/// "stalled" in the view; a reopen or reload then gives it a new thread.
pub(super) const STALL: Duration = Duration::from_secs(1);

/// What a destination's thread is asked to do.
pub(super) enum Msg {
    Line(Arc<AccessLog>, Record),
    /// Look at [`State::reopen`] now.
    Wake,
    /// Answer (by dropping the sender) once every line queued before is
    /// written.
    Flush(#[allow(dead_code)] Sender<()>),
}

/// Why its lines are not being written now.
#[derive(Debug, Clone)]
pub struct Failure {
    pub reason: Reason,
    pub message: String,
    /// Unix seconds, when this episode began.
    pub since: u64,
}

/// What one destination has done, shared by its thread(s), the writer and
/// the status view.
pub struct State {
    pub to: LogTo,
    /// The path as it was opened, or "stdout", "stderr".
    pub name: String,
    /// Named by the running config (else only lines of connections
    /// accepted under an earlier config come here, and the file is closed
    /// after each batch).
    pub configured: AtomicBool,
    pub written: AtomicU64,
    /// Dropped because its queue was full (its thread behind or blocked).
    pub queue_full: AtomicU64,
    /// Lost because the file could not be opened or written, by reason
    /// (`Reason::ALL`'s order).
    pub failed: [AtomicU64; 6],
    pub failure: Mutex<Option<Failure>>,
    /// When the current thread's write or open began (ms since `base`,
    /// plus one), 0 when it is not in one.
    pub busy_since: AtomicU64,
    /// The current thread's number: a replaced thread (blocked, given up)
    /// that comes back only counts, and leaves the state to the new one.
    pub thread: AtomicU64,
    /// Close and open the file again (SIGUSR1, a reload) at the next
    /// batch.
    pub reopen: AtomicBool,
    /// Lines are being dropped for a full queue (one log line per episode).
    pub dropping: AtomicBool,
    /// `queue_full` when this dropping episode began.
    pub dropping_from: AtomicU64,
    base: Instant,
}

impl State {
    pub(super) fn new(to: LogTo, base: Instant) -> State {
        let name = match &to {
            LogTo::Stdout => "stdout".to_owned(),
            LogTo::Stderr => "stderr".to_owned(),
            LogTo::File(p) => p.display().to_string(),
        };
        State {
            to,
            name,
            configured: AtomicBool::new(false),
            written: AtomicU64::new(0),
            queue_full: AtomicU64::new(0),
            failed: Default::default(),
            failure: Mutex::new(None),
            busy_since: AtomicU64::new(0),
            thread: AtomicU64::new(0),
            reopen: AtomicBool::new(false),
            dropping: AtomicBool::new(false),
            dropping_from: AtomicU64::new(0),
            base,
        }
    }

    /// Lines lost because the file could not be opened or written.
    pub fn failed_total(&self) -> u64 {
        self.failed.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Lost lines by reason, the reasons with none left out.
    pub fn failed_by_reason(&self) -> Vec<(Reason, u64)> {
        Reason::ALL.iter().zip(&self.failed).map(|(r, c)| (*r, c.load(Relaxed))).filter(|(_, n)| *n > 0).collect()
    }

    /// How long its thread has been in one write or open, if it is.
    pub fn blocked_for(&self) -> Option<Duration> {
        match self.busy_since.load(Relaxed) {
            0 => None,
            since => Some(self.base.elapsed().saturating_sub(Duration::from_millis(since - 1))),
        }
    }

    /// Blocked in one write or open for longer than [`STALL`].
    pub fn stalled(&self) -> bool {
        self.blocked_for().is_some_and(|d| d > STALL)
    }

    pub fn failure(&self) -> Option<Failure> {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A line dropped for a full queue: the first of an episode is said.
    pub(super) fn drop_queue_full(&self) {
        let before = self.queue_full.fetch_add(1, Relaxed);
        if !self.dropping.swap(true, Relaxed) {
            self.dropping_from.store(before, Relaxed);
            let blocked =
                self.blocked_for().map_or(String::new(), |d| format!(" (in one write for {:.1} s)", d.as_secs_f64()));
            warn!(
                log = %self.name,
                "access log: its writer is behind or blocked{blocked}: lines are dropped and counted (reason queue_full) until it catches up"
            );
        }
    }
}

/// A destination's thread: its queue and the file it holds.
pub(super) struct Worker {
    pub state: Arc<State>,
    /// This thread's number (see [`State::thread`]).
    pub me: u64,
    file: Option<std::fs::File>,
    /// A failing file is not tried again before this.
    retry_at: Option<Instant>,
    buf: Vec<u8>,
    /// The end of each line in `buf`.
    ends: Vec<usize>,
    line: String,
}

impl Worker {
    pub(super) fn new(state: Arc<State>, me: u64) -> Worker {
        Worker { state, me, file: None, retry_at: None, buf: Vec::new(), ends: Vec::new(), line: String::new() }
    }

    fn current(&self) -> bool {
        self.state.thread.load(Relaxed) == self.me
    }

    /// Until the writer lets go of its queue: each message, then whatever
    /// else waits, then one write.
    pub(super) fn run(mut self, rx: Receiver<Msg>) {
        while let Ok(msg) = rx.recv() {
            let mut reopen = false;
            let mut flushes = Vec::new();
            let mut next = Some(msg);
            while let Some(msg) = next.take().or_else(|| rx.try_recv().ok()) {
                match msg {
                    Msg::Line(log, record) => {
                        self.line.clear();
                        super::format(&mut self.line, &log.format, &record);
                        self.line.push('\n');
                        self.buf.extend_from_slice(self.line.as_bytes());
                        self.ends.push(self.buf.len());
                    }
                    Msg::Wake => {}
                    Msg::Flush(done) => flushes.push(done),
                }
                if self.ends.len() >= 1024 {
                    break;
                }
            }
            if self.state.reopen.swap(false, Relaxed) {
                reopen = true;
            }
            if reopen {
                self.file = None;
                self.retry_at = None;
            }
            if reopen || !self.ends.is_empty() {
                self.write();
            }
            if !self.state.configured.load(Relaxed) {
                // Not named by the running config any more: hold nothing.
                self.file = None;
            }
            drop(flushes);
        }
    }

    /// Writes the lines in `buf` (opening the file first if need be), and
    /// counts them as written or lost.
    fn write(&mut self) {
        let lines = self.ends.len() as u64;
        let result = self.open().and_then(|()| self.write_lines());
        match result {
            Ok(()) => {
                self.state.written.fetch_add(lines, Relaxed);
                self.recovered();
                if lines > 0 && self.state.dropping.swap(false, Relaxed) {
                    let lost = self.state.queue_full.load(Relaxed) - self.state.dropping_from.load(Relaxed);
                    info!(log = %self.state.name, dropped = lost, "access log: its writer caught up");
                }
            }
            Err((done, e)) => {
                self.state.written.fetch_add(done, Relaxed);
                let idx = Reason::ALL.iter().position(|r| *r == e.reason).unwrap_or(Reason::ALL.len() - 1);
                self.state.failed[idx].fetch_add(lines - done, Relaxed);
                self.failed(e);
            }
        }
        self.buf.clear();
        self.ends.clear();
    }

    /// The file open (stdout and stderr need nothing), or why not.
    fn open(&mut self) -> Result<(), (u64, Unwritable)> {
        let LogTo::File(path) = &self.state.to else { return Ok(()) };
        if self.file.is_some() {
            return Ok(());
        }
        if let Some(failure) = self.state.failure().filter(|_| self.retry_at.is_some_and(|t| Instant::now() < t)) {
            return Err((0, Unwritable { reason: failure.reason, message: failure.message }));
        }
        self.retry_at = Some(Instant::now() + RETRY);
        self.busy(true);
        let opened = files::open_append(path);
        self.busy(false);
        self.file = Some(opened.map_err(|e| (0, e))?);
        Ok(())
    }

    /// `buf` out: to the file in one go, to stdout or stderr line by line.
    fn write_lines(&mut self) -> Result<(), (u64, Unwritable)> {
        self.busy(true);
        let (buf, ends) = (&self.buf, &self.ends);
        let result = match (&self.state.to, self.file.as_mut()) {
            (LogTo::Stdout, _) => write_chunks(&mut std::io::stdout(), buf, ends, true),
            (LogTo::Stderr, _) => write_chunks(&mut std::io::stderr(), buf, ends, true),
            (LogTo::File(_), Some(f)) => write_chunks(f, buf, ends, false),
            (LogTo::File(_), None) => Ok(()),
        };
        self.busy(false);
        result.map_err(|(done, e)| {
            self.file = None;
            let e = match &self.state.to {
                LogTo::File(p) => files::open_error(p, &e),
                _ => Unwritable { reason: Reason::IoError, message: format!("{}: {e}", self.state.name) },
            };
            (done, e)
        })
    }

    fn busy(&self, on: bool) {
        if self.current() {
            let v = if on { self.state.base.elapsed().as_millis() as u64 + 1 } else { 0 };
            self.state.busy_since.store(v, Relaxed);
        }
    }

    /// Writing works (again): the end of a failing episode is said once.
    fn recovered(&mut self) {
        self.retry_at = None;
        if !self.current() {
            return;
        }
        let was = self.state.failure.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(f) = was {
            info!(
                log = %self.state.name,
                lost = self.state.failed_total(),
                "access log: writing again (it had failed: {})",
                f.reason.as_str()
            );
        }
    }

    /// Opening or writing failed: said once per episode (or when the
    /// reason changes).
    fn failed(&mut self, e: Unwritable) {
        self.file = None;
        if !self.current() {
            return;
        }
        let mut failure = self.state.failure.lock().unwrap_or_else(|p| p.into_inner());
        if failure.as_ref().is_some_and(|f| f.reason == e.reason) {
            return;
        }
        error!(
            log = %self.state.name,
            reason = e.reason.as_str(),
            "access log: cannot write: {}; its lines are lost and counted until it can (tried again on SIGUSR1, at a reload, and each second as lines come)",
            e.message
        );
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        *failure = Some(Failure { reason: e.reason, message: e.message, since });
    }
}

/// Writes `buf` (lines ending at `ends`) to `out`: in one go, or line by
/// line. On an error, how many lines were written whole, and the error.
fn write_chunks(out: &mut dyn Write, buf: &[u8], ends: &[usize], per_line: bool) -> Result<(), (u64, std::io::Error)> {
    let mut at = 0;
    let chunks: Vec<usize> = if per_line { ends.to_vec() } else { ends.last().copied().into_iter().collect() };
    for end in chunks {
        while at < end {
            match out.write(&buf[at..end]) {
                Ok(0) => return Err((whole(ends, at), std::io::ErrorKind::WriteZero.into())),
                Ok(n) => at += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // A descriptor someone made non-blocking (stdout shared
                // with another process): wait as a blocking one would.
                // This thread is the destination's own.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err((whole(ends, at), e)),
            }
        }
    }
    let _ = out.flush();
    Ok(())
}

/// Lines of `ends` wholly within the first `at` bytes.
fn whole(ends: &[usize], at: usize) -> u64 {
    ends.iter().take_while(|e| **e <= at).count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that takes `left` bytes, then fails.
    struct Sink {
        got: Vec<u8>,
        left: usize,
    }

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if self.left == 0 {
                return Err(std::io::Error::from_raw_os_error(28));
            }
            let n = b.len().min(self.left).min(7);
            self.got.extend_from_slice(&b[..n]);
            self.left -= n;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_write_counts_the_lines_written_whole() {
        let buf = b"one\ntwo\nthree\n";
        let ends = [4, 8, 14];
        let mut ok = Sink { got: Vec::new(), left: 100 };
        assert!(write_chunks(&mut ok, buf, &ends, false).is_ok());
        assert_eq!(ok.got, buf);
        let mut full = Sink { got: Vec::new(), left: 10 };
        let (done, e) = write_chunks(&mut full, buf, &ends, true).unwrap_err();
        assert_eq!((done, e.raw_os_error()), (2, Some(28)));
    }
}
