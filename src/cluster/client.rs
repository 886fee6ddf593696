//! Reading the swarm: the client bundle into a TLS config (verifying the
//! API against the bundle's ca.pem, presenting its cert.pem and key.pem),
//! and one refresh: each endpoint in turn, `GET /version` for the API
//! version the server speaks, then `GET /v1.NN/nodes`, under one deadline
//! per endpoint and with the answer's size bounded.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Bytes;
use hyper::header::{HOST, USER_AGENT};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::timer::timeout_at;
use tokio_rustls::TlsConnector;

use super::nodes::{self, Node, Skipped};
use crate::config::HostPort;
use crate::health::probe::drive;

/// The time one endpoint has for connect, handshake and both answers.
pub const ENDPOINT_TIMEOUT: Duration = Duration::from_secs(5);
/// The node list is read up to this size (500 nodes of a real UCP are
/// about 2 MiB); past it the answer is refused.
pub const NODES_MAX: usize = 16 << 20;
/// `/version` is read up to this size.
const VERSION_MAX: usize = 64 << 10;

/// Why a refresh failed: a metric label, from a fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// No TCP connection (refused, unreachable, no such name).
    Connect,
    Timeout,
    /// The TLS handshake failed, or the API refused the bundle.
    Tls,
    /// An HTTP status other than 200 (a swarm without a leader says 500).
    Status,
    /// An answer that is not a node list, or one with a node that makes
    /// no sense.
    Invalid,
    /// An answer past [`NODES_MAX`].
    TooLarge,
    /// No bundle could be read.
    Bundle,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Connect => "connect",
            Reason::Timeout => "timeout",
            Reason::Tls => "tls",
            Reason::Status => "status",
            Reason::Invalid => "invalid",
            Reason::TooLarge => "too_large",
            Reason::Bundle => "bundle",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: Reason,
    pub message: String,
}

fn fail(reason: Reason, message: impl Into<String>) -> Failure {
    Failure { reason, message: message.into() }
}

/// Reads the bundle in `dir` (ca.pem, cert.pem, key.pem) into a client
/// config; an error names the file. Blocking: call it off the runtime.
/// The key is trusted like the admin token (owner only, `files.rs`).
pub fn read_bundle(dir: &Path) -> Result<Arc<ClientConfig>, String> {
    use crate::files::{CA, KEY, read};
    let file = |name: &str| dir.join(name);
    let (ca_path, cert_path, key_path) = (file("ca.pem"), file("cert.pem"), file("key.pem"));
    let show = |p: &Path| p.display().to_string();
    let ca = read(&ca_path, &show(&ca_path), CA)?;
    let cert = read(&cert_path, &show(&cert_path), CA)?;
    let key = read(&key_path, &show(&key_path), KEY)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        let c = c.map_err(|e| format!("{}: not a PEM certificate: {e}", show(&ca_path)))?;
        roots.add(c).map_err(|e| format!("{}: {e}", show(&ca_path)))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no certificate in it", show(&ca_path)));
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate: {e}", show(&cert_path)))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", show(&cert_path)));
    }
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
        .map_err(|e| format!("{}: not a PEM private key: {e}", show(&key_path)))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                format!("{} does not match {}: the key is not the certificate's", show(&key_path), show(&cert_path))
            }
            e => format!("{}: {e}", show(&key_path)),
        })?;
    Ok(Arc::new(cfg))
}

/// A node list read, and the nodes left out of it (no address).
pub type Listed = (Vec<Node>, Vec<Skipped>);

/// One refresh: each endpoint of `api` in turn until one answers a valid
/// node list. Returns the endpoint that did and its nodes, or the last
/// endpoint's failure (the message names every endpoint tried).
pub async fn fetch(api: &[HostPort], tls: &Arc<ClientConfig>) -> Result<(String, Listed), Failure> {
    let mut errors = Vec::new();
    let mut last = fail(Reason::Connect, "no endpoint");
    for hp in api {
        match fetch_one(hp, tls, Instant::now() + ENDPOINT_TIMEOUT, Ask::Nodes).await {
            Ok(nodes) => return Ok((hp.to_string(), nodes)),
            Err(f) => {
                errors.push(format!("{hp}: {}", f.message));
                last = f;
            }
        }
    }
    last.message = errors.join("; ");
    Err(last)
}

fn timed_out(phase: &str) -> Failure {
    fail(Reason::Timeout, format!("timeout after {}s ({phase})", ENDPOINT_TIMEOUT.as_secs()))
}

/// Follows the node events of the endpoint `hp` (`GET /events` filtered on
/// nodes), calling `on_event` for each piece of the stream (a refresh is
/// asked for; the events themselves are not read, so nothing piles up).
/// Returns why the stream ended: connect, handshake and the answer's head
/// are bounded by [`ENDPOINT_TIMEOUT`], the stream itself is not (TCP
/// keepalive finds a dead peer).
pub async fn watch_events(hp: &HostPort, tls: &Arc<ClientConfig>, on_event: &(dyn Fn() + Sync)) -> Failure {
    match fetch_one(hp, tls, Instant::now() + ENDPOINT_TIMEOUT, Ask::Events(on_event)).await {
        Ok(_) => fail(Reason::Connect, "the event stream ended"),
        Err(f) => f,
    }
}

/// What a session asks after `/version`.
enum Ask<'a> {
    Nodes,
    Events(&'a (dyn Fn() + Sync)),
}

/// The event filter `{"type":["node"]}`, URL-encoded.
const NODE_EVENTS: &str = "filters=%7B%22type%22%3A%5B%22node%22%5D%7D";

/// A TCP connection to `hp` and the TLS handshake over it, presenting the
/// bundle's certificate; `long`: a stream that may stay quiet for hours
/// (TCP keepalive finds a dead peer).
async fn connect(
    hp: &HostPort,
    tls: &Arc<ClientConfig>,
    deadline: Instant,
    long: bool,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Failure> {
    let tcp = match timeout_at(deadline, TcpStream::connect((hp.host.as_str(), hp.port))).await {
        Err(_) => return Err(timed_out("connect")),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            return Err(fail(Reason::Connect, "connect refused"));
        }
        Ok(Err(e)) => return Err(fail(Reason::Connect, format!("connect: {e}"))),
        Ok(Ok(s)) => s,
    };
    let _ = tcp.set_nodelay(true);
    if long {
        let ka = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60)).with_interval(Duration::from_secs(10));
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&ka);
    }
    let name = ServerName::try_from(hp.host.clone()).map_err(|e| fail(Reason::Tls, format!("server name: {e}")))?;
    match timeout_at(deadline, TlsConnector::from(tls.clone()).connect(name, tcp)).await {
        Err(_) => Err(timed_out("tls handshake")),
        Ok(Err(e)) => Err(fail(Reason::Tls, format!("TLS: {}", crate::health::tls::describe(&e)))),
        Ok(Ok(s)) => Ok(s),
    }
}

async fn fetch_one(hp: &HostPort, tls: &Arc<ClientConfig>, deadline: Instant, ask: Ask<'_>) -> Result<Listed, Failure> {
    let stream = connect(hp, tls, deadline, matches!(ask, Ask::Events(_))).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| fail(Reason::Invalid, format!("HTTP: {e}")))?;
    let mut conn = std::pin::pin!(conn);
    let mut done = false;
    let host = hp.to_string();
    let mut get = async |path: &str, max: usize| -> Result<Vec<u8>, Failure> {
        let req = Request::get(path)
            .header(HOST, host.as_str())
            .header(USER_AGENT, concat!("ucp-lb/", env!("CARGO_PKG_VERSION")))
            .body(Empty::new())
            .map_err(|e| fail(Reason::Invalid, format!("request: {e}")))?;
        let resp = match timeout_at(deadline, drive(conn.as_mut(), &mut done, sender.send_request(req))).await {
            Err(_) => return Err(timed_out(path)),
            Ok(Err(e)) => return Err(http_error(&e)),
            Ok(Ok(r)) => r,
        };
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut bytes = Vec::new();
        loop {
            match timeout_at(deadline, drive(conn.as_mut(), &mut done, body.frame())).await {
                Err(_) => return Err(timed_out(path)),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(body_error(path, &e)),
                Ok(Some(Ok(frame))) => {
                    if let Some(d) = frame.data_ref() {
                        if bytes.len() + d.len() > max {
                            return Err(fail(
                                Reason::TooLarge,
                                format!("{path}: answer larger than {} KiB", max >> 10),
                            ));
                        }
                        bytes.extend_from_slice(d);
                    }
                }
            }
        }
        if status != 200 {
            let text: String =
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).chars().filter(|c| !c.is_control()).collect();
            return Err(fail(Reason::Status, format!("{path}: status {status} {text}")));
        }
        Ok(bytes)
    };
    let version = get("/version", VERSION_MAX).await?;
    let v = api_version(&version).map_err(|m| fail(Reason::Invalid, format!("/version: {m}")))?;
    let on_event = match ask {
        Ask::Nodes => {
            let body = get(&format!("/v{v}/nodes"), NODES_MAX).await?;
            return nodes::parse(&body).map_err(|m| fail(Reason::Invalid, m));
        }
        Ask::Events(f) => f,
    };
    let req = Request::get(format!("/v{v}/events?{NODE_EVENTS}"))
        .header(HOST, host.as_str())
        .header(USER_AGENT, concat!("ucp-lb/", env!("CARGO_PKG_VERSION")))
        .body(Empty::new())
        .map_err(|e| fail(Reason::Invalid, format!("request: {e}")))?;
    let resp = match timeout_at(deadline, drive(conn.as_mut(), &mut done, sender.send_request(req))).await {
        Err(_) => return Err(timed_out("/events")),
        Ok(Err(e)) => return Err(http_error(&e)),
        Ok(Ok(r)) => r,
    };
    if resp.status() != 200 {
        return Err(fail(Reason::Status, format!("/events: status {}", resp.status().as_u16())));
    }
    let mut body = resp.into_body();
    loop {
        match drive(conn.as_mut(), &mut done, body.frame()).await {
            None => return Ok((Vec::new(), Vec::new())),
            Some(Err(e)) => return Err(http_error(&e)),
            Some(Ok(frame)) => {
                if frame.data_ref().is_some_and(|d| !d.is_empty()) {
                    on_event();
                }
            }
        }
    }
}

/// `ApiVersion` of a `/version` answer: "1.41".
fn api_version(body: &[u8]) -> Result<String, String> {
    #[derive(serde::Deserialize)]
    struct V {
        #[serde(rename = "ApiVersion")]
        api_version: String,
    }
    let v: V = serde_json::from_slice(body).map_err(|e| format!("no ApiVersion: {e}"))?;
    let ok = v.api_version.split_once('.').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && a.len() < 4
            && b.len() < 4
            && (a.to_owned() + b).bytes().all(|c| c.is_ascii_digit())
    });
    if ok { Ok(v.api_version) } else { Err(format!("unexpected ApiVersion {:?}", v.api_version)) }
}

/// An answer whose body ends before its Content-Length (or its last
/// chunk) is an invalid answer, not a failed connection: the API (or a
/// proxy before it) answered, and what it sent is not a whole node list.
fn body_error(path: &str, e: &hyper::Error) -> Failure {
    let f = http_error(e);
    if f.reason != Reason::Connect {
        return f;
    }
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if s.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::UnexpectedEof) {
            return fail(Reason::Invalid, format!("{path}: answer cut short ({e})"));
        }
        src = s.source();
    }
    if e.is_incomplete_message() {
        return fail(Reason::Invalid, format!("{path}: answer cut short ({e})"));
    }
    fail(Reason::Connect, format!("{path}: {}", f.message))
}

/// A refusal of the bundle shows as an alert on the first read after the
/// handshake (TLS 1.3 sends the client certificate last).
fn http_error(e: &hyper::Error) -> Failure {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<io::Error>()
            && io.get_ref().is_some_and(|i| i.is::<rustls::Error>())
        {
            let said = crate::health::tls::describe(io);
            return fail(Reason::Tls, format!("TLS: {said} (is the bundle's certificate one the API accepts?)"));
        }
        src = s.source();
    }
    if e.is_parse() || e.is_parse_status() {
        fail(Reason::Invalid, format!("not an HTTP response ({e})"))
    } else {
        fail(Reason::Connect, format!("HTTP: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_version_is_read_strictly() {
        assert_eq!(api_version(br#"{"ApiVersion":"1.41","Version":"20.10"}"#).unwrap(), "1.41");
        assert!(api_version(br#"{"ApiVersion":"1.41/../x"}"#).is_err());
        assert!(api_version(b"nope").is_err());
    }
}
