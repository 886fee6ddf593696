//! One client connection: pick a server, connect (retrying on others), then
//! pass bytes both ways until the end.
//!
//! Nothing is read from the client before an upstream connection is up: its
//! first bytes wait in the kernel, so they reach exactly one server, and a
//! failed connect can be absorbed by the next server without the client ever
//! knowing. Only a failure to connect counts against a server: a client
//! leaving or a quiet connection is not the server's fault, and neither is
//! running out of local file descriptors or ports.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::{Keepalive, Retries};
use crate::fail::FailReason;
use crate::health::passive::Transition;
use crate::state::ServerState;
use crate::state::pool::Pool;
use crate::state::snapshot::Snapshot;
use crate::wire::access_log;
use crate::wire::conns::{self, Conns};
use crate::wire::copy;
use crate::wire::net::connect;

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

/// Serves one accepted client with the pool `pool` of `snap`; `guard`'s
/// first part is dropped when the connection ends, its second once the
/// server has closed its side (or when it ends, if sooner).
///
/// (A plain function returning an `async move` block: an `async fn` would
/// keep a second copy of its arguments for the connection's whole life.)
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub fn serve<G: Send + 'static, S: Send + 'static>(
    client: TcpStream,
    peer: SocketAddr,
    snap: Arc<Snapshot>,
    pool: usize,
    (guard, served): (G, S),
    // Boxed: a connection without an access log carries one pointer.
    mut entry: Option<Box<access_log::Entry>>,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        let _ = &guard; // captured, so it lives as long as the connection
        // The connect phase in a future of its own: what it leaves behind
        // (the servers tried, the connect's result) is not kept in the
        // future for the connection's life. (Moved-from or dropped locals
        // still take room in every later state; out of scope they do not.
        // This kept the task at 896 bytes rather than 1,024.)
        let Some((upstream, idx, active)) = connect_phase(&snap, pool, peer, &mut entry).await else { return };
        // Only the error's kind is kept: the result is held while the
        // relay runs, and an io::Error takes 8 bytes of the future for it.
        let out = match send_first(&snap.pools[pool], &client, peer, &upstream, Vec::new()).await.map_err(|e| e.kind())
        {
            Ok(()) => relay(&client, &upstream, &snap, pool, idx, Some((active, served)), None).await,
            Err(kind) => server_broke(kind),
        };
        let (pool, server) = (&snap.pools[pool], &snap.pools[pool].servers[idx]);
        conclude(&snap.conns, (client, upstream), peer, &pool.name, server.addr, &out, entry);
    }
}

/// As [`serve`], for a client whose first bytes were read already (a
/// routed listener's ClientHello): they go to the server, unchanged, before
/// anything else. False when no server of the pool could be connected.
#[allow(clippy::manual_async_fn)] // as `serve`
pub fn serve_prefixed<G: Send + 'static, S: Send + 'static>(
    client: TcpStream,
    peer: SocketAddr,
    snap: Arc<Snapshot>,
    pool: usize,
    (guard, served): (G, S),
    mut entry: Option<Box<access_log::Entry>>,
    prefix: Vec<u8>,
) -> impl Future<Output = bool> + Send + 'static {
    async move {
        let _ = &guard;
        let Some((upstream, idx, active)) = connect_phase(&snap, pool, peer, &mut entry).await else { return false };
        let server = &snap.pools[pool].servers[idx];
        let n = prefix.len() as u64;
        let sent = send_first(&snap.pools[pool], &client, peer, &upstream, prefix).await.map_err(|e| e.kind());
        let out = match sent {
            Ok(()) => {
                server.state.bytes_sent.fetch_add(n, Relaxed);
                let mut out = relay(&client, &upstream, &snap, pool, idx, Some((active, served)), None).await;
                out.to_server += n;
                out
            }
            // The server went before taking the hello: broken on its side.
            Err(kind) => server_broke(kind),
        };
        conclude(&snap.conns, (client, upstream), peer, &snap.pools[pool].name, server.addr, &out, entry);
        true
    }
}

/// Writes what the server gets before anything the client sends: the
/// pool's PROXY header (for `peer`, who reached us at `client`'s local
/// address), then `prefix` (bytes read from the client already), in one
/// write. Written at connect, before the copy could hand the connection
/// on to a new process, so a moved connection never sends it twice and a
/// retry's server gets its own. The header is not counted in the bytes
/// sent: those are the client's.
async fn send_first(
    pool: &Pool,
    client: &TcpStream,
    peer: SocketAddr,
    upstream: &TcpStream,
    mut prefix: Vec<u8>,
) -> std::io::Result<()> {
    let header = match pool.settings.send_proxy_protocol {
        // The address the client connected to, as nginx sends it: its
        // socket's own (a wildcard listener's socket knows which).
        Some(v) => Some(crate::proxy_send::encode(v, peer, client.local_addr()?)),
        None => None,
    };
    let data: &[u8] = match &header {
        Some(h) if prefix.is_empty() => h.as_bytes(),
        Some(h) => {
            prefix.splice(0..0, h.as_bytes().iter().copied());
            &prefix
        }
        None => &prefix,
    };
    if data.is_empty() {
        return Ok(());
    }
    // A socket just connected has room: one write, almost always whole.
    match upstream.try_write(data) {
        Ok(n) if n == data.len() => Ok(()),
        Ok(n) => Box::pin(copy::write_waiting(upstream, &data[n..])).await,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Box::pin(copy::write_waiting(upstream, data)).await,
        Err(e) => Err(e),
    }
}

/// A connection whose server went before taking its first bytes: broken
/// on the server's side.
fn server_broke(kind: std::io::ErrorKind) -> copy::Outcome {
    copy::Outcome {
        to_server: 0,
        to_client: 0,
        first_closed: None,
        end: copy::End::Error { side: copy::Side::Server, kind },
        client_done: false,
        server_done: false,
    }
}

/// Picks and connects a server of `pool` for `peer`, noting the servers
/// tried in `entry`; on failure `entry` is finished (no server, or every
/// connect failed) and None returned.
///
/// (A plain function returning an `async move` block, as [`serve`]: an
/// `async fn` kept its arguments twice, 24 bytes of every connection's
/// future.)
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn connect_phase<'a>(
    snap: &'a Snapshot,
    pool: usize,
    peer: SocketAddr,
    entry: &'a mut Option<Box<access_log::Entry>>,
) -> impl Future<Output = Option<(TcpStream, usize, ActiveConn)>> + Send + 'a {
    async move {
        let mut tried = Vec::new();
        let started = entry.as_ref().map(|_| Instant::now());
        let connected = connect_upstream(&snap.pools[pool], peer, &mut tried).await;
        if let Some(e) = entry.as_mut() {
            let servers = &snap.pools[pool].servers;
            let mut addrs: Vec<SocketAddr> = tried.iter().map(|&i| servers[i].addr).collect();
            addrs.extend(connected.as_ref().map(|c| servers[c.1].addr));
            e.connected(addrs, connected.as_ref().and(started).map(|t| t.elapsed()));
        }
        if connected.is_none()
            && let Some(e) = entry.take()
        {
            let end =
                if tried.is_empty() { access_log::End::NoServer } else { access_log::End::ConnectFailed(tried.len()) };
            e.finish(end, 0, 0);
        }
        connected
    }
}

/// Serves a connection moved here from the process this one took over
/// from: `moved` says where it goes and where it is. `server` is `None`
/// when the config running here no longer lists that server: its bytes
/// still flow, counted nowhere.
#[allow(clippy::manual_async_fn)] // as `serve`
pub fn resume<G: Send + 'static>(
    client: TcpStream,
    upstream: TcpStream,
    moved: conns::Moved,
    snap: Arc<Snapshot>,
    at: Option<(usize, usize)>,
    guard: G,
    entry: Option<Box<access_log::Entry>>,
) -> impl Future<Output = ()> + Send + 'static {
    // Its place among its server's close orders is taken now, while the
    // hand-over that brings it is on: the task may first run after it.
    let closing_place = at.map(|(p, i)| snap.pools[p].servers[i].state.closing.place());
    async move {
        let _ = &guard;
        let resume = copy::Resume {
            to_server: moved.to_server,
            to_client: moved.to_client,
            client_done: moved.client_done,
            server_done: moved.server_done,
            first_closed: match (moved.client_done || moved.server_done, moved.server_first) {
                (false, _) => None,
                (true, true) => Some(copy::Side::Server),
                (true, false) => Some(copy::Side::Client),
            },
            closing_place,
        };
        match at {
            Some((pool, idx)) => {
                let active = (!moved.server_done).then(|| ActiveConn::new(&snap.pools[pool].servers[idx].state));
                let out = relay(&client, &upstream, &snap, pool, idx, active, Some(&resume)).await;
                conclude(&snap.conns, (client, upstream), moved.peer, &moved.pool, moved.server, &out, entry);
            }
            None => {
                let (a, b) = (AtomicU64::new(0), AtomicU64::new(0));
                let policy = copy::Policy { conns: &snap.conns, idle: None, late_keepalive: None, closing: None };
                let out = copy::bidirectional(&client, &upstream, policy, (&a, &b), None::<()>, Some(&resume)).await;
                conclude(&snap.conns, (client, upstream), moved.peer, &moved.pool, moved.server, &out, entry);
            }
        }
    }
}

/// Copies both ways until the end (or until asked to move).
#[allow(clippy::manual_async_fn)] // on purpose: see `serve`
fn relay<'a, L: Send + 'a>(
    client: &'a TcpStream,
    upstream: &'a TcpStream,
    snap: &'a Snapshot,
    pool: usize,
    idx: usize,
    active: Option<L>,
    resume: Option<&'a copy::Resume>,
) -> impl Future<Output = copy::Outcome> + Send + 'a {
    let (p, s) = (&snap.pools[pool], &snap.pools[pool].servers[idx]);
    let totals = (&s.state.bytes_sent, &s.state.bytes_received);
    let policy = copy::Policy {
        conns: &snap.conns,
        idle: p.settings.idle_timeout.as_ref(),
        // A moved connection's socket has its options from before.
        late_keepalive: p.settings.server_keepalive.as_ref().filter(|k| resume.is_none() && !early(k)),
        closing: Some(&s.state.closing),
    };
    copy::bidirectional(client, upstream, policy, totals, active, resume)
}

/// A server keepalive too short to wait for the late wake: set at connect.
fn early(k: &Keepalive) -> bool {
    k.idle < conns::LATEST
}

/// After the copy: a connection asked to move is parked for the process
/// that took over; any other is closed as its end calls for, with its
/// access log line.
fn conclude(
    conns: &Conns,
    (client, upstream): (TcpStream, TcpStream),
    peer: SocketAddr,
    pool: &str,
    server: SocketAddr,
    out: &copy::Outcome,
    entry: Option<Box<access_log::Entry>>,
) {
    if out.end == copy::End::Moving {
        park(conns, (client, upstream), peer, pool, server, out, entry);
        return;
    }
    finish(&client, &upstream, out, entry, peer);
    debug!(
        %pool,
        client = %peer,
        server = %server,
        bytes_to_server = out.to_server,
        bytes_to_client = out.to_client,
        end = out.end.as_str(),
        "connection closed"
    );
}

/// The end of a connection: an abortive close where it broke, and its
/// access log line.
fn finish(
    client: &TcpStream,
    upstream: &TcpStream,
    out: &copy::Outcome,
    entry: Option<Box<access_log::Entry>>,
    peer: SocketAddr,
) {
    // A connection broken on one side (a reset, a peer gone) is broken
    // for the other too: it gets an abortive close (RST), not a FIN
    // that would make a truncated transfer look complete. What was read
    // before has been written to it; bytes the kernel still queues
    // toward it are dropped with the RST, which is what a reset means.
    // One cut because its server went down is broken for both, so
    // neither side takes what it had for a complete exchange.
    let reset: &[&TcpStream] = match out.end {
        copy::End::Error { side: copy::Side::Server, .. } => &[client],
        copy::End::Error { side: copy::Side::Client, .. } => &[upstream],
        copy::End::ServerDown => &[client, upstream],
        _ => &[],
    };
    for s in reset {
        let _ = socket2::SockRef::from(*s).set_linger(Some(std::time::Duration::ZERO));
    }
    if let Some(e) = entry {
        let end = match out.end {
            copy::End::Closed if out.first_closed == Some(copy::Side::Server) => access_log::End::ServerClosed,
            copy::End::Closed => access_log::End::ClientClosed,
            copy::End::IdleTimeout => access_log::End::IdleTimeout,
            copy::End::Error { side: copy::Side::Client, .. } => access_log::End::ClientReset,
            copy::End::Error { side: copy::Side::Server, .. } => access_log::End::ServerReset,
            copy::End::ServerDown => access_log::End::ServerDown,
            copy::End::Moving => {
                debug!(client = %peer, "moved connection could not be handed on: closed");
                access_log::End::Shutdown
            }
        };
        e.finish(end, out.to_client, out.to_server);
    }
}

/// Puts a stopped connection where the control socket sends it on; if
/// nothing takes it, it is closed (counted as cut by the drain).
fn park(
    conns: &Conns,
    (client, server): (TcpStream, TcpStream),
    peer: SocketAddr,
    pool: &str,
    server_addr: SocketAddr,
    out: &copy::Outcome,
    entry: Option<Box<access_log::Entry>>,
) {
    let listener = client.local_addr().unwrap_or(peer);
    let moved = conns::Moved {
        peer,
        listener,
        pool: pool.to_owned(),
        server: server_addr,
        to_server: out.to_server,
        to_client: out.to_client,
        client_done: out.client_done,
        server_done: out.server_done,
        server_first: out.first_closed == Some(copy::Side::Server),
        age_ms: entry.as_ref().map_or(0, |e| e.age().as_millis() as u64),
        logged: entry.is_some(),
        connect_us: entry.as_ref().and_then(|e| e.connect_time()).map(|d| d.as_micros() as u64),
        via: entry.as_ref().and_then(|e| e.via()),
    };
    match conns.park(conns::Parked { client, server, moved }) {
        Ok(()) => {
            if let Some(e) = entry {
                e.moved();
            }
        }
        Err(back) => {
            let back = *back;
            finish(&back.client, &back.server, out, entry, peer);
        }
    }
}

/// Picks and connects, trying further servers after a failed connect, up to
/// `retries` more and each at most once.
/// `tried` gets the servers that failed, in order.
async fn connect_upstream(
    pool: &Pool,
    peer: SocketAddr,
    tried: &mut Vec<usize>,
) -> Option<(TcpStream, usize, ActiveConn)> {
    let client = peer.ip();
    let max_attempts = match pool.settings.retries {
        Retries::Count(n) => n as usize + 1,
        Retries::All => pool.servers.len(),
    };
    loop {
        let Some(pick) = pool.pick(Instant::now(), client, tried) else {
            if tried.is_empty() {
                pool.state.no_server.fetch_add(1, Relaxed);
                debug!(pool = %pool.name, client = %peer, "no server to send the client to");
            } else {
                debug!(pool = %pool.name, client = %peer, attempts = tried.len(), "every server tried has failed");
            }
            return None;
        };
        // Counted here; the episode itself (start and end) is followed and
        // logged by the status watcher, from server state, traffic or not.
        if pick.fail_open {
            pool.state.fail_open_picks.fetch_add(1, Relaxed);
        }
        let server = &pool.servers[pick.idx];
        let active = ActiveConn::new(&server.state);
        match connect(server.addr, pool.settings.connect_timeout).await {
            Ok(stream) => {
                if let Some(k) = pool.settings.server_keepalive.as_ref().filter(|k| early(k)) {
                    let _ = crate::wire::net::set_keepalive(socket2::SockRef::from(&stream), Some(k));
                }
                if pool.connected(pick.idx, Instant::now()) == Some(Transition::Readmitted) {
                    server.state.touch();
                    pool.history.record(
                        "readmitted",
                        Some(&pool.name),
                        Some(&server.label()),
                        "a connect succeeded again",
                    );
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
                    server.state.touch();
                    let why = format!("{} failed connects, the last {}", pool.settings.max_fails, reason.as_str());
                    pool.history.record("ejected", Some(&pool.name), Some(&server.label()), why);
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
