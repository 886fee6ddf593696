//! Soak: the release ucp-lb under steady traffic for SOAK_SECS (default one
//! hour), with a config reload every 10 s and random server flaps, all on
//! loopback. Not part of CI; run it with `benches/soak.sh`.
//!
//! - 4 echo servers in this process. A flap closes one server's listener for
//!   1-3 s (new connects are refused) and opens it again on the same port;
//!   connections already open through it go on.
//! - Short clients: about 100 connections a second, each sends 1 B-64 KiB
//!   of random bytes, half-closes and checks the echo byte for byte.
//! - Long streams: 16 connections, each streams random bytes for 60 s at
//!   about 1 MiB/s while reading the echo, then compares the SHA-256 of what
//!   it sent and what came back, and starts again.
//! - Every SAMPLE_SECS (default 60): ucp-lb's open descriptors, RSS, threads
//!   and open client connections, printed as a table row; at the end a plot
//!   and the verdict (exit status 1 when something was lost or grew).
//!
//! Every load stops by itself at the end; ucp-lb is stopped by its PID.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const SERVERS: usize = 4;
const STREAMS: usize = 16;
const STREAM_SECS: u64 = 60;
const SHORT_PER_SEC: u64 = 100;
const RELOAD_EVERY: Duration = Duration::from_secs(10);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[derive(Default)]
struct Counts {
    short_ok: AtomicU64,
    short_failed_connect: AtomicU64,
    short_corrupt: AtomicU64,
    short_bytes: AtomicU64,
    streams_ok: AtomicU64,
    streams_failed: AtomicU64,
    stream_bytes: AtomicU64,
    flaps: AtomicU64,
    /// When each flap closed a listener.
    flap_downs: Mutex<Vec<Instant>>,
    /// Short clients closed without an answer: (start, end).
    unanswered: Mutex<Vec<(Instant, Instant)>>,
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(1024)
}

/// Echoes on `addr`; while `down` is set its listener is closed.
async fn server(addr: SocketAddr, down: Arc<AtomicBool>, end: Instant) {
    while Instant::now() < end {
        if down.load(Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let Ok(l) = listen(addr) else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        while !down.load(Relaxed) && Instant::now() < end {
            if let Ok(Ok((s, _))) = tokio::time::timeout(Duration::from_millis(20), l.accept()).await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        }
    }
}

async fn short_client(lb: SocketAddr, c: &Counts) {
    let start = Instant::now();
    let len = fastrand::usize(1..=64 * 1024);
    let data: Vec<u8> = (0..len).map(|_| fastrand::u8(..)).collect();
    let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(lb)).await else {
        c.short_failed_connect.fetch_add(1, Relaxed);
        return;
    };
    let (mut r, mut w) = s.into_split();
    let send = async {
        w.write_all(&data).await?;
        w.shutdown().await
    };
    let mut back = Vec::with_capacity(len);
    let (sent, got) = tokio::join!(send, r.read_to_end(&mut back));
    if sent.is_ok() && got.is_ok() && back == data {
        c.short_ok.fetch_add(1, Relaxed);
        c.short_bytes.fetch_add(len as u64, Relaxed);
    } else if back.is_empty() {
        // Closed before a byte came back: the connect to a server failed
        // behind the LB, or the server reset it. Counted as a failed
        // connect; the end matches it with the flaps.
        c.short_failed_connect.fetch_add(1, Relaxed);
        c.unanswered.lock().unwrap_or_else(|p| p.into_inner()).push((start, Instant::now()));
    } else {
        c.short_corrupt.fetch_add(1, Relaxed);
    }
}

/// One long stream: STREAM_SECS of random bytes at about 1 MiB/s.
async fn stream(lb: SocketAddr, c: &Counts, end: Instant) {
    let Ok(s) = TcpStream::connect(lb).await else {
        c.streams_failed.fetch_add(1, Relaxed);
        return;
    };
    let (mut r, mut w) = s.into_split();
    let stop = (Instant::now() + Duration::from_secs(STREAM_SECS)).min(end);
    let send = async {
        let mut h = Sha256::new();
        let mut n = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(16));
        let mut chunk = vec![0u8; 16 * 1024];
        while Instant::now() < stop {
            tick.tick().await;
            fastrand::fill(&mut chunk);
            w.write_all(&chunk).await?;
            h.update(&chunk);
            n += chunk.len() as u64;
        }
        w.shutdown().await?;
        Ok::<_, std::io::Error>((h.finalize(), n))
    };
    let recv = async {
        let mut h = Sha256::new();
        let mut n = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let k = r.read(&mut buf).await?;
            if k == 0 {
                return Ok::<_, std::io::Error>((h.finalize(), n));
            }
            h.update(&buf[..k]);
            n += k as u64;
        }
    };
    match tokio::join!(send, recv) {
        (Ok((hs, ns)), Ok((hr, nr))) if hs == hr && ns == nr => {
            c.streams_ok.fetch_add(1, Relaxed);
            c.stream_bytes.fetch_add(ns, Relaxed);
        }
        _ => {
            c.streams_failed.fetch_add(1, Relaxed);
        }
    }
}

fn config(lb: SocketAddr, admin: SocketAddr, servers: &[SocketAddr], weight: u32) -> String {
    let list: Vec<String> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| if i == 0 { format!("{{ address = \"{s}\", weight = {weight} }}") } else { format!("\"{s}\"") })
        .collect();
    format!(
        "[admin]\nlisten = \"{admin}\"\n\n[[listener]]\nbind = \"{lb}\"\npool = \"p\"\n\n[pool.p]\n\
         servers = [{}]\nmax_fails = 1\nfail_timeout = \"2s\"\nretries = \"all\"\n\n\
         [pool.p.health]\nkind = \"tcp\"\ninterval = \"1s\"\ntimeout = \"1s\"\nrise = 1\nfall = 1\n",
        list.join(", ")
    )
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    l.local_addr().expect("local addr")
}

#[derive(Clone, Copy)]
struct Sample {
    at_s: u64,
    fds: u64,
    rss_kib: u64,
    threads: u64,
    open: u64,
    generation: u64,
}

fn proc_status(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines().find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

/// Open client connections and the config generation, from /status.
async fn lb_status(admin: SocketAddr) -> (u64, u64) {
    let Ok(mut s) = TcpStream::connect(admin).await else { return (0, 0) };
    let _ = s.write_all(b"GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let open = v["listeners"].as_array().map(|a| a.iter().filter_map(|l| l["active"].as_u64()).sum()).unwrap_or(0);
    (open, v["generation"].as_u64().unwrap_or(0))
}

fn plot(title: &str, samples: &[Sample], f: impl Fn(&Sample) -> u64) {
    let (lo, hi) = samples.iter().map(&f).fold((u64::MAX, 0), |(a, b), v| (a.min(v), b.max(v)));
    println!("\n{title} (min {lo}, max {hi})");
    const ROWS: u64 = 8;
    for row in (0..ROWS).rev() {
        let line: String = samples
            .iter()
            .map(|s| {
                let v = f(s);
                let level = if hi > lo { (v - lo) * (ROWS - 1) / (hi - lo) } else { 0 };
                if level >= row { '#' } else { ' ' }
            })
            .collect();
        let label = lo + (hi - lo) * row / (ROWS - 1).max(1);
        println!("{label:>10} |{line}");
    }
    println!("{:>10} +{}", "", "-".repeat(samples.len()));
    println!("{:>10}  one column per sample", "");
}

fn main() {
    let secs = env_u64("SOAK_SECS", 3600);
    let sample_secs = env_u64("SAMPLE_SECS", 60).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    let failed = rt.block_on(async move {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let servers: Vec<SocketAddr> = (0..SERVERS).map(|_| free_addr()).collect();
        let (lb, admin) = (free_addr(), free_addr());
        let path = dir.path().join("lb.toml");
        std::fs::write(&path, config(lb, admin, &servers, 1)).expect("write the config");
        let start = Instant::now();
        let end = start + Duration::from_secs(secs);
        let downs: Vec<Arc<AtomicBool>> = (0..SERVERS).map(|_| Arc::new(AtomicBool::new(false))).collect();
        for (a, d) in servers.iter().zip(&downs) {
            tokio::spawn(server(*a, d.clone(), end));
        }
        let mut child = std::process::Command::new(common::shipped_ucp_lb_once())
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("ucp-lb starts");
        let pid = child.id();
        let ready = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(lb).await.is_err() {
            assert!(Instant::now() < ready, "ucp-lb never listened on {lb}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!("soak: {secs} s, {SERVERS} servers, {STREAMS} long streams, ~{SHORT_PER_SEC} short connections/s, reload every 10 s, random flaps");
        let counts = Arc::new(Counts::default());

        // Short clients, paced.
        let c = counts.clone();
        let shorts = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / SHORT_PER_SEC));
            let mut tasks = tokio::task::JoinSet::new();
            while Instant::now() < end {
                tick.tick().await;
                let c = c.clone();
                tasks.spawn(async move { short_client(lb, &c).await });
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        });
        // Long streams, each restarted when done.
        let mut streams = Vec::new();
        for _ in 0..STREAMS {
            let c = counts.clone();
            streams.push(tokio::spawn(async move {
                while Instant::now() + Duration::from_secs(5) < end {
                    stream(lb, &c, end).await;
                }
            }));
        }
        // Reloads: the first server's weight goes 1, 2, 1, ...
        let reloader = {
            let (path, servers) = (path.clone(), servers.clone());
            tokio::spawn(async move {
                let mut n = 0u32;
                while Instant::now() + RELOAD_EVERY < end {
                    tokio::time::sleep(RELOAD_EVERY).await;
                    n += 1;
                    let _ = std::fs::write(&path, config(lb, admin, &servers, 1 + n % 2));
                }
                n
            })
        };
        // Flaps: one server at a time, down 1-3 s, every 4-10 s.
        let flapper = {
            let (downs, c) = (downs.clone(), counts.clone());
            tokio::spawn(async move {
                while Instant::now() + Duration::from_secs(15) < end {
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(4000..10000))).await;
                    let d = &downs[fastrand::usize(..SERVERS)];
                    c.flap_downs.lock().unwrap_or_else(|p| p.into_inner()).push(Instant::now());
                    d.store(true, Relaxed);
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(1000..3000))).await;
                    d.store(false, Relaxed);
                    c.flaps.fetch_add(1, Relaxed);
                }
            })
        };

        println!(
            "\n{:>6} {:>6} {:>9} {:>8} {:>6} {:>10} {:>9} {:>8} {:>7} {:>7}",
            "min", "fds", "RSS KiB", "threads", "open", "short ok", "streams", "failed", "flaps", "config"
        );
        let mut samples = Vec::new();
        let mut next = start + Duration::from_secs(sample_secs);
        while next <= end {
            tokio::time::sleep_until(next.into()).await;
            let (open, generation) = lb_status(admin).await;
            let s = Sample {
                at_s: start.elapsed().as_secs(),
                fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0),
                rss_kib: proc_status(pid, "VmRSS:"),
                threads: proc_status(pid, "Threads:"),
                open,
                generation,
            };
            let failed = counts.short_failed_connect.load(Relaxed)
                + counts.short_corrupt.load(Relaxed)
                + counts.streams_failed.load(Relaxed);
            println!(
                "{:>6.1} {:>6} {:>9} {:>8} {:>6} {:>10} {:>9} {:>8} {:>7} {:>7}",
                s.at_s as f64 / 60.0,
                s.fds,
                s.rss_kib,
                s.threads,
                s.open,
                counts.short_ok.load(Relaxed),
                counts.streams_ok.load(Relaxed),
                failed,
                counts.flaps.load(Relaxed),
                s.generation
            );
            samples.push(s);
            next += Duration::from_secs(sample_secs);
        }
        let _ = shorts.await;
        for s in streams {
            let _ = s.await;
        }
        let reloads = reloader.await.unwrap_or(0);
        let _ = flapper.await;
        // Stop ucp-lb by its PID.
        let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        let _ = child.wait();

        if samples.len() >= 2 {
            plot("ucp-lb RSS KiB", &samples, |s| s.rss_kib);
            plot("ucp-lb open descriptors", &samples, |s| s.fds);
        }
        let c = &counts;
        println!(
            "\nshort connections: {} ok ({} MiB), {} failed connects, {} corrupted",
            c.short_ok.load(Relaxed),
            c.short_bytes.load(Relaxed) >> 20,
            c.short_failed_connect.load(Relaxed),
            c.short_corrupt.load(Relaxed)
        );
        println!(
            "long streams: {} ok ({} MiB, SHA-256 checked), {} failed or corrupted",
            c.streams_ok.load(Relaxed),
            c.stream_bytes.load(Relaxed) >> 20,
            c.streams_failed.load(Relaxed)
        );
        println!("reloads written: {reloads}; flaps: {}", c.flaps.load(Relaxed));
        // Growth: from the second sample (warmed up) to the last, descriptors
        // beyond those of the connections open at each sample, and RSS.
        // A flap closes a listening socket, and the kernel resets the
        // connections still queued on it: the LB had connected (nothing to
        // retry), so that client sees a close. Such a close overlaps a flap.
        let downs = c.flap_downs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let unanswered = c.unanswered.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let by_flap =
            unanswered.iter().filter(|(a, b)| downs.iter().any(|f| a <= f && f <= b)).count() as u64;
        let unexpected = c.short_failed_connect.load(Relaxed) - by_flap
            + c.short_corrupt.load(Relaxed)
            + c.streams_failed.load(Relaxed);
        println!(
            "of the failed connects, {by_flap} were open while a flap closed their server's listener (its queued connections are reset); unexpected failures: {unexpected}"
        );
        let mut bad = unexpected > 0;
        if let (Some(first), Some(last)) = (samples.get(1), samples.last()) {
            let base = |s: &Sample| s.fds.saturating_sub(2 * s.open);
            let fd_growth = base(last) as i64 - base(first) as i64;
            let rss_growth = last.rss_kib as f64 / first.rss_kib.max(1) as f64 - 1.0;
            println!(
                "from minute {:.0} to {:.0}: descriptors beyond 2 per open connection {} -> {} ({fd_growth:+}); RSS {} -> {} KiB ({:+.1} %); threads {} -> {}",
                first.at_s as f64 / 60.0,
                last.at_s as f64 / 60.0,
                base(first),
                base(last),
                first.rss_kib,
                last.rss_kib,
                rss_growth * 100.0,
                first.threads,
                last.threads
            );
            bad |= fd_growth > 4 || rss_growth > 0.10 || last.threads > first.threads;
        }
        println!("verdict: {}", if bad { "FAILED" } else { "passed" });
        bad
    });
    std::process::exit(i32::from(failed));
}
