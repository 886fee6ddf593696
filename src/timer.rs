//! Timers on a runtime of their own (issue 39).
//!
//! A tokio runtime with a time driver parks through it: every time a
//! worker runs out of tasks it locks the timer wheel, reads the clock,
//! asks the wheel for its next deadline, parks on epoll, reads the clock
//! again and polls the wheel. On the byte path that is about 600
//! instructions a park and two parks an exchange (the client's bytes in,
//! the server's answer back), whatever the connection's own timers: a
//! third of ucp-lb's user-space work per keep-alive exchange, measured by
//! `cargo bench --bench instr`.
//!
//! So the binary's workers run without a time driver (I/O only) and every
//! timer of the crate is made on a second runtime, one thread that does
//! nothing but keep the wheel ([`Driver`]). A timer is still polled by
//! the task that made it; its wheel fires it from the timer thread, which
//! wakes that task across threads, as a socket's readiness would. Making
//! or dropping a timer takes the wheel's lock as before. The timer thread
//! is woken only when a timer is set earlier than its next wake, so a
//! connection's connect timeout (set and dropped within microseconds,
//! later than whatever is already due) costs it no wake-up.
//!
//! The crate makes its timers through [`sleep`], [`sleep_until`],
//! [`timeout`], [`timeout_at`], [`interval`], [`interval_at`] and
//! [`Hyper`] only (clippy's `disallowed-methods` refuses tokio's own in
//! `src/`). On a thread the binary has not given a timer runtime (tests,
//! the demo, an embedder's runtime) they are tokio's, on the current
//! runtime, so paused time still works there.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // the one place that makes tokio's timers

use std::cell::OnceCell;
use std::future::IntoFuture;
use std::pin::Pin;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::time::{Instant, Interval, Sleep, Timeout};

thread_local! {
    /// The timer runtime this thread makes its timers on; set once, when
    /// a worker thread starts ([`Driver::install`]).
    static TIMERS: OnceCell<Handle> = const { OnceCell::new() };
}

/// Runs `make` (which makes a timer) with the thread's timer runtime
/// current, if it has one.
fn on_timers<R>(make: impl FnOnce() -> R) -> R {
    TIMERS.with(|t| match t.get() {
        Some(handle) => {
            let _entered = handle.enter();
            make()
        }
        None => make(),
    })
}

/// [`tokio::time::sleep`] on the timer runtime.
pub fn sleep(duration: Duration) -> Sleep {
    on_timers(|| tokio::time::sleep(duration))
}

/// [`tokio::time::sleep_until`] on the timer runtime.
pub fn sleep_until(deadline: Instant) -> Sleep {
    on_timers(|| tokio::time::sleep_until(deadline))
}

/// [`tokio::time::timeout`] on the timer runtime.
pub fn timeout<F: IntoFuture>(duration: Duration, future: F) -> Timeout<F::IntoFuture> {
    on_timers(|| tokio::time::timeout(duration, future))
}

/// [`tokio::time::timeout_at`] on the timer runtime.
pub fn timeout_at<F: IntoFuture>(deadline: Instant, future: F) -> Timeout<F::IntoFuture> {
    on_timers(|| tokio::time::timeout_at(deadline, future))
}

/// [`tokio::time::interval`] on the timer runtime.
pub fn interval(period: Duration) -> Interval {
    on_timers(|| tokio::time::interval(period))
}

/// [`tokio::time::interval_at`] on the timer runtime.
pub fn interval_at(start: Instant, period: Duration) -> Interval {
    on_timers(|| tokio::time::interval_at(start, period))
}

/// hyper's timer (the admin server's header timeout) on the timer runtime.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hyper;

impl hyper::rt::Timer for Hyper {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        on_timers(|| hyper_util::rt::TokioTimer::new().sleep(duration))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        on_timers(|| hyper_util::rt::TokioTimer::new().sleep_until(deadline))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: std::time::Instant) {
        on_timers(|| hyper_util::rt::TokioTimer::new().reset(sleep, new_deadline))
    }
}

/// The timer runtime: one thread keeping the wheel until [`Driver::stop`].
///
/// Stop it only after the runtime whose tasks hold its timers has shut
/// down: a timer polled after its wheel is gone panics in tokio.
pub struct Driver {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Driver {
    /// Starts the timer thread.
    pub fn start() -> std::io::Result<Driver> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("ucp-lb-timers".into()).spawn(move || {
            // The wheel turns while this thread parks in block_on; dropping
            // the runtime afterwards fires what is left as shut down.
            let _ = rt.block_on(stopped);
        })?;
        Ok(Driver { handle, stop: Some(stop), thread: Some(thread) })
    }

    /// What a worker thread calls as it starts (the runtime builder's
    /// `on_thread_start`, and the thread that runs a current-thread
    /// runtime): its timers are made on this driver from then on.
    pub fn install(handle: &Handle) {
        TIMERS.with(|t| {
            let _ = t.set(handle.clone());
        });
    }

    /// The timer runtime's handle, for [`Driver::install`].
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Ends the timer thread and waits for it.
    pub fn stop(mut self) {
        self.end();
    }

    fn end(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.end();
    }
}

/// Whether this thread makes its timers on a timer runtime.
#[cfg(test)]
fn installed() -> bool {
    TIMERS.with(|t| t.get().is_some())
}

// The timers answer like tokio's own, whichever runtime keeps them.
#[cfg(test)]
mod tests {
    use super::*;

    /// A worker runtime without a time driver sleeps, times out and ticks
    /// on the driver's wheel; without the driver installed the same calls
    /// would panic ("timers are disabled").
    #[test]
    fn an_io_only_runtime_keeps_time_on_the_driver() {
        let driver = Driver::start().expect("timer thread");
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().expect("runtime");
        let handle = driver.handle().clone();
        let got = std::thread::spawn(move || {
            Driver::install(&handle);
            assert!(installed());
            rt.block_on(async {
                let t0 = Instant::now();
                sleep(Duration::from_millis(20)).await;
                let slept = t0.elapsed();
                let never = std::future::pending::<()>();
                let timed_out = timeout(Duration::from_millis(10), never).await.is_err();
                let mut tick = interval(Duration::from_millis(5));
                tick.tick().await;
                tick.tick().await;
                (slept, timed_out)
            })
        })
        .join()
        .expect("the worker thread ends");
        assert!(got.0 >= Duration::from_millis(20), "slept {:?}", got.0);
        assert!(got.1);
        driver.stop();
    }

    /// Without a driver they are the current runtime's, paused time
    /// included.
    #[tokio::test(start_paused = true)]
    async fn without_a_driver_they_are_the_current_runtimes() {
        assert!(!installed());
        let t0 = Instant::now();
        sleep(Duration::from_secs(3600)).await;
        assert_eq!(t0.elapsed(), Duration::from_secs(3600));
    }
}
