//! The admin server: /metrics, /status, /healthz, and the POST endpoints
//! that reload and override servers.
//!
//! It never shares a port with traffic. Slow or greedy clients cannot
//! starve it: a connection is sorted by its first bytes into arriving,
//! health-check and other connections, each kind with places of its own,
//! and only connections that have not sent a whole request head are closed
//! to make room, the oldest of the address holding most first
//! ([`admit`] says how, and what bounds it). /healthz answers under a
//! flood from any number of addresses (issue 35). Requests are small
//! (headers up to 16 KiB, no body is read). POST endpoints need
//! `Authorization: Bearer <token>` (the contents of `token_file`),
//! compared in constant time; without a token file they answer 403. HEAD
//! is answered on every GET route, as GET without the body.

mod admit;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tracing::info;

use crate::config::AdminState;
use crate::control::lifecycle::Lb;
use crate::view::{page, prom};
use admit::{Kind, Open, Replayed, Ticket};

/// Serves the admin endpoints of `lb` on `listener` until dropped.
pub async fn serve(listener: TcpListener, lb: Arc<Lb>) {
    if let Ok(a) = listener.local_addr() {
        info!(listen = %a, "admin endpoints up: /metrics /status /healthz");
    }
    let local = listener.local_addr().ok();
    let admin = Arc::new(Admin { lb, local });
    let open = Arc::new(Open::default());
    let handed_over = admin.lb.shutdown.handed_over.clone();
    loop {
        let accepted = tokio::select! {
            // The successor accepts on this socket now.
            _ = handed_over.cancelled() => return,
            r = listener.accept() => r,
        };
        let Ok((tcp, peer)) = accepted else {
            crate::timer::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let ticket = open.arrive(peer.ip());
        tokio::spawn(connection(tcp, ticket, Instant::now(), open.clone(), admin.clone()));
    }
}

/// One admin connection, from its first bytes to its answer.
async fn connection(tcp: TcpStream, mut ticket: Ticket, accepted: Instant, open: Arc<Open>, admin: Arc<Admin>) {
    let Some((first, kind)) = admit::first_bytes(&tcp, &ticket, accepted).await else { return };
    // Every place of its kind is taken by a request being answered: this
    // one waits for nothing and is closed at once.
    if !open.sort(&mut ticket, kind, admit::head_complete(&first)) {
        return;
    }
    let (header_timeout, deadline) = match kind {
        Kind::Health => (admit::HEALTH_HEADER_TIMEOUT, Instant::now() + admit::HEALTH_TIMEOUT),
        _ => (admit::HEADER_TIMEOUT.saturating_sub(accepted.elapsed()), accepted + admit::CONNECTION_TIMEOUT),
    };
    let head_in = ticket.head_in.clone();
    let svc = service_fn(move |req| {
        head_in.store(true, Relaxed);
        let admin = admin.clone();
        async move { Ok::<_, Infallible>(admin.route(req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(crate::timer::Hyper)
        .header_read_timeout(header_timeout.max(Duration::from_millis(1)))
        .max_buf_size(16 * 1024)
        .keep_alive(false)
        .serve_connection(TokioIo::new(Replayed { first, tcp }), svc);
    tokio::select! {
        _ = crate::timer::timeout_at(deadline, conn) => {}
        _ = ticket.evict.notified() => {}
    }
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

/// What the admin server serves from.
struct Admin {
    lb: Arc<Lb>,
    /// Where it listens: on loopback, only requests naming this host are
    /// answered (see [`host_allowed`]).
    local: Option<SocketAddr>,
}

/// Whether a request for `host` (its Host header) may be answered by an
/// admin server listening on `local`. On loopback only an IP literal,
/// `localhost` or the listen address itself: a page from another origin
/// that rebinds its name to 127.0.0.1 (DNS rebinding) sends its own name
/// and gets 421. Beyond loopback any name (the admin port is reached by
/// whatever name the network gives it). No Host at all is not a browser.
fn host_allowed(host: Option<&str>, local: Option<SocketAddr>) -> bool {
    let (Some(host), Some(local)) = (host, local) else { return true };
    if !local.ip().is_loopback() {
        return true;
    }
    // Without the port: "[::1]:9900", "127.0.0.1:9900", "localhost".
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => {
            host.rsplit_once(':').map_or(host, |(h, p)| if p.chars().all(|c| c.is_ascii_digit()) { h } else { host })
        }
    };
    let name = name.trim_end_matches('.');
    name.parse::<IpAddr>().is_ok() || name.eq_ignore_ascii_case("localhost") || name == local.ip().to_string()
}

impl Admin {
    /// `Some(response)` when the request may not POST.
    fn deny(&self, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
        if self.lb.token.get().is_none() {
            return Some(text(StatusCode::FORBIDDEN, "POST endpoints are off: set admin.token_file\n"));
        }
        // The scheme is case-insensitive (RFC 9110): "bearer" works too.
        let given = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        });
        match given {
            Some(g) if self.lb.token.accepts(g.trim()) => None,
            _ => Some(text(StatusCode::UNAUTHORIZED, "a valid Authorization: Bearer token is needed\n")),
        }
    }

    /// `Some(response)` when a GET of status may not be answered: the
    /// config says `status_needs_token` and the request has not got it.
    fn deny_read(&self, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
        if !self.lb.shared.snapshot.load().config.admin.status_needs_token {
            return None;
        }
        self.deny(req)
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let host = req.headers().get(hyper::header::HOST).and_then(|h| h.to_str().ok());
        if !host_allowed(host, self.local) {
            return text(
                StatusCode::MISDIRECTED_REQUEST,
                "this admin port answers only for its own address or localhost\n",
            );
        }
        let path = req.uri().path().to_owned();
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        // HEAD is GET without the body (hyper leaves the body out).
        let method = if req.method() == Method::HEAD { Method::GET } else { req.method().clone() };
        if method == Method::GET
            && matches!(parts.as_slice(), ["status"] | [""] | ["metrics"])
            && let Some(d) = self.deny_read(&req)
        {
            return d;
        }
        match (&method, parts.as_slice()) {
            (&Method::GET, ["healthz"]) => {
                let phase = self.lb.phase();
                if phase.shutting_down {
                    text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
                } else if phase.stopping {
                    text(StatusCode::SERVICE_UNAVAILABLE, "stopping: still accepting for the stop grace\n")
                } else if !phase.ready {
                    text(StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                } else {
                    text(StatusCode::OK, "ok\n")
                }
            }
            (&Method::GET, ["status"]) => json(StatusCode::OK, &self.lb.view()),
            (&Method::GET, [""]) => {
                let mut r = text(StatusCode::OK, page::render(&self.lb.view()));
                r.headers_mut()
                    .insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/html; charset=utf-8"));
                r
            }
            (&Method::GET, ["metrics"]) => {
                let mut r = text(StatusCode::OK, prom::render(&self.lb.shared.own.metrics, &self.lb.view()));
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
                match self.lb.reload().await {
                    Ok(g) => json(StatusCode::OK, &serde_json::json!({ "generation": g })),
                    Err(e) => json(StatusCode::BAD_REQUEST, &serde_json::json!({ "error": e.to_string() })),
                }
            }
            (&Method::POST, ["pools", pool, "servers", server, action]) => {
                if let Some(d) = self.deny(&req) {
                    return d;
                }
                // `follow`: no override, the config's (or the swarm's) state.
                let state = match *action {
                    "enable" => Some(AdminState::Up),
                    "drain" => Some(AdminState::Drain),
                    "down" => Some(AdminState::Down),
                    "follow" => None,
                    _ => return text(StatusCode::NOT_FOUND, "expected drain, enable, down or follow\n"),
                };
                // Decoded text from a request: escaped before it reaches a log line.
                let server = percent_decode(server);
                let shown = crate::health::check::printable(&server);
                let done = match state {
                    Some(state) => self.lb.set_override(pool, &server, state),
                    None => self.lb.follow(pool, &server),
                };
                match done {
                    None => text(StatusCode::NOT_FOUND, format!("no pool {pool}\n")),
                    Some(0) => text(StatusCode::NOT_FOUND, format!("no server {server} in pool {pool}\n")),
                    Some(n) => {
                        info!(pool, server = %shown, action, servers = n, "runtime override");
                        json(
                            StatusCode::OK,
                            &serde_json::json!({ "pool": pool, "server": server, "state": action, "addresses": n }),
                        )
                    }
                }
            }
            (_, parts) => match allowed(parts) {
                Some(allow) => {
                    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, format!("method not allowed: use {allow}\n"));
                    r.headers_mut().insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static(allow));
                    r
                }
                None => text(StatusCode::NOT_FOUND, "not found: try /status, /metrics or /healthz\n"),
            },
        }
    }
}

/// The method a route takes, for a request that came with another (405
/// with `Allow`); `None` when there is no such route (404).
fn allowed(parts: &[&str]) -> Option<&'static str> {
    match parts {
        ["healthz" | "status" | "metrics" | ""] => Some("GET, HEAD"),
        ["reload"] | ["pools", _, "servers", _, "drain" | "enable" | "down" | "follow"] => Some("POST"),
        _ => None,
    }
}

/// Decodes %XX escapes (server names may hold ':' or '[' ']').
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // Two hex digits, as RFC 3986 has it: from_str_radix alone takes a
        // sign too, and "%+a" became a line break.
        if b[i] == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit()
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
    fn on_loopback_only_its_own_names_are_answered() {
        let lo: Option<SocketAddr> = "127.0.0.1:9900".parse().ok();
        for ok in [
            None,
            Some("127.0.0.1:9900"),
            Some("localhost"),
            Some("LOCALHOST:9900"),
            Some("[::1]:9900"),
            Some("10.1.2.3"),
        ] {
            assert!(host_allowed(ok, lo), "{ok:?}");
        }
        for bad in ["evil.example", "evil.example:9900", "localhost.evil.example", "127.0.0.1.nip.io"] {
            assert!(!host_allowed(Some(bad), lo), "{bad}");
        }
        assert!(host_allowed(Some("lb.example"), "0.0.0.0:9900".parse().ok()), "beyond loopback any name");
    }

    #[test]
    fn percent_escapes_decode() {
        assert_eq!(percent_decode("manager-01%3A443"), "manager-01:443");
        assert_eq!(percent_decode("%5B%3A%3A1%5D%3A443"), "[::1]:443");
        assert_eq!(percent_decode("10.0.0.1:443"), "10.0.0.1:443");
        assert_eq!(percent_decode("bad%zz"), "bad%zz");
        assert_eq!(percent_decode("x%+ay"), "x%+ay", "a sign is not a hex digit");
        assert_eq!(percent_decode("x%-1y"), "x%-1y");
    }
}
