//! Which admin connections are kept, and which are closed to make room,
//! so that `/healthz` answers under any flood (issue 35).
//!
//! A connection is sorted by its first bytes, read with a short deadline,
//! into one of three kinds, each with places of its own:
//!
//! - **arriving** (128 places): nothing decisive read yet. Closed when no
//!   byte came within 2 s. To make room, the oldest arriving connection of
//!   the address holding most is told to go; it first reads once more and
//!   is only closed if it still has sent nothing (a request already in its
//!   socket is sorted as usual).
//! - **health** (32 places): a request line starting `GET /healthz` or
//!   `HEAD /healthz`. Its head must be in within 1 s and the whole answer
//!   given within 2 s.
//! - **other** (64 places): every other request, as before: headers within
//!   5 s, done within 30 s.
//!
//! In the health and the other kind, only a connection whose request head
//! is not yet all in can be closed to make room: the oldest of the address
//! holding most such (and an address holding a quarter of a kind's places
//! loses its own oldest first). A newcomer finding every place taken by
//! requests being answered is closed at once.
//!
//! So a flood of any other request, from any number of addresses, never
//! touches the health places; a health check whose request arrives whole
//! (as `ucp-lb healthcheck`, curl and keepalived's scripts send it) is
//! never closed once sorted, whatever the flood sends; and the only way to
//! lose one before it is sorted is to have it evicted and still have sent
//! nothing when it looks again. What bounds the rest is the listen backlog:
//! a flood that connects faster than the admin server accepts fills it,
//! and the kernel then drops new connections' SYNs (the checker's among
//! them) until a place frees; each dropped SYN costs the client a 1 s
//! retransmission. An address is an IPv4 address or an IPv6 /64.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a new connection has to send its first bytes.
pub(super) const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(2);
/// How long any connection has to send its whole request head.
pub(super) const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long any connection may stay open.
pub(super) const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a /healthz request has for the rest of its head.
pub(super) const HEALTH_HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a /healthz connection may stay open.
pub(super) const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// The most of a request read before it is sorted (and replayed to the
/// HTTP parser): a request line and a short head fit.
const FIRST_READ: usize = 2048;

/// What a connection is, by its first bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Kind {
    /// Nothing decisive read yet.
    Arriving,
    /// `GET /healthz` or `HEAD /healthz`.
    Health,
    /// Anything else.
    Other,
}

impl Kind {
    /// Its places.
    fn places(self) -> usize {
        match self {
            Kind::Arriving => 128,
            Kind::Health => 32,
            Kind::Other => 64,
        }
    }

    /// The most one address may hold of this kind while waiting for a head.
    fn per_source(self) -> usize {
        self.places() / 4
    }
}

/// The request lines that are health checks, up to where they say so.
const HEALTH_LINES: [&[u8]; 2] = [b"GET /healthz", b"HEAD /healthz"];

/// Sorts a connection by the bytes read so far: `None` while they could
/// still become a health check's request line.
pub(super) fn sort(first: &[u8]) -> Option<Kind> {
    for line in HEALTH_LINES {
        if first.len() <= line.len() {
            if line.starts_with(first) {
                return None;
            }
        } else if first.starts_with(line) && matches!(first[line.len()], b' ' | b'?') {
            return Some(Kind::Health);
        }
    }
    Some(Kind::Other)
}

/// Whether `first` holds a whole request head.
pub(super) fn head_complete(first: &[u8]) -> bool {
    first.windows(4).any(|w| w == b"\r\n\r\n")
}

/// Who a connection counts against: an IPv4 address, or an IPv6 /64 (a
/// host usually has a whole one).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Source(IpAddr);

impl Source {
    fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let mut o = v6.octets();
                o[8..].fill(0);
                Source(IpAddr::from(o))
            }
            v4 => Source(v4),
        }
    }
}

/// One open admin connection.
struct Conn {
    /// Also its age: lower is older.
    id: u64,
    kind: Kind,
    source: Source,
    /// Tells its task to go (see [`Kind`] for what going means).
    evict: Arc<Notify>,
    /// Its request head is all in: it is being answered, never evicted.
    head_in: Arc<AtomicBool>,
}

impl Conn {
    fn evictable(&self) -> bool {
        !self.head_in.load(Relaxed)
    }
}

/// The open admin connections.
#[derive(Default)]
pub(super) struct Open {
    conns: Mutex<Vec<Conn>>,
    next: AtomicU64,
}

/// A connection's place in [`Open`]; leaves it when dropped.
pub(super) struct Ticket {
    open: Arc<Open>,
    id: u64,
    source: Source,
    pub(super) evict: Arc<Notify>,
    pub(super) head_in: Arc<AtomicBool>,
}

impl Open {
    /// Registers a connection just accepted from `peer`, as arriving. It
    /// always gets a place: an older arriving one may be told to go.
    pub(super) fn arrive(self: &Arc<Self>, peer: IpAddr) -> Ticket {
        let source = Source::of(peer);
        let id = self.next.fetch_add(1, Relaxed);
        let (evict, head_in) = (Arc::new(Notify::new()), Arc::new(AtomicBool::new(false)));
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        make_room(&mut conns, Kind::Arriving, source);
        conns.push(Conn { id, kind: Kind::Arriving, source, evict: evict.clone(), head_in: head_in.clone() });
        Ticket { open: self.clone(), id, source, evict, head_in }
    }

    /// Moves `ticket`'s connection to `kind` (whether or not it was told to
    /// go while arriving), its head all in already when `whole`. False when
    /// every place of that kind is taken by a request being answered: the
    /// connection is to be closed.
    pub(super) fn sort(&self, ticket: &mut Ticket, kind: Kind, whole: bool) -> bool {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|c| c.id != ticket.id);
        if !make_room(&mut conns, kind, ticket.source) {
            return false;
        }
        // A fresh signal: one given while it was arriving (and answered by
        // reading its request after all) must not close it now.
        ticket.evict = Arc::new(Notify::new());
        ticket.head_in.store(whole, Relaxed);
        conns.push(Conn {
            id: ticket.id,
            kind,
            source: ticket.source,
            evict: ticket.evict.clone(),
            head_in: ticket.head_in.clone(),
        });
        true
    }

    #[cfg(test)]
    fn count(&self, kind: Kind) -> usize {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|c| c.kind == kind).count()
    }
}

/// Makes a place of `kind` for a newcomer from `source`: tells one
/// connection to go when `source` holds its share of waiting ones or every
/// place is taken. False when none can go.
fn make_room(conns: &mut Vec<Conn>, kind: Kind, source: Source) -> bool {
    let waiting = |c: &&Conn| c.kind == kind && c.evictable();
    let own = conns.iter().filter(waiting).filter(|c| c.source == source).count();
    let victim = if own >= kind.per_source() {
        oldest(conns.iter().filter(waiting).filter(|c| c.source == source))
    } else if conns.iter().filter(|c| c.kind == kind).count() >= kind.places() {
        // The oldest of the address holding most waiting ones.
        let mut held: HashMap<Source, usize> = HashMap::new();
        for c in conns.iter().filter(waiting) {
            *held.entry(c.source).or_default() += 1;
        }
        let Some(most) = held.values().max().copied() else { return false };
        oldest(conns.iter().filter(waiting).filter(|c| held.get(&c.source) == Some(&most)))
    } else {
        return true;
    };
    if let Some(i) = victim.and_then(|id| conns.iter().position(|c| c.id == id)) {
        // notify_one keeps the permit if the task is not waiting yet.
        conns.swap_remove(i).evict.notify_one();
    }
    true
}

fn oldest<'a>(conns: impl Iterator<Item = &'a Conn>) -> Option<u64> {
    conns.map(|c| c.id).min()
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut conns = self.open.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|c| c.id != self.id);
    }
}

/// Reads a new connection's first bytes until they sort it, for at most
/// [`FIRST_BYTES_TIMEOUT`] from `accepted`. Told to go meanwhile, it reads
/// once more without waiting: `None` (close it) unless that sorts it.
pub(super) async fn first_bytes(tcp: &TcpStream, ticket: &Ticket, accepted: Instant) -> Option<(Bytes, Kind)> {
    let mut first = Vec::new();
    let mut buf = [0u8; FIRST_READ];
    let deadline = accepted + FIRST_BYTES_TIMEOUT;
    loop {
        let last_chance = tokio::select! {
            r = crate::timer::timeout_at(deadline, tcp.readable()) => match r {
                Ok(Ok(())) => false,
                _ => return None,
            },
            _ = ticket.evict.notified() => true,
        };
        match tcp.try_read(&mut buf[..FIRST_READ - first.len()]) {
            Ok(0) => return None,
            Ok(n) => first.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && !last_chance => continue,
            Err(_) => return None,
        }
        match sort(&first) {
            Some(kind) => return Some((Bytes::from(first), kind)),
            None if last_chance => return None,
            None => {}
        }
    }
}

/// A connection whose first bytes were read already: they are read again
/// first, then the socket.
pub(super) struct Replayed {
    pub(super) first: Bytes,
    pub(super) tcp: TcpStream,
}

impl AsyncRead for Replayed {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.first.is_empty() {
            return Pin::new(&mut self.tcp).poll_read(cx, buf);
        }
        let n = self.first.len().min(buf.remaining());
        let chunk = self.first.split_to(n);
        buf.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Replayed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_first_bytes_sort_a_connection() {
        for (bytes, kind) in [
            (&b"GET /healthz HTTP/1.1\r\n"[..], Some(Kind::Health)),
            (b"HEAD /healthz HTTP/1.1\r\n", Some(Kind::Health)),
            (b"GET /healthz?x=1 HTTP/1.1", Some(Kind::Health)),
            (b"", None),
            (b"G", None),
            (b"GET /heal", None),
            (b"HEAD /healthz", None),
            (b"GET /healthzz HTTP/1.1", Some(Kind::Other)),
            (b"GET /status HTTP/1.1", Some(Kind::Other)),
            (b"POST /reload", Some(Kind::Other)),
            (b"\x16\x03\x01", Some(Kind::Other)),
        ] {
            assert_eq!(sort(bytes), kind, "{:?}", String::from_utf8_lossy(bytes));
        }
        assert!(head_complete(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(!head_complete(b"GET /healthz HTTP/1.1\r\nHost: x\r\n"));
    }

    #[test]
    fn an_ipv6_source_is_its_64() {
        assert_eq!(Source::of(ip("2001:db8:1:2:aaaa::1")), Source::of(ip("2001:db8:1:2:bbbb::9")));
        assert_ne!(Source::of(ip("2001:db8:1:2::1")), Source::of(ip("2001:db8:1:3::1")));
        assert_eq!(Source::of(ip("::ffff:127.0.0.9")), Source::of(ip("127.0.0.9")));
        assert_ne!(Source::of(ip("127.0.0.9")), Source::of(ip("127.0.0.10")));
    }

    /// Whether the connection of `t` is still held (not told to go).
    fn held(open: &Open, t: &Ticket) -> bool {
        open.conns.lock().unwrap().iter().any(|c| c.id == t.id)
    }

    #[test]
    fn a_flood_of_other_requests_from_any_number_of_addresses_never_touches_a_health_check() {
        let open = Arc::new(Open::default());
        let mut check = open.arrive(ip("127.0.0.1"));
        assert!(open.sort(&mut check, Kind::Health, true));
        let mut flood = Vec::new();
        for i in 0..10_000u32 {
            let mut t = open.arrive(IpAddr::from((0x7f00_0100u32 + i).to_be_bytes()));
            assert!(open.sort(&mut t, Kind::Other, false));
            flood.push(t);
        }
        assert!(held(&open, &check));
        assert_eq!(open.count(Kind::Other), Kind::Other.places());
        // Half-sent health requests evict each other, never a whole one.
        for i in 0..10_000u32 {
            let mut t = open.arrive(IpAddr::from((0x7f01_0000u32 + i).to_be_bytes()));
            assert!(open.sort(&mut t, Kind::Health, false));
            flood.push(t);
        }
        assert!(held(&open, &check));
        assert_eq!(open.count(Kind::Health), Kind::Health.places());
    }

    #[test]
    fn room_is_made_from_the_address_holding_most_and_its_oldest_first() {
        let open = Arc::new(Open::default());
        let one = open.arrive(ip("127.0.0.1"));
        let mut many = Vec::new();
        for _ in 0..Kind::Arriving.per_source() {
            many.push(open.arrive(ip("127.0.0.2")));
        }
        // 127.0.0.2 is at its share: its next arrival evicts its own oldest.
        many.push(open.arrive(ip("127.0.0.2")));
        assert!(!held(&open, &many[0]) && held(&open, &many[1]) && held(&open, &one));
        // Fill every place from addresses holding one each, then a few
        // more: 127.0.0.2 holds most and loses its oldest, 127.0.0.1 stays.
        // (Once every address holds one, the oldest of all goes.)
        let mut rest = Vec::new();
        for i in 0..100 {
            rest.push(open.arrive(IpAddr::from((0x7f00_1000u32 + i as u32).to_be_bytes())));
        }
        assert!(held(&open, &one), "a lone connection outlives a crowd from elsewhere");
        assert!(!held(&open, &many[1]));
        assert_eq!(open.count(Kind::Arriving), Kind::Arriving.places());
    }

    #[test]
    fn a_kind_full_of_requests_being_answered_turns_a_newcomer_away() {
        let open = Arc::new(Open::default());
        let mut answered = Vec::new();
        for i in 0..Kind::Health.places() {
            let mut t = open.arrive(IpAddr::from((0x7f00_0200u32 + i as u32).to_be_bytes()));
            assert!(open.sort(&mut t, Kind::Health, true));
            answered.push(t);
        }
        let mut late = open.arrive(ip("127.0.0.1"));
        assert!(!open.sort(&mut late, Kind::Health, true));
        drop(answered.pop());
        assert!(open.sort(&mut late, Kind::Health, true), "a place freed when one ended");
    }
}
