//! One probe: a fresh connection, the pool's PROXY header when it sends
//! one, TLS when asked, `GET path HTTP/1.1` with `Host`, at most 64 KiB of
//! body, then the verdict and, on failure, why. A status that fails the
//! check reads the start of the body (512 bytes at most, within the same
//! deadline) into the reason: UCP tells its admin there which component is
//! wrong (`status 500: "etcd: unhealthy"`).
//!
//! One deadline covers the whole probe; each phase runs under it, so a
//! timeout names its phase ("timeout after 1s (tls handshake)"). The HTTP
//! connection is driven alongside the request, not in a detached task, so
//! nothing outlives the probe. Connections are never reused.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Bytes;
use hyper::header::{CONNECTION, HOST, USER_AGENT};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::timer::timeout_at;
use tokio_rustls::TlsConnector;

use crate::config::{CheckKind, StatusMatch, format_duration};
use crate::health::tls;

/// Everything one probe needs, resolved.
#[derive(Debug)]
pub struct ProbeTarget {
    pub addr: SocketAddr,
    pub kind: CheckKind,
    pub path: String,
    /// The Host header.
    pub host: String,
    pub server_name: ServerName<'static>,
    /// Replaced by a reload that finds the CA or client certificate files
    /// changed; each probe takes the one in force as it starts.
    pub tls: Option<Arc<ArcSwap<ClientConfig>>>,
    pub expect_status: Vec<StatusMatch>,
    pub expect_body: Option<String>,
    pub expect_json: Vec<(String, serde_json::Value)>,
    pub timeout: Duration,
    pub interval: Duration,
    pub rise: u32,
    pub fall: u32,
    /// The PROXY header written first (before a TLS hello), when the pool
    /// sends one to its servers.
    pub proxy_protocol: Option<crate::proxy_send::Version>,
    /// For logs: `https://10.0.0.1:443/_ping`.
    pub label: String,
}

/// Body bytes read at most; the rest is never read.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Body bytes of a failing status read at most, for its reason.
pub const REASON_BODY: usize = 512;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// `None`: healthy. Otherwise why not, in an operator's words.
    pub failure: Option<String>,
    /// The server certificate's notAfter, when TLS got that far.
    pub cert_not_after: Option<i64>,
}

struct Fail(String);

pub async fn probe(t: &ProbeTarget) -> Outcome {
    let deadline = Instant::now() + t.timeout;
    let mut out = Outcome::default();
    if let Err(Fail(why)) = run(t, deadline, &mut out).await {
        out.failure = Some(why);
    }
    out
}

fn timed_out(t: &ProbeTarget, phase: &str) -> Fail {
    Fail(format!("timeout after {} ({phase})", format_duration(t.timeout)))
}

async fn run(t: &ProbeTarget, deadline: Instant, out: &mut Outcome) -> Result<(), Fail> {
    let mut tcp = match timeout_at(deadline, TcpStream::connect(t.addr)).await {
        Err(_) => return Err(timed_out(t, "connect")),
        Ok(Err(e)) => return Err(Fail(connect_error(&e))),
        Ok(Ok(s)) => s,
    };
    if t.kind != CheckKind::Tcp {
        let _ = tcp.set_nodelay(true);
    }
    if let Some(v) = t.proxy_protocol {
        // A server that requires the header closes a connection without
        // one, so its check must send it too: `LOCAL` (v2) or `UNKNOWN`
        // (v1) says "no client, use the connection's own addresses".
        match timeout_at(deadline, tokio::io::AsyncWriteExt::write_all(&mut tcp, crate::proxy_send::local(v))).await {
            Err(_) => return Err(timed_out(t, "PROXY header")),
            Ok(Err(e)) => return Err(Fail(format!("PROXY header: {e}"))),
            Ok(Ok(())) => {}
        }
    }
    match (t.kind, &t.tls) {
        (CheckKind::Tcp, _) => Ok(()),
        (CheckKind::Https, Some(cfg)) => {
            let connector = TlsConnector::from(cfg.load_full());
            let tls = match timeout_at(deadline, connector.connect(t.server_name.clone(), tcp)).await {
                Err(_) => return Err(timed_out(t, "tls handshake")),
                Ok(Err(e)) => return Err(Fail(format!("TLS: {}", tls::describe(&e)))),
                Ok(Ok(s)) => s,
            };
            out.cert_not_after = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(tls::not_after);
            http(t, tls, deadline).await
        }
        _ => http(t, tcp, deadline).await,
    }
}

fn connect_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connect refused".into(),
        io::ErrorKind::ConnectionReset => "connect reset".into(),
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => "connect: unreachable".into(),
        _ => format!("connect: {e}"),
    }
}

async fn http<IO>(t: &ProbeTarget, io: IO, deadline: Instant) -> Result<(), Fail>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
        .await
        .map_err(|e| Fail(format!("HTTP: {e}")))?;
    let mut conn = std::pin::pin!(conn);
    let mut conn_done = false;
    let req = Request::get(t.path.as_str())
        .header(HOST, t.host.as_str())
        .header(USER_AGENT, concat!("ucp-lb/", env!("CARGO_PKG_VERSION")))
        .header(CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| Fail(format!("cannot build the request: {e}")))?;
    let resp = match timeout_at(deadline, drive(conn.as_mut(), &mut conn_done, sender.send_request(req))).await {
        Err(_) => return Err(timed_out(t, "response")),
        Ok(Err(e)) => return Err(Fail(http_error(&e))),
        Ok(Ok(r)) => r,
    };
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let status_ok = t.expect_status.iter().any(|m| m.matches(status));
    // Read the body only as far as an expectation needs, and never past
    // the limit; a passing status with no expectation reads none of it.
    let need_body = t.expect_body.is_some() || !t.expect_json.is_empty();
    let limit = match (status_ok, need_body) {
        (true, true) => BODY_LIMIT,
        (true, false) => return Ok(()),
        (false, _) => REASON_BODY,
    };
    let mut bytes: Vec<u8> = Vec::new();
    let mut whole = false;
    while bytes.len() < limit {
        match timeout_at(deadline, drive(conn.as_mut(), &mut conn_done, body.frame())).await {
            // A failing status is the reason whatever the body does: its
            // text is what arrived in time.
            Err(_) if !status_ok => break,
            Err(_) => return Err(timed_out(t, "body")),
            Ok(None) => {
                whole = true;
                break;
            }
            Ok(Some(Err(_))) if !status_ok => break,
            Ok(Some(Err(e))) => return Err(Fail(format!("body: {}", http_error(&e)))),
            Ok(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    let room = limit - bytes.len();
                    bytes.extend_from_slice(&d[..d.len().min(room)]);
                }
            }
        }
    }
    if !status_ok {
        return Err(Fail(status_reason(status, &bytes, whole)));
    }
    check_body(t, &bytes)
}

/// `status 500`, with the body's text when it has any: trimmed, quoted,
/// on one line (line breaks and anything unprintable escaped), an
/// ellipsis where it was cut.
fn status_reason(status: u16, body: &[u8], whole: bool) -> String {
    // A character cut at the limit is dropped, not shown as garbage.
    let text = match std::str::from_utf8(body) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(e) if !whole && e.error_len().is_none() => String::from_utf8_lossy(&body[..e.valid_up_to()]),
        Err(_) => String::from_utf8_lossy(body),
    };
    let text = text.trim();
    if text.is_empty() {
        return format!("status {status}");
    }
    let cut = if whole { "" } else { "…" };
    format!("status {status}: {text:?}{cut}")
}

/// Polls `fut` to the end while also driving the connection, which stops
/// being polled once it has finished.
pub(crate) async fn drive<C, F>(mut conn: Pin<&mut C>, done: &mut bool, fut: F) -> F::Output
where
    C: Future,
    F: Future,
{
    let mut fut = std::pin::pin!(fut);
    loop {
        tokio::select! {
            biased;
            r = &mut fut => return r,
            _ = conn.as_mut(), if !*done => *done = true,
        }
    }
}

fn http_error(e: &hyper::Error) -> String {
    // TLS 1.3 servers refuse a client certificate (or its absence) after
    // the client's side of the handshake: the alert comes with the first
    // read, here.
    if let Some(why) = tls::describe_within(e) {
        format!("TLS: {why}")
    } else if e.is_parse() || e.is_parse_status() {
        format!("not an HTTP response ({e})")
    } else if e.is_incomplete_message() {
        "connection closed before the response was complete".into()
    } else {
        format!("HTTP: {e}")
    }
}

fn check_body(t: &ProbeTarget, body: &[u8]) -> Result<(), Fail> {
    if let Some(want) = &t.expect_body
        && !String::from_utf8_lossy(body).contains(want.as_str())
    {
        return Err(Fail(format!("body: no \"{want}\" in it")));
    }
    if t.expect_json.is_empty() {
        return Ok(());
    }
    let json: serde_json::Value = serde_json::from_slice(body).map_err(|_| Fail("body: not JSON".into()))?;
    for (field, want) in &t.expect_json {
        match json.get(field) {
            None => return Err(Fail(format!("body: no field {field}"))),
            Some(got) if !same(got, want) => {
                let detail = match json.get("Error").and_then(|e| e.as_str()).filter(|e| !e.is_empty()) {
                    Some(err) => format!(" (Error: {err})"),
                    None => String::new(),
                };
                return Err(Fail(format!("body: {field} is {got}{detail}")));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// JSON equality that takes 1 and 1.0 as the same number.
fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_reason_quotes_the_body_on_one_line_and_drops_a_character_cut_short() {
        assert_eq!(status_reason(500, b"", true), "status 500");
        assert_eq!(status_reason(500, b" \r\n", true), "status 500");
        assert_eq!(status_reason(500, b"etcd: unhealthy\n", true), r#"status 500: "etcd: unhealthy""#);
        assert_eq!(status_reason(503, b"a \"b\"\nc", true), r#"status 503: "a \"b\"\nc""#);
        // "é" is two bytes: cut after the first, it is left out.
        assert_eq!(status_reason(500, b"caf\xc3", false), r#"status 500: "caf"…"#);
        assert_eq!(status_reason(500, b"caf\xff!", true), "status 500: \"caf\u{fffd}!\"");
    }
}
