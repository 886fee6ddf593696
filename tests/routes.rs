//! Routing by TLS server name on one listener without terminating TLS:
//! real rustls clients (and `openssl s_client -servername`) reach the
//! pool their name routes to and complete their handshake, mutual TLS
//! included, with the backend; no name, unknown names, non-TLS clients,
//! stalled and oversized hellos have their defined outcomes; a reload's
//! routes apply to new clients only.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use common::standin::TestCa;
use common::tls::{ask, client_config, tls_backend};
use common::*;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Setup {
    lb: ucp_lb::Running,
    ca: TestCa,
    cfg: Arc<rustls::ClientConfig>,
    echo: Echo,
}

/// Backends: `ucp` (mutual TLS), `dtr`, `other`; listener 0 routes
/// `extra` plus the names below with `other` for the rest, listener 1
/// routes only `ucp.test` and closes the rest, listener 2 sends the rest
/// to a plain echo server.
async fn setup(extra: &str) -> Setup {
    let ca = TestCa::new("routes CA").unwrap();
    let names = ["ucp.test", "dtr.test", "*.dtr.test", "localhost", "127.0.0.1"];
    let ucp = tls_backend("ucp", &ca, &names, true).await;
    let dtr = tls_backend("dtr", &ca, &names, false).await;
    let other = tls_backend("other", &ca, &names, false).await;
    let echo = Echo::start().await;
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[listener]]\nbind = \"127.0.0.1:0\"\npool = \"other\"\npreread_timeout = \"500ms\"\n\
         routes = {{ \"ucp.test\" = \"ucp\", \"DTR.test\" = \"dtr\", \"*.dtr.test\" = \"dtr\"{extra} }}\n\
         [[listener]]\nbind = \"127.0.0.1:0\"\nroutes = {{ \"ucp.test\" = \"ucp\" }}\n\
         [[listener]]\nbind = \"127.0.0.1:0\"\npool = \"echo\"\nroutes = {{ \"ucp.test\" = \"ucp\" }}\n\
         [pool.ucp]\nservers = [\"{ucp}\"]\n[pool.dtr]\nservers = [\"{dtr}\"]\n[pool.other]\nservers = [\"{other}\"]\n\
         [pool.echo]\nservers = [\"{}\"]\n[pool.gone]\nservers = [\"{}\"]\nretries = 0\n",
        echo.addr,
        refusing_addr()
    );
    let lb = start_lb(&toml).await;
    let cfg = client_config(&ca);
    Setup { lb, ca, cfg, echo }
}

fn listener(lb: &ucp_lb::Running, i: usize) -> ucp_lb::view::ListenerStatus {
    let addr = lb.listener_addrs()[i];
    lb.lb.view().listeners.into_iter().find(|l| l.local == addr).unwrap()
}

#[tokio::test]
async fn server_names_on_one_listener_reach_their_pools_with_tls_untouched() {
    let s = setup(", \"gone.test\" = \"gone\"").await;
    let lb = s.lb.listener_addrs()[0];
    for (sni, want) in [
        (Some("ucp.test"), "ucp sni=ucp.test client_cert=true"),
        (Some("dtr.test"), "dtr sni=dtr.test client_cert=false"),
        (Some("x.dtr.test"), "dtr sni=x.dtr.test client_cert=false"),
        (None, "other sni=- client_cert=false"),
        (Some("localhost"), "other sni=localhost client_cert=false"),
    ] {
        let got = within("TLS exchange", ask(&s.cfg, lb, sni)).await.unwrap_or_else(|e| panic!("{sni:?}: {e}"));
        assert_eq!(got, want, "client naming {sni:?}");
    }
    let st = listener(&s.lb, 0);
    let count = |name: &str| st.routes.iter().find(|r| r.name == name).map(|r| r.connections);
    assert_eq!(
        (count("ucp.test"), count("dtr.test"), count("*.dtr.test"), count("")),
        (Some(1), Some(1), Some(1), Some(2))
    );
    // A route whose pool cannot take the client counts it as refused.
    assert!(ask(&s.cfg, lb, Some("gone.test")).await.is_err());
    let gone = listener(&s.lb, 0).routes.into_iter().find(|r| r.name == "gone.test").unwrap();
    assert_eq!((gone.connections, gone.refused), (1, 1), "{gone:?}");
    // The listener without a pool for the rest closes unknown names.
    let closed = s.lb.listener_addrs()[1];
    assert!(ask(&s.cfg, closed, Some("localhost")).await.is_err());
    assert_eq!(ask(&s.cfg, closed, Some("ucp.test")).await.unwrap(), "ucp sni=ucp.test client_cert=true");
    assert_eq!(listener(&s.lb, 1).rejected_no_route, 1);
    let metrics = http_raw(s.lb.admin_addr().unwrap(), "GET", "/metrics", None).await;
    let series = format!("ucp_lb_route_connections_total{{listener=\"{lb}\",route=\"ucp.test\",pool=\"ucp\"}} 1");
    assert!(metrics.contains(&series), "{series} not in:\n{metrics}");
    let _ = &s.ca;
}

#[tokio::test]
async fn openssl_s_client_with_servername_is_routed() {
    let Some(openssl) = external_tool(&["/usr/bin/openssl", "/usr/local/bin/openssl"], "openssl") else { return };
    let s = setup("").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &s.ca.pem).unwrap();
    let lb = s.lb.listener_addrs()[0];
    for (sni, want) in [("dtr.test", "dtr sni=dtr.test"), ("x.dtr.test", "dtr sni=x.dtr.test")] {
        let out = tokio::task::spawn_blocking({
            let (openssl, ca) = (openssl.clone(), ca.clone());
            move || {
                let mut child = std::process::Command::new(openssl)
                    .args([
                        "s_client",
                        "-quiet",
                        "-verify_return_error",
                        "-connect",
                        &lb.to_string(),
                        "-servername",
                        sni,
                    ])
                    .arg("-CAfile")
                    .arg(&ca)
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap();
                let mut stdin = child.stdin.take().unwrap();
                stdin.write_all(b"hello\n").unwrap();
                let mut line = String::new();
                let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
                drop(stdin);
                let _ = child.kill();
                let _ = child.wait();
                line
            }
        });
        let line = within("openssl s_client", out).await.unwrap();
        assert!(line.starts_with(want), "openssl -servername {sni}: {line:?}");
    }
}

/// The first flight of a rustls client naming `sni`, as bytes.
fn client_hello(cfg: &Arc<rustls::ClientConfig>, sni: &str) -> (rustls::ClientConnection, Vec<u8>) {
    let mut conn = rustls::ClientConnection::new(cfg.clone(), ServerName::try_from(sni.to_owned()).unwrap()).unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    (conn, hello)
}

#[tokio::test]
async fn a_hello_sent_one_byte_at_a_time_is_routed_and_the_handshake_completes() {
    let s = setup("").await;
    let lb = s.lb.listener_addrs()[0];
    let cfg = s.cfg.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let (mut conn, hello) = client_hello(&cfg, "ucp.test");
        let mut tcp = std::net::TcpStream::connect(lb).unwrap();
        tcp.set_nodelay(true).unwrap();
        tcp.set_read_timeout(Some(DEADLINE)).unwrap();
        // One segment per byte (no Nagle), so the hello arrives split.
        for b in &hello {
            tcp.write_all(std::slice::from_ref(b)).unwrap();
        }
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).unwrap();
        }
        conn.writer().write_all(b"hello\n").unwrap();
        conn.complete_io(&mut tcp).unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 256];
        while !answer.ends_with(b"\n") {
            conn.complete_io(&mut tcp).unwrap();
            match conn.reader().read(&mut buf) {
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        (hello.len(), String::from_utf8(answer).unwrap())
    });
    let (len, answer) = within("split hello", answer).await.unwrap();
    assert!(len > 200, "a real hello ({len} bytes)");
    assert_eq!(answer.trim(), "ucp sni=ucp.test client_cert=true");
}

#[tokio::test]
async fn stalled_oversized_and_non_tls_clients_have_defined_outcomes() {
    let s = setup("").await;
    let routed = s.lb.listener_addrs()[0];
    // Stalled: half a hello, then nothing: closed at the 500 ms timeout.
    let (_, hello) = client_hello(&s.cfg, "ucp.test");
    let mut stalled = TcpStream::connect(routed).await.unwrap();
    stalled.write_all(&hello[..hello.len() / 2]).await.unwrap();
    assert!(within("the stalled client is closed", closed(&mut stalled)).await);
    // Closed for the stall, nothing else. (That the stall is measured
    // against preread_timeout is proved on a paused clock below.)
    let st = listener(&s.lb, 0);
    assert_eq!((st.rejected_hello_timeout, st.rejected_hello_too_large, st.not_tls), (1, 0, 0), "{st:?}");
    // Oversized: a handshake record that is still not a complete hello
    // after 20 KiB.
    let mut big = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x50, 0x00];
    big.resize(20 * 1024, 0x42);
    let mut large = TcpStream::connect(routed).await.unwrap();
    let _ = large.write_all(&big).await;
    assert!(within("the oversized hello is refused", closed(&mut large)).await);
    let st = listener(&s.lb, 0);
    assert_eq!((st.rejected_hello_timeout, st.rejected_hello_too_large), (1, 1), "{st:?}");
    // Not TLS: to the pool for the rest (a plain echo on listener 2), or
    // closed where there is none (listener 1).
    let mut plain = TcpStream::connect(s.lb.listener_addrs()[2]).await.unwrap();
    within("echo", echo_once(&mut plain)).await.unwrap();
    assert_eq!(s.echo.count(), 1);
    let mut refused = TcpStream::connect(s.lb.listener_addrs()[1]).await.unwrap();
    refused.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    assert!(within("non-TLS without a pool is closed", closed(&mut refused)).await);
    let (l1, l2) = (listener(&s.lb, 1), listener(&s.lb, 2));
    assert_eq!((l1.not_tls, l1.rejected_no_route, l2.not_tls), (1, 1, 1));
}

/// On a paused clock, which moves only to the next timer: a hello that
/// stops halfway fails at `preread_timeout` exactly, not before.
#[tokio::test(start_paused = true)]
async fn a_stalled_hello_fails_at_preread_timeout_not_before() {
    let l = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let mut c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (server_side, _) = l.accept().await.unwrap();
    let (_, hello) = client_hello(&client_config(&TestCa::new("routes CA").unwrap()), "ucp.test");
    // The half is in the kernel before the clock starts.
    c.write_all(&hello[..hello.len() / 2]).await.unwrap();
    let preread_timeout = Duration::from_millis(500);
    let t0 = tokio::time::Instant::now();
    let got = ucp_lb::wire::sni::preread(&server_side, ucp_lb::wire::sni::HELLO_LIMIT, preread_timeout).await;
    assert!(matches!(got, Err(ucp_lb::wire::sni::Failed::Timeout)), "a stalled hello times out");
    assert_eq!(t0.elapsed(), preread_timeout, "at preread_timeout on the paused clock");
}

#[tokio::test]
async fn a_reload_reroutes_new_clients_while_open_ones_keep_their_pool() {
    let ca = TestCa::new("routes CA").unwrap();
    let names = ["ucp.test", "localhost", "127.0.0.1"];
    let ucp = tls_backend("ucp", &ca, &names, true).await;
    let dtr = tls_backend("dtr", &ca, &names, false).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    let config = |to: &str| {
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nbind = \"127.0.0.1:0\"\nroutes = {{ \"ucp.test\" = \"{to}\" }}\n\
             [pool.ucp]\nservers = [\"{ucp}\"]\n[pool.dtr]\nservers = [\"{dtr}\"]\n"
        )
    };
    std::fs::write(&path, config("ucp")).unwrap();
    let lb = start_lb_file(&path).await;
    let addr = lb.listener_addrs()[0];
    let cfg = client_config(&ca);
    // An open session to ucp.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(ServerName::try_from("ucp.test").unwrap(), tcp)
        .await
        .unwrap();
    let mut open = tokio::io::BufReader::new(tls);
    let mut line = String::new();
    open.get_mut().write_all(b"1\n").await.unwrap();
    open.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("ucp "), "{line}");

    std::fs::write(&path, config("dtr")).unwrap();
    lb.reload().await.unwrap();
    assert!(ask(&cfg, addr, Some("ucp.test")).await.unwrap().starts_with("dtr "), "a new client follows the new route");
    line.clear();
    open.get_mut().write_all(b"2\n").await.unwrap();
    open.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("ucp "), "the open session stays with its pool: {line}");
}

#[test]
fn check_names_each_bad_route_at_its_place() {
    let toml = "[[listener]]\nbind = \"127.0.0.1:0\"\nroutes = { \"ucp test\" = \"p\", \"dtr.test\" = \"nope\", \"UCP.test\" = \"p\", \"ucp.TEST\" = \"p\" }\n\
                preread_timeout = \"0\"\n[pool.p]\nservers = [\"127.0.0.1:9\"]\n";
    let err = ucp_lb::config::parse(toml, "lb.toml").unwrap_err().to_string();
    for want in [
        "lb.toml:3:12: listener[0].routes.\"ucp test\": \"ucp test\" is not a server name",
        "lb.toml:3:43: listener[0].routes.\"dtr.test\": no pool named \"nope\"",
        "listener[0].routes.\"ucp.TEST\": ucp.test is routed twice",
        "listener[0].preread_timeout: must be longer than 0",
    ] {
        assert!(err.contains(want), "{want:?} not in:\n{err}");
    }
    // Without routes, a listener still needs its pool.
    let err = ucp_lb::config::parse(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[pool.p]\nservers = [\"127.0.0.1:9\"]\n",
        "lb.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("listener[0].pool: missing key"), "{err}");
}
