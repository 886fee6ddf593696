//! The new side of the conversation (see `mod.rs`): taking the sockets and
//! the state over, receiving the connections the old process moves, and
//! standing down should the old process go back.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::socket::Conn;
use super::{BEAT, BEAT_DRAIN, Msg, PROTOCOL, STEP, UpgradeError, carry, recv, send, talk};
use crate::control::lifecycle::{self, Inherited, Lb, Loaded, Running};
use crate::traffic::listener;

/// What a take-over gives: the running balancer, the link on which the old
/// process sends its connections, the conversation it speaks, and whether
/// it went back before this one was told to go on.
pub(super) struct Taken {
    pub running: Running,
    pub link: Arc<Conn>,
    pub protocol: u32,
    pub abandoned: bool,
}

/// What the old process carries besides sockets and servers.
#[derive(Default)]
struct Memory {
    events: Vec<crate::events::history::Carried>,
    samples: Vec<(String, Vec<crate::events::history::Sample>)>,
    reloads: Option<crate::view::ReloadStatus>,
}

/// The new side, steps 1 to 3: takes the sockets and state over from the
/// process at `path`, starts on `loaded` with them, and tells the old one
/// to go.
pub(super) async fn take_over<A>(path: &Path, loaded: Loaded, serve_admin: A) -> Result<Taken, UpgradeError>
where
    A: FnOnce(tokio::net::TcpListener, Arc<Lb>) -> JoinHandle<()>,
{
    let conn = Arc::new(Conn::connect(path).await?);
    let hello = Msg::Hello {
        pid: std::process::id(),
        version: crate::build_info::BUILD.version.to_owned(),
        protocol: PROTOCOL,
    };
    send(&conn, &hello, &[]).await?;
    let (mut inherited, mut servers, mut memory, mut protocol) =
        (Inherited::default(), Vec::new(), Memory::default(), 0);
    // The first answer may wait behind another upgrade the old process is
    // hearing out (one step at most, then it is dropped): two steps.
    let mut wait = STEP * 2;
    loop {
        match recv(&conn, wait).await? {
            (Msg::Welcome { pid, generation, protocol: p }, _) => {
                inherited.from_pid = pid;
                inherited.generation = generation;
                protocol = p;
            }
            (Msg::Listener(carried), mut fds) if fds.len() == 1 => {
                inherited.listeners.push(listener::Inherited { carried, fd: fds.remove(0) })
            }
            (Msg::Admin { listen }, mut fds) if fds.len() == 1 => inherited.admin = Some((listen, fds.remove(0))),
            (Msg::Server(s), _) => servers.push(s),
            (Msg::Event(e), _) => memory.events.push(e),
            (Msg::Samples { pool, samples }, _) => memory.samples.push((pool, samples)),
            (Msg::Reloads(r), _) => memory.reloads = Some(r),
            (Msg::Cluster { nodes, status }, _) => inherited.cluster = Some((nodes, status)),
            (Msg::StateEnd, _) => break,
            (other, fds) => return Err(talk(format!("unexpected {other:?} with {} descriptors", fds.len()))),
        }
        wait = STEP;
    }
    let from = inherited.from_pid;
    info!(
        from,
        peer_pid = ?conn.peer_pid(),
        listeners = inherited.listeners.len(),
        servers = servers.len(),
        events = memory.events.len(),
        "upgrade: sockets and state received; preparing the config"
    );
    inherited.restore = Some(Box::new(move |snap| {
        let found = carry::import(snap, &servers);
        info!(servers = found, of = servers.len(), "state of the servers taken over");
    }));
    // The preparation says `preparing` every beat: the old process hears
    // out a silent one for one step only.
    // (A task of its own, stopped between two beats: a beat is never cut
    // in the middle.)
    let stop = tokio_util::sync::CancellationToken::new();
    let beats = (protocol >= 1).then(|| {
        let (conn, stop) = (conn.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = crate::timer::sleep(BEAT) => {}
                }
                if send(&conn, &Msg::Preparing, &[]).await.is_err() {
                    return;
                }
            }
        })
    });
    let started = lifecycle::start_with(loaded, inherited, serve_admin).await;
    stop.cancel();
    if let Some(b) = beats {
        let _ = b.await;
    }
    let running = started?;
    remember(&running.lb, memory, from);
    running.lb.process.previous_draining.send_replace(true);
    // Accepting already: from here a failure of the link does not stop
    // this process unless the old one says it went back.
    if let Err(e) = send(&conn, &Msg::Go, &[]).await {
        warn!(from, error = %e, "upgrade: could not tell the old process to stop accepting");
    }
    let mut abandoned = false;
    loop {
        match recv(&conn, STEP).await {
            Ok((Msg::Going, _)) => info!(from, "upgrade: accepting; the old process has stopped accepting"),
            // Beats or reports sent meanwhile are not news.
            Ok((Msg::Draining { .. }, _)) => continue,
            Ok((Msg::Abandon { reason }, _)) => {
                error!(from, %reason, "upgrade: the old process went back to serving: this process stands down");
                abandoned = true;
            }
            Ok((other, _)) => warn!(from, "upgrade: expected going, got {other:?}"),
            Err(e) => warn!(from, error = %e, "upgrade: the old process did not confirm that it stopped accepting"),
        }
        break;
    }
    Ok(Taken { running, link: conn, protocol, abandoned })
}

/// Puts what the old process remembered into this one's memory, ahead of
/// its own.
fn remember(lb: &Lb, memory: Memory, from: u32) {
    let history = &lb.shared.own.history;
    history.import_events(memory.events);
    for (pool, samples) in memory.samples {
        history.import_samples(&pool, samples);
    }
    if let Some(r) = memory.reloads {
        lb.carry_reloads(r);
    }
    history.record("took over", None, None, format!("from pid {from}"));
}

/// Marks every server's close orders as covering the connections that move
/// in (`on`), or not any more.
fn inherit(lb: &Lb, on: bool) {
    for pool in &lb.shared.snapshot.load().pools {
        for s in &pool.servers {
            s.state.closing.inherit(on);
        }
    }
}

/// The new side, steps 4 and 5: serves each connection the old process
/// moves here, acknowledging each, until it is done; if this process hands
/// over in turn meanwhile, what still comes is passed on to the next one.
pub(super) async fn receive(conn: Arc<Conn>, lb: Arc<Lb>, protocol: u32) {
    let from = lb.process.took_over_from.unwrap_or(0);
    let acks = protocol >= 1;
    inherit(&lb, true);
    let alive = acks.then(|| {
        let conn = conn.clone();
        tokio::spawn(async move {
            let mut beat = crate::timer::interval(BEAT_DRAIN);
            loop {
                beat.tick().await;
                if send(&conn, &Msg::Alive, &[]).await.is_err() {
                    return;
                }
            }
        })
    });
    let (mut heard, reading) = reader(conn.clone(), acks);
    let mut silent = false;
    loop {
        // The old process reports every quarter second: silent for a step,
        // it is stopped or hung, and this process no longer waits for it
        // (to hand over in turn, say), while still taking what it sends.
        let heard_or_silent = tokio::select! {
            biased;
            // A stop signal here, before the hand-over is confirmed: this
            // process will not stay, so it must not be the one left
            // serving. The link is let go unconfirmed, and the old process
            // goes back to accepting with what it still holds; what moved
            // here finishes in this process's own shutdown.
            _ = lb.shutdown.stopping.cancelled() => {
                warn!(from, "upgrade: this process is stopping: breaking off the take-over, so the old process goes back to serving");
                break;
            }
            r = crate::timer::timeout(STEP, heard.recv()) => r,
        };
        let next = match heard_or_silent {
            Ok(Some(m)) => m,
            Ok(None) => Ok(None),
            Err(_) => {
                if !silent {
                    warn!(
                        from,
                        "upgrade: the old process has said nothing for {}s: no longer waiting for it",
                        STEP.as_secs()
                    );
                    silent = true;
                    lb.process.previous_draining.send_replace(false);
                }
                continue;
            }
        };
        if std::mem::take(&mut silent) {
            lb.process.previous_draining.send_replace(true);
        }
        match next {
            Ok(Some((Msg::Conn(moved), fds))) => adopt(&lb, moved, fds, from),
            Ok(Some((Msg::Draining { open }, _))) => lb.process.previous_holds.store(open, Relaxed),
            Ok(Some((Msg::Done { moved, cut }, _))) => {
                lb.process.previous_cut.store(cut, Relaxed);
                if acks && let Err(e) = send(&conn, &Msg::Confirmed, &[]).await {
                    warn!(from, error = %e, "upgrade: could not confirm the hand-over");
                }
                info!(from, moved, cut, "upgrade complete: the old process has moved its connections here and exits");
                break;
            }
            Ok(Some((Msg::Abandon { reason }, _))) => {
                error!(from, %reason, "upgrade: the old process went back to serving: this process stands down");
                if lb.process.handing_over_to.load(Relaxed) == 0 {
                    lb.process.stand_down.cancel();
                }
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
    if let Some(a) = alive {
        a.abort();
    }
    reading.abort();
    inherit(&lb, false);
    lb.process.previous_holds.store(0, Relaxed);
    lb.process.previous_draining.send_replace(false);
}

/// What the old process says, read by a task of its own into a channel
/// (which waits can then bound without cutting a message in two); the last
/// item is the end of the link or its error.
type Heard = std::io::Result<Option<(Msg, Vec<OwnedFd>)>>;

/// With `acks`, each moved connection is acknowledged as soon as it is
/// read: its sockets are this process's from then on (the old process has
/// let go of them), and one hop less keeps the old one's window moving.
fn reader(conn: Arc<Conn>, acks: bool) -> (tokio::sync::mpsc::Receiver<Heard>, JoinHandle<()>) {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let task = tokio::spawn(async move {
        let mut took = 0u64;
        loop {
            let m = conn.recv::<Msg>().await;
            if acks && matches!(m, Ok(Some((Msg::Conn(_), _)))) {
                took += 1;
                if let Err(e) = send(&conn, &Msg::Took { n: took }, &[]).await {
                    warn!(error = %e, "upgrade: could not acknowledge a moved connection");
                }
            }
            let last = !matches!(m, Ok(Some(_)));
            if tx.send(m).await.is_err() || last {
                return;
            }
        }
    });
    (rx, task)
}

/// Serves one connection moved here.
fn adopt(lb: &Lb, moved: crate::wire::conns::Moved, fds: Vec<OwnedFd>, from: u32) {
    let Ok([client, server]) = <[OwnedFd; 2]>::try_from(fds) else {
        warn!(from, "upgrade: a moved connection came without its two sockets");
        return;
    };
    match (stream(client), stream(server)) {
        (Ok(c), Ok(s)) => {
            lb.process.moved_in.fetch_add(1, Relaxed);
            lb.listeners.adopt(c, s, moved, &lb.shared, &lb.shutdown);
        }
        _ => warn!(from, "upgrade: a moved connection's sockets could not be used: closed"),
    }
}

fn stream(fd: OwnedFd) -> std::io::Result<tokio::net::TcpStream> {
    let s = std::net::TcpStream::from(fd);
    s.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(s)
}

/// Resolves once this process has stood down: the process it took over
/// from went back to serving, so this one stops accepting, finishes what it
/// holds within its `shutdown_timeout`, and is done. Never otherwise.
pub(super) async fn stand_down(lb: &Lb) {
    lb.process.stand_down.cancelled().await;
    warn!(
        "standing down: the process this one took over from serves again; no longer accepting, finishing the open connections"
    );
    let grace = lb.shared.snapshot.load().config.defaults.shutdown_timeout;
    lb.stop_accepting();
    lb.shutdown.handed_over.cancel();
    lb.shutdown.run(grace).await;
}
