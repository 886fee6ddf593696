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
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::access_log;
use crate::config::Config;
use crate::net;
use crate::proxy;
use crate::shutdown::Shutdown;
use crate::snapshot::Shared;

const BACKLOG: i32 = 1024;
const MIN_BACKOFF: Duration = Duration::from_millis(1);
// Short: while out of descriptors a waiting client is only seen at the next
// try (EMFILE hides whether one waits), so this bounds how long it waits.
const MAX_BACKOFF: Duration = Duration::from_millis(50);

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
    // An IPv6 listener serves IPv6 only, as nginx's `ipv6only=on`: the
    // usual `listen 443; listen [::]:443;` pair binds both.
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(BACKLOG)?;
    sock.set_tcp_nodelay(true)?;
    sock.set_tcp_keepalive(&net::keepalive())?;
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

/// Accepts until `stop` (this listener removed by a reload, or shutdown).
/// Connections already accepted are not affected by `stop`.
pub async fn accept_loop(
    listener: TcpListener,
    state: Arc<ListenerState>,
    shared: Arc<Shared>,
    shutdown: Shutdown,
    stop: CancellationToken,
) {
    reserve_spare();
    let mut backoff = MIN_BACKOFF;
    let mut starved = false;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
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
            Err(e) if net::is_fd_exhaustion(&e) => {
                if !starved {
                    starved = true;
                    warn!(listener = %state.local, error = %e, "out of file descriptors: closing new clients until some are free");
                }
                // EMFILE says nothing about a client waiting (the kernel
                // checks for a free descriptor first). With the spare freed,
                // accept without yielding, so no other task can take the
                // descriptor meanwhile, and close what came: the client
                // learns at once instead of hanging. Then take the spare
                // back at once, for the same reason.
                let mut shed = false;
                if release_spare() {
                    if let Ok((client, _)) = SockRef::from(&listener).accept() {
                        let _ = client.set_linger(Some(Duration::ZERO));
                        state.rejected_fd_limit.fetch_add(1, Relaxed);
                        shed = true;
                    }
                    reserve_spare();
                }
                if !shed {
                    // Nothing waiting, or no spare: wait a little rather
                    // than spin on an accept that fails at once.
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    reserve_spare();
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
    let entry = cfg
        .access_log
        .as_ref()
        .map(|log| Box::new(access_log::Entry::new(log.clone(), peer, state.local, snap.pools[pool].name.clone())));
    if cfg.max_connections > 0 && active >= u64::from(cfg.max_connections) {
        state.rejected_max_connections.fetch_add(1, Relaxed);
        debug!(listener = %state.local, client = %peer, "max_connections reached: client closed");
        if let Some(e) = entry {
            e.finish(access_log::End::MaxConnections, 0, 0);
        }
        return;
    }
    // No tracing span per connection: entering it on every wake and
    // keeping its fields cost more than the few lines that would carry it,
    // which name the client themselves.
    shutdown.tracker.spawn(proxy::serve(client, peer, snap, pool, guard, entry));
}

/// A listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("{file}: listener[{index}].bind: cannot listen on {bind}: {error}")]
pub struct BindError {
    pub file: String,
    pub index: usize,
    pub bind: SocketAddr,
    pub error: io::Error,
}

struct Open {
    state: Arc<ListenerState>,
    stop: CancellationToken,
}

/// The open listeners, kept across reloads by (bind, nth), and those a
/// reload closed while connections they accepted are still open.
#[derive(Default)]
pub struct Listeners {
    open: Mutex<Vec<Open>>,
    closed: Mutex<Vec<Arc<ListenerState>>>,
}

/// A bound socket not yet accepting.
pub struct Bound(TcpListener, Arc<ListenerState>);

impl Listeners {
    /// Binds every listener of `config` that is not open yet. Nothing
    /// accepts until [`Listeners::launch`]; on error the sockets bound so far
    /// are dropped and nothing has changed.
    pub fn bind_new(&self, config: &Config) -> Result<Vec<Bound>, BindError> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (index, l) in config.listeners.iter().enumerate() {
            let nth = config.listeners[..index].iter().filter(|o| o.bind == l.bind).count();
            if open.iter().any(|o| o.state.bind == l.bind && o.state.nth == nth) {
                continue;
            }
            let sock =
                bind(l.bind).map_err(|error| BindError { file: config.source.clone(), index, bind: l.bind, error })?;
            let local = sock.local_addr().unwrap_or(l.bind);
            let state = Arc::new(ListenerState {
                bind: l.bind,
                nth,
                local,
                active: Default::default(),
                accepted: Default::default(),
                rejected_max_connections: Default::default(),
                rejected_fd_limit: Default::default(),
                rejected_no_pool: Default::default(),
            });
            out.push(Bound(sock, state));
        }
        Ok(out)
    }

    /// Starts accepting on freshly bound listeners.
    pub fn launch(&self, bound: Vec<Bound>, shared: &Arc<Shared>, shutdown: &Shutdown) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        for Bound(sock, state) in bound {
            let pool = shared.snapshot.load().listener(state.bind, state.nth).map(|l| l.pool.clone());
            info!(bind = %state.bind, local = %state.local, pool = pool.as_deref().unwrap_or(""), "listening");
            let stop = shutdown.stop_accepting.child_token();
            tokio::spawn(accept_loop(sock, state.clone(), shared.clone(), shutdown.clone(), stop.clone()));
            open.push(Open { state, stop });
        }
    }

    /// Stops accepting on listeners `config` no longer has; their open
    /// connections go on. Returns the addresses closed.
    pub fn close_removed(&self, config: &Config) -> Vec<SocketAddr> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut gone = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        let mut closed = Vec::new();
        open.retain(|o| {
            let keep = config.listeners.iter().filter(|l| l.bind == o.state.bind).count() > o.state.nth;
            if !keep {
                o.stop.cancel();
                info!(bind = %o.state.bind, local = %o.state.local, "listener removed: no longer accepting");
                closed.push(o.state.local);
                gone.push(o.state.clone());
            }
            keep
        });
        closed
    }

    /// Listeners closed by a reload whose connections are not all gone:
    /// they are counted until the last ends.
    pub fn draining(&self) -> Vec<Arc<ListenerState>> {
        let mut gone = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        gone.retain(|l| l.active.load(Relaxed) > 0);
        gone.clone()
    }

    pub fn states(&self) -> Vec<Arc<ListenerState>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|o| o.state.clone()).collect()
    }
}
