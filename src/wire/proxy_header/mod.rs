//! The PROXY protocol header an outer balancer (HAProxy, an AWS NLB)
//! puts before a client's bytes, versions 1 (a text line) and 2 (binary,
//! with TLVs), as HAProxy's proxy-protocol.txt defines them: parsed here
//! from bytes (`parse`, pure, and what the fuzz target drives), read off
//! a socket without taking a byte past the header (`read.rs`).
//!
//! Written here rather than taken from `ppp` or `proxy-header`: the reader
//! needs, from any prefix, "complete at N bytes", "need at least N" or
//! "not a header" (so it can peek and consume exactly the header, leaving
//! the client's TLS hello for the server and for `sni`), and a bound of
//! its own on the whole header; each crate parses a complete buffer with
//! its own errors, and the format is small enough to own and fuzz.
//!
//! What the header means for the connection (whose address is believed)
//! is the listener's (`traffic/proxied.rs`); [`Via`] carries what it said
//! down to the access log and across an upgrade.

mod read;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub use read::{Failed, read};

/// The longest v1 line, CRLF included (the specification's bound).
pub const V1_MAX: usize = 107;
/// The shortest header of all: `PROXY UNKNOWN\r\n`.
const V1_MIN: usize = 15;
/// Every v2 header starts with these 12 bytes.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";
/// A v2 header's fixed part: signature, version and command, family and
/// protocol, length.
const V2_FIXED: usize = 16;

/// The header's version: the one a pool sends (one name for both sides).
pub use crate::proxy_send::Version;

/// What the header asks: a proxied client's addresses (`PROXY`), or
/// none, the connection's own endpoints standing (v2 `LOCAL`, the outer
/// balancer's own health check; v1 `UNKNOWN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Proxy,
    Local,
    Unknown,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Proxy => "proxy",
            Command::Local => "local",
            Command::Unknown => "unknown",
        }
    }
}

/// A complete header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    pub command: Command,
    /// The client's address and the one it connected to, as the header
    /// says; `None` for `LOCAL`, `UNKNOWN` and the families that are not
    /// IP (v2 `AF_UNIX`, `AF_UNSPEC`), whose connection keeps its own.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
    /// v2: the TLVs after the addresses (walked, each within the header).
    pub tlvs: usize,
    /// Its length in bytes, signature to the last TLV or the CRLF.
    pub len: usize,
}

/// What a prefix of a connection's bytes is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Complete(Header),
    /// A header so far: at least this many bytes in all.
    Partial(usize),
}

/// Why bytes are not a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// The first bytes are neither signature: no header at all.
    Missing,
    /// It started as one and then broke the format.
    Invalid,
    /// Longer than the bound (v1: 107 bytes; v2: the listener's).
    TooLarge,
}

/// What a header said, kept beside the address the connection goes on
/// with: the connecting peer (nginx's `$realip_remote_addr`) and the
/// header's addresses (`$proxy_protocol_addr`, `$proxy_protocol_server_addr`,
/// whether believed or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Via {
    pub peer: SocketAddr,
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
}

/// Reads `buf` (a connection's first bytes) as a header of at most
/// `limit` bytes (v2; v1 has its own 107).
pub fn parse(buf: &[u8], limit: usize) -> Result<Parsed, Broken> {
    if buf.is_empty() {
        // Either version: the shortest header is v1's `PROXY UNKNOWN\r\n`.
        return Ok(Parsed::Partial(V1_MIN));
    }
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return if n < V2_SIGNATURE.len() { Ok(Parsed::Partial(V2_FIXED)) } else { parse_v2(buf, limit) };
    }
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] == V1_PREFIX[..n] {
        return if n < V1_PREFIX.len() { Ok(Parsed::Partial(V1_PREFIX.len() + 1)) } else { parse_v1(buf) };
    }
    Err(Broken::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, Broken> {
    let scan = &buf[..buf.len().min(V1_MAX)];
    let Some(cr) = scan.iter().position(|&b| b == b'\r') else {
        // Only printable characters come before the CRLF.
        if scan.iter().any(|&b| !(b' '..=b'~').contains(&b)) {
            return Err(Broken::Invalid);
        }
        return if scan.len() >= V1_MAX { Err(Broken::TooLarge) } else { Ok(Parsed::Partial(buf.len() + 2)) };
    };
    let line = &scan[..cr];
    if line.iter().any(|&b| !(b' '..=b'~').contains(&b)) {
        return Err(Broken::Invalid);
    }
    match scan.get(cr + 1) {
        None if cr + 1 >= V1_MAX => return Err(Broken::TooLarge),
        None => return Ok(Parsed::Partial(cr + 2)),
        Some(b'\n') => {}
        Some(_) => return Err(Broken::Invalid),
    }
    let len = cr + 2;
    let text = std::str::from_utf8(&line[V1_PREFIX.len()..]).map_err(|_| Broken::Invalid)?;
    let mut words = text.split(' ');
    let family = words.next().unwrap_or("");
    if family == "UNKNOWN" {
        // The rest of the line, whatever it is, is ignored.
        let header = Header { version: Version::V1, command: Command::Unknown, addresses: None, tlvs: 0, len };
        return Ok(Parsed::Complete(header));
    }
    let fields: Vec<&str> = words.collect();
    let [src, dst, sport, dport] = fields[..] else { return Err(Broken::Invalid) };
    let (src, dst): (IpAddr, IpAddr) = match family {
        "TCP4" => (v1_addr::<Ipv4Addr>(src)?.into(), v1_addr::<Ipv4Addr>(dst)?.into()),
        "TCP6" => (v1_addr::<Ipv6Addr>(src)?.into(), v1_addr::<Ipv6Addr>(dst)?.into()),
        _ => return Err(Broken::Invalid),
    };
    let addresses = Some((SocketAddr::new(src, v1_port(sport)?), SocketAddr::new(dst, v1_port(dport)?)));
    Ok(Parsed::Complete(Header { version: Version::V1, command: Command::Proxy, addresses, tlvs: 0, len }))
}

fn v1_addr<A: std::str::FromStr>(s: &str) -> Result<A, Broken> {
    s.parse().map_err(|_| Broken::Invalid)
}

/// A port: decimal, 0 to 65535, without leading zeros (the specification).
fn v1_port(s: &str) -> Result<u16, Broken> {
    let digits = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits || (s.len() > 1 && s.starts_with('0')) {
        return Err(Broken::Invalid);
    }
    s.parse().map_err(|_| Broken::Invalid)
}

fn parse_v2(buf: &[u8], limit: usize) -> Result<Parsed, Broken> {
    if buf.len() < V2_FIXED {
        // Version and command, family and protocol can be judged as
        // soon as they come.
        if let Some(&vc) = buf.get(12) {
            v2_command(vc)?;
        }
        if let Some(&fp) = buf.get(13) {
            v2_family(fp)?;
        }
        return Ok(Parsed::Partial(V2_FIXED));
    }
    let command = v2_command(buf[12])?;
    let family = v2_family(buf[13])?;
    let len = V2_FIXED + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > limit {
        return Err(Broken::TooLarge);
    }
    if buf.len() < len {
        return Ok(Parsed::Partial(len));
    }
    let body = &buf[V2_FIXED..len];
    // The addresses' room for each family: two IPv4 and two ports, two
    // IPv6 and two ports, two 108-byte paths.
    let room = match family {
        0 => 0,
        1 => 12,
        2 => 36,
        _ => 216,
    };
    // A LOCAL header's addresses are ignored, but it must still hold them
    // if its family says so.
    if body.len() < room {
        return Err(Broken::Invalid);
    }
    let addresses = match (command, family) {
        (Command::Proxy, 1) => {
            let ip = |at: usize| IpAddr::from([body[at], body[at + 1], body[at + 2], body[at + 3]]);
            let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
            Some((SocketAddr::new(ip(0), port(8)), SocketAddr::new(ip(4), port(10))))
        }
        (Command::Proxy, 2) => {
            let ip = |at: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&body[at..at + 16]);
                IpAddr::from(o)
            };
            let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
            Some((SocketAddr::new(ip(0), port(32)), SocketAddr::new(ip(16), port(34))))
        }
        _ => None,
    };
    let tlvs = walk_tlvs(&body[room..])?;
    Ok(Parsed::Complete(Header { version: Version::V2, command, addresses, tlvs, len }))
}

fn v2_command(b: u8) -> Result<Command, Broken> {
    match b {
        0x20 => Ok(Command::Local),
        0x21 => Ok(Command::Proxy),
        _ => Err(Broken::Invalid),
    }
}

/// The address family (0 UNSPEC, 1 INET, 2 INET6, 3 UNIX); the
/// transport (0 UNSPEC, 1 STREAM, 2 DGRAM) must be one the
/// specification names.
fn v2_family(b: u8) -> Result<u8, Broken> {
    let (family, transport) = (b >> 4, b & 0x0f);
    if family > 3 || transport > 2 {
        return Err(Broken::Invalid);
    }
    Ok(family)
}

/// How many TLVs `rest` holds: each a type, a 2-byte length and that many
/// bytes, the last ending exactly at the header's end.
fn walk_tlvs(mut rest: &[u8]) -> Result<usize, Broken> {
    let mut n = 0;
    while !rest.is_empty() {
        if rest.len() < 3 {
            return Err(Broken::Invalid);
        }
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
        rest = rest.get(3 + len..).ok_or(Broken::Invalid)?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests;
