//! The deployment files in config/ beyond lb.toml: keepalived.conf passes
//! keepalived's own config test and its track script is a valid
//! `ucp-lb healthcheck` command line; ucp-lb.service passes
//! `systemd-analyze verify` and keeps its sandboxing. Skipped when the tool
//! is missing, except under CI=true, where .ci/run installs it.

mod common;

use std::path::Path;
use std::process::Command;

use common::{BIN, external_tool};

fn config(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config").join(name)).unwrap()
}

#[test]
fn keepalived_conf_passes_keepalived_config_test() {
    let text = config("keepalived.conf");
    let script = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("script \"/usr/local/bin/ucp-lb"))
        .expect("a track script running ucp-lb healthcheck");
    // The script's arguments are ones `ucp-lb healthcheck` takes: it asks
    // (exit 0 or 1), it does not fail on usage (exit 2).
    // With the shipped config in place of /etc/ucp-lb/lb.toml, it asks
    // that config's admin address (tests/shipped.rs: every shipped config).
    let cmd = script.trim_start_matches("script \"").trim_end_matches('"');
    let ucp = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/ucp.toml").display().to_string();
    let cmd = cmd.replace("/etc/ucp-lb/lb.toml", &ucp);
    let mut words = cmd.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/ucp-lb"));
    let out = Command::new(BIN).args(words).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(matches!(out.status.code(), Some(0 | 1)), "{cmd}: {said}");
    assert!(said.contains("http://127.0.0.1:9900/healthz"), "{cmd}: {said}");

    let Some(keepalived) = external_tool(&["/usr/sbin/keepalived", "/usr/bin/keepalived"], "keepalived") else {
        return;
    };
    // As installed on a node, with the test's binary in place of
    // /usr/local/bin/ucp-lb. script_user root here: keepalived 2.2.7
    // (Debian 12) kills its own config test with SIGTERM when script_user
    // names another user (acassen/keepalived#2617, fixed in 2.2.8).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keepalived.conf");
    std::fs::write(&path, text.replace("/usr/local/bin/ucp-lb", BIN).replace("script_user nobody", "script_user root"))
        .unwrap();
    let out = Command::new(&keepalived).arg("--config-test").arg("-f").arg(&path).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "{:?}: {said}", out.status);

    // And the test itself finds mistakes.
    std::fs::write(&path, std::fs::read_to_string(&path).unwrap().replace("advert_int 1", "advert_intt 1")).unwrap();
    let out = Command::new(&keepalived).arg("--config-test").arg("-f").arg(&path).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unknown keyword 'advert_intt'"));
}

#[test]
fn systemd_unit_passes_verify_and_is_sandboxed() {
    let text = config("ucp-lb.service");
    for line in [
        "ExecStart=/usr/local/bin/ucp-lb --config /etc/ucp-lb/lb.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "DynamicUser=yes",
    ] {
        assert!(text.lines().any(|l| l.starts_with(line)), "{line}");
    }
    // The stop timeout outlasts the default 30 s drain.
    let stop: u64 = text.lines().find_map(|l| l.strip_prefix("TimeoutStopSec=")).unwrap().parse().unwrap();
    assert!(stop > 30);

    let Some(analyze) =
        external_tool(&["/usr/bin/systemd-analyze", "/bin/systemd-analyze"], "systemd (systemd-analyze)")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ucp-lb.service");
    std::fs::write(&path, text.replace("/usr/local/bin/ucp-lb", BIN)).unwrap();
    let out = Command::new(&analyze).arg("verify").arg(&path).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
    // The template for upgrades in place, as its instance a.
    let template = config("ucp-lb@.service");
    assert!(template.contains("--upgrade") && template.contains("RuntimeDirectoryPreserve=yes"));
    assert_eq!(
        template.lines().filter(|l| l.starts_with("ProtectSystem=") || l.starts_with("DynamicUser=")).count(),
        2,
        "the template is sandboxed as the unit is"
    );
    let instance = dir.path().join("ucp-lb@a.service");
    std::fs::write(&instance, template.replace("/usr/local/bin/ucp-lb", BIN)).unwrap();
    let out = Command::new(&analyze).arg("verify").arg(&instance).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
    // verify only warns on unknown keys: the check above must see them.
    std::fs::write(&path, text.replace("/usr/local/bin/ucp-lb", BIN).replace("ProtectHome=", "ProtectHom=")).unwrap();
    let out = Command::new(&analyze).arg("verify").arg(&path).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unknown key 'ProtectHom'"));
}
