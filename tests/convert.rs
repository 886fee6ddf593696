//! `ucp-lb convert-nginx`: the reference architectures' stream configs
//! convert and pass `check`; includes, comments and every carried directive;
//! what cannot be carried is a comment and a warning; syntax errors name
//! file:line; and a round trip: nginx and ucp-lb run on the same config file
//! send each client to the same server.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::nginx::*;
use common::*;

fn ucp_lb() -> Command {
    Command::new(BIN)
}

fn convert(path: &Path) -> Output {
    ucp_lb().arg("convert-nginx").arg(path).output().unwrap()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nginx").join(name)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Writes `toml` and runs `ucp-lb check --offline` on it.
fn check(toml: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    std::fs::write(&path, toml).unwrap();
    ucp_lb().arg("check").arg("--offline").arg("--config").arg(&path).output().unwrap()
}

#[test]
fn reference_architecture_configs_convert_and_pass_check() {
    for (file, binds, pools) in [
        ("ucp.conf", ["0.0.0.0:443 -> pool ucp_443", "0.0.0.0:6443 -> pool ucp_6443"], ["ucp_443", "ucp_6443"]),
        ("dtr.conf", ["0.0.0.0:443 -> pool dtr_443", "0.0.0.0:80 -> pool dtr_80"], ["dtr_443", "dtr_80"]),
    ] {
        let out = convert(&fixture(file));
        assert!(out.status.success(), "{file}: {}", text(&out.stderr));
        assert_eq!(text(&out.stderr), "", "{file}: nothing in the reference config is lost");
        let toml = text(&out.stdout);
        assert!(toml.contains("Outside stream {} and ignored: user, worker_processes, error_log, pid, events."));
        let checked = check(&toml);
        assert!(checked.status.success(), "{file}: {}\n{toml}", text(&checked.stderr));
        let summary = text(&checked.stdout);
        for b in binds {
            assert!(summary.contains(b), "{file}: {b}\n{summary}");
        }
        for p in pools {
            // max_fails=2 fail_timeout=30s carried; nginx's other defaults written out.
            assert!(
                summary.contains(&format!(
                    "  {p}: balance round_robin, connect_timeout 1m, idle_timeout 10m, max_fails 2, fail_timeout 30s, \
                     retries all, all_down reject"
                )),
                "{file}: {p}\n{summary}"
            );
        }
        assert_eq!(summary.matches("(weight 1)").count(), 6, "{summary}");
        assert!(toml.contains("breaks `docker events`, `kubectl --watch`"), "the 10m trap is called out");
    }
}

#[test]
fn carries_every_upstream_and_server_directive_and_follows_includes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("streams")).unwrap();
    std::fs::write(
        d.join("nginx.conf"),
        "user nginx;\nevents { worker_connections 512; }\nhttp { server { listen 8080; } }\n\
         stream {\n  proxy_connect_timeout 5s;\n  include streams/*.conf;\n  log_format basic '$remote_addr';\n}\n",
    )
    .unwrap();
    std::fs::write(
        d.join("streams/a.conf"),
        "# Managers, weighted: manager-01 is the big one.\nupstream ucp {\n  zone ucp 64k;\n  hash $remote_addr consistent;\n\
         \x20 # the big one\n  server 10.0.0.1:443 weight=5 max_fails=3 fail_timeout=1m;\n\
         \x20 server 10.0.0.2:443 max_fails=3 fail_timeout=1m max_conns=100;\n\
         \x20 server 10.0.0.3:443 max_fails=3 fail_timeout=1m backup slow_start=30s;\n\
         \x20 server 10.0.0.4:443 max_fails=3 fail_timeout=1m down;\n}\n\
         server {\n  listen 443 reuseport;\n  listen [::]:443;\n  proxy_pass ucp;\n  proxy_timeout 1h;\n\
         \x20 proxy_next_upstream_tries 2;\n  access_log off;\n}\n",
    )
    .unwrap();
    std::fs::write(
        d.join("streams/b.conf"),
        "upstream lc { least_conn; server 10.0.1.1:80; server 10.0.1.2:80 max_fails=0; }\n\
         upstream r2 { random two; server 10.0.2.1:80; }\n\
         server { listen 127.0.0.1:8000; proxy_pass lc; proxy_next_upstream off; }\n\
         server { listen 8001; proxy_pass r2; proxy_timeout 0; }\n\
         server { listen *:8002; proxy_pass 10.0.3.1:9000; }\n\
         server { listen 8443 ssl; proxy_pass lc; }\n\
         server { listen 5353 udp; proxy_pass lc; }\n",
    )
    .unwrap();
    std::fs::write(d.join("streams/.hidden.conf"), "this is not read {").unwrap();
    let out = convert(&d.join("nginx.conf"));
    let (toml, warnings) = (text(&out.stdout), text(&out.stderr));
    // The ssl and udp listeners are missing from the output: exit 1, the
    // config printed all the same.
    assert_eq!(out.status.code(), Some(1), "{warnings}");
    let checked = check(&toml);
    assert!(checked.status.success(), "{}\n{toml}", text(&checked.stderr));
    let summary = text(&checked.stdout);
    let expect = [
        "0.0.0.0:443 -> pool ucp",
        "[::]:443 -> pool ucp",
        "127.0.0.1:8000 -> pool lc",
        "0.0.0.0:8001 -> pool r2",
        "0.0.0.0:8002 -> pool direct_10_0_3_1_9000",
        // stream-level proxy_connect_timeout inherited, per-server limits on the pool.
        "ucp: balance source_hash, connect_timeout 5s, idle_timeout 1h, max_fails 3, fail_timeout 1m, retries 1, all_down reject",
        "10.0.0.1:443 -> 10.0.0.1:443 (weight 5)",
        "10.0.0.2:443 -> 10.0.0.2:443 (weight 1, max_conns 100)",
        "10.0.0.3:443 -> 10.0.0.3:443 (weight 1, backup)",
        "    10.0.0.3:443: slow_start 30s",
        "10.0.0.4:443 -> 10.0.0.4:443 (weight 1, down)",
        "lc: balance least_conn, connect_timeout 5s, idle_timeout 10m, max_fails 1, fail_timeout 10s, retries 0",
        "r2: balance random_two, connect_timeout 5s, idle_timeout none,",
        "direct_10_0_3_1_9000: balance round_robin, connect_timeout 5s, idle_timeout 10m, max_fails 1, fail_timeout 10s, retries all",
    ];
    for e in expect {
        assert!(summary.contains(e), "missing {e:?} in\n{summary}\n{toml}");
    }
    assert!(!summary.contains("8443") && !summary.contains("5353"), "ssl and udp listeners are not carried");
    // The nginx comments are kept next to what they described.
    assert!(toml.contains("# Managers, weighted: manager-01 is the big one.\n"), "{toml}");
    assert!(toml.contains("  # the big one\n  { address = \"10.0.0.1:443\", weight = 5 },"), "{toml}");
    // One warning per directive not carried, each with file:line.
    let a = d.join("streams/a.conf").display().to_string();
    let b = d.join("streams/b.conf").display().to_string();
    let w = format!(
        "warning: {a}:12: listen 443 reuseport;: listening on 0.0.0.0:443; parameters not carried over: reuseport"
    );
    assert!(warnings.contains(&w), "missing {w:?} in\n{warnings}");
    assert!(
        warnings.contains(&format!("warning: {b}:1: upstream lc {{ ... }}: ucp-lb sets max_fails and fail_timeout per pool: 1 and 10s used, also for 10.0.1.2:80 (max_fails=0 fail_timeout=10s)")),
        "{warnings}"
    );
    // The listeners not carried come first, as errors.
    assert!(
        warnings.starts_with(&format!(
            "error: {b}:6: listen 8443 ssl;: the listener 8443 is not carried over: ucp-lb passes TLS through and \
             does not terminate it\nerror: {b}:7: listen 5353 udp;: the listener 5353 is not carried over: ucp-lb \
             balances TCP only\nwarning: "
        )),
        "{warnings}"
    );
    assert!(!warnings.contains("slow_start"), "slow_start is carried: {warnings}");
    assert!(!warnings.contains(&format!("warning: {a}:3")), "zone needs no warning: {warnings}");
    assert!(
        warnings.contains(&format!("note: ignored, they make no difference in ucp-lb: zone ucp 64k ({a}:3, ")),
        "{warnings}"
    );
    // Carried now: the server's access_log off, and the format (unused).
    assert!(toml.contains("access_log = \"off\""), "{toml}");
    assert!(!warnings.contains("log_format") && !warnings.contains("access_log"), "{warnings}");
    // Each warning is also a comment in the output.
    assert!(toml.contains("{ address = \"10.0.0.3:443\", backup = true, slow_start = \"30s\" },"), "{toml}");
    assert!(toml.contains("# MISSING: listeners of the nginx config that are not carried over"), "{toml}");
}

#[test]
fn unreadable_syntax_fails_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "stream {\n  upstream u {\n    server 10.0.0.1:443\n  }\n}\n",
            ":3: \"server 10.0.0.1:443\" has no \";\" before the \"}\" on line 4",
        ),
        (
            "stream {\n  upstream u {\n    server 10.0.0.1:443;\n",
            ":2: unexpected end of file: the \"{\" opened here is not closed",
        ),
        ("events {}\n}\n", ":2: unexpected \"}\": no block is open here"),
        ("stream {\n  server { listen 443; proxy_pass \"u;\n}\n", ":2: unexpected end of file: a \" is not closed"),
        ("stream {\n ;\n}\n", ":2: unexpected \";\""),
        ("stream {\n  include missing.conf;\n}\n", ":2: include "),
        (
            "stream {\n  server { listen 443; proxy_pass nowhere; }\n}\n",
            ":2: proxy_pass nowhere: no upstream \"nowhere\"",
        ),
        ("stream {\n  upstream u {\n    server 10.0.0.1;\n  }\n}\n", ":3: expected host:port, found \"10.0.0.1\""),
        ("stream {\n  upstream u { server 10.0.0.1:1 max_fails=x; }\n}\n", ":2: max_fails: expected a whole number"),
        (
            "stream {\n  upstream u { server 10.0.0.1:1; }\n  server { listen 1; proxy_pass u; proxy_timeout 5y; }\n}\n",
            ":3: proxy_timeout: expected an nginx time",
        ),
    ];
    for (i, (conf, want)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("c{i}.conf"));
        std::fs::write(&path, conf).unwrap();
        let out = convert(&path);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{conf}");
        assert!(err.starts_with(&format!("{}{want}", path.display())), "{conf}\nwant {want}\ngot {err}");
        assert!(out.stdout.is_empty(), "nothing printed on error");
    }
    // An include loop ends with an error, not a stack overflow.
    let looped = dir.path().join("loop.conf");
    std::fs::write(&looped, "include loop.conf;\n").unwrap();
    let out = convert(&looped);
    assert!(text(&out.stderr).contains("include nested more than 16 deep"), "{}", text(&out.stderr));
    // No stream block at all: nothing to carry, exit 1.
    let http = dir.path().join("http.conf");
    std::fs::write(&http, "events {}\nhttp { server { listen 80; } }\n").unwrap();
    let out = convert(&http);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no stream {} block"));
}

/// Round trip: one nginx.conf with three upstreams on loopback backends
/// (weighted round robin with a refusing server, `hash $remote_addr
/// consistent`, a backup) is run by nginx, then converted and run by
/// ucp-lb on the same ports; every client must land on the same backend.
#[tokio::test]
async fn converted_config_routes_as_nginx_did() {
    let Some(bin) = nginx_bin() else { return };
    let echoes: Vec<Echo> = vec![Echo::start().await, Echo::start().await, Echo::start().await];
    let refusing = refusing_addr();
    let [wrr, hash, backup] = free_addrs();
    let e = |i: usize| echoes[i].addr;
    let stream = format!(
        "  upstream wrr {{\n    server {} weight=3;\n    server {refusing} weight=6 max_fails=2 fail_timeout=1h;\n    server {} weight=2;\n  }}\n\
         \x20 upstream hashed {{\n    hash $remote_addr consistent;\n    server {};\n    server {};\n    server {};\n  }}\n\
         \x20 upstream with_backup {{\n    server {refusing} max_fails=1 fail_timeout=1h;\n    server {} backup;\n  }}\n\
         \x20 server {{ listen {wrr}; proxy_pass wrr; }}\n  server {{ listen {hash}; proxy_pass hashed; }}\n\
         \x20 server {{ listen {backup}; proxy_pass with_backup; }}\n",
        e(0),
        e(2),
        e(0),
        e(1),
        e(2),
        e(1)
    );
    let ngx = start_nginx(&bin, &stream).await;
    let keep = tempfile::tempdir().unwrap();
    let conf = keep.path().join("nginx.conf");
    std::fs::copy(&ngx.conf, &conf).unwrap();

    async fn run(
        echoes: &[Echo],
        wrr: std::net::SocketAddr,
        hash: std::net::SocketAddr,
        backup: std::net::SocketAddr,
    ) -> Vec<usize> {
        let mut seq = Vec::new();
        for _ in 0..24 {
            seq.push(served_by(echoes, wrr, [127, 0, 0, 1]).await);
        }
        for host in 1..=40u8 {
            seq.push(served_by(echoes, hash, [127, 0, 3, host]).await);
        }
        for _ in 0..4 {
            seq.push(served_by(echoes, backup, [127, 0, 0, 1]).await);
        }
        seq
    }
    let seq_nginx = run(&echoes, wrr, hash, backup).await;
    ngx.stop();

    let out = convert(&conf);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let toml = text(&out.stdout) + "\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    let lb = start_lb(&toml).await;
    assert_eq!(lb.listener_addrs().len(), 3);
    let seq_lb = run(&echoes, wrr, hash, backup).await;
    assert_eq!(seq_lb, seq_nginx, "\n{toml}");
    // The refusing server was tried and ejected in both: not a trivial match.
    assert!(seq_nginx[..24].contains(&0) && seq_nginx[..24].contains(&2));
    assert!(server(&lb, refusing).ejected);
}

/// The commented health table of each pool, uncommented: what an operator
/// gets by removing the `# ` (the advice lines starting `# ^` stay comments).
fn uncommented_health(toml: &str) -> String {
    let mut out = String::new();
    let mut in_health = false;
    for line in toml.lines() {
        if line.starts_with("# [pool.") && line.ends_with(".health]") {
            in_health = true;
        } else if !line.starts_with('#') {
            in_health = false;
        }
        match line.strip_prefix("# ") {
            Some(rest) if in_health && !rest.starts_with('^') && !rest.starts_with("  ") => out.push_str(rest),
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn health_of(toml: &str, pool: &str) -> String {
    let head = format!("# [pool.{pool}.health]");
    let rest = toml.split_once(&head).map_or("", |(_, r)| r);
    rest.lines().skip(1).take_while(|l| l.starts_with('#')).collect::<Vec<_>>().join("\n")
}

/// The suggested checks never take every server out: UCP's 6443 pool is
/// told to follow /_ping on 443 (the Kubernetes API has no /_ping), DTR's
/// pools to check /_ping for `"Healthy": true`, anything else (a plain
/// Kubernetes API server, a game server) a TCP connect. Uncommented, each
/// passes check.
#[test]
fn suggested_health_checks_fit_ucp_dtr_and_anything_else() {
    let ucp = text(&convert(&fixture("ucp.conf")).stdout);
    assert!(health_of(&ucp, "ucp_443").contains("# path = \"/_ping\"") && !health_of(&ucp, "ucp_443").contains("port"));
    let kube = health_of(&ucp, "ucp_6443");
    assert!(kube.contains("# path = \"/_ping\"") && kube.contains("# port = 443"), "{kube}");
    let dtr = text(&convert(&fixture("dtr.conf")).stdout);
    for pool in ["dtr_443", "dtr_80"] {
        let h = health_of(&dtr, pool);
        assert!(h.contains("# expect_json = { Healthy = true }") && h.contains("# path = \"/_ping\""), "{pool}: {h}");
    }
    assert!(health_of(&dtr, "dtr_80").contains("# port = 443"));
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("nginx.conf");
    std::fs::write(
        &other,
        "stream {\n  upstream k3s { server 10.0.0.1:6443; server 10.0.0.2:6443; }\n  server { listen 6443; proxy_pass k3s; }\n\
         upstream mk8s { server 10.0.0.1:16443; }\n  server { listen 16443; proxy_pass mk8s; }\n\
         upstream mc { server 10.0.0.3:25565; }\n  server { listen 25565; proxy_pass mc; }\n}\n",
    )
    .unwrap();
    let others = text(&convert(&other).stdout);
    for pool in ["k3s", "mk8s", "mc"] {
        let h = health_of(&others, pool);
        assert!(h.contains("# kind = \"tcp\"") && h.contains("not one of UCP's or DTR's"), "{pool}: {h}");
    }
    for toml in [&ucp, &dtr, &others] {
        let on = uncommented_health(toml);
        assert!(on.contains("\n[pool."), "uncommented: {on}");
        let checked = check(&on);
        assert!(checked.status.success(), "{}\n{on}", text(&checked.stderr));
    }
}

/// `proxy_protocol off;` is nginx's default and what ucp-lb does: carried
/// without a word. An unfilled template placeholder is called one. A
/// mistake of the input (the same listen twice) is reported at its place,
/// never as a converter bug.
#[test]
fn input_mistakes_are_the_inputs_and_defaults_are_silent() {
    let dir = tempfile::tempdir().unwrap();
    let conf = |body: &str| {
        let p = dir.path().join("nginx.conf");
        std::fs::write(&p, format!("stream {{\n{body}}}\n")).unwrap();
        convert(&p)
    };
    let out =
        conf("  upstream u { server 10.0.0.1:443; }\n  server { listen 443; proxy_pass u; proxy_protocol off; }\n");
    assert!(out.status.success());
    assert_eq!(text(&out.stderr), "", "proxy_protocol off is nginx's default: no warning");
    let out = conf("  upstream k3s { server ${k3s_ip}:6443; }\n  server { listen 6443; proxy_pass k3s; }\n");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("nginx.conf:2:") && err.contains("${k3s_ip} is a template variable that was never filled in"),
        "{err}"
    );
    let out = conf(
        "  upstream u { server 10.0.0.1:443; }\n  server { listen 443; proxy_pass u; }\n  server { listen 443; proxy_pass u; }\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("nginx.conf:4: listen 443: 0.0.0.0:443 is already listened on at"), "{err}");
    assert!(!err.contains("converter bug"), "{err}");
}

/// `log_format` and `access_log` are carried (the variables ucp-lb has not
/// got are written as "-" and named), `access_log off` too.
#[test]
fn access_logs_and_their_formats_are_carried() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nginx.conf");
    std::fs::write(
        &p,
        "stream {\n  log_format main '$remote_addr [$time_local] $status $ssl_preread_server_name $upstream_addr';\n\
         access_log /var/log/nginx/stream.log main;\n  upstream u { server 10.0.0.1:443; }\n\
         server { listen 443; proxy_pass u; }\n  server { listen 8443; proxy_pass u; access_log off; }\n}\n",
    )
    .unwrap();
    let out = convert(&p);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let toml = text(&out.stdout);
    assert!(
        toml.contains("access_log = \"/var/log/nginx/stream.log\"\naccess_log_format = \"$remote_addr [$time_local] $status - $upstream_addr\""),
        "{toml}"
    );
    assert!(toml.contains("bind = \"0.0.0.0:8443\"\npool = \"u\"\naccess_log = \"off\""), "{toml}");
    let err = text(&out.stderr);
    assert!(err.contains("$ssl_preread_server_name not carried"), "{err}");
    assert!(check(&toml).status.success(), "{}", text(&check(&toml).stderr));
}

/// A client from `src` to `lb`: Some(connection) when served (its bytes
/// echoed), None when closed at once.
async fn serve_from(src: [u8; 4], lb: std::net::SocketAddr) -> Option<tokio::net::TcpStream> {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(std::net::SocketAddr::from((src, 0))).unwrap();
    let mut s = within("connect", s.connect(lb)).await.unwrap();
    within("echo or close", echo_once(&mut s)).await.ok().map(|()| s)
}

/// `allow`/`deny` at stream and server level and `limit_conn` on a zone of
/// `$binary_remote_addr`: converted into `access` and
/// `max_connections_per_client`, and the same clients refused by nginx
/// and by ucp-lb on the converted file.
#[tokio::test]
async fn allow_deny_and_limit_conn_refuse_the_clients_nginx_refused() {
    let Some(bin) = nginx_bin() else { return };
    let echo = Echo::start().await;
    let [own, inherits] = free_addrs();
    let stream = format!(
        "  limit_conn_zone $binary_remote_addr zone=addr:1m;\n  allow 127.0.7.0/24;\n  deny all;\n\
         \x20 upstream b {{ server {}; }}\n\
         \x20 server {{ listen {own}; deny 127.0.7.3; allow 127.0.7.0/29; deny all; limit_conn addr 2; proxy_pass b; }}\n\
         \x20 server {{ listen {inherits}; proxy_pass b; }}\n",
        echo.addr
    );
    let ngx = start_nginx(&bin, &stream).await;
    let keep = tempfile::tempdir().unwrap();
    let conf = keep.path().join("nginx.conf");
    std::fs::copy(&ngx.conf, &conf).unwrap();

    async fn run(own: std::net::SocketAddr, inherits: std::net::SocketAddr) -> Vec<(String, bool)> {
        let mut seen = Vec::new();
        for (lb, name) in [(own, "own"), (inherits, "inherits")] {
            for src in [[127, 0, 7, 1], [127, 0, 7, 3], [127, 0, 7, 7], [127, 0, 7, 9], [127, 0, 8, 1]] {
                seen.push((format!("{name} {src:?}"), serve_from(src, lb).await.is_some()));
            }
        }
        // Two open from one address on `own`; the third is refused.
        let held: Vec<_> = [0, 1, 2].iter().map(|_| [127, 0, 7, 2]).collect();
        let mut open = Vec::new();
        for (i, src) in held.into_iter().enumerate() {
            let s = serve_from(src, own).await;
            seen.push((format!("own 127.0.7.2 #{}", i + 1), s.is_some()));
            open.extend(s);
        }
        seen
    }
    let by_nginx = run(own, inherits).await;
    ngx.stop();

    let out = convert(&conf);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "", "everything carried");
    let toml = text(&out.stdout);
    for want in [
        r#"access = ["deny 127.0.7.3", "allow 127.0.7.0/29", "deny all"]"#,
        "max_connections_per_client = 2",
        r#"access = ["allow 127.0.7.0/24", "deny all"]"#,
    ] {
        assert!(toml.contains(want), "{want} not in:\n{toml}");
    }
    assert_eq!(toml.matches("max_connections_per_client =").count(), 1, "{toml}");
    let lb = start_lb(&(toml.clone() + "\n[admin]\nlisten = \"127.0.0.1:0\"\n")).await;
    let by_lb = run(own, inherits).await;
    assert_eq!(by_lb, by_nginx, "\n{toml}");
    // Not a trivial match: both let some in and refused others.
    assert!(by_nginx.iter().any(|(_, ok)| *ok) && by_nginx.iter().any(|(_, ok)| !ok));
    assert_eq!(by_nginx.last().map(|(_, ok)| *ok), Some(false), "nginx refused the third: {by_nginx:?}");
    drop(lb);
}

/// One `limit_conn_zone` named by two servers: converted into a
/// `[limit.addr]` both listeners name, and a client holding 2 through the
/// first refused on the second by nginx and by ucp-lb alike.
#[tokio::test]
async fn a_zone_two_servers_name_is_one_limit_shared_as_in_nginx() {
    let Some(bin) = nginx_bin() else { return };
    let echo = Echo::start().await;
    let [first, second] = free_addrs();
    let stream = format!(
        "  limit_conn_zone $binary_remote_addr zone=addr:1m;\n\
         \x20 upstream b {{ server {}; }}\n\
         \x20 server {{ listen {first}; limit_conn addr 2; proxy_pass b; }}\n\
         \x20 server {{ listen {second}; limit_conn addr 2; proxy_pass b; }}\n",
        echo.addr
    );
    let ngx = start_nginx(&bin, &stream).await;
    let keep = tempfile::tempdir().unwrap();
    let conf = keep.path().join("nginx.conf");
    std::fs::copy(&ngx.conf, &conf).unwrap();

    async fn run(first: std::net::SocketAddr, second: std::net::SocketAddr) -> Vec<(String, bool)> {
        let mut seen = Vec::new();
        let mut open = Vec::new();
        for i in 1..=2 {
            let s = serve_from([127, 0, 12, 1], first).await;
            seen.push((format!("first #{i}"), s.is_some()));
            open.extend(s);
        }
        seen.push(("second, 2 open on first".into(), serve_from([127, 0, 12, 1], second).await.is_some()));
        seen.push(("another client on second".into(), serve_from([127, 0, 12, 2], second).await.is_some()));
        seen
    }
    let by_nginx = run(first, second).await;
    ngx.stop();

    let out = convert(&conf);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "", "everything carried");
    let toml = text(&out.stdout);
    assert_eq!(toml.matches("limit = \"addr\"").count(), 2, "{toml}");
    assert!(toml.contains("[limit.addr]\nmax_connections_per_client = 2"), "{toml}");
    let lb = start_lb(&(toml.clone() + "\n[admin]\nlisten = \"127.0.0.1:0\"\n")).await;
    let by_lb = run(first, second).await;
    assert_eq!(by_lb, by_nginx, "\n{toml}");
    let oks: Vec<bool> = by_nginx.iter().map(|(_, ok)| *ok).collect();
    assert_eq!(oks, [true, true, false, true], "nginx shares the zone: {by_nginx:?}");
    drop(lb);
}

/// nginx's own `stream_limit_conn.t`, beside real nginx: zone `zone`
/// named by three servers with 1, 5 and 1, `zone2` by two, one of each
/// proxying to the first server. Converted into `[limit.zone]` and
/// `[limit.zone2]` (the server with 5 keeps its number over the shared
/// counts), and every check of the test decided alike: a client holding
/// one through the first is refused there again, served through the other
/// zone and through the server with 5; and once it has closed, a client
/// through `zone2`'s proxy is served, one through `zone`'s ("rejected
/// proxy": the proxy's own connection is counted with the client's) not.
#[tokio::test]
async fn stream_limit_conn_t_decides_as_nginx_with_shared_zones() {
    let Some(bin) = nginx_bin() else { return };
    let echo = Echo::start().await;
    let [first, unlimited, other, via_other, via_same] = free_addrs();
    let stream = format!(
        "  limit_conn_zone $binary_remote_addr zone=zone:1m;\n  limit_conn_zone $binary_remote_addr zone=zone2:1m;\n\
         \x20 server {{ listen {first}; proxy_pass {e}; limit_conn zone 1; }}\n\
         \x20 server {{ listen {unlimited}; proxy_pass {e}; limit_conn zone 5; }}\n\
         \x20 server {{ listen {other}; proxy_pass {e}; limit_conn zone2 1; }}\n\
         \x20 server {{ listen {via_other}; proxy_pass {first}; limit_conn zone2 1; }}\n\
         \x20 server {{ listen {via_same}; proxy_pass {first}; limit_conn zone 1; }}\n",
        e = echo.addr
    );
    let ngx = start_nginx(&bin, &stream).await;
    let keep = tempfile::tempdir().unwrap();
    let conf = keep.path().join("nginx.conf");
    std::fs::copy(&ngx.conf, &conf).unwrap();

    // As the .t file, but "passed" and the long connection from two
    // addresses of their own (so the first's close need not be seen
    // first), and the proxy chain from 127.0.0.1, the address the proxy
    // connects from. `lb`: wait until ucp-lb counts no client before the
    // proxy checks (its closes are seen a moment after the client's).
    async fn run(to: [std::net::SocketAddr; 5], lb: Option<&ucp_lb::Running>) -> Vec<(String, bool)> {
        let [first, unlimited, other, via_other, via_same] = to;
        let settled = || async {
            if let Some(lb) = lb {
                eventually("no client counted", || lb.lb.view().listeners.iter().all(|l| l.clients == 0)).await;
            }
        };
        let (x, y, me) = ([127, 0, 14, 1], [127, 0, 14, 2], [127, 0, 0, 1]);
        let mut seen = vec![("passed".to_owned(), serve_from(x, first).await.is_some())];
        let long = serve_from(y, first).await;
        seen.push(("long connection".into(), long.is_some()));
        seen.push(("rejected same zone".into(), serve_from(y, first).await.is_some()));
        seen.push(("passed different zone".into(), serve_from(y, other).await.is_some()));
        seen.push(("passed same zone unlimited".into(), serve_from(y, unlimited).await.is_some()));
        drop(long);
        settled().await;
        seen.push(("passed proxy".into(), serve_from(me, via_other).await.is_some()));
        settled().await;
        seen.push(("rejected proxy".into(), serve_from(me, via_same).await.is_some()));
        seen
    }
    let by_nginx = run([first, unlimited, other, via_other, via_same], None).await;
    ngx.stop();

    let out = convert(&conf);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "", "everything carried");
    let toml = text(&out.stdout);
    assert_eq!(toml.matches("limit = \"zone\"").count(), 3, "{toml}");
    assert_eq!(toml.matches("limit = \"zone2\"").count(), 2, "{toml}");
    for want in ["[limit.zone]\nmax_connections_per_client = 1", "[limit.zone2]\nmax_connections_per_client = 1"] {
        assert!(toml.contains(want), "{want} not in:\n{toml}");
    }
    assert!(toml.contains("\nmax_connections_per_client = 5  # nginx limit_conn zone 5"), "{toml}");
    let lb = start_lb(&(toml.clone() + "\n[admin]\nlisten = \"127.0.0.1:0\"\n")).await;
    let by_lb = run([first, unlimited, other, via_other, via_same], Some(&lb)).await;
    assert_eq!(by_lb, by_nginx, "\n{toml}");
    let oks: Vec<bool> = by_nginx.iter().map(|(_, ok)| *ok).collect();
    assert_eq!(oks, [true, true, false, true, true, true, false], "nginx: {by_nginx:?}");
    drop(lb);
}

/// A server naming two address zones cannot count in one shared table:
/// its listener counts on its own (the smallest number), which is said;
/// the zone the other servers name alone is still shared by them.
#[test]
fn a_listener_with_two_address_zones_counts_on_its_own_and_it_is_said() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nginx.conf");
    std::fs::write(
        &path,
        "stream {\n  limit_conn_zone $binary_remote_addr zone=addr:1m;\n  limit_conn_zone $remote_addr zone=more:1m;\n\
         \x20 upstream b { server 10.0.0.1:443; }\n\
         \x20 server { listen 443; limit_conn addr 2; limit_conn more 3; proxy_pass b; }\n\
         \x20 server { listen 6443; limit_conn addr 5; proxy_pass b; }\n\
         \x20 server { listen 8443; limit_conn more 4; proxy_pass b; }\n\
         \x20 server { listen 9443; limit_conn more 4; proxy_pass b; }\n}\n",
    )
    .unwrap();
    let out = convert(&path);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let toml = text(&out.stdout);
    assert!(!toml.contains("[limit.addr]") && !toml.contains("[limit.more]"), "{toml}");
    assert!(toml.contains("max_connections_per_client = 2") && toml.contains("max_connections_per_client = 5"));
    let warnings = text(&out.stderr);
    assert!(warnings.contains("limit_conn addr: named by 2 listeners, some beside another zone"), "{warnings}");
    assert!(warnings.contains("limit_conn more: named by 3 listeners"), "{warnings}");
}

#[test]
fn limit_conn_on_another_key_is_said_not_carried() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nginx.conf");
    std::fs::write(
        &path,
        "stream {\n  limit_conn_zone $server_addr zone=perserver:1m;\n  upstream b { server 10.0.0.1:443; }\n\
         \x20 server { listen 443; limit_conn perserver 100; limit_conn nozone 3; proxy_pass b; }\n}\n",
    )
    .unwrap();
    let out = convert(&path);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let warnings = text(&out.stderr);
    assert!(warnings.contains("limit_conn perserver 100: counts by $server_addr: not carried over"), "{warnings}");
    assert!(warnings.contains("limit_conn nozone 3: no limit_conn_zone named nozone"), "{warnings}");
    assert!(!text(&out.stdout).contains("max_connections_per_client ="));
}

/// `ssl_preread on` with `map $ssl_preread_server_name` (exact,
/// `.domain` and `default` entries, `hostnames`), `proxy_pass $variable`,
/// `allow`/`deny` and `limit_conn` on one 443: converted into `routes`,
/// and every client (rustls, with a client certificate) lands where real
/// nginx sent it, its TLS untouched.
#[tokio::test]
async fn server_name_routing_by_map_goes_where_nginx_sent_each_client() {
    use common::standin::TestCa;
    use common::tls::{ask, client_config, tls_backend};
    let Some(bin) = nginx_bin() else { return };
    let ca = TestCa::new("convert CA").unwrap();
    let names = ["ucp.test", "dtr.test", "*.dtr.test", "localhost", "127.0.0.1"];
    let ucp = tls_backend("ucp", &ca, &names, true).await;
    let dtr = tls_backend("dtr", &ca, &names, false).await;
    let other = tls_backend("other", &ca, &names, false).await;
    let [vip] = free_addrs();
    let stream = format!(
        "  limit_conn_zone $binary_remote_addr zone=addr:1m;\n\
         \x20 map $ssl_preread_server_name $backend {{\n    hostnames;\n    ucp.test ucp;\n    .dtr.test dtr;\n    default other;\n  }}\n\
         \x20 upstream ucp {{ server {ucp}; }}\n  upstream dtr {{ server {dtr}; }}\n  upstream other {{ server {other}; }}\n\
         \x20 server {{\n    listen {vip};\n    ssl_preread on;\n    preread_timeout 10s;\n    allow 127.0.0.0/8;\n    deny all;\n\
         \x20   limit_conn addr 50;\n    proxy_pass $backend;\n  }}\n"
    );
    let ngx = start_nginx(&bin, &stream).await;
    let keep = tempfile::tempdir().unwrap();
    let conf = keep.path().join("nginx.conf");
    std::fs::copy(&ngx.conf, &conf).unwrap();
    let cfg = client_config(&ca);
    let clients = [Some("ucp.test"), Some("dtr.test"), Some("x.dtr.test"), Some("UCP.test"), Some("localhost"), None];
    let mut by_nginx = Vec::new();
    for sni in clients {
        by_nginx.push(within("through nginx", ask(&cfg, vip, sni)).await.unwrap_or_else(|e| format!("error: {e}")));
    }
    ngx.stop();

    let out = convert(&conf);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let toml = text(&out.stdout);
    for want in [
        r#"routes = { "ucp.test" = "ucp", "dtr.test" = "dtr", "*.dtr.test" = "dtr" }"#,
        r#"pool = "other""#,
        r#"preread_timeout = "10s""#,
        r#"access = ["allow 127.0.0.0/8", "deny all"]"#,
        "max_connections_per_client = 50",
    ] {
        assert!(toml.contains(want), "{want} not in:\n{toml}");
    }
    assert_eq!(text(&out.stderr), "", "everything carried");
    let lb = start_lb(&(toml.clone() + "\n[admin]\nlisten = \"127.0.0.1:0\"\n")).await;
    let mut by_lb = Vec::new();
    for sni in clients {
        by_lb.push(within("through ucp-lb", ask(&cfg, vip, sni)).await.unwrap_or_else(|e| format!("error: {e}")));
    }
    assert_eq!(by_lb, by_nginx, "\n{toml}");
    assert_eq!(by_nginx[0], "ucp sni=ucp.test client_cert=true", "nginx routed with mutual TLS intact");
    assert!(by_nginx[1].starts_with("dtr ") && by_nginx[5].starts_with("other "), "{by_nginx:?}");
    drop(lb);
}

/// `listen ... so_keepalive=30m::10` and `proxy_socket_keepalive on`: what
/// real nginx sets on its sockets (read back with getsockopt from its
/// process), and what the converted config makes ucp-lb set. The fields
/// nginx leaves to the kernel (the interval here; every timing with `on`)
/// take ucp-lb's defaults, which the converted file says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_settings_carry_what_nginx_sets() {
    let Some(bin) = nginx_bin() else { return };
    let echo = Echo::start().await;
    let addr = free_addr();
    let stream = format!(
        "  upstream b {{ server {}; }}\n\
         \x20 server {{ listen {addr} so_keepalive=30m::10; proxy_socket_keepalive on; proxy_pass b; }}\n",
        echo.addr
    );
    let ngx = start_nginx(&bin, &stream).await;
    let (client, server) = through(ngx.pid(), addr, echo.addr).await;
    let kernel = |f: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/tcp_keepalive_{f}")).unwrap().trim().parse().unwrap()
    };
    let (k_idle, k_intvl, k_probes) = (kernel("time"), kernel("intvl"), kernel("probes") as u32);
    assert_eq!(client, secs(1800, k_intvl, 10), "nginx: idle and count as written, the interval the kernel's");
    assert_eq!(server, secs(k_idle, k_intvl, k_probes), "nginx: proxy_socket_keepalive on, the kernel's timings");
    let keep_dir = tempfile::tempdir().unwrap();
    let conf = keep_dir.path().join("nginx.conf");
    std::fs::copy(&ngx.conf, &conf).unwrap();
    ngx.stop();

    let out = convert(&conf);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let toml = text(&out.stdout);
    assert!(toml.contains(r#"client_keepalive = { idle = "30m", count = 10 }"#), "{toml}");
    assert!(toml.contains("server_keepalive = true"), "{toml}");
    assert!(toml.contains("so_keepalive=30m::10") && toml.contains("for interval"), "the note: {toml}");
    let lb = start_lb(&(toml.clone() + "\n[admin]\nlisten = \"127.0.0.1:0\"\n")).await;
    let (client, server) = through(std::process::id(), addr, echo.addr).await;
    assert_eq!(client, secs(1800, 10, 10), "ucp-lb: nginx's idle and count, its own interval");
    assert_eq!(server, secs(60, 10, 6), "ucp-lb: keepalive on, its own timings");
    lb.shutdown().await;
}

/// One connection through the proxy of process `pid` listening on `addr`
/// to `backend`: the keepalive of the proxy's client socket and of its
/// server socket (the latter once set: ucp-lb sets it on connections that
/// live past 10 to 15 s).
async fn through(pid: u32, addr: std::net::SocketAddr, backend: std::net::SocketAddr) -> (Keep, Keep) {
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    echo_once(&mut c).await.unwrap();
    let me = c.local_addr().unwrap();
    let find = |client: bool| {
        sockets_of(pid)
            .into_iter()
            .find(|(l, p, _)| if client { *l == addr && *p == me } else { *p == backend && *l != backend })
            .map(|(_, _, fd)| keep(&fd))
            .expect("the proxy's socket")
    };
    let client = find(true);
    // None (which the caller's assert then shows) if it never comes.
    let server = poll_for(LATE_WAKE_DEADLINE, || std::future::ready(find(false))).await;
    (client, server)
}

fn write_conf(dir: &Path, name: &str, conf: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, conf).unwrap();
    path
}

/// What ucp-lb has is carried, not warned about: slow_start, resolver
/// valid= (its address said once), nginx Plus health_check with its match,
/// proxy_half_close (a note); tcp_nodelay and zone named in one line; a
/// PROXY-protocol listener carried as one that requires the header.
#[test]
fn what_ucp_lb_has_is_carried_and_every_warning_is_true() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_conf(
        dir.path(),
        "plus.conf",
        "stream {\n    resolver 10.0.0.2 valid=30s;\n    proxy_half_close on;\n    tcp_nodelay on;\n\
         \x20   match ping { send \"GET /_ping HTTP/1.0\\r\\n\\r\\n\"; expect ~ \"200 OK\"; }\n\
         \x20   upstream u { zone u 64k; server 10.0.0.1:443 slow_start=30s; server 10.0.0.2:443; }\n\
         \x20   server { listen 443; proxy_pass u; health_check interval=3s passes=2 fails=3 port=8443 match=ping; }\n\
         \x20   upstream t { server 10.0.1.1:6443; }\n\
         \x20   server { listen 6443; proxy_pass t; health_check; health_check_timeout 2s; }\n\
         \x20   server { listen 8443 proxy_protocol; proxy_pass u; }\n}\n",
    );
    let p = path.display().to_string();
    let out = convert(&path);
    let (toml, err) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "no listener is missing: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert!(!err.contains("error:"), "{err}");
    // The only warning: the resolver's address, said once.
    let warnings: Vec<&&str> = lines.iter().filter(|l| l.starts_with("warning: ")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(warnings[0].contains("the resolver address 10.0.0.2 has no ucp-lb equivalent"), "{err}");
    assert!(!err.contains("not carried over: no ucp-lb equivalent"), "{err}");
    assert!(
        err.contains(&format!(
            "note: ignored, they make no difference in ucp-lb: tcp_nodelay on ({p}:4, ucp-lb always sets \
             TCP_NODELAY); zone u 64k ({p}:6, ucp-lb's workers share server state)\n"
        )),
        "{err}"
    );
    assert!(err.contains(&format!("note: {p}:3: proxy_half_close on;: nothing to write: ucp-lb always passes")));
    for want in [
        "resolve_interval = \"30s\"",
        "{ address = \"10.0.0.1:443\", slow_start = \"30s\" },",
        "[pool.u.health]\nkind = \"http\"\npath = \"/_ping\"\nexpect_status = [200]\ninterval = \"3s\"\ntimeout = \"5s\"\n\
         rise = 2  # nginx passes=\nfall = 3  # nginx fails=\nport = 8443\n",
        "[pool.t.health]\nkind = \"tcp\"\ninterval = \"5s\"\ntimeout = \"2s\"\nrise = 1  # nginx passes=\nfall = 1",
        "bind = \"0.0.0.0:8443\"\npool = \"u\"\nproxy_protocol = true",
    ] {
        assert!(toml.contains(want), "missing {want:?} in\n{toml}");
    }
    let checked = check(&toml);
    assert!(checked.status.success(), "{}\n{toml}", text(&checked.stderr));
    let summary = text(&checked.stdout);
    assert!(summary.contains("0.0.0.0:443 -> pool u") && summary.contains("0.0.0.0:8443 -> pool u"), "{summary}");
    assert!(!toml.contains("MISSING"), "{toml}");

    // A match that is no GET-and-status: the TCP check, said; a match no
    // health_check names: said too.
    let path = write_conf(
        dir.path(),
        "raw.conf",
        "stream {\n  match unused { send \"x\"; expect \"y\"; }\n  match raw { send \"PING\\r\\n\"; expect ~ \"PONG\"; }\n\
         \x20 upstream u { server 10.0.0.1:443; }\n  server { listen 443; proxy_pass u; health_check match=raw fails=2; }\n}\n",
    );
    let p = path.display().to_string();
    let out = convert(&path);
    let (toml, err) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{err}");
    assert_eq!(
        err,
        format!(
            "warning: {p}:5: health_check match=raw fails=2;: carried as [pool.u.health]; not carried over: \
             match=raw ({p}:3: only a GET and an expected status map onto ucp-lb's http check; a TCP connect check \
             used)\nwarning: {p}:2: match unused {{ ... }}: not carried over: no health_check names it\n"
        )
    );
    assert!(toml.contains("[pool.u.health]\nkind = \"tcp\"\ninterval = \"5s\""), "{toml}");
    assert!(check(&toml).status.success());
}

/// Docker's DTR example pasted with its placeholders: each server is named
/// as a placeholder, every error of the file comes in one run with its
/// file:line, and a file that cannot be read has no line 0.
#[test]
fn placeholders_and_every_error_of_a_file_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let dtr = std::fs::read_to_string(fixture("dtr.conf")).unwrap();
    let mut pasted = dtr.clone();
    for (n, ip) in [(1, "172.31.2.21"), (2, "172.31.2.22"), (3, "172.31.2.23")] {
        pasted = pasted.replace(&format!("{ip}:"), &format!("<DTR_REPLICA_{n}_IP>:"));
    }
    let path = write_conf(dir.path(), "dtr.conf", &pasted);
    let p = path.display().to_string();
    let out = convert(&path);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "nothing printed on error");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 6, "one error per server line:\n{err}");
    for (line, want) in lines.iter().zip([15, 16, 17, 20, 21, 22]) {
        assert!(line.starts_with(&format!("{p}:{want}: server <DTR_REPLICA_")), "{line}");
        assert!(line.contains("is a placeholder"), "{line}");
        assert!(!line.contains("needs the port too"), "{line}");
    }
    // Errors of different kinds, all in one run, in the file's order.
    let path = write_conf(
        dir.path(),
        "many.conf",
        "stream {\n  upstream u { server 10.0.0.1:1 max_fails=x; }\n  upstream v { server 10.0.0.1; }\n\
         \x20 server { listen 1; proxy_pass nowhere; }\n  server { listen 2; proxy_pass u; proxy_timeout 5y; proxy_connect_timeout zz; }\n}\n",
    );
    let p = path.display().to_string();
    let err = text(&convert(&path).stderr);
    let want = [
        format!("{p}:2: max_fails: expected a whole number"),
        format!("{p}:3: expected host:port, found \"10.0.0.1\""),
        format!("{p}:4: proxy_pass nowhere: no upstream"),
        format!("{p}:5: proxy_timeout: expected an nginx time"),
        format!("{p}:5: proxy_connect_timeout: expected an nginx time"),
    ];
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), want.len(), "{err}");
    for (l, w) in lines.iter().zip(&want) {
        assert!(l.starts_with(w.as_str()), "want {w}\ngot {err}");
    }
    // A file that cannot be read: its name, no line 0.
    let out = convert(Path::new("/nonexistent.conf"));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "/nonexistent.conf: cannot read the nginx config: No such file or directory (os error 2)\n"
    );
    let http = write_conf(dir.path(), "http.conf", "events {}\nhttp { server { listen 80; } }\n");
    let err = text(&convert(&http).stderr);
    assert!(err.starts_with(&format!("{}: no stream {{}} block", http.display())), "{err}");
    assert!(!err.contains(":0:"), "{err}");
}

/// Writes `hello`, half-closes, and reads to the end through `lb`: what
/// comes back before the close.
async fn after_half_close(lb: std::net::SocketAddr) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within("a half-closed round trip", async {
        let mut s = tokio::net::TcpStream::connect(lb).await.unwrap();
        s.write_all(b"hello").await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got).await;
        got
    })
    .await
}

/// Round trip: nginx runs a config with `proxy_half_close on`,
/// `tcp_nodelay on`, `resolver ... valid=` and a `zone`; its conversion
/// has no warning but the resolver's address, and ucp-lb on it answers a
/// half-closed client as nginx does (the reply still comes back).
#[tokio::test]
async fn half_close_and_no_difference_directives_round_trip() {
    let Some(bin) = nginx_bin() else { return };
    let echo = Echo::start().await;
    let [listen] = free_addrs();
    let stream = format!(
        "  proxy_half_close on;\n  tcp_nodelay on;\n  resolver 127.0.0.1 valid=45s;\n\
         \x20 upstream u {{\n    zone u 64k;\n    server {};\n  }}\n  server {{ listen {listen}; proxy_pass u; }}\n",
        echo.addr
    );
    let ngx = start_nginx(&bin, &stream).await;
    let keep = tempfile::tempdir().unwrap();
    let conf = keep.path().join("nginx.conf");
    std::fs::copy(&ngx.conf, &conf).unwrap();
    let via_nginx = after_half_close(listen).await;
    ngx.stop();
    assert_eq!(via_nginx, b"hello", "nginx with proxy_half_close on");

    let out = convert(&conf);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(warnings[0].contains("the resolver address 127.0.0.1 has no ucp-lb equivalent"), "{err}");
    assert!(err.contains("note: ignored, they make no difference in ucp-lb: tcp_nodelay on ("), "{err}");
    assert!(err.contains("zone u 64k ("), "{err}");
    let toml = text(&out.stdout);
    assert!(toml.contains("resolve_interval = \"45s\""), "{toml}");
    let lb = start_lb(&(toml.clone() + "\n[admin]\nlisten = \"127.0.0.1:0\"\n")).await;
    assert_eq!(lb.listener_addrs(), vec![listen], "{toml}");
    assert_eq!(after_half_close(listen).await, via_nginx, "{toml}");
}

/// `proxy_protocol on` (nginx sends v1): an nginx behind, reading the
/// header, answers a client from 127.0.0.77 the same through nginx and
/// through ucp-lb on the converted config: the client's address and port,
/// and the address and port it connected to.
#[tokio::test]
async fn proxy_protocol_on_sends_the_client_address_as_nginx_does() {
    let Some(bin) = nginx_bin() else { return };
    let [front, back] = free_addrs();
    let behind = start_nginx(
        &bin,
        &format!(
            "  server {{ listen {back} proxy_protocol;\n    return \"$proxy_protocol_addr:$proxy_protocol_port \
             $proxy_protocol_server_addr:$proxy_protocol_server_port\\n\"; }}"
        ),
    )
    .await;
    let ngx = start_nginx(&bin, &format!("  server {{ listen {front}; proxy_pass {back}; proxy_protocol on; }}")).await;
    let (by_nginx, port) = within("nginx", answer_from_77(front, b"")).await;
    assert_eq!(by_nginx, format!("127.0.0.77:{port} {front}"), "nginx sends the client's address");
    let keep_dir = tempfile::tempdir().unwrap();
    let conf = keep_dir.path().join("nginx.conf");
    std::fs::copy(&ngx.conf, &conf).unwrap();
    ngx.stop();

    let out = convert(&conf);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let toml = text(&out.stdout);
    assert!(toml.contains("send_proxy_protocol = \"v1\"  # nginx proxy_protocol on"), "{toml}");
    let lb = start_lb(&(toml.clone() + "\n[admin]\nlisten = \"127.0.0.1:0\"\n")).await;
    let (by_ucp_lb, port) = within("ucp-lb", answer_from_77(front, b"")).await;
    assert_eq!(by_ucp_lb, format!("127.0.0.77:{port} {front}"), "ucp-lb sends what nginx sent");
    lb.shutdown().await;
    drop(behind);
}

/// A listener reading PROXY headers and a pool sending them, nginx and
/// converted: a client from a trusted source (127.0.0.0/8) names
/// 192.0.2.9 in its v1 header, and the nginx behind is told 192.0.2.9;
/// the access log's PROXY variables are carried.
#[tokio::test]
async fn a_proxy_listener_passes_the_real_address_on_as_nginx_does() {
    let Some(bin) = nginx_bin() else { return };
    let [front, back] = free_addrs();
    let behind =
        start_nginx(&bin, &format!("  server {{ listen {back} proxy_protocol; return \"$proxy_protocol_addr\\n\"; }}"))
            .await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let ngx = start_nginx(
        &bin,
        &format!(
            "  log_format pp '$remote_addr $realip_remote_addr $proxy_protocol_addr:$proxy_protocol_port';\n\
             \x20 server {{ listen {front} proxy_protocol; set_real_ip_from 127.0.0.0/8; proxy_protocol_timeout 5s;\n\
             \x20   access_log {} pp; proxy_pass {back}; proxy_protocol on; }}",
            log.display()
        ),
    )
    .await;
    let header = b"PROXY TCP4 192.0.2.9 10.0.0.1 4000 443\r\n";
    let (by_nginx, _) = within("nginx", answer_from_77(front, header)).await;
    assert_eq!(by_nginx, "192.0.2.9", "nginx passes the header's address on");
    let keep_dir = tempfile::tempdir().unwrap();
    let conf = keep_dir.path().join("nginx.conf");
    std::fs::copy(&ngx.conf, &conf).unwrap();
    ngx.stop();

    let out = convert(&conf);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let toml = text(&out.stdout);
    for want in [
        "proxy_protocol = true",
        "real_ip_from = [\"127.0.0.0/8\"]",
        "proxy_protocol_timeout = \"5s\"",
        "$remote_addr $realip_remote_addr $proxy_protocol_addr:$proxy_protocol_port",
    ] {
        assert!(toml.contains(want), "missing {want:?} in\n{toml}");
    }
    let lb = start_lb(&(toml.clone() + "\n[admin]\nlisten = \"127.0.0.1:0\"\n")).await;
    let (by_ucp_lb, _) = within("ucp-lb", answer_from_77(front, header)).await;
    assert_eq!(by_ucp_lb, "192.0.2.9", "ucp-lb passes the header's address on");
    lb.shutdown().await;
    drop(behind);
}
