//! Listening sockets and their accept loops.
//!
//! The accept loop never dies. Out of file descriptors (EMFILE/ENFILE), the
//! pending client stays in the backlog and `accept` fails again at once, so
//! the loop frees a spare descriptor it keeps for this, accepts the client
//! and closes it at once (the client learns now instead of hanging), and
//! backs off when even that fails. Each such episode is logged once and
//! every closed client is counted.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{Config, ListenerConfig};
use crate::state::snapshot::{Shared, Snapshot};
pub use crate::traffic::bind::{BindError, bind, bind_hint, from_fd};
use crate::traffic::proxied;
use crate::traffic::proxy;
use crate::traffic::shutdown::{Shutdown, Stopped};
use crate::wire::access_log;
use crate::wire::admission;
use crate::wire::net;
use crate::wire::proxy_header::Via;
use crate::wire::sni;

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
    /// Refused by the listener's `access` rules.
    pub rejected_access: AtomicU64,
    /// Refused by `max_connections_per_client`.
    pub rejected_per_client: AtomicU64,
    /// Refused by `max_connection_rate_per_client`.
    pub rejected_client_rate: AtomicU64,
    /// Clients with connections open (or a rate bucket refilling): the
    /// listener's own, or those of the `[limit.NAME]` it names.
    pub clients: admission::Table,
    /// Routed listeners: clients closed because no complete ClientHello
    /// came in time, within the bound, or before they left; clients no
    /// route took with no pool for them; clients whose first bytes were
    /// not TLS (sent to the pool for the rest, if any).
    pub rejected_hello_timeout: AtomicU64,
    pub rejected_hello_too_large: AtomicU64,
    pub rejected_hello_closed: AtomicU64,
    pub rejected_no_route: AtomicU64,
    pub not_tls: AtomicU64,
    /// Routed listeners: clients waiting for their ClientHello now, those
    /// closed at once because `max_pending_hellos` were waiting already,
    /// and whether it is refusing now (so it says so once per episode).
    pub pending_hellos: AtomicU64,
    pub rejected_pending_hellos: AtomicU64,
    crowded: AtomicBool,
    /// PROXY protocol listeners: headers read and clients refused.
    pub proxy_protocol: proxied::Counts,
    /// Per route (its pattern; `""`: the pool for the rest): clients sent
    /// on, and of those the ones its pool could not take (no server
    /// eligible, or every connect failed).
    pub routed: Mutex<BTreeMap<String, RouteCount>>,
}

/// What one route did: clients sent on, and refused by its pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RouteCount {
    pub connections: u64,
    pub refused: u64,
}

/// What identifies a listener and its counters, as they move to the
/// process that takes over.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Carried {
    pub bind: SocketAddr,
    pub nth: usize,
    pub local: SocketAddr,
    pub accepted: u64,
    pub rejected_max_connections: u64,
    pub rejected_fd_limit: u64,
    pub rejected_no_pool: u64,
    // Absent from a predecessor older than these counters.
    #[serde(default)]
    pub rejected_access: u64,
    #[serde(default)]
    pub rejected_per_client: u64,
    #[serde(default)]
    pub rejected_client_rate: u64,
    #[serde(default)]
    pub rejected_hello_timeout: u64,
    #[serde(default)]
    pub rejected_hello_too_large: u64,
    #[serde(default)]
    pub rejected_hello_closed: u64,
    #[serde(default)]
    pub rejected_no_route: u64,
    #[serde(default)]
    pub not_tls: u64,
    #[serde(default)]
    pub rejected_pending_hellos: u64,
    #[serde(default)]
    pub routed: BTreeMap<String, RouteCount>,
    #[serde(default)]
    pub proxy_protocol: proxied::Tally,
}

/// A listening socket taken over, with what identifies it in a config and
/// its counters.
#[derive(Debug)]
pub struct Inherited {
    pub carried: Carried,
    pub fd: std::os::fd::OwnedFd,
}

/// A listening socket's keepalive, which the clients it accepts inherit.
fn set_keepalive(sock: socket2::SockRef<'_>, l: &ListenerConfig, state: &ListenerState) {
    if let Err(e) = net::set_keepalive(sock, l.client_keepalive.as_ref()) {
        warn!(bind = %state.bind, error = %e, "cannot set client_keepalive on the listening socket");
    }
}

/// A descriptor held in reserve to shed clients when none are left.
/// Process-wide by nature: the descriptor table it stands in for is the
/// process's, shared by every balancer in it, and one spare frees one slot
/// of it whichever balancer needs it.
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

/// Counts a client towards its listener's active count while it lives,
/// and (a connection moved here by an upgrade) towards its address's open
/// connections.
struct ListenerConn(Arc<ListenerState>, #[allow(dead_code, reason = "held for its Drop")] Option<ClientShare>);

impl Drop for ListenerConn {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

/// One place in a client address's count of open connections, where the
/// listener limits them (the table it was counted in, the address, and
/// the rate limit its entry refills at). The proxy gives it back when the
/// server closes its side, before the client can see the FIN and come
/// back, as nginx's session (and its `limit_conn` count) ends there.
struct ClientShare(Arc<admission::Clients>, IpAddr, u32);

impl Drop for ClientShare {
    fn drop(&mut self) {
        self.0.release(self.1, self.2, Instant::now());
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
    let stopped = Stopped::watch(stop);
    loop {
        // poll_accept keeps the waker in the socket's reader slot; accept()
        // queued a waiter on the socket (a lock, a list) at every wait, and
        // made its future anew per client.
        let accepted = std::future::poll_fn(|cx| {
            if stopped.poll(cx) {
                return std::task::Poll::Ready(None);
            }
            listener.poll_accept(cx).map(Some)
        })
        .await;
        let Some(accepted) = accepted else { return };
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
            Err(e) if crate::fail::is_fd_exhaustion(&e) => {
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
                    crate::timer::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    reserve_spare();
                }
            }
            // The client gave up before we got to it: nothing to do.
            Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset) => {}
            Err(e) => {
                warn!(listener = %state.local, error = %e, "accept failed");
                crate::timer::sleep(backoff).await;
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
    // A routed listener finds its pool once the hello is read.
    let pool = cfg.pool.as_deref().and_then(|p| snap.pool_index(p));
    if pool.is_none() && cfg.routes.is_empty() {
        state.rejected_no_pool.fetch_add(1, Relaxed);
        return;
    }
    if cfg.proxy_protocol.is_none() {
        return admit(client, (peer, None), snap, pool, state, shutdown, None);
    }
    // Counted as active, within max_connections, from accept: the cap
    // bounds how many clients hold a descriptor waiting for their header.
    let active = state.active.fetch_add(1, Relaxed);
    let guard = ListenerConn(state.clone(), None);
    if cfg.max_connections > 0 && active >= u64::from(cfg.max_connections) {
        let entry = log_entry(&snap, state, cfg.access_log.as_ref(), (peer, None), pool);
        return refuse(state, peer, entry, access_log::End::MaxConnections);
    }
    let (state, shutdown) = (state.clone(), shutdown.clone());
    shutdown.tracker.clone().spawn(async move {
        let Some(cfg) = snap.listener(state.bind, state.nth) else { return };
        let Some(pp) = &cfg.proxy_protocol else { return };
        match proxied::accept(&client, peer, pp, &state.proxy_protocol).await {
            // As nginx: the access rules and limits see the address the
            // header gave, once it is read.
            Ok((addr, via)) => admit(client, (addr, Some(via)), snap, pool, &state, &shutdown, Some(guard)),
            Err(f) => {
                let via = Some(Via { peer, source: None, destination: None });
                let entry = log_entry(&snap, &state, cfg.access_log.as_ref(), (peer, via), pool);
                refuse(&state, peer, entry, access_log::End::ProxyHeader(f));
            }
        }
    });
}

/// The access log line of a client of `pool` (if the listener logs): its
/// address and, with a PROXY header, the peer and what the header said.
fn log_entry(
    snap: &Snapshot,
    state: &ListenerState,
    log: Option<&Arc<crate::config::AccessLog>>,
    (addr, via): (SocketAddr, Option<Via>),
    pool: Option<usize>,
) -> Option<Box<access_log::Entry>> {
    let log = log?;
    let pool_name = pool.map_or_else(|| Arc::from("-"), |i| snap.pools[i].name.clone());
    let mut e = access_log::Entry::new(&snap.conns.access_log, log.clone(), addr, state.local, pool_name);
    e.set_via(via);
    Some(Box::new(e))
}

/// Who may connect, then how much one client may hold, then the
/// listener's own cap (unless `held`, counted at accept already): each
/// refusal closes the client at once. Then serves it, or reads its hello
/// on a routed listener. `addr` is the client's address from here on.
fn admit(
    client: TcpStream,
    (addr, via): (SocketAddr, Option<Via>),
    snap: Arc<Snapshot>,
    pool: Option<usize>,
    state: &Arc<ListenerState>,
    shutdown: &Shutdown,
    held: Option<ListenerConn>,
) {
    let Some(cfg) = snap.listener(state.bind, state.nth) else { return };
    let entry = log_entry(&snap, state, cfg.access_log.as_ref(), (addr, via), pool);
    let ip = admission::client_ip(addr.ip());
    if !admission::permitted(&cfg.access, ip) {
        return refuse(state, addr, entry, access_log::End::Denied);
    }
    let mut share = None;
    if cfg.per_client.any() {
        let clients = state.clients.get();
        match clients.admit(ip, cfg.per_client, Instant::now()) {
            Ok(()) => share = Some(Box::new(ClientShare(clients, ip, cfg.per_client.rate))),
            Err(admission::Refused::Open) => return refuse(state, addr, entry, access_log::End::PerClientLimit),
            Err(admission::Refused::Rate) => return refuse(state, addr, entry, access_log::End::ClientRateLimit),
        }
    }
    // Boxed: a connection of a listener without per-client limits carries one pointer.
    let guard = match held {
        Some(held) => (held, share),
        None => {
            let active = state.active.fetch_add(1, Relaxed);
            let guard = (ListenerConn(state.clone(), None), share);
            if cfg.max_connections > 0 && active >= u64::from(cfg.max_connections) {
                // `guard` gives back the active count and the client's share.
                return refuse(state, addr, entry, access_log::End::MaxConnections);
            }
            guard
        }
    };
    // No tracing span per connection: entering it on every wake and
    // keeping its fields cost more than the few lines that would carry it,
    // which name the client themselves.
    // The connection's future is boxed before the spawn: tokio moves an
    // unboxed one by value through several frames into its task cell (a
    // memcpy of the whole future, ~900 instructions per connection by
    // callgrind), a boxed one as a pointer. The idle RSS per connection
    // measured the same either way.
    match pool {
        Some(pool) if cfg.routes.is_empty() => {
            shutdown.tracker.spawn(Box::pin(proxy::serve(client, addr, snap, pool, guard, entry)));
        }
        _ => {
            let Some(waiting) = Waiting::admit(state, cfg.max_pending_hellos) else {
                return refuse(state, addr, entry, access_log::End::Hello(sni::Failed::Crowded));
            };
            shutdown.tracker.spawn(Box::pin(route(client, addr, snap, state.clone(), (guard, waiting), entry)));
        }
    }
}

/// Counts a client of a routed listener as waiting for its ClientHello
/// until it is read (or the client is closed), within the listener's
/// `max_pending_hellos`: each holds the bytes it sent so far (at most
/// [`sni::HELLO_LIMIT`]), so the cap bounds their memory.
struct Waiting(Arc<ListenerState>);

impl Waiting {
    /// None when `cap` clients wait already: the listener says so once
    /// per episode, and again once it admits one.
    fn admit(state: &Arc<ListenerState>, cap: u32) -> Option<Waiting> {
        let waiting = Waiting(state.clone());
        if state.pending_hellos.fetch_add(1, Relaxed) >= u64::from(cap) {
            if !state.crowded.swap(true, Relaxed) {
                warn!(listener = %state.local, max_pending_hellos = cap, "max_pending_hellos clients are waiting for their ClientHello: closing new clients until fewer wait");
            }
            return None;
        }
        if state.crowded.load(Relaxed) && state.crowded.swap(false, Relaxed) {
            info!(listener = %state.local, "fewer than max_pending_hellos clients waiting for their ClientHello: accepting again");
        }
        Some(waiting)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.pending_hellos.fetch_sub(1, Relaxed);
    }
}

/// A client of a routed listener: its ClientHello read (bounded in bytes
/// and time), its server name matched against the routes, then served by
/// the pool chosen, the bytes read going first.
async fn route(
    client: TcpStream,
    peer: SocketAddr,
    snap: Arc<Snapshot>,
    state: Arc<ListenerState>,
    (guard, waiting): ((ListenerConn, Option<Box<ClientShare>>), Waiting),
    mut entry: Option<Box<access_log::Entry>>,
) {
    let Some(cfg) = snap.listener(state.bind, state.nth) else { return };
    let read = sni::preread(&client, sni::HELLO_LIMIT, cfg.preread_timeout).await;
    drop(waiting);
    let (prefix, hello) = match read {
        Ok(got) => got,
        Err(f) => return refuse(&state, peer, entry, access_log::End::Hello(f)),
    };
    if hello == sni::Hello::NotTls {
        state.not_tls.fetch_add(1, Relaxed);
    }
    let by_route = match &hello {
        sni::Hello::Name(name) => sni::best(&cfg.routes, name),
        _ => None,
    };
    let chosen = match by_route {
        Some((pattern, pool)) => snap.pool_index(pool).map(|i| (pattern.to_string(), i)),
        None => cfg.pool.as_deref().and_then(|p| snap.pool_index(p)).map(|i| (String::new(), i)),
    };
    let Some((route, pool)) = chosen else { return refuse(&state, peer, entry, access_log::End::NoRoute) };
    let count = |f: fn(&mut RouteCount)| {
        f(state.routed.lock().unwrap_or_else(|p| p.into_inner()).entry(route.clone()).or_default())
    };
    count(|c| c.connections += 1);
    if let Some(e) = entry.as_mut() {
        e.set_pool(snap.pools[pool].name.clone());
    }
    if !proxy::serve_prefixed(client, peer, snap.clone(), pool, guard, entry, prefix).await {
        count(|c| c.refused += 1);
    }
}

/// Closes a client refused at accept (or, on a routed listener, before a
/// pool was chosen): counted by why, logged where the listener logs.
fn refuse(state: &ListenerState, peer: SocketAddr, entry: Option<Box<access_log::Entry>>, end: access_log::End) {
    use access_log::End;
    let counter = match end {
        End::Denied => &state.rejected_access,
        End::PerClientLimit => &state.rejected_per_client,
        End::ClientRateLimit => &state.rejected_client_rate,
        End::Hello(sni::Failed::Timeout) => &state.rejected_hello_timeout,
        End::Hello(sni::Failed::TooLarge) => &state.rejected_hello_too_large,
        End::Hello(sni::Failed::Closed) => &state.rejected_hello_closed,
        End::Hello(sni::Failed::Crowded) => &state.rejected_pending_hellos,
        End::NoRoute => &state.rejected_no_route,
        End::ProxyHeader(f) => {
            state.proxy_protocol.refused(f);
            return close(state, peer, entry, end);
        }
        _ => &state.rejected_max_connections,
    };
    counter.fetch_add(1, Relaxed);
    close(state, peer, entry, end);
}

fn close(state: &ListenerState, peer: SocketAddr, entry: Option<Box<access_log::Entry>>, end: access_log::End) {
    debug!(listener = %state.local, client = %peer, "{}: client closed", end.words());
    if let Some(e) = entry {
        e.finish(end, 0, 0);
    }
}

struct Open {
    state: Arc<ListenerState>,
    stop: CancellationToken,
    /// The listening socket, kept to hand over to a successor.
    fd: Option<std::os::fd::OwnedFd>,
}

/// The open listeners, kept across reloads by (bind, nth), and those a
/// reload closed while connections they accepted are still open.
#[derive(Default)]
pub struct Listeners {
    open: Mutex<Vec<Open>>,
    closed: Mutex<Vec<Arc<ListenerState>>>,
    /// The tables of the `[limit.NAME]`s, kept across reloads by name.
    limits: admission::Shared,
}

/// A bound socket not yet accepting.
pub struct Bound(TcpListener, Arc<ListenerState>);

impl Listeners {
    /// Binds every listener of `config` that is not open yet. Nothing
    /// accepts until [`Listeners::launch`]; on error the sockets bound so far
    /// are dropped and nothing has changed.
    pub fn bind_new(&self, config: &Config) -> Result<Vec<Bound>, BindError> {
        self.bind_new_from(config, &mut Vec::new())
    }

    /// As [`Listeners::bind_new`], taking the sockets of `inherited` (from
    /// the process this one takes over from) where they match a listener
    /// of `config` by bind address and repeat; what is taken is removed
    /// from it.
    pub fn bind_new_from(&self, config: &Config, inherited: &mut Vec<Inherited>) -> Result<Vec<Bound>, BindError> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (index, l) in config.listeners.iter().enumerate() {
            let nth = config.listeners[..index].iter().filter(|o| o.bind == l.bind).count();
            if open.iter().any(|o| o.state.bind == l.bind && o.state.nth == nth) {
                continue;
            }
            let err = |error| BindError { file: config.source.clone(), index, bind: l.bind, error };
            let taken = inherited.iter().position(|i| i.carried.bind == l.bind && i.carried.nth == nth);
            let (sock, c) = match taken.map(|i| inherited.swap_remove(i)) {
                Some(i) => (from_fd(i.fd).map_err(err)?, Some(i.carried)),
                None => (bind(l.bind).map_err(err)?, None),
            };
            let local = sock.local_addr().unwrap_or(l.bind);
            let c = c.unwrap_or(Carried {
                bind: l.bind,
                nth,
                local,
                accepted: 0,
                rejected_max_connections: 0,
                rejected_fd_limit: 0,
                rejected_no_pool: 0,
                rejected_access: 0,
                rejected_per_client: 0,
                rejected_client_rate: 0,
                rejected_hello_timeout: 0,
                rejected_hello_too_large: 0,
                rejected_hello_closed: 0,
                rejected_no_route: 0,
                not_tls: 0,
                rejected_pending_hellos: 0,
                routed: BTreeMap::new(),
                proxy_protocol: Default::default(),
            });
            let state = Arc::new(ListenerState {
                bind: l.bind,
                nth,
                local,
                active: Default::default(),
                accepted: c.accepted.into(),
                rejected_max_connections: c.rejected_max_connections.into(),
                rejected_fd_limit: c.rejected_fd_limit.into(),
                rejected_no_pool: c.rejected_no_pool.into(),
                rejected_access: c.rejected_access.into(),
                rejected_per_client: c.rejected_per_client.into(),
                rejected_client_rate: c.rejected_client_rate.into(),
                clients: Default::default(),
                rejected_hello_timeout: c.rejected_hello_timeout.into(),
                rejected_hello_too_large: c.rejected_hello_too_large.into(),
                rejected_hello_closed: c.rejected_hello_closed.into(),
                rejected_no_route: c.rejected_no_route.into(),
                not_tls: c.not_tls.into(),
                pending_hellos: Default::default(),
                rejected_pending_hellos: c.rejected_pending_hellos.into(),
                crowded: Default::default(),
                routed: Mutex::new(c.routed),
                proxy_protocol: proxied::Counts::from_tally(&c.proxy_protocol),
            });
            out.push(Bound(sock, state));
        }
        Ok(out)
    }

    /// Stops accepting everywhere and closes the sockets kept for a
    /// successor: from here new clients are refused (or, after a hand-over,
    /// only the successor accepts them).
    pub fn stop_all(&self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        for o in open.iter_mut() {
            o.stop.cancel();
            o.fd = None;
        }
    }

    /// Stops every accept loop but keeps the sockets: a successor accepts
    /// on them now, and should the hand-over break off,
    /// [`Listeners::resume`] accepts here again at once (clients that came
    /// meanwhile wait in the shared backlog).
    pub fn pause(&self) {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        for o in open.iter() {
            o.stop.cancel();
        }
    }

    /// Accepts again on every socket [`Listeners::pause`] kept; returns
    /// how many.
    pub fn resume(&self, shared: &Arc<Shared>, shutdown: &Shutdown) -> usize {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for o in open.iter_mut().filter(|o| o.stop.is_cancelled()) {
            let Some(sock) = o.fd.as_ref().and_then(|fd| fd.try_clone().ok()).and_then(|fd| from_fd(fd).ok()) else {
                warn!(bind = %o.state.bind, "cannot accept on the kept socket again");
                continue;
            };
            o.stop = shutdown.stop_accepting.child_token();
            tokio::spawn(accept_loop(sock, o.state.clone(), shared.clone(), shutdown.clone(), o.stop.clone()));
            n += 1;
        }
        n
    }

    /// Every open listener's socket and what identifies it, for the
    /// process taking over.
    pub fn handover(&self) -> Vec<(Carried, std::os::fd::OwnedFd)> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.iter()
            .filter_map(|o| {
                let fd = o.fd.as_ref()?.try_clone().ok()?;
                let st = &o.state;
                Some((
                    Carried {
                        bind: st.bind,
                        nth: st.nth,
                        local: st.local,
                        accepted: st.accepted.load(Relaxed),
                        rejected_max_connections: st.rejected_max_connections.load(Relaxed),
                        rejected_fd_limit: st.rejected_fd_limit.load(Relaxed),
                        rejected_no_pool: st.rejected_no_pool.load(Relaxed),
                        rejected_access: st.rejected_access.load(Relaxed),
                        rejected_per_client: st.rejected_per_client.load(Relaxed),
                        rejected_client_rate: st.rejected_client_rate.load(Relaxed),
                        rejected_hello_timeout: st.rejected_hello_timeout.load(Relaxed),
                        rejected_hello_too_large: st.rejected_hello_too_large.load(Relaxed),
                        rejected_hello_closed: st.rejected_hello_closed.load(Relaxed),
                        rejected_no_route: st.rejected_no_route.load(Relaxed),
                        not_tls: st.not_tls.load(Relaxed),
                        rejected_pending_hellos: st.rejected_pending_hellos.load(Relaxed),
                        routed: st.routed.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                        proxy_protocol: st.proxy_protocol.tally(),
                    },
                    fd,
                ))
            })
            .collect()
    }

    /// Serves a connection moved here from the process this one took over
    /// from, counted in the listener it came in on (when this config still
    /// has it) and in its server (when still listed).
    pub fn adopt(
        &self,
        client: TcpStream,
        upstream: TcpStream,
        moved: crate::wire::conns::Moved,
        shared: &Arc<Shared>,
        shutdown: &Shutdown,
    ) {
        let snap = shared.snapshot.load_full();
        let state = self.states().into_iter().find(|l| l.local == moved.listener);
        let guard = state.map(|st| {
            st.active.fetch_add(1, Relaxed);
            // Counted towards its address's share, never refused: it is
            // open already.
            let limits = snap.listener(st.bind, st.nth).map(|c| c.per_client).unwrap_or_default();
            let client = limits.any().then(|| {
                let ip = admission::client_ip(moved.peer.ip());
                let clients = st.clients.get();
                clients.adopt(ip, limits.rate, Instant::now());
                ClientShare(clients, ip, limits.rate)
            });
            ListenerConn(st, client)
        });
        let cfg = guard.as_ref().and_then(|g| snap.listener(g.0.bind, g.0.nth));
        let at = snap.pool_index(&moved.pool).and_then(|p| {
            let i = snap.pools[p].servers.iter().position(|s| s.addr == moved.server)?;
            Some((p, i))
        });
        let entry = match (cfg.and_then(|c| c.access_log.as_ref()), moved.logged) {
            (Some(log), true) => Some(Box::new(
                access_log::Entry::new(
                    &snap.conns.access_log,
                    log.clone(),
                    moved.peer,
                    moved.listener,
                    Arc::from(moved.pool.as_str()),
                )
                .resumed(moved.server, moved.connect_us.map(Duration::from_micros), Duration::from_millis(moved.age_ms))
                .with_via(moved.via),
            )),
            _ => None,
        };
        shutdown.tracker.spawn(proxy::resume(client, upstream, moved, snap, at, guard, entry));
    }

    /// Starts accepting on freshly bound listeners.
    pub fn launch(&self, bound: Vec<Bound>, shared: &Arc<Shared>, shutdown: &Shutdown) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        for Bound(sock, state) in bound {
            let snap = shared.snapshot.load();
            let cfg = snap.listener(state.bind, state.nth);
            let pool = cfg.and_then(|l| l.pool.clone());
            if let Some(l) = cfg {
                set_keepalive(socket2::SockRef::from(&sock), l, &state);
                state.clients.share(l.limit.as_ref().map(|n| self.limits.table(n)));
            }
            info!(bind = %state.bind, local = %state.local, pool = pool.as_deref().unwrap_or(""), "listening");
            let stop = shutdown.stop_accepting.child_token();
            let fd = std::os::fd::AsFd::as_fd(&sock).try_clone_to_owned().ok();
            tokio::spawn(accept_loop(sock, state.clone(), shared.clone(), shutdown.clone(), stop.clone()));
            open.push(Open { state, stop, fd });
        }
    }

    /// Sets every open listener's socket options from `config` (its
    /// `client_keepalive`) and the table its clients are counted in (its
    /// own or its `limit`'s), at start and after each reload: clients
    /// accepted from then on inherit them; those open keep theirs.
    pub fn set_options(&self, config: &Config) {
        self.limits.keep(config);
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        for o in open.iter() {
            let Some(l) = config.listeners.iter().filter(|l| l.bind == o.state.bind).nth(o.state.nth) else { continue };
            o.state.clients.share(l.limit.as_ref().map(|n| self.limits.table(n)));
            let Some(fd) = &o.fd else { continue };
            set_keepalive(socket2::SockRef::from(fd), l, &o.state);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_carry_to_a_successor_and_an_older_predecessor_still_parses() {
        // What a predecessor without the admission and routing counters sends.
        let old = r#"{"bind":"0.0.0.0:443","nth":0,"local":"0.0.0.0:443","accepted":7,
            "rejected_max_connections":1,"rejected_fd_limit":0,"rejected_no_pool":0}"#;
        let c: Carried = serde_json::from_str(old).unwrap();
        assert_eq!((c.accepted, c.rejected_access, c.not_tls, c.routed.len()), (7, 0, 0, 0));
        let mut routed = BTreeMap::new();
        routed.insert("ucp.test".to_owned(), RouteCount { connections: 5, refused: 1 });
        let now = Carried {
            rejected_hello_timeout: 1,
            rejected_hello_too_large: 2,
            rejected_hello_closed: 3,
            rejected_no_route: 4,
            rejected_pending_hellos: 6,
            routed,
            ..c
        };
        let back: Carried = serde_json::from_str(&serde_json::to_string(&now).unwrap()).unwrap();
        assert_eq!(back, now);
    }
}
