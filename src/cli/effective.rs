//! `ucp-lb check --print`: the config in force, every key with its value
//! (defaults filled in) and where it came from, as lb.toml that `check`
//! accepts again. Each key it writes is declared in
//! `ucp_lb::config::keys`, as tests/keys.rs checks.

use std::fmt::Write;

use ucp_lb::config::{
    AdminConfig, AdminState, CheckKind, Config, ControlSocket, HealthConfig, Keepalive, Limits, ListenerConfig,
    LogFormat, LogTo, Origin, PoolConfig, Retries, Settings, StatusMatch, format_duration,
};

/// A value and where it came from, aligned as a comment.
fn line(out: &mut String, key: &str, value: String, from: &str) {
    let kv = format!("{key} = {value}");
    let _ = writeln!(out, "{kv:<40} # {from}");
}

fn q(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn duration(d: Option<std::time::Duration>) -> String {
    q(&d.map_or_else(|| "none".to_owned(), format_duration))
}

/// The effective config of `c`.
pub fn dump(c: &Config) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# {}: the config in force, every key with its value.", c.source);
    let _ = writeln!(o, "# After each value: where it came from (set, default, [defaults], pool).\n");
    match c.workers {
        Some(n) => line(&mut o, "workers", n.to_string(), "set"),
        None => line(&mut o, "# workers", "(one per CPU)".into(), "default"),
    }
    admin(&mut o, &c.admin);
    // Only what applies to the process as a whole: the other `[defaults]`
    // keys are written in each listener and pool, where they apply.
    let _ = writeln!(o, "\n[defaults]");
    let grace_from = if c.stop_grace.is_zero() { "default" } else { "set" };
    line(&mut o, "stop_grace", duration(Some(c.stop_grace)), grace_from);
    // The grace period after SIGTERM is the process's too: a pool's own
    // value changes nothing (`check` warns of one), so none is written there.
    let shutdown = c.defaults.shutdown_timeout;
    let shutdown_from = if shutdown == Settings::default().shutdown_timeout { "default" } else { "set" };
    line(&mut o, "shutdown_timeout", duration(Some(shutdown)), shutdown_from);
    for l in &c.listeners {
        listener(&mut o, l, &c.limits);
    }
    for p in &c.pools {
        pool(&mut o, p);
    }
    for (name, limits) in &c.limits {
        let _ = writeln!(o, "\n[limit.{name}]");
        per_client(&mut o, *limits);
    }
    if c.cluster.enabled() {
        let cl = &c.cluster;
        let _ = writeln!(o, "\n[cluster]");
        let api: Vec<String> = cl.api.iter().map(|a| q(&a.to_string())).collect();
        line(&mut o, "api", format!("[{}]", api.join(", ")), "set");
        let bundle = cl.bundle.as_ref().map(|b| b.display().to_string()).unwrap_or_default();
        line(&mut o, "bundle", q(&bundle), "set");
        let from = if cl.refresh == ucp_lb::config::cluster::DEFAULT_REFRESH { "default" } else { "set" };
        line(&mut o, "refresh", duration(Some(cl.refresh)), from);
    }
    o
}

/// `max_connections_per_client` and `max_connection_rate_per_client`.
fn per_client(o: &mut String, limits: Limits) {
    for (key, n) in [("max_connections_per_client", limits.open), ("max_connection_rate_per_client", limits.rate)] {
        match n {
            0 => line(o, &format!("# {key}"), "(no limit)".into(), "default"),
            n => line(o, key, n.to_string(), "set"),
        }
    }
}

fn admin(o: &mut String, a: &AdminConfig) {
    let _ = writeln!(o, "\n[admin]");
    let is_default_listen = a.listen == AdminConfig::default().listen;
    line(o, "listen", q(&a.listen.to_string()), if is_default_listen { "default" } else { "set" });
    match &a.token_file {
        Some(p) => line(o, "token_file", q(&p.display().to_string()), "set: POST endpoints on"),
        None => line(o, "# token_file", "(none)".into(), "default: POST endpoints off"),
    }
    line(
        o,
        "status_needs_token",
        a.status_needs_token.to_string(),
        if a.status_needs_token { "set" } else { "default" },
    );
    // The default stays a comment: set, it would make a start that cannot
    // create it fail, where the default only warns.
    match &a.control_socket {
        ControlSocket::Default(p) => {
            line(o, "# control_socket", q(&p.display().to_string()), "default (warns if it cannot be made)")
        }
        ControlSocket::Path(p) => {
            line(o, "control_socket", q(&p.display().to_string()), "set (file or UCP_LB_CONTROL_SOCKET)")
        }
        ControlSocket::Off => line(o, "control_socket", q(""), "set: none, no upgrade in place"),
    }
}

fn listener(o: &mut String, l: &ListenerConfig, limits: &[(std::sync::Arc<str>, Limits)]) {
    let _ = writeln!(o, "\n[[listener]]");
    line(o, "bind", q(&l.bind.to_string()), "set");
    match &l.pool {
        Some(p) => line(o, "pool", q(p), "set"),
        None => line(o, "# pool", "(none: clients no route takes are closed)".into(), "default"),
    }
    if !l.routes.is_empty() {
        let routes: Vec<String> = l.routes.iter().map(|(n, p)| format!("{} = {}", q(&n.to_string()), q(p))).collect();
        line(o, "routes", format!("{{ {} }}", routes.join(", ")), "set");
        line(o, "preread_timeout", duration(Some(l.preread_timeout)), "set or default");
        line(o, "max_pending_hellos", l.max_pending_hellos.to_string(), "set or default");
    }
    match l.max_connections {
        0 => line(o, "# max_connections", "(no limit)".into(), "default"),
        n => line(o, "max_connections", n.to_string(), "set"),
    }
    if l.access.is_empty() {
        line(o, "# access", "[] (everyone)".into(), "default");
    } else {
        let rules: Vec<String> = l.access.iter().map(|r| q(&r.to_string())).collect();
        line(o, "access", format!("[{}]", rules.join(", ")), "set");
    }
    match &l.access_log {
        None => line(o, "access_log", q("off"), "default or set"),
        Some(log) => {
            let to = match &log.to {
                LogTo::Stdout => "stdout".to_owned(),
                LogTo::Stderr => "stderr".to_owned(),
                LogTo::File(p) => p.display().to_string(),
            };
            line(o, "access_log", q(&to), "set (here or in [defaults])");
            let format = match &log.format {
                LogFormat::Text => q("text"),
                LogFormat::Json => q("json"),
                LogFormat::Template(t) => q(t),
            };
            line(o, "access_log_format", format, "set or default");
        }
    }
    let ka = l.client_keepalive.as_ref();
    let ka_from = if l.client_keepalive == Some(Keepalive::DEFAULT) { "default or set" } else { "set" };
    line(o, "client_keepalive", Keepalive::toml(ka), ka_from);
    match &l.proxy_protocol {
        None => line(o, "proxy_protocol", "false".into(), "default or set"),
        Some(pp) => {
            line(o, "proxy_protocol", "true".into(), "set: every client opens with a PROXY header");
            let from: Vec<String> = pp.real_ip_from.iter().map(|n| q(&n.to_string())).collect();
            let trust = if from.is_empty() { "default or set: no header's address is believed" } else { "set" };
            line(o, "real_ip_from", format!("[{}]", from.join(", ")), trust);
            line(o, "proxy_protocol_timeout", duration(Some(pp.timeout)), "set or default");
            line(o, "proxy_protocol_max_header", pp.max_header.to_string(), "set or default");
        }
    }
    match &l.limit {
        // Its per-client keys are the limit's, written in its table, but
        // for its own max_connections_per_client.
        Some(name) => {
            line(o, "limit", q(name), "set: counted with every listener naming it");
            let shared = limits.iter().find(|(n, _)| n == name).map(|(_, s)| s.open);
            if shared != Some(l.per_client.open) {
                line(o, "max_connections_per_client", l.per_client.open.to_string(), "set: over the shared counts");
            }
        }
        None => {
            line(o, "# limit", "(none)".into(), "default: its own per-client counts");
            per_client(o, l.per_client);
        }
    }
}

/// A pool's `[defaults]` keys, its servers and its check.
fn pool(o: &mut String, p: &PoolConfig) {
    let s = &p.settings;
    let from = |k: &str| p.origins.get(k).copied().unwrap_or(Origin::Default).as_str();
    let _ = writeln!(o, "\n[pool.{}]", p.name);
    line(o, "balance", q(s.balance.as_str()), from("balance"));
    line(o, "connect_timeout", duration(Some(s.connect_timeout)), from("connect_timeout"));
    line(o, "idle_timeout", duration(s.idle_timeout), from("idle_timeout"));
    line(o, "max_fails", s.max_fails.to_string(), from("max_fails"));
    line(o, "fail_timeout", duration(Some(s.fail_timeout)), from("fail_timeout"));
    let retries = match s.retries {
        Retries::Count(n) => n.to_string(),
        Retries::All => q("all"),
    };
    line(o, "retries", retries, from("retries"));
    line(o, "all_down", q(s.all_down.as_str()), from("all_down"));
    line(o, "resolve_interval", duration(Some(s.resolve_interval)), from("resolve_interval"));
    line(o, "slow_start", q(&format_duration(s.slow_start)), from("slow_start"));
    line(o, "on_server_down", q(s.on_server_down.as_str()), from("on_server_down"));
    line(o, "close_spread", q(&format_duration(s.close_spread)), from("close_spread"));
    line(o, "server_keepalive", Keepalive::toml(s.server_keepalive.as_ref()), from("server_keepalive"));
    let proxy = s.send_proxy_protocol.map_or("off", |v| v.as_str());
    line(o, "send_proxy_protocol", q(proxy), from("send_proxy_protocol"));
    let _ = writeln!(o, "servers = [");
    for srv in &p.servers {
        let state = match srv.state {
            AdminState::Up => "up",
            AdminState::Drain => "drain",
            AdminState::Down => "down",
        };
        let slow = srv.slow_start.map(|d| format!(", slow_start = {}", q(&format_duration(d)))).unwrap_or_default();
        let name = srv.name.as_deref().map(|n| format!(", name = {}", q(n))).unwrap_or_default();
        let labels = if srv.labels.is_empty() {
            String::new()
        } else {
            let l: Vec<String> = srv.labels.iter().map(|(k, v)| format!("{} = {}", toml_key(k), q(v))).collect();
            format!(", labels = {{ {} }}", l.join(", "))
        };
        let _ = writeln!(
            o,
            "  {{ address = {}{name}, weight = {}, backup = {}, max_conns = {}, state = {}{slow}{labels} }},",
            q(&srv.address.to_string()),
            srv.weight,
            srv.backup,
            srv.max_conns,
            q(state)
        );
    }
    let _ = writeln!(o, "]");
    if let Some(n) = &p.nodes {
        line(o, "nodes", n.to_string(), "set");
    }
    match &p.prefer {
        Some(z) => line(o, "prefer", format!("{{ label = {}, value = {} }}", q(&z.label), q(&z.value)), "set"),
        None => line(o, "# prefer", "(none)".into(), "default: no server preferred"),
    }
    match &p.health {
        Some(h) => health(o, &p.name, h),
        None => {
            let _ = writeln!(o, "# no active check (no [pool.{}.health], or kind = \"none\")", p.name);
        }
    }
}

/// Each health key: the value, and "set" or "default" against a check
/// with nothing set.
fn health(o: &mut String, pool: &str, h: &HealthConfig) {
    let _ = writeln!(o, "\n[pool.{pool}.health]");
    let kind = match h.kind {
        CheckKind::Https => "https",
        CheckKind::Http => "http",
        CheckKind::Tcp => "tcp",
    };
    let d = HealthConfig::default();
    let src = |is_default: bool| if is_default { "default" } else { "set" };
    line(o, "kind", q(kind), src(h.kind == d.kind));
    line(o, "path", q(&h.path), src(h.path == d.path));
    line(o, "interval", duration(Some(h.interval)), src(h.interval == d.interval));
    line(o, "timeout", duration(Some(h.timeout)), src(h.timeout == d.timeout));
    line(o, "rise", h.rise.to_string(), src(h.rise == d.rise));
    line(o, "fall", h.fall.to_string(), src(h.fall == d.fall));
    let statuses: Vec<String> = h
        .expect_status
        .iter()
        .map(|m| match m {
            StatusMatch::Code(c) => c.to_string(),
            StatusMatch::Class(c) => q(&format!("{c}xx")),
        })
        .collect();
    line(o, "expect_status", format!("[{}]", statuses.join(", ")), src(h.expect_status == d.expect_status));
    match &h.expect_body {
        Some(b) => line(o, "expect_body", q(b), "set"),
        None => line(o, "# expect_body", "(none)".into(), "default"),
    }
    if h.expect_json.is_empty() {
        line(o, "# expect_json", "(none)".into(), "default");
    } else {
        let fields: Vec<String> = h.expect_json.iter().map(|(k, v)| format!("{k} = {v}")).collect();
        line(o, "expect_json", format!("{{ {} }}", fields.join(", ")), "set");
    }
    for (key, v, fallback) in
        [("sni", &h.sni, "the server's host name"), ("host", &h.host, "sni, else the server's host name")]
    {
        match v {
            Some(v) => line(o, key, q(v), "set"),
            None => line(o, &format!("# {key}"), format!("({fallback})"), "default"),
        }
    }
    match &h.ca_file {
        Some(f) => line(o, "ca_file", q(&f.display().to_string()), "set: certificate verified"),
        None => line(o, "# ca_file", "(none)".into(), "default: certificate not verified"),
    }
    match h.port {
        Some(port) => line(o, "port", port.to_string(), "set"),
        None => line(o, "# port", "(the server's)".into(), "default"),
    }
    client_cert(o, h);
}

/// Whom probes speak as. A bundle's files are written out as
/// `client_cert` and `client_key` (`[cluster]` is not written here).
fn client_cert(o: &mut String, h: &HealthConfig) {
    match &h.client_cert {
        Some(c) => {
            let from = if c.from_bundle { "client_bundle: [cluster] bundle's" } else { "set" };
            line(o, "client_cert", q(&c.cert.display().to_string()), from);
            line(o, "client_key", q(&c.key.display().to_string()), from);
            let bundle = if c.from_bundle { "set: written out as client_cert and client_key" } else { "default" };
            line(o, "# client_bundle", c.from_bundle.to_string(), bundle);
        }
        None => {
            line(o, "# client_cert", "(none)".into(), "default: probes present no certificate");
            line(o, "# client_key", "(none)".into(), "default");
            line(o, "# client_bundle", "false".into(), "default");
        }
    }
}

/// A table key as TOML writes it: bare when it can be, else quoted.
fn toml_key(k: &str) -> String {
    if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        k.to_owned()
    } else {
        q(k)
    }
}
