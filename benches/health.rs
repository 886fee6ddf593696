//! Active-check figures:
//! 1. CPU of ucp-lb (one worker) and of HAProxy (`nbthread 1`, `check`,
//!    `check-ssl`, `option httpchk GET /_ping`), each pinned to CPU 0 in
//!    turn, probing N stand-in HTTPS managers every second with a fresh
//!    connection each time, as a per cent of one core; ROUNDS interleaved
//!    rounds (3). The managers run in this process (pin it to CPU 1:
//!    `taskset -c 1 cargo bench --bench health`). HAProxy is skipped when
//!    it is not installed (benches/run.sh installs it).
//! 2. Time from a manager turning unhealthy (`/_ping` 500) to the last new
//!    client it received, with DESIGN.md's defaults (interval 2s, timeout 1s,
//!    fall 2), under a steady stream of HTTPS clients; several trials.
//!
//! Everything runs on loopback, bounded in count and time; the children are
//! stopped by their PIDs.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use common::standin::{Manager, TestCa, https_get};
use common::{cpu_secs, pinned, spawn_ucp_lb, which};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Who probes: ucp-lb (its own checks) or HAProxy (`check`, with
/// `check-ssl` and `option httpchk` for HTTPS), each with one thread,
/// pinned to CPU 0.
#[derive(Clone, Copy, PartialEq)]
enum Prober {
    UcpLb,
    Haproxy,
}

/// The prober running checks of `kind` against `servers` every second.
fn spawn_prober(who: Prober, kind: &str, servers: &[SocketAddr], ca_pem: &str, dir: &Path) -> Option<Child> {
    match who {
        Prober::UcpLb => {
            let list: Vec<String> = servers.iter().map(|a| format!("\"{a}\"")).collect();
            let cfg = dir.join("lb.toml");
            std::fs::write(
                &cfg,
                format!(
                    "workers = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n[pool.p]\nservers = [{}]\n\
                     [pool.p.health]\nkind = \"{kind}\"\ninterval = \"1s\"\ntimeout = \"1s\"\n",
                    list.join(", ")
                ),
            )
            .ok()?;
            Some(spawn_ucp_lb(&cfg))
        }
        Prober::Haproxy => {
            let bin = which("haproxy")?;
            let ca = dir.join("ca.pem");
            std::fs::write(&ca, ca_pem).ok()?;
            // The same check as ucp-lb's: a fresh connection each time, the
            // chain verified against the CA (on full handshakes), GET /_ping.
            let (http, server_opts) = match kind {
                "https" => (
                    " option httpchk\n http-check send meth GET uri /_ping ver HTTP/1.1 hdr Host localhost\n",
                    format!(" check-ssl verify required ca-file {}", ca.display()),
                ),
                _ => ("", String::new()),
            };
            let list: String = servers
                .iter()
                .enumerate()
                .map(|(i, a)| format!(" server m{i} {a} check inter 1s{server_opts}\n"))
                .collect();
            let cfg = dir.join("haproxy.cfg");
            std::fs::write(
                &cfg,
                format!(
                    "global\n nbthread 1\n maxconn 4000\ndefaults\n mode http\n timeout connect 1s\n timeout check 1s\n\
                     timeout client 10s\n timeout server 10s\nfrontend f\n bind unix@{sock}\n default_backend b\nbackend b\n{http}{list}",
                    // HAProxy does not start without a listener; a socket
                    // file needs no free port.
                    sock = dir.join("haproxy.sock").display()
                ),
            )
            .ok()?;
            pinned(bin.to_str()?).arg("-f").arg(&cfg).stdout(Stdio::null()).stderr(Stdio::null()).spawn().ok()
        }
    }
}

/// What one prober did over the measured seconds.
struct Probing {
    /// CPU, per cent of one core.
    cpu: f64,
    /// Requests to `/_ping` the servers answered, per second.
    pings: f64,
    /// Share of TLS handshakes that resumed a session.
    resumed: f64,
}

/// `who` probing `n` stand-ins with `kind` every second, over `secs`.
async fn probe_cpu(who: Prober, n: usize, kind: &str, secs: u64) -> Option<Probing> {
    let ca = TestCa::new("bench CA").unwrap();
    let mut managers = Vec::with_capacity(n);
    for i in 0..n {
        managers.push(Manager::start(&format!("m{i}"), "127.0.0.1:0".parse().unwrap(), &ca).await.unwrap());
    }
    let dir = std::env::temp_dir().join(format!("ucp-lb-health-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let addrs: Vec<SocketAddr> = managers.iter().map(|m| m.addr).collect();
    let mut child = spawn_prober(who, kind, &addrs, &ca.pem, &dir)?;
    let pid = child.id();
    let counts = || {
        let sum = |f: &dyn Fn(&Manager) -> &AtomicU64| managers.iter().map(|m| f(m).load(Relaxed)).sum::<u64>();
        (sum(&|m| &m.pings), sum(&|m| &m.connections), sum(&|m| &m.resumed))
    };
    // Both spread their first probes over the interval; 3 s is past it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ((p0, n0, r0), c0, t0) = (counts(), cpu_secs(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (c1, elapsed, (p1, n1, r1)) = (cpu_secs(pid), t0.elapsed().as_secs_f64(), counts());
    let alive = child.try_wait().ok().flatten().is_none();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    alive.then_some(Probing {
        cpu: (c1 - c0) / elapsed * 100.0,
        pings: (p1 - p0) as f64 / elapsed,
        resumed: if n1 > n0 { (r1 - r0) as f64 / (n1 - n0) as f64 } else { 0.0 },
    })
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
    let rounds = env_usize("ROUNDS", 3);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        println!("probing {n} servers every 1s, each prober with one thread pinned to CPU 0, measured over {secs}s:");
        // The stand-ins speak HTTPS only, so kind = "http" is not measured.
        // Rounds interleave the probers, so a change in the machine's load
        // does not fall on one of them only.
        let cells = [(Prober::UcpLb, "https"), (Prober::Haproxy, "https"), (Prober::UcpLb, "tcp"), (Prober::Haproxy, "tcp")];
        let mut runs: Vec<Vec<Probing>> = cells.iter().map(|_| Vec::new()).collect();
        for _ in 0..rounds {
            for (i, (who, kind)) in cells.iter().enumerate() {
                if *who == Prober::Haproxy && which("haproxy").is_none() {
                    continue;
                }
                if let Some(p) = probe_cpu(*who, n, kind, secs).await {
                    runs[i].push(p);
                }
            }
        }
        // Median CPU, and CPU per probe that reached /_ping (HTTPS) or per
        // probe sent (TCP: n a second), in µs.
        let mut medians = [None; 4];
        for (i, (who, kind)) in cells.iter().enumerate() {
            let name = if *who == Prober::UcpLb { "ucp-lb" } else { "HAProxy" };
            let v = &mut runs[i];
            if v.is_empty() {
                println!("  {name:<8} kind = {kind:<5}  not measured (missing or exited)");
                continue;
            }
            v.sort_by(|a, b| a.cpu.total_cmp(&b.cpu));
            let m = &v[v.len() / 2];
            let probes = if *kind == "https" { m.pings } else { n as f64 };
            let per_probe = if probes > 0.0 { m.cpu / 100.0 / probes * 1e6 } else { f64::NAN };
            medians[i] = Some(per_probe);
            let tls = if *kind == "https" {
                format!("; {:.0} reached /_ping/s, {:.0} % resumed", m.pings, m.resumed * 100.0)
            } else {
                String::new()
            };
            println!(
                "  {name:<8} kind = {kind:<5}  {:5.1} % of one core (median of {}, range {:.1}-{:.1}), {per_probe:5.0} µs per probe{tls}",
                m.cpu,
                v.len(),
                v[0].cpu,
                v[v.len() - 1].cpu,
            );
        }
        for (kind, u, h) in [("https", 0, 1), ("tcp", 2, 3)] {
            if let (Some(a), Some(b)) = (medians[u], medians[h]) {
                println!("  ucp-lb / HAProxy CPU per probe, kind = {kind}: {:.2}", a / b);
            }
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
