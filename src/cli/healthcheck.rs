//! `ucp-lb healthcheck`: a tiny blocking HTTP/1.1 GET of a running
//! ucp-lb's `/healthz`, so that a `FROM scratch` image (no curl, no shell)
//! and keepalived's track script can ask it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The address to ask for a listen address: a wildcard bind is asked on
/// the loopback address of its family.
pub fn local_addr(listen: SocketAddr) -> SocketAddr {
    let mut a = listen;
    if a.ip().is_unspecified() {
        a.set_ip(if a.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    a
}

/// Most of a reply that is read: /healthz says a word or two.
const MAX_REPLY: usize = 16 * 1024;

/// GETs `url` (`http://host[:port][/path]`) and returns the status code
/// and the body (lossy UTF-8, at most 16 KiB of reply in all); `timeout`
/// bounds the whole exchange.
pub fn get(url: &str, timeout: Duration) -> Result<(u16, String), String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs are asked (the admin port speaks plain HTTP)")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/healthz"),
    };
    if authority.is_empty() {
        return Err("no host in the URL".into());
    }
    let with_port = if authority.ends_with(']') || !authority.contains(':') {
        format!("{authority}:80")
    } else {
        authority.to_owned()
    };
    let deadline = Instant::now() + timeout;
    let addrs: Vec<SocketAddr> =
        with_port.to_socket_addrs().map_err(|e| format!("cannot resolve {authority}: {e}"))?.collect();
    let mut last = format!("{authority} resolves to no address");
    for addr in addrs {
        if deadline.saturating_duration_since(Instant::now()).is_zero() {
            return Err(format!("timeout after {timeout:?}"));
        }
        match ask(addr, authority, path, deadline, timeout) {
            Ok(answer) => return Ok(answer),
            // Nothing got through to this address: the next one, if any.
            Err(Failed { connecting: true, why }) => last = why,
            Err(Failed { why, .. }) => return Err(why),
        }
    }
    Err(last)
}

/// How often a new attempt starts while the earlier ones wait.
const ATTEMPT_EVERY: Duration = Duration::from_millis(200);
/// The most attempts at one address (3 s of them at the default timeout).
const MAX_ATTEMPTS: usize = 16;

/// Why an attempt got no answer.
struct Failed {
    /// It did not connect.
    connecting: bool,
    why: String,
}

/// Asks `addr` by `deadline`. When a listen queue is full (an admin port
/// under a connection flood) the kernel drops a SYN, or the handshake's
/// last ACK, and only tries again 1 s later, then 2 s: two drops in a row
/// use up a 3 s check. So while no answer has come, a new attempt starts
/// every 200 ms beside those still waiting, each with its own chance at a
/// free place; the first answer (whatever its status) is the check's, and
/// the other attempts are closed as they end. A refused connect ends it at
/// once: nothing listens there.
fn ask(
    addr: SocketAddr,
    host: &str,
    path: &str,
    deadline: Instant,
    timeout: Duration,
) -> Result<(u16, String), Failed> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (mut started, mut ended) = (0, 0);
    let mut last = Failed { connecting: true, why: format!("connect {addr}: timeout after {timeout:?}") };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(last);
        }
        if started < MAX_ATTEMPTS {
            let (tx, host, path) = (tx.clone(), host.to_owned(), path.to_owned());
            // A thread per attempt: it ends by the deadline at the latest,
            // and the process exits after the check anyway.
            std::thread::spawn(move || {
                let answer = match TcpStream::connect_timeout(&addr, left) {
                    Ok(s) => exchange(s, &host, &path, deadline, timeout)
                        .map_err(|why| (false, Failed { connecting: false, why })),
                    Err(e) => Err((
                        e.kind() == std::io::ErrorKind::ConnectionRefused,
                        Failed { connecting: true, why: format!("connect {addr}: {e}") },
                    )),
                };
                let _ = tx.send(answer);
            });
            started += 1;
        }
        let wait = if started < MAX_ATTEMPTS { ATTEMPT_EVERY.min(left) } else { left };
        match rx.recv_timeout(wait) {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err((true, refused))) => return Err(refused),
            Ok(Err((false, failed))) => {
                ended += 1;
                last = failed;
                if ended == MAX_ATTEMPTS {
                    return Err(last);
                }
            }
            Err(_) => {}
        }
    }
}

fn exchange(
    mut s: TcpStream,
    host: &str,
    path: &str,
    deadline: Instant,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let timed_out = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => format!("timeout after {timeout:?}"),
        _ => e.to_string(),
    };
    let left = || {
        let d = deadline.saturating_duration_since(Instant::now());
        if d.is_zero() { Err(format!("timeout after {timeout:?}")) } else { Ok(d) }
    };
    s.set_write_timeout(Some(left()?)).map_err(|e| e.to_string())?;
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ucp-lb-healthcheck\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(timed_out)?;
    let mut reply = Vec::with_capacity(512);
    let mut buf = [0u8; 4096];
    loop {
        s.set_read_timeout(Some(left()?)).map_err(|e| e.to_string())?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                reply.extend_from_slice(&buf[..n]);
                if reply.len() >= MAX_REPLY || complete(&reply) {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(timed_out(e)),
        }
    }
    parse(&reply)
}

/// True once the head and a Content-Length body are in (the admin server
/// always sends a length; without one the reply ends at close).
fn complete(reply: &[u8]) -> bool {
    let Some(end) = find(reply, b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&reply[..end]);
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .is_some_and(|len| reply.len() >= end + 4 + len)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse(reply: &[u8]) -> Result<(u16, String), String> {
    if reply.is_empty() {
        return Err("closed without an answer".into());
    }
    let line_end = find(reply, b"\r\n").unwrap_or(reply.len());
    let line = String::from_utf8_lossy(&reply[..line_end]);
    let mut parts = line.split_whitespace();
    let status = match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code.parse::<u16>().ok(),
        _ => None,
    };
    let Some(status) = status else {
        return Err(format!("not an HTTP answer: {:?}", line.chars().take(60).collect::<String>()));
    };
    let body =
        find(reply, b"\r\n\r\n").map(|i| String::from_utf8_lossy(&reply[i + 4..]).into_owned()).unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_body() {
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n").unwrap(), (200, "ok\n".into()));
        assert_eq!(parse(b"HTTP/1.1 503 Service Unavailable\r\n\r\nshutting down").unwrap().0, 503);
        assert!(parse(b"SSH-2.0-OpenSSH\r\n").unwrap_err().contains("not an HTTP answer"));
        assert!(parse(b"").unwrap_err().contains("closed"));
    }

    #[test]
    fn wildcard_listen_is_asked_on_loopback() {
        assert_eq!(local_addr("0.0.0.0:9900".parse().unwrap()), "127.0.0.1:9900".parse().unwrap());
        assert_eq!(local_addr("[::]:9900".parse().unwrap()), "[::1]:9900".parse().unwrap());
        assert_eq!(local_addr("10.0.0.5:9900".parse().unwrap()), "10.0.0.5:9900".parse().unwrap());
    }

    #[test]
    fn a_refusal_ends_the_attempts_at_once() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let started = Instant::now();
        let err = get(&format!("http://{addr}/healthz"), Duration::from_secs(10)).unwrap_err();
        assert!(err.contains("refused"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5), "not waited out: {err}");
    }

    #[test]
    fn rejects_other_schemes() {
        assert!(get("https://127.0.0.1:9900/healthz", Duration::from_secs(1)).is_err());
    }
}
