//! The old side of the conversation (see `mod.rs`): answering an upgrade,
//! moving the open connections to the new process, and going back should
//! the hand-over break off before the new process has confirmed it whole.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::socket::Conn;
use super::{Control, Msg, PROTOCOL, REPORT_EVERY, STALL, STEP, UpgradeError, WINDOW, carry, recv_or_end, send, talk};
use crate::control::lifecycle::Lb;
use crate::wire::conns::Parked;

/// Who took over: its pid and the conversation it speaks.
#[derive(Clone, Copy)]
struct Successor {
    pid: u32,
    protocol: u32,
}

/// How a drain ended.
enum Drained {
    /// The new process confirmed the whole hand-over (or, of an older
    /// release, the drain ended as it used to).
    Whole { moved: u64, cut: u64 },
    /// It broke off before that: this process goes back.
    BrokeOff { reason: String, sent: u64, acked: u64, rx: mpsc::UnboundedReceiver<Parked>, unsent: Option<Box<Parked>> },
}

/// Answers upgrades on `control` until one takes over, then moves the open
/// connections to it and returns once the new process has confirmed the
/// whole hand-over (or this process's `shutdown_timeout` is over). An
/// upgrade that fails before `go` leaves this process as it was; one that
/// breaks off after it, this process takes back.
pub(super) async fn serve(control: &Control, lb: Arc<Lb>) {
    loop {
        let Some(listener) = control.current() else { return std::future::pending().await };
        let conn = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "control socket: accept failed");
                crate::timer::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        drop(listener);
        let successor = match offer(&conn, &lb).await {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => {
                warn!(error = %e, "upgrade abandoned: this process goes on as it was");
                // Should the new process still be there (slow, stopped), it
                // reads this before `going` and stands down.
                let abandon = Msg::Abandon { reason: e.to_string() };
                let _ = crate::timer::timeout(Duration::from_secs(1), conn.send(&abandon, &[])).await;
                continue;
            }
        };
        match drain(Arc::new(conn), &lb, successor).await {
            (Drained::Whole { moved, cut }, _) => {
                lb.stop_accepting();
                lb.shutdown.handed_over.cancel();
                lb.shared.own.history.record("handed over", None, None, format!("to pid {}", successor.pid));
                info!(successor = successor.pid, moved, cut, "upgrade: done here, exiting");
                return;
            }
            (Drained::BrokeOff { reason, sent, acked, rx, unsent }, conn) => {
                go_back(&lb, &conn, successor, &reason, (sent, acked), rx, unsent).await;
                drop(conn);
                control.replace();
                if lb.process.stop_requested.load(Relaxed) {
                    // A stop signal came during the hand-over: the caller
                    // stops this process now that it holds its
                    // connections again.
                    return;
                }
            }
        }
    }
}

/// Steps 2 to 4 on the old side: returns the successor once it has said
/// `go` and this process has stopped accepting; `None` for a connection
/// closed without a word (`--upgrade` and a start looking whether anyone
/// listens here).
async fn offer(conn: &Conn, lb: &Lb) -> Result<Option<Successor>, UpgradeError> {
    let (pid, version, protocol) = match recv_or_end(conn, STEP).await? {
        None => return Ok(None),
        Some((Msg::Hello { pid, version, protocol }, _)) => (pid, version, protocol),
        Some((other, _)) => return Err(talk(format!("expected hello, got {other:?}"))),
    };
    let peer_pid = conn.peer_pid().map_or_else(|| "unknown".to_owned(), |p| p.to_string());
    info!(successor = pid, %peer_pid, %version, protocol, "upgrade: a new process asks to take over");
    let generation = lb.shared.snapshot.load().generation;
    send(conn, &Msg::Welcome { pid: std::process::id(), generation, protocol: PROTOCOL }, &[]).await?;
    for (carried, fd) in lb.listeners.handover() {
        send(conn, &Msg::Listener(carried), &[fd.as_fd()]).await?;
    }
    let admin = lb.admin_fd.lock().unwrap_or_else(|p| p.into_inner()).as_ref().and_then(|f| f.try_clone().ok());
    if let Some(fd) = admin {
        send(conn, &Msg::Admin { listen: lb.admin_listen }, &[fd.as_fd()]).await?;
    }
    for s in carry::export(&lb.shared.snapshot.load()) {
        send(conn, &Msg::Server(s), &[]).await?;
    }
    if protocol >= 1 {
        let history = &lb.shared.own.history;
        for e in history.export_events() {
            send(conn, &Msg::Event(e), &[]).await?;
        }
        for (pool, samples) in history.export_samples() {
            send(conn, &Msg::Samples { pool, samples }, &[]).await?;
        }
        send(conn, &Msg::Reloads(lb.reload_status()), &[]).await?;
    }
    if protocol >= 2 {
        let c = &lb.shared.own.cluster;
        let nodes = c.nodes().map(|n| n.as_ref().clone());
        send(conn, &Msg::Cluster { nodes, status: c.status() }, &[]).await?;
    }
    send(conn, &Msg::StateEnd, &[]).await?;
    // Each beat of the new process's preparation within a step: a peer
    // that says hello and then nothing holds this slot one step at most.
    // (One of an older release says nothing until `go`: the same step.)
    loop {
        match recv_or_end(conn, STEP).await? {
            Some((Msg::Preparing, _)) => {}
            Some((Msg::Go, _)) => break,
            Some((other, _)) => return Err(talk(format!("expected go, got {other:?}"))),
            None => return Err(talk("the new process closed the control connection before go")),
        }
    }
    // The successor accepts on every socket now: stop accepting here, but
    // keep the sockets until it confirms the whole hand-over.
    lb.pause_accepting();
    lb.process.handing_over_to.store(pid, Relaxed);
    if let Err(e) = send(conn, &Msg::Going, &[]).await {
        warn!(successor = pid, error = %e, "upgrade: could not confirm to the new process");
    }
    info!(successor = pid, "upgrade: the new process accepts; moving the open connections to it");
    Ok(Some(Successor { pid, protocol }))
}

/// Reads what the new process says into a channel (the end of the link
/// closes it), so the drain can wait on it beside everything else.
fn reader(conn: Arc<Conn>) -> (mpsc::Receiver<Msg>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        while let Ok(Some((m, _))) = conn.recv::<Msg>().await {
            if tx.send(m).await.is_err() {
                return;
            }
        }
    });
    (rx, task)
}

/// Where a drain stands.
struct Drain {
    sent: u64,
    acked: u64,
    /// Stopped connections that could not be sent.
    lost: u64,
    heard: Instant,
    done_sent: bool,
    /// The end of `shutdown_timeout`: nothing of the drain waits past it.
    hard: Instant,
    /// A connection whose sending failed: the new process never had it
    /// whole (it takes one only with its whole message), so it is still
    /// this process's, intact.
    unsent: Option<Parked>,
}

impl Drain {
    /// Sends `msg` within [`STALL`] and before the hard deadline.
    async fn send(&self, conn: &Conn, msg: &Msg, fds: &[std::os::fd::BorrowedFd<'_>]) -> Result<(), String> {
        let until = (Instant::now() + STALL).min(self.hard);
        match crate::timer::timeout_at(until, conn.send(msg, fds)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("the new process does not read (stopped or hung)".into()),
        }
    }

    /// Says `done` (what moved, what is cut); from here only the new
    /// process's `confirmed` (or its silence) is awaited.
    async fn finish(&mut self, conn: &Conn, open: u64) -> Result<(), String> {
        self.done_sent = true;
        let cut = open + self.lost;
        self.send(conn, &Msg::Done { moved: self.sent, cut }, &[]).await
    }
}

/// Steps 4 and 5 on the old side; gives the link back with how it ended.
/// Nothing in it waits past `shutdown_timeout`: the connections are moved
/// until a quarter of it (at most [`STALL`]) is left, and the
/// confirmation awaited until its end.
async fn drain(conn: Arc<Conn>, lb: &Lb, successor: Successor) -> (Drained, Arc<Conn>) {
    let acks = successor.protocol >= 1;
    let (tx, mut rx) = mpsc::unbounded_channel();
    lb.shared.own.conns.stop_into(tx);
    let tracker = &lb.shutdown.tracker;
    tracker.close();
    let grace = lb.shared.snapshot.load().config.defaults.shutdown_timeout;
    let now = Instant::now();
    let hard = now + grace;
    // The last of it (a quarter, at most STALL) is for the confirmation.
    let soft = if acks { hard - STALL.min(grace / 4) } else { hard };
    let mut report = crate::timer::interval(REPORT_EVERY);
    let (mut heard_rx, reading) = reader(conn.clone());
    let mut previous = lb.process.previous_draining.subscribe();
    let mut d = Drain { sent: 0, acked: 0, lost: 0, heard: now, done_sent: false, hard, unsent: None };
    let broke = |reason: String, d: &Drain| Err((reason, d.sent, d.acked));
    let end: Result<(), (String, u64, u64)> = loop {
        let still_coming = *previous.borrow();
        let acked_all = !acks || d.acked >= d.sent;
        let nothing_left = tracker.is_empty() && rx.is_empty() && !still_coming && acked_all;
        if !d.done_sent && (nothing_left || Instant::now() >= soft) {
            if !nothing_left {
                warn!(
                    open = tracker.len(),
                    grace_s = grace.as_secs_f64(),
                    "upgrade: shutdown_timeout is over: cutting the connections that did not move"
                );
            }
            let r = d.finish(&conn, tracker.len() as u64).await;
            if !acks {
                // An older release's successor: nothing more is awaited.
                break Ok(());
            }
            if let Err(e) = r {
                break broke(e, &d);
            }
        }
        let room = !acks || d.sent - d.acked < WINDOW;
        let quiet_until = (d.heard + STALL).min(hard);
        tokio::select! {
            biased;
            m = heard_rx.recv() => match m {
                // An older release closes the link when it hands over in
                // turn: the drain ends, as it always did.
                None if !acks => {
                    warn!(open = tracker.len(), "upgrade: the process that took over has itself been upgraded (or has gone): ending this drain now");
                    break Ok(());
                }
                None => break broke("the new process closed the link (it exited or was killed)".into(), &d),
                Some(Msg::Took { n }) => { d.acked = n; d.heard = Instant::now(); }
                Some(Msg::Alive) => d.heard = Instant::now(),
                Some(Msg::Confirmed) if d.done_sent => break Ok(()),
                Some(other) => warn!(successor = successor.pid, "upgrade: unexpected {other:?}"),
            },
            p = rx.recv(), if !d.done_sent && room => {
                let Some(p) = p else { continue };
                let sent = {
                    let fds = [p.client.as_fd(), p.server.as_fd()];
                    d.send(&conn, &Msg::Conn(p.moved.clone()), &fds).await
                };
                match sent {
                    Ok(()) => d.sent += 1,
                    Err(e) if !acks => {
                        d.lost += 1;
                        warn!(error = %e, "upgrade: a connection could not be handed over: closed");
                    }
                    Err(e) => {
                        d.unsent = Some(p);
                        break broke(format!("sending a connection failed: {e}"), &d);
                    }
                }
            }
            _ = tracker.wait(), if !tracker.is_empty() => {}
            _ = previous.wait_for(|d| !*d), if still_coming => {}
            _ = report.tick(), if !d.done_sent => {
                if let Err(e) = d.send(&conn, &Msg::Draining { open: tracker.len() as u64 }, &[]).await {
                    break broke(e, &d);
                }
            }
            _ = crate::timer::sleep_until(quiet_until), if acks => {
                let reason = if Instant::now() >= hard {
                    "shutdown_timeout is over and the new process has not confirmed the hand-over".to_owned()
                } else {
                    format!("no word from the new process for {}s (stopped or hung)", STALL.as_secs())
                };
                break broke(reason, &d);
            }
            _ = crate::timer::sleep_until(soft), if !d.done_sent => {}
        }
    };
    reading.abort();
    let outcome = match end {
        Ok(()) => Drained::Whole { moved: d.sent, cut: tracker.len() as u64 + d.lost },
        Err((reason, sent, acked)) => {
            Drained::BrokeOff { reason, sent, acked, rx, unsent: d.unsent.take().map(Box::new) }
        }
    };
    (outcome, conn)
}

/// The hand-over broke off after `go`: accept again, take the connections
/// back, tell the new process (should it read again) and say so.
async fn go_back(
    lb: &Arc<Lb>,
    conn: &Conn,
    successor: Successor,
    reason: &str,
    (sent, acked): (u64, u64),
    mut rx: mpsc::UnboundedReceiver<Parked>,
    unsent: Option<Box<Parked>>,
) {
    let conns = &lb.shared.own.conns;
    let listeners = lb.resume_accepting();
    conns.withdraw();
    lb.shutdown.tracker.reopen();
    // Connections that had stopped whole and were not sent: served here
    // again, now and as any more arrive (one that stopped in the race with
    // the withdrawal); until the next hand-over replaces the sink.
    let parked = rx.len() + usize::from(unsent.is_some());
    if let Some(p) = unsent.map(|p| *p) {
        lb.listeners.adopt(p.client, p.server, p.moved, &lb.shared, &lb.shutdown);
    }
    let home = lb.clone();
    tokio::spawn(async move {
        while let Some(p) = rx.recv().await {
            home.listeners.adopt(p.client, p.server, p.moved, &home.shared, &home.shutdown);
        }
    });
    let kept = lb.shutdown.tracker.len() + parked;
    let p = &lb.process;
    p.handing_over_to.store(0, Relaxed);
    p.upgrades_resumed.fetch_add(1, Relaxed);
    p.last_resumed_at.store(crate::events::history::now() as u64, Relaxed);
    p.lost_in_resumed.fetch_add(sent, Relaxed);
    let detail = format!(
        "pid {}: {reason}; accepting here again, {kept} connections kept, {sent} had moved to it ({} in flight)",
        successor.pid,
        sent.saturating_sub(acked)
    );
    lb.shared.own.history.record("upgrade resumed", None, None, detail);
    error!(
        successor = successor.pid,
        reason,
        listeners,
        kept,
        moved_to_it = sent,
        in_flight = sent.saturating_sub(acked),
        "upgrade broke off after go: resumed here, accepting again and keeping every connection still held \
         (those that had moved to the new process are lost if it died)"
    );
    let abandon = Msg::Abandon { reason: reason.to_owned() };
    let _ = crate::timer::timeout(Duration::from_secs(1), conn.send(&abandon, &[])).await;
}
