//! The binary itself: file descriptor exhaustion, signals, JSON logs, the
//! demo, --version. Each test starts its own process and stops it by PID.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use tokio::net::TcpStream;

fn write_config(dir: &Path, servers: &[SocketAddr], extra: &str) -> std::path::PathBuf {
    let path = dir.join("lb.toml");
    std::fs::write(&path, format!("{extra}\n{}", one_pool(servers, ""))).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_sheds_clients_and_recovers_by_itself() {
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &[echo.addr], "workers = 1");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "ulimit -n 64 && exec \"$0\" --config \"$1\"", BIN]).arg(&cfg).env("RUST_LOG", "info");
    let lb = Proc::spawn(cmd, false);
    let addr = lb.listener_addr().await;

    // Each client holds two descriptors in the LB: far more clients than 64 allows.
    let mut held = Vec::new();
    let (mut failed, mut hung) = (0, 0);
    for _ in 0..80 {
        let attempt = async {
            let mut s = TcpStream::connect(addr).await?;
            echo_once(&mut s).await?;
            Ok::<_, std::io::Error>(s)
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(s)) => held.push(s),
            Ok(Err(_)) => failed += 1,
            Err(_) => hung += 1,
        }
    }
    eprintln!("with 64 fds: {} clients served, {failed} shed", held.len());
    assert!(held.len() >= 10, "served some: {}", held.len());
    assert!(failed >= 20, "clients beyond the limit fail: {failed}");
    assert_eq!(hung, 0, "clients beyond the limit are closed at once, not left hanging");
    lb.wait_for_line("out of file descriptors").await;

    // Descriptors free up: the LB serves again without any help.
    drop(held);
    eventually_async("served again", || async {
        matches!(tokio::time::timeout(Duration::from_secs(1), round_trip(addr)).await, Ok(Ok(())))
    })
    .await;
    // And many at once again, well under the limit.
    for _ in 0..10 {
        round_trip(addr).await.expect("served after recovery");
    }
}

#[tokio::test]
async fn sigterm_stops_accepting_and_lets_open_connections_finish() {
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &[echo.addr], "[defaults]\nshutdown_timeout = \"1m\"");
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(&cfg);
    let mut lb = Proc::spawn(cmd, false);
    let addr = lb.listener_addr().await;
    let mut open = TcpStream::connect(addr).await.unwrap();
    echo_once(&mut open).await.unwrap();

    lb.signal("TERM");
    lb.wait_for_line("SIGTERM").await;
    eventually_async("refused after SIGTERM", || async { TcpStream::connect(addr).await.is_err() }).await;
    echo_once(&mut open).await.expect("open connection still passes bytes");
    assert!(lb.child.try_wait().unwrap().is_none(), "waits for the open connection");
    drop(open);
    assert_eq!(lb.exit_code().await, Some(0));
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &[echo.addr], "");
    let mut cmd = Command::new(BIN);
    cmd.args(["--log-format", "json", "--config"]).arg(&cfg).env("RUST_LOG", "debug");
    let lb = Proc::spawn(cmd, false);
    let line = lb.wait_for_line("\"listening\"").await;
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON object");
    assert_eq!(v["message"], "listening");
    let addr: SocketAddr = v["local"].as_str().unwrap().parse().unwrap();
    round_trip(addr).await.unwrap();
    let closed = lb.wait_for_line("connection closed").await;
    let v: serde_json::Value = serde_json::from_str(&closed).expect("a JSON object");
    assert_eq!(v["bytes_to_server"], 4);
    assert_eq!(v["bytes_to_client"], 4);
    assert_eq!(v["end"], "closed");
    assert_eq!(v["server"], echo.addr.to_string());
    assert!(v["client"].as_str().is_some_and(|c| c.starts_with("127.0.0.1:")), "{closed}");
    for l in lb.lines.lock().unwrap().iter() {
        serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
    }
}

#[tokio::test]
async fn a_bad_config_stops_the_start_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    std::fs::write(&path, "[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n[pool.p]\nservers = [\"x\"]\n").unwrap();
    let out = Command::new(BIN).arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lb.toml:5:12: pool.p.servers[0]: expected \"host:port\""));
}

#[tokio::test]
async fn a_port_in_use_stops_the_start_and_names_the_listener() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    let text = format!(
        "[[listener]]\nbind = \"{}\"\npool = \"p\"\n[pool.p]\nservers = [\"127.0.0.1:9\"]\n",
        taken.local_addr().unwrap()
    );
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN).arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("listener[0].bind: cannot listen on"), "{stderr}");
    assert_eq!(stderr.matches("cannot listen on").count(), 1, "said once: {stderr}");
    assert!(stderr.contains("another process holds it: `ss -ltnp 'sport = :"), "says how to find who: {stderr}");
}

#[test]
fn version_names_commit_build_date_compiler_and_target() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    let short = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(short.starts_with(&format!("ucp-lb {} (commit ", env!("CARGO_PKG_VERSION"))), "{short}");
    assert!(short.contains(", built 20") && short.contains("rustc 1.") && short.contains("-linux-"), "{short}");
    assert_eq!(short.lines().count(), 1);
    let out = Command::new(BIN).arg("-V").output().unwrap();
    let long = String::from_utf8_lossy(&out.stdout);
    for field in ["commit: ", "built: ", "compiler: rustc ", "target: ", "features: cli"] {
        assert!(long.contains(field), "-V lacks {field:?}:\n{long}");
    }
}

#[tokio::test]
async fn demo_shows_traffic_leaving_a_broken_manager_and_coming_back() {
    let mut cmd = Command::new(BIN);
    cmd.args(["demo", "--listen", "127.0.0.1:0"]);
    let mut demo = Proc::spawn(cmd, true);
    demo.wait_for_line("Ctrl-C stops the demo").await;
    let out = demo.text();
    let lines: Vec<&str> = out.lines().collect();
    let after = |title: &str, nth: usize| -> &str {
        let i = lines.iter().enumerate().filter(|(_, l)| l.starts_with(title)).nth(nth).map(|(i, _)| i);
        lines[i.unwrap_or_else(|| panic!("no {title:?} in {out}")) + 1]
    };
    let first = after("Six clients", 0);
    for m in ["manager-01 (200)", "manager-02 (200)", "manager-03 (200)"] {
        assert!(first.contains(m), "{out}");
    }
    assert!(out.contains("manager-04") && out.contains("check down: connect refused; 0 failed connects"), "{out}");
    assert!(out.contains("ucp-lb took it out after") && out.contains("\"status 500\""), "{out}");
    let broken = after("Six more clients", 0);
    assert!(!broken.contains("manager-02") && broken.matches("(200)").count() == 6, "{out}");
    assert!(out.contains("Back in rotation after"), "{out}");
    assert!(after("Six more clients", 1).contains("manager-02 (200)"), "{out}");
    // The swarm scene: manager-05 joins, takes clients, is drained, takes none.
    assert!(out.contains("manager-05 joined the pool after"), "{out}");
    assert!(after("Five clients after it joined", 0).contains("manager-05 (200)"), "{out}");
    assert!(out.contains("ucp-lb drains it after"), "{out}");
    let drained = after("Five clients after the drain", 0);
    assert!(!drained.contains("manager-05") && drained.matches("(200)").count() == 5, "{out}");
    demo.signal("INT");
    assert_eq!(demo.exit_code().await, Some(0));
}

/// Ctrl-C stops the demo while it waits for keys on a terminal (its
/// standard input stays open): exit 0. The status page address is given at
/// the start of the scene, and the servers are named on it.
#[tokio::test]
async fn ctrl_c_stops_the_demo_at_its_prompt() {
    let mut cmd = Command::new(BIN);
    cmd.args(["demo", "--listen", "127.0.0.1:0"]);
    let mut demo = Proc::spawn_interactive(cmd, true);
    let page = demo.wait_for_line("Status page: http://").await;
    let admin: SocketAddr = page.split("http://").nth(1).and_then(|r| r.split('/').next()).unwrap().parse().unwrap();
    let first_clients = demo.text().lines().position(|l| l.starts_with("Six clients")).unwrap_or(usize::MAX);
    let page_line = demo.text().lines().position(|l| l.contains("Status page: http://")).unwrap();
    assert!(page_line < first_clients, "the address comes before the scene");
    demo.wait_for_line("Ctrl-C stops the demo").await;
    let html = http_raw(admin, "GET", "/", None).await;
    for name in ["manager-01", "manager-02", "manager-03", "manager-04"] {
        assert!(html.contains(name), "{name} named on the page");
    }
    demo.signal("INT");
    assert_eq!(demo.exit_code().await, Some(0));
}

/// The demo's port taken: the message says to pass --listen.
#[tokio::test]
async fn a_taken_demo_port_says_to_pass_listen() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out =
        tokio::task::spawn_blocking(move || Command::new(BIN).args(["demo", "--listen", &addr]).output().unwrap())
            .await
            .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is taken") && err.contains("--listen"), "{err}");
}

/// `ucp-lb healthcheck` (the image's HEALTHCHECK, keepalived's track
/// script): exit 0 on 200 from /healthz, 1 when nothing answers or when
/// the LB is shutting down (503). The address comes from `[admin] listen`.
#[tokio::test]
async fn healthcheck_follows_healthz() {
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let admin = common::nginx::free_addr();
    let cfg = dir.path().join("lb.toml");
    let toml = format!(
        "[admin]\nlisten = \"{admin}\"\n[defaults]\nshutdown_timeout = \"1m\"\n\
         [[listener]]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n[pool.p]\nservers = [\"{}\"]\n",
        echo.addr
    );
    std::fs::write(&cfg, toml).unwrap();
    let healthcheck = |args: &[&str]| {
        let out = Command::new(BIN).arg("healthcheck").args(args).arg("--config").arg(&cfg).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let (code, text) = healthcheck(&[]);
    assert_eq!(code, Some(1), "nothing listens yet: {text}");
    assert!(text.contains(&format!("http://{admin}/healthz: connect {admin}")), "{text}");

    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(&cfg);
    let mut lb = Proc::spawn(cmd, false);
    let addr = lb.listener_addr().await;
    let text = eventually_some("healthcheck says healthy", || {
        let (code, text) = healthcheck(&[]);
        (code == Some(0)).then_some(text)
    })
    .await;
    assert!(text.contains("200"), "{text}");
    let url = format!("http://{admin}/healthz");
    assert_eq!(healthcheck(&["--url", &url]).0, Some(0));
    let (code, text) = healthcheck(&["--url", &format!("https://{admin}/healthz")]);
    assert_eq!(code, Some(1), "{text}");

    // Shutting down with a connection still open: /healthz says 503.
    let mut open = TcpStream::connect(addr).await.unwrap();
    echo_once(&mut open).await.unwrap();
    lb.signal("TERM");
    lb.wait_for_line("SIGTERM").await;
    let (code, text) = healthcheck(&["--url", &url, "--timeout", "2s"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("503"), "{text}");
    drop(open);
    assert_eq!(lb.exit_code().await, Some(0));
}

/// `healthcheck -c FILE` (keepalived's track script) asks the admin
/// address the config names: a wildcard `[admin] listen` on loopback of its
/// family, read without DNS and without the token or CA files the config
/// names (the check runs as `nobody`, which may read neither). The same
/// through `--config` and UCP_LB_CONFIG; `--url` wins over the config.
#[tokio::test]
async fn healthcheck_asks_the_admin_address_its_config_names() {
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let admin = common::nginx::free_addr();
    let cfg = dir.path().join("lb.toml");
    std::fs::write(
        &cfg,
        format!(
            "[admin]\nlisten = \"{admin}\"\n[[listener]]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
             [pool.p]\nservers = [\"{}\"]\n",
            echo.addr
        ),
    )
    .unwrap();
    let lb = Proc::spawn(
        {
            let mut c = Command::new(BIN);
            c.arg("--config").arg(&cfg);
            c
        },
        false,
    );
    lb.listener_addr().await;
    // What the node's own lb.toml would say: the admin port on every
    // address (for Prometheus), a token and a CA file this user cannot
    // read, a server name no resolver knows.
    let node = dir.path().join("node.toml");
    std::fs::write(
        &node,
        format!(
            "[admin]\nlisten = \"0.0.0.0:{}\"\ntoken_file = \"/nonexistent/token\"\n\
             [[listener]]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
             [pool.p]\nservers = [\"manager.invalid:443\"]\n\
             [pool.p.health]\nkind = \"https\"\npath = \"/_ping\"\nca_file = \"/nonexistent/ca.pem\"\n",
            admin.port()
        ),
    )
    .unwrap();
    let run = |args: Vec<std::ffi::OsString>, env: Option<&Path>| {
        let mut c = Command::new(BIN);
        c.arg("healthcheck").args(args).env_remove("UCP_LB_CONFIG");
        if let Some(p) = env {
            c.env("UCP_LB_CONFIG", p);
        }
        let out = c.output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let asked = format!("http://127.0.0.1:{}/healthz", admin.port());
    let text = eventually_some("healthcheck -c says healthy", || {
        let (code, text) = run(vec!["-c".into(), node.clone().into()], None);
        (code == Some(0)).then_some(text)
    })
    .await;
    assert!(text.contains(&format!("{asked}: 200")), "{text}");
    let (code, text) = run(vec!["--config".into(), node.clone().into()], None);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = run(vec![], Some(&node));
    assert_eq!(code, Some(0), "UCP_LB_CONFIG: {text}");
    assert!(text.contains(&asked), "{text}");
    // --url wins over the config: a port nothing listens on fails it.
    let dead = common::nginx::free_addr();
    let (code, text) =
        run(vec!["-c".into(), node.clone().into(), "--url".into(), format!("http://{dead}/healthz").into()], None);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains(&dead.to_string()), "{text}");
    // A config named but missing fails it, naming the file.
    let (code, text) = run(vec!["-c".into(), dir.path().join("typo.toml").into()], None);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("typo.toml") && text.contains("cannot tell which admin address"), "{text}");
}

/// nginx's and HAProxy's habits: `-t -c FILE` tests a config, `-c FILE`
/// runs it, `check FILE` takes it as an argument; each answers as `check
/// --config` and `--config` do.
#[tokio::test]
async fn nginx_and_haproxy_habits_work_as_aliases() {
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(dir.path(), &[echo.addr], "");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, one_pool(&[echo.addr], "balance = \"fastest\"")).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (good, bad) = (good.to_str().unwrap(), bad.to_str().unwrap());
    let reference = run(&["check", "--config", good]);
    assert_eq!(reference.0, Some(0), "{}", reference.2);
    for args in [vec!["-t", "-c", good], vec!["check", good], vec!["-t", "--config", good], vec!["-c", good, "check"]] {
        assert_eq!(run(&args), reference, "{args:?}");
    }
    let reference = run(&["check", "--config", bad]);
    assert_eq!(reference.0, Some(1));
    assert!(reference.2.contains("balance: expected one of"), "{}", reference.2);
    for args in [vec!["-t", "-c", bad], vec!["check", bad]] {
        assert_eq!(run(&args), reference, "{args:?}");
    }
    // `-c FILE` runs it.
    let mut cmd = Command::new(BIN);
    cmd.args(["-c", good]);
    let mut lb = Proc::spawn(cmd, false);
    round_trip(lb.listener_addr().await).await.unwrap();
    lb.signal("TERM");
    assert_eq!(lb.exit_code().await, Some(0));
}

#[test]
fn help_says_what_running_without_a_subcommand_does_and_config_is_offered_only_where_read() {
    let help = Command::new(BIN).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("Without a sub-command, ucp-lb runs the load balancer"), "{text}");
    for sub in [vec!["demo", "--config", "x"], vec!["convert-nginx", "--config", "x", "nginx.conf"]] {
        let out = Command::new(BIN).args(&sub).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{sub:?} takes no --config");
        assert!(String::from_utf8_lossy(&out.stderr).contains("unexpected argument '--config'"), "{sub:?}");
    }
}

#[test]
fn an_empty_ucp_lb_config_is_named_as_such() {
    let out = Command::new(BIN).env("UCP_LB_CONFIG", "").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("UCP_LB_CONFIG is set but empty"));
    let out = Command::new(BIN).arg("check").env("UCP_LB_CONFIG", "").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("UCP_LB_CONFIG is set but empty"));
}

#[test]
fn with_json_logs_a_config_error_at_start_is_json_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    std::fs::write(&path, "workers = \"two\"\nbalanse = 1\n").unwrap();
    let out = Command::new(BIN).args(["--log-format", "json", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    // Every line JSON (above); the config's errors at ERROR (the start's
    // "reading the config" line before them is INFO).
    let errors: Vec<_> = lines.iter().filter(|l| l["level"] != "INFO").collect();
    assert!(errors.len() >= 2, "{text}");
    assert!(errors.iter().all(|l| l["level"] == "ERROR"), "{text}");
    assert!(lines.iter().any(|l| l["message"].as_str().is_some_and(|m| m.contains("workers: invalid type"))), "{text}");
}

/// A relative `token_file` (or `ca_file`) is found beside the config, as
/// nginx finds relative paths under its prefix, whatever the working
/// directory; a missing one is reported with the path that was tried.
#[tokio::test]
async fn relative_files_are_found_beside_the_config() {
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_secret(&dir.path().join("admin-token"), "beside-the-config-0123\n");
    let path = dir.path().join("lb.toml");
    std::fs::write(
        &path,
        one_pool(&[echo.addr], "").replacen("[admin]\n", "[admin]\ntoken_file = \"admin-token\"\n", 1),
    )
    .unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(BIN).args(["check", "--config"]).arg(&path).current_dir(elsewhere.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let want = format!("token from {}", dir.path().join("admin-token").display());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&want), "{}", String::from_utf8_lossy(&out.stdout));
    std::fs::remove_file(dir.path().join("admin-token")).unwrap();
    let out = Command::new(BIN).args(["check", "--config"]).arg(&path).current_dir(elsewhere.path()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot read {}", dir.path().join("admin-token").display())), "{err}");
}

/// `check --print`: every key of every table with the value in force and
/// where it came from; what it prints is a config `check` accepts, and
/// printing that again gives the same keys and values.
#[test]
fn check_print_shows_every_key_in_force_and_where_it_came_from() {
    let lb_toml = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/lb.toml");
    let out = Command::new(BIN).args(["check", "--offline", "--print"]).arg(&lb_toml).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dump = String::from_utf8_lossy(&out.stdout).into_owned();
    for key in [
        "listen",
        "token_file",
        "status_needs_token",
        "bind",
        "max_connections",
        "balance",
        "connect_timeout",
        "idle_timeout",
        "max_fails",
        "fail_timeout",
        "retries",
        "all_down",
        "resolve_interval",
        "shutdown_timeout",
        "servers",
        "kind",
        "path",
        "interval",
        "timeout",
        "rise",
        "fall",
        "expect_status",
        "expect_body",
        "expect_json",
        "sni",
        "host",
        "ca_file",
        "port",
    ] {
        assert!(
            dump.lines().any(|l| l.trim_start_matches("# ").starts_with(&format!("{key} ="))),
            "{key} missing:\n{dump}"
        );
    }
    assert!(dump.contains("balance = \"least_conn\"") && dump.contains("# pool"), "a pool's own key:\n{dump}");
    assert!(dump.contains("# [defaults]") && dump.contains("# default"), "{dump}");
    let dir = tempfile::tempdir().unwrap();
    let again = dir.path().join("again.toml");
    std::fs::write(&again, &dump).unwrap();
    let out = Command::new(BIN).args(["check", "--offline", "--print"]).arg(&again).output().unwrap();
    assert!(out.status.success(), "the printed config passes check: {}", String::from_utf8_lossy(&out.stderr));
    let values = |d: &str| -> Vec<String> {
        d.lines()
            .filter(|l| !l.starts_with("# ") || l.contains(" = "))
            .map(|l| l.split(" # ").next().unwrap_or("").trim_end().to_owned())
            .skip(2)
            .collect()
    };
    assert_eq!(values(&String::from_utf8_lossy(&out.stdout)), values(&dump), "the same values the second time");
}

/// SIGTERM with `stop_grace = "2s"`: /healthz answers 503 at once, new
/// clients are still served during the grace, then refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stop_grace_keeps_accepting_while_healthz_says_stopping() {
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &[echo.addr], "[defaults]\nstop_grace = \"2s\"\nshutdown_timeout = \"1s\"");
    let mut lb = Proc::lb(&path);
    let (addr, admin) = (lb.listener_addr().await, lb.admin_addr().await);
    assert!(http_raw(admin, "GET", "/healthz", None).await.starts_with("HTTP/1.1 200"));
    lb.signal("TERM");
    eventually_async("/healthz says stopping", || async {
        http_raw(admin, "GET", "/healthz", None).await.starts_with("HTTP/1.1 503")
    })
    .await;
    // In that order: /healthz says stopping, new clients are still served
    // (the grace), and only then refused.
    for i in 0..5 {
        round_trip(addr).await.unwrap_or_else(|e| panic!("client {i} served during the stop grace: {e}"));
    }
    eventually_async("refused after the grace", || async { TcpStream::connect(addr).await.is_err() }).await;
    assert_eq!(lb.exit_code().await, Some(0));
}

/// nginx's habit `-s reload` (and `stop`, `reopen`): clap's error, then
/// what ucp-lb does instead.
#[test]
fn nginx_signal_flag_says_which_signal_or_endpoint_to_use() {
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stderr) = run(&["-s", "reload"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("unexpected argument '-s'"), "{stderr}");
    for want in ["kill -HUP", "systemctl reload ucp-lb", "POST /reload"] {
        assert!(stderr.contains(want), "missing {want:?}: {stderr}");
    }
    let (_, stderr) = run(&["-c", "lb.toml", "-s", "stop"]);
    assert!(stderr.contains("send SIGTERM"), "{stderr}");
    let (_, stderr) = run(&["-s", "reopen"]);
    assert!(stderr.contains("send SIGUSR1"), "{stderr}");
    let (code, stderr) = run(&["-x"]);
    assert_eq!(code, Some(2));
    assert!(!stderr.contains("tip: ucp-lb has no -s"), "{stderr}");
}

/// A port below the kernel's unprivileged start, bound by a user without
/// CAP_NET_BIND_SERVICE: the start fails (exit 1) naming the capability
/// and the setcap line. As root the test drops to nobody with setpriv.
#[tokio::test]
async fn a_privileged_port_without_the_capability_says_how_to_grant_it() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024);
    if start <= 81 {
        eprintln!("skipped: port 81 is unprivileged here (ip_unprivileged_port_start = {start})");
        return;
    }
    let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("lb.toml");
    std::fs::write(
        &path,
        "[admin]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"\"\n\
         [[listener]]\nbind = \"127.0.0.1:81\"\npool = \"p\"\n[pool.p]\nservers = [\"127.0.0.1:9\"]\n",
    )
    .unwrap();
    let mut cmd = if root {
        let Some(setpriv) = external_tool(&["/usr/bin/setpriv", "/bin/setpriv"], "setpriv (util-linux)") else {
            return;
        };
        let mut c = Command::new(setpriv);
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", BIN]);
        c
    } else {
        Command::new(BIN)
    };
    cmd.arg("--config").arg(&path);
    let mut lb = Proc::spawn(cmd, false);
    assert_eq!(lb.exit_code().await, Some(1), "{}", lb.text());
    let text = lb.text();
    for want in [
        "listener[0].bind: cannot listen on 127.0.0.1:81: Permission denied",
        "CAP_NET_BIND_SERVICE",
        "setcap 'cap_net_bind_service=+ep' $(command -v ucp-lb)",
    ] {
        assert!(text.contains(want), "missing {want:?}: {text}");
    }
}

/// A server whose certificate is a CA's (basicConstraints CA:TRUE), checked
/// with that certificate as `ca_file`: /status says so in words, not as
/// webpki's `CaUsedAsEndEntity`.
#[tokio::test]
async fn a_ca_certificate_used_as_a_servers_is_named_as_such() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(common::standin::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let server = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move { drop(acceptor.accept(tcp).await) });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
    let path = dir.path().join("lb.toml");
    std::fs::write(
        &path,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"\"\n\
             [[listener]]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n[pool.p]\nservers = [\"{server}\"]\n\
             [pool.p.health]\nkind = \"https\"\ninterval = \"100ms\"\nca_file = \"ca.pem\"\n"
        ),
    )
    .unwrap();
    let lb = Proc::lb(&path);
    let admin = lb.admin_addr().await;
    let status = eventually_some_async("the check's reason", || async {
        Some(http_raw(admin, "GET", "/status", None).await).filter(|s| s.contains("CA certificate"))
    })
    .await;
    assert!(status.contains("the server's certificate is a CA certificate, not a server's"), "{status}");
    assert!(!status.contains("CaUsedAsEndEntity"), "{status}");
}

/// A start on overlapping binds fails before binding anything, with the
/// error `check` gives (exit 1, file:line:col), not "address in use" after
/// the first listener is up.
#[tokio::test]
async fn a_start_on_overlapping_binds_fails_at_the_second_bind_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    std::fs::write(
        &path,
        "[admin]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"\"\n\
         [[listener]]\nbind = \"0.0.0.0:9000\"\npool = \"p\"\n\
         [[listener]]\nbind = \"127.0.3.20:9000\"\npool = \"p\"\n[pool.p]\nservers = [\"127.0.0.1:9\"]\n",
    )
    .unwrap();
    let mut lb = Proc::lb(&path);
    assert_eq!(lb.exit_code().await, Some(1), "{}", lb.text());
    let text = lb.text();
    assert!(text.contains("lb.toml:8:8: listener[1].bind: 127.0.3.20:9000 overlaps 0.0.0.0:9000"), "{text}");
    assert!(!text.contains("listening bind="), "nothing was bound: {text}");
}
