//! nginx's own `stream` module, run next to ucp-lb: found where Debian puts
//! it, started in the foreground on a config of the test's, stopped on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use super::{DEADLINE, Echo, echo_once, poll_for};

/// The nginx binary; None (test skipped) when it is missing, except under
/// CI=true, where .ci/run installs it and a missing one is a failure.
pub fn nginx_bin() -> Option<PathBuf> {
    super::external_tool(&["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"], "nginx")
}

pub struct Nginx {
    child: Child,
    /// The nginx.conf it runs.
    pub conf: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port: nginx cannot report a port it chose.
pub fn free_addr() -> SocketAddr {
    let [addr] = free_addrs();
    addr
}

/// `N` distinct free loopback ports. Each is held until the last is
/// picked: released one by one, the kernel may hand the same port out
/// twice (seen in CI: nginx refused a duplicate listen).
pub fn free_addrs<const N: usize>() -> [SocketAddr; N] {
    let held: Vec<std::net::TcpListener> =
        (0..N).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap())
}

/// Starts nginx (one process, in the foreground) with `stream` as the body
/// of its `stream {}` block; returns once its listeners are open.
pub async fn start_nginx(bin: &Path, stream: &str) -> Nginx {
    start_nginx_with(bin, stream, "").await
}

/// As [`start_nginx`], with `top` (an `http {}` block, say) after the
/// `stream {}` block.
pub async fn start_nginx_with(bin: &Path, stream: &str, top: &str) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let module = ["/usr/lib/nginx/modules/ngx_stream_module.so", "/usr/share/nginx/modules/ngx_stream_module.so"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .map(|m| format!("load_module {m};\n"))
        .unwrap_or_default();
    let d = dir.path().display();
    let conf = format!(
        "{module}daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 1024; }}\nstream {{\n{stream}\n}}\n{top}\n"
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
    // Wait for the pid file, written after the listening sockets are open:
    // a probe connection would itself be proxied and skew the counts.
    let pid = dir.path().join("nginx.pid");
    if poll_for(DEADLINE, || std::future::ready(pid.exists().then_some(()))).await.is_none() {
        panic!("nginx did not start: {}", log(&dir));
    }
    Nginx { child, conf: path, dir }
}

fn log(dir: &tempfile::TempDir) -> String {
    std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
}

impl Nginx {
    /// Its process (one: `master_process off`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops nginx and waits until it has exited (its ports are free).
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which of `echoes` served one round trip from `src` through `lb`.
pub async fn served_by(echoes: &[Echo], lb: SocketAddr, src: [u8; 4]) -> usize {
    let before: Vec<usize> = echoes.iter().map(Echo::count).collect();
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::from((src, 0))).unwrap();
    let mut s = s.connect(lb).await.unwrap();
    echo_once(&mut s).await.unwrap();
    (0..echoes.len()).find(|&i| echoes[i].count() > before[i]).unwrap()
}

/// What a client of `lb` bound to 127.0.0.77 is answered (after sending
/// `first`, if any), by an nginx behind it telling what PROXY header it
/// got: the first line, and the client's own port.
pub async fn answer_from_77(lb: SocketAddr, first: &[u8]) -> (String, u16) {
    let s = TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.77:0".parse().unwrap()).unwrap();
    let mut s = s.connect(lb).await.unwrap();
    let port = s.local_addr().unwrap().port();
    if !first.is_empty() {
        s.write_all(first).await.unwrap();
    }
    // Up to the end of the line: nginx's `return` closes at once, and the
    // bytes it did not read may reset the connection after it.
    let mut got = Vec::new();
    let mut b = [0u8; 256];
    while !got.contains(&b'\n') {
        match s.read(&mut b).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&b[..n]),
        }
    }
    (String::from_utf8_lossy(&got).trim_end().to_owned(), port)
}
