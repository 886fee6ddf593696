//! Every lb.toml key is declared once (`ucp_lb::config::keys::KEYS`), and
//! the reader, the validator's defaults, `check --print` and the reference
//! (docs/configuration.md) are held to that declaration here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use ucp_lb::config::keys::{self, KEYS, Key, Type};

const BIN: &str = env!("CARGO_BIN_EXE_ucp-lb");

/// A config with one of everything a key can be set in: a routed listener,
/// a pool with a server table and a check.
const BASE: &str = r#"
[[listener]]
bind = "127.0.0.1:0"
pool = "p"
routes = { "a.test" = "p" }

[pool.p]
servers = [{ address = "127.0.0.1:1" }]

[pool.p.health]
"#;

fn base() -> toml::Table {
    toml::from_str(BASE).unwrap()
}

/// Sets `path` (a declared path, or a table's path and a name) to `value`
/// in `t`, making the tables on the way: `listener[]` is the first
/// listener, `pool.*` the pool `p`, `servers[]` its first server.
fn set(t: &mut toml::Table, path: &str, value: toml::Value) {
    let segs: Vec<&str> = path.split('.').collect();
    let (last, tables) = segs.split_last().unwrap();
    let mut at = t;
    for seg in tables {
        let (name, array) = match seg.strip_suffix("[]") {
            Some(n) => (n, true),
            None => (*seg, false),
        };
        let name = if name == "*" { "p" } else { name };
        let v = at.entry(name).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let v = if array { &mut v.as_array_mut().unwrap()[0] } else { v };
        if !v.is_table() {
            *v = toml::Value::Table(toml::Table::new());
        }
        at = v.as_table_mut().unwrap();
    }
    at.insert((*last).to_owned(), value);
}

/// A declared path as an error names it in the base config.
fn concrete(path: &str) -> String {
    path.replace("listener[]", "listener[0]")
        .replace("pool.*", "pool.p")
        .replace("limit.*", "limit.p")
        .replace("servers[]", "servers[0]")
}

fn text(t: &toml::Table) -> String {
    toml::to_string(t).unwrap()
}

/// A value of the declared type, which the reader takes.
fn sample(ty: Type) -> toml::Value {
    let v = match ty {
        Type::Duration => r#""5s""#,
        Type::String => r#""x""#,
        Type::Integer => "1",
        Type::Bool | Type::Keepalive => "true",
        Type::List => r#"["x"]"#,
        Type::Table => "{}",
    };
    value(v)
}

fn value(toml_text: &str) -> toml::Value {
    let t: toml::Table = toml::from_str(&format!("v = {toml_text}")).unwrap_or_else(|e| panic!("{toml_text}: {e}"));
    t["v"].clone()
}

/// Every declared key is read where it is declared: a value of no key's
/// type (a date) is reported at that very key, so the reader looks at it.
#[test]
fn every_declared_key_is_read_at_its_place() {
    let date = value("1979-05-27");
    for k in KEYS {
        let mut t = base();
        set(&mut t, k.path, date.clone());
        let want = concrete(k.path);
        let errors = match ucp_lb::config::parse(&text(&t), "k.toml") {
            Ok(_) => panic!("{}: a date was taken", k.path),
            Err(e) => e.0,
        };
        assert!(
            errors.iter().any(|e| e.key == want),
            "{}: no error at {want}:\n{}",
            k.path,
            ucp_lb::config::ConfigErrors(errors.clone())
        );
    }
}

/// Every declared key takes a value of its declared type.
#[test]
fn every_declared_key_takes_its_type() {
    for k in KEYS {
        let mut t = base();
        set(&mut t, k.path, sample(k.ty));
        let (_, errors) = ucp_lb::config::raw::read(&text(&t)).unwrap();
        assert!(errors.is_empty(), "{}: {errors:?}", k.path);
    }
}

/// Every table the reader reads names, in its unknown-key error, exactly
/// the keys declared for it (so it accepts no key that is not declared).
#[test]
fn each_table_accepts_exactly_its_declared_keys() {
    // The tables, and the declared table whose keys each takes.
    let tables = [
        ("", ""),
        ("admin", "admin"),
        ("defaults", "defaults"),
        ("defaults.client_keepalive", "defaults.client_keepalive"),
        ("defaults.server_keepalive", "defaults.server_keepalive"),
        ("listener[]", "listener[]"),
        ("listener[].client_keepalive", "defaults.client_keepalive"),
        ("pool.*", "pool.*"),
        ("pool.*.server_keepalive", "defaults.server_keepalive"),
        ("pool.*.servers[]", "pool.*.servers[]"),
        ("pool.*.health", "pool.*.health"),
        ("pool.*.prefer", "pool.*.prefer"),
    ];
    for (table, declared_as) in tables {
        let mut expected: BTreeSet<&str> = KEYS
            .iter()
            .filter(|k| k.table() == declared_as || (declared_as == "pool.*" && k.per_pool && k.table() == "defaults"))
            .map(Key::name)
            .collect();
        // Tables within it: `admin` at the top, `health` in a pool.
        let prefix = if declared_as.is_empty() { String::new() } else { format!("{declared_as}.") };
        for k in KEYS {
            if let Some(rest) = k.path.strip_prefix(&prefix)
                && let Some((sub, _)) = rest.split_once('.')
            {
                expected.insert(sub.strip_suffix("[]").unwrap_or(sub));
            }
        }
        let mut t = base();
        let unknown = if table.is_empty() { "zz_unknown".to_owned() } else { format!("{table}.zz_unknown") };
        set(&mut t, &unknown, value("1"));
        let (_, errors) = ucp_lb::config::raw::read(&text(&t)).unwrap();
        let want = concrete(&unknown);
        let e = errors.iter().find(|e| e.key == want).unwrap_or_else(|| panic!("{want}: no error in {errors:?}"));
        let listed: BTreeSet<&str> = e
            .message
            .split_once("expected one of ")
            .unwrap_or_else(|| panic!("{}", e.message))
            .1
            .split(", ")
            .map(|k| k.trim_matches('`'))
            .collect();
        assert_eq!(listed, expected, "the keys of [{table}]");
    }
}

/// The names of the per-pool `[defaults]` keys, in the raw mirror's order
/// (which `check --print` takes each key's origin from).
#[test]
fn a_pools_own_keys_are_the_per_pool_defaults() {
    let declared: Vec<&str> = KEYS.iter().filter(|k| k.per_pool && k.table() == "defaults").map(Key::name).collect();
    let raw: Vec<&str> = ucp_lb::config::raw::SettingsRef::default().set().iter().map(|(name, _)| *name).collect();
    assert_eq!(raw, declared);
}

/// Each default written as a value is what the validator applies: setting
/// a key to its declared default changes nothing (a per-pool key neither
/// in `[defaults]` nor in the pool).
#[test]
fn each_declared_default_is_what_leaving_the_key_out_gives() {
    let effective = |t: &toml::Table| {
        let mut c = ucp_lb::config::parse(&text(t), "k.toml").unwrap_or_else(|e| panic!("{e}\n{}", text(t)));
        c.fingerprint = 0;
        c.warnings.clear();
        // Where things are in the text moves with the key set.
        c.admin.token_file_pos = Default::default();
        for p in &mut c.pools {
            p.origins.clear();
            p.servers.iter_mut().for_each(|s| s.pos = Default::default());
            p.health.iter_mut().for_each(|h| h.ca_file_pos = Default::default());
        }
        c
    };
    let unset = effective(&base());
    for k in KEYS.iter().filter(|k| k.default_is_value()) {
        let mut places = vec![k.path.to_owned()];
        if k.per_pool {
            places.push(k.path.replacen("defaults.", "pool.*.", 1));
        }
        for place in places {
            let mut t = base();
            set(&mut t, &place, value(k.default));
            assert_eq!(effective(&t), unset, "{place} = {} is not the default", k.default);
        }
    }
}

/// Every declared key `check --print` does not write, on purpose: a key
/// declared later must be printed or named here.
const NOT_PRINTED: &[&str] = &[
    // Written in each listener, where they apply.
    "defaults.access_log",
    "defaults.access_log_format",
    "defaults.client_keepalive",
    "defaults.max_pending_hellos",
    "defaults.real_ip_from",
    "defaults.proxy_protocol_timeout",
];

/// The declared paths of the keys `check --print` wrote in `out`.
fn printed_keys(out: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut table = String::new();
    let mut in_servers = false;
    for line in out.lines() {
        if in_servers {
            if line == "]" {
                in_servers = false;
                continue;
            }
            let entry = value(line.trim().trim_end_matches(','));
            for k in entry.as_table().unwrap_or_else(|| panic!("a server entry: {line}")).keys() {
                keys.push(format!("{table}.servers[].{k}"));
            }
            continue;
        }
        if let Some(t) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            table = format!("{t}[]");
        } else if let Some(t) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = keys::normalise(t);
        } else if let Some((k, v)) = line.strip_prefix("# ").unwrap_or(line).split_once(" = ")
            && !k.is_empty()
            && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            keys.push(if table.is_empty() { k.to_owned() } else { format!("{table}.{k}") });
            in_servers = k == "servers" && v.trim_end() == "[";
        }
    }
    keys
}

/// A config that sets what `check --print` writes only when set.
const EVERYTHING: &str = r#"
workers = 2
[admin]
token_file = "token"
control_socket = ""
[[listener]]
bind = "127.0.0.1:8443"
routes = { "ucp.example.com" = "ucp" }
preread_timeout = "3s"
access = ["allow 10.0.0.0/8", "deny all"]
max_connections_per_client = 5
max_connection_rate_per_client = 7
access_log = "stdout"
access_log_format = "json"
[[listener]]
bind = "127.0.0.1:8444"
pool = "ucp"
limit = "shared"
proxy_protocol = true
real_ip_from = ["10.0.0.0/8"]
proxy_protocol_timeout = "2s"
proxy_protocol_max_header = 1024
[limit.shared]
max_connections_per_client = 2
max_connection_rate_per_client = 3
[pool.ucp]
servers = [{ address = "10.0.0.1:443", name = "m1", weight = 3, backup = true, max_conns = 9, slow_start = "1m", labels = { zone = "dc1" } }]
nodes = { role = "manager", port = 443 }
prefer = { label = "zone", value = "dc1" }
[pool.ucp.health]
expect_body = "ok"
expect_json = { Healthy = true }
sni = "a.test"
host = "b.test"
ca_file = "ca.pem"
port = 444
client_cert = "cert.pem"
client_key = "key.pem"
[cluster]
api = ["10.0.0.1:443"]
bundle = "bundle"
refresh = "5s"
"#;

/// `check --print` writes only declared keys, and every declared key but
/// those in [`NOT_PRINTED`] (a keepalive's own keys are part of its value).
#[test]
fn check_print_writes_the_declared_keys() {
    let dir = tempfile::tempdir().unwrap();
    let everything = dir.path().join("everything.toml");
    std::fs::write(&everything, EVERYTHING).unwrap();
    let mut files = vec![everything];
    for f in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("config")).unwrap() {
        let f = f.unwrap().path();
        if f.extension().is_some_and(|e| e == "toml") {
            files.push(f);
        }
    }
    let mut printed: BTreeSet<&'static str> = BTreeSet::new();
    for f in &files {
        let out = Command::new(BIN).args(["check", "--offline", "--print"]).arg(f).output().unwrap();
        assert!(out.status.success(), "{}: {}", f.display(), String::from_utf8_lossy(&out.stderr));
        for path in printed_keys(&String::from_utf8_lossy(&out.stdout)) {
            let k = keys::find(&path)
                .unwrap_or_else(|| panic!("{}: check --print wrote {path}, not declared", f.display()));
            printed.insert(k.path);
        }
    }
    let nested = |k: &Key| keys::find(k.table()).is_some();
    let unprinted: BTreeSet<&str> =
        KEYS.iter().filter(|k| !nested(k) && !printed.contains(k.path)).map(|k| k.path).collect();
    assert_eq!(unprinted, NOT_PRINTED.iter().copied().collect(), "declared keys check --print does not write");
}

/// What docs/configuration.md says, by its convention: a key is written
/// as a dotted path (`defaults.connect_timeout`, `pool.<name>.health.rise`,
/// `listener[].bind`), or by its name in a section under a heading that
/// names its table (`[defaults]`, `[pool.<name>.health]`, `[[listener]]`).
#[derive(Default)]
struct Docs {
    /// Every code span, as a declared path would write it.
    paths: BTreeSet<String>,
    /// For each table a heading names, the code spans of its sections.
    sections: BTreeMap<String, BTreeSet<String>>,
    /// For each line, its code spans and the names they set
    /// (`{ idle = "60s" }` sets `idle`).
    lines: Vec<BTreeSet<String>>,
}

/// A code span of the docs as a declared path: `[pool.<name>.health]` is
/// `pool.*.health`, `[[listener]]` and `listener[0]` are `listener[]`.
fn doc_path(span: &str) -> String {
    let t = span.trim().split(|c: char| c.is_whitespace() || c == '=').next().unwrap_or("");
    let depth = t.len() - t.trim_start_matches('[').len();
    let t = if depth > 0 && t.ends_with(&"]".repeat(depth)) { &t[depth..t.len() - depth] } else { t };
    let segs: Vec<&str> = t.split('.').collect();
    let mut out: Vec<String> = Vec::new();
    for (i, seg) in segs.iter().enumerate() {
        let (name, array) = match seg.find('[') {
            Some(b) => (&seg[..b], true),
            None => (*seg, false),
        };
        let any =
            name == "*" || name.starts_with('<') || (!name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase()));
        if i == 1 && segs[0] == "pool" {
            out.push("*".into());
        } else if i == 1 && segs[0].starts_with("listener") && (any || name.chars().all(|c| c.is_ascii_digit())) {
            continue;
        } else if any {
            out.push("*".into());
        } else if array || (i == 0 && name == "listener") || (name == "servers" && i + 1 < segs.len()) {
            out.push(format!("{name}[]"));
        } else {
            out.push(name.to_owned());
        }
    }
    out.join(".")
}

fn code_spans(line: &str) -> Vec<&str> {
    line.split('`').skip(1).step_by(2).collect()
}

fn read_docs(text: &str) -> Docs {
    // Every table a key sits in (and a keepalive key's, which holds keys).
    let mut tables: BTreeSet<String> = KEYS.iter().map(|k| k.table().to_owned()).collect();
    tables.extend(KEYS.iter().filter(|k| k.ty == Type::Keepalive).map(|k| k.path.to_owned()));
    let mut docs = Docs::default();
    let mut fenced = false;
    // (heading level, tables it names)
    let mut open: Vec<(usize, Vec<String>)> = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let spans = code_spans(line);
        if line.starts_with('#') {
            let level = line.len() - line.trim_start_matches('#').len();
            open.retain(|(l, _)| *l < level);
            let mut named: Vec<String> = spans.iter().map(|s| doc_path(s)).collect();
            // `## [defaults]` without code spans.
            for part in line.split('[').skip(1) {
                if let Some(inner) = part.split(']').next() {
                    named.push(doc_path(inner));
                }
            }
            named.retain(|t| tables.contains(t));
            if !named.is_empty() {
                open.push((level, named));
            }
        }
        let mut this_line = BTreeSet::new();
        for span in spans {
            let path = doc_path(span);
            this_line.insert(path.clone());
            for (_, named) in &open {
                for t in named {
                    docs.sections.entry(t.clone()).or_default().insert(path.clone());
                }
            }
            docs.paths.insert(path);
            for part in span.split('=').rev().skip(1) {
                if let Some(name) =
                    part.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).rfind(|w| !w.is_empty())
                {
                    this_line.insert(name.to_owned());
                }
            }
        }
        docs.lines.push(this_line);
    }
    docs
}

fn documented(docs: &Docs, k: &Key) -> bool {
    let in_section = |table: &str| docs.sections.get(table).is_some_and(|s| s.contains(k.name()));
    if docs.paths.contains(k.path) || in_section(k.table()) {
        return true;
    }
    if k.per_pool {
        let pool_path = k.path.replacen("defaults.", "pool.*.", 1);
        if docs.paths.contains(&pool_path) || (keys::find(&pool_path).is_some() && in_section("pool.*")) {
            return true;
        }
    }
    // A key within a key's value (a keepalive's `idle`, a server entry's
    // `weight`): named on a line with the key that holds it.
    let parent = keys::find(k.table()).or_else(|| keys::find(k.table().strip_suffix("[]")?));
    parent.is_some_and(|parent| {
        documented(docs, parent)
            && docs.lines.iter().any(|l| l.contains(k.name()) && (l.contains(parent.path) || l.contains(parent.name())))
    })
}

/// Every declared key is in the reference, docs/configuration.md.
#[test]
fn every_declared_key_is_documented() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let docs = read_docs(&text);
    let missing: Vec<String> = KEYS
        .iter()
        .filter(|k| !documented(&docs, k))
        .map(|k| format!("  `{}` ({}, default {}): {}", k.path, k.ty.as_str(), k.default, k.doc))
        .collect();
    assert!(missing.is_empty(), "declared but not in docs/configuration.md:\n{}", missing.join("\n"));
}

/// Every key path the reference writes is declared (a key that goes
/// cannot stay documented): code spans that start with a table of lb.toml
/// and name a key or a table.
#[test]
fn every_documented_key_is_declared() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let unknown: Vec<String> = documented_paths(&text).into_iter().filter(|p| !declared(p)).collect();
    assert!(unknown.is_empty(), "in docs/configuration.md, not declared: {unknown:?}");
}

/// The key paths a text writes: code spans like `defaults.connect_timeout`
/// or `listener[].bind`, not `[pool.ucp]` headers or `example.com`.
fn documented_paths(text: &str) -> BTreeSet<String> {
    let roots = keys::names("");
    let mut out = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if fenced {
            continue;
        }
        for span in code_spans(line) {
            let root = span.split(['.', '[']).next().unwrap_or("");
            let path_like = span.chars().all(|c| c.is_ascii_alphanumeric() || "_.<>[]*".contains(c));
            if path_like && span.len() > root.len() && roots.contains(&root) {
                out.insert(doc_path(span));
            }
        }
    }
    out
}

/// A declared key, or a table that holds declared keys.
fn declared(path: &str) -> bool {
    keys::find(path).is_some() || KEYS.iter().any(|k| k.path.starts_with(&format!("{path}.")))
}

/// The docs test reads both ways of writing a key.
#[test]
fn the_docs_convention_is_read_as_written() {
    let docs = read_docs(
        "# lb.toml\n\n`defaults.connect_timeout` and `pool.<name>.health.rise`, `listener[].bind`.\n\n\
         ## `[pool.NAME.health]`\n\n| `fall` | 2 |\n\n## [admin]\n\n- `listen`: where\n\n\
         ## Keepalive\n\n`defaults.server_keepalive`: `{ idle = \"60s\", interval = \"10s\" }`\n\n\
         ```toml\nworkers = 2\n```\n\n## Servers\n\n`pool.<name>.servers`: `{ address = \"h:1\", weight = 2 }`\n",
    );
    let is = |path: &str| documented(&docs, keys::find(path).unwrap());
    assert!(is("defaults.connect_timeout") && is("pool.*.health.rise") && is("listener[].bind"));
    assert!(is("pool.*.health.fall") && is("admin.listen"));
    assert!(is("defaults.server_keepalive.idle") && is("defaults.server_keepalive.interval"));
    assert!(!is("pool.*.health.kind") && !is("defaults.server_keepalive.count") && !is("workers"));
    assert!(!is("listener[].pool") && !is("admin.token_file"));
    assert!(is("pool.*.servers[].weight") && !is("pool.*.servers[].backup"));
    assert_eq!(doc_path("[[listener]]"), "listener[]");
    assert_eq!(doc_path("pool.ucp.servers[0].weight"), "pool.*.servers[].weight");
    assert_eq!(doc_path("connect_timeout = \"3s\""), "connect_timeout");
    let paths =
        documented_paths("`pool.<name>.health`, `[pool.ucp]`, `example.com`, `listener[].bogus`, `defaults.x y`");
    assert_eq!(paths.into_iter().filter(|p| !declared(p)).collect::<Vec<_>>(), ["listener[].bogus"]);
}
