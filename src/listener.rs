//! Listening sockets and their accept loops.
//!
//! The accept loop never dies. Out of file descriptors (EMFILE/ENFILE), the
//! pending client stays in the backlog and `accept` fails again at once, so
//! the loop frees a spare descriptor it keeps for this, accepts the client
//! and closes it at once (the client learns now instead of hanging), and
//! backs off when even that fails. Each such episode is logged once and
//! every closed client is counted.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::proxy;
use crate::shutdown::Shutdown;
use crate::snapshot::Shared;

const BACKLOG: i32 = 1024;
const MIN_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// One listener's counters, kept across reloads while its bind stays.
#[derive(Debug)]
pub struct ListenerState {
    /// As configured; identifies the listener across reloads.
    pub bind: SocketAddr,
    /// Which of the listeners configured with the same bind (port 0).
    pub nth: usize,
    /// The address actually bound.
    pub local: SocketAddr,
    pub active: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected_max_connections: AtomicU64,
    pub rejected_fd_limit: AtomicU64,
    pub rejected_no_pool: AtomicU64,
}

/// Binds `addr` with the options every accepted socket inherits on Linux
/// (TCP_NODELAY, keepalive), so they cost no syscalls per connection.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(BACKLOG)?;
    sock.set_tcp_nodelay(true)?;
    sock.set_tcp_keepalive(&proxy::keepalive())?;
    TcpListener::from_std(sock.into())
}

/// A descriptor held in reserve to shed clients when none are left.
static SPARE: Mutex<Option<File>> = Mutex::new(None);

fn reserve_spare() {
    let mut spare = SPARE.lock().unwrap_or_else(|p| p.into_inner());
    if spare.is_none() {
        *spare = File::open("/dev/null").ok();
    }
}

fn release_spare() -> bool {
    SPARE.lock().unwrap_or_else(|p| p.into_inner()).take().is_some()
}

/// Counts a client towards its listener's active count while it lives.
struct ListenerConn(Arc<ListenerState>);

impl Drop for ListenerConn {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

pub async fn accept_loop(listener: TcpListener, state: Arc<ListenerState>, shared: Arc<Shared>, shutdown: Shutdown) {
    reserve_spare();
    let mut backoff = MIN_BACKOFF;
    let mut starved = false;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.stop_accepting.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((client, peer)) => {
                backoff = MIN_BACKOFF;
                if starved {
                    starved = false;
                    reserve_spare();
                    info!(listener = %state.local, "file descriptors available again: accepting");
                }
                dispatch(client, peer, &state, &shared, &shutdown);
            }
            Err(e) if proxy::is_fd_exhaustion(&e) => {
                if !starved {
                    starved = true;
                    warn!(listener = %state.local, error = %e, "out of file descriptors: closing new clients until some are free");
                }
                if release_spare() {
                    // With the spare freed, accept the waiting client only to
                    // close it: it learns at once instead of hanging.
                    if let Ok((client, _)) = listener.accept().await {
                        let _ = SockRef::from(&client).set_linger(Some(Duration::ZERO));
                        state.rejected_fd_limit.fetch_add(1, Relaxed);
                    }
                    reserve_spare();
                } else {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            // The client gave up before we got to it: nothing to do.
            Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset) => {}
            Err(e) => {
                warn!(listener = %state.local, error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

fn dispatch(
    client: TcpStream,
    peer: SocketAddr,
    state: &Arc<ListenerState>,
    shared: &Arc<Shared>,
    shutdown: &Shutdown,
) {
    state.accepted.fetch_add(1, Relaxed);
    // One snapshot for the connection's whole life.
    let snap = shared.snapshot.load_full();
    let Some(cfg) = snap.listener(state.bind, state.nth) else {
        state.rejected_no_pool.fetch_add(1, Relaxed);
        return;
    };
    let Some(pool) = snap.pool_index(&cfg.pool) else {
        state.rejected_no_pool.fetch_add(1, Relaxed);
        return;
    };
    let active = state.active.fetch_add(1, Relaxed);
    let guard = ListenerConn(state.clone());
    if cfg.max_connections > 0 && active >= u64::from(cfg.max_connections) {
        state.rejected_max_connections.fetch_add(1, Relaxed);
        debug!(listener = %state.local, client = %peer, "max_connections reached: client closed");
        return;
    }
    let span = info_span!("conn", listener = %state.local, client = %peer, server = tracing::field::Empty);
    let force_close = shutdown.force_close.clone();
    shutdown.tracker.spawn(
        async move {
            let _guard = guard;
            proxy::serve(client, peer, snap, pool, force_close).await;
        }
        .instrument(span),
    );
}
