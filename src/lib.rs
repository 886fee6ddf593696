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
//! - `shutdown`: stop accepting, grace period, force close.
//! - `logging`, `commands`, `demo`, `standin`: the binary's set-up, its
//!   sub-commands, and the stand-in UCP managers the demo runs.
//!
//! [`start`] binds everything and returns a [`Running`] that reports the
//! addresses it bound, so tests run the binary's own code on port 0.

#![forbid(unsafe_code)]

pub mod commands;
pub mod config;
pub mod copy;
pub mod demo;
pub mod health;
pub mod listener;
pub mod logging;
pub mod passive;
pub mod pool;
pub mod probe;
pub mod proxy;
pub mod resolve;
pub mod shutdown;
pub mod snapshot;
pub mod standin;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::info;

use crate::config::{Config, ConfigErrors};
use crate::health::Health;
use crate::listener::ListenerState;
use crate::shutdown::Shutdown;
use crate::snapshot::{PoolStatus, Shared, Snapshot};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("{file}: listener[{index}].bind: cannot listen on {bind}: {error}")]
    Bind { file: String, index: usize, bind: SocketAddr, error: std::io::Error },
}

/// A running load balancer.
pub struct Running {
    pub shared: Arc<Shared>,
    listeners: Vec<Arc<ListenerState>>,
    shutdown: Shutdown,
    background: Vec<JoinHandle<()>>,
}

/// Resolves, binds and starts accepting. Returns once every listener is bound.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let resolved = resolve::resolve_all(&config).await?;
    let health = Arc::new(Health::default());
    health.prepare(&config)?;
    let config = Arc::new(config);
    let snapshot = Snapshot::build(1, config.clone(), Arc::new(resolved), None, &health);
    let shared = Arc::new(Shared::new(snapshot, health));
    let shutdown = Shutdown::default();

    // Bind every listener before accepting on any, so a bad bind changes nothing.
    let mut bound = Vec::new();
    for (index, l) in config.listeners.iter().enumerate() {
        let sock = listener::bind(l.bind).map_err(|error| StartError::Bind {
            file: config.source.clone(),
            index,
            bind: l.bind,
            error,
        })?;
        let local = sock.local_addr().unwrap_or(l.bind);
        let nth = config.listeners[..index].iter().filter(|o| o.bind == l.bind).count();
        let state = Arc::new(ListenerState {
            bind: l.bind,
            nth,
            local,
            active: Default::default(),
            accepted: Default::default(),
            rejected_max_connections: Default::default(),
            rejected_fd_limit: Default::default(),
            rejected_no_pool: Default::default(),
        });
        bound.push((sock, state));
    }
    first_results(&shared).await;
    let mut listeners = Vec::new();
    let mut background = Vec::new();
    for (sock, state) in bound {
        let pool = shared.snapshot.load().listener(state.bind, state.nth).map(|l| l.pool.clone());
        info!(bind = %state.bind, local = %state.local, pool = pool.as_deref().unwrap_or(""), "listening");
        background.push(tokio::spawn(listener::accept_loop(sock, state.clone(), shared.clone(), shutdown.clone())));
        listeners.push(state);
    }
    background.push(tokio::spawn(resolve::refresh_loop(shared.clone())));
    Ok(Running { shared, listeners, shutdown, background })
}

/// Waits until every checked server has its first result, or one check
/// `timeout` (the longest configured), whichever comes first: clients are
/// then only sent where a probe has said yes. The listeners are bound
/// already, so clients arriving meanwhile wait in the backlog.
async fn first_results(shared: &Shared) {
    let snap = shared.snapshot.load_full();
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
    /// The addresses actually bound, in config order.
    pub fn listener_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|l| l.local).collect()
    }

    pub fn listeners(&self) -> &[Arc<ListenerState>] {
        &self.listeners
    }

    pub fn status(&self) -> Vec<PoolStatus> {
        self.shared.snapshot.load().status(Instant::now())
    }

    /// Stops accepting, lets connections finish up to `shutdown_timeout`,
    /// then closes the rest.
    pub async fn shutdown(self) {
        let grace = self.shared.snapshot.load().config.defaults.shutdown_timeout;
        self.shutdown.run(grace).await;
        for task in &self.background {
            task.abort();
        }
    }
}

/// Runs until `signal` resolves, then shuts down gracefully.
pub async fn run(config: Config, signal: impl Future<Output = ()>) -> Result<(), StartError> {
    let running = start(config).await?;
    signal.await;
    running.shutdown().await;
    info!("stopped");
    Ok(())
}
