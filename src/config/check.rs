//! `[pool.NAME.health]`, validated: what an active check asks, what
//! passes, and whom it speaks as (a client certificate). Checked by
//! `validate/health.rs`; the probes are `health/`'s.

use std::path::PathBuf;
use std::time::Duration;

use super::Pos;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// `GET path` over TLS (the certificate is not verified unless `ca_file`).
    Https,
    /// `GET path` over plain TCP.
    Http,
    /// A TCP connect only.
    Tcp,
}

/// A status the check accepts: `200`, or a class such as `"2xx"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusMatch {
    Code(u16),
    Class(u16),
}

impl StatusMatch {
    pub fn matches(self, status: u16) -> bool {
        match self {
            StatusMatch::Code(c) => c == status,
            StatusMatch::Class(c) => status / 100 == c,
        }
    }
}

/// `[pool.NAME.health]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub kind: CheckKind,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub expect_status: Vec<StatusMatch>,
    /// The body must contain this.
    pub expect_body: Option<String>,
    /// The body must be JSON with these top-level fields equal to these values.
    pub expect_json: Vec<(String, serde_json::Value)>,
    pub sni: Option<String>,
    pub host: Option<String>,
    pub ca_file: Option<PathBuf>,
    /// Probe this port instead of the server's own.
    pub port: Option<u16>,
    /// Where `ca_file` is set, for errors reading it.
    pub ca_file_pos: Pos,
    /// The client certificate probes present; `None`: none.
    pub client_cert: Option<ClientCert>,
    /// The PROXY header each probe writes first (a v2 `LOCAL`, v1's
    /// `PROXY UNKNOWN`): the pool's `send_proxy_protocol`, so a server
    /// that requires one passes its check.
    pub proxy_protocol: Option<crate::proxy_send::Version>,
}

/// `client_cert` and `client_key` (or `client_bundle`'s cert.pem and
/// key.pem): PEM files a probe presents, as the cluster's admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Named by `client_bundle` (else by `client_cert` and `client_key`).
    pub from_bundle: bool,
    /// Where `client_cert` (or `client_bundle`) and `client_key` are set,
    /// for errors reading them.
    pub pos: Pos,
    pub key_pos: Pos,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            kind: CheckKind::Https,
            path: "/_ping".into(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 2,
            expect_status: vec![StatusMatch::Code(200)],
            expect_body: None,
            expect_json: Vec::new(),
            sni: None,
            host: None,
            ca_file: None,
            port: None,
            ca_file_pos: Pos::default(),
            client_cert: None,
            proxy_protocol: None,
        }
    }
}
