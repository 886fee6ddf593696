//! `check` and start agree, because they run the same preparation: every
//! config a start refuses, `check` refuses with the same message; every
//! warning a start logs, `check` prints. And `healthcheck` never asks a
//! default address when the config it was given cannot be read.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{BIN, Proc};

/// A startable config: loopback port 0 everywhere, one pool of IP servers
/// (no DNS, no connection made at start), `extra` appended.
fn config(admin_extra: &str, extra: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{admin_extra}\n[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"ucp\"\n\n\
         [pool.ucp]\nservers = [\"127.0.0.1:9\"]\n{extra}"
    )
}

struct Case {
    name: &'static str,
    toml: String,
    /// Environment for both runs.
    env: Vec<(&'static str, &'static str)>,
    /// What the message says.
    says: &'static str,
}

fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn run(args: &[&str], config: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).arg("--config").arg(config).env_remove("UCP_LB_WORKERS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    // A start that is wrongly accepted would run for ever: bound it.
    let mut child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    if common::poll_blocking(common::DEADLINE, || child.try_wait().unwrap()).is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn every_config_a_start_refuses_check_refuses_with_the_same_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let empty = write(d, "empty-token", "", 0o600);
    let open = write(d, "open-token", "s3cret\n", 0o666);
    let mut cases = vec![
        Case {
            name: "token file missing",
            toml: config(&format!("token_file = \"{}\"", d.join("missing-token").display()), ""),
            env: vec![],
            says: "admin.token_file: cannot read",
        },
        Case {
            name: "token file empty",
            toml: config(&format!("token_file = \"{}\"", empty.display()), ""),
            env: vec![],
            says: "holds no token",
        },
        Case {
            name: "token file world-writable",
            toml: config(&format!("token_file = \"{}\"", open.display()), ""),
            env: vec![],
            says: "is writable by every user",
        },
        Case {
            name: "bad worker count in the environment",
            toml: config("", ""),
            env: vec![("UCP_LB_WORKERS", "abc")],
            says: "UCP_LB_WORKERS: expected a whole number from 1 to 1024, found \"abc\"",
        },
        Case {
            name: "unreadable CA file",
            toml: config("", "[pool.ucp.health]\nca_file = \"/nonexistent/ca.pem\"\n"),
            env: vec![],
            says: "pool.ucp.health.ca_file: cannot read CA file /nonexistent/ca.pem",
        },
        Case {
            name: "a type error and an unknown key",
            toml: config("", "max_fails = \"two\"\nconect_timeout = \"3s\"\n"),
            env: vec![],
            says: "pool.ucp.max_fails: invalid type",
        },
        Case {
            name: "a bad value",
            toml: config("", "balance = \"fastest\"\n"),
            env: vec![],
            says: "pool.ucp.balance: expected one of",
        },
        Case {
            name: "a listener naming no pool",
            toml: config("", "").replace("pool = \"ucp\"", "pool = \"ucpp\""),
            env: vec![],
            says: "listener[0].pool: no pool named \"ucpp\"",
        },
    ];
    cases.push(Case {
        name: "several at once",
        toml: config(&format!("token_file = \"{}\"", empty.display()), "balance = \"fastest\"\n"),
        env: vec![("UCP_LB_WORKERS", "0")],
        says: "UCP_LB_WORKERS",
    });
    for case in &cases {
        let path = write(d, "lb.toml", &case.toml, 0o644);
        let (check_code, check_err) = run(&["check"], &path, &case.env);
        let (start_code, start_err) = run(&[], &path, &case.env);
        assert_eq!(start_code, Some(1), "{}: the start refuses it:\n{start_err}", case.name);
        assert_eq!(check_code, Some(1), "{}: check refuses it too:\n{check_err}", case.name);
        assert!(check_err.contains(case.says), "{}: check says why:\n{check_err}", case.name);
        let lines: Vec<&str> = check_err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(!lines.is_empty(), "{}", case.name);
        for line in lines {
            assert!(
                start_err.contains(line),
                "{}: the start says what check says:\n  {line}\nstart said:\n{start_err}",
                case.name
            );
        }
    }
}

#[tokio::test]
async fn every_warning_a_start_logs_check_prints() {
    let dir = tempfile::tempdir().unwrap();
    let toml = config("", "[pool.ucp.health]\nkind = \"tcp\"\ninterval = \"500ms\"\ntimeout = \"1s\"\n")
        .replace("listen = \"127.0.0.1:0\"", "listen = \"0.0.0.0:0\"");
    let path = write(dir.path(), "lb.toml", &toml, 0o644);
    let (code, check_err) = run(&["check"], &path, &[]);
    assert_eq!(code, Some(0), "{check_err}");
    let warnings: Vec<&str> = check_err.lines().filter_map(|l| l.strip_prefix("warning: ")).collect();
    assert_eq!(warnings.len(), 2, "interval < timeout and admin open without a token:\n{check_err}");
    assert!(warnings.iter().any(|w| w.contains("pool.ucp.health.interval: interval 500ms is shorter than timeout 1s")));
    assert!(warnings.iter().any(|w| w.contains("admin.listen: 0.0.0.0:0 is beyond loopback without a token_file")));

    let mut lb = Proc::lb(&path);
    lb.wait_for_line("listening bind=").await;
    for w in &warnings {
        let line = lb.wait_for_line(w).await;
        assert!(line.contains("WARN"), "{line}");
    }
    lb.signal("TERM");
    assert_eq!(lb.exit_code().await, Some(0));
}

/// A keepalived track script with a typo in its config path must fail, not
/// ask whatever answers on the default admin address.
#[tokio::test]
async fn healthcheck_with_an_unreadable_config_is_unhealthy_even_when_the_default_address_answers() {
    // Something answering 200 on the default address, when it is free here
    // (another process may hold it; then exit 1 is still what is proven).
    let held = tokio::net::TcpListener::bind("127.0.0.1:9900").await.ok();
    if let Some(l) = held {
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n").await;
            }
        });
    } else {
        eprintln!("127.0.0.1:9900 is taken: the 200 answer on the default address is not staged");
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = write(dir.path(), "lb.toml", "[pool.ucp\n", 0o644);
    for config in [dir.path().join("missing.toml"), bad] {
        let out = tokio::task::spawn_blocking(move || {
            Command::new(BIN).arg("healthcheck").arg("--config").arg(&config).output().unwrap()
        })
        .await
        .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("cannot tell which admin address to ask"), "{err}");
    }
    let out = tokio::task::spawn_blocking(|| {
        Command::new(BIN).arg("healthcheck").env("UCP_LB_CONFIG", "/nonexistent/lb.toml").output().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "UCP_LB_CONFIG counts as naming a config");
}

#[test]
fn a_short_token_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let token = write(dir.path(), "token", "short\n", 0o600);
    let path = write(dir.path(), "lb.toml", &config(&format!("token_file = \"{}\"", token.display()), ""), 0o644);
    let (code, err) = run(&["check"], &path, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("warning: ") && err.contains("admin.token_file: the token is 5 bytes: shorter than 16"),
        "{err}"
    );
}
