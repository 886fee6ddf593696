//! L4 figures for ucp-lb beside nginx `stream` and HAProxy `mode tcp`, run on
//! the same machine, same loopback backends, same pinning, in one run.
//!
//! Run with `benches/run.sh` (raises the fd limit, pins load to CPU 1 and each
//! proxy to CPU 0 with one worker). Rows:
//! - one stream's throughput (Gbit/s) for a few seconds, and direct;
//! - new connections per second (connect, 1-byte echo, close; 16 at once);
//! - RSS per idle connection with N idle clients held through the proxy.
//!
//! Every load is bounded in count and time, targets loopback only, and stops
//! by itself; each proxy is a child process stopped by its PID. nginx and
//! HAProxy are skipped (and said so) when not installed.

mod common;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::{cpu_secs, pinned, spawn_ucp_lb};

const STREAM_SECS: f64 = 3.0;
const CONN_SECS: f64 = 3.0;
const CONN_PARALLEL: usize = 16;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Proxy {
    child: Option<Child>,
    addr: SocketAddr,
    _dir: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn which(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

fn start_proxy(name: &'static str, backends: &[SocketAddr], run: &Path, max_conns: usize) -> Option<Proxy> {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let dir = run.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let list = |f: &dyn Fn(usize, &SocketAddr) -> String| {
        backends.iter().enumerate().map(|(i, b)| f(i, b)).collect::<Vec<_>>().join("")
    };
    let child = match name {
        "direct" => None,
        "ucp-lb" => {
            let servers: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
            let cfg = dir.join("lb.toml");
            std::fs::write(
                &cfg,
                format!(
                    "workers = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nbind = \"{addr}\"\npool = \"b\"\n[pool.b]\nservers = [{}]\n",
                    servers.join(", ")
                ),
            )
            .unwrap();
            Some(spawn_ucp_lb(&cfg))
        }
        "nginx" => {
            let bin = which("nginx")?;
            let module =
                ["/usr/lib/nginx/modules/ngx_stream_module.so", "/usr/share/nginx/modules/ngx_stream_module.so"]
                    .into_iter()
                    .find(|p| Path::new(p).exists());
            let load = module.map(|m| format!("load_module {m};\n")).unwrap_or_default();
            let cfg = dir.join("nginx.conf");
            std::fs::write(
                &cfg,
                format!(
                    "{load}daemon off;\nworker_processes 1;\nworker_rlimit_nofile 200000;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
                     events {{ worker_connections 200000; }}\nstream {{\n upstream b {{\n{ups} }}\n server {{ listen {addr}; proxy_pass b; }}\n}}\n",
                    d = dir.display(),
                    ups = list(&|_, b| format!("  server {b};\n")),
                ),
            )
            .unwrap();
            Some(
                pinned(bin.to_str()?)
                    .arg("-c")
                    .arg(&cfg)
                    .arg("-p")
                    .arg(&dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .ok()?,
            )
        }
        "haproxy" => {
            let bin = which("haproxy")?;
            let cfg = dir.join("haproxy.cfg");
            std::fs::write(
                &cfg,
                format!(
                    "global\n maxconn {max_conns}\n nbthread 1\ndefaults\n mode tcp\n timeout connect 3s\n timeout client 1h\n timeout server 1h\n\
                     frontend f\n bind {addr}\n default_backend b\nbackend b\n{}",
                    list(&|i, b| format!(" server s{i} {b}\n")),
                ),
            )
            .unwrap();
            Some(
                pinned(bin.to_str()?)
                    .arg("-f")
                    .arg(&cfg)
                    .arg("-db")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .ok()?,
            )
        }
        _ => unreachable!(),
    };
    let addr = if child.is_none() { backends[0] } else { addr };
    let p = Proxy { child, addr, _dir: dir };
    // Wait until it accepts (bounded).
    let start = Instant::now();
    while std::net::TcpStream::connect(p.addr).is_err() {
        if start.elapsed() > Duration::from_secs(10) {
            eprintln!("{name}: did not start listening; skipped");
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(p)
}

/// A backend that discards what it reads (throughput) or echoes (connections).
async fn backend(echo: bool) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) if echo => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    addr
}

async fn one_stream(addr: SocketAddr) -> (f64, u64) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let buf = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed().as_secs_f64() < STREAM_SECS {
        s.write_all(&buf).await.unwrap();
        sent += buf.len() as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    (sent as f64 * 8.0 / secs / 1e9, sent)
}

async fn new_connections(addr: SocketAddr) -> (f64, u64) {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONN_PARALLEL {
        let (done, stop) = (done.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut b = [0u8; 1];
            while !stop.load(Relaxed) {
                let Ok(mut s) = TcpStream::connect(addr).await else {
                    continue;
                };
                if s.write_all(b"x").await.is_ok() && s.read_exact(&mut b).await.is_ok() {
                    done.fetch_add(1, Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(CONN_SECS)).await;
    stop.store(true, Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let n = done.load(Relaxed);
    (n as f64 / start.elapsed().as_secs_f64(), n)
}

/// RSS of `pid` and all its descendants (nginx's master and its worker).
fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
        kib += rss_kib(child).unwrap_or(0);
    }
    Some(kib)
}

/// Bytes of RSS per idle connection: `n` clients held open through the proxy.
async fn idle_memory(p: &Proxy, n: usize) -> Option<f64> {
    let pid = p.child.as_ref()?.id();
    // Warm up: allocator arenas and runtime structures the first clients fault in.
    for _ in 0..200 {
        let mut s = TcpStream::connect(p.addr).await.ok()?;
        s.write_all(b"x").await.ok()?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.ok()?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(pid)?;
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(p.addr).await.ok()?;
        s.write_all(b"x").await.ok()?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.ok()?;
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(pid)?;
    drop(held);
    Some((after.saturating_sub(before)) as f64 * 1024.0 / n as f64)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn spread(v: &[f64]) -> f64 {
    let (min, max) = v.iter().fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    if max > 0.0 { (max - min) / max * 100.0 } else { 0.0 }
}

fn main() {
    let rounds = env_usize("ROUNDS", 3);
    let idle_n = env_usize("IDLE_CONNS", 5000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let run_dir = std::env::temp_dir().join(format!("ucp-lb-bench-{}", std::process::id()));
    let only = std::env::var("ONLY").unwrap_or_default();
    let names: Vec<&str> = ["direct", "ucp-lb", "nginx", "haproxy"]
        .into_iter()
        .filter(|n| only.is_empty() || only.split(',').any(|o| o == *n))
        .collect();
    let rows = || vec![Vec::<f64>::new(); names.len()];
    let (mut tput, mut cpu_gib, mut conns, mut cpu_conn, mut idle) = (rows(), rows(), rows(), rows(), rows());
    rt.block_on(async {
        let sink = backend(false).await;
        let echo = backend(true).await;
        for round in 0..rounds {
            for (i, name) in names.iter().enumerate() {
                eprint!("round {}/{rounds}: {name}...", round + 1);
                let _ = std::io::stderr().flush();
                let Some(p) = start_proxy(name, &[sink], &run_dir, idle_n + 500) else {
                    eprintln!(" not installed, skipped");
                    continue;
                };
                let pid = p.child.as_ref().map(Child::id);
                let cpu0 = pid.map(cpu_secs);
                let (gbps, bytes) = one_stream(p.addr).await;
                tput[i].push(gbps);
                if let (Some(pid), Some(c0)) = (pid, cpu0) {
                    cpu_gib[i].push((cpu_secs(pid) - c0) * 1000.0 / (bytes as f64 / (1u64 << 30) as f64));
                }
                drop(p);
                let Some(p) = start_proxy(name, &[echo], &run_dir, idle_n + 500) else {
                    continue;
                };
                let pid = p.child.as_ref().map(Child::id);
                let cpu0 = pid.map(cpu_secs);
                let (rate, n) = new_connections(p.addr).await;
                conns[i].push(rate);
                if let (Some(pid), Some(c0)) = (pid, cpu0) {
                    cpu_conn[i].push((cpu_secs(pid) - c0) * 1e6 / n.max(1) as f64);
                }
                if let Some(m) = idle_memory(&p, idle_n).await {
                    idle[i].push(m / 1024.0);
                }
                eprintln!(" done");
            }
        }
    });
    let _ = std::fs::remove_dir_all(&run_dir);
    println!(
        "\nmedian of {rounds} interleaved rounds, ± the spread (max-min)/max; each proxy pinned to CPU 0 with one worker\n"
    );
    let cell = |v: &Vec<f64>, digits: usize| {
        if v.is_empty() { "-".to_owned() } else { format!("{:.*} ±{:.0}%", digits, median(&mut v.clone()), spread(v)) }
    };
    println!(
        "{:<9} {:>16} {:>18} {:>14} {:>18} {:>18}",
        "",
        "1 stream Gbit/s",
        "proxy CPU ms/GiB",
        "new conns/s",
        "proxy CPU µs/conn",
        format!("RSS KiB/idle@{idle_n}")
    );
    for (i, name) in names.iter().enumerate() {
        if tput[i].is_empty() {
            println!("{name:<9} {:>16}", "not installed");
            continue;
        }
        println!(
            "{name:<9} {:>16} {:>18} {:>14} {:>18} {:>18}",
            cell(&tput[i], 2),
            cell(&cpu_gib[i], 0),
            cell(&conns[i], 0),
            cell(&cpu_conn[i], 1),
            cell(&idle[i], 2)
        );
    }
}
