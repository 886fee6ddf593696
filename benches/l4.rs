//! L4 figures for ucp-lb beside nginx `stream` and HAProxy `mode tcp`, run on
//! the same machine, same loopback backends, same pinning, in one run.
//!
//! Run with `benches/run.sh` (raises the fd limit, pins load to CPU 1 and each
//! proxy to CPU 0 with one worker). Rows:
//! - bulk throughput (Gbit/s) with 1 and with 8 streams, and the proxy's CPU
//!   per GiB moved;
//! - HTTPS keep-alive requests per second (wrk, 50 connections, TLS from
//!   wrk to an nginx HTTPS backend, passed through) and proxy CPU per request;
//! - new connections per second: raw TCP (connect, 1-byte echo, close; 16 at
//!   once), HTTP and full TLS (wrk with `Connection: close`), and the proxy's
//!   CPU per connection;
//! - full TLS again through a listener routed by TLS server name (row group
//!   `sni`: ucp-lb `routes`, nginx `ssl_preread` + `map`, HAProxy
//!   `req.ssl_sni`), so the cost of reading the hello shows beside the
//!   plain row;
//! - new connections whose client sends a PROXY v2 header first (row group
//!   `proxy`: ucp-lb `proxy_protocol = true` with `real_ip_from`, nginx
//!   `listen ... proxy_protocol` with `set_real_ip_from`, HAProxy
//!   `accept-proxy`), and the same proxies without it, in the same round,
//!   with the proxy's CPU per connection;
//! - added latency of a 1-byte ping-pong, p50 and p99, against direct;
//! - RSS and kernel memory (slab + TCP buffers) per idle connection with N
//!   idle clients held through the proxy, and proxy CPU while they idle;
//!   the ping-pong's p50 and p99 again while they are held (slowloris);
//! - instructions (user space) per new connection and per keep-alive
//!   exchange, counted by callgrind on fixed counts (row group `instr`, once
//!   per run: counts do not vary as times do). `perf stat -e instructions`
//!   would give the kernel's part too; this machine's VM has no PMU for it.
//!
//! Topologies: by default client, proxy and backends share loopback. With
//! `TOPOLOGY=netns` (benches/run.sh sets up the namespaces and runs the
//! bench in the first) the client is in one network namespace, the proxy in
//! a second and the backends in a third, joined by veth pairs with GSO and
//! GRO on, so every byte crosses two (virtual) NICs as between hosts; the
//! direct row is routed through the proxy's namespace.
//!
//! Every load is bounded in count and time, targets loopback or the bench's
//! own namespaces only, and stops by itself; each proxy is a child process
//! stopped by its PID. nginx and HAProxy are skipped (and said so) when not
//! installed.

mod common;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::{cpu_secs, which};

const STREAM_SECS: f64 = 3.0;
const CONN_SECS: f64 = 3.0;
const CONN_PARALLEL: usize = 16;
const WRK_SECS: u64 = 3;
const PING_PONGS: usize = 20_000;
/// Idle connections are left alone this long before their CPU is watched
/// for IDLE_SECS and RSS read again: ucp-lb sets each upstream socket's
/// keepalive once a connection has lived 10 to 15 s (four setsockopt calls,
/// about 10 µs per connection, once), which is connection set-up, not
/// idling.
const SETTLE_SECS: f64 = 17.0;
const IDLE_SECS: f64 = 3.0;

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

/// Where the parties of a run are: see the module's doc.
mod topology {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::path::Path;
    use std::process::Command;
    use std::sync::OnceLock;

    /// The namespaces benches/run.sh makes for `TOPOLOGY=netns` (the bench
    /// itself runs in `ucplb-bench-cl`), and their addresses.
    pub const NS_PROXY: &str = "ucplb-bench-lb";
    pub const NS_SERVERS: &str = "ucplb-bench-srv";
    const PROXY_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 2);
    const SERVERS_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 2);

    /// Whether this run is on the three-namespace topology.
    pub fn netns() -> bool {
        static NETNS: OnceLock<bool> = OnceLock::new();
        *NETNS.get_or_init(|| {
            let on = std::env::var("TOPOLOGY").is_ok_and(|t| t == "netns");
            assert!(
                !on || Path::new("/run/netns").join(NS_PROXY).exists(),
                "TOPOLOGY=netns needs the namespaces benches/run.sh makes: run it through benches/run.sh"
            );
            on
        })
    }

    /// The address the client reaches the proxy on, and the backends' (as
    /// the proxy sees them).
    pub fn proxy_ip() -> IpAddr {
        IpAddr::V4(if netns() { PROXY_IP } else { Ipv4Addr::LOCALHOST })
    }
    pub fn servers_ip() -> IpAddr {
        IpAddr::V4(if netns() { SERVERS_IP } else { Ipv4Addr::LOCALHOST })
    }

    /// A listener on `ip` port 0 made in namespace `ns` (on loopback, in
    /// this process's own): a thread joins the namespace, binds and ends; the
    /// socket stays in the namespace it was made in.
    pub fn bind_in(ns: &str, ip: IpAddr) -> std::net::TcpListener {
        let addr = SocketAddr::new(ip, 0);
        if !netns() {
            return std::net::TcpListener::bind(addr).expect("bind on loopback, port 0");
        }
        let path = Path::new("/run/netns").join(ns);
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).expect("the namespace benches/run.sh made");
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&f),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("setns into the bench's namespace (run as root)");
            std::net::TcpListener::bind(addr).expect("bind in the bench's namespace, port 0")
        })
        .join()
        .expect("the binding thread")
    }

    /// A port free on `ip` in `ns` now (the proxies bind their own).
    pub fn free_port(ns: &str, ip: IpAddr) -> u16 {
        bind_in(ns, ip).local_addr().expect("a bound listener has an address").port()
    }

    /// `program` on CPU `cpu` (when taskset is there), in namespace `ns` on
    /// the netns topology.
    pub fn command(ns: &str, cpu: u8, program: &str) -> Command {
        let mut argv: Vec<String> = Vec::new();
        if netns() {
            argv.extend(["ip", "netns", "exec", ns].map(String::from));
        }
        argv.extend(crate::common::on_cpu(cpu, program));
        crate::common::command(&argv)
    }
}

use topology::{NS_PROXY, NS_SERVERS};

/// What a proxy's listener does before it passes bytes on.
#[derive(Clone, Copy, PartialEq)]
enum Front {
    Plain,
    /// Routes by TLS server name.
    Routed,
    /// Reads a PROXY header (v1 or v2) from every client, trusting the
    /// bench's client address.
    AcceptProxy,
}

fn start_proxy(name: &'static str, backends: &[SocketAddr], run: &Path, max_conns: usize) -> Option<Proxy> {
    start_proxy_under(name, backends, run, max_conns, &[], Front::Plain)
}

/// As [`start_proxy`], the proxy routing TLS clients by server name (the
/// name `localhost`, or a `*.bench.test` one, to the backends; the rest
/// there too): ucp-lb `routes`, nginx `ssl_preread` with a `map`, HAProxy
/// `req.ssl_sni` after `tcp-request inspect-delay`.
fn start_routed_proxy(name: &'static str, backends: &[SocketAddr], run: &Path, max_conns: usize) -> Option<Proxy> {
    start_proxy_under(name, backends, run, max_conns, &[], Front::Routed)
}

/// As [`start_proxy`], the proxy reading a PROXY header from each client.
fn start_accepting_proxy(name: &'static str, backends: &[SocketAddr], run: &Path) -> Option<Proxy> {
    start_proxy_under(name, backends, run, 1000, &[], Front::AcceptProxy)
}

/// `cmd` pinned to CPU 0 in the proxy's namespace, under `wrap` (e.g.
/// valgrind and its options) when given.
fn launch(cmd: &str, wrap: &[String]) -> Command {
    match wrap.split_first() {
        None => topology::command(NS_PROXY, 0, cmd),
        Some((first, rest)) => {
            let mut c = topology::command(NS_PROXY, 0, first);
            c.args(rest).arg(cmd);
            c
        }
    }
}

/// As [`start_proxy`], the proxy run under `wrap`.
fn start_proxy_under(
    name: &'static str,
    backends: &[SocketAddr],
    run: &Path,
    max_conns: usize,
    wrap: &[String],
    front: Front,
) -> Option<Proxy> {
    let routed = front == Front::Routed;
    // The client's address on either topology is trusted: the header's is
    // believed, the whole path an operator behind a cloud balancer runs.
    let accept = front == Front::AcceptProxy;
    let addr = SocketAddr::new(topology::proxy_ip(), topology::free_port(NS_PROXY, topology::proxy_ip()));
    let dir = run.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let list = |f: &dyn Fn(usize, &SocketAddr) -> String| {
        backends.iter().enumerate().map(|(i, b)| f(i, b)).collect::<Vec<_>>().join("")
    };
    let child = match name {
        "direct" => None,
        "ucp-lb" | "ucp-lb-shared" => {
            let servers: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
            let cfg = dir.join("lb.toml");
            std::fs::write(
                &cfg,
                format!(
                    "workers = 1\n[admin]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"\"\n[[listener]]\nbind = \"{addr}\"\npool = \"b\"\n{routes}{pp}[pool.b]\nservers = [{}]\n",
                    servers.join(", "),
                    routes = if routed { "routes = { \"localhost\" = \"b\", \"*.bench.test\" = \"b\" }\n" } else { "" },
                    pp = if accept {
                        "proxy_protocol = true\nreal_ip_from = [\"127.0.0.0/8\", \"10.77.1.0/24\"]\n"
                    } else {
                        ""
                    },
                ),
            )
            .unwrap();
            let mut c = launch(&common::shipped_ucp_lb_once().display().to_string(), wrap);
            c.arg("--config").arg(&cfg).env("RUST_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::null());
            if name == "ucp-lb-shared" {
                c.env("UCP_LB_SPLICE", "shared");
            }
            c.spawn().ok()
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
                    "{load}daemon off;\nmaster_process off;\nworker_processes 1;\nworker_rlimit_nofile 200000;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
                     events {{ worker_connections 200000; }}\nstream {{\n upstream b {{\n{ups} }}\n{server}\n}}\n",
                    d = dir.display(),
                    ups = list(&|_, b| format!("  server {b};\n")),
                    server = if routed {
                        format!(
                            " map $ssl_preread_server_name $up {{ hostnames; localhost b; *.bench.test b; default b; }}\n\
                             \x20server {{ listen {addr}; ssl_preread on; proxy_pass $up; }}"
                        )
                    } else if accept {
                        format!(
                            " server {{ listen {addr} proxy_protocol; set_real_ip_from 127.0.0.0/8; \
                             set_real_ip_from 10.77.1.0/24; proxy_pass b; }}"
                        )
                    } else {
                        format!(" server {{ listen {addr}; proxy_pass b; }}")
                    },
                ),
            )
            .unwrap();
            Some(
                launch(bin.to_str()?, wrap)
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
                     frontend f\n bind {addr}{pp}\n{sni} default_backend b\nbackend b\n{}",
                    list(&|i, b| format!(" server s{i} {b}\n")),
                    pp = if accept { " accept-proxy" } else { "" },
                    sni = if routed {
                        " tcp-request inspect-delay 5s\n tcp-request content accept if { req.ssl_hello_type 1 }\n\
                         \x20use_backend b if { req.ssl_sni -i localhost } || { req.ssl_sni -m end .bench.test }\n"
                    } else {
                        ""
                    },
                ),
            )
            .unwrap();
            Some(
                launch(bin.to_str()?, wrap)
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
    let patience = Duration::from_secs(if wrap.is_empty() { 10 } else { 120 });
    while std::net::TcpStream::connect(p.addr).is_err() {
        if start.elapsed() > patience {
            eprintln!("{name}: did not start listening; skipped");
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(p)
}

/// nginx as the HTTP and HTTPS backend of the wrk rows, pinned to CPU 1 with
/// the load (not measured: every proxy sees the same backend).
struct HttpBackend {
    child: Child,
    http: SocketAddr,
    https: SocketAddr,
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_backend(run: &Path) -> Option<HttpBackend> {
    let bin = which("nginx")?;
    let dir = run.join("backend");
    std::fs::create_dir_all(&dir).ok()?;
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).ok()?;
    std::fs::write(dir.join("cert.pem"), ck.cert.pem()).ok()?;
    std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).ok()?;
    let ip = topology::servers_ip();
    let (http, https) = (topology::free_port(NS_SERVERS, ip), topology::free_port(NS_SERVERS, ip));
    let cfg = dir.join("nginx.conf");
    std::fs::write(
        &cfg,
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\nworker_rlimit_nofile 20000;\npid {d}/nginx.pid;\nerror_log {d}/error.log crit;\n\
             events {{ worker_connections 10000; }}\nhttp {{\n access_log off;\n keepalive_requests 1000000;\n\
             server {{\n  listen {ip}:{http};\n  listen {ip}:{https} ssl;\n  ssl_certificate {d}/cert.pem;\n  ssl_certificate_key {d}/key.pem;\n\
             \x20 location / {{ return 200 \"ok\\n\"; }}\n }}\n}}\n",
            d = dir.display()
        ),
    )
    .ok()?;
    let mut cmd = topology::command(NS_SERVERS, 1, bin.to_str()?);
    cmd.arg("-c").arg(&cfg).arg("-p").arg(&dir).stdout(Stdio::null()).stderr(Stdio::null());
    let child = cmd.spawn().ok()?;
    let b = HttpBackend { child, http: SocketAddr::new(ip, http), https: SocketAddr::new(ip, https) };
    let start = Instant::now();
    while std::net::TcpStream::connect(b.https).is_err() || std::net::TcpStream::connect(b.http).is_err() {
        if start.elapsed() > Duration::from_secs(10) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(b)
}

/// wrk for `secs` against `url` with `conns` connections on one thread;
/// requests per second and the number of requests, None when wrk is
/// missing or reported errors.
fn wrk(url: &str, conns: usize, close: bool) -> Option<(f64, u64)> {
    let bin = which("wrk")?;
    let mut cmd = std::process::Command::new(bin);
    cmd.args(["-t1", &format!("-c{conns}"), &format!("-d{}s", WRK_SECS), "--latency"]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    let out = cmd.arg(url).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
    };
    let rate = field("Requests/sec:")?;
    let n = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse::<u64>().ok())?;
    if text.contains("Socket errors") || text.contains("Non-2xx") {
        eprint!(
            " (wrk: {})",
            text.lines().filter(|l| l.contains("errors") || l.contains("Non-2xx")).collect::<Vec<_>>().join("; ")
        );
    }
    Some((rate, n))
}

/// One wrk row: requests per second into `rate`, the proxy's µs of CPU per
/// request into `cpu`.
fn wrk_row(pid: Option<u32>, url: &str, conns: usize, close: bool, rate: &mut Vec<f64>, cpu: &mut Vec<f64>) {
    let c0 = pid.map(cpu_secs);
    if let Some((r, n)) = wrk(url, conns, close) {
        rate.push(r);
        cpu.extend(pid.zip(c0).map(|(pid, c0)| (cpu_secs(pid) - c0) * 1e6 / n.max(1) as f64));
    }
}

/// A backend that discards what it reads (throughput) or echoes (connections).
async fn backend(echo: bool) -> SocketAddr {
    let l = topology::bind_in(NS_SERVERS, topology::servers_ip());
    l.set_nonblocking(true).unwrap();
    let l = TcpListener::from_std(l).unwrap();
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

/// `n` streams at once for STREAM_SECS: total Gbit/s and bytes.
async fn streams(addr: SocketAddr, n: usize) -> (f64, u64) {
    let start = Instant::now();
    let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(one_stream(addr))).collect();
    let mut bytes = 0;
    for t in tasks {
        bytes += t.await.map(|(_, b)| b).unwrap_or(0);
    }
    (bytes as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9, bytes)
}

/// One connection, PING_PONGS sequential 1-byte round trips: (p50, p99) in µs.
async fn ping_pong(addr: SocketAddr) -> Option<(f64, f64)> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.set_nodelay(true).ok()?;
    let mut b = [0u8; 1];
    for _ in 0..1000 {
        s.write_all(b"x").await.ok()?;
        s.read_exact(&mut b).await.ok()?;
    }
    let mut rtt = Vec::with_capacity(PING_PONGS);
    for _ in 0..PING_PONGS {
        let t = Instant::now();
        s.write_all(b"x").await.ok()?;
        s.read_exact(&mut b).await.ok()?;
        rtt.push(t.elapsed().as_secs_f64() * 1e6);
    }
    rtt.sort_by(|a, b| a.total_cmp(b));
    Some((rtt[rtt.len() / 2], rtt[rtt.len() * 99 / 100]))
}

/// Kernel memory in KiB: slab (socket structures) plus TCP buffer pages.
fn kernel_kib() -> Option<f64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let slab: f64 = meminfo.lines().find(|l| l.starts_with("Slab:"))?.split_whitespace().nth(1)?.parse().ok()?;
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let tcp = sockstat.lines().find(|l| l.starts_with("TCP:"))?;
    let pages: f64 = tcp.split_whitespace().skip_while(|w| *w != "mem").nth(1)?.parse().ok()?;
    Some(slab + pages * 4.0)
}

/// New connections per second through `addr` (16 at once: connect, a
/// 1-byte echo, close), each client sending `header` first when given, in
/// the same write as its byte.
async fn new_connections(addr: SocketAddr, header: Option<&[u8]>) -> (f64, u64) {
    let first: Arc<[u8]> = header.unwrap_or_default().iter().copied().chain([b'x']).collect();
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONN_PARALLEL {
        let (done, stop, first) = (done.clone(), stop.clone(), first.clone());
        tasks.push(tokio::spawn(async move {
            let mut b = [0u8; 1];
            while !stop.load(Relaxed) {
                let Ok(mut s) = TcpStream::connect(addr).await else {
                    continue;
                };
                if s.write_all(&first).await.is_ok() && s.read_exact(&mut b).await.is_ok() {
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

/// Per idle connection with `n` clients held open through the proxy: RSS
/// KiB, kernel KiB (the whole system's, so direct shows the sockets' own
/// share), and the proxy's CPU in ms per second while they idle.
/// Per idle connection: RSS at once, kernel memory, CPU while idle (after
/// SETTLE_SECS), RSS at the end; and a 1-byte ping-pong's (p50, p99) while
/// the idle connections are held (the slowloris case: clients that hold a
/// connection and send nothing more).
async fn idle_memory(p: &Proxy, n: usize) -> Option<(f64, f64, f64, f64, Option<(f64, f64)>)> {
    let pid = p.child.as_ref().map(Child::id);
    // Warm up: allocator arenas and runtime structures the first clients fault in.
    for _ in 0..200 {
        let mut s = TcpStream::connect(p.addr).await.ok()?;
        s.write_all(b"x").await.ok()?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.ok()?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = pid.and_then(rss_kib).unwrap_or(0);
    let kernel_before = kernel_kib()?;
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(p.addr).await.ok()?;
        s.write_all(b"x").await.ok()?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.ok()?;
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = pid.and_then(rss_kib).unwrap_or(0);
    let kernel_after = kernel_kib()?;
    let busy = ping_pong(p.addr).await;
    tokio::time::sleep(Duration::from_secs_f64(SETTLE_SECS)).await;
    let cpu0 = pid.map(cpu_secs);
    tokio::time::sleep(Duration::from_secs_f64(IDLE_SECS)).await;
    let idle_cpu = match (pid, cpu0) {
        (Some(pid), Some(c0)) => (cpu_secs(pid) - c0) * 1000.0 / IDLE_SECS,
        _ => 0.0,
    };
    let settled = pid.and_then(rss_kib).unwrap_or(0);
    drop(held);
    let per_conn = |kib: u64| kib.saturating_sub(before) as f64 / n as f64;
    Some((per_conn(after), (kernel_after - kernel_before) / n as f64, idle_cpu, per_conn(settled), busy))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn spread(v: &[f64]) -> f64 {
    let (min, max) = v.iter().fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    if max > 0.0 { (max - min) / max * 100.0 } else { 0.0 }
}

/// Connections and keep-alive exchanges counted under callgrind: the
/// difference between two runs that differ in one count only, over that
/// difference, so start-up and shut-down cancel out.
const INSTR_CONNS: (u64, u64) = (200, 1200);
const INSTR_EXCHANGES: (u64, u64) = (500, 5000);
/// Bytes each way of one keep-alive exchange: a small request and answer.
const EXCHANGE_BYTES: usize = 200;

/// `n` connections one after another: connect, 1 byte there and back, close.
async fn fixed_connections(addr: SocketAddr, n: u64) {
    let mut b = [0u8; 1];
    for _ in 0..n {
        if let Ok(mut s) = TcpStream::connect(addr).await {
            let _ = s.write_all(b"x").await;
            let _ = s.read_exact(&mut b).await;
        }
    }
}

/// `n` exchanges of [`EXCHANGE_BYTES`] each way on one connection.
async fn fixed_exchanges(addr: SocketAddr, n: u64) {
    let Ok(mut s) = TcpStream::connect(addr).await else { return };
    let (msg, mut back) = (vec![7u8; EXCHANGE_BYTES], vec![0u8; EXCHANGE_BYTES]);
    for _ in 0..n {
        if s.write_all(&msg).await.is_err() || s.read_exact(&mut back).await.is_err() {
            return;
        }
    }
}

/// Instructions `name` executes in user space for `conns` connections and
/// `exchanges` exchanges, start to exit, counted by callgrind.
async fn instructions_run(name: &'static str, echo: SocketAddr, run: &Path, conns: u64, exchanges: u64) -> Option<f64> {
    let valgrind = which("valgrind")?;
    let out = run.join(format!("{name}-{conns}-{exchanges}.callgrind"));
    let wrap = vec![
        valgrind.display().to_string(),
        "--tool=callgrind".into(),
        "--trace-children=no".into(),
        format!("--callgrind-out-file={}", out.display()),
    ];
    let Some(mut p) = start_proxy_under(name, &[echo], run, 1000, &wrap, Front::Plain) else {
        eprint!(" ({name} did not start under callgrind)");
        return None;
    };
    fixed_connections(p.addr, conns).await;
    fixed_exchanges(p.addr, exchanges).await;
    // A clean exit, so callgrind writes its counts (Drop would SIGKILL).
    // SIGTERM again every 2 s: nginx with `master_process off` checks its
    // terminate flag only after epoll_wait returns, and under valgrind (which
    // turns clock_gettime into a real syscall) a signal caught just before
    // epoll_wait leaves it asleep with the flag set; a second signal wakes it.
    let mut child = p.child.take()?;
    let pid = rustix::process::Pid::from_child(&child);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut next_term = Instant::now();
    while child.try_wait().ok()?.is_none() {
        if Instant::now() > deadline {
            eprint!(" ({name} did not exit on SIGTERM under callgrind)");
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        if Instant::now() >= next_term {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            next_term = Instant::now() + Duration::from_secs(2);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Ok(text) = std::fs::read_to_string(&out) else {
        eprint!(" ({name}: no callgrind output at {})", out.display());
        return None;
    };
    let total = text.lines().rev().find_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")));
    total?.split_whitespace().next()?.parse().ok()
}

/// (instructions per connection, per exchange) of `name`.
async fn instructions(name: &'static str, echo: SocketAddr, run: &Path) -> Option<(f64, f64)> {
    let (c0, c1) = INSTR_CONNS;
    let (e0, e1) = INSTR_EXCHANGES;
    let base = instructions_run(name, echo, run, c0, e0).await?;
    let more_conns = instructions_run(name, echo, run, c1, e0).await?;
    let more_exchanges = instructions_run(name, echo, run, c0, e1).await?;
    Some(((more_conns - base) / (c1 - c0) as f64, (more_exchanges - base) / (e1 - e0) as f64))
}

/// The figures of one proxy, one list per row, one value per round.
#[derive(Default, Clone)]
struct Rows {
    tput1: Vec<f64>,
    cpu1: Vec<f64>,
    tput8: Vec<f64>,
    cpu8: Vec<f64>,
    ka_rate: Vec<f64>,
    ka_cpu: Vec<f64>,
    tcp_rate: Vec<f64>,
    tcp_cpu: Vec<f64>,
    http_rate: Vec<f64>,
    http_cpu: Vec<f64>,
    tls_rate: Vec<f64>,
    tls_cpu: Vec<f64>,
    sni_rate: Vec<f64>,
    sni_cpu: Vec<f64>,
    /// New connections with a PROXY v2 header, and without (same round).
    pp_rate: Vec<f64>,
    pp_cpu: Vec<f64>,
    pp0_rate: Vec<f64>,
    pp0_cpu: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    p50_idle: Vec<f64>,
    p99_idle: Vec<f64>,
    instr_conn: Vec<f64>,
    instr_req: Vec<f64>,
    rss: Vec<f64>,
    rss_settled: Vec<f64>,
    kernel: Vec<f64>,
    idle_cpu: Vec<f64>,
}

/// The `proxy` row group of `name`: new connections without a header,
/// then through a listener reading one, each client sending a PROXY v2
/// header naming 192.0.2.1 (a trusted source's, so it is believed).
async fn proxy_rows(name: &'static str, echo: SocketAddr, run: &Path, r: &mut Rows) {
    if let Some(p) = start_proxy(name, &[echo], run, 1000) {
        let pid = p.child.as_ref().map(Child::id);
        let ((rate, n), cpu) = with_cpu(pid, new_connections(p.addr, None)).await;
        r.pp0_rate.push(rate);
        r.pp0_cpu.extend(cpu.map(|c| c * 1e6 / n.max(1) as f64));
    }
    // Refused (and skipped, said) by a ucp-lb without the listener keys.
    let Some(p) = start_accepting_proxy(name, &[echo], run) else { return };
    let pid = p.child.as_ref().map(Child::id);
    let src: SocketAddr = "192.0.2.1:40000".parse().expect("an address");
    let header = ucp_lb::proxy_send::encode(ucp_lb::proxy_send::Version::V2, src, p.addr);
    let ((rate, n), cpu) = with_cpu(pid, new_connections(p.addr, Some(header.as_bytes()))).await;
    r.pp_rate.push(rate);
    r.pp_cpu.extend(cpu.map(|c| c * 1e6 / n.max(1) as f64));
}

/// Proxy CPU (ms, or per `per` units) spent while `f` runs.
async fn with_cpu<T>(pid: Option<u32>, f: impl std::future::Future<Output = T>) -> (T, Option<f64>) {
    let c0 = pid.map(cpu_secs);
    let out = f.await;
    (out, pid.zip(c0).map(|(pid, c0)| cpu_secs(pid) - c0))
}

fn main() {
    let rounds = env_usize("ROUNDS", 3);
    // Each idle client costs the proxy two descriptors: stay under the limit.
    let hard = rlimit_nofile();
    let want = env_usize("IDLE_CONNS", 10_000);
    let idle_n = want.min(hard.saturating_sub(400) / 2);
    if idle_n < want {
        eprintln!(
            "IDLE_CONNS={want} needs {} descriptors in the proxy; the limit here is {hard} (and cannot be raised): measuring {idle_n}",
            want * 2 + 400
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let run_dir = std::env::temp_dir().join(format!("ucp-lb-bench-{}", std::process::id()));
    let only = std::env::var("ONLY").unwrap_or_default();
    // ROWS=bulk,http,sni,proxy,tcp for a subset of the row groups (tcp: new
    // connections, ping-pong and idle); all by default.
    let groups = std::env::var("ROWS").unwrap_or_default();
    let row = |g: &str| groups.is_empty() || groups.split(',').any(|o| o == g);
    // ucp-lb-shared (ucp-lb splicing only bursts that share the proxy with
    // another, bulk rows only) runs when ONLY names it.
    let names: Vec<&str> = ["direct", "ucp-lb", "ucp-lb-shared", "nginx", "haproxy"]
        .into_iter()
        .filter(|n| if only.is_empty() { *n != "ucp-lb-shared" } else { only.split(',').any(|o| o == *n) })
        .collect();
    let mut rows = vec![Rows::default(); names.len()];
    let backend_http = http_backend(&run_dir);
    if backend_http.is_none() {
        eprintln!("nginx (the HTTP/HTTPS backend) or wrk missing: the wrk rows are skipped");
    }
    rt.block_on(async {
        let sink = backend(false).await;
        let echo = backend(true).await;
        for round in 0..rounds {
            for (i, name) in names.iter().enumerate() {
                eprint!("round {}/{rounds}: {name}...", round + 1);
                let _ = std::io::stderr().flush();
                let r = &mut rows[i];
                let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
                // Bulk.
                let Some(p) = start_proxy(name, &[sink], &run_dir, idle_n + 50) else {
                    eprintln!(" not installed, skipped");
                    continue;
                };
                if row("bulk") {
                    let pid = p.child.as_ref().map(Child::id);
                    let ((gbps, bytes), cpu) = with_cpu(pid, one_stream(p.addr)).await;
                    r.tput1.push(gbps);
                    r.cpu1.extend(cpu.map(|c| c * 1000.0 / gib(bytes)));
                    let ((gbps, bytes), cpu) = with_cpu(pid, streams(p.addr, 8)).await;
                    r.tput8.push(gbps);
                    r.cpu8.extend(cpu.map(|c| c * 1000.0 / gib(bytes)));
                }
                drop(p);
                if *name == "ucp-lb-shared" {
                    eprintln!(" done");
                    continue;
                }
                // HTTP through wrk.
                if let Some(b) = backend_http.as_ref().filter(|_| row("http")) {
                    if let Some(p) = start_proxy(name, &[b.https], &run_dir, idle_n + 50) {
                        let pid = p.child.as_ref().map(Child::id);
                        let url = format!("https://{}/", p.addr);
                        wrk_row(pid, &url, 50, false, &mut r.ka_rate, &mut r.ka_cpu);
                        wrk_row(pid, &url, 16, true, &mut r.tls_rate, &mut r.tls_cpu);
                    }
                    if let Some(p) = start_proxy(name, &[b.http], &run_dir, idle_n + 50) {
                        let pid = p.child.as_ref().map(Child::id);
                        wrk_row(pid, &format!("http://{}/", p.addr), 16, true, &mut r.http_rate, &mut r.http_cpu);
                    }
                }
                // Full TLS handshakes through a listener routed by server
                // name (wrk sends the URL's host as SNI: `localhost` on
                // loopback; between namespaces an address, which no route
                // names, so the pool for the rest takes it: the same read
                // of the hello either way).
                if let Some(b) = backend_http.as_ref().filter(|_| row("sni") && *name != "direct")
                    && let Some(p) = start_routed_proxy(name, &[b.https], &run_dir, idle_n + 50)
                {
                    let pid = p.child.as_ref().map(Child::id);
                    let host = if topology::netns() { p.addr.ip().to_string() } else { "localhost".to_owned() };
                    let url = format!("https://{host}:{}/", p.addr.port());
                    wrk_row(pid, &url, 16, true, &mut r.sni_rate, &mut r.sni_cpu);
                }
                if row("proxy") && *name != "direct" {
                    proxy_rows(name, echo, &run_dir, r).await;
                }
                // Instructions, once (they do not vary from run to run).
                if round == 0 && *name != "direct" && row("instr") {
                    match instructions(name, echo, &run_dir).await {
                        Some((per_conn, per_req)) => {
                            r.instr_conn.push(per_conn);
                            r.instr_req.push(per_req);
                        }
                        None => eprint!(" (no instruction counts: valgrind missing or the run failed)"),
                    }
                }
                // Raw TCP connections, latency, idle connections.
                if !row("tcp") {
                    eprintln!(" done");
                    continue;
                }
                let Some(p) = start_proxy(name, &[echo], &run_dir, idle_n + 50) else {
                    continue;
                };
                let pid = p.child.as_ref().map(Child::id);
                let ((rate, n), cpu) = with_cpu(pid, new_connections(p.addr, None)).await;
                r.tcp_rate.push(rate);
                r.tcp_cpu.extend(cpu.map(|c| c * 1e6 / n.max(1) as f64));
                if let Some((p50, p99)) = ping_pong(p.addr).await {
                    r.p50.push(p50);
                    r.p99.push(p99);
                }
                if let Some((rss, kernel, idle_cpu, settled, busy)) = idle_memory(&p, idle_n).await {
                    if let Some((p50, p99)) = busy {
                        r.p50_idle.push(p50);
                        r.p99_idle.push(p99);
                    }
                    if pid.is_some() {
                        r.rss.push(rss);
                        r.rss_settled.push(settled);
                        r.idle_cpu.push(idle_cpu);
                    }
                    r.kernel.push(kernel);
                }
                eprintln!(" done");
            }
        }
    });
    drop(backend_http);
    let _ = std::fs::remove_dir_all(&run_dir);
    print_table(&names, &rows, rounds, idle_n);
}

fn rlimit_nofile() -> usize {
    // /proc/self/limits: "Max open files   SOFT   HARD   files"
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            let line = l.lines().find(|l| l.starts_with("Max open files"))?.to_owned();
            line.split_whitespace().nth(4)?.parse().ok()
        })
        .unwrap_or(1024)
}

/// How one row's cell is made from a proxy's figures.
type Cell<'a> = dyn Fn(&Rows) -> String + 'a;

fn print_table(names: &[&str], rows: &[Rows], rounds: usize, idle_n: usize) {
    println!(
        "\nmedian of {rounds} interleaved rounds, ± the spread (max-min)/max; each proxy pinned to CPU 0 with one worker,\n\
         load and backends on CPU 1. CPU figures are the proxy's own (user + system, all its processes).\n{}\n",
        if topology::netns() {
            "Topology netns: client, proxy and backends in three network namespaces joined by veth pairs (GSO, GRO on)."
        } else {
            "Topology loopback: client, proxy and backends on 127.0.0.1."
        }
    );
    let cell = |v: &Vec<f64>, digits: usize| {
        if v.is_empty() { "-".to_owned() } else { format!("{:.*} ±{:.0}%", digits, median(&mut v.clone()), spread(v)) }
    };
    let direct = names.iter().position(|n| *n == "direct");
    let added = |v: &Vec<f64>, base: Option<&Vec<f64>>| match base {
        Some(b) if !v.is_empty() && !b.is_empty() => {
            format!("+{:.1} ±{:.0}%", median(&mut v.clone()) - median(&mut b.clone()), spread(v))
        }
        _ => "-".to_owned(),
    };
    let table: &[(&str, &Cell<'_>)] = &[
        ("1 stream Gbit/s", &|r| cell(&r.tput1, 2)),
        ("  proxy CPU ms/GiB", &|r| cell(&r.cpu1, 0)),
        ("8 streams Gbit/s", &|r| cell(&r.tput8, 2)),
        ("  proxy CPU ms/GiB", &|r| cell(&r.cpu8, 0)),
        ("HTTPS keep-alive req/s", &|r| cell(&r.ka_rate, 0)),
        ("  proxy CPU µs/req", &|r| cell(&r.ka_cpu, 2)),
        ("new TCP conns/s (1-byte echo)", &|r| cell(&r.tcp_rate, 0)),
        ("  proxy CPU µs/conn", &|r| cell(&r.tcp_cpu, 1)),
        ("new HTTP conns/s", &|r| cell(&r.http_rate, 0)),
        ("  proxy CPU µs/conn", &|r| cell(&r.http_cpu, 1)),
        ("new TLS conns/s (full handshake)", &|r| cell(&r.tls_rate, 0)),
        ("  proxy CPU µs/conn", &|r| cell(&r.tls_cpu, 1)),
        ("new TLS conns/s, routed by SNI", &|r| cell(&r.sni_rate, 0)),
        ("  proxy CPU µs/conn", &|r| cell(&r.sni_cpu, 1)),
        ("new TCP conns/s, PROXY v2 in", &|r| cell(&r.pp_rate, 0)),
        ("  proxy CPU µs/conn", &|r| cell(&r.pp_cpu, 1)),
        ("  same, no header: conns/s", &|r| cell(&r.pp0_rate, 0)),
        ("  proxy CPU µs/conn", &|r| cell(&r.pp0_cpu, 1)),
        ("1-byte ping-pong p50 µs", &|r| cell(&r.p50, 1)),
        ("1-byte ping-pong p99 µs", &|r| cell(&r.p99, 1)),
        ("  added p50 µs", &|r| added(&r.p50, direct.map(|d| &rows[d].p50))),
        ("  added p99 µs", &|r| added(&r.p99, direct.map(|d| &rows[d].p99))),
        ("user instructions/conn (callgrind)", &|r| cell(&r.instr_conn, 0)),
        ("user instructions/200 B exchange", &|r| cell(&r.instr_req, 0)),
    ];
    let idle_rows: [(String, &Cell<'_>); 6] = [
        (format!("ping-pong p50 µs, {idle_n} idle open"), &|r| cell(&r.p50_idle, 1)),
        (format!("ping-pong p99 µs, {idle_n} idle open"), &|r| cell(&r.p99_idle, 1)),
        (format!("RSS KiB/idle conn @{idle_n}"), &|r| cell(&r.rss, 2)),
        (format!("  after {:.0} s idle", SETTLE_SECS + IDLE_SECS), &|r| cell(&r.rss_settled, 2)),
        (format!("kernel KiB/idle conn @{idle_n}"), &|r| cell(&r.kernel, 2)),
        ("proxy CPU ms/s while idle".to_owned(), &|r| cell(&r.idle_cpu, 2)),
    ];
    print!("{:<34}", "");
    for n in names {
        print!(" {n:>16}");
    }
    println!();
    let rows_iter =
        table.iter().map(|(l, f)| (l.to_string(), *f)).chain(idle_rows.iter().map(|(l, f)| (l.clone(), *f)));
    for (label, f) in rows_iter {
        print!("{label:<34}");
        for r in rows {
            print!(" {:>16}", f(r));
        }
        println!();
    }
}
