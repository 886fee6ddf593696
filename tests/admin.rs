//! The admin endpoints: /healthz, /status, /metrics, and the POST endpoints
//! with their token.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::standin::{Manager, TestCa};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP/1.1 request on a fresh connection: (status, body).
async fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let text = http_raw(addr, method, path, token).await;
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// The value of the sample `name{labels}` in a Prometheus exposition.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        if n != name || !labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))) {
            return None;
        }
        value.parse().ok()
    })
}

#[tokio::test]
async fn healthz_is_200_while_serving_and_503_while_shutting_down() {
    let a = Echo::start().await;
    let lb = start_lb(&format!("[defaults]\nshutdown_timeout = \"1m\"\n{}", one_pool(&[a.addr], ""))).await;
    let admin = lb.admin_addr().unwrap();
    assert_eq!(http(admin, "GET", "/healthz", None).await, (200, "ok\n".into()));
    let mut open = TcpStream::connect(lb.listener_addrs()[0]).await.unwrap();
    echo_once(&mut open).await.unwrap();
    let lb = std::sync::Arc::new(lb);
    let stopping = {
        let lb = lb.clone();
        tokio::spawn(async move { lb.shutdown().await })
    };
    eventually("shutting down", || lb.is_shutting_down()).await;
    assert_eq!(http(admin, "GET", "/healthz", None).await.0, 503);
    drop(open);
    within("shutdown", stopping).await.unwrap();
}

/// HEAD (what load balancers and monitors use) answers like GET, without
/// the body: the status, the content type and the length GET would have.
/// On every GET route, with the same token rules.
#[tokio::test]
async fn head_answers_like_get_without_a_body() {
    let a = Echo::start().await;
    let lb = start_lb(&format!("[defaults]\nshutdown_timeout = \"1m\"\n{}", one_pool(&[a.addr], ""))).await;
    let admin = lb.admin_addr().unwrap();
    let head = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)))
            .map(|(_, v)| v.trim().to_owned())
    };
    for (path, kind) in
        [("/healthz", "text/plain"), ("/status", "application/json"), ("/", "text/html"), ("/metrics", "text/plain")]
    {
        let got = http_raw(admin, "GET", path, None).await;
        let answer = http_raw(admin, "HEAD", path, None).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "HEAD {path}: {answer}");
        assert!(answer.ends_with("\r\n\r\n"), "HEAD {path}: no body: {answer:?}");
        assert!(head(&answer, "content-type").is_some_and(|t| t.starts_with(kind)), "HEAD {path}: {answer}");
        if path == "/healthz" {
            assert_eq!(head(&answer, "content-length"), head(&got, "content-length"), "{answer}\n{got}");
        }
    }
    // A connection left open keeps the draining balancer (and its admin
    // port) up for the 503.
    let mut open = TcpStream::connect(lb.listener_addrs()[0]).await.unwrap();
    echo_once(&mut open).await.unwrap();
    let lb = std::sync::Arc::new(lb);
    let stopping = {
        let lb = lb.clone();
        tokio::spawn(async move { lb.shutdown().await })
    };
    eventually("shutting down", || lb.is_shutting_down()).await;
    let answer = http_raw(admin, "HEAD", "/healthz", None).await;
    assert!(answer.starts_with("HTTP/1.1 503") && answer.ends_with("\r\n\r\n"), "{answer}");
    drop(open);
    within("shutdown", stopping).await.unwrap();
}

#[tokio::test]
async fn metrics_and_status_follow_traffic_checks_and_reloads() {
    let ca = TestCa::new("test CA").unwrap();
    let m1 = Manager::start("manager-01", loopback(), &ca).await.unwrap();
    let m2 = Manager::start("manager-02", loopback(), &ca).await.unwrap();
    let refusing = refusing_addr();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    // Pool "web" is checked; pool "raw" has a refusing server for passive ejection.
    let echo = Echo::start().await;
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[listener]]\nbind = \"127.0.0.1:0\"\npool = \"web\"\n[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"raw\"\n\
         [pool.web]\nservers = [\"{}\", \"{}\"]\n[pool.web.health]\ninterval = \"100ms\"\ntimeout = \"1s\"\nrise = 1\nfall = 1\n\
         [pool.raw]\nservers = [\"{}\", \"{refusing}\"]\nmax_fails = 1\nfail_timeout = \"1h\"\n",
        m1.addr, m2.addr, echo.addr
    );
    std::fs::write(&path, &text).unwrap();
    let lb = start_lb_file(&path).await;
    let admin = lb.admin_addr().unwrap();
    let raw = lb.listener_addrs()[1];
    for _ in 0..4 {
        round_trip(raw).await.unwrap();
    }
    m2.set_healthy(false);
    eventually("m2 down", || server(&lb, m2.addr).check.is_some_and(|c| c.state == "down")).await;
    lb.reload().await.unwrap();

    let (status, body) = http(admin, "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    let e = echo.addr.to_string();
    let r = refusing.to_string();
    let m2s = m2.addr.to_string();
    assert_eq!(sample(&body, "ucp_lb_server_connections_total", &[("pool", "raw"), ("server", &e)]), Some(4.0));
    assert_eq!(sample(&body, "ucp_lb_server_sent_bytes_total", &[("pool", "raw"), ("server", &e)]), Some(16.0));
    assert_eq!(sample(&body, "ucp_lb_server_received_bytes_total", &[("pool", "raw"), ("server", &e)]), Some(16.0));
    assert_eq!(
        sample(
            &body,
            "ucp_lb_server_connect_failures_total",
            &[("pool", "raw"), ("server", &r), ("reason", "refused")]
        ),
        Some(1.0)
    );
    assert_eq!(sample(&body, "ucp_lb_server_ejections_total", &[("server", &r), ("cause", "passive")]), Some(1.0));
    assert_eq!(sample(&body, "ucp_lb_server_up", &[("pool", "raw"), ("server", &r)]), Some(0.0));
    assert_eq!(sample(&body, "ucp_lb_server_check_up", &[("pool", "web"), ("server", &m2s)]), Some(0.0));
    assert_eq!(
        sample(&body, "ucp_lb_server_check_up", &[("pool", "web"), ("server", &m1.addr.to_string())]),
        Some(1.0)
    );
    assert_eq!(sample(&body, "ucp_lb_server_ejections_total", &[("server", &m2s), ("cause", "active")]), Some(1.0));
    assert!(sample(&body, "ucp_lb_server_cert_expiry_timestamp_seconds", &[("server", &m2s)]).unwrap() > 4e9);
    assert!(sample(&body, "ucp_lb_health_check_duration_seconds_count", &[("server", &m2s)]).unwrap() >= 1.0);
    assert_eq!(sample(&body, "ucp_lb_config_reloads_total", &[("result", "success")]), Some(1.0));
    assert_eq!(sample(&body, "ucp_lb_config_last_reload_successful", &[]), Some(1.0));
    assert_eq!(
        sample(&body, "ucp_lb_listener_accepted_connections_total", &[("listener", &raw.to_string())]),
        Some(4.0)
    );
    assert!(body.contains("# TYPE ucp_lb_server_connections_total counter"), "{body}");
    promtool_check(&body);

    let (status, body) = http(admin, "GET", "/status", None).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["reload"]["successes"], 1);
    assert_eq!(v["generation"], 2);
    assert_eq!(v["listeners"].as_array().unwrap().len(), 2);
    let web = v["pools"].as_array().unwrap().iter().find(|p| p["name"] == "web").unwrap();
    let s2 = web["servers"].as_array().unwrap().iter().find(|s| s["addr"] == m2s).unwrap();
    assert_eq!(s2["check"]["state"], "down");
    assert_eq!(s2["check"]["reason"], "status 500");
}

/// `promtool check metrics` on the exposition, when promtool is there.
fn promtool_check(text: &str) {
    let Some(bin) = external_tool(&["/usr/bin/promtool", "/usr/local/bin/promtool"], "promtool") else { return };
    use std::io::Write;
    let mut child = std::process::Command::new(bin)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn post_endpoints_need_the_token_and_overrides_change_routing_at_once() {
    let (a, b) = (Echo::start().await, Echo::start().await);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    write_secret(&token_file, "s3cret-token\n");
    let path = dir.path().join("lb.toml");
    std::fs::write(&path, with_admin(&one_pool(&[a.addr, b.addr], ""), Some(&token_file))).unwrap();
    let lb = start_lb_file(&path).await;
    let admin = lb.admin_addr().unwrap();
    let addr = lb.listener_addrs()[0];
    let b_path = format!("/pools/p/servers/{}/drain", b.addr.to_string().replace(':', "%3A"));

    assert_eq!(http(admin, "POST", &b_path, None).await.0, 401, "no token");
    assert_eq!(http(admin, "POST", &b_path, Some("wrong")).await.0, 401, "wrong token");
    assert_eq!(http(admin, "POST", "/reload", Some("s3cret-token2")).await.0, 401, "longer token");
    assert_eq!(http(admin, "POST", &b_path, Some("s3cret-token")).await.0, 200);
    let b0 = b.count();
    for _ in 0..10 {
        round_trip(addr).await.unwrap();
    }
    assert_eq!(b.count(), b0, "drained at once: no new client");
    assert_eq!(server(&lb, b.addr).state, "drain");
    let (_, st) = http(admin, "GET", "/status", None).await;
    assert!(st.contains("\"state\": \"drain\""), "{st}");

    let enable = b_path.replace("/drain", "/enable");
    assert_eq!(http(admin, "POST", &enable, Some("s3cret-token")).await.0, 200);
    for _ in 0..10 {
        round_trip(addr).await.unwrap();
    }
    assert_eq!(b.count(), b0 + 5, "enabled at once");

    let down = b_path.replace("/drain", "/down");
    assert_eq!(http(admin, "POST", &down, Some("s3cret-token")).await.0, 200);
    assert_eq!(server(&lb, b.addr).state, "down");
    assert_eq!(http(admin, "POST", "/pools/p/servers/10.9.9.9:1/down", Some("s3cret-token")).await.0, 404);
    let (status, body) = http(admin, "POST", "/reload", Some("s3cret-token")).await;
    assert_eq!((status, body.contains("\"generation\": 2")), (200, true), "{body}");
    assert_eq!(server(&lb, b.addr).state, "down", "the override outlives a reload");
}

#[tokio::test]
async fn without_a_token_file_post_endpoints_are_forbidden() {
    let a = Echo::start().await;
    let lb = start_lb(&one_pool(&[a.addr], "")).await;
    let admin = lb.admin_addr().unwrap();
    assert_eq!(http(admin, "POST", "/reload", Some("anything")).await.0, 403);
    assert_eq!(http(admin, "GET", "/reload", None).await.0, 405);
    assert_eq!(http(admin, "GET", "/nope", None).await.0, 404);
}

/// A route that exists answers another method with 405 and says which one
/// it takes (Allow); an unknown pool is named as such.
#[tokio::test]
async fn a_wrong_method_gets_405_with_allow_and_an_unknown_pool_is_named() {
    let a = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    write_secret(&token, "allow-test-token-0123\n");
    let lb = start_lb(&with_admin(&one_pool(&[a.addr], ""), Some(&token))).await;
    let admin = lb.admin_addr().unwrap();
    for (method, path, allow) in [
        ("GET", "/pools/p/servers/x/drain", "POST"),
        ("GET", "/reload", "POST"),
        ("POST", "/status", "GET, HEAD"),
        ("DELETE", "/metrics", "GET, HEAD"),
        ("PUT", "/healthz", "GET, HEAD"),
    ] {
        let answer = http_raw(admin, method, path, None).await;
        assert!(answer.starts_with("HTTP/1.1 405"), "{method} {path}: {answer}");
        assert!(
            answer.to_ascii_lowercase().contains(&format!("\r\nallow: {}\r\n", allow.to_ascii_lowercase())),
            "{method} {path}: {answer}"
        );
    }
    let (status, body) = http(admin, "POST", "/pools/nope/servers/x/drain", Some("allow-test-token-0123")).await;
    assert_eq!((status, body.trim()), (404, "no pool nope"));
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_cannot_block_the_admin() {
    let a = Echo::start().await;
    let lb = start_lb(&one_pool(&[a.addr], "")).await;
    let admin = lb.admin_addr().unwrap();
    // 20 slow clients hold connections without ever sending a full request.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(admin).await.unwrap();
        s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        slow.push(s);
    }
    assert_eq!(http(admin, "GET", "/healthz", None).await.0, 200, "still answers");
    // And they are dropped after the header timeout.
    for s in &mut slow {
        let mut buf = [0u8; 256];
        let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
        assert!(r.is_ok(), "slow client cut after the header timeout");
    }
}

/// A server given a `name` is shown by it (with the address it resolved
/// to) in /status, /metrics and the page, and the admin API takes it.
#[tokio::test]
async fn servers_are_shown_by_the_name_given_in_the_config() {
    let (a, b) = (Echo::start().await, Echo::start().await);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    write_secret(&token, "name-test-token-0123\n");
    let toml = with_admin(&one_pool(&[a.addr, b.addr], ""), Some(&token)).replacen(
        &format!("\"{}\"", a.addr),
        &format!("{{ address = \"{}\", name = \"manager-01\" }}", a.addr),
        1,
    );
    let lb = start_lb(&toml).await;
    let admin = lb.admin_addr().unwrap();
    let s = server(&lb, a.addr);
    assert_eq!((s.name.as_str(), s.label.as_str()), ("manager-01", format!("manager-01 ({})", a.addr).as_str()));
    assert_eq!(server(&lb, b.addr).name, b.addr.to_string(), "no name: the address as written");
    let metrics = http(admin, "GET", "/metrics", None).await.1;
    assert!(metrics.contains(&format!("server=\"manager-01 ({})\"", a.addr)), "{metrics}");
    assert!(http(admin, "GET", "/", None).await.1.contains("manager-01"));
    let (status, _) = http(admin, "POST", "/pools/p/servers/manager-01/drain", Some("name-test-token-0123")).await;
    assert_eq!(status, 200);
    assert_eq!(server(&lb, a.addr).state, "drain");
}
