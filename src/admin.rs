//! The admin server: /metrics, /status, /healthz, and the POST endpoints
//! that reload and override servers.
//!
//! It never shares a port with traffic. Slow or greedy clients cannot
//! starve it: each connection must send its headers within 5 s and finish
//! within 30 s, requests are small (headers up to 16 KiB, no body is read),
//! and at most 64 connections are open at once: when a 65th comes, the
//! oldest is closed, as nginx drains its oldest idle connections, so a
//! client holding connections open (slowloris) cannot keep /healthz from
//! the keepalived or Docker health check. POST endpoints need `Authorization: Bearer <token>` (the contents
//! of `token_file`), compared in constant time; without a token file they
//! answer 403.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::{AdminConfig, ConfigError, ConfigErrors};
use crate::reload::{Control, ReloadStatus};
use crate::snapshot::PoolStatus;

const MAX_CONNECTIONS: usize = 64;
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// What the admin server serves from.
pub struct Admin {
    pub control: Arc<Control>,
}

/// Reads the token file: its first line, trimmed. An empty or unreadable
/// file is a config error, not a silently open endpoint.
pub fn read_token(cfg: &AdminConfig, source: &str) -> Result<Option<String>, ConfigErrors> {
    let Some(path) = &cfg.token_file else { return Ok(None) };
    let err = |message: String| {
        ConfigErrors(vec![ConfigError {
            source: source.to_owned(),
            pos: Some(cfg.token_file_pos),
            key: "admin.token_file".into(),
            message,
        }])
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    if let Some(why) = crate::config::world_writable(path) {
        return Err(err(why));
    }
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.is_empty() {
        return Err(err(format!("{} holds no token", path.display())));
    }
    Ok(Some(token))
}

/// Equal in time that does not depend on where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Warns that admin endpoints bound beyond loopback with no token are
/// readable by anyone who reaches them.
pub fn warn_if_open_without_token(listen: SocketAddr) {
    if !listen.ip().is_loopback() {
        warn!(listen = %listen, "admin endpoints listen beyond loopback without a token_file: status and metrics are readable by anyone who reaches this port (POST endpoints stay off)");
    }
}

pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    if let Ok(a) = listener.local_addr() {
        if admin.control.admin_token().is_none() {
            warn_if_open_without_token(a);
        }
        info!(listen = %a, "admin endpoints up: /metrics /status /healthz");
    }
    let open = Arc::new(Open::default());
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (slot, evict) = open.admit();
        let admin = admin.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.route(req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(16 * 1024)
                .keep_alive(false)
                .serve_connection(TokioIo::new(tcp), svc);
            tokio::select! {
                _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn) => {}
                _ = evict.notified() => {}
            }
        });
    }
}

/// The open admin connections, oldest first.
#[derive(Default)]
struct Open {
    conns: Mutex<VecDeque<(u64, Arc<Notify>)>>,
    next: AtomicU64,
}

/// Takes a connection out of [`Open`] when it ends.
struct Slot {
    open: Arc<Open>,
    id: u64,
}

impl Open {
    /// Registers a new connection, closing the oldest when all
    /// `MAX_CONNECTIONS` are taken. Returns its slot and what tells it to go.
    fn admit(self: &Arc<Self>) -> (Slot, Arc<Notify>) {
        let id = self.next.fetch_add(1, Relaxed);
        let evict = Arc::new(Notify::new());
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if conns.len() >= MAX_CONNECTIONS
            && let Some((_, oldest)) = conns.pop_front()
        {
            // notify_one keeps the permit if the task is not waiting yet.
            oldest.notify_one();
        }
        conns.push_back((id, evict.clone()));
        (Slot { open: self.clone(), id }, evict)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut conns = self.open.conns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = conns.iter().position(|(id, _)| *id == self.id) {
            conns.remove(i);
        }
    }
}

#[derive(Serialize)]
struct ListenerStatus {
    bind: SocketAddr,
    local: SocketAddr,
    pool: Option<String>,
    active: u64,
    accepted: u64,
    rejected_max_connections: u64,
    rejected_fd_limit: u64,
}

#[derive(Serialize)]
struct Status {
    version: &'static str,
    ready: bool,
    shutting_down: bool,
    config_source: String,
    generation: u64,
    reload: ReloadStatus,
    listeners: Vec<ListenerStatus>,
    pools: Vec<PoolStatus>,
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn json(status: StatusCode, v: &impl Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    let mut r = text(status, body);
    r.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    r
}

impl Admin {
    pub fn new(control: Arc<Control>) -> Admin {
        Admin { control }
    }

    fn status(&self) -> Status {
        let snap = self.control.shared.snapshot.load_full();
        let listeners = self
            .control
            .listeners
            .states()
            .iter()
            .map(|l| ListenerStatus {
                bind: l.bind,
                local: l.local,
                pool: snap.listener(l.bind, l.nth).map(|c| c.pool.to_string()),
                active: l.active.load(Relaxed),
                accepted: l.accepted.load(Relaxed),
                rejected_max_connections: l.rejected_max_connections.load(Relaxed),
                rejected_fd_limit: l.rejected_fd_limit.load(Relaxed),
            })
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION"),
            ready: self.control.is_ready(),
            shutting_down: self.control.shutdown.stop_accepting.is_cancelled(),
            config_source: snap.config.source.clone(),
            generation: snap.generation,
            reload: self.control.reload_status(),
            listeners,
            pools: snap.status(Instant::now()),
        }
    }

    /// `Some(response)` when the request may not POST.
    fn deny(&self, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
        let Some(token) = self.control.admin_token() else {
            return Some(text(StatusCode::FORBIDDEN, "POST endpoints are off: set admin.token_file\n"));
        };
        let given =
            req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(g) if constant_time_eq(g.trim().as_bytes(), token.as_bytes()) => None,
            _ => Some(text(StatusCode::UNAUTHORIZED, "a valid Authorization: Bearer token is needed\n")),
        }
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (req.method(), parts.as_slice()) {
            (&Method::GET, ["healthz"]) => {
                if self.control.shutdown.stop_accepting.is_cancelled() {
                    text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
                } else if !self.control.is_ready() {
                    text(StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                } else {
                    text(StatusCode::OK, "ok\n")
                }
            }
            (&Method::GET, ["status"]) => json(StatusCode::OK, &self.status()),
            (&Method::GET, [""]) => {
                let st = self.status();
                let header = crate::page::Header {
                    version: st.version,
                    generation: st.generation,
                    ready: st.ready,
                    shutting_down: st.shutting_down,
                    config_source: &st.config_source,
                    reload_ok: st.reload.last_ok,
                    reload_error: st.reload.last_error.as_deref(),
                    reloads: (st.reload.successes, st.reload.failures),
                };
                let rows: Vec<crate::page::ListenerRow> = st
                    .listeners
                    .iter()
                    .map(|l| crate::page::ListenerRow {
                        local: l.local.to_string(),
                        pool: l.pool.clone().unwrap_or_default(),
                        active: l.active,
                        accepted: l.accepted,
                        rejected: l.rejected_max_connections + l.rejected_fd_limit,
                    })
                    .collect();
                let mut r = text(StatusCode::OK, crate::page::render(&header, &rows, &st.pools));
                r.headers_mut()
                    .insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/html; charset=utf-8"));
                r
            }
            (&Method::GET, ["metrics"]) => {
                let snap = self.control.shared.snapshot.load_full();
                let body = self.control.shared.health.metrics.render(
                    &snap,
                    &self.control.listeners.states(),
                    &self.control.reload_status(),
                );
                let mut r = text(StatusCode::OK, body);
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            (&Method::POST, ["reload"]) => {
                if let Some(d) = self.deny(&req) {
                    return d;
                }
                info!("reload requested over the admin API");
                match self.control.reload().await {
                    Ok(g) => json(StatusCode::OK, &serde_json::json!({ "generation": g })),
                    Err(e) => json(StatusCode::BAD_REQUEST, &serde_json::json!({ "error": e.to_string() })),
                }
            }
            (&Method::POST, ["pools", pool, "servers", server, action]) => {
                if let Some(d) = self.deny(&req) {
                    return d;
                }
                let state = match *action {
                    "enable" => 1,
                    "drain" => 2,
                    "down" => 3,
                    _ => return text(StatusCode::NOT_FOUND, "expected drain, enable or down\n"),
                };
                let server = percent_decode(server);
                match self.control.set_override(pool, &server, state) {
                    0 => text(StatusCode::NOT_FOUND, format!("no server {server} in pool {pool}\n")),
                    n => {
                        info!(pool, %server, action, servers = n, "runtime override");
                        json(
                            StatusCode::OK,
                            &serde_json::json!({ "pool": pool, "server": server, "state": action, "addresses": n }),
                        )
                    }
                }
            }
            (_, ["healthz" | "status" | "metrics"]) | (_, ["reload"]) => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(StatusCode::NOT_FOUND, "not found: try /status, /metrics or /healthz\n"),
        }
    }
}

/// Decodes %XX escapes (server names may hold ':' or '[' ']').
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(v) = u8::from_str_radix(hex, 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }

    #[test]
    fn percent_escapes_decode() {
        assert_eq!(percent_decode("manager-01%3A443"), "manager-01:443");
        assert_eq!(percent_decode("%5B%3A%3A1%5D%3A443"), "[::1]:443");
        assert_eq!(percent_decode("10.0.0.1:443"), "10.0.0.1:443");
        assert_eq!(percent_decode("bad%zz"), "bad%zz");
    }
}
