//! ucp-lb: a layer-4 load balancer for Docker Enterprise UCP managers and DTR
//! replicas, the job of the reference architectures' nginx `stream {}` block.
//!
//! The folders, from the bottom up (imports only go down, between folders
//! and between the modules of one folder; `tests/modules.rs` fails on a
//! loop):
//!
//! - leaves: `build_info`, `civil` (dates), `files` (reading lb.toml and
//!   the files it names, bounded and trusted), `fail` (why a connect
//!   failed), `metrics` (every metric name, one recorder per balancer),
//!   `proxy_send` (the PROXY protocol header sent to servers and probes),
//!   `timer` (every timer, kept on a runtime of its own in the binary).
//! - `events/`: a balancer's memory (`history`: events and traffic
//!   samples) and its change signal (`changes`).
//! - `config/`: lb.toml into a typed, validated [`config::Config`], or
//!   every error with file, line, column and key; every key declared once
//!   (`keys.rs`). No runtime state, no sockets.
//! - `health/`: active checks: one probe (`probe`, `tls`), what a check
//!   found and its rise/fall (`check`), the probe tasks shared between
//!   pools (`mod.rs`), and nginx's passive `max_fails` (`passive`, pure).
//! - `cluster/`: the swarm pools can follow: one read of the node list
//!   with a client bundle (`client`), its schema read strictly (`nodes`),
//!   the nodes a pool takes (`select`, pure), the last good list.
//! - `wire/`: what happens on a client's two sockets, knowing no pool or
//!   snapshot: the byte path (`copy`, `splice`), the connections a
//!   balancer holds and their stop request (`conns`), close orders
//!   (`closing`), who may connect (`admission`), the ClientHello's server
//!   name (`sni`), an outer balancer's PROXY header (`proxy_header`),
//!   sockets (`net`) and the access log (`access_log`).
//! - `state/`: what outlives a snapshot (a server's counters and passive
//!   state, `mod.rs`), selection (`pool/`, pure) and the running config as
//!   one immutable snapshot with what the balancer owns (`snapshot`).
//! - `traffic/`: bound sockets (`bind`) and accept loops that never die
//!   (`listener`), whose address a PROXY protocol client goes on with
//!   (`proxied`), one client's life (`proxy`: pick, connect, relay), the
//!   stop tokens (`shutdown`).
//! - `view/`: the one status view, computed at read time; `/status`, the
//!   page (`page`) and `/metrics` (`prom`) render it.
//! - `control/`: the one pipeline of check, start and reload and the
//!   snapshot's one writer (`lifecycle`), what triggers a reload
//!   (`reload`), re-resolution (`resolve`), the swarm followed
//!   (`cluster`), the watcher that reacts to
//!   state changes (`watch`), the admin token (`token`), and the binary
//!   upgrade (`upgrade/`: control socket, what is carried, the take-over).
//! - `admin/`: the admin server. `nginx/`: `convert-nginx`.
//!
//! [`start`] binds everything and returns a [`Running`] that reports the
//! addresses it bound, so tests run the binary's own code on port 0. The
//! command line, the demo and its stand-in managers are the binary's
//! (`src/main.rs`, `src/cli/`).

#![forbid(unsafe_code)]
// Timers only through `timer` (clippy.toml says why).
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod admin;
pub mod build_info;
mod civil;
pub mod cluster;
pub mod config;
pub mod control;
pub mod events;
pub mod fail;
pub mod files;
pub mod health;
pub mod metrics;
pub mod nginx;
pub mod proxy_send;
pub mod state;
pub mod timer;
pub mod traffic;
pub mod view;
pub mod wire;

use std::future::Future;

use std::sync::atomic::Ordering::Relaxed;

use tracing::info;

use crate::config::Config;
pub use crate::control::lifecycle::{Running, StartError};
use crate::control::{lifecycle, reload, upgrade};
use crate::wire::access_log;

/// Starts a load balancer on `config`: reads what it names, resolves,
/// binds, probes and starts accepting; see [`lifecycle::start`].
pub async fn start(config: Config) -> Result<Running, StartError> {
    start_loaded(lifecycle::complete(config)?).await
}

/// Starts a load balancer on a config loaded with [`lifecycle::load`].
pub async fn start_loaded(loaded: lifecycle::Loaded) -> Result<Running, StartError> {
    lifecycle::start(loaded, |sock, lb| tokio::spawn(admin::serve(sock, lb))).await
}

pub use crate::control::upgrade::Begin;

/// What a finished [`run`] leaves to its caller: the balancer's access-log
/// writer, to flush the lines of the connections that end when the runtime
/// is dropped.
pub struct Ended {
    pub access_log: access_log::Writer,
}

/// Runs until `signal` resolves, then shuts down gracefully; a second
/// `signal` during the grace period stops at once. Reloads on SIGHUP and
/// whenever the config file's content changes. Ends by itself, once its
/// connections have moved, when a new process takes over through the
/// control socket.
///
/// `signals` (SIGHUP, SIGUSR1) are made by the caller before anything that
/// can take time; `None` installs them here, first thing.
pub async fn run<F, S>(
    loaded: lifecycle::Loaded,
    mut signal: S,
    begin: Begin,
    signals: Option<reload::Signals>,
) -> Result<Option<Ended>, StartError>
where
    S: FnMut() -> F,
    F: Future<Output = ()>,
{
    let signals = signals.unwrap_or_else(reload::Signals::install);
    // The first stop signal is listened for before anything else happens
    // (its handlers are installed when it is first polled, here): a
    // SIGTERM during the start stops the process cleanly instead of
    // killing it.
    let mut first = std::pin::pin!(signal());
    let serve_admin = |sock, lb| tokio::spawn(admin::serve(sock, lb));
    let (mut running, control) = tokio::select! {
        biased;
        _ = &mut first => {
            info!("stopped before the start was complete");
            return Ok(None);
        }
        r = upgrade::begin(loaded, begin, serve_admin) => r?,
    };
    let ended = Ended { access_log: running.lb.shared.own.conns.access_log.clone() };
    running.adopt(tokio::spawn(signals.follow(running.lb.clone())));
    if let Some(path) = running.lb.shared.snapshot.load().config.path.clone() {
        running.adopt(tokio::spawn(reload::watch_file(running.lb.clone(), path)));
    }
    let mut handed_over = std::pin::pin!(control.handed_over(running.lb.clone()));
    let during_hand_over = tokio::select! {
        _ = first => running.lb.process.handing_over_to.load(Relaxed) != 0,
        _ = &mut handed_over => {
            running.stop_background();
            return Ok(Some(ended));
        }
    };
    if during_hand_over {
        // Moving the connections to the new process is this process's stop
        // already, bounded by shutdown_timeout: it goes on. Should it break
        // off (the new process gone), the stop below takes over.
        running.lb.process.stop_requested.store(true, Relaxed);
        info!("stop signal during an upgrade's hand-over: the connections go on moving to the new process");
        tokio::select! {
            _ = &mut handed_over => {}
            _ = signal() => tracing::warn!("second signal: ending the hand-over now"),
        }
        if running.lb.shutdown.handed_over.is_cancelled() {
            running.stop_background();
            return Ok(Some(ended));
        }
    }
    // The stop grace first (/healthz already 503, listeners still accept);
    // a second signal skips what is left of it.
    tokio::select! {
        _ = running.stop_grace() => {}
        _ = signal() => info!("second signal: skipping the rest of the stop grace"),
    }
    tokio::select! {
        _ = running.shutdown() => info!("stopped"),
        _ = signal() => tracing::warn!("second signal: stopping now, cutting open connections"),
    }
    control.remove();
    Ok(Some(ended))
}
