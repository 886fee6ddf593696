use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::*;

const LIMIT: usize = 4096;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.push(command);
    h.push(family);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(body);
    h
}

fn v2_inet(tlvs: &[u8]) -> Vec<u8> {
    let mut body = vec![192, 0, 2, 7, 10, 0, 0, 1, 0x30, 0x39, 0x01, 0xbb];
    body.extend_from_slice(tlvs);
    v2(0x21, 0x11, &body)
}

fn v2_inet6() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
    body.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
    body.extend_from_slice(&[0x30, 0x39, 0x01, 0xbb]);
    v2(0x21, 0x21, &body)
}

fn complete(buf: &[u8]) -> Header {
    match parse(buf, LIMIT) {
        Ok(Parsed::Complete(h)) => h,
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
    }
}

/// Every header of the suite: each prefix is a header so far, needing
/// more than it has, and the whole (with bytes after it) is complete at
/// its own length.
fn every_boundary(h: &[u8]) -> Header {
    for i in 0..h.len() {
        match parse(&h[..i], LIMIT) {
            Ok(Parsed::Partial(need)) => assert!(need > i && need <= h.len(), "{i}: needs {need}"),
            other => panic!("prefix of {i} bytes: {other:?}"),
        }
    }
    let mut with_hello = h.to_vec();
    with_hello.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0x05]);
    let got = complete(&with_hello);
    assert_eq!(got.len, h.len());
    got
}

#[test]
fn v1_tcp4_and_tcp6_give_both_addresses() {
    let h = every_boundary(b"PROXY TCP4 192.0.2.7 10.0.0.1 12345 443\r\n");
    assert_eq!((h.version, h.command), (Version::V1, Command::Proxy));
    assert_eq!(h.addresses, Some((sa("192.0.2.7:12345"), sa("10.0.0.1:443"))));
    let h = every_boundary(b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 0\r\n");
    assert_eq!(h.addresses, Some((sa("[2001:db8::7]:65535"), sa("[2001:db8::1]:0"))));
}

#[test]
fn v1_unknown_keeps_the_connection_s_addresses() {
    let h = every_boundary(b"PROXY UNKNOWN\r\n");
    assert_eq!((h.command, h.addresses), (Command::Unknown, None));
    let h = every_boundary(b"PROXY UNKNOWN ffff:: 1.2.3.4 1 2\r\n");
    assert_eq!((h.command, h.addresses), (Command::Unknown, None));
}

#[test]
fn v1_the_longest_line_is_read_and_one_byte_more_is_too_large() {
    let pad = |n: usize| format!("PROXY UNKNOWN {}\r\n", "x".repeat(n));
    let longest = pad(V1_MAX - "PROXY UNKNOWN \r\n".len());
    assert_eq!(longest.len(), V1_MAX);
    assert_eq!(every_boundary(longest.as_bytes()).len, V1_MAX);
    let over = pad(V1_MAX + 1 - "PROXY UNKNOWN \r\n".len());
    assert_eq!(parse(over.as_bytes(), LIMIT), Err(Broken::TooLarge));
    assert_eq!(parse(&over.as_bytes()[..V1_MAX], LIMIT), Err(Broken::TooLarge), "judged at 107 bytes");
}

#[test]
fn v1_broken_lines_are_refused() {
    for bad in [
        &b"PROXY TCP4 192.0.2.7 10.0.0.1 12345\r\n"[..],
        b"PROXY TCP4 192.0.2.7 10.0.0.1 12345 443 9\r\n",
        b"PROXY TCP4  192.0.2.7 10.0.0.1 12345 443\r\n",
        b"PROXY TCP4 192.0.2.07 10.0.0.1 12345 443\r\n",
        b"PROXY TCP4 2001:db8::7 10.0.0.1 12345 443\r\n",
        b"PROXY TCP6 192.0.2.7 10.0.0.1 12345 443\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 012345 443\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 65536 443\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 -1 443\r\n",
        b"PROXY UDP4 192.0.2.7 10.0.0.1 1 443\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 1 443\rX",
        b"PROXY TCP4 192.0.2.7\n10.0.0.1 1 443\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 1 44\xc3\xa9\r\n",
        b"PROXY \r\n",
    ] {
        assert_eq!(parse(bad, LIMIT), Err(Broken::Invalid), "{:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn v2_inet_inet6_unix_local_and_unspec() {
    let h = every_boundary(&v2_inet(&[]));
    assert_eq!((h.version, h.command), (Version::V2, Command::Proxy));
    assert_eq!(h.addresses, Some((sa("192.0.2.7:12345"), sa("10.0.0.1:443"))));
    let h = every_boundary(&v2_inet6());
    assert_eq!(h.addresses, Some((sa("[2001:db8::7]:12345"), sa("[2001:db8::1]:443"))));
    // AF_UNIX: two 108-byte paths, no IP address to believe.
    let h = every_boundary(&v2(0x21, 0x31, &[b'/'; 216]));
    assert_eq!((h.command, h.addresses), (Command::Proxy, None));
    let h = every_boundary(&v2(0x21, 0x00, &[]));
    assert_eq!((h.command, h.addresses), (Command::Proxy, None));
    // LOCAL: the outer balancer's own check; addresses, if any, ignored.
    let h = every_boundary(&v2(0x20, 0x00, &[]));
    assert_eq!((h.command, h.addresses), (Command::Local, None));
    let local_inet = v2_inet(&[]).iter().enumerate().map(|(i, &b)| if i == 12 { 0x20 } else { b }).collect::<Vec<_>>();
    assert_eq!(every_boundary(&local_inet).addresses, None);
}

#[test]
fn v2_tlvs_are_walked_and_bounded() {
    // PP2_TYPE_AUTHORITY "ucp", PP2_TYPE_NOOP of 0 bytes, a 4 KiB-ish one.
    let mut tlvs = vec![0x02, 0, 3, b'u', b'c', b'p', 0x04, 0, 0];
    tlvs.extend_from_slice(&[0xE0, 0x0f, 0x00]);
    tlvs.extend_from_slice(&[7; 0x0f00]);
    let h = every_boundary(&v2_inet(&tlvs));
    assert_eq!((h.tlvs, h.addresses.map(|a| a.0)), (3, Some(sa("192.0.2.7:12345"))));
    // A TLV running past the header, or a stray byte after the last.
    assert_eq!(parse(&v2_inet(&[0x02, 0, 4, b'u', b'c', b'p']), LIMIT), Err(Broken::Invalid));
    assert_eq!(parse(&v2_inet(&[0x02, 0, 1, b'u', 9]), LIMIT), Err(Broken::Invalid));
    assert_eq!(parse(&v2_inet(&[0x02, 0]), LIMIT), Err(Broken::Invalid));
}

#[test]
fn v2_over_the_bound_is_too_large_from_its_first_16_bytes() {
    let big = v2_inet(&{
        let mut t = vec![0xE0, 0x27, 0x00];
        t.extend_from_slice(&[1; 0x2700]);
        t
    });
    assert!(big.len() > 10_000);
    assert_eq!(parse(&big[..16], LIMIT), Err(Broken::TooLarge));
    assert!(matches!(parse(&big, 65_551), Ok(Parsed::Complete(h)) if h.len == big.len()));
    // The longest length the format can say.
    let mut huge = v2(0x21, 0x11, &[]);
    huge[14..16].copy_from_slice(&[0xff, 0xff]);
    assert_eq!(parse(&huge, LIMIT), Err(Broken::TooLarge));
}

#[test]
fn v2_broken_headers_are_refused_as_soon_as_they_show() {
    for (bad, at) in [
        (v2(0x11, 0x11, &[0; 12]), 13),        // version 1 in a v2 header
        (v2(0x22, 0x11, &[0; 12]), 13),        // command 2
        (v2(0x21, 0x41, &[0; 12]), 14),        // family 4
        (v2(0x21, 0x13, &[0; 12]), 14),        // transport 3
        (v2(0x21, 0x11, &[0; 11]), 27),        // too short for INET
        (v2(0x21, 0x21, &[0; 35]), 51),        // too short for INET6
        (v2(0x20, 0x31, &[0; 215]), 16 + 215), // LOCAL too short for UNIX
    ] {
        assert_eq!(parse(&bad[..at], LIMIT), Err(Broken::Invalid), "{bad:?}");
    }
}

#[test]
fn anything_else_is_no_header() {
    for garbage in
        [&b"GET / HTTP/1.1\r\n\r\n"[..], b"\x16\x03\x01\x02\x00", b"\r\n\r\n\0\r\nQUIT!", b"PROXI", b"proxy "]
    {
        assert_eq!(parse(garbage, LIMIT), Err(Broken::Missing), "{garbage:?}");
    }
    // Nothing yet: the shortest header of either version is 15 bytes (a
    // bound found by the fuzz target: 16 is more than `PROXY UNKNOWN\r\n`).
    assert_eq!(parse(b"", LIMIT), Ok(Parsed::Partial(15)));
}

#[test]
fn random_bytes_never_panic_and_complete_lengths_stay_within_the_input() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..20_000 {
        let mut buf = Vec::new();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x % 300) as usize;
        let start: &[u8] = match x % 3 {
            0 => &V2_SIGNATURE,
            1 => b"PROXY ",
            _ => b"",
        };
        buf.extend_from_slice(start);
        for i in 0..len {
            buf.push((x >> (i % 56)) as u8 ^ i as u8);
        }
        if let Ok(Parsed::Complete(h)) = parse(&buf, 512) {
            assert!(h.len <= buf.len() && h.len <= 512.max(V1_MAX));
        }
    }
}

async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    c.set_nodelay(true).unwrap();
    (c, s)
}

/// What is left on `s` after the header: everything the client sent next.
async fn rest(mut s: TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn a_header_sent_byte_by_byte_is_read_and_nothing_after_it_is_taken() {
    for header in [b"PROXY TCP4 192.0.2.7 10.0.0.1 12345 443\r\n".to_vec(), v2_inet(&[0x04, 0, 2, 0, 0])] {
        let (mut c, s) = pair().await;
        let mut sent = header.clone();
        sent.extend_from_slice(b"\x16\x03\x01hello");
        let writer = tokio::spawn(async move {
            for b in sent {
                c.write_all(&[b]).await.unwrap();
                c.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let h = read(&s, LIMIT, Duration::from_secs(10)).await.unwrap();
        writer.await.unwrap();
        assert_eq!((h.len, h.addresses.map(|a| a.0)), (header.len(), Some(sa("192.0.2.7:12345"))));
        assert_eq!(rest(s).await, b"\x16\x03\x01hello");
    }
}

/// A long v2 header (3,000 bytes of TLVs) in 100-byte pieces: the buffer
/// grows as they come (it no longer takes the claimed length at once) and
/// the header is read whole, the bytes after it left.
#[tokio::test]
async fn a_long_header_in_pieces_is_read_as_the_buffer_grows() {
    let mut tlvs = Vec::new();
    for _ in 0..3 {
        tlvs.extend_from_slice(&[0xe0, 0x03, 0xe5]);
        tlvs.extend_from_slice(&[b'x'; 997]);
    }
    let header = v2_inet(&tlvs);
    assert!(header.len() > 3000);
    let (mut c, s) = pair().await;
    let mut sent = header.clone();
    sent.extend_from_slice(b"after");
    let writer = tokio::spawn(async move {
        for piece in sent.chunks(100) {
            c.write_all(piece).await.unwrap();
            tokio::task::yield_now().await;
        }
    });
    let h = read(&s, LIMIT, Duration::from_secs(10)).await.unwrap();
    writer.await.unwrap();
    assert_eq!((h.len, h.addresses.map(|a| a.0)), (header.len(), Some(sa("192.0.2.7:12345"))));
    assert_eq!(rest(s).await, b"after");
}

#[tokio::test]
async fn a_header_in_one_segment_leaves_the_hello_behind_it() {
    let (mut c, s) = pair().await;
    let mut sent = v2_inet6();
    sent.extend_from_slice(b"\x16\x03\x01hello");
    c.write_all(&sent).await.unwrap();
    drop(c);
    let h = read(&s, LIMIT, Duration::from_secs(10)).await.unwrap();
    assert_eq!(h.addresses.map(|a| a.0), Some(sa("[2001:db8::7]:12345")));
    assert_eq!(rest(s).await, b"\x16\x03\x01hello");
}

#[tokio::test]
async fn failures_by_reason() {
    let (mut c, s) = pair().await;
    c.write_all(b"\x16\x03\x01\x02\x00").await.unwrap();
    assert_eq!(read(&s, LIMIT, Duration::from_secs(10)).await, Err(Failed::Missing));
    let (mut c, s) = pair().await;
    c.write_all(b"PROXY TCP9 x\r\n").await.unwrap();
    assert_eq!(read(&s, LIMIT, Duration::from_secs(10)).await, Err(Failed::Broken));
    let (mut c, s) = pair().await;
    let mut big = v2(0x21, 0x11, &[0; 12]);
    big[14..16].copy_from_slice(&10_000u16.to_be_bytes());
    c.write_all(&big).await.unwrap();
    assert_eq!(read(&s, LIMIT, Duration::from_secs(10)).await, Err(Failed::TooLarge));
    let (mut c, s) = pair().await;
    c.write_all(b"PROXY TCP4 192.0.2.7").await.unwrap();
    drop(c);
    assert_eq!(read(&s, LIMIT, Duration::from_secs(10)).await, Err(Failed::Closed));
    let (c, s) = pair().await;
    drop(c);
    assert_eq!(read(&s, LIMIT, Duration::from_secs(10)).await, Err(Failed::Closed), "left without a byte");
}

#[tokio::test(start_paused = true)]
async fn a_slow_header_times_out() {
    let (mut c, s) = pair().await;
    c.write_all(b"PROXY TCP4 ").await.unwrap();
    assert_eq!(read(&s, LIMIT, Duration::from_secs(3)).await, Err(Failed::Timeout));
}
