//! One pipeline for `check`, start and reload: prepare everything that can
//! fail, then commit it in one swap.
//!
//! [`load`] does what needs no runtime: read the file, parse and validate
//! it, read the token file and the CA files, read `UCP_LB_WORKERS`; it
//! returns a [`Loaded`] or every error of every step at once. [`resolve()`]
//! turns server names into addresses. `check` stops there (`--offline`
//! before resolving). Start and reload go on: bind the listeners that are
//! new, build the next snapshot and wait for the first probe results of
//! its new servers, and only then commit: swap the snapshot and the token,
//! start accepting on the new listeners, close the removed ones. Because
//! the three share these steps, `check` cannot pass a config that a start
//! or a reload would refuse (binding aside: a port held by another process
//! is only found by binding it).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::config::{self, AdminState, Config, ConfigError, ConfigErrors};
use crate::control::token::{self, Token};
use crate::control::watch;
use crate::control::{cluster, resolve};
use crate::files::READ_TIMEOUT;
use crate::health::{self, TlsConfigs};
use crate::state::snapshot::{Owners, Resolved, Shared, Snapshot};
use crate::traffic::listener::{BindError, ListenerState, Listeners};
use crate::traffic::shutdown::Shutdown;
use crate::view::{self, Phase, PoolStatus, ReloadStatus, View};

/// The environment variable that overrides `workers`.
pub const WORKERS_ENV: &str = "UCP_LB_WORKERS";
/// The environment variable that overrides `stop_grace` (a systemd unit or
/// a compose file sets it beside the keepalived timing it must exceed).
pub const STOP_GRACE_ENV: &str = "UCP_LB_STOP_GRACE";

/// The environment variable that overrides `[admin] control_socket` (a
/// container's compose file or a second instance on one host sets it).
pub const CONTROL_SOCKET_ENV: &str = "UCP_LB_CONTROL_SOCKET";

/// The environment variable that makes only bulk bursts sharing the proxy
/// with another splice (`shared`; the default `bulk` splices every bulk
/// burst): a measurement switch for benches/l4.rs, which compares the two.
pub const SPLICE_ENV: &str = "UCP_LB_SPLICE";

/// A config and everything read with it, valid as a whole.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// The admin token, from `[admin] token_file`.
    pub token: Option<String>,
    pub tls: TlsConfigs,
    /// Worker threads: `UCP_LB_WORKERS`, else `workers`, else one per CPU.
    pub workers: Option<usize>,
    /// `UCP_LB_SPLICE=shared`.
    pub splice_shared_only: bool,
    /// The `[cluster] bundle`'s TLS config (its files read now, so a
    /// reload re-reads them: certificate rotation).
    pub cluster_tls: Option<Arc<rustls::ClientConfig>>,
}

impl Loaded {
    /// What is worth saying about a valid config (`check` prints these,
    /// start and reload log them).
    pub fn warnings(&self) -> &[ConfigError] {
        &self.config.warnings
    }
}

/// Reads and validates the config file at `path` and everything it names.
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    load_with(path, true)
}

/// What `check --offline` reads: the config file and the environment, but
/// not the files it names (token, CA files), which live on the node the
/// config is for.
pub fn load_offline(path: &Path) -> Result<Loaded, ConfigErrors> {
    load_with(path, false)
}

fn load_with(path: &Path, node_files: bool) -> Result<Loaded, ConfigErrors> {
    match config::load(path) {
        Ok(c) => complete_with(c, node_files),
        // The environment is wrong or right whatever the file says: one
        // run names both.
        Err(mut e) => {
            if let Err(env) = workers_from_env() {
                e.0.push(env);
            }
            Err(e)
        }
    }
}

/// A bad value of the environment variable `key`.
fn env_error(key: &str, message: String) -> ConfigError {
    ConfigError { source: "environment".into(), pos: None, key: key.into(), message }
}

/// `UCP_LB_WORKERS`, when set.
fn workers_from_env() -> Result<Option<usize>, ConfigError> {
    let Ok(v) = std::env::var(WORKERS_ENV) else { return Ok(None) };
    match v.trim().parse::<usize>() {
        Ok(n) if (1..=1024).contains(&n) => Ok(Some(n)),
        _ => Err(env_error(WORKERS_ENV, format!("expected a whole number from 1 to 1024, found \"{v}\""))),
    }
}

/// Reads what a parsed `config` names (token file, CA files) and the
/// environment, collecting every error.
pub fn complete(config: Config) -> Result<Loaded, ConfigErrors> {
    complete_with(config, true)
}

fn complete_with(mut config: Config, node_files: bool) -> Result<Loaded, ConfigErrors> {
    let mut errors = Vec::new();
    let mut token = None;
    let mut tls = TlsConfigs::new();
    let mut cluster_tls = None;
    if node_files {
        cluster_tls = bundle(&config).unwrap_or_else(|e| {
            errors.push(e);
            None
        });
        token = token::read(&config.admin, &config.source).unwrap_or_else(|e| {
            errors.push(e);
            None
        });
        if let Some(t) = token.as_ref().filter(|t| t.len() < token::SHORT) {
            config.warnings.push(ConfigError {
                source: config.source.clone(),
                pos: Some(config.admin.token_file_pos),
                key: "admin.token_file".into(),
                message: format!(
                    "the token is {} bytes: shorter than {} is easy to guess (e.g. `openssl rand -hex 32`)",
                    t.len(),
                    token::SHORT
                ),
            });
        }
        tls = health::tls_configs(&config).unwrap_or_else(|e| {
            errors.extend(e);
            TlsConfigs::new()
        });
        errors.extend(crate::wire::access_log::check_files(&config));
    }
    if let Ok(v) = std::env::var(STOP_GRACE_ENV) {
        match config::parse_duration(&v) {
            Ok(d) => config.stop_grace = d.unwrap_or_default(),
            Err(m) => errors.push(env_error(STOP_GRACE_ENV, m)),
        }
    }
    if let Ok(v) = std::env::var(CONTROL_SOCKET_ENV) {
        match config::ControlSocket::parse(&v) {
            Ok(c) => config.admin.control_socket = c,
            Err(m) => errors.push(env_error(CONTROL_SOCKET_ENV, m)),
        }
    }
    let workers = match workers_from_env() {
        Ok(w) => w.or(config.workers),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    let splice_shared_only = match std::env::var(SPLICE_ENV).as_deref() {
        Err(_) | Ok("" | "bulk") => false,
        Ok("shared") => true,
        Ok(v) => {
            errors.push(env_error(SPLICE_ENV, format!("expected \"bulk\" or \"shared\", found \"{v}\"")));
            false
        }
    };
    if errors.is_empty() {
        Ok(Loaded { config, token, tls, workers, splice_shared_only, cluster_tls })
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The `[cluster] bundle`, read into a TLS config; an error names the file.
fn bundle(config: &Config) -> Result<Option<Arc<rustls::ClientConfig>>, ConfigError> {
    let c = &config.cluster;
    let Some(dir) = c.bundle.as_ref().filter(|_| c.enabled()) else { return Ok(None) };
    crate::cluster::client::read_bundle(dir).map(Some).map_err(|message| ConfigError {
        source: config.source.clone(),
        pos: Some(c.bundle_pos),
        key: "cluster.bundle".into(),
        message,
    })
}

/// Resolves every server name of `loaded`.
pub async fn resolve(loaded: &Loaded) -> Result<Resolved, ConfigErrors> {
    resolve::resolve_all(&loaded.config).await
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    // transparent: `ucp-lb: {e:#}` prints the chain, and "{0}" with a
    // source would print the same message twice.
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("{file}: admin.listen: cannot listen on {addr}: {error}{}", crate::traffic::listener::bind_hint(*addr, error))]
    AdminBind { file: String, addr: SocketAddr, error: std::io::Error },
    #[error("admin.control_socket: cannot make {path}: {error}")]
    Control { path: String, error: std::io::Error },
    #[error("upgrade refused, the running process goes on untouched: {0}")]
    Upgrade(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("{0}")]
    Bind(#[from] BindError),
    #[error("the running config was not read from a file: nothing to reload")]
    NoFile,
}

/// What a process taking over (`ucp-lb --upgrade`) got from the one
/// before it: listening sockets, the admin socket, the servers' state.
#[derive(Default)]
pub struct Inherited {
    pub listeners: Vec<crate::traffic::listener::Inherited>,
    /// The admin socket, with the `[admin] listen` it was bound for.
    pub admin: Option<(SocketAddr, std::os::fd::OwnedFd)>,
    /// Puts the servers' state taken over into the first snapshot, before
    /// it takes any client.
    #[allow(clippy::type_complexity)]
    pub restore: Option<Box<dyn FnOnce(&Snapshot) + Send>>,
    /// The old process's config generation.
    pub generation: u64,
    /// The old process's node list and how its refreshes went: served
    /// before the first refresh here.
    pub cluster: Option<(Option<Vec<crate::cluster::Node>>, crate::cluster::Status)>,
    pub from_pid: u32,
}

/// This process: when it started, whom it took over from, and, while that
/// one drains, how many connections it still holds.
#[derive(Debug, Default)]
pub struct Process {
    pub started_at: u64,
    pub took_over_from: Option<u32>,
    /// The previous process is still draining into this one (a watch: this
    /// process, handing over in turn, waits for the end of it).
    pub previous_draining: tokio::sync::watch::Sender<bool>,
    /// Connections the previous process still holds, as it last said.
    pub previous_holds: std::sync::atomic::AtomicU64,
    /// Connections moved here from it.
    pub moved_in: std::sync::atomic::AtomicU64,
    /// Connections it could not move (cut at its deadline), as it said
    /// when done.
    pub previous_cut: std::sync::atomic::AtomicU64,
    /// The pid of the process this one is handing over to (0: none), until
    /// that one confirms the whole hand-over or it breaks off.
    pub handing_over_to: std::sync::atomic::AtomicU32,
    /// A stop signal came while a hand-over was in progress: should the
    /// hand-over break off, this process stops instead of serving again.
    pub stop_requested: AtomicBool,
    /// Hand-overs that broke off after `go`, this process going back.
    pub upgrades_resumed: std::sync::atomic::AtomicU64,
    /// Unix seconds of the last of them (0: never).
    pub last_resumed_at: std::sync::atomic::AtomicU64,
    /// Connections lost at those (moved to, or in flight to, the process
    /// that broke off).
    pub lost_in_resumed: std::sync::atomic::AtomicU64,
    /// Cancelled when the process this one took over from went back to
    /// serving (the hand-over broke off on this side: this process was
    /// stopped or too slow): this one stops accepting, finishes what it
    /// holds and exits.
    pub stand_down: tokio_util::sync::CancellationToken,
}

/// One running load balancer: its runtime state, its listeners, its
/// shutdown, the admin token, and what its reloads did.
pub struct Lb {
    pub shared: Arc<Shared>,
    pub listeners: Listeners,
    pub shutdown: Shutdown,
    pub token: Token,
    /// Set once the listeners accept after the first probes.
    ready: AtomicBool,
    reload: Mutex<ReloadStatus>,
    /// `[admin] listen` as the admin server was started with: it stays put.
    pub admin_listen: SocketAddr,
    /// The admin socket, kept to hand over to a successor.
    pub admin_fd: Mutex<Option<std::os::fd::OwnedFd>>,
    pub process: Process,
}

/// A started load balancer, as the binary and tests hold it.
pub struct Running {
    pub lb: Arc<Lb>,
    background: Vec<JoinHandle<()>>,
    admin_addr: Option<SocketAddr>,
}

fn log_warnings(loaded: &Loaded) {
    for w in loaded.warnings() {
        warn!("{w}");
    }
}

/// Resolves, binds, probes and starts accepting. Returns once every
/// listener is bound and accepting. `serve_admin` starts the admin server
/// on its bound socket as soon as there is something to serve (its
/// /healthz says 503 until the listeners accept).
pub async fn start<A>(loaded: Loaded, serve_admin: A) -> Result<Running, StartError>
where
    A: FnOnce(tokio::net::TcpListener, Arc<Lb>) -> JoinHandle<()>,
{
    start_with(loaded, Inherited::default(), serve_admin).await
}

/// As [`start`], for a process taking over: the listening sockets and the
/// admin socket of `inherited` are used where the config has them (the
/// rest is bound fresh), and the servers' state goes on from where the old
/// process left it.
pub async fn start_with<A>(loaded: Loaded, mut inherited: Inherited, serve_admin: A) -> Result<Running, StartError>
where
    A: FnOnce(tokio::net::TcpListener, Arc<Lb>) -> JoinHandle<()>,
{
    log_warnings(&loaded);
    let resolved = resolve(&loaded).await?;
    let Loaded { config, token, tls, splice_shared_only, cluster_tls, .. } = loaded;
    let listeners = Listeners::default();
    // Bind every listener before accepting on any, so a bad bind changes nothing.
    let bound = listeners.bind_new_from(&config, &mut inherited.listeners)?;
    let admin_listen = config.admin.listen;
    let admin_sock = match inherited.admin.take().filter(|(bind, _)| *bind == admin_listen) {
        Some((_, fd)) => crate::traffic::listener::from_fd(fd),
        None => tokio::net::TcpListener::bind(admin_listen).await,
    }
    .map_err(|error| StartError::AdminBind { file: config.source.clone(), addr: admin_listen, error })?;
    let admin_addr = admin_sock.local_addr().ok();
    let admin_fd = std::os::fd::AsFd::as_fd(&admin_sock).try_clone_to_owned().ok();
    let own = Owners::new(splice_shared_only);
    own.cluster.set_tls(cluster_tls);
    match inherited.cluster.take() {
        Some((nodes, status)) => own.cluster.restore(nodes, status),
        None => cluster::first_read(&own, &config.cluster).await,
    }
    let generation = inherited.generation + 1;
    let snapshot = Snapshot::build(generation, Arc::new(config), Arc::new(resolved), Arc::new(tls), None, &own);
    if let Some(restore) = inherited.restore.take() {
        restore(&snapshot);
    }
    let shared = Arc::new(Shared::new(snapshot, own));
    // The access logs are opened now: one that cannot be written shows
    // before the first client.
    shared.own.conns.access_log.configure(&shared.snapshot.load().config);
    let lb = Arc::new(Lb {
        shared: shared.clone(),
        listeners,
        shutdown: Shutdown::default(),
        token: Token::new(token),
        ready: AtomicBool::new(false),
        reload: Mutex::new(ReloadStatus { generation, ..Default::default() }),
        admin_listen,
        admin_fd: Mutex::new(admin_fd),
        process: Process {
            started_at: crate::events::history::now() as u64,
            took_over_from: (inherited.from_pid != 0).then_some(inherited.from_pid),
            ..Default::default()
        },
    });
    let mut background = vec![serve_admin(admin_sock, lb.clone())];
    first_results(&shared.snapshot.load()).await;
    lb.listeners.launch(bound, &shared, &lb.shutdown);
    lb.ready.store(true, Relaxed);
    background.push(tokio::spawn(watch::follow(shared.clone())));
    background.push(tokio::spawn(watch::sample_loop(shared.clone())));
    let writer = shared.clone();
    let apply = move |updates| apply_resolved(writer.clone(), updates);
    background.push(tokio::spawn(resolve::refresh_loop(shared.clone(), apply)));
    let writer = shared.clone();
    let apply = move |endpoint, nodes| apply_cluster(writer.clone(), endpoint, nodes);
    background.push(tokio::spawn(cluster::refresh_loop(shared.clone(), apply)));
    background.push(tokio::spawn(cluster::events_loop(shared.clone())));
    background.push(tokio::spawn(crate::metrics::upkeep_loop(shared.own.metrics.clone())));
    let conns = shared.own.conns.clone();
    background.push(tokio::spawn(async move { conns.sweep().await }));
    Ok(Running { lb, background, admin_addr })
}

/// Waits until every checked server of `snap` has its first result, or one
/// check `timeout` (the longest configured), whichever comes first: clients
/// are then only sent where a probe has said yes. Listeners are bound
/// already, so clients arriving meanwhile wait in the backlog.
async fn first_results(snap: &Snapshot) {
    let longest = snap.config.pools.iter().filter_map(|p| p.health.as_ref().map(|h| h.timeout)).max();
    let Some(longest) = longest else { return };
    let deadline = Instant::now() + longest + Duration::from_millis(100);
    for pool in &snap.pools {
        for s in &pool.servers {
            if let Some(c) = &s.check {
                let _ = crate::timer::timeout_at(deadline, c.first_result()).await;
            }
        }
    }
}

impl Lb {
    pub fn phase(&self) -> Phase {
        Phase {
            ready: self.ready.load(Relaxed),
            stopping: self.shutdown.stopping.is_cancelled(),
            shutting_down: self.shutdown.stop_accepting.is_cancelled(),
        }
    }

    pub fn reload_status(&self) -> ReloadStatus {
        self.reload.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops accepting for a successor that accepts on the same sockets
    /// now, keeping them (and the admin socket, which still answers here)
    /// until the successor confirms the whole hand-over.
    pub fn pause_accepting(&self) {
        self.listeners.pause();
    }

    /// Accepts again on the sockets kept: the hand-over broke off.
    pub fn resume_accepting(&self) -> usize {
        self.listeners.resume(&self.shared, &self.shutdown)
    }

    /// Takes the reload counters of the process this one took over from
    /// (its own generation stays).
    pub fn carry_reloads(&self, from: ReloadStatus) {
        let mut st = self.reload.lock().unwrap_or_else(|p| p.into_inner());
        let generation = st.generation;
        *st = ReloadStatus { generation, ..from };
    }

    /// Stops accepting on every listener and lets go of the copies of the
    /// listening sockets kept for a successor (for a shutdown, so new
    /// clients are refused; after a hand-over, so only the successor
    /// accepts).
    pub fn stop_accepting(&self) {
        self.listeners.stop_all();
        self.admin_fd.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// The status view now.
    pub fn view(&self) -> View {
        let snap = self.shared.snapshot.load_full();
        let mut view = view::view(
            &snap,
            &self.shared.own,
            &self.listeners.states(),
            &self.listeners.draining(),
            self.reload_status(),
            self.phase(),
        );
        let p = &self.process;
        let now = crate::events::history::now() as u64;
        view.cluster = view::cluster::status(&snap, &self.shared.own, now, p.started_at);
        view.process.started_at = p.started_at;
        view.process.took_over_from = p.took_over_from;
        view.process.previous_draining = *p.previous_draining.borrow();
        view.process.previous_holds = p.previous_holds.load(Relaxed);
        view.process.moved_in = p.moved_in.load(Relaxed);
        view.process.previous_cut = p.previous_cut.load(Relaxed);
        view.process.handing_over_to = Some(p.handing_over_to.load(Relaxed)).filter(|&pid| pid != 0);
        view.process.upgrades_resumed = p.upgrades_resumed.load(Relaxed);
        view.process.last_resumed_at = Some(p.last_resumed_at.load(Relaxed)).filter(|&t| t != 0);
        view.process.lost_in_resumed = p.lost_in_resumed.load(Relaxed);
        view
    }

    /// Overrides the state of a server until the process restarts; see
    /// [`Snapshot::set_override`].
    pub fn set_override(&self, pool: &str, server: &str, state: AdminState) -> Option<usize> {
        let n = self.shared.snapshot.load().set_override(pool, server, state);
        if n.is_some_and(|n| n > 0) {
            let what = match state {
                AdminState::Up => "enable",
                AdminState::Drain => "drain",
                AdminState::Down => "down",
            };
            let shown = crate::health::check::printable(server);
            self.shared.own.history.record(what, Some(pool), Some(&shown), "set over the admin API");
            self.shared.own.changes.notify();
        }
        n
    }

    /// Clears a server's override: it follows lb.toml (or the swarm, for a
    /// node) again; see [`Snapshot::follow`].
    pub fn follow(&self, pool: &str, server: &str) -> Option<usize> {
        let n = self.shared.snapshot.load().follow(pool, server);
        if n.is_some_and(|n| n > 0) {
            let shown = crate::health::check::printable(server);
            let text = "override cleared over the admin API: follows lb.toml or the swarm again";
            self.shared.own.history.record("follow", Some(pool), Some(&shown), text);
            self.shared.own.changes.notify();
        }
        n
    }

    /// The config file holds the running config's text again (a bad edit
    /// was reverted): the last reload's failure no longer describes the
    /// file, so it is cleared, and said once.
    pub fn file_matches_running(&self) {
        let mut st = self.reload.lock().unwrap_or_else(|p| p.into_inner());
        if st.last_ok == Some(false) {
            st.last_ok = Some(true);
            st.last_error = None;
            info!("the config file matches the running config again: the last reload failure is cleared");
        }
    }

    /// Reloads the config file the running config came from. Returns the new
    /// generation; on error nothing has changed.
    pub async fn reload(&self) -> Result<u64, ReloadError> {
        let result = match self.shared.snapshot.load().config.path.clone() {
            Some(path) => self.reload_from(path).await,
            None => Err(ReloadError::NoFile),
        };
        let mut st = self.reload.lock().unwrap_or_else(|p| p.into_inner());
        st.last_attempt = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).ok().map(|d| d.as_secs());
        let history = &self.shared.own.history;
        match &result {
            Ok(g) => {
                history.record("reload", None, None, format!("generation {g}"));
                st.generation = *g;
                st.successes += 1;
                st.last_ok = Some(true);
                st.last_error = None;
            }
            Err(e) => {
                let first = e.to_string().lines().next().unwrap_or("").to_owned();
                history.record("reload failed", None, None, crate::health::check::printable(&first));
                st.failures += 1;
                st.last_ok = Some(false);
                st.last_error = Some(e.to_string());
                error!(error = %e, "config reload rejected: the running config stays");
            }
        }
        result
    }

    async fn reload_from(&self, path: std::path::PathBuf) -> Result<u64, ReloadError> {
        let _writer = self.shared.writer.lock().await;
        // Files are read off the runtime's worker threads, and a file system
        // that stalls fails the reload after READ_TIMEOUT (the thread may
        // stay stuck; the runtime, traffic and signals do not).
        let source = path.display().to_string();
        let fail = |message: String| {
            ConfigErrors(vec![ConfigError { source: source.clone(), pos: None, key: String::new(), message }])
        };
        let loaded = match crate::timer::timeout(READ_TIMEOUT, tokio::task::spawn_blocking(move || load(&path))).await {
            Ok(Ok(loaded)) => loaded?,
            Ok(Err(e)) => return Err(fail(format!("reading the config failed: {e}")).into()),
            Err(_) => {
                return Err(fail(format!(
                    "reading the config and the files it names took longer than {}s (a stalled file system?)",
                    READ_TIMEOUT.as_secs()
                ))
                .into());
            }
        };
        log_warnings(&loaded);
        let resolved = resolve(&loaded).await?;
        let Loaded { config, token, tls, cluster_tls, .. } = loaded;
        let bound = self.listeners.bind_new_from(&config, &mut Vec::new())?;
        let cur = self.shared.snapshot.load_full();
        if config.admin.listen != self.admin_listen {
            warn!(
                running = %self.admin_listen,
                configured = %config.admin.listen,
                "[admin] listen changed: the admin endpoints keep their address until the next restart"
            );
        }
        let config = Arc::new(config);
        let next = Snapshot::build(
            cur.generation + 1,
            config.clone(),
            Arc::new(resolved),
            Arc::new(tls),
            Some(&cur),
            &self.shared.own,
        );
        // New servers are probed now; none gets a client before its first
        // result (or one check timeout).
        first_results(&next).await;

        // Commit: nothing below can fail.
        let generation = next.generation;
        let (servers_before, servers_after) = (server_count(&cur), server_count(&next));
        store(&self.shared, next);
        self.shared.own.cluster.set_tls(cluster_tls);
        // Files the new config no longer names are closed, the rest reopened.
        self.shared.own.conns.access_log.configure(&config);
        if self.token.replace(token) {
            match self.token.get() {
                Some(_) => info!("admin token replaced from token_file: POST endpoints take only the new one"),
                None => info!("admin token_file removed: POST endpoints are off"),
            }
        }
        self.shared.config_changed.notify_one();
        let added = bound.len();
        // Listeners kept from before take the new options too.
        self.listeners.set_options(&config);
        self.listeners.launch(bound, &self.shared, &self.shutdown);
        let removed = self.listeners.close_removed(&config).len();
        info!(
            generation,
            listeners_added = added,
            listeners_removed = removed,
            servers_before,
            servers_after,
            "config reloaded"
        );
        Ok(generation)
    }
}

/// Puts `next` in force and wakes the watcher. This module is the
/// snapshot's one writer: a start, a reload, a re-resolution.
fn store(shared: &Shared, next: Snapshot) {
    shared.snapshot.store(Arc::new(next));
    shared.own.changes.notify();
}

/// Applies new addresses for some names (the re-resolution loop's
/// answers), keeping everything else.
async fn apply_resolved(shared: Arc<Shared>, updates: resolve::Updates) {
    let _w = shared.writer.lock().await;
    let cur = shared.snapshot.load_full();
    let mut resolved = (*cur.resolved).clone();
    resolved.extend(updates);
    let next = Snapshot::build(
        cur.generation + 1,
        cur.config.clone(),
        Arc::new(resolved),
        cur.tls.clone(),
        Some(&cur),
        &shared.own,
    );
    store(&shared, next);
}

/// Puts a new node list from the swarm in force (the cluster loop's
/// answers): pools that take nodes change as a reload would change them.
async fn apply_cluster(shared: Arc<Shared>, endpoint: String, nodes: Vec<crate::cluster::Node>) {
    let _w = shared.writer.lock().await;
    let cur = shared.snapshot.load_full();
    let next = cluster::merge(&shared, &cur, endpoint, nodes);
    // Nodes that joined are probed now; none gets a client before its
    // first result (or one check timeout).
    first_results(&next).await;
    store(&shared, next);
}

fn server_count(s: &Snapshot) -> usize {
    s.pools.iter().map(|p| p.servers.len()).sum()
}

impl Running {
    /// The balancer's connections: their registry, stop request and the
    /// byte path's counters.
    pub fn conns(&self) -> &Arc<crate::wire::conns::Conns> {
        &self.lb.shared.own.conns
    }

    /// The addresses actually bound, in the order they were opened.
    pub fn listener_addrs(&self) -> Vec<SocketAddr> {
        self.lb.listeners.states().iter().map(|l| l.local).collect()
    }

    /// Where the admin server listens.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn listeners(&self) -> Vec<Arc<ListenerState>> {
        self.lb.listeners.states()
    }

    /// Every pool, as `/status` shows it.
    pub fn status(&self) -> Vec<PoolStatus> {
        self.lb.view().pools
    }

    /// How many distinct probes are running.
    pub fn probe_count(&self) -> usize {
        self.lb.shared.own.health.probe_count()
    }

    /// Keeps `task` running as long as this load balancer, and stops it
    /// with the rest at shutdown.
    pub fn adopt(&mut self, task: JoinHandle<()>) {
        self.background.push(task);
    }

    /// Reloads the config file; see [`Lb::reload`].
    pub async fn reload(&self) -> Result<u64, ReloadError> {
        self.lb.reload().await
    }

    pub fn reload_status(&self) -> ReloadStatus {
        self.lb.reload_status()
    }

    /// True once shutdown has begun (not ready for new clients).
    pub fn is_shutting_down(&self) -> bool {
        self.lb.phase().shutting_down
    }

    /// The stop grace: /healthz says "stopping" (503) at once while every
    /// listener still accepts, for `stop_grace`, so a keepalived pair moves
    /// the VIP before clients are refused. Returns at once when it is zero.
    pub async fn stop_grace(&self) {
        let grace = self.lb.shared.snapshot.load().config.stop_grace;
        self.lb.shutdown.stopping.cancel();
        if !grace.is_zero() {
            info!(grace_s = grace.as_secs_f64(), "stopping: /healthz answers 503, still accepting for the stop grace");
            crate::timer::sleep(grace).await;
        }
    }

    /// Stops the background tasks (probes' followers, re-resolution, the
    /// admin server) of a process that has handed over.
    pub fn stop_background(&self) {
        for task in &self.background {
            task.abort();
        }
    }

    /// Stops accepting and lets connections finish up to `shutdown_timeout`.
    /// Connections still open then are closed when the runtime is dropped
    /// (the binary returns from it right after).
    pub async fn shutdown(&self) {
        let grace = self.lb.shared.snapshot.load().config.defaults.shutdown_timeout;
        self.lb.stop_accepting();
        self.lb.shutdown.run(grace).await;
        for task in &self.background {
            task.abort();
        }
    }
}
