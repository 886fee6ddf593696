//! Hot reload: on SIGHUP, on a change of the config file, and on request.
//!
//! Every fallible step comes first — read, parse, validate, resolve, load CA
//! files, bind new listeners, build the snapshot and wait for the first
//! probes of new servers — and only then is the snapshot swapped and are
//! removed listeners closed. A failure at any step drops the new parts and
//! changes nothing; it is logged, counted and kept for the status. Open
//! connections are never cut: each keeps the snapshot it started with.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use serde::Serialize;
use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::config::{self, ConfigErrors};
use crate::listener::{BindError, Listeners};
use crate::shutdown::Shutdown;
use crate::snapshot::{Shared, Snapshot};

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("{0}")]
    Bind(#[from] BindError),
    #[error("the running config was not read from a file: nothing to reload")]
    NoFile,
}

/// The outcome of the last reload and the running totals, for `/status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadStatus {
    /// Generation of the running snapshot.
    pub generation: u64,
    pub successes: u64,
    pub failures: u64,
    /// Unix seconds of the last attempt, if any.
    pub last_attempt: Option<u64>,
    pub last_ok: Option<bool>,
    /// The error of the last attempt when it failed (file:line:col: key: ...).
    pub last_error: Option<String>,
}

/// What a running load balancer needs to change itself.
pub struct Control {
    pub shared: Arc<Shared>,
    pub shutdown: Shutdown,
    pub listeners: Listeners,
    status: Mutex<ReloadStatus>,
    /// Set once the listeners accept after the first probes.
    ready: std::sync::atomic::AtomicBool,
    /// `[admin] listen` as the admin server was started with: it stays put.
    admin_listen: SocketAddr,
    /// The first line of `[admin] token_file`, re-read by every reload.
    admin_token: ArcSwapOption<String>,
}

impl Control {
    pub fn new(
        shared: Arc<Shared>,
        shutdown: Shutdown,
        listeners: Listeners,
        admin_listen: SocketAddr,
        admin_token: Option<String>,
    ) -> Control {
        let generation = shared.snapshot.load().generation;
        Control {
            shared,
            shutdown,
            listeners,
            status: Mutex::new(ReloadStatus { generation, ..Default::default() }),
            ready: Default::default(),
            admin_listen,
            admin_token: ArcSwapOption::new(admin_token.map(Arc::new)),
        }
    }

    /// The token the admin POST endpoints take now, if any.
    pub fn admin_token(&self) -> Option<Arc<String>> {
        self.admin_token.load_full()
    }

    /// Puts the token of a reloaded config in force, and says so (never
    /// what it is).
    fn set_admin_token(&self, token: Option<String>) {
        let new = token.map(Arc::new);
        let old = self.admin_token.swap(new.clone());
        if old != new {
            match &new {
                Some(_) => info!("admin token replaced from token_file: POST endpoints take only the new one"),
                None => info!("admin token_file removed: POST endpoints are off"),
            }
        }
        if new.is_none() {
            crate::admin::warn_if_open_without_token(self.admin_listen);
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_ready(&self) {
        self.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Overrides the state of `server` (its configured name or one of its
    /// addresses) in `pool` until the process restarts: 1 up, 2 drain,
    /// 3 down. Returns how many addresses it applied to.
    pub fn set_override(&self, pool: &str, server: &str, state: u8) -> usize {
        let snap = self.shared.snapshot.load();
        let Some(p) = snap.pool(pool) else { return 0 };
        let mut n = 0;
        for s in &p.servers {
            if &*s.name == server || s.addr.to_string() == server {
                s.state.override_state.store(state, std::sync::atomic::Ordering::Relaxed);
                n += 1;
            }
        }
        n
    }

    pub fn reload_status(&self) -> ReloadStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reloads the config file the running config came from. Returns the new
    /// generation; on error nothing has changed.
    pub async fn reload(&self) -> Result<u64, ReloadError> {
        let path = self.shared.snapshot.load().config.path.clone().ok_or(ReloadError::NoFile)?;
        let result = self.reload_from(&path).await;
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        st.last_attempt = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).ok().map(|d| d.as_secs());
        match &result {
            Ok(g) => {
                st.generation = *g;
                st.successes += 1;
                st.last_ok = Some(true);
                st.last_error = None;
            }
            Err(e) => {
                st.failures += 1;
                st.last_ok = Some(false);
                st.last_error = Some(e.to_string());
                error!(error = %e, "config reload rejected: the running config stays");
            }
        }
        result
    }

    async fn reload_from(&self, path: &Path) -> Result<u64, ReloadError> {
        let _writer = self.shared.writer.lock().await;
        let config = config::load(path)?;
        // Read with the config and rejected with it: an unreadable, empty or
        // world-writable token file changes nothing that is running.
        let token = crate::admin::read_token(&config.admin, &config.source)?;
        let resolved = crate::resolve::resolve_all(&config).await?;
        self.shared.health.prepare(&config)?;
        let bound = self.listeners.bind_new(&config)?;
        let cur = self.shared.snapshot.load_full();
        if config.admin.listen != self.admin_listen {
            warn!(
                running = %self.admin_listen,
                configured = %config.admin.listen,
                "[admin] listen changed: the admin endpoints keep their address until the next restart"
            );
        }
        let config = Arc::new(config);
        let next =
            Snapshot::build(cur.generation + 1, config.clone(), Arc::new(resolved), Some(&cur), &self.shared.health);
        // New servers are probed now; none gets a client before its first
        // result (or one check timeout).
        crate::first_results(&next).await;
        let generation = next.generation;
        let (servers_before, servers_after) = (server_count(&cur), server_count(&next));
        self.shared.snapshot.store(Arc::new(next));
        self.set_admin_token(token);
        self.shared.config_changed.notify_one();
        let added = bound.len();
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

fn server_count(s: &Snapshot) -> usize {
    s.pools.iter().map(|p| p.servers.len()).sum()
}

/// Reloads on every SIGHUP until shutdown.
pub async fn on_sighup(control: Arc<Control>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            warn!("cannot listen for SIGHUP: reload by file change only");
            return;
        };
        while hup.recv().await.is_some() {
            info!("SIGHUP: reloading the config");
            let _ = control.reload().await;
        }
    }
}

/// Watches the config file's directory and reloads when the file's content
/// changes. The directory, not the file: editors replace files by rename and
/// Kubernetes swaps ConfigMap symlinks, and a watch on the old inode would
/// go quiet. Events are debounced; a half-written file is rejected like any
/// bad config and the next complete write is taken.
pub async fn watch_file(control: Arc<Control>, path: PathBuf) {
    use notify::{RecursiveMode, Watcher};
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let kick = Arc::new(Notify::new());
    let k = kick.clone();
    let name = path.file_name().map(|n| n.to_os_string());
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        // Reads (ours included) change nothing.
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return;
        }
        // The file itself, or Kubernetes' `..data` symlink swap beside it.
        let relevant = event.paths.is_empty()
            || event.paths.iter().any(|p| {
                let f = p.file_name();
                f.is_some_and(|f| Some(f) == name.as_deref() || f.to_string_lossy().starts_with(".."))
            });
        if relevant {
            k.notify_one();
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            warn!(error = %e, "cannot watch the config file: reload by SIGHUP only");
            return;
        }
    };
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        warn!(dir = %dir.display(), error = %e, "cannot watch the config directory: reload by SIGHUP only");
        return;
    }
    // Compared with the text the running config came from (its CRC-32), not
    // with what this task first read: a change made between the start (or
    // a reload) and the watch being set up is not missed. The first pass
    // checks at once, for that reason.
    let mut last_tried: Option<u32> = None;
    let mut first = true;
    loop {
        if !first {
            kick.notified().await;
            // Debounce: let a burst of events (write, rename, chmod) settle.
            loop {
                tokio::select! {
                    _ = kick.notified() => continue,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => break,
                }
            }
        }
        first = false;
        // Mid-replace the file may be missing for a moment: wait for the
        // event that brings it back.
        let Ok(now) = std::fs::read(&path) else { continue };
        let crc = crc32fast::hash(&now);
        if crc == control.shared.snapshot.load().config.fingerprint {
            last_tried = None;
            continue;
        }
        // The same text that already failed to load.
        if last_tried == Some(crc) {
            continue;
        }
        last_tried = Some(crc);
        info!(file = %path.display(), "config file changed: reloading");
        let _ = control.reload().await;
    }
}
