//! Closing the open sessions of a server that went down
//! (`on_server_down = "close"`), spread over `close_spread`.
//!
//! Whoever follows pool state (`control::watch`) gives a server an order
//! when its check marks it down or the admin API sets it down while its
//! pool has another server to take the clients, and withdraws it when that
//! stops being true (the server back, the pool failing open, the key set
//! back to keep). An order covers the connections opened before it. Each
//! of them, woken by the order, claims the next slot of the spread (the
//! order's start plus `close_spread` x slot / sessions) and ends there if
//! the order still stands: the closes come evenly, one every
//! `close_spread / sessions`, instead of every client reconnecting in the
//! same second.
//!
//! A leaf: no I/O; the byte path (`copy.rs`) polls a [`Watch`].
//!
//! An upgrade carries a standing order to the new process
//! ([`Closing::carried`], [`Closing::restore`]): its spread goes on from
//! where it was, and the connections that move in while the old process
//! hands them over ([`Closing::inherit`]) count as opened before it.

use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::{Instant, Sleep};

/// One server's close orders (one at a time), in its [`crate::state::ServerState`].
#[derive(Debug, Default)]
pub struct Closing {
    /// The last order's number (0: none yet). Connections opened under
    /// number `n` are covered by orders after `n`.
    generation: AtomicU32,
    /// The last order stands (not withdrawn).
    standing: AtomicBool,
    plan: Mutex<Plan>,
    /// Slots claimed of the last order.
    next: AtomicU32,
    /// Sessions closed by orders, in this process and those before it.
    pub closed: AtomicU64,
    /// Connections moving in from the process before this one are being
    /// adopted: each is covered by the order standing when it arrives.
    inheriting: AtomicBool,
}

/// A standing order as it moves to the process taking over.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct CarriedOrder {
    /// How long ago it was given, milliseconds.
    pub started_ago_ms: u64,
    pub spread_ms: u64,
    /// Its slots.
    pub sessions: u32,
    /// The first slot left to the sessions still open.
    pub next: u32,
}

#[derive(Debug, Default, Clone, Copy)]
struct Plan {
    start: Option<Instant>,
    spread: Duration,
    /// Sessions open when it was given: how many slots the spread has.
    sessions: u32,
}

impl Closing {
    /// Whether an order stands now.
    pub fn standing(&self) -> bool {
        self.standing.load(Relaxed)
    }

    /// Orders the connections open now closed over `spread` from `now`;
    /// `sessions` is how many there are (the slots). The caller wakes
    /// them ([`crate::wire::conns::Conns::wake_all`]).
    pub fn order(&self, now: Instant, spread: Duration, sessions: u32) {
        *self.plan.lock().unwrap_or_else(|p| p.into_inner()) =
            Plan { start: Some(now), spread, sessions: sessions.max(1) };
        self.next.store(0, Relaxed);
        self.generation.fetch_add(1, Relaxed);
        self.standing.store(true, Relaxed);
    }

    /// Withdraws the standing order: the connections it has not closed
    /// yet go on.
    pub fn withdraw(&self) {
        self.standing.store(false, Relaxed);
    }

    /// The standing order, if any, to carry to a successor; `open`: the
    /// sessions still open (they take its last slots).
    pub fn carried(&self, now: Instant, open: u32) -> Option<CarriedOrder> {
        if !self.standing() {
            return None;
        }
        let plan = *self.plan.lock().unwrap_or_else(|p| p.into_inner());
        let start = plan.start?;
        Some(CarriedOrder {
            started_ago_ms: now.saturating_duration_since(start).as_millis() as u64,
            spread_ms: plan.spread.as_millis() as u64,
            sessions: plan.sessions,
            next: plan.sessions.saturating_sub(open),
        })
    }

    /// Gives again, from where it was, an order carried from the process
    /// before this one.
    pub fn restore(&self, now: Instant, c: CarriedOrder) {
        let start = now.checked_sub(Duration::from_millis(c.started_ago_ms)).unwrap_or(now);
        *self.plan.lock().unwrap_or_else(|p| p.into_inner()) =
            Plan { start: Some(start), spread: Duration::from_millis(c.spread_ms), sessions: c.sessions.max(1) };
        self.next.store(c.next, Relaxed);
        self.generation.fetch_add(1, Relaxed);
        self.standing.store(true, Relaxed);
    }

    /// While `on`, a new connection counts as opened before the last order
    /// (connections moving in from the process before this one).
    pub fn inherit(&self, on: bool) {
        self.inheriting.store(on, Relaxed);
    }

    /// A new connection's place: the orders after this cover it.
    pub fn watch(&self) -> Watch<'_> {
        self.watch_from(self.place())
    }

    /// The place of a connection opened now, taken where it arrives (a
    /// moved connection's, when the old process hands it over: its task
    /// may first run after the hand-over has ended).
    pub fn place(&self) -> u32 {
        let g = self.generation.load(Relaxed);
        if self.inheriting.load(Relaxed) { g.saturating_sub(1) } else { g }
    }

    /// A connection's view from a place taken earlier ([`Closing::place`]).
    pub fn watch_from(&self, since: u32) -> Watch<'_> {
        Watch { closing: self, since, timer: None }
    }

    fn covers(&self, since: u32) -> bool {
        self.standing() && self.generation.load(Relaxed) > since
    }

    /// The next slot of the standing order: when its connection closes.
    fn slot(&self) -> Instant {
        let plan = *self.plan.lock().unwrap_or_else(|p| p.into_inner());
        let k = self.next.fetch_add(1, Relaxed).min(plan.sessions - 1);
        let start = plan.start.unwrap_or_else(Instant::now);
        start + plan.spread.mul_f64(f64::from(k) / f64::from(plan.sessions))
    }
}

/// One connection's view of its server's orders. Costs nothing until an
/// order covers it: then a timer, boxed, until its slot.
pub struct Watch<'a> {
    closing: &'a Closing,
    since: u32,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Watch<'_> {
    /// Ready when the connection is to close now. Polled on every wake
    /// of the connection (an order wakes every connection).
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.timer.is_none() && !self.closing.covers(self.since) {
            return Poll::Pending;
        }
        let timer = self.timer.get_or_insert_with(|| Box::pin(crate::timer::sleep_until(self.closing.slot())));
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.timer = None;
        if self.closing.covers(self.since) {
            self.closing.closed.fetch_add(1, Relaxed);
            return Poll::Ready(());
        }
        // Withdrawn before its slot: it goes on (a later order takes it
        // again).
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_order_spreads_its_connections_evenly_and_spares_later_ones() {
        let c = Closing::default();
        let mut old: Vec<Watch> = (0..4).map(|_| c.watch()).collect();
        let start = Instant::now();
        c.order(start, Duration::from_secs(2), 4);
        let mut later = c.watch();
        let waker = futures_noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(later.poll(&mut cx).is_pending(), "opened after the order");
        // Slots in the order claimed: the first is now.
        assert!(old[1].poll(&mut cx).is_ready());
        for w in &mut old[2..] {
            assert!(w.poll(&mut cx).is_pending());
        }
        let slots: Vec<Duration> =
            old[2..].iter().map(|w| w.timer.as_ref().unwrap().deadline().duration_since(start)).collect();
        assert_eq!(slots, [500, 1000].map(Duration::from_millis));
        tokio::time::advance(Duration::from_millis(600)).await;
        let ready: Vec<bool> = old[2..].iter_mut().map(|w| w.poll(&mut cx).is_ready()).collect();
        assert_eq!(ready, [true, false]);
        // The last to claim gets the last slot, 1.5 s in.
        assert!(old[0].poll(&mut cx).is_pending());
        assert_eq!(old[0].timer.as_ref().unwrap().deadline().duration_since(start), Duration::from_millis(1500));
        c.withdraw();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(old[0].poll(&mut cx).is_pending() && old[3].poll(&mut cx).is_pending(), "withdrawn");
        assert_eq!(c.closed.load(Relaxed), 2);
        // A later order covers what is still open, the one opened after the
        // first order too.
        c.order(Instant::now(), Duration::ZERO, 3);
        let mut rest = vec![old.swap_remove(3), old.swap_remove(0), later];
        for w in &mut rest {
            assert!(w.poll(&mut cx).is_ready(), "no spread: at once");
        }
        assert_eq!(c.closed.load(Relaxed), 5);
    }

    /// When each of `watches`, polled in turn, is to close, from `start`
    /// (its slot), after one poll each.
    fn slots(watches: &mut [Watch], start: Instant) -> Vec<Duration> {
        let waker = futures_noop_waker();
        let mut cx = Context::from_waker(&waker);
        watches
            .iter_mut()
            .map(|w| match w.poll(&mut cx) {
                Poll::Ready(()) => Duration::ZERO,
                Poll::Pending => w.timer.as_ref().expect("covered: a timer").deadline().duration_since(start),
            })
            .collect()
    }

    /// What tests/server_down.rs sees through sockets (300 sessions, a 3 s
    /// spread), proved here on the clock itself: one close every 10 ms,
    /// the first at the order, the last before the spread ends, and the
    /// clock's passing closes them one by one.
    #[tokio::test(start_paused = true)]
    async fn three_hundred_sessions_over_3_s_close_one_every_10_ms() {
        let c = Closing::default();
        let mut watches: Vec<Watch> = (0..300).map(|_| c.watch()).collect();
        let start = Instant::now();
        c.order(start, Duration::from_secs(3), 300);
        let got = slots(&mut watches, start);
        let want: Vec<Duration> = (0..300).map(|k| Duration::from_millis(10 * k)).collect();
        assert_eq!(got, want);
        assert_eq!(c.closed.load(Relaxed), 1, "the first slot is the order's start");
        let waker = futures_noop_waker();
        let mut cx = Context::from_waker(&waker);
        // A connection whose watch is ready closes: it is polled no more.
        let mut open: Vec<Watch> = watches.into_iter().filter(|w| w.timer.is_some()).collect();
        for k in 1..300u64 {
            tokio::time::advance(Duration::from_millis(10)).await;
            let before = open.len();
            open.retain_mut(|w| w.poll(&mut cx).is_pending());
            assert_eq!(before - open.len(), 1, "one close at {} ms", 10 * k);
        }
        assert_eq!(c.closed.load(Relaxed), 300);
        assert!(start.elapsed() < Duration::from_secs(3), "all closed within the spread");
    }

    /// Connections beyond the count the order was given (opened while it
    /// was being given) take the last slot, never one past the spread; an
    /// order for no sessions still closes what it covers, at once.
    #[tokio::test(start_paused = true)]
    async fn connections_beyond_the_count_share_the_last_slot() {
        let c = Closing::default();
        let mut watches: Vec<Watch> = (0..4).map(|_| c.watch()).collect();
        let start = Instant::now();
        c.order(start, Duration::from_secs(2), 2);
        assert_eq!(slots(&mut watches, start), [0, 1000, 1000, 1000].map(Duration::from_millis));

        let c = Closing::default();
        let mut watches: Vec<Watch> = (0..2).map(|_| c.watch()).collect();
        let start = Instant::now();
        c.order(start, Duration::from_secs(2), 0);
        assert_eq!(slots(&mut watches, start), [Duration::ZERO; 2]);
        assert_eq!(c.closed.load(Relaxed), 2);
    }

    /// An order carried to a successor goes on there from where it was,
    /// and covers the connections that move in, not those opened after:
    /// a moved connection's place is taken when it arrives, and holds
    /// although its watch is made after the hand-over has ended (its task
    /// ran late).
    #[tokio::test(start_paused = true)]
    async fn a_carried_order_goes_on_and_covers_the_connections_moving_in() {
        let old = Closing::default();
        let start = Instant::now();
        old.order(start, Duration::from_secs(10), 100);
        tokio::time::advance(Duration::from_millis(1500)).await;
        let c = old.carried(Instant::now(), 40).expect("standing");
        assert_eq!((c.started_ago_ms, c.spread_ms, c.sessions, c.next), (1500, 10_000, 100, 60));
        let new = Closing::default();
        let at = Instant::now();
        new.restore(at, c);
        new.inherit(true);
        let places = [new.place(), new.place()];
        new.inherit(false);
        let mut moved: Vec<Watch> = places.iter().map(|&p| new.watch_from(p)).collect();
        let mut later = new.watch();
        let waker = futures_noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(later.poll(&mut cx).is_pending() && later.timer.is_none(), "opened after: not covered");
        let got = slots(&mut moved, at);
        // Slots 60 and 61 of 100 over 10 s, from 1.5 s before the restore.
        assert_eq!(got, [4500, 4600].map(Duration::from_millis));
        assert!(Closing::default().carried(Instant::now(), 0).is_none(), "no order: nothing carried");
    }

    fn futures_noop_waker() -> std::task::Waker {
        std::task::Waker::noop().clone()
    }
}
