//! `ucp-lb demo`: three stand-in UCP managers and a stopped fourth on
//! loopback, ucp-lb in front of them on an embedded config, six clients sent
//! through it, and what to try next. Needs nothing installed.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::standin::{Manager, TestCa, https_get};

/// The embedded lb.toml; `{listen}` and `{servers}` are filled in at start.
const DEMO_TOML: &str = r#"
[defaults]
connect_timeout = "1s"
max_fails = 2
fail_timeout = "10s"
retries = 2

[[listener]]
bind = "{listen}"
pool = "ucp"

[pool.ucp]
servers = [{servers}]
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

    let servers: Vec<String> =
        managers.iter().map(|m| format!("\"{}\"", m.addr)).chain([format!("\"{stopped}\"")]).collect();
    let text = DEMO_TOML.replace("{listen}", &listen.to_string()).replace("{servers}", &servers.join(", "));
    let config = crate::config::parse(&text, "demo.toml")?;
    let running = crate::start(config).await?;
    let lb = running.listener_addrs()[0];

    let mut out = String::new();
    writeln!(out, "ucp-lb demo\n")?;
    writeln!(out, "Stand-in UCP managers (HTTPS, certificates from a throw-away CA):")?;
    for m in &managers {
        writeln!(out, "  {}  https://{}/  (GET /_ping answers 200)", m.name, m.addr)?;
    }
    writeln!(out, "  manager-04  {stopped}  stopped: refuses connections")?;
    writeln!(out, "\nucp-lb listens on {lb} and passes TCP through to pool \"ucp\"; TLS ends at the managers.\n")?;
    writeln!(out, "Eight clients through the load balancer (round robin):")?;
    print!("{out}");
    out.clear();

    let connector = ca.connector()?;
    for n in 1..=8 {
        match tokio::time::timeout(Duration::from_secs(5), https_get(&connector, lb, "/")).await {
            Ok(Ok((status, by))) => println!("  client {n}: HTTP {status}, answered by {by}"),
            Ok(Err(e)) => println!("  client {n}: failed: {e}"),
            Err(_) => println!("  client {n}: no answer within 5s"),
        }
    }

    writeln!(out, "\nPool state:")?;
    for pool in running.status() {
        for s in pool.servers {
            let name = managers.iter().find(|m| m.addr == s.addr).map_or("manager-04", |m| m.name.as_str());
            let what = if s.ejected {
                format!(
                    "ejected after {} failed connects (max_fails = 2); each time the client was retried on the next manager",
                    s.connect_failures
                )
            } else {
                format!("up, {} connections", s.connections)
            };
            writeln!(out, "  {name}  {}  {what}", s.addr)?;
        }
    }
    writeln!(out, "\nTry it:")?;
    writeln!(out, "  curl -sk https://{lb}/          # a new client each time, round robin")?;
    writeln!(out, "  curl -sk https://{lb}/_ping")?;
    writeln!(out, "\nCtrl-C stops the demo.")?;
    print!("{out}");

    crate::shutdown::on_signals().await;
    running.shutdown().await;
    Ok(())
}
