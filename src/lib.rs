//! ucp-lb: a layer-4 load balancer for Docker Enterprise UCP managers and DTR
//! replicas, the job of the reference architectures' nginx `stream {}` block.
//!
//! Layout, in the order a connection meets them:
//!
//! - `config` (and `config/raw.rs`): lb.toml into a typed, validated
//!   [`config::Config`], or every error with file, line, column and key.
//! - `resolve`: server names into addresses, at load and every
//!   `resolve_interval`.
//! - `snapshot`: the running config as one immutable snapshot, swapped whole;
//!   server state that outlives snapshots.
//! - `listener`: bound sockets and accept loops that never die.
//! - `proxy`: one client: pick, connect with retries, copy.
//! - `pool` and `passive`: eligibility, balancing and nginx's
//!   `max_fails`/`fail_timeout`, pure and tested without sockets.
//! - `copy`: the byte path, both directions, pooled buffers, half-close.
//! - `health`, `probe`, `tls`: active checks, one probe, probe TLS configs.
//! - `reload`: SIGHUP, file watch, and the reload itself.
//! - `shutdown`: stop accepting, grace period, force close.
//! - `logging`, `commands`, `demo`, `standin`: the binary's set-up, its
//!   sub-commands, and the stand-in UCP managers the demo runs.
//!
//! [`start`] binds everything and returns a [`Running`] that reports the
//! addresses it bound, so tests run the binary's own code on port 0.

#![forbid(unsafe_code)]

pub mod admin;
pub mod commands;
pub mod config;
pub mod copy;
pub mod demo;
pub mod health;
pub mod healthcheck;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod nginx;
pub mod page;
pub mod passive;
pub mod pool;
pub mod probe;
pub mod proxy;
pub mod reload;
pub mod resolve;
pub mod shutdown;
pub mod snapshot;
pub mod splice;
pub mod standin;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::info;

use crate::admin::Admin;
use crate::config::{Config, ConfigErrors};
use crate::health::Health;
use crate::listener::{BindError, ListenerState, Listeners};
use crate::reload::{Control, ReloadError, ReloadStatus};
use crate::shutdown::Shutdown;
use crate::snapshot::{PoolStatus, Shared, Snapshot};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    // transparent: `ucp-lb: {e:#}` prints the chain, and "{0}" with a
    // source would print the same message twice.
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("{file}: admin.listen: cannot listen on {addr}: {error}")]
    AdminBind { file: String, addr: SocketAddr, error: std::io::Error },
}

/// A running load balancer.
pub struct Running {
    pub control: Arc<Control>,
    pub shared: Arc<Shared>,
    background: Vec<JoinHandle<()>>,
    path: Option<std::path::PathBuf>,
    admin_addr: Option<SocketAddr>,
}

/// Resolves, binds, probes and starts accepting. Returns once every
/// listener is bound and accepting.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let resolved = resolve::resolve_all(&config).await?;
    let health = Arc::new(Health::default());
    health.prepare(&config)?;
    let token = admin::read_token(&config.admin, &config.source)?;
    let listeners = Listeners::default();
    // Bind every listener before accepting on any, so a bad bind changes nothing.
    let bound = listeners.bind_new(&config)?;
    let admin_sock = tokio::net::TcpListener::bind(config.admin.listen)
        .await
        .map_err(|error| StartError::AdminBind { file: config.source.clone(), addr: config.admin.listen, error })?;
    let admin_addr = admin_sock.local_addr().ok();
    let admin_listen = config.admin.listen;
    let path = config.path.clone();
    let snapshot = Snapshot::build(1, Arc::new(config), Arc::new(resolved), None, &health);
    let shared = Arc::new(Shared::new(snapshot, health));
    let shutdown = Shutdown::default();
    let control = Arc::new(Control::new(shared.clone(), shutdown, listeners, admin_listen, token));
    // The admin server answers from now on: /healthz says 503 until the
    // first probes are in and the listeners accept.
    let mut background = vec![tokio::spawn(admin::serve(admin_sock, Arc::new(Admin::new(control.clone()))))];
    first_results(&shared.snapshot.load()).await;
    control.listeners.launch(bound, &shared, &control.shutdown);
    control.set_ready();
    background.push(tokio::spawn(resolve::refresh_loop(shared.clone())));
    background.push(tokio::spawn(metrics::upkeep_loop(shared.health.metrics.clone())));
    Ok(Running { control, shared, background, path, admin_addr })
}

/// Waits until every checked server of `snap` has its first result, or one
/// check `timeout` (the longest configured), whichever comes first: clients
/// are then only sent where a probe has said yes. Listeners are bound
/// already, so clients arriving meanwhile wait in the backlog.
pub(crate) async fn first_results(snap: &Snapshot) {
    let longest = snap.config.pools.iter().filter_map(|p| p.health.as_ref().map(|h| h.timeout)).max();
    let Some(longest) = longest else { return };
    let deadline = Instant::now() + longest + std::time::Duration::from_millis(100);
    for pool in &snap.pools {
        for s in &pool.servers {
            if let Some(c) = &s.check {
                let _ = tokio::time::timeout_at(deadline, c.first_result()).await;
            }
        }
    }
}

impl Running {
    /// The addresses actually bound, in the order they were opened.
    pub fn listener_addrs(&self) -> Vec<SocketAddr> {
        self.control.listeners.states().iter().map(|l| l.local).collect()
    }

    /// Where the admin server listens.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn listeners(&self) -> Vec<Arc<ListenerState>> {
        self.control.listeners.states()
    }

    pub fn status(&self) -> Vec<PoolStatus> {
        self.shared.snapshot.load().status(Instant::now())
    }

    /// Reloads on SIGHUP and whenever the config file's content changes
    /// (when the config came from a file). The binary does this; tests that
    /// reload by hand leave it off, so nothing reloads behind their back.
    pub fn reload_on_signal_and_change(&mut self) {
        if let Some(path) = self.path.clone() {
            self.background.push(tokio::spawn(reload::on_sighup(self.control.clone())));
            self.background.push(tokio::spawn(reload::watch_file(self.control.clone(), path)));
        }
    }

    /// Reloads the config file; see [`reload::Control::reload`].
    pub async fn reload(&self) -> Result<u64, ReloadError> {
        self.control.reload().await
    }

    pub fn reload_status(&self) -> ReloadStatus {
        self.control.reload_status()
    }

    /// True once shutdown has begun (not ready for new clients).
    pub fn is_shutting_down(&self) -> bool {
        self.control.shutdown.stop_accepting.is_cancelled()
    }

    /// Stops accepting and lets connections finish up to `shutdown_timeout`.
    /// Connections still open then are closed when the runtime is dropped
    /// (the binary returns from it right after).
    pub async fn shutdown(&self) {
        let grace = self.shared.snapshot.load().config.defaults.shutdown_timeout;
        self.control.shutdown.run(grace).await;
        for task in &self.background {
            task.abort();
        }
    }
}

/// Runs until `signal` resolves, then shuts down gracefully; a second
/// `signal` during the grace period stops at once.
pub async fn run<F, S>(config: Config, mut signal: S) -> Result<(), StartError>
where
    S: FnMut() -> F,
    F: Future<Output = ()>,
{
    let mut running = start(config).await?;
    running.reload_on_signal_and_change();
    signal().await;
    tokio::select! {
        _ = running.shutdown() => info!("stopped"),
        _ = signal() => tracing::warn!("second signal: stopping now, cutting open connections"),
    }
    Ok(())
}
