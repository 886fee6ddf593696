//! Stand-in UCP managers: real HTTPS servers on loopback, with certificates
//! made at start by a throw-away CA, answering `GET /_ping` (switchable
//! between 200 and 500) and a page that names the manager. As UCP does, a
//! failing `/_ping` says which component is wrong only to a client that
//! presented a certificate (the admin's); a stand-in may require one.
//!
//! `ucp-lb demo` runs three of them; the tests and benches use them too
//! (tests/common includes this file), so both drive the same code. Nothing
//! here is used when ucp-lb serves real traffic, and the library does not
//! have it: rcgen is a dependency of the binary's `cli` feature only.

// The demo uses part of this; tests and benches use the rest.
#![allow(dead_code)]

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The one crypto provider, named explicitly: with more than one compiled in,
/// rustls's implicit default would panic.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A throw-away certificate authority that issues loopback certificates.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert: CertificateDer<'static>,
    /// The CA certificate in PEM, for a `ca_file`.
    pub pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> Result<TestCa, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(TestCa { cert: cert.der().clone(), pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    /// A certificate for `localhost` and 127.0.0.1, and its key.
    pub fn issue(&self, cn: &str) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), rcgen::Error> {
        self.issue_for(cn, &["localhost", "127.0.0.1"])
    }

    /// A certificate for `names` (DNS names, wildcards or IP addresses),
    /// and its key.
    pub fn issue_for(
        &self,
        cn: &str,
        names: &[&str],
    ) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), rcgen::Error> {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.der().clone(), PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))))
    }

    /// A certificate for `names` and its key, both in PEM (a client
    /// bundle's cert.pem and key.pem).
    pub fn issue_pem(&self, cn: &str, names: &[&str]) -> Result<(String, String), rcgen::Error> {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A TLS client that trusts this CA only.
    pub fn connector(&self) -> Result<TlsConnector, rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone())?;
        let cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsConnector::from(Arc::new(cfg)))
    }
}

/// What a stand-in answers on its health endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// UCP: `GET /_ping` answers 200 `OK` or 500.
    Ucp,
    /// DTR: `GET /_ping` and `GET /health` answer 200 with
    /// `{"Healthy": true|false, "Error": "..."}`.
    Dtr,
}

/// A stand-in UCP manager or DTR replica.
pub struct Manager {
    pub name: String,
    pub addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    /// What a failing `/_ping` tells the admin is wrong.
    why: Arc<Mutex<String>>,
    /// TLS connections it has accepted.
    pub connections: Arc<AtomicU64>,
    /// Requests to its health endpoints.
    pub pings: Arc<AtomicU64>,
    /// TLS connections that resumed an earlier session (no certificate
    /// sent, no signature made).
    pub resumed: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Manager {
    pub async fn start(name: &str, bind: SocketAddr, ca: &TestCa) -> io::Result<Manager> {
        Manager::start_as(Flavor::Ucp, name, bind, ca).await
    }

    pub async fn start_as(flavor: Flavor, name: &str, bind: SocketAddr, ca: &TestCa) -> io::Result<Manager> {
        Manager::start_with(flavor, name, bind, ca, None).await
    }

    /// As [`Manager::start_as`]; with `clients`, the TLS handshake requires
    /// a client certificate that CA issued (UCP's admin bundle).
    pub async fn start_with(
        flavor: Flavor,
        name: &str,
        bind: SocketAddr,
        ca: &TestCa,
        clients: Option<&TestCa>,
    ) -> io::Result<Manager> {
        let (cert, key) = ca.issue(name).map_err(io::Error::other)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?;
        let builder = match clients {
            None => builder.with_no_client_auth(),
            Some(c) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(c.cert.clone()).map_err(io::Error::other)?;
                let v = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
                builder.with_client_cert_verifier(v.build().map_err(io::Error::other)?)
            }
        };
        let tls = builder.with_single_cert(vec![cert], key).map_err(io::Error::other)?;
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let healthy = Arc::new(AtomicBool::new(true));
        let why = Arc::new(Mutex::new("stand-in manager switched off".to_owned()));
        let connections = Arc::new(AtomicU64::new(0));
        let pings = Arc::new(AtomicU64::new(0));
        let resumed = Arc::new(AtomicU64::new(0));
        let stand = Stand {
            flavor,
            name: name.to_owned(),
            healthy: healthy.clone(),
            why: why.clone(),
            pings: pings.clone(),
            connections: connections.clone(),
            resumed: resumed.clone(),
        };
        let task = tokio::spawn(serve(listener, acceptor, Arc::new(stand)));
        Ok(Manager { name: name.to_owned(), addr, healthy, why, connections, pings, resumed, task })
    }

    /// Makes `/_ping` answer 200 (true) or 500 (false); TCP and TLS stay up.
    pub fn set_healthy(&self, ok: bool) {
        self.healthy.store(ok, Relaxed);
    }

    /// Makes `/_ping` answer 500 and tell the admin `why` ("etcd:
    /// unhealthy"), after the manager's name, as UCP names the component.
    pub fn set_failing(&self, why: &str) {
        *self.why.lock().unwrap_or_else(|p| p.into_inner()) = why.to_owned();
        self.healthy.store(false, Relaxed);
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Stand {
    flavor: Flavor,
    name: String,
    healthy: Arc<AtomicBool>,
    why: Arc<Mutex<String>>,
    pings: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    resumed: Arc<AtomicU64>,
}

async fn serve(listener: TcpListener, acceptor: TlsAcceptor, stand: Arc<Stand>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let (acceptor, stand) = (acceptor.clone(), stand.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else { return };
            stand.connections.fetch_add(1, Relaxed);
            if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                stand.resumed.fetch_add(1, Relaxed);
            }
            let admin = tls.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
            let svc = service_fn(move |req: Request<Incoming>| {
                let stand = stand.clone();
                async move { Ok::<_, Infallible>(answer(&req, &stand, admin)) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
        });
    }
}

/// The answer to `req`; `admin`: the client presented a certificate.
fn answer(req: &Request<Incoming>, stand: &Stand, admin: bool) -> Response<Full<Bytes>> {
    let name = &stand.name;
    let healthy = stand.healthy.load(Relaxed);
    let path = req.uri().path();
    let health_path = match stand.flavor {
        Flavor::Ucp => path == "/_ping",
        Flavor::Dtr => path == "/_ping" || path == "/health",
    };
    if health_path {
        stand.pings.fetch_add(1, Relaxed);
    }
    let (status, body) = match (stand.flavor, health_path, healthy) {
        (Flavor::Ucp, true, true) => (StatusCode::OK, "OK".to_owned()),
        (Flavor::Ucp, true, false) => {
            let why = stand.why.lock().unwrap_or_else(|p| p.into_inner());
            (StatusCode::INTERNAL_SERVER_ERROR, if admin { format!("{name}: {why}\n") } else { String::new() })
        }
        (Flavor::Dtr, true, true) => (StatusCode::OK, r#"{"Healthy":true,"Error":""}"#.to_owned()),
        (Flavor::Dtr, true, false) => {
            (StatusCode::OK, r#"{"Healthy":false,"Error":"rethinkdb: cannot reach the replica set"}"#.to_owned())
        }
        _ => (StatusCode::OK, format!("<!doctype html><title>{name}</title><h1>Answered by {name}</h1>\n")),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("x-served-by", name.parse().unwrap_or_else(|_| hyper::header::HeaderValue::from_static("?")));
    resp
}

/// `GET path` over HTTPS to `addr`, trusting `connector`'s CA: the status and
/// the `x-served-by` header. A plain HTTP/1.0-style exchange on a fresh
/// connection, so each call is a new client of the load balancer.
pub async fn https_get(connector: &TlsConnector, addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = connector.connect(ServerName::try_from("localhost").map_err(io::Error::other)?, tcp).await?;
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    // A server may close without close_notify; what arrived is still the answer.
    if let Err(e) = tls.read_to_end(&mut buf).await
        && buf.is_empty()
    {
        return Err(e);
    }
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP status line"))?;
    let served_by = text.lines().find_map(|l| l.strip_prefix("x-served-by: ")).unwrap_or("").trim().to_owned();
    Ok((status, served_by))
}
