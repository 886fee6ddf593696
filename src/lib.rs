//! ucp-lb: a layer-4 load balancer for Docker Enterprise UCP managers and DTR
//! replicas, the job of the reference architectures' nginx `stream {}` block.
//!
//! Layout, from the leaves up (imports only go down; `tests/modules.rs`
//! fails on a loop):
//!
//! - `admission`: who may connect to a listener (its `access` rules) and
//!   how much one client address may hold (open connections, new ones per
//!   second), checked at accept; its table of clients, bounded.
//! - `sni`: a client's ClientHello read only as far as its server name,
//!   within a bound and a time, every byte kept; route name patterns.
//! - `config` (`raw.rs`, `validate.rs`, `values.rs`): lb.toml into a typed,
//!   validated [`config::Config`], or every error with file, line, column
//!   and key, and its warnings. No runtime state, no sockets.
//! - `access_log`: one line per finished connection, written by a thread
//!   of its own from a bounded queue.
//! - `files`: reading lb.toml and the files it names: regular files only,
//!   capped, trusted (owner and modes checked on the open descriptor).
//! - `net`: connect with a timeout, TCP keepalive, why a connect failed.
//! - `check`: what an active check last found, its rise/fall counting.
//! - `passive`: nginx's `max_fails`/`fail_timeout`, pure, taking `now`.
//! - `closing`: a server's orders to close its open sessions spread over
//!   `close_spread` (`on_server_down = "close"`), and each connection's
//!   watch of them.
//! - `state`: runtime state that outlives a snapshot (a server's counters
//!   and passive state, a pool's latch), and its registry.
//! - `token`: the admin token, read with the config, compared in constant time.
//! - `metrics`: every metric name and the Prometheus recorder.
//! - `handover`: the request that makes every connection stop where it holds
//!   no bytes, the wakers that bring idle ones to see it (and, once, those
//!   that have lived past 10 s: the server socket's late keepalive), and
//!   where a stopped connection's sockets go (an upgrade moves them).
//! - `control`: the control socket (Unix, mode 0600): length-framed JSON
//!   messages carrying descriptors (`SCM_RIGHTS`).
//! - `splice`, `copy`: the byte path, both directions, pooled buffers and
//!   pipes, half-close, and the stop for a move.
//! - `tls`, `probe`, `health`: probe TLS configs, one probe, and the probe
//!   tasks shared between pools.
//! - `pool`: eligibility and balancing, pure (reads check cells, no I/O).
//! - `snapshot`: the running config as one immutable snapshot, swapped
//!   whole; server state that outlives snapshots.
//! - `carry`: the servers' runtime state as it moves to a new process.
//! - `resolve`: server names into addresses, at load and every
//!   `resolve_interval`.
//! - `proxy`: one client: pick, connect with retries, copy; a connection
//!   moved from another process resumed.
//! - `listener`: bound sockets and accept loops that never die.
//! - `shutdown`: stop accepting, grace period.
//! - `status`: the one status view (listeners, pools, servers) computed at
//!   read time, and the watcher that logs a pool's all-down episodes and
//!   gives and withdraws the close orders of servers that went down.
//! - `lifecycle`: the one pipeline of check, start and reload (load
//!   everything that can fail, then commit in one swap), and the running
//!   handle.
//! - `reload`: what triggers a reload (SIGHUP, a change of the file).
//! - `upgrade`: `ucp-lb --upgrade`: the old side hands its sockets, state
//!   and connections over the control socket; the new side takes them.
//! - `admin`: the admin server; `/status`, the page (`admin/page.rs`) and
//!   `/metrics` (`admin/prom.rs`) render the status view.
//! - `nginx`: `convert-nginx` (read, convert, write).
//!
//! [`start`] binds everything and returns a [`Running`] that reports the
//! addresses it bound, so tests run the binary's own code on port 0. The
//! command line, the demo and its stand-in managers are the binary's
//! (`src/main.rs`, `src/cli/`).

#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod admission;
pub mod build_info;
pub mod changes;
pub mod check;
mod civil;
pub mod closing;
pub mod config;
pub mod conns;
pub mod copy;
pub mod fail;
pub mod files;
pub mod health;
pub mod history;
pub mod lifecycle;
pub mod listener;
pub mod metrics;
pub mod net;
pub mod nginx;
pub mod passive;
pub mod pool;
pub mod probe;
pub mod proxy;
pub mod reload;
pub mod resolve;
pub mod shutdown;
pub mod snapshot;
pub mod sni;
pub mod splice;
pub mod state;
pub mod status;
pub mod tls;
pub mod token;
pub mod upgrade;
pub mod watch;

use std::future::Future;

use tracing::info;

use crate::config::Config;
pub use crate::lifecycle::{Running, StartError};

/// Starts a load balancer on `config`: reads what it names, resolves,
/// binds, probes and starts accepting; see [`lifecycle::start`].
pub async fn start(config: Config) -> Result<Running, StartError> {
    start_loaded(lifecycle::complete(config)?).await
}

/// Starts a load balancer on a config loaded with [`lifecycle::load`].
pub async fn start_loaded(loaded: lifecycle::Loaded) -> Result<Running, StartError> {
    lifecycle::start(loaded, |sock, lb| tokio::spawn(admin::serve(sock, lb))).await
}

pub use crate::upgrade::Begin;

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
pub async fn run<F, S>(loaded: lifecycle::Loaded, mut signal: S, begin: Begin) -> Result<Option<Ended>, StartError>
where
    S: FnMut() -> F,
    F: Future<Output = ()>,
{
    // The first signal is listened for before anything else happens (its
    // handlers are installed when it is first polled, here): a SIGTERM
    // during the start stops the process cleanly instead of killing it.
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
    running.adopt(tokio::spawn(access_log::on_sigusr1(ended.access_log.clone())));
    if let Some(path) = running.lb.shared.snapshot.load().config.path.clone() {
        running.adopt(tokio::spawn(reload::on_sighup(running.lb.clone())));
        running.adopt(tokio::spawn(reload::watch_file(running.lb.clone(), path)));
    }
    tokio::select! {
        _ = first => {}
        _ = control.handed_over(running.lb.clone()) => {
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
