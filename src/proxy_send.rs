//! The PROXY protocol header ucp-lb sends to a pool's servers (a pool's
//! `send_proxy_protocol`), v1 (text) or v2 (binary), as HAProxy's
//! proxy-protocol.txt defines them; reading one is the listeners' business
//! (`wire/`).
//!
//! A leaf, below `health/` and `wire/`: the byte path writes a client's
//! header at connect, and the active checks write a `LOCAL` one (v2) or
//! `PROXY UNKNOWN` (v1) first, so the server's own parser is exercised by
//! every probe. No TLVs: nginx sends none, and what a server could want
//! from them (ALPN, SNI, TLS facts) ucp-lb does not know at layer 4.
//! Encoding is on the stack: no allocation per connection.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};

/// Which PROXY protocol version a pool sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// `PROXY TCP4 src dst sport dport\r\n` (what nginx's `proxy_protocol on` sends).
    V1,
    /// The binary header: 16 bytes and the addresses.
    V2,
}

impl Version {
    /// As lb.toml writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

/// The v2 header's first 12 bytes.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The longest header this module writes: v1 with two full IPv6 addresses
/// (104 bytes; the protocol allows 107).
pub const MAX_LEN: usize = 107;

/// What a probe sends first: a v2 `LOCAL` command (the receiver uses the
/// connection's own addresses), or v1's `PROXY UNKNOWN`, its equivalent
/// (nginx and HAProxy accept it). Not a made-up client address: a server
/// would log and filter the probe as that client.
pub fn local(v: Version) -> &'static [u8] {
    const V2_LOCAL: [u8; 16] = {
        let mut h = [0u8; 16];
        let mut i = 0;
        while i < 12 {
            h[i] = V2_SIGNATURE[i];
            i += 1;
        }
        h[12] = 0x20; // version 2, LOCAL
        h[13] = 0x00; // AF_UNSPEC, UNSPEC; length 0
        h
    };
    match v {
        Version::V1 => b"PROXY UNKNOWN\r\n",
        Version::V2 => &V2_LOCAL,
    }
}

/// One encoded header, kept on the stack.
#[derive(Clone, Copy)]
pub struct Header {
    buf: [u8; MAX_LEN],
    len: usize,
}

impl Header {
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Header({:?})", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// The addresses as one family: an IPv4-mapped IPv6 address is IPv4 (an
/// IPv4 client reaching a dual-stack socket); when one side is IPv6 and
/// the other IPv4 both are written as IPv6, the IPv4 one mapped (the
/// protocol has no mixed form).
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (src, dst) = (canon(src), canon(dst));
    if src.is_ipv4() == dst.is_ipv4() {
        return (src, dst);
    }
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    (v6(src), v6(dst))
}

/// The header for a client at `src` that connected to `dst` (the address
/// of ucp-lb's own socket it reached).
pub fn encode(v: Version, src: SocketAddr, dst: SocketAddr) -> Header {
    let (src, dst) = same_family(src, dst);
    let mut h = Header { buf: [0; MAX_LEN], len: 0 };
    match v {
        Version::V1 => {
            let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            let mut w = &mut h.buf[..];
            // Fits: at most 104 bytes, checked by the tests on the longest
            // addresses; a failure could only truncate, never overflow.
            let _ = write!(w, "PROXY {family} {} {} {} {}\r\n", src.ip(), dst.ip(), src.port(), dst.port());
            h.len = MAX_LEN - w.len();
        }
        Version::V2 => {
            h.buf[..12].copy_from_slice(&V2_SIGNATURE);
            h.buf[12] = 0x21; // version 2, PROXY
            let mut at = 16;
            let mut put = |b: &[u8]| {
                h.buf[at..at + b.len()].copy_from_slice(b);
                at += b.len();
            };
            let family = match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    put(&s.octets());
                    put(&d.octets());
                    0x11 // AF_INET, STREAM
                }
                (s, d) => {
                    let v6 = |a: IpAddr| match a {
                        IpAddr::V6(a) => a.octets(),
                        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                    };
                    put(&v6(s));
                    put(&v6(d));
                    0x21 // AF_INET6, STREAM
                }
            };
            put(&src.port().to_be_bytes());
            put(&dst.port().to_be_bytes());
            h.buf[13] = family;
            h.buf[14..16].copy_from_slice(&((at - 16) as u16).to_be_bytes());
            h.len = at;
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_ipv4() {
        let h = encode(Version::V1, addr("127.0.0.77:40000"), addr("10.0.0.1:443"));
        assert_eq!(h.as_bytes(), b"PROXY TCP4 127.0.0.77 10.0.0.1 40000 443\r\n");
    }

    #[test]
    fn v1_ipv6_and_the_longest_addresses_fit() {
        let h = encode(Version::V1, addr("[2001:db8::7]:5"), addr("[::1]:6443"));
        assert_eq!(h.as_bytes(), b"PROXY TCP6 2001:db8::7 ::1 5 6443\r\n");
        let long = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535";
        let h = encode(Version::V1, addr(long), addr(long));
        assert_eq!(h.as_bytes().len(), 104);
        assert!(h.as_bytes().ends_with(b" 65535 65535\r\n"));
    }

    #[test]
    fn an_ipv4_mapped_client_is_tcp4_and_a_mixed_pair_is_tcp6() {
        let h = encode(Version::V1, addr("[::ffff:192.0.2.7]:1000"), addr("[::ffff:10.0.0.1]:443"));
        assert_eq!(h.as_bytes(), b"PROXY TCP4 192.0.2.7 10.0.0.1 1000 443\r\n");
        let h = encode(Version::V1, addr("192.0.2.7:1000"), addr("[2001:db8::1]:443"));
        assert_eq!(h.as_bytes(), b"PROXY TCP6 ::ffff:192.0.2.7 2001:db8::1 1000 443\r\n");
        let h = encode(Version::V2, addr("[::ffff:192.0.2.7]:1000"), addr("10.0.0.1:443"));
        assert_eq!(h.as_bytes()[13], 0x11);
    }

    #[test]
    fn v2_ipv4() {
        let h = encode(Version::V2, addr("127.0.0.77:40000"), addr("10.0.0.1:443"));
        let mut want = V2_SIGNATURE.to_vec();
        want.extend([0x21, 0x11, 0, 12, 127, 0, 0, 77, 10, 0, 0, 1]);
        want.extend(40000u16.to_be_bytes());
        want.extend(443u16.to_be_bytes());
        assert_eq!(h.as_bytes(), want.as_slice());
    }

    #[test]
    fn v2_ipv6() {
        let h = encode(Version::V2, addr("[2001:db8::7]:5"), addr("[::1]:6443"));
        let b = h.as_bytes();
        assert_eq!(b.len(), 16 + 36);
        assert_eq!(&b[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(&b[16..32], &"2001:db8::7".parse::<std::net::Ipv6Addr>().unwrap().octets());
        assert_eq!(&b[32..48], &std::net::Ipv6Addr::LOCALHOST.octets());
        assert_eq!(&b[48..], &[0, 5, 0x19, 0x2b]);
    }

    #[test]
    fn probes_send_local_or_unknown() {
        assert_eq!(local(Version::V1), b"PROXY UNKNOWN\r\n");
        let v2 = local(Version::V2);
        assert_eq!(&v2[..12], &V2_SIGNATURE);
        assert_eq!(&v2[12..], &[0x20, 0x00, 0, 0]);
    }
}
