//! `ucp-lb demo`: three stand-in UCP managers and a stopped fourth on
//! loopback, ucp-lb in front of them on an embedded config with active
//! `/_ping` checks, and a short scene: clients spread over the managers, the
//! stopped one is ejected, one manager's UCP breaks (its `/_ping` answers
//! 500 while TCP and TLS stay up) and traffic moves away, then back. Then
//! the user can break and mend managers by typing their number. The pool
//! also follows a stand-in swarm (`swarm.rs`, read with a client bundle
//! made at start): manager-05 joins it and takes clients, then is drained
//! in the swarm and takes none. Needs nothing installed.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use ucp_lb::Running;

use super::standin::{Manager, TestCa, https_get};
use super::swarm::{StandNode, SwarmApi, write_bundle};

/// The embedded lb.toml; `{listen}` and `{servers}` are filled in at start.
const DEMO_TOML: &str = r#"
[defaults]
connect_timeout = "1s"
max_fails = 2
fail_timeout = "10s"
retries = 2

[admin]
listen = "127.0.0.1:0"

[[listener]]
bind = "{listen}"
pool = "ucp"

[cluster]
api = ["{api}"]
bundle = "{bundle}"
refresh = "500ms"

[pool.ucp]
servers = [{servers}]
nodes = { role = "manager", port = {port} }

[pool.ucp.health]
kind = "https"
path = "/_ping"
interval = "500ms"
timeout = "400ms"
rise = 2
fall = 2
"#;

pub async fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let ca = TestCa::new("ucp-lb demo CA").context("cannot make the demo CA")?;
    let loopback: SocketAddr = "127.0.0.1:0".parse()?;
    let mut managers = Vec::new();
    for i in 1..=3 {
        managers.push(Manager::start(&format!("manager-0{i}"), loopback, &ca).await?);
    }
    // A fourth manager that is down: its port refuses connections.
    let stopped = TcpListener::bind(loopback).await?.local_addr()?;

    // Named as the managers are, so the page and /status say manager-02,
    // not a loopback port.
    let servers: Vec<String> = managers
        .iter()
        .map(|m| (m.name.as_str(), m.addr))
        .chain([("manager-04", stopped)])
        .map(|(name, addr)| format!("{{ address = \"{addr}\", name = \"{name}\" }}"))
        .collect();
    // The swarm: a worker only, until manager-05 joins.
    let joining = Manager::start("manager-05", loopback, &ca).await?;
    let worker = StandNode::worker("worker-01", "127.0.0.1");
    let api = SwarmApi::start(loopback, &ca, vec![worker.clone()]).await?;
    let bundle = std::env::temp_dir().join(format!("ucp-lb-demo-bundle-{}", std::process::id()));
    write_bundle(&bundle, &ca, "demo-admin").context("cannot write the demo's client bundle")?;
    let text = DEMO_TOML
        .replace("{listen}", &listen.to_string())
        .replace("{servers}", &servers.join(", "))
        .replace("{api}", &api.addr.to_string())
        .replace("{bundle}", &bundle.display().to_string())
        .replace("{port}", &joining.addr.port().to_string());
    let config = ucp_lb::config::parse(&text, "demo.toml")?;
    let started = ucp_lb::start(config).await;
    let _ = std::fs::remove_dir_all(&bundle);
    let running = match started {
        Ok(r) => r,
        Err(ucp_lb::StartError::Bind(e)) if e.error.kind() == std::io::ErrorKind::AddrInUse => {
            anyhow::bail!("{listen} is taken: pass --listen with a free address, e.g. --listen 127.0.0.1:18443")
        }
        Err(e) => return Err(e.into()),
    };
    let lb = running.listener_addrs()[0];
    let connector = ca.connector()?;

    let mut out = String::new();
    writeln!(out, "ucp-lb demo\n")?;
    writeln!(out, "Stand-in UCP managers (HTTPS, certificates from a throw-away CA):")?;
    for m in &managers {
        writeln!(out, "  {}  https://{}/  (GET /_ping answers 200)", m.name, m.addr)?;
    }
    writeln!(out, "  manager-04  {stopped}  stopped: refuses connections")?;
    writeln!(out, "\nucp-lb listens on {lb} and passes TCP through to pool \"ucp\"; TLS ends at the managers.")?;
    writeln!(out, "It probes GET /_ping on every manager every 500ms (rise 2, fall 2).")?;
    if let Some(admin) = running.admin_addr() {
        writeln!(out, "Status page: http://{admin}/  (refreshes itself while the scene plays; JSON at /status)")?;
    }
    writeln!(out)?;
    print!("{out}");

    clients(&connector, lb, 6, "Six clients through the load balancer (round robin):").await;
    println!();
    pool_state(&running, &managers, stopped);

    println!("\nmanager-02's UCP breaks: its /_ping now answers 500, while TCP and TLS stay up.");
    println!("(nginx open source would keep sending it its share of clients.)");
    managers[1].set_healthy(false);
    let t0 = Instant::now();
    if wait_check(&running, managers[1].addr, "down").await {
        let reason = check_of(&running, managers[1].addr).and_then(|c| c.reason).unwrap_or_default();
        println!("ucp-lb took it out after {:.1}s (2 failed probes): \"{reason}\"", t0.elapsed().as_secs_f64());
    }
    clients(&connector, lb, 6, "Six more clients:").await;

    println!("\nmanager-02 recovers.");
    managers[1].set_healthy(true);
    let t0 = Instant::now();
    if wait_check(&running, managers[1].addr, "up").await {
        println!("Back in rotation after {:.1}s (2 good probes).", t0.elapsed().as_secs_f64());
    }
    clients(&connector, lb, 6, "Six more clients:").await;

    swarm_scene(&running, &api, worker, &joining, &connector, lb).await;
    try_it(&running, &managers, lb).await
}

/// manager-05 joins the swarm, then is drained there: the pool follows.
async fn swarm_scene(
    running: &Running,
    api: &SwarmApi,
    worker: StandNode,
    joining: &Manager,
    connector: &TlsConnector,
    lb: SocketAddr,
) {
    let (addr, name) = (joining.addr, joining.name.as_str());
    println!("\nThe pool also follows the swarm: ucp-lb reads its node list from the (stand-in) UCP API");
    println!("at {} every 500ms with a client bundle, and takes its managers at port {}.", api.addr, addr.port());
    println!("{name} joins the swarm as a manager (docker swarm join).");
    let mut node = StandNode::manager(name, "127.0.0.1");
    api.set_nodes(vec![worker.clone(), node.clone()]);
    let t0 = Instant::now();
    if wait_state(running, addr, |s| s.eligible).await {
        println!("{name} joined the pool after {:.1}s.", t0.elapsed().as_secs_f64());
    }
    clients(connector, lb, 5, "Five clients after it joined:").await;
    println!("\n{name} is drained in the swarm (docker node update --availability drain {name}).");
    node.availability = "drain".into();
    api.set_nodes(vec![worker, node]);
    let t0 = Instant::now();
    if wait_state(running, addr, |s| s.state == "drain").await {
        println!("ucp-lb drains it after {:.1}s: no new clients, open ones go on.", t0.elapsed().as_secs_f64());
    }
    clients(connector, lb, 5, "Five clients after the drain:").await;
}

/// Waits (10 s at most) until the server at `addr` is as `want` says.
async fn wait_state(running: &Running, addr: SocketAddr, want: impl Fn(&ucp_lb::view::ServerStatus) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if running.status().into_iter().flat_map(|p| p.servers).any(|s| s.addr == addr && !s.removed && want(&s)) {
            return true;
        }
        ucp_lb::timer::sleep(Duration::from_millis(20)).await;
    }
    println!("(not yet after 10s)");
    false
}

/// The end of the scene: what to try, then the keys that break and mend
/// the managers, until a signal.
async fn try_it(running: &ucp_lb::Running, managers: &[Manager], lb: SocketAddr) -> anyhow::Result<()> {
    let mut out = String::new();
    writeln!(out, "\nTry it:")?;
    writeln!(out, "  curl -sk https://{lb}/          # a new client each time")?;
    writeln!(out, "  curl -sk https://{lb}/_ping")?;
    writeln!(out, "  type 1, 2 or 3 and Enter to break or mend that manager's /_ping")?;
    if let Some(admin) = running.admin_addr() {
        writeln!(out, "  open http://{admin}/ in a browser   # the status page, refreshing itself")?;
        writeln!(out, "  curl -s http://{admin}/status      # JSON: pools, servers, checks, reasons")?;
        writeln!(out, "  curl -s http://{admin}/metrics     # Prometheus")?;
    }
    writeln!(out, "\nCtrl-C stops the demo.")?;
    print!("{out}");

    let keys = async {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let Some(m) = line.trim().parse::<usize>().ok().and_then(|n| managers.get(n.wrapping_sub(1))) else {
                println!("type 1, 2 or 3");
                continue;
            };
            m.set_healthy(!m.is_healthy());
            let want = if m.is_healthy() { "up" } else { "down" };
            println!("{}: /_ping now answers {}", m.name, if m.is_healthy() { 200 } else { 500 });
            let t0 = Instant::now();
            if wait_check(running, m.addr, want).await {
                println!("{}: {want} for ucp-lb after {:.1}s", m.name, t0.elapsed().as_secs_f64());
            }
        }
        // No terminal (stdin closed): just keep serving.
        std::future::pending::<()>().await;
    };
    tokio::select! {
        _ = ucp_lb::traffic::shutdown::on_signals() => {}
        _ = keys => {}
    }
    running.shutdown().await;
    Ok(())
}

async fn clients(connector: &TlsConnector, lb: SocketAddr, n: usize, title: &str) {
    println!("{title}");
    let mut line = String::from(" ");
    for _ in 0..n {
        match ucp_lb::timer::timeout(Duration::from_secs(5), https_get(connector, lb, "/")).await {
            Ok(Ok((status, by))) => line.push_str(&format!(" {by} ({status})")),
            Ok(Err(e)) => line.push_str(&format!(" failed: {e}")),
            Err(_) => line.push_str(" no answer within 5s"),
        }
    }
    println!("{line}");
}

fn check_of(running: &Running, addr: SocketAddr) -> Option<ucp_lb::view::CheckStatus> {
    running.status().into_iter().flat_map(|p| p.servers).find(|s| s.addr == addr).and_then(|s| s.check)
}

/// Waits (10 s at most) until the check of `addr` says `state`.
async fn wait_check(running: &Running, addr: SocketAddr, state: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if check_of(running, addr).is_some_and(|c| c.state == state) {
            return true;
        }
        ucp_lb::timer::sleep(Duration::from_millis(20)).await;
    }
    println!("(still not {state} after 10s)");
    false
}

fn pool_state(running: &Running, managers: &[Manager], stopped: SocketAddr) {
    println!("Pool state:");
    for pool in running.status() {
        for s in pool.servers {
            let name = managers.iter().find(|m| m.addr == s.addr).map_or("manager-04", |m| m.name.as_str());
            let check = s.check.map(|c| match c.reason {
                Some(r) => format!("check {}: {r}", c.state),
                None => format!("check {}", c.state),
            });
            let what = if s.addr == stopped {
                format!("{}; {} failed connects", check.unwrap_or_default(), s.connect_failures)
            } else {
                format!("{}, {} connections", check.unwrap_or_default(), s.connections)
            };
            println!("  {name}  {}  {what}", s.addr);
        }
    }
}
