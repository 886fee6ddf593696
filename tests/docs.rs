//! The documentation cannot drift from the binary: every key `ucp-lb check
//! --print` writes for the configs in config/ is in docs/configuration.md
//! (as its dotted path, the convention that file states at its top) and in
//! lb.toml(5); docs/man/ucp-lb.1 is exactly what `ucp-lb --man` prints.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::BIN;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every example config, config/lb.toml (every key) first.
fn example_configs() -> Vec<PathBuf> {
    let mut configs: Vec<PathBuf> = std::fs::read_dir(repo("config"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && !p.ends_with("lb.toml"))
        .collect();
    configs.sort();
    configs.insert(0, repo("config/lb.toml"));
    configs
}

/// What `check --offline --print` writes for `config`.
fn print(config: &Path) -> String {
    let out = Command::new(BIN).args(["check", "--offline", "--print"]).arg(config).output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "check --print {}: {}", config.display(), String::from_utf8_lossy(&out.stderr));
    stdout
}

/// `key = value` or, for a key left at a default with no value to write,
/// `# key = (what applies)`.
fn key_line(line: &str) -> Option<(&str, &str)> {
    let line = line.strip_prefix("# ").unwrap_or(line);
    let (key, value) = line.split_once(" = ")?;
    key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_').then_some((key, value))
}

/// The keys of an inline table `{ a = 1, b = "x" }` (the keepalive tables,
/// a server entry).
fn inline_keys(value: &str) -> Vec<&str> {
    let inner = value.trim().trim_end_matches(',').trim_start_matches('{');
    let inner = inner.split('}').next().unwrap_or("");
    inner.split(", ").filter_map(|kv| key_line(kv.trim()).map(|(k, _)| k)).collect()
}

/// Every key path in `printed`, pool names as `<name>` and arrays of tables
/// as `[]`: `workers`, `admin.listen`, `listener[].bind`,
/// `pool.<name>.server_keepalive.idle`, `pool.<name>.servers[].address`,
/// `pool.<name>.health.rise`.
fn key_paths(printed: &str) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    let mut table = String::new();
    let mut in_servers = false;
    for line in printed.lines() {
        let line = line.split("  #").next().unwrap_or("").trim_end();
        if in_servers {
            if line.trim() == "]" {
                in_servers = false;
            } else {
                for k in inline_keys(line.trim()) {
                    paths.insert(format!("{table}.servers[].{k}"));
                }
            }
            continue;
        }
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            table = format!("{name}[]");
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let mut parts: Vec<&str> = name.split('.').collect();
            if parts.first() == Some(&"pool") && parts.len() > 1 {
                parts[1] = "<name>";
            }
            table = parts.join(".");
            continue;
        }
        let Some((key, value)) = key_line(line) else { continue };
        let path = if table.is_empty() { key.to_owned() } else { format!("{table}.{key}") };
        if key == "servers" {
            in_servers = value.trim() == "[";
        }
        // The keys of `routes` and `expect_json` are names and fields of the
        // user's, not lb.toml's.
        if value.trim_start().starts_with('{') && key != "routes" && key != "expect_json" {
            for k in inline_keys(value) {
                paths.insert(format!("{path}.{k}"));
            }
        }
        paths.insert(path);
    }
    paths
}

#[test]
fn key_paths_are_read_from_the_print() {
    let printed = "# workers = (one per CPU)                # default\n\n[admin]\nlisten = \"x\"  # set\n\n\
                   [[listener]]\nbind = \"y\"  # set\nclient_keepalive = { idle = \"1m\", count = 6 } # set\n\n\
                   [pool.ucp]\nservers = [\n  { address = \"a:1\", weight = 1 },\n]\n\n[pool.ucp.health]\n\
                   # port = (the server's)  # default\nexpect_json = { Healthy = true }  # set\n";
    let paths: Vec<String> = key_paths(printed).into_iter().collect();
    assert_eq!(
        paths,
        [
            "admin.listen",
            "listener[].bind",
            "listener[].client_keepalive",
            "listener[].client_keepalive.count",
            "listener[].client_keepalive.idle",
            "pool.<name>.health.expect_json",
            "pool.<name>.health.port",
            "pool.<name>.servers",
            "pool.<name>.servers[].address",
            "pool.<name>.servers[].weight",
            "workers",
        ]
    );
}

#[test]
fn every_key_check_prints_is_in_the_configuration_reference() {
    let reference = read("docs/configuration.md");
    let mut missing = BTreeSet::new();
    let mut seen = 0;
    for config in example_configs() {
        for path in key_paths(&print(&config)) {
            seen += 1;
            if !reference.contains(&format!("`{path}`")) {
                missing.insert(path);
            }
        }
    }
    assert!(seen > 40, "check --print wrote only {seen} keys: is the parser above out of date?");
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not document these keys (write each as `dotted.path` in a table's key column):\n  {}",
        missing.into_iter().collect::<Vec<_>>().join("\n  ")
    );
}

#[test]
fn every_key_check_prints_is_in_the_lb_toml_man_page() {
    let page = read("docs/man/lb.toml.5");
    assert!(page.lines().any(|l| l.starts_with(".TH LB.TOML 5 ")), "lb.toml.5 has no .TH header");
    let mut missing = BTreeSet::new();
    for config in example_configs() {
        for path in key_paths(&print(&config)) {
            let key = path.rsplit('.').next().unwrap_or(&path).to_owned();
            // Keys are set in bold: a line `.B key` (`.BR key ,` in a sentence).
            let bold = |l: &str| l == format!(".B {key}") || l.starts_with(&format!(".BR {key} "));
            if !page.lines().any(bold) {
                missing.insert(key);
            }
        }
    }
    assert!(missing.is_empty(), "docs/man/lb.toml.5 does not name these keys in bold: {missing:?}");
}

#[test]
fn the_committed_man_page_is_what_the_binary_prints() {
    let out = Command::new(BIN).arg("--man").output().unwrap();
    assert!(out.status.success(), "ucp-lb --man: {}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(printed.lines().any(|l| l.starts_with(".TH UCP-LB 1 ")), "no .TH header:\n{printed}");
    let committed = read("docs/man/ucp-lb.1");
    assert!(
        printed == committed,
        "docs/man/ucp-lb.1 is not what `ucp-lb --man` prints: the command line changed. \
         Run `cargo run -q -- --man > docs/man/ucp-lb.1` and commit it."
    );
}
