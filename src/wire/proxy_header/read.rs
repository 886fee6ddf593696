//! Reading a header off a client's socket: bounded in bytes and time, and
//! never a byte past it, so what follows (a TLS hello) stays in the
//! kernel for `sni` and the server.
//!
//! Peek, then consume: whatever a peek shows is judged with the bytes
//! before it; once the header is complete, exactly its rest is read. Bytes
//! of a header not yet complete are all header, so they are consumed at
//! once, and the next peek waits for more instead of seeing them again.
//! A header arriving in one segment costs one peek and one read.

use std::time::Duration;

use tokio::net::TcpStream;

use super::{Broken, Header, Parsed, parse};

/// The first buffer: room for any v1 line and a v2 header with IPv6
/// addresses and a few TLVs; a longer v2 header grows it to its length
/// (within the bound).
const FIRST: usize = 256;

/// Why a connection gave no header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// Its first bytes are not a header.
    Missing,
    /// A header that broke the format.
    Broken,
    /// Longer than the bound.
    TooLarge,
    /// Not complete within `proxy_protocol_timeout`.
    Timeout,
    /// The client left (or reset) before its header was complete.
    Closed,
}

impl Failed {
    pub const ALL: [Failed; 5] = [Failed::Missing, Failed::Broken, Failed::TooLarge, Failed::Timeout, Failed::Closed];

    /// The label in metrics, `/status` and the access log.
    pub fn as_str(self) -> &'static str {
        match self {
            Failed::Missing => "missing",
            Failed::Broken => "broken",
            Failed::TooLarge => "too_large",
            Failed::Timeout => "timeout",
            Failed::Closed => "closed",
        }
    }

    /// The access log's `$end`.
    pub fn code(self) -> &'static str {
        match self {
            Failed::Missing => "proxy_protocol_missing",
            Failed::Broken => "proxy_protocol_broken",
            Failed::TooLarge => "proxy_protocol_too_large",
            Failed::Timeout => "proxy_protocol_timeout",
            Failed::Closed => "proxy_protocol_closed",
        }
    }

    pub fn words(self) -> &'static str {
        match self {
            Failed::Missing => "no PROXY protocol header",
            Failed::Broken => "a broken PROXY protocol header",
            Failed::TooLarge => "a PROXY protocol header over the bound",
            Failed::Timeout => "no complete PROXY protocol header within proxy_protocol_timeout",
            Failed::Closed => "the client left before its PROXY protocol header was complete",
        }
    }
}

impl From<Broken> for Failed {
    fn from(b: Broken) -> Failed {
        match b {
            Broken::Missing => Failed::Missing,
            Broken::Invalid => Failed::Broken,
            Broken::TooLarge => Failed::TooLarge,
        }
    }
}

/// Reads `client`'s header, of at most `limit` bytes, within `timeout`.
pub async fn read(client: &TcpStream, limit: usize, timeout: Duration) -> Result<Header, Failed> {
    crate::timer::timeout(timeout, read_unbounded_in_time(client, limit)).await.unwrap_or(Err(Failed::Timeout))
}

async fn read_unbounded_in_time(client: &TcpStream, limit: usize) -> Result<Header, Failed> {
    let mut buf = vec![0u8; FIRST.min(limit)];
    let mut have = 0;
    loop {
        let n = client.peek(&mut buf[have..]).await.map_err(|_| Failed::Closed)?;
        if n == 0 {
            return Err(Failed::Closed);
        }
        match parse(&buf[..have + n], limit)? {
            Parsed::Complete(h) => {
                consume(client, &mut buf[have..h.len]).await?;
                return Ok(h);
            }
            Parsed::Partial(need) => {
                consume(client, &mut buf[have..have + n]).await?;
                have += n;
                // `parse` said too_large past the bound, so `need` is
                // within it; a v1 line never needs more than FIRST. The
                // buffer grows as bytes arrive (doubling when full), not
                // to the length a v2 header claims: 16 bytes claiming
                // 65,535 hold 256 bytes until more come (found by an
                // adversarial run: 4,000 such clients held 345 MB).
                if have >= buf.len() {
                    let most = need.min(limit);
                    if buf.len() >= most {
                        return Err(Failed::TooLarge);
                    }
                    buf.resize(most.min(buf.len() * 2), 0);
                }
            }
        }
    }
}

/// Takes bytes a peek has shown from the socket (so they are there; a
/// read may still return fewer, and the loop takes the rest).
async fn consume(client: &TcpStream, into: &mut [u8]) -> Result<(), Failed> {
    let mut at = 0;
    while at < into.len() {
        client.readable().await.map_err(|_| Failed::Closed)?;
        match client.try_read(&mut into[at..]) {
            Ok(0) => return Err(Failed::Closed),
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Err(Failed::Closed),
        }
    }
    Ok(())
}
