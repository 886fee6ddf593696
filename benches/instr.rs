//! User-space instructions per new connection and per keep-alive exchange,
//! ucp-lb beside nginx `stream` and HAProxy `mode tcp`, counted by
//! callgrind in one run (issue 39).
//!
//! ```sh
//! cargo bench --bench instr          # ROUNDS=3 CONNS=1000 EXCHANGES=2000 ONLY=ucp-lb,nginx,haproxy
//! ```
//!
//! `UCP_LB_WORKERS=2` runs ucp-lb with two workers (tokio's multi-thread
//! scheduler; one worker is a current-thread runtime); `UCP_LB_BIN` measures
//! another build of it.
//!
//! Each proxy runs under `valgrind --tool=callgrind` with one worker and the
//! bench's own echo server as its only backend. After a warm-up (the
//! connections that found it listening, and one of each unit), its counters
//! are zeroed (`callgrind_control -z`), then `CONNS` connections run one
//! after another (connect, 1 byte there and back, the client's FIN, the
//! proxy's close read), and the counters are dumped (`callgrind_control
//! -d`); zeroed again, `EXCHANGES` exchanges of 200 bytes each way run on
//! one open connection, and dumped again. Each unit waits for the last one
//! to be answered, so no work of one is left for the next, and the counts
//! come out the same whatever else the machine does (a few tens of
//! instructions per unit between rounds). A third row (`PROXY=0` leaves it
//! out, issue 37) counts `CONNS` new connections again on a second start
//! of each proxy reading a PROXY v2 header from loopback, which it trusts
//! (ucp-lb `proxy_protocol = true` with `real_ip_from`, nginx `listen ...
//! proxy_protocol` with `set_real_ip_from`, HAProxy `accept-proxy`): the
//! client writes the header and its first byte in one write, as an outer
//! balancer does. Start-up and exit are not
//! counted, so the process is killed at the end (by its PID).
//!
//! The dumps stay in `target/instr/<proxy>.<round>.out.<1|2>` (1:
//! connections, 2: exchanges) for `callgrind_annotate` (self) and
//! `callgrind_annotate --inclusive=yes`. Proxies whose program is missing
//! are skipped and said so.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::which;

/// Bytes each way of one keep-alive exchange: a small request and answer.
const EXCHANGE_BYTES: usize = 200;
const WARM_UP: u64 = 20;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The bench's echo backend: every connection gets back what it sends.
async fn echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind the echo backend on loopback");
    let addr = l.local_addr().expect("a bound listener has an address");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A proxy under callgrind, killed (by PID) when dropped.
struct Counted {
    child: Child,
    addr: SocketAddr,
    out: PathBuf,
    dumps: u32,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on loopback")
}

/// The command line and config of `name` proxying `listen` to `backend`,
/// written under `dir`, reading a PROXY header from its clients (trusted:
/// loopback) when `pp`; None when its program is missing.
fn proxy_command(
    name: &str,
    (listen, pp): (SocketAddr, bool),
    backend: SocketAddr,
    dir: &Path,
    lb: &Path,
) -> Option<Command> {
    let write = |file: &str, text: String| {
        let p = dir.join(file);
        std::fs::write(&p, text).expect("write a proxy config under target/instr");
        p
    };
    match name {
        "ucp-lb" => {
            let cfg = write(
                "lb.toml",
                format!(
                    "workers = {workers}\n[admin]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"\"\n\
                     [[listener]]\nbind = \"{listen}\"\npool = \"b\"\n{pp}[pool.b]\nservers = [\"{backend}\"]\n",
                    workers = env_u64("UCP_LB_WORKERS", 1),
                    pp = if pp { "proxy_protocol = true\nreal_ip_from = [\"127.0.0.0/8\"]\n" } else { "" },
                ),
            );
            let mut c = Command::new(lb);
            c.arg("--config").arg(cfg).env("RUST_LOG", "warn");
            Some(c)
        }
        "nginx" => {
            let bin = which("nginx")?;
            let module =
                ["/usr/lib/nginx/modules/ngx_stream_module.so", "/usr/share/nginx/modules/ngx_stream_module.so"]
                    .into_iter()
                    .find(|p| Path::new(p).exists());
            let load = module.map(|m| format!("load_module {m};\n")).unwrap_or_default();
            let cfg = write(
                "nginx.conf",
                format!(
                    "{load}daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
                     error_log {d}/error.log warn;\nevents {{ worker_connections 1024; }}\n\
                     stream {{\n upstream b {{ server {backend}; }}\n server {{ listen {listen}{pp}; proxy_pass b; }}\n}}\n",
                    d = dir.display(),
                    pp = if pp { " proxy_protocol; set_real_ip_from 127.0.0.0/8" } else { "" },
                ),
            );
            let mut c = Command::new(bin);
            c.arg("-c").arg(cfg).arg("-p").arg(dir);
            Some(c)
        }
        "haproxy" => {
            let bin = which("haproxy")?;
            let cfg = write(
                "haproxy.cfg",
                format!(
                    "global\n maxconn 1000\n nbthread 1\ndefaults\n mode tcp\n timeout connect 3s\n\
                     timeout client 1h\n timeout server 1h\nfrontend f\n bind {listen}{pp}\n default_backend b\n\
                     backend b\n server s0 {backend}\n",
                    pp = if pp { " accept-proxy" } else { "" }
                ),
            );
            let mut c = Command::new(bin);
            c.arg("-f").arg(cfg).arg("-db");
            Some(c)
        }
        _ => None,
    }
}

/// Starts `name` under callgrind and waits (bounded) until it accepts.
fn start(name: &str, backend: SocketAddr, dir: &Path, lb: &Path, (round, pp): (u64, bool)) -> Option<Counted> {
    let valgrind = which("valgrind")?;
    which("callgrind_control")?;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let conf_dir = dir.join(name);
    std::fs::create_dir_all(&conf_dir).expect("create target/instr");
    let inner = proxy_command(name, (listen, pp), backend, &conf_dir, lb)?;
    let out = dir.join(format!("{name}{}.{round}.out", if pp { ".proxy-v2" } else { "" }));
    for old in 0..3 {
        let _ = std::fs::remove_file(if old == 0 { out.clone() } else { part(&out, old) });
    }
    let mut c = Command::new(valgrind);
    c.arg("--tool=callgrind")
        .arg("--trace-children=no")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(inner.get_program())
        .args(inner.get_args())
        .envs(inner.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = c.spawn().ok()?;
    let p = Counted { child, addr: listen, out, dumps: 0 };
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::net::TcpStream::connect(p.addr).is_err() {
        if Instant::now() > deadline {
            eprintln!("{name}: did not start listening under callgrind; skipped");
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(p)
}

fn part(out: &Path, n: u32) -> PathBuf {
    PathBuf::from(format!("{}.{n}", out.display()))
}

impl Counted {
    fn control(&self, args: &[&str]) -> bool {
        let status = Command::new("callgrind_control")
            .args(args)
            .arg(self.child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        status.is_ok_and(|s| s.success())
    }

    fn zero(&self) -> bool {
        self.control(&["-z"])
    }

    /// Dumps the counters since the last zero; their total instructions.
    fn dump(&mut self, what: &str) -> Option<u64> {
        if !self.control(&["-d", what]) {
            return None;
        }
        self.dumps += 1;
        let text = std::fs::read_to_string(part(&self.out, self.dumps)).ok()?;
        let total = text.lines().rev().find_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")));
        total?.split_whitespace().next()?.parse().ok()
    }
}

/// A PROXY v2 header naming the client `src` (IPv4, as an outer
/// balancer would send it) and `dst`, followed by `data`.
fn v2_header(src: SocketAddr, dst: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    for a in [src, dst] {
        match a.ip() {
            std::net::IpAddr::V4(ip) => h.extend_from_slice(&ip.octets()),
            std::net::IpAddr::V6(_) => h.extend_from_slice(&[127, 0, 0, 1]),
        }
    }
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h.extend_from_slice(data);
    h
}

/// One connection: connect, 1 byte there and back (behind a PROXY v2
/// header in the same write when `pp`), then the client's FIN and the
/// proxy's close, read, so the proxy has finished with it.
async fn one_connection(addr: SocketAddr, pp: bool) {
    let Ok(mut s) = TcpStream::connect(addr).await else { return };
    let mut b = [0u8; 1];
    let first = match (pp, s.local_addr()) {
        (true, Ok(local)) => v2_header(local, addr, b"x"),
        _ => b"x".to_vec(),
    };
    if s.write_all(&first).await.is_err() || s.read_exact(&mut b).await.is_err() {
        return;
    }
    let _ = s.shutdown().await;
    let mut rest = [0u8; 16];
    while let Ok(n) = s.read(&mut rest).await {
        if n == 0 {
            break;
        }
    }
}

async fn exchanges(s: &mut TcpStream, n: u64) -> bool {
    let (msg, mut back) = ([7u8; EXCHANGE_BYTES], [0u8; EXCHANGE_BYTES]);
    for _ in 0..n {
        if s.write_all(&msg).await.is_err() || s.read_exact(&mut back).await.is_err() {
            return false;
        }
    }
    true
}

/// Instructions per new connection of a proxy reading a PROXY v2 header
/// from loopback, which it trusts: one round.
async fn measure_pp(name: &str, backend: SocketAddr, dir: &Path, lb: &Path, round: u64, conns: u64) -> Option<f64> {
    let mut p = start(name, backend, dir, lb, (round, true))?;
    for _ in 0..WARM_UP {
        one_connection(p.addr, true).await;
    }
    if !p.zero() {
        return None;
    }
    for _ in 0..conns {
        one_connection(p.addr, true).await;
    }
    Some(p.dump("connections")? as f64 / conns as f64)
}

/// (instructions per connection, per exchange) of `name`, one round.
async fn measure(
    name: &str,
    backend: SocketAddr,
    dir: &Path,
    lb: &Path,
    round: u64,
    conns: u64,
    n: u64,
) -> Option<(f64, f64)> {
    let mut p = start(name, backend, dir, lb, (round, false))?;
    for _ in 0..WARM_UP {
        one_connection(p.addr, false).await;
    }
    if !p.zero() {
        eprintln!("{name}: callgrind_control -z failed; skipped");
        return None;
    }
    for _ in 0..conns {
        one_connection(p.addr, false).await;
    }
    let per_conn = p.dump("connections")? as f64 / conns as f64;
    let mut s = TcpStream::connect(p.addr).await.ok()?;
    s.set_nodelay(true).ok()?;
    if !exchanges(&mut s, WARM_UP).await || !p.zero() || !exchanges(&mut s, n).await {
        return None;
    }
    let per_exchange = p.dump("exchanges")? as f64 / n as f64;
    Some((per_conn, per_exchange))
}

fn cell(v: &[f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let (lo, mid, hi) = (s[0], s[s.len() / 2], s[s.len() - 1]);
    format!("{mid:.0} ({lo:.0}-{hi:.0})")
}

fn main() {
    let rounds = env_u64("ROUNDS", 3);
    let conns = env_u64("CONNS", 1000);
    let n = env_u64("EXCHANGES", 2000);
    let only = std::env::var("ONLY").unwrap_or_else(|_| "ucp-lb,nginx,haproxy".into());
    let names: Vec<&str> = only.split(',').filter(|s| !s.is_empty()).collect();
    if which("valgrind").is_none() || which("callgrind_control").is_none() {
        eprintln!("valgrind (callgrind) not installed: nothing to count");
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/instr");
    std::fs::create_dir_all(&dir).expect("create target/instr");
    let lb = match std::env::var_os("UCP_LB_BIN") {
        Some(p) => PathBuf::from(p),
        None => common::shipped_ucp_lb(),
    };
    eprintln!("ucp-lb: {}", lb.display());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime for the bench");
    let mut figures: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); names.len()];
    // Per new connection with a PROXY v2 header (PROXY=0 leaves it out).
    let pp = env_u64("PROXY", 1) == 1;
    let mut with_header: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    rt.block_on(async {
        let backend = echo().await;
        // Interleaved: round 1 of each proxy, then round 2, ...
        for round in 1..=rounds {
            for (i, name) in names.iter().enumerate() {
                eprint!("round {round} {name} ...");
                match measure(name, backend, &dir, &lb, round, conns, n).await {
                    Some((c, e)) => {
                        eprintln!(" {c:.0}/conn {e:.0}/exchange");
                        figures[i].0.push(c);
                        figures[i].1.push(e);
                    }
                    None => eprintln!(" skipped"),
                }
                if pp {
                    eprint!("round {round} {name} with a PROXY v2 header ...");
                    match measure_pp(name, backend, &dir, &lb, round, conns).await {
                        Some(c) => {
                            eprintln!(" {c:.0}/conn");
                            with_header[i].push(c);
                        }
                        None => eprintln!(" skipped"),
                    }
                }
            }
        }
    });
    println!(
        "\nuser-space instructions (callgrind), median (min-max) of {rounds} rounds, {conns} connections, {n} exchanges"
    );
    print!("{:<44}", "");
    for name in &names {
        print!("{name:>24}");
    }
    println!();
    for (label, pick) in
        [("per new connection (connect, 1 B echo, close)", 0), ("per 200-byte exchange on an open connection", 1)]
    {
        print!("{label:<44}");
        for f in &figures {
            print!("{:>24}", cell(if pick == 0 { &f.0 } else { &f.1 }));
        }
        println!();
    }
    if pp {
        print!("{:<44}", "per new connection behind a PROXY v2 header");
        for f in &with_header {
            print!("{:>24}", cell(f));
        }
        println!();
    }
    println!("dumps: {}/<proxy>.<round>.out.1 (connections), .2 (exchanges)", dir.display());
}
