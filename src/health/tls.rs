//! TLS client configurations for HTTPS probes, and what a probe reads off
//! the server's certificate.
//!
//! By default a probe does not verify the server's certificate: UCP managers
//! and DTR replicas usually present certificates from the cluster's own CA
//! or self-signed ones, and Docker's own HAProxy example checks them with
//! `verify none`. The probe asks "is UCP answering?", not "is this the right
//! server?"; clients still verify for themselves, since traffic passes
//! through untouched. The handshake's signatures are still checked, so a
//! probe does speak TLS properly. With `ca_file`, the chain and name are
//! verified against that CA, and a mismatch fails the check.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    File(String),
    #[error("cannot read CA file {path}: {error}")]
    ReadCa { path: String, error: String },
    #[error("no certificate in CA file {0}")]
    EmptyCa(String),
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

/// Accepts any certificate chain; still checks the handshake signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The provider probes use: ring, with SHA-256 suites first. A probe needs
/// no more than AES-128, and SHA-384's key schedule was a tenth of the CPU
/// of 1,000 probes a second.
fn probe_provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.sort_by_key(|s| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 1,
        _ => 2,
    });
    Arc::new(p)
}

/// The default probe config: any certificate.
pub fn unverified() -> Result<Arc<ClientConfig>, TlsError> {
    let p = probe_provider();
    let cfg = ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(p)))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// A config that trusts only the certificates in the PEM file `ca_file`.
pub fn verified(ca_file: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let path = ca_file.display().to_string();
    let mut roots = rustls::RootCertStore::empty();
    let text = crate::files::read(ca_file, &format!("CA file {path}"), crate::files::CA).map_err(TlsError::File)?;
    let certs = CertificateDer::pem_slice_iter(text.as_bytes());
    for cert in certs {
        let cert = cert.map_err(|e| TlsError::ReadCa { path: path.clone(), error: e.to_string() })?;
        roots.add(cert)?;
    }
    if roots.is_empty() {
        return Err(TlsError::EmptyCa(path));
    }
    let cfg = ClientConfig::builder_with_provider(probe_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The certificate's notAfter, in seconds since the Unix epoch.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

/// A TLS error in words an operator reads in a status page.
pub fn describe(e: &std::io::Error) -> String {
    use rustls::CertificateError as C;
    let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return e.to_string();
    };
    match inner {
        rustls::Error::InvalidCertificate(c) => match c {
            C::Expired | C::ExpiredContext { .. } => "certificate expired".into(),
            C::NotValidYet | C::NotValidYetContext { .. } => "certificate not valid yet".into(),
            C::UnknownIssuer => "certificate signed by an unknown authority".into(),
            C::NotValidForName | C::NotValidForNameContext { .. } => "certificate not valid for this name".into(),
            C::BadSignature => "bad certificate signature".into(),
            // webpki's reasons come wrapped, by name only (rustls-webpki is
            // not a dependency of ours to match its enum).
            C::Other(o) if format!("{o:?}").contains("CaUsedAsEndEntity") => {
                "the server's certificate is a CA certificate, not a server's: give the server a certificate of its own \
                 signed by the CA in ca_file (a self-signed certificate cannot be both)"
                    .into()
            }
            other => format!("invalid certificate: {other:?}"),
        },
        rustls::Error::AlertReceived(a) => format!("alert from the server: {a:?}"),
        other => other.to_string(),
    }
}
