//! Bad configs are rejected with file:line:col, key and what was expected;
//! `ucp-lb check` exits 1 on each, and 0 on every example in config/.

use std::path::Path;
use std::process::Command;

const HEAD: &str = "[[listener]]\nbind = \"127.0.0.1:8443\"\npool = \"ucp\"\n\n";

/// (name, config text, the first error line expected)
fn bad_configs() -> Vec<(&'static str, String, &'static str)> {
    let pool = |rest: &str| format!("{HEAD}[pool.ucp]\nservers = [\"10.0.0.1:443\"]\n{rest}");
    vec![
        (
            "unknown top-level key",
            format!("{HEAD}[pool.ucp]\nservers = [\"10.0.0.1:443\"]\n[metrics]\nlisten = \"x\"\n"),
            "bad.toml:7:2: metrics: unknown field `metrics`, expected one of `workers`, `admin`, `defaults`, `listener`, `pool`",
        ),
        (
            "bad admin listen",
            format!("[admin]\nlisten = \"localhost:9900\"\n{HEAD}[pool.ucp]\nservers = [\"10.0.0.1:443\"]\n"),
            "bad.toml:2:10: admin.listen: expected an IP address and port like \"127.0.0.1:9900\", found \"localhost:9900\"",
        ),
        (
            "unknown pool key",
            pool("conect_timeout = \"3s\"\n"),
            "bad.toml:7:1: pool.ucp.conect_timeout: unknown field `conect_timeout`",
        ),
        (
            "unknown health key", pool("[pool.ucp.health]\nkinde = \"https\"\n"), "bad.toml:8:1: pool.ucp.health.kinde: unknown field `kinde`"
        ),
        (
            "bad check kind",
            pool("health = { kind = \"icmp\" }\n"),
            "bad.toml:7:19: pool.ucp.health.kind: expected \"https\", \"http\", \"tcp\" or \"none\", found \"icmp\"",
        ),
        (
            "bad expect_status",
            pool("[pool.ucp.health]\nexpect_status = [200, \"2x\"]\n"),
            "bad.toml:8:23: pool.ucp.health.expect_status: expected a status from 100 to 599 or a class like \"2xx\", found \"2x\"",
        ),
        (
            "check rise 0",
            pool("[pool.ucp.health]\nrise = 0\n"),
            "bad.toml:8:8: pool.ucp.health.rise: expected an integer from 1 to 1000, found 0",
        ),
        (
            "check path without slash",
            pool("[pool.ucp.health]\npath = \"_ping\"\n"),
            "bad.toml:8:8: pool.ucp.health.path: expected a path starting with '/' and without spaces, found \"_ping\"",
        ),
        (
            "unknown server key",
            format!("{HEAD}[pool.ucp]\nservers = [{{ address = \"10.0.0.1:443\", wieght = 2 }}]\n"),
            "bad.toml:6:40: pool.ucp.servers[0].wieght: unknown field `wieght`",
        ),
        (
            "prefer without a value",
            pool("prefer = { label = \"zone\" }\n"),
            "bad.toml:7:10: pool.ucp.prefer: expected both label and value: { label = \"zone\", value = \"dc1\" }",
        ),
        (
            "a label that is not a string",
            format!("{HEAD}[pool.ucp]\nservers = [{{ address = \"10.0.0.1:443\", labels = {{ zone = 1 }} }}]\n"),
            "bad.toml:6:49: pool.ucp.servers[0].labels.zone: expected a label name with a non-empty string value, found 1",
        ),
        (
            "a client certificate on a tcp check",
            pool("[pool.ucp.health]\nkind = \"tcp\"\nclient_cert = \"c.pem\"\nclient_key = \"k.pem\"\n"),
            "bad.toml:7:1: pool.ucp.health: a client certificate needs kind = \"https\"",
        ),
        (
            "duration without unit",
            pool("connect_timeout = \"3\"\n"),
            "bad.toml:7:19: pool.ucp.connect_timeout: expected a unit (ms, s, m, h or d) after the number, found \"3\"",
        ),
        (
            "bad duration",
            format!(
                "[defaults]\nfail_timeout = \"soon\"\n{HEAD}[pool.ucp]\nservers = [\"10.0.0.1:443\"]\n"
            ),
            "bad.toml:2:16: defaults.fail_timeout: expected a duration like \"500ms\", \"5s\", \"10m\" or \"1h\", found \"soon\"",
        ),
        (
            "connect_timeout switched off",
            pool("connect_timeout = \"none\"\n"),
            "bad.toml:7:19: pool.ucp.connect_timeout: must be longer than 0, found \"none\"",
        ),
        (
            "listener names a missing pool",
            "[[listener]]\nbind = \"127.0.0.1:8443\"\npool = \"ucpp\"\n[pool.ucp]\nservers = [\"10.0.0.1:443\"]\n".to_string(),
            "bad.toml:3:8: listener[0].pool: no pool named \"ucpp\" (defined: ucp)",
        ),
        (
            "duplicate bind",
            format!(
                "{HEAD}[[listener]]\nbind = \"127.0.0.1:8443\"\npool = \"ucp\"\n[pool.ucp]\nservers = [\"10.0.0.1:443\"]\n"
            ),
            "bad.toml:6:8: listener[1].bind: 127.0.0.1:8443 is already bound by the listener at line 2",
        ),
        (
            "empty pool",
            format!("{HEAD}[pool.ucp]\nservers = []\n"),
            "bad.toml:6:11: pool.ucp.servers: a pool needs at least one server",
        ),
        (
            "server without port",
            format!("{HEAD}[pool.ucp]\nservers = [\"manager-01\"]\n"),
            "bad.toml:6:12: pool.ucp.servers[0]: expected \"host:port\", found \"manager-01\": missing port",
        ),
        (
            "port out of range",
            format!("{HEAD}[pool.ucp]\nservers = [\"manager-01:70000\"]\n"),
            "bad.toml:6:12: pool.ucp.servers[0]: expected \"host:port\", found \"manager-01:70000\": port must be a number from 1 to 65535",
        ),
        (
            "weight 0",
            format!("{HEAD}[pool.ucp]\nservers = [{{ address = \"10.0.0.1:443\", weight = 0 }}]\n"),
            "bad.toml:6:49: pool.ucp.servers[0].weight: expected an integer from 1 to 1000, found 0",
        ),
        (
            "unknown balance",
            pool("balance = \"fastest\"\n"),
            "bad.toml:7:11: pool.ucp.balance: expected one of \"round_robin\", \"least_conn\", \"random_two\", \"source_hash\", \"source_hash_map\", found \"fastest\"",
        ),
        (
            "unknown all_down",
            pool("all_down = \"panic\"\n"),
            "bad.toml:7:12: pool.ucp.all_down: expected \"fail_open\" or \"reject\", found \"panic\"",
        ),
        (
            "bad retries",
            pool("retries = \"some\"\n"),
            "bad.toml:7:11: pool.ucp.retries: expected an integer from 0 to 1000 or \"all\", found \"some\"",
        ),
        (
            "negative max_fails",
            pool("max_fails = -1\n"),
            "bad.toml:7:13: pool.ucp.max_fails: expected an integer from 0 to 1000000 (0 switches passive ejection off), found -1",
        ),
        (
            "wrong type",
            pool("max_fails = \"two\"\n"),
            "bad.toml:7:13: pool.ucp.max_fails: invalid type: string \"two\", expected an integer",
        ),
        (
            "unknown server state",
            format!(
                "{HEAD}[pool.ucp]\nservers = [{{ address = \"10.0.0.1:443\", state = \"sleeping\" }}]\n"
            ),
            "bad.toml:6:48: pool.ucp.servers[0].state: expected \"up\", \"drain\" or \"down\", found \"sleeping\"",
        ),
        (
            "bind not an address",
            "[[listener]]\nbind = \"localhost:443\"\npool = \"ucp\"\n[pool.ucp]\nservers = [\"10.0.0.1:443\"]\n".to_string(),
            "bad.toml:2:8: listener[0].bind: expected an IP address and port like \"0.0.0.0:443\" or \"[::]:443\", found \"localhost:443\"",
        ),
        (
            "listener without pool",
            "[[listener]]\nbind = \"127.0.0.1:1\"\n[pool.ucp]\nservers = [\"10.0.0.1:443\"]\n"
                .to_owned(),
            "bad.toml:1:1: listener[0].pool: missing key: expected pool = \"NAME\"",
        ),
        (
            "workers 0",
            format!("workers = 0\n{HEAD}[pool.ucp]\nservers = [\"10.0.0.1:443\"]\n"),
            "bad.toml:1:11: workers: expected an integer from 1 to 1024, found 0",
        ),
        (
            "TOML syntax",
            format!("{HEAD}[pool.ucp]\nservers = [\"10.0.0.1:443\"\n"),
            "bad.toml:6:26: invalid TOML: unclosed array, expected `]`",
        ),
        (
            "a bare number for a duration",
            pool("connect_timeout = 3\n"),
            "bad.toml:7:19: pool.ucp.connect_timeout: expected a duration with a unit, found the number 3: write it as \"3s\"",
        ),
        (
            "a URL for a server",
            format!("{HEAD}[pool.ucp]\nservers = [\"https://manager-01:443\"]\n"),
            "bad.toml:6:12: pool.ucp.servers[0]: expected \"host:port\", found \"https://manager-01:443\": a server is an address, not a URL: drop \"https://\" and write \"manager-01:443\"",
        ),
        (
            "a duration below a millisecond",
            pool("[pool.ucp.health]\ninterval = \"0.0000001ms\"\n"),
            "bad.toml:8:12: pool.ucp.health.interval: must be at least 1ms, found \"0.0000001ms\"",
        ),
        (
            "a table where a string belongs",
            pool("balance = { kind = \"rr\" }\n"),
            "bad.toml:7:11: pool.ucp.balance: invalid type: table { kind = \"rr\" }, expected a string",
        ),
        (
            "max_connections 0",
            "[[listener]]\nbind = \"127.0.0.1:1\"\npool = \"ucp\"\nmax_connections = 0\n[pool.ucp]\nservers = [\"10.0.0.1:443\"]\n".to_string(),
            "bad.toml:4:19: listener[0].max_connections: expected an integer >= 1, found 0",
        ),
        (
            "relative control socket",
            format!("[admin]\ncontrol_socket = \"run/c.sock\"\n{HEAD}[pool.ucp]\nservers = [\"10.0.0.1:443\"]\n"),
            "bad.toml:2:18: admin.control_socket: expected an absolute path (or \"\" for none), found \"run/c.sock\"",
        ),
        ("empty file", String::new(), "bad.toml: the config is empty"),
        (
            "a wildcard and a specific address on one port",
            "[[listener]]\nbind = \"0.0.0.0:9000\"\npool = \"ucp\"\n[[listener]]\nbind = \"127.0.3.20:9000\"\npool = \"ucp\"\n[pool.ucp]\nservers = [\"10.0.0.1:443\"]\n".to_owned(),
            "bad.toml:5:8: listener[1].bind: 127.0.3.20:9000 overlaps 0.0.0.0:9000 of the listener at line 2 (listener[0]): 0.0.0.0 takes port 9000 on every IPv4 address, 127.0.3.20 included, so the start would fail to bind (address in use)",
        ),
        (
            "admin.listen equal to a listener",
            format!("[admin]\nlisten = \"127.0.0.1:8443\"\n{HEAD}[pool.ucp]\nservers = [\"10.0.0.1:443\"]\n"),
            "bad.toml:2:10: admin.listen: 127.0.0.1:8443 is also the bind of the listener at line 4 (listener[0]): the admin port never carries traffic; give [admin] listen another port",
        ),
        (
            "admin's default address taken by a listener",
            "[[listener]]\nbind = \"127.0.0.1:9900\"\npool = \"ucp\"\n[pool.ucp]\nservers = [\"10.0.0.1:443\"]\n".to_owned(),
            "bad.toml:2:8: admin.listen: 127.0.0.1:9900 is also the bind of the listener at line 2 (listener[0]): the admin port never carries traffic; the admin server listens there by default: set [admin] listen to another port",
        ),
        (
            "admin.listen on a listener's wildcard",
            format!("[admin]\nlisten = \"[::]:8443\"\n{HEAD}[pool.ucp]\nservers = [\"10.0.0.1:443\"]\n"),
            "bad.toml:2:10: admin.listen: [::]:8443 overlaps 127.0.0.1:8443 of the listener at line 4 (listener[0]) (the admin socket is not IPv6-only: its [::] takes IPv4 too): the start would fail to bind the admin port",
        ),
        (
            "an IPv4-mapped listener address",
            "[[listener]]\nbind = \"[::ffff:10.0.0.1]:443\"\npool = \"ucp\"\n[pool.ucp]\nservers = [\"10.0.0.1:443\"]\n".to_owned(),
            "bad.toml:2:8: listener[0].bind: [::ffff:10.0.0.1]:443 is an IPv4 address written as IPv6, which an IPv6-only socket cannot bind: write \"10.0.0.1:443\"",
        ),
        (
            "two servers of a pool with one name",
            format!("{HEAD}[pool.ucp]\nservers = [{{ address = \"10.0.0.1:443\", name = \"m1\" }}, {{ address = \"10.0.0.2:443\", name = \"m1\" }}]\n"),
            "bad.toml:6:90: pool.ucp.servers[1].name: servers[0] has the name \"m1\" too: /drain, /enable and /down by name would act on both; give each server its own name",
        ),
        (
            "a port above 65535",
            "[[listener]]\nbind = \"0.0.0.0:70000\"\npool = \"ucp\"\n[pool.ucp]\nservers = [\"10.0.0.1:443\"]\n".to_owned(),
            "bad.toml:2:8: listener[0].bind: expected an IP address and port like \"0.0.0.0:443\" or \"[::]:443\", found \"0.0.0.0:70000\": the port 70000 is out of range (a port is from 1 to 65535)",
        ),
        (
            "an IPv4 part above 255",
            format!("[admin]\nlisten = \"300.1.1.1:9900\"\n{HEAD}[pool.ucp]\nservers = [\"10.0.0.1:443\"]\n"),
            "bad.toml:2:10: admin.listen: expected an IP address and port like \"127.0.0.1:9900\", found \"300.1.1.1:9900\": \"300.1.1.1\" is not an IPv4 address: 300 is not a number from 0 to 255",
        ),
        (
            "a pool table twice",
            format!("{HEAD}[pool.ucp]\nservers = [\"10.0.0.1:443\"]\n[pool.ucp]\nbalance = \"least_conn\"\n"),
            "bad.toml:7:7: invalid TOML: duplicate key: the table [pool.ucp] is defined twice (first at line 5): merge the two into one",
        ),
    ]
}

#[test]
fn every_bad_config_names_file_line_column_and_key() {
    let cases = bad_configs();
    assert!(cases.len() >= 15);
    let mut wrong = Vec::new();
    for (name, text, expected) in &cases {
        match ucp_lb::config::parse(text, "bad.toml") {
            Ok(_) => wrong.push(format!("{name}: accepted")),
            Err(e) => {
                let first = e.0[0].to_string();
                if !first.starts_with(expected) {
                    wrong.push(format!("{name}:\n  got:      {first}\n  expected: {expected}"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Seven mistakes of different kinds, three of them wrong types, in one
/// file: one run reports each, in file order.
#[test]
fn every_mistake_of_a_file_is_reported_in_one_run_in_file_order() {
    let text = "workers = \"two\"\n\
                [admin]\nlisten = \"localhost:9900\"\n\
                [[listener]]\nbind = \"127.0.0.1:8443\"\npool = \"ucp\"\nmax_connections = \"many\"\n\
                [defaults]\nconnect_timeout = 3\nbalanse = \"least_conn\"\n\
                [pool.ucp]\nservers = [\"https://manager-01:443\", { address = \"10.0.0.2:443\", weight = 0 }]\n\
                [pool.ucp.health]\nrise = 0\n";
    let e = ucp_lb::config::parse(text, "bad.toml").unwrap_err();
    let lines: Vec<String> = e.0.iter().map(|e| e.to_string()).collect();
    let expected = [
        "bad.toml:1:11: workers: invalid type: string \"two\", expected an integer",
        "bad.toml:3:10: admin.listen: expected an IP address and port",
        "bad.toml:7:19: listener[0].max_connections: invalid type: string \"many\", expected an integer",
        "bad.toml:9:19: defaults.connect_timeout: expected a duration with a unit, found the number 3",
        "bad.toml:10:1: defaults.balanse: unknown field `balanse`",
        "bad.toml:12:12: pool.ucp.servers[0]: expected \"host:port\", found \"https://manager-01:443\"",
        "bad.toml:12:75: pool.ucp.servers[1].weight: expected an integer from 1 to 1000, found 0",
        "bad.toml:14:8: pool.ucp.health.rise: expected an integer from 1 to 1000, found 0",
    ];
    assert_eq!(lines.len(), expected.len(), "{}", lines.join("\n"));
    for (got, want) in lines.iter().zip(expected) {
        assert!(got.starts_with(want), "got:      {got}\nexpected: {want}\nall:\n{}", lines.join("\n"));
    }
}

#[test]
fn all_errors_of_a_config_are_reported_together() {
    let text = format!("{HEAD}[pool.ucp]\nservers = [\"a\", {{ address = \"b:1\", weight = 0 }}]\nbalance = \"x\"\n");
    let e = ucp_lb::config::parse(&text, "bad.toml").unwrap_err();
    assert_eq!(e.0.len(), 3, "{e}");
}

fn ucp_lb() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ucp-lb"))
}

#[test]
fn check_exits_1_on_each_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text, expected) in bad_configs() {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = ucp_lb().arg("check").arg("--offline").arg("--config").arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let want = expected.replacen("bad.toml", &path.display().to_string(), 1);
        assert!(stderr.contains(&want), "{name}: stderr was {stderr}");
    }
}

#[test]
fn check_exits_1_on_a_missing_file_and_on_an_unresolvable_name() {
    let out = ucp_lb().args(["check", "--config", "/nonexistent/lb.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/lb.toml: cannot read the config file"));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    std::fs::write(&path, format!("{HEAD}[pool.ucp]\nservers = [\"no-such-host.invalid:443\"]\n")).unwrap();
    let out = ucp_lb().arg("check").arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(":6:12: pool.ucp.servers[0]: cannot resolve \"no-such-host.invalid\""), "{stderr}");
}

#[test]
fn check_accepts_every_example_in_config_dir() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            n += 1;
            let out = ucp_lb().arg("check").arg("--offline").arg("--config").arg(&path).output().unwrap();
            assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
            assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
        }
    }
    assert!(n >= 3, "config/ holds the examples");
}

#[test]
fn check_prints_resolved_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    std::fs::write(&path, format!("{HEAD}[pool.ucp]\nservers = [\"localhost:443\", \"127.0.0.9:443\"]\n")).unwrap();
    let out = ucp_lb().arg("check").env("UCP_LB_CONFIG", &path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("127.0.0.1:8443 -> pool ucp"), "{stdout}");
    assert!(stdout.contains("localhost:443 -> 127.0.0.1:443"), "{stdout}");
    assert!(stdout.contains("127.0.0.9:443 -> 127.0.0.9:443"), "{stdout}");
}

#[test]
fn an_unreadable_ca_file_fails_the_check_at_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    let text = format!(
        "{HEAD}[pool.ucp]\nservers = [\"10.0.0.1:443\"]\n[pool.ucp.health]\nca_file = \"/nonexistent/ca.pem\"\n"
    );
    std::fs::write(&path, text).unwrap();
    // Not --offline: that one leaves the node's own files (CA, token) unread.
    let out = ucp_lb().arg("check").arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(":8:11: pool.ucp.health.ca_file: cannot read CA file /nonexistent/ca.pem"), "{stderr}");
}

/// The keys of slow start, closing on server down and keepalive: each
/// mistake at its line and column, all in one run.
#[test]
fn failure_and_keepalive_keys_report_every_mistake_at_its_place() {
    let text = "[[listener]]\nbind = \"127.0.0.1:8443\"\npool = \"ucp\"\nclient_keepalive = \"yes\"\n\
                [pool.ucp]\nslow_start = \"fast\"\non_server_down = \"kill\"\nclose_spread = 5\n\
                server_keepalive = { idle = \"1500ms\", interval = \"40000s\", count = 0, probes = 3 }\n\
                servers = [{ address = \"10.0.0.1:443\", slow_start = \"-1s\" }]\n";
    let e = ucp_lb::config::parse(text, "bad.toml").unwrap_err();
    let lines: Vec<String> = e.0.iter().map(|e| e.to_string()).collect();
    let expected = [
        "bad.toml:4:20: listener[0].client_keepalive: invalid type: string \"yes\", expected false, true or a table",
        "bad.toml:6:14: pool.ucp.slow_start: expected a duration like",
        "bad.toml:7:18: pool.ucp.on_server_down: expected \"keep\" or \"close\", found \"kill\"",
        "bad.toml:8:16: pool.ucp.close_spread: expected a duration with a unit, found the number 5",
        "bad.toml:9:29: pool.ucp.server_keepalive.idle: expected whole seconds from 1s to 32767s",
        "bad.toml:9:50: pool.ucp.server_keepalive.interval: expected whole seconds from 1s to 32767s",
        "bad.toml:9:68: pool.ucp.server_keepalive.count: expected an integer from 1 to 127, found 0",
        "bad.toml:9:71: pool.ucp.server_keepalive.probes: unknown field `probes`",
        "bad.toml:10:53: pool.ucp.servers[0].slow_start: expected a duration like",
    ];
    assert_eq!(lines.len(), expected.len(), "{}", lines.join("\n"));
    for (got, want) in lines.iter().zip(expected) {
        assert!(got.starts_with(want), "got:      {got}\nexpected: {want}\nall:\n{}", lines.join("\n"));
    }
    // And the good forms pass, with check's warnings where they change little.
    let good = "[[listener]]\nbind = \"127.0.0.1:8443\"\npool = \"ucp\"\nclient_keepalive = false\n\
                [defaults]\nclient_keepalive = { idle = \"5m\" }\n\
                [pool.ucp]\nbalance = \"source_hash\"\nslow_start = \"30s\"\non_server_down = \"close\"\n\
                close_spread = \"0s\"\nserver_keepalive = true\nservers = [\"10.0.0.1:443\"]\n";
    let c = ucp_lb::config::parse(good, "good.toml").unwrap();
    let warnings: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    assert!(warnings.iter().any(|w| w.contains("slow_start: changes nothing here")), "{warnings:?}");
    assert!(warnings.iter().any(|w| w.contains("on_server_down: the pool has no active check")), "{warnings:?}");
    assert_eq!(c.listeners[0].client_keepalive, None);
    let p = &c.pools[0].settings;
    assert_eq!((p.slow_start.as_secs(), p.close_spread.as_secs()), (30, 0));
    assert_eq!(p.server_keepalive, Some(ucp_lb::config::Keepalive::DEFAULT));
}

/// A mistake in `[defaults]`' client_keepalive is one mistake, at its own
/// key, however many listeners inherit it.
#[test]
fn a_defaults_keepalive_mistake_is_reported_once_at_its_key() {
    let text = "[[listener]]\nbind = \"127.0.0.1:1\"\npool = \"p\"\n[[listener]]\nbind = \"127.0.0.1:2\"\npool = \"p\"\n\
                [defaults]\nclient_keepalive = { count = 0 }\n[pool.p]\nservers = [\"127.0.0.1:9\"]\n";
    let e = ucp_lb::config::parse(text, "bad.toml").unwrap_err();
    let lines: Vec<String> = e.0.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        lines,
        ["bad.toml:8:30: defaults.client_keepalive.count: expected an integer from 1 to 127, found 0"],
        "{lines:?}"
    );
}

/// A pool's `shutdown_timeout` is accepted (every `[defaults]` key may be
/// set in a pool) but the grace period is the process's: `check` says so
/// at its line, and `[defaults]`'s value is the one in force.
#[test]
fn a_pools_shutdown_timeout_is_warned_of_as_changing_nothing() {
    let text = "[defaults]\nshutdown_timeout = \"7s\"\n[[listener]]\nbind = \"127.0.0.1:8443\"\npool = \"p\"\n\
                [pool.p]\nservers = [\"10.0.0.1:443\"]\nshutdown_timeout = \"5m\"\n";
    let c = ucp_lb::config::parse(text, "t.toml").unwrap();
    let warnings: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        warnings.iter().any(|w| w.starts_with("t.toml:8:20: pool.p.shutdown_timeout: changes nothing here")),
        "{warnings:?}"
    );
    assert_eq!(c.defaults.shutdown_timeout.as_secs(), 7);
}

fn check_offline(text: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    std::fs::write(&path, text).unwrap();
    let out = ucp_lb().arg("check").arg("--offline").arg(&path).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What the kernel allows on one port passes: listeners' IPv6 sockets are
/// IPv6-only (IPV6_V6ONLY), so `[::]` beside `0.0.0.0` binds both, as do two
/// specific addresses, and the admin port beside them on another address.
#[test]
fn binds_the_kernel_allows_on_one_port_pass_the_check() {
    let text = "[admin]\nlisten = \"127.0.0.2:9000\"\n\
                [[listener]]\nbind = \"0.0.0.0:9000\"\npool = \"ucp\"\n\
                [[listener]]\nbind = \"[::]:9000\"\npool = \"ucp\"\n\
                [[listener]]\nbind = \"[::1]:9001\"\npool = \"ucp\"\n\
                [[listener]]\nbind = \"127.0.0.1:9001\"\npool = \"ucp\"\n\
                [pool.ucp]\nservers = [\"10.0.0.1:443\"]\n";
    let (code, stdout, stderr) = check_offline(text);
    // 127.0.0.2:9000 is inside 0.0.0.0:9000: the admin port overlaps.
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stderr.contains("admin.listen: 127.0.0.2:9000 overlaps 0.0.0.0:9000 of the listener at line 4"),
        "{stderr}"
    );
    let (code, stdout, stderr) = check_offline(&text.replace("127.0.0.2:9000", "127.0.0.2:9002"));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("[::]:9000 -> pool ucp") && stdout.contains("0.0.0.0:9000 -> pool ucp"), "{stdout}");
}

/// A pool nothing sends clients to is warned of (exit 0); the summary
/// names servers as configured, shows an IP literal's address without
/// resolving, and says what access rules do with the clients they do not
/// name.
#[test]
fn check_warns_of_an_unused_pool_and_its_summary_names_servers_and_access_truly() {
    let text = "[[listener]]\nbind = \"127.0.0.1:8443\"\npool = \"ucp\"\naccess = [\"allow 10.0.0.0/8\", \"deny all\"]\n\
                [[listener]]\nbind = \"127.0.0.1:8444\"\npool = \"ucp\"\naccess = [\"deny 10.0.0.9\"]\n\
                [pool.ucp]\nservers = [{ address = \"10.0.0.1:443\", name = \"manager-01\" }, \"manager-02.example:443\"]\n\
                [pool.dtr]\nservers = [\"10.0.0.5:443\"]\n";
    let (code, stdout, stderr) = check_offline(text);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(
            "lb.toml:11:1: pool.dtr: no listener or route sends clients to this pool: name it in a listener's pool or routes, or remove it"
        ),
        "{stderr}"
    );
    for want in [
        "access: allow 10.0.0.0/8, deny all (the first rule that matches decides; every other client is refused)",
        "access: deny 10.0.0.9 (the first rule that matches decides; a client no rule matches is let in)",
        "manager-01 (10.0.0.1:443) -> 10.0.0.1:443 (weight 1)",
        "manager-02.example:443 -> not resolved (--offline) (weight 1)",
        "10.0.0.5:443 -> 10.0.0.5:443 (weight 1)",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in\n{stdout}");
    }
}
