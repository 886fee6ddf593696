//! A pool's `send_proxy_protocol` against the real thing: nginx behind
//! ucp-lb, with `listen ... proxy_protocol`, tells each client the address
//! the header named; the pool's checks pass through nginx's PROXY listener
//! (and fail without the header); `check` warns of headers sent to UCP's
//! and the Kubernetes API's ports. The ucp-lb here is the binary.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use common::nginx::{answer_from_77, free_addrs, nginx_bin, start_nginx, start_nginx_with};
use common::{BIN, Proc, http_raw, poll_for, within};

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("lb.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn nginx_behind_sees_the_clients_own_address_in_v1_and_v2() {
    let Some(bin) = nginx_bin() else { return };
    let [pp, v1, v2, routed] = free_addrs();
    let nginx = start_nginx(
        &bin,
        &format!("server {{ listen {pp} proxy_protocol; return \"$proxy_protocol_addr:$proxy_protocol_port\\n\"; }}"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"\"\n\
             [[listener]]\nbind = \"{v1}\"\npool = \"v1\"\n\
             [[listener]]\nbind = \"{v2}\"\npool = \"v2\"\n\
             [[listener]]\nbind = \"{routed}\"\npool = \"v2\"\nroutes = {{ \"x.test\" = \"v1\" }}\n\
             [pool.v1]\nservers = [\"{pp}\"]\nsend_proxy_protocol = \"v1\"\n\
             [pool.v2]\nservers = [\"{pp}\"]\nsend_proxy_protocol = \"v2\"\n"
        ),
    );
    let lb = Proc::lb(&config);
    lb.wait_for_line(&format!("local={routed}")).await;
    for (what, addr, first) in [
        ("v1", v1, &b""[..]),
        ("v2", v2, b""),
        // A routed listener reads the first bytes (not TLS here: the pool
        // for the rest takes them) and sends them after the header.
        ("v2 with the bytes read first", routed, b"not a hello\n"),
    ] {
        let (line, port) = within(what, answer_from_77(addr, first)).await;
        assert_eq!(line, format!("127.0.0.77:{port}"), "{what}: nginx saw another client address");
    }
    drop(lb);
    drop(nginx);
}

/// The check state of pool `pool`'s one server in a /status.
fn check_state(st: &serde_json::Value, pool: &str) -> (String, String) {
    let pools = st["pools"].as_array().cloned().unwrap_or_default();
    let p = pools.iter().find(|p| p["name"] == pool).cloned().unwrap_or_default();
    let check = &p["servers"][0]["check"];
    (check["state"].as_str().unwrap_or("").to_owned(), check["reason"].as_str().unwrap_or("").to_owned())
}

async fn status(admin: SocketAddr) -> serde_json::Value {
    let text = http_raw(admin, "GET", "/status", None).await;
    serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap_or_default()
}

#[tokio::test]
async fn checks_send_the_header_first_and_pass_nginx_proxy_listener_only_with_it() {
    let Some(bin) = nginx_bin() else { return };
    let [web, tls, lst] = free_addrs();
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().self_signed(&key).unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let http = format!(
        "http {{\n access_log off;\n client_body_temp_path body; proxy_temp_path proxy; fastcgi_temp_path fastcgi;\n \
         uwsgi_temp_path uwsgi; scgi_temp_path scgi;\n server {{ listen {web} proxy_protocol; listen {tls} ssl proxy_protocol;\n \
         ssl_certificate {}; ssl_certificate_key {};\n location / {{ return 200 \"ok\\n\"; }} }}\n}}",
        cert_file.display(),
        key_file.display(),
    );
    let nginx = start_nginx_with(&bin, "", &http).await;
    let pool = |name: &str, send: &str| {
        let (to, kind) = if name.ends_with('s') { (tls, "https") } else { (web, "http") };
        format!(
            "[pool.{name}]\nservers = [\"{to}\"]\nsend_proxy_protocol = \"{send}\"\n\
             [pool.{name}.health]\nkind = \"{kind}\"\npath = \"/\"\ninterval = \"1s\"\nrise = 1\nfall = 1\n"
        )
    };
    let config = write_config(
        dir.path(),
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"\"\n\
             [[listener]]\nbind = \"{lst}\"\npool = \"v1\"\n\
             routes = {{ \"a.test\" = \"v2\", \"b.test\" = \"off\", \"c.test\" = \"v2s\", \"d.test\" = \"offs\" }}\n{}{}{}{}{}",
            pool("v1", "v1"),
            pool("v2", "v2"),
            // The same nginx, the same check, no header: nginx closes.
            pool("off", "off"),
            // HTTPS: the header goes before the TLS hello.
            pool("v2s", "v2"),
            pool("offs", "off"),
        ),
    );
    let lb = Proc::lb(&config);
    let admin = lb.admin_addr().await;
    let pools = ["v1", "v2", "off", "v2s", "offs"];
    let decided =
        |st: &serde_json::Value| pools.iter().all(|p| ["up", "down"].contains(&check_state(st, p).0.as_str()));
    let st = poll_for(common::DEADLINE, || async {
        let st = status(admin).await;
        decided(&st).then_some(st)
    })
    .await
    .unwrap_or_else(|| panic!("the checks never decided: {}", lb.text()));
    for p in ["v1", "v2", "v2s"] {
        assert_eq!(check_state(&st, p).0, "up", "{p}: {:?}", check_state(&st, p));
    }
    // Their reasons: "connection closed before the response was complete",
    // "TLS: Connection reset by peer (os error 104)".
    for p in ["off", "offs"] {
        let (state, reason) = check_state(&st, p);
        assert_eq!(state, "down", "{p}: without the header nginx's PROXY listener refuses the check");
        assert!(!reason.is_empty(), "{p}: a reason is given");
    }
    drop(lb);
    drop(nginx);
}

#[test]
fn check_warns_of_a_header_sent_to_ucp_and_kubernetes_ports() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[admin]\ncontrol_socket = \"\"\n\
         [defaults]\nsend_proxy_protocol = \"v2\"\n\
         [[listener]]\nbind = \"127.0.0.1:8443\"\npool = \"ucp\"\nroutes = { \"k.test\" = \"k8s\", \"d.test\" = \"dtr\", \"w.test\" = \"web\", \"p.test\" = \"plain\" }\n\
         [pool.ucp]\nservers = [\"10.0.0.1:443\"]\n\
         [pool.k8s]\nservers = [\"10.0.0.1:6443\"]\nsend_proxy_protocol = \"v1\"\n\
         [pool.dtr]\nservers = [\"10.0.0.2:8443\"]\n[pool.dtr.health]\n\
         [pool.web]\nservers = [\"10.0.0.3:8080\"]\n[pool.web.health]\nkind = \"tcp\"\n\
         [pool.plain]\nservers = [\"10.0.0.1:443\"]\nsend_proxy_protocol = \"off\"\n",
    );
    let out = Command::new(BIN).args(["check", "--offline"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "a warning, not an error: {err}");
    let file = config.display().to_string();
    for (pool, at, why) in [
        // From [defaults]: its line and column.
        ("ucp", "4:23", "servers are on port 443"),
        ("k8s", "13:23", "servers are on port 6443"),
        ("dtr", "4:23", "check is UCP's and DTR's /_ping"),
    ] {
        let want = format!("{file}:{at}: pool.{pool}.send_proxy_protocol: sends a PROXY");
        let line = err.lines().find(|l| l.contains(&want)).unwrap_or_else(|| panic!("no {want:?} in:\n{err}"));
        assert!(line.contains(why) && line.contains("kubernetes #76928"), "{line}");
    }
    for quiet in ["pool.web.", "pool.plain."] {
        assert!(!err.lines().any(|l| l.contains(quiet) && l.contains("PROXY")), "{quiet}: no warning:\n{err}");
    }
}
