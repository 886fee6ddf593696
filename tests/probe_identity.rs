//! Probes that speak as the cluster's admin, and pools that prefer a zone,
//! on the real binary with stand-in managers.
//!
//! A probe presenting the bundle's client certificate reads what a failing
//! `/_ping` says is wrong and shows it in `/status` and the log; without a
//! certificate a manager that requires one refuses the handshake, and the
//! reason says so; a reload re-reads a rotated certificate; `check` names
//! a missing, unprotected or mismatched file. A pool that prefers
//! `zone=dc1` sends every client there while a dc1 server is eligible,
//! the others only when none is.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use common::standin::{Flavor, Manager, TestCa, https_get};
use common::tls::write_bundle;
use common::*;
use serde_json::Value;

const FAST: &str = "interval = \"100ms\"\ntimeout = \"1s\"\nrise = 1\nfall = 1";

async fn status(admin: SocketAddr) -> Value {
    let text = http_raw(admin, "GET", "/status", None).await;
    serde_json::from_str(&text[text.find("\r\n\r\n").unwrap() + 4..]).unwrap()
}

/// Server `addr` of pool `pool` in a `/status`.
fn server_in(v: &Value, pool: &str, addr: SocketAddr) -> Value {
    let p = v["pools"].as_array().unwrap().iter().find(|p| p["name"] == pool).expect("the pool");
    p["servers"].as_array().unwrap().iter().find(|s| s["addr"] == addr.to_string()).expect("the server").clone()
}

/// The check's reason for `addr` in `pool` once it is `state`.
async fn reason_once(admin: SocketAddr, pool: &str, addr: SocketAddr, state: &str, has: &str) -> String {
    eventually_some_async(&format!("{pool}: {addr} {state} with {has:?}"), || async move {
        let s = server_in(&status(admin).await, pool, addr);
        let reason = s["check"]["reason"].as_str().unwrap_or("").to_owned();
        (s["check"]["state"] == state && reason.contains(has)).then_some(reason)
    })
    .await
}

fn servers(ms: &[&Manager]) -> String {
    let list: Vec<String> =
        ms.iter().map(|m| format!("{{ address = \"{}\", name = \"{}\" }}", m.addr, m.name)).collect();
    list.join(", ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_with_the_admin_certificate_shows_what_is_wrong_and_one_without_is_refused() {
    let (ca, admins) = (TestCa::new("manager CA").unwrap(), TestCa::new("cluster CA").unwrap());
    let m1 = Manager::start_with(Flavor::Ucp, "manager-01", loopback(), &ca, Some(&admins)).await.unwrap();
    let m2 = Manager::start_with(Flavor::Ucp, "manager-02", loopback(), &ca, Some(&admins)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_bundle(&dir.path().join("bundle"), &admins, "admin");
    let list = servers(&[&m1, &m2]);
    // Pool ucp presents the bundle's certificate; pool anon none.
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[cluster]\nbundle = \"bundle\"\n\
         [[listener]]\nbind = \"127.0.0.1:0\"\npool = \"ucp\"\n[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"anon\"\n\
         [pool.ucp]\nservers = [{list}]\n[pool.ucp.health]\n{FAST}\nclient_bundle = true\n\
         [pool.anon]\nservers = [{list}]\n[pool.anon.health]\n{FAST}\n"
    );
    let path = dir.path().join("lb.toml");
    std::fs::write(&path, toml).unwrap();
    let lb = Proc::lb(&path);
    let admin = lb.admin_addr().await;
    reason_once(admin, "ucp", m2.addr, "up", "").await;

    m2.set_failing("etcd: unhealthy");
    let reason = reason_once(admin, "ucp", m2.addr, "down", "etcd").await;
    assert_eq!(reason, r#"status 500: "manager-02: etcd: unhealthy""#);
    let line = lb.wait_for_line("manager-02: etcd: unhealthy").await;
    assert!(line.contains("server down: active check failed") && line.contains(&m2.addr.to_string()), "{line}");
    assert_eq!(server_in(&status(admin).await, "ucp", m1.addr)["check"]["state"], "up");

    // No certificate: the handshake is refused, and the reason says why.
    let anonymous = reason_once(admin, "anon", m1.addr, "down", "client certificate").await;
    assert!(anonymous.starts_with("TLS: the server requires a client certificate"), "{anonymous}");

    // A certificate the managers do not trust, rotated in and reloaded:
    // the next probes present it, and the reason says it was refused.
    m2.set_healthy(true);
    write_bundle(&dir.path().join("bundle"), &TestCa::new("another CA").unwrap(), "admin");
    lb.signal("HUP");
    let refused = reason_once(admin, "ucp", m1.addr, "down", "refused the client certificate").await;
    assert!(refused.starts_with("TLS: the server refused the client certificate (alert"), "{refused}");
    // The trusted one back: up again, the same check carried on.
    write_bundle(&dir.path().join("bundle"), &admins, "admin");
    let probes = server_in(&status(admin).await, "ucp", m1.addr)["check"]["probes"].as_u64().unwrap();
    lb.signal("HUP");
    reason_once(admin, "ucp", m1.addr, "up", "").await;
    let after = server_in(&status(admin).await, "ucp", m1.addr)["check"]["probes"].as_u64().unwrap();
    assert!(after > probes, "the check's count goes on: {probes} then {after}");
    println!("reasons: {reason:?}; without a certificate: {anonymous:?}; untrusted: {refused:?}\nlog: {line}");
}

/// `ucp-lb check` on `toml` written beside `files`: its exit code and stderr.
fn check(dir: &Path, toml: &str) -> (i32, String) {
    let path = dir.join("lb.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(BIN).arg("check").arg(&path).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn check_names_a_missing_unprotected_or_mismatched_client_certificate_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("cluster CA").unwrap();
    write_bundle(&dir.path().join("bundle"), &ca, "admin");
    write_bundle(&dir.path().join("other"), &ca, "admin");
    let with = |health: &str, cluster: &str| {
        format!(
            "{cluster}[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"ucp\"\n[pool.ucp]\nservers = [\"127.0.0.1:1\"]\n\
             [pool.ucp.health]\n{health}\n"
        )
    };
    let own = |cert: &str, key: &str| with(&format!("client_cert = \"{cert}\"\nclient_key = \"{key}\""), "");
    let (code, err) = check(dir.path(), &own("bundle/cert.pem", "bundle/key.pem"));
    assert_eq!(code, 0, "{err}");

    let cases = [
        ("missing key", own("bundle/cert.pem", "bundle/nokey.pem"), "pool.ucp.health.client_key", "nokey.pem"),
        ("missing cert", own("bundle/nocert.pem", "bundle/key.pem"), "pool.ucp.health.client_cert", "nocert.pem"),
        ("a key of another", own("bundle/cert.pem", "other/key.pem"), "pool.ucp.health.client_key", "does not match"),
        ("a key as cert", own("bundle/key.pem", "bundle/key.pem"), "pool.ucp.health.client_cert", "no certificate"),
        (
            "a bundle missing",
            with("client_bundle = true", "[cluster]\nbundle = \"nowhere\"\n"),
            "pool.ucp.health.client_bundle",
            "nowhere/cert.pem",
        ),
        ("no [cluster] bundle", with("client_bundle = true", ""), "pool.ucp.health.client_bundle", "[cluster] bundle"),
        ("a cert without its key", with("client_cert = \"bundle/cert.pem\"", ""), "client_cert", "needs client_key"),
    ];
    for (what, toml, key, says) in cases {
        let (code, err) = check(dir.path(), &toml);
        assert!(code != 0 && err.contains(key) && err.contains(says), "{what}: {code} {err}");
    }
    // Readable by others: refused as the token file is.
    std::fs::set_permissions(dir.path().join("bundle/key.pem"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = check(dir.path(), &own("bundle/cert.pem", "bundle/key.pem"));
    assert!(code != 0 && err.contains("client_key") && err.contains("chmod 600"), "{code} {err}");
}

/// `n` HTTPS clients through `lb`: how many each of `ms` answered.
async fn spread(ca: &TestCa, lb: SocketAddr, n: usize, ms: &[&Manager]) -> Vec<usize> {
    let connector = ca.connector().unwrap();
    let mut counts = vec![0; ms.len()];
    for _ in 0..n {
        let (status, by) = within("client", https_get(&connector, lb, "/")).await.expect("client served");
        assert_eq!(status, 200);
        counts[ms.iter().position(|m| m.name == by).expect("a known manager answered")] += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_sends_every_client_to_its_zone_while_one_there_is_eligible() {
    let ca = TestCa::new("manager CA").unwrap();
    let mut ms = Vec::new();
    for (name, zone) in [("manager-01", "dc1"), ("manager-02", "dc1"), ("manager-03", "dc2")] {
        ms.push((Manager::start(name, loopback(), &ca).await.unwrap(), zone));
    }
    let list: Vec<String> = ms
        .iter()
        .map(|(m, z)| format!("{{ address = \"{}\", name = \"{}\", labels = {{ zone = \"{z}\" }} }}", m.addr, m.name))
        .collect();
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"ucp\"\n\
         [pool.ucp]\nservers = [{}]\nprefer = {{ label = \"zone\", value = \"dc1\" }}\n[pool.ucp.health]\n{FAST}\n",
        list.join(", ")
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    std::fs::write(&path, toml).unwrap();
    let lb = Proc::lb(&path);
    let (admin, addr) = (lb.admin_addr().await, lb.listener_addr().await);
    let m: Vec<&Manager> = ms.iter().map(|(m, _)| m).collect();
    for x in &m {
        reason_once(admin, "ucp", x.addr, "up", "").await;
    }
    let v = status(admin).await;
    assert_eq!(v["pools"][0]["prefer"], "zone=dc1");
    let s3 = server_in(&v, "ucp", m[2].addr);
    assert_eq!((&s3["preferred"], &s3["labels"]["zone"]), (&Value::Bool(false), &Value::from("dc2")));
    assert_eq!(s3["phrase"], "in (backup: not preferred)");
    assert_eq!(server_in(&v, "ucp", m[0].addr)["phrase"], "in (preferred)");

    let both = spread(&ca, addr, 40, &m).await;
    assert_eq!(both, [20, 20, 0], "dc1 takes every client");
    // dc1 fails its checks: dc2 takes over.
    m[0].set_healthy(false);
    m[1].set_healthy(false);
    reason_once(admin, "ucp", m[0].addr, "down", "status 500").await;
    reason_once(admin, "ucp", m[1].addr, "down", "status 500").await;
    let none = spread(&ca, addr, 40, &m).await;
    assert_eq!(none, [0, 0, 40], "dc2 while no dc1 server is eligible");
    // One dc1 server back: it takes every client again.
    m[1].set_healthy(true);
    reason_once(admin, "ucp", m[1].addr, "up", "").await;
    let back = spread(&ca, addr, 40, &m).await;
    assert_eq!(back, [0, 40, 0], "back to dc1 as soon as one there is eligible");
    println!("40 clients each: both dc1 up {both:?}; dc1 down {none:?}; manager-02 back {back:?}");
}
