#![forbid(unsafe_code)]
// Timers only through `ucp_lb::timer` (clippy.toml says why).
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use clap::{CommandFactory, Parser};
mod cli;

/// mimalloc instead of glibc's malloc: exact size classes for the
/// 128-byte-aligned blocks tokio gives every task and every socket
/// registration (glibc's memalign pads each), and a shorter path for the
/// few allocations a connection makes. Built with `no_thp`: mimalloc
/// otherwise asks for transparent huge pages on its arenas, and the
/// kernel's khugepaged then fills 2 MiB pages the balancer only partly
/// uses (7 MB of RSS at start, and a 2 MiB step some seconds after a
/// few thousand connections open, measured with 6,000 idle ones).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use cli::Command;
use cli::logging::LogFormat;

/// Layer-4 load balancer for Docker Enterprise UCP managers and DTR replicas.
#[derive(Debug, Parser)]
#[command(
    about,
    disable_version_flag = true,
    after_help = "Without a sub-command, ucp-lb runs the load balancer on the config named by \
                  --config/-c (or UCP_LB_CONFIG) until SIGTERM or SIGINT; SIGHUP reloads it. \
                  `ucp-lb -t -c FILE` tests a config as `ucp-lb check` does; `ucp-lb demo` needs no config."
)]
struct Cli {
    /// The lb.toml to run (or, with -t, to test); default: UCP_LB_CONFIG.
    #[arg(short = 'c', long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Take over from the ucp-lb running on the control socket
    /// (`[admin] control_socket`): its listening sockets, its state and
    /// then its open connections; it exits 0 once they have moved. An
    /// upgrade that fails leaves it untouched.
    #[arg(long)]
    upgrade: bool,
    /// Test the config and exit, as `ucp-lb check` (nginx's and HAProxy's -t).
    #[arg(short = 't')]
    test: bool,
    /// Print the version, commit, build date, compiler and target, and exit.
    #[arg(long = "version")]
    version: bool,
    /// Print the version and build facts in full, with the enabled features, and exit.
    #[arg(short = 'V')]
    version_long: bool,
    /// Print the manual page ucp-lb(1) in roff (docs/man/ucp-lb.1), and exit.
    #[arg(long, hide = true)]
    man: bool,
    /// Log lines as text or as one JSON object each; filter with RUST_LOG.
    #[arg(long, global = true, value_enum, default_value_t)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

fn main() -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        // nginx's `-s reload`: say what ucp-lb does instead, after clap's error.
        if e.kind() == clap::error::ErrorKind::UnknownArgument
            && let Some(hint) = cli::nginx_signal_hint(&std::env::args_os().collect::<Vec<_>>())
        {
            let _ = e.print();
            eprintln!("\n{hint}");
            std::process::exit(e.exit_code());
        }
        e.exit()
    });
    let format = cli.log_format;
    // The log's writer thread, flushed when this is dropped: after the
    // error below is said.
    let mut log = None;
    match run(cli, &mut log) {
        Ok(code) => code,
        Err(e) => {
            cli::logging::error(format, &format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, log: &mut Option<tracing_appender::non_blocking::WorkerGuard>) -> anyhow::Result<ExitCode> {
    if cli.version || cli.version_long {
        print!("{}", cli::version(cli.version_long));
        return Ok(ExitCode::SUCCESS);
    }
    if cli.man {
        print!("{}", cli::man::page(Cli::command())?);
        return Ok(ExitCode::SUCCESS);
    }
    *log = Some(cli::logging::init(cli.log_format)?);
    let command = match (cli.command, cli.test) {
        (Some(cmd), _) => cmd,
        (None, true) => Command::check(),
        (None, false) => {
            let path = cli::config_path(cli.config.as_deref())?;
            return serve(path, cli.upgrade);
        }
    };
    cli::run(command, cli.config.as_deref(), cli.log_format)
}

/// The signals caught before the runtime exists (while the config is read
/// and the runtime built): none of them may kill the process then.
struct Early {
    stop: Arc<AtomicBool>,
    hup: Arc<AtomicBool>,
    usr1: Arc<AtomicBool>,
}

impl Early {
    fn catch() -> anyhow::Result<Early> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
        let early = Early { stop: Arc::default(), hup: Arc::default(), usr1: Arc::default() };
        for (sig, flag) in [(SIGTERM, &early.stop), (SIGINT, &early.stop), (SIGHUP, &early.hup), (SIGUSR1, &early.usr1)]
        {
            signal_hook::flag::register(sig, flag.clone())?;
        }
        Ok(early)
    }
}

/// Runs the load balancer on the config at `path`.
fn serve(path: PathBuf, upgrade: bool) -> anyhow::Result<ExitCode> {
    // Before anything that can take time: a signal while the config is read
    // is kept, not fatal (the tokio handlers made in the runtime take over
    // from these flags, which stay and only set a boolean).
    let early = Early::catch()?;
    tracing::info!(path = %path.display(), "reading the config");
    // The same preparation `check` runs: every error of the file, the files
    // it names and the environment, at once.
    let loaded = ucp_lb::control::lifecycle::load(&path)?;
    if early.stop.load(Relaxed) {
        tracing::info!("stopped before the start (SIGTERM or SIGINT while the config was read)");
        return Ok(ExitCode::SUCCESS);
    }
    // One worker: a current-thread runtime on this thread. The
    // multi-thread scheduler's bookkeeping (a clock read and a `pow` for its
    // poll-time average each time the worker parks, the hand-offs between
    // the thread in block_on and the worker) has nothing to balance with
    // one worker and costs every connection and every request.
    //
    // The workers have no time driver: their timers are kept by a thread
    // of their own (`ucp_lb::timer`), so a worker's park is epoll alone.
    let timers = ucp_lb::timer::Driver::start()?;
    let mut rt = match loaded.workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = n {
                b.worker_threads(n);
            }
            b
        }
    };
    let on_start = timers.handle().clone();
    let rt = rt.enable_io().on_thread_start(move || ucp_lb::timer::Driver::install(&on_start)).build()?;
    // This thread runs the runtime's first task (and, with one worker, all).
    ucp_lb::timer::Driver::install(timers.handle());
    let begin = if upgrade { ucp_lb::Begin::Upgrade } else { ucp_lb::Begin::Start };
    let result = rt.block_on(async {
        // The runtime's handlers first; then what came before them.
        let mut signals = ucp_lb::control::reload::Signals::install();
        signals.reload_first = early.hup.swap(false, Relaxed);
        if early.usr1.swap(false, Relaxed) {
            tracing::info!("SIGUSR1 before the start: nothing to reopen yet");
        }
        if early.stop.load(Relaxed) {
            tracing::info!("stopped before the start (SIGTERM or SIGINT)");
            return Ok(None);
        }
        ucp_lb::run(loaded, ucp_lb::traffic::shutdown::on_signals, begin, Some(signals)).await
    });
    // Drops every task, which closes the connections still open after the
    // grace period; a DNS lookup stuck in the blocking pool does not hold
    // the exit up.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    // Only now: a timer its tasks still held would panic without its wheel.
    timers.stop();
    // The lines of the connections just closed (ended as `shutdown`).
    if let Some(ended) = result? {
        ended.access_log.flush(std::time::Duration::from_millis(500));
    }
    Ok(ExitCode::SUCCESS)
}
