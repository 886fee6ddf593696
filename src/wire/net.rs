//! What every socket of ours shares: the TCP keepalive settings, the
//! upstream connect with its timeout (its failure named by
//! [`FailReason`], `fail.rs`). A leaf: it knows no pool, snapshot or
//! connection.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpSocket, TcpStream};

use crate::config::Keepalive;
use crate::fail::FailReason;

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

pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, FailReason> {
    let sock = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() };
    let sock = sock.map_err(|e| FailReason::of(&e))?;
    let _ = sock.set_nodelay(true);
    // Keepalive (four setsockopt calls) is set by the byte path once the
    // connection has lived 10 s: most connections end before.
    match crate::timer::timeout(timeout, sock.connect(addr)).await {
        Err(_) => Err(FailReason::Timeout),
        Ok(Err(e)) => Err(FailReason::of(&e)),
        Ok(Ok(s)) => Ok(s),
    }
}
