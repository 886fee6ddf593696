//! A stand-in of the Docker Engine API as UCP serves it to a client
//! bundle: HTTPS on loopback that requires a client certificate signed by
//! the cluster's CA, answering `GET /version` and `GET /v1.41/nodes` (or
//! `/nodes`) in the Engine API's schema, with a node list the caller
//! changes as the swarm would (a node joins, is promoted, drained, goes
//! down, leaves), and faults: 500 (a swarm without a leader), garbage.
//! It also writes a client bundle (ca.pem, cert.pem, key.pem).
//!
//! `ucp-lb demo` and the tests (tests/common includes this file) use it.

#![allow(dead_code)]

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::standin::{TestCa, provider};

/// One node, as the stand-in describes it.
#[derive(Debug, Clone)]
pub struct StandNode {
    pub id: String,
    pub hostname: String,
    /// "manager" or "worker".
    pub role: String,
    /// "active", "pause" or "drain".
    pub availability: String,
    /// "ready", "down", "disconnected" or "unknown".
    pub state: String,
    /// Status.Addr ("0.0.0.0" as real managers often report).
    pub addr: String,
    /// ManagerStatus.Addr, for managers ("10.0.0.1:2377").
    pub manager_addr: Option<String>,
    pub labels: Vec<(String, String)>,
}

impl StandNode {
    pub fn manager(name: &str, ip: &str) -> StandNode {
        StandNode {
            id: format!("id-{name}"),
            hostname: name.into(),
            role: "manager".into(),
            availability: "active".into(),
            state: "ready".into(),
            addr: ip.into(),
            manager_addr: Some(format!("{ip}:2377")),
            labels: Vec::new(),
        }
    }

    pub fn worker(name: &str, ip: &str) -> StandNode {
        StandNode { role: "worker".into(), manager_addr: None, ..StandNode::manager(name, ip) }
    }

    /// The Engine API's JSON of this node.
    pub fn json(&self, leader: bool) -> serde_json::Value {
        let labels: serde_json::Map<String, serde_json::Value> =
            self.labels.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect();
        let mut v = serde_json::json!({
            "ID": self.id,
            "Version": { "Index": 42 },
            "CreatedAt": "2026-12-01T08:00:00.000000000Z",
            "UpdatedAt": "2026-12-07T05:00:00.000000000Z",
            "Spec": { "Name": "", "Labels": labels, "Role": self.role, "Availability": self.availability },
            "Description": {
                "Hostname": self.hostname,
                "Platform": { "Architecture": "x86_64", "OS": "linux" },
                "Resources": { "NanoCPUs": 4000000000u64, "MemoryBytes": 8589934592u64 },
                "Engine": { "EngineVersion": "20.10.13" }
            },
            "Status": { "State": self.state, "Message": "", "Addr": self.addr }
        });
        if let Some(m) = &self.manager_addr
            && self.role == "manager"
        {
            v["ManagerStatus"] = serde_json::json!({ "Leader": leader, "Reachability": "reachable", "Addr": m });
        }
        v
    }
}

/// What `/nodes` answers.
#[derive(Debug, Clone)]
pub enum Answer {
    Nodes(Vec<StandNode>),
    /// 500 with the Engine API's error body (a swarm without a leader).
    NoLeader,
    /// 200 with something that is not a node list.
    Garbage,
    /// 200 with a Content-Length longer than the body sent (a node list
    /// cut short by a proxy, or a connection lost mid-answer).
    Truncated,
}

/// A streamed `/events` answer: a line per event sent to it.
struct Events(tokio::sync::mpsc::UnboundedReceiver<Bytes>);

impl hyper::body::Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

type Watchers = Arc<Mutex<Vec<tokio::sync::mpsc::UnboundedSender<Bytes>>>>;

/// The stand-in API; stops when dropped.
pub struct SwarmApi {
    pub addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    /// Open `/events` streams: each hears of every change of the node list.
    watchers: Watchers,
    /// Requests to `/nodes` answered.
    pub reads: Arc<AtomicU64>,
    /// TLS handshakes refused (no or a wrong client certificate).
    pub refused: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl SwarmApi {
    /// Listens on `bind` with a certificate for localhost and 127.0.0.1 from
    /// `ca`, requiring a client certificate that `ca` signed.
    pub async fn start(bind: SocketAddr, ca: &TestCa, nodes: Vec<StandNode>) -> io::Result<SwarmApi> {
        let ip = bind.ip().to_string();
        let (cert, key) = ca.issue_for("ucp-controller", &["localhost", "127.0.0.1", &ip]).map_err(io::Error::other)?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert.clone()).map_err(io::Error::other)?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(io::Error::other)?;
        let tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![cert], key)
            .map_err(io::Error::other)?;
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let answer = Arc::new(Mutex::new(Answer::Nodes(nodes)));
        let (reads, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let watchers = Watchers::default();
        let state = (answer.clone(), reads.clone(), refused.clone(), watchers.clone());
        let task = tokio::spawn(serve(listener, TlsAcceptor::from(Arc::new(tls)), state));
        Ok(SwarmApi { addr, answer, watchers, reads, refused, task })
    }

    /// Sets what `/nodes` answers; a new node list is an event on every
    /// open `/events` stream.
    pub fn set(&self, answer: Answer) {
        let event = matches!(answer, Answer::Nodes(_));
        *self.answer.lock().unwrap_or_else(|p| p.into_inner()) = answer;
        if event {
            let line = Bytes::from_static(b"{\"Type\":\"node\",\"Action\":\"update\",\"Actor\":{\"ID\":\"x\"}}\n");
            self.watchers.lock().unwrap_or_else(|p| p.into_inner()).retain(|w| w.send(line.clone()).is_ok());
        }
    }

    /// `/events` streams open now.
    pub fn watchers(&self) -> usize {
        let mut w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        w.retain(|w| !w.is_closed());
        w.len()
    }

    pub fn set_nodes(&self, nodes: Vec<StandNode>) {
        self.set(Answer::Nodes(nodes));
    }

    /// Stops listening: connections are refused from now on.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for SwarmApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type State = (Arc<Mutex<Answer>>, Arc<AtomicU64>, Arc<AtomicU64>, Watchers);

async fn serve(listener: TcpListener, acceptor: TlsAcceptor, state: State) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let (acceptor, state) = (acceptor.clone(), state.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(_) => {
                    state.2.fetch_add(1, Relaxed);
                    return;
                }
            };
            let svc = service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(answer(&req, &state)) }
            });
            // A client certificate refused after the handshake (TLS 1.3)
            // ends the connection here.
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
        });
    }
}

type Body = http_body_util::Either<Full<Bytes>, Events>;

fn answer(req: &Request<Incoming>, state: &State) -> Response<Body> {
    let path = req.uri().path();
    if path == "/events" || path == "/v1.41/events" {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        state.3.lock().unwrap_or_else(|p| p.into_inner()).push(tx);
        return Response::new(http_body_util::Either::Right(Events(rx)));
    }
    let (status, body) = if path == "/version" || path == "/v1.41/version" {
        (StatusCode::OK, r#"{"Version":"20.10.13","ApiVersion":"1.41","MinAPIVersion":"1.12","Os":"linux"}"#.to_owned())
    } else if path == "/nodes" || path == "/v1.41/nodes" {
        state.1.fetch_add(1, Relaxed);
        match &*state.0.lock().unwrap_or_else(|p| p.into_inner()) {
            Answer::Nodes(nodes) => {
                let list: Vec<_> = nodes.iter().enumerate().map(|(i, n)| n.json(i == 0)).collect();
                (StatusCode::OK, serde_json::Value::Array(list).to_string())
            }
            Answer::NoLeader => (
                StatusCode::INTERNAL_SERVER_ERROR,
                r#"{"message":"rpc error: code = Unknown desc = The swarm does not have a leader."}"#.to_owned(),
            ),
            Answer::Garbage => (StatusCode::OK, "<html><body>upstream connect error</body></html>".to_owned()),
            Answer::Truncated => (StatusCode::OK, "[{\"ID\":\"cut".to_owned()),
        }
    } else {
        (StatusCode::NOT_FOUND, r#"{"message":"page not found"}"#.to_owned())
    };
    let cut = body_is_cut(state) && path.ends_with("/nodes");
    let mut resp = if cut {
        // A body of unknown length, ended early, under a Content-Length
        // that promised more: hyper sends what there is and closes.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let _ = tx.send(Bytes::from(body));
        // Ended a moment later, so that the head and the start go out
        // first (hyper flushes while the body waits).
        tokio::spawn(async move {
            ucp_lb::timer::sleep(std::time::Duration::from_millis(50)).await;
            drop(tx);
        });
        let mut r = Response::new(http_body_util::Either::Right(Events(rx)));
        r.headers_mut().insert("content-length", hyper::header::HeaderValue::from_static("4096"));
        r
    } else {
        Response::new(http_body_util::Either::Left(Full::new(Bytes::from(body))))
    };
    *resp.status_mut() = status;
    resp.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    resp
}

fn body_is_cut(state: &State) -> bool {
    matches!(&*state.0.lock().unwrap_or_else(|p| p.into_inner()), Answer::Truncated)
}

/// Writes a client bundle signed by `ca` into `dir`: ca.pem, cert.pem,
/// key.pem (owner-only, as UCP's bundle is unpacked).
pub fn write_bundle(dir: &Path, ca: &TestCa, user: &str) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let (cert, key) = ca.issue_pem(user, &[]).map_err(io::Error::other)?;
    std::fs::write(dir.join("ca.pem"), &ca.pem)?;
    std::fs::write(dir.join("cert.pem"), cert)?;
    let key_path = dir.join("key.pem");
    std::fs::write(&key_path, key)?;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}
