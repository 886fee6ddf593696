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
//! The conversation, new process (N) and old one (O). Every wait of it is
//! bounded: each message within [`STEP`] (N's preparation included: it
//! says `preparing` every [`BEAT`]), and O's drain by its
//! `shutdown_timeout`.
//!
//! 1. N checks the socket file (owner, mode), connects, checks who listens
//!    there (`SO_PEERCRED`), and says `hello`.
//! 2. O answers with `welcome` (its pid, its config generation), each
//!    listening socket (`listener`, the descriptor attached), the admin
//!    socket (`admin`), every server's state (`server`, a close order in
//!    progress with it), its event history (`event`), traffic samples
//!    (`samples`) and reload counters (`reloads`), then `state_end`.
//! 3. N prepares its own config exactly as a start does (resolve, bind
//!    what is new, build, restore the state), saying `preparing` every
//!    [`BEAT`], starts accepting on every socket, and only then says `go`.
//!    Anything wrong before that: N exits 1 and closes the connection; O,
//!    seeing it close (or hearing nothing for a [`STEP`]), goes on untouched.
//! 4. O stops accepting but keeps its sockets (a client in the backlog is
//!    accepted by N), says `going`, and asks every connection to stop
//!    where it holds no bytes ([`crate::wire::conns`]). Each one that does
//!    goes to N as `conn` with its two sockets, at most [`WINDOW`] of them
//!    not yet acknowledged; N carries each on and says `took` (how many in
//!    all), and `alive` every [`BEAT_DRAIN`]. O reports what it still holds
//!    (`draining`) every quarter second.
//! 5. When O holds nothing and N has acknowledged everything, or its
//!    `shutdown_timeout` is over (what is left is cut and counted), O says
//!    `done`; N answers `confirmed`: the whole hand-over is confirmed, O
//!    closes its sockets and exits 0.
//!
//! Going back: until `confirmed`, should the link close (N killed or
//! crashed) or N fall silent for [`STALL`] (stopped, hung), O takes
//! everything back at once: it accepts on its sockets again, withdraws the
//! stop request (connections not yet sent go on copying here, those
//! parked meanwhile are served here again), says `abandon` to N and puts
//! its own control socket back in place. What had moved to N stays there:
//! lost if N died; if N was only stopped, it reads `abandon` when it runs
//! again, stops accepting, finishes those connections and exits. The
//! connections lost when N dies are the ones it had acknowledged plus at
//! most [`WINDOW`] in flight. N, seeing the link close without `abandon`
//! (O gone), carries on alone.
//!
//! Chained upgrades: when N is itself upgraded while O still drains into
//! it, nothing is cut: N goes on taking O's connections and passes them
//! on to its own successor (they stop at once there), and ends only once
//! O is done. Each process in such a chain ends within its own
//! `shutdown_timeout`.
//!
//! A peer of an older release (no `protocol` in its `hello` or `welcome`)
//! is spoken to as before: no beats, no acknowledgements, no history.

use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::config::ControlSocket;
use crate::control::lifecycle::{self, Lb, Loaded, Running, StartError};
use crate::events::history;
use crate::traffic::listener;
use crate::view::ReloadStatus;
use crate::wire::conns::Moved;

pub mod carry;
mod new;
mod old;
mod socket;

use socket::{Conn, ConnectError, ControlListener};

/// How long each side waits for the other's next message, and for one of
/// its own to go out.
const STEP: Duration = Duration::from_secs(10);
/// How often N says `preparing` while it prepares.
const BEAT: Duration = Duration::from_secs(1);
/// How often N says `alive` while O drains into it.
const BEAT_DRAIN: Duration = Duration::from_millis(250);
/// How long O waits without a word from N, once N has said `go`, before it
/// goes back (N stopped or hung).
const STALL: Duration = Duration::from_secs(2);
/// Connections sent to N and not yet acknowledged, at most: lost with N
/// should it die, beside those it had acknowledged.
pub const WINDOW: u64 = 8;
/// How often a draining process says what it still holds.
const REPORT_EVERY: Duration = Duration::from_millis(250);
/// This release's conversation (0: a release before acknowledgements; 2:
/// the swarm's node list moves too).
const PROTOCOL: u32 = 2;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
enum Msg {
    Hello {
        pid: u32,
        version: String,
        #[serde(default)]
        protocol: u32,
    },
    Welcome {
        pid: u32,
        generation: u64,
        #[serde(default)]
        protocol: u32,
    },
    Listener(listener::Carried),
    Admin {
        listen: SocketAddr,
    },
    Server(carry::Server),
    Event(history::Carried),
    Samples {
        pool: String,
        samples: Vec<history::Sample>,
    },
    Reloads(ReloadStatus),
    /// The swarm's node list in force and how its refreshes went.
    Cluster {
        nodes: Option<Vec<crate::cluster::Node>>,
        status: crate::cluster::Status,
    },
    StateEnd,
    Preparing,
    Go,
    Going,
    Conn(Moved),
    Took {
        n: u64,
    },
    Alive,
    Draining {
        open: u64,
    },
    Done {
        moved: u64,
        cut: u64,
    },
    Confirmed,
    Abandon {
        reason: String,
    },
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
    match crate::timer::timeout(wait, conn.recv::<Msg>()).await {
        Ok(r) => r.map_err(talk),
        Err(_) => Err(talk(format!("no answer within {}s", wait.as_secs()))),
    }
}

/// The next message within `wait`; the other end closing is an error.
async fn recv(conn: &Conn, wait: Duration) -> Result<(Msg, Vec<OwnedFd>), UpgradeError> {
    recv_or_end(conn, wait).await?.ok_or_else(|| talk("closed the control connection"))
}

/// Sends `msg` within [`STEP`] (a peer that stops reading cannot hold
/// this side).
async fn send(conn: &Conn, msg: &Msg, fds: &[BorrowedFd<'_>]) -> Result<(), UpgradeError> {
    match crate::timer::timeout(STEP, conn.send(msg, fds)).await {
        Ok(r) => r.map_err(talk),
        Err(_) => Err(talk(format!("could not send within {}s (the other end does not read)", STEP.as_secs()))),
    }
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
/// takes over from it. (Replaced when this process goes back after a
/// hand-over that broke off: the successor had put its own in place.)
pub struct Control {
    listener: Mutex<Option<Arc<ControlListener>>>,
    cfg: ControlSocket,
}

impl Control {
    fn new(listener: Option<ControlListener>, cfg: ControlSocket) -> Control {
        Control { listener: Mutex::new(listener.map(Arc::new)), cfg }
    }

    fn current(&self) -> Option<Arc<ControlListener>> {
        self.listener.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts this process's control socket back in place (after going back).
    fn replace(&self) {
        let Some(path) = self.cfg.path() else { return };
        match ControlListener::bind(path, true) {
            Ok(l) => {
                info!(path = %path.display(), "control socket back in place: this process can be upgraded again");
                *self.listener.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(l));
            }
            Err(e) => error!(path = %path.display(), error = %e, "cannot put the control socket back in place"),
        }
    }

    /// Answers upgrades until one has taken over and this process holds
    /// nothing more (the old side of the conversation); never, without a
    /// control socket. Also returns, once it has finished what it holds,
    /// when this process stands down (the process it took over from went
    /// back to serving).
    pub async fn handed_over(&self, lb: Arc<Lb>) {
        tokio::select! {
            _ = old::serve(self, lb.clone()) => {}
            _ = new::stand_down(&lb) => {}
        }
    }

    /// Removes the socket file (at the end of an ordinary stop).
    pub fn remove(&self) {
        if let Some(c) = self.current() {
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
        // No control socket configured: there is nothing this process could
        // take over from, so it starts as an ordinary start does (were
        // another holding the ports, the bind would fail the start).
        (Begin::Upgrade, None) => {
            warn!("--upgrade with admin.control_socket = \"\": no process to take over from: starting");
            None
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
        // Made before the start so that nothing else takes the path; a
        // start that fails (ports taken, a name that stops resolving) or
        // is stopped by a signal before it is complete (this future
        // dropped) removes it again, or the next `--upgrade` would find a
        // socket nobody listens on.
        let control = Unplaced(control_socket(&cfg, false)?);
        let running = lifecycle::start(loaded, serve_admin).await?;
        return Ok((running, Control::new(control.placed(), cfg)));
    };
    let taken = match new::take_over(path, loaded, serve_admin).await {
        Ok(r) => r,
        Err(UpgradeError::Start(e)) => return Err(e),
        Err(e) => return Err(StartError::Upgrade(e.to_string())),
    };
    let new::Taken { mut running, link, protocol, abandoned } = taken;
    if abandoned {
        // The old process went back before this one was told to go on:
        // this one stands down (its control socket stays the old one's).
        running.lb.process.previous_draining.send_replace(false);
        running.lb.process.stand_down.cancel();
        return Ok((running, Control::new(None, cfg)));
    }
    // This process's own control socket, in place of the old one's.
    let control = control_socket(&cfg, true).unwrap_or_else(|e| {
        error!("{e}: this process cannot be upgraded in place");
        None
    });
    running.adopt(tokio::spawn(new::receive(link, running.lb.clone(), protocol)));
    Ok((running, Control::new(control, cfg)))
}

/// A control socket made for a start that is not complete yet: dropped
/// before [`Unplaced::placed`] (the start failed, or was abandoned), its
/// file is removed.
struct Unplaced(Option<ControlListener>);

impl Unplaced {
    /// The start is complete: the socket stays.
    fn placed(mut self) -> Option<ControlListener> {
        self.0.take()
    }
}

impl Drop for Unplaced {
    fn drop(&mut self) {
        if let Some(l) = self.0.take() {
            l.remove();
        }
    }
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
