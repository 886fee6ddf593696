//! Routing by TLS server name without terminating TLS: read the client's
//! first bytes only as far as its ClientHello, within a bound and a time,
//! find the server_name extension, and keep every byte read so it can be
//! forwarded unchanged to the server the name routes to.
//!
//! The hello is parsed by rustls's `Acceptor` (it reassembles a hello split
//! over several TCP segments and several TLS records); nothing is answered
//! to the client and no TLS state is kept. A route's [`Pattern`] is a
//! value of the config (`config/rules.rs`), which parses it.

use std::time::Duration;

use tokio::net::TcpStream;

pub use crate::config::Pattern;
pub use crate::config::rules::normalise;

/// Most bytes read before a ClientHello must be complete (a hello with a
/// post-quantum key share is about 1.8 KiB; 16 KiB is nginx's and
/// HAProxy's buffer for the same job).
pub const HELLO_LIMIT: usize = 16 * 1024;

/// A TLS record carrying a handshake message starts with this byte.
const HANDSHAKE: u8 = 0x16;

/// What the first bytes of a client said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// A ClientHello naming this server (lower case, no trailing dot).
    Name(String),
    /// A ClientHello without a server name (a client that connects by
    /// address).
    NoName,
    /// Not a TLS handshake record, or a hello that cannot be read.
    NotTls,
}

/// Why the hello could not be read at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// Not complete within the time (a stalled or silent client).
    Timeout,
    /// Not complete within [`HELLO_LIMIT`] bytes.
    TooLarge,
    /// The client closed or reset first.
    Closed,
}

impl Failed {
    pub fn as_str(self) -> &'static str {
        match self {
            Failed::Timeout => "hello_timeout",
            Failed::TooLarge => "hello_too_large",
            Failed::Closed => "hello_closed",
        }
    }
}

/// Reads `client`'s first bytes until its ClientHello is complete (or it
/// is plainly not TLS), within `limit` bytes and `timeout`: the bytes read,
/// all of them, and what they said.
pub async fn preread(client: &TcpStream, limit: usize, timeout: Duration) -> Result<(Vec<u8>, Hello), Failed> {
    let mut buf = Vec::with_capacity(2048);
    let mut acceptor = rustls::server::Acceptor::default();
    let read = async {
        loop {
            if buf.len() >= limit {
                return Err(Failed::TooLarge);
            }
            // At most up to the limit, so a flood stops at the bound; read
            // straight into the kept bytes (no chunk held across the wait).
            let start = buf.len();
            let room = (limit - start).min(4096);
            let n = loop {
                if client.readable().await.is_err() {
                    return Err(Failed::Closed);
                }
                buf.resize(start + room, 0);
                let got = client.try_read(&mut buf[start..]);
                buf.truncate(start + *got.as_ref().unwrap_or(&0));
                match got {
                    Ok(0) => return Err(Failed::Closed),
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => return Err(Failed::Closed),
                }
            };
            let fresh = &buf[start..start + n];
            if buf[0] != HANDSHAKE {
                return Ok(Hello::NotTls);
            }
            let mut rd: &[u8] = fresh;
            while !rd.is_empty() {
                match acceptor.read_tls(&mut rd) {
                    Ok(0) | Err(_) => return Ok(Hello::NotTls),
                    Ok(_) => {}
                }
            }
            match acceptor.accept() {
                Ok(Some(accepted)) => {
                    let hello = accepted.client_hello();
                    return Ok(match hello.server_name() {
                        Some(name) => Hello::Name(normalise(name)),
                        None => Hello::NoName,
                    });
                }
                Ok(None) => continue,
                Err(_) => return Ok(Hello::NotTls),
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(hello)) => Ok((buf, hello)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Failed::Timeout),
    }
}

/// Which of `patterns` routes `name`: the most specific match.
pub fn best<'a, T>(routes: &'a [(Pattern, T)], name: &str) -> Option<&'a (Pattern, T)> {
    routes.iter().filter_map(|r| Some((r.0.score(name)?, r))).max_by_key(|(s, _)| *s).map(|(_, r)| r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_beats_wildcards_and_the_longest_wildcard_wins() {
        let routes: Vec<(Pattern, &str)> =
            [("*.example.com", "wide"), ("*.apps.example.com", "apps"), ("ucp.example.com", "ucp")]
                .iter()
                .map(|(p, t)| (Pattern::parse(p).unwrap(), *t))
                .collect();
        let pick = |n: &str| best(&routes, &normalise(n)).map(|r| r.1);
        assert_eq!(pick("UCP.Example.com."), Some("ucp"));
        assert_eq!(pick("dtr.example.com"), Some("wide"));
        assert_eq!(pick("a.b.example.com"), Some("wide"));
        assert_eq!(pick("x.apps.example.com"), Some("apps"));
        assert_eq!(pick("example.com"), None);
        assert_eq!(pick("badexample.com"), None);
        assert_eq!(pick("other.test"), None);
    }
}
