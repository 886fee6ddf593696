//! Binding a listening socket (and taking one over from another process),
//! and what to say when a bind fails; `listener.rs` accepts on them.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;

const BACKLOG: i32 = 1024;

/// A listening socket taken over from another process, as a tokio
/// listener (it is non-blocking already: the flag belongs to the socket
/// both processes share).
pub fn from_fd(fd: std::os::fd::OwnedFd) -> io::Result<TcpListener> {
    let std = std::net::TcpListener::from(fd);
    std.set_nonblocking(true)?;
    TcpListener::from_std(std)
}

/// Binds `addr` with the options every accepted socket inherits on Linux
/// (TCP_NODELAY, and keepalive, set by [`Listeners::set_options`] from the
/// config), so they cost no syscalls per connection.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // An IPv6 listener serves IPv6 only, as nginx's `ipv6only=on`: the
    // usual `listen 443; listen [::]:443;` pair binds both.
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(BACKLOG)?;
    sock.set_tcp_nodelay(true)?;
    TcpListener::from_std(sock.into())
}

/// What to do about a failed bind, after the error: a privileged port
/// needs a capability a non-root process lacks; a port in use is held by
/// another process.
pub fn bind_hint(addr: SocketAddr, error: &io::Error) -> String {
    match error.kind() {
        // bind() says EACCES for a privileged port only (below
        // net.ipv4.ip_unprivileged_port_start, 1024 by default).
        io::ErrorKind::PermissionDenied => format!(
            "; port {} is privileged: run as root, or give ucp-lb the capability CAP_NET_BIND_SERVICE: \
             `sudo setcap 'cap_net_bind_service=+ep' $(command -v ucp-lb)` (config/ucp-lb.service sets \
             AmbientCapabilities=CAP_NET_BIND_SERVICE)",
            addr.port()
        ),
        io::ErrorKind::AddrInUse => {
            format!("; another process holds it: `ss -ltnp 'sport = :{}'` names it", addr.port())
        }
        _ => String::new(),
    }
}

/// A listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("{file}: listener[{index}].bind: cannot listen on {bind}: {error}{}", bind_hint(*bind, error))]
pub struct BindError {
    pub file: String,
    pub index: usize,
    pub bind: SocketAddr,
    pub error: io::Error,
}
