//! The shipped files agree with each other, with the binary and with the
//! config keys: every `ucp-lb` command line in them takes only flags the
//! binary has; keepalived's track script and the image's HEALTHCHECK ask
//! the admin address of the config that is run (`healthcheck -c`), for each
//! shipped config; every restart policy is `on-failure` and every container
//! run has the control socket's volume; every stop timeout outlasts the
//! stop grace plus `shutdown_timeout`; every metric and environment
//! variable named exists; the compose file is valid for docker-compose.
//! (tests/deploy.rs runs keepalived's and systemd's own checks,
//! tests/monitoring.rs promtool's.)

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{BIN, external_tool};

/// The files a release ships beside the binary, as the repository has them.
const SHIPPED: &[&str] = &[
    "config/keepalived.conf",
    "config/ucp-lb.service",
    "config/ucp-lb@.service",
    "config/prometheus.yml",
    "config/ucp-lb-alerts.yml",
    "config/grafana-dashboard.json",
    "docker/Dockerfile",
    "docker/compose.yml",
    "README.md",
    "docs/operations.md",
];

/// The example configs a node runs (as /etc/ucp-lb/lb.toml).
const CONFIGS: &[&str] = &["config/ucp.toml", "config/combined.toml", "config/dtr-sidecar.toml", "config/lb.toml"];

/// Where the units, the image and keepalived expect the config.
const NODE_CONFIG: &str = "/etc/ucp-lb/lb.toml";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(name: &str) -> String {
    std::fs::read_to_string(root().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The file's lines, a leading `#` taken off, shell (`\`) continuations joined.
fn joined_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        // A comment line is read as what it shows (a command in a comment
        // continues on the next comment line).
        let l = line.trim_end();
        let l = l.trim_start().strip_prefix('#').unwrap_or(l);
        if let Some(head) = l.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
        } else {
            cur.push_str(l);
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The sub-commands `ucp-lb --help` lists.
fn subcommands() -> Vec<String> {
    let help = help(None);
    let after = help.split("Commands:").nth(1).expect("ucp-lb --help lists its commands");
    after
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|w| w != "help")
        .collect()
}

fn help(sub: Option<&str>) -> String {
    let mut cmd = Command::new(BIN);
    cmd.args(sub).arg("--help");
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{sub:?} --help: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every `ucp-lb` command line in `text`: the words after an `ucp-lb`
/// (or `.../ucp-lb`) word that a flag or a sub-command follows, up to the
/// end of the command (a quote, a comment, a pipe, a redirection, `&&`).
fn command_lines(text: &str, subs: &[String]) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for line in joined_lines(text) {
        // JSON arrays (HEALTHCHECK CMD, compose's command) as words.
        let line = line.replace("\", \"", " ").replace("[\"", " ").replace("\"]", " ");
        let words: Vec<&str> = line.split_whitespace().collect();
        for (i, w) in words.iter().enumerate() {
            let w = w.trim_start_matches(['"', '`', '(']);
            // The binary, or the image (its arguments go to the binary);
            // not a container's name.
            let image = w.starts_with("ucp-lb:") && !w.contains('/');
            if !(w == "ucp-lb" || (w.ends_with("/ucp-lb") && !w.contains(':')) || image)
                || (i > 0 && words[i - 1] == "--name")
            {
                continue;
            }
            let mut args = Vec::new();
            for a in &words[i + 1..] {
                if a.starts_with(['#', '>', '|']) || *a == "&&" || *a == ";" {
                    break;
                }
                let bare = a.trim_end_matches(['.', ',', ':']);
                let ends = bare.len() < a.len() || bare.ends_with(['"', '`', ')', ';']);
                let a = bare.trim_matches(['"', '`', '[', ']', ')', ';', ',']);
                if !a.is_empty() {
                    args.push(a.to_owned());
                }
                if ends {
                    break;
                }
            }
            let starts = args.first().is_some_and(|a| a.starts_with('-') || subs.contains(a));
            if starts {
                found.push(args);
            }
        }
    }
    found
}

/// Every `ucp-lb` command line of every shipped file parses: run with
/// `--help` appended, clap parses every word before it (an unknown or
/// renamed flag, a bad value or a missing one exits 2) and then prints
/// help instead of running anything. A flag dropped from the binary
/// cannot stay behind in a unit, a track script, the image or the docs.
#[test]
fn every_command_line_parses() {
    let subs = subcommands();
    assert!(subs.iter().any(|s| s == "healthcheck") && subs.iter().any(|s| s == "check"), "{subs:?}");
    let mut seen = 0;
    for file in SHIPPED {
        for args in command_lines(&read(file), &subs) {
            let out = Command::new(BIN).args(&args).arg("--help").env_remove("UCP_LB_CONFIG").output().unwrap();
            assert!(
                out.status.success(),
                "{file}: `ucp-lb {}` does not parse: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            seen += 1;
        }
    }
    // The check itself sees a bad one.
    let bad = command_lines("script \"/usr/local/bin/ucp-lb healthcheck --urll x\"", &subs).pop().unwrap();
    assert_eq!(Command::new(BIN).args(&bad).arg("--help").output().unwrap().status.code(), Some(2));
    assert!(seen >= 20, "found only {seen} command lines: the extraction broke");
}

/// The admin URL `healthcheck` would ask for `config`, as it says it.
fn asked_url(args: &[String], config: &Path) -> String {
    let args: Vec<String> =
        args.iter().map(|a| if a == NODE_CONFIG { config.display().to_string() } else { a.clone() }).collect();
    let out = Command::new(BIN).args(&args).env_remove("UCP_LB_CONFIG").output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(matches!(out.status.code(), Some(0 | 1)), "{args:?}: {said}");
    said.split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("{args:?} names no URL: {said}"))
        .trim_end_matches(':')
        .to_owned()
}

/// `[admin] listen` of a shipped config, as a health check asks it.
fn admin_url(config: &str) -> String {
    let text = read(config);
    let listen = text
        .split("[admin]")
        .nth(1)
        .and_then(|t| t.lines().find_map(|l| l.trim().strip_prefix("listen = \"")))
        .and_then(|v| v.split('"').next())
        .unwrap_or("127.0.0.1:9900");
    let local = listen.replace("0.0.0.0:", "127.0.0.1:").replace("[::]:", "[::1]:");
    format!("http://{local}/healthz")
}

/// keepalived's track script and the image's HEALTHCHECK name the config
/// the units and the image run, and ask what its `[admin] listen` says:
/// for each shipped config, wildcard or not, without DNS, the token or
/// the CA files (combined.toml names a token file no test host has).
#[test]
fn the_health_checks_ask_the_admin_address_of_the_config_that_runs() {
    let subs = subcommands();
    let keepalived = read("config/keepalived.conf");
    let script = keepalived
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("script \"/usr/local/bin/ucp-lb"))
        .expect("a track script running ucp-lb");
    let dockerfile = read("docker/Dockerfile");
    let hc = dockerfile.lines().skip_while(|l| !l.starts_with("HEALTHCHECK")).nth(1).expect("a HEALTHCHECK CMD");
    for (what, line) in [("keepalived.conf's track script", script), ("the Dockerfile's HEALTHCHECK", hc)] {
        let args = command_lines(line, &subs).pop().unwrap_or_else(|| panic!("{what}: {line}"));
        assert_eq!(args.first().map(String::as_str), Some("healthcheck"), "{what}: {line}");
        assert!(!args.iter().any(|a| a == "--url"), "{what} must follow [admin] listen, not a fixed URL: {line}");
        let named = args.windows(2).find(|w| w[0] == "-c" || w[0] == "--config").map(|w| w[1].as_str());
        assert_eq!(named, Some(NODE_CONFIG), "{what}: {line}");
        for config in CONFIGS {
            assert_eq!(asked_url(&args, &root().join(config)), admin_url(config), "{what} with {config}");
        }
    }
    // The config they name is the one that runs.
    assert!(dockerfile.contains(&format!("ENV UCP_LB_CONFIG={NODE_CONFIG}")));
    for unit in ["config/ucp-lb.service", "config/ucp-lb@.service"] {
        let start = read(unit).lines().find(|l| l.starts_with("ExecStart=")).map(str::to_owned).unwrap();
        assert!(start.contains(&format!("--config {NODE_CONFIG}")), "{unit}: {start}");
    }
    let compose = read("docker/compose.yml");
    let commands: Vec<&str> = compose.lines().filter(|l| l.trim_start().starts_with("command:")).collect();
    assert_eq!(commands.len(), 2, "{commands:?}");
    for c in commands {
        assert!(c.contains(&format!("\"--config\", \"{NODE_CONFIG}\"")), "{c}");
        assert!(c.contains("\"--upgrade\""), "{c}");
    }
    // Prometheus scrapes the port the examples listen on.
    let prom = read("config/prometheus.yml");
    let port = admin_url("config/ucp.toml").rsplit(':').next().unwrap().trim_end_matches("/healthz").to_owned();
    assert!(prom.contains(&format!(":{port}\"")), "prometheus.yml scrapes :{port}");
    assert!(dockerfile.lines().any(|l| l.starts_with("EXPOSE") && l.split_whitespace().any(|p| p == port)));
}

/// A duration as the shipped files write it: `3s`, `40`, `40s`, `1m`.
fn secs(v: &str) -> Duration {
    let v = v.trim().trim_matches('"');
    let v = if v.chars().all(|c| c.is_ascii_digit()) { format!("{v}s") } else { v.to_owned() };
    ucp_lb::config::parse_duration(&v).unwrap_or_else(|e| panic!("{v}: {e}")).unwrap_or_default()
}

/// The longest `shutdown_timeout` a shipped config gives (its default
/// when none sets it).
fn longest_shutdown_timeout() -> Duration {
    let default = ucp_lb::config::keys::find("defaults.shutdown_timeout").expect("the key").default;
    let mut longest = secs(default);
    for config in CONFIGS {
        for l in read(config).lines().map(str::trim).filter(|l| l.starts_with("shutdown_timeout")) {
            let v = l.split('=').nth(1).unwrap().split('#').next().unwrap();
            longest = longest.max(secs(v));
        }
    }
    longest
}

/// Restart only on failure (a process that handed over exits 0 and must
/// stay stopped), the control socket's volume on every container that
/// runs, and a stop timeout beyond the stop grace plus `shutdown_timeout`,
/// in every unit, compose service and `docker run` shipped.
#[test]
fn restart_policy_volumes_and_stop_timeouts_agree() {
    let drain = longest_shutdown_timeout();
    // keepalived's interval x fall: the stop grace must outlast it.
    let keepalived = read("config/keepalived.conf");
    let num = |key: &str| -> u64 {
        keepalived
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let track = Duration::from_secs(num("interval ") * num("fall "));
    for unit in ["config/ucp-lb.service", "config/ucp-lb@.service"] {
        let text = read(unit);
        let value = |key: &str| text.lines().find_map(|l| l.strip_prefix(key)).map(str::to_owned);
        assert_eq!(value("Restart=").as_deref(), Some("on-failure"), "{unit}");
        let grace = value("Environment=UCP_LB_STOP_GRACE=").map(|v| secs(&v)).unwrap_or_default();
        assert!(grace > track, "{unit}: stop grace {grace:?} within the track script's {track:?}");
        let stop = secs(&value("TimeoutStopSec=").expect("TimeoutStopSec"));
        assert!(stop > grace + drain, "{unit}: TimeoutStopSec {stop:?} <= {grace:?} + {drain:?}");
    }
    let compose = read("docker/compose.yml");
    let key = |k: &str| compose.lines().filter_map(|l| l.trim().strip_prefix(k)).map(str::trim).collect::<Vec<_>>();
    assert_eq!(key("restart:"), ["on-failure"]);
    let grace = secs(key("UCP_LB_STOP_GRACE:")[0]);
    assert!(grace > track);
    let stop = secs(key("stop_grace_period:")[0]);
    assert!(stop > grace + drain, "compose: stop_grace_period {stop:?} <= {grace:?} + {drain:?}");
    let services = compose.lines().filter(|l| l.trim_start().starts_with("command:")).count();
    let socket_volumes =
        compose.lines().filter(|l| l.trim_start().starts_with("- ") && l.contains(":/run/ucp-lb")).count();
    assert_eq!(socket_volumes, services, "every compose service mounts the control socket's volume");
    // Every `docker run` of the image that keeps running (-d).
    let mut runs = 0;
    for file in ["docker/Dockerfile", "docker/compose.yml", "README.md", "docs/operations.md"] {
        for line in joined_lines(&read(file)).iter().filter(|l| l.contains("docker run -d")) {
            runs += 1;
            let words: Vec<&str> = line.split_whitespace().collect();
            let arg = |flag: &str| {
                words.iter().enumerate().find_map(|(i, w)| {
                    w.strip_prefix(&format!("{flag}="))
                        .or_else(|| (*w == flag).then(|| words.get(i + 1).copied()).flatten())
                })
            };
            assert_eq!(arg("--restart"), Some("on-failure"), "{file}: {line}");
            assert!(line.contains(":/run/ucp-lb"), "{file}: no control socket volume: {line}");
            assert!(line.contains("--upgrade"), "{file}: {line}");
            let grace = arg("UCP_LB_STOP_GRACE").map(secs).unwrap_or_default();
            let grace = words.iter().find_map(|w| w.strip_prefix("UCP_LB_STOP_GRACE=")).map(secs).unwrap_or(grace);
            let stop = secs(arg("--stop-timeout").unwrap_or_else(|| panic!("{file}: no --stop-timeout: {line}")));
            assert!(stop > grace + drain, "{file}: --stop-timeout {stop:?} <= {grace:?} + {drain:?}: {line}");
        }
    }
    assert!(runs >= 4, "found {runs} docker runs");
    // No other restart policy anywhere.
    for file in SHIPPED {
        for l in read(file).lines() {
            for bad in ["--restart=unless-stopped", "--restart unless-stopped", "--restart=always", "restart: always"] {
                assert!(!l.contains(bad), "{file}: {l}");
            }
        }
    }
}

/// Every `ucp_lb_*` metric the shipped files name (alerts, scrape config,
/// dashboard, README, docs) is one src/metrics.rs declares, so one
/// renamed there cannot stay behind in an alert or the docs.
#[test]
fn every_metric_and_variable_named_exists() {
    let declared = read("src/metrics.rs");
    let declared: Vec<&str> = declared.lines().filter_map(|l| l.split("&str = \"").nth(1)?.split('"').next()).collect();
    assert!(declared.len() >= 20, "{declared:?}");
    for file in SHIPPED {
        let text = read(file);
        let mut rest = text.as_str();
        while let Some(i) = rest.find("ucp_lb_") {
            let tail = &rest[i..];
            let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
            let name = &tail[..end];
            let base = ["_bucket", "_count", "_sum"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
            // A family named by its prefix (`ucp_lb_upgrade_*`) is fine when one matches.
            let ok = declared.contains(&base)
                || (base.ends_with('_') && declared.iter().any(|d| d.starts_with(base)))
                || !base.contains("ucp_lb_");
            assert!(ok, "{file} names {name}, which src/metrics.rs does not declare");
            rest = &tail[end..];
        }
    }
    // Every environment variable they set is one the binary (or, for the
    // compose file's own, compose) reads.
    let sources: String =
        ["src/control/lifecycle.rs", "src/main.rs", "src/cli/mod.rs"].iter().map(|f| read(f)).collect();
    for file in SHIPPED {
        let text = read(file);
        for (i, _) in text.match_indices("UCP_LB_") {
            let tail = &text[i..];
            let end = tail.find(|c: char| !(c.is_ascii_uppercase() || c == '_')).unwrap_or(tail.len());
            let var = &tail[..end];
            let compose_own = ["UCP_LB_IMAGE", "UCP_LB_CONFIG_DIR", "UCP_LB_DTR_CONFIG_DIR"].contains(&var);
            assert!(
                compose_own || sources.contains(&format!("\"{var}\"")),
                "{file} names {var}, which the binary does not read"
            );
        }
    }
}

/// docker/compose.yml is valid for docker-compose, in both profiles
/// (offline: nothing is pulled or started).
#[test]
fn compose_file_is_valid() {
    let Some(compose) = external_tool(&["/usr/bin/docker-compose", "/usr/local/bin/docker-compose"], "docker-compose")
    else {
        return;
    };
    for profile in ["lb", "dtr-sidecar"] {
        let out = Command::new(&compose)
            .args(["-f", "docker/compose.yml", "--profile", profile, "config", "-q"])
            .current_dir(root())
            .env_remove("UCP_LB_IMAGE")
            .output()
            .unwrap();
        assert!(out.status.success(), "{profile}: {}", String::from_utf8_lossy(&out.stderr));
    }
}
