//! Logging set-up: text or one JSON object per line, filtered like `RUST_LOG`.

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Lines waiting for standard error at most; more are dropped.
const QUEUE: usize = 16_384;

/// Installs the global subscriber; `RUST_LOG` filters (default `info`).
/// Lines go to standard error through a thread of their own and a bounded
/// queue: standard error may be a pipe nobody reads (a supervisor gone
/// wrong, `ucp-lb ... | less` left waiting), and a write that blocks must
/// stall only that thread, never the runtime's workers and their traffic;
/// when the queue is full, lines are dropped. The guard flushes what is
/// queued (for at most a second) when the process ends: keep it until then.
pub fn init(format: LogFormat) -> anyhow::Result<tracing_appender::non_blocking::WorkerGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUE)
        .thread_name("ucp-lb-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))?;
    Ok(guard)
}

/// Says `text` (one or more lines) as an error: plain on stderr, its first
/// line prefixed with `ucp-lb: `, or through the JSON log, one object per
/// line, so a config error at start is as machine-readable as the log.
pub fn error(format: LogFormat, text: &str) {
    say(format, tracing::Level::ERROR, text, |i| if i == 0 { "ucp-lb: " } else { "" });
}

/// Says a check's errors: as they are (each line names file, line, column
/// and key), or as JSON log lines.
pub fn report(format: LogFormat, text: &str) {
    say(format, tracing::Level::ERROR, text, |_| "");
}

/// Says `text` as a warning: `warning: ...` lines, or JSON log lines.
pub fn warning(format: LogFormat, text: &str) {
    say(format, tracing::Level::WARN, text, |_| "warning: ");
}

fn say(format: LogFormat, level: tracing::Level, text: &str, prefix: impl Fn(usize) -> &'static str) {
    for (i, line) in text.lines().enumerate() {
        match (format, level) {
            (LogFormat::Text, _) => eprintln!("{}{line}", prefix(i)),
            (LogFormat::Json, tracing::Level::ERROR) => tracing::error!("{line}"),
            (LogFormat::Json, _) => tracing::warn!("{line}"),
        }
    }
}
