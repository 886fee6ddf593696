//! Why a connect to a server failed: a small fixed set, fit for a metric
//! label, told from the error of the connect. A leaf, so that selection
//! (`pool`) and state can name a reason without importing the sockets.

use std::io;

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
