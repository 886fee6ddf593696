//! Upgrading the binary without losing a client: the running process hands
//! its listening sockets, its state and then its open connections to a new
//! one over the control socket.
//!
//! Everything of the upgrade is in this folder: how a process begins
//! ([`begin`]: start, or take over from the process on the control
//! socket), the conversation (this file), the control socket and its
//! framing (`socket.rs`), and the servers' state that moves (`carry.rs`).
//! The byte path knows nothing of it: it stops where it holds no bytes
//! when its balancer's connections are asked to
//! ([`crate::wire::conns::Conns::stop_into`]), and hands over its two sockets.
//!
//! The conversation, new process (N) and old one (O):
//!
//! 1. N checks the socket file (owner, mode) and connects; says `hello`.
//! 2. O answers with `welcome` (its pid, its config generation), each
//!    listening socket (`listener`, the descriptor attached), the admin
//!    socket (`admin`), every server's state (`server`), then `state_end`.
//! 3. N prepares its own config exactly as a start does (load was done
//!    before; resolve, bind what is new, build, restore the state), starts
//!    accepting on every socket, and only then says `go`. Anything wrong
//!    before that: N exits 1 and closes the connection; O, seeing it close
//!    without `go`, goes on untouched.
//! 4. O stops accepting (the sockets stay open in N, so a client in the
//!    backlog is accepted by N), says `going`, and asks every connection
//!    to stop where it holds no bytes ([`crate::wire::conns`]). Each one that does
//!    goes to N as `conn` with its two sockets; N carries on copying it.
//!    O reports what it still holds (`draining`) every quarter second.
//! 5. When O holds nothing, or its `shutdown_timeout` is over (what is
//!    left is cut and counted), it says `done` and exits 0.
//!
//! Only one old process drains at a time: when N is itself upgraded while
//! O still drains into it, N closes its link to O, and O ends at once.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::config::ControlSocket;
use crate::control::lifecycle::{self, Inherited, Lb, Loaded, Running, StartError};
use crate::traffic::listener;
use crate::wire::conns::Moved;

pub mod carry;
mod socket;

use socket::{Conn, ConnectError, ControlListener};

/// How long each side waits for the other's next message while the state
/// is handed over (the new process's own preparation is not bounded by
/// this: O waits [`PREPARE_MAX`] for its `go`).
const STEP: Duration = Duration::from_secs(10);
/// How long O waits for N to prepare (resolve, bind, first probes).
const PREPARE_MAX: Duration = Duration::from_secs(120);
/// How often a draining process says what it still holds.
const REPORT_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
enum Msg {
    Hello { pid: u32, version: String },
    Welcome { pid: u32, generation: u64 },
    Listener(listener::Carried),
    Admin { listen: SocketAddr },
    Server(carry::Server),
    StateEnd,
    Go,
    Going,
    Conn(Moved),
    Draining { open: u64 },
    Done { moved: u64, cut: u64 },
}

/// Why an upgrade did not happen.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("control socket: {0}")]
    Connect(#[from] ConnectError),
    #[error("the running process: {0}")]
    Talk(String),
    #[error("{0}")]
    Start(#[from] StartError),
}

fn talk(e: impl std::fmt::Display) -> UpgradeError {
    UpgradeError::Talk(e.to_string())
}

/// The next message within `wait`; `None` when the other end closed.
async fn recv_or_end(conn: &Conn, wait: Duration) -> Result<Option<(Msg, Vec<OwnedFd>)>, UpgradeError> {
    match tokio::time::timeout(wait, conn.recv::<Msg>()).await {
        Ok(r) => r.map_err(talk),
        Err(_) => Err(talk(format!("no answer within {}s", wait.as_secs()))),
    }
}

/// The next message within `wait`; the other end closing is an error.
async fn recv(conn: &Conn, wait: Duration) -> Result<(Msg, Vec<OwnedFd>), UpgradeError> {
    recv_or_end(conn, wait).await?.ok_or_else(|| talk("closed the control connection"))
}

/// How a process begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    /// Binds everything itself.
    Start,
    /// Takes the listeners, state and connections over from the process
    /// on the control socket (`ucp-lb --upgrade`).
    Upgrade,
}

/// This process's control socket, once it has begun: where a successor
/// takes over from it.
pub struct Control(Option<ControlListener>);

impl Control {
    /// Answers upgrades until one has taken over and this process holds
    /// nothing more (the old side of the conversation); never, without a control socket.
    pub async fn handed_over(&self, lb: Arc<Lb>) {
        match &self.0 {
            Some(c) => serve(c, lb).await,
            None => std::future::pending().await,
        }
    }

    /// Removes the socket file (at the end of an ordinary stop).
    pub fn remove(&self) {
        if let Some(c) = &self.0 {
            c.remove();
        }
    }
}

/// Begins this process: an ordinary start, or with [`Begin::Upgrade`] and
/// a live process on the control socket, a take-over from it (its
/// connections then keep coming in the background). Nobody there (a first
/// start, a start after a reboot): an ordinary start, so `--upgrade` can
/// stay in a unit or a container's command. (Were a process holding the
/// ports without a control socket, the bind would fail the start.)
pub async fn begin<A>(loaded: Loaded, begin: Begin, serve_admin: A) -> Result<(Running, Control), StartError>
where
    A: FnOnce(tokio::net::TcpListener, Arc<Lb>) -> JoinHandle<()>,
{
    let cfg = loaded.config.admin.control_socket.clone();
    let from = match (begin, cfg.path()) {
        (Begin::Start, _) => None,
        (Begin::Upgrade, None) => {
            return Err(StartError::Upgrade("admin.control_socket is \"\": nothing to take over from".into()));
        }
        (Begin::Upgrade, Some(path)) => match socket::occupant(path) {
            Ok(socket::Occupant::Nothing | socket::Occupant::Stale) => {
                info!(path = %path.display(), "--upgrade: no running ucp-lb on the control socket: starting");
                None
            }
            _ => Some(path),
        },
    };
    let Some(path) = from else {
        let control = control_socket(&cfg, false)?;
        return Ok((lifecycle::start(loaded, serve_admin).await?, Control(control)));
    };
    let (mut running, link) = match take_over(path, loaded, serve_admin).await {
        Ok(r) => r,
        Err(UpgradeError::Start(e)) => return Err(e),
        Err(e) => return Err(StartError::Upgrade(e.to_string())),
    };
    // This process's own control socket, in place of the old one's.
    let control = control_socket(&cfg, true).unwrap_or_else(|e| {
        error!("{e}: this process cannot be upgraded in place");
        None
    });
    running.adopt(tokio::spawn(receive(link, running.lb.clone())));
    Ok((running, Control(control)))
}

/// Makes this process's control socket as `[admin] control_socket` says.
/// `replace`: a process taking over puts its own in place of the old one's.
/// A default path that cannot be made is a warning (the process runs, but
/// cannot be upgraded in place); a configured one is an error.
fn control_socket(cfg: &ControlSocket, replace: bool) -> Result<Option<ControlListener>, StartError> {
    let Some(path) = cfg.path() else { return Ok(None) };
    match ControlListener::bind(path, replace) {
        Ok(l) => {
            info!(path = %path.display(), "control socket up (ucp-lb --upgrade takes over through it)");
            Ok(Some(l))
        }
        Err(e) if matches!(cfg, ControlSocket::Default(_)) => {
            warn!(
                path = %path.display(),
                error = %e,
                "no control socket: this process cannot be upgraded in place (set [admin] control_socket or UCP_LB_CONTROL_SOCKET)"
            );
            Ok(None)
        }
        Err(error) => Err(StartError::Control { path: path.display().to_string(), error }),
    }
}

/// The old side: answers upgrades on `control` until one takes over, then
/// moves the open connections to it and returns once none is left (or its
/// `shutdown_timeout` is over). An upgrade that fails leaves this process
/// as it was.
async fn serve(control: &ControlListener, lb: Arc<Lb>) {
    loop {
        let conn = match control.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "control socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match offer(&conn, &lb).await {
            Ok(Some(successor)) => {
                drain(conn, &lb, successor).await;
                return;
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "upgrade abandoned: this process goes on as it was"),
        }
    }
}

/// Steps 2 to 4 on the old side: returns the successor's pid once it has
/// said `go` and this process has stopped accepting; `None` for a
/// connection closed without a word (`--upgrade` and a start looking
/// whether anyone listens here).
async fn offer(conn: &Conn, lb: &Lb) -> Result<Option<u32>, UpgradeError> {
    let (pid, version) = match recv_or_end(conn, STEP).await? {
        None => return Ok(None),
        Some((Msg::Hello { pid, version }, _)) => (pid, version),
        Some((other, _)) => return Err(talk(format!("expected hello, got {other:?}"))),
    };
    info!(successor = pid, %version, "upgrade: a new process asks to take over");
    let generation = lb.shared.snapshot.load().generation;
    conn.send(&Msg::Welcome { pid: std::process::id(), generation }, &[]).await.map_err(talk)?;
    for (carried, fd) in lb.listeners.handover() {
        conn.send(&Msg::Listener(carried), &[fd.as_fd()]).await.map_err(talk)?;
    }
    let admin = lb.admin_fd.lock().unwrap_or_else(|p| p.into_inner()).as_ref().and_then(|f| f.try_clone().ok());
    if let Some(fd) = admin {
        conn.send(&Msg::Admin { listen: lb.admin_listen }, &[fd.as_fd()]).await.map_err(talk)?;
    }
    for s in carry::export(&lb.shared.snapshot.load()) {
        conn.send(&Msg::Server(s), &[]).await.map_err(talk)?;
    }
    conn.send(&Msg::StateEnd, &[]).await.map_err(talk)?;
    match recv(conn, PREPARE_MAX).await? {
        (Msg::Go, _) => {}
        (other, _) => return Err(talk(format!("expected go, got {other:?}"))),
    }
    // The successor accepts on every socket now: stop here. From this point
    // on there is no going back, whatever the link does.
    lb.stop_accepting();
    lb.shutdown.handed_over.cancel();
    if let Err(e) = conn.send(&Msg::Going, &[]).await {
        warn!(successor = pid, error = %e, "upgrade: could not confirm to the new process");
    }
    lb.shared.own.history.record("handed over", None, None, format!("to pid {pid}"));
    info!(successor = pid, "upgrade: the new process accepts; moving the open connections to it");
    Ok(Some(pid))
}

/// Step 4 and 5 on the old side.
async fn drain(conn: Conn, lb: &Lb, successor: u32) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    lb.shared.own.conns.stop_into(tx);
    let tracker = &lb.shutdown.tracker;
    tracker.close();
    let grace = lb.shared.snapshot.load().config.defaults.shutdown_timeout;
    let deadline = tokio::time::sleep(grace);
    let mut deadline = std::pin::pin!(deadline);
    let mut report = tokio::time::interval(REPORT_EVERY);
    // The successor says nothing more after `go`: its end closing means it
    // was itself upgraded (or died), and this drain ends at once.
    let mut gone = std::pin::pin!(conn.recv::<Msg>());
    let mut previous = lb.process.previous_draining.subscribe();
    let (mut moved, mut lost) = (0u64, 0u64);
    loop {
        // Done when no connection is left here, every one that stopped has
        // been sent, and the process before this one (if it was still
        // draining into this one) has sent its last.
        let still_coming = *previous.borrow();
        if tracker.is_empty() && rx.is_empty() && !still_coming {
            break;
        }
        tokio::select! {
            biased;
            p = rx.recv() => {
                let Some(p) = p else { break };
                match conn.send(&Msg::Conn(p.moved), &[p.client.as_fd(), p.server.as_fd()]).await {
                    Ok(()) => moved += 1,
                    Err(e) => {
                        lost += 1;
                        warn!(error = %e, "upgrade: a connection could not be handed over: closed");
                    }
                }
            }
            _ = tracker.wait(), if !tracker.is_empty() => {}
            _ = previous.wait_for(|d| !*d), if still_coming => {}
            _ = report.tick() => {
                let _ = conn.send(&Msg::Draining { open: tracker.len() as u64 }, &[]).await;
            }
            _ = &mut gone => {
                warn!(
                    open = tracker.len(),
                    "upgrade: the process that took over has itself been upgraded (or has gone): ending this drain now"
                );
                break;
            }
            _ = &mut deadline => {
                warn!(open = tracker.len(), grace_s = grace.as_secs_f64(), "upgrade: shutdown_timeout is over: cutting the connections that did not move");
                break;
            }
        }
    }
    let cut = tracker.len() as u64 + lost;
    let _ = conn.send(&Msg::Done { moved, cut }, &[]).await;
    info!(successor, moved, cut, "upgrade: done here, exiting");
}

/// The new side, steps 1 to 3: takes the sockets and state over from the
/// process at `path`, starts on `loaded` with them, and tells the old one
/// to go. Returns the running load balancer and the link on which the
/// old process sends its connections.
async fn take_over<A>(path: &Path, loaded: Loaded, serve_admin: A) -> Result<(Running, Conn), UpgradeError>
where
    A: FnOnce(tokio::net::TcpListener, Arc<Lb>) -> JoinHandle<()>,
{
    let conn = Conn::connect(path).await?;
    let hello = Msg::Hello { pid: std::process::id(), version: crate::build_info::BUILD.version.to_owned() };
    conn.send(&hello, &[]).await.map_err(talk)?;
    let mut inherited = Inherited::default();
    let mut servers = Vec::new();
    loop {
        match recv(&conn, STEP).await? {
            (Msg::Welcome { pid, generation }, _) => {
                inherited.from_pid = pid;
                inherited.generation = generation;
            }
            (Msg::Listener(carried), mut fds) if fds.len() == 1 => {
                inherited.listeners.push(listener::Inherited { carried, fd: fds.remove(0) })
            }
            (Msg::Admin { listen }, mut fds) if fds.len() == 1 => inherited.admin = Some((listen, fds.remove(0))),
            (Msg::Server(s), _) => servers.push(s),
            (Msg::StateEnd, _) => break,
            (other, fds) => return Err(talk(format!("unexpected {other:?} with {} descriptors", fds.len()))),
        }
    }
    let from = inherited.from_pid;
    info!(
        from,
        listeners = inherited.listeners.len(),
        servers = servers.len(),
        "upgrade: sockets and state received; preparing the config"
    );
    inherited.restore = Some(Box::new(move |snap| {
        let found = carry::import(snap, &servers);
        info!(servers = found, of = servers.len(), "state of the servers taken over");
    }));
    let running = lifecycle::start_with(loaded, inherited, serve_admin).await?;
    running.lb.process.previous_draining.send_replace(true);
    // Accepting already: from here a failure of the link does not stop
    // this process (the old one, if it is still there and did not hear
    // `go`, goes on accepting on the same sockets too, and says so).
    if let Err(e) = conn.send(&Msg::Go, &[]).await {
        warn!(from, error = %e, "upgrade: could not tell the old process to stop accepting");
    }
    match recv(&conn, STEP).await {
        Ok((Msg::Going, _)) => info!(from, "upgrade: accepting; the old process has stopped accepting"),
        Ok((other, _)) => warn!(from, "upgrade: expected going, got {other:?}"),
        Err(e) => warn!(from, error = %e, "upgrade: the old process did not confirm that it stopped accepting"),
    }
    Ok((running, conn))
}

/// The new side, step 4 and 5: serves each connection the old process
/// moves here, until it is done, or until this process hands over in turn
/// (then the old one is told to end at once by the link closing).
async fn receive(conn: Conn, lb: Arc<Lb>) {
    let from = lb.process.took_over_from.unwrap_or(0);
    let handed_over = lb.shutdown.handed_over.clone();
    let mut told = false;
    loop {
        let next = tokio::select! {
            // Only one old process drains at a time: the one before this
            // is told to end now (its side of the link reads the end), and
            // what it has sent already is still taken, then moved on.
            _ = handed_over.cancelled(), if !told => {
                told = true;
                info!(from, "this process is handing over in turn: the process before it ends its drain now");
                conn.close_write();
                continue;
            }
            m = conn.recv::<Msg>() => m,
        };
        match next {
            Ok(Some((Msg::Conn(moved), fds))) => {
                let Ok([client, server]) = <[OwnedFd; 2]>::try_from(fds) else {
                    warn!(from, "upgrade: a moved connection came without its two sockets");
                    continue;
                };
                let streams = (stream(client), stream(server));
                match streams {
                    (Ok(c), Ok(s)) => {
                        lb.process.moved_in.fetch_add(1, Relaxed);
                        lb.listeners.adopt(c, s, moved, &lb.shared, &lb.shutdown);
                    }
                    _ => warn!(from, "upgrade: a moved connection's sockets could not be used: closed"),
                }
            }
            Ok(Some((Msg::Draining { open }, _))) => lb.process.previous_holds.store(open, Relaxed),
            Ok(Some((Msg::Done { moved, cut }, _))) => {
                lb.process.previous_cut.store(cut, Relaxed);
                info!(from, moved, cut, "upgrade complete: the old process has moved its connections here and exits");
                break;
            }
            Ok(Some((other, _))) => warn!(from, "upgrade: unexpected {other:?}"),
            Ok(None) => {
                info!(from, "upgrade: the old process has gone");
                break;
            }
            Err(e) => {
                error!(from, error = %e, "upgrade: the link to the old process failed");
                break;
            }
        }
    }
    lb.process.previous_holds.store(0, Relaxed);
    lb.process.previous_draining.send_replace(false);
}

fn stream(fd: OwnedFd) -> std::io::Result<tokio::net::TcpStream> {
    let s = std::net::TcpStream::from(fd);
    s.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(s)
}
