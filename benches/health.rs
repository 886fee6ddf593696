//! Active-check figures:
//! 1. CPU of ucp-lb (one worker, pinned to CPU 0) probing N stand-in HTTPS
//!    managers every second, as a per cent of one core; the managers run in
//!    this process (pin it to CPU 1: `taskset -c 1 cargo bench --bench health`).
//! 2. Time from a manager turning unhealthy (`/_ping` 500) to the last new
//!    client it received, with DESIGN.md's defaults (interval 2s, timeout 1s,
//!    fall 2), under a steady stream of HTTPS clients; several trials.
//!
//! Everything runs on loopback, bounded in count and time; the ucp-lb child
//! is stopped by its PID.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use common::standin::{Manager, TestCa, https_get};
use common::{cpu_secs, spawn_ucp_lb};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn probe_cpu(n: usize, kind: &str, secs: u64) -> (f64, f64) {
    let ca = TestCa::new("bench CA").unwrap();
    let mut managers = Vec::with_capacity(n);
    for i in 0..n {
        managers.push(Manager::start(&format!("m{i}"), "127.0.0.1:0".parse().unwrap(), &ca).await.unwrap());
    }
    let dir = std::env::temp_dir().join(format!("ucp-lb-health-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let servers: Vec<String> = managers.iter().map(|m| format!("\"{}\"", m.addr)).collect();
    let cfg = dir.join("lb.toml");
    std::fs::write(
        &cfg,
        format!(
            "workers = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n[pool.p]\nservers = [{}]\n\
             [pool.p.health]\nkind = \"{kind}\"\ninterval = \"1s\"\ntimeout = \"1s\"\n",
            servers.join(", ")
        ),
    )
    .unwrap();
    let mut child = spawn_ucp_lb(&cfg);
    let pid = child.id();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pings0: u64 = managers.iter().map(|m| m.pings.load(Relaxed)).sum();
    let (c0, t0) = (cpu_secs(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (c1, elapsed) = (cpu_secs(pid), t0.elapsed().as_secs_f64());
    let pings1: u64 = managers.iter().map(|m| m.pings.load(Relaxed)).sum();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    ((c1 - c0) / elapsed * 100.0, (pings1 - pings0) as f64 / elapsed)
}

async fn detection(trials: usize) -> Vec<f64> {
    let ca = TestCa::new("bench CA").unwrap();
    let mut ms = Vec::new();
    for i in 1..=3 {
        ms.push(Manager::start(&format!("manager-0{i}"), "127.0.0.1:0".parse().unwrap(), &ca).await.unwrap());
    }
    let servers: Vec<String> = ms.iter().map(|m| format!("\"{}\"", m.addr)).collect();
    // DESIGN.md's defaults for the check.
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"ucp\"\n[pool.ucp]\nservers = [{}]\n[pool.ucp.health]\nkind = \"https\"\npath = \"/_ping\"\n",
        servers.join(", ")
    );
    let lb = ucp_lb::start(ucp_lb::config::parse(&toml, "bench.toml").unwrap()).await.unwrap();
    let addr: SocketAddr = lb.listener_addrs()[0];
    let connector = ca.connector().unwrap();
    let mut out = Vec::new();
    for trial in 0..trials {
        // Start at a different phase of the probe schedule each time.
        tokio::time::sleep(Duration::from_millis(300 + 370 * trial as u64)).await;
        ms[1].set_healthy(false);
        let t0 = Instant::now();
        let mut last: Option<Duration> = None;
        while t0.elapsed() < Duration::from_secs(8) {
            let sent = t0.elapsed();
            if let Ok((_, by)) = https_get(&connector, addr, "/").await
                && by == "manager-02"
            {
                last = Some(sent);
            }
        }
        if let Some(l) = last {
            out.push(l.as_secs_f64());
        }
        ms[1].set_healthy(true);
        let back = Instant::now();
        loop {
            let s = lb.status();
            if s[0].servers[1].check.as_ref().is_some_and(|c| c.state == "up")
                || back.elapsed() > Duration::from_secs(10)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    lb.shutdown().await;
    out
}

fn main() {
    let n = env_usize("SERVERS", 1000);
    let secs = env_usize("SECONDS", 10) as u64;
    let trials = env_usize("TRIALS", 5);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        println!("probing {n} servers every 1s, ucp-lb with one worker pinned to CPU 0, measured over {secs}s:");
        // The stand-ins speak HTTPS only, so kind = "http" is not measured.
        for kind in ["https", "tcp"] {
            let (cpu, rate) = probe_cpu(n, kind, secs).await;
            println!("  kind = {kind:<5}  {cpu:5.1} % of one core  ({rate:.0} probes/s reached the servers)");
        }
        let mut d = detection(trials).await;
        d.sort_by(|a, b| a.total_cmp(b));
        if d.is_empty() {
            println!("detection: no trial sent a client to the manager after it broke");
        } else {
            println!(
                "manager turning unhealthy -> last new client it got (interval 2s, fall 2; {} trials): min {:.2}s, median {:.2}s, max {:.2}s",
                d.len(),
                d[0],
                d[d.len() / 2],
                d[d.len() - 1]
            );
        }
    });
}
