//! The binary's side: the sub-commands `check`, `healthcheck`,
//! `convert-nginx` and `demo`, logging set-up, the healthcheck client and
//! the demo's stand-in managers. Only the binary uses these; the library
//! (`ucp_lb`) is what an embedder needs: config, start, the running
//! handle and the status view.

pub mod demo;
mod effective;
pub mod healthcheck;
pub mod logging;
pub mod man;
pub mod standin;
pub mod swarm;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use ucp_lb::config::{self, Config, Retries, format_duration};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the config as a start would, short of binding; print a
    /// summary (or, with --print, every key in force); exit 1 on error.
    Check {
        /// The lb.toml to check (also --config/-c, or UCP_LB_CONFIG).
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
        /// The lb.toml to check.
        #[arg(short = 'c', long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Check away from the node the config is for: do not resolve
        /// server names, and do not read the token and CA files it names.
        #[arg(long)]
        offline: bool,
        /// Print the effective config: every key with the value in force
        /// and where it came from (default, [defaults], the pool).
        #[arg(long)]
        print: bool,
    },
    /// Ask a running ucp-lb's /healthz; exit 0 when it answers 200, else 1.
    /// For container HEALTHCHECKs and keepalived track scripts (no curl
    /// needed). Without --url the address is `[admin] listen` of the config
    /// (0.0.0.0 asked on 127.0.0.1); with no config named, 127.0.0.1:9900.
    Healthcheck {
        /// The lb.toml whose `[admin] listen` to ask (also UCP_LB_CONFIG).
        #[arg(short = 'c', long, value_name = "FILE")]
        config: Option<PathBuf>,
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
        file: PathBuf,
    },
    /// A self-contained demo: stand-in managers on loopback and ucp-lb in
    /// front of them. Needs no config.
    Demo {
        /// Where the demo's load balancer listens.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
    },
}

impl Command {
    /// `check` with nothing but the config (what `-t` means).
    pub fn check() -> Command {
        Command::Check { file: None, config: None, offline: false, print: false }
    }
}

/// The config to use: the one named on the command line, else
/// `UCP_LB_CONFIG`; an empty variable is an error of its own.
pub fn config_path(named: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = named {
        return Ok(p.to_path_buf());
    }
    match std::env::var_os("UCP_LB_CONFIG") {
        Some(v) if v.is_empty() => {
            anyhow::bail!("UCP_LB_CONFIG is set but empty: set it to the lb.toml to use, or pass --config FILE")
        }
        Some(v) => Ok(PathBuf::from(v)),
        None => anyhow::bail!("no config: pass --config FILE (-c FILE) or set UCP_LB_CONFIG (try `ucp-lb demo`)"),
    }
}

/// What to do instead of nginx's `-s SIGNAL` (which ucp-lb has not), for
/// the error clap gives on the unknown `-s`: the signal to send, or the
/// admin API's `POST /reload`.
pub fn nginx_signal_hint(args: &[std::ffi::OsString]) -> Option<String> {
    let at = args.iter().position(|a| a == "-s" || a.to_str().is_some_and(|a| a.starts_with("-s")))?;
    let named = args[at].to_str().and_then(|a| a.strip_prefix("-s")).filter(|s| !s.is_empty());
    let signal = named.or_else(|| args.get(at + 1).and_then(|a| a.to_str())).unwrap_or("");
    let what = match signal {
        "reload" => {
            "to reload, send SIGHUP: `kill -HUP $(pidof ucp-lb)` or `systemctl reload ucp-lb`; \
             or POST /reload on the admin port with the token: \
             `curl -X POST -H \"Authorization: Bearer $(cat TOKEN_FILE)\" http://127.0.0.1:9900/reload`"
        }
        "stop" | "quit" => {
            "to stop (gracefully: open connections may finish), send SIGTERM: \
             `kill -TERM $(pidof ucp-lb)` or `systemctl stop ucp-lb`"
        }
        "reopen" => "to reopen the access log files, send SIGUSR1: `kill -USR1 $(pidof ucp-lb)`",
        _ => "ucp-lb takes signals instead: SIGHUP reloads, SIGTERM stops, SIGUSR1 reopens the access logs",
    };
    Some(format!("tip: ucp-lb has no -s (nginx's way of signalling itself); {what}"))
}

/// `--version` (one line) or `-V` (every build fact and the features).
pub fn version(long: bool) -> String {
    let b = ucp_lb::build_info::BUILD;
    if !long {
        return format!("{}\n", b.line());
    }
    let mut features = Vec::new();
    if cfg!(feature = "cli") {
        features.push("cli");
    }
    format!(
        "ucp-lb {}\ncommit: {}\nbuilt: {} ({} profile)\ncompiler: {}\ntarget: {}\nfeatures: {}\n\
         TLS for probes: rustls with the ring provider (TLS 1.2, 1.3)\n",
        b.version,
        b.commit,
        b.date,
        b.profile,
        b.rustc,
        b.target,
        if features.is_empty() { "none".into() } else { features.join(", ") },
    )
}

/// Runs `cmd`; `top` is the `--config` given before the sub-command.
pub fn run(cmd: Command, top: Option<&Path>, format: logging::LogFormat) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Check { file, config, offline, print } => {
            let path = config_path(config.as_deref().or(file.as_deref()).or(top))?;
            Ok(runtime()?.block_on(check(&path, offline, print, format)))
        }
        Command::Healthcheck { config, url, timeout } => {
            // Named on the command line or in UCP_LB_CONFIG; an empty
            // variable is as good as none for this one question.
            let named = config
                .or_else(|| top.map(Path::to_path_buf))
                .or_else(|| std::env::var_os("UCP_LB_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from));
            Ok(healthcheck(url.as_deref(), named.as_deref(), timeout))
        }
        Command::ConvertNginx { file } => Ok(convert_nginx(&file)),
        Command::Demo { listen } => {
            let rt = runtime()?;
            let result = rt.block_on(demo::run(listen));
            // The demo's keyboard reader sits in a blocking read of stdin,
            // which a runtime's drop would wait for: leave it behind.
            rt.shutdown_background();
            result?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
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
                // The file alone (as `check --offline` reads it, without
                // even the environment's overrides): no DNS, no token or
                // CA file, which keepalived's script user may not read.
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
            // A listener not carried first: the config printed is missing it.
            for l in &out.lost_listeners {
                eprintln!("error: {l}");
            }
            for w in &out.warnings {
                eprintln!("warning: {w}");
            }
            for n in &out.notes {
                eprintln!("note: {n}");
            }
            print!("{}", out.toml);
            if out.lost_listeners.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The start's own preparation, up to where it would bind: the same
/// errors and the same warnings as a start.
async fn check(path: &Path, offline: bool, print: bool, format: logging::LogFormat) -> ExitCode {
    let loaded =
        if offline { ucp_lb::control::lifecycle::load_offline(path) } else { ucp_lb::control::lifecycle::load(path) };
    let loaded = match loaded {
        Ok(l) => l,
        Err(e) => {
            logging::report(format, &e.to_string());
            return ExitCode::FAILURE;
        }
    };
    for w in loaded.warnings() {
        logging::warning(format, &w.to_string());
    }
    let resolved = if offline {
        None
    } else {
        match ucp_lb::control::lifecycle::resolve(&loaded).await {
            Ok(r) => Some(r),
            Err(e) => {
                logging::report(format, &e.to_string());
                return ExitCode::FAILURE;
            }
        }
    };
    let swarm = if offline { None } else { read_swarm(&loaded, format).await };
    if print {
        print!("{}", effective::dump(&loaded.config));
    } else {
        print!("{}", summary(&loaded.config, resolved.as_ref()));
        if let Some(s) = swarm {
            println!("{s}");
        }
    }
    ExitCode::SUCCESS
}

/// Reads the swarm once, as a start would: a failure is a warning (the
/// balancer starts with its static servers and keeps trying), a success
/// a line of the summary.
async fn read_swarm(loaded: &ucp_lb::control::lifecycle::Loaded, format: logging::LogFormat) -> Option<String> {
    let c = &loaded.config.cluster;
    let tls = loaded.cluster_tls.as_ref().filter(|_| c.enabled())?;
    match ucp_lb::cluster::client::fetch(&c.api, tls).await {
        Ok((endpoint, (nodes, skipped))) => {
            let src = &loaded.config.source;
            for s in &skipped {
                logging::warning(format, &format!("{src}: cluster: node {} left out: {}", s.name, s.why));
            }
            // A pool of nodes only that the swarm gives no node would have
            // no server: every client refused.
            for p in loaded.config.pools.iter().filter(|p| p.servers.is_empty() && p.nodes.is_some()) {
                if ucp_lb::cluster::select::servers(p, &nodes, &Default::default()).is_empty() {
                    let w = format!(
                        "{src}: pool.{}: nodes: the swarm gives this pool no node and it has no servers: its clients would be closed at once",
                        p.name
                    );
                    logging::warning(format, &w);
                }
            }
            let managers = nodes.iter().filter(|n| n.role == ucp_lb::cluster::nodes::NodeRole::Manager).count();
            Some(format!("cluster: {} nodes ({managers} managers) read from {endpoint}", nodes.len()))
        }
        Err(f) => {
            let w = format!(
                "{}: cluster.api: cannot read the node list ({}): {}; ucp-lb would start with the static servers and keep trying",
                loaded.config.source,
                f.reason.as_str(),
                f.message
            );
            logging::warning(format, &w);
            None
        }
    }
}

/// What `check` prints of a valid config.
pub fn summary(config: &Config, resolved: Option<&ucp_lb::state::snapshot::Resolved>) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "{}: ok", config.source);
    let a = &config.admin;
    let token = match &a.token_file {
        Some(t) => format!("token from {} (POST endpoints on)", t.display()),
        None => "no token_file (POST endpoints off)".into(),
    };
    let reads = if a.status_needs_token { "status needs the token" } else { "status open to all who reach it" };
    let control = match a.control_socket.path() {
        Some(p) => format!("control socket {} (for ucp-lb --upgrade)", p.display()),
        None => "no control socket (no upgrade in place)".into(),
    };
    let _ = writeln!(s, "admin: {}, {token}, {reads}, {control}", a.listen);
    let _ = writeln!(s, "listeners:");
    for l in &config.listeners {
        summary_listener(&mut s, l);
    }
    let _ = writeln!(s, "pools:");
    for p in &config.pools {
        summary_pool(&mut s, p);
        if let Some(h) = &p.health {
            summary_check(&mut s, h);
        } else {
            let _ = writeln!(s, "    active check: none");
        }
        if !config.listeners.iter().any(|l| l.pool.as_ref() == Some(&p.name) || l.routes.iter().any(|r| r.1 == p.name))
        {
            let _ = writeln!(s, "    (no listener uses this pool)");
        }
        summary_servers(&mut s, p, resolved);
    }
    s
}

/// A listener: where its clients go, who may connect, its limits.
fn summary_listener(s: &mut String, l: &config::ListenerConfig) {
    use std::fmt::Write;
    let max = if l.max_connections == 0 { "no limit".to_owned() } else { l.max_connections.to_string() };
    let pool = match &l.pool {
        Some(p) => format!("pool {p}"),
        None => "no pool".to_owned(),
    };
    if l.routes.is_empty() {
        let _ = writeln!(s, "  {} -> {pool} (max_connections: {max})", l.bind);
    } else {
        let _ = writeln!(
            s,
            "  {} -> routed by TLS server name, else {pool} (max_connections: {max}, preread_timeout {})",
            l.bind,
            ucp_lb::config::format_duration(l.preread_timeout)
        );
        for (name, p) in &l.routes {
            let _ = writeln!(s, "    {name} -> pool {p}");
        }
    }
    if !l.access.is_empty() {
        let rules: Vec<String> = l.access.iter().map(ToString::to_string).collect();
        let _ = writeln!(s, "    access: {} ({})", rules.join(", "), access_words(&l.access));
    }
    let _ = writeln!(s, "    client keepalive: {}", config::Keepalive::words(l.client_keepalive.as_ref()));
    if let Some(pp) = &l.proxy_protocol {
        let trust: Vec<String> = pp.real_ip_from.iter().map(ToString::to_string).collect();
        let believed = if trust.is_empty() {
            "no source trusted".to_owned()
        } else {
            format!("address believed from {}", trust.join(", "))
        };
        let timeout = ucp_lb::config::format_duration(pp.timeout);
        let _ = writeln!(
            s,
            "    PROXY protocol header required ({believed}; within {timeout}, at most {} bytes)",
            pp.max_header
        );
    }
    if l.per_client.any() {
        let limit = |n: u32, unit: &str| if n == 0 { "no limit".to_owned() } else { format!("{n}{unit}") };
        let _ = writeln!(
            s,
            "    per client address: max_connections_per_client {}, max_connection_rate_per_client {}",
            limit(l.per_client.open, ""),
            limit(l.per_client.rate, "/s")
        );
    }
}

/// What a listener's access rules do with a client, in words: the first
/// rule that matches decides; after a rule for `all`, no client is left
/// unmatched.
fn access_words(rules: &[config::Rule]) -> &'static str {
    match rules.iter().find(|r| r.net.is_none()) {
        Some(r) if r.allow => "the first rule that matches decides; every other client is let in",
        Some(_) => "the first rule that matches decides; every other client is refused",
        None => "the first rule that matches decides; a client no rule matches is let in",
    }
}

/// A server as people know it: `name (address)`, or the address alone.
fn server_words(srv: &config::ServerConfig) -> String {
    match &srv.name {
        Some(n) => format!("{n} ({})", srv.address),
        None => srv.address.to_string(),
    }
}

/// A pool's settings, and the servers with a slow_start of their own.
fn summary_pool(s: &mut String, p: &config::PoolConfig) {
    use std::fmt::Write;
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
    let slow = match st.slow_start.is_zero() {
        true => "none".to_owned(),
        false => format!("{} (from 10 % of the weight)", format_duration(st.slow_start)),
    };
    let down = match st.on_server_down {
        config::OnServerDown::Keep => "keep its sessions".to_owned(),
        config::OnServerDown::Close => format!("close its sessions over {}", format_duration(st.close_spread)),
    };
    let _ = writeln!(
        s,
        "    after a failure: slow_start {slow}; a server going down: {down}; server keepalive: {}{}",
        config::Keepalive::words(st.server_keepalive.as_ref()),
        st.send_proxy_protocol.map(|v| format!("; a PROXY {} header to servers", v.as_str())).unwrap_or_default(),
    );
    for (srv, d) in p.servers.iter().filter_map(|srv| Some((srv, srv.slow_start?))) {
        let _ = writeln!(s, "    {}: slow_start {}", server_words(srv), format_duration(d));
    }
}

/// A pool's active check: what it asks, how often, what passes.
fn summary_check(s: &mut String, h: &config::HealthConfig) {
    use std::fmt::Write;
    let target = match h.kind {
        config::CheckKind::Tcp => "tcp connect".to_owned(),
        k => format!("{} GET {}", if k == config::CheckKind::Https { "https" } else { "http" }, h.path),
    };
    let port = h.port.map(|p| format!(" on port {p}")).unwrap_or_default();
    let mut expect: Vec<String> = h
        .expect_status
        .iter()
        .map(|m| match m {
            config::StatusMatch::Code(c) => c.to_string(),
            config::StatusMatch::Class(c) => format!("{c}xx"),
        })
        .collect();
    expect = vec![format!("status {}", expect.join("/"))];
    if let Some(b) = &h.expect_body {
        expect.push(format!("body containing {b:?}"));
    }
    for (k, v) in &h.expect_json {
        expect.push(format!("JSON {k} = {v}"));
    }
    let mut tls = Vec::new();
    if let Some(sni) = &h.sni {
        tls.push(format!("sni {sni}"));
    }
    if let Some(host) = &h.host {
        tls.push(format!("Host {host}"));
    }
    if h.kind == config::CheckKind::Https {
        tls.push(match &h.ca_file {
            Some(f) => format!("certificate verified against {}", f.display()),
            None => "certificate not verified".into(),
        });
    }
    if let Some(c) = &h.client_cert {
        tls.push(format!("presents client certificate {}", c.cert.display()));
    }
    let _ = writeln!(
        s,
        "    active check: {target}{port} every {}, timeout {}, rise {}, fall {}",
        format_duration(h.interval),
        format_duration(h.timeout),
        h.rise,
        h.fall,
    );
    if h.kind != config::CheckKind::Tcp {
        let _ = writeln!(s, "      expects {}", expect.join(", "));
    }
    if !tls.is_empty() {
        let _ = writeln!(s, "      {}", tls.join(", "));
    }
}

/// A pool's servers: the addresses each resolved to, and its flags.
fn summary_servers(s: &mut String, p: &config::PoolConfig, resolved: Option<&ucp_lb::state::snapshot::Resolved>) {
    use std::fmt::Write;
    if let Some(n) = &p.nodes {
        let _ = writeln!(s, "    and the swarm's nodes {n} (from [cluster])");
    }
    for srv in &p.servers {
        // An IP address needs no resolving, --offline or not.
        let literal =
            srv.address.host.parse::<std::net::IpAddr>().ok().map(|ip| vec![SocketAddr::new(ip, srv.address.port)]);
        let addrs = match resolved.and_then(|r| r.get(&srv.address)).or(literal.as_ref()) {
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
        match &p.prefer {
            Some(z) if z.matches(&srv.labels) => flags.push_str(", preferred"),
            Some(z) => {
                let _ = write!(flags, ", backup: not {}={}", z.label, z.value);
            }
            None => {}
        }
        let _ = writeln!(s, "    {} -> {addrs} ({flags})", server_words(srv));
    }
}
