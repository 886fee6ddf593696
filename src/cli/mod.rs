//! The binary's side: the sub-commands `check`, `healthcheck`,
//! `convert-nginx` and `demo`, logging set-up, the healthcheck client and
//! the demo's stand-in managers. Only the binary uses these; the library
//! (`ucp_lb`) is what an embedder needs: config, start, the running
//! handle and the status view.

pub mod demo;
pub mod healthcheck;
pub mod logging;
pub mod standin;

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use ucp_lb::config::{self, Config, Retries, format_duration};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the config, print a summary, exit 1 on error.
    Check {
        /// Check away from the node the config is for: do not resolve
        /// server names, and do not read the token and CA files it names.
        #[arg(long)]
        offline: bool,
    },
    /// Ask a running ucp-lb's /healthz; exit 0 when it answers 200, else 1.
    /// For container HEALTHCHECKs and keepalived track scripts (no curl
    /// needed). Without --url the address is `[admin] listen` of --config
    /// (0.0.0.0 asked on 127.0.0.1), else 127.0.0.1:9900.
    Healthcheck {
        /// An http:// URL to ask instead, e.g. http://127.0.0.1:9900/healthz.
        #[arg(long)]
        url: Option<String>,
        /// Give up after this long (connect, send and answer).
        #[arg(long, default_value = "3s", value_parser = parse_timeout)]
        timeout: std::time::Duration,
    },
    /// Print the lb.toml equivalent of an nginx config's `stream {}` block;
    /// what cannot be carried over becomes a comment and a warning.
    ConvertNginx {
        /// The nginx config (nginx.conf); `include`s are followed.
        file: std::path::PathBuf,
    },
    /// A self-contained demo: stand-in managers on loopback and ucp-lb in
    /// front of them.
    Demo {
        /// Where the demo's load balancer listens.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
    },
}

/// Runs `cmd`; `config` is the `--config` path, if given.
pub fn run(cmd: Command, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match cmd {
        Command::Check { offline } => {
            let Some(path) = config else {
                anyhow::bail!("check needs --config FILE (or UCP_LB_CONFIG)");
            };
            Ok(rt.block_on(check(path, offline)))
        }
        Command::Healthcheck { url, timeout } => Ok(healthcheck(url.as_deref(), config, timeout)),
        Command::ConvertNginx { file } => Ok(convert_nginx(&file)),
        Command::Demo { listen } => {
            rt.block_on(demo::run(listen))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    config::parse_duration(s)?.ok_or_else(|| "a timeout is needed here, not none".to_owned())
}

fn healthcheck(url: Option<&str>, config: Option<&Path>, timeout: std::time::Duration) -> ExitCode {
    let url = match url {
        Some(u) => u.to_owned(),
        None => {
            // The default address only when no config is named at all: a
            // typo in a track script's path must fail it, not ask whatever
            // answers on the default port.
            let admin = match config {
                Some(path) => match config::load(path) {
                    Ok(c) => c.admin.listen,
                    Err(e) => {
                        eprintln!("{e}\nucp-lb healthcheck: cannot tell which admin address to ask: unhealthy");
                        return ExitCode::FAILURE;
                    }
                },
                None => config::AdminConfig::default().listen,
            };
            format!("http://{}/healthz", healthcheck::local_addr(admin))
        }
    };
    match healthcheck::get(&url, timeout) {
        Ok((200, body)) => {
            println!("{url}: 200 {}", body.trim());
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!("{url}: {status} {}", body.trim());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{url}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn convert_nginx(file: &Path) -> ExitCode {
    match ucp_lb::nginx::convert(file) {
        Ok(out) => {
            for w in &out.warnings {
                eprintln!("warning: {w}");
            }
            print!("{}", out.toml);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The start's own preparation, up to where it would bind: the same
/// errors and the same warnings as a start.
async fn check(path: &Path, offline: bool) -> ExitCode {
    let loaded = if offline { ucp_lb::lifecycle::load_offline(path) } else { ucp_lb::lifecycle::load(path) };
    let loaded = match loaded {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    for w in loaded.warnings() {
        eprintln!("warning: {w}");
    }
    let resolved = if offline {
        None
    } else {
        match ucp_lb::lifecycle::resolve(&loaded).await {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
    };
    print!("{}", summary(&loaded.config, resolved.as_ref()));
    ExitCode::SUCCESS
}

/// What `check` prints of a valid config.
pub fn summary(config: &Config, resolved: Option<&ucp_lb::snapshot::Resolved>) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "{}: ok", config.source);
    let _ = writeln!(s, "listeners:");
    for l in &config.listeners {
        let max = if l.max_connections == 0 { "no limit".to_owned() } else { l.max_connections.to_string() };
        let _ = writeln!(s, "  {} -> pool {} (max_connections: {max})", l.bind, l.pool);
    }
    let _ = writeln!(s, "pools:");
    for p in &config.pools {
        let st = &p.settings;
        let retries = match st.retries {
            Retries::Count(n) => n.to_string(),
            Retries::All => "all".into(),
        };
        let _ = writeln!(
            s,
            "  {}: balance {}, connect_timeout {}, idle_timeout {}, max_fails {}, fail_timeout {}, retries {}, all_down {}",
            p.name,
            st.balance.as_str(),
            format_duration(st.connect_timeout),
            st.idle_timeout.map_or("none".into(), format_duration),
            st.max_fails,
            format_duration(st.fail_timeout),
            retries,
            st.all_down.as_str(),
        );
        match &p.health {
            None => {
                let _ = writeln!(s, "    active check: none");
            }
            Some(h) => {
                let target = match h.kind {
                    config::CheckKind::Tcp => "tcp connect".to_owned(),
                    k => format!("{} GET {}", if k == config::CheckKind::Https { "https" } else { "http" }, h.path),
                };
                let port = h.port.map(|p| format!(" on port {p}")).unwrap_or_default();
                let _ = writeln!(
                    s,
                    "    active check: {target}{port} every {}, timeout {}, rise {}, fall {}{}",
                    format_duration(h.interval),
                    format_duration(h.timeout),
                    h.rise,
                    h.fall,
                    if h.ca_file.is_some() { ", certificate verified" } else { "" },
                );
            }
        }
        if !config.listeners.iter().any(|l| l.pool == p.name) {
            let _ = writeln!(s, "    (no listener uses this pool)");
        }
        for srv in &p.servers {
            let addrs = match resolved.and_then(|r| r.get(&srv.address)) {
                Some(a) => a.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "),
                None => "not resolved (--offline)".into(),
            };
            let mut flags = format!("weight {}", srv.weight);
            if srv.backup {
                flags.push_str(", backup");
            }
            if srv.max_conns > 0 {
                let _ = write!(flags, ", max_conns {}", srv.max_conns);
            }
            if srv.state != config::AdminState::Up {
                let _ = write!(flags, ", {}", srv.state.as_str());
            }
            let _ = writeln!(s, "    {} -> {addrs} ({flags})", srv.address);
        }
    }
    s
}
