//! What every socket of ours shares: the TCP keepalive settings, the
//! upstream connect with its timeout, and why a connect failed, as a small
//! fixed set fit for a metric label. A leaf: it knows no pool, snapshot or
//! connection.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpSocket, TcpStream};

use crate::config::Keepalive;

/// Sets a socket's TCP keepalive as configured (`client_keepalive`,
/// `server_keepalive`), or switches it off. By default dead peers of idle
/// connections are found after about 2 minutes (60 s idle, then 6 probes
/// 10 s apart) rather than Linux's 2 hours and 11 minutes.
///
/// SO_KEEPALIVE goes first, then TCP_KEEPIDLE: Linux times the first probe
/// from the last segment received when TCP_KEEPIDLE is set on a socket
/// with keepalive on, so setting it on a connection that has been quiet
/// for a while does not push the first probe later.
pub fn set_keepalive(sock: SockRef<'_>, k: Option<&Keepalive>) -> io::Result<()> {
    match k {
        Some(k) => sock
            .set_tcp_keepalive(&TcpKeepalive::new().with_time(k.idle).with_interval(k.interval).with_retries(k.count)),
        None => sock.set_keepalive(false),
    }
}

/// Why a connect failed; a small fixed set, fit for a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    Refused = 0,
    Timeout = 1,
    Reset = 2,
    Unreachable = 3,
    /// Out of file descriptors, ports or memory here: not the server's fault.
    Local = 4,
    Other = 5,
}

impl FailReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::Refused => "refused",
            FailReason::Timeout => "timeout",
            FailReason::Reset => "reset",
            FailReason::Unreachable => "unreachable",
            FailReason::Local => "local",
            FailReason::Other => "other",
        }
    }

    pub fn of(e: &io::Error) -> FailReason {
        use io::ErrorKind as K;
        match e.kind() {
            K::ConnectionRefused => FailReason::Refused,
            K::ConnectionReset | K::ConnectionAborted => FailReason::Reset,
            K::HostUnreachable | K::NetworkUnreachable | K::NetworkDown => FailReason::Unreachable,
            K::TimedOut => FailReason::Timeout,
            K::AddrNotAvailable | K::OutOfMemory => FailReason::Local,
            _ if is_fd_exhaustion(e) || e.raw_os_error() == Some(105) => FailReason::Local, // ENOBUFS
            _ => FailReason::Other,
        }
    }
}

/// EMFILE or ENFILE: this process or the system is out of descriptors.
pub fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24))
}

pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, FailReason> {
    let sock = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() };
    let sock = sock.map_err(|e| FailReason::of(&e))?;
    let _ = sock.set_nodelay(true);
    // Keepalive (four setsockopt calls) is set by the byte path once the
    // connection has lived 10 s: most connections end before.
    match tokio::time::timeout(timeout, sock.connect(addr)).await {
        Err(_) => Err(FailReason::Timeout),
        Ok(Err(e)) => Err(FailReason::of(&e)),
        Ok(Ok(s)) => Ok(s),
    }
}
