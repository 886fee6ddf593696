//! Routing by TLS server name without terminating TLS: read the client's
//! first bytes only as far as its ClientHello, within a bound and a time,
//! find the server_name extension, and keep every byte read so it can be
//! forwarded unchanged to the server the name routes to.
//!
//! The records are framed here, as they come ([`Records`]: a hello split
//! over several TCP segments and several TLS records is put together, a
//! hello that cannot fit in the bound is refused as soon as its length
//! says so). Once the hello is whole, rustls's `Acceptor` reads it; a
//! hello rustls rejects but that is well formed (a TLS 1.2 hello without
//! `signature_algorithms`, which RFC 5246 allows; old clients) is read by
//! [`server_name`] here, a bounded parser that never panics (fuzzed:
//! fuzz/fuzz_targets/sni.rs). Nothing is answered to the client and no TLS
//! state is kept; while a hello is pending the only bytes held are those
//! read (rustls sees them once, when whole). A route's [`Pattern`] is a
//! value of the config (`config/rules.rs`), which parses it.

use std::borrow::Cow;
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
/// The handshake message a client opens with.
const CLIENT_HELLO: u8 = 1;
/// The `server_name` extension (RFC 6066), and its one name type.
const SERVER_NAME: u16 = 0;
const HOST_NAME: u8 = 0;
/// The kept bytes grow by whole steps of this, so a client sending a byte
/// at a time costs a few reallocations, and a pending hello holds at most
/// this much more than it was sent.
const GROW: usize = 1024;
/// Bytes read at a time: all a hello can be, so a hello the kernel holds
/// whole is read at once and kept in one allocation of its size (reading
/// in smaller pieces leaves the allocator the smaller sizes freed on the
/// way, a quarter more memory per waiting hello when a thousand wait).
const CHUNK: usize = HELLO_LIMIT;

/// What the first bytes of a client said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// A ClientHello naming this server (lower case, no trailing dot).
    Name(String),
    /// A ClientHello without a server name (a client that connects by
    /// address), or with one that is not a host name.
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
    /// Not read at all: the listener had `max_pending_hellos` clients
    /// waiting for theirs already.
    Crowded,
}

impl Failed {
    pub fn as_str(self) -> &'static str {
        match self {
            Failed::Timeout => "hello_timeout",
            Failed::TooLarge => "hello_too_large",
            Failed::Closed => "hello_closed",
            Failed::Crowded => "max_pending_hellos",
        }
    }
}

/// Reads `client`'s first bytes until its ClientHello is complete (or it
/// is plainly not TLS), within `limit` bytes and `timeout`: the bytes read,
/// all of them, and what they said.
pub async fn preread(client: &TcpStream, limit: usize, timeout: Duration) -> Result<(Vec<u8>, Hello), Failed> {
    let mut buf = Vec::new();
    let mut records = Records::default();
    let read = async {
        loop {
            if client.readable().await.is_err() {
                return Err(Failed::Closed);
            }
            match read_some(client, &mut buf, limit) {
                Ok(0) => return Err(Failed::Closed),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return Err(Failed::Closed),
            }
            if let Some(said) = records.examine(&buf, limit) {
                return said;
            }
        }
    };
    match crate::timer::timeout(timeout, read).await {
        Ok(Ok(hello)) => Ok((buf, hello)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Failed::Timeout),
    }
}

/// One read of what `client` has sent, at most up to `limit` in all (so a
/// flood stops at the bound), appended to `buf`. The chunk lives on the
/// stack for the read only: nothing but the kept bytes is held across a
/// wait, and they grow by [`GROW`], not to the limit up front.
fn read_some(client: &TcpStream, buf: &mut Vec<u8>, limit: usize) -> std::io::Result<usize> {
    let mut chunk = [0u8; CHUNK];
    let room = limit.saturating_sub(buf.len()).min(CHUNK);
    let n = client.try_read(&mut chunk[..room])?;
    let want = (buf.len() + n).next_multiple_of(GROW).min(limit);
    if want > buf.capacity() {
        buf.reserve_exact(want - buf.len());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// The TLS records read so far, framed as they come: where the first record
/// not yet whole starts, and how much of the hello the whole ones hold.
/// Each byte of a record header is looked at once, so framing a hello sent
/// a byte at a time costs no more than one sent at once.
#[derive(Debug, Default, Clone)]
pub struct Records {
    /// Where the first record not yet whole starts.
    next: usize,
    /// Handshake bytes in the whole records before `next`.
    body: usize,
    /// The handshake message's header (type and length), as far as read.
    head: [u8; 4],
}

impl Records {
    /// What `bytes` (all those read so far; the same bytes as the last call
    /// and more) say: None while a hello could still complete within
    /// `limit`.
    pub fn examine(&mut self, bytes: &[u8], limit: usize) -> Option<Result<Hello, Failed>> {
        while let Some(h) = bytes.get(self.next..) {
            if h.first().is_some_and(|&t| t != HANDSHAKE) || h.get(1).is_some_and(|&v| v != 3) {
                return Some(Ok(Hello::NotTls));
            }
            let Some(len) = h.get(3..5).map(|l| usize::from(u16::from_be_bytes([l[0], l[1]]))) else { break };
            let end = self.next + 5 + len;
            if end > limit {
                return Some(Err(Failed::TooLarge));
            }
            let Some(body) = bytes.get(self.next + 5..end) else { break };
            for (i, &b) in body.iter().take(4usize.saturating_sub(self.body)).enumerate() {
                self.head[self.body + i] = b;
            }
            self.body += len;
            self.next = end;
            if self.body < 4 {
                continue;
            }
            if self.head[0] != CLIENT_HELLO {
                return Some(Ok(Hello::NotTls));
            }
            let need =
                4 + usize::from(u16::from_be_bytes([self.head[2], self.head[3]])) + (usize::from(self.head[1]) << 16);
            // Even in one record it would not fit.
            if 5 + need > limit {
                return Some(Err(Failed::TooLarge));
            }
            if self.body >= need {
                return Some(Ok(decide(&bytes[..end], need)));
            }
        }
        (bytes.len() >= limit).then_some(Err(Failed::TooLarge))
    }
}

/// What whole `records` holding a ClientHello of `need` bytes (header
/// included) say: rustls's reading, or where rustls refuses it, ours.
///
/// Ours is read first, in place: when it finds a host name that rustls
/// takes as one too, rustls would say the same (it reads the same first
/// host_name, and where it refuses the hello, ours decides anyway), so
/// rustls is not asked. That saves the proxy building and dropping a
/// whole rustls connection per routed client: 3.7 µs of its CPU per
/// handshake in a profile of the routed row, where the routed handshake
/// cost 4-11 µs more than the plain one.
fn decide(records: &[u8], need: usize) -> Hello {
    let hello = message(records, need);
    let ours = server_name(hello.get(4..).unwrap_or_default());
    if let Ok(Some(name)) = ours
        && name.parse::<std::net::IpAddr>().is_err()
        && rustls::pki_types::DnsName::try_from(name).is_ok()
    {
        return named(Some(name));
    }
    if let Some(said) = by_rustls(records) {
        return said;
    }
    match ours {
        Ok(name) => named(name),
        Err(Malformed) => Hello::NotTls,
    }
}

/// rustls's reading of whole `records`; None where it refuses them.
fn by_rustls(records: &[u8]) -> Option<Hello> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rd = records;
    while !rd.is_empty() {
        if !matches!(acceptor.read_tls(&mut rd), Ok(n) if n > 0) {
            return None;
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => Some(named(accepted.client_hello().server_name())),
        _ => None,
    }
}

/// A hello naming `name`, compared as routes compare it; a name of dots
/// only is none.
fn named(name: Option<&str>) -> Hello {
    match name.map(normalise) {
        Some(n) if !n.is_empty() => Hello::Name(n),
        _ => Hello::NoName,
    }
}

/// The handshake message of `need` bytes that whole `records` hold: a
/// slice of them when one record holds it all (the usual case), else put
/// together.
fn message(records: &[u8], need: usize) -> Cow<'_, [u8]> {
    let mut at = 0;
    let mut out = Vec::new();
    while let Some(h) = records.get(at..at + 5) {
        let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
        let body = records.get(at + 5..at + 5 + len).unwrap_or_default();
        if at == 0 && body.len() >= need {
            return Cow::Borrowed(&body[..need]);
        }
        out.extend_from_slice(body);
        at += 5 + len;
    }
    out.truncate(need);
    Cow::Owned(out)
}

/// A ClientHello that does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// The host name a ClientHello's body (the message after its 4-byte
/// header) names in its server_name extension: the first of type
/// host_name, as sent; None without one, or when it is not a host name
/// (letters, digits, `-`, `_`, `.`, 1 to 253 bytes). Every length is
/// checked against what is left, so any input ends in linear time.
pub fn server_name(hello: &[u8]) -> Result<Option<&str>, Malformed> {
    let mut c = Cursor(hello);
    c.take(2 + 32)?; // legacy_version, random
    c.vec8()?; // legacy_session_id
    c.vec16()?; // cipher_suites
    c.vec8()?; // legacy_compression_methods
    // A TLS 1.2 hello may end here: no extensions at all.
    if c.0.is_empty() {
        return Ok(None);
    }
    let mut exts = c.vec16()?;
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let mut data = exts.vec16()?;
        if ty != SERVER_NAME {
            continue;
        }
        let mut list = data.vec16()?;
        while !list.0.is_empty() {
            let kind = list.u8()?;
            let name = list.vec16()?.0;
            if kind == HOST_NAME {
                return Ok(host_name(name));
            }
        }
        return Ok(None);
    }
    Ok(None)
}

/// `name` as text when it can be a host name.
fn host_name(name: &[u8]) -> Option<&str> {
    let ok = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if name.is_empty() || name.len() > 253 || !name.iter().all(ok) {
        return None;
    }
    std::str::from_utf8(name).ok()
}

/// What is left of a message, read from the front.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if n > self.0.len() {
            return Err(Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Malformed> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one-byte length.
    fn vec8(&mut self) -> Result<Cursor<'a>, Malformed> {
        let n = self.u8()?;
        Ok(Cursor(self.take(usize::from(n))?))
    }

    /// A vector with a two-byte length.
    fn vec16(&mut self) -> Result<Cursor<'a>, Malformed> {
        let n = self.u16()?;
        Ok(Cursor(self.take(usize::from(n))?))
    }
}

/// Which of `patterns` routes `name`: the most specific match.
pub fn best<'a, T>(routes: &'a [(Pattern, T)], name: &str) -> Option<&'a (Pattern, T)> {
    routes.iter().filter_map(|r| Some((r.0.score(name)?, r))).max_by_key(|(s, _)| *s).map(|(_, r)| r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

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

    fn vec16(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    /// A TLS 1.2 ClientHello message (header included), as an old client
    /// writes it: `session` bytes of session id, `extra` extensions before
    /// server_name (when `name`), and no signature_algorithms.
    fn tls12_hello(name: Option<&[u8]>, session: &[u8], extra: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[0x5a; 32]);
        body.push(session.len() as u8);
        body.extend_from_slice(session);
        body.extend(vec16(&[0xc0, 0x2f, 0x00, 0x9c])); // two cipher suites
        body.extend_from_slice(&[1, 0]); // null compression
        let mut exts = Vec::new();
        for (ty, data) in extra {
            exts.extend(ty.to_be_bytes());
            exts.extend(vec16(data));
        }
        if let Some(name) = name {
            let mut entry = vec![HOST_NAME];
            entry.extend(vec16(name));
            exts.extend(SERVER_NAME.to_be_bytes());
            exts.extend(vec16(&vec16(&entry)));
        }
        if !exts.is_empty() {
            body.extend(vec16(&exts));
        }
        let mut msg = vec![CLIENT_HELLO, 0];
        msg.extend(vec16(&body));
        msg
    }

    /// `msg` in TLS records of at most `size` bytes of body each.
    fn records(msg: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for part in msg.chunks(size.max(1)) {
            out.extend_from_slice(&[HANDSHAKE, 3, 1]);
            out.extend(vec16(part));
        }
        out
    }

    /// `bytes` examined as they would come, in pieces of `step`.
    fn arriving(bytes: &[u8], step: usize) -> Option<Result<Hello, Failed>> {
        let mut r = Records::default();
        let bytes = &bytes[..bytes.len().min(HELLO_LIMIT)];
        for end in (step.max(1)..bytes.len()).step_by(step.max(1)).chain([bytes.len()]) {
            if let Some(said) = r.examine(&bytes[..end], HELLO_LIMIT) {
                return Some(said);
            }
        }
        None
    }

    #[test]
    fn a_tls12_hello_without_signature_algorithms_rustls_refuses_is_routed_by_its_name() {
        let wire = records(&tls12_hello(Some(b"UCP.Example.com."), &[7; 32], &[(0xff01, vec![0])]), 16 * 1024);
        let mut acceptor = rustls::server::Acceptor::default();
        acceptor.read_tls(&mut &wire[..]).unwrap();
        assert!(acceptor.accept().is_err(), "rustls refuses it, so the fallback is what reads it");
        assert_eq!(arriving(&wire, wire.len()), Some(Ok(Hello::Name("ucp.example.com".into()))));
        // The same, split over records of 7 bytes arriving a byte at a time.
        let split = records(&tls12_hello(Some(b"dtr.test"), &[], &[]), 7);
        assert_eq!(arriving(&split, 1), Some(Ok(Hello::Name("dtr.test".into()))));
        // No extensions at all, or no host name: no name; not a host name
        // (an IP address written as a name is fine): no name.
        for (name, want) in [
            (None, Hello::NoName),
            (Some(&b"a b"[..]), Hello::NoName),
            (Some(b".."), Hello::NoName),
            (Some(b"10.0.0.1"), Hello::Name("10.0.0.1".into())),
        ] {
            assert_eq!(arriving(&records(&tls12_hello(name, &[], &[]), 100), 3), Some(Ok(want)));
        }
    }

    /// The first flight of rustls's own client naming `name`.
    fn rustls_hello(name: rustls::pki_types::ServerName<'static>) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
        let mut wire = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut wire).unwrap();
        }
        wire
    }

    #[test]
    fn a_rustls_clients_hello_is_read_by_rustls() {
        let wire = rustls_hello(rustls::pki_types::ServerName::try_from("ucp.test").unwrap());
        assert_eq!(arriving(&wire, 1), Some(Ok(Hello::Name("ucp.test".into()))));
    }

    #[test]
    fn what_cannot_be_a_hello_is_told_as_early_as_the_bytes_allow() {
        // Not a handshake record: at the first byte.
        assert_eq!(arriving(b"GET / HTTP/1.1\r\n", 1), Some(Ok(Hello::NotTls)));
        // A handshake that is not a ClientHello.
        assert_eq!(arriving(&records(&[2, 0, 0, 1, 0], 100), 1), Some(Ok(Hello::NotTls)));
        // An alert before the hello is whole.
        let mut w = records(&tls12_hello(Some(b"a.test"), &[], &[]), 20);
        w.truncate(25); // one whole record of 20 bytes
        w.extend_from_slice(&[0x15, 3, 3, 0, 2, 2, 40]);
        assert_eq!(arriving(&w, 1), Some(Ok(Hello::NotTls)));
        // A record that cannot fit: at its header. A hello whose length
        // says it cannot fit: at the end of the record giving that length.
        assert_eq!(
            Records::default().examine(&[HANDSHAKE, 3, 1, 0x40, 0x00], HELLO_LIMIT),
            Some(Err(Failed::TooLarge))
        );
        let big = [HANDSHAKE, 3, 1, 0, 4, CLIENT_HELLO, 0x00, 0x50, 0x00];
        assert_eq!(Records::default().examine(&big, HELLO_LIMIT), Some(Err(Failed::TooLarge)));
        assert_eq!(Records::default().examine(&big[..8], HELLO_LIMIT), None);
        // Records of one byte each: refused at the bound.
        let tiny = records(&tls12_hello(Some(b"a.test"), &[], &[(0x1234, vec![0; 4000])]), 1);
        assert_eq!(arriving(&tiny, 4096), Some(Err(Failed::TooLarge)));
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?(\\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?){0,4}\\.?"
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..3000), step in 1usize..600, tls in any::<bool>()) {
            let mut bytes = bytes;
            if tls && bytes.len() > 9 {
                // Mostly a handshake record of a ClientHello, so the parser
                // gets past the first bytes.
                bytes[..3].copy_from_slice(&[HANDSHAKE, 3, 1]);
                bytes[5] = CLIENT_HELLO;
            }
            let _ = arriving(&bytes, step);
            let _ = server_name(&bytes);
            let _ = decide(&bytes, bytes.len());
        }

        #[test]
        fn a_well_formed_hellos_name_always_comes_out(
            name in name(),
            session in proptest::collection::vec(any::<u8>(), 0..=32),
            extra in proptest::collection::vec((1u16..0xffff, proptest::collection::vec(any::<u8>(), 0..300)), 0..6),
            size in 1usize..3000,
            step in 1usize..2000,
        ) {
            let wire = records(&tls12_hello(Some(name.as_bytes()), &session, &extra), size);
            prop_assume!(wire.len() <= HELLO_LIMIT);
            prop_assert_eq!(arriving(&wire, step), Some(Ok(Hello::Name(normalise(&name)))));
        }

        /// Where ours reads the name first, the verdict is rustls's: the
        /// hellos rustls's own client sends (TLS 1.3 and 1.2, every
        /// extension it puts in), and ours built with random extensions
        /// that rustls may or may not take, for names of every shape the
        /// route patterns allow, IP literals and odd labels included.
        #[test]
        fn the_fast_path_says_what_rustls_says(
            name in name(),
            odd in proptest::sample::select(vec!["10.0.0.1", "a..b", "-a.b", "a_b.c", "x.", "UCP.Test", "1.2.3"]),
            which in 0u8..3,
            extra in proptest::collection::vec((1u16..0xffff, proptest::collection::vec(any::<u8>(), 0..40)), 0..4),
        ) {
            let name = if which == 2 { odd.to_owned() } else { name };
            let wire = if which == 0 {
                let Ok(sni) = rustls::pki_types::ServerName::try_from(name.clone()) else { return Ok(()) };
                rustls_hello(sni)
            } else {
                records(&tls12_hello(Some(name.as_bytes()), &[], &extra), 4000)
            };
            if let Some(rustls_says) = by_rustls(&wire) {
                // The whole hello through the reader the listener uses.
                prop_assert_eq!(Records::default().examine(&wire, HELLO_LIMIT), Some(Ok(rustls_says)));
            }
        }
    }
}
