//! Zero-copy bulk transfer: `splice(2)` from one socket into a pipe and from
//! the pipe into the other socket, so the bytes of a large transfer never
//! cross into user space.
//!
//! Used only for bursts: the byte path in `copy.rs` starts every read with a
//! user-space buffer and switches a direction to splice when a read fills
//! the whole buffer (more is waiting; see `copy.rs` for the measurements
//! behind it). A 1-byte ping-pong never gets here:
//! splice costs two syscalls per chunk where a buffer costs one read and one
//! write, and was measured worse for small messages.
//!
//! Pipes come from a per-thread pool (a pipe per connection would cost two
//! descriptors each, idle or not). A pipe goes back to the pool only when it
//! is empty: one that still holds bytes when its transfer ends in an error
//! or is cancelled is closed, so no byte of one connection can ever reach
//! another. rustix's `splice` is a safe wrapper: no `unsafe` here.

use std::cell::RefCell;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use rustix::pipe::{PipeFlags, SpliceFlags, pipe_with, splice};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::wire::conns::Conns;

/// Bytes one splice moves at most, and the capacity asked for each new
/// pipe (F_SETPIPE_SZ; the default is 64 KiB). Eight streams through one
/// core (ROWS=bulk, ucp-lb vs nginx): 64 KiB pipes 16.0 Gbit/s, 256 KiB
/// 18.1, 1 MiB 19.3 within the noise of 256 KiB, nginx 15.9-18.3. A pipe's
/// capacity counts against the per-user pipe page limit
/// (fs/pipe-user-pages-soft, 64 MiB by default) whether it holds bytes or
/// not: 256 pipes of 256 KiB fit. Past the limit the kernel refuses the
/// size and the pipe keeps 64 KiB; splice then moves less at a time.
const PIPE_CAP: usize = 256 * 1024;
/// Empty pipes kept per worker thread; more are closed.
const POOL_MAX: usize = 16;

// Empty pipes kept by each worker thread: per thread, as copy.rs's
// buffers, and only ever empty ones (see `Pipe`'s drop): no state of a
// connection or of a balancer passes through.
thread_local! {
    static FREE: RefCell<Vec<(OwnedFd, OwnedFd)>> = const { RefCell::new(Vec::new()) };
}

/// A pooled pipe and how many bytes it holds now.
struct Pipe<'a> {
    fds: Option<(OwnedFd, OwnedFd)>,
    held: usize,
    /// Counts the pipe if it is closed holding bytes.
    discarded: &'a AtomicU64,
}

impl Pipe<'_> {
    /// A pipe from the pool, or a new one; None when none can be made (out
    /// of descriptors, say): the caller keeps using its buffer.
    fn take(discarded: &AtomicU64) -> Option<Pipe<'_>> {
        let pooled = FREE.try_with(|f| f.borrow_mut().pop()).ok().flatten();
        let fds = match pooled {
            Some(p) => p,
            None => {
                let p = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC).ok()?;
                // Refused past the per-user limit: 64 KiB then, still right.
                let _ = rustix::pipe::fcntl_setpipe_size(&p.1, PIPE_CAP);
                p
            }
        };
        Some(Pipe { fds: Some(fds), held: 0, discarded })
    }
}

impl Drop for Pipe<'_> {
    fn drop(&mut self) {
        if let Some(fds) = self.fds.take() {
            if self.held == 0 {
                let _ = FREE.try_with(|f| {
                    let mut f = f.borrow_mut();
                    if f.len() < POOL_MAX {
                        f.push(fds);
                    }
                });
            } else {
                // Not empty (an error or a cancel mid-transfer): closed here.
                self.discarded.fetch_add(1, Relaxed);
            }
        }
    }
}

/// How a splice burst ended.
pub enum Burst {
    /// `src` has nothing more to read now; `usize` bytes were moved.
    Drained(usize),
    /// `src` reached end of file after `usize` bytes.
    Eof(usize),
    /// No pipe could be had: use the buffer.
    NoPipe,
}

/// An error of the read side or of the write side.
pub enum BurstError {
    Read(io::Error),
    Write(io::Error),
}

/// Moves what `src` has to read into `dst` through a pipe, until `src` would
/// block or ends. `moved` is called with each chunk's size once it is in
/// `dst`. `conns`: the balancer's stop request and splice counters.
pub async fn burst(
    src: &TcpStream,
    dst: &TcpStream,
    conns: &Conns,
    mut moved: impl FnMut(usize),
) -> Result<Burst, BurstError> {
    let Some(mut pipe) = Pipe::take(&conns.splice_discarded) else { return Ok(Burst::NoPipe) };
    conns.splice_bursts.fetch_add(1, Relaxed);
    let mut total = 0;
    loop {
        // The pipe is empty here: a connection asked to move stops now.
        if conns.stopping() {
            return Ok(Burst::Drained(total));
        }
        let Some((r, w)) = pipe.fds.as_ref() else { return Ok(Burst::NoPipe) };
        // The pipe is empty here, so WouldBlock can only mean `src` has
        // nothing: try_io then clears `src`'s read readiness, rightly.
        let n = match src.try_io(Interest::READABLE, || {
            splice(src, None, w, None, PIPE_CAP, SpliceFlags::MOVE | SpliceFlags::NONBLOCK).map_err(io::Error::from)
        }) {
            Ok(0) => return Ok(Burst::Eof(total)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Burst::Drained(total)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(BurstError::Read(e)),
        };
        pipe.held = n;
        while pipe.held > 0 {
            // The pipe holds bytes, so WouldBlock means `dst` is full.
            match dst.try_io(Interest::WRITABLE, || {
                splice(r, None, dst, None, pipe.held, SpliceFlags::MOVE | SpliceFlags::NONBLOCK)
                    .map_err(io::Error::from)
            }) {
                Ok(0) => return Err(BurstError::Write(io::ErrorKind::WriteZero.into())),
                Ok(m) => pipe.held -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable().await.map_err(BurstError::Write)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(BurstError::Write(e)),
            }
        }
        total += n;
        moved(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipe_with_bytes_in_it_is_never_pooled() {
        let discarded = AtomicU64::new(0);
        let p = Pipe::take(&discarded).unwrap();
        let (_, w) = p.fds.as_ref().unwrap();
        rustix::io::write(w, b"secret").unwrap();
        let mut p = p;
        p.held = 6;
        drop(p);
        // Every pipe the pool gives out now is empty.
        let mut seen = Vec::new();
        while let Some(q) = FREE.with(|f| f.borrow_mut().pop()) {
            let mut buf = [0u8; 16];
            assert!(matches!(rustix::io::read(&q.0, &mut buf), Err(rustix::io::Errno::AGAIN)), "pooled pipe not empty");
            seen.push(q);
        }
        assert_eq!(discarded.load(Relaxed), 1, "the pipe holding bytes was not counted");
        let p = Pipe::take(&discarded).unwrap();
        let mut buf = [0u8; 16];
        assert!(matches!(rustix::io::read(&p.fds.as_ref().unwrap().0, &mut buf), Err(rustix::io::Errno::AGAIN)));
    }
}
