//! One client connection: pick a server, connect (retrying on others), then
//! pass bytes both ways until the end.
//!
//! Nothing is read from the client before an upstream connection is up: its
//! first bytes wait in the kernel, so they reach exactly one server, and a
//! failed connect can be absorbed by the next server without the client ever
//! knowing. Only a failure to connect counts against a server: a client
//! leaving or a quiet connection is not the server's fault, and neither is
//! running out of local file descriptors or ports.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use socket2::TcpKeepalive;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::Retries;
use crate::copy;
use crate::passive::Transition;
use crate::pool::{Pool, ServerState};
use crate::snapshot::Snapshot;

/// Dead peers of idle connections are found after about 2 minutes
/// (60 s idle, then 6 probes 10 s apart) rather than Linux's 2 hours.
pub fn keepalive() -> TcpKeepalive {
    TcpKeepalive::new().with_time(Duration::from_secs(60)).with_interval(Duration::from_secs(10)).with_retries(6)
}

/// Why a connect failed; a small fixed set, fit for a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    Refused = 0,
    Timeout = 1,
    Reset = 2,
    Unreachable = 3,
    /// Out of file descriptors, ports or memory here: not the server's fault.
    Local = 4,
    Other = 5,
}

impl FailReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::Refused => "refused",
            FailReason::Timeout => "timeout",
            FailReason::Reset => "reset",
            FailReason::Unreachable => "unreachable",
            FailReason::Local => "local",
            FailReason::Other => "other",
        }
    }

    fn of(e: &io::Error) -> FailReason {
        use io::ErrorKind as K;
        match e.kind() {
            K::ConnectionRefused => FailReason::Refused,
            K::ConnectionReset | K::ConnectionAborted => FailReason::Reset,
            K::HostUnreachable | K::NetworkUnreachable | K::NetworkDown => FailReason::Unreachable,
            K::TimedOut => FailReason::Timeout,
            K::AddrNotAvailable | K::OutOfMemory => FailReason::Local,
            _ if is_fd_exhaustion(e) || e.raw_os_error() == Some(105) => FailReason::Local, // ENOBUFS
            _ => FailReason::Other,
        }
    }
}

/// EMFILE or ENFILE: this process or the system is out of descriptors.
pub fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// Holds one place in a server's active count while it lives, whatever ends
/// the connection (error, cancellation, panic).
struct ActiveConn(Arc<ServerState>);

impl ActiveConn {
    fn new(state: &Arc<ServerState>) -> ActiveConn {
        state.active.fetch_add(1, Relaxed);
        ActiveConn(state.clone())
    }
}

impl Drop for ActiveConn {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, FailReason> {
    let sock = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() };
    let sock = sock.map_err(|e| FailReason::of(&e))?;
    let _ = sock.set_nodelay(true);
    // Keepalive (four setsockopt calls) is set by the byte path once the
    // connection has lived 10 s: most connections end before.
    match tokio::time::timeout(timeout, sock.connect(addr)).await {
        Err(_) => Err(FailReason::Timeout),
        Ok(Err(e)) => Err(FailReason::of(&e)),
        Ok(Ok(s)) => Ok(s),
    }
}

/// Serves one accepted client with the pool `pool` of `snap`; `guard` is
/// dropped when the connection ends.
///
/// (A plain function returning an `async move` block: an `async fn` would
/// keep a second copy of its arguments for the connection's whole life.)
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub fn serve<G: Send + 'static>(
    client: TcpStream,
    peer: SocketAddr,
    snap: Arc<Snapshot>,
    pool: usize,
    guard: G,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        let _ = &guard; // captured, so it lives as long as the connection
        let Some((upstream, idx, _active)) = connect_upstream(&snap.pools[pool], peer).await else {
            return;
        };
        // Only indexes live across the await below: every reference kept
        // there would be a field of every connection's future.
        let out = {
            let (p, s) = (&snap.pools[pool], &snap.pools[pool].servers[idx]);
            let totals = (&s.state.bytes_sent, &s.state.bytes_received);
            copy::bidirectional(&client, &upstream, p.settings.idle_timeout, totals)
        }
        .await;
        let (pool, server) = (&snap.pools[pool], &snap.pools[pool].servers[idx]);
        debug!(
            pool = %pool.name,
            client = %peer,
            server = %server.addr,
            bytes_to_server = out.to_server,
            bytes_to_client = out.to_client,
            duration_ms = out.duration.as_millis() as u64,
            end = out.end.as_str(),
            "connection closed"
        );
    }
}

/// Picks and connects, trying further servers after a failed connect, up to
/// `retries` more and each at most once.
async fn connect_upstream(pool: &Pool, peer: SocketAddr) -> Option<(TcpStream, usize, ActiveConn)> {
    let client = peer.ip();
    let max_attempts = match pool.settings.retries {
        Retries::Count(n) => n as usize + 1,
        Retries::All => pool.servers.len(),
    };
    let mut tried: Vec<usize> = Vec::new();
    loop {
        let Some(pick) = pool.pick(Instant::now(), client, &tried) else {
            if tried.is_empty() {
                pool.state.no_server.fetch_add(1, Relaxed);
                if pool.set_all_down(true) {
                    warn!(pool = %pool.name, all_down = "reject", "no server is eligible: closing new clients");
                }
                debug!(pool = %pool.name, client = %peer, "no server to send the client to");
            } else {
                debug!(pool = %pool.name, client = %peer, attempts = tried.len(), "every server tried has failed");
            }
            return None;
        };
        note_all_down(pool, pick.fail_open);
        let server = &pool.servers[pick.idx];
        let active = ActiveConn::new(&server.state);
        match connect(server.addr, pool.settings.connect_timeout).await {
            Ok(stream) => {
                if pool.connected(pick.idx) == Some(Transition::Readmitted) {
                    info!(pool = %pool.name, server = %server.label(), "server connects again: back in rotation");
                }
                return Some((stream, pick.idx, active));
            }
            Err(FailReason::Local) => {
                warn!(pool = %pool.name, server = %server.label(), client = %peer, "cannot open a connection: out of local resources (file descriptors or ports)");
                return None;
            }
            Err(reason) => {
                drop(active);
                debug!(pool = %pool.name, server = %server.label(), client = %peer, reason = reason.as_str(), "connect failed");
                if pool.connect_failed(pick.idx, Instant::now(), reason) == Some(Transition::Ejected) {
                    warn!(
                        pool = %pool.name,
                        server = %server.label(),
                        reason = reason.as_str(),
                        max_fails = pool.settings.max_fails,
                        fail_timeout_s = pool.settings.fail_timeout.as_secs_f64(),
                        "server ejected after failed connects"
                    );
                }
                tried.push(pick.idx);
                if tried.len() >= max_attempts {
                    return None;
                }
            }
        }
    }
}

/// Logs each all-down episode once, at its start and its end; counts every
/// fail-open decision.
fn note_all_down(pool: &Pool, fail_open: bool) {
    if fail_open {
        pool.state.fail_open_picks.fetch_add(1, Relaxed);
    }
    if pool.set_all_down(fail_open) {
        if fail_open {
            warn!(pool = %pool.name, all_down = "fail_open", "no server is eligible: failing open over every server not set down");
        } else {
            info!(pool = %pool.name, "a server is eligible again");
        }
    }
}
