//! Loopback test fixtures: backends that echo, refuse, never accept, or reset;
//! an LB started from lb.toml text; waiting on conditions with a deadline.
#![allow(dead_code)]

use std::future::Future;
use std::io;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use sha2::{Digest, Sha256};
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use ucp_lb::view::ServerStatus;

pub mod nginx;
/// The stand-in UCP managers and DTR replicas the demo runs too.
#[path = "../../src/cli/standin.rs"]
pub mod standin;
#[path = "../../src/cli/swarm.rs"]
pub mod swarm;
pub mod tls;

/// The first of `candidates` that exists: an outside program a test needs.
/// None (the test says it skipped) when missing, except under CI=true,
/// where .ci/run installs it and a missing one fails the test.
pub fn external_tool(candidates: &[&str], what: &str) -> Option<std::path::PathBuf> {
    let found = candidates.iter().map(std::path::PathBuf::from).find(|p| p.exists());
    if found.is_none() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{what} is missing under CI=true: .ci/run installs it");
        eprintln!("skipped: {what} is not installed");
    }
    found
}

pub const DEADLINE: Duration = Duration::from_secs(10);

/// The deadline for a connection's late wake (its server socket's
/// keepalive): it comes 10 to 15 s into the connection, which the
/// registry's own tests prove with a paused clock; twice the latest only
/// catches a wake that never comes.
pub const LATE_WAKE_DEADLINE: Duration = Duration::from_secs(30);

/// Waits until `f` gives a value, looking again every 10 ms, for at most
/// `deadline`; None when it never did. Every wait of the tests on a
/// condition goes through here (or [`poll_blocking`] outside a runtime).
pub async fn poll_for<T, F, Fut>(deadline: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if start.elapsed() >= deadline {
            return None;
        }
        // Not synchronisation: the interval between two looks at the
        // condition, which alone decides when the wait ends.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// As [`poll_for`], for a caller that is not in a runtime (a plain
/// `#[test]` waiting on a child process, say).
pub fn poll_blocking<T>(deadline: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() >= deadline {
            return None;
        }
        // Not synchronisation: the interval between two looks, as in
        // [`poll_for`].
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `cond` holds, checking every 10 ms; panics after 10 s. The
/// deadline only catches a broken build: a passing test returns as soon as
/// the condition holds.
pub async fn eventually<F: FnMut() -> bool>(what: &str, cond: F) {
    eventually_within(what, DEADLINE, cond).await
}

/// As [`eventually`] with a deadline of its own, for what the LB does only
/// after a longer time by design (a connection's late wake, 10 to 15 s).
pub async fn eventually_within<F: FnMut() -> bool>(what: &str, deadline: Duration, mut cond: F) {
    if poll_for(deadline, || std::future::ready(cond().then_some(()))).await.is_none() {
        panic!("timed out after {deadline:?} waiting for: {what}");
    }
}

/// As [`eventually`], for a condition that gives a value once it holds:
/// returns that value.
pub async fn eventually_some<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    poll_for(DEADLINE, || std::future::ready(f())).await.unwrap_or_else(|| panic!("timed out waiting for: {what}"))
}

/// As [`eventually`], for a condition that has to await (an HTTP request,
/// say).
pub async fn eventually_async<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let looked = poll_for(DEADLINE, || {
        let holds = cond();
        async move { holds.await.then_some(()) }
    })
    .await;
    if looked.is_none() {
        panic!("timed out waiting for: {what}");
    }
}

/// As [`eventually_async`], for a condition that gives a value once it
/// holds: returns that value.
pub async fn eventually_some_async<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll_for(DEADLINE, f).await.unwrap_or_else(|| panic!("timed out waiting for: {what}"))
}

/// Runs `f` with the test deadline.
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// An echo server that counts the connections it accepted.
pub struct Echo {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Echo {
    pub async fn start() -> Echo {
        Echo::on(TcpListener::bind(loopback()).await.unwrap())
    }

    pub fn on(listener: TcpListener) -> Echo {
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Relaxed);
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        Echo { addr, accepted, task }
    }

    pub fn count(&self) -> usize {
        self.accepted.load(Relaxed)
    }

    /// Stops accepting and frees the port (open connections go on).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address on which nothing listens: connects are refused at once.
/// The port stays bound (not listening) for the rest of the test process:
/// a port merely released could be taken by a listener of a test running
/// alongside, which then accepts what should have been refused (seen once
/// in CI: a "refusing" server that was never ejected).
pub fn refusing_addr() -> SocketAddr {
    static HELD: Mutex<Vec<Socket>> = Mutex::new(Vec::new());
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.bind(&loopback().into()).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    HELD.lock().unwrap().push(sock);
    addr
}

/// A socket bound but not listening (connects refused) that can start
/// listening later on the same port.
pub struct Dormant {
    pub addr: SocketAddr,
    sock: Socket,
}

impl Dormant {
    pub fn new() -> Dormant {
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        sock.set_reuse_address(true).unwrap();
        sock.bind(&loopback().into()).unwrap();
        let addr = sock.local_addr().unwrap().as_socket().unwrap();
        Dormant { addr, sock }
    }

    /// Starts listening and echoing.
    pub fn wake(self) -> Echo {
        self.sock.listen(128).unwrap();
        self.sock.set_nonblocking(true).unwrap();
        Echo::on(TcpListener::from_std(self.sock.into()).unwrap())
    }
}

/// A listener whose backlog is full and that never accepts: further SYNs
/// are dropped, so connects to it hang until the client gives up.
pub struct Blackhole {
    pub addr: SocketAddr,
    _listener: Socket,
    _fillers: Vec<Socket>,
}

impl Blackhole {
    pub fn new() -> Blackhole {
        let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        l.bind(&loopback().into()).unwrap();
        l.listen(0).unwrap();
        let addr = l.local_addr().unwrap().as_socket().unwrap();
        let mut fillers = Vec::new();
        // Fill the accept queue until a connect no longer completes.
        for _ in 0..16 {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            if s.connect_timeout(&addr.into(), Duration::from_millis(200)).is_err() {
                break;
            }
            fillers.push(s);
        }
        Blackhole { addr, _listener: l, _fillers: fillers }
    }
}

/// Writes a secret (an admin token) readable by its owner only, as ucp-lb
/// requires of a token file.
pub fn write_secret(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Starts an LB from lb.toml text.
pub async fn start_lb(toml: &str) -> ucp_lb::Running {
    let config = ucp_lb::config::parse(toml, "test.toml").unwrap_or_else(|e| panic!("bad test config: {e}\n{toml}"));
    ucp_lb::start(config).await.unwrap()
}

/// One listener on loopback port 0 for pool "p" with these servers and
/// extra pool keys.
pub fn one_pool(servers: &[SocketAddr], pool_keys: &str) -> String {
    let list: Vec<String> = servers.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\n[pool.p]\nservers = [{}]\n{pool_keys}\n",
        list.join(", ")
    )
}

/// `toml` (from `one_pool`) with `[admin] token_file` set.
pub fn with_admin(toml: &str, token_file: Option<&std::path::Path>) -> String {
    let token = token_file.map(|p| format!("token_file = \"{}\"\n", p.display())).unwrap_or_default();
    let out =
        toml.replacen("[admin]\nlisten = \"127.0.0.1:0\"\n", &format!("[admin]\nlisten = \"127.0.0.1:0\"\n{token}"), 1);
    assert!(token.is_empty() || out.contains("token_file"), "no [admin] table to add token_file to: {toml}");
    out
}

/// Sends a few bytes through `lb` and expects them echoed back.
pub async fn round_trip(lb: SocketAddr) -> io::Result<()> {
    let mut s = TcpStream::connect(lb).await?;
    echo_once(&mut s).await
}

pub async fn echo_once(s: &mut TcpStream) -> io::Result<()> {
    s.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await?;
    if &buf != b"ping" {
        return Err(io::Error::other("echo mismatch"));
    }
    Ok(())
}

/// Reads until EOF or an error; true when the peer closed.
pub async fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return true,
            Ok(_) => continue,
        }
    }
}

pub fn server(lb: &ucp_lb::Running, addr: SocketAddr) -> ServerStatus {
    lb.status()
        .into_iter()
        .flat_map(|p| p.servers)
        .find(|s| s.addr == addr)
        .unwrap_or_else(|| panic!("no server {addr} in status"))
}

/// A server that runs `script` on every connection it accepts.
pub async fn scripted<F, Fut>(script: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind(loopback()).await.unwrap();
    let addr = l.local_addr().unwrap();
    let script = Arc::new(script);
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { continue };
            tokio::spawn(script(s));
        }
    });
    addr
}

/// Reads an HTTP request's head (up to the blank line).
pub async fn read_request(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// One HTTP/1.1 request on a fresh connection (to the admin port, say),
/// with a bearer token when given: the whole answer.
pub async fn http_raw(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    within("admin answer", s.read_to_end(&mut buf)).await.unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

/// Starts an LB from a config file (so it can reload it).
pub async fn start_lb_file(path: &std::path::Path) -> ucp_lb::Running {
    let config = ucp_lb::config::load(path).unwrap_or_else(|e| panic!("bad test config: {e}"));
    ucp_lb::start(config).await.unwrap()
}

pub const BIN: &str = env!("CARGO_BIN_EXE_ucp-lb");

/// A child process whose stderr (or stdout) lines are collected as they come.
pub struct Proc {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// The ucp-lb binary running the config at `path`, its log (at info)
    /// collected from stderr.
    pub fn lb(path: &std::path::Path) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(path).env("RUST_LOG", "info");
        Proc::spawn(cmd, false)
    }

    pub fn spawn(mut cmd: Command, watch_stdout: bool) -> Proc {
        cmd.stdin(Stdio::null());
        Proc::start(cmd, watch_stdout)
    }

    /// As [`Proc::spawn`], with its standard input a pipe held open (as a
    /// terminal would be) for as long as the `Proc` lives.
    pub fn spawn_interactive(mut cmd: Command, watch_stdout: bool) -> Proc {
        cmd.stdin(Stdio::piped());
        Proc::start(cmd, watch_stdout)
    }

    fn start(mut cmd: Command, watch_stdout: bool) -> Proc {
        if watch_stdout {
            cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        } else {
            cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        }
        let mut child = cmd.spawn().expect("start ucp-lb");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let out: Box<dyn std::io::Read + Send> =
            if watch_stdout { Box::new(child.stdout.take().unwrap()) } else { Box::new(child.stderr.take().unwrap()) };
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Proc { child, lines }
    }

    pub fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    pub async fn wait_for_line(&self, needle: &str) -> String {
        let find = || std::future::ready(self.lines.lock().unwrap().iter().find(|l| l.contains(needle)).cloned());
        poll_for(DEADLINE, find).await.unwrap_or_else(|| {
            panic!("timed out waiting for a line with {needle:?}; the process said:\n{}", self.text())
        })
    }

    /// The address the admin endpoints bound, from their "admin endpoints
    /// up" log line.
    pub async fn admin_addr(&self) -> SocketAddr {
        self.logged_addr("admin endpoints up", "listen=").await
    }

    /// The address after `key` in the first line with `needle`.
    async fn logged_addr(&self, needle: &str, key: &str) -> SocketAddr {
        let line = self.wait_for_line(needle).await;
        let at = line.find(key).unwrap_or_else(|| panic!("{key} in {line:?}")) + key.len();
        line[at..].split_whitespace().next().unwrap().trim_matches('"').parse().unwrap()
    }

    /// The address a listener bound, from the "listening" log line.
    pub async fn listener_addr(&self) -> SocketAddr {
        self.logged_addr("listening bind=", "local=").await
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(ok.success());
    }

    pub async fn exit_code(&mut self) -> Option<i32> {
        let exited = poll_for(DEADLINE, || std::future::ready(self.child.try_wait().unwrap())).await;
        exited.unwrap_or_else(|| panic!("process did not exit")).code()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Only our own child, by PID.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Deterministic pseudo-random bytes, so both ends can be checked.
pub fn fill(seed: u64, buf: &mut [u8]) -> u64 {
    let mut x = seed;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    x
}

/// Sends `len` bytes and reads to EOF at once; returns (sent, received)
/// digests and the count received.
pub async fn send_and_receive(s: TcpStream, seed: u64, len: usize) -> ([u8; 32], [u8; 32], usize) {
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut x = seed;
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len());
            x = fill(x, &mut buf[..n]);
            h.update(&buf[..n]);
            w.write_all(&buf[..n]).await.unwrap();
            left -= n;
        }
        w.shutdown().await.unwrap();
        <[u8; 32]>::from(h.finalize())
    });
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        got += n;
    }
    (writer.await.unwrap(), h.finalize().into(), got)
}

/// `len` bytes (seeded) each way through an LB in front of the echo
/// server `server`: all of them come back, unchanged (SHA-256 of each side).
/// Returns the LB, for its counters.
pub async fn each_way_through_lb(server: SocketAddr, seed: u64, len: usize, what: &str) -> ucp_lb::Running {
    let lb = start_lb(&one_pool(&[server], "")).await;
    let s = TcpStream::connect(lb.listener_addrs()[0]).await.unwrap();
    let (sent, got, n) = within(what, send_and_receive(s, seed, len)).await;
    assert_eq!(n, len, "{what}: length");
    assert_eq!(got, sent, "{what}: content");
    lb
}

/// An echo server behind a 64 KiB receive buffer that takes 1000 bytes at
/// a time: the LB's writes to it come out partial again and again. (Below
/// the loopback MSS, a receive buffer stalls any sender on zero-window
/// probes.)
pub async fn slow_echo() -> SocketAddr {
    scripted(|s: TcpStream| async move {
        let _ = socket2::SockRef::from(&s).set_recv_buffer_size(64 * 1024);
        let (mut r, mut w) = s.into_split();
        let mut buf = [0u8; 1000];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if w.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = w.shutdown().await;
    })
    .await
}

/// What keepalive a socket has: None when off, else (idle, interval,
/// count), read with getsockopt.
pub type Keep = Option<(Duration, Duration, u32)>;

pub fn keep(fd: &std::os::fd::OwnedFd) -> Keep {
    use rustix::net::sockopt;
    if !sockopt::socket_keepalive(fd).unwrap() {
        return None;
    }
    Some((sockopt::tcp_keepidle(fd).unwrap(), sockopt::tcp_keepintvl(fd).unwrap(), sockopt::tcp_keepcnt(fd).unwrap()))
}

pub fn secs(idle: u64, interval: u64, count: u32) -> Keep {
    Some((Duration::from_secs(idle), Duration::from_secs(interval), count))
}

/// Every TCP socket of process `pid` (this one, or a child: nginx) as
/// (local, peer, a copy of it made with pidfd_getfd), to read its options;
/// never used for I/O.
pub fn sockets_of(pid: u32) -> Vec<(SocketAddr, SocketAddr, std::os::fd::OwnedFd)> {
    use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags, pidfd_getfd, pidfd_open};
    let target = Pid::from_raw(pid as i32).expect("a pid");
    let pidfd = pidfd_open(target, PidfdFlags::empty()).expect("pidfd_open");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let Ok(n) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(fd) = pidfd_getfd(&pidfd, n, PidfdGetfdFlags::empty()) else { continue };
        let sock = socket2::SockRef::from(&fd);
        let (Ok(local), Ok(peer)) = (sock.local_addr(), sock.peer_addr()) else { continue };
        if let (Some(local), Some(peer)) = (local.as_socket(), peer.as_socket()) {
            out.push((local, peer, fd));
        }
    }
    out
}

/// The LB's two sockets of the connection from `client` (a socket of the
/// test) through `listener` to the server at `backend`, when the LB runs in
/// this test process.
pub fn lb_sockets(
    client: &TcpStream,
    listener: SocketAddr,
    backend: SocketAddr,
) -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    let me = client.local_addr().unwrap();
    let mut all = sockets_of(std::process::id());
    let client_side = all.iter().position(|(l, p, _)| *l == listener && *p == me).expect("the LB's client socket");
    let client_side = all.swap_remove(client_side).2;
    // The LB's socket to the server: the one whose peer is the backend
    // that this test did not open itself (the backend's accepted sockets
    // have it as their local address).
    let server_side = all.iter().position(|(_, p, _)| *p == backend).expect("the LB's server socket");
    (client_side, all.swap_remove(server_side).2)
}

/// What /proc/net/tcp shows of one IPv4 socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpEntry {
    /// The TCP timer running (`tr`: 0 none, 1 retransmit, 2 keepalive, ...).
    pub timer: u8,
    /// Keepalive probes sent and not answered yet (`icsk_probes_out`).
    pub probes: u32,
}

/// /proc/net/tcp's entry for the socket from `local` to `remote`, None when
/// there is no such socket. `local` None matches any local address.
pub fn tcp_entry(local: Option<SocketAddr>, remote: SocketAddr) -> Option<TcpEntry> {
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port()),
        SocketAddr::V6(_) => unreachable!("the tests use IPv4 here"),
    };
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|l| {
        // sl local rem st tx:rx tr:when retrnsmt uid timeout(probes) inode ...
        let f: Vec<&str> = l.split_whitespace().collect();
        let matches =
            f.get(2) == Some(&hex(remote).as_str()) && local.is_none_or(|a| f.get(1) == Some(&hex(a).as_str()));
        if !matches {
            return None;
        }
        let timer = f.get(5)?.split(':').next()?.parse().ok()?;
        let probes = f.get(8)?.parse().ok()?;
        Some(TcpEntry { timer, probes })
    })
}
