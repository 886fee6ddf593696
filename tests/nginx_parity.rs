//! Same choices as nginx: a pool migrated from nginx sends each client where
//! nginx did. Runs nginx's own `stream` module (smooth weighted round robin,
//! `hash $remote_addr consistent`) next to ucp-lb on the same backends.
//! Skipped when nginx is not installed, except under CI=true, where
//! .ci/run installs it.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;
use tokio::net::TcpSocket;

fn nginx_bin() -> Option<PathBuf> {
    let found =
        ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"].iter().map(PathBuf::from).find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "nginx is missing under CI=true: .ci/run should install it"
        );
        eprintln!("skipped: nginx is not installed");
    }
    found
}

struct Nginx {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts nginx (one process, in the foreground) with `upstream` as the
/// body of `upstream b { ... }`.
async fn nginx(bin: &Path, upstream: &str) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    // nginx cannot report a port it chose: take a free one.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let module = ["/usr/lib/nginx/modules/ngx_stream_module.so", "/usr/share/nginx/modules/ngx_stream_module.so"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .map(|m| format!("load_module {m};\n"))
        .unwrap_or_default();
    let d = dir.path().display();
    let conf = format!(
        "{module}daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 1024; }}\nstream {{\n upstream b {{\n{upstream}\n }}\n server {{ listen {addr}; proxy_pass b; }}\n}}\n"
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new(bin)
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the pid file, written after the listening socket is open:
    // a probe connection would itself be proxied and skew the counts.
    let pid = dir.path().join("nginx.pid");
    let start = std::time::Instant::now();
    while !pid.exists() {
        assert!(start.elapsed() < DEADLINE, "nginx did not start");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Nginx { child, addr, _dir: dir }
}

/// Which of `echoes` served one round trip from `src` through `lb`.
async fn served_by(echoes: &[Echo], lb: SocketAddr, src: [u8; 4]) -> usize {
    let before: Vec<usize> = echoes.iter().map(Echo::count).collect();
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::from((src, 0))).unwrap();
    let mut s = s.connect(lb).await.unwrap();
    echo_once(&mut s).await.unwrap();
    (0..echoes.len()).find(|&i| echoes[i].count() > before[i]).unwrap()
}

#[tokio::test]
async fn source_hash_sends_each_client_where_nginx_hash_consistent_does() {
    let Some(bin) = nginx_bin() else { return };
    let echoes = vec![Echo::start().await, Echo::start().await, Echo::start().await];
    let servers: String = echoes.iter().map(|e| format!("  server {};\n", e.addr)).collect();
    let ngx = nginx(&bin, &format!("  hash $remote_addr consistent;\n{servers}")).await;
    let addrs: Vec<SocketAddr> = echoes.iter().map(|e| e.addr).collect();
    let lb = start_lb(&one_pool(&addrs, "balance = \"source_hash\"")).await;
    let mut differ = Vec::new();
    for host in 1..=60u8 {
        let src = [127, 0, 2, host];
        let a = served_by(&echoes, ngx.addr, src).await;
        let b = served_by(&echoes, lb.listener_addrs()[0], src).await;
        if a != b {
            differ.push(format!("127.0.2.{host}: nginx {a}, ucp-lb {b} ({addrs:?})"));
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}

#[tokio::test]
async fn weighted_round_robin_follows_nginx_sequence() {
    let Some(bin) = nginx_bin() else { return };
    let echoes = vec![Echo::start().await, Echo::start().await, Echo::start().await];
    let weights = [5, 1, 2];
    let servers: String =
        echoes.iter().zip(weights).map(|(e, w)| format!("  server {} weight={w};\n", e.addr)).collect();
    let ngx = nginx(&bin, &servers).await;
    let list: Vec<String> =
        echoes.iter().zip(weights).map(|(e, w)| format!("{{ address = \"{}\", weight = {w} }}", e.addr)).collect();
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n[pool.p]\nservers = [{}]\n",
        list.join(", ")
    );
    let lb = start_lb(&toml).await;
    let mut seq_nginx = Vec::new();
    let mut seq_lb = Vec::new();
    for _ in 0..16 {
        seq_nginx.push(served_by(&echoes, ngx.addr, [127, 0, 0, 1]).await);
    }
    for _ in 0..16 {
        seq_lb.push(served_by(&echoes, lb.listener_addrs()[0], [127, 0, 0, 1]).await);
    }
    assert_eq!(seq_lb, seq_nginx);
}

#[tokio::test]
async fn retries_and_passive_ejection_follow_nginx_with_a_refusing_server() {
    let Some(bin) = nginx_bin() else { return };
    // Weights 3, 6, 2; the weight-6 server refuses. nginx lowers its
    // effective weight on each failure, retries elsewhere, and ejects it
    // after max_fails: the clients' servers must come out the same.
    let echoes = vec![Echo::start().await, Echo::start().await];
    let refusing = refusing_addr();
    let addrs = [echoes[0].addr, refusing, echoes[1].addr];
    let weights = [3, 6, 2];
    let servers: String = addrs
        .iter()
        .zip(weights)
        .map(|(a, w)| format!("  server {a} weight={w} max_fails=3 fail_timeout=1h;\n"))
        .collect();
    let ngx = nginx(&bin, &servers).await;
    let list: Vec<String> =
        addrs.iter().zip(weights).map(|(a, w)| format!("{{ address = \"{a}\", weight = {w} }}")).collect();
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n[pool.p]\nservers = [{}]\nmax_fails = 3\nfail_timeout = \"1h\"\nretries = \"all\"\n",
        list.join(", ")
    );
    let lb = start_lb(&toml).await;
    let (mut seq_nginx, mut seq_lb) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        seq_nginx.push(served_by(&echoes, ngx.addr, [127, 0, 0, 1]).await);
    }
    for _ in 0..20 {
        seq_lb.push(served_by(&echoes, lb.listener_addrs()[0], [127, 0, 0, 1]).await);
    }
    assert_eq!(seq_lb, seq_nginx);
    assert!(server(&lb, refusing).ejected);
}
