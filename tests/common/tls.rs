//! TLS servers and clients for routing tests: a backend that answers with
//! its name, the server name it was asked for and whether the client sent
//! a certificate; a rustls client with a client certificate.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::loopback;
use super::standin::{TestCa, provider};

/// A TLS server for `names` that requires a client certificate from `ca`
/// when `mtls`; on every line it answers `NAME sni=... client_cert=...`.
pub async fn tls_backend(name: &'static str, ca: &TestCa, names: &[&str], mtls: bool) -> SocketAddr {
    let (cert, key) = ca.issue_for(name, names).unwrap();
    let builder =
        rustls::ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().unwrap();
    let builder = if mtls {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert.clone()).unwrap();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build().unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let cfg = Arc::new(builder.with_single_cert(vec![cert], key).unwrap());
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let (sni, cert) = {
                    let c = tls.get_ref().1;
                    (c.server_name().unwrap_or("-").to_owned(), c.peer_certificates().is_some_and(|p| !p.is_empty()))
                };
                let mut lines = tokio::io::BufReader::new(tls);
                let mut line = String::new();
                while lines.read_line(&mut line).await.is_ok_and(|n| n > 0) {
                    let answer = format!("{name} sni={sni} client_cert={cert}\n");
                    if lines.get_mut().write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    addr
}

/// A rustls client config trusting `ca`, with a client certificate.
pub fn client_config(ca: &TestCa) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.clone()).unwrap();
    let (cert, key) = ca.issue("client").unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![cert], key)
            .unwrap(),
    )
}

/// One TLS exchange through `lb` naming `sni` (None: by address, no
/// server name sent): the backend's answer.
pub async fn ask(cfg: &Arc<rustls::ClientConfig>, lb: SocketAddr, sni: Option<&str>) -> std::io::Result<String> {
    let name = match sni {
        Some(n) => ServerName::try_from(n.to_owned()).unwrap(),
        None => ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
    };
    let tcp = TcpStream::connect(lb).await?;
    let tls = tokio_rustls::TlsConnector::from(cfg.clone()).connect(name, tcp).await?;
    let mut lines = tokio::io::BufReader::new(tls);
    lines.get_mut().write_all(b"hello\n").await?;
    let mut answer = String::new();
    lines.read_line(&mut answer).await?;
    Ok(answer.trim().to_owned())
}

/// Writes a client bundle in `dir` as UCP hands it out: cert.pem (issued by
/// `ca` for `cn`), key.pem (owner-only) and ca.pem.
pub fn write_bundle(dir: &std::path::Path, ca: &TestCa, cn: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let (cert, key) = ca.issue_pem(cn, &[]).unwrap();
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    super::write_secret(&dir.join("key.pem"), &key);
    std::fs::write(dir.join("ca.pem"), &ca.pem).unwrap();
}
