//! What starts a reload: SIGHUP and a change of the config file (the
//! admin API's `POST /reload` is the third). The reload itself is
//! `lifecycle.rs`'s: every fallible step first, then one swap; a failure
//! changes nothing and is logged, counted and shown in `/status`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{info, warn};

use crate::control::lifecycle::Lb;

/// The process signals a balancer follows besides its stop signal:
/// SIGHUP reloads, SIGUSR1 reopens the access log. Made before anything
/// that can take time (the start, its first probes, a take-over): from
/// then on such a signal is never fatal, and one that arrives before the
/// balancer runs is kept and acted on once it does.
pub struct Signals {
    hup: Option<tokio::signal::unix::Signal>,
    usr1: Option<tokio::signal::unix::Signal>,
    /// A SIGHUP came before these streams existed (while the config was
    /// read): reload once the balancer runs.
    pub reload_first: bool,
}

impl Signals {
    /// Installs the handlers now (within a tokio runtime).
    pub fn install() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        let hup = signal(SignalKind::hangup())
            .inspect_err(|e| warn!(error = %e, "cannot listen for SIGHUP: reload by file change or POST /reload only"))
            .ok();
        let usr1 = signal(SignalKind::user_defined1())
            .inspect_err(|e| warn!(error = %e, "cannot listen for SIGUSR1: the access log is not reopened by it"))
            .ok();
        Signals { hup, usr1, reload_first: false }
    }

    /// Follows the signals for `lb` until shutdown (cancel by dropping):
    /// reloads on SIGHUP, reopens the access log on SIGUSR1.
    pub async fn follow(self, lb: Arc<Lb>) {
        let Signals { mut hup, mut usr1, reload_first } = self;
        if reload_first {
            info!("SIGHUP during the start: reloading the config now");
            let _ = lb.reload().await;
        }
        loop {
            tokio::select! {
                Some(()) = async { hup.as_mut()?.recv().await } => {
                    info!("SIGHUP: reloading the config");
                    let _ = lb.reload().await;
                }
                Some(()) = async { usr1.as_mut()?.recv().await } => {
                    info!("SIGUSR1: reopening the access log files");
                    lb.shared.own.conns.access_log.reopen();
                }
                else => return,
            }
        }
    }
}

/// What the watch found in the file: text (its CRC-32), or a refusal (the
/// CRC-32 of the reason), so the same bad file is tried once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Text(u32),
    Refused(u32),
}

/// Watches the config file's directory and reloads when the file's content
/// changes. The directory, not the file: editors replace files by rename and
/// Kubernetes swaps ConfigMap symlinks, and a watch on the old inode would
/// go quiet. Events are debounced; a half-written file is rejected like any
/// bad config and the next complete write is taken.
pub async fn watch_file(lb: Arc<Lb>, path: PathBuf) {
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
    let mut last_tried: Option<Seen> = None;
    let mut first = true;
    loop {
        if !first {
            kick.notified().await;
            // Debounce: let a burst of events (write, rename, chmod) settle.
            loop {
                tokio::select! {
                    _ = kick.notified() => continue,
                    _ = crate::timer::sleep(Duration::from_millis(200)) => break,
                }
            }
        }
        first = false;
        // Off the runtime's worker threads, bounded in size and time, and
        // never blocking on a FIFO (files.rs): a file system that stalls or
        // a hostile file must not stall traffic.
        let read = {
            let p = path.clone();
            let job = tokio::task::spawn_blocking(move || {
                // Mid-replace the file may be missing for a moment: wait for
                // the event that brings it back.
                std::fs::symlink_metadata(&p).ok()?;
                Some(crate::files::read(&p, "the config file", crate::files::CONFIG))
            });
            crate::timer::timeout(crate::files::READ_TIMEOUT, job).await
        };
        // Missing, or the reading thread failed: wait for the next event. A
        // read that timed out is left to the reload, which says so.
        let seen = match read {
            Ok(Ok(None)) | Ok(Err(_)) => continue,
            Ok(Ok(Some(Ok(text)))) => Seen::Text(crc32fast::hash(text.as_bytes())),
            Ok(Ok(Some(Err(why)))) => Seen::Refused(crc32fast::hash(why.as_bytes())),
            Err(_) => Seen::Refused(0),
        };
        if seen == Seen::Text(lb.shared.snapshot.load().config.fingerprint) {
            last_tried = None;
            // A bad edit reverted: file and running config agree again.
            lb.file_matches_running();
            continue;
        }
        // The same text (or the same refusal) that already failed to load.
        if last_tried == Some(seen) {
            continue;
        }
        last_tried = Some(seen);
        info!(file = %path.display(), "config file changed: reloading");
        let _ = lb.reload().await;
    }
}
