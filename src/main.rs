#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
mod cli;

use cli::Command;
use cli::logging::LogFormat;

/// Layer-4 load balancer for Docker Enterprise UCP managers and DTR replicas.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The lb.toml to run (or to check).
    #[arg(long, global = true, env = "UCP_LB_CONFIG")]
    config: Option<PathBuf>,
    /// Log lines as text or as one JSON object each; filter with RUST_LOG.
    #[arg(long, global = true, value_enum, default_value_t)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ucp-lb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    cli::logging::init(cli.log_format)?;
    if let Some(cmd) = cli.command {
        return cli::run(cmd, cli.config.as_deref());
    }
    let Some(path) = cli.config else {
        anyhow::bail!("no config: pass --config FILE or set UCP_LB_CONFIG (try `ucp-lb demo`)");
    };
    // The same preparation `check` runs: every error of the file, the files
    // it names and the environment, at once.
    let loaded = ucp_lb::lifecycle::load(&path)?;
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = loaded.workers {
        rt.worker_threads(n);
    }
    let rt = rt.enable_all().build()?;
    let result = rt.block_on(ucp_lb::run(loaded, ucp_lb::shutdown::on_signals));
    // Drops every task, which closes the connections still open after the
    // grace period; a DNS lookup stuck in the blocking pool does not hold
    // the exit up.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result?;
    Ok(ExitCode::SUCCESS)
}
