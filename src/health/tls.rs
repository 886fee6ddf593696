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
//!
//! With `client_cert` and `client_key` (or a bundle's), a probe presents
//! that certificate: UCP answers `/_ping` to its admin with what is wrong.
//! The files are read with the config (off the runtime, bounded, the key
//! owner-only as the token file is) and checked to belong together.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WantsClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ConfigBuilder, DigitallySignedStruct, SignatureScheme};

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

/// A client certificate chain and its private key, read and checked to
/// belong together.
pub struct Identity {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// CRC-32 of both files' text: a reload that finds them changed
    /// (a certificate rotated) hands probes the new one.
    crc: u32,
}

/// Why a client certificate cannot be used, by the file at fault.
#[derive(Debug, PartialEq, Eq)]
pub enum IdentityError {
    Cert(String),
    Key(String),
}

/// Reads the PEM certificate chain `cert` and the PEM private key `key`
/// (PKCS#8, PKCS#1 or SEC1, as `openssl` and UCP bundles write them).
pub fn identity(cert: &Path, key: &Path) -> Result<Identity, IdentityError> {
    let (cp, kp) = (cert.display(), key.display());
    let cert_text =
        crate::files::read(cert, &format!("client certificate {cp}"), crate::files::CA).map_err(IdentityError::Cert)?;
    let certs = CertificateDer::pem_slice_iter(cert_text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::Cert(format!("{cp}: not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(IdentityError::Cert(format!("no certificate in {cp} (a PEM \"BEGIN CERTIFICATE\" block)")));
    }
    let key_text =
        crate::files::read(key, &format!("client key {kp}"), crate::files::KEY).map_err(IdentityError::Key)?;
    let der = PrivateKeyDer::from_pem_slice(key_text.as_bytes())
        .map_err(|_| IdentityError::Key(format!("no private key in {kp} (a PEM \"BEGIN ... PRIVATE KEY\" block)")))?;
    match rustls::sign::CertifiedKey::from_der(certs.clone(), der.clone_key(), &probe_provider()) {
        Ok(_) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(IdentityError::Key(format!(
                "{kp} does not match {cp}: the key is not the certificate's (take both from the same bundle)"
            )));
        }
        Err(e) => return Err(IdentityError::Key(format!("{kp}: cannot use this key: {e}"))),
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(cert_text.as_bytes());
    crc.update(key_text.as_bytes());
    Ok(Identity { certs, key: der, crc: crc.finalize() })
}

/// The probe config that verifies the server against `ca_file` (`None`:
/// any certificate, the default) and presents `identity`, if any; with a
/// CRC-32 of the files it read, so a reload can tell a rotated one.
pub fn client_config(
    ca_file: Option<&Path>,
    identity: Option<&Identity>,
) -> Result<(Arc<ClientConfig>, u32), TlsError> {
    let p = probe_provider();
    let builder = ClientConfig::builder_with_provider(p.clone()).with_safe_default_protocol_versions()?;
    let mut crc = crc32fast::Hasher::new();
    let builder = match ca_file {
        None => builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyCertificate(p))),
        Some(ca_file) => {
            let path = ca_file.display().to_string();
            let text =
                crate::files::read(ca_file, &format!("CA file {path}"), crate::files::CA).map_err(TlsError::File)?;
            crc.update(text.as_bytes());
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(text.as_bytes()) {
                let cert = cert.map_err(|e| TlsError::ReadCa { path: path.clone(), error: e.to_string() })?;
                roots.add(cert)?;
            }
            if roots.is_empty() {
                return Err(TlsError::EmptyCa(path));
            }
            builder.with_root_certificates(roots)
        }
    };
    if let Some(id) = identity {
        crc.update(&id.crc.to_le_bytes());
    }
    Ok((Arc::new(presenting(builder, identity)?), crc.finalize()))
}

fn presenting(
    b: ConfigBuilder<ClientConfig, WantsClientCert>,
    identity: Option<&Identity>,
) -> Result<ClientConfig, rustls::Error> {
    match identity {
        Some(id) => b.with_client_auth_cert(id.certs.clone(), id.key.clone_key()),
        None => Ok(b.with_no_client_auth()),
    }
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
        rustls::Error::AlertReceived(a) => client_auth_alert(*a).unwrap_or_else(|| format!("alert from the server: {a:?}")),
        other => other.to_string(),
    }
}

/// A certificate alert from the server is about ours: the server wants
/// one, or does not take the one presented. (TLS 1.3 sends it after our
/// side of the handshake is done, so it surfaces with the first read.)
fn client_auth_alert(a: rustls::AlertDescription) -> Option<String> {
    use rustls::AlertDescription as A;
    match a {
        A::CertificateRequired => Some(
            "the server requires a client certificate (alert certificate_required): set client_cert and client_key, \
             or client_bundle"
                .into(),
        ),
        A::BadCertificate
        | A::UnsupportedCertificate
        | A::CertificateRevoked
        | A::CertificateExpired
        | A::CertificateUnknown
        | A::UnknownCA
        | A::AccessDenied => Some(format!("the server refused the client certificate (alert {a:?})")),
        _ => None,
    }
}

/// The TLS error within `e`'s chain of causes, in an operator's words.
pub fn describe_within(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && io.get_ref().is_some_and(|i| i.is::<rustls::Error>())
        {
            return Some(describe(io));
        }
        cause = c.source();
    }
    None
}
